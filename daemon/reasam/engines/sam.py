"""SAM-Audio engine: any sound by free text and/or time spans, over the upstream `sam_audio`.

The upstream package is optional and detected at run time (`reasam engines` says what is
missing); weights come from `reasam.models`, which keeps one model warm between jobs.

How a request becomes model calls:

- text → `descriptions=[text]` (lower-cased, as the model was trained); a stem set's prompts
  → one batch, `descriptions=[text, …]` with the same audio (and anchors) repeated per item, as
  upstream's processor pairs `descriptions[i]` with `audios[i]` and `separate()` returns one
  target and residual per item (sam_audio/processor.py, sam_audio/model/model.py): one model
  call per chunk whatever the number of prompts; spans →
  `anchors=[("+"|"-", start, end), …]` relative to each call's audio, snapped outward to the
  model's 40 ms frames; a span-only prompt has the description "";
- quality → reranking candidates and ODE steps (`PRESETS`, README table). Candidates are ranked
  by the SAM-Audio judge (`models.JudgeRanker`); where the judge is not available (not
  downloaded, no access, cannot load) the preset runs one candidate with its ODE steps and says
  so once, in the manifest's `notes` and the log, rather than failing or drawing candidates
  nobody ranks. Span-only prompts are not reranked (the judge scores against the text). No
  preset uses upstream's span predictor: in upstream's `separate()` (sam_audio/model/model.py,
  commit 68b48d4) the model inputs are built before spans are predicted, so predicted spans never
  reach the model;
- noise: upstream draws fresh noise on every `separate()` call (`torch.randn_like`). Each call
  here draws it from torch's generator seeded with the request's `seed` and the call's position
  in the source, inside `torch.random.fork_rng` and one process-wide lock, so the same request
  gives the same stems bit for bit on one machine (CLI, daemon and cache agree) and nobody
  else's random state is touched;
- audio arrives at 48 kHz (the pipeline resamples with soxr), is downmixed to mono here and cast
  to the model's dtype (`Batch.to` never casts); the output, padded up to 1920-sample frames, is
  trimmed back to the input.

Long audio: the pipeline cuts chunks of `chunk_seconds` (default 30) overlapping by
`overlap_seconds` (default 2) with 0.5 s of context each side, and crossfades them. A chunk that
holds too little of the `+` spans gets a prefix: the spans' own audio (≤ 10 s of `+`, ≤ 5 s of
`-`, fetched once per job), anchored, followed by the chunk; the prefix's output is dropped. So
every chunk hears an example of the target.

Stereo: the model is mono. In `mask` mode (default) the mono target and residual become a
time-frequency ratio mask |T|² / (|T|² + |R|²) (2048-point STFT, hop 512) applied to every
channel of the original, so each stem keeps the mix's stereo image and its bits come from the
original audio; the pipeline's residual = mix - target keeps the sum exact. `mono` mode returns
the raw model target on every channel.

Cancel: forward pre-hooks on the model's transformer, which upstream calls once per model
evaluation (odeint → vector_field → forward → self.transformer), and on each of its blocks
(`DiT.forward` runs `for layer in self.layers`, sam_audio/model/transformer.py) run the job's
checkpoint, so a cancel stops a call within one transformer block; the model itself is
untouched and stays loaded.

"Not found": in the qualities that rank candidates (the judge is loaded for them), each target
is also scored by the judge against its text (its `overall`, one judge pass per chunk, averaged
over chunks by length), for the manifest's presence figures; a judge failure drops the score,
never the job (`_SamSeparation._judge`).

Memory: one model per process; the CUDA cache is emptied after every chunk. On out-of-memory
(CUDA's, or the host's: torch's CPU allocator raises a RuntimeError "can't allocate memory") the
chunk is retried in halves (crossfaded, sticky for the rest of the job) down to 5 s pieces;
beyond that the job fails with `out_of_memory` naming a variant that would fit, and the engine
stays usable.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from .. import models
from ..errors import ReasamError, detail
from ..request import Span
from .base import (
    Capabilities,
    Checkpoint,
    Engine,
    Prompt,
    Separation,
    SetSeparation,
    SpanFetcher,
    no_checkpoint,
)
from .chunking import Crossfader, plan

log = logging.getLogger(__name__)

SAMPLE_RATE = models.SAMPLE_RATE
HOP = models.HOP
FRAME_SECONDS = HOP / SAMPLE_RATE  # 0.04
# Longest call the engine accepts from the pipeline: under the 400 s position table, leaving room
# for a span prefix.
MAX_SECONDS = 380.0
PREFIX_PLUS_SECONDS = 10.0
PREFIX_MINUS_SECONDS = 5.0
# A chunk anchors its + spans in place when it holds at least this much of them (or half of
# their total length, if shorter); otherwise it gets the prefix.
IN_PLACE_SECONDS = 1.0
MIN_PIECE_SECONDS = 5.0  # out-of-memory retries halve pieces down to this
PIECE_OVERLAP_SECONDS = 1.0
MASK_FFT = 2048
MASK_HOP = 512
MASK_POWER = 2.0
MASK_EPS = 1e-12
STAT_KEYS = ("calls", "prefixed_calls", "oom_retries", "model_seconds", "mask_seconds")
# Seeding torch's generators is process-wide: one seeded model call at a time.
_RNG_LOCK = threading.Lock()


@dataclass(frozen=True)
class Preset:
    candidates: int  # reranking candidates (k× the transformer work), ranked by the judge
    ode_opt: dict = field(default_factory=dict)  # torchdiffeq options: method and step size

    @property
    def evaluations(self) -> int:
        """Model evaluations per candidate (midpoint: 2 per step)."""
        step = self.ode_opt["options"]["step_size"]
        return (2 if self.ode_opt["method"] == "midpoint" else 1) * round(1 / step)


PRESETS: dict[str, Preset] = {
    # 8 midpoint steps: half the upstream default's model evaluations.
    "fast": Preset(1, {"method": "midpoint", "options": {"step_size": 1 / 8}}),
    # The upstream default ODE (midpoint, step 2/32: 16 steps, 32 evaluations).
    "balanced": Preset(4, {"method": "midpoint", "options": {"step_size": 2 / 32}}),
    "best": Preset(8, {"method": "midpoint", "options": {"step_size": 2 / 32}}),
}


def _needs(quality: str, text: bool) -> tuple[int, frozenset[str]]:
    """(reranking candidates, extras to load) for a preset and prompt kind.

    Span-only prompts are not reranked (the judge scores against the text).
    """
    candidates = PRESETS[quality].candidates if text else 1
    return candidates, frozenset({"ranker"} if candidates > 1 else ())


def call_seed(seed: int, start: float) -> int:
    """The seed of one model call: the request's seed and where the call starts in the source,
    so chunks draw different noise and the same request draws the same."""
    return (seed * 1_000_003 + round(start * SAMPLE_RATE)) % 2**63


@contextlib.contextmanager
def seeded(device: torch.device, seed: int) -> Iterator[None]:
    """torch's generators seeded for one call; the CPU's and `device`'s states are restored."""
    devices = [device.index or 0] if device.type == "cuda" else []  # mps: seeded, not restored
    with _RNG_LOCK, torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _anchor_time(frame: int) -> float:
    """Seconds that the upstream processor (ceil(t * rate / hop)) maps to exactly `frame`.

    A frame boundary itself can round either way in floating point (0.12 s * 48000 is
    5760.000000000001, which ceils to frame 4, not 3); half a frame below is safe.
    """
    return 0.0 if frame <= 0 else (frame - 0.5) * FRAME_SECONDS


def anchor(sign: str, start: float, end: float, limit_frames: int) -> tuple[str, float, float] | None:
    """An anchor covering [start, end) seconds, snapped outward to frames, clipped to the call."""
    first = max(0, math.floor(start / FRAME_SECONDS + 1e-9))
    last = min(limit_frames, math.ceil(end / FRAME_SECONDS - 1e-9))
    if last <= first:
        return None
    return (sign, _anchor_time(first), _anchor_time(last))


@dataclass
class _Prefix:
    audio: np.ndarray  # mono, a whole number of frames
    anchors: list[tuple[str, float, float]]


def ratio_mask_stems(
    mix: torch.Tensor, target: torch.Tensor, residual: torch.Tensor, power: float = MASK_POWER
) -> torch.Tensor:
    """Apply the mask |T|^p / (|T|^p + |R|^p) of mono target/residual to every channel of `mix`.

    `mix` is (channels, n), `target` and `residual` (n,), all float32 on one device. Returns the
    masked mix, (channels, n). A mask of ones gives back `mix` to float precision.

    For a stem set, `target` and `residual` are (prompts, n): the mix is transformed once, and
    the masks are the joint ones of stemsets.share, |T_i|^p / (sum_j |T_j|^p + rest), from the
    model's own mono outputs, so prompts that claim the same sound share it. `rest` is
    min(|M - sum_j T_j|^p, min_j |R_j|^p), M the model's mono mix (the mean of T_j + R_j over
    prompts): prompts that together explain the mix leave nothing to the rest. Returns
    (prompts * channels, n), prompt by prompt. One prompt gives exactly the mask above.
    """
    n = mix.shape[-1]
    channels = mix.shape[0]
    targets, residuals = target.reshape(-1, n), residual.reshape(-1, n)
    count = targets.shape[0]
    window = torch.hann_window(MASK_FFT, device=mix.device)
    parts = [mix, targets, residuals]
    if count > 1:
        parts.append(((targets + residuals).mean(dim=0) - targets.sum(dim=0))[None])
    stacked = torch.cat(parts, dim=0)
    spec = torch.stft(stacked, MASK_FFT, MASK_HOP, window=window, center=True, return_complex=True)
    t = spec[channels : channels + count].abs().pow(power)
    r = spec[channels + count : channels + 2 * count].abs().pow(power).amin(dim=0)
    if count > 1:
        r = torch.minimum(r, spec[-1].abs().pow(power))
    mask = t / (t.sum(dim=0) + r + MASK_EPS)  # (prompts, bins, frames)
    masked = (spec[None, :channels] * mask[:, None]).reshape(count * channels, *spec.shape[1:])
    return torch.istft(masked, MASK_FFT, MASK_HOP, window=window, center=True, length=n)


class _SamSeparation(Separation):
    """One prepared prompt, or the prompts of a stem set run as one batch; holds a lease on the
    warm model until the job lets go of it.

    `separate` returns the first prompt's target (the one-prompt job); `separate_all` every
    prompt's, (prompts, channels, frames).
    """

    def __init__(
        self,
        engine: SamEngine,
        lease: models.Lease,
        prompt: Prompt,
        quality: str,
        candidates: int,
        fetch_span: SpanFetcher,
        more_texts: tuple[str, ...] = (),
        checkpoint: Checkpoint = no_checkpoint,
    ) -> None:
        self.engine = engine
        self.loaded = lease.model
        self.text = prompt.text
        self.texts = [prompt.text, *more_texts]
        self.checkpoint = checkpoint
        # Judge score per prompt, summed over chunks weighted by their length (see scores()).
        self._score_sum = [0.0] * len(self.texts)
        self._score_weight = 0.0
        self._judge_failed = False
        self.spans = spans = prompt.spans
        self.seed = prompt.seed
        self.quality = quality
        self.preset = PRESETS[quality]
        self.candidates = candidates
        self.stereo = prompt.stereo
        self.piece_frames: int | None = None  # set after an out-of-memory: pieces this long
        self._plus_total = sum(s.end - s.start for s in spans if s.positive)
        # Fetched now rather than when a chunk first needs it: holding `fetch_span` would tie this
        # object into the pipeline's reference cycle and delay the end of the lease to a GC pass.
        self._prefix = _build_prefix(spans, fetch_span) if spans else None
        # The lease ends when the pipeline drops this object (or on close()), whichever first.
        self._finalizer = weakref.finalize(self, lease.release)
        # What this job's calls did (engine.totals sums every job's), for tests and benchmarks.
        self.stats = dict.fromkeys(STAT_KEYS, 0.0)
        self.notes: list[str] = []

    def close(self) -> None:
        self._finalizer()

    def _count(self, key: str, value: float) -> None:
        self.stats[key] += value
        self.engine.totals[key] += value

    # -- public

    def separate(self, audio: np.ndarray, start: float) -> np.ndarray:
        return self.separate_all(audio, start)[0]

    def separate_all(self, audio: np.ndarray, start: float) -> np.ndarray:
        channels, n = audio.shape
        try:
            audio = np.ascontiguousarray(audio, dtype=np.float32)
            out = self._split(audio, start).reshape(len(self.texts), channels, n)
            self._judge(audio, out)
            return out
        except BaseException:
            # The pipeline ends the job on any error: let go of the model now rather than when
            # the traceback that holds this object is dropped.
            self.close()
            raise
        finally:
            models.empty_cache(self.loaded.device)

    # -- out-of-memory fallback: shorter pieces, crossfaded

    def scores(self) -> list[float | None]:
        """The judge's mean `overall` score per prompt, or None each when no judge ran."""
        if self._score_weight <= 0:
            return [None] * len(self.texts)
        return [round(total / self._score_weight, 4) for total in self._score_sum]

    def _split(self, audio: np.ndarray, start: float) -> np.ndarray:
        """Targets of every prompt stacked as (prompts * channels, n), so pieces crossfade as one."""
        n = audio.shape[1]
        if self.piece_frames is None or n <= self.piece_frames:
            try:
                return self._piece(audio, start)
            except Exception as exc:
                if not models.is_out_of_memory(exc):
                    raise
                message = str(exc)
            # Outside the except block: the traceback and its tensors are gone before retrying.
            self._shrink(n, message)
        assert self.piece_frames is not None
        overlap = min(int(PIECE_OVERLAP_SECONDS * SAMPLE_RATE), self.piece_frames // 4)
        fader = Crossfader(overlap)
        parts = []
        for piece in plan(n, self.piece_frames, overlap):
            y = self._split(audio[:, piece.start : piece.end], start + piece.start / SAMPLE_RATE)
            parts.append(fader.push(piece, y))
        return np.concatenate(parts, axis=1)

    def _shrink(self, n: int, message: str) -> None:
        self.engine.manager._free_memory()
        current = min(self.piece_frames or n, n)
        half = (current // 2) // HOP * HOP
        self._count("oom_retries", 1)
        if half < MIN_PIECE_SECONDS * SAMPLE_RATE:
            lm = self.loaded
            hint = models.suggest_variant(lm.variant, models.device_memory(lm.device))
            advice = [f"try variant {hint} (REASAM_SAM_VARIANT={hint})"] if hint else []
            if self.candidates > 1:
                advice.append("--quality fast (no reranking candidates)")
            if len(self.texts) > 1:
                # The prompts of a set run as one batch; shorter pieces never split the batch.
                advice.append(f"fewer prompts per job (this set runs {len(self.texts)} as one batch)")
            advice.append("or free GPU memory" if lm.device.type != "cpu" else "or free memory")
            raise ReasamError(
                "out_of_memory",
                f"SAM-Audio {lm.variant} ran out of memory on {lm.device} even on "
                f"{current / SAMPLE_RATE:.0f} s pieces with {self.candidates} candidate(s): "
                + ", ".join(advice)
                + f" ({detail(message)})",
            )
        log.warning(
            "out of memory on %.0f s of audio; retrying in %.0f s pieces",
            current / SAMPLE_RATE,
            half / SAMPLE_RATE,
        )
        self.piece_frames = half

    # -- one model call

    def _piece(self, audio: np.ndarray, start: float) -> np.ndarray:
        channels, n = audio.shape
        mono = audio.mean(axis=0)
        anchors, prefix = self._prompt_for(start, n)
        if prefix is not None:
            x = np.concatenate([prefix.audio, mono])
            p = prefix.audio.shape[0]
            self._count("prefixed_calls", 1)
        else:
            x, p = mono, 0
        targets, residuals = self._call(x, anchors, call_seed(self.seed, start))
        targets, residuals = targets[:, p : p + n], residuals[:, p : p + n]
        if self.stereo == "mono":
            return targets.repeat_interleave(channels, dim=0).cpu().numpy()
        t0 = time.perf_counter()
        mix = torch.from_numpy(audio).to(device=targets.device, dtype=torch.float32)
        out = ratio_mask_stems(mix, targets, residuals)
        self._count("mask_seconds", time.perf_counter() - t0)
        return out.cpu().numpy()

    def _stop_between_evaluations(self, module: torch.nn.Module, args: Any) -> None:
        """Forward pre-hook on the transformer and its blocks: the job's checkpoint."""
        self.checkpoint()

    def _call(self, x: np.ndarray, anchors: list | None, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One model call for every prompt: targets and residuals, (prompts, n) float32 each."""
        lm = self.loaded
        frames = math.ceil(x.shape[0] / HOP)
        if frames > models.MAX_FRAMES:
            raise ReasamError(
                "engine_failed",
                f"internal: a SAM-Audio call of {x.shape[0] / SAMPLE_RATE:.0f} s exceeds the model's ≈400 s",
            )
        t0 = time.perf_counter()
        wav = torch.from_numpy(np.ascontiguousarray(x)).to(device=lm.device, dtype=lm.dtype)[None]
        count = len(self.texts)
        batch = lm.processor(
            descriptions=list(self.texts),
            audios=[wav] * count,
            anchors=[anchors] * count if anchors else None,
        ).to(lm.device)
        transformer = lm.model.transformer
        hooks = [
            module.register_forward_pre_hook(self._stop_between_evaluations)
            for module in (transformer, *getattr(transformer, "layers", ()))
        ]
        try:
            self.checkpoint()
            with torch.inference_mode(), seeded(lm.device, seed):
                result = lm.model.separate(
                    batch, reranking_candidates=self.candidates, ode_opt=self.preset.ode_opt
                )
        finally:
            for hook in hooks:
                hook.remove()
        n = x.shape[0]

        def fit(wav: torch.Tensor) -> torch.Tensor:
            wav = wav.reshape(-1)[:n].float()
            if wav.shape[0] < n:  # never seen upstream; keep the contract if it happens
                wav = torch.nn.functional.pad(wav, (0, n - wav.shape[0]))
            return wav

        target = torch.stack([fit(t) for t in result.target])
        residual = torch.stack([fit(r) for r in result.residual])
        del result, batch
        del wav
        if lm.device.type == "cuda":
            torch.cuda.synchronize(lm.device)  # so model_seconds is the model's time, not its queueing
        self._count("calls", 1)
        self._count("model_seconds", time.perf_counter() - t0)
        return target, residual

    def _judge(self, audio: np.ndarray, targets: np.ndarray) -> None:
        """Score each prompt's target of a chunk with the judge, for the manifest's presence
        figures: upstream's ranker call with one candidate, on the chunk's mono mix and mono
        targets, once per chunk whatever pieces the separation took.

        Only for jobs whose quality ranks candidates (balanced, best: the judge is loaded for
        them anyway, so the score costs one judge pass per chunk); a `fast` job runs no judge,
        even on a warm model that holds one from an earlier job. Outside the out-of-memory
        fallback of `_split`: a judge that fails (out of memory included) drops the scores of
        this job, says so once in the log, and leaves the separation as it was.
        """
        lm = self.loaded
        if self._judge_failed or self.candidates <= 1 or not self.text or not lm.has_ranker:
            return
        n = audio.shape[-1]
        try:
            with torch.inference_mode():
                wav = torch.from_numpy(audio.mean(axis=0)).to(device=lm.device, dtype=lm.dtype)
                mono = torch.from_numpy(np.ascontiguousarray(targets.mean(axis=1)))
                scores = lm.model.text_ranker(
                    extracted_audio=[t[None].to(device=lm.device, dtype=lm.dtype) for t in mono],
                    input_audio=[wav[None]] * len(self.texts),
                    descriptions=list(self.texts),
                    sample_rate=SAMPLE_RATE,
                )
                values = scores.float().reshape(len(self.texts), -1)[:, 0].tolist()
        except Exception as exc:
            self._judge_failed = True
            self._score_weight = 0.0
            log.warning("the judge failed on a chunk; this job's stems get no judge score (%s)", detail(exc))
            return
        finally:
            models.empty_cache(lm.device)
        for i, score in enumerate(values):
            self._score_sum[i] += score * n
        self._score_weight += n

    # -- spans

    def _prompt_for(self, start: float, n: int) -> tuple[list | None, _Prefix | None]:
        """Anchors for a call covering [start, start + n) source seconds, and a prefix if needed."""
        if not self.spans:
            return None, None
        duration = n / SAMPLE_RATE
        limit = math.ceil(n / HOP)
        inside, plus_inside = [], 0.0
        for span in self.spans:
            a, b = max(span.start - start, 0.0), min(span.end - start, duration)
            if b <= a:
                continue
            inside.append((span.sign, a, b))
            if span.positive:
                plus_inside += b - a
        if plus_inside >= min(IN_PLACE_SECONDS, 0.5 * self._plus_total):
            anchors = [x for x in (anchor(s, a, b, limit) for s, a, b in inside) if x]
            return anchors or None, None
        prefix = self._prefix
        assert prefix is not None
        shift = prefix.audio.shape[0] / SAMPLE_RATE
        total = limit + prefix.audio.shape[0] // HOP
        anchors = list(prefix.anchors)
        anchors += [x for x in (anchor(s, a + shift, b + shift, total) for s, a, b in inside) if x]
        return anchors, prefix


class _SamSet(SetSeparation):
    """A stem set's view of a batched `_SamSeparation`. In `mask` stereo mode its masks are
    already joint (`ratio_mask_stems`), so the pipeline does not share them out again."""

    def __init__(self, separation: _SamSeparation) -> None:
        self.separation = separation
        self.notes = separation.notes
        self.shared = separation.stereo == "mask"

    @property
    def stats(self) -> dict[str, float]:
        return self.separation.stats

    def separate(self, audio: np.ndarray, start: float) -> np.ndarray:
        return self.separation.separate_all(audio, start)

    def scores(self) -> list[float | None]:
        return self.separation.scores()

    def close(self) -> None:
        self.separation.close()


def _build_prefix(spans: tuple[Span, ...], fetch_span: SpanFetcher) -> _Prefix:
    """The spans' own audio: ≤ 10 s of + spans, then ≤ 5 s of - spans, each frame-padded."""
    parts: list[np.ndarray] = []
    anchors = []
    frames = 0
    for sign, budget in (("+", PREFIX_PLUS_SECONDS), ("-", PREFIX_MINUS_SECONDS)):
        left = int(budget * SAMPLE_RATE)
        for span in spans:
            if span.sign != sign or left <= 0:
                continue
            audio = np.asarray(fetch_span(span), dtype=np.float32)
            mono = audio.reshape(-1, audio.shape[-1]).mean(axis=0)
            mono = mono[: min(left, round((span.end - span.start) * SAMPLE_RATE))]
            if mono.shape[0] == 0:
                continue
            padded = np.zeros(math.ceil(mono.shape[0] / HOP) * HOP, dtype=np.float32)
            padded[: mono.shape[0]] = mono
            parts.append(padded)
            count = padded.shape[0] // HOP
            anchors.append((sign, _anchor_time(frames), _anchor_time(frames + count)))
            frames += count
            left -= mono.shape[0]
    audio = np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)
    return _Prefix(audio, anchors)


class SamEngine(Engine):
    """SAM-Audio (Meta): isolate any sound described by text and/or marked by time spans."""

    def __init__(self, manager: models.ModelManager | None = None, device: str | None = None) -> None:
        # A bad REASAM_SAM_* setting makes this engine unusable, never the registry.
        self._settings_error: str | None = None
        if manager is None:
            try:
                manager = models.default_manager()
                if device is not None:  # engines.use_device: this device, not REASAM_SAM_DEVICE's
                    manager = models.ModelManager(replace(manager.settings, device=device))
                    models.set_default_manager(manager)
            except ReasamError as exc:
                self._settings_error = f"bad SAM setting: {exc.message}"
                manager = models.ModelManager(models.SamSettings())
        self.manager = manager
        settings = self.manager.settings
        try:
            device = str(self.manager.device())
        except ReasamError:
            device = settings.device
        try:
            variant = self.manager.variant()
        except ReasamError:
            variant = settings.variant
        model = str(settings.model_path) if settings.model_path else models.repo_id(variant)
        self.capabilities = Capabilities(
            name="sam",
            description="SAM-Audio (Meta): any sound by free text and/or + / - time spans",
            prompts={},
            free_text=True,
            spans=True,
            sample_rate=SAMPLE_RATE,
            channels=None,  # all channels at once: stereo is rebuilt here from the mono model
            max_seconds=MAX_SECONDS,
            chunk_seconds=settings.chunk_seconds,
            overlap_seconds=settings.overlap_seconds,
            device=device,
            model=model,
        )
        self.totals = dict.fromkeys(STAT_KEYS, 0.0)

    def unavailable_reason(self) -> str | None:
        if self._settings_error is not None:
            return self._settings_error
        problem = models.sam_audio_problem()
        if problem is not None:
            return problem
        try:
            self.manager.check()
        except ReasamError as exc:
            return exc.message
        return None

    def warm(self, quality: str = "balanced") -> None:
        """Load the model with what a text prompt of `quality` needs; keep-alive decides after."""
        self.manager.acquire(extras=_needs(quality, True)[1]).release()

    def state(self) -> str:
        return self.manager.state_line()

    def describe(self) -> dict:
        row = super().describe()
        row["model"] = self.capabilities.model
        row["model_state"] = self.manager.state_line()
        row["model_info"] = self.manager.state()
        row["presets"] = {
            name: {
                "candidates": p.candidates,
                "ranker": "judge" if p.candidates > 1 else None,
                "evaluations": p.evaluations,
            }
            for name, p in PRESETS.items()
        }
        return row

    def prepare(
        self,
        prompt: Prompt,
        quality: str,
        fetch_span: SpanFetcher,
        sample_rate: int,
        checkpoint: Checkpoint = no_checkpoint,
    ) -> Separation:
        return self._prepare(prompt, (), quality, fetch_span, sample_rate, checkpoint)

    def prepare_set(
        self,
        prompts: Sequence[Prompt],
        quality: str,
        fetch_span: SpanFetcher,
        sample_rate: int,
        checkpoint: Checkpoint = no_checkpoint,
    ) -> SetSeparation:
        """Every prompt in one batch per chunk (see the module docstring)."""
        first, *more = prompts
        if any(p.spans for p in more):
            raise ReasamError("bad_request", "spans go with one prompt; a stem set takes text prompts only")
        separation = self._prepare(
            first, tuple(p.text for p in more), quality, fetch_span, sample_rate, checkpoint
        )
        return _SamSet(separation)

    def _prepare(
        self,
        prompt: Prompt,
        more_texts: tuple[str, ...],
        quality: str,
        fetch_span: SpanFetcher,
        sample_rate: int,
        checkpoint: Checkpoint,
    ) -> _SamSeparation:
        if sample_rate != SAMPLE_RATE:
            raise ReasamError("internal", f"SAM-Audio runs at {SAMPLE_RATE} Hz, was given {sample_rate} Hz")
        if self._settings_error is not None:
            raise ReasamError("bad_request", self._settings_error)
        if quality not in PRESETS:
            raise ReasamError("bad_request", f"quality must be one of {', '.join(PRESETS)}, got {quality!r}")
        if not prompt.text and not any(s.positive for s in prompt.spans):
            raise ReasamError("unsupported_prompt", "SAM-Audio needs a text prompt or a + span")
        candidates, extras = _needs(quality, bool(prompt.text))
        lease = self.manager.acquire(extras=extras)
        try:
            lm = lease.model
            note = None
            if candidates > 1 and not lm.has_ranker:
                reason = lm.missing.get("ranker", "no ranker loaded")
                note = (
                    f"quality {quality} ran without reranking (1 candidate instead of {candidates}, "
                    f"{self._steps(quality)}): {reason}"
                )
                candidates = 1
            separation = _SamSeparation(
                self, lease, prompt, quality, candidates, fetch_span, more_texts, checkpoint
            )
        except BaseException:
            lease.release()
            raise
        if note is not None:
            log.warning("SAM-Audio: %s", note)
            separation.notes.append(note)
        return separation

    @staticmethod
    def _steps(quality: str) -> str:
        ode = PRESETS[quality].ode_opt
        return f"{round(1 / ode['options']['step_size'])} {ode['method']} steps"
