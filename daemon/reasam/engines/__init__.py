"""The engine registry and the `auto` choice.

Engines are created once per process and kept, so weights loaded by one job stay warm for the
next. `auto` prefers SAM-Audio when it is usable, else the embedded engine that understands the
prompt.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from ..errors import ReasamError, bad_request
from ..request import Span
from .base import Capabilities, Engine, Prompt, Separation, SetSeparation, SpanFetcher

__all__ = [
    "Capabilities",
    "Engine",
    "Prompt",
    "Separation",
    "SetSeparation",
    "SpanFetcher",
    "choose",
    "choose_set",
    "get",
    "names",
    "use_device",
]

# Order is the `auto` preference among embedded engines.
_FACTORIES: dict[str, str] = {
    "sam": "reasam.engines.sam:SamEngine",  # preferred by `auto` whenever it is usable
    "spleeter": "reasam.engines.spleeter:SpleeterEngine",
    "dsp": "reasam.engines.dsp:DspEngine",
}
_instances: dict[str, Engine] = {}
_lock = threading.Lock()
# Engines with weights take a device (`use_device`); dsp computes with numpy on the CPU.
_WEIGHTED = ("sam", "spleeter")
_device: str | None = None  # None: each engine's own choice (cuda, then mps for sam, then cpu)

SAM_HINT = (
    "for free-text prompts install SAM-Audio (see README, 'Installing SAM-Audio') "
    "and run `reasam engines` to check it"
)


def names() -> list[str]:
    return list(_FACTORIES)


def get(name: str) -> Engine:
    """The process-wide instance of an engine, created on first use."""
    if name not in _FACTORIES:
        raise ReasamError("bad_request", f"unknown engine {name!r}; engines: {', '.join(_FACTORIES)}")
    with _lock:
        if name not in _instances:
            module_name, class_name = _FACTORIES[name].split(":")
            import importlib

            module = importlib.import_module(module_name)
            kwargs = {"device": _device} if _device is not None and name in _WEIGHTED else {}
            _instances[name] = getattr(module, class_name)(**kwargs)
        return _instances[name]


def available_devices() -> list[str]:
    """The torch devices this machine has, cpu first."""
    return ["cpu", *(d for d in ("cuda", "mps") if _device_error(d) is None)]


def _device_error(device: str) -> str | None:
    """Why `device` cannot be used here (models.resolve_device's line), or None."""
    from .. import models

    try:
        models.resolve_device(device)
    except ReasamError as exc:
        return exc.message
    return None


def use_device(device: str) -> None:
    """Run this process's engines with weights on `device` (cpu, cuda, mps), not on their own
    choice: `reasam separate --device`. A device this machine lacks is refused (bad_request)
    before anything loads. Engines already created are dropped, so call it before the first job."""
    global _device
    if _device_error(device) is not None:
        raise bad_request(
            f"device {device} is not available here (available: {', '.join(available_devices())})"
        )
    with _lock:
        _device = device
        for name in _WEIGHTED:
            _instances.pop(name, None)


def _usable(name: str) -> Engine | None:
    engine = get(name)
    return engine if engine.unavailable_reason() is None else None


def choose(engine_name: str, text: str, spans: tuple[Span, ...]) -> Engine:
    """Pick the engine for a request, or fail with a message naming what would work."""
    if engine_name != "auto":
        engine = get(engine_name)
        reason = engine.unavailable_reason()
        if reason is not None:
            raise ReasamError("engine_failed", f"engine {engine_name} is not usable here: {reason}")
        if not engine.understands(text, spans):
            raise ReasamError("unsupported_prompt", _unsupported(text, spans, [engine]))
        return engine
    order = (["sam"] if "sam" in _FACTORIES else []) + [n for n in _FACTORIES if n != "sam"]
    candidates = [e for e in (_usable(n) for n in order) if e is not None]
    for engine in candidates:
        if engine.understands(text, spans):
            return engine
    raise ReasamError("unsupported_prompt", _unsupported(text, spans, candidates))


def _unsupported(text: str, spans: tuple[Span, ...], engines: list[Engine]) -> str:
    known = sorted({p for e in engines for p in e.capabilities.prompts})
    span_engines = [e.capabilities.name for e in engines if e.capabilities.spans]
    what = f"prompt {text!r}" + (" with spans" if spans else "") if text else "span prompt"
    parts = [f"no available engine understands {what}"]
    if known:
        parts.append(f"prompts that work: {', '.join(known)}")
    if span_engines:
        parts.append(f"span-only prompts work with: {', '.join(span_engines)}")
    parts.append(SAM_HINT)
    return "; ".join(parts)


def choose_set(engine_name: str, texts: Sequence[str], spans: tuple[Span, ...]) -> Engine:
    """Pick the engine for every prompt of a request; one prompt is `choose`'s choice.

    An engine serves a stem set when it understands every prompt of it: SAM-Audio any set, the
    embedded engines the sets drawn from their own prompts (spleeter: vocals, accompaniment,
    drums; dsp: drums, harmonic). Otherwise the one-line error names the prompts that need
    SAM-Audio. Two prompts that the chosen engine reads as the same stem are refused.
    """
    if len(texts) <= 1:
        return choose(engine_name, texts[0] if texts else "", spans)
    names_ = [engine_name] if engine_name != "auto" else ["sam", *[n for n in _FACTORIES if n != "sam"]]
    candidates: list[Engine] = []
    for name in names_:
        engine = get(name)
        reason = engine.unavailable_reason()
        if reason is not None:
            if engine_name != "auto":
                raise ReasamError("engine_failed", f"engine {engine_name} is not usable here: {reason}")
            continue
        if all(engine.understands(t, spans) for t in texts):
            return _distinct(engine, texts)
        candidates.append(engine)
    raise ReasamError("unsupported_prompt", _unsupported_set(texts, candidates))


def _distinct(engine: Engine, texts: Sequence[str]) -> Engine:
    """`engine`, when the prompts of its set name different stems; an engine with synonyms
    ("voice" for vocals) would otherwise return one estimate twice, and the cache key would
    hold one canonical prompt twice."""
    seen: dict[str, str] = {}
    for text in texts:
        canonical = engine.canonical_prompt(text) or text
        if canonical in seen:
            raise bad_request(
                f"prompts {seen[canonical]!r} and {text!r} name the same stem ({canonical!r}) "
                f"for {engine.capabilities.name}; give it once"
            )
        seen[canonical] = text
    return engine


def _unsupported_set(texts: Sequence[str], engines: list[Engine]) -> str:
    best = max(engines, key=lambda e: sum(e.understands(t, ()) for t in texts), default=None)
    if best is None:
        return f"no available engine serves the stem set {', '.join(texts)}; {SAM_HINT}"
    missing = [t for t in texts if not best.understands(t, ())]
    serves = ", ".join(best.capabilities.prompts)
    return (
        f"stem set {', '.join(texts)}: {', '.join(repr(t) for t in missing)} "
        f"{'needs' if len(missing) == 1 else 'need'} SAM-Audio ({best.capabilities.name} serves sets "
        f"of {serves}); {SAM_HINT}"
    )
