"""The engine interface: what every separator declares and does.

An engine turns audio + prompt into a target signal. It knows nothing of files, OSC or REAPER:
the pipeline reads the region, resamples to the engine's native rate, adapts channels, cuts
long audio into chunks and computes the residual as `mix - target`, which is what makes the
sum rule exact for every engine.

A stem set (several prompts in one job) is prepared with `prepare_set`: one estimate per prompt
per chunk. By default each prompt is prepared on its own; an engine that can do better (SAM-Audio
runs the prompts as one batch) overrides it.

Cancel: `prepare` and `prepare_set` take a `checkpoint`, which raises when the job is to stop.
Engines call it between their own steps (network segments, NMF iterations, model evaluations),
so a cancel lands within a second rather than at the end of a chunk.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..request import Span


@dataclass(frozen=True)
class Capabilities:
    """What an engine declares, so `auto` can choose and the pipeline can feed it."""

    name: str
    description: str
    # Canonical prompt -> accepted synonyms (all lower case). Empty for span-only engines.
    prompts: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    free_text: bool = False  # understands arbitrary text (SAM-Audio)
    spans: bool = False  # understands + / - span prompts
    sample_rate: int | None = None  # native rate; None = any rate as given
    channels: int | None = None  # channels per call: 1 mono model, 2 stereo model, None any
    max_seconds: float = 600.0  # longest audio per call
    chunk_seconds: float = 30.0  # preferred chunk for long audio
    overlap_seconds: float = 1.0  # crossfade between chunks
    device: str = "cpu"
    model: str = ""  # the weights behind the engine, for manifest.json ("" = none)


# Fetches the audio of a span (source seconds), already at the engine's rate and channel layout
# of the call, so span-driven engines can learn from or prepend it.
SpanFetcher = Callable[[Span], np.ndarray]
# Raises (the pipeline's JobCancelled) when the job is to stop; returns None otherwise.
Checkpoint = Callable[[], None]


def no_checkpoint() -> None:
    """The checkpoint of a job nobody can cancel."""
    return None


@dataclass(frozen=True)
class Prompt:
    """A prompt as an engine sees it: canonical text (or "" for spans only) and spans."""

    text: str
    spans: tuple[Span, ...] = ()
    stereo: str = "mask"  # request.OutputOptions.stereo: how a mono model's output fills channels
    seed: int = 0  # request.Request.seed: for engines that draw random numbers (sam's noise)


class Separation(ABC):
    """A prompt prepared for one job; called once per chunk (and channel group)."""

    # What the user should know about how the job ran (a preset that ran with less than it
    # names, say): the pipeline writes them into manifest.json's `notes`.
    notes: Sequence[str] = ()

    @abstractmethod
    def separate(self, audio: np.ndarray, start: float) -> np.ndarray:
        """Return the target for `audio` (channels, frames) float32 at the engine's rate.

        `start` is the source time (seconds) of the first frame, so span-aware engines can
        place spans relative to the chunk. The result has exactly the input's shape.
        """


class SetSeparation(ABC):
    """The prompts of a stem set prepared for one job; called once per chunk (and channel group)."""

    notes: Sequence[str] = ()
    # True when the estimates already share the mix jointly (masks that sum to at most one per
    # time-frequency bin, stemsets.share's rule); the pipeline then does not share them again.
    shared: bool = False

    @abstractmethod
    def separate(self, audio: np.ndarray, start: float) -> np.ndarray:
        """Return one estimate per prompt, (prompts, channels, frames) float32, for `audio`."""

    def scores(self) -> list[float | None]:
        """Per prompt, a model's own judgement of how well it found the sound (higher is
        better), or None where the engine has none."""
        return []


class EachPrompt(SetSeparation):
    """A stem set as separate preparations, one per prompt: what every engine can do."""

    def __init__(self, separations: Sequence[Separation]) -> None:
        self.separations = list(separations)
        self.notes = list(dict.fromkeys(n for sep in self.separations for n in sep.notes))

    def separate(self, audio: np.ndarray, start: float) -> np.ndarray:
        return np.stack([sep.separate(audio, start) for sep in self.separations])


class Engine(ABC):
    """A separator; instances are long-lived so loaded weights stay warm."""

    capabilities: Capabilities

    def unavailable_reason(self) -> str | None:
        """None when usable here; else one line saying what is missing."""
        return None

    def canonical_prompt(self, text: str) -> str | None:
        """Map a user's text to the engine's canonical prompt, or None if not understood."""
        key = " ".join(text.lower().split())
        for canonical, synonyms in self.capabilities.prompts.items():
            if key == canonical or key in synonyms:
                return canonical
        return key if self.capabilities.free_text and key else None

    def understands(self, text: str, spans: tuple[Span, ...]) -> bool:
        if text and self.canonical_prompt(text) is None:
            return False
        return self.capabilities.spans or not spans

    @abstractmethod
    def prepare(
        self,
        prompt: Prompt,
        quality: str,
        fetch_span: SpanFetcher,
        sample_rate: int,
        checkpoint: Checkpoint = no_checkpoint,
    ) -> Separation:
        """Prepare a prompt (load weights, learn span profiles) before the first chunk.

        `sample_rate` is the rate of every call's audio: the engine's native rate, or the
        source's for engines that take any rate. `checkpoint` is called between steps.
        """

    def prepare_set(
        self,
        prompts: Sequence[Prompt],
        quality: str,
        fetch_span: SpanFetcher,
        sample_rate: int,
        checkpoint: Checkpoint = no_checkpoint,
    ) -> SetSeparation:
        """Prepare every prompt of a stem set; by default one preparation per prompt."""
        return EachPrompt([self.prepare(p, quality, fetch_span, sample_rate, checkpoint) for p in prompts])

    def warm(self, quality: str = "balanced") -> None:
        """Load what jobs of `quality` need now, so the first job does not pay for it."""
        return None

    def state(self) -> str:
        """One line on what is in memory, for the daemon's ping; weightless engines are "ready"."""
        return "ready"

    def describe(self) -> dict:
        """A plain summary for `reasam engines` and the daemon's ping."""
        caps = self.capabilities
        return {
            "name": caps.name,
            "description": caps.description,
            "available": self.unavailable_reason() is None,
            "reason": self.unavailable_reason(),
            "device": caps.device,
            "model": caps.model,
            "prompts": {k: list(v) for k, v in caps.prompts.items()},
            "free_text": caps.free_text,
            "spans": caps.spans,
            "sample_rate": caps.sample_rate,
            "channels": caps.channels,
            "max_seconds": caps.max_seconds,
        }
