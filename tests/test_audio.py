"""Audio I/O on real files: every format, channel layout and rate; bad files fail cleanly."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import psutil
import pytest
import soundfile as sf
from reasam import audio
from reasam.errors import JobCancelled, ReasamError


def _signal(channels: int, frames: int, rate: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(frames) / rate
    base = np.stack([0.3 * np.sin(2 * np.pi * (220 + 110 * c) * t) for c in range(channels)])
    return (base + 0.05 * rng.standard_normal((channels, frames))).astype(np.float32)


@pytest.mark.parametrize(
    ("fmt", "depth", "tol"),
    [("wav", 32, 0.0), ("wav", 24, 2e-7), ("wav", 16, 4e-5), ("flac", 24, 2e-7), ("flac", 16, 4e-5)],
)
@pytest.mark.parametrize("channels", [1, 2, 6])
def test_lossless_round_trip(tmp_path: Path, fmt: str, depth: int, tol: float, channels: int) -> None:
    x = _signal(channels, 44100 + 7, 44100)
    path = tmp_path / f"x.{fmt}"
    audio.write_audio(path, x, 44100, fmt, depth)
    y, rate = audio.read_region(path)
    assert rate == 44100
    assert y.shape == x.shape
    assert np.abs(y - x).max() <= tol


def test_mp3_round_trip_keeps_rate_channels_and_length(tmp_path: Path) -> None:
    x = _signal(2, 48000 * 2, 48000)
    path = tmp_path / "x.mp3"
    audio.write_audio(path, x, 48000, "mp3", None)
    y, rate = audio.read_region(path)
    assert rate == 48000 and y.shape[0] == 2
    assert abs(y.shape[1] - x.shape[1]) <= 1152 * 2  # encoder padding, at most a couple of frames
    n = min(y.shape[1], x.shape[1])
    corr = np.corrcoef(x[0, 2000 : n - 2000], y[0, 2000 : n - 2000])[0, 1]
    assert corr > 0.95, "decoded mp3 must line up with what was written"


def test_mp3_refuses_six_channels(tmp_path: Path) -> None:
    with pytest.raises(ReasamError, match="at most 2 channels"):
        audio.write_audio(tmp_path / "x.mp3", _signal(6, 1000, 44100), 44100, "mp3", None)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("rate", [8000, 96000, 192000])
def test_rates(tmp_path: Path, rate: int) -> None:
    x = _signal(2, rate // 2, rate)
    audio.write_audio(tmp_path / "x.wav", x, rate, "wav", 24)
    info = audio.probe(tmp_path / "x.wav")
    assert (info.sample_rate, info.channels, info.frames) == (rate, 2, rate // 2)


@pytest.mark.parametrize(
    ("ext", "codec"),
    [("ogg", ["-c:a", "libvorbis"]), ("opus", ["-c:a", "libopus"]), ("m4a", ["-c:a", "aac"])],
)
def test_compressed_formats_read(tmp_path: Path, ext: str, codec: list[str]) -> None:
    src = tmp_path / "src.wav"
    x = _signal(2, 48000 * 3, 48000)
    audio.write_audio(src, x, 48000, "wav", 16)
    out = tmp_path / f"x.{ext}"
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(src), *codec, "-b:a", "160k", str(out)], check=True)
    info = audio.probe(out)
    assert info.backend == ("ffmpeg" if ext == "m4a" else "soundfile")
    assert info.channels == 2 and info.sample_rate == 48000
    assert abs(info.frames - x.shape[1]) < 48000 * 0.05
    y, _ = audio.read_region(out, 1.0, 2.0)
    assert y.shape == (2, 48000)
    corr = np.corrcoef(x[0, 48000:96000], y[0])[0, 1]
    assert corr > 0.9, f"{ext} region must be the right part of the file (corr {corr:.3f})"


def test_region_read_is_sample_exact(tmp_path: Path) -> None:
    x = _signal(2, 44100 * 4, 44100)
    path = tmp_path / "x.flac"
    audio.write_audio(path, x, 44100, "flac", 24)
    y, _ = audio.read_region(path, 1.5, 2.25)
    assert np.abs(y - x[:, 66150:99225]).max() < 2e-7
    info = audio.probe(path)
    with audio.SourceReader(info) as reader:
        edge = reader.read(-10, 20)  # before the file: zeros, then the first frames
        assert np.all(edge[:, :10] == 0) and np.abs(edge[:, 10:] - x[:, :10]).max() < 2e-7
        tail = reader.read(info.frames - 5, 10)
        assert np.all(tail[:, 5:] == 0)


def test_resample_keeps_alignment_and_length() -> None:
    x = np.zeros((1, 48000), np.float32)
    x[0, 12000] = 1.0
    y = audio.resample(x, 48000, 44100)
    assert y.shape == (1, 44100)
    assert abs(int(np.argmax(np.abs(y[0]))) - 11025) <= 1
    back = audio.resample(y, 44100, 48000, frames=48000)
    assert back.shape == (1, 48000) and int(np.argmax(np.abs(back[0]))) == 12000


def test_stream_resampler_matches_total_length() -> None:
    total = 44100 * 3 + 11
    x = _signal(2, total, 44100)
    stream = audio.StreamResampler(44100, 48000, 2, total)
    blocks = [x[:, i : i + 10000] for i in range(0, total, 10000)]
    out = np.concatenate([stream.push(b, last=i == len(blocks) - 1) for i, b in enumerate(blocks)], axis=1)
    assert out.shape[1] == round(total * 48000 / 44100)
    whole = audio.resample(x, 44100, 48000)
    assert np.abs(out[:, 1000:-1000] - whole[:, 1000:-1000]).max() < 1e-3


def _no_partials(folder: Path) -> None:
    assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize(
    "content", [b"", b"this is not audio at all\n" * 50, b"RIFF\x00\x00\x00\x00WAVEfmt "]
)
def test_bad_files_fail_with_one_line(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.wav"
    path.write_bytes(content)
    with pytest.raises(ReasamError) as err:
        audio.read_region(path)
    assert err.value.code == "unsupported_format"
    assert "\n" not in str(err.value)


def test_missing_and_directory_paths(tmp_path: Path) -> None:
    with pytest.raises(ReasamError) as err:
        audio.probe(tmp_path / "nope.wav")
    assert err.value.code == "not_found"
    with pytest.raises(ReasamError) as err:
        audio.probe(tmp_path)
    assert err.value.code == "unsupported_format"


def test_never_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "keep.wav"
    path.write_bytes(b"precious")
    with pytest.raises(ReasamError, match="not overwritten"):
        audio.write_audio(path, _signal(1, 100, 8000), 8000)
    assert path.read_bytes() == b"precious"
    _no_partials(tmp_path)


def test_publish_refuses_a_file_that_appeared_meanwhile(tmp_path: Path) -> None:
    final = tmp_path / "x.wav"
    with audio.AudioWriter(final, 8000, 1, "wav", 32) as writer:
        writer.write(_signal(1, 100, 8000))
        final.write_bytes(b"someone else's")
        with pytest.raises(ReasamError):
            writer.commit()
    assert final.read_bytes() == b"someone else's"
    _no_partials(tmp_path)


def test_failed_write_leaves_nothing(tmp_path: Path) -> None:
    final = tmp_path / "x.wav"
    with pytest.raises(RuntimeError), audio.AudioWriter(final, 8000, 1, "wav", 32) as writer:
        writer.write(_signal(1, 100, 8000))
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_unwritable_folder(unwritable_dir: Path) -> None:
    before = sorted(os.listdir(unwritable_dir))
    with pytest.raises(ReasamError) as err:
        audio.ensure_writable_dir(unwritable_dir / "job")
        audio.write_audio(unwritable_dir / "stem.wav", _signal(1, 100, 8000), 8000)
    assert err.value.code == "bad_request" and not err.value.usage
    assert sorted(os.listdir(unwritable_dir)) == before


def test_output_path_under_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(ReasamError, match="cannot create output folder"):
        audio.ensure_writable_dir(tmp_path / "file" / "job")


def test_ffmpeg_missing_gives_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "x.m4a"
    path.write_bytes(b"\x00\x00\x00\x20ftypM4A " + b"\x00" * 100)
    monkeypatch.setattr(audio.shutil, "which", lambda name: None)
    with pytest.raises(ReasamError, match="ffmpeg is not installed"):
        audio.probe(path)


def test_written_float_wav_is_float(tmp_path: Path) -> None:
    audio.write_audio(tmp_path / "f.wav", _signal(2, 100, 44100) * 3, 44100)
    info = sf.info(str(tmp_path / "f.wav"))
    assert info.subtype == "FLOAT"
    y, _ = audio.read_region(tmp_path / "f.wav")
    assert np.abs(y).max() > 1.0, "float stems must not clip"


def _burst_at(frames: int, rate: int, at: int) -> np.ndarray:
    """Silence with one short 3 kHz burst centred on frame `at`: a landmark for alignment."""
    x = np.zeros((2, frames), np.float32)
    n = np.arange(400)
    x[:, at - 200 : at + 200] = 0.8 * np.hanning(400) * np.sin(2 * np.pi * 3000 * n / rate)
    return x


@pytest.mark.parametrize(
    ("ext", "codec"),
    [("mp3", None), ("ogg", ["-c:a", "libvorbis"]), ("opus", ["-c:a", "libopus"]), ("m4a", ["-c:a", "aac"])],
)
def test_compressed_region_reads_line_up_to_the_sample(
    tmp_path: Path, ext: str, codec: list[str] | None
) -> None:
    """Decoder delay (MP3/AAC priming, Opus pre-skip) must not shift a region read."""
    rate, at = 48000, 120000
    x = _burst_at(rate * 4, rate, at)
    out = tmp_path / f"x.{ext}"
    if codec is None:
        audio.write_audio(out, x, rate, ext, None)
    else:
        src = tmp_path / "src.wav"
        audio.write_audio(src, x, rate, "wav", 24)
        subprocess.run(
            ["ffmpeg", "-v", "error", "-i", str(src), *codec, "-b:a", "192k", str(out)], check=True
        )
    y, _ = audio.read_region(out, 1.0, 3.0)
    ref = x[0, rate : 3 * rate]
    window = slice(at - rate - 1000, at - rate + 1000)
    corr = np.correlate(y[0, window], ref[window], "full")
    assert int(np.argmax(corr)) - (window.stop - window.start - 1) == 0


def test_32_bit_integer_input(tmp_path: Path) -> None:
    x = _signal(2, 44100, 44100)
    path = tmp_path / "pcm32.wav"
    sf.write(str(path), x.T, 44100, subtype="PCM_32")
    y, rate = audio.read_region(path)
    assert rate == 44100 and np.abs(y - x).max() < 1e-7


# ---------------------------------------------------------------------------------------------
# Inputs that never end: playlists, devices, FIFOs, and a decoder that blocks


def _hls_with_a_fifo(folder: Path) -> Path:
    """An HLS playlist whose second segment is a FIFO nobody writes to: ffmpeg decodes the first
    segment, then blocks in open() on the second for ever (SIGTERM does not end it)."""
    folder.mkdir()
    subprocess.run(
        ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "sine=d=2", "-c:a", "aac", str(folder / "seg0.ts")],
        check=True,
    )
    os.mkfifo(folder / "seg1.ts")
    playlist = folder / "list.m3u8"
    playlist.write_text(
        "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n"
        "#EXTINF:2.0,\nseg0.ts\n#EXTINF:2.0,\nseg1.ts\n#EXT-X-ENDLIST\n"
    )
    return playlist


def _decoders() -> list[psutil.Process]:
    return [p for p in psutil.Process().children(recursive=True) if p.name().startswith("ff")]


def _finishes(call: Callable[[], object], limit: float = 120.0) -> BaseException | None:
    """Run `call` in a thread; the exception it ended with. A call still blocked after `limit`
    seconds (a generous bound, not a timing) fails the test, after its decoder is killed."""
    outcome: list[BaseException | None] = []

    def target() -> None:
        try:
            call()
        except BaseException as exc:
            outcome.append(exc)
        else:
            outcome.append(None)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(limit)
    if thread.is_alive():
        for proc in _decoders():
            proc.kill()
        thread.join(10)
        pytest.fail(f"still blocked after {limit:g} s")
    return outcome[0]


def test_playlists_devices_and_other_non_files_are_refused_up_front(tmp_path: Path) -> None:
    playlist = _hls_with_a_fifo(tmp_path / "hls")
    concat = tmp_path / "list.txt"
    concat.write_text(f"ffconcat version 1.0\nfile '{tmp_path / 'hls' / 'seg0.ts'}'\n")
    for path in (playlist, concat, tmp_path / "hls" / "seg1.ts", Path("/dev/zero"), tmp_path):
        err = _finishes(lambda path=path: audio.probe(path))
        assert isinstance(err, ReasamError), (path, err)
        assert err.code == "unsupported_format", (path, err.code, err.message)
        assert str(path) in err.message and "\n" not in err.message
    assert _decoders() == []


def test_a_blocked_decoder_is_killed_at_its_time_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The time limit is the backstop for what the up-front checks cannot see (a slow network
    mount, a format that reads more than its own file): let the playlist through to reach it."""
    playlist = _hls_with_a_fifo(tmp_path / "hls")
    monkeypatch.setattr(audio, "REFUSED_FORMATS", frozenset())
    monkeypatch.setattr(audio, "DECODE_TIMEOUT", 2.0)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    info = audio.probe(playlist)
    err = _finishes(lambda: audio.SourceReader(info, 0, info.frames))
    assert isinstance(err, ReasamError) and err.code == "unsupported_format", err
    assert "did not finish" in err.message and str(playlist) in err.message
    assert _decoders() == []
    assert list((tmp_path / "tmp").iterdir()) == []


def test_cancel_stops_a_blocked_decoder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    playlist = _hls_with_a_fifo(tmp_path / "hls")
    monkeypatch.setattr(audio, "REFUSED_FORMATS", frozenset())
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    info = audio.probe(playlist)
    asked = threading.Event()
    threading.Timer(1.0, asked.set).start()
    err = _finishes(lambda: audio.SourceReader(info, 0, info.frames, cancelled=asked.is_set))
    assert isinstance(err, JobCancelled), err
    assert _decoders() == []
    assert list((tmp_path / "tmp").iterdir()) == []


def test_wav_whose_header_claims_more_than_the_file_holds_is_truncated(tmp_path: Path) -> None:
    x = _signal(2, 44100, 44100)
    full = tmp_path / "full.wav"
    audio.write_audio(full, x, 44100, "wav", 16)
    cut = tmp_path / "cut.wav"
    cut.write_bytes(full.read_bytes()[: 44 + 2 * 2 * 1000])
    with pytest.raises(ReasamError) as err:
        audio.read_region(cut)
    assert err.value.code == "unsupported_format"
    assert "truncated" in err.value.message and str(cut) in err.value.message
    # A whole file still reads; so does one whose writer left the length open (streamed WAV).
    assert audio.read_region(full)[0].shape == (2, 44100)
    streamed = bytearray(full.read_bytes())
    streamed[40:44] = b"\xff\xff\xff\xff"
    (tmp_path / "streamed.wav").write_bytes(bytes(streamed))
    assert audio.read_region(tmp_path / "streamed.wav")[0].shape == (2, 44100)


_DECODE_IN_A_CHILD = """
import sys
from reasam import audio
audio.REFUSED_FORMATS = frozenset()
audio.DECODE_TIMEOUT = 1.0
info = audio.probe(sys.argv[1])
audio.SourceReader(info, 0, info.frames)
"""


def test_a_blocked_decoder_dies_with_its_limit_even_when_its_parent_is_killed(tmp_path: Path) -> None:
    """kill -9 of the process that started the decode (the daemon) leaves nobody to kill the
    decoder at its time limit: the limit must hold on its own."""
    playlist = _hls_with_a_fifo(tmp_path / "hls")
    (tmp_path / "tmp").mkdir()  # the killed process leaves its decode folder: keep it in here
    env = {**os.environ, "TMPDIR": str(tmp_path / "tmp")}
    parent = subprocess.Popen([sys.executable, "-c", _DECODE_IN_A_CHILD, str(playlist)], env=env)
    try:
        deadline = time.monotonic() + 60
        decoders: list[psutil.Process] = []
        while not any(p.name() == "ffmpeg" for p in decoders):
            assert time.monotonic() < deadline and parent.poll() is None, "no decoder started"
            time.sleep(0.05)
            with contextlib.suppress(psutil.Error):
                decoders = psutil.Process(parent.pid).children(recursive=True)
    finally:
        parent.kill()
        parent.wait()

    def alive(proc: psutil.Process) -> bool:
        with contextlib.suppress(psutil.Error):
            return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
        return False

    deadline = time.monotonic() + 120  # a generous bound: the limit is 1 s (+ 10 s of slack)
    while any(alive(p) for p in decoders):
        if time.monotonic() > deadline:
            for proc in decoders:
                with contextlib.suppress(psutil.Error):
                    proc.kill()
            pytest.fail("the decoder outlived its parent and its time limit")
        time.sleep(0.2)
