"""Audio in and out: read a region of any file, resample, write without ever losing a file.

Reading goes through libsndfile (soundfile) for WAV, FLAC, OGG/Vorbis, Opus and MP3, which can
seek, so only the region (plus a little context) is decoded. Anything else that ffmpeg can decode
(M4A/AAC, ALAC, WMA, …) is decoded by an ffmpeg subprocess into a temporary float WAV holding
just the region, after which it is read the same way.

No input may hold a worker for ever: only regular files are read (a FIFO, a device or a folder
is refused before anything opens it), ffmpeg's playlist and list formats (HLS, concat, …) are
refused because they read other files that may never end, and every ffprobe/ffmpeg run has a
time limit and stops at a cancel, killing the child and removing its temporary files.

Writing always goes to a hidden temporary name in the target folder and is published with a
hard link, which fails instead of replacing an existing file; the temporary name is then removed.
So nothing half-written ever carries a final name and no existing file is ever overwritten.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import stat
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from .errors import JobCancelled, ReasamError, output_error

# Output subtypes per (format, bit depth); 32 means 32-bit float.
_SUBTYPES = {
    ("wav", 16): "PCM_16",
    ("wav", 24): "PCM_24",
    ("wav", 32): "FLOAT",
    ("flac", 16): "PCM_16",
    ("flac", 24): "PCM_24",
    ("mp3", None): "MPEG_LAYER_III",
}
MP3_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)
_WAV_LIMIT = 4_000_000_000  # bytes; larger float WAVs are written as RF64
RESAMPLE_QUALITY = "HQ"
# Frames a decoder may deliver short of the length a header announced (MP3 padding estimates)
# before the file counts as truncated rather than being silently padded with zeros.
_SHORT_READ_TOLERANCE = 4096
# Time limits of the ffmpeg children: a probe reads a header; a decode gets a base plus a share
# of the region's duration (ffmpeg decodes at hundreds of times real time, so this only ends
# decodes that are stuck: a stalled network mount, an input that never ends).
PROBE_TIMEOUT = 30.0
DECODE_TIMEOUT = 60.0
DECODE_SECONDS_PER_SECOND = 0.25
# ffmpeg formats that read other files or streams named inside the input (playlists, lists,
# image sequences, session descriptions): what they read can be a FIFO or never end.
REFUSED_FORMATS = frozenset(
    {"hls", "applehttp", "concat", "dash", "webm_dash_manifest", "sdp", "rtp", "rtsp", "image2", "tee"}
)
_POLL = 0.1  # seconds between looks at a running child's cancel flag


@dataclass(frozen=True)
class AudioInfo:
    """What a source holds. `frames` is exact for libsndfile formats, estimated for ffmpeg ones."""

    path: Path
    sample_rate: int
    channels: int
    frames: int
    format: str
    backend: str  # "soundfile" or "ffmpeg"

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate


def check_regular_file(path: Path) -> None:
    """Refuse anything but a readable regular file, without opening it: opening a FIFO blocks
    until someone writes, and a device or a folder never ends or is no audio at all."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ReasamError("not_found", f"{path}: no such file") from None
    except OSError as exc:
        raise ReasamError("not_found", f"{path}: cannot access ({exc.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        kind = "a folder" if stat.S_ISDIR(st.st_mode) else "a FIFO, device or socket"
        raise ReasamError("unsupported_format", f"{path}: not a regular file ({kind})")
    if not os.access(path, os.R_OK):
        raise ReasamError("not_found", f"{path}: permission denied")


def _check_readable(path: Path) -> None:
    check_regular_file(path)
    if path.stat().st_size == 0:
        raise ReasamError("unsupported_format", f"{path}: file is empty")


def probe(path: Path | str, cancelled: Callable[[], bool] | None = None) -> AudioInfo:
    """Describe a source, or fail with a one-line error saying why it cannot be read."""
    path = Path(path)
    _check_readable(path)
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, TypeError):
        return _probe_ffmpeg(path, cancelled)
    if info.frames <= 0 or info.samplerate <= 0 or info.channels <= 0:
        raise ReasamError("unsupported_format", f"{path}: holds no audio frames")
    if info.format in ("WAV", "WAVEX"):
        _check_wav_length(path, int(info.frames), int(info.channels), int(info.samplerate))
    return AudioInfo(
        path, int(info.samplerate), int(info.channels), int(info.frames), info.format, "soundfile"
    )


def _check_wav_length(path: Path, frames: int, channels: int, rate: int) -> None:
    """Fail when the data chunk announces more bytes than the file holds.

    libsndfile clamps a WAV's length to the bytes present, so a cut file would otherwise pass
    as a shorter recording. A length of 0 or 0xFFFFFFFF is a streamed WAV's "unknown": read on.
    """
    with open(path, "rb") as fh:
        if fh.read(12)[8:12] != b"WAVE":
            return
        size = os.fstat(fh.fileno()).st_size
        pos = 12
        while pos + 8 <= size:
            fh.seek(pos)
            header = fh.read(8)
            declared = int.from_bytes(header[4:8], "little")
            if header[:4] == b"data":
                held = size - pos - 8
                if declared in (0, 0xFFFFFFFF) or declared - held < channels * 8 or frames <= 0:
                    return
                frame_bytes = held / frames
                raise ReasamError(
                    "unsupported_format",
                    f"{path}: truncated: audio ends at {frames / rate:.3f} s, its header says "
                    f"{declared / frame_bytes / rate:.3f} s",
                )
            pos += 8 + declared + (declared & 1)


def _kill_group(proc: subprocess.Popen) -> None:
    """Kill a child and anything it started (it leads its own process group), then reap it."""
    with contextlib.suppress(OSError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(OSError):
        proc.kill()
    with contextlib.suppress(Exception):
        proc.communicate(timeout=10)


def run_bounded(
    cmd: list[str], path: Path, what: str, timeout: float, cancelled: Callable[[], bool] | None
) -> subprocess.CompletedProcess:
    """Run an ffmpeg child to its end, its time limit, or a cancel; never longer.

    SIGKILL, not SIGTERM: ffmpeg blocked opening a FIFO takes SIGTERM as a request to finish
    and opens it again. The child leads its own process group so nothing it started survives.
    Where coreutils' `timeout` exists it wraps the child too, so the limit holds even when this
    process is killed first (kill -9 of the daemon) and cannot kill the child itself.
    """
    if shutil.which("timeout"):
        cmd = ["timeout", "-s", "KILL", f"{int(timeout) + 10}", *cmd]
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                out, err = proc.communicate(timeout=_POLL)
                return subprocess.CompletedProcess(cmd, proc.returncode, out, err)
            except subprocess.TimeoutExpired:
                pass
            if cancelled is not None and cancelled():
                raise JobCancelled(str(path))
            if time.monotonic() > deadline:
                raise ReasamError(
                    "unsupported_format",
                    f"{path}: {what} did not finish within {timeout:g} s and was stopped "
                    "(a stream, a stalled network mount, or a file that never ends?)",
                )
    finally:
        if proc.returncode is None:
            _kill_group(proc)


def _probe_ffmpeg(path: Path, cancelled: Callable[[], bool] | None = None) -> AudioInfo:
    if shutil.which("ffprobe") is None or shutil.which("ffmpeg") is None:
        raise ReasamError(
            "unsupported_format",
            f"{path}: not a format libsndfile reads, and ffmpeg is not installed to decode it "
            "(install ffmpeg for M4A/AAC and other formats)",
        )
    cmd = [
        "ffprobe",
        "-v",
        "error",
        "-protocol_whitelist",
        "file",
        "-select_streams",
        "a:0",
        "-show_entries",
        "stream=sample_rate,channels,duration:format=duration,format_name",
        "-of",
        "json",
        str(path),
    ]
    proc = run_bounded(cmd, path, "ffprobe", PROBE_TIMEOUT, cancelled)
    try:
        data = json.loads(proc.stdout or "{}")
        stream = data["streams"][0]
        rate, channels = int(stream["sample_rate"]), int(stream["channels"])
        duration = float(stream.get("duration") or data["format"]["duration"])
    except (KeyError, IndexError, ValueError, TypeError):
        raise ReasamError("unsupported_format", f"{path}: not a readable audio file") from None
    frames = round(duration * rate)
    if frames <= 0 or rate <= 0 or channels <= 0:
        raise ReasamError("unsupported_format", f"{path}: holds no audio frames")
    format_name = str(data.get("format", {}).get("format_name", "?"))
    if REFUSED_FORMATS & set(format_name.split(",")):
        raise ReasamError(
            "unsupported_format",
            f"{path}: a playlist or list of other files ({format_name}), not an audio file; "
            "open the audio file itself",
        )
    return AudioInfo(path, rate, channels, frames, format_name, "ffmpeg")


class SourceReader:
    """Random access to a source by absolute frame index, zero-padded outside the file.

    Chunked processing reads each chunk with a little context on both sides; reading through
    one open handle keeps that cheap, and zero padding makes the edges need no special case.
    For ffmpeg formats the region [first, last) is decoded once to a temporary WAV; the decode
    stops at `cancelled()` (JobCancelled) or its time limit, and leaves no temporary files.
    """

    def __init__(
        self,
        info: AudioInfo,
        first: int = 0,
        last: int | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> None:
        self.info = info
        self._offset = 0  # source frame index of the open file's frame 0
        self._tmpdir: tempfile.TemporaryDirectory | None = None
        if info.backend == "ffmpeg":
            first = max(0, first)
            last = info.frames if last is None else last
            self._tmpdir = tempfile.TemporaryDirectory(prefix="reasam-decode-")
            decoded = Path(self._tmpdir.name) / "region.wav"
            try:
                _ffmpeg_decode(info, first, last, decoded, cancelled)
            except BaseException:
                self.close()
                raise
            self._offset = first
            path = decoded
        else:
            path = info.path
        try:
            self._file = sf.SoundFile(str(path))
        except (sf.LibsndfileError, RuntimeError) as exc:
            self.close()
            raise ReasamError("unsupported_format", f"{info.path}: cannot open ({exc})") from None
        self._frames = self._file.frames
        self._pos = 0

    def covers(self, start: int, frames: int) -> bool:
        """Whether [start, start+frames) lies in what this reader can read from the source."""
        if self._tmpdir is None:
            return True
        return start >= self._offset and start + frames <= self._offset + self._frames

    def read(self, start: int, frames: int) -> np.ndarray:
        """Frames [start, start+frames) of the source as (channels, frames) float32."""
        out = np.zeros((self.info.channels, frames), dtype=np.float32)
        lo = max(start - self._offset, 0)
        hi = min(start - self._offset + frames, self._frames)
        if hi > lo:
            if self._pos != lo:
                self._file.seek(lo)
            try:
                data = self._file.read(hi - lo, dtype="float32", always_2d=True)
            except (sf.LibsndfileError, RuntimeError) as exc:
                raise ReasamError("unsupported_format", f"{self.info.path}: corrupt audio ({exc})") from None
            got = data.shape[0]
            if got < hi - lo - _SHORT_READ_TOLERANCE:
                raise ReasamError(
                    "unsupported_format",
                    f"{self.info.path}: truncated or corrupt: audio ends at "
                    f"{(self._offset + lo + got) / self.info.sample_rate:.3f} s, its header says "
                    f"{self.info.duration:.3f} s",
                )
            self._pos = lo + got
            dst = lo - (start - self._offset)
            out[:, dst : dst + got] = data.T
        return out

    def close(self) -> None:
        file = getattr(self, "_file", None)
        if file is not None:
            file.close()
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None

    def __enter__(self) -> SourceReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _ffmpeg_decode(
    info: AudioInfo, first: int, last: int, dest: Path, cancelled: Callable[[], bool] | None = None
) -> None:
    """Decode source frames [first, last) to a float WAV; ffmpeg's input seek is sample-exact."""
    rate = info.sample_rate
    cmd = [
        "ffmpeg",
        "-nostdin",
        "-v",
        "error",
        "-protocol_whitelist",
        "file",
        "-ss",
        f"{first / rate:.9f}",
        "-i",
        str(info.path),
        "-t",
        f"{(last - first) / rate:.9f}",
        "-vn",
        "-map",
        "0:a:0",
        "-c:a",
        "pcm_f32le",
        "-rf64",
        "auto",
        "-f",
        "wav",
        str(dest),
    ]
    timeout = DECODE_TIMEOUT + DECODE_SECONDS_PER_SECOND * (last - first) / rate
    proc = run_bounded(cmd, info.path, "ffmpeg decoding", timeout, cancelled)
    if proc.returncode != 0 or not dest.exists():
        detail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise ReasamError("unsupported_format", f"{info.path}: ffmpeg could not decode it ({detail})")


def read_region(path: Path | str, start: float = 0.0, end: float | None = None) -> tuple[np.ndarray, int]:
    """Whole region [start, end) seconds as (channels, frames) float32, with the sample rate."""
    info = probe(path)
    first = round(start * info.sample_rate)
    last = info.frames if end is None else min(round(end * info.sample_rate), info.frames)
    with SourceReader(info, first, last) as reader:
        return reader.read(first, max(0, last - first)), info.sample_rate


def resample(audio: np.ndarray, rate_in: int, rate_out: int, frames: int | None = None) -> np.ndarray:
    """Resample (channels, frames) with soxr; `frames` forces the exact output length.

    soxr compensates its filter delay, so sample k of the input lands at k * rate_out / rate_in;
    forcing the length (trim or zero-pad the last few samples) keeps stems exactly as long as
    the region they stand for.
    """
    if frames is None:
        frames = round(audio.shape[1] * rate_out / rate_in)
    if rate_in != rate_out:
        audio = np.ascontiguousarray(soxr.resample(audio.T, rate_in, rate_out, quality=RESAMPLE_QUALITY).T)
    return fit_length(audio, frames)


def fit_length(audio: np.ndarray, frames: int) -> np.ndarray:
    if audio.shape[1] == frames:
        return audio.astype(np.float32, copy=False)
    out = np.zeros((audio.shape[0], frames), dtype=np.float32)
    n = min(frames, audio.shape[1])
    out[:, :n] = audio[:, :n]
    return out


class StreamResampler:
    """Block-wise soxr resampling whose total output is exactly `total_frames` long."""

    def __init__(self, rate_in: int, rate_out: int, channels: int, total_in: int) -> None:
        self.passthrough = rate_in == rate_out
        self.total_out = round(total_in * rate_out / rate_in)
        self._emitted = 0
        if not self.passthrough:
            self._stream = soxr.ResampleStream(
                rate_in, rate_out, channels, dtype="float32", quality=RESAMPLE_QUALITY
            )

    def push(self, block: np.ndarray, last: bool = False) -> np.ndarray:
        if self.passthrough:
            return block
        out = self._stream.resample_chunk(np.ascontiguousarray(block.T), last=last).T
        keep = min(out.shape[1], self.total_out - self._emitted)
        out = out[:, :keep]
        if last and self._emitted + keep < self.total_out:
            out = fit_length(out, self.total_out - self._emitted)
        self._emitted += out.shape[1]
        return np.ascontiguousarray(out, dtype=np.float32)


def subtype_for(fmt: str, bit_depth: int | None) -> str:
    return _SUBTYPES[(fmt, bit_depth)]


def ensure_writable_dir(folder: Path) -> None:
    """Create `folder` if needed; fail with one line when it cannot hold new files."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ReasamError(
            "bad_request", f"{folder}: cannot create output folder ({exc.strerror})", usage=False
        ) from None
    if not folder.is_dir():
        raise ReasamError("bad_request", f"{folder}: output path is not a folder", usage=False)
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ReasamError("bad_request", f"{folder}: output folder is not writable", usage=False)


def publish(temp: Path, final: Path) -> None:
    """Give a finished temporary file its final name, never replacing an existing file."""
    try:
        os.link(temp, final)
    except FileExistsError:
        temp.unlink(missing_ok=True)
        raise ReasamError("internal", f"{final}: already exists; not overwritten") from None
    except OSError as exc:
        # Filesystems without hard links (some network and FAT mounts): rename after a check.
        if exc.errno not in (errno.EPERM, errno.EXDEV, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
            raise output_error(exc, final) from None
        if final.exists():
            temp.unlink(missing_ok=True)
            raise ReasamError("internal", f"{final}: already exists; not overwritten") from None
        try:
            os.rename(temp, final)
        except OSError as exc2:
            raise output_error(exc2, final) from None
        return
    temp.unlink()


def _write_failure(exc: BaseException, final: Path) -> ReasamError:
    """A failed libsndfile write as `output_error` says it. libsndfile reports only "System
    error."; the errno its failed call left (cffi keeps it per thread) says which one."""
    if isinstance(exc, OSError):
        return output_error(exc, final)
    number = getattr(getattr(sf, "_ffi", None), "errno", 0) if "System error" in str(exc) else 0
    if number:
        return output_error(OSError(number, os.strerror(number)), final)
    return ReasamError("bad_request", f"{final}: write failed ({exc})", usage=False)


def temp_name(final: Path) -> Path:
    return final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}.partial")


def write_text(final: Path, text: str, replace: bool = False) -> None:
    """Write a small text file atomically; `replace` for files that are rewritten (status.json)."""
    temp = temp_name(final)
    try:
        with open(temp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        if replace:
            os.replace(temp, final)
        else:
            publish(temp, final)
    except OSError as exc:
        raise output_error(exc, final) from None
    finally:
        with contextlib.suppress(OSError):
            temp.unlink(missing_ok=True)


def check_output(fmt: str, sample_rate: int, channels: int) -> None:
    """Fail early, with a usable hint, when a format cannot hold the stems as asked."""
    if fmt == "mp3":
        if channels > 2:
            raise ReasamError(
                "bad_request",
                f"mp3 holds at most 2 channels, the stem has {channels}; use wav or flac, or ask for mono",
            )
        if sample_rate not in MP3_RATES:
            raise ReasamError(
                "bad_request",
                f"mp3 cannot hold {sample_rate} Hz; use wav or flac, "
                "or set an output sample rate of 48000 or less",
            )
    if fmt == "flac" and (sample_rate > 655350 or channels > 8):
        raise ReasamError("bad_request", f"flac cannot hold {channels} channels at {sample_rate} Hz")


class AudioWriter:
    """Streams (channels, frames) blocks to a temporary file; `commit` publishes it.

    Used as a context manager: leaving the block by an exception (an error or a cancel) removes
    the temporary file, so a failed job leaves nothing behind.
    """

    def __init__(
        self,
        final: Path,
        sample_rate: int,
        channels: int,
        fmt: str,
        bit_depth: int | None,
        expected_frames: int = 0,
    ) -> None:
        self.final = final
        if final.exists():
            raise ReasamError("internal", f"{final}: already exists; not overwritten")
        check_output(fmt, sample_rate, channels)
        container = {"wav": "WAV", "flac": "FLAC", "mp3": "MP3"}[fmt]
        if fmt == "wav" and expected_frames * channels * 4 > _WAV_LIMIT:
            container = "RF64"
        self.temp = temp_name(final)
        try:
            self._file = sf.SoundFile(
                str(self.temp),
                "w",
                samplerate=sample_rate,
                channels=channels,
                format=container,
                subtype=subtype_for(fmt, bit_depth),
            )
        except (sf.LibsndfileError, RuntimeError, OSError) as exc:
            with contextlib.suppress(OSError):
                self.temp.unlink(missing_ok=True)
            if "System error" in str(exc) or isinstance(exc, OSError):
                raise _write_failure(exc, final) from None
            raise ReasamError(
                "bad_request", f"{final.parent}: cannot write output ({exc})", usage=False
            ) from None
        self.frames = 0
        self._committed = False

    def write(self, block: np.ndarray) -> None:
        try:
            self._file.write(np.ascontiguousarray(block.T))
        except (sf.LibsndfileError, RuntimeError, OSError) as exc:
            raise _write_failure(exc, self.final) from None
        self.frames += block.shape[1]

    def _close(self) -> None:
        try:
            self._file.close()  # writes the header: a full disk can show here first
        except (sf.LibsndfileError, RuntimeError, OSError) as exc:
            raise _write_failure(exc, self.final) from None

    def commit(self) -> None:
        self._close()
        publish(self.temp, self.final)
        self._committed = True

    def close_unpublished(self) -> Path:
        """Close and hand the temporary file to the caller, who reads it back and deletes it."""
        self._close()
        self._committed = True
        return self.temp

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self._file.close()
        with contextlib.suppress(OSError):
            self.temp.unlink(missing_ok=True)

    def __enter__(self) -> AudioWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._committed:
            self.abort()


def write_audio(
    final: Path, audio: np.ndarray, sample_rate: int, fmt: str = "wav", bit_depth: int | None = 32
) -> None:
    """Write a whole (channels, frames) array atomically."""
    with AudioWriter(final, sample_rate, audio.shape[0], fmt, bit_depth, audio.shape[1]) as writer:
        writer.write(audio)
        writer.commit()
