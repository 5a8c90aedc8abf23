"""HTTP connections that cannot pin the API: deadlines on reading a request, a limit on open connections,
and error logs that cannot flood the disk.

uvicorn closes idle keep-alive connections, but a connection that never sends a request, trickles its
headers a byte at a time or uploads its body slowly is kept for ever, each holding a file descriptor
until the process can accept nobody. This protocol (uvicorn's h11 one) closes a connection whose request
headers are not complete HEADER_TIMEOUT_S after it opened or after its first byte, and one whose body is
not complete BODY_TIMEOUT_S after its headers; past MAX_CONNECTIONS open connections a new one is
answered 503 and closed at once. A reverse proxy in front buffers slow clients (deploy/README.md)."""

from __future__ import annotations

import asyncio
import logging
import resource
import time

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

_BUSY_BODY = b'{"error":{"type":"unavailable","message":"too many open connections; retry shortly"}}'
BUSY = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n"
        b"connection: close\r\ncontent-length: %d\r\n\r\n" % len(_BUSY_BODY)) + _BUSY_BODY


class DeadlineProtocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with read deadlines and a connection limit (set by `configure`)."""

    header_timeout_s: float = 10.0
    body_timeout_s: float = 60.0
    max_connections: int = 1000

    @classmethod
    def configure(cls, header_timeout_s: float, body_timeout_s: float, max_connections: int) -> type["DeadlineProtocol"]:
        return type("DeadlineProtocol", (cls,), {
            "header_timeout_s": header_timeout_s, "body_timeout_s": body_timeout_s, "max_connections": max_connections,
        })

    _deadline: asyncio.TimerHandle | None = None
    _phase: str = ""

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            transport.write(BUSY)
            transport.close()
            return
        self._arm("headers", self.header_timeout_s)

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._follow()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._follow(idle_ok=True)

    def _follow(self, idle_ok: bool = False) -> None:
        """Arm the deadline of the part of the request being read, or none once it is all in."""
        state = self.conn.their_state
        if self.transport.is_closing():
            self._disarm()
        elif state is h11.IDLE:
            if idle_ok and not self.conn.trailing_data[0]:
                self._disarm()  # between requests: uvicorn's keep-alive timeout applies
            elif self._phase != "headers":
                self._arm("headers", self.header_timeout_s)
        elif state is h11.SEND_BODY:
            if self._phase != "body":
                self._arm("body", self.body_timeout_s)
        else:
            self._disarm()

    def _arm(self, phase: str, seconds: float) -> None:
        self._disarm()
        self._phase = phase
        self._deadline = self.loop.call_later(seconds, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline, self._phase = None, ""

    def _expired(self) -> None:
        """The request was not read in time: answer 408 when nothing was answered yet, and close."""
        phase, self._deadline, self._phase = self._phase, None, ""
        if self.transport.is_closing():
            return
        if phase == "headers" and self.conn.our_state is h11.IDLE and self.conn.trailing_data[0]:
            self.transport.write(b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\n\r\n")
        self.transport.close()


class RateLimitedLog(logging.Filter):
    """At most `burst` records of one kind (logger and message template) per `window_s`; then one line
    saying how many were dropped. An accept() failing in a loop logs once a window, not 70 000 times."""

    def __init__(self, burst: int = 5, window_s: float = 10.0):
        super().__init__()
        self.burst, self.window_s = burst, window_s
        self.seen: dict[tuple[str, str], list] = {}  # kind -> [window start, count]

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        kind = (record.name, str(record.msg)[:200])
        now = time.monotonic()
        entry = self.seen.get(kind)
        if entry is None or now - entry[0] >= self.window_s:
            dropped = entry[1] - self.burst if entry and entry[1] > self.burst else 0
            if len(self.seen) > 1000:
                self.seen.clear()
            self.seen[kind] = [now, 1]
            if dropped:
                record.msg = f"{record.msg} [{dropped} more like this in the last {self.window_s:g} s not logged]"
            return True
        entry[1] += 1
        return entry[1] <= self.burst


def limit_error_logs() -> None:
    """Rate-limit the server's own error lines (asyncio's accept errors, uvicorn's protocol errors)."""
    shared = RateLimitedLog()
    for name in ("asyncio", "uvicorn.error", "uvicorn"):
        logging.getLogger(name).addFilter(shared)
    for handler in logging.getLogger().handlers:
        handler.addFilter(shared)


def open_files_limit(wanted: int) -> int:
    """Raise this process's open-files limit towards `wanted` (up to the hard limit); the limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft
