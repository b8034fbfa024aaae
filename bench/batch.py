"""`reasam batch` throughput: one manifest of short files in process, via a warm daemon and on a
local Ray instance, side by side in one run, plus what Ray's start-up costs and what a rerun
with every row already done (the resume check) costs.

Each mode runs the same manifest into its own output root as one `reasam batch` command:
"command s" is the whole process (Python, torch, engines, Ray's start where it starts one),
"batch s" the driver's own clock from reading the manifest to the summary (the summary JSON),
"row s" the median time of one row where it ran. The daemon is started and warmed before its
run (that is what "warm" means for it), so its row is the steady state.

Usage: python bench/batch.py [--rows 50] [--seconds 5] [--engine dsp] [--ray-workers 2]
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from report import header, table

from daemon import Daemon, clean_env, noise, run_job


def batch(home: Path, manifest: Path, out: Path, *extra: str) -> tuple[float, dict]:
    cmd = [sys.executable, "-m", "reasam.cli", "batch", str(manifest), "--out", str(out), "-q", *extra]
    started = time.perf_counter()
    res = subprocess.run(cmd, env=clean_env(home), capture_output=True, text=True)
    wall = time.perf_counter() - started
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited with {res.returncode}:\n{res.stderr[-2000:]}")
    summary = json.loads(sorted(out.glob("batch-*.json"))[-1].read_text())
    return wall, summary


def ray_start(cpus: int) -> float:
    """Seconds for `ray.init` to start a local instance (import excluded), in a fresh process."""
    code = (
        "import time, ray; t = time.perf_counter(); "
        f"ray.init(num_cpus={cpus}, include_dashboard=False, log_to_driver=False); "
        "print(time.perf_counter() - t); ray.shutdown()"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(res.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each file")
    parser.add_argument("--engine", default="dsp", choices=("dsp", "spleeter"))
    parser.add_argument("--ray-workers", type=int, default=2)
    args = parser.parse_args()
    prompt = "drums" if args.engine == "dsp" else "vocals"
    header(f"Batch: {args.rows} files of {args.seconds:g} s, {args.engine} `{prompt}`, three ways")
    with tempfile.TemporaryDirectory(prefix="reasam-bench-batch-") as tmp:
        home = Path(tmp)
        data = home / "data"
        data.mkdir()
        for i in range(args.rows):
            noise(data / f"f{i:03d}.wav", args.seconds, seed=500 + i)
        manifest = data / "manifest.csv"
        with open(manifest, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["input", "prompt", "output_format", "engine"])
            for i in range(args.rows):
                writer.writerow([f"f{i:03d}.wav", prompt, "wav", args.engine])

        results = []
        wall, summary = batch(home, manifest, home / "in-process")
        results.append(("in process", "1 (one per device)", wall, summary))
        resume_wall, resumed = batch(home, manifest, home / "in-process")
        assert resumed["counts"]["skipped"] == args.rows, resumed["counts"]
        with Daemon(home / "daemon") as d:
            with d.client() as client:
                client.ping()
                run_job(client, "warmup", noise(home / "warm.wav", 1.0, 1), prompt, args.engine)
            token = str(d.home / "config" / "reasam" / "token")
            wall, summary = batch(
                home,
                manifest,
                home / "daemon-out",
                "--via-daemon",
                "--port",
                str(d.port),
                "--token-file",
                token,
            )
            results.append(("via a warm daemon", "1 (its CPU worker)", wall, summary))
        workers = str(args.ray_workers)
        wall, summary = batch(home, manifest, home / "ray", "--ray", "--workers", workers)
        results.append((f"Ray, local instance, {workers} CPU actors", workers, wall, summary))
        start = ray_start(args.ray_workers + 1)

    rows = []
    for name, n, wall, summary in results:
        seconds = [x["seconds"] for x in summary["lines"] if x["seconds"] is not None]
        assert summary["counts"]["done"] == args.rows, summary["counts"]
        rows.append(
            [
                name,
                n,
                args.rows,
                wall,
                summary["seconds"],
                args.rows / summary["seconds"],
                args.rows / wall,
                statistics.median(seconds),
            ]
        )
    table(
        [
            "mode",
            "workers",
            "rows",
            "command s",
            "batch s",
            "rows/s (batch)",
            "rows/s (command)",
            "row s (median)",
        ],
        rows,
    )
    ray_info = results[-1][3]["runner"]
    table(
        ["start-up", "seconds"],
        [
            [f"ray.init, local instance ({args.ray_workers + 1} logical CPUs), fresh process", start],
            [
                "`reasam batch --ray`: ray.init to workers known (in the batch above)",
                ray_info["connect_seconds"],
            ],
            [f"resume check: rerun with all {args.rows} rows done (hash inputs, skip), command", resume_wall],
        ],
    )


if __name__ == "__main__":
    main()
