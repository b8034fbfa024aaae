"""The watch-folder front door: audio dropped into a folder comes back as stems.

    DIR/inbox/<prompt>/<file>            dropped by the user (sub-folder name = the prompt)
    DIR/inbox/<prompt>/<file>.reasam.toml  optional sidecar (or .reasam.json): the request's options
    DIR/outbox/<file stem>/              the job folder: stems, manifest.json, status.json
    DIR/done/<prompt>/<file>             the original, after success
    DIR/failed/<prompt>/<file>           the original, after failure, with <file>.error.txt

It runs inside the daemon beside OSC (osc.py) and, like it, only builds requests and hands them
to the job manager (jobs.py): the same queue, warm models, cache and journal. Watch jobs have
priority WATCH, below a person waiting in REAPER and above batches. At most `max_queued` files
per folder are jobs at a time; the rest wait in the inbox untouched, so a big drop never fills
the daemon's queue and an OSC request always finds room and runs next.

When a file counts as complete is watch_settle.py's business; the record that makes each file
done exactly once across crashes, and the moves to done/ and failed/, are watch_files.py's.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import re
import threading
import time
import tomllib
import unicodedata
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from .errors import ReasamError
from .jobs import RETENTION_SECONDS, Event, Priority, job_folder
from .request import request_from_fields
from .watch_files import SIDECAR_SUFFIXES, Entry, FileBook, Mover, failpoint, identity
from .watch_settle import InboxEvents, Settler, is_candidate, make_observer, walk_files

if TYPE_CHECKING:
    from . import config
    from .jobs import JobManager, Journal
    from .request import Request

log = logging.getLogger("reasam.watch")

LAYOUT = ("inbox", "outbox", "done", "failed")
_POLL = 0.05  # seconds between looks at the settler (a job's end wakes the loop at once)
_BUSY_BACKOFF = 1.0  # seconds to wait after the daemon's queue said busy


def outbox_name(stem: str) -> str:
    """A job id, and outbox folder name, from a file stem: accents dropped, anything outside
    the job id alphabet turned into '-', short enough to leave room for a '-N' suffix."""
    ascii_stem = unicodedata.normalize("NFKD", stem).encode("ascii", "ignore").decode()
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", ascii_stem).strip("-.")
    return name[:56].rstrip("-.") or "file"


def read_sidecar(path: Path) -> dict[str, Any]:
    """A sidecar's options; any problem is a bad_request naming the file and the reason."""
    try:
        if path.name.endswith(".toml"):
            with open(path, "rb") as fh:
                data: Any = tomllib.load(fh)
        else:
            data = json.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, ValueError) as exc:
        kind = "TOML" if path.name.endswith(".toml") else "JSON"
        raise ReasamError("bad_request", f"sidecar {path.name}: not valid {kind} ({exc})") from None
    except OSError as exc:
        raise ReasamError("bad_request", f"sidecar {path.name}: cannot read ({exc.strerror})") from None
    if not isinstance(data, dict):
        raise ReasamError("bad_request", f"sidecar {path.name}: expected a table of options")
    for key, value in data.items():
        values = value if isinstance(value, list) else [value]
        if any(isinstance(v, dict | list) for v in values) or (isinstance(value, list) and key != "span"):
            raise ReasamError(
                "bad_request", f"sidecar {path.name}: {key} must be text, a number or true/false"
            )
    return data


class WatchFolder:
    """One watched folder: its layout, its files in progress, and how each one is finished."""

    def __init__(self, root: Path, book: FileBook) -> None:
        self.root = root
        self.inbox = root / "inbox"
        self.outbox = root / "outbox"
        self.book = book
        self.mover = Mover(root, book)
        self.in_flight: dict[str, Entry] = {}  # inbox path → entry, for files not finished
        self.by_job: dict[str, Entry] = {}

    def prepare(self) -> None:
        for name in LAYOUT:
            try:
                (self.root / name).mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ReasamError(
                    "bad_request", f"watch folder {self.root}: cannot create {name}/ ({exc.strerror})"
                ) from None
            if not os.access(self.root / name, os.W_OK | os.X_OK):
                raise ReasamError("bad_request", f"watch folder {self.root / name}: not writable")

    def rel(self, path: Path) -> str:
        return path.relative_to(self.inbox).as_posix()

    def track(self, entry: Entry) -> None:
        self.in_flight[entry.inbox] = entry
        if entry.job_id:
            self.by_job[entry.job_id] = entry

    def untrack(self, entry: Entry) -> None:
        self.in_flight.pop(entry.inbox, None)
        if entry.job_id:
            self.by_job.pop(entry.job_id, None)

    # -- finishing files -----------------------------------------------------------------------

    def recover(self, journal: Journal) -> None:
        """Bring every unfinished file to its next step after a restart (`journal`: the job
        manager's, which has requeued the jobs that were queued or running)."""
        for entry in self.book.open_entries(str(self.root)):
            if entry.state == "taken":
                if entry.job_id and journal.get(entry.job_id) is not None:
                    self.book.update(entry, state="submitted")  # crashed right after submitting
                else:
                    # Crashed before its job was journaled: forget it; the inbox scan takes the
                    # file again (under the same outbox name, which is still free).
                    self.remove_empty_job_dir(entry.job_id)
                    self.book.delete(entry)
                    continue
            if entry.state == "submitted":
                row = journal.get(entry.job_id or "")
                if row is None:
                    self.mover.decide(entry, "failed", "internal", "its job was lost from the journal")
                elif row["state"] in ("queued", "running"):
                    self.track(entry)  # its end comes as an event
                    continue
                else:
                    self.decide(entry, row["state"], row["code"], row["message"])
            log.info("watch: finishing %s after a restart", entry.inbox)
            self.finish(entry)

    def job_ended(self, entry: Entry, state: str, code: str | None, message: str) -> None:
        self.decide(entry, state, code, message)
        self.finish(entry)
        self.untrack(entry)
        log.info(
            "watch: %s %s → %s/%s", entry.inbox, entry.outcome, self.mover.dest_root(entry).name, entry.dest
        )

    def fail_untaken(self, entry: Entry, code: str, message: str) -> None:
        """A file that never became a job (bad sidecar, unknown prompt): straight to failed/."""
        log.info("watch: %s failed: %s: %s", entry.inbox, code, message)
        entry.job_id = None
        self.book.insert(entry)  # "taken" without a job: after a crash it is simply taken again
        self.mover.decide(entry, "failed", code, message)
        self.mover.finish(entry)

    def decide(self, entry: Entry, state: str, code: str | None, message: str) -> None:
        """The outcome of a job's final state (done, error, cancelled), journaled."""
        if state == "done":
            self.mover.decide(entry, "done", None, "")
            return
        if state == "cancelled":
            code, message = "cancelled", message or "cancelled"
        self.mover.decide(entry, "failed", code or "internal", message)

    def finish(self, entry: Entry) -> None:
        """Move the file to its place; a failed job's folder goes (idempotent, as all steps)."""
        self.mover.finish(entry)
        if entry.outcome == "failed":
            self.remove_failed_job_dir(entry.job_id)

    def remove_empty_job_dir(self, job_id: str | None) -> None:
        if job_id:
            with contextlib.suppress(OSError, ReasamError):
                job_folder(self.outbox, job_id).rmdir()

    def remove_failed_job_dir(self, job_id: str | None) -> None:
        """A failed job's folder holds only its status.json: the outbox keeps results only
        (the reason is in failed/<name>.error.txt and the journal)."""
        if not job_id:
            return
        with contextlib.suppress(OSError, ReasamError):
            job_dir = job_folder(self.outbox, job_id)
            if [p.name for p in job_dir.iterdir()] == ["status.json"]:
                (job_dir / "status.json").unlink()
                job_dir.rmdir()


class WatchService:
    """All watch folders of one daemon: one observer, one thread that takes and finishes files."""

    def __init__(
        self,
        folders: Sequence[Path],
        manager: JobManager,
        journal_path: Path,
        settle: float = 2.0,
        max_queued: int = 8,
        defaults: dict[str, Any] | None = None,
    ) -> None:
        self.manager = manager
        self.book = FileBook(journal_path)
        # Real paths: the record is keyed by folder, and must match however the folder is named.
        self.folders = [WatchFolder(Path(os.path.realpath(f)), self.book) for f in folders]
        self.settler = Settler(settle)
        self.max_queued = max_queued
        self.defaults = dict(defaults or {})
        self._events: queue.Queue[Event] = queue.Queue()
        self._ready: dict[Path, None] = {}  # settled files waiting for room, in order
        self._busy_until = 0.0
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._observer: Any = None
        self._lock = threading.Lock()  # guards what status() reads

    # -- life cycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Finish what a crash left half done, then watch and take what is in the inboxes.

        Call after the job manager started (it has requeued the journaled jobs) and after
        `on_event` was subscribed (so no job's end is missed).
        """
        self.book.prune(time.time() - RETENTION_SECONDS)
        for folder in self.folders:
            folder.prepare()
            with self._lock:
                folder.recover(self.manager.journal)
        self._observer, close_events = make_observer()
        for folder in self.folders:
            self._observer.schedule(
                InboxEvents(folder.inbox, self.settler, close_events), str(folder.inbox), recursive=True
            )
        self._observer.start()
        for folder in self.folders:  # after the observer: nothing dropped meanwhile is missed
            for path in walk_files(folder.inbox):
                if is_candidate(path.name):
                    self.settler.touch(path)
        self._thread = threading.Thread(target=self._loop, name="reasam-watch", daemon=True)
        self._thread.start()
        log.info(
            "watching %s (settle %.3g s, up to %d jobs per folder)",
            ", ".join(str(f.root) for f in self.folders),
            self.settler.settle,
            self.max_queued,
        )

    def stop(self) -> None:
        """Stop watching and taking files (before the job manager shuts down)."""
        self._stop.set()
        self._wake.set()
        if self._observer is not None:
            with contextlib.suppress(Exception):
                self._observer.stop()
                self._observer.join(5)
        if self._thread is not None:
            self._thread.join(10)

    def close(self) -> None:
        """After the job manager shut down: finish the files whose jobs ended meanwhile (the
        rest are finished at the next start), then close the record."""
        try:
            self._drain_events()
        except Exception:
            log.exception("watch: finishing files at stop failed; they are finished at the next start")
        with contextlib.suppress(Exception):
            self.book.close()

    def on_event(self, event: Event) -> None:
        """Job manager events (worker threads): the final ones are handed to our thread."""
        if event.kind in ("done", "error", "cancelled") and "watch" in event.origin:
            self._events.put(event)
            self._wake.set()

    # -- the loop ----------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._step()
            except Exception:  # the thread must survive anything one file does
                log.exception("watch: unexpected failure")
                self._stop.wait(1.0)
            self._wake.wait(_POLL)
            self._wake.clear()

    def _drain_events(self) -> None:
        while True:
            try:
                event = self._events.get_nowait()
            except queue.Empty:
                return
            self._job_ended(event)

    def _step(self) -> None:
        self._drain_events()
        due = self.settler.due()
        with self._lock:
            for path in due:
                self._ready.setdefault(path)
        if time.monotonic() < self._busy_until:
            return
        waiting: dict[Path, None] = {}
        for path in list(self._ready):
            if self._stop.is_set():
                waiting[path] = None
                continue
            folder = self._folder_of(path)
            if folder is None:
                continue
            if len(folder.in_flight) >= self.max_queued or time.monotonic() < self._busy_until:
                waiting[path] = None
                continue
            try:
                outcome = self._take(folder, path)
            except Exception:
                # Left in the inbox, untouched; it is looked at again on its next event or start.
                log.exception("watch: taking %s failed", path)
                continue
            if outcome == "later":
                waiting[path] = None
        with self._lock:
            self._ready = waiting

    def _folder_of(self, path: Path) -> WatchFolder | None:
        return next((f for f in self.folders if path.is_relative_to(f.inbox)), None)

    # -- taking a file -------------------------------------------------------------------------

    def _take(self, folder: WatchFolder, path: Path) -> str:
        """Turn one settled file into a job (or a failure); "later" to keep it waiting."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return "gone"
        if self.settler.pending(path):
            return "known"  # written to again since it settled: it comes back when settled anew
        rel = folder.rel(path)
        ident = identity(st)
        if rel in folder.in_flight:
            # A new version dropped over a file still in progress: it waits for that one.
            if folder.in_flight[rel].identity != ident:
                self.settler.touch(path)
            return "known"
        if self.book.seen(str(folder.root), rel, ident):
            return "known"  # taken before and left here (it could not be moved away)
        sidecars = [s for s in SIDECAR_SUFFIXES if os.path.lexists(str(path) + s)]
        entry = Entry(str(folder.root), rel, ident, sidecars=sidecars)
        try:
            request = self._request(folder, path, rel, sidecars)
        except ReasamError as exc:
            folder.fail_untaken(entry, exc.code, exc.message)
            return "failed"
        for _ in range(20):  # another front door may claim the same job id meanwhile
            entry.job_id = self._free_job_id(folder, path)
            self.book.insert(entry)
            failpoint("taken")
            try:
                self.manager.submit(
                    entry.job_id,
                    request,
                    folder.outbox,
                    Priority.WATCH,
                    origin={"watch": str(folder.root), "file": rel},
                )
            except ReasamError as exc:
                self.book.delete(entry)
                if exc.code == "busy":
                    folder.remove_empty_job_dir(entry.job_id)
                    self._busy_until = time.monotonic() + _BUSY_BACKOFF
                    return "later"
                if exc.code == "bad_request" and self._id_taken(folder, entry.job_id):
                    continue
                folder.remove_empty_job_dir(entry.job_id)
                folder.fail_untaken(entry, exc.code, exc.message)
                return "failed"
            failpoint("submitted")
            self.book.update(entry, state="submitted")
            with self._lock:
                folder.track(entry)
            log.info("watch: %s → job %s", rel, entry.job_id)
            return "taken"
        self.book.delete(entry)
        folder.fail_untaken(entry, "internal", "no free outbox name")
        return "failed"

    def _request(self, folder: WatchFolder, path: Path, rel: str, sidecars: list[str]) -> Request:
        if len(sidecars) > 1:
            raise ReasamError(
                "bad_request", f"{path.name} has both a .reasam.toml and a .reasam.json sidecar; keep one"
            )
        fields = read_sidecar(Path(str(path) + sidecars[0])) if sidecars else {}
        parts = PurePosixPath(rel).parts
        if len(parts) == 1 and not sidecars:
            raise ReasamError(
                "bad_request",
                f"{path.name} has no prompt: drop it into inbox/<prompt>/ or give a prompt or spans "
                "in a sidecar",
            )
        defaults = dict(self.defaults)
        if len(parts) > 1:
            defaults["prompt"] = parts[0]
        try:
            return request_from_fields(path, fields, defaults)
        except ReasamError as exc:
            where = f"sidecar {path.name}{sidecars[0]}: " if sidecars else ""
            raise ReasamError(exc.code, where + exc.message) from None

    def _free_job_id(self, folder: WatchFolder, path: Path) -> str:
        base = outbox_name(path.stem)
        for n in range(1, 100_000):
            candidate = base if n == 1 else f"{base}-{n}"
            if not self._id_taken(folder, candidate):
                return candidate
        raise ReasamError("internal", f"{folder.outbox}: no free folder name for {path.stem}")

    def _id_taken(self, folder: WatchFolder, job_id: str) -> bool:
        """Used by a job (any front door), reserved by a watch file, or a folder holding files."""
        out = folder.outbox / job_id
        with contextlib.suppress(OSError):
            if out.is_symlink() or (out.exists() and (not out.is_dir() or any(out.iterdir()))):
                return True
        return self.manager.journal.get(job_id) is not None or self.book.reserved(job_id)

    def _job_ended(self, event: Event) -> None:
        folder = next((f for f in self.folders if str(f.root) == event.origin.get("watch")), None)
        entry = folder.by_job.get(event.job_id) if folder is not None else None
        if folder is None or entry is None:
            return  # already finished (recovery saw the end in the journal first)
        with self._lock:
            folder.job_ended(entry, event.kind, event.status.get("code"), event.status.get("message") or "")

    # -- status ------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """The `watch` part of the daemon's status: per folder, files waiting, in progress, done
        and failed (done/failed count every file finished there, as kept in the journal)."""
        folders = []
        with self._lock:
            ready = list(self._ready)
            for folder in self.folders:
                counts = self.book.counts(str(folder.root))
                folders.append(
                    {
                        "folder": str(folder.root),
                        "waiting": self.settler.count_under(folder.inbox)
                        + sum(1 for p in ready if p.is_relative_to(folder.inbox)),
                        "in_progress": len(folder.in_flight),
                        "done": counts.get("done", 0),
                        "failed": counts.get("failed", 0),
                    }
                )
        return {"watch": folders}


def attach(settings: config.Settings, manager: JobManager) -> WatchService | None:
    """The daemon's watch service for `settings.watch` (None without folders), subscribed to
    the manager's events; `start()` it once the manager has started."""
    if not settings.watch:
        return None
    roots = [Path(os.path.realpath(f)) for f in settings.watch]
    for a in roots:
        for b in roots:
            if a != b and a.is_relative_to(b):
                raise ReasamError("bad_request", f"watch folder {a} is inside watch folder {b}")
    service = WatchService(
        settings.watch,
        manager,
        settings.journal_path,
        settle=settings.watch_settle,
        max_queued=settings.watch_max_queued,
        defaults={"engine": settings.engine, "quality": settings.quality},
    )
    for folder in service.folders:
        folder.prepare()
    manager.subscribe(service.on_event)
    return service
