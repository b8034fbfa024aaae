"""`reasam batch manifest.csv`: a CSV batch, a front door beside the OSC server.

The manifest becomes rows (batch_rows.py); rows already done (the resume record in the output
root) are skipped; the rest run in this process, in the running daemon's queue at batch
priority, or on a Ray cluster (batch_runners.py); the driver here records every outcome the
moment it arrives, shows progress, and writes the summary. One bad row is reported and the batch
goes on.

Exit codes: 0 every row done (now or in an earlier run), 1 one row or more failed, 2 the batch
could not start (manifest missing or malformed, bad option, Ray not installed), 3 the daemon did
not answer (`--via-daemon`), 130 interrupted. A rerun resumes in every case.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import stat
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .batch_rows import Record, Row, complete, read_manifest
from .batch_runners import Outcome, RayPlan, Task, ray_missing, run_in_process, run_on_ray, run_via_daemon
from .errors import ReasamError
from .request import encode_request

# 2 (usage) and 3 (no answer) come from the CLI's handling of the errors raised here.
EXIT_OK, EXIT_FAILED = 0, 1
EXITS = (
    "Exit codes: 0 every row done (now or in an earlier run), 1 one row or more failed (see the "
    "summary) or the output root is not writable, 2 the batch could not start (manifest, options, "
    "Ray missing), 3 no answer from the daemon (--via-daemon), 130 interrupted. A rerun skips "
    "the rows already done."
)
SUMMARY_COLUMNS = ("row", "input", "prompt", "status", "folder", "seconds", "code", "message", "worker")


def add_parser(
    sub: argparse._SubParsersAction, client_flags: Callable[[argparse.ArgumentParser], None]
) -> None:
    p = sub.add_parser(
        "batch",
        help="separate every row of a CSV manifest (resumable; in process, via the daemon or on Ray)",
        description="Columns: input (relative to the manifest's folder), prompt, then any of span "
        "(several separated by ';'), region, engine, quality, format (or output_format), bit_depth, "
        "sample_rate, mono, stereo, normalize_peak, normalize_lufs, trim_silence, gate, seed, out (a "
        "sub-folder of the output root). " + EXITS,
    )
    p.add_argument("manifest", type=Path, help="CSV file with a header line")
    p.add_argument(
        "--out",
        type=Path,
        default=Path("reasam-output"),
        help="output root (default ./reasam-output); one folder per row, the resume record and the "
        "summaries go here",
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--via-daemon", action="store_true", help="queue the rows in the running daemon at batch priority"
    )
    where.add_argument(
        "--ray",
        nargs="?",
        const="local",
        default=None,
        metavar="ADDRESS",
        help="run on a Ray cluster (Ray Data); without ADDRESS a local Ray instance is started",
    )
    p.add_argument(
        "--workers", type=int, default=None, help="Ray actors (default: one per GPU, else CPUs - 1)"
    )
    p.add_argument("--cpus-per-worker", type=float, default=1.0, help="Ray: CPUs each actor takes")
    p.add_argument(
        "--gpus-per-worker", type=float, default=None, help="Ray: GPUs each actor takes (default 1 if any)"
    )
    p.add_argument("--json", action="store_true", help="JSON lines on stdout: one per row, then the summary")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress display")
    client_flags(p)


@dataclass
class Line:
    """One row of the summary."""

    row: int
    input: str
    prompt: str
    status: str = "pending"  # done | skipped (done earlier) | failed | pending (not reached)
    folder: str = ""
    seconds: float | None = None
    code: str = ""
    message: str = ""
    worker: str = ""  # where it ran (a Ray actor's host:pid, "daemon", "in process")


class Progress:
    """Rows done, failures and ETA: a tqdm bar on a terminal, plain lines otherwise, JSON lines
    with --json (on stdout, so stderr stays for people).

    Rows settled without work (done earlier, bad) count as done but not into the rate: the ETA
    comes from the rows that ran in this run only, from `begin` on.
    """

    def __init__(self, total: int, mode: str) -> None:
        self.mode, self.total = mode, total
        self.done = self.failed = self.settled = 0
        self.started: float | None = None
        self.bar: Any = None

    def begin(self) -> None:
        """Work starts: what is done so far was settled without any."""
        self.settled, self.started = self.done, time.monotonic()
        if self.mode == "bar":
            from tqdm import tqdm

            self.bar = tqdm(
                total=self.total, initial=self.done, unit="row", file=sys.stderr, dynamic_ncols=True
            )
            self.bar.set_postfix(failed=self.failed)

    def note(self, text: str) -> None:
        if self.mode == "json":
            print(json.dumps({"event": "note", "message": text}), flush=True)
        elif self.bar is not None:
            self.bar.write(f"reasam batch: {text}", file=sys.stderr)
        elif self.mode in ("lines", "bar"):
            print(f"reasam batch: {text}", file=sys.stderr, flush=True)

    def row(self, line: Line) -> None:
        self.done += 1
        self.failed += line.status == "failed"
        what = f"{line.code}: {line.message}" if line.status == "failed" else line.folder
        if self.mode == "json":
            print(json.dumps({"event": "row", **asdict(line)}), flush=True)
        elif self.bar is not None:
            self.bar.set_postfix(failed=self.failed, refresh=False)
            self.bar.update(1)
            if line.status == "failed":
                self.bar.write(f"row {line.row} failed: {what}", file=sys.stderr)
        elif self.mode == "lines" or (self.mode == "bar" and line.status == "failed"):
            ran = self.done - self.settled
            eta = ""
            if self.started is not None and ran > 0:
                eta = f", ETA {(time.monotonic() - self.started) / ran * (self.total - self.done):.0f} s"
            print(
                f"[{self.done}/{self.total}] {self.failed} failed{eta} | row {line.row} {line.status}: "
                f"{what}",
                file=sys.stderr,
                flush=True,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run(args: argparse.Namespace, client_factory: Callable[[argparse.Namespace], Any]) -> int:
    """The `reasam batch` command."""
    ray_only = args.workers is not None or args.gpus_per_worker is not None or args.cpus_per_worker != 1.0
    if ray_only and args.ray is None:
        raise ReasamError("bad_request", "--workers, --cpus-per-worker and --gpus-per-worker go with --ray")
    if args.workers is not None and args.workers < 1:
        raise ReasamError("bad_request", "--workers must be at least 1")
    if args.cpus_per_worker <= 0 or (args.gpus_per_worker or 0) < 0:
        raise ReasamError("bad_request", "--cpus-per-worker must be above 0, --gpus-per-worker 0 or more")
    if args.ray is not None:
        try:
            import ray  # noqa: F401  (checked before any input is hashed)
        except ImportError:
            raise ray_missing() from None
    manifest = args.manifest.expanduser().absolute()
    root = args.out.expanduser().absolute()
    rows = read_manifest(manifest)
    from .audio import ensure_writable_dir

    ensure_writable_dir(root)
    started = time.monotonic()
    record = Record(root)
    lines = [Line(r.number, r.input, r.prompt) for r in rows]
    mode = "json" if args.json else ("none" if args.quiet else ("bar" if sys.stderr.isatty() else "lines"))
    progress = Progress(len(rows), mode)
    where = "via the daemon" if args.via_daemon else ("on Ray" if args.ray else "in process")
    code = EXIT_OK
    runner: dict[str, Any] = {}
    stack = contextlib.ExitStack()
    try:
        client = None
        if args.via_daemon:
            client = stack.enter_context(client_factory(args))
            client.ping()  # no daemon: fail at once (exit 3), not after the first timeout
        tasks, by_key = _plan(rows, lines, record, root, progress, _daemon_state(client) if client else None)
        progress.note(
            f"{len(rows)} rows: {len(tasks)} to run {where}; {len(rows) - len(tasks)} done earlier, "
            "repeated or bad"
        )
        progress.begin()

        lock = threading.Lock()  # outcomes arrive from worker threads (one per device)

        def report(outcome: Outcome) -> None:
            with lock:
                _settle(outcome)

        def _settle(outcome: Outcome) -> None:
            task = by_key[outcome.key]
            state = "done" if outcome.ok else "error"
            record.write(task.key, str(task.job_dir.relative_to(root)), state, outcome.seconds)
            for n, line in enumerate(lines_of[outcome.key]):
                line.status = "failed" if not outcome.ok else ("skipped" if n else "done")
                line.seconds, line.worker = outcome.seconds, outcome.worker
                if not outcome.ok:
                    line.code, line.message = outcome.code or "", outcome.message
                    line.folder = line.folder if task.job_dir.exists() else ""
                progress.row(line)

        lines_of: dict[str, list[Line]] = {}
        for row, line in zip(rows, lines, strict=True):
            if row.key in by_key:
                lines_of.setdefault(row.key, []).append(line)
        task_list = list(by_key.values())
        if client is not None:
            run_via_daemon(task_list, report, client, client.auth())
        elif args.ray:
            plan = RayPlan(
                None if args.ray == "local" else args.ray,
                args.workers,
                args.cpus_per_worker,
                args.gpus_per_worker,
            )
            runner = run_on_ray(task_list, report, plan, progress.note)
        else:
            run_in_process(task_list, report)
    except KeyboardInterrupt:
        code = 130
    finally:
        stack.close()
        progress.close()
        record.close()
        summary = _write_summary(root, manifest, lines, where, time.monotonic() - started, runner)
        if args.json:
            print(json.dumps({"event": "summary", **summary}), flush=True)
        sys.stderr.write(_paragraph(summary) + "\n")
    if code:
        return code
    return EXIT_OK if summary["counts"]["failed"] == 0 and summary["counts"]["pending"] == 0 else EXIT_FAILED


def _daemon_state(client: Any) -> Callable[[str], str | None]:
    """The state of the daemon's job with this id (queued, running, done, error, cancelled), or
    None if it has none. The daemon holds a job id to its outcome for weeks (its journal), so a
    row sent again under an id the daemon has finished with would only get that old outcome."""

    def state(job_id: str) -> str | None:
        try:
            return client.status(job_id).get("state")
        except ReasamError as exc:
            if exc.code == "not_found":
                return None
            raise

    return state


def _plan(
    rows: list[Row],
    lines: list[Line],
    record: Record,
    root: Path,
    progress: Progress,
    daemon_state: Callable[[str], str | None] | None = None,
) -> tuple[list[Task], dict[str, Task]]:
    """Settle what needs no work (bad rows, rows done earlier, repeats of a row) and give every
    other row a folder of its own; the record's `start` line makes that folder the batch's."""
    by_key: dict[str, Task] = {}
    first_of: dict[str, Line] = {}
    for row, line in zip(rows, lines, strict=True):
        if row.error is not None:
            line.status, line.code, line.message = "failed", row.error.code, row.error.message
            progress.row(line)
            continue
        assert row.request is not None
        parent = root / row.sub if row.sub else root
        first = first_of.get(row.key)
        if first is not None:
            line.message, line.folder = f"same request as row {first.row}", first.folder
            if row.key not in by_key:  # the first one was settled: so is this one
                line.status, line.folder = "skipped", first.folder
                progress.row(line)
            continue
        first_of[row.key] = line
        finished = record.finished(row.key)
        if finished is not None:
            line.status, line.folder, line.seconds = "skipped", str(finished), record.entries[row.key].seconds
            progress.row(line)
            continue
        folder = _folder(row, parent, record, daemon_state)
        line.folder = str(folder)
        record.write(row.key, str(folder.relative_to(root)), "start")
        by_key[row.key] = Task(row.key, folder.name, str(folder.parent), encode_request(row.request))
    return list(by_key.values()), by_key


def _folder(row: Row, parent: Path, record: Record, daemon_state: Callable[[str], str | None] | None) -> Path:
    """The row's job folder, whose name is also its job id via the daemon.

    The one the record gave it before, if it is a folder of the output root: followed as it is
    while the daemon's job of that id is queued or running, or done with every result on disk;
    else cleared of the row's own files and taken again, unless anything else is left there or
    the daemon has finished with that id (an error, a cancel, or done with results missing since:
    the daemon would only answer with that old outcome). Otherwise a fresh folder
    `<input>-<prompt>-<key>`, with -2, -3… past names that hold anything (never written into,
    never removed), that are not folders of their own (symlinks, files) or that the daemon knows.
    """
    from .jobs import clear_job_folder

    assert row.request is not None
    entry = record.entries.get(row.key)
    earlier = record.folder(entry) if entry is not None else None
    if earlier is not None and earlier.parent == parent:
        state = daemon_state(earlier.name) if daemon_state is not None else None
        if state in ("queued", "running") or (state == "done" and complete(earlier)):
            return earlier
        if clear_job_folder(row.request, earlier):
            if state is None:
                return earlier
            with contextlib.suppress(OSError):
                earlier.rmdir()  # an empty folder left behind would only puzzle
    name = row.folder_name(parent)
    for n in range(1, 1000):
        folder = parent / (name if n == 1 else f"{name}-{n}")
        if _free(folder) and (daemon_state is None or daemon_state(folder.name) is None):
            return folder
    raise ReasamError("internal", f"{parent}: too many folders named {name}")


def _free(folder: Path) -> bool:
    """Absent, or an empty folder of its own (not a symlink to one)."""
    try:
        return stat.S_ISDIR(os.lstat(folder).st_mode) and not any(folder.iterdir())
    except FileNotFoundError:
        return True
    except OSError:
        return False


def _write_summary(
    root: Path, manifest: Path, lines: list[Line], where: str, seconds: float, runner: dict[str, Any]
) -> dict[str, Any]:
    """`<out>/batch-<manifest>-<UTC time>.csv` and `.json`: one line per row. New files every
    run (published atomically, never replacing anything), so earlier summaries stay."""
    from .audio import write_text
    from .pipeline import slug

    counts = {s: sum(1 for x in lines if x.status == s) for s in ("done", "skipped", "failed", "pending")}
    summary: dict[str, Any] = {
        "manifest": str(manifest),
        "out": str(root),
        "where": where,
        "rows": len(lines),
        "counts": counts,
        "seconds": round(seconds, 3),
        "runner": runner,
        "lines": [asdict(x) for x in lines],
    }
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    csv_path, json_path = (root / f"batch-{slug(manifest.stem)}-{stamp}.{ext}" for ext in ("csv", "json"))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=SUMMARY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for line in lines:
        writer.writerow({k: "" if v is None else v for k, v in asdict(line).items()})
    try:
        write_text(csv_path, buffer.getvalue())
        write_text(json_path, json.dumps(summary, indent=1) + "\n")
        summary["summary_files"] = [str(csv_path), str(json_path)]
    except (OSError, ReasamError) as exc:
        summary["summary_files"] = []
        sys.stderr.write(f"reasam batch: cannot write the summary in {root} ({exc})\n")
    return summary


def _paragraph(summary: dict[str, Any]) -> str:
    c = summary["counts"]
    text = (
        f"reasam batch: {summary['rows']} rows of {summary['manifest']} {summary['where']} in "
        f"{summary['seconds']:.1f} s: {c['done']} done, {c['skipped']} skipped (done earlier or repeated), "
        f"{c['failed']} failed"
    )
    if c["pending"]:
        text += f", {c['pending']} not run (rerun the same command to resume)"
    failed = [x for x in summary["lines"] if x["status"] == "failed"]
    if failed:
        shown = "; ".join(f"row {x['row']}: {x['code']}: {x['message']}" for x in failed[:3])
        text += f" ({shown}{'; …' if len(failed) > 3 else ''})"
    text += f". Results in {summary['out']}"
    if summary.get("summary_files"):
        text += f"; summary in {summary['summary_files'][0]} and .json"
    return text + "."
