"""The pipeline: one request in, a job folder of stems and a manifest out.

read region → resample to the engine's rate → engine, chunk by chunk → back to the source rate →
residual = region − target → (output rate / mono) → atomic write → post-process → manifest.json

The residual is computed here, at the source rate, from the very samples that were read, which
is what makes `target + residual == region` hold for every engine to float precision. Chunks
are emitted as soon as they are final, so memory stays bounded by one chunk.

A stem set (several prompts) runs the same way with one target per prompt, shared out by
`stemsets.share`, and one `rest` stem = region − Σ targets, so the set sums to the region too.
Each target's presence figure (its energy against the mix's over the seconds where it plays,
stemsets.Presence) goes into the manifest.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from . import __version__, audio, engines, postprocess, stemsets
from .engines.base import Engine, Prompt, SetSeparation
from .engines.chunking import Crossfader, plan
from .errors import JobCancelled, ReasamError, bad_request
from .postprocess import PostProcessor
from .request import DEFAULT_FILENAME, RESERVED_NAMES, PostProcess, Request, Span

Progress = Callable[[float, str], None]
# Region ends up to this far past the end of the file are clamped (decoders disagree by a few
# samples on a file's length); further is an error rather than silent padding.
_END_TOLERANCE = 0.05
CONTEXT_SECONDS = 0.5
_POST_BLOCK = 1 << 16

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stem:
    name: str
    role: str  # "target" | "residual"
    path: Path
    channels: int
    frames: int
    region_start: float
    region_end: float
    post: dict = field(default_factory=dict)  # what post-processing measured and applied
    presence: dict = field(default_factory=dict)  # targets: stemsets.Presence.report's keys

    def as_dict(self) -> dict:
        out = {
            "name": self.name,
            "role": self.role,
            "path": str(self.path),
            "channels": self.channels,
            "frames": self.frames,
            "region_start": self.region_start,
            "region_end": self.region_end,
        }
        if self.post:
            out["post"] = self.post
        out.update(self.presence)
        return out


@dataclass
class Result:
    """What a finished job produced; `manifest` is what manifest.json holds."""

    job_id: str
    manifest_path: Path
    stems: list[Stem]
    manifest: dict = field(default_factory=dict)
    # sha256 of the region's samples as this run read them (float32, frames interleaved), so the
    # result cache can tell that they are the samples its key was computed from.
    source_digest: str = ""


def region_hasher() -> Any:
    """The hash of `Result.source_digest`; feed it `feed_region(hasher, block)` in order."""
    return hashlib.sha256()


def feed_region(hasher: Any, block: np.ndarray) -> None:
    """Add (channels, frames) samples: interleaved, so the digest does not depend on blocking."""
    hasher.update(np.ascontiguousarray(block.T, dtype=np.float32).tobytes())


def context_frames(rate: int) -> int:
    """Frames of context read on each side of a region at `rate`. The one definition for the
    pipeline and the cache key: an ffmpeg decode depends on where it starts, so both must start
    at the same frame, or the key's digest of the region differs from what the job reads."""
    return int(CONTEXT_SECONDS * rate)


def _identity(st: os.stat_result) -> tuple[int, ...]:
    """What a write to the file changes (or a replacement, or a removal). Not ctime: chmod,
    chown, an xattr or a backup tool's hard link change it without touching a sample."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def source_stamp(st: os.stat_result) -> tuple[int, ...]:
    """Everything a change of the file changes, ctime included (no one can set it back)."""
    return (*_identity(st), st.st_ctime_ns)


def _changed(message: str, source: Path) -> ReasamError:
    return ReasamError(
        "bad_request",
        f"{source}: the source changed while the job ran ({message}); "
        "its stems would not match it, so none are kept: run the job again",
        usage=False,
    )


def check_unchanged(source: Path, before: os.stat_result, rehash: Callable[[], str], digest: str) -> None:
    """Fail when `source` was written to, replaced or removed since `before` was taken: stems of
    audio that changed under the job would not sum to the file as it is.

    A changed ctime alone (metadata, or a rewrite with its mtime put back) is settled by the
    samples: `rehash()` hashes the region again and must give `digest`, the hash of what was read.
    """
    try:
        now = os.stat(source)
    except OSError:
        raise _changed("removed", source) from None
    if _identity(now) != _identity(before):
        raise _changed("written to or replaced", source)
    if now.st_ctime_ns != before.st_ctime_ns and rehash() != digest:
        raise _changed("its samples differ from what the job read", source)


def slug(text: str) -> str:
    """A file-name-safe version of a prompt: "Lead Vocal!" → "lead-vocal"."""
    s = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return s[:60].rstrip("-") or "target"


@dataclass(frozen=True)
class StemPlan:
    """One stem a job will write: its role, its name in the manifest and its final path."""

    role: str  # "target" | "residual"
    name: str
    path: Path


def stem_plan(request: Request, job_dir: Path) -> list[StemPlan]:
    """A job's stems, targets first, the residual last.

    One prompt: `<prompt-slug>.<fmt>` named after the prompt and `<prompt-slug>-residual.<fmt>`
    named "<prompt> residual", as always. A stem set: one `<prompt-slug>.<fmt>` per prompt and
    `rest.<fmt>` named "rest"; slugs that collide ("Drums!" and "drums") get -2, -3, ….
    A file-name template (OutputOptions.filename) renames the files, never the stems; the
    names it gives are checked once more here, with the input's name filled in.
    """
    if not request.is_set:
        name = slug(request.target_name)
        stems = [
            ("target", request.target_name, name),
            ("residual", f"{request.target_name} residual", f"{name}-residual"),
        ]
    else:
        used: set[str] = set()

        def unique(base: str) -> str:
            name, n = base, 1
            while name in used:
                n += 1
                name = f"{base}-{n}"
            used.add(name)
            return name

        stems = [("target", text, unique(slug(text))) for text in request.prompts]
        stems.append(("residual", "rest", unique("rest")))
    files = [_file_name(request, stem) for _, _, stem in stems]
    if len({f.casefold() for f in files}) < len(files):
        raise bad_request(f"file-name template {request.output.filename!r} gives two stems one name")
    return [StemPlan(role, name, job_dir / file) for (role, name, _), file in zip(stems, files, strict=True)]


# File systems allow 255 bytes in a name; a stem is first written as `.NAME.XXXXXXXX.partial`.
NAME_MAX = 255 - len("..12345678.partial")


def _file_name(request: Request, stem: str) -> str:
    """A stem's file name: the template's fields filled in (request.check_filename)."""
    source = request.source
    name = (request.output.filename or DEFAULT_FILENAME).format(
        track=source.stem, trackext=source.suffix.lstrip("."), stem=stem, ext=request.output.format
    )
    if name in (".", "..") or "/" in name or os.sep in name or name.casefold() in RESERVED_NAMES:
        raise bad_request(
            f"file-name template {request.output.filename!r} gives the stem {stem!r} the name {name!r}"
        )
    if len(name.encode()) > NAME_MAX:
        raise bad_request(
            f"file-name template {request.output.filename!r} gives the stem {stem!r} a name of "
            f"{len(name.encode())} bytes; file systems allow {NAME_MAX}"
        )
    return name


def _no_progress(fraction: float, stage: str) -> None:
    return None


def _never() -> bool:
    return False


def _channel_groups(channels: int, engine_channels: int | None) -> list[list[int]]:
    """Which source channels go together into one engine call.

    A stereo model gets channel pairs (5.1 → three pairs; an odd channel is sent twice and the
    duplicate dropped), a mono model one channel at a time, an any-channel engine all at once.
    """
    if engine_channels is None or engine_channels == channels:
        return [list(range(channels))]
    if engine_channels == 1:
        return [[c] for c in range(channels)]
    groups = []
    for c in range(0, channels, engine_channels):
        group = list(range(c, min(c + engine_channels, channels)))
        groups.append(group + [group[-1]] * (engine_channels - len(group)))
    return groups


class _Separator:
    """Runs the prepared prompts over a chunk of audio at the source rate, for all channels."""

    def __init__(
        self,
        engine: Engine,
        prompts: list[Prompt],
        quality: str,
        reader: audio.SourceReader,
        source_rate: int,
        checkpoint: Callable[[], None],
        cancelled: Callable[[], bool] | None = None,
    ) -> None:
        caps = engine.capabilities
        self.cancelled = cancelled
        self.rate = source_rate
        self.engine_rate = caps.sample_rate or source_rate
        self.groups = _channel_groups(reader.info.channels, caps.channels)
        self.reader = reader
        self.max_span_frames = int(caps.max_seconds * source_rate)
        self.count = len(prompts)
        self.separations: list[SetSeparation] = [
            engine.prepare_set(prompts, quality, self._span_fetcher(group), self.engine_rate, checkpoint)
            for group in self.groups
        ]

    def _span_fetcher(self, group: list[int]) -> Callable[[Span], np.ndarray]:
        def fetch(span: Span) -> np.ndarray:
            first = round(span.start * self.rate)
            last = min(round(span.end * self.rate), first + self.max_span_frames, self.reader.info.frames)
            frames = max(last - first, 1)
            if self.reader.covers(first, frames):
                data = self.reader.read(first, frames)
            else:  # an ffmpeg-decoded source holds only the region: decode the span on its own
                with audio.SourceReader(
                    self.reader.info, first, first + frames, cancelled=self.cancelled
                ) as span_reader:
                    data = span_reader.read(first, frames)
            return audio.resample(data[group], self.rate, self.engine_rate)

        return fetch

    def __call__(self, mix: np.ndarray, start_seconds: float) -> np.ndarray:
        """One estimate per prompt: (prompts, channels, frames) at the source rate."""
        targets = np.zeros((self.count, *mix.shape), dtype=mix.dtype)
        n = mix.shape[1]
        for group, separation in zip(self.groups, self.separations, strict=True):
            x = audio.resample(mix[group], self.rate, self.engine_rate)
            y = separation.separate(x, start_seconds)
            if y.shape != (self.count, *x.shape):
                raise ReasamError("engine_failed", f"engine returned shape {y.shape} for input {x.shape}")
            for i in range(self.count):
                # A duplicated odd channel comes back twice; the later write wins, both are equal.
                targets[i][group] = audio.resample(y[i], self.engine_rate, self.rate, frames=n)
        return targets

    @property
    def shared(self) -> bool:
        """Whether the engine's estimates already share the mix (see SetSeparation.shared)."""
        return all(sep.shared for sep in self.separations)

    def scores(self) -> list[float | None]:
        """The engine's own per-prompt scores (SAM-Audio's judge), from the one channel group
        that has them."""
        return self.separations[0].scores() if len(self.separations) == 1 else []


def _finish(
    stage: Path,
    final: Path,
    post: PostProcess,
    rate: int,
    channels: int,
    fmt: str,
    bit_depth: int | None,
    cancelled: Callable[[], bool],
    job_id: str,
) -> tuple[int, int, dict]:
    """Second pass over a float stage file: measure, then trim, gate and gain into the final file.

    Returns the frames written, the first kept frame (trim moves the stem's start) and the report.
    """
    processor = PostProcessor(post, rate, channels)
    with sf.SoundFile(str(stage)) as src:

        def read() -> Iterator[np.ndarray]:
            src.seek(0)
            for block in src.blocks(_POST_BLOCK, dtype="float32", always_2d=True):
                if cancelled():
                    raise JobCancelled(job_id)
                yield block.T

        with audio.AudioWriter(final, rate, channels, fmt, bit_depth, src.frames) as writer:
            for block in postprocess.run(processor, read):
                writer.write(block)
            writer.commit()
    lo = processor.frame_range()[0]
    return writer.frames, lo, processor.report()


def resolve_region(request: Request, info: audio.AudioInfo) -> tuple[int, int]:
    """The region as source frames [first, last), checked against the file."""
    rate = info.sample_rate
    first = round(request.region.start * rate)
    if first >= info.frames:
        raise ReasamError(
            "bad_request",
            f"region starts at {request.region.start:g} s, after the end of the file ({info.duration:.3f} s)",
        )
    if request.region.end is None:
        return first, info.frames
    if request.region.end > info.duration + _END_TOLERANCE:
        raise ReasamError(
            "bad_request",
            f"region ends at {request.region.end:g} s, past the end of the file ({info.duration:.3f} s)",
        )
    last = min(round(request.region.end * rate), info.frames)
    if last <= first:
        raise ReasamError(
            "bad_request",
            f"region {request.region.start:g}:{request.region.end:g} is shorter than one sample at {rate} Hz",
        )
    return first, last


def _check_spans(request: Request, info: audio.AudioInfo) -> None:
    for span in request.spans:
        if span.start >= info.duration:
            raise ReasamError(
                "bad_request", f"span {span} starts after the end of the file ({info.duration:.3f} s)"
            )


def _region_digest(
    info: audio.AudioInfo, first: int, last: int, context: int, cancelled: Callable[[], bool]
) -> str:
    """The region's digest read again, from a reader opened as `run` opens its own."""
    digest = region_hasher()
    with audio.SourceReader(info, first - context, last + context, cancelled=cancelled) as reader:
        for pos in range(first, last, _POST_BLOCK):
            feed_region(digest, reader.read(pos, min(_POST_BLOCK, last - pos)))
    return digest.hexdigest()


def run(
    request: Request,
    job_dir: Path,
    job_id: str,
    progress: Progress = _no_progress,
    cancelled: Callable[[], bool] = _never,
    source_digest: str = "",
    source_stamp_at_key: tuple[int, ...] | None = None,
) -> Result:
    """Separate `request` into `job_dir` (created if missing); return the stems and manifest.

    `source_digest`, when given, is the digest (`Result.source_digest`) the region had when the
    result cache computed its key, and `source_stamp_at_key` the file's `source_stamp` then. A
    run that read other audio from a file that changed since fails before anything is published,
    so no crash can leave a complete job of changed audio. From a file that did not change, other
    samples mean a decoder that does not seek sample-exactly (mpg123 through libsndfile): the run
    stands (its stems sum to what it read) and its differing digest keeps it out of the cache.

    Raises ReasamError for anything the user can fix or should know, JobCancelled when
    `cancelled()` turns true: asked at every chunk boundary and, through the engine's checkpoint,
    between the engine's own steps. Either way no stem is left under its final
    name; temporary files are removed.
    """
    started = time.monotonic()
    progress(0.0, "reading")
    info = audio.probe(request.source, cancelled)
    source_stat = os.stat(request.source)  # probe has just read it: the state its stems must match
    first, last = resolve_region(request, info)
    _check_spans(request, info)
    engine = engines.choose_set(request.engine, request.prompts, request.spans)
    # Engines that take spans may not know the text: it then only names the target.
    texts = [(engine.canonical_prompt(p) or p.lower()) if p else "" for p in request.prompts]
    text = texts[0]
    if job_dir.is_symlink():
        raise ReasamError("bad_request", f"{job_dir}: the job folder is a symlink; not followed", usage=False)
    audio.ensure_writable_dir(job_dir)

    rate = info.sample_rate
    total = last - first
    out_rate = request.output.sample_rate or rate
    out_channels = 1 if request.output.mono else info.channels
    out_total = round(total * out_rate / rate)
    fmt = request.output.format
    bit_depth = request.output.resolved_bit_depth
    post = request.output.post
    plans = stem_plan(request, job_dir)
    manifest_path = job_dir / "manifest.json"
    for final in (*(p.path for p in plans), manifest_path):
        if final.exists():
            raise ReasamError("bad_request", f"{final}: already exists; choose another output folder")
    # Refuse what the output format cannot hold before any model work, not after it.
    audio.check_output(fmt, out_rate, out_channels)

    caps = engine.capabilities
    chunk_frames = int(min(caps.chunk_seconds, caps.max_seconds - 2 * CONTEXT_SECONDS) * rate)
    overlap = int(caps.overlap_seconds * rate)
    context = context_frames(rate)
    chunks = plan(total, chunk_frames, overlap)

    region_start, region_end = first / rate, last / rate
    published: list[Path] = []
    read = region_hasher()

    def checkpoint() -> None:
        if cancelled():
            raise JobCancelled(job_id)

    with (
        audio.SourceReader(info, first - context, last + context, cancelled=cancelled) as reader,
        contextlib.ExitStack() as stack,
    ):
        progress(0.02, "preparing")
        separator = _Separator(
            engine,
            [Prompt(t, request.spans, request.output.stereo, request.seed) for t in texts],
            request.quality,
            reader,
            rate,
            checkpoint,
            cancelled,
        )
        # Without post-processing the first pass writes the final files directly; with it, the
        # first pass writes float temporaries that the second pass reads back and finishes.
        # Each writer removes its temporary file unless committed (AudioWriter.__exit__).
        writers = [
            stack.enter_context(
                audio.AudioWriter(
                    plan.path,
                    out_rate,
                    out_channels,
                    "wav" if post.active else fmt,
                    32 if post.active else bit_depth,
                    out_total,
                )
            )
            for plan in plans
        ]
        try:
            resamplers = [audio.StreamResampler(rate, out_rate, out_channels, total) for _ in writers]
            faders = [Crossfader(overlap) for _ in texts]
            presence = stemsets.Presence.of(len(texts), rate)
            for chunk in chunks:
                checkpoint()
                read_start = first + chunk.start - context
                mix = reader.read(read_start, chunk.end - chunk.start + 2 * context)
                estimates = separator(mix, read_start / rate)
                if len(texts) > 1 and not separator.shared:
                    estimates = stemsets.share(mix, estimates)
                targets = [
                    fader.push(chunk, est[:, context:-context])
                    for fader, est in zip(faders, estimates, strict=True)
                ]
                region_mix = mix[:, context : context + targets[0].shape[1]]
                feed_region(read, region_mix)
                presence.add(region_mix, targets)
                rest = region_mix - targets[0] if len(targets) == 1 else region_mix - np.sum(targets, axis=0)
                for index, block in enumerate([*targets, rest]):
                    if request.output.mono:
                        block = block.mean(axis=0, keepdims=True)
                    writers[index].write(resamplers[index].push(block, last=chunk.last))
                progress(0.05 + 0.85 * chunk.emit_end / total, "separating")
            checkpoint()  # a cancel during the last chunk still wins over publishing
            if source_digest and read.hexdigest() != source_digest:
                try:
                    unchanged = source_stamp(os.stat(request.source)) == source_stamp_at_key
                except OSError:
                    unchanged = False
                if not unchanged:
                    raise _changed("its audio differs from what the job started with", request.source)
                log.info(
                    "%s: decoded other samples than for the cache key from an unchanged file "
                    "(a decoder that does not seek exactly); the result is not cached",
                    request.source,
                )
            check_unchanged(
                request.source,
                source_stat,
                lambda: _region_digest(info, first, last, context, cancelled),
                read.hexdigest(),
            )
            presence.scores = separator.scores()
            stems = []
            for index, (stem_out, writer) in enumerate(zip(plans, writers, strict=True)):
                if post.active:
                    stage = writer.close_unpublished()
                    try:
                        frames, lo, report = _finish(
                            stage,
                            stem_out.path,
                            post,
                            out_rate,
                            out_channels,
                            fmt,
                            bit_depth,
                            cancelled,
                            job_id,
                        )
                    finally:
                        stage.unlink(missing_ok=True)
                    start_s = region_start + lo / out_rate
                    end_s = start_s + frames / out_rate
                else:
                    writer.commit()
                    frames, start_s, end_s, report = out_total, region_start, region_end, {}
                published.append(stem_out.path)
                stems.append(
                    Stem(
                        stem_out.name,
                        stem_out.role,
                        stem_out.path.resolve(),
                        out_channels,
                        frames,
                        start_s,
                        end_s,
                        report,
                        presence.report(index) if stem_out.role == "target" else {},
                    )
                )
                progress(0.9 + 0.05 * len(stems), "writing")
            manifest = {
                "job_id": job_id,
                "request": request.as_dict(),
                "engine": caps.name,
                "model": caps.model or caps.name,
                "version": __version__,
                "sample_rate": out_rate,
                "stems": [s.as_dict() for s in stems],
                "prompt": text,
                "prompts": texts,
                "presence_threshold_db": stemsets.PRESENCE_THRESHOLD_DB,
                "quality": request.quality,
                "source_sample_rate": rate,
                "source_channels": info.channels,
                "sum_rule": not post.active and fmt == "wav" and bit_depth == 32,
                "post": post.as_dict(),
                "notes": list(dict.fromkeys(n for sep in separator.separations for n in sep.notes)),
                "seconds": round(time.monotonic() - started, 3),
            }
            audio.write_text(manifest_path, json.dumps(manifest, indent=2) + "\n")
        except BaseException:
            # Stems this job already published are its own partial output: remove them too.
            for path in published:
                path.unlink(missing_ok=True)
            raise
    progress(1.0, "done")
    return Result(job_id, manifest_path.resolve(), stems, manifest, read.hexdigest())
