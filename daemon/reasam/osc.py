"""The OSC front door: `reasam serve`, the UDP server of the daemon.

The contract is ../shared/docs/protocol.md, version 1. This module turns datagrams into
requests for the job manager (jobs.py) and job events into replies; it knows nothing of audio.

Why our own socket loop instead of python-osc's server: python-osc 1.10 spins forever at 100 %
CPU on a bundle whose element size is negative, and it sleeps until a bundle's future time tag
before dispatching. So every datagram's framing is checked here first (`split_packet`), bundles
are unpacked here and dispatched at once, and only well-framed messages reach python-osc's
message parser and dispatcher. Input never kills the daemon: anything malformed is answered with
`/reasam/error` when a job id can be read, else dropped with a (rate-limited) log line.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import logging.handlers
import os
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pythonosc.dispatcher import Dispatcher
from pythonosc.osc_message import OscMessage
from pythonosc.osc_message_builder import OscMessageBuilder

from . import __version__, config
from .errors import ReasamError

log = logging.getLogger("reasam.osc")

MAX_DATAGRAM = 65535
MAX_BUNDLE_DEPTH = 4
MAX_MESSAGES_PER_PACKET = 64
MAX_PATH_CHARS = 4096
MAX_VALUE_CHARS = 4096
MAX_MESSAGE_CHARS = 1000  # error messages are cut here so a reply always fits a datagram
MAX_STATUS_REPLY = 8192  # LuaSocket's default receive size: any LuaSocket client gets it whole
MAX_READABLE_JOB_ID = 256  # a longer "job id" is not echoed back: it is treated as unreadable
SEPARATE_KEYS = (
    "region", "span", "quality", "engine", "out", "format", "reply_port", "token", "seed", "prompt",
)  # fmt: skip
# Addition to protocol v1: repeatable `prompt` keys add prompts after the `prompt` argument,
# making a stem set (one target per prompt plus `rest`); without them a job is as before.
# Addition to protocol v1: ping/status/cancel also take `reply_port`, so one-shot senders such
# as oscsend can have the answer delivered to a listener (oscdump).
CONTROL_KEYS = ("token", "reply_port")
# Additions to protocol v1 (README, "Messages"): the output options of `reasam separate`, and
# `priority` for clients that queue work on behalf of a folder or a batch, behind people waiting.
OUTPUT_KEYS = (
    "bit_depth", "sample_rate", "mono", "stereo", "normalize_peak", "normalize_lufs", "trim_silence", "gate",
)  # fmt: skip
PRIORITIES = ("osc", "watch", "batch")
_PATTERN_CHARS = set("*?[]{}!,#")
# Type tags python-osc parses correctly; others (c, S, I, arrays) it skips or misreads.
_FIXED_SIZES = {"i": 4, "f": 4, "r": 4, "m": 4, "h": 8, "d": 8, "t": 8, "T": 0, "F": 0, "N": 0}
_BUNDLE = b"#bundle\x00"


# ---------------------------------------------------------------------------------------------
# Framing


class FramingError(ValueError):
    """A datagram that is not well-formed OSC 1.0 (or uses types we do not take)."""


def _string_end(data: bytes, start: int) -> int:
    nul = data.find(b"\x00", start)
    if nul < 0:
        raise FramingError("unterminated string")
    end = (nul + 4) & ~3  # the NUL plus 0-3 pad bytes, to a multiple of 4
    if end > len(data):
        raise FramingError("string padding runs past the end")
    if data[nul:end].strip(b"\x00"):
        raise FramingError("string padding is not NUL")
    return end


def check_message(data: bytes) -> None:
    """Raise FramingError unless `data` is one complete, well-padded OSC message."""
    if len(data) < 4 or len(data) % 4 or data[:1] != b"/":
        raise FramingError("not an OSC message")
    pos = _string_end(data, 0)
    address = data[: data.index(b"\x00")]
    if any(b < 0x21 or b > 0x7E for b in address):
        raise FramingError("address has non-printable characters")
    if pos == len(data):
        return
    if data[pos : pos + 1] != b",":
        raise FramingError("type tag string must start with ','")
    tags_end = _string_end(data, pos)
    tags = data[pos + 1 : data.index(b"\x00", pos)].decode("ascii", "replace")
    pos = tags_end
    for tag in tags:
        if tag in _FIXED_SIZES:
            pos += _FIXED_SIZES[tag]
        elif tag == "s":
            pos = _string_end(data, pos)
        elif tag == "b":
            if pos + 4 > len(data):
                raise FramingError("blob size runs past the end")
            (size,) = struct.unpack(">i", data[pos : pos + 4])
            if size < 0:
                raise FramingError("negative blob size")
            pos += 4 + ((size + 3) & ~3)
        else:
            raise FramingError(f"unsupported type tag {tag!r}")
        if pos > len(data):
            raise FramingError("arguments run past the end")
    if pos != len(data):
        raise FramingError("bytes after the last argument")


def split_packet(data: bytes, depth: int = 0) -> list[bytes]:
    """The messages of a datagram (bundles unpacked, time tags ignored), framing checked.

    Every size is checked before it is used: a negative, unaligned or overlong bundle element
    is a FramingError here instead of an endless loop in python-osc.
    """
    if len(data) > MAX_DATAGRAM:
        raise FramingError("datagram too large")
    if len(data) % 4:
        raise FramingError("length is not a multiple of 4")
    if data.startswith(_BUNDLE):
        if depth >= MAX_BUNDLE_DEPTH:
            raise FramingError("bundles nested too deep")
        if len(data) < 16:
            raise FramingError("bundle without a time tag")
        messages: list[bytes] = []
        pos = 16
        while pos < len(data):
            if pos + 4 > len(data):
                raise FramingError("truncated bundle element size")
            (size,) = struct.unpack(">i", data[pos : pos + 4])
            pos += 4
            if size <= 0 or size % 4 or pos + size > len(data):
                raise FramingError(f"bad bundle element size {size}")
            messages.extend(split_packet(data[pos : pos + size], depth + 1))
            if len(messages) > MAX_MESSAGES_PER_PACKET:
                raise FramingError("too many messages in one bundle")
            pos += size
        return messages
    check_message(data)
    return [data]


def parse(data: bytes) -> list[tuple[str, list[Any]]]:
    """(address, arguments) of each message in a datagram; FramingError if malformed."""
    out = []
    for raw in split_packet(data):
        try:
            message = OscMessage(raw)
        except Exception as exc:  # python-osc raises several types (ParseError, UnicodeDecodeError)
            raise FramingError(f"unparsable message ({type(exc).__name__})") from None
        out.append((message.address, list(message.params)))
    return out


def encode(address: str, *args: Any) -> bytes:
    """One OSC message; str → s, bool is refused, int → i, float → f."""
    builder = OscMessageBuilder(address=address)
    for arg in args:
        if isinstance(arg, bool):
            raise TypeError("bool is not an OSC argument here")
        if isinstance(arg, str):
            builder.add_arg(arg, "s")
        elif isinstance(arg, int):
            builder.add_arg(arg, "i")
        elif isinstance(arg, float):
            builder.add_arg(arg, "f")
        else:
            raise TypeError(f"cannot encode {type(arg).__name__}")
    return builder.build().dgram


# ---------------------------------------------------------------------------------------------
# Argument checks


def _readable_job_id(value: Any) -> str | None:
    """A job id we can echo in an error reply (not necessarily a valid one)."""
    if isinstance(value, str) and 0 < len(value) <= MAX_READABLE_JOB_ID and value.isprintable():
        return value
    return None


def _port(value: Any) -> int:
    try:
        if isinstance(value, bool):
            raise ValueError
        number = float(value) if not isinstance(value, int) else value
        port = int(number)
        if port != number or not 1 <= port <= 65535:
            raise ValueError
        return port
    except (TypeError, ValueError):
        raise ReasamError("bad_request", f"reply_port must be a port number 1-65535, got {value!r}") from None


def _scan(pairs: Sequence[Any]) -> tuple[str | None, int | None]:
    """Token and reply_port found in key/value pairs, leniently (before strict validation), so an
    unauthorized or malformed request can still be answered where the client listens."""
    token = port = None
    # Every position, not only even ones: a request with one stray argument is still recognised
    # as authorized, so it gets its precise bad_request instead of "unauthorized".
    for i in range(len(pairs) - 1):
        key, value = pairs[i], pairs[i + 1]
        if key == "token" and isinstance(value, str):
            token = value
        elif key == "reply_port":
            with contextlib.suppress(ReasamError):
                port = _port(value)
    return token, port


def _pairs(
    pairs: Sequence[Any], allowed: Sequence[str], repeatable: Sequence[str] = ()
) -> list[tuple[str, Any]]:
    """Strict key/value pairs: string keys from `allowed`, string/int/float values, no repeats."""
    if len(pairs) % 2:
        raise ReasamError("bad_request", "keys and values must come in pairs (odd number of arguments)")
    out: list[tuple[str, Any]] = []
    seen: set[str] = set()
    for i in range(0, len(pairs), 2):
        key, value = pairs[i], pairs[i + 1]
        if not isinstance(key, str):
            raise ReasamError(
                "bad_request", f"argument {i + 1} must be a key (string), got {type(key).__name__}"
            )
        if key not in allowed:
            shown = key if len(key) <= 40 else key[:40] + "…"
            raise ReasamError("bad_request", f"unknown key {shown!r}; keys: {', '.join(allowed)}")
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise ReasamError("bad_request", f"{key}: value must be a string, int or float")
        if isinstance(value, str) and len(value) > MAX_VALUE_CHARS:
            raise ReasamError("bad_request", f"{key}: value longer than {MAX_VALUE_CHARS} characters")
        if key in seen and key not in repeatable:
            raise ReasamError("bad_request", f"{key} given twice")
        if key == "reply_port":
            _port(value)  # `_scan` read it leniently; a bad one is refused here, not ignored
        seen.add(key)
        out.append((key, value))
    return out


# ---------------------------------------------------------------------------------------------
# The model manager link (models.py and engines/sam.py belong to the SAM engine: keep this thin)


class ModelBridge:
    """Keep-alive, preload and the ping's device/model_state.

    The SAM engine captures the default model manager when it is created, so `configure()`
    must run before the daemon accepts requests. A bad SAM setting leaves the manager's
    defaults in place rather than stopping the daemon: the embedded engines still serve.
    """

    def __init__(self, keep_alive: float, quality: str = "balanced") -> None:
        self.keep_alive = keep_alive
        self.quality = quality
        self.manager: Any = None
        self.loading = False
        self._engine_names: list[str] | None = None
        self.imported = threading.Event()  # engine and pipeline code imported (JobManager waits)

    def configure(self) -> None:
        """Give the SAM model manager the daemon's keep-alive (config file / env / flag)."""
        import dataclasses

        from . import models

        try:
            sam_settings = dataclasses.replace(
                models.SamSettings.from_env(), keep_alive_minutes=self.keep_alive
            )
            self.manager = models.ModelManager(sam_settings)
            models.set_default_manager(self.manager)
        except Exception as exc:
            log.warning("SAM model manager not configured (%s); using its defaults", exc)
            self.manager = models.default_manager()

    def tick(self) -> None:
        """Between jobs and when idle: unload a model idle for longer than the keep-alive."""
        if self.manager is not None:
            try:
                self.manager.release_idle()
            except Exception:
                log.exception("release_idle failed")

    def warm(self, preload_engine: str | None) -> None:
        """Import engine code (and, if asked, load a model) off the request path."""
        self.loading = preload_engine is not None
        try:
            try:
                from . import engines, pipeline  # noqa: F401  (pipeline: imported here, once)

                self._engine_names = self._usable(engines)
            finally:
                self.imported.set()
            if preload_engine is not None:
                names = self._engine_names
                name = preload_engine if preload_engine != "auto" else (names[0] if names else None)
                if name is not None:
                    started = time.monotonic()
                    engines.get(name).warm(self.quality)
                    log.info("preloaded %s in %.2f s", name, time.monotonic() - started)
        except Exception:
            log.exception("preloading failed; models load on first use")
        finally:
            self.loading = False

    @staticmethod
    def _usable(engines: Any) -> list[str]:
        names = []
        for name in engines.names():
            try:
                if engines.get(name).unavailable_reason() is None:
                    names.append(name)
            except Exception as exc:
                log.info("engine %s not usable: %s", name, exc)
        return names

    def engine_names(self) -> list[str]:
        if self._engine_names is None:
            from . import engines

            self._engine_names = self._usable(engines)
        return list(self._engine_names)

    def keep_alive_left(self) -> float | None:
        """Seconds until an idle loaded model is unloaded; None when none is loaded and idle (or
        the keep-alive is "never")."""
        from . import engines

        for name in self.engine_names():
            manager = getattr(engines.get(name), "manager", None)
            with contextlib.suppress(Exception):
                st = manager.state() if manager is not None else {}
                idle, keep = st.get("idle_seconds"), st.get("keep_alive_minutes", -1)
                if idle is not None and keep >= 0:
                    return round(max(0.0, keep * 60 - idle), 1)
        return None

    def state(self) -> tuple[str, str]:
        """(device, model_state) for the pong: the devices of usable engines, and per engine
        whether its model is loaded ("sam <state_line>; spleeter loaded; dsp ready")."""
        from . import engines

        devices: list[str] = []
        parts: list[str] = []
        for name in self.engine_names():
            engine = engines.get(name)
            device = str(engine.capabilities.device)
            manager = getattr(engine, "manager", None)
            if manager is not None:
                with contextlib.suppress(Exception):
                    device = str(manager.state().get("device") or device)
            try:
                parts.append(f"{name} {engine.state()}")
            except Exception as exc:
                parts.append(f"{name} unknown ({exc})")
            if device not in devices:
                devices.append(device)
        if self.loading:
            parts.append("preloading")
        return ",".join(devices) or "cpu", "; ".join(parts) or "none"


# ---------------------------------------------------------------------------------------------
# The server

Address = tuple[str, int]


class Server:
    """Reads datagrams, checks them, dispatches them through python-osc's Dispatcher, replies."""

    def __init__(
        self,
        sock: socket.socket,
        settings: config.Settings,
        manager: Any,
        token: str | None,
        bridge: ModelBridge,
    ) -> None:
        self.sock = sock
        self.settings = settings
        self.manager = manager
        self.token = token
        self.bridge = bridge
        self.stop_event = threading.Event()
        self.started = time.time()
        self.received = 0
        self.dropped = 0
        self._drop_window = (0.0, 0)
        self._watchers: dict[str, set[Address]] = {}
        self._watch_lock = threading.Lock()
        # Other front doors' parts of the daemon's status (the watch folders, say).
        self.status_hooks: list[Callable[[], dict[str, Any]]] = []
        self.dispatcher = Dispatcher()
        self.dispatcher.map("/reasam/separate", self._on_separate, needs_reply_address=True)
        self.dispatcher.map("/reasam/cancel", self._on_cancel, needs_reply_address=True)
        self.dispatcher.map("/reasam/status", self._on_status, needs_reply_address=True)
        self.dispatcher.map("/reasam/ping", self._on_ping, needs_reply_address=True)
        self.dispatcher.map("/reasam/shutdown", self._on_shutdown, needs_reply_address=True)

    # -- loop ----------------------------------------------------------------------------------

    def serve_forever(self) -> None:
        self.sock.settimeout(0.25)
        last_tick = time.monotonic()
        while not self.stop_event.is_set():
            try:
                data, addr = self.sock.recvfrom(MAX_DATAGRAM + 1)
            except TimeoutError:
                data = None
            except OSError as exc:
                if self.stop_event.is_set():
                    break
                # e.g. an ICMP port-unreachable from an earlier reply surfacing on Windows.
                log.debug("recvfrom: %s", exc)
                data = None
            if data is not None:
                self.received += 1
                try:
                    self.handle(data, (addr[0], addr[1]))
                except Exception:  # last line of defence: one bad datagram never stops the loop
                    log.exception("unexpected error handling a datagram from %s", addr)
            now = time.monotonic()
            if now - last_tick >= 1.0:
                last_tick = now
                if self.manager.idle():
                    self.bridge.tick()

    def stop(self) -> None:
        self.stop_event.set()

    def handle(self, data: bytes, addr: Address) -> None:
        try:
            messages = parse(data)
        except FramingError as exc:
            self._drop(addr, f"malformed datagram ({exc})")
            return
        for address, args in messages:
            if set(address) & _PATTERN_CHARS:
                self._drop(addr, f"address patterns are not served ({address[:60]!r})")
                continue
            handlers = list(self.dispatcher.handlers_for_address(address))
            if not handlers:
                self._drop(addr, f"unknown address {address[:60]!r}")
                continue
            message = _Message(address, args)
            for handler in handlers:
                handler.invoke(addr, message)  # type: ignore[arg-type]

    def _drop(self, addr: Address, reason: str) -> None:
        """Log a dropped datagram, at most 20 lines a minute (a flood must not flood the log)."""
        self.dropped += 1
        start, count = self._drop_window
        now = time.monotonic()
        if now - start > 60:
            if count > 20:
                log.warning("%d more datagrams dropped in the last minute", count - 20)
            start, count = now, 0
        count += 1
        self._drop_window = (start, count)
        if count <= 20:
            log.warning("dropped datagram from %s:%d: %s", addr[0], addr[1], reason)

    # -- replies -------------------------------------------------------------------------------

    def send(self, addr: Address, address: str, *args: Any) -> None:
        try:
            self.sock.sendto(encode(address, *args), addr)
        except OSError as exc:
            log.debug("reply %s to %s failed: %s", address, addr, exc)

    def _error(self, addr: Address, job_id: str, code: str, message: str) -> None:
        if len(message) > MAX_MESSAGE_CHARS:
            message = message[: MAX_MESSAGE_CHARS - 1] + "…"
        self.send(addr, "/reasam/error", job_id, code, message)

    def _reply_state(self, addr: Address, status: dict[str, Any], position: int | None) -> None:
        """Answer with a job's current state (new job, idempotent retry, cancel of a finished one)."""
        job_id, state = status["job_id"], status["state"]
        if state == "queued":
            self.send(addr, "/reasam/accepted", job_id, int(position or 0))
        elif state == "running":
            self.send(addr, "/reasam/accepted", job_id, 0)
            self.send(addr, "/reasam/progress", job_id, float(status["fraction"]), str(status["stage"]))
        elif state == "done":
            self.send(addr, "/reasam/done", job_id, str(status["manifest_path"]))
        elif state == "error":
            self._error(addr, job_id, status["code"] or "internal", status["message"])
        elif state == "cancelled":
            self.send(addr, "/reasam/cancelled", job_id)

    def _watch(self, job_id: str, addr: Address) -> None:
        with self._watch_lock:
            self._watchers.setdefault(job_id, set()).add(addr)

    def _unwatch(self, job_id: str, addr: Address) -> bool:
        """Stop watching; True if `addr` was still watching (no final event reached it)."""
        with self._watch_lock:
            watchers = self._watchers.get(job_id)
            if watchers is None or addr not in watchers:
                return False
            watchers.discard(addr)
            if not watchers:
                del self._watchers[job_id]
            return True

    def on_event(self, event: Any) -> None:
        """Job events (from worker threads) → replies to the job's origin and any watchers."""
        targets: set[Address] = set()
        reply = event.origin.get("reply")
        if isinstance(reply, list) and len(reply) == 2:
            targets.add((str(reply[0]), int(reply[1])))
        final = event.kind in ("done", "error", "cancelled")
        with self._watch_lock:
            watchers = (
                self._watchers.pop(event.job_id, set()) if final else self._watchers.get(event.job_id, set())
            )
            targets |= watchers
        status = event.status
        for addr in targets:
            if event.kind == "progress":
                self.send(
                    addr, "/reasam/progress", event.job_id, float(status["fraction"]), str(status["stage"])
                )
            else:
                self._reply_state(addr, status, None)

    # -- auth ----------------------------------------------------------------------------------

    def _authorize(self, token: str | None) -> None:
        if self.token is None:
            return
        if token is None:
            raise ReasamError(
                "unauthorized", "this request needs the token (key 'token'); see the token file"
            )
        if not hmac.compare_digest(token.encode("utf-8", "replace"), self.token.encode()):
            raise ReasamError("unauthorized", "wrong token")

    def _control(self, client: Address, pairs: Sequence[Any]) -> Address:
        """Authorize a control message's trailing pairs; returns where to reply.

        An unauthenticated request is answered only to its sender's own address and port, never
        to its `reply_port`: otherwise anyone on the host could aim replies at any local port.
        """
        token, port = _scan(pairs)
        reply_to = (client[0], port) if port else client
        try:
            self._authorize(token)
        except ReasamError as exc:
            exc.reply_to = client  # type: ignore[attr-defined]
            raise
        try:
            _pairs(pairs, CONTROL_KEYS)
        except ReasamError as exc:
            exc.reply_to = reply_to  # type: ignore[attr-defined]
            raise
        return reply_to

    # -- handlers ------------------------------------------------------------------------------

    def _on_separate(self, client: Address, address: str, *args: Any) -> None:
        job_id = _readable_job_id(args[0]) if args else None
        if job_id is None:
            self._drop(client, "/reasam/separate without a readable job id")
            return
        token, port = _scan(args[3:])
        try:
            self._authorize(token)
        except ReasamError as exc:  # unauthenticated: answered to the sender alone (see _control)
            self._error(client, job_id, exc.code, exc.message)
            return
        reply_to = (client[0], port) if port else client
        try:
            if len(args) < 3:
                raise ReasamError(
                    "bad_request", "/reasam/separate takes job_id, path, prompt, then key/value pairs"
                )
            request, out_root, priority = self._request(args)
            submitted = self.manager.submit(
                job_id,
                request,
                out_root,
                priority,
                origin={"reply": list(reply_to)},
                announce=lambda new: self._reply_state(reply_to, new.status, new.position),
            )
            if not submitted.created:  # a retry: answer with the job's current state
                origin = submitted.origin.get("reply")
                if not (isinstance(origin, list) and tuple(origin) == reply_to):
                    self._watch(job_id, reply_to)
                self._reply_state(reply_to, submitted.status, submitted.position)
        except ReasamError as exc:
            self._error(reply_to, job_id, exc.code, exc.message)
        except Exception as exc:
            log.exception("separate %s failed", job_id)
            self._error(reply_to, job_id, "internal", f"{type(exc).__name__}: {exc}")

    def _request(self, args: Sequence[Any]) -> tuple[Any, Path, Any]:
        """The Request, output root and priority of /reasam/separate's arguments (defaults from
        the settings)."""
        from .request import Region, Request, Span

        job_id, path, prompt = args[0], args[1], args[2]
        from .jobs import JOB_ID_RULE, valid_job_id

        if not valid_job_id(job_id):
            raise ReasamError("bad_request", JOB_ID_RULE)
        if not isinstance(path, str) or not path:
            raise ReasamError("bad_request", "path must be a non-empty string")
        if len(path) > MAX_PATH_CHARS:
            raise ReasamError("bad_request", f"path longer than {MAX_PATH_CHARS} characters")
        if not isinstance(prompt, str):
            raise ReasamError("bad_request", "prompt must be a string (may be empty when spans are given)")
        if len(prompt) > MAX_VALUE_CHARS:
            raise ReasamError("bad_request", f"prompt longer than {MAX_VALUE_CHARS} characters")
        source = Path(path)
        if not source.is_absolute():
            raise ReasamError("bad_request", f"path must be absolute, got {path!r}")
        options: dict[str, Any] = {}
        spans = []
        extra_prompts: list[str] = []
        keys = (*SEPARATE_KEYS, *OUTPUT_KEYS, "priority")
        for key, value in _pairs(args[3:], keys, repeatable=("span", "prompt")):
            if key == "span":
                spans.append(Span.parse(str(value)))
            elif key == "prompt":
                if not isinstance(value, str) or len(value) > MAX_VALUE_CHARS:
                    raise ReasamError(
                        "bad_request", f"a prompt key takes text of at most {MAX_VALUE_CHARS} characters"
                    )
                extra_prompts.append(value)
            else:
                options[key] = value
        out_root = self.settings.out
        if "out" in options:
            out_root = Path(str(options["out"])).expanduser()
            if not out_root.is_absolute():
                raise ReasamError("bad_request", f"out must be an absolute path, got {options['out']!r}")
        from .request import OutputOptions

        request = Request(
            source=source,
            prompt=prompt,
            extra_prompts=tuple(extra_prompts),
            spans=tuple(spans),
            region=Region.parse(str(options["region"])) if "region" in options else Region(),
            quality=str(options.get("quality", self.settings.quality)),
            engine=str(options.get("engine", self.settings.engine)),
            output=OutputOptions(format=str(options.get("format", "wav"))),
            seed=options.get("seed", 0),
        )
        return _with_output_keys(request, options), out_root, _priority(options)

    def _on_cancel(self, client: Address, address: str, *args: Any) -> None:
        job_id = _readable_job_id(args[0]) if args else None
        if job_id is None:
            self._drop(client, "/reasam/cancel without a readable job id")
            return
        reply_to = client
        try:
            reply_to = self._control(client, args[1:])
            # Watch first: a queued job is cancelled inside manager.cancel, and its event then
            # reaches the origin and the canceller once each (once, if they are the same).
            self._watch(job_id, reply_to)
            try:
                status = self.manager.cancel(job_id)
            except BaseException:
                self._unwatch(job_id, reply_to)
                raise
            if status["state"] == "running":  # the watcher hears `cancelled` soon after
                self.send(reply_to, "/reasam/progress", job_id, float(status["fraction"]), "cancelling")
            elif self._unwatch(job_id, reply_to):  # no event carried it: the job had already ended
                self._reply_state(reply_to, status, None)
        except ReasamError as exc:
            self._error(getattr(exc, "reply_to", reply_to), job_id, exc.code, exc.message)
        except Exception as exc:
            log.exception("cancel %s failed", job_id)
            self._error(reply_to, job_id, "internal", f"{type(exc).__name__}: {exc}")

    def _on_status(self, client: Address, address: str, *args: Any) -> None:
        # `[s:job_id] [pairs…]`: an odd count means a job id comes first.
        job_id = ""
        pairs: Sequence[Any] = args
        if len(args) % 2:
            readable = _readable_job_id(args[0])
            if readable is None:
                self._drop(client, "/reasam/status with an unreadable job id")
                return
            job_id, pairs = readable, args[1:]
        reply_to = client
        try:
            reply_to = self._control(client, pairs)
            if job_id:
                body = self.manager.status(job_id)
            else:
                body = self.manager.overview()
                device, model_state = self.bridge.state()
                body.update(
                    device=device,
                    model_state=model_state,
                    uptime=round(time.time() - self.started, 1),
                    received=self.received,
                    dropped=self.dropped,
                )
                for hook in self.status_hooks:
                    body.update(hook())
                # Additions for job lists (the REAPER panel): the newest jobs in what room is left.
                body.update(
                    keep_alive=self.bridge.keep_alive,
                    keep_alive_left=self.bridge.keep_alive_left(),
                    log_file=str(self.settings.resolved_log_file),
                    pid=os.getpid(),
                )
                room = MAX_STATUS_REPLY - len(json.dumps(body, separators=(",", ":"))) - 64
                body["recent"] = self.manager.recent(max_bytes=max(0, room))
            self.send(reply_to, "/reasam/status", json.dumps(body, separators=(",", ":")))
        except ReasamError as exc:
            self._error(getattr(exc, "reply_to", reply_to), job_id, exc.code, exc.message)
        except Exception as exc:
            log.exception("status failed")
            self._error(reply_to, job_id, "internal", f"{type(exc).__name__}: {exc}")

    def _on_shutdown(self, client: Address, address: str, *args: Any) -> None:
        """Stop the daemon as SIGTERM does (a running job finishes within the grace or is
        journaled for the next start), after answering `/reasam/stopping i:running i:queued`."""
        reply_to = client
        try:
            reply_to = self._control(client, args)
            overview = self.manager.overview()
            log.info("stopping: asked over OSC by %s:%d", client[0], client[1])
            self.send(reply_to, "/reasam/stopping", len(overview["running"]), int(overview["queued"]))
            self.stop()
        except ReasamError as exc:
            self._error(getattr(exc, "reply_to", reply_to), "", exc.code, exc.message)

    def _on_ping(self, client: Address, address: str, *args: Any) -> None:
        reply_to = client
        try:
            reply_to = self._control(client, args)
            device, model_state = self.bridge.state()
            engines = ",".join(self.bridge.engine_names())
            self.send(reply_to, "/reasam/pong", __version__, engines, device, model_state)
        except ReasamError as exc:
            self._error(getattr(exc, "reply_to", reply_to), "", exc.code, exc.message)
        except Exception as exc:
            log.exception("ping failed")
            self._error(reply_to, "", "internal", f"{type(exc).__name__}: {exc}")


def _with_output_keys(request: Any, options: dict[str, Any]) -> Any:
    """The request with the added output keys applied (one reading: request.output_from_fields)."""
    given = {k: options[k] for k in OUTPUT_KEYS if k in options}
    if not given:
        return request
    import dataclasses

    from .request import output_from_fields

    return dataclasses.replace(request, output=output_from_fields({"format": request.output.format, **given}))


def _priority(options: dict[str, Any]) -> Any:
    from .jobs import Priority

    name = str(options.get("priority", "osc")).strip().lower()
    if name not in PRIORITIES:
        raise ReasamError("bad_request", f"priority must be one of {', '.join(PRIORITIES)}, got {name!r}")
    return Priority[name.upper()]


@dataclass
class _Message:
    """What python-osc's Handler.invoke needs: an address and iterable params."""

    address: str
    params: list[Any]

    def __iter__(self) -> Any:
        return iter(self.params)


# ---------------------------------------------------------------------------------------------
# Running the daemon


def setup_logging(settings: config.Settings) -> Path | None:
    """Log to stderr and to a rotating file (1 MB × 3) next to the journal."""
    root = logging.getLogger("reasam")
    root.setLevel(settings.log_level.upper())
    root.propagate = False
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setFormatter(fmt)
    root.addHandler(stderr)
    path = settings.resolved_log_file
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        rotating = logging.handlers.RotatingFileHandler(
            path, maxBytes=1_000_000, backupCount=3, encoding="utf-8"
        )
        rotating.setFormatter(fmt)
        root.addHandler(rotating)
        return path
    except OSError as exc:
        root.warning("cannot write the log file %s (%s); logging to stderr only", path, exc)
        return None


class _InstanceLock:
    """One daemon per state folder: two would run every journaled job twice."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh: Any = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 - held for the process's life
        try:
            if os.name == "posix":
                import fcntl

                fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            else:  # pragma: no cover - Windows
                import msvcrt

                msvcrt.locking(self._fh.fileno(), msvcrt.LK_NBLCK, 1)
        except OSError:
            self._fh.close()
            self._fh = None
            raise ReasamError(
                "busy", f"another reasam daemon is already using {self.path.parent} (stop it first)"
            ) from None

    def release(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ReasamError(
            "bad_request", f"cannot listen on {host}:{port} ({exc.strerror})", usage=False
        ) from None
    return sock


def serve(settings: config.Settings) -> int:
    """Run the daemon until SIGTERM/SIGINT; returns the process exit code."""
    from .cache import open_cache
    from .jobs import JobManager

    settings.check()
    log_path = setup_logging(settings)
    lock = _InstanceLock(settings.state_dir / "daemon.lock")
    lock.acquire()
    try:
        token: str | None = None
        if settings.token:
            token = config.ensure_token(settings.token_file)
        else:
            log.warning("tokens are off (loopback only): any local program can send jobs")
        sock = _bind(settings.host, settings.port)
        host, port = sock.getsockname()[:2]
        cache = open_cache(settings.cache_dir, settings.cache_mb << 20) if settings.cache_mb > 0 else None
        bridge = ModelBridge(settings.keep_alive, settings.quality)
        bridge.configure()  # before any engine exists: the SAM engine captures the manager
        manager = JobManager(
            settings.journal_path, cache, settings.queue_limit, after_job=bridge.tick, ready=bridge.imported
        )
        server = Server(sock, settings, manager, token, bridge)
        manager.subscribe(server.on_event)
        from .watch import attach

        watch = attach(settings, manager)  # subscribed before the start, so no job's end is missed
        recovered = manager.start()
        if watch is not None:
            watch.start()
            server.status_hooks.append(watch.status)
        threading.Thread(
            target=bridge.warm,
            args=(settings.engine if settings.preload else None,),
            daemon=True,
            name="reasam-warm",
        ).start()

        def on_signal(signum: int, frame: Any) -> None:
            log.info(
                "signal %d: stopping (no new requests; the running job finishes or is journaled)", signum
            )
            server.stop()

        for name in ("SIGTERM", "SIGINT", "SIGBREAK"):
            if hasattr(signal, name):
                with contextlib.suppress(ValueError, OSError):
                    signal.signal(getattr(signal, name), on_signal)
        info = {
            "pid": os.getpid(),
            "host": host,
            "port": port,
            "version": __version__,
            "token": settings.token,
            "token_file": str(settings.token_file) if settings.token else None,
            "out": str(settings.out),
            "log_file": str(log_path) if log_path else None,
            "started": time.time(),
        }
        daemon_file = settings.state_dir / "daemon.json"
        from .audio import write_text

        write_text(daemon_file, json.dumps(info, indent=1) + "\n", replace=True)
        log.info(
            "ReaSAM %s listening on udp://%s:%d (token %s; out %s; state %s%s)",
            __version__,
            host,
            port,
            f"from {settings.token_file}" if token else "off",
            settings.out,
            settings.state_dir,
            f"; {len(recovered)} job(s) recovered" if recovered else "",
        )
        if settings.sources:
            log.info("settings from %s", "; ".join(settings.sources))
        try:
            server.serve_forever()
        finally:
            if watch is not None:
                watch.stop()
            left = manager.shutdown(settings.shutdown_grace)
            if watch is not None:
                watch.close()
            sock.close()
            with contextlib.suppress(OSError):
                daemon_file.unlink()
            log.info("stopped%s", f"; {len(left)} job(s) journaled for the next start" if left else "")
        return 0
    finally:
        lock.release()
