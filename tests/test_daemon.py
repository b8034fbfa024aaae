"""The daemon as a real process: `reasam serve` on a random loopback port, driven over UDP by
python-osc (our client) and by liblo's oscsend/oscdump (an independent OSC implementation).

One daemon is shared by the tests that do not stop it; the crash, shutdown and limit tests start
their own. Audio is short generated noise and the `dsp` engine does the work, so the whole file
runs in well under a minute or two on two cores.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
import soundfile as sf
from pythonosc.osc_message_builder import OscMessageBuilder
from reasam.client import Client
from reasam.osc import encode, parse

PYTHON = sys.executable
SAM_DOUBLE = Path(__file__).resolve().parent / "sam_double"


# ---------------------------------------------------------------------------------------------
# Helpers


def write_noise(path: Path, seconds: float, rate: int = 22050, channels: int = 2, seed: int = 0) -> Path:
    """Noise with clicks: something for HPSS to split, deterministic per seed."""
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    x = rng.standard_normal((n, channels)).astype(np.float32) * 0.05
    x[:: rate // 4] += 0.8
    sf.write(path, x, rate, subtype="FLOAT")
    return path


def clean_env(home: Path) -> dict[str, str]:
    """The environment without the user's REASAM_* settings and config file: config and data
    under `home`, and REASAM_CONFIG naming an empty file there (on every platform, where the
    config folder may not follow XDG_CONFIG_HOME)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REASAM_")}
    env["XDG_CONFIG_HOME"] = str(home / "config")
    env["XDG_DATA_HOME"] = str(home / "data")
    env["PYTHONUNBUFFERED"] = "1"
    empty = home / "empty-config.toml"
    if not empty.exists():
        empty.parent.mkdir(parents=True, exist_ok=True)
        empty.write_text("")
    env["REASAM_CONFIG"] = str(empty)
    return env


_RUNNING: list[subprocess.Popen] = []  # every daemon process started, so none outlives a test
_SHARED: set[int] = set()  # pids of the module's shared daemon (stopped by its fixture)


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)


@pytest.fixture(autouse=True)
def _reap_test_daemons() -> Iterator[None]:
    """A test's own daemons die with the test, passed or failed (stop() already ended them)."""
    yield
    for proc in _RUNNING:
        if proc.pid not in _SHARED:
            _kill(proc)


@pytest.fixture(autouse=True, scope="module")
def _reap_daemons() -> Iterator[None]:
    yield
    for proc in _RUNNING:
        _kill(proc)


class Daemon:
    """A `reasam serve` subprocess with its own state, output and token under `home`."""

    def __init__(
        self,
        home: Path,
        *extra: str,
        env: dict[str, str] | None = None,
        shared: bool = False,
        command: tuple[str, ...] = ("serve",),
    ) -> None:
        self.home = home
        self.command = command  # or ("watch", DIR) (tests/test_watch.py)
        self.state = home / "state"
        self.out = home / "out"
        self.token_file = home / "config" / "reasam" / "token"
        self.extra = list(extra)
        self.env = dict(env or {})
        self.shared = shared
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.log = home / "daemon.log"

    def start(self, timeout: float = 30.0) -> Daemon:
        cmd = [PYTHON, "-m", "reasam.cli", *self.command, "--port", str(self.port)]
        cmd += ["--out", str(self.out)]
        cmd += ["--state-dir", str(self.state), *self.extra]
        self.home.mkdir(parents=True, exist_ok=True)
        env = {**clean_env(self.home), **self.env}
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        _RUNNING.append(self.proc)
        if self.shared:
            _SHARED.add(self.proc.pid)
        deadline = time.monotonic() + timeout
        info = self.state / "daemon.json"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited with {self.proc.returncode}:\n{self.log.read_text()}")
            with contextlib.suppress(OSError, ValueError):
                data = json.loads(info.read_text())
                if data["pid"] == self.proc.pid:
                    self.port = data["port"]
                    return self
            time.sleep(0.05)
        raise AssertionError(f"daemon did not start:\n{self.log.read_text()}")

    @property
    def token(self) -> str | None:
        return self.token_file.read_text().strip() if self.token_file.exists() else None

    def client(self, token: str | bool | None = True) -> Client:
        """A python-osc client; token True = the real one, a string = that one, None = none."""
        use = self.token if token is True else (token or None)
        return Client("127.0.0.1", self.port, use)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout: float = 30.0, sig: int = signal.SIGTERM) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise

    def cli(
        self, *args: str, timeout: float = 60.0, token_file: Path | None = None
    ) -> subprocess.CompletedProcess:
        cmd = [
            PYTHON,
            "-m",
            "reasam.cli",
            *args,
            "--port",
            str(self.port),
            "--token-file",
            str(token_file or self.token_file),
        ]
        return subprocess.run(cmd, env=clean_env(self.home), capture_output=True, text=True, timeout=timeout)


def collect(
    client: Client, until: Callable[[list[tuple[str, list[Any]]]], bool], timeout: float = 30.0
) -> list:
    """Replies received until `until(replies)` holds (or fail after `timeout`)."""
    got: list[tuple[str, list[Any]]] = []
    deadline = time.monotonic() + timeout
    while not until(got):
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"timed out; replies so far: {got[-20:]}")
        reply = client.receive(min(left, 0.5))
        if reply is not None:
            got.append(reply)
    return got


def final_for(job_id: str) -> Callable[[list], bool]:
    finals = ("/reasam/done", "/reasam/error", "/reasam/cancelled")
    return lambda got: any(a in finals and x[:1] == [job_id] for a, x in got)


def separate_args(
    job_id: str, path: Path, prompt: str = "drums", *pairs: Any, token: str | None
) -> list[Any]:
    args: list[Any] = [job_id, str(path), prompt, "engine", "dsp", *pairs]
    return [*args, "token", token] if token else args


def read_status(job_dir: Path) -> dict[str, Any]:
    return json.loads((job_dir / "status.json").read_text())


def wait_for(predicate: Callable[[], bool], timeout: float = 30.0, step: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError):  # e.g. a status.json not written yet
            if predicate():
                return
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(step)


def job_files(job_dir: Path) -> list[str]:
    return sorted(p.name for p in job_dir.iterdir())


# ---------------------------------------------------------------------------------------------
# The shared daemon


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("daemon")


@pytest.fixture(scope="module")
def daemon(home: Path) -> Iterator[Daemon]:
    d = Daemon(home / "shared", shared=True)
    try:
        yield d.start()
    finally:
        code = d.stop()  # kills it if SIGTERM does not end it in time
    assert code == 0, d.log.read_text()
    assert "Traceback" not in d.log.read_text(), d.log.read_text()


@pytest.fixture(scope="module")
def short_wav(home: Path) -> Path:
    return write_noise(home / "short.wav", 1.0)


def test_token_file_is_private_and_required(daemon: Daemon, short_wav: Path) -> None:
    assert daemon.token_file.stat().st_mode & 0o777 == 0o600
    for bad in (None, "wrong-token"):
        with daemon.client(bad) as client:
            client.send("/reasam/ping", *(["token", bad] if bad else []))
            _, args = collect(client, lambda got: bool(got), timeout=5)[0]
            assert args[:2] == ["", "unauthorized"]
            # A separate without the token is refused and does nothing else.
            client.send("/reasam/separate", *separate_args("noauth", short_wav, token=bad))
            address, args = collect(client, final_for("noauth"), timeout=5)[-1]
            assert (address, args[1]) == ("/reasam/error", "unauthorized")
    assert not (daemon.out / "noauth").exists()
    with daemon.client() as client:
        pong = client.ping()
    assert pong["version"]
    assert "dsp" in pong["engines"].split(",")
    assert pong["device"]
    assert "dsp" in pong["model_state"]


def test_a_text_with_spans_on_the_dsp_engine_is_noted(daemon: Daemon, short_wav: Path) -> None:
    """The dsp engine learns its templates from the spans alone: a text sent with them only
    names the stem, and the manifest's notes say so (in the words `reasam separate` prints)."""
    from reasam.engines.dsp import text_ignored_note

    args = separate_args("door", short_wav, "The squeaky door", "span", "+0.2:0.6", token=daemon.token)
    with daemon.client() as client:
        client.send("/reasam/separate", *args)
        address, reply = collect(client, final_for("door"), timeout=60)[-1]
    assert address == "/reasam/done", reply
    manifest = json.loads(Path(reply[1]).read_text())
    assert manifest["engine"] == "dsp" and manifest["notes"] == [text_ignored_note("the squeaky door")]
    assert [s["name"] for s in manifest["stems"]] == ["The squeaky door", "The squeaky door residual"]


def test_separate_replies_files_and_status_transitions(daemon: Daemon, home: Path) -> None:
    """accepted → progress → done over OSC; status.json goes queued → running → done and is
    always complete JSON; manifest.json has the protocol's keys and stems that sum to the mix."""
    long_wav = write_noise(home / "long.wav", 20.0, seed=1)
    second = write_noise(home / "second.wav", 3.0, seed=2)
    seen: list[str] = []
    with daemon.client() as client:
        client.send("/reasam/separate", *separate_args("first", long_wav, token=daemon.token))
        client.send("/reasam/separate", *separate_args("second", second, token=daemon.token))
        accepted = collect(client, lambda got: sum(a == "/reasam/accepted" for a, _ in got) >= 2, timeout=10)
        positions = {x[0]: x[1] for a, x in accepted if a == "/reasam/accepted"}
        assert positions["first"] == 0 and positions["second"] >= 1
        job_dir = daemon.out / "second"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            state = read_status(job_dir)["state"]  # must always parse: written atomically
            if not seen or seen[-1] != state:
                seen.append(state)
            if state in ("done", "error", "cancelled"):
                break
            time.sleep(0.005)
        replies = accepted + collect(client, final_for("second"), timeout=30)
    assert seen[0] == "queued" and seen[-1] == "done" and "running" in seen, seen
    # "accepted" always comes first, even for a job that starts at once.
    assert next(a for a, x in replies if x[:1] == ["first"]) == "/reasam/accepted"
    kinds = [a for a, x in replies if x[:1] == ["second"]]
    assert kinds[0] == "/reasam/accepted" and kinds[-1] == "/reasam/done"
    assert "/reasam/progress" in kinds
    status = read_status(job_dir)
    assert {"job_id", "state", "fraction", "stage", "message", "code"} <= set(status)
    assert status["fraction"] == 1.0 and status["code"] is None
    manifest = json.loads((job_dir / "manifest.json").read_text())
    for key in ("job_id", "request", "engine", "model", "version", "sample_rate", "stems"):
        assert key in manifest
    assert [s["role"] for s in manifest["stems"]] == ["target", "residual"]
    target, residual = (sf.read(s["path"], always_2d=True)[0] for s in manifest["stems"])
    mix = sf.read(second, always_2d=True)[0]
    assert np.abs(target + residual - mix).max() < 1e-5
    for stem in manifest["stems"]:
        assert Path(stem["path"]).is_absolute() and stem["region_start"] == 0.0
    assert job_files(job_dir) == ["drums-residual.wav", "drums.wav", "manifest.json", "status.json"]


def test_idempotent_retry_and_conflicting_id(daemon: Daemon, short_wav: Path) -> None:
    with daemon.client() as client:
        for _ in range(3):
            client.send("/reasam/separate", *separate_args("same", short_wav, token=daemon.token))
        collect(client, final_for("same"), timeout=30)
        # Retrying after the end answers with the current state again, runs nothing.
        client.send("/reasam/separate", *separate_args("same", short_wav, token=daemon.token))
        address, args = collect(client, final_for("same"), timeout=5)[-1]
        assert address == "/reasam/done" and args[1].endswith("same/manifest.json")
        client.send("/reasam/separate", *separate_args("same", short_wav, "harmonic", token=daemon.token))
        address, args = collect(client, lambda got: bool(got), timeout=5)[-1]
        assert (address, args[1]) == ("/reasam/error", "bad_request")
        assert "different request" in args[2]
        status = client.status("same")
    assert status["state"] == "done"
    assert job_files(daemon.out / "same") == [
        "drums-residual.wav",
        "drums.wav",
        "manifest.json",
        "status.json",
    ]
    assert daemon.log.read_text().count("job same running") == 1


def test_cache_hit_returns_own_copies(daemon: Daemon, home: Path) -> None:
    original = write_noise(home / "cache-src.wav", 4.0, seed=7)
    renamed = home / "cache-copy.wav"
    shutil.copyfile(original, renamed)
    with daemon.client() as client:
        for job_id, path in (("c1", original), ("c2", original), ("c3", renamed)):
            client.send("/reasam/separate", *separate_args(job_id, path, token=daemon.token))
            address, _ = collect(client, final_for(job_id), timeout=30)[-1]
            assert address == "/reasam/done"
    manifests = [json.loads((daemon.out / j / "manifest.json").read_text()) for j in ("c1", "c2", "c3")]
    assert not manifests[0].get("cached")
    assert manifests[1]["cached"] and manifests[2]["cached"]
    assert manifests[2]["request"]["source"] == str(renamed)
    for a, b in zip(manifests[0]["stems"], manifests[1]["stems"], strict=True):
        assert a["path"] != b["path"] and Path(b["path"]).parent.name == "c2"
        assert os.stat(a["path"]).st_ino != os.stat(b["path"]).st_ino  # its own file
        assert Path(a["path"]).read_bytes() == Path(b["path"]).read_bytes()
        assert (a["frames"], a["region_end"]) == (b["frames"], b["region_end"])
    log = daemon.log.read_text()
    assert "job c2 done" in log and "(cache)" in log.split("job c2 done")[1].splitlines()[0]


def test_cancel_running_and_queued(daemon: Daemon, home: Path) -> None:
    long_wav = write_noise(home / "cancel.wav", 40.0, rate=44100, seed=3)
    with daemon.client() as client:
        client.send("/reasam/separate", *separate_args("run-x", long_wav, token=daemon.token))
        client.send("/reasam/separate", *separate_args("queued-x", long_wav, "harmonic", token=daemon.token))
        collect(client, lambda got: sum(a == "/reasam/accepted" for a, _ in got) >= 2, timeout=10)
        # Cancel during the first of its two chunks: it stops before the second.
        wait_for(lambda: read_status(daemon.out / "run-x")["state"] == "running")
        # The queued one through the CLI client, the running one over OSC.
        done = daemon.cli("cancel", "queued-x")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["state"] == "cancelled"
        client.send("/reasam/cancel", "run-x", "token", daemon.token)
        replies = collect(client, final_for("run-x"), timeout=30)
    assert ("/reasam/cancelled", ["run-x"]) in replies
    for job_id in ("run-x", "queued-x"):
        assert job_files(daemon.out / job_id) == ["status.json"]  # no stems, no partial files
        assert read_status(daemon.out / job_id)["state"] == "cancelled"


def test_200_queued_requests_fifo(daemon: Daemon, home: Path) -> None:
    """200 requests in a burst: all queued (UDP losses resent, as any client must: same id and
    request is safe), all done, first in first out."""
    src = write_noise(home / "many.wav", 2.0, rate=16000, channels=1, seed=11)
    ids = [f"q{i:03d}" for i in range(200)]
    args = {
        # Distinct regions: no cache hits, 200 real jobs.
        job_id: separate_args(job_id, src, "drums", "region", f"{i * 0.004:.3f}:1.5", token=daemon.token)
        for i, job_id in enumerate(ids)
    }
    answered: set[str] = set()

    def take(got: list) -> bool:
        for address, reply in got:
            assert address != "/reasam/error", reply
            answered.add(reply[0])
        got.clear()
        return answered >= set(ids)

    with daemon.client() as client:
        for job_id in ids:
            client.send("/reasam/separate", *args[job_id])
        for _ in range(5):
            with contextlib.suppress(AssertionError):
                collect(client, take, timeout=3)
            missing = [j for j in ids if j not in answered]
            if not missing:
                break
            for job_id in missing:
                client.send("/reasam/separate", *args[job_id])
        assert answered >= set(ids)
    wait_for(lambda: all(read_status(daemon.out / j)["state"] == "done" for j in ids), timeout=120, step=0.5)
    # status.json turns "done" just before the worker logs it: wait for the last log line too.
    wait_for(lambda: len(re.findall(r"job q\d{3} done", daemon.log.read_text())) >= len(ids), timeout=30)
    log = daemon.log.read_text()
    queued = re.findall(r"job (q\d{3}) queued", log)
    done = re.findall(r"job (q\d{3}) done", log)
    assert sorted(queued) == ids and done == queued  # each once; first in, first out
    assert all((daemon.out / j / "manifest.json").is_file() for j in ids)


def _malformed(valid: bytes, rng: np.random.Generator) -> Iterator[bytes]:
    bundle = b"#bundle\x00" + b"\x00" * 8
    yield bundle + struct.pack(">i", -8) + valid  # python-osc loops forever on this one
    yield bundle + struct.pack(">i", -2147483648) + valid
    yield bundle + struct.pack(">i", 0) + valid
    yield bundle + struct.pack(">i", 1 << 30) + valid
    yield bundle + struct.pack(">i", 6) + valid  # unaligned
    nested = valid
    for _ in range(8):
        nested = bundle + struct.pack(">i", len(nested)) + nested
    yield nested
    yield bundle + b"".join(struct.pack(">i", len(valid)) + valid for _ in range(100))
    yield b""
    yield b"\x00" * 4
    yield b"/reasam/ping"  # unterminated, unaligned
    yield b"/reasam/ping\x00\x00\x00\x00,s\x00\x00"  # type tag promises a missing string
    yield b"/reasam/ping\x00\x00\x00\x00,b\x00\x00\xff\xff\xff\xf0"  # negative blob
    yield b"/reasam/ping\x00\x00\x00\x00,[\x00\x00"  # arrays are not taken
    yield b"/reasam/ping\x00\x00\x00\x00,c\x00\x00abcd"  # char tag python-osc misreads
    yield b"/reasam/\xff\xfe\x00\x00\x00\x00"  # not ASCII
    yield encode("/reasam/ping", "\udcff".encode("utf-8", "surrogatepass").decode("latin-1"))
    yield b"/reasam/ping\x00\x00\x00\x00,s\x00\x00\xc3\x28\x00\x00"  # invalid UTF-8 string
    yield encode("/reasam/*")  # address patterns are not served
    yield encode("/reasam/unknown", 1, 2.0, "x")
    yield encode("/reasam/separate")  # no job id: dropped
    yield encode("/reasam/separate", 42, "/x", "drums")  # job id of the wrong type: dropped
    yield encode("/reasam/separate", "x" * 60000)  # huge unreadable job id: dropped
    yield encode("/reasam/status", 1.5)
    for n in range(len(valid)):
        yield valid[:n]  # every truncation
    for _ in range(3000):
        size = int(rng.integers(1, 200)) * 4
        kind = rng.integers(0, 3)
        if kind == 0:
            yield rng.bytes(size)
        elif kind == 1:
            yield bundle + rng.bytes(size)
        else:  # a valid message with some bytes flipped
            data = bytearray(valid)
            for _ in range(int(rng.integers(1, 4))):
                data[int(rng.integers(0, len(data)))] = int(rng.integers(0, 256))
            yield bytes(data)


def test_malformed_datagrams_never_hurt(daemon: Daemon, short_wav: Path) -> None:
    rng = np.random.default_rng(5)
    valid = encode("/reasam/separate", "flood", str(short_wav), "drums", "engine", "dsp", "token", "t")
    with daemon.client() as client:
        client.ping()  # engines imported before CPU is measured
        sent = 0
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:
            for data in _malformed(valid, rng):
                raw.sendto(data, ("127.0.0.1", daemon.port))
                sent += 1
                if sent % 200 == 0:
                    time.sleep(0.01)  # stay under the socket buffer
        assert sent > 3000
        pong = client.ping()  # answered within the client's retries (no clock: a busy machine is slow)
        assert pong["version"]
        assert psutil.Process(daemon.proc.pid).cpu_percent(interval=1.0) < 50  # not spinning
        # Readable job id + bad content → /reasam/error bad_request, one per case.
        cases = {
            "k1": ["k1", str(short_wav), "drums", "colour", "red"],  # unknown key
            "k2": ["k2", str(short_wav), "drums", "quality"],  # key without a value
            "k3": ["k3", 17, "drums"],  # path of the wrong type
            "k4": ["k4", str(short_wav), "x" * 50000],  # huge prompt
            "k5": ["k5", "relative/path.wav", "drums"],
            "k6": ["k6", str(short_wav), "drums", "region", "soon"],
            "bad id!": ["bad id!", str(short_wav), "drums"],
            # Ids made only of dots would name the output root or its parent as the job folder.
            ".": [".", str(short_wav), "drums"],
            "..": ["..", str(short_wav), "drums"],
            "...": ["...", str(short_wav), "drums"],
            # A reply_port that is no port is refused, not silently ignored.
            "p1": ["p1", str(short_wav), "drums", "reply_port", "abc"],
            "p2": ["p2", str(short_wav), "drums", "reply_port", 0],
            "p3": ["p3", str(short_wav), "drums", "reply_port", 70000],
            "p4": ["p4", str(short_wav), "drums", "reply_port", 9000.5],
        }
        for job_id, args in cases.items():
            client.send("/reasam/separate", *args, *client.auth())
            address, reply = collect(client, final_for(job_id), timeout=5)[-1]
            assert (address, reply[1]) == ("/reasam/error", "bad_request"), (job_id, reply)
        client.send("/reasam/separate", "k8", str(short_wav.parent / "missing.wav"), "drums", *client.auth())
        assert collect(client, final_for("k8"), timeout=5)[-1][1][1] == "not_found"
        client.send("/reasam/separate", "k7", str(short_wav.parent), "drums", *client.auth())  # a folder
        assert collect(client, final_for("k7"), timeout=5)[-1][1][1] == "unsupported_format"
        # Valid OSC with values of types we do not take: a blob, a boolean.
        for job_id, value, tag in (("k9", b"abcd", "b"), ("k10", True, "T")):
            builder = OscMessageBuilder("/reasam/separate")
            for arg in (job_id, str(short_wav), "drums", "engine"):
                builder.add_arg(arg, "s")
            builder.add_arg(value, tag)
            for arg in client.auth():
                builder.add_arg(arg, "s")
            client.sock.sendto(builder.build().dgram, client.addr)
            address, reply = collect(client, final_for(job_id), timeout=5)[-1]
            assert (address, reply[1]) == ("/reasam/error", "bad_request"), reply
        # The control messages refuse a bad reply_port too; the error goes back to the sender.
        control = [
            ("/reasam/ping", "", []),
            ("/reasam/status", "", []),
            ("/reasam/status", "k1", ["k1"]),
            ("/reasam/cancel", "k1", ["k1"]),
        ]
        for address, job_id, head in control:
            for port in ("abc", 0, 70000):
                client.send(address, *head, "reply_port", port, *client.auth())
                got, reply = collect(client, lambda got: bool(got), timeout=5)[-1]
                assert (got, reply[:2]) == ("/reasam/error", [job_id, "bad_request"]), (address, port, reply)
                assert "reply_port" in reply[2]
        assert client.ping()["version"]
    assert not any(daemon.out.glob("status.json"))  # no job ever wrote into the output root
    log = daemon.log.read_text()
    assert "dropped datagram" in log and "Traceback" not in log


def test_bundle_is_unpacked(daemon: Daemon) -> None:
    with daemon.client() as client:
        ping = encode("/reasam/ping", *client.auth())
        bundle = b"#bundle\x00" + struct.pack(">Q", 1 << 62) + struct.pack(">i", len(ping)) + ping
        client.sock.sendto(bundle, client.addr)
        # Answered at once even though the time tag lies far in the future.
        address, _ = collect(client, lambda got: bool(got), timeout=3)[0]
    assert address == "/reasam/pong"


def test_liblo_oscsend_and_oscdump(daemon: Daemon, short_wav: Path) -> None:
    """An independent OSC implementation, exactly as README tells a user to drive the daemon."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        listen = probe.getsockname()[1]
    dump = subprocess.Popen(["oscdump", "-L", str(listen)], stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.3)
        token = daemon.token
        assert token
        base = ["oscsend", "127.0.0.1", str(daemon.port)]
        subprocess.run(
            [*base, "/reasam/ping", "sssi", "token", token, "reply_port", str(listen)], check=True, timeout=10
        )
        subprocess.run(
            [
                *base,
                "/reasam/separate",
                "ssssssssi",
                "liblo-1",
                str(short_wav),
                "drums",
                "engine",
                "dsp",
                "token",
                token,
                "reply_port",
                str(listen),
            ],
            check=True,
            timeout=10,
        )
        lines: list[str] = []
        deadline = time.monotonic() + 30
        assert dump.stdout is not None
        while time.monotonic() < deadline and not any("/reasam/done" in line for line in lines):
            lines.append(dump.stdout.readline())
    finally:
        dump.terminate()
        dump.wait(5)
    text = "".join(lines)
    assert "/reasam/pong ssss" in text
    assert '/reasam/accepted si "liblo-1"' in text
    assert f'/reasam/done ss "liblo-1" "{daemon.out / "liblo-1" / "manifest.json"}"' in text


def test_every_client_command_exits_2_when_unauthorized(daemon: Daemon, short_wav: Path) -> None:
    """A refused request (here: a wrong token) exits 2 from send, status, cancel and ping alike."""
    wrong = daemon.home / "wrong-token"
    wrong.write_text("not-the-token\n")
    commands = [
        ["send", str(short_wav), "--prompt", "drums", "--engine", "dsp", "--job-id", "unauth-1"],
        ["status"],
        ["status", "unauth-1"],
        ["cancel", "unauth-1"],
        ["ping"],
    ]
    for command in commands:
        proc = daemon.cli(*command, "--timeout", "10", token_file=wrong)
        assert proc.returncode == 2, (command, proc.returncode, proc.stdout, proc.stderr)
        assert "unauthorized" in proc.stdout + proc.stderr, command
    assert not (daemon.out / "unauth-1").exists()


def test_send_cli_outcomes(daemon: Daemon, short_wav: Path) -> None:
    ok = daemon.cli("send", str(short_wav), "--prompt", "drums", "--engine", "dsp", "--job-id", "cli-1")
    assert ok.returncode == 0, ok.stderr
    body = json.loads(ok.stdout)
    assert body["state"] == "done" and body["manifest"]["job_id"] == "cli-1"
    queued = daemon.cli("send", str(short_wav), "--prompt", "harmonic", "--engine", "dsp", "--no-wait")
    assert queued.returncode == 0 and json.loads(queued.stdout)["state"] in ("queued", "done")
    missing = daemon.cli("send", str(short_wav.parent / "nope.wav"), "--prompt", "drums")
    assert missing.returncode == 1 and json.loads(missing.stdout)["code"] == "not_found"
    unknown = daemon.cli("send", str(short_wav), "--prompt", "a dog barking", "--engine", "dsp")
    assert unknown.returncode == 2 and json.loads(unknown.stdout)["code"] == "unsupported_prompt"
    status = daemon.cli("status", "cli-1")
    assert status.returncode == 0 and json.loads(status.stdout)["state"] == "done"
    overview = daemon.cli("status")
    assert json.loads(overview.stdout)["jobs"]["done"] >= 1
    ping = daemon.cli("ping")
    assert ping.returncode == 0 and json.loads(ping.stdout)["version"]

    def ping_nobody(port: int, *flags: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [PYTHON, "-m", "reasam.cli", "ping", "--port", str(port), *flags],
            env=clean_env(daemon.home),
            capture_output=True,
            text=True,
            timeout=30,
        )

    refused = ping_nobody(9)  # nothing listens: the host says so, no retries needed
    assert refused.returncode == 3 and "nothing listens at 127.0.0.1:9: connection refused" in refused.stderr
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:  # listens, never answers
        silent.bind(("127.0.0.1", 0))
        port = silent.getsockname()[1]
        nobody = ping_nobody(port, "--retries", "2")
        assert nobody.returncode == 3 and "no answer" in nobody.stderr
        # --timeout caps the retries (6 doubling retries alone would wait ~19 s): scripts rely on it.
        started = time.monotonic()
        quick = ping_nobody(port, "--timeout", "1")
        assert quick.returncode == 3 and time.monotonic() - started < 10


# ---------------------------------------------------------------------------------------------
# Daemons of their own


def test_kill9_mid_job_then_restart_completes_once(tmp_path: Path) -> None:
    long_wav = write_noise(tmp_path / "long.wav", 40.0, rate=44100, seed=21)
    short = write_noise(tmp_path / "short.wav", 1.0, seed=22)
    d = Daemon(tmp_path / "d", "--cache-mb", "0").start()
    ids = ["crash-long", "after-1", "after-2", "after-3"]
    with d.client() as client:
        client.send("/reasam/separate", *separate_args(ids[0], long_wav, token=d.token))
        for job_id in ids[1:]:
            client.send("/reasam/separate", *separate_args(job_id, short, token=d.token))
        collect(client, lambda got: sum(a == "/reasam/accepted" for a, _ in got) >= 4, timeout=10)
        wait_for(lambda: read_status(d.out / ids[0])["fraction"] > 0.3)  # partial stems on disk
        d.kill9()
        assert not (d.out / ids[0] / "manifest.json").exists()
        assert any(p.name.endswith(".partial") for p in (d.out / ids[0]).iterdir())
        d.start()  # same port, same journal
        replies = collect(client, lambda got: sum(a == "/reasam/done" for a, _ in got) >= 4, timeout=60)
        time.sleep(0.5)
        while (late := client.receive(0.2)) is not None:
            replies.append(late)
    done = [x[0] for a, x in replies if a == "/reasam/done"]
    assert sorted(done) == sorted(ids)  # every job done exactly once, reported to its sender
    for job_id in ids:
        assert job_files(d.out / job_id) == [
            "drums-residual.wav",
            "drums.wav",
            "manifest.json",
            "status.json",
        ]
        assert read_status(d.out / job_id)["state"] == "done"
    log = d.log.read_text()
    assert "job crash-long was running at the last stop; it runs again" in log
    assert log.count("job after-1 running") == 1
    assert d.stop() == 0


def test_sigterm_journals_the_running_job(tmp_path: Path) -> None:
    long_wav = write_noise(tmp_path / "long.wav", 40.0, rate=44100, seed=31)
    d = Daemon(tmp_path / "d", "--shutdown-grace", "0").start()
    with d.client() as client:
        client.send("/reasam/separate", *separate_args("term-1", long_wav, token=d.token))
        wait_for(lambda: read_status(d.out / "term-1")["state"] == "running")
        started = time.monotonic()
        assert d.stop() == 0  # clean exit
        assert time.monotonic() - started < 20
        status = read_status(d.out / "term-1")
        assert status["state"] == "queued" and "interrupted" in status["message"]
        assert job_files(d.out / "term-1") == ["status.json"]
        assert "stopped; 1 job(s) journaled for the next start" in d.log.read_text()
        d.start()
        replies = collect(client, final_for("term-1"), timeout=60)
    assert replies[-1][0] == "/reasam/done"
    assert d.stop() == 0


def test_busy_beyond_queue_limit_no_token_on_loopback_and_preload(tmp_path: Path) -> None:
    long_wav = write_noise(tmp_path / "long.wav", 30.0, rate=44100, seed=41)
    d = Daemon(
        tmp_path / "d", "--queue-limit", "2", "--no-token", "--preload", "--engine", "spleeter"
    ).start()
    assert d.token is None
    with d.client(None) as client:
        assert client.ping()["version"]  # no token needed
        client.send("/reasam/separate", *separate_args("b0", long_wav, token=None))
        wait_for(lambda: read_status(d.out / "b0")["state"] == "running")
        for job_id in ("b1", "b2", "b3"):  # b1 and b2 fill the queue; b3 is one too many
            client.send("/reasam/separate", *separate_args(job_id, long_wav, "harmonic", token=None))
        replies = collect(client, final_for("b3"), timeout=10)
        assert replies[-1][0] == "/reasam/error" and replies[-1][1][1] == "busy"
        assert not (d.out / "b3").exists()
        for job_id in ("b1", "b2"):
            client.send("/reasam/cancel", job_id)
        replies = collect(client, lambda got: sum(a == "/reasam/cancelled" for a, _ in got) >= 2, timeout=30)
        assert sorted(x[0] for a, x in replies if a == "/reasam/cancelled") == ["b1", "b2"]  # once each
        collect(client, final_for("b0"), timeout=30)
        # --preload: the default engine's model was loaded at start, not by a job.
        wait_for(lambda: "spleeter loaded" in client.ping()["model_state"], timeout=60, step=0.2)
    assert "preloaded spleeter" in d.log.read_text()
    assert d.stop() == 0


def _sam_model_dir(folder: Path, hub: Path) -> Path:
    """A model folder the SAM test double loads (see tests/test_sam.py), written in process,
    and t5-base and the judge in the hub cache `hub`, as `reasam models pull` leaves them."""
    sys.path.insert(0, str(SAM_DOUBLE))
    try:
        from sam_audio.testing import write_extras_cache, write_model_dir

        write_extras_cache(hub)
        return write_model_dir(folder, "base")
    finally:
        sys.path.remove(str(SAM_DOUBLE))
        for name in [m for m in sys.modules if m == "sam_audio" or m.startswith("sam_audio.")]:
            del sys.modules[name]


def _sam_state(client: Client) -> str:
    """The `sam …` part of the pong's model_state."""
    parts = client.ping()["model_state"].split("; ")
    return next(p for p in parts if p.startswith("sam "))


def test_sam_jobs_keep_alive_log_file_and_sigint(tmp_path: Path) -> None:
    """`reasam serve` with the SAM engine (its test double): a text prompt and a span prompt end
    to end on CPU; the model stays loaded between jobs and unloads after the keep-alive; the
    rotating log file is written; SIGINT stops the daemon as cleanly as SIGTERM."""
    env = {
        "PYTHONPATH": os.pathsep.join(p for p in (str(SAM_DOUBLE), os.environ.get("PYTHONPATH")) if p),
        "REASAM_SAM_MODEL": str(_sam_model_dir(tmp_path / "model-base", tmp_path / "hub")),
        "REASAM_SAM_VARIANT": "base",
        "REASAM_SAM_DEVICE": "cpu",
        "HF_HUB_CACHE": str(tmp_path / "hub"),
        "HF_HUB_OFFLINE": "1",
    }
    src = write_noise(tmp_path / "mix.wav", 3.0, rate=44100, seed=51)
    log_file = tmp_path / "logs" / "serve.log"
    home = tmp_path / "d"

    def job(client: Client, job_id: str, prompt: str, *pairs: Any) -> dict[str, Any]:
        client.send("/reasam/separate", job_id, str(src), prompt, "engine", "sam", *pairs, *client.auth())
        address, reply = collect(client, final_for(job_id), timeout=120)[-1]
        assert address == "/reasam/done", reply
        return json.loads(Path(reply[1]).read_text())

    d = Daemon(home, "--log-file", str(log_file), "--keep-alive", "10", env=env).start()
    with d.client() as client:
        pong = client.ping()
        assert "sam" in pong["engines"].split(","), pong
        assert _sam_state(client).startswith("sam not loaded"), pong
        text = job(client, "sam-text", "bass", "quality", "fast")
        assert text["engine"] == "sam" and text["request"]["prompt"] == "bass"
        between = _sam_state(client)
        assert between.startswith("sam base ready on cpu"), between  # kept loaded between jobs
        overview = client.status()  # the job panel's keep-alive countdown
        assert overview["keep_alive"] == 10 and 0 < overview["keep_alive_left"] <= 600, overview
        span = job(client, "sam-span", "", "span", "+1:2", "span", "-2.2:2.8")
        assert span["engine"] == "sam" and span["request"]["spans"] == ["+1:2", "-2.2:2.8"]
        assert _sam_state(client).startswith("sam base ready on cpu")
    for manifest in (text, span):
        assert [s["role"] for s in manifest["stems"]] == ["target", "residual"]
        assert all(Path(s["path"]).is_file() for s in manifest["stems"])
    assert d.stop(sig=signal.SIGINT) == 0  # Ctrl-C: a clean stop, like SIGTERM
    written = log_file.read_text()
    assert "listening on udp://127.0.0.1" in written and "job sam-span done" in written
    assert written.count("loaded SAM-Audio base") == 1  # once for both jobs: it stayed warm
    assert re.search(r"signal 2: stopping", written) and written.rstrip().endswith("stopped")
    assert "Traceback" not in written + d.log.read_text()
    assert not (d.state / "daemon.json").exists()

    # A tiny keep-alive (0.6 s): loaded for the job, unloaded soon after it, with no request.
    d = Daemon(home, "--log-file", str(log_file), "--keep-alive", "0.01", "--cache-mb", "0", env=env).start()
    with d.client() as client:
        assert job(client, "sam-short", "bass", "quality", "fast")["engine"] == "sam"
        wait_for(lambda: _sam_state(client).startswith("sam not loaded"), timeout=15, step=0.2)
    assert d.stop() == 0
    written = log_file.read_text()
    assert written.count("loaded SAM-Audio base") == 2 and "Traceback" not in written


def test_sam_default_preset_and_seed_agree_with_the_cli(tmp_path: Path) -> None:
    """`reasam send` at the default quality (balanced: judge-ranked candidates) works; with one
    seed the daemon, the in-process CLI and the result cache give the same bits; another seed
    gives another take (SAM-Audio draws fresh noise per call: sam_audio/model/model.py)."""
    hub = tmp_path / "hub"
    env = {
        "PYTHONPATH": os.pathsep.join(p for p in (str(SAM_DOUBLE), os.environ.get("PYTHONPATH")) if p),
        "REASAM_SAM_MODEL": str(_sam_model_dir(tmp_path / "model-base", hub)),
        "REASAM_SAM_VARIANT": "base",
        "REASAM_SAM_DEVICE": "cpu",
        "HF_HUB_CACHE": str(hub),
        "HF_HUB_OFFLINE": "1",
    }
    src = write_noise(tmp_path / "mix.wav", 3.0, rate=44100, seed=52)
    d = Daemon(tmp_path / "d", env=env).start()

    def send(job_id: str, *flags: str) -> tuple[dict[str, Any], np.ndarray]:
        proc = d.cli(
            "send", str(src), "-p", "bass", "--engine", "sam", "--job-id", job_id, *flags, timeout=120
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        manifest = json.loads(proc.stdout)["manifest"]
        return manifest, sf.read(manifest["stems"][0]["path"], dtype="float32")[0]

    seven, daemon_bits = send("s7", "--seed", "7")
    assert seven["quality"] == "balanced" and seven["notes"] == [] and seven["request"]["seed"] == 7
    _, cached_bits = send("s7-again", "--seed", "7")
    _, other_bits = send("s8", "--seed", "8")
    _, default_bits = send("s0")
    with d.client() as client:
        client.send("/reasam/separate", "bad-seed", str(src), "bass", "seed", "x", *client.auth())
        address, reply = collect(client, final_for("bad-seed"))[-1]
        assert address == "/reasam/error" and reply[1] == "bad_request" and "seed" in reply[2]
    assert d.stop() == 0
    flags = ["-p", "bass", "--engine", "sam", "--seed", "7", "--out", str(tmp_path / "cli"), "--job-id", "s7"]
    cli = subprocess.run(
        [PYTHON, "-m", "reasam.cli", "separate", str(src), *flags, "-q"],
        env={**clean_env(tmp_path / "d"), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert cli.returncode == 0, cli.stderr
    cli_bits = sf.read(tmp_path / "cli" / "s7" / "bass.wav", dtype="float32")[0]
    assert np.array_equal(daemon_bits, cli_bits) and np.array_equal(daemon_bits, cached_bits)
    assert not np.array_equal(daemon_bits, other_bits) and not np.array_equal(daemon_bits, default_bits)
    assert np.max(np.abs(daemon_bits - other_bits)) < 1e-3  # another take, not another result


def test_no_token_refused_off_loopback(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            PYTHON,
            "-m",
            "reasam.cli",
            "serve",
            "--host",
            "0.0.0.0",
            "--no-token",
            "--state-dir",
            str(tmp_path),
        ],
        env=clean_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert "only allowed on a loopback address" in proc.stderr


def test_second_daemon_on_same_state_is_refused(daemon: Daemon) -> None:
    proc = subprocess.run(
        [PYTHON, "-m", "reasam.cli", "serve", "--port", "0", "--state-dir", str(daemon.state)],
        env=clean_env(daemon.home),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 1 and "already using" in proc.stderr


def test_client_listens_on_loopback_and_ignores_forged_replies() -> None:
    """The CLI client binds the loopback address when the daemon is on loopback, and takes
    replies only from the daemon's address: another local socket cannot answer for it."""
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as fake_daemon,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as forger,
    ):
        fake_daemon.bind(("127.0.0.1", 0))
        port = fake_daemon.getsockname()[1]
        with Client("127.0.0.1", port, "token", retries=2, interval=0.5) as client:
            assert client.sock.getsockname()[0] == "127.0.0.1"
            me = client.sock.getsockname()
            forger.sendto(encode("/reasam/pong", "forged", "dsp", "cpu", "ready"), me)
            forger.sendto(encode("/reasam/done", "job-1", "/etc/forged/manifest.json"), me)
            assert client.receive(0.3) is None  # both dropped
            forger.sendto(encode("/reasam/pong", "forged", "dsp", "cpu", "ready"), me)
            fake_daemon.sendto(encode("/reasam/pong", "0.1.0", "dsp", "cpu", "ready"), me)
            assert client.receive(2.0) == ("/reasam/pong", ["0.1.0", "dsp", "cpu", "ready"])


def test_encode_parse_round_trip() -> None:
    data = encode("/reasam/progress", "job", 0.5, "separating")
    assert parse(data) == [("/reasam/progress", ["job", 0.5, "separating"])]


# ---------------------------------------------------------------------------------------------
# Hardening


def test_unauthenticated_requests_are_answered_only_to_their_sender(daemon: Daemon, short_wav: Path) -> None:
    """A wrong token with a `reply_port`: the error goes back to the sender's own port, never to
    the port named (anyone on the host could aim the replies at any local port otherwise).

    No stray reply is shown without a timeout: the daemon answers datagrams in order, so after
    the four errors reached the sender, an authenticated ping aimed at the port must be the
    first datagram there; a stray reply, sent before it, would come first."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as aimed_at:
        aimed_at.bind(("127.0.0.1", 0))
        port = aimed_at.getsockname()[1]
        with daemon.client("wrong-token") as client:
            client.send("/reasam/ping", "token", "wrong-token", "reply_port", port)
            client.send("/reasam/status", "token", "wrong-token", "reply_port", port)
            client.send("/reasam/cancel", "some-job", "reply_port", port)
            aimed = separate_args("aimed", short_wav, "drums", "reply_port", port, token="wrong-token")
            client.send("/reasam/separate", *aimed)
            got = collect(client, lambda got: len(got) >= 4, timeout=10)
        assert [args[1] for _, args in got] == ["unauthorized"] * 4
        with daemon.client() as client:  # with the token, reply_port is honoured as before
            client.send("/reasam/ping", "token", daemon.token, "reply_port", port)
            aimed_at.settimeout(30)
            first = parse(aimed_at.recv(65536))[0]
        assert first[0] == "/reasam/pong", (
            f"a reply reached the port named by an unauthenticated request: {first}"
        )
    assert not (daemon.out / "aimed").exists()


def test_non_file_inputs_never_hold_the_worker(tmp_path: Path) -> None:
    """A playlist whose segment is a FIFO (ffmpeg would block on it for ever), a FIFO and a
    folder: each refused as unsupported_format, and the job behind them runs."""
    from tests.test_audio import _hls_with_a_fifo

    playlist = _hls_with_a_fifo(tmp_path / "hls")
    fifo = tmp_path / "fifo.wav"
    os.mkfifo(fifo)
    short = write_noise(tmp_path / "short.wav", 1.0, seed=51)
    d = Daemon(tmp_path / "d").start()
    with d.client() as client:
        for job_id, path in (("playlist", playlist), ("fifo", fifo), ("folder", tmp_path), ("after", short)):
            client.send("/reasam/separate", *separate_args(job_id, path, token=d.token))
        replies = collect(
            client, lambda got: all(final_for(j)(got) for j in ("playlist", "fifo", "folder", "after")), 120
        )
    finals = {x[0]: (a, x[1:2]) for a, x in replies if a in ("/reasam/done", "/reasam/error")}
    for job_id in ("playlist", "fifo", "folder"):
        assert finals[job_id] == ("/reasam/error", ["unsupported_format"]), finals
    assert finals["after"][0] == "/reasam/done"
    assert not [p for p in psutil.Process(d.proc.pid).children(recursive=True) if p.name().startswith("ff")]
    assert d.stop() == 0


def test_unwritable_cache_folder_starts_without_the_cache(tmp_path: Path, unwritable_dir: Path) -> None:
    d = Daemon(tmp_path / "d")
    d.state.mkdir(parents=True)
    (d.state / "cache").symlink_to(unwritable_dir)  # a folder no file can be created in
    d.start()
    short = write_noise(tmp_path / "short.wav", 1.0, seed=52)
    with d.client() as client:
        client.send("/reasam/separate", *separate_args("no-cache", short, token=d.token))
        assert collect(client, final_for("no-cache"), timeout=60)[-1][0] == "/reasam/done"
        assert client.status()["cache"] is None
    assert d.stop() == 0
    log = d.log.read_text()
    assert f"result cache off: cannot open {d.state / 'cache'}" in log
