"""Stem sets: how several prompts share one region, and how we tell whether a prompt was found.

A stem set is one job with several prompts ("vocals", "drums", "bass"): one target stem per
prompt plus a `rest` stem. The engine gives one estimate per prompt; estimates of different
prompts may claim the same sound ("drums" and "percussion" both take the kick). Written as they
are, the stems would then hold that sound twice and the set would not sum to the mix.

The joint mask (`share`) settles every claim in the time-frequency plane, per channel, with a
Wiener-style soft mask over the engine's estimates E_i of the mix X (2048-point STFT, hop 1024,
at the source rate):

    p_i = |E_i|^2                  what prompt i claims in a bin
    p_rest = min(|X - sum_i E_i|^2, min_i |X - E_i|^2)
                                   what no prompt claims: what the estimates together leave of
                                   the mix, or the smallest single residual where the claims
                                   overlap (their sum then overshoots the mix)
    m_i = p_i / (sum_j p_j + p_rest)
    target_i = ISTFT(m_i * X)

The masks of a bin sum to at most one, so where two prompts claim the same sound they share it
in proportion to their claims (two equal claims get half each), never both in full; where one
prompt alone claims a bin it keeps what its own ratio mask p_i / (p_i + |X - E_i|^2) gives.
Prompts that claim different sounds which together make up the mix leave nothing to `rest`
(|X - sum_i E_i| is zero there); a single residual |X - E_i| would count the other prompts'
sound as unclaimed and leak it to `rest`. With one prompt both terms are the same.
The `rest` stem is then `region - sum(targets)`, computed by the pipeline from the samples it
read, which makes `sum(targets) + rest == region` hold to float precision whatever the masks.
A one-prompt job is not masked here: its target is the engine's estimate, exactly as before.
SAM-Audio (stereo mode `mask`) applies the same rule itself, to its mono model outputs, when it
rebuilds stereo (engines/sam.py `ratio_mask_stems`), so its sets skip this second pass.

Presence is measured locally, because a short sound in a long region is still there: a 1 s
bark in a 3-minute region holds about -32 dB of the region's energy even when it is the
loudest thing in its second. The region is cut into blocks of `PRESENCE_BLOCK_SECONDS`; a
target's figure is its energy against the mix's over the blocks where the target is active
(within `ACTIVE_RANGE_DB` of its own loudest block), in dB. A target below
`PRESENCE_THRESHOLD_DB` is reported as not present: what an engine returns when the sound asked
for is not there is leakage, spread with the mix and far below it (dsp "drums" on a chord with
no percussion measured about -34 dB, the SAM double's "bass" on a 1 kHz tone less than -100 dB),
while a sound that is really there, even a quiet part, sits within about 25 dB of the mix in
the seconds where it plays.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

# A target this far below the region (energy ratio, dB) counts as "not found" (module docstring).
PRESENCE_THRESHOLD_DB = -30.0
# Presence is measured over blocks of this length, where the target is active (module docstring).
PRESENCE_BLOCK_SECONDS = 1.0
ACTIVE_RANGE_DB = 20.0
# Reported for a silent target (the true figure is minus infinity, which JSON cannot hold).
SILENT_DB = -120.0
SHARE_FFT = 2048
SHARE_HOP = 1024  # 50 % overlap: Hann windows still sum to a constant
_EPS = 1e-12


def share(mix: np.ndarray, estimates: np.ndarray) -> np.ndarray:
    """The joint soft mask of the module docstring: targets (prompts, channels, n) of `mix`.

    `mix` is (channels, n) and `estimates` (prompts, channels, n), float32. A chunk shorter than
    one STFT frame is returned as the estimates scaled to share it (no spectrum to mask).
    """
    prompts, channels, n = estimates.shape
    if n < SHARE_FFT:
        total = np.abs(estimates).sum(axis=0, keepdims=True)
        scale = np.minimum(1.0, np.abs(mix)[None] / np.maximum(total, _EPS))
        return (estimates * scale).astype(np.float32)
    window = torch.hann_window(SHARE_FFT)
    x = torch.from_numpy(np.ascontiguousarray(mix, dtype=np.float32))
    e = torch.from_numpy(np.ascontiguousarray(estimates, dtype=np.float32)).reshape(prompts * channels, n)
    spec = torch.stft(
        torch.cat([x, e]), SHARE_FFT, SHARE_HOP, window=window, center=True, return_complex=True
    )
    mix_spec = spec[:channels]
    est = spec[channels:].reshape(prompts, channels, *spec.shape[1:])
    claims = _power(est)
    rest = torch.minimum(_power(mix_spec[None] - est).amin(dim=0), _power(mix_spec - est.sum(dim=0)))
    total = claims.sum(dim=0).add_(rest).add_(_EPS)
    masks = claims.div_(total)
    out = torch.istft(
        (masks * mix_spec[None]).reshape(prompts * channels, *spec.shape[1:]),
        SHARE_FFT,
        SHARE_HOP,
        window=window,
        center=True,
        length=n,
    )
    return out.reshape(prompts, channels, n).numpy()


def _power(spec: torch.Tensor) -> torch.Tensor:
    """|z|² of a complex tensor without the square root of abs()."""
    parts = torch.view_as_real(spec)
    return parts[..., 0].square() + parts[..., 1].square()


def presence_db(target_energy: float, region_energy: float) -> float | None:
    """A target's energy relative to the mix's, in dB (None for a silent mix)."""
    if region_energy <= 0:
        return None
    if target_energy <= 0:
        return SILENT_DB
    return round(max(SILENT_DB, 10.0 * math.log10(target_energy / region_energy)), 2)


@dataclass
class Presence:
    """Energy of each target and of the mix per block, summed chunk by chunk as the pipeline
    emits them (blocks of `block` frames, counted from the region's start)."""

    targets: list[np.ndarray]
    block: int
    region: np.ndarray = field(default_factory=lambda: np.zeros(0))
    frames: int = 0
    scores: list[float | None] = field(default_factory=list)

    @classmethod
    def of(cls, count: int, rate: int) -> Presence:
        block = max(1, round(PRESENCE_BLOCK_SECONDS * rate))
        return cls([np.zeros(0) for _ in range(count)], block)

    def add(self, region: np.ndarray, targets: Sequence[np.ndarray]) -> None:
        n = region.shape[-1]
        if n == 0:
            return
        index = (self.frames + np.arange(n)) // self.block
        self.frames += n
        size = int(index[-1]) + 1
        self.region = _accumulate(self.region, index, region, size)
        for i, target in enumerate(targets):
            self.targets[i] = _accumulate(self.targets[i], index, target, size)

    def figure(self, index: int) -> float | None:
        """Target `index` against the mix over the blocks where the target is active, in dB."""
        target = self.targets[index]
        if target.size == 0 or self.region.sum() <= 0:
            return None
        active = target >= target.max() * 10.0 ** (-ACTIVE_RANGE_DB / 10.0)
        if target.max() <= 0:
            active = self.region > 0
        return presence_db(float(target[active].sum()), float(self.region[active].sum()))

    def report(self, index: int) -> dict:
        """The manifest keys of target `index`: `presence_db`, `present` (and `judge_score`)."""
        db = self.figure(index)
        out: dict = {"presence_db": db, "present": db is not None and db >= PRESENCE_THRESHOLD_DB}
        score = self.scores[index] if index < len(self.scores) else None
        if score is not None:
            out["judge_score"] = score
        return out


def _accumulate(sums: np.ndarray, index: np.ndarray, samples: np.ndarray, size: int) -> np.ndarray:
    """`sums` (energy per block) grown to `size` blocks, plus the energy of `samples`
    (channels, n) added to the blocks `index` (n,) names."""
    if sums.size < size:
        sums = np.concatenate([sums, np.zeros(size - sums.size)])
    energy = np.square(samples, dtype=np.float64).sum(axis=0)
    start = int(index[0])
    sums[start:size] += np.bincount(index - start, weights=energy, minlength=size - start)
    return sums
