"""The weight-free DSP engine: exact shapes at any rate and channel count, and real separation.

Quality floors sit a few dB below what was measured on tests/material.py (20 s at 44.1 kHz,
balanced unless said): drums from drums+music +13.2 dB (fast +10.7, best +14.1), harmonic
+13.1 dB, a recurring event from one + span +21.1 dB in 7 s chunks, +22.4 dB when the span's
context catches the next occurrence, +19.5 dB with a - span; at 8 kHz the event +14.3 dB and
drums +13.4 dB, at 96 kHz drums +12.9 dB.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import soxr
from reasam.engines import get
from reasam.engines.base import Prompt
from reasam.engines.dsp import DspEngine
from reasam.errors import ReasamError
from reasam.request import Span

from tests import material

RATE = 44100
SECONDS = 20.0


def si_sdr(estimate: np.ndarray, reference: np.ndarray) -> float:
    """Scale-invariant SDR in dB over all channels together."""
    est = estimate.reshape(-1).astype(np.float64)
    ref = reference.reshape(-1).astype(np.float64)
    target = (est @ ref) / (ref @ ref) * ref
    return 10 * np.log10((target @ target) / ((est - target) @ (est - target)))


def gain(estimate: np.ndarray, reference: np.ndarray, mixture: np.ndarray) -> float:
    """SI-SDR improvement over doing nothing."""
    return si_sdr(estimate, reference) - si_sdr(mixture, reference)


def fetcher(audio: np.ndarray, rate: int) -> Callable[[Span], np.ndarray]:
    """A span fetcher over an in-memory source, like the pipeline's."""

    def fetch(span: Span) -> np.ndarray:
        return audio[:, round(span.start * rate) : round(span.end * rate)].copy()

    return fetch


def run(engine: DspEngine, mixture: np.ndarray, rate: int, prompt: Prompt, quality: str = "balanced",
        chunk_s: float = 30.0) -> np.ndarray:  # fmt: skip
    """Prepare and separate in chunks with their source start times, as the pipeline does."""
    separation = engine.prepare(prompt, quality, fetcher(mixture, rate), rate)
    out = np.zeros_like(mixture)
    step = round(chunk_s * rate)
    for first in range(0, mixture.shape[1], step):
        chunk = mixture[:, first : first + step]
        result = separation.separate(chunk, first / rate)
        assert result.shape == chunk.shape and result.dtype == np.float32
        out[:, first : first + step] = result
    return out


def resample(audio: np.ndarray, rate: int) -> np.ndarray:
    return np.ascontiguousarray(soxr.resample(audio.T, RATE, rate).T, dtype=np.float32)


@pytest.fixture(scope="module")
def engine() -> DspEngine:
    return DspEngine()


@pytest.fixture(scope="module")
def stems() -> dict[str, np.ndarray]:
    return material.stems(SECONDS, RATE)


@pytest.fixture(scope="module")
def scene() -> tuple[np.ndarray, np.ndarray, list[tuple[float, float]]]:
    return material.event_scene(SECONDS, RATE)


def noise(channels: int, frames: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((channels, frames)).astype(np.float32) * 0.1


# --- interface --------------------------------------------------------------------------------


def test_capabilities_and_registry() -> None:
    engine = get("dsp")
    caps = engine.capabilities
    assert isinstance(engine, DspEngine)
    assert (caps.name, caps.spans, caps.free_text, caps.sample_rate, caps.channels) == (
        "dsp", True, False, None, None,
    )  # fmt: skip
    assert caps.chunk_seconds == pytest.approx(30.0) and caps.overlap_seconds == pytest.approx(1.0)
    assert set(caps.prompts) == {"drums", "harmonic"}


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("drums", "drums"),
        ("Drum", "drums"),
        ("  drum   KIT ", "drums"),
        ("percussion", "drums"),
        ("beat", "drums"),
        ("harmonic", "harmonic"),
        ("tonal", "harmonic"),
        ("Melodic", "harmonic"),
        ("vocals", None),
        ("a dog barking", None),
    ],
)
def test_canonical_prompt_synonyms(engine: DspEngine, text: str, canonical: str | None) -> None:
    assert engine.canonical_prompt(text) == canonical


def test_spans_are_understood_unknown_text_alone_is_not(engine: DspEngine) -> None:
    plus, minus = Span("+", 1, 2), Span("-", 3, 4)
    assert engine.understands("", (plus,))
    assert engine.understands("", (plus, minus))
    assert engine.understands("the squeaky door", (plus,))  # the text only names the target
    assert engine.understands("drums", ())
    assert not engine.understands("the squeaky door", ())
    assert not engine.understands("", (minus,))


def test_unknown_text_without_spans_is_refused_on_prepare(engine: DspEngine) -> None:
    with pytest.raises(ReasamError) as caught:
        engine.prepare(Prompt("the squeaky door"), "balanced", fetcher(noise(2, RATE), RATE), RATE)
    assert caught.value.code == "unsupported_prompt"


def test_silent_plus_span_is_a_bad_request(engine: DspEngine) -> None:
    audio = np.zeros((2, 3 * RATE), np.float32)
    with pytest.raises(ReasamError) as caught:
        engine.prepare(Prompt("", (Span("+", 1, 2),)), "balanced", fetcher(audio, RATE), RATE)
    assert caught.value.code == "bad_request"


# --- shapes, channels, rates, determinism -----------------------------------------------------

PROMPTS = [Prompt("drums"), Prompt("harmonic"), Prompt("", (Span("+", 0.5, 1.5),))]


@pytest.mark.parametrize("prompt", PROMPTS, ids=["drums", "harmonic", "span"])
@pytest.mark.parametrize("frames", [1, 2, 255, 1001, 44101, 3 * RATE + 7])
def test_shape_is_exact_for_any_length(engine: DspEngine, prompt: Prompt, frames: int) -> None:
    separation = engine.prepare(prompt, "fast", fetcher(noise(2, 3 * RATE, seed=1), RATE), RATE)
    audio = noise(2, frames)
    out = separation.separate(audio, 0.25)
    assert out.shape == audio.shape and out.dtype == np.float32
    assert np.isfinite(out).all()


@pytest.mark.parametrize("prompt", PROMPTS, ids=["drums", "harmonic", "span"])
def test_silence_gives_silence(engine: DspEngine, prompt: Prompt) -> None:
    separation = engine.prepare(prompt, "balanced", fetcher(noise(2, 3 * RATE), RATE), RATE)
    out = separation.separate(np.zeros((2, RATE + 3), np.float32), 0.0)
    assert out.shape == (2, RATE + 3) and np.all(out == 0)


@pytest.mark.parametrize("channels", [1, 2, 6])
@pytest.mark.parametrize("prompt", PROMPTS, ids=["drums", "harmonic", "span"])
def test_any_channel_count_gets_one_mask(engine: DspEngine, prompt: Prompt, channels: int) -> None:
    """Channels that are scaled copies come back as the same scaled copies: one mask for all."""
    scales = np.linspace(1.0, 0.3, channels, dtype=np.float32)[:, None]
    source = noise(1, 3 * RATE, seed=2) * scales
    separation = engine.prepare(prompt, "fast", fetcher(source, RATE), RATE)
    audio = noise(1, 2 * RATE + 1, seed=3) * scales
    out = separation.separate(audio, 1.0)
    assert out.shape == audio.shape
    np.testing.assert_allclose(out, out[:1] * scales, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("prompt", PROMPTS, ids=["drums", "harmonic", "span"])
def test_deterministic(engine: DspEngine, scene, prompt: Prompt) -> None:
    mixture = scene[0][:, : 8 * RATE]
    first = run(engine, mixture, RATE, prompt, chunk_s=5.0)
    second = run(DspEngine(), mixture, RATE, prompt, chunk_s=5.0)
    assert np.array_equal(first, second)


# --- separation quality -----------------------------------------------------------------------


@pytest.mark.parametrize(("quality", "floor"), [("fast", 8.0), ("balanced", 10.0), ("best", 11.0)])
def test_drums_from_drums_and_music(engine: DspEngine, stems, quality: str, floor: float) -> None:
    mixture = stems["drums"] + stems["music"]
    out = run(engine, mixture, RATE, Prompt("drums"), quality)
    assert gain(out, stems["drums"], mixture) > floor


def test_harmonic_from_drums_and_music(engine: DspEngine, stems) -> None:
    mixture = stems["drums"] + stems["music"]
    out = run(engine, mixture, RATE, Prompt("harmonic"))
    assert gain(out, stems["music"], mixture) > 10.0
    drums = run(engine, mixture, RATE, Prompt("drums"))
    # The two masks are complementary: harmonic + percussive is (almost) the mix.
    assert si_sdr(out + drums, mixture) > 20.0


@pytest.mark.parametrize(("occurrence", "floor"), [(1, 17.0), (3, 17.0)])
def test_span_template_finds_every_occurrence(
    engine: DspEngine, scene, occurrence: int, floor: float
) -> None:
    """One + span marks one occurrence; all of them come back. Occurrence 3's context holds the next one."""
    mixture, target, spans = scene
    prompt = Prompt("", (Span("+", *spans[occurrence]),))
    out = run(engine, mixture, RATE, prompt, chunk_s=7.0)
    assert gain(out, target, mixture) > floor


def test_minus_span_is_learnt_and_silenced(engine: DspEngine, scene) -> None:
    mixture, target, spans = scene
    lo, hi = material.background_span(spans, SECONDS)
    prompt = Prompt("a chime", (Span("+", *spans[1]), Span("-", lo, hi)))
    out = run(engine, mixture, RATE, prompt, chunk_s=7.0)
    assert gain(out, target, mixture) > 16.0
    # Away from its edges (half a window), the - span holds no target at all.
    inside = out[:, round((lo + 0.05) * RATE) : round((hi - 0.05) * RATE)]
    assert np.all(inside == 0)


def test_rates_8k_and_96k(engine: DspEngine, stems, scene) -> None:
    drums = stems["drums"][:, : 10 * RATE]
    music = stems["music"][:, : 10 * RATE]
    for rate in (8000, 96000):
        d, m = resample(drums, rate), resample(music, rate)
        out = run(engine, d + m, rate, Prompt("drums"))
        assert gain(out, d, d + m) > 10.0, rate
    mixture, target, spans = scene
    mixture, target = resample(mixture, 8000), resample(target, 8000)
    out = run(engine, mixture, 8000, Prompt("", (Span("+", *spans[1]),)), chunk_s=7.0)
    assert gain(out, target, mixture) > 11.0
