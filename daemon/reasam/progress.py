"""A job's progress on stderr, with the time it has taken and an estimate of what is left.

On a terminal it is a tqdm bar redrawn in place. Anywhere else (a log file, a pipe, CI) a bar's
carriage returns would pile up into one unreadable line, so it is one plain line per update
instead, only when the whole percentage or the stage changes. The figures are the job's own:
`fraction` 0-1 and a stage word, as the pipeline and the daemon's `/reasam/progress` give them.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from tqdm import tqdm

# tqdm's own layout, `[elapsed<remaining, stage]`; the estimate is tqdm's, from the rate so far.
_BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar:24}| [{elapsed}<{remaining}{postfix}]"


def choose_mode(quiet: bool, stream: TextIO | None = None) -> str:
    """The mode: off with --quiet, bar on a terminal, lines otherwise."""
    stream = stream or sys.stderr
    if quiet:
        return "off"
    return "bar" if stream.isatty() else "lines"


class Progress:
    """Callable as the pipeline's `progress(fraction, stage)`; `close()` when the job ends."""

    def __init__(self, label: str, mode: str, stream: TextIO | None = None, header: str = "") -> None:
        self.label = label
        # A line for above the progress (what runs the job), shown with its first figure.
        self.header = header
        self.mode = mode
        self.stream = stream or sys.stderr
        self.started: float | None = None  # the first update: the job's start, not its set-up's
        self._last: tuple[int, str] | None = None
        self._bar: tqdm | None = None

    def __call__(self, fraction: float, stage: str) -> None:
        if self.started is None:
            self.started = time.monotonic()
        if fraction <= 0 or self.mode == "off":
            # 0 comes before the job's checks: a job refused there shows its one-line error alone.
            return
        if self.header:
            self.stream.write(f"{self.header}\n")
            self.header = ""
        if self.mode == "bar" and self._bar is None:
            self._bar = tqdm(
                total=100,
                desc=self.label,
                bar_format=_BAR_FORMAT,
                file=self.stream,
                leave=True,
                dynamic_ncols=True,
                initial=0,
            )
        percent = min(max(fraction, 0.0), 1.0) * 100
        if self._bar is not None:
            # Set and drawn at once: a job reports a handful of times, and tqdm's update() would
            # hold back draws closer than its minimum interval or count.
            self._bar.n = percent
            self._bar.set_postfix_str(stage, refresh=False)
            self._bar.refresh()
            return
        if self.mode != "lines" or self._last == (int(percent), stage):
            return
        self._last = (int(percent), stage)
        self.stream.write(f"reasam: {self.label}: {self.line(fraction, stage)}\n")
        self.stream.flush()

    def line(self, fraction: float, stage: str) -> str:
        """`42% separating, 0:12 elapsed, 0:16 left` (the estimate from the rate so far)."""
        elapsed = time.monotonic() - (self.started or time.monotonic())
        left = (
            "?"
            if fraction < 0.05 or fraction >= 1
            else tqdm.format_interval(elapsed * (1 - fraction) / fraction)
        )
        text = f"{fraction * 100:3.0f}% {stage}, {tqdm.format_interval(elapsed)} elapsed"
        return text if fraction >= 1 else f"{text}, {left} left"

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
