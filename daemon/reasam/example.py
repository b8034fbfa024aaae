"""A short generated song, so a fresh install can show a separation without any download.

Pure numpy: drums (kick, snare, hats), a bass line, pad chords and a sung-vowel "voice" made of
a harmonic source shaped by vowel formants with vibrato. It is not music to listen to, but it
has the parts the embedded engines look for, and it is the same bytes on every machine.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.signal import lfilter

from .audio import write_audio

RATE = 44100
BPM = 100.0
# Vowel formants (Hz) and bandwidths, a classic textbook table for a male voice.
_VOWELS = {
    "a": ((730, 1090, 2440), (90, 110, 160)),
    "o": ((570, 840, 2410), (80, 100, 160)),
    "e": ((530, 1840, 2480), (70, 100, 160)),
    "i": ((270, 2290, 3010), (60, 90, 160)),
}


def _resonator(x: np.ndarray, freq: float, bandwidth: float) -> np.ndarray:
    r = np.exp(-np.pi * bandwidth / RATE)
    a = [1.0, -2 * r * np.cos(2 * np.pi * freq / RATE), r * r]
    return lfilter([1 - r], a, x)


def _voice(seconds: float, rng: np.random.Generator) -> np.ndarray:
    n = int(seconds * RATE)
    out = np.zeros(n)
    melody = [55, 57, 59, 62, 59, 57, 55, 52]  # MIDI notes
    beat = 60.0 / BPM
    t0 = 0.0
    i = 0
    while t0 < seconds:
        length = beat * (2 if i % 3 else 1)
        note = melody[i % len(melody)]
        vowel = "aoei"[i % 4]
        m = min(int(length * 0.9 * RATE), n - int(t0 * RATE))
        if m <= 0:
            break
        t = np.arange(m) / RATE
        f0 = 440.0 * 2 ** ((note - 69) / 12) * (1 + 0.01 * np.sin(2 * np.pi * 5.5 * t))
        phase = 2 * np.pi * np.cumsum(f0) / RATE
        source = sum(np.sin(k * phase) / k for k in range(1, 30)) + 0.02 * rng.standard_normal(m)
        formants, bands = _VOWELS[vowel]
        shaped = sum(
            _resonator(source, f, b) * g for f, b, g in zip(formants, bands, (1.0, 0.6, 0.3), strict=True)
        )
        env = np.minimum(1, t / 0.05) * np.minimum(1, (t[-1] - t + 1e-3) / 0.08)
        start = int(t0 * RATE)
        out[start : start + m] += shaped * env
        t0 += length
        i += 1
    return out / (np.abs(out).max() + 1e-9)


def _drums(seconds: float, rng: np.random.Generator) -> np.ndarray:
    n = int(seconds * RATE)
    out = np.zeros(n)
    step = 60.0 / BPM / 2
    t = np.arange(int(0.4 * RATE)) / RATE
    kick = np.sin(2 * np.pi * (50 + 80 * np.exp(-t * 30)) * t) * np.exp(-t * 8)
    snare = rng.standard_normal(t.size) * np.exp(-t * 18) * 0.6
    hat = np.diff(rng.standard_normal(int(0.05 * RATE)), prepend=0) * np.exp(
        -np.arange(int(0.05 * RATE)) / 300
    )
    k = 0
    while k * step < seconds:
        pos = int(k * step * RATE)
        for hit, on in ((kick, k % 4 == 0), (snare, k % 4 == 2), (hat * 0.3, True)):
            if on:
                m = min(hit.size, n - pos)
                out[pos : pos + m] += hit[:m]
        k += 1
    return out / (np.abs(out).max() + 1e-9)


def _tones(seconds: float, notes: list[list[int]], harmonics: int, decay: float) -> np.ndarray:
    n = int(seconds * RATE)
    out = np.zeros(n)
    bar = 4 * 60.0 / BPM
    for b in range(int(np.ceil(seconds / bar))):
        start = int(b * bar * RATE)
        m = min(int(bar * RATE), n - start)
        t = np.arange(m) / RATE
        for note in notes[b % len(notes)]:
            f = 440.0 * 2 ** ((note - 69) / 12)
            out[start : start + m] += sum(
                np.sin(2 * np.pi * f * h * t) / h**1.5 for h in range(1, harmonics + 1)
            ) * np.exp(-t * decay)
    return out / (np.abs(out).max() + 1e-9)


def song(seconds: float = 12.0, seed: int = 7) -> dict[str, np.ndarray]:
    """The parts as stereo (2, frames) float32 arrays at 44.1 kHz, panned apart."""
    rng = np.random.default_rng(seed)
    parts = {
        "vocals": (_voice(seconds, rng) * 0.35, 0.0),
        "drums": (_drums(seconds, rng) * 0.35, 0.15),
        "bass": (_tones(seconds, [[36], [41], [43], [38]], 6, 0.6) * 0.3, -0.1),
        "pad": (
            _tones(seconds, [[60, 64, 67], [65, 69, 72], [67, 71, 74], [62, 65, 69]], 4, 0.3) * 0.2,
            -0.4,
        ),
    }
    out = {}
    for name, (mono, pan) in parts.items():
        left, right = np.cos((pan + 1) * np.pi / 4), np.sin((pan + 1) * np.pi / 4)
        out[name] = np.stack([mono * left, mono * right]).astype(np.float32)
    return out


def write_example(path: Path, seconds: float = 12.0) -> None:
    """Write the mixed song as a 24-bit stereo WAV (never over an existing file)."""
    mix = sum(song(seconds).values())
    path.parent.mkdir(parents=True, exist_ok=True)
    write_audio(path, mix * (0.89 / np.abs(mix).max()), RATE, "wav", 24)
