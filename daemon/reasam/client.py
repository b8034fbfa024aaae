"""The daemon's client: one UDP socket that sends OSC requests and follows their replies.

Used by `reasam send/status/cancel/ping`, the benchmarks and the tests. UDP can lose any
datagram, and every request of the protocol is idempotent, so the client resends with doubling
waits until an answer comes; it listens only for replies from the daemon's own address.

The socket is connected to the daemon's address, so the kernel reports an ICMP "port
unreachable" to it: with no daemon on a local port the first receive fails with ECONNREFUSED
at once, and the client says so instead of resending for seconds into silence.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import config
from .errors import CODES, USAGE_CODES, NoAnswer, NotListening, ReasamError
from .osc import MAX_DATAGRAM, FramingError, encode, parse

# Exit codes of the client commands, beyond the CLI's 0 / 1 / 2.
EXIT_OK, EXIT_RUNTIME, EXIT_USAGE, EXIT_NO_ANSWER, EXIT_CANCELLED = 0, 1, 2, 3, 4


# How an ICMP "port unreachable" reaches a connected UDP socket: ECONNREFUSED on Linux and
# macOS, WSAECONNRESET on Windows.
_REFUSED = (ConnectionRefusedError, ConnectionResetError)


class Client:
    """A UDP OSC client with retries. Requests are idempotent, so resending is always safe."""

    def __init__(
        self,
        host: str,
        port: int,
        token: str | None,
        retries: int = 6,
        interval: float = 0.3,
        timeout: float = 0.0,
    ) -> None:
        self.token = token
        self.retries = retries
        self.timeout = timeout  # caps the whole retry sequence of one request (0: no cap)
        self.interval = interval
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            resolved = socket.getaddrinfo(host, port, family, socket.SOCK_DGRAM)[0][4]
        except (OSError, IndexError) as exc:
            raise ReasamError("bad_request", f"cannot resolve the daemon's host {host!r} ({exc})") from None
        # Replies are taken only from the daemon's own address; on loopback the socket listens
        # on loopback alone, so nothing off this machine can even reach it.
        self.addr: tuple[Any, ...] = tuple(resolved)
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        ip = str(resolved[0])
        try:
            self.sock.bind((ip if config.is_loopback(ip) else "", 0))
            # Connected: the kernel then drops datagrams from any other address and reports
            # "port unreachable" (nothing listens there) to the next send or receive.
            self.sock.connect(self.addr)
        except OSError:
            self.sock.close()
            raise

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def auth(self) -> list[Any]:
        return ["token", self.token] if self.token else []

    def send(self, address: str, *args: Any) -> None:
        try:
            self.sock.send(encode(address, *args))
        except _REFUSED:
            raise self._not_listening() from None

    def _not_listening(self) -> NotListening:
        return NotListening(f"nothing listens at {self.addr[0]}:{self.addr[1]}: connection refused")

    def receive(self, timeout: float) -> tuple[str, list[Any]] | None:
        """The next well-formed message within `timeout` seconds, or None."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(left)
            try:
                data, sender = self.sock.recvfrom(MAX_DATAGRAM + 1)
            except TimeoutError:
                return None
            except _REFUSED:
                raise self._not_listening() from None
            except OSError:
                continue
            if tuple(sender[:2]) != self.addr[:2]:
                continue  # not from the daemon: a forged or stray datagram
            try:
                messages = parse(data)
            except FramingError:
                continue
            if messages:
                return messages[0]

    def request(
        self, address: str, args: Sequence[Any], accept: Callable[[str, list[Any]], bool]
    ) -> tuple[str, list[Any]]:
        """Send and wait for a reply `accept` takes, resending with doubling waits."""
        wait = self.interval
        give_up = time.monotonic() + self.timeout if self.timeout > 0 else float("inf")
        for _ in range(self.retries):
            if time.monotonic() >= give_up:
                break
            self.send(address, *args)
            deadline = min(time.monotonic() + wait, give_up)
            while (left := deadline - time.monotonic()) > 0:
                reply = self.receive(left)
                if reply is not None and accept(*reply):
                    return reply
            wait = min(wait * 2, 5.0)
        raise NoAnswer(f"no answer from the daemon at {self.addr[0]}:{self.addr[1]}")

    def ping(self) -> dict[str, str]:
        address, args = self.request(
            "/reasam/ping",
            self.auth(),
            lambda a, x: a == "/reasam/pong" or (a == "/reasam/error" and x[:1] == [""]),
        )
        if address == "/reasam/error":
            raise _reply_error(args)
        return dict(zip(("version", "engines", "device", "model_state"), args, strict=False))

    def cancel(self, job_id: str, timeout: float = 60.0) -> tuple[dict[str, Any], int]:
        """Cancel a job and wait (up to `timeout`) for it to stop: a running job stops at its
        engine's next step. Returns the printed result and the exit code (0 when cancelled or
        already finished)."""
        address, reply = self.request("/reasam/cancel", [job_id, *self.auth()], _job_reply(job_id))
        deadline = time.monotonic() + timeout
        while address not in _FINAL:
            got = self.receive(max(0.0, deadline - time.monotonic()))
            if got is None:
                body = {"job_id": job_id, "state": "running", "message": "cancel requested; not stopped yet"}
                return body, EXIT_NO_ANSWER
            if _job_reply(job_id)(*got):
                address, reply = got
        body, code = _result(job_id, address, reply)
        return body, EXIT_OK if code == EXIT_CANCELLED else code

    def shutdown(self) -> dict[str, Any]:
        """Ask the daemon to stop (`/reasam/shutdown`); it answers before it stops."""
        address, args = self.request(
            "/reasam/shutdown",
            self.auth(),
            lambda a, x: a == "/reasam/stopping" or (a == "/reasam/error" and x[:1] == [""]),
        )
        if address == "/reasam/error":
            raise _reply_error(args)
        return {"state": "stopping", **dict(zip(("running", "queued"), args, strict=False))}

    def status(self, job_id: str | None = None) -> dict[str, Any]:
        args = ([job_id] if job_id else []) + self.auth()
        want = job_id or ""

        def accept(address: str, a: list[Any]) -> bool:
            if address == "/reasam/error":
                return a[:1] == [want]
            if address != "/reasam/status" or not a:
                return False
            with contextlib.suppress(ValueError, TypeError):
                body = json.loads(a[0])
                return body.get("job_id", "") == want if job_id else "job_id" not in body
            return False

        address, a = self.request("/reasam/status", args, accept)
        if address == "/reasam/error":
            raise _reply_error(a)
        return json.loads(a[0])


_FINAL = {"/reasam/done": "done", "/reasam/error": "error", "/reasam/cancelled": "cancelled"}


def _refused(code: str) -> bool:
    """Whether an error code means the request itself was refused (exit 2: invalid, or not
    authorized) rather than a valid request failing (exit 1). The same for every command."""
    return code in USAGE_CODES or code == "unauthorized"


def _reply_error(args: Sequence[Any]) -> ReasamError:
    """The ReasamError of an `/reasam/error s:job_id s:code s:message` reply."""
    code = str(args[1]) if len(args) > 1 else "internal"
    message = str(args[2]) if len(args) > 2 else ""
    if code not in CODES:
        code, message = "internal", f"{code}: {message}"
    return ReasamError(code, message, usage=_refused(code))


def _job_reply(job_id: str) -> Callable[[str, list[Any]], bool]:
    def accept(address: str, args: list[Any]) -> bool:
        return address.startswith("/reasam/") and args[:1] == [job_id] and address != "/reasam/status"

    return accept


def _result(job_id: str, address: str, args: list[Any]) -> tuple[dict[str, Any], int]:
    """The JSON a client prints for a final reply, and its exit code."""
    if address == "/reasam/done":
        out: dict[str, Any] = {"job_id": job_id, "state": "done", "manifest_path": args[1]}
        with contextlib.suppress(OSError, ValueError):
            out["manifest"] = json.loads(Path(args[1]).read_text(encoding="utf-8"))
        return out, EXIT_OK
    if address == "/reasam/error":
        code = args[1] if len(args) > 1 else "internal"
        body = {"job_id": job_id, "state": "error", "code": code, "message": args[2] if len(args) > 2 else ""}
        return body, EXIT_USAGE if _refused(code) else EXIT_RUNTIME
    return {"job_id": job_id, "state": "cancelled"}, EXIT_CANCELLED


def send_job(
    client: Client,
    job_id: str,
    args: Sequence[Any],
    wait: bool = True,
    timeout: float = 0.0,
    poll: float = 5.0,
    on_progress: Callable[[float, str], None] | None = None,
) -> tuple[dict[str, Any], int]:
    """Submit one /reasam/separate and follow it to the end (or to `accepted` with wait=False).

    UDP can lose any datagram: the request is resent until something for this job comes back,
    and while waiting for the end the job's status is polled after `poll` seconds of silence,
    so a lost `done` costs a few seconds, never a hang.
    """
    address, reply = client.request("/reasam/separate", [job_id, *args], _job_reply(job_id))
    deadline = time.monotonic() + timeout if timeout > 0 else None
    position = reply[1] if address == "/reasam/accepted" and len(reply) > 1 else 0
    while True:
        if address in _FINAL:
            return _result(job_id, address, reply)
        if address == "/reasam/progress" and on_progress is not None and len(reply) >= 3:
            on_progress(float(reply[1]), str(reply[2]))
        if not wait:
            return {"job_id": job_id, "state": "queued", "queue_position": position}, EXIT_OK
        left = poll if deadline is None else min(poll, deadline - time.monotonic())
        if left <= 0:
            return {
                "job_id": job_id,
                "state": "timeout",
                "message": f"no result within {timeout:g} s",
            }, EXIT_NO_ANSWER
        got = None
        end = time.monotonic() + left
        while (remaining := end - time.monotonic()) > 0:
            message = client.receive(remaining)
            if message is None:
                break
            if _job_reply(job_id)(*message):
                got = message
                break
        if got is not None:
            address, reply = got
            continue
        # Silence: ask for the job's state (answers lost replies; done/error/cancelled map over).
        try:
            status = client.status(job_id)
        except ReasamError as exc:
            return _result(job_id, "/reasam/error", [job_id, exc.code, exc.message])
        state = status.get("state")
        if state == "done":
            address, reply = "/reasam/done", [job_id, status.get("manifest_path") or ""]
        elif state == "error":
            address, reply = (
                "/reasam/error",
                [job_id, status.get("code") or "internal", status.get("message", "")],
            )
        elif state == "cancelled":
            address, reply = "/reasam/cancelled", [job_id]
        else:
            address, reply = (
                "/reasam/progress",
                [job_id, float(status.get("fraction", 0)), str(status.get("stage"))],
            )
