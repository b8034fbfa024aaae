"""One exception type for every failure a user can see.

Each error carries a protocol code (../shared/docs/protocol.md, `/reasam/error`) so the OSC
front door, the CLI and status.json all report the same thing in the same words.
"""

from __future__ import annotations

import errno
import os
import re

# Codes of the OSC protocol, version 1.
CODES = (
    "bad_request",
    "unauthorized",
    "not_found",
    "unsupported_format",
    "unsupported_prompt",
    "busy",
    "out_of_memory",
    "engine_failed",
    "internal",
)

# Codes that mean "the caller asked for something invalid" (CLI exit 2) rather than
# "a valid request failed while running" (CLI exit 1).
USAGE_CODES = frozenset({"bad_request", "unsupported_prompt"})


class ReasamError(Exception):
    """A failure with a protocol code and a one-line message meant for the user."""

    def __init__(self, code: str, message: str, usage: bool | None = None) -> None:
        if code not in CODES:
            raise ValueError(f"unknown error code {code!r}")
        # One line, always: messages travel in OSC strings and single-line stderr output.
        message = " ".join(str(message).split())
        super().__init__(message)
        self.code = code
        self.message = message
        # Whether the caller's input is at fault (CLI exit 2) rather than the run (exit 1).
        self.usage = code in USAGE_CODES if usage is None else usage

    def __str__(self) -> str:
        return self.message


# An error text from a library (the hub's HTTP errors carry the server's whole answer) is kept to
# whole sentences that fit this many characters; the first sentence is always kept whole, up to
# HARD_LIMIT (an answer with no sentence end at all, an HTML page say, is cut at a word there).
DETAIL_LIMIT = 400
HARD_LIMIT = 2000
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def detail(text: object, limit: int = DETAIL_LIMIT) -> str:
    """`text` as one line of whole sentences, for the end of a one-line error message.

    Messages used to be cut at a fixed length, mid-word and mid-sentence ("... You must have
    acc"), which left the user guessing what the library said; the sentences that do not fit are
    dropped whole instead, and "[…]" says that something was."""
    line = " ".join(str(text).split())
    if len(line) <= limit:
        return line
    sentences = _SENTENCE_END.split(line)
    kept = sentences[0]
    if len(kept) > HARD_LIMIT:
        return kept[:HARD_LIMIT].rsplit(" ", 1)[0] + " […]"
    for sentence in sentences[1:]:
        if len(kept) + 1 + len(sentence) > limit:
            break
        kept = f"{kept} {sentence}"
    return kept if kept == line else f"{kept} […]"


class NoAnswer(Exception):
    """The daemon did not answer in time (not running, wrong port, or the datagrams were lost)."""


class NotListening(NoAnswer):
    """Nothing listens on the daemon's port: the host said so (ICMP port unreachable), so there
    is no point in waiting for an answer."""


class JobCancelled(Exception):
    """Raised inside a running job when its cancel flag is seen (between chunks or engine steps)."""


def bad_request(message: str) -> ReasamError:
    return ReasamError("bad_request", message)


# How running out of memory reads when it is not a MemoryError: torch's OutOfMemoryError says
# "out of memory" (CUDA, and older torch, MPS and ROCm as a RuntimeError); torch's CPU allocator
# raises RuntimeError("DefaultCPUAllocator: can't allocate memory: …").
OUT_OF_MEMORY_TEXTS = ("out of memory", "can't allocate memory")


def is_out_of_memory(exc: BaseException) -> bool:
    """Host or accelerator memory ran out. Looks at torch only if something already imported it,
    so the jobs layer can ask without importing torch."""
    if isinstance(exc, MemoryError):
        return True
    import sys

    torch = sys.modules.get("torch")
    oom = getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None)
    if isinstance(oom, type) and isinstance(exc, oom):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(t in text for t in OUT_OF_MEMORY_TEXTS)


def output_error(exc: OSError, path: object, folder: object = None) -> ReasamError:
    """A failed write of `path` as one line a user can act on: `disk full`, `output folder
    removed`, … with the path. Code `bad_request`, as for every output folder that cannot hold
    the job's files, but not a usage error: the request was valid (CLI exit 1)."""
    folder = folder if folder is not None else os.path.dirname(str(path))
    number = exc.errno
    if number in (errno.ENOSPC, errno.EDQUOT):
        what = "disk full"
    elif number == errno.ENOENT and not os.path.isdir(str(folder)):
        what = "output folder removed"
        path = folder
    elif number == errno.EFBIG:
        what = "file too large for the file system or the size limit"
    elif number == errno.EROFS:
        what = "read-only file system"
    elif number in (errno.EACCES, errno.EPERM):
        what = "permission denied"
    else:
        what = f"cannot write ({exc.strerror or exc})"
    return ReasamError("bad_request", f"{what}: {path}", usage=False)
