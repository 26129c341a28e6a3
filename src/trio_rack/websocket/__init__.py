"""WebSockets (RFC 6455) for trio-rack apps, on the full hijack and wsproto.

::

    from trio_rack import websocket

    async def app(env):
        try:
            ws_context = websocket.accept(env, subprotocols=["chat.v1"])
        except websocket.HandshakeError as exc:
            return exc.response                  # 426 for plain HTTP, 400 for a bad handshake
        async with ws_context as ws:
            async for message in ws:             # str for text frames, bytes for binary
                await ws.send_message(message)
        return -1, {}, []                        # the full-hijack convention

or, for an endpoint that is only a websocket, ``@websocket.endpoint(...)`` on
``async def handler(ws, env)`` does the same three steps.

Layout: :mod:`.handshake` (pure: request checks, subprotocol selection, deflate negotiation,
the ``101`` head) and :mod:`.session` (the accepted websocket: reading on the app's task, the
timers the server's shared keeper runs, the background reader, writer lock, size limits, the
close path; its docstring is the theory of operation).  This module is the API:
:func:`accept` and :func:`endpoint`, and the public names of both.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from typing import Any

import trio

from .handshake import (
    HandshakeError,
    check_request,
    is_extended_connect,
    is_websocket,
    negotiate_deflate,
    response_head,
    select_subprotocol,
    tunnel_headers,
    upgrade_required,
)
from .session import ConnectionClosed, WebSocket, WebSocketContext, _BoundedDeflate, _Options

__all__ = [
    "ConnectionClosed",
    "HandshakeError",
    "WebSocket",
    "WebSocketContext",
    "accept",
    "endpoint",
    "is_websocket",
    "upgrade_required",
]


def accept(
    env: dict[str, Any],
    *,
    subprotocols: Sequence[str] = (),
    compression: bool = True,
    max_message_size: int = 1024 * 1024,
    max_queue: int = 4,
    ping_interval: float | None = 20.0,
    idle_timeout: float | None = 60.0,
    close_timeout: float = 3.0,
    origins: Collection[str] | None = None,
    headers: Mapping[str, str] | None = None,
) -> WebSocketContext:
    """Check the upgrade request and return the ``async with`` that accepts it.

    Raises :class:`HandshakeError` (with ``.response``, the triple to return) at once if the
    request is not an acceptable upgrade; nothing has been written then.  Entering the returned
    context hijacks the connection, sends ``101`` and yields a :class:`WebSocket`.

    * ``subprotocols``: what the server speaks, in its order of preference; the first one the
      client offered is selected (``ws.subprotocol``), else none (the client decides whether
      that is acceptable, RFC 6455 §4.2.2).
    * ``compression``: accept permessage-deflate when the client offers it.
    * ``max_message_size``: bytes of one (inflated) message; larger ones close with 1009.
    * ``max_queue``: received messages buffered for the app before reading stops.
    * ``ping_interval``/``idle_timeout``: keepalive pings after that much silence; close with
      1011 after ``idle_timeout`` seconds without a byte from the peer.  ``None`` disables.
    * ``close_timeout``: how long a close handshake may take before the socket is just closed.
    * ``origins``: if given, a request whose ``Origin`` is not in it gets 403 (cross-site
      websocket hijacking protection for browser endpoints).
    * ``headers``: extra lower-case headers for the ``101`` (``set-cookie``…).

    Resource handling: the socket belongs to the context from entry on; leaving it closes the
    websocket and the socket (and the server closes the hijacked stream again when the app ends).
    """
    if max_message_size < 1 or max_queue < 0 or close_timeout <= 0:
        raise ValueError("max_message_size and close_timeout must be positive, max_queue >= 0")
    key = check_request(env, origins)
    tunnel = env.get("trio_rack.tunnel") if is_extended_connect(env) else None
    hijack = env.get("rack.hijack")
    if tunnel is None and not callable(hijack):
        raise TypeError("websocket.accept needs a server that supports full hijack (env['rack.hijack'])")
    subprotocol = select_subprotocol(env, subprotocols)
    deflate: _BoundedDeflate | None = _BoundedDeflate(max_message_size) if compression else None
    extension = negotiate_deflate(env, deflate) if deflate is not None else None
    if extension is None:
        deflate = None
    options = _Options(max_message_size, max_queue, ping_interval, idle_timeout, close_timeout)
    open_stream: Callable[[], Awaitable[tuple[trio.abc.Stream, bytes]]]
    if tunnel is not None:  # HTTP/2 (RFC 8441): a 200 HEADERS frame, then frames as DATA
        answer = tunnel_headers(subprotocol, extension, headers or {})

        async def open_stream() -> tuple[trio.abc.Stream, bytes]:
            assert tunnel is not None
            return await tunnel(200, answer), b""
    else:
        head = response_head(key, subprotocol, extension, headers or {})

        async def open_stream() -> tuple[trio.abc.Stream, bytes]:
            assert callable(hijack)
            stream: trio.abc.Stream = hijack()
            return stream, head  # the 101 is written on the hijacked stream
    context = WebSocketContext(open_stream, subprotocol, deflate, options)
    context.shutdown = env.get("trio_rack.shutdown")
    context.env = env
    return context


def endpoint(
    handler: Callable[[WebSocket, dict[str, Any]], Awaitable[None]] | None = None, /, **options: Any
) -> Any:
    """Make an app of ``async def handler(ws, env)``: refusals answered, then accept and run it.

    Usable bare (``@endpoint``) or with :func:`accept`'s keyword options
    (``@endpoint(subprotocols=["chat"])``).  The app returns ``(-1, {}, [])`` after the handler.
    """

    def wrap(handler: Callable[[WebSocket, dict[str, Any]], Awaitable[None]]) -> Any:
        async def app(env: dict[str, Any]) -> Any:
            try:
                context = accept(env, **options)
            except HandshakeError as exc:
                return exc.response
            async with context as ws:
                await handler(ws, env)
            return -1, {}, []

        app.__qualname__ = getattr(handler, "__qualname__", "websocket_endpoint")
        app.__doc__ = handler.__doc__
        return app

    return wrap if handler is None else wrap(handler)

