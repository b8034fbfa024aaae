"""Test double of the upstream `sam_audio` package (facebookresearch/sam-audio, commit 68b48d4).

NOT SAM-Audio: a small, deterministic stand-in that keeps upstream's API and behaviour where
ReaSAM meets them (model.py and processor.py say, fact by fact, which upstream file each
follows), so ReaSAM's `sam` engine, pipeline and CLI can be tested end to end on CPU without the
real package or its gated weights. Tests put tests/sam_double on sys.path; `sam_audio.testing`
writes model folders and hub caches.
"""

from .model import SAMAudio, SAMAudioConfig, SAMAudioJudgeModel, SeparationResult
from .processor import Batch, SAMAudioJudgeProcessor, SAMAudioProcessor

__all__ = [
    "Batch",
    "SAMAudio",
    "SAMAudioConfig",
    "SAMAudioJudgeModel",
    "SAMAudioJudgeProcessor",
    "SAMAudioProcessor",
    "SeparationResult",
]
