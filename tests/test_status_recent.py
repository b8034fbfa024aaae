"""`/reasam/status` for job lists (the REAPER job panel) and `/reasam/shutdown`, against a real
`reasam serve` over UDP on loopback: the `recent` list with every state, progress and times, the
reply that always fits one datagram however long the jobs' messages, and stopping the daemon
over OSC (refused without the token, answered before it stops).
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from reasam.osc import MAX_STATUS_REPLY, encode, parse

from tests.test_daemon import (
    PYTHON,
    Daemon,
    clean_env,
    collect,
    final_for,
    read_status,
    separate_args,
    wait_for,
    write_noise,
)


def _status_reply(client) -> tuple[dict, int]:
    """The overview and the size of the datagram that carried it."""
    client.send("/reasam/status", *client.auth())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        client.sock.settimeout(max(0.01, deadline - time.monotonic()))
        data, _ = client.sock.recvfrom(70000)
        if b"/reasam/status" in data[:16]:
            (_, args), *_ = parse(data)
            return json.loads(args[0]), len(data)
    raise AssertionError("no status reply")


def test_recent_jobs_cap_and_shutdown(tmp_path: Path) -> None:
    d = Daemon(tmp_path / "d", "--shutdown-grace", "0").start()
    try:
        long_wav = write_noise(tmp_path / "long.wav", 90.0, rate=44100, seed=5)
        short_wav = write_noise(tmp_path / "short.wav", 1.0, seed=6)
        # Deep folder of long names: a job whose file vanished fails with a long message.
        deep = tmp_path
        for i in range(12):
            deep = deep / (f"{i:02d}-" + "x" * 60)
        deep.mkdir(parents=True)
        with d.client() as client:
            client.send("/reasam/separate", *separate_args("p-done", short_wav, token=d.token))
            collect(client, final_for("p-done"))
            client.send("/reasam/separate", *separate_args("p-run", long_wav, token=d.token))
            wait_for(lambda: read_status(d.out / "p-run")["state"] == "running")
            client.send("/reasam/separate", *separate_args("p-queued", short_wav, token=d.token))
            gone = []
            for i in range(40):
                src = write_noise(deep / f"gone-{i:02d}-{'y' * 150}.wav", 0.2, seed=i)
                client.send("/reasam/separate", *separate_args(f"p-gone-{i:02d}", src, token=d.token))
                gone.append(src)
            wait_for(lambda: read_status(d.out / "p-gone-39")["state"] == "queued")
            client.send("/reasam/separate", *separate_args("p-cancel", short_wav, token=d.token))
            wait_for(lambda: read_status(d.out / "p-cancel")["state"] == "queued")
            client.send("/reasam/cancel", "p-cancel", *client.auth())
            collect(client, final_for("p-cancel"))
            wait_for(lambda: read_status(d.out / "p-run")["fraction"] > 0)

            body, size = _status_reply(client)
            assert size <= MAX_STATUS_REPLY
            recent = body["recent"]
            by_id = {e["id"]: e for e in recent}
            assert recent[0]["id"] == "p-cancel"  # newest first
            assert by_id["p-cancel"]["state"] == "cancelled" and by_id["p-cancel"]["finished"] is not None
            assert by_id["p-gone-39"]["state"] == "queued"
            # The oldest did not fit: the list was cut, not the datagram.
            assert "p-done" not in by_id and len(recent) < 44
            for entry in recent:
                assert set(entry) >= {
                    "id",
                    "state",
                    "fraction",
                    "stage",
                    "message",
                    "code",
                    "out",
                    "prompt",
                    "source",
                    "submitted",
                    "started",
                    "finished",
                }
                assert entry["out"] == str(d.out / entry["id"])
                assert entry["prompt"] == "drums"
            assert body["keep_alive_left"] is None  # the dsp engine loads no model
            assert isinstance(body["keep_alive"], (int, float))
            assert Path(body["log_file"]) == d.state / "logs" / "reasam.log"
            assert Path(body["log_file"]).exists()

            # Let the jobs run: every vanished file fails with a long message, cut in the list.
            for src in gone:
                src.unlink()
            client.send("/reasam/cancel", "p-run", *client.auth())
            wait_for(lambda: read_status(d.out / "p-gone-00")["state"] == "error", timeout=60)
            wait_for(lambda: read_status(d.out / "p-gone-39")["state"] == "error", timeout=60)
            body, size = _status_reply(client)
            assert size <= MAX_STATUS_REPLY
            errors = [e for e in body["recent"] if e["state"] == "error"]
            assert len(errors) >= 5
            assert all(e["code"] == "not_found" and len(e["message"]) == 200 for e in errors)
            assert len(read_status(d.out / "p-gone-39")["message"]) > 1000  # the full one stays on disk

            # Running with progress and a start time (the panel's estimate of the time left).
            client.send(
                "/reasam/separate",
                *separate_args("p-run2", long_wav, "drums", "region", "1:89", token=d.token),
            )
            wait_for(lambda: read_status(d.out / "p-run2")["fraction"] > 0)
            body, _ = _status_reply(client)
            run = next(e for e in body["recent"] if e["id"] == "p-run2")
            assert run["state"] == "running" and 0 < run["fraction"] < 1
            assert run["submitted"] <= run["started"] <= time.time() and run["finished"] is None
            assert run["source"] == "long.wav" and run["prompt"] == "drums"

            # Shutdown: refused without the token (the daemon keeps answering), then answered.
            client.sock.sendto(encode("/reasam/shutdown"), ("127.0.0.1", d.port))
            address, args = client.receive(5) or ("", [])
            assert address == "/reasam/error" and args[1] == "unauthorized"
            assert client.ping()["version"]
        env = clean_env(d.home)
        res = subprocess.run(
            [PYTHON, "-m", "reasam.cli", "stop", "--port", str(d.port), "--token-file", str(d.token_file)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert res.returncode == 0, res.stderr
        stopping = json.loads(res.stdout)
        assert stopping["state"] == "stopping" and stopping["running"] in (0, 1) and stopping["queued"] == 0
        assert d.proc is not None
        assert d.proc.wait(30) == 0
        assert "stopping: asked over OSC" in d.log.read_text()
        # The running job was journaled for the next start, as with SIGTERM.
        assert read_status(d.out / "p-run2")["state"] in ("queued", "done")
    finally:
        d.stop()
