"""SAM-Audio engine: load time, real-time factor, peak VRAM, and the cost of our own work.

Runs the real pipeline (file in, stems out) on a synthetic stereo mix at 44.1 kHz, so every job
resamples to the model's 48 kHz and back, is cut into chunks, and rebuilds stereo from the mono
model output. For each variant and quality preset it reports:

- load: seconds to load the model (with the extras the preset needs), once per row;
- RTF: wall seconds of the warm job / audio seconds (file read and write included);
- model: seconds inside the model calls (processor + `separate`), as the engine measures them;
- ours: everything else (resampling, chunking and crossfades, stereo mask, file I/O), split
  into resampling (soxr, both directions) and the stereo mask, and its share of the total;
- peak VRAM (CUDA only): torch.cuda.max_memory_allocated during the job.

With the real package (`sam_audio` importable and weights downloaded) it measures the real
model. With `--double` it uses the test double in tests/sam_double (no weights needed): the
model column is then the double's own toy work, so the share of "ours" is an upper bound; the
`--double-rtf` option makes the double also spend a given real-time factor, to show the share
against a model of known speed.

Usage: python bench/sam.py [--double] [--double-rtf 0,0.1] [--seconds 60]
       [--variants base,large] [--qualities fast,balanced,best] [--stereo mask]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from reasam import audio, engines, models, pipeline
from reasam.engines import sam
from reasam.request import OutputOptions, Region, Request, Span
from report import REPO, header, table

SR = 44_100


def synthetic_mix(seconds: float) -> tuple[np.ndarray, list[float]]:
    """Bass (left-heavy), a chord, hiss and 3 kHz bursts every 10 s: stereo, 44.1 kHz."""
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * SR)) / SR
    bass = 0.25 * np.sin(2 * np.pi * 55 * t) * (1 + 0.3 * np.sin(2 * np.pi * 0.5 * t))
    chord = sum(0.05 * np.sin(2 * np.pi * f * t) for f in (440.0, 554.4, 659.3))
    hiss = 0.01 * rng.standard_normal(t.size)
    bursts = np.zeros_like(t)
    starts = [float(s) for s in np.arange(3.0, seconds - 1.0, 10.0)]
    for s in starts:
        i, n = int(s * SR), SR
        bursts[i : i + n] += 0.15 * np.sin(2 * np.pi * 3000 * t[:n]) * np.hanning(n)
    left = bass + chord + hiss + 0.3 * bursts
    right = 0.5 * bass + chord + hiss + bursts
    return np.stack([left, right]).astype(np.float32), starts


class Timers:
    """Wraps the pipeline's resampling so its time can be reported apart."""

    def __init__(self) -> None:
        self.resample = 0.0
        self._orig_resample = audio.resample
        self._orig_push = audio.StreamResampler.push

    def __enter__(self) -> Timers:
        timers = self
        orig_resample, orig_push = self._orig_resample, self._orig_push

        def resample(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return orig_resample(*args, **kwargs)
            finally:
                timers.resample += time.perf_counter() - t0

        def push(self_, *args, **kwargs):
            t0 = time.perf_counter()
            try:
                return orig_push(self_, *args, **kwargs)
            finally:
                timers.resample += time.perf_counter() - t0

        audio.resample = resample
        audio.StreamResampler.push = push
        return self

    def __exit__(self, *exc: object) -> None:
        audio.resample = self._orig_resample
        audio.StreamResampler.push = self._orig_push


def run_case(
    source: Path,
    out: Path,
    manager: models.ModelManager,
    quality: str,
    prompt: str,
    spans,
    stereo: str,
    seconds: float,
) -> list[object]:
    engine = sam.SamEngine(manager)
    engines._instances["sam"] = engine
    # Warm-up on a short region: loads the model with the preset's extras, like a first job.
    warm = Request(
        source=source, prompt=prompt, spans=spans, engine="sam", quality=quality, region=Region(0, 4.0)
    )
    pipeline.run(warm, out / "warm", "warm")
    load = manager.state()["load_seconds"]
    for key in engine.totals:
        engine.totals[key] = 0.0
    device = manager.device()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    request = Request(
        source=source,
        prompt=prompt,
        spans=spans,
        engine="sam",
        quality=quality,
        output=OutputOptions(stereo=stereo),
    )
    with Timers() as timers:
        t0 = time.perf_counter()
        pipeline.run(request, out / "job", "job")
        total = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 1e9 if device.type == "cuda" else None
    model_s = engine.totals["model_seconds"]
    ours = total - model_s
    return [
        manager.state()["variant"],
        quality,
        "text" if prompt else "span",
        stereo,
        f"{manager.state()['device']} {manager.state()['dtype']}",
        load,
        total / seconds,
        model_s,
        ours,
        timers.resample,
        engine.totals["mask_seconds"],
        f"{100 * ours / total:.1f} %",
        "-" if peak is None else f"{peak:.2f}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--double", action="store_true", help="use the test double (tests/sam_double)")
    parser.add_argument("--double-rtf", default="0,0.1", help="simulated model RTFs for the double")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--variants", default="", help="default: the configured variant (double: base)")
    parser.add_argument("--qualities", default="fast,balanced,best")
    parser.add_argument("--stereo", default="mask,mono")
    args = parser.parse_args()

    if args.double:
        sys.path.insert(0, str(REPO / "tests" / "sam_double"))
    problem = models.sam_audio_problem()
    if problem is not None:
        sys.exit(f"sam_audio is not usable: {problem} (or run with --double)")
    qualities = [q for q in args.qualities.split(",") if q]
    stereos = [s for s in args.stereo.split(",") if s]
    mode = "test double" if args.double else "real sam_audio"
    header(f"SAM-Audio engine ({mode}): {args.seconds:g} s stereo 44.1 kHz, chunks 30 s / 2 s overlap")
    mix, starts = synthetic_mix(args.seconds)
    headers = [
        "variant",
        "quality",
        "prompt",
        "stereo",
        "device",
        "load s",
        "RTF",
        "model s",
        "ours s",
        "resample s",
        "mask s",
        "ours share",
        "peak VRAM GB",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "mix.wav"
        sf.write(source, mix.T, SR, subtype="FLOAT")
        setups: list[tuple[str, models.ModelManager]] = []
        if args.double:
            from sam_audio.testing import write_extras_cache, write_model_dir

            hub = Path(tmp) / "hub"  # t5-base and the judge, as `reasam models pull` leaves them
            write_extras_cache(hub)
            for rtf in [float(x) for x in args.double_rtf.split(",") if x]:
                folder = write_model_dir(Path(tmp) / f"double-{rtf:g}", "base", rtf=rtf)
                settings = models.SamSettings(model_path=folder, variant="base", cache_dir=hub)
                setups.append((f"double, simulated model RTF {rtf:g}", models.ModelManager(settings)))
        else:
            base = models.SamSettings.from_env()
            variants = [v for v in args.variants.split(",") if v] or [models.ModelManager(base).variant()]
            for variant in variants:
                settings = models.SamSettings(**{**base.__dict__, "variant": variant})
                setups.append((variant, models.ModelManager(settings)))
        n = 0
        for label, manager in setups:
            rows = []
            for quality in qualities:
                for stereo in stereos:
                    for prompt, spans in (("bass", ()), ("", (Span("+", starts[0], starts[0] + 1.0),))):
                        if stereo == "mono" and prompt == "":
                            continue
                        n += 1
                        rows.append(
                            run_case(
                                source,
                                Path(tmp) / f"run{n}",
                                manager,
                                quality,
                                prompt,
                                spans,
                                stereo,
                                args.seconds,
                            )
                        )
            print(f"### {label}\n")
            table(headers, rows)
            manager.unload()
    print(
        "ours = total - model: resampling 44.1<->48 kHz (soxr), chunk reads and crossfades, the "
        "stereo mask (two STFTs per channel plus two for the mono stems), WAV writing."
    )


if __name__ == "__main__":
    main()
