"""Chunked overlap-add: how long audio goes through engines in bounded memory.

Engines have a longest input per call and their cost or memory grows with length, so the
pipeline cuts the region into chunks of `chunk` frames that overlap by `overlap` frames. Each
chunk is also read with `context` extra frames on both sides, which the engine sees and which
are then dropped: STFT edges and model warm-up sit in the context, not in the output. Within
the overlap the outgoing chunk fades out and the incoming one fades in with power-complementary
sin²/cos² weights that sum to exactly 1, so a signal both chunks agree on passes unchanged.

Output is emitted chunk by chunk, holding back only the overlap tail, so memory is bounded by
one chunk whatever the file's length.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Chunk:
    index: int
    start: int  # first region frame the chunk's output covers
    end: int  # one past the last
    emit_end: int  # output for [start, emit_end) is final once this chunk is blended
    last: bool


def plan(total: int, chunk: int, overlap: int) -> list[Chunk]:
    """Chunks covering [0, total); every chunk but the last overlaps the next by `overlap`."""
    if total <= 0:
        return []
    chunk = max(chunk, 1)
    overlap = min(max(overlap, 0), chunk // 2)
    hop = chunk - overlap
    count = 1 + math.ceil(max(0, total - chunk) / hop)
    chunks = []
    for k in range(count):
        start = k * hop
        last = k == count - 1
        end = total if last else start + chunk
        chunks.append(Chunk(k, start, end, total if last else start + hop, last))
    return chunks


def fade_in(length: int) -> np.ndarray:
    t = (np.arange(length, dtype=np.float64) + 0.5) / max(length, 1)
    return (np.sin(0.5 * np.pi * t) ** 2).astype(np.float32)


class Crossfader:
    """Blends consecutive chunk outputs and returns the frames that are final."""

    def __init__(self, overlap: int) -> None:
        self._fade = fade_in(overlap)
        self._tail: np.ndarray | None = None

    def push(self, chunk: Chunk, output: np.ndarray) -> np.ndarray:
        """`output` covers [chunk.start, chunk.end); returns [chunk.start, chunk.emit_end)."""
        output = output.copy()
        if self._tail is not None:
            n = self._tail.shape[1]
            fade = self._fade[:n]
            output[:, :n] = output[:, :n] * fade + self._tail * (1.0 - fade)
        keep = chunk.emit_end - chunk.start
        self._tail = None if chunk.last else output[:, keep:]
        return output[:, :keep]
