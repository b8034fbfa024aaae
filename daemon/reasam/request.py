"""The request: what to separate, by which prompt, and how to write it.

Every front door (CLI, OSC, watch folder, batch) builds a `Request`; validation happens here,
once, on creation, so a bad value fails with the same one-line message wherever it came from.
"""

from __future__ import annotations

import dataclasses
import math
import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import bad_request

QUALITIES = ("fast", "balanced", "best")
ENGINES = ("auto", "sam", "spleeter", "dsp")
FORMATS = ("wav", "flac", "mp3")
# How a mono model's output becomes stems of the source's channels (engines/sam.py).
STEREO_MODES = ("mask", "mono")
# Bit depths per format; 32 means 32-bit float, the default for WAV so stems never clip.
BIT_DEPTHS = {"wav": (16, 24, 32), "flac": (16, 24), "mp3": ()}
DEFAULT_BIT_DEPTH = {"wav": 32, "flac": 24, "mp3": None}
MIN_RATE, MAX_RATE = 8_000, 192_000
MAX_PROMPT_CHARS = 500
# A stem set: at most this many prompts in one job (SAM-Audio runs them as one batch, whose
# memory grows with the count).
MAX_PROMPTS = 8
MAX_SPANS = 64
MAX_SEED = 2**32 - 1

# A stem file-name template (`reasam separate --filename`) names its fields as demucs does:
# the input's name without its extension, that extension, the stem ("vocals", "vocals-residual",
# "rest", as the default names them) and the output format's extension.
FILENAME_FIELDS = ("track", "trackext", "stem", "ext")
DEFAULT_FILENAME = "{stem}.{ext}"
# Files of a job folder that no stem may be named: the manifest and the daemon's status file.
RESERVED_NAMES = ("manifest.json", "status.json")

_NUMBER = r"[0-9]+(?:\.[0-9]*)?|\.[0-9]+"
_RANGE = re.compile(rf"^\s*({_NUMBER})?\s*:\s*({_NUMBER})?\s*$")


def _finite(value: float, what: str) -> float:
    if not math.isfinite(value) or value < 0:
        raise bad_request(f"{what} must be a finite number of seconds >= 0, got {value!r}")
    return value


def parse_range(text: str, what: str) -> tuple[float | None, float | None]:
    """Parse "START:END" in seconds; either side may be empty (open)."""
    m = _RANGE.match(str(text))
    if not m:
        raise bad_request(f"{what} must look like START:END in seconds, got {text!r}")
    start = float(m.group(1)) if m.group(1) else None
    end = float(m.group(2)) if m.group(2) else None
    return start, end


def parse_seed(value: Any) -> int:
    """A seed given as an int, an integral float (OSC) or text: a whole number 0-2^32-1."""
    if isinstance(value, bool):
        raise bad_request(f"seed must be a whole number, got {value!r}")
    try:
        number = float(str(value).strip()) if not isinstance(value, int) else value
        seed = int(number)
    except (TypeError, ValueError, OverflowError):
        raise bad_request(f"seed must be a whole number, got {value!r}") from None
    if seed != number or not 0 <= seed <= MAX_SEED:
        raise bad_request(f"seed must be a whole number from 0 to {MAX_SEED}, got {value!r}")
    return seed


@dataclass(frozen=True)
class Span:
    """A time range of the source given as a prompt: `+` target here, `-` target absent."""

    sign: str
    start: float
    end: float

    def __post_init__(self) -> None:
        if self.sign not in ("+", "-"):
            raise bad_request(f"span sign must be + or -, got {self.sign!r}")
        _finite(self.start, "span start")
        _finite(self.end, "span end")
        if self.end <= self.start:
            raise bad_request(f"span {self} is empty: end must be after start")

    @classmethod
    def parse(cls, text: str) -> Span:
        text = str(text).strip()
        if not text or text[0] not in "+-":
            raise bad_request(f"span must look like +START:END or -START:END, got {text!r}")
        start, end = parse_range(text[1:], "span")
        if start is None or end is None:
            raise bad_request(f"span needs both START and END, got {text!r}")
        return cls(text[0], start, end)

    @property
    def positive(self) -> bool:
        return self.sign == "+"

    def __str__(self) -> str:
        return f"{self.sign}{self.start:g}:{self.end:g}"


@dataclass(frozen=True)
class Region:
    """The part of the source to process, in source seconds; `end=None` means to the end."""

    start: float = 0.0
    end: float | None = None

    def __post_init__(self) -> None:
        _finite(self.start, "region start")
        if self.end is not None:
            _finite(self.end, "region end")
            if self.end <= self.start:
                raise bad_request(f"region {self.start:g}:{self.end:g} is empty")

    @classmethod
    def parse(cls, text: str) -> Region:
        start, end = parse_range(text, "region")
        return cls(start or 0.0, end)


@dataclass(frozen=True)
class PostProcess:
    """Per-stem finishing, all off by default because any of it breaks target + residual == mix."""

    peak_dbfs: float | None = None
    lufs: float | None = None
    trim_silence_db: float | None = None
    gate_db: float | None = None

    def __post_init__(self) -> None:
        for name, lo, hi in (
            ("peak_dbfs", -60.0, 0.0),
            ("lufs", -70.0, 0.0),
            ("trim_silence_db", -120.0, 0.0),
            ("gate_db", -120.0, 0.0),
        ):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and lo <= value <= hi):
                raise bad_request(f"{name.replace('_', ' ')} must be between {lo:g} and {hi:g}")

    @property
    def active(self) -> bool:
        return any(v is not None for v in (self.peak_dbfs, self.lufs, self.trim_silence_db, self.gate_db))

    def as_dict(self) -> dict[str, float]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


def check_filename(template: str) -> None:
    """Refuse a stem file-name template that could escape the job folder or give two stems one
    name: fields other than FILENAME_FIELDS, a path separator, `..`, or no `{stem}` (every stem
    would get the same name; with `{stem}` the names differ as the stems' names do)."""
    what = f"file-name template {template!r}"
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise bad_request(f"{what}: {exc}; write a literal brace as {{{{ or }}}}") from None
    fields = [name for _, name, _, _ in parts if name is not None]
    unknown = [f for f in fields if f not in FILENAME_FIELDS]
    if unknown:
        known = ", ".join("{" + f + "}" for f in FILENAME_FIELDS)
        raise bad_request(f"{what}: unknown field {{{unknown[0]}}}; fields: {known}")
    if any(spec or conversion for _, name, spec, conversion in parts if name is not None):
        raise bad_request(
            f"{what}: fields take no format spec or conversion (write {{stem}}, not {{stem:…}})"
        )
    literals = [text for text, _, _, _ in parts]
    if any(sep in text for text in literals for sep in ("/", "\\")) or any(".." in t for t in literals):
        raise bad_request(f"{what}: a stem file name cannot hold a path separator or '..'")
    if template.startswith(".") or any(ord(c) < 32 for text in literals for c in text):
        raise bad_request(f"{what}: a stem file name cannot start with '.' or hold control characters")
    if "stem" not in fields:
        raise bad_request(f"{what} has no {{stem}}: every stem would get the same name")
    if not template.endswith(".{ext}"):
        # The file's extension is what players and REAPER go by: it must name the format written.
        raise bad_request(f"{what} must end with .{{ext}}, the extension of the format written")


@dataclass(frozen=True)
class OutputOptions:
    """How stems are written. `sample_rate`/`channels` of None keep the source's."""

    format: str = "wav"
    bit_depth: int | None = None
    sample_rate: int | None = None
    mono: bool = False
    post: PostProcess = field(default_factory=PostProcess)
    # "mask": a mono model's target becomes a time-frequency mask on every channel (keeps the
    # stereo image); "mono": the raw model output on every channel.
    stereo: str = "mask"
    # The stem file-name template ("" = DEFAULT_FILENAME): see check_filename.
    filename: str = ""

    def __post_init__(self) -> None:
        if self.filename:
            check_filename(self.filename)
        if self.format not in FORMATS:
            raise bad_request(f"format must be one of {', '.join(FORMATS)}, got {self.format!r}")
        allowed = BIT_DEPTHS[self.format]
        if self.bit_depth is not None and self.bit_depth not in allowed:
            if not allowed:
                raise bad_request(f"{self.format} takes no bit depth")
            raise bad_request(
                f"{self.format} bit depth must be one of {', '.join(map(str, allowed))}, got {self.bit_depth}"
            )
        if self.sample_rate is not None and not (MIN_RATE <= self.sample_rate <= MAX_RATE):
            raise bad_request(f"sample rate must be {MIN_RATE}-{MAX_RATE} Hz, got {self.sample_rate}")
        if self.stereo not in STEREO_MODES:
            raise bad_request(f"stereo must be one of {', '.join(STEREO_MODES)}, got {self.stereo!r}")

    @property
    def resolved_bit_depth(self) -> int | None:
        return self.bit_depth if self.bit_depth is not None else DEFAULT_BIT_DEPTH[self.format]


@dataclass(frozen=True)
class Request:
    """One separation: source region + prompt (text and/or spans) + engine, quality and output."""

    source: Path
    prompt: str = ""
    spans: tuple[Span, ...] = ()
    region: Region = field(default_factory=Region)
    quality: str = "balanced"
    engine: str = "auto"
    output: OutputOptions = field(default_factory=OutputOptions)
    # Seeds the random draws of engines that make them (SAM-Audio's noise), so the same request
    # gives the same stems bit for bit on one machine; another seed gives another take.
    seed: int = 0
    # A stem set: the prompts after `prompt`, each its own target stem, plus one `rest` stem.
    # Empty for today's one-prompt job (target + residual).
    extra_prompts: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "source", Path(self.source))
        object.__setattr__(self, "prompt", " ".join(str(self.prompt).split()))
        object.__setattr__(self, "spans", tuple(self.spans))
        if isinstance(self.extra_prompts, str):
            raise bad_request("extra_prompts must be a list of prompts, not one text")
        extra = tuple(" ".join(str(p).split()) for p in self.extra_prompts)
        object.__setattr__(self, "extra_prompts", extra)
        for text in (self.prompt, *extra):
            if len(text) > MAX_PROMPT_CHARS:
                raise bad_request(f"prompt is longer than {MAX_PROMPT_CHARS} characters")
            if any(ord(c) < 32 for c in text):
                raise bad_request("prompt contains control characters")
        if extra:
            self._check_set()
        if not self.prompt and not self.spans:
            raise bad_request("give a text prompt, a + span, or both")
        if self.spans and not any(s.positive for s in self.spans):
            raise bad_request("spans need at least one + span (where the target sound is)")
        if len(self.spans) > MAX_SPANS:
            raise bad_request(f"at most {MAX_SPANS} spans")
        if self.quality not in QUALITIES:
            raise bad_request(f"quality must be one of {', '.join(QUALITIES)}, got {self.quality!r}")
        if self.engine not in ENGINES:
            raise bad_request(f"engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        object.__setattr__(self, "seed", parse_seed(self.seed))

    def _check_set(self) -> None:
        prompts = self.prompts
        if not all(prompts):
            raise bad_request("a stem set needs a text for every prompt (an empty prompt names nothing)")
        if len(prompts) > MAX_PROMPTS:
            raise bad_request(f"a stem set takes at most {MAX_PROMPTS} prompts, got {len(prompts)}")
        seen: set[str] = set()
        for text in prompts:
            if text.lower() in seen:
                raise bad_request(f"prompt {text!r} is given twice in the stem set")
            seen.add(text.lower())
        if self.spans:
            raise bad_request("spans go with one prompt; a stem set takes text prompts only")

    @property
    def prompts(self) -> tuple[str, ...]:
        """Every prompt of the job, in order: one for today's job, several for a stem set."""
        return (self.prompt, *self.extra_prompts)

    @property
    def is_set(self) -> bool:
        return bool(self.extra_prompts)

    @property
    def target_name(self) -> str:
        """The target stem's name: the prompt, or "span" for a request given only as spans."""
        return self.prompt or "span"

    def as_dict(self) -> dict:
        """The request as understood, for manifest.json and the result cache key."""
        return {
            "source": str(self.source),
            "prompt": self.prompt,
            "spans": [str(s) for s in self.spans],
            "region": [self.region.start, self.region.end],
            "quality": self.quality,
            "engine": self.engine,
            "format": self.output.format,
            "bit_depth": self.output.resolved_bit_depth,
            "sample_rate": self.output.sample_rate,
            "mono": self.output.mono,
            "stereo": self.output.stereo,
            "post": self.output.post.as_dict(),
            "seed": self.seed,
            "prompts": list(self.prompts),
        } | ({"filename": self.output.filename} if self.output.filename else {})


_SPECIAL = ("source", "prompt", "spans", "region", "output")


def encode_request(request: Request) -> dict[str, Any]:
    """The request as exact JSON, for the daemon's journal and cache key.

    Spans and region stay floats (as_dict rounds them to text), and every field of Request and
    OutputOptions is taken generically, so a field added to the request later is journaled,
    fingerprinted and cache-keyed without a change here.
    """
    output = {f.name: getattr(request.output, f.name) for f in dataclasses.fields(OutputOptions)}
    output["post"] = request.output.post.as_dict()
    if not output["filename"]:
        del output["filename"]  # the default names: journal fingerprints and cache keys as before
    data: dict[str, Any] = {
        "source": str(request.source),
        "prompt": request.prompt,
        "spans": [[s.sign, s.start, s.end] for s in request.spans],
        "region": [request.region.start, request.region.end],
        "output": output,
    }
    for f in dataclasses.fields(Request):
        if f.name not in _SPECIAL:
            data[f.name] = getattr(request, f.name)
    if not request.extra_prompts:
        # A one-prompt job encodes as it did before stem sets, so its journal fingerprint and
        # cache key stay what they were.
        del data["extra_prompts"]
    else:
        data["extra_prompts"] = list(request.extra_prompts)
    return data


def decode_request(data: dict[str, Any]) -> Request:
    """Inverse of `encode_request`; validation runs again, as for any new request."""
    output = dict(data["output"])
    output["post"] = PostProcess(**output.get("post", {}))
    extra = {k: v for k, v in data.items() if k not in _SPECIAL}
    return Request(
        source=Path(data["source"]),
        prompt=data["prompt"],
        spans=tuple(Span(sign, float(a), float(b)) for sign, a, b in data["spans"]),
        region=Region(float(data["region"][0]), data["region"][1]),
        output=OutputOptions(**output),
        **extra,
    )


# Option names shared by every front door that reads requests from text (watch-folder sidecars,
# batch manifest columns): the long names of `reasam separate`'s flags, with underscores.
FIELD_NAMES = (
    "prompt", "span", "region", "engine", "quality", "format", "output_format", "bit_depth",
    "sample_rate", "mono", "stereo", "normalize_peak", "normalize_lufs", "trim_silence", "gate",
    "seed",
)  # fmt: skip
_POST_FIELDS = {
    "normalize_peak": "peak_dbfs",
    "normalize_lufs": "lufs",
    "trim_silence": "trim_silence_db",
    "gate": "gate_db",
}


def _number(value: Any, name: str, kind: type) -> Any:
    try:
        number = kind(float(value)) if kind is int else kind(value)
    except (TypeError, ValueError):
        raise bad_request(f"{name} must be a number, got {value!r}") from None
    if kind is int and float(value) != number:
        raise bad_request(f"{name} must be a whole number, got {value!r}")
    return number


def _flag(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise bad_request(f"{name} must be true or false, got {value!r}")


def output_from_fields(fields: dict[str, Any]) -> OutputOptions:
    """Only the output options of such a mapping, for a front door that reads the rest its own
    way (OSC): read by `request_from_fields` itself, with a stand-in prompt, so there is one
    reading of them."""
    return request_from_fields(Path("."), {**fields, "prompt": "output"}).output


def request_from_fields(
    source: Path, fields: dict[str, Any], defaults: dict[str, Any] | None = None
) -> Request:
    """Build a Request from named options given as text or plain values.

    Watch-folder sidecars (TOML/JSON) and batch manifests (CSV cells) both describe a request
    as a flat mapping with the names of `reasam separate`'s flags, so they share this one
    reading: an unknown name is an error (a typo must not silently fall back to a default), an
    empty value counts as absent (blank CSV cells), and `span` takes a list or `;`-separated
    text. `prompt` likewise takes a list or `;`-separated text: several prompts make a stem
    set (the first is `prompt`, the others `extra_prompts`). `defaults` fills names the mapping
    leaves out (a watch folder's prompt, say).
    """
    merged: dict[str, Any] = dict(defaults or {})
    for key, value in fields.items():
        name = str(key).strip().lower().replace("-", "_")
        if name not in FIELD_NAMES:
            raise bad_request(f"unknown option {key!r} (known: {', '.join(FIELD_NAMES)})")
        if value is None or (isinstance(value, str) and not value.strip()):
            continue
        merged["format" if name == "output_format" else name] = value
    spans = merged.get("span", ())
    if isinstance(spans, str):
        spans = [s for s in spans.split(";") if s.strip()]
    elif not isinstance(spans, list | tuple):
        raise bad_request(f"span must be text or a list, got {spans!r}")

    prompts = merged.get("prompt", "")
    if isinstance(prompts, str):
        prompts = prompts.split(";")
    elif not isinstance(prompts, list | tuple):
        raise bad_request(f"prompt must be text or a list, got {prompts!r}")
    prompts = [str(p).strip() for p in prompts if str(p).strip()] or [""]

    def number(name: str, kind: type) -> Any:
        return _number(merged[name], name, kind) if name in merged else None

    post = {attr: number(name, float) for name, attr in _POST_FIELDS.items() if name in merged}
    return Request(
        source=source,
        prompt=prompts[0],
        extra_prompts=tuple(prompts[1:]),
        spans=tuple(Span.parse(str(s)) for s in spans),
        region=Region.parse(str(merged["region"])) if "region" in merged else Region(),
        quality=str(merged.get("quality", "balanced")).strip(),
        engine=str(merged.get("engine", "auto")).strip(),
        output=OutputOptions(
            format=str(merged.get("format", "wav")).strip().lower(),
            bit_depth=number("bit_depth", int),
            sample_rate=number("sample_rate", int),
            mono=_flag(merged["mono"], "mono") if "mono" in merged else False,
            stereo=str(merged.get("stereo", "mask")).strip(),
            post=PostProcess(**post),
        ),
        seed=merged.get("seed", 0),
    )
