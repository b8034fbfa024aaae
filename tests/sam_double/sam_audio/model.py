"""Test double of `sam_audio.model` (upstream facebookresearch/sam-audio, commit 68b48d4).

This is NOT SAM-Audio. It keeps upstream's API and behaviour, call for call, where ReaSAM meets
them, so the engine can be tested on machines without the real package or its gated weights.
Each fact names the upstream file it stands in for:

- `BaseModel._from_pretrained` (sam_audio/model/base.py): keyword-only `model_id`, `cache_dir`,
  `force_download`, `proxies`, `resume_download`, `local_files_only`, `token` without defaults,
  then `map_location`, `strict` and an optional `revision` that is ignored (the snapshot is
  fetched at the class's own `revision`). Through huggingface_hub's real `ModelHubMixin` this
  fails on huggingface_hub >= 1.0, which no longer passes `proxies`/`resume_download`. It reads
  `config.json`, replaces only the keys present in it by the keyword overrides, builds
  `config_cls(**config)` and loads `checkpoint.pt` with `torch.load(weights_only=True)`.
- `SAMAudioConfig` (sam_audio/model/config.py): `span_predictor` defaults to
  "pe-a-frame-large", `text_ranker`/`visual_ranker` to None; `text_encoder.name` to "t5-base";
  the codec's `codebook_dim` to 128 (the model's features are 2 x 128 wide).
- `SAMAudio.__init__` (sam_audio/model/model.py): the T5 text encoder is loaded by name
  (sam_audio/model/text_encoder.py: `transformers.T5EncoderModel.from_pretrained(cfg.name)`), the
  vision encoder is always built, rankers come from `create_ranker` and the span predictor from
  `PEAudioFrame.from_config(name, pretrained=True)` whenever `span_predictor` is not None.
  What these fetch from the hub is looked up in the local hub cache only (this machine has no
  hub) and every such request is recorded in `HUB_REQUESTS`, so tests can see what a load asks
  the hub for.
- Rankers (sam_audio/ranking/__init__.py, clap.py, judge.py, imagebind.py): "clap" imports
  `laion_clap` and fetches `630k-best.pt` from lukewys/laion_clap unless a `checkpoint` is
  given; "judge" builds `SAMAudioJudgeModel.from_pretrained(checkpoint_or_model_id)` (the same
  ModelHubMixin path, so the same TypeError on huggingface_hub >= 1.0) and its processor;
  "imagebind" imports `imagebind`; "ensemble" builds each.
- Batches (sam_audio/processor.py `SAMAudioProcessor.__call__`, sam_audio/model/model.py
  `separate`): the processor asserts one audio per description and pads the audios into one
  (B, 1, T) batch; `separate` runs every item in one call and returns one target and one
  residual per item, in the order of the descriptions, each ranked on its own. Several prompts
  over one audio are a batch of the same audio repeated, one description each.
- Model evaluations (sam_audio/model/model.py `separate`): `odeint` calls `vector_field`, which
  calls `self.forward`, which calls `self.transformer(...)` as a module, once per evaluation
  (`nfe_of(ode_opt)` times), whose `forward` calls each of its `layers` as a module
  (sam_audio/model/transformer.py `DiT.forward`): forward hooks on `model.transformer` and on
  its layers run before each evaluation and each block.
- `separate(batch, noise=None, ode_opt=DFLT_ODE_OPT, reranking_candidates=1,
  predict_spans=False)` (sam_audio/model/model.py), in upstream's order: the model inputs
  (anchors included) are built from the batch first; then, if asked and a span predictor exists
  and the batch has no anchors, spans are predicted and written into the batch with
  `process_anchors`, too late to reach the model (no effect on the output); then, unless `noise`
  is given, fresh noise is drawn with `torch.randn_like` over the (B x candidates, frames, 256)
  features, so every call differs unless the caller seeds torch or passes `noise`. The text
  ranker scores `extracted_audio` (per item, a (candidates, samples) tensor) with
  `input_audio`, `descriptions` and `sample_rate`, and the argmax wins; with no ranker,
  candidate 0. `.target` / `.residual` are LISTS of 1-D tensors in the model's dtype, each
  `sizes[b] * 1920` samples long (padded up to 40 ms frames). Input of another dtype or device
  raises RuntimeError (`Batch.to` never casts); more than 10 000 frames (~400 s) raises the
  rotary table's RuntimeError (sam_audio/model/rope.py).

Its "separation" is a deterministic, checkable function of the prompt, computed with an STFT
(2048 points, hop 480: four STFT hops per 40 ms model frame) on the mono downmix:

- text naming a band keeps that band: "bass"/"low" < 250 Hz, "mid" 250-6000 Hz,
  "hiss"/"high" > 6 kHz, "band A-B hz" A..B Hz, "everything" all, "silence" nothing; any other
  text finds nothing (a zero target);
- `+` anchors (as aligned frames, so the upstream ceil rounding applies) select the frequency
  bins whose mean magnitude inside the `+` frames is more than twice the mean elsewhere: the
  sound that is present in the anchored audio and rare outside it, wherever it occurs; with text
  naming a band, only bins in that band; frames under `-` anchors get no target;
- the noise: candidate c's target is scaled, per 40 ms frame f, by 1 + 1e-4 * noise[c, f, 0]
  (clipped to +-4), so unseeded runs differ in their bits but not in their quality;
- reranking candidates differ: candidate c is also scaled by 1 - 0.1 (k-1-c)/(k-1), so an
  unranked call returns a target 10 % too quiet and a ranked call (the double's judge prefers
  the loudest candidate) returns the exact one;
- residual = padded mono input - target.

Test knobs live under the config's "double" key: `oom_above_seconds` (raise
`torch.cuda.OutOfMemoryError` when seconds x candidates x batch exceeds it),
`host_oom_above_seconds` (raise the RuntimeError torch's CPU allocator raises,
c10/core/impl/alloc_cpu.cpp), `rtf` (sleep this many seconds per audio second per candidate at
the default 32 model evaluations); `calls` on the model records every `separate` call.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import re
import time
from dataclasses import dataclass
from typing import Any

import torch
from huggingface_hub import ModelHubMixin

from .processor import ANCHOR_IDS, Batch, SAMAudioJudgeProcessor

DFLT_ODE_OPT = {"method": "midpoint", "options": {"step_size": 2 / 32}}
N_FFT = 2048
STFT_HOP = 480
NOISE_GAIN = 1e-4
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
# (repo_id, revision) of every hub fetch a constructor made, in order (see the module docstring).
HUB_REQUESTS: list[tuple[str, str | None]] = []


def hub_fetch(repo_id: str, revision: str | None = None, filename: str | None = None) -> str:
    """Stand-in for a download: the local hub cache only. Returns the folder (or file)."""
    import huggingface_hub

    HUB_REQUESTS.append((repo_id, revision))
    cache = os.environ.get("HF_HUB_CACHE") or None  # read now: tests set it after import
    if filename is not None:
        return huggingface_hub.hf_hub_download(
            repo_id, filename, revision=revision, cache_dir=cache, local_files_only=True
        )
    return huggingface_hub.snapshot_download(
        repo_id, revision=revision, cache_dir=cache, local_files_only=True
    )


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
    """sam_audio/model/config.py: SAMAudioConfig's defaults (those the double reads)."""

    def __init__(
        self,
        in_channels: int = 768,
        audio_codec: dict | None = None,
        text_encoder: dict | None = None,
        vision_encoder: dict | None = None,
        transformer: dict | None = None,
        num_anchors: int = 3,
        anchor_embedding_dim: int = 128,
        visual_ranker: dict | None = None,
        text_ranker: dict | None = None,
        span_predictor: str | None = "pe-a-frame-large",
        double: dict | None = None,  # the double's test knobs (not upstream)
    ) -> None:
        codec = audio_codec or {}
        self.in_channels = in_channels
        self.sample_rate = int(codec.get("sample_rate", 48_000))
        self.hop_length = int(math.prod(codec.get("encoder_rates", [2, 8, 10, 12])))
        self.codebook_dim = int(codec.get("codebook_dim", 128))
        self.dim = int((transformer or {}).get("dim", 2048))
        self.max_positions = int((transformer or {}).get("max_positions", 10_000))
        self.vision_dim = int((vision_encoder or {}).get("dim", 1024))
        self.text_encoder = (text_encoder or {}).get("name", "t5-base")
        self.text_ranker = text_ranker
        self.visual_ranker = visual_ranker
        self.span_predictor = span_predictor
        self.double = double or {}


class SAMAudioJudgeConfig:
    """sam_audio/model/config.py: SAMAudioJudgeConfig (the double keeps one width)."""

    def __init__(self, bottleneck_dim: int = 256, **_: Any) -> None:
        self.bottleneck_dim = bottleneck_dim


# --- rankers (sam_audio/ranking/) -------------------------------------------------------------


class ClapRanker(torch.nn.Module):
    """sam_audio/ranking/clap.py: needs `laion_clap` and the 630k-best.pt checkpoint."""

    def __init__(self, config: dict) -> None:
        importlib.import_module("laion_clap")
        super().__init__()
        self.checkpoint = config.get("checkpoint") or hub_fetch("lukewys/laion_clap", filename="630k-best.pt")

    def forward(self, extracted_audio, descriptions=None, sample_rate=48_000, **_):
        return torch.stack([wavs.float().pow(2).mean(-1) for wavs in extracted_audio])


class JudgeRanker(torch.nn.Module):
    """sam_audio/ranking/judge.py: the judge model and processor via their `from_pretrained`."""

    def __init__(self, config: dict) -> None:
        super().__init__()
        model_id = config.get("checkpoint_or_model_id", "facebook/sam-audio-judge")
        self.model = SAMAudioJudgeModel.from_pretrained(model_id)
        self.processor = SAMAudioJudgeProcessor.from_pretrained(model_id)

    def forward(self, input_audio, extracted_audio, descriptions, sample_rate=48_000, **_):
        bsz, k = len(input_audio), len(input_audio[0])
        features = self.processor(
            text=[d for d in descriptions for _ in range(k)],
            input_audio=[x[None] for item in input_audio for x in item],
            separated_audio=[x[None] for item in extracted_audio for x in item],
            sampling_rate=sample_rate,
        )
        return self.model(**features.to(input_audio[0].device)).overall.view(bsz, k)


class ImageBindRanker(torch.nn.Module):
    """sam_audio/ranking/imagebind.py: needs the `imagebind` package."""

    def __init__(self, config: dict) -> None:
        importlib.import_module("imagebind")
        super().__init__()


def create_ranker(config: dict | None) -> torch.nn.Module | None:
    """sam_audio/ranking/__init__.py: one ranker per kind; an ensemble builds each of its own."""
    if config is None:
        return None
    kind = config.get("kind")
    if kind == "ensemble":
        rankers = [create_ranker(cfg) for cfg, _weight in config["rankers"].values()]
        return torch.nn.ModuleList(rankers)
    kinds = {"clap": ClapRanker, "judge": JudgeRanker, "imagebind": ImageBindRanker}
    return kinds[kind](config)


# --- parts of the model --------------------------------------------------------------------------


class TextEncoder(torch.nn.Module):
    """sam_audio/model/text_encoder.py: T5 loaded by name (a local folder, else the hub)."""

    def __init__(self, name: str) -> None:
        super().__init__()
        if os.path.isdir(name):
            folder = name
        else:
            try:
                folder = hub_fetch(name)
            except Exception:
                # What transformers says when the hub cannot be reached and nothing is cached.
                raise OSError(
                    f"We couldn't connect to 'https://huggingface.co' to load the files, and couldn't "
                    f"find them in the cached files. Check your internet connection or see how to run "
                    f"the library in offline mode. ({name})"
                ) from None
        if not os.path.isfile(os.path.join(folder, "config.json")):
            raise OSError(f"{folder} does not appear to have a file named config.json.")
        self.name = name


class SpanPredictor(torch.nn.Module):
    """perception_models' PEAudioFrame.from_config(name, pretrained=True): from the hub."""

    def __init__(self, name: str) -> None:
        super().__init__()
        hub_fetch(f"facebook/{name}", revision="perception_models")
        self.name = name
        self.weight = torch.nn.Parameter(torch.zeros(4))


class VisionEncoder(torch.nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.weight = torch.nn.Parameter(torch.zeros(dim, dim))


class Layer(torch.nn.Module):
    """One DiT block (sam_audio/model/transformer.py); the double's work is a sleep."""

    def forward(self, x: torch.Tensor, seconds: float = 0.0) -> torch.Tensor:
        if seconds:
            time.sleep(seconds)
        return x


class Transformer(torch.nn.Module):
    """Stands in for the DiT (sam_audio/model/transformer.py): called once per model evaluation,
    through `Module.__call__`, and, as upstream's `DiT.forward` does (`for layer in
    self.layers: h = layer(...)`), it calls its blocks one by one, so forward hooks on it and on
    its layers fire as they do upstream. The simulated work of an evaluation (`rtf`) is spread
    over the blocks."""

    LAYERS = 8

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(dim, dim))
        self.gain = torch.nn.Parameter(torch.ones(1))
        self.layers = torch.nn.ModuleList(Layer() for _ in range(self.LAYERS))

    def forward(self, x: torch.Tensor, seconds: float = 0.0) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, seconds / len(self.layers))
        return x * self.gain.to(x.dtype)


@dataclass
class SeparationResult:
    target: list[torch.Tensor]
    residual: list[torch.Tensor]
    noise: torch.Tensor | None = None


class BaseModel(torch.nn.Module, ModelHubMixin):
    """sam_audio/model/base.py: the hub mixin and `_from_pretrained`'s exact keywords."""

    config_cls: Any = None
    revision: str | None = None

    @classmethod
    def _from_pretrained(
        cls,
        *,
        model_id: str,
        cache_dir: str | None,
        force_download: bool,
        proxies: dict | None,
        resume_download: bool,
        local_files_only: bool,
        token: str | bool | None,
        map_location: str = "cpu",
        strict: bool = True,
        revision: str | None = None,
        **model_kwargs: Any,
    ):
        folder = model_id if os.path.isdir(model_id) else hub_fetch(model_id, revision=cls.revision)
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


@dataclass
class SAMAudioJudgeOutput:
    overall: torch.Tensor
    recall: torch.Tensor
    precision: torch.Tensor
    faithfulness: torch.Tensor


class SAMAudioJudgeModel(BaseModel):
    """sam_audio/model/judge.py: revision "sam_audio"; scores (overall, recall, precision,
    faithfulness) of separated audio against the input and the text, each (batch, 1). The
    double's judge prefers the loudest separation (mean square over the unpadded samples)."""

    config_cls = SAMAudioJudgeConfig
    revision = "sam_audio"

    def __init__(self, config: SAMAudioJudgeConfig) -> None:
        super().__init__()
        self.config = config
        self.head = torch.nn.Parameter(torch.ones(4))

    def forward(
        self,
        input_ids: torch.Tensor,
        input_values: torch.Tensor,
        separated_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        padding_mask: torch.Tensor | None = None,
    ) -> SAMAudioJudgeOutput:
        power = separated_values.float().pow(2).mean(1)  # (batch, samples)
        if padding_mask is not None:
            power = (power * padding_mask).sum(-1) / padding_mask.sum(-1).clamp(min=1)
        else:
            power = power.mean(-1)
        scores = power[:, None] * self.head[None].float()
        return SAMAudioJudgeOutput(*scores.chunk(4, dim=1))


class SAMAudio(BaseModel):
    config_cls = SAMAudioConfig
    revision = None

    def __init__(self, cfg: SAMAudioConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.text_encoder = TextEncoder(cfg.text_encoder)
        self.transformer = Transformer(cfg.dim)
        self.vision_encoder = VisionEncoder(cfg.vision_dim)
        self.visual_ranker = create_ranker(cfg.visual_ranker)
        self.text_ranker = create_ranker(cfg.text_ranker)
        if cfg.span_predictor is not None:
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

    def _get_audio_features(self, audios: torch.Tensor, frames: int) -> torch.Tensor:
        """(B, frames, 2 x codebook_dim) in the model's dtype, as upstream's codec features."""
        return audios.new_zeros(audios.size(0), frames, 2 * self.cfg.codebook_dim)

    def _get_video_features(self, video, audio_features: torch.Tensor) -> torch.Tensor:
        b, t, _ = audio_features.shape
        if video is None:
            return audio_features.new_zeros(b, self.vision_encoder.dim, t)
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

    def _check(self, batch: Batch, k: int) -> int:
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
        frames = int(batch.sizes.max())
        if frames > self.cfg.max_positions:
            raise RuntimeError(
                f"The size of tensor a ({frames}) must match the size of tensor b "
                f"({self.cfg.max_positions}) at non-singleton dimension 1"
            )
        seconds = frames * self.cfg.hop_length / self.sample_rate
        work = seconds * k * audios.size(0)
        limit = self.cfg.double.get("oom_above_seconds")
        if limit is not None and work > float(limit):
            raise torch.cuda.OutOfMemoryError(
                f"CUDA out of memory. Tried to allocate {work / 10:.2f} GiB (test double: "
                f"{seconds:.1f} s x {k} candidates > {limit} s)"
            )
        limit = self.cfg.double.get("host_oom_above_seconds")
        if limit is not None and work > float(limit):
            raise RuntimeError(
                f"DefaultCPUAllocator: can't allocate memory: you tried to allocate "
                f"{int(work * 1e9)} bytes. Error code 12 (Cannot allocate memory)"
            )
        return frames

    @torch.inference_mode()
    def separate(
        self,
        batch: Batch,
        noise: torch.Tensor | None = None,
        ode_opt: dict = DFLT_ODE_OPT,
        reranking_candidates: int = 1,
        predict_spans: bool = False,
    ) -> SeparationResult:
        k = int(reranking_candidates)
        frames = self._check(batch, k)
        audios = batch.audios
        weight = self.transformer.weight
        bsz = audios.size(0)
        hop = self.cfg.hop_length
        # The model inputs, anchors included, come from the batch as it is now (upstream's
        # _get_forward_args runs before span prediction).
        features = self._get_audio_features(audios, frames)
        self._get_video_features(batch.masked_video, features)
        tokens = [
            batch.anchor_ids[b][batch.anchor_alignment[b][: int(batch.sizes[b])]] if batch.anchors else None
            for b in range(bsz)
        ]
        features = features.repeat_interleave(k, dim=0)
        predicted = None
        if predict_spans and hasattr(self, "span_predictor") and batch.anchors is None:
            predicted = self._predict_spans(batch, tokens)
        if noise is None:
            noise = torch.randn_like(features)
        nfe = nfe_of(ode_opt)
        rtf = float(self.cfg.double.get("rtf", 0.0))
        seconds = rtf * frames * hop / self.sample_rate * bsz * k * nfe / 32
        # Upstream's odeint calls vector_field -> self.forward -> self.transformer(...) once per
        # evaluation; the work (the `rtf` sleep) is spread over those calls.
        for _ in range(nfe):
            self.transformer(noise[:, :1], seconds / nfe)
        scales = [1.0 - 0.1 * (k - 1 - c) / (k - 1) if k > 1 else 1.0 for c in range(k)]
        wavs, candidates = [], []
        for b in range(bsz):
            length = int(batch.sizes[b]) * hop
            wav = torch.zeros(length, device=audios.device, dtype=torch.float32)
            size = min(int(batch.wav_sizes[b]), audios.size(-1))
            wav[:size] = audios[b, 0, :size].float()
            ideal = self._target(wav, batch.descriptions[b], tokens[b]) * self.transformer.gain.float()
            jitter = noise[b * k : (b + 1) * k, : length // hop, 0].float().clamp(-4, 4)
            gain = 1.0 + NOISE_GAIN * jitter.repeat_interleave(hop, dim=1)
            candidates.append(torch.stack([ideal * s for s in scales]) * gain)
            wavs.append(wav)
        if k > 1 and self.text_ranker is not None:
            input_audio = [wav[None].expand(k, -1) for wav in wavs]
            scores = self.text_ranker(
                extracted_audio=candidates,
                input_audio=input_audio,
                descriptions=batch.descriptions,
                sample_rate=self.sample_rate,
            )
            chosen = [int(i) for i in scores.argmax(dim=1)]
        else:
            chosen = [0] * bsz
        targets = [c[i] for c, i in zip(candidates, chosen, strict=True)]
        self.calls.append(
            {
                "descriptions": list(batch.descriptions),
                "anchors": batch.anchors if predicted is None else None,
                "reranking_candidates": k,
                "predict_spans": predict_spans,
                "predicted_spans": predicted,
                "ode_opt": ode_opt,
                "nfe": nfe,
                "dtype": audios.dtype,
                "device": str(audios.device),
                "frames": frames,
                "chosen": chosen,
                "noise_given": noise is not None,
            }
        )
        return SeparationResult(
            target=[t.to(weight.dtype) for t in targets],
            residual=[(w - t).to(weight.dtype) for w, t in zip(wavs, targets, strict=True)],
            noise=noise,
        )

    def _predict_spans(self, batch: Batch, tokens: list) -> list:
        """Spans where the text's band is active, written into the batch as `+` anchors."""
        hop = self.cfg.hop_length
        anchors = []
        for b in range(batch.audios.size(0)):
            wav = batch.audios[b, 0].float()
            target = self._target(wav, batch.descriptions[b], tokens[b])
            energy = target[: target.numel() // hop * hop].reshape(-1, hop).pow(2).mean(1)
            top = float(energy.max()) if energy.numel() else 0.0
            active = (energy > 0.01 * top).tolist() if top > 0 else []
            spans, start = [], None
            for i, on in enumerate([*active, False]):
                if on and start is None:
                    start = i
                elif not on and start is not None:
                    spans.append(["+", start * hop / self.sample_rate, i * hop / self.sample_rate])
                    start = None
            anchors.append(spans)
        batch.process_anchors(anchors)
        return anchors


__all__ = [
    "DFLT_ODE_OPT",
    "HUB_REQUESTS",
    "SAMAudio",
    "SAMAudioConfig",
    "SAMAudioJudgeConfig",
    "SAMAudioJudgeModel",
    "SAMAudioJudgeOutput",
    "SeparationResult",
]
