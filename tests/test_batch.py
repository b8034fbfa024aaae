"""`reasam batch`: real processes, real files, a real daemon and a real local Ray instance.

Clips are a few seconds of generated noise with clicks and the `dsp` engine does the work, so
every row costs a fraction of a second. Ray starts once for the module (in this process), and
the batches connect to it by address.
"""

from __future__ import annotations

import contextlib
import csv
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from reasam.batch_rows import RECORD_NAME
from reasam.errors import ReasamError

from tests.test_daemon import Daemon, clean_env, wait_for, write_noise

PYTHON = sys.executable


# ---------------------------------------------------------------------------------------------
# Helpers


def write_manifest(path: Path, rows: list[dict[str, Any]]) -> Path:
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def clips(folder: Path, n: int, seconds: float = 3.0) -> list[str]:
    """n distinct clips in `folder`, named relative to it (as a manifest beside them writes)."""
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n):
        write_noise(folder / f"clip{i:02d}.wav", seconds, seed=100 + i)
        names.append(f"clip{i:02d}.wav")
    return names


def batch_cmd(manifest: Path, out: Path, *extra: str) -> list[str]:
    return [PYTHON, "-m", "reasam.cli", "batch", str(manifest), "--out", str(out), *extra]


def run_batch(
    home: Path, manifest: Path, out: Path, *extra: str, timeout: float = 300
) -> subprocess.CompletedProcess:
    return subprocess.run(
        batch_cmd(manifest, out, *extra), env=clean_env(home), capture_output=True, text=True, timeout=timeout
    )


def summary(out: Path) -> dict[str, Any]:
    """The newest summary JSON of the output root, checked against its CSV twin."""
    newest = sorted(out.glob("batch-*.json"))[-1]
    body = json.loads(newest.read_text())
    with open(newest.with_suffix(".csv"), newline="") as fh:
        table = list(csv.DictReader(fh))
    assert [int(r["row"]) for r in table] == [x["row"] for x in body["lines"]]
    assert [r["status"] for r in table] == [x["status"] for x in body["lines"]]
    counted = {s: sum(x["status"] == s for x in body["lines"]) for s in body["counts"]}
    assert counted == body["counts"]
    return body


def record_lines(out: Path) -> list[dict[str, Any]]:
    lines = []
    for text in (out / RECORD_NAME).read_text().splitlines():
        with contextlib.suppress(ValueError):
            lines.append(json.loads(text))
    return lines


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file of a job folder with its inode and mtime: a rewrite changes one of them."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in folder.iterdir()}


def stems_of(folder: Path) -> dict[str, np.ndarray]:
    manifest = json.loads((folder / "manifest.json").read_text())
    return {s["role"]: sf.read(folder / Path(s["path"]).name, always_2d=True)[0] for s in manifest["stems"]}


def assert_sums_to_input(folder: Path, source: Path) -> None:
    parts = stems_of(folder)
    mix = sf.read(source, always_2d=True)[0]
    np.testing.assert_allclose(parts["target"] + parts["residual"], mix, atol=1e-4)


def no_partials(out: Path) -> None:
    left = [p for p in out.rglob("*") if p.name.endswith(".partial")]
    assert not left, left


# ---------------------------------------------------------------------------------------------
# In process


def kill_9_after(cmd: list[str], tmp_path: Path, out: Path, rows_done: int) -> list[dict[str, Any]]:
    """Run a batch and kill -9 it once its record shows `rows_done` finished rows; returns the
    record's finished rows as the killed batch left them."""
    proc = subprocess.Popen(cmd, env=clean_env(tmp_path), stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        done: list[dict[str, Any]] = []
        while len(done) < rows_done:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "the batch did not get going"
            time.sleep(0.02)
            if (out / RECORD_NAME).exists():
                done = [x for x in record_lines(out) if x["state"] == "done"]
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    return [x for x in record_lines(out) if x["state"] == "done"]


def test_bad_rows_are_reported_and_the_batch_goes_on(tmp_path: Path) -> None:
    data = tmp_path / "data"
    names = clips(data, 3)
    clean_env(tmp_path)  # its empty config file is the one thing the runs may find here
    outside = sorted(p.name for p in tmp_path.iterdir())
    manifest = write_manifest(
        data / "manifest.csv",
        [
            {"input": names[0], "prompt": "drums", "output_format": "wav", "engine": "dsp"},
            {
                "input": names[0],
                "prompt": "harmonic",
                "output_format": "flac",
                "engine": "dsp",
                "bit_depth": "16",
            },
            {
                "input": names[1],
                "prompt": "drums",
                "engine": "dsp",
                "sample_rate": "16000",
                "out": "resampled",
            },
            {
                "input": names[2],
                "prompt": "",
                "engine": "dsp",
                "span": "+0.2:0.6;-2:2.5",
                "normalize_peak": "-3",
            },
            {"input": "missing.wav", "prompt": "drums", "engine": "dsp"},
            {"input": names[1], "prompt": "drums", "engine": "dsp", "span": "12:13"},  # no sign
            {"input": names[1], "prompt": "a kazoo solo", "engine": "dsp"},  # not a dsp prompt
            {"input": names[1], "prompt": "drums", "engine": "dsp", "out": "../escape"},
            {"input": names[1], "prompt": "drums", "output_format": "mp3", "bit_depth": "24"},
            {
                "input": names[0],
                "prompt": "drums",
                "output_format": "wav",
                "engine": "dsp",
            },  # repeat of row 2
        ],
    )
    out = tmp_path / "out"
    res = run_batch(tmp_path, manifest, out)
    assert res.returncode == 1, res.stderr
    body = summary(out)
    assert body["counts"] == {"done": 4, "skipped": 1, "failed": 5, "pending": 0}
    by_row = {x["row"]: x for x in body["lines"]}
    assert [by_row[n]["code"] for n in range(6, 11)] == [
        "not_found",
        "bad_request",
        "unsupported_prompt",
        "bad_request",
        "bad_request",
    ]
    assert "missing.wav" in by_row[6]["message"] and "span" in by_row[7]["message"]
    assert by_row[11]["status"] == "skipped" and by_row[11]["folder"] == by_row[2]["folder"]
    # One paragraph on stderr with the counts and the failures.
    assert "4 done, 1 skipped" in res.stderr and "5 failed" in res.stderr and "row 6: not_found" in res.stderr

    # The output options of each row, in the files.
    flac = sf.info(Path(by_row[3]["folder"]) / "harmonic.flac")
    assert flac.format == "FLAC" and flac.subtype == "PCM_16"
    assert Path(by_row[4]["folder"]).parent == out / "resampled"
    assert sf.info(Path(by_row[4]["folder"]) / "drums.wav").samplerate == 16000
    spans = json.loads((Path(by_row[5]["folder"]) / "manifest.json").read_text())
    assert spans["post"] == {"peak_dbfs": -3.0} and spans["request"]["spans"] == ["+0.2:0.6", "-2:2.5"]
    peak = np.abs(sf.read(Path(by_row[5]["folder"]) / "span.wav")[0]).max()
    assert abs(20 * np.log10(peak) + 3.0) < 0.05
    assert_sums_to_input(Path(by_row[2]["folder"]), data / names[0])

    # Nothing written outside the output root, nothing half-written inside it.
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*outside, "out"])
    assert sorted(p.name for p in data.iterdir()) == sorted([*names, "manifest.csv"])
    no_partials(out)

    # A rerun redoes only the failed rows; a fixed row then runs, the rest stay as they were.
    before = {n: snapshot(Path(by_row[n]["folder"])) for n in (2, 3, 4, 5)}
    write_noise(data / "missing.wav", 2.0, seed=7)
    res = run_batch(tmp_path, manifest, out, "--json")
    assert res.returncode == 1, res.stderr
    again = summary(out)
    assert again["counts"] == {"done": 1, "skipped": 5, "failed": 4, "pending": 0}
    assert {n: snapshot(Path(by_row[n]["folder"])) for n in (2, 3, 4, 5)} == before
    events = [json.loads(line) for line in res.stdout.splitlines()]
    assert events[-1]["event"] == "summary" and events[-1]["counts"] == again["counts"]
    assert sum(e["event"] == "row" for e in events) == 10


def test_a_manifest_that_cannot_start_is_one_line_and_exit_2(tmp_path: Path) -> None:
    names = clips(tmp_path, 1)
    bad_column = write_manifest(tmp_path / "typo.csv", [{"input": names[0], "promt": "drums"}])
    res = run_batch(tmp_path, bad_column, tmp_path / "out")
    assert res.returncode == 2 and "promt" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    res = run_batch(tmp_path, tmp_path / "nope.csv", tmp_path / "out")
    assert res.returncode == 2 and "nope.csv" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    good = write_manifest(tmp_path / "good.csv", [{"input": names[0], "prompt": "drums"}])
    res = run_batch(tmp_path, good, tmp_path / "out", "--workers", "2")  # an option of --ray alone
    assert res.returncode == 2 and "--ray" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_kill_9_half_way_then_resume(tmp_path: Path) -> None:
    """Finished rows are not redone (same inode and mtime), the rest are, and the outputs are
    the same as those of a batch that was never interrupted."""
    data = tmp_path / "data"
    names = clips(data, 12, seconds=8.0)
    rows = [{"input": n, "prompt": "drums", "engine": "dsp", "quality": "best"} for n in names]
    manifest = write_manifest(data / "manifest.csv", rows)
    out = tmp_path / "out"
    done = kill_9_after(batch_cmd(manifest, out, "-q"), tmp_path, out, rows_done=3)
    assert 3 <= len(done) < len(rows), "kill -9 came too late to leave rows undone"
    finished = {x["folder"]: snapshot(out / x["folder"]) for x in done}

    res = run_batch(tmp_path, manifest, out)
    assert res.returncode == 0, res.stderr
    body = summary(out)
    assert body["counts"] == {"done": len(rows) - len(done), "skipped": len(done), "failed": 0, "pending": 0}
    assert {f: snapshot(out / f) for f in finished} == finished
    no_partials(out)

    reference = tmp_path / "reference"
    assert run_batch(tmp_path, manifest, reference, "-q").returncode == 0
    ref = {x["input"]: Path(x["folder"]) for x in summary(reference)["lines"]}
    for line in body["lines"]:
        folder = Path(line["folder"])
        assert sorted(p.name for p in folder.iterdir()) == sorted(
            p.name for p in ref[line["input"]].iterdir()
        )
        got, want = stems_of(folder), stems_of(ref[line["input"]])
        for role in ("target", "residual"):
            assert np.array_equal(got[role], want[role]), (line["input"], role)


def test_resume_survives_a_move_and_an_edited_input_is_redone(tmp_path: Path) -> None:
    data = tmp_path / "data"
    names = clips(data, 2)
    manifest = write_manifest(
        data / "m.csv",
        [
            {"input": names[0], "prompt": "drums", "engine": "dsp"},
            {"input": names[0], "prompt": "harmonic", "engine": "dsp"},  # same file, two prompts
            {"input": names[1], "prompt": "drums", "engine": "dsp"},
        ],
    )
    out = tmp_path / "out"
    assert run_batch(tmp_path, manifest, out).returncode == 0
    assert summary(out)["counts"]["done"] == 3
    # Collection and results moved elsewhere (other absolute paths); one input edited.
    moved = tmp_path / "moved"
    moved.mkdir()
    (tmp_path / "data").rename(moved / "data")
    (tmp_path / "out").rename(moved / "out")
    write_noise(moved / "data" / names[1], 3.0, seed=999)
    # And the record's last line torn, as kill -9 in the middle of a write leaves it.
    with open(moved / "out" / RECORD_NAME, "a") as fh:
        fh.write('{"key":"0123')
    res = run_batch(tmp_path, moved / "data" / "m.csv", moved / "out")
    assert res.returncode == 0, res.stderr
    lines = summary(moved / "out")["lines"]
    assert [x["status"] for x in lines] == ["skipped", "skipped", "done"]
    assert lines[2]["folder"] != lines[0]["folder"]
    # Only the torn line is lost: what came after it was written on a line of its own.
    text = (moved / "out" / RECORD_NAME).read_text().splitlines()
    assert len(record_lines(moved / "out")) == len(text) - 1
    res = run_batch(tmp_path, moved / "data" / "m.csv", moved / "out")
    assert [x["status"] for x in summary(moved / "out")["lines"]] == ["skipped"] * 3


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_a_rerun_never_clears_through_a_symlink(tmp_path: Path) -> None:
    """A job folder the user moved elsewhere and left a symlink to: a rerun neither deletes
    anything there (outside the output root) nor writes through the link; it redoes the row in
    a fresh folder, and the next run finds it done."""
    data = tmp_path / "data"
    names = clips(data, 1)
    manifest = write_manifest(data / "m.csv", [{"input": names[0], "prompt": "drums", "engine": "dsp"}])
    out = tmp_path / "out"
    assert run_batch(tmp_path, manifest, out).returncode == 0
    folder = Path(summary(out)["lines"][0]["folder"])
    keep = tmp_path / "project" / "keep"
    keep.parent.mkdir()
    folder.rename(keep)
    folder.symlink_to(keep, target_is_directory=True)
    (keep / "drums-residual.wav").unlink()
    (keep / ".mix.partial").write_bytes(b"the user's own")
    before = files_of(keep)

    for _ in range(2):
        res = run_batch(tmp_path, manifest, out)
        assert res.returncode == 0, res.stderr
        assert files_of(keep) == before
        assert folder.is_symlink()
    line = summary(out)["lines"][0]
    assert line["status"] == "skipped"  # the second rerun found the first one's work
    redone = Path(line["folder"])
    assert redone != folder and redone.parent == out and not redone.is_symlink()
    assert_sums_to_input(redone, data / names[0])


def test_a_rerun_clears_only_the_rows_own_files(tmp_path: Path) -> None:
    """A row redone in its earlier folder: only its own stems, manifest, status and their exact
    temporaries go; a file of the user's there (even one ending in .partial) stays, and the row
    then takes a fresh folder."""
    data = tmp_path / "data"
    names = clips(data, 1)
    manifest = write_manifest(data / "m.csv", [{"input": names[0], "prompt": "drums", "engine": "dsp"}])
    out = tmp_path / "out"
    assert run_batch(tmp_path, manifest, out).returncode == 0
    folder = Path(summary(out)["lines"][0]["folder"])
    (folder / "drums-residual.wav").unlink()
    (folder / ".drums.wav.0123abcd.partial").write_bytes(b"a temporary of the row's")
    (folder / ".mix.partial").write_bytes(b"the user's own")

    res = run_batch(tmp_path, manifest, out)
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in folder.iterdir()) == [".mix.partial"]
    redone = Path(summary(out)["lines"][0]["folder"])
    assert redone == folder.with_name(f"{folder.name}-2")
    assert_sums_to_input(redone, data / names[0])


def test_record_folders_outside_the_root_are_refused(tmp_path: Path) -> None:
    """The record travels with the outputs, so its folders are not trusted: one that is
    absolute or climbs out of the root with `..` is neither taken as done nor cleared."""
    data = tmp_path / "data"
    names = clips(data, 2)
    manifest = write_manifest(
        data / "m.csv", [{"input": n, "prompt": "drums", "engine": "dsp"} for n in names]
    )
    out = tmp_path / "out"
    assert run_batch(tmp_path, manifest, out).returncode == 0
    lines = summary(out)["lines"]
    keys = {x["folder"]: x["key"] for x in record_lines(out)}
    victims = []
    for n, line in enumerate(lines):
        folder = Path(line["folder"])
        victim = tmp_path / f"victim{n}"
        folder.rename(victim)  # a complete copy of the row's results, outside the root
        (victim / ".drums.wav.0123abcd.partial").write_bytes(b"not the batch's")
        victims.append((victim, files_of(victim)))
    forged = [
        {"key": keys[lines[0]["folder"].removeprefix(f"{out}/")], "folder": "../victim0", "state": "done"},
        {"key": keys[lines[1]["folder"].removeprefix(f"{out}/")], "folder": str(tmp_path / "victim1"),
         "state": "start"},
    ]  # fmt: skip
    with open(out / RECORD_NAME, "a") as fh:
        fh.writelines(json.dumps(x) + "\n" for x in forged)

    res = run_batch(tmp_path, manifest, out)
    assert res.returncode == 0, res.stderr
    again = summary(out)["lines"]
    assert [x["status"] for x in again] == ["done", "done"]
    for line in again:
        assert Path(line["folder"]).parent == out
    for victim, files in victims:
        assert files_of(victim) == files


# ---------------------------------------------------------------------------------------------
# Via the daemon


@pytest.fixture
def daemon(shared_daemon: Daemon) -> Daemon:
    """The module's daemon (tests/conftest.py): each test asserts on its own jobs only."""
    return shared_daemon


def test_via_daemon_at_batch_priority_with_resume(tmp_path: Path, daemon: Daemon) -> None:
    data = tmp_path / "data"
    names = clips(data, 4)
    rows = [{"input": n, "prompt": "drums", "engine": "dsp"} for n in names]
    rows[1].update(output_format="flac", bit_depth="24", normalize_peak="-6")
    rows[2].update(seed="12345", sample_rate="32000", mono="yes")
    rows.append({"input": names[0], "prompt": "a kazoo solo", "engine": "dsp"})
    manifest = write_manifest(data / "m.csv", rows)
    out = tmp_path / "out"
    flags = ("--via-daemon", "--port", str(daemon.port), "--token-file", str(daemon.token_file))
    res = run_batch(tmp_path, manifest, out, *flags)
    assert res.returncode == 1, res.stderr
    body = summary(out)
    assert body["counts"] == {"done": 4, "skipped": 0, "failed": 1, "pending": 0}
    assert body["lines"][4]["code"] == "unsupported_prompt"
    for line in body["lines"][:4]:
        status = json.loads((Path(line["folder"]) / "status.json").read_text())
        assert status["priority"] == "batch" and status["state"] == "done"
        assert line["worker"].startswith("daemon")
    flac = json.loads((Path(body["lines"][1]["folder"]) / "manifest.json").read_text())
    assert flac["request"]["format"] == "flac" and flac["request"]["bit_depth"] == 24
    assert flac["post"] == {"peak_dbfs": -6.0}
    seeded = json.loads((Path(body["lines"][2]["folder"]) / "manifest.json").read_text())["request"]
    assert (seeded["seed"], seeded["sample_rate"], seeded["mono"]) == (12345, 32000, True)
    assert_sums_to_input(Path(body["lines"][0]["folder"]), data / names[0])
    # The same rows in process give the same audio.
    local = tmp_path / "local"
    assert run_batch(tmp_path, manifest, local, "-q").returncode == 1
    for mine, theirs in zip(summary(local)["lines"][:4], body["lines"][:4], strict=True):
        a, b = stems_of(Path(mine["folder"])), stems_of(Path(theirs["folder"]))
        assert np.array_equal(a["target"], b["target"])
        # Every option of the row reached the daemon: it understood the same request.
        request = [
            json.loads((Path(x["folder"]) / "manifest.json").read_text())["request"] for x in (mine, theirs)
        ]
        assert request[0] == request[1]
    # The same manifest into a second output root through the same daemon: new jobs, no clash
    # with the job ids of the first.
    res = run_batch(tmp_path, manifest, tmp_path / "second", *flags)
    assert summary(tmp_path / "second")["counts"] == {"done": 4, "skipped": 0, "failed": 1, "pending": 0}
    # Resume: nothing done is sent again.
    before = {x["folder"]: snapshot(Path(x["folder"])) for x in body["lines"][:4]}
    res = run_batch(tmp_path, manifest, out, *flags)
    assert summary(out)["counts"] == {"done": 0, "skipped": 4, "failed": 1, "pending": 0}
    assert {f: snapshot(Path(f)) for f in before} == before


def test_via_daemon_kill_9_of_the_batch_then_resume(tmp_path: Path, daemon: Daemon) -> None:
    """The driver dies with jobs still queued in the daemon: the rerun follows those jobs (it
    neither clears their folders under the daemon's feet nor sends them twice) and leaves the
    finished ones alone."""
    data = tmp_path / "data"
    names = clips(data, 20, seconds=4.0)
    manifest = write_manifest(
        data / "m.csv", [{"input": n, "prompt": "drums", "engine": "dsp", "quality": "best"} for n in names]
    )
    out = tmp_path / "out"
    flags = ("--via-daemon", "--port", str(daemon.port), "--token-file", str(daemon.token_file), "-q")
    done = kill_9_after(batch_cmd(manifest, out, *flags), tmp_path, out, rows_done=2)
    assert len(done) < len(names)
    finished = {x["folder"]: snapshot(out / x["folder"]) for x in done}
    res = run_batch(tmp_path, manifest, out, *flags)
    assert res.returncode == 0, res.stderr
    body = summary(out)
    assert body["counts"] == {"done": len(names) - len(done), "skipped": len(done), "failed": 0, "pending": 0}
    assert {f: snapshot(out / f) for f in finished} == finished
    for line in body["lines"]:
        assert sorted(p.name for p in Path(line["folder"]).iterdir()) == [
            "drums-residual.wav",
            "drums.wav",
            "manifest.json",
            "status.json",
        ]
    # One folder per row, the record, and the rerun's summary (CSV, JSON): the killed run had none.
    assert len(list(out.iterdir())) == len(names) + 3
    with daemon.client() as client:  # every row's job done once: none failed, none sent twice
        states = [client.status(Path(line["folder"]).name)["state"] for line in body["lines"]]
    assert states == ["done"] * len(names)
    starts = {x["folder"] for x in record_lines(out) if x["state"] == "start"}
    assert len(starts) == len(names)  # no row went to the daemon under a second job id


def test_via_daemon_a_row_with_results_missing_is_redone(tmp_path: Path, daemon: Daemon) -> None:
    """A row done earlier whose stem was deleted since: the daemon still holds its job id as
    done, so the rerun sends it under a new id (a new folder) and the results are complete."""
    data = tmp_path / "data"
    names = clips(data, 2)
    manifest = write_manifest(
        data / "m.csv", [{"input": n, "prompt": "drums", "engine": "dsp"} for n in names]
    )
    out = tmp_path / "out"
    flags = ("--via-daemon", "--port", str(daemon.port), "--token-file", str(daemon.token_file))
    assert run_batch(tmp_path, manifest, out, *flags).returncode == 0
    first = summary(out)["lines"]
    (Path(first[0]["folder"]) / "drums-residual.wav").unlink()

    res = run_batch(tmp_path, manifest, out, *flags)
    assert res.returncode == 0, res.stderr
    again = summary(out)["lines"]
    assert [x["status"] for x in again] == ["done", "skipped"]
    assert_sums_to_input(Path(again[0]["folder"]), data / names[0])
    assert again[0]["folder"] != first[0]["folder"] and again[1]["folder"] == first[1]["folder"]
    assert not Path(first[0]["folder"]).exists()  # the incomplete results were the row's own
    res = run_batch(tmp_path, manifest, out, *flags)
    assert [x["status"] for x in summary(out)["lines"]] == ["skipped", "skipped"]


def test_via_daemon_failed_and_cancelled_rows_are_tried_again(tmp_path: Path, daemon: Daemon) -> None:
    """The daemon holds a job id to its outcome for weeks: a row that failed or was cancelled
    there goes back under a new job id (recorded in its start line), so it really runs again."""
    data = tmp_path / "data"
    names = clips(data, 1)
    (data / "broken.wav").write_bytes(b"RIFF not really a wave file" * 100)
    manifest = write_manifest(
        data / "m.csv",
        [
            {"input": names[0], "prompt": "drums", "engine": "dsp"},
            {"input": "broken.wav", "prompt": "drums", "engine": "dsp"},
        ],
    )
    out = tmp_path / "out"
    flags = ("--via-daemon", "--port", str(daemon.port), "--token-file", str(daemon.token_file), "-q")
    long_wav = write_noise(tmp_path / "long.wav", 60.0, rate=44100, seed=3)
    # People's requests keep the daemon's one CPU worker busy for a while (a minute of work even
    # on an idle machine; distinct regions, so no cache hits): the rows wait behind them.
    blockers = [f"blocker{i}" for i in range(24)]
    with daemon.client() as client:
        for i, blocker in enumerate(blockers):
            client.send(
                "/reasam/separate", blocker, str(long_wav), "drums", "engine", "dsp",
                "region", f"{i * 0.01:.2f}:59.9", *client.auth(),
            )  # fmt: skip
        proc = subprocess.Popen(
            batch_cmd(manifest, out, *flags), env=clean_env(tmp_path), stderr=subprocess.PIPE, text=True
        )
        try:
            wait_for(lambda: len([x for x in record_lines(out) if x["state"] == "start"]) == 2, timeout=60)
            job_id = Path(record_lines(out)[0]["folder"]).name

            def queued() -> bool:
                with contextlib.suppress(ReasamError):  # not_found until the batch has sent it
                    return client.status(job_id)["state"] == "queued"
                return False

            wait_for(queued, timeout=30)
            client.cancel(job_id)
            for blocker in blockers:
                client.cancel(blocker)
            _, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    assert proc.returncode == 1, err
    first = summary(out)["lines"]
    assert [x["code"] for x in first] == ["cancelled", "unsupported_format"], first

    res = run_batch(tmp_path, manifest, out, *flags)
    assert res.returncode == 1, res.stderr
    again = summary(out)["lines"]
    assert [x["status"] for x in again] == ["done", "failed"]
    assert_sums_to_input(Path(again[0]["folder"]), data / names[0])
    starts = [x["folder"] for x in record_lines(out) if x["state"] == "start"]
    assert len(starts) == len(set(starts)) == 4  # every attempt under a job id of its own
    with daemon.client() as client:
        states = sorted(client.status(Path(folder).name)["state"] for folder in starts)
    assert states == ["cancelled", "done", "error", "error"]  # the row twice; the broken row twice


def test_osc_priority_key_is_checked(tmp_path: Path, daemon: Daemon) -> None:
    source = write_noise(tmp_path / "x.wav", 1.0)
    with daemon.client() as client:
        client.send(
            "/reasam/separate", "p1", str(source), "drums", "engine", "dsp", "priority", "now", *client.auth()
        )
        reply = client.receive(10)
    assert reply is not None and reply[0] == "/reasam/error" and reply[1][:2] == ["p1", "bad_request"]


def test_via_daemon_without_a_daemon_is_exit_3(tmp_path: Path) -> None:
    names = clips(tmp_path, 1)
    manifest = write_manifest(tmp_path / "m.csv", [{"input": names[0], "prompt": "drums", "engine": "dsp"}])
    with socketless_port() as port:
        res = run_batch(
            tmp_path, manifest, tmp_path / "out", "--via-daemon", "--port", str(port), "--retries", "2"
        )
    assert res.returncode == 3, res.stderr
    assert summary(tmp_path / "out")["counts"]["pending"] == 1


@contextlib.contextmanager
def socketless_port() -> Iterator[int]:
    """A UDP port nobody listens on (held bound, unread, would swallow datagrams: so released)."""
    import socket

    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    yield port


# ---------------------------------------------------------------------------------------------
# On Ray


def test_ray_missing_is_one_line_and_exit_2(tmp_path: Path) -> None:
    """Ray is an optional extra: without it `--ray` says how to get it, before any work."""
    names = clips(tmp_path, 1)
    manifest = write_manifest(tmp_path / "m.csv", [{"input": names[0], "prompt": "drums", "engine": "dsp"}])
    code = (
        "import sys; sys.modules['ray'] = None  # what `import ray` meets where it is not installed\n"
        "from reasam.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    cmd = [PYTHON, "-c", code, "batch", str(manifest), "--out", str(tmp_path / "out"), "--ray"]
    res = subprocess.run(cmd, env=clean_env(tmp_path), capture_output=True, text=True, timeout=60)
    assert res.returncode == 2
    assert res.stderr.count("\n") == 1 and "pip install 'ray[data]'" in res.stderr
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def ray_address() -> Iterator[str]:
    """One local Ray instance for the module: three logical CPUs, so two one-CPU actors leave
    one for Ray Data's own tasks."""
    import ray

    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def test_ray_two_cpu_actors_with_resume(tmp_path: Path, ray_address: str) -> None:
    data = tmp_path / "data"
    names = clips(data, 6)
    rows = [{"input": n, "prompt": "drums", "engine": "dsp"} for n in names]
    first = write_manifest(data / "first.csv", rows[:3])
    full = write_manifest(data / "full.csv", [*rows, {"input": "gone.wav", "prompt": "drums"}])
    out = tmp_path / "out"
    ray_flags = ("--ray", ray_address, "--workers", "2")
    res = run_batch(tmp_path, first, out, *ray_flags)
    assert res.returncode == 0, res.stderr
    body = summary(out)
    assert body["counts"] == {"done": 3, "skipped": 0, "failed": 0, "pending": 0}
    before = {x["folder"]: snapshot(Path(x["folder"])) for x in body["lines"]}

    res = run_batch(tmp_path, full, out, *ray_flags)
    assert res.returncode == 1, res.stderr
    body = summary(out)
    assert body["counts"] == {"done": 3, "skipped": 3, "failed": 1, "pending": 0}
    assert [x["status"] for x in body["lines"]] == ["skipped"] * 3 + ["done"] * 3 + ["failed"]
    assert {f: snapshot(Path(f)) for f in before} == before
    workers = {x["worker"] for x in body["lines"] if x["status"] == "done"}
    assert len(workers) == 2, workers  # two actors shared the rows
    for line, name in zip(body["lines"][:6], names, strict=True):
        assert_sums_to_input(Path(line["folder"]), data / name)
    no_partials(out)
