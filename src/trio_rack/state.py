"""What every connection of one server shares, and what the server needs from a connection.

:class:`ServerState` is created once per ``serve()`` and handed to every connection driver
(HTTP/1 today); the liveness sweeper and the graceful drain see connections only through the
:class:`ConnectionHandle` protocol, so they never import a driver.
"""

from __future__ import annotations

import math
import sys
import time
from email.utils import formatdate
from typing import Any, Protocol

import trio

from .config import Limits
from .keeper import Keeper
from .types import App

__all__ = [
    "ConnectionHandle", "LiveRequest", "ReadDeadline", "ServerState", "SERVER_HEADER", "date_field", "date_header",
]  # fmt: skip

SERVER_HEADER = (b"server", b"trio-rack")


class LiveRequest(Protocol):
    """A request whose app is producing a response; the liveness sweeper polls its socket."""

    #: The OS socket, for the hang-up poll; None for in-memory transports.
    fileno: int | None

    def cancel_app(self) -> None:
        """The client hung up while the app was running: cancel it."""

    def write_blocked_since(self) -> float:
        """When the response write under way started; ``math.inf`` if none."""
        ...

    def cancel_stalled_write(self) -> None:
        """A write has been blocked past the write timeout: drop the client, cancel the app."""


class ReadDeadline(Protocol):
    """A connection's read deadline, which the liveness sweep enforces (net/transport.py)."""

    def expire_if_due(self, now: float) -> bool:
        """Cancel the connection's reads if their deadline is at or before ``now``; whether it did."""
        ...


class ConnectionHandle(Protocol):
    """What the graceful drain may do with an open connection."""

    def close_if_idle(self) -> None:
        """Graceful shutdown: end the connection now if it waits for a next request."""


class _DateCache:
    """The ``date`` header value, formatted at most once a second (and the header as a pair:
    one tuple a second for every response, not one each)."""

    __slots__ = ("_second", "_value", "_field")

    def __init__(self) -> None:
        self._second = -1
        self._value = b""
        self._field = (b"date", b"")

    def get(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._value = formatdate(now, usegmt=True).encode("ascii")
            self._field = (b"date", self._value)
        return self._value

    def field(self) -> tuple[bytes, bytes]:
        # get()'s test inline: the exchange asks once per response (one call fewer).
        if int(time.time()) != self._second:
            self.get()
        return self._field


_date = _DateCache()
#: The ``date`` header value for now (cached per second).
date_header = _date.get
#: ``(b"date", date_header())``, the same tuple for a second.
date_field = _date.field


class ServerState:
    """What every connection of one server shares: config and the liveness registry.

    ``active`` holds the requests whose app is producing a framed response (several may share a
    socket on HTTP/2); the liveness sweeper polls their sockets.  ``connections`` holds every open
    connection, for the graceful drain.  ``draining`` is set on graceful shutdown.
    ``in_flight`` counts the exchanges running their app (``--limit-concurrency``).
    """

    def __init__(
        self, app: App, limits: Limits, *, access_log: bool = True, proxy: Any = None, http1_parser: str = "h11"
    ) -> None:
        self.app = app
        #: The HTTP/1 parser, resolved ("h11" or "httptools": ``serve()`` resolves "auto").
        self.http1_parser = http1_parser
        #: The app asks for a request-scoped nursery (the ASGI adapter): see app/exchange.py.
        self.request_nursery = bool(getattr(app, "trio_rack_request_nursery", False))
        self.limits = limits
        self.access_log = access_log
        #: Trusted-proxy policy (an object with ``apply(env)``), or None to ignore proxy headers.
        self.proxy = proxy
        #: Seconds an exchange may take (``--request-timeout``), or None: read once per request.
        self.request_timeout = limits.request_timeout
        #: Exchanges running now (not counting hijacked ones) and the most allowed
        #: (``--limit-concurrency``; unlimited is a bound never reached, so the check stays one
        #: int comparison), and when the last "over the limit" line was logged.
        self.in_flight = 0
        self.max_in_flight = limits.limit_concurrency or sys.maxsize
        self.overload_logged_at = -math.inf
        self.active: set[LiveRequest] = set()
        self.connections: set[ConnectionHandle] = set()
        #: The read deadlines of open HTTP/1 connections: the sweep cancels those that passed.
        self.read_deadlines: set[ReadDeadline] = set()
        self.draining = False
        #: Connections accepted and not yet closed (counted at accept, before their task runs:
        #: a connection still choosing its protocol is not yet in ``connections``).
        self.accepted = 0
        #: Set when the last accepted connection closes during a graceful shutdown.
        self.all_closed = trio.Event()
        #: Set when a graceful shutdown begins; apps see it as ``env["trio_rack.shutdown"]``.
        self.shutdown_started = trio.Event()
        #: Times every websocket of this server from one task (``serve()`` runs it beside the
        #: connections); apps reach it as ``env["trio_rack.keeper"]`` once they hijack.
        self.keeper = Keeper(self.shutdown_started)
