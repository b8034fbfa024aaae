"""`request_from_fields`: the one reading of requests written as text (sidecars, manifests)."""

from pathlib import Path

import pytest
from reasam.errors import ReasamError
from reasam.request import Span, request_from_fields

SRC = Path("/tmp/in.wav")


def test_text_cells_become_typed_options() -> None:
    r = request_from_fields(
        SRC,
        {
            "prompt": "vocals",
            "span": "+1:2; -3:4",
            "region": "0.5:9",
            "output_format": "FLAC",
            "bit_depth": "16",
            "sample_rate": "48000",
            "mono": "yes",
            "normalize_peak": "-1",
            "gate": "",
        },
    )
    assert r.prompt == "vocals"
    assert r.spans == (Span("+", 1, 2), Span("-", 3, 4))
    assert (r.region.start, r.region.end) == (0.5, 9.0)
    out = r.output
    assert (out.format, out.bit_depth, out.sample_rate, out.mono) == ("flac", 16, 48000, True)
    assert r.output.post.peak_dbfs == -1.0 and r.output.post.gate_db is None


def test_defaults_fill_what_is_left_out_and_values_win() -> None:
    r = request_from_fields(SRC, {"quality": "fast"}, defaults={"prompt": "drums", "quality": "best"})
    assert (r.prompt, r.quality, r.engine) == ("drums", "fast", "auto")
    r = request_from_fields(SRC, {"span": ["+1:2"]})
    assert r.spans == (Span("+", 1, 2),)


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"prompt": "x", "promt": "y"}, "unknown option 'promt'"),
        ({"prompt": "x", "bit_depth": "16.5"}, "whole number"),
        ({"prompt": "x", "sample_rate": "fast"}, "must be a number"),
        ({"prompt": "x", "mono": "maybe"}, "true or false"),
        ({"span": "1:2"}, "span must look like"),
        ({"prompt": "x", "format": "ogg"}, "format must be one of"),
        ({}, "give a text prompt"),
    ],
)
def test_bad_fields_fail_with_one_line(fields: dict, needle: str) -> None:
    with pytest.raises(ReasamError) as info:
        request_from_fields(SRC, fields)
    assert needle in str(info.value) and "\n" not in str(info.value)
    assert info.value.code == "bad_request"
