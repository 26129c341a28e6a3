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

Theory of operation
-------------------
* **Handshake without losing a byte.**  :func:`accept` checks the upgrade request from ``env``
  *before* touching the connection (a refusal is an ordinary response the app returns).
  Entering the ``async with`` calls ``env["rack.hijack"]()`` and writes the ``101`` itself.
  The hijacked stream replays whatever the server had read past the request head, so a frame
  the client pipelined right behind its handshake is the first thing the frame parser sees.
* **One reader task per websocket**, in a nursery the ``async with`` opens.  It parses frames
  with wsproto, answers pings, sends keepalive pings, and puts whole messages into a bounded
  memory channel (``max_queue``).  When the app stops consuming, the channel fills, the reader
  blocks, stops reading the socket and TCP flow control pushes back on the peer: at most
  ``max_queue`` messages, one message being assembled and one 64 KiB read are ever buffered.
* **One writer at a time.**  Every frame is encoded by wsproto *and* written under one lock, so
  compression state and wire order agree and pongs never interleave with a message.
* **Size limits are enforced while data arrives**, never after: an uncompressed message is
  counted frame piece by frame piece, and a compressed one is inflated with a cap
  (``_BoundedDeflate``), so a 64 KB deflate bomb cannot allocate 64 MB.  Over the limit: 1009,
  and the rest of that message is skipped uninflated (the parser stays in step, so the peer's
  close reply can still be read).
* **Closing has one path** (``_finish_close``), run by whichever task stops the connection
  once no other task is reading: send our close frame (or the reply to the peer's), read until
  the peer's close frame or EOF (discarding messages; this also avoids the RST that closing a
  socket with unread input causes, which could destroy our close frame in flight), then close
  the stream.  Everything is bounded by ``close_timeout``.
* **Guaranteed close.**  Leaving the ``async with`` closes with 1000; an exception closes with
  1011 "internal error" and propagates; cancellation (server shutdown) closes with 1001
  "going away", shielded for at most ``close_timeout`` seconds, and ``Cancelled`` propagates.
  A :class:`ConnectionClosed` of this websocket escaping the block is the peer's doing and is
  swallowed.  Whatever happens the stream is closed on exit (and the server closes it again).
* **Server shutdown.**  Cancelling ``serve()`` cancels every connection task, so every open
  websocket gets 1001.  A *graceful* shutdown (``shutdown_trigger``, SIGTERM) sets the server's
  ``env["trio_rack.shutdown"]`` event; each websocket watches it and closes with 1001 "server
  shutting down" at once, so the app's loop ends and its block exits within the grace period.
* **Dead peers.**  Every ``ping_interval`` seconds of silence the reader sends a ping; after
  ``idle_timeout`` seconds with nothing received while it was waiting for data it closes
  with 1011 "idle timeout".  A single frame that cannot be written within ``idle_timeout``
  (a peer that stopped reading) fails the send with :class:`ConnectionClosed` (1006).

Refusals (why a 426 is a partial hijack): RFC 9110 requires ``upgrade`` in a 426, but the
server drops hop-by-hop headers (``upgrade``, ``connection``) from ordinary responses.  A
partial hijack is the one response whose head the app owns, so :func:`upgrade_required` sends
``426`` with ``upgrade: websocket``, ``connection: upgrade, close`` and
``sec-websocket-version: 13`` that way, with a close-delimited text body (the connection then
closes).  A malformed upgrade (wrong method, HTTP/1.0, no ``connection: upgrade``, a bad
``sec-websocket-key``) is an ordinary ``400``; an unsupported ``sec-websocket-version`` is a
426 with ``sec-websocket-version: 13`` (RFC 6455 §4.4); a refused ``origin`` is a ``403``.

Relies on wsproto's ``PerMessageDeflate`` internals (``_decompressor``,
``_inbound_compressed``, ``_inbound_is_compressible``), present in wsproto 1.2 and 1.3.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import logging
import math
import os
import zlib
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import trio
from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import (
    BytesMessage,
    CloseConnection,
    Event,
    Message,
    Ping,
    Pong,
    TextMessage,
)
from wsproto.extensions import PerMessageDeflate
from wsproto.frame_protocol import CloseReason
from wsproto.utilities import LocalProtocolError

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

log = logging.getLogger("trio_rack.websocket")

#: RFC 6455 §1.3: the fixed GUID hashed with the client's key into ``sec-websocket-accept``.
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#: One read from the socket; also bounds what a single inflate step is fed.
RECEIVE_SIZE = 64 * 1024
#: Close codes trio-rack sends (RFC 6455 §7.4.1).
NORMAL, GOING_AWAY, MESSAGE_TOO_BIG, INTERNAL_ERROR, ABNORMAL = 1000, 1001, 1009, 1011, 1006


class ConnectionClosed(Exception):
    """The websocket is closed: raised by ``get_message`` (once the queue is drained),
    ``send_message`` and ``ping``.  ``code``/``reason`` are those of :attr:`WebSocket.close_code`."""

    def __init__(self, code: int, reason: str, websocket: WebSocket | None = None) -> None:
        super().__init__(f"websocket closed: {code} {reason}".rstrip())
        self.code = code
        self.reason = reason
        self.websocket = websocket


class HandshakeError(Exception):
    """The request is not an acceptable websocket upgrade.  ``response`` is the triple to return
    (426, 400 or 403, with a text body saying why); ``status`` is its status."""

    def __init__(self, status: int, message: str, response: tuple[int, dict[str, Any], Any]) -> None:
        super().__init__(message)
        self.status = status
        self.response = response


# ------------------------------------------------------------------------ handshake (pure)


def _tokens(value: str | None) -> list[str]:
    return [t.strip().lower() for t in (value or "").split(",") if t.strip()]


def is_websocket(env: Mapping[str, Any]) -> bool:
    """Whether the request asks for a websocket (``upgrade: websocket``, or on HTTP/2 an extended
    CONNECT with ``:protocol websocket``, RFC 8441); it may still be invalid."""
    return "websocket" in _tokens(env.get("HTTP_UPGRADE")) or _is_extended_connect(env)


def _is_extended_connect(env: Mapping[str, Any]) -> bool:
    return str(env.get("trio_rack.protocol", "")).lower() == "websocket"


def upgrade_required(env: Mapping[str, Any], message: str = "") -> tuple[int, dict[str, Any], Any]:
    """A ``426 Upgrade Required`` for a plain HTTP request to a websocket endpoint.

    Sent as a partial hijack so that ``upgrade``/``connection`` reach the wire (see the module
    docstring); the body explains, and the connection closes after it.
    """
    text = (message or "This is a WebSocket endpoint: connect with a WebSocket client "
            "(Upgrade: websocket, Sec-WebSocket-Version: 13).") + "\n"
    body = text.encode("utf-8")
    head_only = env.get("REQUEST_METHOD") == "HEAD"

    async def write_body(stream: trio.abc.Stream) -> None:
        if not head_only:
            await stream.send_all(body)

    headers = {
        "upgrade": "websocket",
        "connection": "upgrade, close",
        "sec-websocket-version": "13",
        "content-type": "text/plain; charset=utf-8",
        "rack.hijack": write_body,
    }
    return 426, headers, []


def _refuse(status: int, message: str, env: Mapping[str, Any]) -> HandshakeError:
    if status == 426:
        return HandshakeError(426, message, upgrade_required(env, message))
    headers = {"content-type": "text/plain; charset=utf-8"}
    return HandshakeError(status, message, (status, headers, [message.encode("utf-8") + b"\n"]))


def _check_request(env: Mapping[str, Any], origins: Collection[str] | None) -> str:
    """Validate the upgrade request; return the client's key or raise HandshakeError."""
    if not is_websocket(env):
        raise _refuse(426, "This is a WebSocket endpoint: plain HTTP requests are not served here.", env)
    if _is_extended_connect(env):
        # RFC 8441 §5: CONNECT with :protocol, no key and no accept token; version 13 still.
        if env.get("REQUEST_METHOD") != "CONNECT":
            raise _refuse(400, "Bad WebSocket handshake: :protocol needs the CONNECT method.", env)
        if env.get("HTTP_SEC_WEBSOCKET_VERSION", "").strip() != "13":
            raise _refuse(426, "Unsupported WebSocket version: this server speaks version 13.", env)
        if origins is not None and env.get("HTTP_ORIGIN") is not None and env["HTTP_ORIGIN"] not in origins:
            raise _refuse(403, "WebSocket connection refused: origin not allowed.", env)
        return ""
    if env.get("REQUEST_METHOD") != "GET":
        raise _refuse(400, "Bad WebSocket handshake: the method must be GET.", env)
    if env.get("SERVER_PROTOCOL") != "HTTP/1.1":
        raise _refuse(400, "Bad WebSocket handshake: HTTP/1.1 is required.", env)
    if "upgrade" not in _tokens(env.get("HTTP_CONNECTION")):
        raise _refuse(400, "Bad WebSocket handshake: 'Connection: Upgrade' is missing.", env)
    if env.get("HTTP_SEC_WEBSOCKET_VERSION", "").strip() != "13":
        raise _refuse(426, "Unsupported WebSocket version: this server speaks version 13.", env)
    key: str = env.get("HTTP_SEC_WEBSOCKET_KEY", "").strip()
    try:
        valid = len(base64.b64decode(key, validate=True)) == 16
    except (binascii.Error, ValueError):
        valid = False
    if not valid:
        raise _refuse(400, "Bad WebSocket handshake: Sec-WebSocket-Key must be 16 bytes in base64.", env)
    if origins is not None and env.get("HTTP_ORIGIN") is not None and env["HTTP_ORIGIN"] not in origins:
        raise _refuse(403, "WebSocket connection refused: origin not allowed.", env)
    return key


def _select_subprotocol(env: Mapping[str, Any], supported: Sequence[str]) -> str | None:
    """The first of the server's ``supported`` subprotocols that the client offered (server's order)."""
    offered = {p.strip() for p in env.get("HTTP_SEC_WEBSOCKET_PROTOCOL", "").split(",")}
    return next((p for p in supported if p in offered), None)


class _BoundedDeflate(PerMessageDeflate):
    """permessage-deflate whose inflater stops at ``max_size`` bytes per message.

    Past the limit it sets ``too_big`` and from then on discards payloads without inflating
    them, instead of failing the frame parser: the parser stays usable, so the close path can
    still read the peer's close frame behind the rest of the oversize message.
    """

    def __init__(self, max_size: int) -> None:
        super().__init__()
        self._max_size = max_size
        self._inflated = 0
        self.too_big = False

    def accept(self, offer: str) -> bool | None | str:
        try:
            return super().accept(offer)
        except ValueError:  # e.g. client_max_window_bits=abc: decline the extension
            return None

    def frame_inbound_payload_data(self, proto: Any, data: bytes) -> bytes | CloseReason:
        if not self._inbound_compressed or not self._inbound_is_compressible:
            return data
        if self.too_big:
            return b""
        assert self._decompressor is not None
        room = self._max_size - self._inflated
        try:
            out = self._decompressor.decompress(bytes(data), room + 1)
        except zlib.error:
            return CloseReason.INVALID_FRAME_PAYLOAD_DATA
        self._inflated += len(out)
        if self._inflated > self._max_size or self._decompressor.unconsumed_tail:
            self.too_big = True
            return b""
        return out

    def frame_inbound_complete(self, proto: Any, fin: bool) -> bytes | CloseReason | None:
        if self.too_big:
            if fin:
                self._inbound_compressed = None
            return None
        result = super().frame_inbound_complete(proto, fin)
        if isinstance(result, bytes):
            self._inflated += len(result)
            if self._inflated > self._max_size:
                self.too_big = True
                return b""
        if fin:
            self._inflated = 0
        return result


def _negotiate_deflate(env: Mapping[str, Any], max_size: int) -> tuple[_BoundedDeflate, str] | None:
    deflate = _BoundedDeflate(max_size)
    for offer in env.get("HTTP_SEC_WEBSOCKET_EXTENSIONS", "").split(","):
        if offer.split(";", 1)[0].strip() == deflate.name:
            params = deflate.accept(offer)
            if params is not None and params is not False:
                text = deflate.name if params in (True, "") else f"{deflate.name}; {params}"
                return deflate, text
    return None


def _tunnel_headers(subprotocol: str | None, extension: str | None, headers: Mapping[str, str]) -> dict[str, str]:
    """The response headers of an RFC 8441 websocket (HTTP/2: no upgrade, no accept token)."""
    result = dict(headers)
    if subprotocol is not None:
        result["sec-websocket-protocol"] = subprotocol
    if extension is not None:
        result["sec-websocket-extensions"] = extension
    return result


def _response_head(key: str, subprotocol: str | None, extension: str | None, headers: Mapping[str, str]) -> bytes:
    accept_token = base64.b64encode(hashlib.sha1(key.encode("ascii") + _GUID).digest()).decode("ascii")
    lines = [
        "HTTP/1.1 101 Switching Protocols",
        "upgrade: websocket",
        "connection: Upgrade",
        f"sec-websocket-accept: {accept_token}",
        "server: trio-rack",
    ]
    if subprotocol is not None:
        lines.append(f"sec-websocket-protocol: {subprotocol}")
    if extension is not None:
        lines.append(f"sec-websocket-extensions: {extension}")
    for name, value in headers.items():
        if any(ord(c) < 32 or ord(c) == 127 for c in name + value) or ":" in name or name != name.lower():
            raise ValueError(f"invalid extra header {name!r}: {value!r}")
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


# ------------------------------------------------------------------------------ the API


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
    key = _check_request(env, origins)
    subprotocol = _select_subprotocol(env, subprotocols)
    deflate = _negotiate_deflate(env, max_message_size) if compression else None
    options = _Options(max_message_size, max_queue, ping_interval, idle_timeout, close_timeout)
    extension = deflate[1] if deflate else None
    open_stream: Callable[[], Awaitable[tuple[trio.abc.Stream, bytes]]]
    if _is_extended_connect(env):
        tunnel = env.get("trio_rack.tunnel")
        if not callable(tunnel):
            raise TypeError("websocket.accept over HTTP/2 needs env['trio_rack.tunnel'] (RFC 8441)")
        tunnel_headers = _tunnel_headers(subprotocol, extension, headers or {})

        async def open_stream() -> tuple[trio.abc.Stream, bytes]:
            stream: trio.abc.Stream = await tunnel(200, tunnel_headers)  # 200, not 101: RFC 8441 §5
            return stream, b""
    else:
        hijack = env.get("rack.hijack")
        if not callable(hijack):
            raise TypeError("websocket.accept needs a server that supports full hijack (env['rack.hijack'])")
        head = _response_head(key, subprotocol, extension, headers or {})

        async def open_stream() -> tuple[trio.abc.Stream, bytes]:
            stream: trio.abc.Stream = hijack()
            return stream, head
    context = WebSocketContext(open_stream, subprotocol, deflate[0] if deflate else None, options)
    context.shutdown = env.get("trio_rack.shutdown")
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


@dataclass(frozen=True, slots=True)
class _Options:
    max_message_size: int
    max_queue: int
    ping_interval: float | None
    idle_timeout: float | None
    close_timeout: float


class WebSocketContext:
    """What :func:`accept` returns: ``async with`` it to get the :class:`WebSocket`."""

    def __init__(self, open_stream: Callable[[], Awaitable[tuple[trio.abc.Stream, bytes]]],
                 subprotocol: str | None, deflate: _BoundedDeflate | None, options: _Options) -> None:
        #: Takes the stream, and gives the bytes of the handshake's answer still to write: the
        #: full hijack and the ``101`` head on HTTP/1; on HTTP/2 the tunnel, whose ``200``
        #: HEADERS frame is already sent (RFC 8441), and nothing.
        self._open_stream = open_stream
        self._subprotocol = subprotocol
        self._deflate = deflate
        self._options = options
        self._ws: WebSocket | None = None
        self._nursery_cm: Any = None
        self._nursery: trio.Nursery | None = None
        #: The server's "graceful shutdown has begun" event (``env["trio_rack.shutdown"]``).
        self.shutdown: trio.Event | None = None

    async def __aenter__(self) -> WebSocket:
        if self._ws is not None:
            raise RuntimeError("a websocket context can be entered only once")
        stream, head = await self._open_stream()
        ws = self._ws = WebSocket(stream, self._subprotocol, self._deflate, self._options)
        try:
            if head:
                await stream.send_all(head)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            # The client left during the handshake: hand out a websocket that is already
            # closed (1006), so the app's ``async for`` just ends.
            ws._reader_state = _ReaderState.DONE
            ws._reader_done.set()
            ws.close_code, ws.close_reason = ABNORMAL, "the client left during the handshake"
            started = False
        else:
            started = True
        self._nursery_cm = trio.open_nursery()
        nursery = self._nursery = await self._nursery_cm.__aenter__()
        if started:
            nursery.start_soon(ws._reader)
            if self.shutdown is not None:
                nursery.start_soon(self._close_on_shutdown, ws, self.shutdown)
        return ws

    @staticmethod
    async def _close_on_shutdown(ws: WebSocket, shutdown: trio.Event) -> None:
        """Graceful shutdown: say 1001 "going away" now, rather than when the grace period ends.

        The app's ``get_message``/``async for`` then ends as for any close, and its block exits.
        """
        await shutdown.wait()
        await ws._close(GOING_AWAY, "server shutting down")

    async def __aexit__(self, etype: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> bool:
        ws = self._ws
        assert ws is not None
        if exc is None or (isinstance(exc, ConnectionClosed) and exc.websocket is ws):
            code, reason = NORMAL, ""
        elif _is_cancellation(exc):
            code, reason = GOING_AWAY, "going away"
        else:
            code, reason = INTERNAL_ERROR, "internal error"
        with trio.CancelScope(shield=True) as shield:
            shield.deadline = trio.current_time() + ws._options.close_timeout + 1
            await ws._close(code, reason)
        # The reader is done by now; the shutdown watcher may still be waiting.
        assert self._nursery is not None
        self._nursery.cancel_scope.cancel()
        try:
            await self._nursery_cm.__aexit__(None, None, None)
        except BaseExceptionGroup as group:
            # The reader is only ever cancelled (it logs its own errors); a Cancelled from an
            # outer scope is already propagating as ``exc`` (or will be at the next checkpoint).
            rest = group.split(trio.Cancelled)[1]
            if rest is not None:
                raise rest from None
        return isinstance(exc, ConnectionClosed) and exc.websocket is ws


def _is_cancellation(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return exc.split((trio.Cancelled, KeyboardInterrupt))[1] is None
    return isinstance(exc, (trio.Cancelled, KeyboardInterrupt, SystemExit))


class _ReaderState(enum.Enum):
    READING = "reading"
    FINISHING = "finishing"  # the reader runs the close path itself; don't cancel it
    DONE = "done"


class WebSocket:
    """One accepted websocket.  Get it from ``async with accept(env) as ws``.

    * ``await ws.get_message()`` → ``str`` (text) or ``bytes`` (binary); raises
      :class:`ConnectionClosed` once the connection is closed and queued messages are consumed.
    * ``async for message in ws`` iterates until the connection closes (any code).
    * ``await ws.send_message(str | bytes)``; ``await ws.ping(payload=None)`` waits for the pong.
    * ``await ws.aclose(code=1000, reason="")`` runs the close handshake and closes the socket.
    * ``ws.subprotocol``, ``ws.compression``, ``ws.closed``, and after the close
      ``ws.close_code``/``ws.close_reason``: the code of the peer's close frame (whoever
      started the close); the code we sent when we failed the connection because of the peer
      (1009 too big, 1002/1007 protocol errors, 1011 idle timeout); 1006 when it ended with no
      close frame.

    Tasks: any number of tasks may send (frames are serialized) and receive (messages are
    distributed among them).
    """

    def __init__(self, stream: trio.abc.Stream, subprotocol: str | None,
                 deflate: _BoundedDeflate | None, options: _Options) -> None:
        self._stream = stream
        self._deflate = deflate
        self.subprotocol = subprotocol
        self.compression = deflate is not None
        self._options = options
        self._ws = Connection(ConnectionType.SERVER, [deflate] if deflate else None)
        self._send_lock = trio.Lock()
        self._send_broken = False  # a write was interrupted mid-frame: never write again
        self._stream_closed = False
        self._parser_dead = False
        self._messages_in, self._messages_out = trio.open_memory_channel[str | bytes](options.max_queue)
        self._pings: dict[bytes, trio.Event] = {}
        self._parts: list[Any] = []
        self._size = 0
        self._reader_scope = trio.CancelScope()
        self._reader_state = _ReaderState.READING
        self._reader_done = trio.Event()
        self._closing = False
        self._finished = trio.Event()
        self.close_code: int | None = None
        self.close_reason: str | None = None

    # ---------------------------------------------------------------------------- app side

    @property
    def closed(self) -> bool:
        """True once the close handshake started (either side) or the transport ended."""
        return self.close_code is not None or self._ws.state is not ConnectionState.OPEN

    async def get_message(self) -> str | bytes:
        try:
            return await self._messages_out.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise self._closed_error() from None

    def __aiter__(self) -> WebSocket:
        return self

    async def __anext__(self) -> str | bytes:
        try:
            return await self.get_message()
        except ConnectionClosed:
            raise StopAsyncIteration from None

    async def send_message(self, message: str | bytes | bytearray | memoryview) -> None:
        if isinstance(message, str):
            event: Event = TextMessage(data=message)
        elif isinstance(message, (bytes, bytearray, memoryview)):
            event = BytesMessage(data=bytes(message))
        else:
            raise TypeError(f"send_message takes str or bytes, not {type(message).__name__}")
        await self._send_event(event)

    async def ping(self, payload: bytes | None = None) -> None:
        """Send a ping and wait for its pong (a later pong also answers earlier pings)."""
        if payload is None:
            payload = os.urandom(4)
        if payload in self._pings:
            raise ValueError(f"a ping with payload {payload!r} is already waiting for its pong")
        waiter = self._pings[payload] = trio.Event()
        try:
            await self._send_event(Ping(payload=payload))
            await waiter.wait()
        finally:
            pending = self._pings.pop(payload, None) is not None
        if pending:  # woken by the close, not by a pong
            raise self._closed_error()

    async def aclose(self, code: int = NORMAL, reason: str = "") -> None:
        """Close handshake with ``code``/``reason`` (at most ``close_timeout``), then close the socket.

        Messages received before the close stay readable with ``get_message``.  If cancelled,
        the socket is still closed, just not gracefully.
        """
        try:
            await self._close(code, reason)
        finally:
            if not self._stream_closed:
                self._reader_scope.cancel()
                self._stream_closed = True
                await trio.aclose_forcefully(self._stream)

    def _closed_error(self) -> ConnectionClosed:
        return ConnectionClosed(self.close_code or ABNORMAL, self.close_reason or "", self)

    # ----------------------------------------------------------------------------- writing

    async def _send_event(self, event: Event) -> None:
        # acquire_nowait first: the write below is the checkpoint, so an uncontended send
        # costs no extra trip through the scheduler.
        try:
            self._send_lock.acquire_nowait()
        except trio.WouldBlock:
            await self._send_lock.acquire()
        try:
            if self._stream_closed or self._send_broken:
                raise self._closed_error()
            try:
                data = self._ws.send(event)
            except LocalProtocolError:
                raise self._closed_error() from None
            await self._write(data)
        finally:
            self._send_lock.release()

    async def _write(self, data: bytes) -> None:
        """Write under the send lock.  Interrupted or failed writes leave the stream unusable."""
        self._send_broken = True
        try:
            with trio.fail_after(self._options.idle_timeout or math.inf):
                await self._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError, trio.TooSlowError):
            if self.close_code is None:
                self.close_code, self.close_reason = ABNORMAL, "connection lost while sending"
            raise self._closed_error() from None
        self._send_broken = False

    # ----------------------------------------------------------------------------- reading

    async def _reader(self) -> None:
        """The reader task: read until the connection must close, then (if nobody stopped it)
        run the close path itself."""
        failure: tuple[int, str] | None = None
        try:
            with self._reader_scope:
                try:
                    failure = await self._read_loop()
                except Exception:
                    log.exception("websocket reader failed")
                    failure = (INTERNAL_ERROR, "internal error")
                self._reader_state = _ReaderState.FINISHING
            if self._reader_state is _ReaderState.FINISHING:
                code, reason = failure or (NORMAL, "")
                if failure is not None and self.close_code is None:
                    self.close_code, self.close_reason = failure
                await self._finish_close(code, reason)
        finally:
            self._reader_state = _ReaderState.DONE
            self._reader_done.set()

    async def _receive(self) -> bytes:
        try:
            data = await self._stream.receive_some(RECEIVE_SIZE)
            return data if type(data) is bytes else bytes(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return b""

    async def _read_loop(self) -> tuple[int, str] | None:
        """Read and dispatch frames.  Returns the (code, reason) to fail the connection with,
        or None when the peer closed or the transport ended."""
        opts = self._options
        quiet_since = trio.current_time()
        pinged_at: float | None = None
        while True:
            wake = quiet_since + opts.idle_timeout if opts.idle_timeout else math.inf
            if opts.ping_interval:
                wake = min(wake, (pinged_at or quiet_since) + opts.ping_interval)
            data = None
            with trio.move_on_at(wake):  # only the read is timed: a blocked delivery is not silence
                data = await self._receive()
            if data is None:
                now = trio.current_time()
                if opts.idle_timeout and now >= quiet_since + opts.idle_timeout:
                    return INTERNAL_ERROR, "idle timeout"
                try:
                    await self._send_event(Ping(payload=b""))
                except ConnectionClosed:
                    return None
                pinged_at = now
                continue
            if not data:
                return None
            self._ws.receive_data(data)
            failure = await self._dispatch()
            if failure is not None or self._ws.state is not ConnectionState.OPEN:
                return failure
            quiet_since, pinged_at = trio.current_time(), None

    async def _dispatch(self) -> tuple[int, str] | None:
        for event in self._ws.events():
            kind = type(event)
            if kind is TextMessage or kind is BytesMessage:
                assert isinstance(event, Message)
                data = event.data
                self._parts.append(data)
                if isinstance(data, str):
                    self._size += len(data) if data.isascii() else len(data.encode("utf-8"))
                else:
                    self._size += len(data)
                if self._size > self._options.max_message_size or (self._deflate and self._deflate.too_big):
                    return MESSAGE_TOO_BIG, f"message larger than {self._options.max_message_size} bytes"
                if event.message_finished:
                    parts, self._parts, self._size = self._parts, [], 0
                    message = parts[0] if len(parts) == 1 else ("" if kind is TextMessage else b"").join(parts)
                    if isinstance(message, bytearray):
                        message = bytes(message)
                    try:  # the read that follows is the checkpoint
                        self._messages_in.send_nowait(message)
                    except trio.WouldBlock:
                        await self._messages_in.send(message)  # the queue is full: backpressure
            elif kind is Ping:
                assert isinstance(event, Ping)
                try:
                    await self._send_event(event.response())
                except ConnectionClosed:
                    return None
            elif kind is Pong:
                assert isinstance(event, Pong)
                self._resolve_pings(bytes(event.payload))
            elif kind is CloseConnection:
                assert isinstance(event, CloseConnection)
                if self._ws.state is ConnectionState.OPEN:  # a protocol error found by wsproto
                    self._parser_dead = True
                    if event.code == MESSAGE_TOO_BIG:
                        return MESSAGE_TOO_BIG, f"message larger than {self._options.max_message_size} bytes"
                    return int(event.code), event.reason or ""
                if self.close_code is None:
                    self.close_code, self.close_reason = int(event.code), event.reason or ""
                return None
        if self._deflate is not None and self._deflate.too_big:
            return MESSAGE_TOO_BIG, f"message larger than {self._options.max_message_size} bytes"
        return None

    def _resolve_pings(self, payload: bytes) -> None:
        if payload not in self._pings:
            return
        for key in list(self._pings):
            self._pings.pop(key).set()
            if key == payload:
                break

    # ----------------------------------------------------------------------------- closing

    async def _close(self, code: int, reason: str) -> None:
        """Stop the reader (or wait for it to finish closing), then run the close path."""
        if self._reader_state is _ReaderState.READING:
            self._reader_scope.cancel()
        await self._reader_done.wait()
        await self._finish_close(code, reason)

    async def _finish_close(self, code: int, reason: str) -> None:
        """The one close path; no other task may be reading.  Idempotent, bounded."""
        if self._closing:
            await self._finished.wait()
            return
        self._closing = True
        try:
            with trio.move_on_after(self._options.close_timeout):
                if not self._send_broken and not self._stream_closed:
                    state = self._ws.state
                    if state is ConnectionState.OPEN or state is ConnectionState.REMOTE_CLOSING:
                        if state is ConnectionState.REMOTE_CLOSING:
                            code, reason = self.close_code or NORMAL, self.close_reason or ""
                        try:
                            await self._send_event(CloseConnection(code=code, reason=reason))
                        except ConnectionClosed:
                            pass
                    if self._ws.state is ConnectionState.LOCAL_CLOSING:
                        await self._await_close_reply()
        finally:
            if self.close_code is None:
                self.close_code, self.close_reason = ABNORMAL, "no close frame received"
            self._finished.set()
            self._messages_in.close()
            for waiter in self._pings.values():
                waiter.set()
            if not self._stream_closed:
                self._stream_closed = True
                await trio.aclose_forcefully(self._stream)

    async def _await_close_reply(self) -> None:
        """Read (discarding messages) until the peer's close frame or EOF."""
        while True:
            data = await self._receive()
            if not data:
                return
            if self._parser_dead:
                continue  # just drain until the peer closes
            self._ws.receive_data(data)
            for event in self._ws.events():
                if type(event) is CloseConnection:
                    assert isinstance(event, CloseConnection)
                    if self.close_code is None:
                        self.close_code, self.close_reason = int(event.code), event.reason or ""
                    return
