"""Test double of the upstream `sam_audio` package (facebookresearch/sam-audio).

NOT SAM-Audio: a small, deterministic stand-in that follows the documented API and its traps
(see model.py and processor.py, and ../shared/docs/sam-audio.md), so ReaSAM's `sam` engine,
pipeline and CLI can be tested end to end on CPU without the real package or its gated weights.
Tests put tests/sam_double on sys.path; `sam_audio.testing` writes model folders and hub caches.
"""

from .model import SAMAudio, SAMAudioConfig, SeparationResult
from .processor import Batch, SAMAudioProcessor

__all__ = ["Batch", "SAMAudio", "SAMAudioConfig", "SAMAudioProcessor", "SeparationResult"]
