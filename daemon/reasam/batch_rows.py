"""Batch manifests: reading the CSV into rows, each row's identity, and the resume record.

A row's identity (its key) is its whole request plus the content of its input, never its path:
the same file with two prompts is two rows, an edited input is a new row, and a collection moved
to another machine (other absolute paths) still finds its finished rows. The record of finished
rows lives in the output root beside the stems (`RECORD_NAME`), with folders relative to that
root, so it travels with the outputs.

The record is an append-only JSON-lines file written by the batch's driver alone: a `start` line
before a row is handed to a worker (from then on its folder is the batch's own), then `done` or
`error`. A line is flushed and fsynced before the next step, and a torn last line (kill -9 in
the middle of a write) is ignored on reading, so the record is never more optimistic than the
disk.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path, PurePath

from .errors import ReasamError
from .request import FIELD_NAMES, Request, encode_request, request_from_fields

RECORD_NAME = "reasam-batch-record.jsonl"
# Columns besides the request's own options (request.FIELD_NAMES): the input file and an
# optional sub-folder of the output root for that row's results.
EXTRA_COLUMNS = ("input", "out")
_HASH_BLOCK = 1 << 20


@dataclass
class Row:
    """One manifest line: what it asks for, or why it cannot run."""

    number: int  # line number in the CSV file (the header is line 1)
    input: str  # the input cell as written
    prompt: str  # the prompt cell as written (for the summary)
    request: Request | None = None
    sub: str = ""  # sub-folder of the output root ("" = the root itself)
    key: str = ""  # request + input content, see `row_key`
    error: ReasamError | None = None

    def folder_name(self, parent: Path) -> str:
        """A new job folder's name, `<input>-<prompt>-<8 hex>`: readable, within the protocol's
        64 characters, and unique per key *and* folder, because via the daemon it is also the
        job id, and the daemon holds a job id to one request and output root for weeks (the same
        manifest run into a second output root must not collide with the first)."""
        from .pipeline import slug

        assert self.request is not None
        stem = slug(self.request.source.stem)[:24].rstrip("-")
        target = slug(self.request.target_name)[:20].rstrip("-")
        tag = hashlib.sha256(f"{self.key}\n{parent}".encode()).hexdigest()[:8]
        return f"{stem}-{target}-{tag}"


def _header(names: list[str] | None, path: Path) -> list[str]:
    if not names:
        raise ReasamError("bad_request", f"{path}: empty manifest (the first line names the columns)")
    clean = [str(n or "").strip().lower().replace("-", "_") for n in names]
    known = (*EXTRA_COLUMNS, *FIELD_NAMES)
    unknown = [n for n in clean if n not in known]
    if unknown:
        # A typo in a column name would silently drop an option from every row: refuse it.
        raise ReasamError(
            "bad_request",
            f"{path}: unknown column(s) {', '.join(map(repr, unknown))} (known: {', '.join(known)})",
        )
    if "input" not in clean:
        raise ReasamError("bad_request", f"{path}: the manifest needs an 'input' column")
    if len(set(clean)) != len(clean):
        raise ReasamError("bad_request", f"{path}: a column is named twice")
    return clean


def _sub_folder(text: str) -> str:
    """The `out` cell: a relative folder inside the output root, never outside it."""
    text = text.strip()
    if not text:
        return ""
    part = PurePath(text)
    if part.is_absolute() or text.startswith("~") or any(p in ("..", "") for p in part.parts):
        raise ReasamError(
            "bad_request", f"out {text!r} must be a folder inside the output root (relative, no ..)"
        )
    return part.as_posix()


def content_hash(path: Path) -> str:
    """sha256 of the file's bytes (streamed: inputs may be hours of audio)."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            while block := fh.read(_HASH_BLOCK):
                digest.update(block)
    except FileNotFoundError:
        raise ReasamError("not_found", f"{path}: no such file") from None
    except IsADirectoryError:
        raise ReasamError("bad_request", f"{path}: not a regular file") from None
    except OSError as exc:
        raise ReasamError("not_found", f"{path}: cannot read ({exc.strerror})") from None
    return digest.hexdigest()


def row_key(request: Request, content: str, sub: str) -> str:
    """The row's identity: the whole request with the input's content in place of its path."""
    data = encode_request(request)
    data["source"] = content
    blob = json.dumps({"request": data, "out": sub}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def read_manifest(path: Path) -> list[Row]:
    """The manifest's rows; a bad cell makes a bad row, a bad file or header raises ReasamError.

    Inputs written relative are relative to the manifest's own folder, so a manifest and its
    audio can be moved together.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ReasamError("not_found", f"{path}: no such manifest", usage=True) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ReasamError("bad_request", f"{path}: cannot read the manifest ({exc})") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        columns = _header(next(reader, None), path)
        lines = list(reader)
    except csv.Error as exc:
        raise ReasamError("bad_request", f"{path}: not a CSV file ({exc})") from None
    base = path.resolve().parent
    rows: list[Row] = []
    for number, cells in enumerate(lines, start=2):
        if not any(c.strip() for c in cells):
            continue  # blank lines are layout, not rows
        values = dict(zip(columns, cells, strict=False))
        row = Row(number, values.get("input", "").strip(), values.get("prompt", "").strip())
        rows.append(row)
        try:
            if len(cells) > len(columns):
                raise ReasamError("bad_request", f"{len(cells)} cells for {len(columns)} columns")
            if not row.input:
                raise ReasamError("bad_request", "no input file")
            source = Path(row.input).expanduser()
            source = source if source.is_absolute() else base / source
            row.sub = _sub_folder(values.get("out", ""))
            fields = {k: v for k, v in values.items() if k not in EXTRA_COLUMNS}
            row.request = request_from_fields(Path(os.path.normpath(source)), fields)
            row.key = row_key(row.request, content_hash(row.request.source), row.sub)
        except ReasamError as exc:
            row.error = exc
    return rows


# ---------------------------------------------------------------------------------------------
# The resume record


@dataclass
class Entry:
    """What the record knows of one key: its folder (relative to the output root) and state."""

    folder: str
    state: str  # start | done | error
    seconds: float | None = None


class Record:
    """The append-only record of a batch output root (see the module's docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.path = root / RECORD_NAME
        self.entries: dict[str, Entry] = {}
        self._lock = threading.Lock()
        torn = self._load()
        self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - kept open for the batch
        if torn:  # end the torn line, or the next one would be glued to it and lost too
            self._fh.write("\n")

    def _load(self) -> bool:
        """Read the record; True if its last line is torn (no newline: killed mid-write)."""
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return False
        for line in text.splitlines():
            with contextlib.suppress(ValueError, KeyError, TypeError):
                data = json.loads(line)
                if not isinstance(data["folder"], str) or not isinstance(data["state"], str):
                    continue  # not a line this program wrote
                self.entries[data["key"]] = Entry(data["folder"], data["state"], data.get("seconds"))
        return bool(text) and not text.endswith("\n")

    def write(self, key: str, folder: str, state: str, seconds: float | None = None) -> None:
        line = {"key": key, "folder": folder, "state": state, "seconds": seconds}
        with self._lock:
            self._fh.write(json.dumps(line, separators=(",", ":")) + "\n")
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self.entries[key] = Entry(folder, state, seconds)

    def folder(self, entry: Entry) -> Path | None:
        """The entry's folder, or None if it is not a folder of this output root.

        The record travels with the outputs and is not trusted: a folder written absolute, with
        `..`, or that resolves outside the root (a symlink, in its place or above it) is refused;
        so is a folder that is itself a symlink, even to somewhere inside the root. Such a row
        is redone in a fresh folder, and nothing is read, cleared or written through the link.
        """
        part = PurePath(entry.folder)
        if not entry.folder or part.is_absolute() or ".." in part.parts:
            return None
        folder = self.root / part
        try:
            real, root = folder.resolve(), self.root.resolve()
        except (OSError, RuntimeError, ValueError):  # a symlink loop, a NUL in the name
            return None
        if real == root or not real.is_relative_to(root) or folder.is_symlink():
            return None
        return folder

    def finished(self, key: str) -> Path | None:
        """The folder of a row done earlier whose results are all still on disk, else None."""
        entry = self.entries.get(key)
        if entry is None or entry.state != "done":
            return None
        folder = self.folder(entry)
        return folder if folder is not None and complete(folder) else None

    def close(self) -> None:
        with self._lock:
            self._fh.close()


def complete(folder: Path) -> bool:
    """Whether a job folder holds its manifest and every stem it names.

    Stems are looked up by file name inside the folder: the manifest's absolute paths are those
    of the machine that wrote them, and the folder may have moved since.
    """
    try:
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
        return all((folder / Path(s["path"]).name).is_file() for s in manifest["stems"])
    except (OSError, ValueError, KeyError, TypeError):
        return False
