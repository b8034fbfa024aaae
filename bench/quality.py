"""Separation quality per engine, prompt and preset on the generated ground-truth set.

Runs the real pipeline (file in, stems out) on mixes whose stems are known exactly, and
reports SDR and SI-SDR (fast_bss_eval, averaged over channels) of the target stem, the same of
the unprocessed mix as the baseline, and the gain. Usage: python bench/quality.py [SECONDS]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import fast_bss_eval
import numpy as np
import soundfile as sf
from reasam import audio, pipeline
from reasam.request import Request, Span
from report import header, table

from tests import material


def scores(reference: np.ndarray, estimate: np.ndarray) -> tuple[float, float]:
    """(SDR, SI-SDR) in dB, mean over channels."""
    sdr = fast_bss_eval.sdr(reference.astype(np.float64), estimate.astype(np.float64), filter_length=512)
    si = fast_bss_eval.si_sdr(reference.astype(np.float64), estimate.astype(np.float64))
    return float(np.mean(sdr)), float(np.mean(si))


def cases(seconds: float) -> list[tuple[str, np.ndarray, np.ndarray, dict]]:
    parts = material.stems(seconds, 44100)
    full = material.mix(parts)
    band = material.mix([parts["drums"], parts["bass"], parts["music"]])
    scene_mix, scene_target, spans = material.event_scene(seconds, 44100)
    quiet = material.background_span(spans, seconds)
    return [
        ("full mix", full, parts["vocals"], {"prompt": "vocals", "engine": "spleeter"}),
        ("full mix", full, full - parts["vocals"], {"prompt": "accompaniment", "engine": "spleeter"}),
        ("full mix", full, parts["drums"], {"prompt": "drums", "engine": "spleeter"}),
        ("full mix", full, parts["drums"], {"prompt": "drums", "engine": "dsp"}),
        ("band (no vocals)", band, parts["drums"], {"prompt": "drums", "engine": "dsp"}),
        ("band (no vocals)", band, parts["bass"] + parts["music"], {"prompt": "harmonic", "engine": "dsp"}),
        (
            "event scene, one + span",
            scene_mix,
            scene_target,
            {"prompt": "", "engine": "dsp", "spans": (Span("+", *spans[0]),)},
        ),
        (
            "event scene, + and - span",
            scene_mix,
            scene_target,
            {"prompt": "", "engine": "dsp", "spans": (Span("+", *spans[0]), Span("-", *quiet))},
        ),
    ]


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 30.0
    header(f"Separation quality, {seconds:g} s clips, 44.1 kHz stereo")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n, (scene, mix, target, req) in enumerate(cases(seconds)):
            src = Path(tmp) / f"mix{n}.wav"
            audio.write_audio(src, mix, 44100)
            base_sdr, base_si = scores(target, mix)
            for quality in ("fast", "balanced", "best"):
                job = f"job{n}-{quality}"
                started = time.perf_counter()
                result = pipeline.run(Request(src, quality=quality, **req), Path(tmp) / job, job)
                elapsed = time.perf_counter() - started
                estimate = sf.read(str(result.stems[0].path), dtype="float32", always_2d=True)[0].T
                sdr, si = scores(target, estimate)
                prompt = req["prompt"] or " ".join(str(s) for s in req["spans"])
                rows.append(
                    (
                        req["engine"],
                        prompt,
                        scene,
                        quality,
                        sdr,
                        sdr - base_sdr,
                        si,
                        si - base_si,
                        elapsed / seconds,
                    )
                )
    table(
        (
            "engine",
            "prompt",
            "material",
            "quality",
            "SDR dB",
            "SDR gain dB",
            "SI-SDR dB",
            "SI-SDR gain dB",
            "RTF",
        ),
        rows,
    )


if __name__ == "__main__":
    main()
