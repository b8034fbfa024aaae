"""When a file in a watch folder's inbox is complete: filesystem events, then a settle time.

A file is a candidate only once a writer has finished with it: inotify's close-write, or a
rename into the inbox (a copy tool's temporary file renamed to its final name, a file moved in
from elsewhere), or being there when the daemon starts. It is taken once its size, mtime and
inode have then stayed the same for `settle` seconds, so a file written in several pieces
(open, write, close, reopen…) is taken after its last piece, never while still being written.

watchdog delivers the events: inotify on Linux, where a file created and still open for
writing produces no candidate at all. Where the platform has no close-write event (FSEvents,
ReadDirectoryChangesW), created and modified files become candidates and the settle time alone
guards against taking a file still being written.

On Linux one more check comes last: a file some process still has open for writing is not
taken, however long it has been quiet (the kernel refuses a read lease on such a file). That
covers what events cannot: a file found by a scan (at start, or in a folder created a moment
before it was watched) while its writer pauses. A file known only from its creation (a hard
link into the inbox sends nothing else) is taken only when that check can vouch for it.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]
from watchdog.events import (
    DirCreatedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver

from .watch_files import SIDECAR_SUFFIXES

log = logging.getLogger("reasam.watch")

# Names copy tools and editors give files still being written; they are renamed when complete.
_TEMP_SUFFIXES = (".part", ".partial", ".tmp", ".temp", ".crdownload", ".download", ".swp", "~")
# Files file managers leave in folders (hidden ones, like .DS_Store, are skipped anyway).
_FOLDER_FILES = ("thumbs.db", "desktop.ini")


def is_sidecar(name: str) -> bool:
    return name.endswith(SIDECAR_SUFFIXES)


def is_candidate(name: str) -> bool:
    """An inbox file worth taking: not hidden, not a temporary name, not a sidecar."""
    lower = name.lower()
    return not (
        name.startswith(".") or lower.endswith(_TEMP_SUFFIXES) or lower in _FOLDER_FILES or is_sidecar(name)
    )


def open_for_writing(path: Path) -> bool | None:
    """Whether a process has `path` open for writing; None where the system cannot tell.

    Linux refuses a read lease on a file open for writing (EAGAIN). Leases need the file to be
    ours (or CAP_LEASE) and a filesystem that has them (not NFS or SMB): elsewhere, None.
    """
    if not hasattr(fcntl, "F_SETLEASE"):
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
    except OSError as exc:  # EAGAIN: open for writing; EACCES: someone else's file; EINVAL: fs
        return True if exc.errno == errno.EAGAIN else None
    else:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
        return False
    finally:
        os.close(fd)


def file_signature(path: Path) -> tuple[int, int, int] | None:
    """(size, mtime_ns, inode) of a regular file (or a link to one), None otherwise."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not os.path.isfile(path):
        return None
    return st.st_size, st.st_mtime_ns, st.st_ino


@dataclass
class _Pending:
    signature: tuple[int, int, int] | None
    since: float
    # Known only from its creation (a hard link, or a file still being written): taken only
    # where the system can tell that no one has it open for writing.
    needs_proof: bool = False


class Settler:
    """Candidates waiting to stay unchanged for `settle` seconds. Thread-safe: watchdog's thread
    adds, the watch service's thread polls."""

    def __init__(self, settle: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.settle = settle
        self._clock = clock
        self._lock = threading.Lock()
        self._pending: dict[Path, _Pending] = {}

    def touch(self, path: Path) -> None:
        """A writer finished with `path` (or it is new to us): (re)start its settle time, from
        now and from the file as it is now."""
        signature = file_signature(path)
        with self._lock:
            self._pending[path] = _Pending(signature, self._clock())

    def created(self, path: Path) -> None:
        """`path` appeared without a sign that its writer finished (inotify's create): a
        candidate that must also be proven closed; a close-write later makes it a plain one."""
        with self._lock:
            if path not in self._pending:
                self._pending[path] = _Pending(None, self._clock(), needs_proof=True)

    def refresh(self, path: Path) -> None:
        """`path` changed: restart its settle time if it is a candidate already."""
        with self._lock:
            pending = self._pending.get(path)
            if pending is not None:
                self._pending[path] = _Pending(None, self._clock(), pending.needs_proof)

    def pending(self, path: Path) -> bool:
        with self._lock:
            return path in self._pending

    def forget(self, path: Path) -> None:
        with self._lock:
            self._pending.pop(path, None)

    def due(self) -> list[Path]:
        """Candidates unchanged for the settle time, oldest first; they leave the settler."""
        now = self._clock()
        ready: list[tuple[float, Path]] = []
        with self._lock:
            items = list(self._pending.items())
        for path, pending in items:
            signature = file_signature(path)
            with self._lock:
                current = self._pending.get(path)
                if current is not pending:
                    continue  # touched meanwhile
                if signature is None:
                    del self._pending[path]  # gone, or not a file
                elif signature != pending.signature:
                    self._pending[path] = _Pending(signature, now, pending.needs_proof)
                elif now - pending.since >= self.settle:
                    writing = open_for_writing(path)
                    if writing or (writing is None and pending.needs_proof):
                        # Quiet but not finished (or not known to be): look again later.
                        self._pending[path] = _Pending(signature, now, pending.needs_proof)
                        continue
                    del self._pending[path]
                    ready.append((pending.since, path))
        return [path for _, path in sorted(ready)]

    def count_under(self, folder: Path) -> int:
        with self._lock:
            return sum(1 for p in self._pending if p.is_relative_to(folder))


class InboxEvents(FileSystemEventHandler):
    """watchdog events of one inbox → the settler."""

    def __init__(self, inbox: Path, settler: Settler, close_events: bool) -> None:
        self.inbox = inbox
        self.settler = settler
        self.close_events = close_events

    def _inside(self, path: str | bytes) -> Path | None:
        p = Path(os.fsdecode(path)) if path else None
        return p if p is not None and p.is_relative_to(self.inbox) else None

    def _complete(self, path: Path) -> None:
        if is_candidate(path.name):
            self.settler.touch(path)
        elif is_sidecar(path.name):
            # A sidecar arriving while its audio settles restarts the audio's settle time.
            for suffix in SIDECAR_SUFFIXES:
                if path.name.endswith(suffix):
                    self.settler.refresh(path.with_name(path.name[: -len(suffix)]))

    def on_any_event(self, event: FileSystemEvent) -> None:
        try:
            self._dispatch_event(event)
        except Exception:  # watchdog's thread must survive anything
            log.exception("watch event %r failed", event)

    def _dispatch_event(self, event: FileSystemEvent) -> None:
        src = self._inside(event.src_path)
        if isinstance(event, FileClosedEvent) and src is not None:
            self._complete(src)
        elif isinstance(event, FileMovedEvent):
            if src is not None:
                self.settler.forget(src)
            dest = self._inside(event.dest_path)
            if dest is not None:
                self._complete(dest)
        elif isinstance(event, DirMovedEvent):
            dest = self._inside(event.dest_path)
            if dest is not None:  # a folder of finished files moved in: all of them are candidates
                for path in walk_files(dest):
                    self._complete(path)
        elif isinstance(event, DirCreatedEvent) and src is not None:
            # `mkdir inbox/vocals && cp song.wav inbox/vocals/`: the new folder is watched a
            # moment after it exists, and a file closed before that sends no event of its own.
            # Those are taken like files present at start; one still open sends its close later.
            for path in walk_files(src):
                self._complete(path)
        elif isinstance(event, FileDeletedEvent) and src is not None:
            self.settler.forget(src)
        elif isinstance(event, FileCreatedEvent) and src is not None and is_candidate(src.name):
            if self.close_events:
                self.settler.created(src)  # a hard link (`ln`, `cp -l`) sends nothing else
            else:
                self._complete(src)
        elif isinstance(event, FileModifiedEvent) and src is not None:
            if self.close_events:
                self.settler.refresh(src)
            else:
                self._complete(src)


def walk_files(folder: Path) -> list[Path]:
    """Every file below `folder` (sorted, so files present at start are taken in name order)."""
    found: list[Path] = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(Path(root) / name for name in sorted(files))
    return found


def make_observer() -> tuple[BaseObserver, bool]:
    """The platform's observer, and whether it reports close-write events (inotify does).

    inotify runs with full move events, so a file renamed into the inbox from outside is a
    move (complete) rather than a creation (possibly still being written).
    """
    try:
        from watchdog.observers.inotify import InotifyObserver

        return InotifyObserver(generate_full_events=True), True
    except Exception:  # not Linux: watchdog's library for this platform raises on import
        return Observer(), False
