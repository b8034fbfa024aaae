"""Where batch rows run: in this process, in the running daemon's queue, or on a Ray cluster.

Each runner takes the rows still to do as `Task`s and reports one `Outcome` per task, in
whatever order they finish; the driver (batch.py) keeps the resume record and the summary, so
resume and the summary work the same whichever runner did the work. A runner reports a failed
row and goes on; it raises only when it cannot go on at all (the daemon stopped answering, the
Ray cluster went away).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from .errors import NoAnswer, ReasamError
from .request import decode_request

log = logging.getLogger("reasam.batch")


@dataclass(frozen=True)
class Task:
    """One row to run, as plain data (it travels to Ray actors as JSON)."""

    key: str
    job_id: str  # the job folder's name
    out_root: str  # absolute; the folder is out_root/job_id
    request: dict[str, Any]  # request.encode_request

    @property
    def job_dir(self) -> Path:
        return Path(self.out_root) / self.job_id


@dataclass(frozen=True)
class Outcome:
    key: str
    ok: bool
    seconds: float | None = None
    code: str | None = None
    message: str = ""
    worker: str = ""  # where it ran: "in process", "daemon", or a Ray actor's host:pid


Report = Callable[[Outcome], None]


def run_task(task: Task) -> Outcome:
    """Run one task through the pipeline in this process (a Ray actor's work)."""
    import socket

    from . import pipeline
    from .jobs import clear_job_folder

    worker = f"{socket.gethostname()}:{os.getpid()}"
    started = time.monotonic()
    try:
        request = decode_request(task.request)
        # The folder is the batch's own (recorded before the task was handed out): a retry after
        # a lost actor starts from what that attempt may have left. Anything else there now (or
        # a symlink in its place) is not written into.
        if not clear_job_folder(request, task.job_dir):
            raise ReasamError(
                "bad_request",
                f"{task.job_dir}: holds files not of this row, or is not a folder; the next run "
                "takes another folder",
            )
        task.job_dir.mkdir(parents=True, exist_ok=True)
        pipeline.run(request, task.job_dir, task.job_id)
        return Outcome(task.key, True, round(time.monotonic() - started, 3), worker=worker)
    except ReasamError as exc:
        seconds = round(time.monotonic() - started, 3)
        failure = Outcome(task.key, False, seconds, exc.code, exc.message, worker)
    except Exception as exc:  # one row's crash is that row's failure, not the batch's
        failure = Outcome(task.key, False, None, "internal", f"{type(exc).__name__}: {exc}", worker)
    with contextlib.suppress(OSError):
        task.job_dir.rmdir()  # only if empty: the pipeline removed what it had written
    return failure


def _labelled(report: Report, worker: str) -> Report:
    return lambda outcome: report(replace(outcome, worker=outcome.worker or worker))


# ---------------------------------------------------------------------------------------------
# In process


def run_in_process(tasks: list[Task], report: Report) -> None:
    """Through the jobs layer, as the daemon does: one worker per device, so one row at a time
    on the GPU (the engines use one device per process: several GPUs need `--ray`) beside one on
    the CPU, each job with its status.json. The journal lives in
    memory: the resume record is the batch's durable memory, and a job interrupted by kill -9
    is redone from the record."""
    from .jobs import JobManager, Priority

    report = _labelled(report, "in process")
    done = threading.Event()
    left = {t.job_id: t for t in tasks}
    started: dict[str, float] = {}
    lock = threading.Lock()

    def finish(job_id: str, outcome: Outcome) -> None:
        with lock:
            if left.pop(job_id, None) is None:
                return
            empty = not left
        report(outcome)
        if empty:
            done.set()

    def on_event(event: Any) -> None:
        task = left.get(event.job_id)
        if task is None:
            return
        now = time.monotonic()
        if event.kind == "progress":
            started.setdefault(event.job_id, now)
            return
        seconds = round(now - started.get(event.job_id, now), 3)
        status = event.status
        if event.kind == "done":
            finish(event.job_id, Outcome(task.key, True, seconds))
        else:
            finish(
                event.job_id,
                Outcome(
                    task.key, False, seconds, status.get("code") or event.kind, status.get("message", "")
                ),
            )

    manager = JobManager(Path(":memory:"), cache=None, queue_limit=len(tasks) + 1)
    manager.subscribe(on_event)
    manager.start()
    try:
        for task in tasks:
            try:
                manager.submit(task.job_id, decode_request(task.request), Path(task.out_root), Priority.BATCH)
            except ReasamError as exc:
                finish(task.job_id, Outcome(task.key, False, 0.0, exc.code, exc.message))
                with contextlib.suppress(OSError):
                    task.job_dir.rmdir()
        if tasks:
            done.wait()
    finally:
        manager.shutdown(grace=0.0)


# ---------------------------------------------------------------------------------------------
# Via the daemon

# Jobs handed to the daemon at once: enough to keep its workers busy, well under its queue limit
# (other clients still get in), and a bounded number of jobs to follow.
DAEMON_WINDOW = 16
_RESEND = 1.0  # seconds without an answer before a submission is sent again (UDP loses datagrams)
_POLL = 5.0  # seconds of silence from a running job before its status is asked for
_BUSY_WAIT = 0.5
_GIVE_UP = 30.0  # seconds of resending without a word from the daemon: it is not there


def run_via_daemon(tasks: list[Task], report: Report, client: Any, extra: list[Any]) -> None:
    """Rows go into the running daemon's queue at batch priority (key `priority batch`), so a
    person waiting in REAPER is served first. `extra` are fixed key/value pairs (the token)."""
    from .osc import encode

    report = _labelled(report, f"daemon {client.addr[0]}:{client.addr[1]}")
    pending = list(reversed(tasks))
    flight: dict[str, dict[str, Any]] = {}  # job_id → {task, sent, heard, started, accepted}

    def send(task: Task) -> None:
        client.sock.sendto(
            encode("/reasam/separate", task.job_id, *_separate_args(task), *extra), client.addr
        )

    def submit(task: Task) -> None:
        send(task)
        now = time.monotonic()
        slot = flight.setdefault(task.job_id, {"task": task, "accepted": False, "started": None})
        slot["sent"] = slot["heard"] = now

    def finish(job_id: str, outcome: Outcome) -> None:
        flight.pop(job_id, None)
        report(outcome)

    while pending or flight:
        while pending and len(flight) < DAEMON_WINDOW:
            submit(pending.pop())
        message = client.receive(0.2)
        now = time.monotonic()
        if message is not None:
            address, args = message
            slot = flight.get(args[0]) if args and isinstance(args[0], str) else None
            if slot is not None:
                task = slot["task"]
                slot["heard"] = now
                if address == "/reasam/accepted":
                    slot["accepted"] = True
                elif address == "/reasam/progress":
                    slot["accepted"] = True
                    if slot["started"] is None and len(args) > 2 and args[2] != "queued":
                        slot["started"] = now
                elif address == "/reasam/done":
                    finish(task.job_id, Outcome(task.key, True, _job_seconds(task, slot, now)))
                elif address == "/reasam/error":
                    code, text = (str(args[1]), str(args[2])) if len(args) > 2 else ("internal", "")
                    if code == "busy":  # queue full: try again once some of ours are done
                        flight.pop(task.job_id)
                        pending.append(task)
                        time.sleep(_BUSY_WAIT)
                    else:
                        seconds = _job_seconds(task, slot, now)
                        finish(task.job_id, Outcome(task.key, False, seconds, code, text))
                elif address == "/reasam/cancelled":
                    gone = Outcome(task.key, False, None, "cancelled", "cancelled in the daemon")
                    finish(task.job_id, gone)
        for slot in list(flight.values()):
            if not slot["accepted"] and now - slot["sent"] > _RESEND:
                if now - slot["heard"] > _GIVE_UP:
                    raise NoAnswer(f"no answer from the daemon at {client.addr[0]}:{client.addr[1]}")
                send(slot["task"])
                slot["sent"] = now
            elif slot["accepted"] and now - slot["heard"] > _POLL:
                _poll(client, slot, finish, now)


_SENT = ("source", "prompt", "spans", "region", "quality", "engine", "output")


def _separate_args(task: Task) -> list[Any]:
    """/reasam/separate's path, prompt and key/value pairs for a task (protocol.md plus the
    additions README lists: output options and `priority`)."""
    r = task.request
    out = r["output"]
    pairs: list[Any] = [
        "region", f"{r['region'][0]!r}:{'' if r['region'][1] is None else repr(r['region'][1])}",
        "quality", r["quality"], "engine", r["engine"], "out", task.out_root, "format", out["format"],
        "stereo", out["stereo"], "mono", "true" if out["mono"] else "false", "priority", "batch",
    ]  # fmt: skip
    # Request fields beyond these (added to the request later) travel under their own name.
    for key, value in r.items():
        if key not in _SENT and isinstance(value, int | float | str) and not isinstance(value, bool):
            pairs += [key, value]
    for sign, start, end in r["spans"]:
        pairs += ["span", f"{sign}{start!r}:{end!r}"]
    for prompt in r.get("extra_prompts", ()):  # a stem set: the prompts after the first
        pairs += ["prompt", prompt]
    for key in ("bit_depth", "sample_rate"):
        if out[key] is not None:
            pairs += [key, int(out[key])]
    for key, name in (
        ("peak_dbfs", "normalize_peak"),
        ("lufs", "normalize_lufs"),
        ("trim_silence_db", "trim_silence"),
        ("gate_db", "gate"),
    ):
        if key in out["post"]:
            pairs += [name, repr(float(out["post"][key]))]
    return [r["source"], r["prompt"], *pairs]


def _job_seconds(task: Task, slot: dict[str, Any], now: float) -> float | None:
    """The daemon's own measure of the run (status.json timing.run), else what we saw."""
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        status = json.loads((task.job_dir / "status.json").read_text(encoding="utf-8"))
        if status["timing"]["run"] is not None:
            return float(status["timing"]["run"])
    return round(now - (slot["started"] or slot["sent"]), 3)


def _poll(client: Any, slot: dict[str, Any], finish: Callable[[str, Outcome], None], now: float) -> None:
    """A job silent for a while: ask for its state (its final answer may have been lost)."""
    task = slot["task"]
    slot["heard"] = now
    try:
        status = client.status(task.job_id)
    except ReasamError as exc:
        finish(task.job_id, Outcome(task.key, False, None, exc.code, exc.message))
        return
    state = status.get("state")
    if state == "done":
        finish(task.job_id, Outcome(task.key, True, _job_seconds(task, slot, now)))
    elif state in ("error", "cancelled"):
        code = status.get("code") or state
        finish(task.job_id, Outcome(task.key, False, None, code, status.get("message", "")))


# ---------------------------------------------------------------------------------------------
# On Ray


class RayWorker:
    """The Ray Data callable class: one instance per actor, so each actor imports the engines
    and loads its model once (engines keep their model between calls), then runs one row per
    call (batch_size=1)."""

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        outcomes = [asdict(run_task(Task(**json.loads(str(t))))) for t in batch["task"]]
        return {"outcome": [json.dumps(o) for o in outcomes]}


ACTOR_START_TIMEOUT = 600  # seconds for the actor pool to start (model loads come later)


def ray_missing() -> ReasamError:
    return ReasamError(
        "bad_request",
        "--ray needs Ray Data: pip install 'ray[data]' (in a clone: pip install -e '.[cluster]')",
        usage=True,
    )


@dataclass(frozen=True)
class RayPlan:
    address: str | None  # None: start a local instance
    workers: int | None  # actors; None: one per GPU of the cluster, else CPUs - 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float | None = None  # None: 1 when the cluster has GPUs, else 0


def run_on_ray(
    tasks: list[Task], report: Report, plan: RayPlan, on_ready: Callable[[str], None]
) -> dict[str, Any]:
    """Ray Data: the tasks become a dataset, `map_batches` runs them on a pool of `RayWorker`
    actors (one row per call), and outcomes stream back to this driver as rows finish, so the
    resume record is kept here even when the driver is killed half-way.

    Every node must reach the inputs and the output root at the same paths (shared storage).
    Returns what the summary reports of the run: Ray's version, the actors, the start-up time.
    """
    try:
        import ray
        import ray.data
    except ImportError:
        raise ray_missing() from None
    # Ray's own INFO lines and progress bars would bury the batch's progress: warnings only.
    for name in ("ray", "ray.data"):
        logging.getLogger(name).setLevel(logging.WARNING)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    # Start every actor before the first row (Ray's default hands rows to whichever actor is up
    # first); a cluster that cannot place them all fails with Ray's timeout error, not a hang.
    context.wait_for_min_actors_s = ACTOR_START_TIMEOUT
    context_ready = ray.is_initialized()
    began = time.monotonic()
    if not context_ready:
        if plan.address is None:
            workers = plan.workers or max(1, min(len(tasks), os.cpu_count() or 1))
            # More logical CPUs than the actors take: Ray Data's own read task needs one, or the
            # dataset waits forever (seen with every CPU given to actors).
            cpus = int(workers * plan.cpus_per_worker) + 1
            ray.init(
                num_cpus=cpus, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING
            )
        else:
            ray.init(address=plan.address, log_to_driver=False, logging_level=logging.WARNING)
    try:
        resources = ray.cluster_resources()
        gpus = plan.gpus_per_worker
        if gpus is None:
            gpus = 1.0 if resources.get("GPU", 0) >= 1 else 0.0
        workers = plan.workers
        if workers is None:
            workers = int(resources.get("GPU", 0) // gpus) if gpus else int(resources.get("CPU", 2)) - 1
        workers = max(1, min(workers, len(tasks) or 1))
        info = {
            "ray": ray.__version__,
            "address": plan.address or "local",
            "workers": workers,
            "gpus_per_worker": gpus,
            "cpus_per_worker": plan.cpus_per_worker,
            "connect_seconds": round(time.monotonic() - began, 3),
        }
        on_ready(
            f"Ray {ray.__version__} ({info['address']}, connected in {info['connect_seconds']:.1f} s): "
            f"{workers} worker(s), {gpus:g} GPU and {plan.cpus_per_worker:g} CPU each"
        )
        if not tasks:
            return info
        # One block per row: each row is then its own task, handed to whichever actor is free,
        # and its outcome reaches the driver (and the record) as soon as it is done.
        items = [{"task": json.dumps(asdict(t))} for t in tasks]
        dataset = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
            RayWorker,
            batch_size=1,
            # One row running and one waiting per actor: no gap between rows, and no long queue
            # behind one actor while another idles at the end of the batch.
            compute=ray.data.ActorPoolStrategy(size=workers, max_tasks_in_flight_per_actor=2),
            num_cpus=plan.cpus_per_worker,
            num_gpus=gpus,
            batch_format="default",
        )
        for row in dataset.iter_rows():
            report(Outcome(**json.loads(row["outcome"])))
        return info
    finally:
        if not context_ready:
            ray.shutdown()
