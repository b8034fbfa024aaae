"""The REAPER side: busted specs (Lua 5.4, a model of the REAPER API, a real daemon on loopback),
luacheck, the ReaPack index and `reasam install-reaper`, all from the one pytest command.

The Lua specs start their own `reasam serve` processes on free loopback ports with their own
token, state and output folders (tests/lua/daemon_fixture.lua), using this interpreter's
`reasam` (passed as REASAM_BIN).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SPECS = sorted((ROOT / "tests" / "lua").glob("*_spec.lua"))
# Specs that start daemons and separate audio; the rest are unit specs that take milliseconds.
INTEGRATION = {"actions_udp_spec.lua", "actions_cli_spec.lua", "daemon_start_spec.lua"}


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(
            f"{tool} is not installed (install/test.sh installs lua5.4, lua-socket, busted, luacheck)"
        )
    return path


def _reasam_bin() -> str:
    exe = Path(sys.executable).with_name("reasam.exe" if sys.platform == "win32" else "reasam")
    if exe.is_file():
        return str(exe)
    found = shutil.which("reasam")
    if found is None:
        pytest.skip("the reasam command is not installed in this environment")
    return found


def _run(cmd: list[str], timeout: float, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )


def test_luacheck_is_clean() -> None:
    luacheck = _need("luacheck")
    proc = _run([luacheck, "--no-color", "--codes", "reaper_scripts", "tests/lua"], timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 warnings / 0 errors" in proc.stdout


@pytest.mark.parametrize(
    "spec",
    [pytest.param(s, marks=pytest.mark.slow) if s.name in INTEGRATION else s for s in SPECS],
    ids=[s.stem for s in SPECS],
)
def test_busted_spec(spec: Path) -> None:
    busted = _need("busted")
    _need("lua5.4")
    env = {"REASAM_BIN": _reasam_bin()}
    proc = _run([busted, "--lua=lua5.4", str(spec.relative_to(ROOT))], timeout=900, env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-12000:]
    assert " 0 failures / 0 errors" in out, out[-12000:]


def test_every_spec_is_collected() -> None:
    names = {s.name for s in SPECS}
    assert names >= INTEGRATION
    assert {"osc_spec.lua", "json_spec.lua", "selection_spec.lua", "settings_spec.lua"} <= names


# --- packaging -----------------------------------------------------------------------------


def _sources(index: Path) -> tuple[str, list[tuple[str, str | None]]]:
    root = ET.parse(index).getroot()
    version = root.find("./category/reapack/version")
    assert version is not None
    return version.get("name", ""), sorted((s.get("file", ""), s.get("main")) for s in version.iter("source"))


def test_reapack_index_is_up_to_date(tmp_path: Path) -> None:
    """reaper_scripts/index.xml lists what the headers provide (regenerate: python tools/reapack_index.py)."""
    out = tmp_path / "index.xml"
    proc = _run(
        [
            sys.executable,
            "tools/reapack_index.py",
            "-o",
            str(out),
            "--commit",
            "main",
            "--url-template",
            "https://example.invalid/$commit/$path",
        ],
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    committed = ROOT / "reaper_scripts" / "index.xml"
    assert _sources(out) == _sources(committed), "run: python tools/reapack_index.py"
    _version, files = _sources(out)
    mains = [f for f, main in files if main == "main"]
    assert len(mains) == 8
    assert "Separate selection - vocals.lua" in mains
    assert all(f.startswith("lib/") for f, main in files if main is None)
    root = ET.parse(committed).getroot()
    assert root.get("version") == "1" and root.get("name") == "ReaSAM"
    assert root.find("./category").get("name") == "ReaSAM"
    for source in root.iter("source"):
        assert source.text and source.text.startswith("https://")
        assert " " not in source.text


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
    assert len(actions) == 8 and "Separate selection - vocals.lua" in actions
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
    assert "no REAPER resource folder" in capsys.readouterr().err


def test_install_reaper_command_only(tmp_path: Path) -> None:
    from reasam.cli import main

    assert main(["install-reaper", "--resource-path", str(tmp_path), "--command-only"]) == 0
    assert (tmp_path / "ReaSAM" / "reasam-command.txt").is_file()
    assert not (tmp_path / "Scripts").exists()
