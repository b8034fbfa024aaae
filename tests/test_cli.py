"""`reasam` as a user runs it: a real process, exit codes, one-line errors, nothing left behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf
from reasam import audio


def reasam(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "reasam.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def _song(path: Path, seconds: float = 3.0, rate: int = 44100) -> Path:
    t = np.arange(int(seconds * rate)) / rate
    x = 0.2 * np.sin(2 * np.pi * 220 * t) + 0.0
    x[:: rate // 2] += 0.7
    audio.write_audio(path, np.stack([x, 0.8 * x]).astype(np.float32), rate)
    return path


def _one_line_error(proc: subprocess.CompletedProcess) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


def test_separate_writes_stems_and_prints_paths(tmp_path: Path) -> None:
    src = _song(tmp_path / "song.wav")
    proc = reasam(
        "separate", str(src), "--prompt", "drums", "--engine", "dsp", "--out", str(tmp_path / "out")
    )
    assert proc.returncode == 0, proc.stderr
    paths = [Path(p) for p in proc.stdout.split()]
    assert [p.name for p in paths] == ["drums.wav", "drums-residual.wav"]
    assert paths[0].parent == tmp_path / "out" / "song-drums"
    manifest = json.loads((paths[0].parent / "manifest.json").read_text())
    assert manifest["job_id"] == "song-drums"
    assert sf.info(str(paths[0])).frames == 3 * 44100


def test_second_run_gets_a_new_job_folder(tmp_path: Path) -> None:
    src = _song(tmp_path / "song.wav", 1.0)
    args = ("separate", str(src), "-p", "drums", "--engine", "dsp", "--out", str(tmp_path / "out"), "--json")
    first, second = reasam(*args), reasam(*args)
    assert first.returncode == second.returncode == 0
    ids = [json.loads(p.stdout)["job_id"] for p in (first, second)]
    assert ids == ["song-drums", "song-drums-2"]


def test_span_and_region_options(tmp_path: Path) -> None:
    src = _song(tmp_path / "song.wav", 4.0)
    proc = reasam(
        "separate",
        str(src),
        "--span",
        "+0.9:1.2",
        "--span=-2.1:2.4",
        "--region",
        "0.5:3.5",
        "--out",
        str(tmp_path / "out"),
        "--json",
        "--format",
        "flac",
        "--bit-depth",
        "16",
    )
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads(proc.stdout)
    assert manifest["request"]["spans"] == ["+0.9:1.2", "-2.1:2.4"]
    assert manifest["engine"] == "dsp"
    assert [Path(s["path"]).name for s in manifest["stems"]] == ["span.flac", "span-residual.flac"]
    assert all(s["frames"] == 3 * 44100 for s in manifest["stems"])


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    src = _song(tmp_path / "song.wav", 1.0)
    out = str(tmp_path / "out")
    for args in (
        ("separate", str(src), "--out", out),  # no prompt, no span
        ("separate", str(src), "--span", "+3:1", "--out", out),
        ("separate", str(src), "-p", "drums", "--region", "abc", "--out", out),
        ("separate", str(src), "-p", "a dog barking", "--out", out),
        ("separate", str(src), "-p", "drums", "--format", "mp3", "--bit-depth", "24", "--out", out),
        ("separate", str(src), "-p", "drums", "--quality", "ultra"),
        ("separate", str(src), "-p", "drums", "--region", "0:0.00001", "--out", out),  # < 1 sample
        ("frobnicate",),
    ):
        proc = reasam(*args)
        assert proc.returncode == 2, (args, proc.stderr)
        _one_line_error(proc)
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_unknown_prompt_message_helps(tmp_path: Path) -> None:
    src = _song(tmp_path / "song.wav", 1.0)
    line = _one_line_error(reasam("separate", str(src), "-p", "a dog barking", "--out", str(tmp_path / "o")))
    assert "unsupported_prompt" in line and "vocals" in line and "SAM-Audio" in line


def test_runtime_errors_exit_1_and_leave_nothing(tmp_path: Path, unwritable_dir: Path) -> None:
    """Unreadable inputs exit 1, as the README says: a folder, a FIFO (which must not block) and
    a playlist (whose segments could be FIFOs) as much as a file that is not audio."""
    from tests.test_audio import _hls_with_a_fifo

    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"definitely not a wav file" * 10)
    fifo = tmp_path / "fifo.wav"
    os.mkfifo(fifo)
    playlist = _hls_with_a_fifo(tmp_path / "hls")
    out = tmp_path / "out"
    for args in (
        ("separate", str(bad), "-p", "drums", "--out", str(out)),
        ("separate", str(tmp_path / "missing.wav"), "-p", "drums", "--out", str(out)),
        ("separate", str(tmp_path / "hls"), "-p", "drums", "--out", str(out)),
        ("separate", str(fifo), "-p", "drums", "--out", str(out)),
        ("separate", str(playlist), "-p", "drums", "--out", str(out)),
        ("separate", str(_song(tmp_path / "ok.wav", 1.0)), "-p", "drums", "--out", str(unwritable_dir / "x")),
    ):
        proc = reasam(*args)
        assert proc.returncode == 1, (args, proc.stderr)
        _one_line_error(proc)
    assert not out.exists() or list(out.rglob("*")) == []
    assert bad.read_bytes() == b"definitely not a wav file" * 10


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.wav")
    for args in (("--debug", "separate", missing), ("separate", missing, "--debug")):
        proc = reasam(*args, "-p", "drums", "--out", str(tmp_path / "out"))
        assert proc.returncode == 1 and "Traceback" in proc.stderr, args
    assert not (tmp_path / "out").exists(), "a missing input must not create the output folder"


def test_engines_lists_prompts() -> None:
    proc = reasam("engines", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = {r["name"]: r for r in json.loads(proc.stdout)}
    assert rows["spleeter"]["available"] and "vocals" in rows["spleeter"]["prompts"]
    assert rows["dsp"]["spans"] and "drums" in rows["dsp"]["prompts"]
    text = reasam("engines").stdout
    assert "spleeter" in text and "+/- time spans" in text
    assert rows["spleeter"]["state"] == "not loaded"
    loaded = {r["name"]: r for r in json.loads(reasam("engines", "--load", "--json").stdout)}
    assert loaded["spleeter"]["state"] == "loaded" and loaded["dsp"]["state"] == "ready"


def test_example_then_separate_like_the_readme(tmp_path: Path) -> None:
    proc = reasam("example", str(tmp_path / "demo.wav"))
    assert proc.returncode == 0, proc.stderr
    proc = reasam("separate", str(tmp_path / "demo.wav"), "--prompt", "vocals", "--out", str(tmp_path / "o"))
    assert proc.returncode == 0, proc.stderr
    target, residual = (sf.read(p, always_2d=True)[0] for p in proc.stdout.split())
    mix = sf.read(str(tmp_path / "demo.wav"), always_2d=True)[0]
    assert np.abs(target + residual - mix).max() < 1e-4
