"""The job manager in process: priority order, bounds, idempotency, cancel, journal recovery, and
the result cache. A fake runner stands in for the pipeline where only the queue is under test."""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from reasam import pipeline
from reasam.cache import ResultCache
from reasam.errors import JobCancelled, ReasamError
from reasam.jobs import (
    Event,
    Job,
    JobManager,
    Priority,
    fingerprint,
    job_folder,
)
from reasam.request import Region, Request, Span, decode_request, encode_request


class FakeRunner:
    """Records the order jobs run in; optionally blocks until released or cancelled."""

    def __init__(self, block_first: bool = False, fail: set[str] | None = None, deaf: bool = False) -> None:
        self.deaf = deaf  # ignores cancelled(), like a job in its last (or only) chunk
        self.order: list[str] = []
        self.release = threading.Event()
        self.started = threading.Event()
        self.block_first = block_first
        self.fail = fail or set()

    def __call__(self, request: Request, job_dir: Path, job_id: str, progress: Any, cancelled: Any) -> Any:
        self.order.append(job_id)
        self.started.set()
        if job_id in self.fail:
            raise RuntimeError("engine exploded")
        progress(0.5, "separating")
        if self.block_first and len(self.order) == 1:
            while not self.release.wait(0.01):
                if cancelled() and not self.deaf:
                    raise JobCancelled(job_id)
        job_dir.mkdir(parents=True, exist_ok=True)
        manifest = job_dir / "manifest.json"
        manifest.write_text(json.dumps({"job_id": job_id, "stems": []}))
        return SimpleNamespace(manifest_path=manifest, stems=[], manifest={})


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "src.wav"
    sf.write(path, np.zeros((2205, 2), np.float32), 22050)
    return path


def manager(tmp_path: Path, runner: Any, **kw: Any) -> JobManager:
    return JobManager(tmp_path / "journal.sqlite3", runner=runner, device_of=lambda r: "cpu", **kw)


def wait(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_priority_classes_then_fifo(tmp_path: Path, source: Path) -> None:
    runner = FakeRunner(block_first=True)
    jobs = manager(tmp_path, runner)
    jobs.start()
    out = tmp_path / "out"
    jobs.submit("first", Request(source, "drums"), out, Priority.BATCH)
    assert runner.started.wait(5)
    plan = [("b1", Priority.BATCH), ("w1", Priority.WATCH), ("o1", Priority.OSC)]
    plan += [("b2", Priority.BATCH), ("o2", Priority.OSC), ("w2", Priority.WATCH)]
    positions = {}
    for job_id, priority in plan:
        positions[job_id] = jobs.submit(job_id, Request(source, "drums"), out, priority).position
    assert positions["b1"] == 1  # the running job is ahead of it
    assert jobs.status("o2")["queue_position"] == 2 and jobs.status("b2")["queue_position"] == 6
    runner.release.set()
    assert jobs.wait_idle(10)
    assert runner.order == ["first", "o1", "o2", "w1", "w2", "b1", "b2"]
    jobs.shutdown()


def test_bounded_queue_idempotency_and_cancel(tmp_path: Path, source: Path) -> None:
    runner = FakeRunner(block_first=True)
    jobs = manager(tmp_path, runner, queue_limit=2)
    events: list[Event] = []
    jobs.subscribe(events.append)
    jobs.start()
    out = tmp_path / "out"
    jobs.submit("run", Request(source, "drums"), out)
    assert runner.started.wait(5)
    jobs.submit("q1", Request(source, "drums"), out)
    again = jobs.submit("q1", Request(source, "drums"), out)  # a UDP retry
    assert not again.created and again.status["state"] == "queued"
    with pytest.raises(ReasamError) as exc:
        jobs.submit("q1", Request(source, "harmonic"), out)
    assert exc.value.code == "bad_request" and "different request" in exc.value.message
    jobs.submit("q2", Request(source, "drums"), out)
    with pytest.raises(ReasamError) as exc:
        jobs.submit("q3", Request(source, "drums"), out)
    assert exc.value.code == "busy"
    assert not (out / "q3").exists()
    # Cancel: queued at once, running at its next check; unknown ids are not_found.
    assert jobs.cancel("q1")["state"] == "cancelled"
    assert jobs.cancel("run")["state"] == "running"
    wait(lambda: jobs.status("run")["state"] == "cancelled")
    with pytest.raises(ReasamError) as exc:
        jobs.cancel("never")
    assert exc.value.code == "not_found"
    assert jobs.wait_idle(10)
    assert runner.order == ["run", "q2"]
    assert [e.kind for e in events if e.job_id == "q1"] == ["cancelled"]
    assert json.loads((out / "q1" / "status.json").read_text())["state"] == "cancelled"
    assert jobs.status("q2")["state"] == "done"
    assert jobs.submit("q2", Request(source, "drums"), out).status["state"] == "done"  # from the journal
    jobs.shutdown()


def test_cancel_during_the_last_chunk_discards_the_result(tmp_path: Path, source: Path) -> None:
    runner = FakeRunner(block_first=True, deaf=True)
    jobs = manager(tmp_path, runner)
    jobs.start()
    jobs.submit("one-chunk", Request(source, "drums"), tmp_path / "out")
    assert runner.started.wait(5)
    assert jobs.cancel("one-chunk")["state"] == "running"
    runner.release.set()  # the job finishes its only chunk anyway
    assert jobs.wait_idle(10)
    assert jobs.status("one-chunk")["state"] == "cancelled"
    assert sorted(p.name for p in (tmp_path / "out" / "one-chunk").iterdir()) == ["status.json"]
    jobs.shutdown()


def test_worker_survives_a_crashing_job(tmp_path: Path, source: Path) -> None:
    jobs = manager(tmp_path, FakeRunner(fail={"bad"}))
    jobs.start()
    jobs.submit("bad", Request(source, "drums"), tmp_path / "out")
    jobs.submit("good", Request(source, "drums"), tmp_path / "out")
    assert jobs.wait_idle(10)
    bad = jobs.status("bad")
    assert (bad["state"], bad["code"]) == ("error", "internal") and "engine exploded" in bad["message"]
    assert jobs.status("good")["state"] == "done"
    jobs.shutdown()


def test_shutdown_journals_running_and_queued_jobs_for_the_next_start(tmp_path: Path, source: Path) -> None:
    runner = FakeRunner(block_first=True)
    jobs = manager(tmp_path, runner)
    jobs.start()
    out = tmp_path / "out"
    for job_id in ("a", "b", "c"):
        jobs.submit(job_id, Request(source, "drums"), out, Priority.WATCH if job_id == "c" else Priority.OSC)
    assert runner.started.wait(5)
    left = jobs.shutdown(grace=0.1)  # "a" never finishes by itself: interrupted at its next check
    assert sorted(left) == ["a", "b", "c"]
    assert json.loads((out / "a" / "status.json").read_text())["state"] == "queued"
    later = FakeRunner()
    again = manager(tmp_path, later)
    assert again.start() == ["a", "b", "c"]
    assert again.wait_idle(10)
    assert later.order == ["a", "b", "c"]
    assert all(again.status(j)["state"] == "done" for j in "abc")
    again.shutdown()


def test_crash_after_manifest_counts_as_done(tmp_path: Path, source: Path) -> None:
    jobs = manager(tmp_path, FakeRunner())  # never started: the job stays queued
    out = tmp_path / "out"
    jobs.submit("late", Request(source, "drums"), out)
    stem = out / "late" / "drums.wav"
    stem.write_bytes(b"RIFF")
    manifest = {"job_id": "late", "stems": [{"path": str(stem)}]}
    (out / "late" / "manifest.json").write_text(json.dumps(manifest))
    jobs.journal.update("late", state="running")  # as if killed right after the manifest
    jobs.journal.close()
    runner = FakeRunner()
    again = manager(tmp_path, runner)
    assert again.start() == []
    assert again.status("late")["state"] == "done" and runner.order == []
    assert stem.exists()
    again.shutdown()


def test_job_ids_made_only_of_dots_are_refused(tmp_path: Path, source: Path) -> None:
    """ "." would make the output root the job's folder (and a cancel would then empty it of other
    jobs' folders); ".." its parent. Refused before anything is written, and a Job can never
    reach outside its own folder even with such an id."""
    jobs = manager(tmp_path, FakeRunner())
    jobs.start()
    out = tmp_path / "out"
    for job_id in (".", "..", "...", "...."):
        with pytest.raises(ReasamError) as exc:
            jobs.submit(job_id, Request(source, "drums"), out)
        assert exc.value.code == "bad_request", job_id
    assert not out.exists() or list(out.iterdir()) == []
    assert not (tmp_path / "status.json").exists()
    jobs.submit("a.b", Request(source, "drums"), out)  # dots inside an id are fine
    assert jobs.wait_idle(10) and jobs.status("a.b")["state"] == "done"
    for job_id in (".", "..", "../x", "x/.."):
        job = Job(job_id, Request(source, "drums"), out, Priority.OSC, "fp", "cpu")
        with pytest.raises(ReasamError):
            job.job_dir  # noqa: B018 - the property is the guard under test
    assert job_folder(out, "a.b") == out / "a.b"
    jobs.shutdown()


def test_out_of_memory_is_reported_as_out_of_memory(
    tmp_path: Path, source: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A CUDA OOM raised inside the pipeline reaches clients as the protocol's `out_of_memory`
    (not `internal`), and so does the host's (torch's CPU allocator raises a RuntimeError that
    never says "out of memory"); an engine's own ReasamError out_of_memory passes through."""
    import torch

    def oom(request: Request, job_dir: Path, job_id: str, **kwargs: Any) -> Any:
        if job_id == "cuda":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        if job_id == "engine":
            raise ReasamError("out_of_memory", "SAM large needs 12 GB; try base")
        if job_id == "host":  # torch's c10/core/impl/alloc_cpu.cpp
            raise RuntimeError(
                "DefaultCPUAllocator: can't allocate memory: you tried to allocate 1073741824 bytes. "
                "Error code 12 (Cannot allocate memory)"
            )
        raise RuntimeError("MPS backend out of memory (MPS allocated: 9 GB)")

    monkeypatch.setattr(pipeline, "run", oom)  # the default runner calls pipeline.run
    jobs = JobManager(tmp_path / "journal.sqlite3", device_of=lambda r: "cuda:0")
    events: list[Event] = []
    jobs.subscribe(events.append)
    jobs.start()
    out = tmp_path / "out"
    for job_id in ("cuda", "engine", "mps", "host"):
        jobs.submit(job_id, Request(source, "drums"), out)
    assert jobs.wait_idle(10)
    for job_id in ("cuda", "engine", "mps", "host"):
        status = jobs.status(job_id)
        assert (status["state"], status["code"]) == ("error", "out_of_memory"), status
        on_disk = json.loads((out / job_id / "status.json").read_text())
        assert (on_disk["state"], on_disk["code"]) == ("error", "out_of_memory")
        assert [e.status["code"] for e in events if e.job_id == job_id and e.kind == "error"] == [
            "out_of_memory"
        ]
    assert "Tried to allocate 2.00 GiB" in jobs.status("cuda")["message"]
    assert jobs.status("engine")["message"] == "SAM large needs 12 GB; try base"
    jobs.shutdown()


def test_unrecoverable_journal_entry_is_an_error_in_status_json(tmp_path: Path, source: Path) -> None:
    jobs = manager(tmp_path, FakeRunner())  # never started: the job stays queued
    out = tmp_path / "out"
    jobs.submit("broken", Request(source, "drums"), out)
    jobs.submit("fine", Request(source, "drums"), out)
    jobs.journal.close()
    with sqlite3.connect(tmp_path / "journal.sqlite3") as db:  # e.g. written by another version
        db.execute("UPDATE jobs SET request = '{\"source\": 1}' WHERE job_id = 'broken'")
    assert json.loads((out / "broken" / "status.json").read_text())["state"] == "queued"
    runner = FakeRunner()
    again = manager(tmp_path, runner)
    assert again.start() == ["fine"]
    assert again.wait_idle(10) and runner.order == ["fine"]
    status = json.loads((out / "broken" / "status.json").read_text())
    assert (status["state"], status["code"]) == ("error", "internal")
    assert "not recoverable" in status["message"] and status["job_id"] == "broken"
    assert again.status("broken")["state"] == "error"
    again.shutdown()


def test_request_round_trip_is_exact(tmp_path: Path, source: Path) -> None:
    request = Request(
        source,
        "lead vocal",
        spans=(Span("+", 1.234567891, 2.5), Span("-", 3.0, 3.000001)),
        region=Region(0.123456789, 9.87654321),
        quality="best",
        engine="dsp",
    )
    data = json.loads(json.dumps(encode_request(request)))
    assert decode_request(data) == request
    assert fingerprint(request, tmp_path) == fingerprint(decode_request(data), tmp_path)
    assert fingerprint(request, tmp_path) != fingerprint(request, tmp_path / "other")


# ---------------------------------------------------------------------------------------------
# The result cache


def _result(folder: Path, job_id: str, size: int) -> Any:
    folder.mkdir(parents=True, exist_ok=True)
    stems = []
    for role, name in (("target", "drums.wav"), ("residual", "drums-residual.wav")):
        path = folder / name
        path.write_bytes(os.urandom(size))
        stems.append(pipeline.Stem("drums", role, path, 2, size // 8, 0.0, 1.0))
    return SimpleNamespace(stems=stems, manifest={"job_id": job_id, "engine": "dsp", "model": "dsp"})


def test_cache_lru_eviction_and_invalidation(tmp_path: Path, source: Path) -> None:
    cache = ResultCache(tmp_path / "cache", limit_bytes=5000)  # two entries of 2 × 1000 bytes
    request = Request(source, "drums", engine="dsp")
    never = lambda: False  # noqa: E731
    originals = {}
    for key in ("k1", "k2"):
        originals[key] = _result(tmp_path / "jobs" / key, key, 1000)
        cache.store(key, originals[key])
    hit = cache.fetch("k1", request, "new-1", tmp_path / "out" / "new-1", never)  # k1 is now recent
    assert hit is not None and hit.manifest["cached"] and hit.manifest["job_id"] == "new-1"
    assert hit.stems[0].path.read_bytes() == originals["k1"].stems[0].path.read_bytes()
    cache.store("k3", _result(tmp_path / "jobs" / "k3", "k3", 1000))
    assert sorted(cache.stored_keys()) == ["k1", "k3"]  # k2, least recently used, evicted
    assert cache.fetch("k2", request, "new-2", tmp_path / "out" / "new-2", never) is None
    # A stored file changed in place (through the original job's hard link) is never served.
    with open(originals["k1"].stems[0].path, "r+b") as fh:
        fh.write(b"edited")
    assert cache.fetch("k1", request, "new-3", tmp_path / "out" / "new-3", never) is None
    assert "k1" not in cache.stored_keys()
    # Larger than the whole cache: not kept.
    cache.store("big", _result(tmp_path / "jobs" / "big", "big", 4000))
    assert "big" not in cache.stored_keys()
    cache.close()


def test_cache_key_follows_content_not_names(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    audio = rng.standard_normal((22050, 2)).astype(np.float32) * 0.1
    a, b = tmp_path / "a.wav", tmp_path / "b.wav"
    sf.write(a, audio, 22050, subtype="FLOAT")
    sf.write(b, audio, 22050, subtype="FLOAT")
    cache = ResultCache(tmp_path / "cache", limit_bytes=1 << 20)
    key = cache.key(Request(a, "drums", engine="dsp"))
    assert cache.key(Request(b, "drums", engine="dsp")) == key  # same audio, another file
    assert cache.key(Request(a, "percussion", engine="dsp")) == key  # a synonym of the prompt
    assert cache.key(Request(a, "harmonic", engine="dsp")) != key
    assert cache.key(Request(a, "drums", engine="dsp", quality="best")) != key
    assert cache.key(Request(a, "drums", engine="dsp", region=Region(0.1, 0.9))) != key
    time.sleep(0.01)
    audio[100] += 0.5
    sf.write(b, audio, 22050, subtype="FLOAT")
    assert cache.key(Request(b, "drums", engine="dsp")) != key  # the content changed
    cache.close()
