"""Per-stem finishing over blocks: noise gate, silence trim, peak or loudness normalisation.

All of it is off by default (see `request.PostProcess`): any of it breaks target + residual == mix.
The pipeline applies it after a stem is written, by reading the finished float32 stem again in
blocks. Stems can run past an hour, so nothing here holds more than one block plus a fixed amount
of state: filters carry their state across blocks and loudness is gathered in a fixed histogram.

The chain is gate -> trim -> gain, and every decision is taken on what the chain will output:

* the gate (`gate_db`) runs first, from the stem's first frame, with state carried across blocks;
* the trim (`trim_silence_db`) looks at the gated signal, so a lead-in the gate silences is cut too;
* the gain (`peak_dbfs`, `lufs`) is measured on the gated, trimmed signal, so re-measuring the
  written file gives the target back, not a figure for audio that is no longer there.

That takes up to two analysis passes before the processing pass: one to find where to trim (the
end of a stem is only known at its end) and one to measure the trimmed signal. A stem is read
2-3 times; the reads are cheap next to the separation that made it. The gate is deterministic, so
every pass that runs it sees the same gated signal. Both thresholds are in dBFS of the stem as
separated, before any gain; the gain is one constant factor, applied last.

Usage (`run` does exactly this)::

    proc = PostProcessor(options, sample_rate, channels)
    while proc.needs_analysis:
        for block in read_blocks():      # the whole stem, from its first frame
            proc.analyze(block)
        proc.end_pass()
    for block in read_blocks():          # the whole stem again
        write(proc.process(block))       # only kept frames come back; may be empty
    manifest["post"] = proc.report()
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from itertools import pairwise

import numpy as np
from scipy.signal import lfilter, sosfilt

from .request import PostProcess

# Level follower shared by gate and trim: a one-pole average of the frame power (the largest
# channel's x²). 2 ms is short enough to place a cut within a few ms and long enough that a
# noise floor does not flicker across a threshold. An IIR average, not a sliding window sum,
# because a running sum loses the precision to see -120 dBFS right after a full-scale passage.
ENVELOPE_S = 0.002

# Trim: keep this much before the first and after the last sample over the threshold, so a
# soft onset or decay that starts just under the threshold is not cut off abruptly.
TRIM_MARGIN_S = 0.005
# Trim: when the level first crosses the threshold, the sound began at most this long before
# (the follower lags by a few time constants for onsets near the threshold).
TRIM_LOOKBACK_S = 0.010

# Gate ballistics. No lookahead, so that processing returns each block at once with no latency;
# the price is that the first ~2 ms of an onset are ramped in (opening time constant 0.5 ms).
# Hold bridges the dips of low notes and short pauses; release falls the full range in ~185 ms
# (time constant 20 ms), slow enough not to click, fast enough to catch the floor in a gap.
GATE_ATTACK_S = 0.0005
GATE_HOLD_S = 0.050
GATE_RELEASE_S = 0.020
# How far a closed gate attenuates: -80 dB puts a -50 dBFS floor below 24-bit resolution
# without the hard zero that makes a closed gate sound dead.
GATE_RANGE_DB = 80.0

# ITU-R BS.1770-4.
LOUDNESS_OFFSET = -0.691
ABSOLUTE_GATE_LUFS = -70.0
RELATIVE_GATE_LU = -10.0
SURROUND_WEIGHT = 1.41
# Loudness histogram: gating blocks are binned by loudness (0.01 LU bins, -70..+30 LUFS, the
# top bin open-ended) with their exact energy summed per bin. Only the relative gate reads the
# bins, so the result is exact except for blocks within 0.01 LU of that gate.
_BIN_LU = 0.01
_TOP_LUFS = 30.0


def _db(value: float) -> float | None:
    """Amplitude ratio to dB; None for silence so that reports stay valid JSON (no -inf)."""
    return 20.0 * math.log10(value) if value > 0 else None


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def k_weighting(sample_rate: int) -> np.ndarray:
    """BS.1770 K-weighting as second-order sections: a +4 dB high shelf (head effects) then a
    38 Hz high-pass (RLB curve).

    Designed for any rate from the analogue prototypes with the RBJ cookbook biquads, as
    pyloudnorm does, rather than hard-coding the standard's 48 kHz coefficients; at 48 kHz the two
    agree to well under 0.01 dB across the audio band.
    """
    # High shelf: gain 4 dB, corner 1500 Hz, Q 1/sqrt(2).
    a = 10.0 ** (4.0 / 40.0)
    w0 = 2.0 * math.pi * 1500.0 / sample_rate
    cos, alpha = math.cos(w0), math.sin(w0) / (2.0 / math.sqrt(2.0))
    root = 2.0 * math.sqrt(a) * alpha
    shelf = [
        a * ((a + 1) + (a - 1) * cos + root),
        -2.0 * a * ((a - 1) + (a + 1) * cos),
        a * ((a + 1) + (a - 1) * cos - root),
        (a + 1) - (a - 1) * cos + root,
        2.0 * ((a - 1) - (a + 1) * cos),
        (a + 1) - (a - 1) * cos - root,
    ]
    # High-pass: corner 38 Hz, Q 0.5.
    w0 = 2.0 * math.pi * 38.0 / sample_rate
    cos, alpha = math.cos(w0), math.sin(w0) / (2.0 * 0.5)
    highpass = [(1 + cos) / 2, -(1 + cos), (1 + cos) / 2, 1 + alpha, -2.0 * cos, 1 - alpha]
    sos = np.array([shelf, highpass], dtype=np.float64)
    return sos / sos[:, 3:4]


def channel_weights(channels: int) -> np.ndarray:
    """BS.1770 channel weights: 1.0 each, except 5.1 (L R C LFE Ls Rs), whose LFE does not count
    and whose surrounds weigh 1.41. Only a 6-channel stem is taken to be 5.1; other layouts carry
    no channel roles here, so every channel counts once."""
    weights = np.ones(channels)
    if channels == 6:
        weights[3] = 0.0
        weights[4:6] = SURROUND_WEIGHT
    return weights


class LoudnessMeter:
    """Integrated loudness (BS.1770-4) of a signal fed in consecutive blocks of any size.

    The K-weighting filters carry their state across blocks. Energy is summed per 100 ms
    sub-block, and each 400 ms gating block (75 % overlap) is the sum of four consecutive
    sub-blocks, so the gating blocks are exactly those of a whole-signal meter. Only complete
    gating blocks count. The blocks that pass the absolute gate go into a fixed histogram, so
    memory does not grow with length; the relative gate is applied to it at the end.
    """

    def __init__(self, sample_rate: int, channels: int) -> None:
        self._rate = sample_rate
        self._sos = k_weighting(sample_rate)
        self._zi = np.zeros((self._sos.shape[0], channels, 2))
        self._weights = channel_weights(channels)
        self._frames = 0  # frames consumed
        self._sub = 0  # index of the 100 ms sub-block being filled
        self._energy = 0.0  # weighted energy gathered so far in that sub-block
        self._recent: deque[tuple[float, int]] = deque(maxlen=4)  # (energy, frames) of sub-blocks
        bins = round((_TOP_LUFS - ABSOLUTE_GATE_LUFS) / _BIN_LU) + 1
        self._bin_count = np.zeros(bins, dtype=np.int64)
        self._bin_power = np.zeros(bins)
        self.blocks = 0  # gating blocks measured, gated or not

    def add(self, block: np.ndarray) -> None:
        """Feed the next (channels, n) frames."""
        if block.shape[1] == 0:
            return
        filtered, self._zi = sosfilt(self._sos, block, axis=-1, zi=self._zi)
        power = self._weights @ (filtered * filtered)
        done = 0
        while done < power.size:
            # Integer sub-block edges: exact at any rate, and never drifting over an hour.
            edge = (self._sub + 1) * self._rate // 10
            take = min(edge - self._frames, power.size - done)
            self._energy += float(power[done : done + take].sum())
            done += take
            self._frames += take
            if self._frames == edge:
                self._recent.append((self._energy, edge - self._sub * self._rate // 10))
                self._energy = 0.0
                self._sub += 1
                if len(self._recent) == 4:
                    self._add_gating_block()

    def _add_gating_block(self) -> None:
        self.blocks += 1
        power = sum(e for e, _ in self._recent) / sum(n for _, n in self._recent)
        if power <= 0.0:
            return
        loudness = LOUDNESS_OFFSET + 10.0 * math.log10(power)
        if loudness < ABSOLUTE_GATE_LUFS:
            return
        index = min(int((loudness - ABSOLUTE_GATE_LUFS) / _BIN_LU), self._bin_count.size - 1)
        self._bin_count[index] += 1
        self._bin_power[index] += power

    def integrated(self) -> float | None:
        """Gated integrated loudness in LUFS so far; None if no block passes the absolute gate
        (silence, or less than 400 ms of signal)."""
        count = int(self._bin_count.sum())
        if count == 0:
            return None
        mean = float(self._bin_power.sum()) / count
        relative_gate = LOUDNESS_OFFSET + 10.0 * math.log10(mean) + RELATIVE_GATE_LU
        used = self._bin_count > 0
        bin_mean = np.zeros_like(self._bin_power)
        bin_mean[used] = self._bin_power[used] / self._bin_count[used]
        # A bin is kept when its blocks' mean passes the gate: only the one bin that straddles the
        # gate can hold blocks on both sides of it, and they lie within 0.01 LU of it.
        keep = used & (LOUDNESS_OFFSET + 10.0 * np.log10(np.where(used, bin_mean, 1.0)) > relative_gate)
        power = float(self._bin_power[keep].sum()) / int(self._bin_count[keep].sum())
        return LOUDNESS_OFFSET + 10.0 * math.log10(power)


class _Envelope:
    """One-pole average of the frame power (largest channel's x²), state carried across blocks."""

    def __init__(self, sample_rate: int) -> None:
        pole = math.exp(-1.0 / (ENVELOPE_S * sample_rate))
        self._b = np.array([1.0 - pole])
        self._a = np.array([1.0, -pole])
        self._zi = np.zeros(1)

    def follow(self, block: np.ndarray) -> np.ndarray:
        power = np.max(block * block, axis=0)
        envelope, self._zi = lfilter(self._b, self._a, power, zi=self._zi)
        return envelope


class _Gate:
    """Noise gate: open while the level is at or above the threshold and for the hold time after,
    closed (down by GATE_RANGE_DB) otherwise, with the gain easing between the two.

    The gain follows a one-pole ramp towards 1 (attack) while open and towards the floor
    (release) while closed. Within one open or closed stretch the ramp has a closed form, so a
    block costs a few vector operations per stretch rather than a Python loop per sample, and the
    result does not depend on where blocks begin and end. It starts closed.
    """

    def __init__(self, threshold_db: float, sample_rate: int) -> None:
        self._envelope = _Envelope(sample_rate)
        self._threshold = 10.0 ** (threshold_db / 10.0)  # in power, like the envelope
        self._hold = round(GATE_HOLD_S * sample_rate)
        self._attack = math.exp(-1.0 / (GATE_ATTACK_S * sample_rate))
        self._release = math.exp(-1.0 / (GATE_RELEASE_S * sample_rate))
        self._floor = 10.0 ** (-GATE_RANGE_DB / 20.0)
        # Samples after which a ramp is at its target to double precision: past them the ramp is
        # written as the target itself, which saves the powers on long open or closed stretches.
        self._settle = {
            pole: math.ceil(math.log(1e-18) / math.log(pole)) for pole in (self._attack, self._release)
        }
        self._gain = self._floor
        self._last_loud = -self._hold - 1  # last frame at or above the threshold
        self._frames = 0

    def __call__(self, block: np.ndarray) -> np.ndarray:
        n = block.shape[1]
        frames = np.arange(self._frames, self._frames + n)
        loud = self._envelope.follow(block) >= self._threshold
        last_loud = np.maximum.accumulate(np.where(loud, frames, self._last_loud))
        is_open = frames - last_loud <= self._hold
        gains = np.empty(n)
        edges = [0, *(np.flatnonzero(is_open[1:] != is_open[:-1]) + 1).tolist(), n]
        gain = self._gain
        for start, stop in pairwise(edges):
            target, pole = (1.0, self._attack) if is_open[start] else (self._floor, self._release)
            ramp = min(stop - start, self._settle[pole])
            steps = np.arange(1, ramp + 1, dtype=np.float64)
            gains[start : start + ramp] = target + (gain - target) * pole**steps
            gains[start + ramp : stop] = target
            gain = float(gains[stop - 1])
        self._gain = gain
        self._last_loud = int(last_loud[-1])
        self._frames += n
        return block * gains


class _TrimFinder:
    """Finds the first and last sample over the trim threshold that belong to sound.

    A sample counts when its magnitude (largest channel) reaches the threshold; it belongs to
    sound when the level follower confirms it: the first one at most TRIM_LOOKBACK_S before the
    level first reaches the threshold, and the last one at most that long after the level last
    does (the peaks of a fading sound outlast its averaged level). Isolated peaks of a floor just
    under the threshold thus do not stop the trim, and the cut still lands at the sample where
    the sound crosses the threshold, not where the averaged level does.
    """

    def __init__(self, threshold_db: float, sample_rate: int) -> None:
        self._envelope = _Envelope(sample_rate)
        self._power = 10.0 ** (threshold_db / 10.0)
        self._amplitude = 10.0 ** (threshold_db / 20.0)
        self._lookback = round(TRIM_LOOKBACK_S * sample_rate)
        self._frames = 0
        self._recent_hot = np.empty(0, dtype=np.int64)  # hot frames within the lookback
        self._last_loud: int | None = None  # last frame whose level reached the threshold
        self.first: int | None = None
        self.last: int | None = None

    def feed(self, block: np.ndarray) -> None:
        n = block.shape[1]
        envelope = self._envelope.follow(block)
        hot = np.flatnonzero(np.max(np.abs(block), axis=0) >= self._amplitude) + self._frames
        loud = np.flatnonzero(envelope >= self._power) + self._frames
        if loud.size:
            if self.first is None:
                onset = int(loud[0])
                candidates = np.concatenate([self._recent_hot, hot[hot <= onset]])
                candidates = candidates[candidates >= onset - self._lookback]
                self.first = int(candidates[0]) if candidates.size else onset
            self._last_loud = int(loud[-1])
        if self._last_loud is not None:
            confirmed = hot[hot <= self._last_loud + self._lookback]
            if confirmed.size:
                self.last = int(confirmed[-1])
            elif self.last is None:
                self.last = self._last_loud
        self._frames += n
        recent = np.concatenate([self._recent_hot, hot])
        self._recent_hot = recent[recent >= self._frames - self._lookback]


class PostProcessor:
    """Applies one stem's `PostProcess` options over blocks, in up to three passes.

    Every pass is fed the whole stem from its first frame, as consecutive (channels, n) float
    blocks of any sizes (they need not match between passes):

    * `needs_analysis` / `analyze(block)` / `end_pass()`: 0, 1 or 2 analysis passes. Trimming
      needs one to find the cut points; peak or loudness normalisation one to measure; both need
      both, in that order. A gate alone needs none.
    * `process(block)`: the output pass. Returns the processed part of the block that is kept,
      float32, possibly with no frames; concatenated, the returns are the finished stem.
    * `frame_range()`, `gain_db`, `report()`: what was decided, for the manifest.

    Normalisation: `peak_dbfs` sets the sample peak; `lufs` sets the integrated loudness. With
    both, loudness sets the gain and the peak target caps it (no limiter: the whole stem is turned
    down instead). Loudness alone may push the peak over 0 dBFS: the gain is applied all the same,
    since float output keeps it, and the report says so (`clips`). Peaks are sample peaks, not
    4x-oversampled true peaks. A silent stem gets no gain; one too quiet or short for a loudness
    reading gets no loudness gain (a peak target still caps it). The report says which happened.
    """

    def __init__(self, options: PostProcess, sample_rate: int, channels: int) -> None:
        if sample_rate <= 0 or channels <= 0:
            raise ValueError(f"need a positive rate and channel count, got {sample_rate}, {channels}")
        self.options = options
        self.sample_rate = sample_rate
        self.channels = channels
        self._passes: list[str] = []
        if options.trim_silence_db is not None:
            self._passes.append("trim")
        if options.peak_dbfs is not None or options.lufs is not None:
            self._passes.append("measure")
        self._pass = 0
        self._length: int | None = None  # stem length in frames, once a pass has seen it all
        self._start = 0
        self._end: int | None = None  # None: to the end of the stem
        self._gain_db = 0.0
        self._gain_set_by: str | None = None
        self._peak: float | None = None  # gated, trimmed, before gain
        self._lufs: float | None = None
        self._notes: list[str] = []
        self._trim_silent = False
        self._begin()

    def _begin(self) -> None:
        """Fresh per-pass state: every pass runs the gate from the first frame again."""
        self._frames = 0
        self._gate = (
            _Gate(self.options.gate_db, self.sample_rate) if self.options.gate_db is not None else None
        )
        stage = self._passes[self._pass] if self.needs_analysis else "process"
        self._trim = (
            _TrimFinder(self.options.trim_silence_db, self.sample_rate)
            if stage == "trim" and self.options.trim_silence_db is not None
            else None
        )
        self._meter = (
            LoudnessMeter(self.sample_rate, self.channels)
            if stage == "measure" and self.options.lufs is not None
            else None
        )
        self._pass_peak = 0.0

    @property
    def needs_analysis(self) -> bool:
        """Whether another analysis pass is wanted before `process`."""
        return self._pass < len(self._passes)

    @property
    def gain_db(self) -> float:
        """The gain `process` applies, in dB (0 until a measuring pass has decided it)."""
        return self._gain_db

    def _check(self, block: np.ndarray) -> np.ndarray:
        if block.ndim != 2 or block.shape[0] != self.channels:
            raise ValueError(f"expected a ({self.channels}, frames) block, got shape {block.shape}")
        return np.asarray(block, dtype=np.float64)

    def _shape(self, block: np.ndarray) -> np.ndarray:
        """Gate the block and keep the part inside the trim range (before gain)."""
        block = self._check(block)
        first = self._frames
        self._frames += block.shape[1]
        if self._gate is not None and block.shape[1]:
            block = self._gate(block)
        if self._trim is not None:
            if block.shape[1]:
                self._trim.feed(block)
            return block[:, :0]
        end = self._frames if self._end is None else self._end
        lo = min(max(self._start - first, 0), block.shape[1])
        hi = min(max(end - first, lo), block.shape[1])
        return block[:, lo:hi]

    def analyze(self, block: np.ndarray) -> None:
        """Feed the next block of the current analysis pass."""
        if not self.needs_analysis:
            raise RuntimeError("no analysis pass is pending")
        kept = self._shape(block)
        if self._meter is not None:
            self._meter.add(kept)
        if kept.shape[1]:
            self._pass_peak = max(self._pass_peak, float(np.max(np.abs(kept))))

    def end_pass(self) -> None:
        """Close the current analysis pass and take its decisions (cut points, or gain)."""
        if not self.needs_analysis:
            raise RuntimeError("no analysis pass is pending")
        if self._length is None:
            self._length = self._frames
        elif self._frames != self._length:
            raise ValueError(f"analysis passes saw {self._length} and then {self._frames} frames")
        if self._passes[self._pass] == "trim":
            self._end_trim()
        else:
            self._end_measure()
        self._pass += 1
        self._begin()

    def _end_trim(self) -> None:
        assert self._trim is not None and self._length is not None
        if self._trim.first is None or self._trim.last is None:
            # Nothing reaches the threshold. An empty file would not import as an item and would
            # hide that the stem was produced at all, so the silent stem is kept whole.
            self._trim_silent = True
            self._start, self._end = 0, self._length
            self._notes.append("nothing reaches the trim threshold: stem kept whole")
            return
        margin = round(TRIM_MARGIN_S * self.sample_rate)
        self._start = max(self._trim.first - margin, 0)
        self._end = min(self._trim.last + 1 + margin, self._length)

    def _end_measure(self) -> None:
        options = self.options
        peak = self._pass_peak
        self._peak = peak
        peak_db = _db(peak)
        gain: float | None = None
        if self._meter is not None:
            self._lufs = self._meter.integrated()
            if self._lufs is None:
                self._notes.append("too quiet or shorter than 400 ms to measure loudness: no loudness gain")
            else:
                gain, self._gain_set_by = options.lufs - self._lufs, "lufs"
        if options.peak_dbfs is not None:
            if peak_db is None:
                self._notes.append("silent: no peak gain")
            else:
                ceiling = options.peak_dbfs - peak_db
                if options.lufs is None:
                    gain, self._gain_set_by = ceiling, "peak"
                elif ceiling < (gain if gain is not None else 0.0):
                    if gain is not None:
                        self._notes.append(
                            f"loudness gain cut by {gain - ceiling:.2f} dB to keep the peak at "
                            f"{options.peak_dbfs:g} dBFS"
                        )
                    gain, self._gain_set_by = ceiling, "peak"
        self._gain_db = 0.0 if gain is None else gain
        after = self._peak_after()
        if after is not None and after > 0.0:
            self._notes.append(
                f"peak after gain is {after:+.2f} dBFS: kept in float output, integer formats will clip"
            )

    def _peak_after(self) -> float | None:
        peak_db = None if self._peak is None else _db(self._peak)
        return None if peak_db is None else peak_db + self._gain_db

    def frame_range(self) -> tuple[int, int | None]:
        """Frames of the stem that are kept, [start, end); end None means to the stem's end (no
        trim, and no pass has seen the stem's length)."""
        if self.needs_analysis:
            raise RuntimeError("analysis is not finished")
        end = self._end if self._end is not None else self._length
        return self._start, end

    def process(self, block: np.ndarray) -> np.ndarray:
        """The next block of the output pass: gated, trimmed and scaled, as float32."""
        if self.needs_analysis:
            raise RuntimeError("finish the analysis passes before processing")
        kept = self._shape(block)
        if self._gain_db:
            kept = kept * 10.0 ** (self._gain_db / 20.0)
        return kept.astype(np.float32)

    def report(self) -> dict:
        """What was measured and applied, for manifest.json (JSON-safe: no inf or NaN)."""
        options = self.options
        out: dict = {}
        if options.gate_db is not None:
            out["gate"] = {
                "threshold_db": options.gate_db,
                "attack_ms": GATE_ATTACK_S * 1000,
                "hold_ms": GATE_HOLD_S * 1000,
                "release_ms": GATE_RELEASE_S * 1000,
                "range_db": GATE_RANGE_DB,
            }
        if options.trim_silence_db is not None:
            start, end = self.frame_range()
            out["trim"] = {
                "threshold_db": options.trim_silence_db,
                "start_frame": start,
                "end_frame": end,
                "frames_in": self._length,
                "margin_ms": TRIM_MARGIN_S * 1000,
                "silent": self._trim_silent,
            }
        if options.peak_dbfs is not None or options.lufs is not None:
            measured = None if self._peak is None else _db(self._peak)
            after = self._peak_after()
            out["gain"] = {
                "peak_dbfs_target": options.peak_dbfs,
                "lufs_target": options.lufs,
                "measured_peak_dbfs": _round(measured),
                "measured_lufs": _round(self._lufs),
                "gain_db": _round(self._gain_db),
                "set_by": self._gain_set_by,
                "peak_after_dbfs": _round(after),
                "clips": after is not None and after > 0.0,
                "silent": measured is None,
            }
        if self._notes:
            out["notes"] = list(self._notes)
        return out


def run(processor: PostProcessor, read: Callable[[], Iterable[np.ndarray]]) -> Iterator[np.ndarray]:
    """Drive every pass: `read()` must return the stem's blocks from its first frame, afresh on
    each call. Yields the finished stem's blocks (empty ones skipped)."""
    while processor.needs_analysis:
        for block in read():
            processor.analyze(block)
        processor.end_pass()
    for block in read():
        out = processor.process(block)
        if out.shape[1]:
            yield out
