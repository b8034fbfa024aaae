"""The daemon's speed: its own overhead per job, warm against cold, and throughput.

(a) overhead: request sent → `/reasam/done` received, minus the time spent inside
    `pipeline.run` for the job (status.json "timing.pipeline": read, engine, write, manifest).
    What is left is the daemon: UDP, parsing, journal, status files, queue hand-off, the
    result-cache key (hashing the region's audio) and storing the result in the cache.
(b) warm vs cold: the same 30 s separation (spleeter "vocals", the embedded model) as a one-shot
    `reasam separate` process and as a request to a warm daemon; plus a cache hit on that daemon.
(c) throughput: 50 short requests sent at once, until the last is done.

Usage: python bench/daemon.py [--repeats N]. Runs a real `reasam serve` on a random loopback
port with its own state in a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
from reasam.client import Client
from report import header, table


def clean_env(home: Path) -> dict[str, str]:
    """No REASAM_* settings and no config.toml of the user's: the daemon runs on its defaults."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REASAM_")}
    empty = home / "empty-config.toml"
    home.mkdir(parents=True, exist_ok=True)
    empty.write_text("")
    env.update(
        XDG_CONFIG_HOME=str(home / "config"), XDG_DATA_HOME=str(home / "data"), REASAM_CONFIG=str(empty)
    )
    return env


class Daemon:
    def __init__(self, home: Path, *extra: str) -> None:
        self.home, self.extra = home, list(extra)
        self.state, self.out = home / "state", home / "out"
        self.proc: subprocess.Popen | None = None
        self.port = 0

    def __enter__(self) -> Daemon:
        cmd = [sys.executable, "-m", "reasam.cli", "serve", "--port", "0", "--out", str(self.out)]
        cmd += ["--state-dir", str(self.state), "--log-level", "warning", *self.extra]
        self.home.mkdir(parents=True, exist_ok=True)
        log = self.home / "daemon.log"
        with open(log, "wb") as fh:
            self.proc = subprocess.Popen(cmd, env=clean_env(self.home), stdout=fh, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                info = json.loads((self.state / "daemon.json").read_text())
                if info["pid"] == self.proc.pid:
                    self.port = info["port"]
                    return self
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.05)
        # Not up: never leave it running behind the exception (__exit__ is not called).
        code = self.proc.poll()
        if code is None:
            self.proc.kill()
            self.proc.wait(10)
        tail = log.read_text(errors="replace")[-2000:]
        why = "did not start within 60 s" if code is None else f"exited with {code}"
        raise RuntimeError(f"daemon {why}:\n{tail}")

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise

    def client(self) -> Client:
        token = (self.home / "config" / "reasam" / "token").read_text().strip()
        return Client("127.0.0.1", self.port, token)


def noise(path: Path, seconds: float, seed: int, rate: int = 44100) -> Path:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((int(seconds * rate), 2)).astype(np.float32) * 0.05
    x[:: rate // 4] += 0.8
    sf.write(path, x, rate, subtype="FLOAT")
    return path


def run_job(client: Client, job_id: str, path: Path, prompt: str, engine: str) -> tuple[float, dict]:
    """Seconds from sending to `done`, and the manifest."""
    args = [job_id, str(path), prompt, "engine", engine, *client.auth()]
    started = time.perf_counter()
    client.send("/reasam/separate", *args)
    while True:
        reply = client.receive(120)
        if reply is None:
            raise RuntimeError(f"{job_id}: no answer")
        address, values = reply
        if values[:1] != [job_id]:
            continue
        if address == "/reasam/done":
            elapsed = time.perf_counter() - started
            manifest = json.loads(Path(values[1]).read_text())
            status = json.loads((Path(values[1]).parent / "status.json").read_text())
            manifest["pipeline_seconds"] = status["timing"]["pipeline"]
            return elapsed, manifest
        if address in ("/reasam/error", "/reasam/cancelled"):
            raise RuntimeError(f"{job_id}: {values}")


def ms(seconds: float) -> float:
    return seconds * 1000.0


def overhead(home: Path, repeats: int) -> None:
    print("### (a) Daemon overhead per job (dsp engine, cache on, every item new audio)\n")
    rows = []
    with Daemon(home / "a") as d, d.client() as client:
        client.ping()
        run_job(client, "warmup", noise(home / "warm.wav", 1.0, 0), "drums", "dsp")
        for seconds in (1.0, 5.0, 10.0):
            totals, engine, over = [], [], []
            for i in range(repeats):
                src = noise(home / f"a-{seconds:g}-{i}.wav", seconds, seed=100 + i)
                total, manifest = run_job(client, f"a-{seconds:g}-{i}", src, "drums", "dsp")
                totals.append(total)
                engine.append(manifest["pipeline_seconds"])
                over.append(total - manifest["pipeline_seconds"])
            rows.append(
                [
                    f"{seconds:g} s stereo 44.1 kHz",
                    repeats,
                    ms(statistics.median(totals)),
                    ms(statistics.median(engine)),
                    ms(statistics.median(over)),
                    ms(max(over)),
                    f"{100 * statistics.median(over) / statistics.median(totals):.1f} %",
                ]
            )
    table(
        [
            "item",
            "jobs",
            "request→done ms",
            "pipeline ms",
            "overhead ms (median)",
            "overhead ms (max)",
            "share",
        ],
        rows,
    )


def warm_cold(home: Path, repeats: int) -> None:
    print("### (b) Warm daemon vs one-shot process: 30 s, spleeter `vocals`\n")
    src = noise(home / "thirty.wav", 30.0, seed=7)
    cold = []
    for i in range(repeats):
        cmd = [sys.executable, "-m", "reasam.cli", "separate", str(src), "--prompt", "vocals"]
        cmd += ["--engine", "spleeter", "--out", str(home / "cold"), "--job-id", f"cold-{i}", "--quiet"]
        started = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, env=clean_env(home))
        cold.append(time.perf_counter() - started)
    warm, hit = [], []
    with Daemon(home / "b") as d, d.client() as client:
        client.ping()
        first, _ = run_job(client, "b-first", src, "vocals", "spleeter")  # loads the model
        for i in range(repeats):
            other = noise(home / f"b-{i}.wav", 30.0, seed=200 + i)  # new audio: a real run
            warm.append(run_job(client, f"b-{i}", other, "vocals", "spleeter")[0])
            hit.append(run_job(client, f"b-hit-{i}", src, "vocals", "spleeter")[0])
    cold_s, warm_s, hit_s = (statistics.median(x) for x in (cold, warm, hit))
    table(
        ["path", "runs", "seconds (median)", "vs cold"],
        [
            ["one-shot `reasam separate` process (cold)", repeats, cold_s, "1.0×"],
            ["daemon, first request (model loads)", 1, first, f"{cold_s / first:.1f}× faster"],
            ["daemon, warm", repeats, warm_s, f"{cold_s / warm_s:.1f}× faster"],
            ["daemon, warm, result-cache hit", repeats, hit_s, f"{cold_s / hit_s:.0f}× faster"],
        ],
    )


def throughput(home: Path) -> None:
    print("### (c) Throughput: 50 short requests sent at once (1 s stereo items, new audio each)\n")
    rows = []
    for engine, prompt in (("dsp", "drums"), ("spleeter", "vocals")):
        with Daemon(home / f"c-{engine}") as d, d.client() as client:
            client.ping()
            run_job(client, "warmup", noise(home / f"c-warm-{engine}.wav", 1.0, 1), prompt, engine)
            paths = [noise(home / f"c-{engine}-{i}.wav", 1.0, seed=300 + i) for i in range(50)]
            ids = [f"c-{i}" for i in range(50)]
            pending = set(ids)
            started = time.perf_counter()
            for job_id, path in zip(ids, paths, strict=True):
                client.send("/reasam/separate", job_id, str(path), prompt, "engine", engine, *client.auth())
            engine_time = 0.0
            while pending:
                reply = client.receive(60)
                if reply is None:  # a lost datagram: ask again (idempotent)
                    for job_id in pending:
                        path = paths[ids.index(job_id)]
                        client.send(
                            "/reasam/separate", job_id, str(path), prompt, "engine", engine, *client.auth()
                        )
                    continue
                address, values = reply
                if address == "/reasam/done" and values[0] in pending:
                    pending.discard(values[0])
                    status = json.loads((Path(values[1]).parent / "status.json").read_text())
                    engine_time += status["timing"]["pipeline"]
                elif address == "/reasam/error":
                    raise RuntimeError(values)
            wall = time.perf_counter() - started
        rows.append([engine, 50, wall, 50 / wall, ms(wall / 50), ms(engine_time / 50)])
    table(["engine", "jobs", "wall s", "jobs/s", "ms per job", "pipeline ms per job"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    header("Daemon: overhead, warm vs cold, throughput")
    with tempfile.TemporaryDirectory(prefix="reasam-bench-") as tmp:
        home = Path(tmp)
        overhead(home, args.repeats)
        warm_cold(home, max(1, min(args.repeats, 3)))
        throughput(home)


if __name__ == "__main__":
    main()
