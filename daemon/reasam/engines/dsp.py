"""Classic separation without weights: harmonic/percussive split and span templates.

Two methods, numpy/scipy only, any sample rate and any channel count:

* ``drums`` / ``harmonic``: median-filter HPSS (FitzGerald 2010) on the STFT magnitude. A
  harmonic sound is smooth along time, a percussive one along frequency, so a running median
  along each axis estimates each part; soft Wiener-style masks ``P^p / (P^p + H^p)`` then split
  the complex STFT. The target is the percussive part for ``drums``, the harmonic for
  ``harmonic``. Long time medians (1.3 s) measured far better than the textbook 0.2 s: a note
  has to outlast half the kernel to count as harmonic, and sustained accompaniment does.
* spans: a template separator (supervised KL-NMF). Background bases are learnt from the ``-``
  spans plus a little context next to each ``+`` span, with context frames that look like the
  target dropped first (a recurring sound may sound again next to the span, and bases learnt
  from it would explain the target away). Target bases are learnt from the ``+`` spans with the
  background bases held fixed, so the background under the ``+`` span is explained by the
  background and not absorbed into the target. Each chunk is then decomposed with the target
  bases fixed, the background bases adapting from where they were learnt, and free components
  for sounds never seen, and the soft mask ``T^p / (T^p + B^p)`` is applied. Frames inside a
  ``-`` span get no target at all: the user said it is absent there. The request's text, if
  any, only names the target, and the job's manifest `notes` say so (text_ignored_note).

One mask is computed from the channel-mean magnitude and applied to every channel, so the
target keeps the mix's image and any channel count costs about one channel. Everything is
deterministic (fixed seeds).

Quality presets (cost grows fast < balanced < best; windows round to a power of two):

==================================  ============  ============  ============
setting                             fast          balanced      best
==================================  ============  ============  ============
HPSS window / time median           46 ms / 0.9 s 93 ms / 1.3 s 93 ms / 1.8 s
span window                         46 ms         46 ms         46 ms
span NMF bands per octave           12            24            48
target / background / free comps    5 / 16 / 8    5 / 24 / 16   5 / 32 / 24
learn / per-chunk iterations        40 / 20       80 / 30       150 / 60
==================================  ============  ============  ============

SI-SDR gains measured with these (tests/material.py, 20 s at 44.1 kHz; fast/balanced/best):
drums from drums+music +10.7/+13.2/+14.1 dB; harmonic from drums+music +10.7/+13.1/+14.1 dB;
a recurring event from one ``+`` span +19.8/+21.2/+22.9 dB. tests/test_dsp.py guards floors a
few dB below these.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.fft
from numpy.lib.stride_tricks import sliding_window_view
from scipy import ndimage

from ..errors import ReasamError
from ..request import Span
from .base import Capabilities, Checkpoint, Engine, Prompt, Separation, SpanFetcher, no_checkpoint

_EPS = 1e-10


@dataclass(frozen=True)
class Settings:
    """Every tunable of both methods; a quality preset is one instance."""

    hop_div: int = 4  # hop = window / hop_div; windows round to a power of two at the rate
    # HPSS
    hpss_window_s: float = 0.093
    harm_kernel_s: float = 1.3  # median length along time
    perc_kernel_hz: float = 350.0  # median length along frequency
    hpss_power: float = 3.0  # soft-mask exponent
    # Span template (NMF, KL divergence)
    span_window_s: float = 0.046
    bands_per_octave: int = 24  # NMF on bands this narrow (never below one bin); 0 = every bin
    target_components: int = 5
    background_components: int = 24
    free_components: int = 16
    learn_iterations: int = 80
    chunk_iterations: int = 30
    mask_power: float = 2.0
    max_positive_s: float = 20.0  # at most this much + span audio is learnt from
    max_negative_s: float = 60.0  # at most this much - span / context audio
    # Context each side of a + span, learnt as background even when - spans are given: it holds
    # the chords around the target, which - spans elsewhere may miss (measured +10 dB on the
    # event scene of tests/material.py, whose - span holds other chords than the + span).
    context_s: float = 2.0
    context_reject: float = 0.4  # a context frame is taken as target above this score (0 = never)
    context_outlier: float = 8.0  # and above median + this * scaled median absolute deviation
    context_guard_s: float = 0.1  # its neighbours within this go with it


_PRESETS: dict[str, Settings] = {
    "fast": Settings(
        hpss_window_s=0.046,
        harm_kernel_s=0.9,
        bands_per_octave=12,
        background_components=16,
        free_components=8,
        learn_iterations=40,
        chunk_iterations=20,
    ),
    "balanced": Settings(),
    "best": Settings(
        harm_kernel_s=1.8,
        bands_per_octave=48,
        background_components=32,
        free_components=24,
        learn_iterations=150,
        chunk_iterations=60,
    ),
}

_PROMPTS = {
    "drums": ("drum", "percussion", "percussive", "beat", "drum kit"),
    "harmonic": ("tonal", "pitched", "melodic", "harmonics"),
}


def settings_for(quality: str) -> Settings:
    """The preset for a quality name (validated by the request)."""
    return _PRESETS[quality]


# --- STFT with exact reconstruction -------------------------------------------------------


class _Stft:
    """Hann STFT whose inverse returns exactly the input length.

    The signal is zero-padded by half a window at the front and up to whole frames at the back,
    so every input sample lies under several frames and the overlap-add normalisation by the
    summed squared window never divides by a small number.
    """

    def __init__(self, sample_rate: int, window_s: float, hop_div: int) -> None:
        n_fft = 2 ** max(6, round(np.log2(window_s * sample_rate)))
        self.n_fft = n_fft
        self.hop = n_fft // hop_div
        self.window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)).astype(np.float32)
        self.sample_rate = sample_rate

    def frames_for(self, n: int) -> int:
        return 1 + -(-(n + self.n_fft // 2) // self.hop)

    def forward(self, audio: np.ndarray) -> np.ndarray:
        """(channels, n) -> (channels, bins, frames) complex64."""
        channels, n = audio.shape
        n_frames = self.frames_for(n)
        padded = np.zeros((channels, self.n_fft + (n_frames - 1) * self.hop), np.float32)
        padded[:, self.n_fft // 2 : self.n_fft // 2 + n] = audio
        frames = sliding_window_view(padded, self.n_fft, axis=-1)[:, :: self.hop] * self.window
        spec = scipy.fft.rfft(frames, axis=-1, workers=-1)
        return np.ascontiguousarray(spec.transpose(0, 2, 1)).astype(np.complex64, copy=False)

    def inverse(self, spec: np.ndarray, n: int) -> np.ndarray:
        """(channels, bins, frames) -> (channels, n) float32."""
        channels, _, n_frames = spec.shape
        frames = scipy.fft.irfft(spec.transpose(0, 2, 1), n=self.n_fft, axis=-1, workers=-1)
        frames = frames.astype(np.float32, copy=False) * self.window
        ratio = self.n_fft // self.hop
        blocks = frames.reshape(channels, n_frames, ratio, self.hop)
        out = np.zeros((channels, n_frames + ratio - 1, self.hop), np.float32)
        wsum = np.zeros((n_frames + ratio - 1, self.hop), np.float32)
        wblocks = (self.window**2).reshape(ratio, self.hop)
        for j in range(ratio):
            out[:, j : j + n_frames] += blocks[:, :, j]
            wsum[j : j + n_frames] += wblocks[j]
        out = out.reshape(channels, -1)
        wsum = wsum.reshape(-1)
        start = self.n_fft // 2
        return out[:, start : start + n] / np.maximum(wsum[start : start + n], 1e-6)


class _Bands:
    """Pools STFT bins into bands about 1/N octave wide (one bin where that is narrower).

    The NMF cost is linear in the number of rows; above ~1 kHz neighbouring bins carry the same
    sources, so pooling them cuts the cost several times at little loss (measured). The mask
    learnt on bands is spread back over their bins.
    """

    def __init__(self, stft: _Stft, per_octave: int) -> None:
        n_bins = stft.n_fft // 2 + 1
        if per_octave <= 0:
            starts = np.arange(n_bins)
        else:
            ratio = 2 ** (1 / per_octave) - 1
            edges = [0]
            while edges[-1] < n_bins:
                width = max(1, round(edges[-1] * ratio))
                edges.append(min(n_bins, edges[-1] + width))
            starts = np.array(edges[:-1])
        self.starts = starts
        self.sizes = np.diff(np.r_[starts, n_bins])
        self.count = len(starts)

    def pool(self, mag: np.ndarray) -> np.ndarray:
        """(bins, frames) -> (bands, frames) by summing magnitudes."""
        return np.add.reduceat(mag, self.starts, axis=0) if self.count < mag.shape[0] else mag

    def expand(self, mask: np.ndarray) -> np.ndarray:
        """(bands, frames) -> (bins, frames)."""
        return np.repeat(mask, self.sizes, axis=0) if self.count < self.sizes.sum() else mask


def _magnitude(spec: np.ndarray) -> np.ndarray:
    """Channel-mean magnitude (bins, frames): one mask for all channels keeps the image."""
    return np.abs(spec).mean(axis=0)


# --- HPSS ---------------------------------------------------------------------------------


def _median(mag: np.ndarray, size: int, axis: int, checkpoint: Checkpoint = no_checkpoint) -> np.ndarray:
    """Running median of odd length `size` along `axis` of a 2-D array, edges mirrored.

    np.partition over a strided window view, in row blocks to bound memory: about eight times
    faster than scipy.ndimage.median_filter for the long time kernels HPSS wants here. The
    checkpoint runs between blocks (a few ms each), so a cancel never waits for a whole chunk.
    """
    data = mag if axis == 1 else mag.T
    half = size // 2
    padded = np.pad(data, ((0, 0), (half, half)), mode="reflect")
    out = np.empty(data.shape, data.dtype)
    block = max(1, 2_000_000 // max(1, data.shape[1] * size))
    for row in range(0, data.shape[0], block):
        checkpoint()
        window = sliding_window_view(padded[row : row + block], size, axis=1)
        out[row : row + block] = np.partition(window, half, axis=-1)[..., half]
    return out if axis == 1 else out.T


def _hpss_mask(
    mag: np.ndarray, stft: _Stft, settings: Settings, percussive: bool, checkpoint: Checkpoint = no_checkpoint
) -> np.ndarray:
    """Soft mask (bins, frames) for the percussive or the harmonic part of `mag`."""
    frames_per_s = stft.sample_rate / stft.hop
    hz_per_bin = stft.sample_rate / stft.n_fft
    kt = max(3, round(settings.harm_kernel_s * frames_per_s) | 1)
    kf = max(3, round(settings.perc_kernel_hz / hz_per_bin) | 1)
    harm = _median(mag, kt, axis=1, checkpoint=checkpoint)
    perc = _median(mag, kf, axis=0, checkpoint=checkpoint)
    p = settings.hpss_power
    num, other = (perc, harm) if percussive else (harm, perc)
    num = num**p
    return num / (num + other**p + _EPS)


class _HpssSeparation(Separation):
    """The percussive (``drums``) or harmonic part of each chunk."""

    def __init__(
        self, percussive: bool, settings: Settings, sample_rate: int, checkpoint: Checkpoint = no_checkpoint
    ) -> None:
        self.percussive = percussive
        self.checkpoint = checkpoint
        self.settings = settings
        self.stft = _Stft(sample_rate, settings.hpss_window_s, settings.hop_div)

    def separate(self, audio: np.ndarray, start: float) -> np.ndarray:
        audio = np.asarray(audio, np.float32)
        if audio.shape[-1] == 0:
            return audio.copy()
        spec = self.stft.forward(audio)
        mask = _hpss_mask(_magnitude(spec), self.stft, self.settings, self.percussive, self.checkpoint)
        return self.stft.inverse(spec * mask, audio.shape[-1])


# --- NMF ------------------------------------------------------------------------------------


def _kl_ratio(v: np.ndarray, w: np.ndarray, h: np.ndarray, out: np.ndarray) -> None:
    """out = V / (WH), in place: the one full-size temporary of each update."""
    np.matmul(w, h, out=out)
    out += _EPS
    np.divide(v, out, out=out)


def _kl_nmf(
    v: np.ndarray,
    w: np.ndarray,
    h: np.ndarray,
    iterations: int,
    update_w: np.ndarray | None,
    checkpoint: Checkpoint = no_checkpoint,
) -> tuple[np.ndarray, np.ndarray]:
    """KL-divergence NMF by multiplicative updates (H, then W, each from a fresh model).

    `update_w` is a boolean per component: False keeps that basis fixed (the target template),
    True lets it adapt from where it starts (learnt background bases, free components).
    `checkpoint` runs before every iteration.
    """
    w = w.astype(np.float32, copy=True)
    h = h.astype(np.float32, copy=True)
    v = v.astype(np.float32, copy=False)
    learn = update_w is not None and bool(update_w.any())
    ratio = np.empty_like(v)
    for _ in range(iterations):
        checkpoint()
        _kl_ratio(v, w, h, ratio)
        h *= (w.T @ ratio) / (w.sum(axis=0)[:, None] + _EPS)
        if learn:
            _kl_ratio(v, w, h, ratio)
            step = (ratio @ h.T) / (h.sum(axis=1)[None, :] + _EPS)
            w = np.where(update_w[None, :], w * step, w)
            scale = np.where(update_w, w.sum(axis=0) + _EPS, 1.0).astype(np.float32)
            w /= scale[None, :]
            h *= scale[:, None]
    return w, h


def _init(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    return (rng.random((rows, cols)) + 0.1).astype(np.float32)


def _learn_bases(
    v: np.ndarray, k: int, iterations: int, rng: np.random.Generator, checkpoint: Checkpoint = no_checkpoint
) -> np.ndarray:
    w = _init(rng, v.shape[0], k)
    w /= w.sum(axis=0)
    h = _init(rng, k, v.shape[1]) * float(v.mean() + _EPS)
    w, _ = _kl_nmf(v, w, h, iterations, np.ones(k, bool), checkpoint)
    return w


def _active_frames(v: np.ndarray, floor_db: float = -60.0) -> np.ndarray:
    """Drop near-silent frames: they teach nothing and cost iterations."""
    if v.shape[1] == 0:
        return v
    energy = v.sum(axis=0)
    keep = energy > energy.max() * 10 ** (floor_db / 20)
    return v[:, keep]


def _intervals_minus(lo: float, hi: float, holes: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """[lo, hi) with every hole removed, as sorted intervals."""
    pieces = [(lo, hi)]
    for a, b in holes:
        pieces = [p for x, y in pieces for p in ((x, min(y, a)), (max(x, b), y)) if p[1] > p[0]]
    return pieces


class _SpanSeparation(Separation):
    """Soft NMF mask from a target template learnt on + spans against a learnt background."""

    def __init__(
        self,
        settings: Settings,
        sample_rate: int,
        target: np.ndarray,
        background: np.ndarray,
        negative: tuple[Span, ...],
        checkpoint: Checkpoint = no_checkpoint,
    ) -> None:
        self.settings = settings
        self.checkpoint = checkpoint
        self.stft = _Stft(sample_rate, settings.span_window_s, settings.hop_div)
        self.bands = _Bands(self.stft, settings.bands_per_octave)
        self.target = target
        self.background = background
        self.negative = negative

    def separate(self, audio: np.ndarray, start: float) -> np.ndarray:
        audio = np.asarray(audio, np.float32)
        if audio.shape[-1] == 0:
            return audio.copy()
        spec = self.stft.forward(audio)
        mask = self.bands.expand(self.mask(self.bands.pool(_magnitude(spec)), start))
        return self.stft.inverse(spec * mask, audio.shape[-1])

    def mask(self, v: np.ndarray, start: float) -> np.ndarray:
        """The soft target mask on bands (bands, frames) for pooled magnitudes `v`."""
        s = self.settings
        rng = np.random.default_rng(0)
        kt, kb, kf = self.target.shape[1], self.background.shape[1], s.free_components
        free = _init(rng, v.shape[0], kf)
        free /= free.sum(axis=0)
        w = np.concatenate([self.target, self.background, free], axis=1)
        h = _init(rng, w.shape[1], v.shape[1]) * float(v.mean() + _EPS)
        update = np.r_[np.zeros(kt, bool), np.ones(kb + kf, bool)]
        w, h = _kl_nmf(v, w, h, s.chunk_iterations, update, self.checkpoint)
        p = s.mask_power
        tgt = (w[:, :kt] @ h[:kt]) ** p
        bg = (w[:, kt:] @ h[kt:]) ** p
        mask = tgt / (tgt + bg + _EPS)
        if self.negative:
            times = (
                start + (np.arange(v.shape[1]) * self.stft.hop - self.stft.n_fft // 2) / self.stft.sample_rate
            )
            absent = np.zeros(v.shape[1], bool)
            for span in self.negative:
                absent |= (times >= span.start) & (times < span.end)
            mask[:, absent] = 0.0
        return mask.astype(np.float32)


def _drop_target_like(context: np.ndarray, pos: np.ndarray, settings: Settings, stft: _Stft) -> np.ndarray:
    """Context frames (bands, frames) less those that look like they hold the target.

    Context next to a + span is only probably free of the target: a recurring sound may sound
    again there, or ring past the span's end, and background bases learnt from it would then
    explain the target away. The target's excess spectrum E is what the + span has above the
    context's median; a context frame whose own excess over that median projects onto E by more
    than `context_reject` of |E|^2, and is an outlier among the context's frames, is dropped
    with its neighbours. Measured: without this a + span whose context catches the next
    occurrence lost 20-30 dB; with a plain threshold a weak target (an 8 kHz copy of a bright
    chime) dropped the background frames that resemble the + span's and lost 10 dB.
    """
    if context.shape[1] == 0 or pos.shape[1] == 0 or settings.context_reject <= 0:
        return context
    median = np.median(context, axis=1)
    excess = np.maximum(pos.mean(axis=1) - median, 0.0)
    norm = float(excess @ excess)
    if norm <= 0:
        return context
    score = (excess @ np.maximum(context - median[:, None], 0.0)) / norm
    # Only outliers count: when the target is weak in the + span, E is mostly background that
    # differs from the context's median, and many clean frames score high (measured at 8 kHz).
    centre = float(np.median(score))
    spread = 1.4826 * float(np.median(np.abs(score - centre)))  # robust to contamination itself
    limit = max(settings.context_reject, centre + settings.context_outlier * spread)
    hit = (score > limit).astype(np.float32)
    guard = max(1, round(settings.context_guard_s * stft.sample_rate / stft.hop))
    near = ndimage.maximum_filter1d(hit, 2 * guard + 1, mode="nearest") > 0
    return context[:, ~near]


def _learn_span_model(
    spans: tuple[Span, ...],
    fetch_span: SpanFetcher,
    settings: Settings,
    sample_rate: int,
    checkpoint: Checkpoint = no_checkpoint,
) -> tuple[np.ndarray, np.ndarray]:
    """Target and background bases (bands, components) from the spans of a prompt."""
    stft = _Stft(sample_rate, settings.span_window_s, settings.hop_div)
    bands = _Bands(stft, settings.bands_per_octave)
    rng = np.random.default_rng(0)
    positive = [s for s in spans if s.positive]
    negative = [s for s in spans if not s.positive]

    def spectra(ranges: list[Span], budget: float, optional: bool = False) -> np.ndarray:
        """Pooled magnitudes of the spans' audio, at most `budget` seconds of it.

        `optional` ranges (context the engine chose, not the user) are skipped if unreadable.
        """
        parts = []
        for span in ranges:
            if budget <= 0:
                break
            try:
                audio = np.asarray(
                    fetch_span(Span(span.sign, span.start, min(span.end, span.start + budget)))
                )
            except ReasamError:
                if not optional:
                    raise
                continue
            if audio.ndim != 2 or audio.shape[-1] < stft.n_fft:
                continue
            budget -= audio.shape[-1] / sample_rate
            parts.append(bands.pool(_magnitude(stft.forward(audio.astype(np.float32, copy=False)))))
        if not parts:
            return np.zeros((bands.count, 0), np.float32)
        return _active_frames(np.concatenate(parts, axis=1))

    pos = spectra(positive, settings.max_positive_s)
    if pos.shape[1] == 0:
        raise ReasamError("bad_request", "the + spans hold no audio to learn the target from")
    neg = spectra(negative, settings.max_negative_s)
    holes = sorted((s.start, s.end) for s in positive)
    ranges = []
    for s in positive:
        ranges += _intervals_minus(max(0.0, s.start - settings.context_s), s.start, holes)
        ranges += _intervals_minus(s.end, s.end + settings.context_s, holes)
    context = spectra(
        [Span("-", a, b) for a, b in ranges],
        settings.max_negative_s - neg.shape[1] * stft.hop / sample_rate,
        optional=True,
    )
    neg = np.concatenate([neg, _drop_target_like(context, pos, settings, stft)], axis=1)

    kb = settings.background_components if neg.shape[1] >= settings.background_components else 0
    background = (
        _learn_bases(neg, kb, settings.learn_iterations, rng, checkpoint)
        if kb
        else np.zeros((pos.shape[0], 0), np.float32)
    )
    kt = settings.target_components
    wt = _init(rng, pos.shape[0], kt)
    wt /= wt.sum(axis=0)
    w = np.concatenate([wt, background], axis=1)
    h = _init(rng, w.shape[1], pos.shape[1]) * float(pos.mean() + _EPS)
    update = np.r_[np.ones(kt, bool), np.zeros(kb, bool)]
    w, _ = _kl_nmf(pos, w, h, settings.learn_iterations, update, checkpoint)
    return w[:, :kt], background


def text_ignored_note(text: str) -> str:
    """What a job's manifest `notes` (and `reasam separate` on stderr) say when a text came with
    spans: the templates are learnt from the spans alone, so the text did not steer the result."""
    return (
        f"the text {text!r} only names the stem: the dsp engine separates by the spans alone; "
        "text and spans together steer only the sam engine (SAM-Audio)"
    )


class DspEngine(Engine):
    """HPSS for drums/harmonic prompts and NMF templates for span prompts; no weights."""

    capabilities = Capabilities(
        name="dsp",
        description="classic DSP, no weights: harmonic/percussive split and span templates",
        prompts=_PROMPTS,
        free_text=False,
        spans=True,
        sample_rate=None,
        channels=None,
        max_seconds=24 * 3600.0,
        chunk_seconds=30.0,
        overlap_seconds=1.0,
    )

    def understands(self, text: str, spans: tuple[Span, ...]) -> bool:
        """Spans with a + are always understood (the text then only names the target)."""
        if any(s.positive for s in spans):
            return True
        return bool(text) and not spans and self.canonical_prompt(text) is not None

    def prepare(
        self,
        prompt: Prompt,
        quality: str,
        fetch_span: SpanFetcher,
        sample_rate: int,
        checkpoint: Checkpoint = no_checkpoint,
    ) -> Separation:
        """Learn span templates, or set up HPSS."""
        settings = settings_for(quality)
        rate = sample_rate
        if any(s.positive for s in prompt.spans):
            target, background = _learn_span_model(prompt.spans, fetch_span, settings, rate, checkpoint)
            negative = tuple(s for s in prompt.spans if not s.positive)
            separation = _SpanSeparation(settings, rate, target, background, negative, checkpoint)
            if prompt.text:
                separation.notes = (text_ignored_note(prompt.text),)
            return separation
        canonical = self.canonical_prompt(prompt.text)
        if canonical is None:
            raise ReasamError(
                "unsupported_prompt",
                f"engine dsp does not understand {prompt.text!r}; prompts: drums, harmonic, or + spans",
            )
        return _HpssSeparation(canonical == "drums", settings, rate, checkpoint)
