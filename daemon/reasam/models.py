"""SAM-Audio weights: find, download, load once, keep warm, unload; devices, dtypes and memory.

Where a model comes from, first match wins:

1. `REASAM_SAM_MODEL` (SamSettings.model_path): one local folder holding config.json and
   checkpoint.pt, used whatever the variant;
2. `REASAM_SAM_MODELS_DIR` (models_dir): a folder with one sub-folder per variant, named
   `sam-audio-<variant>` or `<variant>`;
3. the huggingface_hub cache (`HF_HUB_CACHE` / `HF_HOME`, or cache_dir), where
   `reasam models pull` downloads `facebook/sam-audio-<variant>`.

What else a load reads, all from local folders: the T5 text encoder named in config.json
(`t5-base`; `REASAM_SAM_T5` for a folder of your own) and, for the presets that rerank, the judge
model facebook/sam-audio-judge (revision `sam_audio`). `reasam models pull` fetches all three.

Jobs never download: a job whose model or T5 is missing fails at once with the command that
fetches them (unless `REASAM_SAM_AUTO_DOWNLOAD=1`), so a request never stalls for gigabytes; a
missing judge only turns reranking off (the engine says so in the manifest and the log).

Upstream `SAMAudio.from_pretrained` (sam_audio/model/base.py) is built on huggingface_hub's
`ModelHubMixin`, whose keyword plumbing changed in huggingface_hub 1.0 (`TypeError: … missing
'proxies', 'resume_download'`), and applies overrides only to keys config.json already has.
ReaSAM does not go through it: snapshots are resolved (and downloaded by `pull`) with
huggingface_hub's own `snapshot_download`, and models are built from the local folder by
`load_from_dir`, with every override applied. That works with any huggingface_hub, so the `sam`
extra does not pin it.

Loading is "lite": upstream's own rankers, its span predictor and the visual ranker are never
built (they would load from the hub; the span predictor has no effect in upstream's
`separate()` at commit 68b48d4 anyway), the vision encoder (≈671M parameters, only for video
prompts) is replaced after load by a stub that keeps its `dim`, and the judge ranker is loaded
only when a quality preset reranks. A model loaded with the judge also serves jobs that need
less; a job that needs more reloads once. A judge that could not be loaded is remembered with
its reason until the model is unloaded, so jobs do not retry it each time.

Keep-alive: the model stays loaded between jobs and is unloaded once idle for
`keep_alive_minutes` (0: right after each job; negative: never). A job holds a `Lease` from its
first chunk to its end, so the model is never unloaded mid-job; the daemon calls
`release_idle()` after each job and about once a second while idle.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import importlib
import json
import logging
import math
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .errors import ReasamError, is_out_of_memory
from .errors import detail as errors_detail

log = logging.getLogger(__name__)

SIZES = ("small", "base", "large")
VARIANTS = ("small", "base", "large", "small-tv", "base-tv", "large-tv")
REPO_PREFIX = "facebook/sam-audio-"
SAMPLE_RATE = 48_000
HOP = 1920  # samples per 40 ms model frame
MAX_FRAMES = 10_000  # rotary position table: ≈400 s per call
# GPU memory of a "lite" fp16 load (GB): base and large as reported (bf16, same size as fp16);
# small estimated from its parameter count. Used to suggest a variant that fits.
LITE_GB = {"small": 2.0, "base": 2.8, "large": 6.2}
# Total GPU memory (GiB) from which `auto` picks each size: weights plus room for activations of a
# 30 s chunk with several reranking candidates.
AUTO_MIN_GIB = {"large": 20.0, "base": 10.0, "small": 0.0}
EXTRAS = ("ranker",)
# What a SAM-Audio load needs besides the model repo (sam_audio/model/text_encoder.py loads the
# T5 named in config.json, "t5-base" by default), and the judge model ReaSAM reranks with
# (sam_audio/model/judge.py: facebook/sam-audio-judge at revision "sam_audio").
T5_DEFAULT = "t5-base"
# Only what transformers reads for a PyTorch T5 encoder and its tokenizer, not the repo's
# TensorFlow, Flax, Rust and ONNX copies.
T5_FILES = (
    "config.json", "*.safetensors", "spiece.model", "tokenizer.json", "tokenizer_config.json",
    "special_tokens_map.json", "generation_config.json",
)  # fmt: skip
JUDGE_REPO = "facebook/sam-audio-judge"
JUDGE_REVISION = "sam_audio"
_TRUE = ("1", "true", "yes", "on")


def repo_id(variant: str) -> str:
    return REPO_PREFIX + variant


def size_of(variant: str) -> str:
    return variant.removesuffix("-tv")


def check_variant(variant: str) -> str:
    if variant not in VARIANTS:
        raise ReasamError(
            "bad_request", f"unknown SAM-Audio variant {variant!r}; variants: {', '.join(VARIANTS)}"
        )
    return variant


def _env_float(env: Mapping[str, str], name: str, default: float) -> float:
    text = env.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise ReasamError("bad_request", f"{name} must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise ReasamError("bad_request", f"{name} must be finite, got {text!r}")
    return value


def _env_path(env: Mapping[str, str], name: str) -> Path | None:
    text = env.get(name, "").strip()
    return Path(text).expanduser() if text else None


@dataclass(frozen=True)
class SamSettings:
    """Everything the SAM engine can be told; `from_env()` reads the REASAM_SAM_* variables."""

    variant: str = "auto"  # small/base/large[-tv], or auto: the largest that fits the device
    model_path: Path | None = None  # one local model folder (config.json + checkpoint.pt)
    models_dir: Path | None = None  # folder of per-variant folders
    cache_dir: Path | None = None  # hub cache; None: HF_HUB_CACHE / HF_HOME / huggingface_hub's
    token: str | None = None  # None: huggingface_hub's own (HF_TOKEN or `hf auth login`)
    revision: str | None = None
    endpoint: str | None = None  # None: HF_ENDPOINT / huggingface.co
    offline: bool | None = None  # None: HF_HUB_OFFLINE
    auto_download: bool = False  # may a job download missing weights?
    device: str = "auto"  # auto: cuda, then mps, then cpu
    dtype: str = "auto"  # auto: float16 on cuda and mps, float32 on cpu
    keep_alive_minutes: float = 10.0  # 0: unload after each job; negative: never
    lite: bool = True  # drop the vision encoder after load
    text_encoder: str | None = None  # local T5 folder instead of the hub's t5-base
    chunk_seconds: float = 30.0
    overlap_seconds: float = 2.0

    def __post_init__(self) -> None:
        if self.variant != "auto":
            check_variant(self.variant)
        if not 5.0 <= self.chunk_seconds <= 380.0:
            raise ReasamError("bad_request", f"SAM chunk must be 5-380 s, got {self.chunk_seconds:g}")
        if not 0.0 <= self.overlap_seconds <= self.chunk_seconds / 4:
            raise ReasamError(
                "bad_request",
                f"SAM overlap must be 0 to a quarter of the chunk, got {self.overlap_seconds:g}",
            )
        if self.dtype not in ("auto", "float16", "float32", "bfloat16"):
            raise ReasamError(
                "bad_request", f"dtype must be auto, float16, float32 or bfloat16, got {self.dtype!r}"
            )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> SamSettings:
        env = os.environ if env is None else env
        return cls(
            variant=env.get("REASAM_SAM_VARIANT", "").strip() or "auto",
            model_path=_env_path(env, "REASAM_SAM_MODEL"),
            models_dir=_env_path(env, "REASAM_SAM_MODELS_DIR"),
            device=env.get("REASAM_SAM_DEVICE", "").strip() or "auto",
            dtype=env.get("REASAM_SAM_DTYPE", "").strip() or "auto",
            keep_alive_minutes=_env_float(env, "REASAM_KEEP_ALIVE", 10.0),
            lite=env.get("REASAM_SAM_LITE", "1").strip().lower() in _TRUE,
            auto_download=env.get("REASAM_SAM_AUTO_DOWNLOAD", "").strip().lower() in _TRUE,
            text_encoder=env.get("REASAM_SAM_T5", "").strip() or None,
            chunk_seconds=_env_float(env, "REASAM_SAM_CHUNK_SECONDS", 30.0),
            overlap_seconds=_env_float(env, "REASAM_SAM_OVERLAP_SECONDS", 2.0),
        )


# --- the upstream package -------------------------------------------------------------------

_import_lock = threading.Lock()
_import_result: tuple[Any, str | None] | None = None

INSTALL_HINT = "see README, 'Installing SAM-Audio'"


def import_sam_audio() -> Any:
    """The `sam_audio` module, imported once; ReasamError saying what is missing otherwise."""
    global _import_result
    with _import_lock:
        if _import_result is None:
            try:
                _import_result = (importlib.import_module("sam_audio"), None)
            except ModuleNotFoundError as exc:
                if exc.name == "sam_audio":
                    why = "the sam_audio package (SAM-Audio, from its GitHub repository) is not installed"
                else:
                    why = f"sam_audio is installed but needs the missing module {exc.name!r}"
                _import_result = (None, f"{why} ({INSTALL_HINT})")
            except Exception as exc:  # an upstream import can fail in many ways
                _import_result = (
                    None,
                    f"sam_audio cannot be imported: {type(exc).__name__}: {exc} ({INSTALL_HINT})",
                )
        module, problem = _import_result
    if module is None:
        raise ReasamError("engine_failed", problem or "sam_audio is not usable")
    return module


def sam_audio_problem() -> str | None:
    """None when `sam_audio` imports; else one line saying what is missing."""
    try:
        import_sam_audio()
    except ReasamError as exc:
        return exc.message
    return None


def forget_import() -> None:
    """Forget the cached import result (tests; after installing the package in a live process)."""
    global _import_result
    with _import_lock:
        _import_result = None


def load_from_dir(model_cls: Any, folder: Path, overrides: Mapping[str, Any]) -> Any:
    """Build an upstream model class from a local snapshot folder: ReaSAM's own loading route.

    Upstream's `from_pretrained` (sam_audio/model/base.py) goes through huggingface_hub's
    `ModelHubMixin`, whose `_from_pretrained` requires `proxies` and `resume_download`, which
    huggingface_hub >= 1.0 no longer passes (TypeError); and it applies keyword overrides only
    to keys present in config.json, so a config without `span_predictor` builds upstream's
    default predictor from the hub whatever is passed. Here the config is read and every
    override applied, key present or not, then the class is built from its own `config_cls`
    and `checkpoint.pt` loaded as upstream does (weights only, strict): no hub access, any
    huggingface_hub.
    """
    config = json.loads((Path(folder) / "config.json").read_text())
    config.update(overrides)
    model = model_cls(model_cls.config_cls(**config))
    state = torch.load(Path(folder) / "checkpoint.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model


class _VisionStub(torch.nn.Module):
    """Stands in for the dropped vision encoder: keeps `dim` (read for audio-only calls)."""

    def __init__(self, dim: int | None) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(
            "ReaSAM loads SAM-Audio without its vision encoder: video prompts are not supported"
        )


def module_bytes(module: torch.nn.Module) -> int:
    tensors = [*module.parameters(), *module.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def strip_vision_encoder(model: torch.nn.Module) -> int:
    """Replace the vision encoder by a stub; returns the bytes its weights held."""
    encoder = getattr(model, "vision_encoder", None)
    if not isinstance(encoder, torch.nn.Module) or isinstance(encoder, _VisionStub):
        return 0
    freed = module_bytes(encoder)
    model.vision_encoder = _VisionStub(getattr(encoder, "dim", None))
    return freed


# --- devices and memory ---------------------------------------------------------------------


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(preference: str = "auto") -> torch.device:
    """cuda, then mps, then cpu; an explicit choice is checked, never silently replaced."""
    pref = (preference or "auto").strip().lower()
    if pref == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(pref)
    except RuntimeError:
        raise ReasamError(
            "bad_request", f"unknown device {preference!r}: use auto, cuda, cuda:N, mps or cpu"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ReasamError(
            "engine_failed", f"device {preference} was asked for, but CUDA is not available here"
        )
    if device.type == "mps" and not _mps_available():
        raise ReasamError(
            "engine_failed", f"device {preference} was asked for, but MPS is not available here"
        )
    return device


def resolve_dtype(preference: str, device: torch.device) -> torch.dtype:
    """fp16 on CUDA/MPS (bf16 degrades the codec), fp32 on CPU (fp16 is ≈70x slower there)."""
    if preference == "auto":
        return torch.float16 if device.type in ("cuda", "mps") else torch.float32
    return getattr(torch, preference)


def device_memory(device: torch.device) -> int | None:
    """Total memory of a CUDA device in bytes; None where unknown."""
    if device.type != "cuda":
        return None
    try:
        return int(torch.cuda.get_device_properties(device).total_memory)
    except Exception:
        return None


def empty_cache(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps" and hasattr(torch, "mps"):
        torch.mps.empty_cache()


def smaller_variants(variant: str) -> list[str]:
    """Variants below `variant`, largest first, keeping the -tv flavour."""
    size = size_of(variant)
    suffix = "-tv" if variant.endswith("-tv") else ""
    return [s + suffix for s in reversed(SIZES[: SIZES.index(size)])]


def suggest_variant(variant: str, total_bytes: int | None) -> str | None:
    """The largest smaller variant whose lite footprint fits `total_bytes` (or the next smaller)."""
    options = smaller_variants(variant)
    if not options:
        return None
    if total_bytes:
        for option in options:
            if LITE_GB[size_of(option)] * 1.5e9 <= total_bytes:
                return option
    return options[0]


def format_bytes(n: int | None) -> str:
    if n is None:
        return "?"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


# --- the hub ----------------------------------------------------------------------------------


def _hub_error(
    exc: BaseException,
    repo: str,
    settings: SamSettings,
    local_only: bool,
    offline: bool,
    label: str | None = None,
    pull: str | None = None,
) -> ReasamError:
    """One line saying why `repo` could not be had; `label` names it, `pull` fetches it."""
    from huggingface_hub import errors

    variant = repo.removeprefix(REPO_PREFIX)
    label = label or f"SAM-Audio {variant}"
    pull = pull or f"reasam models pull {variant}"

    page = f"https://huggingface.co/{repo}"
    logged_in = _token(settings) is not None
    login = "log in with `hf auth login` (or set HF_TOKEN)"
    if isinstance(exc, errors.GatedRepoError):
        if not logged_in:
            return ReasamError(
                "engine_failed",
                f"{repo} is gated and you are not logged in: accept the licence at {page}, then {login}",
            )
        return ReasamError(
            "engine_failed",
            f"{repo} is gated and your account has no access yet: accept the licence at {page} "
            "(approval can take a while), then try again",
        )
    if isinstance(exc, errors.RevisionNotFoundError):
        return ReasamError("not_found", f"{repo}: revision {settings.revision!r} not found on the hub")
    if isinstance(exc, errors.RepositoryNotFoundError):
        extra = "" if logged_in else f" (if it is gated, {login} after accepting the licence at {page})"
        return ReasamError("not_found", f"{repo} not found on the hub{extra}")
    if isinstance(exc, errors.LocalEntryNotFoundError):
        local = (
            "REASAM_SAM_T5 to a local t5-base folder"
            if label.startswith("the T5")
            else ("REASAM_SAM_MODEL to a local model folder")
        )
        if offline:
            return ReasamError(
                "not_found",
                f"{label} ({repo}) is not in the hub cache ({hub_cache_dir(settings)}) and offline "
                f"mode is on (HF_HUB_OFFLINE): run `{pull}` while online, or set {local}",
            )
        if local_only:
            return ReasamError(
                "not_found",
                f"{label} is not downloaded: run `{pull}` (or set {local})",
            )
        return ReasamError(
            "engine_failed",
            f"cannot reach the model hub to download {repo} (no network?) and it is not in the cache "
            f"({hub_cache_dir(settings)}): {errors_detail(exc)}",
        )
    if isinstance(exc, errors.HfHubHTTPError):
        return ReasamError("engine_failed", f"{repo}: the hub answered with an error: {errors_detail(exc)}")
    return ReasamError(
        "engine_failed",
        f"cannot download {repo} (no network?): {type(exc).__name__}: {errors_detail(exc)}",
    )


def _token(settings: SamSettings) -> str | None:
    if settings.token:
        return settings.token
    try:
        from huggingface_hub import get_token

        return get_token()
    except Exception:
        return None


def hub_cache_dir(settings: SamSettings) -> Path:
    """The hub cache, read at call time (huggingface_hub reads its environment at import)."""
    if settings.cache_dir is not None:
        return Path(settings.cache_dir)
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def is_offline(settings: SamSettings) -> bool:
    if settings.offline is not None:
        return settings.offline
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def _check_model_dir(folder: Path, what: str) -> Path:
    missing = [name for name in ("config.json", "checkpoint.pt") if not (folder / name).is_file()]
    if not folder.is_dir():
        raise ReasamError("not_found", f"{what}: {folder} is not a folder")
    if missing:
        raise ReasamError(
            "not_found", f"{what}: {folder} lacks {' and '.join(missing)} (an incomplete download?)"
        )
    return folder


def snapshot(
    settings: SamSettings,
    repo: str,
    *,
    revision: str | None = None,
    download: bool | None = None,
    patterns: tuple[str, ...] | None = None,
    label: str | None = None,
    pull: str | None = None,
) -> Path:
    """The local snapshot folder of a hub repo, downloaded only when allowed.

    `download=None` follows settings.auto_download; offline mode never downloads. The one
    route by which the model, T5 and the judge reach the disk, so a job never starts a download.
    """
    from huggingface_hub import snapshot_download

    offline = is_offline(settings)
    allowed = (settings.auto_download if download is None else download) and not offline
    try:
        path = snapshot_download(
            repo,
            revision=revision,
            cache_dir=str(hub_cache_dir(settings)),
            token=settings.token,
            local_files_only=not allowed,
            endpoint=settings.endpoint,
            allow_patterns=list(patterns) if patterns else None,
        )
    except Exception as exc:
        raise _hub_error(exc, repo, settings, not allowed, offline, label, pull) from None
    return Path(path)


def text_encoder_name(config: Mapping[str, Any]) -> str:
    """The T5 a SAM-Audio config loads (its `text_encoder.name`, upstream default t5-base)."""
    section = config.get("text_encoder")
    name = section.get("name") if isinstance(section, dict) else None
    return str(name or T5_DEFAULT)


def check_t5_dir(folder: Path, what: str) -> Path:
    """A T5 folder transformers can load: config, weights and a tokenizer file."""
    if not folder.is_dir():
        raise ReasamError("not_found", f"{what}: {folder} is not a folder")
    missing = []
    if not (folder / "config.json").is_file():
        missing.append("config.json")
    if not any(folder.glob("*.safetensors")) and not (folder / "pytorch_model.bin").is_file():
        missing.append("model.safetensors")
    if not (folder / "spiece.model").is_file() and not (folder / "tokenizer.json").is_file():
        missing.append("spiece.model")
    if missing:
        raise ReasamError(
            "not_found", f"{what}: {folder} lacks {' and '.join(missing)} (an incomplete download?)"
        )
    return folder


class JudgeRanker(torch.nn.Module):
    """Reranks candidates by the SAM-Audio judge's `overall` score (facebook/sam-audio-judge).

    Upstream's own judge ranker (sam_audio/ranking/judge.py) loads the judge through the hub
    mixin that fails on huggingface_hub >= 1.0, at model construction, from the hub. This one is
    built from the judge's local snapshot by `load_from_dir` and upstream's judge processor, and
    answers `separate()`'s ranker call (sam_audio/model/model.py): per batch item the candidates'
    target audio, the input audio repeated per candidate, the text; scores (items, candidates).
    """

    def __init__(self, model: torch.nn.Module, processor: Any) -> None:
        super().__init__()
        self.model = model
        self.processor = processor

    def forward(
        self,
        extracted_audio: list[torch.Tensor],
        input_audio: list[torch.Tensor],
        descriptions: list[str],
        sample_rate: int = SAMPLE_RATE,
        **_: Any,
    ) -> torch.Tensor:
        items, candidates = len(extracted_audio), extracted_audio[0].shape[0]
        features = self.processor(
            text=[text for text in descriptions for _ in range(candidates)],
            input_audio=[row[None] for item in input_audio for row in item],
            separated_audio=[row[None] for item in extracted_audio for row in item],
            return_tensors="pt",
            padding=True,
            sampling_rate=sample_rate,
        )
        scores = self.model(**features.to(extracted_audio[0].device)).overall
        return scores.reshape(items, candidates)


# --- loaded models and leases -----------------------------------------------------------------


def _read_config(folder: Path) -> dict:
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ReasamError("engine_failed", f"{folder / 'config.json'}: unreadable ({exc})") from None
    if not isinstance(config, dict):
        raise ReasamError("engine_failed", f"{folder / 'config.json'}: not a JSON object")
    return config


@dataclass
class Pulled:
    """What `reasam models pull` put in place: folders, or why the judge is not there."""

    model: Path
    text_encoder: Path
    judge: Path | ReasamError


@dataclass
class LoadedModel:
    """One model on its device, with what it was loaded with and what that cost."""

    variant: str
    folder: Path
    model: Any
    processor: Any
    device: torch.device
    dtype: torch.dtype
    extras: frozenset[str]
    load_seconds: float
    weights_bytes: int
    parameters: int
    memory_bytes: int | None  # GPU memory after load (CUDA); None elsewhere
    vision_bytes_dropped: int = 0
    # Extras asked for that could not be loaded, with the one-line reason (see `_load`).
    missing: dict[str, str] = field(default_factory=dict)

    @property
    def has_ranker(self) -> bool:
        return getattr(self.model, "text_ranker", None) is not None

    def serves(self, extras: frozenset[str]) -> bool:
        """Whether this load answers `extras`: loaded, or already tried and found missing."""
        return extras <= self.extras | self.missing.keys()


class Lease:
    """A job's hold on the loaded model; release once (idempotent) when the job ends."""

    def __init__(self, manager: ModelManager, loaded: LoadedModel) -> None:
        self.manager = manager
        self.model = loaded
        self._released = False
        self._lock = threading.Lock()

    def release(self) -> None:
        with self._lock:
            if self._released:
                return
            self._released = True
        self.manager._release(self)


@dataclass
class _State:
    loaded: LoadedModel | None = None
    loading: str | None = None
    active: int = 0
    last_used: float = field(default_factory=time.monotonic)
    last_error: str | None = None
    loads: int = 0  # models loaded by this process (a warm model is not loaded again)


class ModelManager:
    """Finds, downloads, loads and unloads SAM-Audio models; one warm model per process."""

    def __init__(self, settings: SamSettings | None = None) -> None:
        self.settings = settings or SamSettings.from_env()
        self._lock = threading.Lock()  # guards _state, held briefly (state() never waits on a load)
        self._load_lock = threading.Lock()  # one load at a time
        self._state = _State()

    # -- where models are

    def device(self) -> torch.device:
        return resolve_device(self.settings.device)

    def dtype(self, device: torch.device | None = None) -> torch.dtype:
        return resolve_dtype(self.settings.dtype, device or self.device())

    def variant(self, variant: str | None = None) -> str:
        """The concrete variant: the one given, the configured one, or `auto`'s choice.

        `auto` takes the largest size that fits the device (by total GPU memory; small on CPU,
        base on MPS) and, among sizes that fit, prefers one that is already available locally.
        """
        chosen = variant or self.settings.variant
        if chosen != "auto":
            return check_variant(chosen)
        device = self.device()
        total = device_memory(device)
        if device.type == "cuda":
            gib = (total or 0) / 2**30
            fitting = [s for s in reversed(SIZES) if gib >= AUTO_MIN_GIB[s]]
        elif device.type == "mps":
            fitting = ["base", "small"]
        else:
            fitting = ["small"]
        for size in fitting:
            if self._local_folder(size) is not None:
                return size
        return fitting[0]

    def _local_folder(self, variant: str, model_path: bool = True) -> Path | None:
        """A folder that holds `variant` without any network access, else None."""
        manager = self if model_path or self.settings.model_path is None else self._without_model_path()
        try:
            return manager.resolve(variant, download=False)
        except ReasamError:
            return None

    def _without_model_path(self) -> ModelManager:
        return ModelManager(dataclasses.replace(self.settings, model_path=None))

    def resolve(self, variant: str | None = None, *, download: bool | None = None) -> Path:
        """The local folder of a variant's weights; downloads only when allowed.

        `download=None` follows settings.auto_download; offline mode never downloads.
        """
        s = self.settings
        v = self.variant(variant)
        if s.model_path is not None:
            return _check_model_dir(Path(s.model_path), "REASAM_SAM_MODEL")
        if s.models_dir is not None:
            for name in (f"sam-audio-{v}", v):
                folder = Path(s.models_dir) / name
                if folder.exists():
                    return _check_model_dir(folder, "REASAM_SAM_MODELS_DIR")
        repo = repo_id(v)
        return _check_model_dir(snapshot(s, repo, revision=s.revision, download=download), repo)

    def resolve_text_encoder(
        self, variant: str | None = None, *, folder: Path | None = None, download: bool | None = None
    ) -> Path:
        """The local T5 folder a variant's model loads (REASAM_SAM_T5, else the hub cache).

        Upstream loads it by name at construction (sam_audio/model/text_encoder.py), from the
        hub if need be; ReaSAM hands it a local folder so no load ever downloads.
        """
        s = self.settings
        v = self.variant(variant)
        if s.text_encoder:
            return check_t5_dir(Path(s.text_encoder).expanduser(), "REASAM_SAM_T5")
        folder = folder or self.resolve(v, download=download)
        name = text_encoder_name(_read_config(folder))
        if Path(name).is_dir():
            return check_t5_dir(Path(name), f"{folder / 'config.json'}: text_encoder")
        label = f"the T5 text encoder {name} that SAM-Audio loads"
        path = snapshot(
            s, name, download=download, patterns=T5_FILES, label=label, pull=f"reasam models pull {v}"
        )
        return check_t5_dir(path, name)

    def resolve_judge(self, variant: str | None = None, *, download: bool | None = None) -> Path:
        """The local snapshot of the judge model the `balanced` and `best` presets rerank with."""
        v = self.variant(variant)
        path = snapshot(
            self.settings,
            JUDGE_REPO,
            revision=JUDGE_REVISION,
            download=download,
            label=f"the judge model {JUDGE_REPO} that reranks candidates",
            pull=f"reasam models pull {v}",
        )
        return _check_model_dir(path, JUDGE_REPO)

    def check(self, variant: str | None = None) -> None:
        """Raise ReasamError unless a job could load `variant` now without downloading."""
        self.resolve_text_encoder(variant, folder=self.resolve(variant))

    def pull(self, variant: str | None = None) -> Pulled:
        """Download what jobs of `variant` load: the model, its T5 and the judge (no-ops when
        present). Only the judge may fail without failing the pull: presets then run without
        reranking and say so."""
        s = self.settings
        v = self.variant(variant)
        download = not is_offline(s)
        model = None
        if s.model_path is not None or s.models_dir is not None:
            model = self._local_folder(v)
        model = model or self.resolve(v, download=download)
        t5 = self.resolve_text_encoder(v, folder=model, download=download)
        try:
            judge: Path | ReasamError = self.resolve_judge(v, download=download)
        except ReasamError as exc:
            judge = exc
        return Pulled(model, t5, judge)

    def _cache_entry(self, variant: str) -> Any | None:
        from huggingface_hub import scan_cache_dir

        cache = hub_cache_dir(self.settings)
        if not cache.is_dir():
            return None
        try:
            info = scan_cache_dir(cache)
        except Exception:
            return None
        for repo in info.repos:
            if repo.repo_id == repo_id(variant) and repo.repo_type == "model":
                return info, repo
        return None

    def remove(self, variant: str) -> int:
        """Delete a variant from the hub cache; returns the bytes freed."""
        v = check_variant(variant)
        entry = self._cache_entry(v)
        if entry is None:
            raise ReasamError(
                "not_found", f"{repo_id(v)} is not in the hub cache ({hub_cache_dir(self.settings)})"
            )
        info, repo = entry
        with self._lock:
            if self._state.loaded is not None and self._state.loaded.variant == v and self._state.active == 0:
                self._unload_locked()
        strategy = info.delete_revisions(*[r.commit_hash for r in repo.revisions])
        strategy.execute()
        return int(repo.size_on_disk)

    def companions(self) -> dict[str, Path | None]:
        """The local folders of t5-base and the judge (None where not downloaded), for `list`."""
        s = self.settings
        found: dict[str, Path | None] = {}
        for name, get in (
            ("t5-base" if not s.text_encoder else "REASAM_SAM_T5", self._local_t5),
            (JUDGE_REPO, lambda: snapshot(s, JUDGE_REPO, revision=JUDGE_REVISION, download=False)),
        ):
            try:
                found[name] = get()
            except ReasamError:
                found[name] = None
        return found

    def _local_t5(self) -> Path:
        if self.settings.text_encoder:
            return check_t5_dir(Path(self.settings.text_encoder).expanduser(), "REASAM_SAM_T5")
        return check_t5_dir(snapshot(self.settings, T5_DEFAULT, download=False), T5_DEFAULT)

    def list(self) -> list[dict]:
        """Every variant: where its weights are (if anywhere), their size, and whether loaded."""
        rows = []
        with self._lock:
            loaded = self._state.loaded.variant if self._state.loaded else None
        if self.settings.model_path is not None:
            folder = self._local_folder(self.variant())
            rows.append(
                {
                    "variant": "REASAM_SAM_MODEL",
                    "repo": None,
                    "downloaded": folder is not None,
                    "source": "local folder",
                    "path": str(self.settings.model_path),
                    "size_bytes": sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
                    if folder
                    else None,
                    "loaded": loaded is not None,
                }
            )
        for v in VARIANTS:
            entry = self._cache_entry(v)
            folder = self._local_folder(v, model_path=False)
            if folder is not None and entry is not None and str(folder).startswith(str(entry[1].repo_path)):
                source, size = "hub cache", int(entry[1].size_on_disk)
            elif folder is not None:
                source = "local folder"
                size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
            else:
                source, size = None, None
            rows.append(
                {
                    "variant": v,
                    "repo": repo_id(v),
                    "downloaded": folder is not None,
                    "source": source,
                    "path": str(folder) if folder else None,
                    "size_bytes": size,
                    "loaded": loaded == v and self.settings.model_path is None,
                }
            )
        return rows

    # -- loading

    def acquire(self, variant: str | None = None, extras: frozenset[str] | set[str] = frozenset()) -> Lease:
        """Hold the warm model of `variant` with at least `extras` loaded, loading it if needed."""
        v = self.variant(variant)
        extras = frozenset(extras)
        unknown = extras - set(EXTRAS)
        if unknown:
            raise ValueError(f"unknown extras {sorted(unknown)}")
        with self._lock:
            self._state.active += 1
        try:
            with self._load_lock:
                with self._lock:
                    current = self._state.loaded
                if current is None or current.variant != v or not current.serves(extras):
                    keep = current.extras if current is not None and current.variant == v else frozenset()
                    with self._lock:
                        self._state.loaded = None  # a lease on the old model keeps it alive until released
                        self._state.loading = v
                    del current
                    self._free_memory()
                    try:
                        loaded = self._load(v, extras | keep)
                    except ReasamError as exc:
                        with self._lock:
                            self._state.last_error = exc.message
                        raise
                    finally:
                        with self._lock:
                            self._state.loading = None
                    with self._lock:
                        self._state.loaded = loaded
                        self._state.last_error = None
                        self._state.loads += 1
                with self._lock:
                    loaded = self._state.loaded
                    assert loaded is not None
                    return Lease(self, loaded)
        except BaseException:
            with self._lock:
                self._state.active -= 1
                self._state.last_used = time.monotonic()
            raise

    def _release(self, lease: Lease) -> None:
        with self._lock:
            self._state.active = max(0, self._state.active - 1)
            self._state.last_used = time.monotonic()
            if self._state.active == 0 and self.settings.keep_alive_minutes == 0:
                self._unload_locked()

    def _load(self, variant: str, extras: frozenset[str]) -> LoadedModel:
        """Build the model from local folders only: the snapshot, its T5 and (for "ranker") the
        judge. Upstream's own rankers, span predictor and visual ranker are switched off whatever
        config.json holds: they would load from the hub at construction."""
        sam_audio = import_sam_audio()
        folder = self.resolve(variant)
        config = _read_config(folder)
        t5 = self.resolve_text_encoder(variant, folder=folder)
        text_encoder = config.get("text_encoder") if isinstance(config.get("text_encoder"), dict) else {}
        overrides: dict[str, Any] = {
            "visual_ranker": None,
            "text_ranker": None,
            "span_predictor": None,
            "text_encoder": {**text_encoder, "name": str(t5)},
        }
        device = self.device()
        dtype = self.dtype(device)
        started = time.perf_counter()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        model = None
        missing: dict[str, str] = {}
        try:
            model = load_from_dir(sam_audio.SAMAudio, folder, overrides)
            if "ranker" in extras:
                ranker, problem = self._judge_ranker(sam_audio, variant)
                if ranker is not None:
                    model.text_ranker = ranker  # cast and moved with the model below
                else:
                    missing["ranker"] = problem or "unknown"
                    log.warning("SAM-Audio %s: no reranking: %s", variant, problem)
            dropped = strip_vision_encoder(model) if self.settings.lite else 0
            model = model.eval().to(dtype=dtype).to(device)
            processor = sam_audio.SAMAudioProcessor.from_pretrained(str(folder))
        except Exception as exc:
            model = None
            label = f"SAM-Audio {variant}"
            if is_out_of_memory(exc):
                del exc
                self._free_memory()
                total = device_memory(device)
                hint = suggest_variant(variant, total)
                advice = f"try variant {hint}" if hint else "free GPU memory or use REASAM_SAM_DEVICE=cpu"
                raise ReasamError(
                    "out_of_memory", f"loading {label} ran out of memory on {device}: {advice}"
                ) from None
            message = f"loading {label} failed: {type(exc).__name__}: {errors_detail(exc)}"
            raise ReasamError("engine_failed", message) from None
        seconds = time.perf_counter() - started
        params = sum(p.numel() for p in model.parameters())
        memory = torch.cuda.memory_allocated(device) if device.type == "cuda" else None
        loaded = LoadedModel(
            variant=variant,
            folder=folder,
            model=model,
            processor=processor,
            device=device,
            dtype=dtype,
            extras=extras - missing.keys(),
            load_seconds=seconds,
            weights_bytes=module_bytes(model),
            parameters=params,
            memory_bytes=memory,
            vision_bytes_dropped=dropped,
            missing=missing,
        )
        log.info("loaded SAM-Audio %s from %s on %s (%s) in %.1f s", variant, folder, device, dtype, seconds)
        return loaded

    def _judge_ranker(self, sam_audio: Any, variant: str) -> tuple[JudgeRanker | None, str | None]:
        """The judge ranker from its local snapshot, or None and one line saying why not."""
        try:
            folder = self.resolve_judge(variant)
        except ReasamError as exc:
            return None, exc.message
        try:
            model = load_from_dir(sam_audio.SAMAudioJudgeModel, folder, {})
            processor = sam_audio.SAMAudioJudgeProcessor.from_pretrained(str(folder))
        except Exception as exc:
            if is_out_of_memory(exc):
                raise
            detail = errors_detail(exc)
            return None, f"the judge model ({folder}) cannot be loaded: {type(exc).__name__}: {detail}"
        return JudgeRanker(model.eval(), processor), None

    # -- unloading

    def _unload_locked(self) -> None:
        if self._state.loaded is None:
            return
        device = self._state.loaded.device
        self._state.loaded = None
        gc.collect()
        empty_cache(device)

    def unload(self) -> bool:
        """Unload now unless a job holds the model; True if something was unloaded."""
        with self._lock:
            if self._state.loaded is None or self._state.active:
                return False
            self._unload_locked()
            return True

    def release_idle(self, now: float | None = None) -> bool:
        """Unload the model if it has been idle for the keep-alive; True if it was unloaded."""
        keep = self.settings.keep_alive_minutes
        with self._lock:
            st = self._state
            if st.loaded is None or st.active or keep < 0:
                return False
            now = time.monotonic() if now is None else now
            if now - st.last_used < keep * 60:
                return False
            self._unload_locked()
            return True

    def _free_memory(self) -> None:
        gc.collect()
        with contextlib.suppress(ReasamError):
            empty_cache(self.device())

    # -- reporting

    def state(self) -> dict:
        """What is loaded, where, and what it costs: for `reasam engines` and the daemon's ping."""
        with self._lock:
            st = self._state
            lm = st.loaded
            out: dict[str, Any] = {
                "state": "loading"
                if st.loading
                else ("unloaded" if lm is None else ("busy" if st.active else "ready")),
                "variant": lm.variant if lm else st.loading,
                "keep_alive_minutes": self.settings.keep_alive_minutes,
                "active_jobs": st.active,
                "loads": st.loads,
                "last_error": st.last_error,
            }
            if lm is not None:
                out.update(
                    {
                        "repo": repo_id(lm.variant),
                        "path": str(lm.folder),
                        "device": str(lm.device),
                        "dtype": str(lm.dtype).removeprefix("torch."),
                        "extras": sorted(lm.extras),
                        "missing": dict(lm.missing),
                        "lite": self.settings.lite,
                        "load_seconds": round(lm.load_seconds, 3),
                        "parameters": lm.parameters,
                        "weights_bytes": lm.weights_bytes,
                        "vision_bytes_dropped": lm.vision_bytes_dropped,
                        "memory_bytes": lm.memory_bytes,
                        "idle_seconds": None if st.active else round(time.monotonic() - st.last_used, 1),
                    }
                )
                if lm.device.type == "cuda":
                    out["memory_bytes"] = int(torch.cuda.memory_allocated(lm.device))
                    out["peak_memory_bytes"] = int(torch.cuda.max_memory_allocated(lm.device))
        return out

    def state_line(self) -> str:
        """`state()` in one line, e.g. for the ping's model_state."""
        st = self.state()
        keep = st["keep_alive_minutes"]
        keep_text = (
            "never unloads"
            if keep < 0
            else ("unloads after each job" if keep == 0 else f"keep-alive {keep:g} min")
        )
        if st["state"] in ("unloaded", "loading"):
            what = f"loading {st['variant']}" if st["state"] == "loading" else "not loaded"
            return f"{what} ({keep_text})"
        memory = st.get("memory_bytes") or st["weights_bytes"]
        extras = "+".join(st["extras"]) or "lite"
        idle = "" if st["idle_seconds"] is None else f", idle {st['idle_seconds']:.0f} s"
        return (
            f"{st['variant']} {st['state']} on {st['device']} {st['dtype']} ({extras}), "
            f"{format_bytes(memory)}, loaded in {st['load_seconds']:.1f} s{idle} ({keep_text})"
        )


_default: ModelManager | None = None
_default_lock = threading.Lock()


def default_manager() -> ModelManager:
    """The process-wide manager (settings from the environment), created on first use."""
    global _default
    with _default_lock:
        if _default is None:
            _default = ModelManager()
        return _default


def set_default_manager(manager: ModelManager | None) -> ModelManager | None:
    """Replace the process-wide manager (the daemon's configuration, tests); returns the old one."""
    global _default
    with _default_lock:
        old, _default = _default, manager
        return old


__all__ = [
    "VARIANTS",
    "Lease",
    "LoadedModel",
    "ModelManager",
    "SamSettings",
    "default_manager",
    "import_sam_audio",
    "load_from_dir",
    "resolve_device",
    "resolve_dtype",
    "sam_audio_problem",
    "set_default_manager",
    "suggest_variant",
]
