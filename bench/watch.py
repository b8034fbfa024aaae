"""The watch folder's cost next to OSC, on one daemon: latency of one file and throughput of 50.

(a) latency: one 1 s stereo file moved into inbox/drums/ → its original in done/ (stems and
    manifest written, file moved), against the same job sent over OSC (sent → `/reasam/done`).
    The watch path includes the settle time by design; the table shows it separately.
(b) throughput: 50 such files moved in at once → the last one in done/, against 50 OSC
    requests sent at once → the last `/reasam/done`. At most `--max-queued` files are jobs at
    once on the watch side (the daemon's default, 8).

Usage: python bench/watch.py [--repeats N] [--settle S]. Runs a real `reasam serve --watch` on
a random loopback port with its own state in a temporary folder; dsp engine, cache off.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

# bench/daemon.py, imported before report.py puts the repository (and its daemon/ folder) first
# on sys.path.
from daemon import Daemon, noise, run_job

# isort: split
from reasam.client import Client
from report import header, table


def drop_and_wait(staging: Path, root: Path, names: list[str], seed: int) -> float:
    """Seconds from moving `names` into inbox/drums/ to all of them being in done/drums/."""
    files = [noise(staging / name, 1.0, seed=seed + i) for i, name in enumerate(names)]
    inbox, done = root / "inbox" / "drums", root / "done" / "drums"
    inbox.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    for path in files:
        os.rename(path, inbox / path.name)
    waiting = set(names)
    deadline = started + 600
    while waiting:
        waiting = {n for n in waiting if not (done / n).exists()}
        if time.perf_counter() > deadline:
            raise RuntimeError(f"not done after 600 s: {sorted(waiting)[:5]}")
        time.sleep(0.005)
    return time.perf_counter() - started


def osc_batch(client: Client, staging: Path, count: int, seed: int) -> float:
    paths = [noise(staging / f"osc-{seed + i}.wav", 1.0, seed=seed + i) for i in range(count)]
    ids = [f"osc-{seed + i}" for i in range(count)]
    started = time.perf_counter()
    for job_id, path in zip(ids, paths, strict=True):
        client.send("/reasam/separate", job_id, str(path), "drums", "engine", "dsp", *client.auth())
    pending = set(ids)
    while pending:
        reply = client.receive(120)
        if reply is None:
            raise RuntimeError("no answer")
        address, values = reply
        if address == "/reasam/done":
            pending.discard(values[0])
        elif address == "/reasam/error":
            raise RuntimeError(values)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--settle", type=float, default=0.2)
    args = parser.parse_args()
    header("Watch folder against OSC: latency and throughput")
    with tempfile.TemporaryDirectory(prefix="reasam-bench-") as tmp:
        home = Path(tmp)
        root, staging = home / "W", home / "staging"
        staging.mkdir()
        extra = ("--watch", str(root), "--watch-settle", str(args.settle), "--cache-mb", "0")
        extra += ("--log-level", "warning", "--engine", "dsp")
        with Daemon(home / "d", *extra) as d, d.client() as client:
            client.ping()
            run_job(client, "warmup", noise(staging / "warm.wav", 1.0, 1), "drums", "dsp")
            drop_and_wait(staging, root, ["warm.wav"], 2)
            osc = [
                run_job(client, f"lat-{i}", noise(staging / f"lat-{i}.wav", 1.0, 10 + i), "drums", "dsp")[0]
                for i in range(args.repeats)
            ]
            watch = [drop_and_wait(staging, root, [f"lat-{i}.wav"], 20 + i) for i in range(args.repeats)]
            print(f"### (a) Latency of one file (median of {args.repeats}; settle {args.settle:g} s)\n")
            w, o = statistics.median(watch), statistics.median(osc)
            table(
                ["front door", "seconds", "minus settle", "ms beyond OSC (settle excluded)"],
                [["OSC", o, o, 0.0], ["watch folder", w, w - args.settle, (w - args.settle - o) * 1000]],
            )
            print("### (b) Throughput: 50 files of 1 s stereo at once\n")
            osc_wall = osc_batch(client, staging, 50, 100)
            watch_wall = drop_and_wait(staging, root, [f"t-{i}.wav" for i in range(50)], 200)
            table(
                ["front door", "files", "wall s", "files/s"],
                [["OSC", 50, osc_wall, 50 / osc_wall], ["watch folder", 50, watch_wall, 50 / watch_wall]],
            )


if __name__ == "__main__":
    main()
