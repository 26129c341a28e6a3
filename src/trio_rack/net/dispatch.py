"""Which driver serves an accepted connection: HTTP/2 or HTTP/1.1.

* Over TLS the client chose during the handshake: ALPN ``h2`` gets HTTP/2, anything else
  (``http/1.1``, or no ALPN at all) HTTP/1.1.
* On plain HTTP, a client with prior knowledge of HTTP/2 opens with the connection preface
  ``PRI * HTTP/2.0``; every HTTP/1 request starts with another method.  The first bytes are
  peeked at (``MSG_PEEK``, not consumed) so the chosen driver reads them itself, and HTTP/1's
  hot path gains no wrapper.  The listener passes the accepted socket (``peek_socket``), so
  the peek is first tried synchronously: when the request is already there — almost always,
  the client sent it with or right after its connect — the choice costs one ``recv`` and no
  trip through the scheduler, no cancel scope and no timer; only a client that has not spoken
  yet is waited for.  ``PRI`` decides: a broken preface after it is h2's to answer (GOAWAY
  PROTOCOL_ERROR).  ``Upgrade: h2c`` (deprecated by RFC 9113) is left to HTTP/1, which
  ignores it.
* With ``http2=False`` every connection is HTTP/1.1; a preface then gets HTTP/1's 505.

Resource handling: never closes ``transport``; the caller does, in its ``finally``.
"""

from __future__ import annotations

import socket
from typing import Protocol

import trio

from ..app.env import ConnInfo
from ..http1.connection import HTTPConnection
from ..state import ServerState

__all__ = ["PREFACE_START", "Driver", "choose_driver", "serve_connection"]

#: Enough of the HTTP/2 preface to tell it from every HTTP/1 method.
PREFACE_START = b"PRI "
#: While the first bytes are a strict prefix of PREFACE_START, peek again after this long.
_PEEK_RETRY = 0.005


class Driver(Protocol):
    """A protocol driver for one connection: HTTP/1 (``HTTPConnection``) or HTTP/2."""

    async def run(self) -> None: ...


async def choose_driver(
    transport: trio.abc.Stream,
    state: ServerState,
    info: ConnInfo,
    *,
    http2: bool = True,
    peek_socket: socket.socket | None = None,
) -> Driver:
    """The driver for one accepted connection (TLS already handshaken); the caller awaits its
    ``run()`` directly, so the connection's hot path has no extra coroutine frame to resume.

    ``peek_socket``: the plain connection's (non-blocking) stdlib socket, for a synchronous
    first peek; ``transport`` stays the only thing anyone reads from or writes to.
    """
    if not http2:
        return HTTPConnection(transport, state, info)
    if peek_socket is not None and type(transport) is trio.SocketStream:
        try:
            first = peek_socket.recv(len(PREFACE_START), socket.MSG_PEEK)
        except BlockingIOError:
            pass  # nothing yet: wait for it below
        except OSError:
            return HTTPConnection(transport, state, info)  # gone or reset: HTTP/1 reads the EOF
        else:
            if not first or not PREFACE_START.startswith(first):
                return HTTPConnection(transport, state, info)
            if len(first) == len(PREFACE_START):
                from ..http2.connection import H2Connection

                return H2Connection(transport, state, info)
    since = trio.current_time()
    verdict = await _speaks_h2(transport, state.limits.header_timeout)
    if verdict is None:  # not a byte within the header timeout: closed, as HTTP/1 would close it
        return _Silent()
    if verdict:
        from ..http2.connection import H2Connection

        return H2Connection(transport, state, info)
    # The peek may have waited for the first bytes: that wait counts towards the header timeout.
    return HTTPConnection(transport, state, info, waiting_since=since)


async def serve_connection(
    transport: trio.abc.Stream, state: ServerState, info: ConnInfo, *, http2: bool = True
) -> None:
    """Serve one accepted connection with the right driver."""
    driver = await choose_driver(transport, state, info, http2=http2)
    await driver.run()


class _Silent:
    """The driver of a connection that sent nothing within the header timeout: it ends at once
    (the caller closes the transport), without a response, as HTTP/1's header timeout would."""

    async def run(self) -> None:
        await trio.lowlevel.checkpoint()


async def _speaks_h2(transport: trio.abc.Stream, patience: float) -> bool | None:
    """True for an HTTP/2 preface, False for anything else (HTTP/1 reads it: a head begun
    and not finished in time is its 408), None when not a byte arrived within ``patience``
    (the header timeout)."""
    if isinstance(transport, trio.SSLStream):
        return bool(transport.selected_alpn_protocol() == "h2")
    sock = getattr(transport, "socket", None)
    if sock is None:
        return False  # not a socket (tests pick the driver themselves)
    first = b""
    with trio.move_on_after(patience):
        while True:
            try:
                first = await sock.recv(len(PREFACE_START), socket.MSG_PEEK)
            except OSError:
                return False
            if not first or not PREFACE_START.startswith(first):
                return False
            if len(first) == len(PREFACE_START):
                return True
            await trio.sleep(_PEEK_RETRY)  # "P" or "PR" so far: POST, PUT, PATCH or PRI
    return False if first else None
