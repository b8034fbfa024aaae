"""The ground-truth renderer itself: every separation score rests on these stems being exact."""

from __future__ import annotations

import numpy as np
import pytest

from tests import material

SECONDS = 4.0
RATE = 44100


def _rms_db(audio: np.ndarray) -> float:
    return 10 * np.log10(float(np.mean(np.square(audio, dtype=np.float64))) + 1e-20)


def test_stems_line_up_and_are_audible() -> None:
    stems = material.stems(SECONDS, RATE)
    assert list(stems) == list(material.STEM_NAMES)
    for name, audio in stems.items():
        assert audio.shape == (2, round(SECONDS * RATE)), name
        assert audio.dtype == np.float32, name
        assert _rms_db(audio) > -35, f"{name} is nearly silent"
        assert np.isfinite(audio).all(), name
    mixture = material.mix(stems)
    assert np.array_equal(mixture, stems["vocals"] + stems["drums"] + stems["bass"] + stems["music"])
    assert np.abs(mixture).max() < 1.0


def test_second_call_comes_from_cache_unchanged() -> None:
    first = material.stems(SECONDS, RATE)
    second = material.stems(SECONDS, RATE)
    for name in material.STEM_NAMES:
        assert np.array_equal(first[name], second[name]), name


def test_fresh_renders_are_bit_identical(tmp_path, monkeypatch) -> None:
    renders = []
    for sub in ("a", "b"):
        monkeypatch.setenv("REASAM_MATERIAL_DIR", str(tmp_path / sub))
        renders.append(material.stems(2.5, 22050))
    assert list((tmp_path / "a").glob("*.tmp")) == []
    for name in material.STEM_NAMES:
        assert np.array_equal(renders[0][name], renders[1][name]), name


def test_event_scene_spans_are_exact() -> None:
    mixture, target, spans = material.event_scene(SECONDS, RATE)
    stems = material.stems(SECONDS, RATE)
    assert len(spans) >= 2
    np.testing.assert_allclose(mixture - target, stems["music"] + stems["bass"], atol=1e-6)
    inside = np.zeros(target.shape[1], bool)
    for start, end in spans:
        part = target[:, round(start * RATE) : round(end * RATE)]
        assert _rms_db(part) > -40
        inside[round(start * RATE) : round(end * RATE)] = True
    assert not target[:, ~inside].any(), "event sound outside its spans"
    quiet_start, quiet_end = material.background_span(spans, SECONDS)
    assert quiet_end - quiet_start >= 0.5
    assert all(quiet_end <= start or quiet_start >= end for start, end in spans)


def test_click_track_has_one_click() -> None:
    track = material.click_track(1000, RATE, 2, click_at=0.01)
    assert track.shape == (2, 1000)
    assert np.flatnonzero(track[0]).tolist() == [441]
    with pytest.raises(ValueError):
        material.click_track(1000, RATE, 2, click_at=1.0)
