"""Real-time factor and peak memory per engine for 30 s, 3 min and 30 min inputs.

Each run is its own process, so its peak RSS (ru_maxrss) is that run's alone; the process
time includes importing torch and loading weights, the RTF column only the separation itself.
A 60 min run checks the streaming promise (memory must not grow with length).
Usage: python bench/speed.py [--lengths 30,180,1800,3600] [--engines spleeter:vocals,dsp:drums,...]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
from report import REPO, header, table

from tests import material

_CHILD = """
import json, resource, sys, time
from pathlib import Path
from reasam import pipeline
from reasam.request import Request, Span
src, engine, prompt, spans, out = sys.argv[1:6]
spans = tuple(Span.parse(s) for s in spans.split(",") if s)
t0 = time.perf_counter()
result = pipeline.run(Request(Path(src), prompt, spans=spans, engine=engine), Path(out), "bench")
print(json.dumps({"seconds": time.perf_counter() - t0,
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def make_input(path: Path, seconds: int) -> None:
    """Tile a 30 s generated mix to `seconds`, streamed to a 16-bit WAV."""
    clip = material.mix(material.stems(30.0, 44100))
    with sf.SoundFile(str(path), "w", 44100, 2, subtype="PCM_16") as f:
        left = seconds * 44100
        while left > 0:
            block = clip[:, : min(left, clip.shape[1])]
            f.write(block.T)
            left -= block.shape[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lengths", default="30,180,1800,3600")
    parser.add_argument("--engines", default="spleeter:vocals,dsp:drums,dsp:+10:11")
    args = parser.parse_args()
    lengths = [int(s) for s in args.lengths.split(",")]
    header("Speed and peak memory, 44.1 kHz stereo input, one process per run")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seconds in lengths:
            src = Path(tmp) / f"in{seconds}.wav"
            make_input(src, seconds)
            for spec in args.engines.split(","):
                engine, prompt = spec.split(":", 1)
                spans = prompt if prompt.startswith(("+", "-")) else ""
                text = "" if spans else prompt
                out = Path(tmp) / f"out-{seconds}-{engine}-{len(rows)}"
                started = time.perf_counter()
                proc = subprocess.run(
                    [sys.executable, "-c", _CHILD, str(src), engine, text, spans, str(out)],
                    capture_output=True,
                    text=True,
                    cwd=REPO,
                    check=False,
                )
                wall = time.perf_counter() - started
                if proc.returncode != 0:
                    rows.append((engine, prompt, seconds, "failed", proc.stderr.strip()[-80:], "", ""))
                    continue
                child = json.loads(proc.stdout.strip().splitlines()[-1])
                rows.append(
                    (
                        engine,
                        prompt or spans,
                        _duration(seconds),
                        child["seconds"],
                        child["seconds"] / seconds,
                        wall,
                        round(child["rss_mb"]),
                    )
                )
                for f in out.glob("*.wav"):
                    f.unlink()
            src.unlink()
    table(("engine", "prompt", "input", "separation s", "RTF", "process s", "peak RSS MB"), rows)


def _duration(seconds: int) -> str:
    return f"{seconds} s" if seconds < 60 else f"{seconds // 60} min"


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
