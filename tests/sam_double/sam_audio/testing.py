"""Helpers for tests and benchmarks (not part of the upstream API): write what downloads hold.

`write_model_dir` writes what a SAM-Audio snapshot holds (config.json and checkpoint.pt) with
weights the double accepts; `write_t5_dir` a stand-in for the `t5-base` snapshot (config, a
weights file, tokenizer files); `write_judge_dir` one for facebook/sam-audio-judge (config.json,
checkpoint.pt, tokenizer_config.json). `write_hub_cache` lays any of them out as a
huggingface_hub cache entry (models--ORG--NAME/{blobs, refs/REVISION, snapshots/<hash>/...}) so
hub resolution can be tested offline.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

# Transformer width per variant: the double's only size difference (enough to see in `state()`).
DIMS = {"small": 16, "base": 32, "large": 64}
T5_REPO = "t5-base"
JUDGE_REPO = "facebook/sam-audio-judge"
JUDGE_REVISION = "sam_audio"


def config_for(variant: str = "base", **double: Any) -> dict:
    """A config.json like a SAM-Audio snapshot's: ranker, span predictor and T5 by hub name."""
    size = variant.removesuffix("-tv")
    return {
        "in_channels": 768,
        "audio_codec": {"sample_rate": 48_000, "encoder_rates": [2, 8, 10, 12], "codebook_dim": 128},
        "text_encoder": {"name": "t5-base", "dim": 768},
        "vision_encoder": {"dim": 128, "name": "PE-Core-L14-336"},
        "transformer": {"dim": DIMS.get(size, 32), "max_positions": 10_000},
        "num_anchors": 3,
        "anchor_embedding_dim": 128,
        "visual_ranker": {"kind": "imagebind"},
        "text_ranker": {"kind": "judge", "checkpoint_or_model_id": JUDGE_REPO},
        "span_predictor": "pe-a-frame-large",
        "double": double,
    }


def write_model_dir(folder: Path, variant: str = "base", config: dict | None = None, **double: Any) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = config or config_for(variant, **double)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    dim = config["transformer"]["dim"]
    vdim = config["vision_encoder"]["dim"]
    state = {
        "transformer.weight": torch.zeros(dim, dim),
        "transformer.gain": torch.ones(1),
        "vision_encoder.weight": torch.zeros(vdim, vdim),
    }
    torch.save(state, folder / "checkpoint.pt")
    return folder


def write_t5_dir(folder: Path) -> Path:
    """Files named as in the t5-base snapshot; their content is only what the double reads."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "t5", "d_model": 768}))
    (folder / "model.safetensors").write_bytes(b"double")
    (folder / "spiece.model").write_bytes(b"double")
    (folder / "tokenizer_config.json").write_text("{}")
    return folder


def write_judge_dir(folder: Path) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(
        json.dumps({"audio_codec": {"sample_rate": 48_000}, "bottleneck_dim": 256})
    )
    torch.save({"head": torch.ones(4)}, folder / "checkpoint.pt")
    (folder / "tokenizer_config.json").write_text("{}")
    return folder


def write_hub_cache(
    cache_dir: Path,
    variant: str = "base",
    revision: str = "a" * 40,
    *,
    repo: str | None = None,
    ref: str = "main",
    writer: Callable[[Path], Path] | None = None,
    **double: Any,
) -> Path:
    """A hub cache entry (facebook/sam-audio-<variant> unless `repo`); returns the snapshot.

    `writer` fills the snapshot folder (default: a SAM-Audio model); `ref` is the branch name
    the entry is recorded under (refs/<ref>), e.g. "sam_audio" for the judge.
    """
    repo = repo or f"facebook/sam-audio-{variant}"
    root = Path(cache_dir) / ("models--" + repo.replace("/", "--"))
    folder = root / "snapshots" / revision
    snapshot = writer(folder) if writer else write_model_dir(folder, variant, **double)
    # As huggingface_hub stores them: content in blobs/<hash>, the snapshot holds symlinks.
    (root / "blobs").mkdir(exist_ok=True)
    for file in list(snapshot.iterdir()):
        digest = hashlib.sha256(file.read_bytes()).hexdigest()
        blob = root / "blobs" / digest
        file.replace(blob)
        file.symlink_to(os.path.relpath(blob, snapshot))
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / ref).write_text(revision)
    return snapshot


def write_extras_cache(cache_dir: Path, judge: bool = True) -> dict[str, Path]:
    """t5-base (and the judge, unless `judge=False`) in a hub cache: what `models pull` adds."""
    out = {"t5": write_hub_cache(cache_dir, repo=T5_REPO, revision="b" * 40, writer=write_t5_dir)}
    if judge:
        out["judge"] = write_hub_cache(
            cache_dir, repo=JUDGE_REPO, revision="c" * 40, ref=JUDGE_REVISION, writer=write_judge_dir
        )
    return out
