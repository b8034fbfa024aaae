"""Test material with exact ground truth: stems rendered from MIDI, speech and drum samples.

Separation can only be scored against the true sources, so every stem here is rendered on its own
(fluidsynth per MIDI part, espeak-ng for speech, sonic-pi one-shots for drums) and the mixture is
their plain sum. Renders are deterministic (bit-identical across runs on one machine) and cached
under `tests/.material/` (or $REASAM_MATERIAL_DIR), so a test session renders each set once and
parallel test processes share the files. Run `python -m tests.material` to render and inspect.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

STEM_NAMES = ("vocals", "drums", "bass", "music")
REPO_ROOT = Path(__file__).resolve().parent.parent
SOUNDFONT_CANDIDATES = (
    Path("/usr/share/sounds/sf2/TimGM6mb.sf2"),
    Path("/usr/share/sounds/sf2/FluidR3_GM.sf2"),
)
# Debian's sonic-pi-samples puts them in /usr/share/sonic-pi/samples.
SAMPLE_DIRS = tuple(sorted(Path("/usr/share").glob("sonic-pi*/samples")))

# Every stem is scaled to this RMS over the whole clip: loud enough to matter in the mix, with room
# for drum transients so the four-stem mix peaks below 0 dBFS.
STEM_RMS_DBFS = -24.0
MIX_PEAK_CEILING_DBFS = -1.0

TEMPO_BPM = 100.0
BEAT_S = 60.0 / TEMPO_BPM
BAR_S = 4 * BEAT_S
# I-vi-IV-V in C: (bass root, piano voicing, string voicing) per bar.
PROGRESSION = (
    (36, (60, 64, 67), (72, 76, 79)),
    (33, (57, 60, 64), (69, 72, 76)),
    (29, (57, 60, 65), (69, 72, 77)),
    (31, (55, 59, 62), (67, 71, 74)),
)

SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "Please leave the recording running for a moment.",
    "Okay.",
    "We measured the signal twice, and it sounded the same both times.",
    "Thank you very much.",
    "Can you hear the difference between these two takes?",
    "Let's try that again from the top.",
    "Right.",
    "The weather was lovely on the coast this morning.",
    "Nobody expected the drums to come in so early.",
)
# (espeak-ng voice, pitch 0-99, words per minute, pan -1 left .. +1 right)
VOICES = (
    ("en-us", 45, 165, -0.25),
    ("en-gb+f3", 62, 155, 0.2),
    ("en-us+m3", 35, 150, -0.1),
    ("en-gb-x-rp+f2", 70, 160, 0.3),
)
# Pauses between utterances cycle through these, so speech covers most of the clip but not all.
PAUSES_S = (0.45, 0.7, 0.35, 0.9, 0.5, 0.6)


class MaterialError(RuntimeError):
    """A tool or data file needed to render ground truth is missing or failed."""


def cache_dir() -> Path:
    """Where renders live; read on every call so tests can point it at a temporary directory."""
    path = Path(os.environ.get("REASAM_MATERIAL_DIR") or REPO_ROOT / "tests" / ".material")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _require(tool: str, package: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise MaterialError(f"{tool} not found: install the Debian package {package!r} for test material")
    return path


def soundfont() -> Path:
    """The GM soundfont fluidsynth renders with ($REASAM_SOUNDFONT overrides the TimGM6mb default)."""
    env = os.environ.get("REASAM_SOUNDFONT")
    candidates = (Path(env),) if env else SOUNDFONT_CANDIDATES
    for path in candidates:
        if path.is_file():
            return path
    raise MaterialError(
        f"no GM soundfont at {', '.join(map(str, candidates))}: install 'timgm6mb-soundfont' "
        "or set REASAM_SOUNDFONT"
    )


def sample_path(name: str) -> Path:
    """A sonic-pi sample (CC0) by its name without extension, e.g. 'drum_heavy_kick'."""
    for directory in SAMPLE_DIRS:
        path = directory / f"{name}.flac"
        if path.is_file():
            return path
    raise MaterialError(f"sonic-pi sample {name!r} not found: install the Debian package 'sonic-pi-samples'")


def _frames(seconds: float, sample_rate: int) -> int:
    if seconds <= 0 or sample_rate <= 0:
        raise ValueError(f"need seconds > 0 and sample_rate > 0, got {seconds}, {sample_rate}")
    return round(seconds * sample_rate)


def _fit(audio: np.ndarray, frames: int) -> np.ndarray:
    """Trim or zero-pad (channels, n) to exactly `frames`, so every stem lines up sample for sample."""
    if audio.shape[1] >= frames:
        return np.ascontiguousarray(audio[:, :frames])
    return np.pad(audio, ((0, 0), (0, frames - audio.shape[1])))


def _resample(audio: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """(channels, n) float32 at rate_out; soxr is deterministic and the best quality measured here."""
    if rate_in == rate_out:
        return audio.astype(np.float32, copy=False)
    out = soxr.resample(np.ascontiguousarray(audio.T, dtype=np.float32), rate_in, rate_out, quality="HQ")
    return np.ascontiguousarray(out.T, dtype=np.float32)


def _pan(mono: np.ndarray, pan: float) -> np.ndarray:
    """Constant-power pan of a mono signal to stereo: -1 hard left, 0 centre, +1 hard right."""
    angle = (pan + 1.0) * np.pi / 4.0
    return np.stack([mono * np.cos(angle), mono * np.sin(angle)]).astype(np.float32)


def _read(path: Path, sample_rate: int) -> np.ndarray:
    """An audio file as (channels, n) float32 at sample_rate."""
    data, rate = sf.read(path, dtype="float32", always_2d=True)
    return _resample(data.T, rate, sample_rate)


def _cached(name: str, render: Callable[[], np.ndarray]) -> np.ndarray:
    """Load `name` from the cache or render and store it (temp file + rename: never seen half-written)."""
    path = cache_dir() / name
    if path.is_file():
        return np.load(path)
    audio = render()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            np.save(handle, audio)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return audio


# --- MIDI ---------------------------------------------------------------------------------------

_PPQ = 480


def _varlen(value: int) -> bytes:
    out = [value & 0x7F]
    value >>= 7
    while value:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    return bytes(reversed(out))


def _midi_file(notes: Sequence[tuple[int, float, float, int, int]], programs: dict[int, int]) -> bytes:
    """A format-0 Standard MIDI File at TEMPO_BPM from (channel, start beat, beats, key, velocity).

    Written by hand because it is a few dozen bytes of structure and needs no extra dependency.
    """
    events: list[tuple[int, int, bytes]] = [
        (0, 0, bytes([0xFF, 0x51, 0x03]) + round(60e6 / TEMPO_BPM).to_bytes(3, "big"))
    ]
    events += [(0, 1, bytes([0xC0 | channel, program])) for channel, program in sorted(programs.items())]
    for channel, start, length, key, velocity in notes:
        on = round(start * _PPQ)
        off = round((start + length) * _PPQ)
        # At equal ticks note-offs (order 2) go before note-ons (order 3) so repeated keys retrigger.
        events.append((on, 3, bytes([0x90 | channel, key, velocity])))
        events.append((off, 2, bytes([0x80 | channel, key, 0])))
    events.sort(key=lambda event: (event[0], event[1]))
    track = bytearray()
    now = 0
    for tick, _, message in events:
        track += _varlen(tick - now) + message
        now = tick
    track += b"\x00\xff\x2f\x00"
    return b"MThd" + struct.pack(">IHHH", 6, 0, 1, _PPQ) + b"MTrk" + struct.pack(">I", len(track)) + track


def _render_midi(midi: bytes, sample_rate: int, gain: float = 0.5) -> np.ndarray:
    """Render MIDI with fluidsynth to (2, n) float32 at sample_rate.

    Float output skips fluidsynth's 16-bit dither; a single CPU core keeps the render
    bit-identical run to run.
    """
    exe = _require("fluidsynth", "fluidsynth")
    font = soundfont()
    rate = sample_rate if 22050 <= sample_rate <= 96000 else 44100
    with tempfile.TemporaryDirectory(prefix="reasam-material-") as tmp:
        mid = Path(tmp) / "part.mid"
        wav = Path(tmp) / "part.wav"
        mid.write_bytes(midi)
        cmd = [
            exe, "-ni", "-q", "-F", str(wav), "-T", "wav", "-O", "float", "-r", str(rate), "-g", str(gain),
            "-o", "synth.cpu-cores=1", str(font), str(mid),
        ]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0 or not wav.is_file():
            raise MaterialError(f"fluidsynth failed ({done.returncode}): {done.stderr.strip()[-500:]}")
        return _read(wav, sample_rate)


def _bars(seconds: float) -> int:
    """Bars of MIDI to cover `seconds` plus one, so no part ends (and cuts its release) inside the clip."""
    return int(np.ceil(seconds / BAR_S)) + 1


def _bass_midi(seconds: float) -> bytes:
    """An eighth-note bass line on the progression's roots, with octave and fifth moves."""
    steps = (0, 0, 12, 0, 0, 7, 12, 7)
    notes = []
    for bar in range(_bars(seconds)):
        root = PROGRESSION[bar % len(PROGRESSION)][0]
        for i, step in enumerate(steps):
            velocity = 104 if i % 2 == 0 else 88
            notes.append((0, bar * 4 + i * 0.5, 0.45, root + step, velocity))
    return _midi_file(notes, {0: 33})  # GM 34: electric bass (finger)


def _music_midi(seconds: float) -> bytes:
    """Piano comping plus sustained strings: the harmonic bed that is neither bass nor drums."""
    notes = []
    for bar in range(_bars(seconds)):
        _, piano, strings = PROGRESSION[bar % len(PROGRESSION)]
        for beat, length, velocity in ((0.0, 1.4, 90), (1.5, 0.45, 70), (2.0, 0.9, 80), (3.0, 0.9, 72)):
            notes += [(0, bar * 4 + beat, length, key, velocity) for key in piano]
        notes += [(1, bar * 4, 3.95, key, 62) for key in strings]
    return _midi_file(notes, {0: 0, 1: 48})  # GM 1: acoustic grand piano; GM 49: string ensemble


# --- stems --------------------------------------------------------------------------------------


def _speak(text: str, voice: str, pitch: int, speed: int) -> tuple[np.ndarray, int]:
    """One utterance from espeak-ng as mono float32 and its rate (22050 Hz for its voices)."""
    exe = _require("espeak-ng", "espeak-ng")
    with tempfile.TemporaryDirectory(prefix="reasam-material-") as tmp:
        wav = Path(tmp) / "speech.wav"
        cmd = [exe, "-v", voice, "-p", str(pitch), "-s", str(speed), "-w", str(wav), text]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0 or not wav.is_file():
            raise MaterialError(f"espeak-ng failed ({done.returncode}): {done.stderr.strip()[-500:]}")
        data, rate = sf.read(wav, dtype="float32", always_2d=True)
    data = data.mean(axis=1)
    # espeak pads each utterance with silence; trim it so the pauses below are the real ones.
    loud = np.flatnonzero(np.abs(data) > 1e-3)
    if loud.size:
        data = data[loud[0] : loud[-1] + 1].copy()
    fade = min(len(data) // 2, rate // 200)  # 5 ms, so the trim leaves no click
    ramp = np.linspace(0.0, 1.0, fade, dtype=np.float32)
    data[:fade] *= ramp
    data[len(data) - fade :] *= ramp[::-1]
    return data, rate


def _vocals(seconds: float, sample_rate: int) -> np.ndarray:
    """Sentences by alternating voices, panned apart, with pauses; a shorter sentence fills the end."""
    frames = _frames(seconds, sample_rate)
    out = np.zeros((2, frames), np.float32)
    t = 0.3
    turn = 0
    while True:
        placed = False
        # Take the next sentence in order that still fits, so the clip ends on a whole sentence.
        for k in range(len(SENTENCES)):
            voice, pitch, speed, pan = VOICES[turn % len(VOICES)]
            text = SENTENCES[(turn + k) % len(SENTENCES)]
            if len(text) / 14.0 > seconds - t:  # espeak speaks roughly 14 characters a second
                continue
            mono, rate = _speak(text, voice, pitch, speed)
            audio = _pan(_resample(mono[None, :], rate, sample_rate)[0], pan)
            if t + audio.shape[1] / sample_rate > seconds:
                continue
            start = round(t * sample_rate)
            out[:, start : start + audio.shape[1]] += audio
            t += audio.shape[1] / sample_rate + PAUSES_S[turn % len(PAUSES_S)]
            turn += k + 1
            placed = True
            break
        if not placed:
            break
    if turn == 0:  # clip shorter than any sentence: speak the shortest, cut at the end
        voice, pitch, speed, pan = VOICES[0]
        mono, rate = _speak(min(SENTENCES, key=len), voice, pitch, speed)
        out = _fit(_pan(_resample(mono[None, :], rate, sample_rate)[0], pan), frames)
    return out


# Sixteen sixteenth-note steps per bar: (sample, pan, gain per step or 0).
_DRUM_PATTERN = (
    ("drum_heavy_kick", 0.0, (1, 0, 0, 0, 0, 0, 0, 0.7, 1, 0, 0.8, 0, 0, 0, 0, 0)),
    ("drum_snare_hard", 0.05, (0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0.35)),
    ("drum_cymbal_closed", 0.35, (0.8, 0, 0.5, 0, 0.8, 0, 0.5, 0, 0.8, 0, 0.5, 0, 0.8, 0, 0.5, 0.4)),
)


def _drums(seconds: float, sample_rate: int) -> np.ndarray:
    """Kick, snare and hat one-shots sequenced at TEMPO_BPM, in time with the bass and music."""
    frames = _frames(seconds, sample_rate)
    out = np.zeros((2, frames), np.float32)
    step_s = BEAT_S / 4
    for name, pan, gains in _DRUM_PATTERN:
        hit = _pan(_read(sample_path(name), sample_rate).mean(axis=0), pan)
        for bar in range(_bars(seconds)):
            for step, gain in enumerate(gains):
                start = round((bar * BAR_S + step * step_s) * sample_rate)
                if gain == 0 or start >= frames:
                    continue
                end = min(frames, start + hit.shape[1])
                out[:, start:end] += np.float32(gain) * hit[:, : end - start]
    return out


def _rms_db(audio: np.ndarray) -> float:
    return 10.0 * np.log10(float(np.mean(np.square(audio, dtype=np.float64))) + 1e-20)


def _render_stems(seconds: float, sample_rate: int) -> np.ndarray:
    frames = _frames(seconds, sample_rate)
    raw = {
        "vocals": _vocals(seconds, sample_rate),
        "drums": _drums(seconds, sample_rate),
        "bass": _render_midi(_bass_midi(seconds), sample_rate),
        "music": _render_midi(_music_midi(seconds), sample_rate),
    }
    out = np.stack([_fit(raw[name], frames) for name in STEM_NAMES]).astype(np.float32)
    for i in range(len(STEM_NAMES)):
        out[i] *= np.float32(10 ** ((STEM_RMS_DBFS - _rms_db(out[i])) / 20))
    peak = float(np.abs(out.sum(axis=0)).max())
    ceiling = 10 ** (MIX_PEAK_CEILING_DBFS / 20)
    if peak > ceiling:
        out *= np.float32(ceiling / peak)
    return out


def _key(*parts: object) -> str:
    """A cache file name: readable parameters plus a hash of this module and the soundfont choice.

    Any edit here renders afresh instead of reusing stale audio; reading a cached file needs no tools.
    """
    source = Path(__file__).read_bytes() + os.environ.get("REASAM_SOUNDFONT", "").encode()
    return "-".join(str(part) for part in parts) + f"-{hashlib.sha256(source).hexdigest()[:10]}.npy"


def stems(seconds: float = 20.0, sample_rate: int = 44100) -> dict[str, np.ndarray]:
    """Four stereo float32 stems (2, frames), all the same length: vocals, drums, bass, music."""
    frames = _frames(seconds, sample_rate)
    name = _key("stems", f"{seconds:g}s", f"{sample_rate}hz")
    stack = _cached(name, lambda: _render_stems(seconds, sample_rate))
    if stack.shape != (len(STEM_NAMES), 2, frames):
        raise MaterialError(f"cached {name} has shape {stack.shape}; delete it and render again")
    return {stem: stack[i] for i, stem in enumerate(STEM_NAMES)}


def mix(parts: dict[str, np.ndarray] | Sequence[np.ndarray]) -> np.ndarray:
    """The mixture is the plain sum of its stems: what makes them exact ground truth."""
    arrays = list(parts.values()) if isinstance(parts, dict) else list(parts)
    return np.sum(np.stack(arrays), axis=0, dtype=np.float32)


# --- event scene --------------------------------------------------------------------------------

EVENT_SAMPLE = "elec_chime"
EVENT_REL_RMS_DB = -3.0  # event level while it sounds, relative to the background's RMS


def _event(name: str, sample_rate: int) -> np.ndarray:
    """The one-shot as stereo, cut where it has decayed 35 dB (at most 1 s) with a 0.1 s fade.

    A definite end makes the spans exact: outside them the target is exactly zero.
    """
    audio = _read(sample_path(name), sample_rate)
    mono = audio.mean(axis=0)
    hop = max(1, sample_rate // 100)
    env = np.sqrt(np.convolve(np.square(mono), np.ones(hop) / hop, mode="same"))
    above = np.flatnonzero(env > env.max() * 10 ** (-35 / 20))
    length = min(int(above[-1]) + 1, round(1.0 * sample_rate))
    start = int(np.flatnonzero(np.abs(mono) > np.abs(mono).max() * 1e-3)[0])
    audio = audio[:, start:length]
    fade = min(audio.shape[1] // 2, round(0.1 * sample_rate))
    audio[:, audio.shape[1] - fade :] *= np.cos(np.linspace(0, np.pi / 2, fade, dtype=np.float32)) ** 2
    return audio if audio.shape[0] == 2 else _pan(audio[0], 0.15)


def _event_starts(seconds: float, length_s: float) -> list[float]:
    """Starts spread over the clip at uneven intervals, with over half a second of background between.

    One per 3.5 s (at least two), each early in its own slot, so none overlap or run off the end.
    """
    count = max(2, int(seconds // 3.5))
    slot = seconds / count
    if slot < length_s + 1.0:
        raise ValueError(f"{seconds} s is too short for a {length_s:.2f} s event to recur with gaps")
    offsets = (0.15, 0.4, 0.25, 0.55, 0.1, 0.35, 0.5, 0.2)
    starts = []
    for i in range(count):
        start = i * slot + offsets[i % len(offsets)] * max(0.0, slot - length_s)
        starts.append(round(start, 3))
    return starts


def event_scene(
    seconds: float = 20.0, sample_rate: int = 44100, event: str = EVENT_SAMPLE
) -> tuple[np.ndarray, np.ndarray, list[tuple[float, float]]]:
    """A recurring sound event over music + bass, for `+`/`-` span prompts.

    Returns (mix, target, spans): target is the event-only stem (2, frames), mix = background +
    target, and spans lists (start, end) seconds of every occurrence. Pass one of them as a `+` span
    and expect all of them back; `background_span(spans, seconds)` gives a `-` span.
    """
    frames = _frames(seconds, sample_rate)
    parts = stems(seconds, sample_rate)
    background = parts["music"] + parts["bass"]
    hit = _event(event, sample_rate)
    length_s = hit.shape[1] / sample_rate
    starts = _event_starts(seconds, length_s)

    def render() -> np.ndarray:
        target = np.zeros((2, frames), np.float32)
        for start in starts:
            first = round(start * sample_rate)
            end = min(frames, first + hit.shape[1])
            target[:, first:end] += hit[:, : end - first]
        active = np.zeros(frames, bool)
        for start in starts:
            active[round(start * sample_rate) : round((start + length_s) * sample_rate)] = True
        gain_db = _rms_db(background) + EVENT_REL_RMS_DB - _rms_db(target[:, active])
        return (target * np.float32(10 ** (gain_db / 20))).astype(np.float32)

    target = _cached(_key("event", event, f"{seconds:g}s", f"{sample_rate}hz"), render)
    # Ends round up to the millisecond so each span covers its whole occurrence at any sample rate.
    spans = [(start, float(np.ceil((start + length_s) * 1000) / 1000)) for start in starts]
    return mix([background, target]), target, spans


def background_span(
    spans: Sequence[tuple[float, float]], seconds: float, margin: float = 0.25
) -> tuple[float, float]:
    """The longest stretch with no event (less `margin` each side): a `-` span of background only."""
    edges = [0.0, *[t for span in sorted(spans) for t in span], seconds]
    gaps = [(edges[i] + margin, edges[i + 1] - margin) for i in range(0, len(edges), 2)]
    start, end = max(gaps, key=lambda gap: gap[1] - gap[0])
    if end - start <= 0:
        raise ValueError(f"no event-free stretch longer than {2 * margin} s in {spans}")
    return round(start, 3), round(end, 3)


# --- alignment ----------------------------------------------------------------------------------


def click_track(
    frames: int, sample_rate: int, channels: int, click_at: float, noise_dbfs: float | None = None
) -> np.ndarray:
    """(channels, frames) float32 with one full-scale-ish sample at `click_at` seconds, else silence.

    A single nonzero sample makes any shift, drop or duplication of samples visible exactly.
    `noise_dbfs` adds seeded white noise at that RMS level, for code paths that treat silence specially.
    """
    index = round(click_at * sample_rate)
    if not 0 <= index < frames:
        raise ValueError(f"click at {click_at} s (frame {index}) is outside {frames} frames")
    out = np.zeros((channels, frames), np.float32)
    if noise_dbfs is not None:
        rng = np.random.default_rng(20240601)
        out += (rng.standard_normal((channels, frames)) * 10 ** (noise_dbfs / 20)).astype(np.float32)
    out[:, index] = 0.5
    return out


def main() -> None:
    """Render everything and print levels, for checking the material by hand."""
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 20.0
    rate = int(sys.argv[2]) if len(sys.argv) > 2 else 44100
    print(f"cache: {cache_dir()}")
    began = time.perf_counter()
    parts = stems(seconds, rate)
    print(f"stems: {time.perf_counter() - began:.2f} s")
    for name, audio in [*parts.items(), ("mix", mix(parts))]:
        peak = 20 * np.log10(float(np.abs(audio).max()) + 1e-20)
        level = f"peak {peak:6.1f} dBFS  rms {_rms_db(audio):6.1f} dBFS"
        print(f"  {name:7s} {audio.shape[1] / rate:6.2f} s  {level}")
    began = time.perf_counter()
    scene, target, spans = event_scene(seconds, rate)
    print(f"event scene ({EVENT_SAMPLE}): {time.perf_counter() - began:.2f} s")
    print(f"  mix peak {20 * np.log10(float(np.abs(scene).max())):.1f} dBFS, spans {spans}")
    print(f"  background-only span {background_span(spans, seconds)}")
    out = cache_dir() / "listen"
    out.mkdir(exist_ok=True)
    for name, audio in [*parts.items(), ("mix", mix(parts)), ("event_mix", scene), ("event", target)]:
        sf.write(out / f"{name}.wav", audio.T, rate, subtype="FLOAT")
    print(f"wavs for listening: {out}")


if __name__ == "__main__":
    main()
