"""Jobs: a priority queue with a crash-proof journal, cancel, a bounded size and a result cache.

Front doors (OSC today; the watch folder and CSV batches later) build a `Request` and call
`JobManager.submit` with their own priority class; nothing here knows about sockets. The manager
runs each job through `pipeline.run` on one worker thread per device, because two model jobs on
one GPU only fight over its memory and bandwidth; different devices do work in parallel.

Durability: every job is written to an SQLite journal (WAL) *before* it is acknowledged, and
every state change is journaled before it is announced. After a crash (kill -9, power cut of the
process) the next start finds the jobs that were queued or running and queues them again, in
their original order. A job that was running restarts from the beginning in an emptied folder,
unless its manifest had already been written, in which case it is simply marked done: so a job
completes exactly once, and nothing acknowledged is lost.

Each job has a folder `<out>/<job_id>/` with `status.json` (rewritten atomically on every change)
and, when done, `manifest.json` (written once, by the pipeline or by the cache); see
../shared/docs/protocol.md, "Files". Submit creates that folder (or takes an empty one; a
symlink, a file or a folder holding files is refused), and only the files the job writes are
ever removed from it.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import heapq
import json
import logging
import os
import re
import sqlite3
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import __version__, audio
from .errors import JobCancelled, ReasamError, detail, is_out_of_memory, output_error

if TYPE_CHECKING:
    from .cache import ResultCache
from .request import Request, decode_request, encode_request

log = logging.getLogger("reasam.jobs")

_JOB_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
JOB_ID_RULE = "job_id must be 1-64 of A-Z a-z 0-9 _ . - and not only dots"
# status.json is rewritten at most this often for progress (state changes always are): each
# write costs a file and a rename, and a client polling the file gains nothing from more.
PROGRESS_INTERVAL = 0.2
# A stopping daemon waits this long for an interrupted job to reach its next chunk boundary.
INTERRUPT_WAIT = 30.0
# Finished jobs stay in the journal (for idempotent retries and `status`) this long.
RETENTION_SECONDS = 30 * 24 * 3600
RECENT_MESSAGE_CHARS = 200  # a job list shows the start of an error message; status.json has it all
# A job that was running this many times when the daemon died (a crash, a kill, a hang ended by
# a kill) is failed at the next start instead of being run again for ever. Runs that a normal
# stop interrupted do not count (`_requeue_for_restart`).
MAX_ATTEMPTS = 3


class Priority(enum.IntEnum):
    """Lower runs first. Interactive requests must not wait behind a folder of batch work."""

    OSC = 0  # REAPER actions and other OSC clients: a person is waiting
    WATCH = 1  # files dropped into the watch folder
    BATCH = 2  # CSV batches


def valid_job_id(job_id: object) -> bool:
    """The protocol's pattern, minus ids made only of dots: "." and ".." would make the job's
    folder the output root or its parent, and "..." is refused with them for one simple rule."""
    return isinstance(job_id, str) and _JOB_ID.fullmatch(job_id) is not None and job_id.strip(".") != ""


def job_folder(out_root: Path, job_id: str) -> Path:
    """`<out_root>/<job_id>`, checked to be a folder directly inside `out_root`.

    Every write and delete of a job (status.json, stems, clear_outputs) goes through this, so
    even an id that slipped past `valid_job_id` can never point at the output root, its parent
    or another job's folder.
    """
    root = Path(os.path.normpath(out_root))
    folder = Path(os.path.normpath(root / job_id))
    if not valid_job_id(job_id) or folder.parent != root or folder.name != job_id:
        raise ReasamError("bad_request", f"job id {job_id!r} does not name a folder inside {root}")
    return folder


# ---------------------------------------------------------------------------------------------
# Request identity


def fingerprint(request: Request, out_root: Path) -> str:
    """What makes two submissions "the same request" for idempotent job ids."""
    blob = json.dumps({"request": encode_request(request), "out": str(out_root)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


# ---------------------------------------------------------------------------------------------
# The journal


class Journal:
    """SQLite record of every job; the source of truth across restarts.

    WAL with synchronous=NORMAL: a committed transaction survives the process being killed
    (only an OS crash could lose the last one), and commits cost no fsync of the main file.
    One connection shared by the threads behind a lock: writes are tiny and rare.
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=10)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            """CREATE TABLE IF NOT EXISTS jobs (
                seq INTEGER PRIMARY KEY AUTOINCREMENT,
                job_id TEXT NOT NULL UNIQUE,
                priority INTEGER NOT NULL,
                fingerprint TEXT NOT NULL,
                request TEXT NOT NULL,
                out_root TEXT NOT NULL,
                device TEXT NOT NULL,
                origin TEXT NOT NULL,
                state TEXT NOT NULL,
                stage TEXT NOT NULL DEFAULT '',
                message TEXT NOT NULL DEFAULT '',
                code TEXT,
                manifest TEXT,
                cached INTEGER NOT NULL DEFAULT 0,
                attempts INTEGER NOT NULL DEFAULT 0,
                created REAL NOT NULL,
                updated REAL NOT NULL)"""
        )
        self._db.execute("CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state)")

    def insert(self, job: Job) -> int:
        with self._lock:
            cur = self._db.execute(
                "INSERT INTO jobs (job_id, priority, fingerprint, request, out_root, device, origin,"
                " state, stage, created, updated) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (
                    job.job_id,
                    int(job.priority),
                    job.fingerprint,
                    json.dumps(encode_request(job.request)),
                    str(job.out_root),
                    job.device,
                    json.dumps(job.origin),
                    job.state,
                    job.stage,
                    job.created,
                    time.time(),
                ),
            )
            return int(cur.lastrowid or 0)

    def update(self, job_id: str, **values: Any) -> None:
        values["updated"] = time.time()
        cols = ", ".join(f"{k} = ?" for k in values)
        with self._lock:
            self._db.execute(f"UPDATE jobs SET {cols} WHERE job_id = ?", (*values.values(), job_id))

    def delete(self, job_id: str) -> None:
        """Forget a job that was never announced (its submission failed half-way)."""
        with self._lock:
            self._db.execute("DELETE FROM jobs WHERE job_id = ?", (job_id,))

    def get(self, job_id: str) -> sqlite3.Row | None:
        with self._lock:
            return self._db.execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,)).fetchone()

    def active(self) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(
                "SELECT * FROM jobs WHERE state IN ('queued', 'running') ORDER BY seq"
            ).fetchall()

    def latest(self, limit: int) -> list[sqlite3.Row]:
        """The newest `limit` jobs, newest first."""
        with self._lock:
            return self._db.execute("SELECT * FROM jobs ORDER BY seq DESC LIMIT ?", (limit,)).fetchall()

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
        return {row[0]: row[1] for row in rows}

    def prune(self, older_than: float) -> int:
        with self._lock:
            cur = self._db.execute(
                "DELETE FROM jobs WHERE state IN ('done', 'error', 'cancelled') AND updated < ?",
                (older_than,),
            )
            return cur.rowcount

    def close(self) -> None:
        with self._lock:
            self._db.close()


# ---------------------------------------------------------------------------------------------
# Jobs


@dataclass
class Job:
    """One request moving through the daemon. `origin` is the front door's own data (for OSC:
    where replies go), journaled so a job recovered after a crash can still report back."""

    job_id: str
    request: Request
    out_root: Path
    priority: Priority
    fingerprint: str
    device: str
    origin: dict[str, Any] = field(default_factory=dict)
    seq: int = 0
    state: str = "queued"
    fraction: float = 0.0
    stage: str = "queued"
    message: str = ""
    code: str | None = None
    manifest_path: str | None = None
    cached: bool = False
    attempts: int = 0
    created: float = field(default_factory=time.time)
    cancel_requested: bool = False
    last_write: float = 0.0
    # Where the time went, in seconds (status.json "timing"): waiting in the queue, running,
    # and inside the pipeline (None for a cache hit). run - pipeline is the daemon's own cost.
    timing: dict[str, float | None] = field(default_factory=dict)

    @property
    def job_dir(self) -> Path:
        return job_folder(self.out_root, self.job_id)

    def status(self) -> dict[str, Any]:
        """The status.json object (protocol keys first; the rest are additions)."""
        return {
            "job_id": self.job_id,
            "state": self.state,
            "fraction": round(self.fraction, 4),
            "stage": self.stage,
            "message": self.message,
            "code": self.code,
            "manifest_path": self.manifest_path,
            "priority": self.priority.name.lower(),
            "cached": self.cached,
            "updated": round(time.time(), 3),
            "timing": dict(self.timing),
        }


def _status_from_row(row: sqlite3.Row) -> dict[str, Any]:
    state = row["state"]
    return {
        "job_id": row["job_id"],
        "state": state,
        "fraction": 1.0 if state == "done" else 0.0,
        "stage": row["stage"],
        "message": row["message"],
        "code": row["code"],
        "manifest_path": row["manifest"],
        "priority": Priority(row["priority"]).name.lower(),
        "cached": bool(row["cached"]),
        "updated": round(row["updated"], 3),
    }


@dataclass(frozen=True)
class Submitted:
    """The answer to a submission: the job's state now, and whether this call created it."""

    job_id: str
    status: dict[str, Any]
    position: int | None  # jobs ahead of it on its device (running one included); None if not queued
    created: bool
    origin: dict[str, Any]


@dataclass(frozen=True)
class Event:
    """A change a front door may want to report: kind is progress | done | error | cancelled."""

    kind: str
    job_id: str
    status: dict[str, Any]
    origin: dict[str, Any]


Listener = Callable[[Event], None]
Runner = Callable[..., Any]  # pipeline.run's signature


def _default_device(request: Request) -> str:
    """The device a request's engine runs on: the key of its worker queue."""
    from . import engines

    engine = engines.choose_set(request.engine, request.prompts, request.spans)
    return engine.capabilities.device


def _default_runner(*args: Any, **kwargs: Any) -> Any:
    from . import pipeline

    return pipeline.run(*args, **kwargs)


def _check_source(path: Path) -> None:
    """Cheap checks at submit time, so an unreadable path (or a FIFO, device, folder: inputs that
    never end) is refused before it is queued."""
    if not path.is_absolute():
        raise ReasamError("bad_request", f"{path}: the path must be absolute")
    audio.check_regular_file(path)


_TEMPORARY = re.compile(r"\.(?P<name>.+)\.[0-9a-f]{8}\.partial")


def _own_files(request: Request, job_dir: Path) -> set[str]:
    """Names of the files a job of `request` writes into its folder besides status.json: its
    stems and manifest (by the pipeline or the cache). Their temporaries are `audio.temp_name`s
    of these and of status.json."""
    from .pipeline import stem_plan

    return {plan.path.name for plan in stem_plan(request, job_dir)} | {"manifest.json"}


def clear_outputs(job: Job) -> None:
    """Remove what a run of `job` wrote in its folder (stems, manifest, temporaries), nothing else."""
    _clear_own_files(job.job_dir, _own_files(job.request, job.job_dir))


def clear_job_folder(request: Request, job_dir: Path) -> bool:
    """Remove everything a job of `request` leaves in its folder, status.json included, so that
    the folder can be taken again (a batch redoing a row); True if it is then empty or absent,
    False if anything else is there or it is not a folder of its own (a symlink, a file)."""
    return _clear_own_files(job_dir, _own_files(request, job_dir) | {"status.json"})


def _clear_own_files(folder: Path, own: set[str]) -> bool:
    """Remove the files named in `own` and the temporaries of those and of status.json from
    `folder`, nothing else; True if the folder is then empty or absent.

    Only these names are removed, so a file someone else put there survives. The folder is
    opened with O_NOFOLLOW and entries are unlinked relative to it: a folder replaced by a
    symlink is not followed (False: not a folder of its own), and a symlink inside is removed as
    a link, never followed. Folders inside are never removed.
    """
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(folder, flags)
    except FileNotFoundError:
        return True
    except OSError:
        return False  # not a folder of its own (a symlink, a file): nothing of a job's to remove
    try:
        for name in os.listdir(fd):
            temp = _TEMPORARY.fullmatch(name)
            if name in own or (temp is not None and temp["name"] in own | {"status.json"}):
                with contextlib.suppress(OSError):
                    if not _is_dir_at(name, fd):
                        os.unlink(name, dir_fd=fd)
        return not os.listdir(fd)
    finally:
        os.close(fd)


def _is_dir_at(name: str, dir_fd: int) -> bool:
    return stat.S_ISDIR(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)


def _write_json(final: Path, body: dict[str, Any], durable: bool, job_id: str) -> OSError | None:
    """Write `body` to `final` atomically (temporary file + rename); the error if it could not be.

    Relative to the folder opened with O_NOFOLLOW: a job folder replaced by a symlink is not
    written through, and the temporary is created exclusively (never an existing file).
    """
    temp = audio.temp_name(final).name
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0)
    dir_fd = None
    try:
        dir_fd = os.open(final.parent, flags)
        create = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        fd = os.open(temp, create, 0o644, dir_fd=dir_fd)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(json.dumps(body, indent=1) + "\n")
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(temp, final.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        return None
    except OSError as exc:
        log.warning("job %s: cannot write %s (%s)", job_id, final, exc)
        if dir_fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(temp, dir_fd=dir_fd)
        return exc
    finally:
        if dir_fd is not None:
            os.close(dir_fd)


def _manifest_complete(job: Job) -> str | None:
    """The manifest path if the job's manifest and all its stems are on disk, else None."""
    path = job.job_dir / "manifest.json"
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        if manifest.get("job_id") != job.job_id:
            return None
        if all(Path(s["path"]).is_file() for s in manifest["stems"]):
            return str(path.resolve())
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return None


class JobManager:
    """The queue, its workers and the journal. Thread-safe; front doors call submit/cancel/status."""

    def __init__(
        self,
        journal_path: Path,
        cache: ResultCache | None = None,
        queue_limit: int = 256,
        runner: Runner | None = None,
        device_of: Callable[[Request], str] | None = None,
        after_job: Callable[[], None] | None = None,
        ready: threading.Event | None = None,
    ) -> None:
        self.journal = Journal(journal_path)
        self.cache = cache
        self.queue_limit = queue_limit
        self._runner = runner or _default_runner
        self._device_of = device_of or _default_device
        self._after_job = after_job
        # Set once the code jobs run is imported. The daemon imports it on a thread of its own
        # (pings are answered meanwhile); a worker importing the same modules at the same time
        # can see half-initialised ones (scipy's lazy submodules), so workers wait for it.
        self._ready = ready
        self._cond = threading.Condition(threading.RLock())
        self._jobs: dict[str, Job] = {}  # active jobs only; finished ones live in the journal
        self._heaps: dict[str, list[tuple[int, int, str]]] = {}
        self._running: dict[str, Job] = {}
        self._workers: dict[str, threading.Thread] = {}
        self._listeners: list[Listener] = []
        self._queued = 0
        self._stopping = False
        self._interrupt = False
        self._started = False

    # -- wiring ----------------------------------------------------------------------------

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def _emit(self, kind: str, job: Job) -> None:
        event = Event(kind, job.job_id, job.status(), dict(job.origin))
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                log.exception("listener failed on %s %s", kind, job.job_id)

    def start(self) -> list[str]:
        """Recover unfinished jobs from the journal and start the workers; returns their ids."""
        self.journal.prune(time.time() - RETENTION_SECONDS)
        recovered: list[str] = []
        for row in self.journal.active():
            job_id = row["job_id"]
            try:
                job = Job(
                    job_id=job_id,
                    request=decode_request(json.loads(row["request"])),
                    out_root=Path(row["out_root"]),
                    priority=Priority(row["priority"]),
                    fingerprint=row["fingerprint"],
                    device=row["device"],
                    origin=json.loads(row["origin"]),
                    seq=row["seq"],
                    attempts=row["attempts"],
                    created=row["created"],
                )
                job_folder(job.out_root, job_id)  # an id that names no folder of its own: refused
            except (ReasamError, ValueError, KeyError, TypeError) as exc:
                self._unrecoverable(row, exc)
                continue
            if row["state"] == "running":
                manifest = _manifest_complete(job)
                if manifest is not None:
                    # The crash came after the manifest was written: the job did complete.
                    job.manifest_path = manifest
                    self._finish(job, "done", stage="done", fraction=1.0)
                    log.info("journal: job %s had finished before the restart; marked done", job_id)
                    continue
                clear_outputs(job)
                if job.attempts >= MAX_ATTEMPTS:
                    # Whatever it does (hangs until killed, crashes the process), it would do again.
                    message = (
                        f"the daemon stopped {job.attempts} times while this job ran (a crash, a kill "
                        "or a hang); not run again"
                    )
                    self._finish(job, "error", stage="error", message=message, code="internal")
                    log.error("journal: job %s: %s", job_id, message)
                    continue
                log.info("journal: job %s was running at the last stop; it runs again", job_id)
            else:
                log.info("journal: job %s was queued at the last stop; queued again", job_id)
            job.stage = "queued"
            job.message = "recovered after a restart"
            with self._cond:
                self._enqueue(job)
            self.journal.update(job_id, state="queued", stage="queued", message=job.message)
            self._write_status(job, durable=False)
            recovered.append(job_id)
        with self._cond:
            self._started = True
            for device in list(self._heaps):
                self._ensure_worker(device)
        return recovered

    def _unrecoverable(self, row: sqlite3.Row, exc: Exception) -> None:
        """A journaled job that cannot run again (its request no longer decodes): an error in
        the journal and in its status.json, so clients polling the file learn of it too."""
        job_id = row["job_id"]
        log.error("journal: job %s cannot be recovered (%s)", job_id, exc)
        message = f"not recoverable after a restart: {exc}"
        self.journal.update(job_id, state="error", stage="error", code="internal", message=message)
        try:
            folder = job_folder(Path(row["out_root"]), job_id)
        except (ReasamError, TypeError, ValueError):
            return  # no folder of its own to write into
        status = _status_from_row(self.journal.get(job_id) or row)
        _write_json(folder / "status.json", status, durable=True, job_id=job_id)

    # -- front-door API ----------------------------------------------------------------------

    def submit(
        self,
        job_id: str,
        request: Request,
        out_root: Path,
        priority: Priority = Priority.OSC,
        origin: dict[str, Any] | None = None,
        announce: Callable[[Submitted], None] | None = None,
    ) -> Submitted:
        """Queue a job, or answer with the state of the job that already has this id.

        `announce` is called with a new job's Submitted after it is journaled and before a
        worker can see it, so a front door's "accepted" always goes out before any progress.

        Raises ReasamError: bad_request (invalid id, the id used by a different request, a job
        folder that already holds files), not_found (unreadable source), unsupported_prompt,
        busy (queue full or daemon stopping).
        """
        if not valid_job_id(job_id):
            raise ReasamError("bad_request", f"{JOB_ID_RULE}, got {job_id!r}")
        out_root = Path(out_root)
        if not out_root.is_absolute():
            raise ReasamError("bad_request", f"{out_root}: the output folder must be an absolute path")
        fp = fingerprint(request, out_root)
        origin = dict(origin or {})
        with self._cond:
            existing = self._existing(job_id, fp)
            if existing is not None:
                return existing
            if self._stopping:
                raise ReasamError("busy", "the daemon is shutting down; retry when it is back")
            if self._queued >= self.queue_limit:
                raise ReasamError("busy", f"the queue is full ({self.queue_limit} jobs waiting); retry later")
        # Checks that touch the disk or load engine code run outside the lock.
        _check_source(request.source)
        if self._ready is not None:
            # Choosing the device imports engine code: not beside the warm-up thread's first
            # import of it (scipy's submodules, imported from two threads at once, fail).
            self._ready.wait()
        device = self._device_of(request)
        audio.ensure_writable_dir(out_root)
        job = Job(job_id, request, out_root, Priority(priority), fp, device, origin)
        with self._cond:
            # Re-check: another thread may have submitted the same id meanwhile.
            existing = self._existing(job_id, fp)
            if existing is not None:
                return existing
            if self._queued >= self.queue_limit:
                raise ReasamError("busy", f"the queue is full ({self.queue_limit} jobs waiting); retry later")
            try:
                # mkdir never follows a symlink; what is there already may be someone else's.
                job.job_dir.mkdir()
            except FileExistsError:
                if not stat.S_ISDIR(os.lstat(job.job_dir).st_mode):
                    raise ReasamError(
                        "bad_request",
                        f"{job.job_dir}: already exists and is not a folder (a symlink or a file); "
                        "choose another job_id",
                    ) from None
                if any(job.job_dir.iterdir()):
                    raise ReasamError(
                        "bad_request",
                        f"{job.job_dir}: a job folder with this id already holds files; "
                        "choose another job_id",
                    ) from None
            except OSError as exc:
                raise output_error(exc, job.job_dir, out_root) from None
            try:
                job.seq = self.journal.insert(job)
            except sqlite3.IntegrityError:
                self._forget_new(job, journaled=False)
                raise ReasamError("bad_request", f"job id {job_id} is already in use") from None
            failed = self._write_status(job, durable=False)  # the journal row is the durable record
            if failed is not None:
                # The job never started: forget it, so the same id can be sent again later.
                self._forget_new(job, journaled=True)
                raise output_error(failed, job.job_dir / "status.json")
            position = self._position(job)  # the same before and after it joins the heap
            submitted = Submitted(job_id, job.status(), position, True, origin)
            if announce is not None:
                try:
                    announce(submitted)
                except Exception:
                    log.exception("job %s: announcing it failed", job_id)
            self._enqueue(job)
            if self._started:
                self._ensure_worker(device)
        log.info("job %s queued (%s, %s, position %d)", job_id, job.priority.name.lower(), device, position)
        return submitted

    def _forget_new(self, job: Job, journaled: bool) -> None:
        """Undo a submission that failed before it was announced: journal row, own files, folder."""
        if journaled:
            self.journal.delete(job.job_id)
        clear_outputs(job)
        with contextlib.suppress(OSError):
            os.unlink(job.job_dir / "status.json")
        with contextlib.suppress(OSError):
            job.job_dir.rmdir()

    def _existing(self, job_id: str, fp: str) -> Submitted | None:
        job = self._jobs.get(job_id)
        if job is not None:
            if job.fingerprint != fp:
                raise ReasamError("bad_request", f"job id {job_id} is already used by a different request")
            position = (
                self._position(job) if job.state == "queued" else (0 if job.state == "running" else None)
            )
            return Submitted(job_id, job.status(), position, False, dict(job.origin))
        row = self.journal.get(job_id)
        if row is None:
            return None
        if row["fingerprint"] != fp:
            raise ReasamError("bad_request", f"job id {job_id} is already used by a different request")
        return Submitted(job_id, _status_from_row(row), None, False, json.loads(row["origin"]))

    def cancel(self, job_id: str) -> dict[str, Any]:
        """Cancel a job. A queued job is cancelled at once; a running one at its engine's next
        step, within a second (the `cancelled` event follows). A finished job is left as it is.
        Returns its status now."""
        with self._cond:
            job = self._jobs.get(job_id)
            if job is None:
                return self.status(job_id)
            if job.state == "queued":
                self._queued -= 1
                job.cancel_requested = True
                del self._jobs[job_id]  # its heap entry is skipped when popped
                self._finish(job, "cancelled", stage="cancelled", message="cancelled before it started")
                clear_outputs(job)
                return job.status()
            job.cancel_requested = True
            log.info("job %s: cancel requested while running", job_id)
            return job.status()

    def status(self, job_id: str) -> dict[str, Any]:
        """The job's status.json object; not_found for an id never seen (or long forgotten)."""
        with self._cond:
            job = self._jobs.get(job_id)
            if job is not None:
                out = job.status()
                out["queue_position"] = self._position(job) if job.state == "queued" else None
                return out
        row = self.journal.get(job_id)
        if row is None:
            raise ReasamError("not_found", f"no job with id {job_id}")
        return _status_from_row(row)

    def overview(self, limit: int = 20) -> dict[str, Any]:
        """A summary for `/reasam/status` without a job id; lists are capped to fit a datagram."""
        with self._cond:
            running = [job.job_id for job in self._running.values()]
            queued = sorted(
                (j for j in self._jobs.values() if j.state == "queued"), key=lambda j: (j.priority, j.seq)
            )
            queue = [j.job_id for j in queued[:limit]]
            devices = sorted(set(self._heaps) | set(self._running))
        return {
            "version": __version__,
            "running": running,
            "queued": len(queued),
            "queue": queue,
            "queue_limit": self.queue_limit,
            "devices": devices,
            "jobs": self.journal.counts(),
            "cache": self.cache.summary() if self.cache is not None else None,
        }

    def recent(self, limit: int = 30, max_bytes: int = 6000) -> list[dict[str, Any]]:
        """The newest jobs, newest first, for a job list (the REAPER panel's `recent` key of
        `/reasam/status`): what each is, where its files go, and the times a client needs for an
        estimate of the time left (started plus fraction). Messages are cut short and the list
        is cut where its compact JSON would pass `max_bytes`, so the reply fits one datagram."""
        rows = self.journal.latest(limit)
        with self._cond:
            live = {row["job_id"]: self._jobs.get(row["job_id"]) for row in rows}
            snapshots = {k: (j.status(), j.created, j.timing.get("wait")) for k, j in live.items() if j}
        out: list[dict[str, Any]] = []
        used = 2  # the brackets
        for row in rows:
            job_id, state = row["job_id"], row["state"]
            snap = snapshots.get(job_id)
            status = snap[0] if snap else _status_from_row(row)
            request = json.loads(row["request"])
            started = None
            if snap and status["state"] == "running" and snap[2] is not None:
                started = round(snap[1] + snap[2], 3)
            message = str(status["message"])
            if len(message) > RECENT_MESSAGE_CHARS:
                message = message[: RECENT_MESSAGE_CHARS - 1] + "…"
            entry = {
                "id": job_id,
                "state": status["state"],
                "fraction": status["fraction"],
                "stage": status["stage"],
                "message": message,
                "code": status["code"],
                "out": str(Path(row["out_root"]) / job_id),
                "prompt": ", ".join([request.get("prompt", ""), *request.get("extra_prompts", [])]),
                "source": Path(request.get("source", "")).name,
                "submitted": round(row["created"], 3),
                "started": started,
                "finished": round(row["updated"], 3) if state in ("done", "error", "cancelled") else None,
            }
            size = len(json.dumps(entry, separators=(",", ":"))) + 1
            if used + size > max_bytes:
                break
            used += size
            out.append(entry)
        return out

    def idle(self) -> bool:
        with self._cond:
            return not self._running and self._queued == 0

    def wait_idle(self, timeout: float) -> bool:
        """Block until nothing is queued or running (for tests and benchmarks)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._running or self._queued:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.5))
        return True

    def shutdown(self, grace: float = 5.0) -> list[str]:
        """Stop taking jobs; let a running job finish within `grace` seconds, else interrupt it at
        its next chunk and leave it journaled as queued for the next start. Queued jobs stay in
        the journal. Returns the ids of jobs left for the next start."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            deadline = time.monotonic() + max(0.0, grace)
            while self._running and time.monotonic() < deadline:
                self._cond.wait(min(0.2, max(0.01, deadline - time.monotonic())))
            if self._running:
                log.info(
                    "stopping: interrupting %s; it runs again at the next start",
                    ", ".join(self._running_ids()),
                )
                self._interrupt = True
                deadline = time.monotonic() + INTERRUPT_WAIT
                while self._running and time.monotonic() < deadline:
                    self._cond.wait(0.2)
            left = [j.job_id for j in self._jobs.values()]
        for thread in list(self._workers.values()):
            thread.join(timeout=1.0)
        with contextlib.suppress(Exception):
            self.journal.close()
        if self.cache is not None:
            self.cache.close()
        return left

    def _running_ids(self) -> list[str]:
        return [j.job_id for j in self._running.values()]

    # -- queue internals (call with self._cond held) ------------------------------------------

    def _enqueue(self, job: Job) -> None:
        job.state = "queued"
        self._jobs[job.job_id] = job
        heapq.heappush(self._heaps.setdefault(job.device, []), (int(job.priority), job.seq, job.job_id))
        self._queued += 1
        self._cond.notify_all()

    def _position(self, job: Job) -> int:
        ahead = sum(
            1
            for prio, seq, jid in self._heaps.get(job.device, ())
            if (prio, seq) < (int(job.priority), job.seq)
            and (other := self._jobs.get(jid)) is not None
            and other.state == "queued"
        )
        return ahead + (1 if job.device in self._running else 0)

    def _ensure_worker(self, device: str) -> None:
        thread = self._workers.get(device)
        if thread is None or not thread.is_alive():
            thread = threading.Thread(
                target=self._work, args=(device,), name=f"reasam-worker-{device}", daemon=True
            )
            self._workers[device] = thread
            thread.start()

    def _next(self, device: str) -> Job | None:
        with self._cond:
            while True:
                if self._stopping:
                    return None
                heap = self._heaps.get(device, [])
                while heap:
                    _, _, job_id = heapq.heappop(heap)
                    job = self._jobs.get(job_id)
                    if job is not None and job.state == "queued":
                        self._queued -= 1
                        job.state = "running"
                        self._running[device] = job
                        return job
                self._cond.wait(1.0)

    def _work(self, device: str) -> None:
        if self._ready is not None:
            self._ready.wait()
        while True:
            job = self._next(device)
            if job is None:
                return
            try:
                self._run(job)
            except Exception:  # the worker must survive anything one job does
                log.exception("job %s: unexpected failure in the worker", job.job_id)
            finally:
                with self._cond:
                    self._running.pop(device, None)
                    self._cond.notify_all()
            if self._after_job is not None:
                try:
                    self._after_job()
                except Exception:
                    log.exception("after-job hook failed")

    # -- running a job ---------------------------------------------------------------------

    def _cancelled(self, job: Job) -> Callable[[], bool]:
        return lambda: job.cancel_requested or self._interrupt

    def _progress(self, job: Job) -> Callable[[float, str], None]:
        def report(fraction: float, stage: str) -> None:
            changed = stage != job.stage
            job.fraction = max(job.fraction, min(1.0, float(fraction)))
            job.stage = stage
            now = time.monotonic()
            if now - job.last_write >= PROGRESS_INTERVAL:
                # The file at most every PROGRESS_INTERVAL and without fsync: each write costs
                # milliseconds, and a short job would otherwise spend more on its status file
                # than on its audio. Messages are cheap: every stage change is sent.
                job.last_write = now
                self._write_status(job, durable=False)
                self._emit("progress", job)
            elif changed:
                self._emit("progress", job)

        return report

    def _run(self, job: Job) -> None:
        started = time.monotonic()
        job.timing = {"wait": round(time.time() - job.created, 4), "run": None, "pipeline": None}
        job.attempts += 1
        job.stage, job.fraction, job.message = "starting", 0.0, ""
        self.journal.update(job.job_id, state="running", stage="starting", message="", attempts=job.attempts)
        job.last_write = time.monotonic()
        self._write_status(job, durable=False)  # the journal is the durable record of "running"
        self._emit("progress", job)
        log.info("job %s running (attempt %d)", job.job_id, job.attempts)
        try:
            result = None
            key = None
            if self.cache is not None:
                key, result = self._from_cache(job)
            if result is None:
                if job.attempts > 1:
                    clear_outputs(job)
                began = time.monotonic()
                checks: dict[str, Any] = {}
                if self.cache is not None and key is not None:
                    # What the key saw of the source: the pipeline fails a run that read other
                    # samples of a changed file before it publishes anything.
                    checks = self.cache.expected_source(key)
                result = self._runner(
                    job.request,
                    job.job_dir,
                    job.job_id,
                    progress=self._progress(job),
                    cancelled=self._cancelled(job),
                    **checks,
                )
                job.timing["pipeline"] = round(time.monotonic() - began, 4)
                if self.cache is not None and key is not None:
                    self.cache.store(key, result)  # kept even if cancelled below: a retry is free
            if job.cancel_requested:
                # Asked to stop after its last chunk had begun (a one-chunk job cannot stop
                # sooner): the caller does not want the result, so it is discarded.
                raise JobCancelled(job.job_id)
            job.manifest_path = str(result.manifest_path)
            job.timing["run"] = round(time.monotonic() - started, 4)
            self._finish(job, "done", stage="done", fraction=1.0)
            log.info(
                "job %s done in %.3f s%s",
                job.job_id,
                time.monotonic() - started,
                " (cache)" if job.cached else "",
            )
        except JobCancelled:
            if job.cancel_requested:
                clear_outputs(job)
                self._finish(job, "cancelled", stage="cancelled", message="cancelled")
                log.info("job %s cancelled", job.job_id)
            else:
                self._requeue_for_restart(job)
        except ReasamError as exc:
            self._finish(job, "error", stage="error", message=exc.message, code=exc.code)
            log.info("job %s failed: %s: %s", job.job_id, exc.code, exc.message)
        except Exception as exc:
            if is_out_of_memory(exc):
                said = detail(exc)
                message = (
                    f"out of memory ({type(exc).__name__}: {said}); try quality fast or a shorter region"
                )
                self._finish(job, "error", stage="error", message=message, code="out_of_memory")
                log.error("job %s ran out of memory: %s", job.job_id, said)
                return
            log.exception("job %s: internal error", job.job_id)
            message = f"{type(exc).__name__}: {exc}"
            self._finish(job, "error", stage="error", message=message, code="internal")

    def _from_cache(self, job: Job) -> tuple[str | None, Any]:
        """(key, result of a hit or None). A broken cache costs only the cache, never the job;
        a ReasamError (unreadable source, region past the end) is the job's own and propagates."""
        assert self.cache is not None
        try:
            key = self.cache.key(job.request, self._cancelled(job))
            result = self.cache.fetch(key, job.request, job.job_id, job.job_dir, self._cancelled(job))
        except (ReasamError, JobCancelled):
            raise
        except Exception:
            log.exception("job %s: result cache failed; running without it", job.job_id)
            return None, None
        if result is not None:
            job.cached = True
        return key, result

    def _requeue_for_restart(self, job: Job) -> None:
        """A job interrupted by a stopping daemon: journaled as queued, it runs at the next start.
        This run is taken back from its attempts: only runs that a crash, a kill or a hang ended
        count towards MAX_ATTEMPTS, never a normal stop."""
        clear_outputs(job)
        job.state, job.stage, job.fraction = "queued", "queued", 0.0
        job.attempts = max(0, job.attempts - 1)
        job.message = "interrupted by the daemon stopping; runs again at the next start"
        self.journal.update(
            job.job_id, state="queued", stage="queued", message=job.message, attempts=job.attempts
        )
        self._write_status(job)
        log.info("job %s interrupted; journaled for the next start", job.job_id)

    def _finish(
        self,
        job: Job,
        state: str,
        stage: str,
        fraction: float | None = None,
        message: str = "",
        code: str | None = None,
    ) -> None:
        """Journal first, then status.json, then the event: whoever hears of it can rely on it."""
        job.state, job.stage, job.message, job.code = state, stage, message, code
        if fraction is not None:
            job.fraction = fraction
        self.journal.update(
            job.job_id,
            state=state,
            stage=stage,
            message=message,
            code=code,
            manifest=job.manifest_path,
            cached=int(job.cached),
        )
        with self._cond:
            self._jobs.pop(job.job_id, None)
        self._write_status(job)
        self._emit(state, job)

    def _write_status(self, job: Job, durable: bool = True) -> OSError | None:
        """Rewrite status.json atomically; the error if it could not be. `durable` adds an fsync,
        for the final states (done, error, cancelled); the others are recorded durably in the
        journal, and the file is rewritten from it at the next start."""
        return _write_json(job.job_dir / "status.json", job.status(), durable, job.job_id)
