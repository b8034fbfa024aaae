"""The watch folder's record of files, and the mover that gives each one its final place.

Exactly once across kill -9 rests on one table, `watch_files`, in the daemon's journal database
(beside the `jobs` table of jobs.py): one row per inbox file taken, written before anything
else happens to the file, saying which job it became and how far it got:

    taken      the file is ours and its job id (= outbox folder name) is reserved
    submitted  the job is in the jobs journal (it runs, or runs again after a restart)
    finishing  the outcome is known and the file's destination in done/ or failed/ is chosen
    finished   the file (and its sidecar) moved; nothing left to do

Every step is idempotent from the row, so a restart after a crash at any point finishes the
work without doing it twice (see `WatchService.recover` and `Mover.finish`). A file is known
by its identity (device, inode, size, mtime, ctime): the same file is never taken twice, while
a file dropped again later (a new copy, or moved back in, which changes its ctime) is new work.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from .errors import ReasamError

log = logging.getLogger("reasam.watch")

SIDECAR_SUFFIXES = (".reasam.toml", ".reasam.json")
# Crash points of the exactly-once design, in the order a file passes them. The tests kill the
# daemon at each (REASAM_WATCH_FAILPOINT) to check that a restart finishes every file once.
FAILPOINTS = ("taken", "submitted", "decided", "linked", "moved")
ERROR_SUFFIX = ".error.txt"
OPEN_STATES = ("taken", "submitted", "finishing")


def failpoint(name: str) -> None:
    """Die here like a process under kill -9 when REASAM_WATCH_FAILPOINT names this point."""
    if os.environ.get("REASAM_WATCH_FAILPOINT") == name:
        log.warning("failpoint %s: killing the daemon", name)
        os.kill(os.getpid(), signal.SIGKILL)


def identity(st: os.stat_result) -> str:
    """What tells one version of a file from another: a rewrite changes size or mtime, a move
    or a new link changes ctime, a new copy has another inode."""
    return f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"


def _version(path: Path) -> tuple[int, ...] | None:
    """Device, inode, size and mtime: what a hard link keeps and a rewrite changes."""
    try:
        st = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def _version_of(ident: str) -> tuple[int, ...]:
    return tuple(int(x) for x in ident.split(":")[:4])


@dataclass
class Entry:
    """One row of `watch_files`. `inbox` and `dest` are relative POSIX paths: `inbox` under
    DIR/inbox, `dest` under DIR/done or DIR/failed (by `outcome`)."""

    folder: str
    inbox: str
    identity: str
    state: str = "taken"
    job_id: str | None = None
    sidecars: list[str] = field(default_factory=list)  # suffixes present at take: ".reasam.toml"
    outcome: str | None = None  # "done" | "failed"
    code: str | None = None
    message: str = ""
    dest: str | None = None
    moved: bool = False
    id: int = 0

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Entry:
        return cls(
            folder=row["folder"],
            inbox=row["inbox"],
            identity=row["identity"],
            state=row["state"],
            job_id=row["job_id"],
            sidecars=json.loads(row["sidecars"]),
            outcome=row["outcome"],
            code=row["code"],
            message=row["message"],
            dest=row["dest"],
            moved=bool(row["moved"]),
            id=row["id"],
        )


class FileBook:
    """The `watch_files` table: its own connection to the journal database (SQLite WAL lets
    the job manager's connection and this one commit independently)."""

    def __init__(self, journal_path: Path) -> None:
        journal_path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(
            str(journal_path), check_same_thread=False, isolation_level=None, timeout=10
        )
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            """CREATE TABLE IF NOT EXISTS watch_files (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                folder TEXT NOT NULL,
                inbox TEXT NOT NULL,
                identity TEXT NOT NULL,
                state TEXT NOT NULL,
                job_id TEXT,
                sidecars TEXT NOT NULL DEFAULT '[]',
                outcome TEXT,
                code TEXT,
                message TEXT NOT NULL DEFAULT '',
                dest TEXT,
                moved INTEGER NOT NULL DEFAULT 0,
                created REAL NOT NULL,
                updated REAL NOT NULL)"""
        )
        self._db.execute("CREATE INDEX IF NOT EXISTS watch_files_file ON watch_files(folder, inbox)")
        self._db.execute("CREATE INDEX IF NOT EXISTS watch_files_job ON watch_files(job_id)")

    def insert(self, entry: Entry) -> int:
        now = time.time()
        with self._lock:
            cur = self._db.execute(
                "INSERT INTO watch_files (folder, inbox, identity, state, job_id, sidecars, outcome,"
                " code, message, dest, moved, created, updated) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    entry.folder,
                    entry.inbox,
                    entry.identity,
                    entry.state,
                    entry.job_id,
                    json.dumps(entry.sidecars),
                    entry.outcome,
                    entry.code,
                    entry.message,
                    entry.dest,
                    int(entry.moved),
                    now,
                    now,
                ),
            )
            entry.id = int(cur.lastrowid or 0)
            return entry.id

    def update(self, entry: Entry, **values: Any) -> None:
        """Set attributes of `entry` and its row together."""
        for key, value in values.items():
            setattr(entry, key, value)
        columns = {k: (int(v) if k == "moved" else v) for k, v in values.items()}
        columns["updated"] = time.time()
        sql = ", ".join(f"{k} = ?" for k in columns)
        with self._lock:
            self._db.execute(f"UPDATE watch_files SET {sql} WHERE id = ?", (*columns.values(), entry.id))

    def delete(self, entry: Entry) -> None:
        with self._lock:
            self._db.execute("DELETE FROM watch_files WHERE id = ?", (entry.id,))

    def open_entries(self, folder: str) -> list[Entry]:
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM watch_files WHERE folder = ? AND state != 'finished' ORDER BY id", (folder,)
            ).fetchall()
        return [Entry.from_row(r) for r in rows]

    def seen(self, folder: str, inbox: str, ident: str) -> bool:
        """This very version of the file was taken before (and, say, could not be moved away)."""
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM watch_files WHERE folder = ? AND inbox = ? AND identity = ? LIMIT 1",
                (folder, inbox, ident),
            ).fetchone()
        return row is not None

    def reserved(self, job_id: str) -> bool:
        with self._lock:
            row = self._db.execute("SELECT 1 FROM watch_files WHERE job_id = ? LIMIT 1", (job_id,)).fetchone()
        return row is not None

    def counts(self, folder: str) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute(
                "SELECT outcome, COUNT(*) FROM watch_files WHERE folder = ? AND state = 'finished'"
                " GROUP BY outcome",
                (folder,),
            ).fetchall()
        return {str(r[0]): r[1] for r in rows}

    def prune(self, older_than: float) -> None:
        with self._lock:
            self._db.execute(
                "DELETE FROM watch_files WHERE state = 'finished' AND updated < ?", (older_than,)
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()


# ---------------------------------------------------------------------------------------------
# Moving files without ever replacing one


def move_no_replace(src: Path, dst: Path) -> None:
    """Rename `src` to `dst`; FileExistsError if `dst` exists. Nothing is ever replaced.

    A hard link then an unlink, because link() refuses an existing name atomically where
    rename() would silently replace it. A crash between the two leaves both names on one
    inode, which `Mover.finish` recognises. Filesystems without hard links get a checked
    rename instead.
    """
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        if os.link in os.supports_follow_symlinks:
            os.link(src, dst, follow_symlinks=False)  # a symlink dropped in moves as a symlink
        else:
            os.link(src, dst)
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        if os.path.lexists(dst):
            raise FileExistsError(errno.EEXIST, "exists", str(dst)) from None
        os.rename(src, dst)
        return
    failpoint("linked")
    os.unlink(src)


def _same_file(a: Path, b: Path) -> bool:
    """Two names of one file (not followed: a symlink is compared as itself)."""
    try:
        return os.path.samestat(os.lstat(a), os.lstat(b))
    except OSError:
        return False


def free_name(root: Path, rel: PurePosixPath, companions: list[str]) -> PurePosixPath:
    """`rel`, or `stem-2.ext`, `stem-3.ext`…: the first name under `root` at which neither the
    file nor any of its companions (`rel` + suffix: sidecar, .error.txt) exists yet."""
    for n in range(1, 100_000):
        candidate = rel if n == 1 else rel.with_name(f"{rel.stem}-{n}{rel.suffix}")
        names = [str(candidate) + suffix for suffix in ("", *companions)]
        if not any(os.path.lexists(root / name) for name in names):
            return candidate
    raise OSError(errno.EEXIST, f"no free name for {rel} in {root}")


def _write_new(path: Path, text: str) -> None:
    """Write a small file under a name that must not exist yet (temp + link: never replaces).

    A name already there is ours, from before a crash (the name was reserved); any other
    failure (a full or read-only disk, no permission) is raised: the caller must not move the
    file on without it.
    """
    from .audio import write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        write_text(path, text)
    except ReasamError:
        if not os.path.lexists(path):
            raise


class Mover:
    """Moves a finished file (and its sidecars) from the inbox to done/ or failed/."""

    def __init__(self, root: Path, book: FileBook) -> None:
        self.root = root
        self.book = book

    def dest_root(self, entry: Entry) -> Path:
        return self.root / ("done" if entry.outcome == "done" else "failed")

    def decide(self, entry: Entry, outcome: str, code: str | None, message: str) -> None:
        """Record the outcome and reserve a destination name (journaled before any move)."""
        entry.outcome = outcome
        companions = [*entry.sidecars, *([ERROR_SUFFIX] if outcome == "failed" else [])]
        dest = free_name(self.dest_root(entry), PurePosixPath(entry.inbox), companions)
        self.book.update(
            entry, state="finishing", outcome=outcome, code=code, message=message, dest=str(dest)
        )
        failpoint("decided")

    def finish(self, entry: Entry) -> None:
        """Carry out a decided entry; safe to run again after a crash at any point in it."""
        assert entry.dest is not None
        src = self.root / "inbox" / entry.inbox
        dst = self.dest_root(entry) / entry.dest
        ours = _version_of(entry.identity)
        src_version = _version(src)
        if src_version == ours and _version(dst) == ours:
            os.unlink(src)  # a crash came between link and unlink
            src_version = None
        message = entry.message
        if src_version == ours:
            try:
                self._move_all(entry)
                moved = True
            except (OSError, ReasamError) as exc:
                # Left where it is (and recorded, so it is not taken again): never lose it, nor
                # move a failed file to failed/ without its .error.txt.
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                log.error("%s: cannot move it to %s (%s)", src, self.dest_root(entry), reason)
                message = f"{message} (the file could not be moved: {reason})".strip()
                moved = False
        elif src_version is None:  # moved before a crash (or removed by the user meanwhile)
            moved = _version(dst) == ours
            self._move_sidecars(entry)
        else:
            # Replaced by a new version while in progress: that one is new work, not ours.
            log.warning("%s was replaced while in progress; the new version is taken anew", src)
            moved = False
        failpoint("moved")
        self.book.update(entry, state="finished", moved=moved, message=message)

    def _move_all(self, entry: Entry) -> None:
        assert entry.dest is not None
        root = self.dest_root(entry)
        for _ in range(100):
            try:
                if entry.outcome == "failed":
                    _write_new(root / (entry.dest + ERROR_SUFFIX), f"{entry.code}: {entry.message}\n")
                move_no_replace(self.root / "inbox" / entry.inbox, root / entry.dest)
                break
            except FileExistsError:
                # Someone put a file under the reserved name meanwhile: reserve the next one.
                companions = [*entry.sidecars, *([ERROR_SUFFIX] if entry.outcome == "failed" else [])]
                self.book.update(entry, dest=str(free_name(root, PurePosixPath(entry.inbox), companions)))
        else:
            raise OSError(errno.EEXIST, f"every name tried in {root} was taken meanwhile")
        self._move_sidecars(entry)

    def _move_sidecars(self, entry: Entry) -> None:
        assert entry.dest is not None
        root = self.dest_root(entry)
        for suffix in entry.sidecars:
            src = self.root / "inbox" / (entry.inbox + suffix)
            if not os.path.lexists(src):
                continue
            dst = root / (entry.dest + suffix)
            try:
                if _same_file(src, dst):
                    os.unlink(src)  # a crash came between link and unlink, as in `finish`
                else:
                    move_no_replace(src, dst)
            except OSError as exc:
                log.error("%s: cannot move the sidecar (%s); left in the inbox", src, exc)
