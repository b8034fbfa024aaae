"""Post-processing over blocks: loudness against pyloudnorm, peak and loudness targets, trim
points, gate depth, and independence from block size (stems are processed in blocks because they
can be longer than memory should hold)."""

from __future__ import annotations

import json
from itertools import pairwise

import numpy as np
import pyloudnorm
import pytest
from reasam.postprocess import (
    GATE_ATTACK_S,
    GATE_RANGE_DB,
    TRIM_MARGIN_S,
    LoudnessMeter,
    PostProcessor,
    channel_weights,
    run,
)
from reasam.request import PostProcess


def _blocks(x: np.ndarray, size: int):
    """A reader as the pipeline has one: the stem's blocks from the first frame, afresh per call."""
    return lambda: (x[:, i : i + size] for i in range(0, x.shape[1], size))


def _apply(x: np.ndarray, options: PostProcess, rate: int, size: int = 4801) -> tuple[np.ndarray, dict]:
    proc = PostProcessor(options, rate, x.shape[0])
    out = list(run(proc, _blocks(x, size)))
    y = np.concatenate(out, axis=1) if out else np.zeros((x.shape[0], 0), np.float32)
    return y, proc.report()


def _reference_lufs(x: np.ndarray, rate: int) -> float:
    data = x.astype(np.float64)
    return pyloudnorm.Meter(rate).integrated_loudness(data[0] if data.shape[0] == 1 else data.T)


def _noise(rng: np.random.Generator, rate: int, channels: int, seconds: float) -> np.ndarray:
    return 0.05 * rng.standard_normal((channels, round(rate * seconds)))


def _music(rng: np.random.Generator, rate: int, channels: int, seconds: float) -> np.ndarray:
    """Partials from 110 Hz to 3 kHz with slow swells, a little noise, channels out of phase."""
    t = np.arange(round(rate * seconds)) / rate
    x = np.zeros((channels, t.size))
    for freq, amp in ((110, 0.3), (220, 0.2), (440, 0.15), (660, 0.1), (3000, 0.05)):
        swell = 0.5 + 0.5 * np.sin(2 * np.pi * 0.7 * t + freq)
        for c in range(channels):
            x[c] += amp * swell * np.sin(2 * np.pi * freq * t + c)
    return 0.5 * x + 0.01 * rng.standard_normal(x.shape)


def _gaps(rng: np.random.Generator, rate: int, channels: int, seconds: float) -> np.ndarray:
    """Noise with a silent half of every second and a quiet first second: both gates matter."""
    x = 0.1 * rng.standard_normal((channels, round(rate * seconds)))
    for s in range(0, x.shape[1], rate):
        x[:, s + rate // 2 : s + rate] = 0.0
    x[:, :rate] *= 0.01
    return x


def _meter(x: np.ndarray, rate: int, size: int) -> float | None:
    meter = LoudnessMeter(rate, x.shape[0])
    for i in range(0, x.shape[1], size):
        meter.add(x[:, i : i + size])
    return meter.integrated()


@pytest.mark.parametrize("make", [_noise, _music, _gaps])
@pytest.mark.parametrize(("rate", "channels"), [(44100, 1), (44100, 2), (48000, 1), (48000, 2)])
def test_loudness_matches_pyloudnorm(make, rate: int, channels: int) -> None:
    rng = np.random.default_rng(rate + channels)
    # 5.33 s: pyloudnorm's blocks are exactly the complete ones. 5.37 s: pyloudnorm also counts a
    # last block that runs 30 ms past the end (its block count is rounded, not floored); BS.1770
    # counts complete blocks only, as the meter does, so agreement is within 0.1 LU, not exact.
    for seconds, tolerance in ((5.33, 1e-6), (5.37, 0.1)):
        x = make(rng, rate, channels, seconds).astype(np.float32)
        reference = _reference_lufs(x, rate)
        for size in (997, 4801):
            assert _meter(x.astype(np.float64), rate, size) == pytest.approx(reference, abs=tolerance)


def test_loudness_any_block_size() -> None:
    """Down to one frame per block, sub-block and gating-block edges fall where they should."""
    rate = 8000
    x = _music(np.random.default_rng(9), rate, 2, 1.23)
    whole = _meter(x, rate, x.shape[1])
    assert whole == pytest.approx(_reference_lufs(x, rate), abs=1e-6)
    for size in (1, 3, 799):
        assert _meter(x, rate, size) == pytest.approx(whole, abs=1e-9)


def test_loudness_5_1_weights() -> None:
    """5.1: LFE ignored, surrounds at 1.41, which is pyloudnorm's 5-channel layout minus the LFE."""
    rate = 48000
    x = _noise(np.random.default_rng(5), rate, 6, 3.0) * np.array([[1], [0.5], [0.7], [3.0], [0.4], [0.9]])
    assert channel_weights(6).tolist() == [1.0, 1.0, 1.0, 0.0, 1.41, 1.41]
    reference = _reference_lufs(x[[0, 1, 2, 4, 5]], rate)
    assert _meter(x, rate, 3001) == pytest.approx(reference, abs=1e-6)


def test_loudness_too_short_or_silent_is_none() -> None:
    assert _meter(np.zeros((2, 48000)), 48000, 1000) is None
    assert _meter(_noise(np.random.default_rng(0), 48000, 2, 0.39), 48000, 1000) is None


@pytest.mark.parametrize("target", [-1.0, -12.5, -40.0])
def test_peak_normalisation_hits_target(target: float) -> None:
    rate = 44100
    x = _music(np.random.default_rng(1), rate, 2, 2.0).astype(np.float32)
    y, report = _apply(x, PostProcess(peak_dbfs=target), rate)
    assert y.shape == x.shape
    assert 20 * np.log10(np.max(np.abs(y))) == pytest.approx(target, abs=0.01)
    assert report["gain"]["set_by"] == "peak"
    assert report["gain"]["peak_after_dbfs"] == pytest.approx(target, abs=1e-3)


@pytest.mark.parametrize(("make", "rate", "channels"), [(_music, 44100, 2), (_gaps, 48000, 1)])
@pytest.mark.parametrize("target", [-14.0, -23.0])
def test_loudness_normalisation_hits_target(make, rate: int, channels: int, target: float) -> None:
    x = make(np.random.default_rng(2), rate, channels, 4.0).astype(np.float32)
    y, report = _apply(x, PostProcess(lufs=target), rate, size=1543)
    assert report["gain"]["measured_lufs"] == pytest.approx(_reference_lufs(x, rate), abs=0.1)
    assert _reference_lufs(y, rate) == pytest.approx(target, abs=0.1)
    assert report["gain"]["set_by"] == "lufs"


def test_loudness_over_full_scale_is_applied_and_reported() -> None:
    rate = 48000
    x = _music(np.random.default_rng(3), rate, 2, 2.0).astype(np.float32)
    y, report = _apply(x, PostProcess(lufs=-3.0), rate)
    assert _reference_lufs(y, rate) == pytest.approx(-3.0, abs=0.1)
    assert report["gain"]["clips"] is True
    assert report["gain"]["peak_after_dbfs"] == pytest.approx(20 * np.log10(np.max(np.abs(y))), abs=1e-3)
    assert any("clip" in note for note in report["notes"])


def test_peak_target_caps_loudness_gain() -> None:
    rate = 48000
    x = _music(np.random.default_rng(4), rate, 2, 2.0).astype(np.float32)
    y, report = _apply(x, PostProcess(lufs=-6.0, peak_dbfs=-1.0), rate)
    assert 20 * np.log10(np.max(np.abs(y))) == pytest.approx(-1.0, abs=0.01)
    assert report["gain"]["set_by"] == "peak"
    assert report["gain"]["clips"] is False
    # Without the cap the same stem gets louder.
    _, uncapped = _apply(x, PostProcess(lufs=-6.0), rate)
    assert uncapped["gain"]["gain_db"] > report["gain"]["gain_db"]


def _burst_scene(rate: int, lead: float, length: float, tail: float) -> tuple[np.ndarray, int, int]:
    """Silence with a faint floor, then a -20 dBFS tone from a zero crossing, then silence."""
    rng = np.random.default_rng(6)
    onset, offset = round(rate * lead), round(rate * (lead + length))
    x = 1e-5 * rng.standard_normal((2, round(rate * (lead + length + tail))))
    t = np.arange(offset - onset) / rate
    x[0, onset:offset] += 0.1 * np.sin(2 * np.pi * 440 * t)
    x[1, onset:offset] += 0.05 * np.sin(2 * np.pi * 330 * t)
    return x.astype(np.float32), onset, offset


@pytest.mark.parametrize("size", [1000, 65536])
def test_trim_cuts_at_the_sound(size: int) -> None:
    rate = 48000
    x, onset, offset = _burst_scene(rate, 0.73, 1.3, 0.91)
    y, report = _apply(x, PostProcess(trim_silence_db=-60.0), rate, size)
    margin = round(TRIM_MARGIN_S * rate)
    slack = round(0.002 * rate)  # the tone first reaches -60 dBFS within a sample or two
    start, end = report["trim"]["start_frame"], report["trim"]["end_frame"]
    assert onset - margin <= start <= onset - margin + slack
    assert offset + margin - slack <= end <= offset + margin
    assert y.shape[1] == end - start
    np.testing.assert_array_equal(y, x[:, start:end])
    assert report["trim"]["frames_in"] == x.shape[1]


def test_trim_finds_faded_edges() -> None:
    """A slow fade crosses the threshold well before the averaged level does: the cut must still
    land at the first (last) sample that reaches the threshold, not where the level does."""
    rate = 48000
    x, onset, offset = _burst_scene(rate, 0.5, 1.0, 0.5)
    fade = round(0.2 * rate)
    x[:, onset : onset + fade] *= np.linspace(0.0, 1.0, fade, dtype=np.float32)
    x[:, offset - fade : offset] *= np.linspace(1.0, 0.0, fade, dtype=np.float32)
    hot = np.flatnonzero(np.max(np.abs(x), axis=0) >= 10 ** (-40 / 20))
    _, report = _apply(x, PostProcess(trim_silence_db=-40.0), rate, size=2048)
    margin = round(TRIM_MARGIN_S * rate)
    assert report["trim"]["start_frame"] == hot[0] - margin
    assert report["trim"]["end_frame"] == hot[-1] + 1 + margin


def test_trim_keeps_sound_touching_the_edges() -> None:
    rate = 44100
    x, _, _ = _burst_scene(rate, 0.0, 1.0, 0.0)
    y, report = _apply(x, PostProcess(trim_silence_db=-60.0), rate)
    assert (report["trim"]["start_frame"], report["trim"]["end_frame"]) == (0, x.shape[1])
    np.testing.assert_array_equal(y, x)


def _gate_scene(rate: int) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """-60 dBFS noise floor with 0.3 s bursts of -10 dBFS noise every second."""
    rng = np.random.default_rng(7)
    x = 1e-3 * rng.standard_normal((2, 4 * rate))
    bursts = [(round(rate * (s + 0.5)), round(rate * (s + 0.8))) for s in range(4)]
    for a, b in bursts:
        x[:, a:b] = 0.316 * rng.standard_normal((2, b - a))
    return x.astype(np.float32), bursts


def test_gate_attenuates_floor_and_keeps_bursts() -> None:
    rate = 48000
    x, bursts = _gate_scene(rate)
    y, report = _apply(x, PostProcess(gate_db=-40.0), rate)
    assert y.shape == x.shape

    def level(a: np.ndarray) -> float:
        return 10 * np.log10(np.mean(a.astype(np.float64) ** 2))

    # Before the first burst the gate never opened; in the gaps it has had hold + release
    # (~0.25 s) to close. Either way the floor must be down by the full range, give or take.
    quiet = [(0, bursts[0][0])] + [(b + round(0.3 * rate), c) for (_, b), (c, _) in pairwise(bursts)]
    for a, b in quiet:
        assert level(x[:, a:b]) - level(y[:, a:b]) >= GATE_RANGE_DB - 3
    for a, b in bursts:
        assert abs(level(y[:, a:b]) - level(x[:, a:b])) < 0.05
        # After the opening ramp (2 ms to within 0.1 dB, 10 ms to float precision) it is untouched.
        settled = a + round(0.01 * rate)
        np.testing.assert_allclose(y[:, settled:b], x[:, settled:b], rtol=1e-6)
    assert report["gate"]["threshold_db"] == -40.0


def test_gate_gain_moves_smoothly() -> None:
    """On a constant-level input the output is the gain itself: it must ramp, never step."""
    rate = 48000
    x = np.full((1, 2 * rate), 0.001, np.float32)
    x[:, rate // 2 : rate] = 0.5
    y, _ = _apply(x, PostProcess(gate_db=-40.0), rate, size=1000)
    gain = y[0].astype(np.float64) / x[0]
    step = 1 - np.exp(-1 / (GATE_ATTACK_S * rate))  # the largest step of the opening ramp
    assert np.max(np.abs(np.diff(gain))) <= step + 1e-6
    assert gain[rate // 2 - 1] < 1e-3 and gain[rate - 1] == pytest.approx(1.0)
    assert gain[-1] == pytest.approx(10 ** (-GATE_RANGE_DB / 20), rel=1e-3)


def test_block_size_does_not_change_the_result() -> None:
    rate = 44100
    x, _ = _gate_scene(rate)
    x = np.concatenate([np.zeros((2, rate // 3), np.float32), x[:, : 2 * rate]], axis=1)
    options = PostProcess(peak_dbfs=-3.0, lufs=-16.0, trim_silence_db=-50.0, gate_db=-40.0)
    y0, r0 = _apply(x, options, rate, size=x.shape[1])
    assert r0["trim"]["start_frame"] > rate // 3
    for size in (129, 4096, 44101):
        y, r = _apply(x, options, rate, size)
        assert y.shape == y0.shape
        np.testing.assert_allclose(y, y0, rtol=0, atol=1e-6)
        assert r["trim"] == r0["trim"]
        assert r["gain"]["gain_db"] == pytest.approx(r0["gain"]["gain_db"], abs=1e-6)


def test_measurement_is_of_the_output() -> None:
    """Gate and trim come before the gain is measured, so the written stem hits the target."""
    rate = 48000
    x, _ = _gate_scene(rate)
    lead = (0.02 * np.random.default_rng(8).standard_normal((2, rate))).astype(np.float32)  # -34 dBFS
    x = np.concatenate([lead, x], axis=1)
    y, report = _apply(x, PostProcess(lufs=-20.0, trim_silence_db=-30.0, gate_db=-30.0), rate)
    assert report["trim"]["start_frame"] > rate  # the gated lead-in is trimmed away
    assert _reference_lufs(y, rate) == pytest.approx(-20.0, abs=0.1)


def test_silent_stem() -> None:
    rate = 48000
    x = np.zeros((2, rate), np.float32)
    options = PostProcess(peak_dbfs=-1.0, lufs=-14.0, trim_silence_db=-60.0, gate_db=-50.0)
    y, report = _apply(x, options, rate, size=777)
    np.testing.assert_array_equal(y, x)
    assert report["trim"]["silent"] is True
    assert (report["trim"]["start_frame"], report["trim"]["end_frame"]) == (0, rate)
    gain = report["gain"]
    assert gain["silent"] is True
    assert gain["gain_db"] == 0.0 and gain["measured_peak_dbfs"] is None and gain["measured_lufs"] is None
    json.dumps(report, allow_nan=False)


def test_passes_and_misuse() -> None:
    rate, x = 48000, np.zeros((2, 1000), np.float32)
    assert not PostProcessor(PostProcess(), rate, 2).needs_analysis
    assert not PostProcessor(PostProcess(gate_db=-50.0), rate, 2).needs_analysis
    y, report = _apply(x + 0.1, PostProcess(), rate)
    np.testing.assert_array_equal(y, x + 0.1)
    assert report == {}

    proc = PostProcessor(PostProcess(trim_silence_db=-60.0, lufs=-14.0), rate, 2)
    with pytest.raises(RuntimeError):
        proc.process(x)
    with pytest.raises(ValueError):
        proc.analyze(np.zeros((1, 1000), np.float32))
    proc.analyze(x)
    proc.end_pass()
    assert proc.needs_analysis  # the measuring pass follows the trim pass
    proc.analyze(x[:, :500])
    with pytest.raises(ValueError):
        proc.end_pass()  # the second pass must see the same stem
