"""The job manager in process: priority order, bounds, idempotency, cancel, journal recovery, and
the result cache. A fake runner stands in for the pipeline where only the queue is under test."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
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
    MAX_ATTEMPTS,
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


# ---------------------------------------------------------------------------------------------
# Hardening: hung and crashing jobs, sources that change, folders that are not the job's own


def test_a_job_that_stopped_the_daemon_again_and_again_is_failed(tmp_path: Path, source: Path) -> None:
    """Killed (or hung, then killed) while running, again and again: the daemon gives up on it
    instead of running it at every start for ever. Each start here is a new manager on the
    journal of one that was abandoned mid-job, as a kill -9 leaves it."""
    out = tmp_path / "out"
    runners = []
    for attempt in range(1, MAX_ATTEMPTS + 1):
        runner = FakeRunner(block_first=True, deaf=True)
        runners.append(runner)
        jobs = manager(tmp_path, runner)
        recovered = jobs.start()
        if attempt == 1:
            jobs.submit("hangs", Request(source, "drums"), out)
        else:
            assert recovered == ["hangs"]
        assert runner.started.wait(5)
        jobs.journal.close()  # the process "dies" with the job running
    runner = FakeRunner()
    jobs = manager(tmp_path, runner)
    assert jobs.start() == []
    status = jobs.status("hangs")
    assert (status["state"], status["code"]) == ("error", "internal")
    assert f"{MAX_ATTEMPTS} times" in status["message"]
    assert json.loads((out / "hangs" / "status.json").read_text())["state"] == "error"
    assert runner.order == []
    for blocked in runners:
        blocked.release.set()
    jobs.shutdown()


def test_graceful_stops_do_not_count_towards_the_crash_limit(tmp_path: Path, source: Path) -> None:
    """A long job interrupted by two normal stops, then killed once while it runs: it runs
    again at the next start, for only one stop of the three was a crash."""
    out = tmp_path / "out"
    runners = []
    for stop in range(MAX_ATTEMPTS - 1):
        runner = FakeRunner(block_first=True)
        jobs = manager(tmp_path, runner)
        recovered = jobs.start()
        if stop == 0:
            jobs.submit("long", Request(source, "drums"), out)
        else:
            assert recovered == ["long"]
        assert runner.started.wait(5)
        assert jobs.shutdown(grace=0.1) == ["long"]  # interrupted, journaled for the next start
    runner = FakeRunner(block_first=True, deaf=True)
    runners.append(runner)
    jobs = manager(tmp_path, runner)
    assert jobs.start() == ["long"]
    assert runner.started.wait(5)
    jobs.journal.close()  # killed while it runs
    runner = FakeRunner()
    jobs = manager(tmp_path, runner)
    assert jobs.start() == ["long"]
    assert jobs.wait_idle(10)
    assert jobs.status("long")["state"] == "done" and runner.order == ["long"]
    for blocked in runners:
        blocked.release.set()
    jobs.shutdown()


def test_cancel_and_stop_reach_a_job_whose_decoder_blocks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real pipeline and cache on an input whose ffmpeg decode never ends (the playlist
    refusal is lifted to reach it): cancel ends the job, and a stopping daemon journals the next
    one at once instead of waiting for the decoder."""
    from reasam import audio

    from tests.test_audio import _decoders, _hls_with_a_fifo

    playlist = _hls_with_a_fifo(tmp_path / "hls")
    monkeypatch.setattr(audio, "REFUSED_FORMATS", frozenset())
    jobs = JobManager(
        tmp_path / "journal.sqlite3",
        cache=ResultCache(tmp_path / "cache", 1 << 20),
        device_of=lambda r: "cpu",
    )
    jobs.start()
    out = tmp_path / "out"
    jobs.submit("stuck", Request(playlist, "drums", engine="dsp"), out)
    wait(lambda: bool(_decoders()), timeout=60)
    assert jobs.cancel("stuck")["state"] == "running"
    wait(lambda: jobs.status("stuck")["state"] == "cancelled", timeout=60)
    assert _decoders() == []
    jobs.submit("stuck-2", Request(playlist, "drums", engine="dsp"), out)
    wait(lambda: bool(_decoders()), timeout=60)
    assert jobs.shutdown(grace=0.1) == ["stuck-2"]
    assert _decoders() == []
    assert json.loads((out / "stuck-2" / "status.json").read_text())["state"] == "queued"


def test_source_overwritten_while_running_fails_and_is_never_cached(tmp_path: Path) -> None:
    """The overwrite happens while the job runs; the file is restored afterwards. The job must
    fail, and the next request for the restored file must not get stems of the mixture."""
    rate = 22050
    rng = np.random.default_rng(5)
    original = (rng.standard_normal((rate * 70, 2)) * 0.1).astype(np.float32)
    src = tmp_path / "src.wav"
    sf.write(src, original, rate, subtype="FLOAT")

    def overwriting(
        request: Request, job_dir: Path, job_id: str, progress: Any, cancelled: Any, **kw: Any
    ) -> Any:
        def report(fraction: float, stage: str) -> None:
            if job_id == "first" and stage == "separating" and fraction < 0.5:
                sf.write(src, original[::-1], rate, subtype="FLOAT")
            progress(fraction, stage)

        return pipeline.run(request, job_dir, job_id, progress=report, cancelled=cancelled, **kw)

    cache = ResultCache(tmp_path / "cache", 1 << 30)
    jobs = manager(tmp_path, overwriting, cache=cache)
    jobs.start()
    out = tmp_path / "out"
    jobs.submit("first", Request(src, "drums", engine="dsp"), out)
    assert jobs.wait_idle(120)
    status = jobs.status("first")
    assert (status["state"], status["code"]) == ("error", "bad_request"), status
    assert "changed while" in status["message"]
    assert cache.stored_keys() == []
    assert sorted(p.name for p in (out / "first").iterdir()) == ["status.json"]
    sf.write(src, original, rate, subtype="FLOAT")  # restored
    jobs.submit("second", Request(src, "drums", engine="dsp"), out)
    assert jobs.wait_idle(120)
    assert jobs.status("second")["state"] == "done"
    manifest = json.loads((out / "second" / "manifest.json").read_text())
    stems = [sf.read(s["path"], dtype="float32")[0] for s in manifest["stems"]]
    assert np.abs(stems[0] + stems[1] - original).max() < 1e-4
    jobs.shutdown()


def test_a_source_changed_after_the_cache_key_is_refused_before_anything_is_published(
    tmp_path: Path,
) -> None:
    """The source changes between the cache key and the pipeline's read. The pipeline must fail
    before it publishes: stems and a manifest published first and removed afterwards would leave,
    after a kill -9 in between, a complete job of other audio that the next start marks done."""
    rate = 22050
    rng = np.random.default_rng(11)
    original = (rng.standard_normal((rate * 2, 2)) * 0.1).astype(np.float32)
    src = tmp_path / "src.wav"
    sf.write(src, original, rate, subtype="FLOAT")
    left_by_the_run: list[list[str]] = []

    def changing(
        request: Request, job_dir: Path, job_id: str, progress: Any, cancelled: Any, **kw: Any
    ) -> Any:
        sf.write(src, original[::-1], rate, subtype="FLOAT")  # after the key, before the read
        try:
            return pipeline.run(request, job_dir, job_id, progress=progress, cancelled=cancelled, **kw)
        finally:  # what a kill -9 right after the run would leave
            left_by_the_run.append(sorted(p.name for p in job_dir.iterdir()))

    cache = ResultCache(tmp_path / "cache", 1 << 30)
    jobs = manager(tmp_path, changing, cache=cache)
    jobs.start()
    jobs.submit("a", Request(src, "drums", engine="dsp"), tmp_path / "out")
    assert jobs.wait_idle(60)
    status = jobs.status("a")
    assert (status["state"], status["code"]) == ("error", "bad_request"), status
    assert "changed while" in status["message"]
    assert "manifest.json" not in left_by_the_run[0], left_by_the_run
    assert cache.stored_keys() == []
    jobs.shutdown()


@pytest.mark.parametrize(
    "kind", ["symlink to a folder", "dangling symlink", "symlink to a file", "file", "folder with a file"]
)
def test_job_folder_must_be_the_jobs_own(tmp_path: Path, source: Path, kind: str) -> None:
    """A symlink (to a folder, to a file, dangling), a file or a folder holding files where the
    job's folder would go: refused before anything is written or journaled (an empty folder is
    taken, as batch resumes rely on)."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "mine.txt").write_text("precious")
    out = tmp_path / "out"
    out.mkdir()
    folder = out / "taken"
    if kind == "symlink to a folder":
        folder.symlink_to(elsewhere)
    elif kind == "dangling symlink":
        folder.symlink_to(tmp_path / "nothing")
    elif kind == "symlink to a file":
        folder.symlink_to(elsewhere / "mine.txt")
    elif kind == "file":
        folder.write_text("a file")
    else:
        folder.mkdir()
        (folder / "theirs.txt").write_text("precious")
    jobs = manager(tmp_path, FakeRunner())
    jobs.start()
    with pytest.raises(ReasamError) as exc:
        jobs.submit("taken", Request(source, "drums"), out)
    assert exc.value.code == "bad_request" and "choose another job_id" in exc.value.message
    assert sorted(p.name for p in elsewhere.iterdir()) == ["mine.txt"]
    assert (elsewhere / "mine.txt").read_text() == "precious"
    assert not (tmp_path / "nothing").exists()
    with pytest.raises(ReasamError):
        jobs.status("taken")  # never journaled
    jobs.shutdown()


def test_cancel_deletes_only_what_the_job_wrote(tmp_path: Path, source: Path) -> None:
    """Files that others put into a running job's folder survive its cancel, a symlink named
    like a stem is removed as a link (its target survives), and a job folder swapped for a
    symlink while the job runs is not followed."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for name in ("mine.txt", "drums.wav", "manifest.json"):
        (elsewhere / name).write_text("precious")
    runner = FakeRunner(block_first=True)
    jobs = manager(tmp_path, runner)
    jobs.start()
    out = tmp_path / "out"
    jobs.submit("a", Request(source, "drums"), out)
    jobs.submit("b", Request(source, "drums"), out)
    assert runner.started.wait(5)
    # "b", queued: its folder is replaced by a symlink to the user's folder, then it is cancelled.
    (out / "b").rename(tmp_path / "b-moved")
    (out / "b").symlink_to(elsewhere)
    assert jobs.cancel("b")["state"] == "cancelled"
    job = out / "a"
    (job / "notes.txt").write_text("the user's")
    (job / ".drums.wav.0123abcd.partial").write_bytes(b"half a stem")
    (job / "drums-residual.wav").symlink_to(elsewhere / "mine.txt")
    assert jobs.cancel("a")["state"] == "running"
    wait(lambda: jobs.status("a")["state"] == "cancelled")
    assert jobs.wait_idle(10)  # its final status.json is written
    assert sorted(p.name for p in job.iterdir()) == ["notes.txt", "status.json"]
    assert sorted(p.name for p in elsewhere.iterdir()) == ["drums.wav", "manifest.json", "mine.txt"]
    assert all((elsewhere / n).read_text() == "precious" for n in ("mine.txt", "drums.wav", "manifest.json"))
    jobs.shutdown()


_SUBMIT_ON_A_FULL_DISK = """
import json, os, sys
from pathlib import Path
from reasam.errors import ReasamError
from reasam.jobs import JobManager
from reasam.request import Request
src, out, journal = map(Path, sys.argv[1:4])
fd = os.open(out / "filler", os.O_WRONLY | os.O_CREAT)
try:
    while True:
        os.write(fd, b"\\0" * 65536)
except OSError:
    pass
os.close(fd)
jobs = JobManager(journal, device_of=lambda r: "cpu")
jobs.start()
report = {}
try:
    jobs.submit("j1", Request(src, "drums", engine="dsp"), out)
    report["first"] = "accepted"
except ReasamError as exc:
    report["first"] = [exc.code, exc.message]
report["left"] = sorted(p.name for p in out.iterdir())
os.unlink(out / "filler")
again = jobs.submit("j1", Request(src, "drums", engine="dsp"), out)
report["created"] = again.created
jobs.wait_idle(120)
report["state"] = jobs.status("j1")["state"]
report["files"] = sorted(p.name for p in (out / "j1").iterdir())
jobs.shutdown()
print(json.dumps(report))
"""


def test_submit_on_a_full_disk_can_be_retried_with_the_same_id(tmp_path: Path, source: Path) -> None:
    """A real full disk (a filled tmpfs as the output root; the journal elsewhere): the refusal
    says so, and the job, which never started, can be sent again once there is room."""
    from tests.conftest import on_small_filesystem

    mount = tmp_path / "small"
    proc = on_small_filesystem(
        mount,
        "1m",
        sys.executable,
        "-c",
        _SUBMIT_ON_A_FULL_DISK,
        str(source),
        str(mount),
        str(tmp_path / "j.db"),
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    code, message = report["first"]
    assert code == "bad_request" and "disk full" in message and str(mount) in message, report
    assert report["left"] == ["filler"], report
    assert report["created"] and report["state"] == "done", report
    assert report["files"] == ["drums-residual.wav", "drums.wav", "manifest.json", "status.json"], report


@pytest.mark.parametrize(
    ("ext", "spans", "rate"),
    [
        ("wav", False, 44100),
        ("m4a", False, 44100),
        ("m4a", True, 44100),
        ("mp3", True, 44100),
        # An odd rate (≡ 3 mod 4): half a second of context is not a whole number of frames.
        ("mka", False, 8003),
        ("mka", True, 8003),
    ],
)
def test_cache_key_and_pipeline_agree_on_what_was_read(
    tmp_path: Path, ext: str, spans: bool, rate: int
) -> None:
    """The source digest taken with the key equals the pipeline's digest of what it read, for
    libsndfile and ffmpeg inputs, with and without spans, at usual and odd rates (no job fails
    for nothing); audio that differs from the key's is refused and not stored, even with the
    file's size unchanged."""
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((rate * 3, 2)) * 0.1).astype(np.float32)
    wav = tmp_path / "x.wav"
    sf.write(wav, x, rate, subtype="FLOAT")
    src = wav
    if ext != "wav":
        src = tmp_path / f"x.{ext}"
        codec = {"m4a": ["-c:a", "aac"], "mp3": ["-c:a", "libmp3lame"], "mka": ["-c:a", "libvorbis"]}[ext]
        subprocess.run(["ffmpeg", "-v", "error", "-i", str(wav), *codec, str(src)], check=True)
    request = Request(
        src,
        "" if spans else "drums",
        spans=(Span("+", 0.5, 1.0),) if spans else (),
        region=Region(1.0, 2.5),
        engine="dsp",
    )
    cache = ResultCache(tmp_path / "cache", 1 << 30)
    key = cache.key(request)
    result = pipeline.run(request, tmp_path / "out" / "a", "a", **cache.expected_source(key))
    assert result.source_digest == cache.expected_source(key)["source_digest"]
    cache.store(key, result)
    assert cache.stored_keys() == [key]
    # Another key, whose audio is not what this request reads (as when the file changes under
    # the job, the file itself changed since that key was taken: its mtime, here), the pipeline
    # refuses it before publishing, and the cache does not keep it.
    other_key = cache.key(Request(src, request.prompt, request.spans, Region(0.5, 2.0), engine="dsp"))
    st = src.stat()
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(ReasamError) as exc:
        pipeline.run(request, tmp_path / "out" / "b", "b", **cache.expected_source(other_key))
    assert exc.value.code == "bad_request" and "changed while" in exc.value.message
    assert sorted(p.name for p in (tmp_path / "out" / "b").iterdir()) == []
    cache.store(other_key, result)
    # A result without a digest of what it read cannot be checked: not kept either.
    third_key = cache.key(Request(src, request.prompt, request.spans, Region(0.6, 2.0), engine="dsp"))
    cache.store(third_key, SimpleNamespace(stems=result.stems, manifest=result.manifest))
    assert cache.stored_keys() == [key]
    cache.close()


def test_an_unchanged_mp3_whose_decoder_does_not_seek_exactly_still_runs(tmp_path: Path) -> None:
    """mpg123 (through libsndfile) does not seek sample-exactly: the cache key's read and the
    pipeline's read of the same, untouched MP3 can differ in the last bit. That is no change of
    the source: the job runs (twice, memo or not) and sums to what it read; it is just not cached."""
    rate = 8000
    t = np.arange(rate * 3) / rate
    tone = 0.3 * np.sin(2 * np.pi * 440 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))
    src = tmp_path / "tone.mp3"
    sf.write(src, np.stack([tone, tone[::-1]], axis=1).astype(np.float32), rate, format="MP3")
    cache = ResultCache(tmp_path / "cache", 1 << 30)
    jobs = JobManager(tmp_path / "journal.sqlite3", cache=cache, device_of=lambda r: "cpu")
    jobs.start()
    request = Request(src, "", spans=(Span("+", 0.2, 0.6),), region=Region(1.0, 2.5), engine="dsp")
    for job_id in ("a", "b"):
        jobs.submit(job_id, request, tmp_path / "out")
        assert jobs.wait_idle(60)
        status = jobs.status(job_id)
        assert status["state"] == "done", status
    jobs.shutdown()
