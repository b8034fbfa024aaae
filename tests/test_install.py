"""Installing ReaSAM: the set-up script's choices, `reasam install-reaper` all or nothing, and the
wheel on its own (built here, installed into a fresh venv, used with no checkout in reach)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.conftest import on_small_filesystem

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "reaper_scripts" / "ReaSAM"
SERVICE_TEMPLATES = ("reasam.service", "com.reasam.daemon.plist", "reasam-startup.cmd")


# ---------------------------------------------------------------------------------------------
# install/setup.sh: which Python and which torch build (--print-plan: nothing is installed)


def _fake_tool(folder: Path, name: str, script: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(0o755)


def _plan(tmp_path: Path, *args: str, gpu: bool, **env: str) -> subprocess.CompletedProcess:
    """setup.sh --print-plan with an nvidia-smi first on PATH that lists a GPU or fails as it
    does without a driver (so the machine's own GPU, or lack of one, does not matter)."""
    bin_dir = tmp_path / "bin"
    if gpu:
        _fake_tool(bin_dir, "nvidia-smi", 'echo "GPU 0: NVIDIA H200 (UUID: GPU-1234)"\n')
    else:
        _fake_tool(
            bin_dir,
            "nvidia-smi",
            'echo "NVIDIA-SMI has failed because it could not communicate '
            'with the NVIDIA driver." >&2\nexit 9\n',
        )
    full_env = {k: v for k, v in os.environ.items() if k not in ("REASAM_TORCH", "PYTHON", "TORCH_PIP_ARGS")}
    full_env.update({"PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHON": sys.executable, **env})
    return subprocess.run(
        ["bash", str(ROOT / "install" / "setup.sh"), "--print-plan", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=60,
    )


def _torch_requirement() -> str:
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return next(d for d in deps if d.startswith("torch>"))


@pytest.mark.skipif(sys.platform == "darwin", reason="macOS always takes PyPI's build (no CUDA there)")
def test_setup_takes_the_cpu_build_without_an_nvidia_gpu(tmp_path: Path) -> None:
    proc = _plan(tmp_path, gpu=False)
    assert proc.returncode == 0, proc.stderr
    assert "torch: cpu (no NVIDIA GPU found" in proc.stdout
    assert "--index-url https://download.pytorch.org/whl/cpu" in proc.stdout
    assert "about 200 MB" in proc.stdout
    # the constraints that keep CUDA builds out are shown, not just named by a file not yet written
    assert "holds: triton<0" in proc.stdout and "cuda-toolkit<0" in proc.stdout
    # the range pyproject declares, not a pin of the script's own
    assert f"'{_torch_requirement()}'" in proc.stdout and "==" not in proc.stdout


@pytest.mark.skipif(sys.platform == "darwin", reason="macOS always takes PyPI's build (no CUDA there)")
def test_setup_takes_the_cuda_build_where_nvidia_smi_lists_a_gpu(tmp_path: Path) -> None:
    proc = _plan(tmp_path, gpu=True)
    assert proc.returncode == 0, proc.stderr
    assert "torch: cuda (found GPU 0: NVIDIA H200)" in proc.stdout
    assert "--index-url" not in proc.stdout and "about 3 GB" in proc.stdout
    assert "reasam-cpu-only" not in proc.stdout


def test_setup_torch_choice_can_be_overridden(tmp_path: Path) -> None:
    by_flag = _plan(tmp_path, "--torch", "cpu", gpu=True)
    assert "torch: cpu (asked for)" in by_flag.stdout, by_flag.stderr
    by_env = _plan(tmp_path, gpu=True, REASAM_TORCH="skip")
    assert "torch: skip (asked for)" in by_env.stdout and "torch install" not in by_env.stdout
    wrong = _plan(tmp_path, "--torch=rocm", gpu=False)
    assert wrong.returncode == 2 and "must be cpu, cuda or skip, not 'rocm'" in wrong.stderr


def test_setup_tells_a_python_310_system_what_to_do(tmp_path: Path) -> None:
    # A python3.10 as Ubuntu 22.04 has it: too old for `import tomllib` and ReaSAM's 3.11 floor.
    _fake_tool(
        tmp_path / "old", "python3.10", 'case "$*" in *python_version*) echo 3.10.12 ;; *) exit 1 ;; esac\n'
    )
    proc = _plan(tmp_path, gpu=False, PYTHON=str(tmp_path / "old" / "python3.10"))
    assert proc.returncode == 1
    assert "needs Python 3.11 or newer" in proc.stderr and "is 3.10.12" in proc.stderr
    assert "PYTHON=python3.11 bash install/setup.sh" in proc.stderr and "deadsnakes" in proc.stderr


# ---------------------------------------------------------------------------------------------
# reasam install-reaper writes everything or nothing


def _tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_install_reaper_failing_late_leaves_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from reasam.cli import main

    res = tmp_path / "REAPER"
    (res / "Scripts" / "ReaSAM").mkdir(parents=True)
    # A file where lib/ must go: the ten actions are written before lib/ fails.
    (res / "Scripts" / "ReaSAM" / "lib").write_text("not a folder")
    before = _tree(res)
    assert main(["install-reaper", "--resource-path", str(res)]) == 1
    err = capsys.readouterr().err
    assert "nothing was installed" in err and "lib" in err
    assert _tree(res) == before  # no action, no temporary file, no ReaSAM/reasam-command.txt


def test_install_reaper_with_a_folder_in_the_way_leaves_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from reasam.cli import main

    res = tmp_path / "REAPER"
    # Every file is written under its temporary name before this one's folder is found.
    (res / "Scripts" / "ReaSAM" / "lib" / "util.lua").mkdir(parents=True)
    before = _tree(res)
    assert main(["install-reaper", "--resource-path", str(res)]) == 1
    assert "nothing was installed" in capsys.readouterr().err
    assert _tree(res) == before


def test_install_reaper_on_a_full_disk_leaves_nothing(tmp_path: Path) -> None:
    mount = tmp_path / "REAPER"
    reasam = shutil.which("reasam", path=str(Path(sys.executable).parent))
    assert reasam is not None
    # 64 KiB of tmpfs holds about half of the 130 KB of scripts: ENOSPC from the kernel midway.
    script = f'"{reasam}" install-reaper --resource-path "{mount}"; echo "rc=$?"; find "{mount}" -mindepth 1'
    proc = on_small_filesystem(mount, "64k", "sh", "-c", script)
    lines = proc.stdout.split()
    assert "rc=1" in lines, proc.stdout + proc.stderr
    assert "disk full" in proc.stderr and "nothing was installed" in proc.stderr
    assert lines == ["rc=1"]  # not one file or folder left on the full disk


def test_install_reaper_needs_the_resource_folder_to_exist(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from reasam.cli import main

    a_file = tmp_path / "reaper.ini"
    a_file.write_text("")
    assert main(["install-reaper", "--resource-path", str(a_file)]) == 1
    assert f"{a_file} is not a folder" in capsys.readouterr().err
    assert main(["install-reaper", "--resource-path", str(tmp_path), "--scripts", str(tmp_path)]) == 1
    assert "the ReaSAM scripts are not here" in capsys.readouterr().err
    assert _tree(tmp_path) == ["reaper.ini"]


# ---------------------------------------------------------------------------------------------
# The wheel, alone


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built offline from a copy of the sources (a build in the checkout would leave
    build/ there, whose stale files a later build would pack)."""
    src = tmp_path_factory.mktemp("src")
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in ("daemon", "reaper_scripts", "install"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, src / name)
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-w",
            str(out),
            str(src),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (whl,) = out.glob("reasam-*.whl")
    return whl


def test_wheel_holds_the_code_the_scripts_the_templates_and_the_licence(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {
        f"reasam/{p.relative_to(ROOT / 'daemon' / 'reasam').as_posix()}"
        for p in (ROOT / "daemon" / "reasam").rglob("*.py")
    }
    assert modules <= names, sorted(modules - names)
    scripts = {f"reasam/reaper_scripts/{p.relative_to(SCRIPTS).as_posix()}" for p in SCRIPTS.rglob("*.lua")}
    assert scripts <= names and len(scripts) > 20
    assert {f"reasam/service_templates/{t}" for t in SERVICE_TEMPLATES} <= names
    assert not any(n.endswith((".sh", ".pyc")) for n in names)  # setup.sh, test.sh stay out
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)


def test_wheel_in_a_fresh_venv_installs_reaper_scripts_the_service_and_separates(
    wheel: Path, tmp_path: Path
) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    python = venv / "bin" / "python"
    # The dependencies (torch, numpy, …) from this test venv, through a path line, without
    # downloading anything. A .pth line only appends a folder: the editable install's finder in
    # there is not run, so `reasam` can only come from the wheel.
    fresh_site = Path(
        subprocess.check_output(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True
        ).strip()
    )
    (fresh_site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "-q",
            "--no-deps",
            "--no-index",
            str(wheel),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REASAM_", "XDG_", "PYTHON"))}
    env.update(
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / ".config"),
        XDG_DATA_HOME=str(home / ".local"),
        XDG_CACHE_HOME=str(home / ".cache"),
        XDG_STATE_HOME=str(home / ".state"),
    )
    work = tmp_path / "elsewhere"  # not the checkout: nothing of it on sys.path
    work.mkdir()

    def reasam(*args: str) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [venv / "bin" / "reasam", *args], capture_output=True, text=True, env=env, cwd=work, timeout=120
        )
        assert proc.returncode == 0, proc.stderr
        return proc

    where = subprocess.check_output(
        [python, "-c", "import reasam; print(reasam.__file__)"], text=True, env=env, cwd=work
    ).strip()
    assert Path(where).is_relative_to(venv), where

    res = tmp_path / "REAPER"
    res.mkdir()
    reasam("install-reaper", "--resource-path", str(res))
    dest = res / "Scripts" / "ReaSAM"
    expected = sorted(p.relative_to(SCRIPTS) for p in SCRIPTS.rglob("*.lua") if p.name != "ReaSAM.lua")
    assert sorted(p.relative_to(dest) for p in dest.rglob("*.lua")) == expected
    for rel in expected:
        assert (dest / rel).read_bytes() == (SCRIPTS / rel).read_bytes(), rel
    assert (res / "ReaSAM" / "reasam-command.txt").read_text().strip() == str(venv / "bin" / "reasam")

    reasam("install-service", "--platform", "linux", "--no-enable")
    unit = (home / ".config" / "systemd" / "user" / "reasam.service").read_text()
    assert f'ExecStart="{python}" -m reasam.cli serve' in unit

    rate = 44100
    t = np.arange(rate * 2) / rate
    mix = np.stack([0.3 * np.sin(2 * np.pi * 220 * t), 0.2 * np.sin(2 * np.pi * 330 * t)], axis=1)
    mix += 0.05 * np.random.default_rng(3).standard_normal(mix.shape)
    sf.write(work / "song.wav", mix.astype(np.float32), rate, subtype="FLOAT")
    out = reasam(
        "separate", "song.wav", "--prompt", "vocals", "--engine", "spleeter", "--out", str(tmp_path / "out")
    )
    stems = [Path(line) for line in out.stdout.split("\n") if line.endswith(".wav")]
    assert len(stems) == 2 and all(p.is_file() for p in stems), out.stdout
    total = sum(sf.read(p, dtype="float64")[0] for p in stems)
    np.testing.assert_allclose(total, mix.astype(np.float32), atol=1e-4)
    assert not list(home.rglob("*.partial"))
