"""Watch folders with real daemons: real inotify, real files, kill -9, real UDP.

The daemons are `reasam serve --watch DIR` (or `reasam watch DIR`) processes started with
tests/test_daemon.py's helpers; the `dsp` engine and clips of a second or so keep every test
short. No assertion is about time: waits are generous "does not hang" bounds.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
import soundfile as sf
from reasam import config
from reasam.errors import ReasamError
from reasam.watch import attach, outbox_name, read_sidecar
from reasam.watch_files import FAILPOINTS, Entry, FileBook, Mover, identity
from reasam.watch_settle import Settler

from tests.test_daemon import (  # noqa: F401 - the reaping fixtures end every daemon started here
    Daemon,
    _reap_daemons,
    _reap_test_daemons,
    collect,
    final_for,
    separate_args,
    wait_for,
    write_noise,
)

# Seconds. The slow writers below close the file between pieces and pause 0.1 s: a settle time
# twenty times longer keeps a stalled writer thread on a busy machine from looking finished.
SETTLE = 2.0


def watch_daemon(
    home: Path, folder: Path, *extra: str, env: dict[str, str] | None = None, settle: float = 0.3
) -> Daemon:
    return Daemon(
        home, "--watch", str(folder), "--watch-settle", str(settle), "--engine", "dsp", *extra, env=env
    )


def files_below(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def watch_status(d: Daemon, index: int = 0) -> dict[str, Any]:
    """A watch folder's part of `/reasam/status` (what `reasam status` prints)."""
    with d.client() as client:
        return client.status()["watch"][index]


def manifests(outbox: Path) -> dict[str, list[Path]]:
    """Source path → the job folders whose manifest names it."""
    found: dict[str, list[Path]] = {}
    for path in sorted(outbox.glob("*/manifest.json")):
        source = json.loads(path.read_text())["request"]["source"]
        found.setdefault(source, []).append(path.parent)
    return found


# ---------------------------------------------------------------------------------------------
# Ways of dropping a file


@dataclass
class Drop:
    """One file dropped into the inbox, and what must become of it."""

    rel: str  # below inbox/
    write: Callable[[Path], None]  # writes the file at the given path, its own way
    sidecar: tuple[str, str] | None = None  # (suffix, text), written before the audio
    code: str | None = None  # None: a good file; else the error code its failure must carry
    reason: str = ""  # …and a piece of its one-line reason
    final: str | None = None  # its name below done/ or failed/ when not `rel`
    check: Callable[[dict[str, Any]], None] | None = None  # on its manifest
    written: str = ""  # the file's sha256, once written
    extra_sidecars: list[tuple[str, str]] = field(default_factory=list)

    def drop(self, inbox: Path) -> None:
        path = inbox / self.rel
        path.parent.mkdir(parents=True, exist_ok=True)
        for suffix, text in [*([self.sidecar] if self.sidecar else []), *self.extra_sidecars]:
            Path(str(path) + suffix).write_text(text)
        self.write(path)
        self.written = digest(path)


def plain(seed: int) -> Callable[[Path], None]:
    return lambda path: write_noise(path, 1.0, seed=seed) and None


def slowly(seed: int, staging: Path) -> Callable[[Path], None]:
    """Four pieces, the file closed and reopened between them (a close-write after each)."""

    def write(path: Path) -> None:
        data = write_noise(staging / f"slow-{seed}.wav", 1.0, seed=seed).read_bytes()
        quarter = len(data) // 4 + 1
        for i in range(4):
            with open(path, "wb" if i == 0 else "ab") as fh:
                fh.write(data[i * quarter : (i + 1) * quarter])
            time.sleep(0.1)

    return write


def moved_in(seed: int, staging: Path) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        os.rename(write_noise(staging / f"moved-{seed}.wav", 1.0, seed=seed), path)

    return write


def hard_linked(seed: int, staging: Path) -> Callable[[Path], None]:
    """`ln`: the file appears complete, with no close-write or move event."""

    def write(path: Path) -> None:
        os.link(write_noise(staging / f"linked-{seed}.wav", 1.0, seed=seed), path)

    return write


def via_temp_name(seed: int) -> Callable[[Path], None]:
    """A copy tool's way: a hidden partial name in the same folder, renamed when complete."""

    def write(path: Path) -> None:
        temp = path.with_name(f".{path.stem}-partial{path.suffix}")
        write_noise(temp, 1.0, seed=seed)
        os.rename(temp, path)

    return write


def raw(data: bytes) -> Callable[[Path], None]:
    return lambda path: path.write_bytes(data) and None


def _stems(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["role"]: s for s in manifest["stems"]}


def check_flac(manifest: dict[str, Any]) -> None:
    for stem in manifest["stems"]:
        info = sf.info(stem["path"])
        assert (info.format, info.subtype, info.samplerate) == ("FLAC", "PCM_16", 16000), stem


def check_mp3(manifest: dict[str, Any]) -> None:
    assert all(s["path"].endswith(".mp3") and sf.info(s["path"]).format == "MP3" for s in manifest["stems"])


def check_post(manifest: dict[str, Any]) -> None:
    assert manifest["request"]["post"] == {"peak_dbfs": -3.0}
    assert all("post" in s for s in manifest["stems"])


def check_span(manifest: dict[str, Any]) -> None:
    assert manifest["request"]["spans"] == ["+0.2:0.6"] and _stems(manifest)["target"]["name"] == "span"


def check_prompt_and_region(manifest: dict[str, Any]) -> None:
    target = _stems(manifest)["target"]
    assert target["name"] == "harmonic" and target["region_start"] == pytest.approx(0.25, abs=1 / 22050)


def check_24_mono(manifest: dict[str, Any]) -> None:
    for stem in manifest["stems"]:
        info = sf.info(stem["path"])
        assert (info.subtype, info.channels) == ("PCM_24", 1), stem


def fifty_drops(staging: Path) -> list[Drop]:
    """6 there before the start, 40 while it runs (through a kill -9), 4 while it is down."""
    before = [
        Drop("drums/pre.wav", plain(1), final="drums/pre-2.wav"),  # done/drums/pre.wav is the user's
        Drop("drums/p1.wav", plain(2)),
        Drop("harmonic/p2.wav", plain(3)),
        Drop("drums/dup.wav", plain(4)),  # the same stem in two prompt folders
        Drop("harmonic/dup.wav", plain(5)),
        Drop(
            "drums/junk1.wav",
            raw(os.urandom(3000)),
            code="unsupported_format",
            reason="not a readable audio file",
            final="drums/junk1-2.wav",  # failed/drums/junk1.wav is the user's
        ),
    ]

    def prompt(i: int, first: int) -> str:
        return "drums" if i < first else "harmonic"

    during = [Drop(f"{prompt(i, 7)}/g{i:02d}.wav", plain(10 + i)) for i in range(12)]
    during += [Drop("harmonic/ln0.wav", hard_linked(23, staging))]
    during += [Drop(f"{prompt(i, 3)}/slow{i}.wav", slowly(30 + i, staging)) for i in range(6)]
    during += [Drop(f"{prompt(i, 2)}/mv{i}.wav", moved_in(40 + i, staging)) for i in range(4)]
    during += [Drop(f"drums/tmp{i}.wav", via_temp_name(50 + i)) for i in range(3)]
    during += [
        Drop("drums/bad0.wav", raw(os.urandom(5000)), code="unsupported_format", reason="not a readable"),
        Drop("harmonic/bad1.flac", raw(b"not audio at all\n" * 50), code="unsupported_format"),
        Drop("drums/bad2.wav", raw(b""), code="unsupported_format"),
        Drop(
            "drums/sc_flac.wav",
            plain(60),
            (".reasam.toml", 'format = "flac"\nbit_depth = 16\nsample_rate = 16000\n'),
            check=check_flac,
        ),
        Drop("drums/sc_mp3.wav", plain(61), (".reasam.json", '{"format": "mp3"}'), check=check_mp3),
        Drop(
            "harmonic/sc_post.wav", plain(62), (".reasam.toml", "normalize_peak = -3.0\n"), check=check_post
        ),
        Drop("sc_span.wav", plain(63), (".reasam.toml", 'span = ["+0.2:0.6"]\n'), check=check_span),
        Drop(
            "drums/sc_prompt.wav",
            plain(64),
            (".reasam.json", '{"prompt": "harmonic", "region": "0.25:1.0"}'),
            check=check_prompt_and_region,
        ),
        Drop(
            "harmonic/sc_24.wav",
            plain(65),
            (".reasam.toml", "bit_depth = 24\nmono = true\n"),
            check=check_24_mono,
        ),
        Drop(
            "drums/sc_broken.wav",
            plain(66),
            (".reasam.toml", 'format = "flac\n'),
            code="bad_request",
            reason="sc_broken.wav.reasam.toml: not valid TOML",
        ),
        Drop(
            "drums/sc_unknown.wav",
            plain(67),
            (".reasam.toml", 'colour = "red"\n'),
            code="bad_request",
            reason="unknown option 'colour'",
        ),
        Drop(
            "a dog barking/dog.wav",
            plain(68),
            code="unsupported_prompt",
            reason="no available engine understands prompt 'a dog barking'",
        ),
        Drop("no_prompt.wav", plain(24), code="bad_request", reason="no prompt: drop it into inbox/"),
        Drop(
            "drums/sc_both.wav",
            plain(69),
            (".reasam.toml", 'format = "flac"\n'),
            extra_sidecars=[(".reasam.json", "{}")],
            code="bad_request",
            reason="keep one",
        ),
    ]
    after = [Drop(f"{prompt(i, 2)}/late{i}.wav", plain(70 + i)) for i in range(4)]
    drops = [*before, *during, *after]
    assert len(drops) == 50 and len(before) == 6 and len(after) == 4
    return drops


def test_fifty_drops_kill9_halfway_then_each_file_once(tmp_path: Path) -> None:
    root, staging = tmp_path / "W", tmp_path / "staging"
    inbox = root / "inbox"
    staging.mkdir()
    drops = fifty_drops(staging)
    users = {
        root / "outbox" / "pre" / "keep.txt": b"the user's own folder",
        root / "done" / "drums" / "pre.wav": b"the user's own file",
        root / "failed" / "drums" / "junk1.wav": b"the user's own junk",
    }
    for path, data in users.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    for drop in drops[:6]:
        drop.drop(inbox)

    def finished() -> int:
        taken = [p for p in (root / "done").rglob("*") if p.is_file()]
        taken += [p for p in (root / "failed").rglob("*") if p.is_file()]
        audio = [p for p in taken if not p.name.endswith((".error.txt", ".reasam.toml", ".reasam.json"))]
        return len(audio) - 2  # the user's own two

    d = watch_daemon(tmp_path / "d", root, settle=SETTLE).start()
    failures: list[BaseException] = []

    def drop_all() -> None:
        try:
            for drop in drops[6:46]:
                drop.drop(inbox)
        except BaseException as exc:
            failures.append(exc)

    dropper = threading.Thread(target=drop_all)
    dropper.start()
    try:
        wait_for(lambda: finished() >= 15, timeout=120)
        d.kill9()
        assert finished() < 46  # half-way: files were still waiting or in progress
    finally:
        dropper.join(120)
    assert failures == []
    for drop in drops[46:]:  # dropped while the daemon is down
        drop.drop(inbox)
    d.start()
    wait_for(lambda: files_below(inbox) == [], timeout=240, step=0.2)
    status = watch_status(d)
    assert d.stop() == 0

    good = [drop for drop in drops if drop.code is None]
    bad = [drop for drop in drops if drop.code is not None]
    assert (len(good), len(bad)) == (41, 9)
    assert status == {"folder": str(root), "waiting": 0, "in_progress": 0, "done": 41, "failed": 9}
    # Every good file has exactly one result; no bad file has one.
    results = manifests(root / "outbox")
    for drop in good:
        (job_dir,) = results.pop(str(inbox / drop.rel))
        manifest = json.loads((job_dir / "manifest.json").read_text())
        stems = sorted(Path(s["path"]).name for s in manifest["stems"])
        assert files_below(job_dir) == sorted([*stems, "manifest.json", "status.json"])
        assert json.loads((job_dir / "status.json").read_text())["state"] == "done"
        if drop.check is not None:
            drop.check(manifest)
        # The original, unchanged, in done/ (its sidecar beside it).
        final = root / "done" / (drop.final or drop.rel)
        assert digest(final) == drop.written, drop.rel
        if drop.sidecar:
            assert Path(str(final) + drop.sidecar[0]).read_text() == drop.sidecar[1]
    assert results == {}
    # Outbox names: the stem, then -2: two dup.wav, and pre.wav beside the user's own pre/.
    assert {"dup", "dup-2", "pre-2"} <= {p.name for p in (root / "outbox").iterdir()}
    # Every bad one in failed/ with its code and reason, and no job folder left for it.
    for drop in bad:
        final = root / "failed" / (drop.final or drop.rel)
        assert digest(final) == drop.written, drop.rel
        error = Path(str(final) + ".error.txt").read_text()
        assert error.startswith(f"{drop.code}: ") and drop.reason in error and error.count("\n") == 1, error
        for suffix, text in [*([drop.sidecar] if drop.sidecar else []), *drop.extra_sidecars]:
            assert Path(str(final) + suffix).read_text() == text
    without_result = [p.name for p in (root / "outbox").iterdir() if not (p / "manifest.json").exists()]
    assert without_result == ["pre"]
    # Nothing overwritten: the user's own files are as they were.
    for path, data in users.items():
        assert path.read_bytes() == data
    # Nothing else anywhere: done/ and failed/ hold exactly the files accounted for above.
    expected = {f"done/{d.final or d.rel}" for d in good} | {f"failed/{d.final or d.rel}" for d in bad}
    expected |= {f"failed/{d.final or d.rel}.error.txt" for d in bad}
    for drop in drops:
        for suffix, _ in [*([drop.sidecar] if drop.sidecar else []), *drop.extra_sidecars]:
            expected.add(f"{'failed' if drop.code else 'done'}/{drop.final or drop.rel}{suffix}")
    expected |= {"done/drums/pre.wav", "failed/drums/junk1.wav"}
    actual = {f"done/{p}" for p in files_below(root / "done")} | {
        f"failed/{p}" for p in files_below(root / "failed")
    }
    assert actual == expected
    assert "Traceback" not in d.log.read_text()


@pytest.mark.parametrize("point", FAILPOINTS)
def test_kill_at_each_crash_point_then_restart_finishes_once(tmp_path: Path, point: str) -> None:
    """The daemon dies (SIGKILL) at one point of a file's way; the next start finishes it."""
    root = tmp_path / "W"
    inbox = root / "inbox"
    good = Drop("drums/song.wav", plain(7), (".reasam.toml", 'format = "flac"\n'))
    corrupt = Drop("drums/junk.wav", raw(os.urandom(4000)), code="unsupported_format")
    env = {"REASAM_WATCH_FAILPOINT": point}
    d = watch_daemon(tmp_path / "d", root, "--watch-max-queued", "1", env=env).start()
    good.drop(inbox)
    corrupt.drop(inbox)
    assert d.proc is not None
    d.proc.wait(120)  # the failpoint killed it
    assert d.proc.returncode == -signal.SIGKILL
    assert f"failpoint {point}: killing the daemon" in d.log.read_text()
    d.env = {}
    d.start()
    wait_for(lambda: files_below(inbox) == [], timeout=120, step=0.1)
    status = watch_status(d)
    assert d.stop() == 0
    assert (status["done"], status["failed"], status["in_progress"]) == (1, 1, 0)
    results = manifests(root / "outbox")
    assert list(results) == [str(inbox / good.rel)] and len(results[str(inbox / good.rel)]) == 1
    assert [p.name for p in (root / "outbox").iterdir()] == ["song"]
    assert files_below(root / "done") == ["drums/song.wav", "drums/song.wav.reasam.toml"]
    assert digest(root / "done" / good.rel) == good.written
    assert files_below(root / "failed") == ["drums/junk.wav", "drums/junk.wav.error.txt"]
    assert digest(root / "failed" / corrupt.rel) == corrupt.written
    assert (root / "failed/drums/junk.wav.error.txt").read_text().startswith("unsupported_format: ")


def test_osc_request_runs_before_a_full_watch_queue(tmp_path: Path) -> None:
    """With the watch folder's jobs queued to its limit, an OSC request is next in line."""
    root = tmp_path / "W"
    d = watch_daemon(tmp_path / "d", root, "--watch-max-queued", "4", "--cache-mb", "0").start()
    (root / "inbox" / "drums").mkdir(parents=True)
    for i in range(10):
        write_noise(root / "inbox" / "drums" / f"long{i}.wav", 8.0, rate=44100, seed=100 + i)
    wait_for(lambda: watch_status(d)["in_progress"] == 4, timeout=60, step=0.1)
    short = write_noise(tmp_path / "short.wav", 0.5, seed=99)
    with d.client() as client:
        overview = client.status()
        assert overview["queued"] >= 2  # watch jobs waiting for the worker
        done_before = watch_status(d)["done"]
        client.send("/reasam/separate", *separate_args("osc-first", short, token=d.token))
        replies = collect(client, final_for("osc-first"), timeout=60)
        done_after = watch_status(d)["done"]
        # A watch job's id is its outbox name: cancelling one sends its file to failed/.
        victim = client.status()["queue"][-1]
        client.send("/reasam/cancel", victim, *client.auth())
        collect(client, final_for(victim), timeout=60)
    accepted = [x for a, x in replies if a == "/reasam/accepted"]
    # Ahead of it: the running watch job (none, if it came between two), none of the queued ones.
    assert accepted in ([["osc-first", 1]], [["osc-first", 0]])
    assert replies[-1][0] == "/reasam/done"
    # First in, first out would have run the 3+ queued watch jobs first.
    assert done_after - done_before <= 2
    # A plain stop (SIGTERM) with files waiting and jobs queued; the next start goes on.
    assert d.stop() == 0
    d.start()
    wait_for(lambda: files_below(root / "inbox") == [], timeout=180, step=0.2)
    assert d.stop() == 0
    results = manifests(root / "outbox")
    assert len(results) == 9 and all(len(dirs) == 1 for dirs in results.values())
    assert not (root / "outbox" / victim).exists() and len(files_below(root / "done")) == 9
    assert files_below(root / "failed") == [f"drums/{victim}.wav", f"drums/{victim}.wav.error.txt"]
    assert (root / "failed" / "drums" / f"{victim}.wav.error.txt").read_text().startswith("cancelled: ")


def test_reasam_watch_command_and_a_file_written_over_time(tmp_path: Path) -> None:
    """`reasam watch DIR DIR2` runs the daemon in the foreground with both folders; a file kept
    open and written in bursts is never taken before it is closed, however long it pauses."""
    root, other = tmp_path / "W", tmp_path / "W2"
    d = Daemon(
        tmp_path / "d", "--watch-settle", "0.2", "--engine", "dsp", command=("watch", str(root), str(other))
    ).start()
    write_noise(other / "inbox" / "song.wav", 1.0, seed=6)  # no prompt: failed/, with the reason
    data = write_noise(tmp_path / "song.wav", 1.0, seed=5).read_bytes()
    target = root / "inbox" / "drums" / "song.wav"
    target.parent.mkdir(parents=True)
    with open(target, "wb") as fh:
        for i in range(0, len(data), len(data) // 3 + 1):
            fh.write(data[i : i + len(data) // 3 + 1])
            fh.flush()
            time.sleep(1.0)  # five settle times with the file open: still not taken
            assert target.exists() and watch_status(d)["in_progress"] == 0
    wait_for(lambda: (root / "done" / "drums" / "song.wav").exists(), timeout=60)
    assert digest(root / "done" / "drums" / "song.wav") == hashlib.sha256(data).hexdigest()
    assert (root / "outbox" / "song" / "manifest.json").exists()
    # Moved back in from done/: the same bytes, new work; nothing of the first run is touched.
    os.rename(root / "done" / "drums" / "song.wav", target)
    wait_for(lambda: watch_status(d)["done"] == 2, timeout=60)
    assert (root / "outbox" / "song-2" / "manifest.json").exists()
    assert files_below(root / "done") == ["drums/song.wav"] and files_below(root / "inbox") == []
    wait_for(lambda: watch_status(d, 1)["failed"] == 1, timeout=60)
    assert watch_status(d, 1)["folder"] == str(other)
    assert files_below(other) == ["failed/song.wav", "failed/song.wav.error.txt"]
    assert d.stop() == 0


# ---------------------------------------------------------------------------------------------
# Settings and sidecars (in process)


def test_watch_settings_from_file_environment_and_flags(tmp_path: Path) -> None:
    file = tmp_path / "c.toml"
    file.write_text('port = 1\n[watch]\nfolders = ["/srv/a", "/srv/b"]\nsettle = 0.5\nmax_queued = 3\n')
    settings = config.load({}, env={}, config_file=file)
    assert settings.watch == (Path("/srv/a"), Path("/srv/b"))
    assert (settings.watch_settle, settings.watch_max_queued) == (0.5, 3)
    env = {"REASAM_WATCH": os.pathsep.join(["/srv/c", "/srv/d"])}
    assert config.load({}, env=env, config_file=file).watch == (Path("/srv/c"), Path("/srv/d"))
    flagged = config.load({"watch": [Path("/srv/e")]}, env=env, config_file=file)
    assert flagged.watch == (Path("/srv/e"),)
    file.write_text('[watch]\nfolder = "/srv/a"\n')
    with pytest.raises(ReasamError, match=r"unknown key\(s\) folder in \[watch\]"):
        config.load({}, env={}, config_file=file)
    file.write_text("[watch]\nsettle = -1\n")
    with pytest.raises(ReasamError, match="between 0 and 3600"):
        config.load({}, env={}, config_file=file)


def test_sidecar_reading_and_outbox_names(tmp_path: Path) -> None:
    ok = tmp_path / "a.wav.reasam.toml"
    ok.write_text('prompt = "drums"\nspan = ["+1:2", "-3:4"]\nbit_depth = 24\n')
    assert read_sidecar(ok) == {"prompt": "drums", "span": ["+1:2", "-3:4"], "bit_depth": 24}
    for text, reason in (
        ("[table]\nx = 1\n", "table must be text, a number or true/false"),
        ('prompt = ["a", "b"]\n', "prompt must be text"),
        ("prompt = \n", "not valid TOML"),
    ):
        ok.write_text(text)
        with pytest.raises(ReasamError, match=reason):
            read_sidecar(ok)
    js = tmp_path / "a.wav.reasam.json"
    js.write_text("[1, 2]")
    with pytest.raises(ReasamError, match="expected a table of options"):
        read_sidecar(js)
    assert outbox_name("Chanson d'été (mix 2)") == "Chanson-d-ete-mix-2"
    assert outbox_name("...") == "file" and len(outbox_name("x" * 300)) == 56


def test_watch_folders_that_cannot_work_are_refused(tmp_path: Path) -> None:
    """Nested folders (a file would belong to two) and a folder that cannot hold the layout
    stop the daemon at start with one line, before any job is taken."""
    base = config.Settings(state_dir=tmp_path / "state")
    nested = replace(base, watch=(tmp_path / "a", tmp_path / "a" / "b"))
    with pytest.raises(ReasamError, match=r"watch folder .*/a/b is inside watch folder .*/a$"):
        attach(nested, manager=None)  # type: ignore[arg-type]
    (tmp_path / "file").write_text("")
    with pytest.raises(ReasamError, match=r"watch folder .*/file: cannot create inbox/ \(Not a directory\)"):
        attach(replace(base, watch=(tmp_path / "file",)), manager=None)  # type: ignore[arg-type]
    assert attach(base, manager=None) is None  # type: ignore[arg-type]


def test_settler_takes_a_file_only_after_it_stayed_unchanged(tmp_path: Path) -> None:
    """The settle rule on real files with a clock the test moves: any change of size or mtime
    restarts the wait; a file open for writing is never due; a removed file is forgotten."""
    now = [0.0]
    settler = Settler(2.0, clock=lambda: now[0])
    path = tmp_path / "a.wav"
    path.write_bytes(b"x" * 100)
    settler.touch(path)
    assert settler.due() == []  # first look: its size and mtime are noted
    now[0] = 1.9
    assert settler.due() == []
    with open(path, "ab") as fh:  # a second piece arrives (and the file is open for writing)
        fh.write(b"y" * 100)
        fh.flush()
        now[0] = 3.0
        assert settler.due() == []  # changed: the wait starts again
        now[0] = 10.0
        assert settler.due() == []  # quiet for long, but still open for writing
    now[0] = 12.1
    assert settler.due() == [path] and not settler.pending(path)
    settler.created(path)  # known only from its creation: due once shown closed, as it is here
    assert settler.due() == []
    now[0] = 14.2
    assert settler.due() == [path]
    settler.touch(path)
    path.unlink()
    assert settler.due() == [] and not settler.pending(path)


def _entry_in(root: Path, book: FileBook, rel: str, sidecars: list[str]) -> Entry:
    """A journaled entry for `inbox/<rel>` (written as the watch service takes a file)."""
    path = root / "inbox" / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"RIFF not really audio")
    for suffix in sidecars:
        Path(str(path) + suffix).write_text('prompt = "drums"\n')
    entry = Entry(root.name, rel, identity(os.stat(path)), sidecars=sidecars)
    book.insert(entry)
    return entry


def test_a_sidecar_linked_before_a_kill_leaves_the_inbox_at_the_restart(tmp_path: Path) -> None:
    """Killed between a sidecar's link to done/ and its unlink from the inbox (the file itself
    already moved): finishing the entry again removes the inbox name instead of leaving the
    sidecar there for ever (nothing else takes a sidecar away)."""
    root = tmp_path / "W"
    book = FileBook(tmp_path / "journal.sqlite3")
    mover = Mover(root, book)
    entry = _entry_in(root, book, "drums/song.wav", [".reasam.toml"])
    mover.decide(entry, "done", None, "")
    inbox, done = root / "inbox" / "drums", root / "done" / "drums"
    done.mkdir(parents=True)
    os.link(inbox / "song.wav", done / "song.wav")  # the file moved: linked, then unlinked
    os.unlink(inbox / "song.wav")
    os.link(inbox / "song.wav.reasam.toml", done / "song.wav.reasam.toml")  # killed here
    mover.finish(entry)
    assert files_below(root / "inbox") == []
    assert files_below(done) == ["song.wav", "song.wav.reasam.toml"]
    assert entry.state == "finished" and entry.moved
    book.close()


def test_a_failed_file_whose_reason_cannot_be_written_stays_in_the_inbox_with_it_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The `.error.txt` cannot be written (here its temporary's name is too long for the file
    system; a full or read-only disk does the same): the file is not moved to failed/ without
    its reason, but left in the inbox, with the reason in the log and the journal."""
    root = tmp_path / "W"
    book = FileBook(tmp_path / "journal.sqlite3")
    mover = Mover(root, book)
    name = "x" * 236 + ".wav"  # fits; name.error.txt fits; its temporary's name does not
    entry = _entry_in(root, book, name, [])
    mover.decide(entry, "failed", "unsupported_format", "not audio")
    with caplog.at_level("ERROR", logger="reasam.watch"):
        mover.finish(entry)
    assert files_below(root / "inbox") == [name]
    assert files_below(root / "failed") == []
    assert entry.state == "finished" and not entry.moved
    assert "could not be moved" in entry.message and "not audio" in entry.message
    assert any("cannot move it" in r.getMessage() for r in caplog.records), caplog.text
    book.close()
