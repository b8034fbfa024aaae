"""The REAPER side: busted specs (Lua 5.4, a model of the REAPER API, a real daemon on loopback),
luacheck, the ReaPack index and `reasam install-reaper`, all from the one pytest command.

The Lua specs start their own `reasam serve` processes on free loopback ports with their own
token, state and output folders (tests/lua/daemon_fixture.lua), using this interpreter's
`reasam` (passed as REASAM_BIN). Each spec file runs with a temporary folder of its own, an empty
config file instead of the developer's, and a marker in its environment by which every process it
started (daemons included) is found and ended afterwards, even when busted had to be killed.
A missing tool (busted, luacheck, lua5.4, reasam) fails the tests: run bash install/test.sh.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

ROOT = Path(__file__).resolve().parent.parent
SPECS = sorted((ROOT / "tests" / "lua").glob("*_spec.lua"))
# Every action file (ReaSAM.lua carries the ReaPack package metadata only).
ACTIONS = sorted(p.name for p in (ROOT / "reaper_scripts" / "ReaSAM").glob("*.lua") if p.name != "ReaSAM.lua")
# Specs that start daemons and separate audio; the rest are unit specs that take milliseconds.
INTEGRATION = {"actions_spec.lua", "daemon_start_spec.lua", "transport_edges_spec.lua", "takes_spec.lua"}
HINT = "run bash install/test.sh (it installs lua5.4, lua-socket, busted, luacheck and reasam)"


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} is not installed: {HINT}")
    return path


def _reasam_bin() -> str:
    exe = Path(sys.executable).with_name("reasam.exe" if sys.platform == "win32" else "reasam")
    if exe.is_file():
        return str(exe)
    found = shutil.which("reasam")
    if found is None:
        pytest.fail(f"the reasam command is not installed in this environment: {HINT}")
    return found


def _run(cmd: list[str], timeout: float, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )


def _spec_env(tmp: Path, marker: str) -> dict[str, str]:
    """The environment of a busted run: none of the developer's REASAM_* settings or config
    (an empty config file, a config folder of its own), a temporary folder of its own, and a
    marker every process it starts inherits (see _end_processes)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REASAM_")}
    if "REASAM_KEEP_TMP" in os.environ:
        env["REASAM_KEEP_TMP"] = os.environ["REASAM_KEEP_TMP"]
    config = tmp / "empty-config.toml"
    config.touch()
    (tmp / "xdg").mkdir(exist_ok=True)
    env.update(
        REASAM_BIN=_reasam_bin(),
        REASAM_CONFIG=str(config),
        XDG_CONFIG_HOME=str(tmp / "xdg"),
        REASAM_TEST_TMP=str(tmp),
        REASAM_TEST_RUN=marker,
    )
    return env


def _processes_with(marker: str) -> list[int]:
    """Processes whose environment holds REASAM_TEST_RUN=marker (Linux /proc; elsewhere none)."""
    entry = f"REASAM_TEST_RUN={marker}".encode()
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if entry in (proc / "environ").read_bytes().split(b"\0"):
                found.append(int(proc.name))
        except (OSError, ValueError):
            continue
    return [pid for pid in found if pid != os.getpid()]


def _end_processes(marker: str) -> list[int]:
    """Ends what a spec left running (daemons it or the scripts started), even when busted was
    killed for taking too long: SIGTERM, then SIGKILL after 5 s."""
    pids = _processes_with(marker)
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 2.0)):
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while pids and time.monotonic() < deadline:
            time.sleep(0.05)
            pids = [p for p in pids if p in _processes_with(marker)]
        if not pids:
            break
    return pids


def test_luacheck_is_clean() -> None:
    luacheck = _need("luacheck")
    proc = _run([luacheck, "--no-color", "--codes", "reaper_scripts", "tests/lua"], timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 warnings / 0 errors" in proc.stdout


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A temporary folder with a short path, as a user's would be: the specs' file names show up
    in message boxes and panel rows, and pytest-xdist's tmp_path (…/popen-gw0/test_busted_…) is
    long enough to push them out of a gfx row."""
    folder = Path(tempfile.mkdtemp(prefix="reasam-lua-"))
    yield folder
    if "REASAM_KEEP_TMP" not in os.environ:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize(
    "spec",
    [pytest.param(s, marks=pytest.mark.slow) if s.name in INTEGRATION else s for s in SPECS],
    ids=[s.stem for s in SPECS],
)
def test_busted_spec(spec: Path, short_tmp: Path) -> None:
    busted = _need("busted")
    _need("lua5.4")
    marker = uuid.uuid4().hex
    env = _spec_env(short_tmp, marker)
    try:
        proc = subprocess.run(
            [busted, "--lua=lua5.4", str(spec.relative_to(ROOT))],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=900,
            env=env,
        )
    finally:
        left = _end_processes(marker)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-12000:]
    assert " 0 failures / 0 errors" in out, out[-12000:]
    assert " 0 pending" in out, out[-12000:]
    assert not left, f"processes the spec started would not end: {left}"


def test_spec_processes_are_ended(tmp_path: Path) -> None:
    """What a spec leaves running (here a detached sleep, like a daemon) is ended at teardown."""
    if not Path("/proc/self/environ").exists():
        pytest.skip("needs /proc (Linux)")
    marker = uuid.uuid4().hex
    env = _spec_env(tmp_path, marker)
    subprocess.run(
        ["sh", "-c", "setsid sleep 300 >/dev/null 2>&1 < /dev/null &"], env=env, check=True, timeout=10
    )
    deadline = time.monotonic() + 5
    while not _processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(_processes_with(marker)) == 1
    assert _end_processes(marker) == []
    assert _processes_with(marker) == []


def test_every_spec_is_collected() -> None:
    names = {s.name for s in SPECS}
    assert names >= INTEGRATION
    assert {
        "osc_spec.lua",
        "json_spec.lua",
        "selection_spec.lua",
        "settings_spec.lua",
        "importer_spec.lua",
        "spawn_spec.lua",
    } <= names


# --- packaging -----------------------------------------------------------------------------


REPO_URL = "https://github.com/someone/reasam"  # any repository URL: the tests check the form
RAW = "https://raw.githubusercontent.com/someone/reasam/main/reaper_scripts/ReaSAM/"
COMMITTED_INDEX = ROOT / "reaper_scripts" / "index.xml"


def _sources(index: Path) -> tuple[str, list[tuple[str, str | None, str]]]:
    root = ET.parse(index).getroot()
    version = root.find("./category/reapack/version")
    assert version is not None
    sources = sorted((s.get("file", ""), s.get("main"), s.text or "") for s in version.iter("source"))
    return version.get("name", ""), sources


def _index(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    # No git repository (so no `origin` remote to fall back on) unless a test gives one.
    base = {"GIT_DIR": str(tmp_path / "no-git"), "REASAM_REPO_URL": ""}
    out = str(tmp_path / "index.xml")
    return _run(
        [sys.executable, "tools/reapack_index.py", "-o", out, "--commit", "main", *args],
        timeout=60,
        env={**base, **(env or {})},
    )


def test_reapack_index_from_the_repository_url(tmp_path: Path) -> None:
    """python tools/reapack_index.py --repo-url URL writes what the headers provide, with URLs."""
    proc = _index(tmp_path, "--repo-url", REPO_URL)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "index.xml"
    _version, files = _sources(out)
    mains = [f for f, main, _url in files if main == "main"]
    assert sorted(mains) == ACTIONS
    assert "Separate selection - vocals.lua" in mains
    assert all(f.startswith("lib/") for f, main, _url in files if main is None)
    for f, _main, url in files:
        assert url == RAW + quote(f)  # "vocals, drums, bass, rest": the comma is %2C
    root = ET.parse(out).getroot()
    assert root.get("version") == "1" and root.get("name") == "ReaSAM"
    assert root.find("./category").get("name") == "ReaSAM"
    # the same from the environment, and from a GitLab repository
    assert _index(tmp_path, env={"REASAM_REPO_URL": REPO_URL + ".git"}).returncode == 0
    assert _sources(out) == (_version, files)
    assert _index(tmp_path, "--repo-url", "https://gitlab.com/group/sub/reasam").returncode == 0
    assert all(
        url.startswith("https://gitlab.com/group/sub/reasam/-/raw/main/reaper_scripts/ReaSAM/")
        for _f, _m, url in _sources(out)[1]
    )


def test_reapack_index_is_not_written_without_a_url(tmp_path: Path) -> None:
    proc = _index(tmp_path)
    assert proc.returncode == 2
    assert "no repository URL" in proc.stderr and "--repo-url" in proc.stderr
    assert not (tmp_path / "index.xml").exists()
    for template in (
        "https://raw.githubusercontent.com/OWNER/REPO/$commit/$path",
        "https://example.invalid/$commit/$path",
        "http://host/$path",
        "https://host/no-path-here",
    ):
        proc = _index(tmp_path, "--url-template", template)
        assert proc.returncode == 2, template
        assert not (tmp_path / "index.xml").exists()
    proc = _index(tmp_path, "--repo-url", "https://example.org/me/reasam")
    assert proc.returncode == 2 and "--url-template" in proc.stderr


def test_committed_reapack_index_is_real_and_up_to_date(tmp_path: Path) -> None:
    """An index.xml is committed only with the published repository's URLs (README, "In REAPER"):
    never placeholders, and it lists what the headers provide (regenerate with the same URL)."""
    if not COMMITTED_INDEX.exists():
        return  # not published yet: nothing to check
    text = COMMITTED_INDEX.read_text(encoding="utf-8")
    assert "/OWNER/REPO/" not in text and "example.invalid" not in text, "placeholder URLs in index.xml"
    _version, committed = _sources(COMMITTED_INDEX)
    first = committed[0][2]
    suffix = "/reaper_scripts/ReaSAM/" + committed[0][0].replace(" ", "%20")
    assert first.startswith("https://") and first.endswith(suffix), first
    base, commit = first[: -len(suffix)].rsplit("/", 1)
    proc = _index(tmp_path, "--url-template", base + "/$commit/$path", "--commit", commit)
    assert proc.returncode == 0, proc.stderr
    assert _sources(tmp_path / "index.xml") == (_version, committed), "run: python tools/reapack_index.py"


def test_reapack_headers_check() -> None:
    proc = _run([sys.executable, "tools/reapack_index.py", "--check"], timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "1 package(s)" in proc.stdout


def test_install_reaper_copies_the_scripts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from reasam.cli import main

    res = tmp_path / "REAPER"
    res.mkdir()
    assert main(["install-reaper", "--resource-path", str(res)]) == 0
    out = capsys.readouterr().out
    dest = res / "Scripts" / "ReaSAM"
    actions = sorted(p.name for p in dest.glob("*.lua"))
    assert actions == ACTIONS and "Separate selection - vocals.lua" in actions
    assert "ReaSAM.lua" not in actions  # the ReaPack metapackage is not an action
    src_lib = sorted(p.name for p in (ROOT / "reaper_scripts" / "ReaSAM" / "lib").glob("*.lua"))
    assert sorted(p.name for p in (dest / "lib").glob("*.lua")) == src_lib
    recorded = (res / "ReaSAM" / "reasam-command.txt").read_text().strip()
    assert Path(recorded).name.startswith("reasam")
    assert "Load ReaScript" in out and "Separate selection - vocals.lua" in out
    # running it again updates in place
    assert main(["install-reaper", "--resource-path", str(res)]) == 0


def test_install_reaper_without_reaper(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from reasam.cli import main

    assert main(["install-reaper", "--resource-path", str(tmp_path / "missing")]) == 1
    assert f"{tmp_path / 'missing'} does not exist" in capsys.readouterr().err


def test_install_reaper_command_only(tmp_path: Path) -> None:
    from reasam.cli import main

    assert main(["install-reaper", "--resource-path", str(tmp_path), "--command-only"]) == 0
    assert (tmp_path / "ReaSAM" / "reasam-command.txt").is_file()
    assert not (tmp_path / "Scripts").exists()
