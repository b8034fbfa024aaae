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
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from watchdog.events import (
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


def is_sidecar(name: str) -> bool:
    return name.endswith(SIDECAR_SUFFIXES)


def is_candidate(name: str) -> bool:
    """An inbox file worth taking: not hidden, not a temporary name, not a sidecar."""
    return not (name.startswith(".") or name.lower().endswith(_TEMP_SUFFIXES) or is_sidecar(name))


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


class Settler:
    """Candidates waiting to stay unchanged for `settle` seconds. Thread-safe: watchdog's thread
    adds, the watch service's thread polls."""

    def __init__(self, settle: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.settle = settle
        self._clock = clock
        self._lock = threading.Lock()
        self._pending: dict[Path, _Pending] = {}

    def touch(self, path: Path) -> None:
        """A writer finished with `path` (or it is new to us): (re)start its settle time."""
        with self._lock:
            self._pending[path] = _Pending(None, self._clock())

    def refresh(self, path: Path) -> None:
        """`path` changed: restart its settle time if it is a candidate already."""
        with self._lock:
            if path in self._pending:
                self._pending[path] = _Pending(None, self._clock())

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
                    self._pending[path] = _Pending(signature, now)
                elif now - pending.since >= self.settle:
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
        elif isinstance(event, FileDeletedEvent) and src is not None:
            self.settler.forget(src)
        elif isinstance(event, FileModifiedEvent | FileCreatedEvent) and src is not None:
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
