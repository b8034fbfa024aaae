"""Stem sets and cancel: what one multi-prompt job saves, and how fast a cancel lands.

1. A 4-prompt stem set against four one-prompt jobs on the same file (and spleeter's three
   stems as a set against three jobs), SAM-Audio through the test
   double (tests/sam_double): model calls, seconds inside the model, wall seconds, and the wall
   ratio set / singles. The double's simulated model time grows linearly with the batch
   (`rtf` x seconds x batch size), the worst case for batching; with `--rtf 0` it spends nothing,
   so the ratio shows our own per-job work (reading, resampling 44.1 <-> 48 kHz, chunking,
   stereo masks, writing) that a set does once instead of four times.
2. Cancel latency on a 3-minute file, per engine (dsp, spleeter, the SAM double at a simulated
   model speed): a real JobManager runs the job; the cancel comes `--cancel-after` seconds after
   the job reported "preparing" (inside the first chunk); the figure is the time from the cancel
   request to the job's `cancelled` event.

With `--real --skip-cancel`, part 1 runs on the installed SAM-Audio (configured as for the
daemon) instead of the double.

Usage: python bench/stem_sets.py [--seconds 60] [--rtf 0,0.1] [--cancel-runs 3]
       [--cancel-engines dsp,spleeter,sam] [--skip-sets] [--skip-cancel] [--real]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import soundfile as sf
from reasam import engines, models, pipeline
from reasam.engines import sam
from reasam.jobs import JobManager, Priority
from reasam.request import Request
from report import REPO, header, table

SR = 44_100
PROMPTS = ("bass", "mid", "hiss", "everything")


def mix(seconds: float) -> np.ndarray:
    """Bass, a chord, hiss and clicks: stereo at 44.1 kHz."""
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * SR)) / SR
    clicks = np.zeros_like(t)
    clicks[:: SR // 2] = 1.0
    hits = np.convolve(clicks, np.exp(-np.arange(400) / 50.0), "same")
    bass = 0.25 * np.sin(2 * np.pi * 55 * t)
    chord = sum(0.05 * np.sin(2 * np.pi * f * t) for f in (440.0, 554.4, 659.3))
    mono = bass + chord + 0.01 * rng.standard_normal(t.size) + 0.3 * hits
    return np.stack([mono, 0.8 * mono]).astype(np.float32)


def _double_setups(tmp: Path, rtfs: list[float]) -> list[tuple[str, models.ModelManager]]:
    from sam_audio.testing import write_extras_cache, write_model_dir

    hub = tmp / "hub"
    write_extras_cache(hub)
    setups = []
    for rtf in rtfs:
        folder = write_model_dir(tmp / f"double-{rtf:g}", "base", rtf=rtf)
        settings = models.SamSettings(model_path=folder, variant="base", cache_dir=hub)
        setups.append((f"double, simulated RTF {rtf:g}", models.ModelManager(settings)))
    return setups


def sets_vs_singles(tmp: Path, source: Path, setups: list[tuple[str, models.ModelManager]]) -> None:
    rows = []
    for setup, manager in setups:
        engine = sam.SamEngine(manager)
        engines._instances["sam"] = engine
        manager.acquire().release()  # loaded before timing
        runs = {
            "4-stem set": [list(PROMPTS)],
            "4 one-prompt jobs": [[p] for p in PROMPTS],
        }
        results = {}
        for label, jobs in runs.items():
            before = dict(engine.totals)
            t0 = time.perf_counter()
            for i, prompts in enumerate(jobs):
                out = tmp / f"{label.replace(' ', '-')}-{len(rows)}-{i}"
                request = Request(
                    source, prompt=prompts[0], extra_prompts=tuple(prompts[1:]), engine="sam", quality="fast"
                )
                pipeline.run(request, out, out.name)
            wall = time.perf_counter() - t0
            calls = engine.totals["calls"] - before["calls"]
            model_s = engine.totals["model_seconds"] - before["model_seconds"]
            results[label] = wall
            rows.append([setup, label, int(calls), model_s, wall, wall - model_s])
        rows.append(
            [
                setup,
                "ratio set / singles",
                "",
                "",
                results["4-stem set"] / results["4 one-prompt jobs"],
                "",
            ]
        )
        manager.unload()
    print("### 1. A 4-prompt set vs four one-prompt jobs (SAM-Audio, quality fast)\n")
    table(["model", "run", "model calls", "model s", "wall s", "ours s"], rows)


def spleeter_set(tmp: Path, source: Path) -> None:
    """The embedded counterpart: spleeter's three stems as one set against three jobs."""
    prompts = ("vocals", "accompaniment", "drums")
    engines.get("spleeter").warm()
    rows, walls = [], {}
    for label, jobs in (("3-stem set", [list(prompts)]), ("3 one-prompt jobs", [[p] for p in prompts])):
        t0 = time.perf_counter()
        for i, job in enumerate(jobs):
            out = tmp / f"spleeter-{label.replace(' ', '-')}-{i}"
            request = Request(source, prompt=job[0], extra_prompts=tuple(job[1:]), engine="spleeter")
            pipeline.run(request, out, out.name)
        walls[label] = time.perf_counter() - t0
        rows.append([label, walls[label]])
    rows.append(["ratio set / singles", walls["3-stem set"] / walls["3 one-prompt jobs"]])
    print("### 1b. spleeter: vocals, accompaniment, drums as a set vs three jobs (balanced)\n")
    table(["run", "wall s"], rows)


def cancel_latency(tmp: Path, source: Path, names: list[str], runs: int, after: float) -> None:
    from sam_audio.testing import write_extras_cache, write_model_dir

    hub = tmp / "hub-cancel"
    write_extras_cache(hub)
    folder = write_model_dir(tmp / "double-slow", "base", rtf=1.0)
    manager = models.ModelManager(models.SamSettings(model_path=folder, variant="base", cache_dir=hub))
    engines._instances["sam"] = sam.SamEngine(manager)
    cases = {
        "dsp": Request(source, prompt="drums", engine="dsp"),
        "spleeter": Request(source, prompt="vocals", engine="spleeter"),
        "sam": Request(source, prompt="bass", extra_prompts=("mid",), engine="sam", quality="fast"),
    }
    labels = {
        "dsp": "dsp drums (HPSS)",
        "spleeter": "spleeter vocals",
        "sam": "SAM double, 2-prompt set (simulated RTF 1 at 32 evaluations)",
    }
    rows = []
    for name in names:
        engines.get(name).warm("fast" if name == "sam" else "balanced")
        latencies = []
        for run in range(runs):
            manager_ = JobManager(tmp / f"journal-{name}-{run}.sqlite3")
            events: list = []
            preparing, ended = threading.Event(), threading.Event()

            def listen(event, events=events, preparing=preparing, ended=ended) -> None:
                events.append((time.perf_counter(), event))
                if event.status["stage"] == "preparing":
                    preparing.set()
                if event.kind in ("done", "error", "cancelled"):
                    ended.set()

            manager_.subscribe(listen)
            manager_.start()
            manager_.submit(f"{name}-{run}", cases[name], tmp / f"out-{name}-{run}", Priority.OSC)
            preparing.wait(300)
            time.sleep(after)
            asked = time.perf_counter()
            manager_.cancel(f"{name}-{run}")
            ended.wait(300)
            manager_.shutdown(grace=1.0)
            final_time, final = events[-1]
            if final.kind != "cancelled":
                sys.exit(f"{name}: the job ended {final.kind} before the cancel (raise --seconds)")
            latencies.append(final_time - asked)
        chunk = engines.get(name).capabilities.chunk_seconds
        # The longest step between two checks: one transformer block (of the double's 8) of one
        # model evaluation of a chunk (31 s with its context) for the 2-prompt batch, at the
        # double's simulated RTF 1 (fast: 16 of 32 evaluations).
        step = f"{31.0 * 2 / 32 / 8:.2f} (one block)" if name == "sam" else ""
        rows.append([labels[name], f"{chunk:g}", step, runs, statistics.median(latencies), max(latencies)])
    print(f"### 2. Cancel latency on a {SECONDS_LONG:g} s file (cancel {after:g} s after 'preparing')\n")
    table(["engine", "chunk s (audio)", "longest step s", "runs", "median s", "max s"], rows)


SECONDS_LONG = 180.0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=60.0, help="clip length for part 1")
    parser.add_argument("--rtf", default="0,0.1", help="simulated model RTFs of the double (part 1)")
    parser.add_argument("--cancel-runs", type=int, default=3)
    parser.add_argument("--cancel-after", type=float, default=1.0)
    parser.add_argument("--cancel-engines", default="dsp,spleeter,sam")
    parser.add_argument("--skip-sets", action="store_true")
    parser.add_argument(
        "--real", action="store_true", help="part 1 on the installed SAM-Audio, not the double"
    )
    parser.add_argument("--skip-cancel", action="store_true")
    args = parser.parse_args()
    if not args.real or not args.skip_cancel:  # the cancel figures always use the double
        sys.path.insert(0, str(REPO / "tests" / "sam_double"))
    header("Stem sets and cancel latency")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if not args.skip_sets:
            source = tmp / "clip.wav"
            sf.write(source, mix(args.seconds).T, SR, subtype="FLOAT")
            if args.real:
                problem = models.sam_audio_problem()
                if problem is not None:
                    sys.exit(f"sam_audio is not usable: {problem}")
                base = models.SamSettings.from_env()
                setups = [(f"SAM-Audio {models.ModelManager(base).variant()}", models.ModelManager(base))]
            else:
                setups = _double_setups(tmp, [float(x) for x in args.rtf.split(",") if x])
            sets_vs_singles(tmp, source, setups)
            spleeter_set(tmp, source)
        if not args.skip_cancel:
            long = tmp / "long.wav"
            sf.write(long, mix(SECONDS_LONG).T, SR, subtype="PCM_16")
            names = [n for n in args.cancel_engines.split(",") if n]
            cancel_latency(tmp, long, names, args.cancel_runs, args.cancel_after)


if __name__ == "__main__":
    main()
