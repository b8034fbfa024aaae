"""Test double of `sam_audio.model`: `SAMAudio` with the documented API and traps, no network.

This is NOT SAM-Audio. It follows the behaviour documented in ../shared/docs/sam-audio.md and the
upstream code so ReaSAM's engine can be tested on machines that cannot install the real package:

- `SAMAudio.from_pretrained(repo_id_or_local_dir, **overrides)` goes through huggingface_hub's
  `ModelHubMixin` with the *old* `_from_pretrained` signature (keyword-only `proxies` and
  `resume_download` without defaults), so with huggingface_hub >= 1.0 it fails with the same
  `TypeError` as upstream. `_from_pretrained` reads `config.json` and `checkpoint.pt`
  (`torch.load(weights_only=True)`) from the folder; overrides replace top-level config keys
  that exist. `text_ranker`, `visual_ranker` and `span_predictor` are built from the config
  (None disables them); the vision encoder is always built, and `_get_video_features` reads
  `self.vision_encoder.dim` even for audio-only calls, as upstream does.
- `separate(batch, noise=None, ode_opt=..., reranking_candidates=1, predict_spans=False)`
  returns `.target` / `.residual` as LISTS of 1-D tensors at 48 kHz in the model's dtype and
  device, each padded up to a multiple of 1920 samples (40 ms frames). Input of another dtype or
  device raises RuntimeError (Batch.to never casts); more than 10 000 frames (~400 s) raises the
  RuntimeError of the rotary position table; `reranking_candidates=k` repeats the work k times
  and, with no ranker configured, silently keeps candidate 0.

Its "separation" is a deterministic, checkable function of the prompt, computed with an STFT
(2048 points, hop 480: four STFT hops per 40 ms model frame) on the mono downmix:

- text naming a band keeps that band: "bass"/"low" < 250 Hz, "mid" 250-6000 Hz,
  "hiss"/"high" > 6 kHz, "band A-B hz" A..B Hz, "everything" all, "silence" nothing; any other
  text finds nothing (a zero target);
- `+` anchors (as aligned frames, so the upstream ceil rounding applies) select the frequency
  bins whose mean magnitude inside the `+` frames is more than twice the mean elsewhere: the
  sound that is present in the anchored audio and rare outside it, wherever it occurs; with text
  naming a band, only bins in that band; frames under `-` anchors get no target;
- reranking candidates differ: candidate c is the target scaled by 1 - 0.1 (k-1-c)/(k-1), so an
  unranked call returns a target 10 % too quiet and a ranked call (the double's rankers prefer
  the loudest candidate) returns the exact one;
- residual = padded mono input - target.

Test knobs live under the config's "double" key: `oom_above_seconds` (raise
`torch.cuda.OutOfMemoryError` when seconds x candidates x batch exceeds it), `unavailable`
(names among "clap", "judge", "span_predictor" whose construction raises ImportError), `rtf`
(sleep this many seconds per audio second per candidate at the default 32 model evaluations),
and `calls` on the model records every `separate` call for assertions.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from dataclasses import dataclass
from typing import Any

import torch
from huggingface_hub import ModelHubMixin

from .processor import ANCHOR_IDS, Batch

DFLT_ODE_OPT = {"method": "midpoint", "options": {"step_size": 2 / 32}}
N_FFT = 2048
STFT_HOP = 480
BANDS = {
    "bass": (0.0, 250.0),
    "low": (0.0, 250.0),
    "mid": (250.0, 6000.0),
    "hiss": (6000.0, math.inf),
    "high": (6000.0, math.inf),
    "everything": (0.0, math.inf),
    "silence": (0.0, 0.0),
}
_BAND = re.compile(r"band\s+([0-9.]+)\s*-\s*([0-9.]+)\s*hz")


def band_of(description: str) -> tuple[float, float] | None:
    text = description.strip().lower()
    m = _BAND.search(text)
    if m:
        return float(m.group(1)), float(m.group(2))
    for word, band in BANDS.items():
        if word in text.split():
            return band
    return None


def nfe_of(ode_opt: dict) -> int:
    """Model evaluations of an ODE option: midpoint 2 per step, euler 1, over t in [0, 1]."""
    step = float(ode_opt.get("options", {}).get("step_size", 2 / 32))
    per_step = {"midpoint": 2, "euler": 1, "rk4": 4}.get(ode_opt.get("method", "midpoint"), 2)
    return per_step * max(1, round(1 / step))


class SAMAudioConfig:
    def __init__(self, **config: Any) -> None:
        self.raw = config
        codec = config.get("audio_codec") or {}
        self.sample_rate = int(codec.get("sample_rate", 48_000))
        self.hop_length = int(math.prod(codec.get("encoder_rates", [2, 8, 10, 12])))
        self.dim = int((config.get("transformer") or {}).get("dim", 32))
        self.max_positions = int((config.get("transformer") or {}).get("max_positions", 10_000))
        self.vision_dim = int((config.get("vision_encoder") or {}).get("dim", 128))
        self.text_encoder = (config.get("text_encoder") or {}).get("name", "t5-base")
        self.text_ranker = config.get("text_ranker")
        self.visual_ranker = config.get("visual_ranker")
        self.span_predictor = config.get("span_predictor")
        self.double = config.get("double") or {}


def _unavailable(cfg: SAMAudioConfig, name: str) -> None:
    if name in cfg.double.get("unavailable", ()):
        raise ImportError('Install reranking dependencies: `pip install "sam-audio[reranking]"`')


class Ranker(torch.nn.Module):
    """Scores candidates; the double's rankers prefer the loudest candidate."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def forward(self, extracted_audio, input_audio=None, descriptions=None, sample_rate=48_000, **_):
        return torch.stack([wavs.float().pow(2).mean(-1) for wavs in extracted_audio])


def create_ranker(config: dict | None, cfg: SAMAudioConfig) -> Ranker | None:
    if config is None:
        return None
    kind = config.get("kind", "clap")
    kinds = [r[0].get("kind") for r in config.get("rankers", {}).values()] if kind == "ensemble" else [kind]
    for k in kinds:
        _unavailable(cfg, k)
    return Ranker(kind)


class SpanPredictor(torch.nn.Module):
    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.weight = torch.nn.Parameter(torch.zeros(4))


class VisionEncoder(torch.nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.weight = torch.nn.Parameter(torch.zeros(dim, dim))


class Transformer(torch.nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(dim, dim))
        self.gain = torch.nn.Parameter(torch.ones(1))


@dataclass
class SeparationResult:
    target: list[torch.Tensor]
    residual: list[torch.Tensor]
    noise: torch.Tensor | None = None


class BaseModel(torch.nn.Module, ModelHubMixin):
    config_cls = SAMAudioConfig
    revision = None

    @classmethod
    def _from_pretrained(
        cls,
        *,
        model_id: str,
        revision: str | None,
        cache_dir: str | None,
        force_download: bool,
        proxies: dict | None,
        resume_download: bool,
        local_files_only: bool,
        token: str | bool | None,
        map_location: str = "cpu",
        strict: bool = True,
        **model_kwargs: Any,
    ):
        if os.path.isdir(model_id):
            folder = model_id
        else:
            from huggingface_hub import snapshot_download

            folder = snapshot_download(
                repo_id=model_id,
                revision=revision,
                cache_dir=cache_dir,
                force_download=force_download,
                proxies=proxies,
                resume_download=resume_download,
                token=token,
                local_files_only=local_files_only,
            )
        with open(os.path.join(folder, "config.json")) as fin:
            config = json.load(fin)
        for key, value in model_kwargs.items():
            if key in config:
                config[key] = value
        model = cls(cls.config_cls(**config))
        state = torch.load(
            os.path.join(folder, "checkpoint.pt"), weights_only=True, map_location=map_location
        )
        model.load_state_dict(state, strict=strict)
        return model


class SAMAudio(BaseModel):
    def __init__(self, cfg: SAMAudioConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.text_encoder_name = cfg.text_encoder
        self.transformer = Transformer(cfg.dim)
        self.vision_encoder = VisionEncoder(cfg.vision_dim)
        self.visual_ranker = create_ranker(cfg.visual_ranker, cfg)
        self.text_ranker = create_ranker(cfg.text_ranker, cfg)
        if cfg.span_predictor is not None:
            _unavailable(cfg, "span_predictor")
            self.span_predictor = SpanPredictor(cfg.span_predictor)
        self.calls: list[dict] = []

    @property
    def sample_rate(self) -> int:
        return self.cfg.sample_rate

    def load_state_dict(self, state_dict, strict: bool = True):
        missing, unexpected = super().load_state_dict(state_dict, strict=False)
        skip = re.compile("^(text_encoder|visual_ranker|text_ranker|span_predictor)")
        missing = [k for k in missing if not skip.search(k)]
        if strict and (missing or unexpected):
            raise RuntimeError(f"Missing keys: {missing}, unexpected_keys: {unexpected}")

    def _get_video_features(self, video, batch: int, frames: int, like: torch.Tensor) -> torch.Tensor:
        if video is None:
            return like.new_zeros(batch, self.vision_encoder.dim, frames)
        return self.vision_encoder(video)

    def _stft(self, x: torch.Tensor) -> torch.Tensor:
        window = torch.hann_window(N_FFT, device=x.device)
        return torch.stft(x, N_FFT, STFT_HOP, window=window, center=True, return_complex=True)

    def _istft(self, spec: torch.Tensor, length: int) -> torch.Tensor:
        window = torch.hann_window(N_FFT, device=spec.device)
        return torch.istft(spec, N_FFT, STFT_HOP, window=window, center=True, length=length)

    def _target(self, wav: torch.Tensor, description: str, tokens: torch.Tensor | None) -> torch.Tensor:
        """The double's separation of one padded mono item (float32)."""
        spec = self._stft(wav)
        bins, count = spec.shape
        freqs = torch.fft.rfftfreq(N_FFT, 1.0 / self.sample_rate).to(wav.device)
        band = band_of(description)
        in_band = torch.ones(bins, dtype=torch.bool, device=wav.device)
        if band is not None:
            in_band = (freqs >= band[0]) & (freqs < band[1])
        model_frame = torch.clamp(
            torch.arange(count, device=wav.device) * STFT_HOP // self.cfg.hop_length,
            max=len(tokens) - 1 if tokens is not None else 0,
        )
        plus = minus = None
        if tokens is not None:
            plus = tokens[model_frame] == ANCHOR_IDS["+"]
            minus = tokens[model_frame] == ANCHOR_IDS["-"]
        if plus is not None and bool(plus.any()):
            mag = spec.abs()
            inside = mag[:, plus].mean(1)
            outside = mag[:, ~plus].mean(1) if bool((~plus).any()) else torch.zeros_like(inside)
            mask = (inside > 2 * outside) & in_band
        elif band is not None:
            mask = in_band
        else:
            mask = torch.zeros(bins, dtype=torch.bool, device=wav.device)
        full = mask[:, None].expand(bins, count).clone()
        if minus is not None:
            full[:, minus] = False
        return self._istft(spec * full, wav.shape[-1])

    @torch.inference_mode()
    def separate(
        self,
        batch: Batch,
        noise: torch.Tensor | None = None,
        ode_opt: dict = DFLT_ODE_OPT,
        reranking_candidates: int = 1,
        predict_spans: bool = False,
    ) -> SeparationResult:
        weight = self.transformer.weight
        audios = batch.audios
        if audios.device != weight.device:
            raise RuntimeError(
                f"Expected all tensors to be on the same device, found {audios.device} and {weight.device}"
            )
        if audios.dtype != weight.dtype:
            raise RuntimeError(
                f"Input type ({audios.dtype}) and weight type ({weight.dtype}) should be the same"
            )
        k = int(reranking_candidates)
        bsz = audios.size(0)
        frames = int(batch.sizes.max())
        if frames > self.cfg.max_positions:
            raise RuntimeError(
                f"The size of tensor a ({frames}) must match the size of tensor b "
                f"({self.cfg.max_positions}) at non-singleton dimension 1"
            )
        hop = self.cfg.hop_length
        seconds = frames * hop / self.sample_rate
        limit = self.cfg.double.get("oom_above_seconds")
        if limit is not None and seconds * k * bsz > float(limit):
            raise torch.cuda.OutOfMemoryError(
                f"CUDA out of memory. Tried to allocate {seconds * k * bsz / 10:.2f} GiB (test double: "
                f"{seconds:.1f} s x {k} candidates > {limit} s)"
            )
        self._get_video_features(None, bsz * k, frames, audios)
        predicted = None
        if predict_spans and hasattr(self, "span_predictor") and batch.anchors is None:
            predicted = []
        nfe = nfe_of(ode_opt)
        rtf = float(self.cfg.double.get("rtf", 0.0))
        if rtf:
            time.sleep(rtf * seconds * bsz * k * nfe / 32)
        targets, residuals, chosen = [], [], []
        for b in range(bsz):
            length = int(batch.sizes[b]) * hop
            wav = torch.zeros(length, device=audios.device, dtype=torch.float32)
            size = min(int(batch.wav_sizes[b]), audios.size(-1))
            wav[:size] = audios[b, 0, :size].float()
            tokens = None
            if batch.anchors is not None:
                tokens = batch.anchor_ids[b][batch.anchor_alignment[b][: int(batch.sizes[b])]]
            target = self._target(wav, batch.descriptions[b], tokens) * self.transformer.gain.float()
            if predicted is not None:
                predicted.append(self._predict(target))
            scales = [1.0 - 0.1 * (k - 1 - c) / (k - 1) if k > 1 else 1.0 for c in range(k)]
            candidates = torch.stack([target * s for s in scales])
            if k > 1 and self.text_ranker is not None:
                idx = int(self.text_ranker(extracted_audio=[candidates])[0].argmax())
            else:
                idx = 0
            chosen.append(idx)
            best = candidates[idx]
            targets.append(best.to(weight.dtype))
            residuals.append((wav - best).to(weight.dtype))
        self.calls.append(
            {
                "descriptions": list(batch.descriptions),
                "anchors": batch.anchors,
                "reranking_candidates": k,
                "predict_spans": predict_spans,
                "predicted_spans": predicted,
                "ode_opt": ode_opt,
                "nfe": nfe,
                "dtype": audios.dtype,
                "device": str(audios.device),
                "frames": frames,
                "chosen": chosen,
            }
        )
        return SeparationResult(target=targets, residual=residuals, noise=noise)

    def _predict(self, target: torch.Tensor) -> list[tuple[float, float]]:
        """Spans where the target is active (recorded only; the double separates by text)."""
        hop = self.cfg.hop_length
        frames = target[: target.numel() // hop * hop].reshape(-1, hop).pow(2).mean(1)
        active = (
            (frames > 0.01 * float(frames.max()))
            if frames.numel() and float(frames.max()) > 0
            else frames > 1
        )
        spans, start = [], None
        for i, on in enumerate([*active.tolist(), False]):
            if on and start is None:
                start = i
            elif not on and start is not None:
                spans.append((start * hop / self.sample_rate, i * hop / self.sample_rate))
                start = None
        return spans


__all__ = ["DFLT_ODE_OPT", "SAMAudio", "SAMAudioConfig", "SeparationResult"]
