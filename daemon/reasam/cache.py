"""The result cache: the same audio, prompt and settings return stored stems at once.

A hit skips the engine entirely, which is what makes a repeated request (an undo and redo in
REAPER, a batch run twice) instant. Entries live under the daemon's state folder; the cache has
a size limit and evicts the least recently used entries first.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import __version__, audio
from .errors import JobCancelled, ReasamError
from .request import Request, encode_request

log = logging.getLogger("reasam.cache")


CACHE_FORMAT = 3
_HASH_BLOCK = 1 << 18
# What the keys of jobs still to finish saw of their sources (see `expected_source`); a few per job.
_EXPECTED_LIMIT = 1024


def open_cache(folder: Path, limit_bytes: int) -> ResultCache | None:
    """The result cache, or None with a warning naming the folder when it cannot be opened (a
    read-only or full disk, a file in its place): the daemon then serves without it rather than
    not at all."""
    try:
        return ResultCache(folder, limit_bytes)
    except (OSError, sqlite3.Error) as exc:
        log.warning("result cache off: cannot open %s (%s); jobs run without it", folder, exc)
        return None


class ResultCache:
    """Finished stems by content: the same audio, prompt and settings give the same files.

    The key hashes the decoded samples of the region (with context; the whole file when spans
    are given, since span engines learn from audio anywhere in it), the region and spans, the
    engine's canonical prompt, engine, model, quality, output options and ReaSAM's version. So a
    renamed or copied file still hits, and a new version or model never serves stale stems.

    Entries are linked (or copied, across file systems) from the job that produced them. A hit
    *copies* the stored stems into the new job's folder, so every job owns its files and an
    edit to one never reaches another. Each entry records its files' size and mtime; a stored
    file changed in place (through a hard link with the original job) invalidates the entry.
    Least recently used entries are evicted beyond the size limit.

    A source can change while its job runs. The key also yields the digest of the region's
    samples as the pipeline will read them (same bounds, so the same decode); a result whose own
    digest of what it read differs is never stored (`store`), and fails in the pipeline before
    it publishes when the file changed since the key was taken (`expected_source`).
    """

    def __init__(self, folder: Path, limit_bytes: int) -> None:
        self.folder = folder
        self.limit = limit_bytes
        folder.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(
            str(folder / "index.sqlite3"), check_same_thread=False, isolation_level=None, timeout=10
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS entries (key TEXT PRIMARY KEY, size INTEGER NOT NULL,"
            " created REAL NOT NULL, last_used REAL NOT NULL)"
        )
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS digests"
            " (ident TEXT PRIMARY KEY, digest TEXT NOT NULL, used REAL NOT NULL)"
        )
        self.hits = 0
        self.misses = 0
        # key → (digest of the region its key saw, the file's pipeline.source_stamp then)
        self._expected: dict[str, tuple[str, tuple[int, ...]]] = {}

    # -- keys ------------------------------------------------------------------------------

    def key(self, request: Request, cancelled: Callable[[], bool] | None = None) -> str:
        """The cache key of a request (reads the region's audio; memoized by file identity).

        The hashed audio includes the context the pipeline reads around the region (it can
        change the engine's output at the edges), or the whole file for spans.
        """
        from . import engines, pipeline

        info = audio.probe(request.source, cancelled)
        stamp = pipeline.source_stamp(info.path.stat())  # before the read: a later change shows
        first, last = pipeline.resolve_region(request, info)
        rate = info.sample_rate
        pad = pipeline.context_frames(rate)
        near = (max(0, first - pad), min(info.frames, last + pad))
        lo, hi = (0, info.frames) if request.spans else near
        digest, source = self._audio_digest(info, lo, hi, first, last, cancelled)
        if (lo, hi) != near and info.backend == "ffmpeg":
            # ffmpeg decodes from where it starts; the pipeline's decode starts at `near`.
            source = self._audio_digest(info, *near, first, last, cancelled)[1]
        engine = engines.choose_set(request.engine, request.prompts, request.spans)
        caps = engine.capabilities
        options = {k: v for k, v in encode_request(request).items() if k not in ("source", "spans", "region")}
        options["prompt"] = engine.canonical_prompt(request.prompt) if request.prompt else ""
        if request.extra_prompts:  # a stem set is keyed by all its prompts, in order
            options["extra_prompts"] = [engine.canonical_prompt(p) for p in request.extra_prompts]
        options["engine"] = caps.name
        options["bit_depth"] = request.output.resolved_bit_depth
        blob = {
            "format": CACHE_FORMAT,
            "version": __version__,
            "audio": digest,
            "rate": rate,
            "channels": info.channels,
            "frames": [first, last, lo, hi],
            "spans": [[s.sign, s.start, s.end] for s in request.spans],
            "model": caps.model or caps.name,
            "options": options,
        }
        key = hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()
        with self._lock:
            self._expected.pop(key, None)
            self._expected[key] = (source, stamp)
            while len(self._expected) > _EXPECTED_LIMIT:
                self._expected.pop(next(iter(self._expected)))
        return key

    def _audio_digest(
        self,
        info: audio.AudioInfo,
        lo: int,
        hi: int,
        first: int,
        last: int,
        cancelled: Callable[[], bool] | None = None,
    ) -> tuple[str, str]:
        """(digest of [lo, hi), digest of the region [first, last) as `pipeline.feed_region`
        hashes it), memoized by file identity; ctime too, so a rewrite never hits a stale memo."""
        from .pipeline import feed_region, region_hasher

        st = info.path.stat()
        ident = (
            f"{info.path}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}|{st.st_ino}|{lo}|{hi}|{first}|{last}"
        )
        with self._lock:
            row = self._db.execute("SELECT digest FROM digests WHERE ident = ?", (ident,)).fetchone()
            if row is not None:
                self._db.execute("UPDATE digests SET used = ? WHERE ident = ?", (time.time(), ident))
                whole, _, region = row[0].partition(" ")
                return whole, region
        h = hashlib.sha256()
        region_hash = region_hasher()
        with audio.SourceReader(info, lo, hi, cancelled=cancelled) as reader:
            pos = lo
            while pos < hi:
                if cancelled is not None and cancelled():
                    raise JobCancelled(str(info.path))
                n = min(_HASH_BLOCK, hi - pos)
                block = reader.read(pos, n)
                h.update(block.tobytes())
                a, b = max(pos, first), min(pos + n, last)
                if b > a:
                    feed_region(region_hash, block[:, a - pos : b - pos])
                pos += n
        digest, region = h.hexdigest(), region_hash.hexdigest()
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO digests (ident, digest, used) VALUES (?, ?, ?)",
                (ident, f"{digest} {region}", time.time()),
            )
            # The memo is small; keep it bounded anyway.
            self._db.execute(
                "DELETE FROM digests WHERE ident NOT IN"
                " (SELECT ident FROM digests ORDER BY used DESC LIMIT 10000)"
            )
        return digest, region

    def expected_source(self, key: str) -> dict[str, Any]:
        """What the key saw of the source, as `pipeline.run`'s `source_digest` and
        `source_stamp_at_key` ({} when unknown): the pipeline fails a run that read other samples
        of a file changed since, before it publishes."""
        with self._lock:
            seen = self._expected.get(key)
        return {} if seen is None else {"source_digest": seen[0], "source_stamp_at_key": seen[1]}

    def _entry_dir(self, key: str) -> Path:
        return self.folder / key[:2] / key

    # -- lookup ----------------------------------------------------------------------------

    def fetch(
        self, key: str, request: Request, job_id: str, job_dir: Path, cancelled: Callable[[], bool]
    ) -> Any | None:
        """Materialize a hit into `job_dir` (stems copied, a manifest of its own); None on a miss."""
        from .pipeline import Result, Stem, stem_plan

        started = time.monotonic()
        with self._lock:
            row = self._db.execute("SELECT key FROM entries WHERE key = ?", (key,)).fetchone()
            if row is None:
                self.misses += 1
                return None
            entry_dir = self._entry_dir(key)
            try:
                entry = json.loads((entry_dir / "entry.json").read_text(encoding="utf-8"))
                for stem in entry["stems"]:
                    st = (entry_dir / stem["file"]).stat()
                    if st.st_size != stem["size"] or st.st_mtime_ns != stem["mtime_ns"]:
                        raise ValueError(f"{stem['file']} changed since it was cached")
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.info("cache: dropping entry %s (%s)", key[:12], exc)
                self._drop(key)
                self.misses += 1
                return None
            self._db.execute("UPDATE entries SET last_used = ? WHERE key = ?", (time.time(), key))
            self.hits += 1
        if cancelled():
            raise JobCancelled(job_id)
        plans = stem_plan(request, job_dir)
        if len(plans) != len(entry["stems"]):
            log.info(
                "cache: entry %s holds %d stems, the job wants %d", key[:12], len(entry["stems"]), len(plans)
            )
            return None
        if job_dir.is_symlink():
            raise ReasamError(
                "bad_request", f"{job_dir}: the job folder is a symlink; not followed", usage=False
            )
        job_dir.mkdir(parents=True, exist_ok=True)
        stems: list[Stem] = []
        published: list[Path] = []
        try:
            for plan, stored in zip(plans, entry["stems"], strict=True):
                final = plan.path
                temp = audio.temp_name(final)
                try:
                    shutil.copyfile(entry_dir / stored["file"], temp)
                    audio.publish(temp, final)
                finally:
                    temp.unlink(missing_ok=True)
                published.append(final)
                stems.append(
                    Stem(
                        plan.name,
                        plan.role,
                        final.resolve(),
                        stored["channels"],
                        stored["frames"],
                        stored["region_start"],
                        stored["region_end"],
                        stored.get("post") or {},
                        stored.get("presence") or {},
                    )
                )
            manifest = dict(entry["manifest"])
            manifest.update(
                job_id=job_id,
                request=request.as_dict(),
                stems=[s.as_dict() for s in stems],
                seconds=round(time.monotonic() - started, 3),
                cached=True,
                cache_key=key,
            )
            manifest_path = job_dir / "manifest.json"
            audio.write_text(manifest_path, json.dumps(manifest, indent=2) + "\n")
        except BaseException:
            for path in published:
                path.unlink(missing_ok=True)
            raise
        return Result(job_id, manifest_path.resolve(), stems, manifest)

    def store(self, key: str, result: Any) -> None:
        """Keep a finished job's stems (hard links where possible); failures only cost the entry.

        Only a result shown to have read the samples its key was computed from is kept: one
        whose digest differs (its source changed), and one without a digest (nothing shows what
        it read), are not. A miss costs a run; a wrong entry would serve wrong stems for ever.
        """
        with self._lock:
            expected = self._expected.pop(key, ("", ()))[0]
        got = getattr(result, "source_digest", "")
        if expected and got != expected:
            reason = "its source changed while the job ran" if got else "no digest of what its job read"
            log.warning("cache: %s not kept: %s", key[:12], reason)
            return
        try:
            self._store(key, result)
        except Exception as exc:
            log.warning("cache: could not store %s (%s)", key[:12], exc)

    def _store(self, key: str, result: Any) -> None:
        entry_dir = self._entry_dir(key)
        temp_dir = entry_dir.with_name(f".{key}.{os.getpid()}.{threading.get_ident()}.partial")
        shutil.rmtree(temp_dir, ignore_errors=True)
        temp_dir.mkdir(parents=True)
        try:
            stems = []
            size = 0
            for i, stem in enumerate(result.stems):
                file = f"{i}-{stem.role}{Path(stem.path).suffix}"
                dest = temp_dir / file
                try:
                    os.link(stem.path, dest)
                except OSError:
                    shutil.copyfile(stem.path, dest)
                st = dest.stat()
                size += st.st_size
                stems.append(
                    {
                        "file": file,
                        "role": stem.role,
                        "channels": stem.channels,
                        "frames": stem.frames,
                        "region_start": stem.region_start,
                        "region_end": stem.region_end,
                        "post": stem.post,
                        "presence": stem.presence,
                        "size": st.st_size,
                        "mtime_ns": st.st_mtime_ns,
                    }
                )
            if size > self.limit:
                log.info("cache: result of %d bytes is larger than the whole cache; not kept", size)
                return
            manifest = {k: v for k, v in result.manifest.items() if k not in ("job_id", "request", "stems")}
            (temp_dir / "entry.json").write_text(
                json.dumps({"stems": stems, "manifest": manifest}), encoding="utf-8"
            )
            with self._lock:
                if entry_dir.exists():
                    return  # another job stored the same key first
                os.rename(temp_dir, entry_dir)
                now = time.time()
                self._db.execute(
                    "INSERT OR REPLACE INTO entries (key, size, created, last_used) VALUES (?, ?, ?, ?)",
                    (key, size, now, now),
                )
                self._evict()
        finally:
            shutil.rmtree(temp_dir, ignore_errors=True)

    def _evict(self) -> None:
        total = self._db.execute("SELECT COALESCE(SUM(size), 0) FROM entries").fetchone()[0]
        if total <= self.limit:
            return
        for key, size in self._db.execute("SELECT key, size FROM entries ORDER BY last_used ASC").fetchall():
            if total <= self.limit:
                break
            self._drop(key)
            total -= size
            log.info("cache: evicted %s (%d bytes)", key[:12], size)

    def _drop(self, key: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM entries WHERE key = ?", (key,))
            shutil.rmtree(self._entry_dir(key), ignore_errors=True)

    def summary(self) -> dict[str, Any]:
        with self._lock:
            count, total = self._db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM entries").fetchone()
        return {
            "entries": count,
            "bytes": total,
            "limit": self.limit,
            "hits": self.hits,
            "misses": self.misses,
        }

    def stored_keys(self) -> list[str]:
        with self._lock:
            return [
                row[0] for row in self._db.execute("SELECT key FROM entries ORDER BY last_used").fetchall()
            ]

    def close(self) -> None:
        with self._lock, contextlib.suppress(Exception):
            self._db.close()
