"""Helpers for tests and benchmarks (not part of the upstream API): write double checkpoints.

`write_model_dir` writes what a downloaded SAM-Audio snapshot holds (config.json and
checkpoint.pt) with weights the double accepts; `write_hub_cache` lays the same files out as a
huggingface_hub cache entry (models--facebook--sam-audio-X/{refs/main, snapshots/<hash>/...})
so hub resolution can be tested offline.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

# Transformer width per variant: the double's only size difference (enough to see in `state()`).
DIMS = {"small": 16, "base": 32, "large": 64}


def config_for(variant: str = "base", **double: Any) -> dict:
    size = variant.removesuffix("-tv")
    return {
        "in_channels": 768,
        "audio_codec": {"sample_rate": 48_000, "encoder_rates": [2, 8, 10, 12]},
        "text_encoder": {"name": "t5-base", "dim": 768},
        "vision_encoder": {"dim": 128, "name": "PE-Core-L14-336"},
        "transformer": {"dim": DIMS.get(size, 32), "max_positions": 10_000},
        "num_anchors": 3,
        "anchor_embedding_dim": 128,
        "visual_ranker": {"kind": "imagebind"},
        "text_ranker": {"kind": "clap"},
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


def write_hub_cache(cache_dir: Path, variant: str = "base", revision: str = "a" * 40, **double: Any) -> Path:
    """A hub cache entry for facebook/sam-audio-<variant>; returns the snapshot folder."""
    repo = Path(cache_dir) / f"models--facebook--sam-audio-{variant}"
    snapshot = write_model_dir(repo / "snapshots" / revision, variant, **double)
    # As huggingface_hub stores them: content in blobs/<hash>, the snapshot holds symlinks.
    (repo / "blobs").mkdir(exist_ok=True)
    for file in list(snapshot.iterdir()):
        digest = hashlib.sha256(file.read_bytes()).hexdigest()
        blob = repo / "blobs" / digest
        file.replace(blob)
        file.symlink_to(os.path.relpath(blob, snapshot))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    return snapshot
