"""An accepted websocket: the reader task, the writer lock, size limits and the close path.

:class:`WebSocketContext` (what :func:`trio_rack.websocket.accept` returns) hijacks the
connection and sends the ``101`` that :mod:`.handshake` built; :class:`WebSocket` is the
session the app talks to.

Theory of operation
-------------------
* **Handshake without losing a byte.**  :func:`~trio_rack.websocket.accept` checks the upgrade request from ``env``
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
  once no other task is reading: send our close frame (or the reply to the peer's; through the
  send lock, so a close that comes while the app is writing still gets its reply, RFC 6455
  §5.5.1), read until the peer's close frame or EOF (discarding messages; this also avoids the
  RST that closing a socket with unread input causes, which could destroy our close frame in
  flight), then close the stream: the server closes the TCP connection first (§7.1.1).
  Everything is bounded by ``close_timeout``.
* **Failing the connection** (wsproto found a protocol error: 1002, or 1007 for bad UTF-8)
  does not wait for the peer's close frame (§7.1.7: nothing more from the peer is processed):
  close frame, FIN right behind it, then input is discarded until the peer's FIN for at most
  ``FAIL_LINGER`` seconds (so that no RST overtakes the close frame), and the stream closes.
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

Relies on wsproto's ``PerMessageDeflate`` internals (``_decompressor``,
``_inbound_compressed``, ``_inbound_is_compressible``), present in wsproto 1.2 and 1.3.
"""

from __future__ import annotations

import enum
import logging
import math
import os
import zlib
from collections.abc import Awaitable, Callable
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

__all__ = ["ConnectionClosed", "WebSocket", "WebSocketContext"]

log = logging.getLogger("trio_rack.websocket")

#: One read from the socket; also bounds what a single inflate step is fed.
RECEIVE_SIZE = 64 * 1024
#: Close codes trio-rack sends (RFC 6455 §7.4.1).
NORMAL, GOING_AWAY, MESSAGE_TOO_BIG, INTERNAL_ERROR, ABNORMAL = 1000, 1001, 1009, 1011, 1006
#: Seconds a failed connection (a protocol error) stays open after its close frame and FIN,
#: discarding input until the peer's FIN, so that closing does not RST our close frame away.
#: Not a wait for the peer's close frame: the peer has seen the end of the stream already.
FAIL_LINGER = 1.0


class ConnectionClosed(Exception):
    """The websocket is closed: raised by ``get_message`` (once the queue is drained),
    ``send_message`` and ``ping``.  ``code``/``reason`` are those of :attr:`WebSocket.close_code`."""

    def __init__(self, code: int, reason: str, websocket: WebSocket | None = None) -> None:
        super().__init__(f"websocket closed: {code} {reason}".rstrip())
        self.code = code
        self.reason = reason
        self.websocket = websocket


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
        #: Takes the stream and gives the handshake answer still to write on it: the full hijack
        #: and its ``101`` head (HTTP/1), or HTTP/2's tunnel whose ``200`` is already sent.
        self._open_stream = open_stream
        self._subprotocol = subprotocol
        self._deflate = deflate
        self._options = options
        self._ws: WebSocket | None = None
        self._nursery_cm: Any = None
        self._nursery: trio.Nursery | None = None
        #: The server's "graceful shutdown has begun" event (``env["trio_rack.shutdown"]``).
        self.shutdown: trio.Event | None = None
        #: The request's env: the ``101`` is recorded there for the access log once sent.
        self.env: dict[str, Any] | None = None

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
            if self.env is not None:
                self.env["trio_rack.hijack_status"] = 101  # the access log's status of a full hijack
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
        """The one close path; no other task may be reading.  Idempotent, bounded.

        * The peer closed first: reply with its code, then close the TCP connection.
        * We close (the app, idleness, 1009): send our close frame, read until the peer's
          reply (at most ``close_timeout``), then close the TCP connection.  The server
          closes it first, as RFC 6455 §7.1.1 asks, so the TIME_WAIT is ours.
        * We *fail* the connection (wsproto found a protocol error: 1002, 1007): send the
          close frame and close the TCP connection at once, without waiting for a reply
          (§7.1.7: nothing more from the peer is processed), see :meth:`_close_transport`.

        The send goes through the send lock, so a close that comes while an app task is in
        the middle of writing a message waits for that write and then goes out (§5.5.1: a
        close frame is always answered); only a write that really broke mid-frame prevents it.
        """
        if self._closing:
            await self._finished.wait()
            return
        self._closing = True
        linger = 0.0
        try:
            with trio.move_on_after(self._options.close_timeout):
                if not self._stream_closed:
                    state = self._ws.state
                    if state is ConnectionState.OPEN or state is ConnectionState.REMOTE_CLOSING:
                        if state is ConnectionState.REMOTE_CLOSING:
                            code, reason = self.close_code or NORMAL, self.close_reason or ""
                        try:
                            await self._send_event(CloseConnection(code=code, reason=reason))
                        except ConnectionClosed:
                            pass
                    if self._ws.state is ConnectionState.LOCAL_CLOSING:
                        if self._parser_dead:
                            linger = min(FAIL_LINGER, self._options.close_timeout)
                        else:
                            await self._await_close_reply()
        finally:
            if self.close_code is None:
                self.close_code, self.close_reason = ABNORMAL, "no close frame received"
            self._finished.set()
            self._messages_in.close()
            for waiter in self._pings.values():
                waiter.set()
            await self._close_transport(linger)

    async def _close_transport(self, linger: float) -> None:
        """Close the stream; with a ``linger``, close the TCP connection the careful way.

        Closing a socket whose receive buffer holds unread bytes makes the kernel send a RST,
        and a RST can destroy data still in flight to the peer: our close frame.  After a
        protocol error the peer's bytes (the rest of its frames, its close reply) are exactly
        what is unread.  So a failing close half-closes (FIN right behind the close frame: the
        peer sees the end of the stream at once, and the server has closed first), discards
        whatever still arrives until the peer's FIN or ``linger`` seconds, and then closes.
        Over TLS (no half-close) the stream is closed at once.  Closed even if cancelled.
        """
        if self._stream_closed:
            return
        try:
            if linger > 0 and not self._send_broken:
                with trio.move_on_after(linger):
                    if await self._half_close():
                        while await self._receive():
                            pass
        finally:
            self._stream_closed = True
            await trio.aclose_forcefully(self._stream)

    async def _half_close(self) -> bool:
        """Send EOF (TCP FIN) if the transport can; whether it did.

        The hijacked stream the server hands out is not half-closeable itself; its plain-TCP
        transport is (``.transport``, a ``trio.SocketStream``); a TLS one is not.
        """
        target: object = self._stream
        if not isinstance(target, trio.abc.HalfCloseableStream):
            target = getattr(target, "transport", None)
        if not isinstance(target, trio.abc.HalfCloseableStream):
            return False
        async with self._send_lock:
            if self._send_broken:
                return False
            try:
                await target.send_eof()
            except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError):
                return False
        return True

    async def _await_close_reply(self) -> None:
        """Read (discarding messages) until the peer's close frame or EOF."""
        while True:
            data = await self._receive()
            if not data:
                return
            self._ws.receive_data(data)
            for event in self._ws.events():
                if type(event) is CloseConnection:
                    assert isinstance(event, CloseConnection)
                    if self._ws.state is not ConnectionState.CLOSED:
                        return  # not a close frame but a protocol error: stop reading
                    if self.close_code is None:
                        self.close_code, self.close_reason = int(event.code), event.reason or ""
                    return
