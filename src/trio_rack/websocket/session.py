"""An accepted websocket: reading on the app's task, the keeper, size limits and the close path.

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
* **The app's task reads ("pull").**  One task at a time holds the read side.  When the app
  calls ``get_message`` and nobody else is reading, its own task reads the socket, parses
  frames with wsproto, answers pings and returns the first whole message; frames parsed but
  not yet consumed stay in wsproto's event generator for the next call.  An echo then costs
  one wake-up of one task per message: no hand-off between tasks, no channel, and no cancel
  scope with a deadline (why: ``bench/README.md``, "WebSockets").  On the plain socket the
  read has no cancel scope at all: a closer takes the read side by setting a flag and waking
  the wait through the fd (``_read_plain``); a write waiting for room on the same fd is woken
  too, sees its socket still open and waits again (``_write``), so a close is never held up
  by a write; on other streams the read has a plain cancel scope (no deadline).
* **The keeper and the background reader.**  The server's one *keeper* task
  (:mod:`trio_rack.keeper`, ``env["trio_rack.keeper"]``: a heap of due times for all its
  websockets) times this one: when the next thing falls due (a keepalive ping, the idle
  timeout, the write timeout, a hand-over, graceful shutdown) it calls ``timer_fire``, which
  decides without blocking and starts what takes time (a ping, a close, the background
  reader) as a task in the nursery the ``async with`` opens.  Nothing reads in the keeper, and
  no task per websocket sleeps for it (a task, two cancel scopes and a coroutine stack less
  per idle websocket).  Where no server runs a keeper (the in-memory testing helpers), the
  websocket runs a private one in its nursery.  While the app does not read (it has not asked for a message yet, or
  has been away from ``get_message`` for ``HANDOVER`` seconds, or a second task waits for
  one), the keeper starts a *background reader* that reads, answers pings and puts whole
  messages into a bounded memory channel (``max_queue``); it gives the read side back as soon
  as an app task waits for a message again.  When the app stops consuming, the channel fills,
  the background reader blocks, stops reading the socket and TCP flow control pushes back on
  the peer: at most ``max_queue`` messages, one message being assembled and one 64 KiB read
  are ever buffered.
* **The socket itself, on plain TCP.**  On the server's hijacked plain-TCP connection (once
  the replay of bytes read past the handshake is drained) reads wait for readability first and
  then ``os.read`` the socket, and writes are one ``os.write`` (what does not fit waits for
  room, ``wait_writable``, and is written the same way): an echo's next message is never
  there when the app asks for it, so trio's ``receive_some`` always began with a failing
  ``recv``, and its layers cost more than the echo's own work (``_read``/``_write``;
  ``bench/README.md``, "WebSockets").  Checkpoints are
  trio's: the wait is the read's one cancellation point (nothing is read before it returns),
  a write is cancellable before it starts and passes through the scheduler after.  A closed
  socket reads as the end; TLS and HTTP/2 tunnels use the stream.
* **One writer at a time.**  Every frame is encoded by wsproto *and* written under one lock, so
  compression state and wire order agree and pongs never interleave with a message.
* **Size limits are enforced while data arrives**, never after: an uncompressed message is
  counted frame piece by frame piece, and a compressed one is inflated with a cap
  (``_BoundedDeflate``), so a 64 KB deflate bomb cannot allocate 64 MB.  Over the limit: 1009,
  and the rest of that message is skipped uninflated (the parser stays in step, so the peer's
  close reply can still be read).
* **Closing has one path** (``_finish_close``), run by whichever task stops the connection
  once no other task is reading (a closer stops the read under way, ``_stop_reader``: it
  cancels the read's scope or wakes the app's scope-free read, and waits until the read side
  is released): send our close frame
  (or the reply to the peer's; through the send lock, so a close that comes while the app is
  writing still gets its reply, RFC 6455 §5.5.1), read until the peer's close frame or EOF
  (discarding messages; this also avoids the RST that closing a socket with unread input
  causes, which could destroy our close frame in flight), then close the stream: the server
  closes the TCP connection first (§7.1.1).  Everything is bounded by ``close_timeout``.
* **Failing the connection** (wsproto found a protocol error: 1002, or 1007 for bad UTF-8)
  does not wait for the peer's close frame (§7.1.7: nothing more from the peer is processed):
  close frame, FIN right behind it, then input is discarded until the peer's FIN for at most
  ``FAIL_LINGER`` seconds (so that no RST overtakes the close frame), and the stream closes.
* **Guaranteed close.**  Leaving the ``async with`` closes with 1000; an exception closes with
  1011 "internal error" and propagates; cancellation (server shutdown) closes with 1001
  "going away", shielded for at most ``close_timeout`` seconds, and ``Cancelled`` propagates.
  A :class:`ConnectionClosed` of this websocket escaping the block is the peer's doing and is
  swallowed.  Whatever happens the stream is closed on exit (and the server closes it again).
  An app task cancelled inside ``get_message`` (its own timeout) loses nothing: the read is
  either done (and its message returned) or not started.
* **Server shutdown.**  Cancelling ``serve()`` cancels every connection task, so every open
  websocket gets 1001.  A *graceful* shutdown (``shutdown_trigger``, SIGTERM) sets the server's
  ``env["trio_rack.shutdown"]`` event; the keeper waits for it too and starts the close with
  1001 "server shutting down" on every websocket at once, so the apps' loops end and their
  blocks exit within the grace period.
* **Dead peers.**  Every ``ping_interval`` seconds of silence while someone reads, the keeper
  sends a ping; after ``idle_timeout`` seconds with nothing received while a reader was
  waiting for data it closes with 1011 "idle timeout".  A single frame that cannot be written
  within ``idle_timeout`` (a peer that stopped reading) fails the send with
  :class:`ConnectionClosed` (1006): the writer records when its write started (a float, not a
  cancel scope), and the keeper, finding it overdue, closes the transport under it, which
  wakes the blocked write (a stream that closing does not wake, such as an HTTP/2 tunnel,
  keeps a per-write ``fail_after``).

* **Frames of our own where wsproto's add nothing.**  With no extension negotiated, a message
  sent is framed by :func:`server_frame`, and a read that is exactly one whole plain frame
  (FIN, text or binary, masked, 7- or 16-bit length, valid UTF-8, within the size limit) while
  wsproto's parser stands between messages with an empty buffer is decoded by
  :func:`whole_frame`; anything else (pings, closes, fragments, partial or several frames, a
  frame wsproto would fail) goes to wsproto's parser, which decides.  ``tests/test_ws_frames.py``
  holds both to wsproto's bytes and verdicts.

Relies on wsproto's ``PerMessageDeflate`` internals (``_decompressor``,
``_inbound_compressed``, ``_inbound_is_compressible``), on ``Connection._events`` (a deque
that only ``receive_data(None)`` fills, see ``_EventQueue``) and on where its parser stands
(``Connection._proto._frame_decoder.header``/``.buffer.buffer``,
``Connection._proto._message_decoder.opcode``), present in wsproto 1.2 and 1.3.  The last
are looked for once at import (:data:`PARSER_POSITION_KNOWN`): a wsproto without them gets
its own parser for every read, never a wrong guess about where it stands.
"""

from __future__ import annotations

import enum
import logging
import math
import os
import struct
import zlib
from collections.abc import Awaitable, Callable, Coroutine, Iterator
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

from ..app.streams import HijackedStream
from ..keeper import Keeper

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


_TEXT, _BINARY = 0x1, 0x2


def server_frame(opcode: int, payload: bytes) -> bytes:
    """One whole (FIN) unmasked frame of ``payload`` with ``opcode``: the bytes wsproto's
    ``FrameProtocol`` makes for a server with no extension (``tests/test_ws_frames.py`` holds
    them equal for every opcode and for payload sizes across all three length forms), made
    here because wsproto's path (an event object, ``Connection.send``, ``send_data``,
    ``_serialize_frame`` and three copies of the payload) cost more than the echo's read.
    Used for messages when no extension is negotiated (wsproto frames the rest)."""
    n = len(payload)
    if n <= 125:
        return bytes((0x80 | opcode, n)) + payload
    if n <= 0xFFFF:
        return struct.pack("!BBH", 0x80 | opcode, 126, n) + payload
    return struct.pack("!BBQ", 0x80 | opcode, 127, n) + payload


def _parser_position_known() -> bool:
    """Whether this wsproto's parser shows where it stands as 1.2 and 1.3 do (see the module
    docstring): a fresh connection's frame decoder has no header and an empty buffer, its
    message decoder no opcode."""
    try:
        proto: Any = Connection(ConnectionType.SERVER)._proto
        decoder, assembler = proto._frame_decoder, proto._message_decoder
        return decoder.header is None and decoder.buffer.buffer == b"" and assembler.opcode is None
    except AttributeError:
        return False


#: :func:`whole_frame` stands in for wsproto's parser only where that parser's position is known.
PARSER_POSITION_KNOWN = _parser_position_known()


def whole_frame(data: bytes, max_size: int) -> str | bytes | None:
    """The message in ``data`` if ``data`` is exactly one whole frame that a server with no
    extension accepts as a whole message: FIN, no reserved bit, text or binary, masked, a 7- or
    minimal 16-bit length, at most ``max_size`` bytes, text that is valid UTF-8.  Else None
    (wsproto's parser then takes ``data``, and decides).

    Why: an echo's read is one such frame, and wsproto's path (its buffer, a header object,
    two generators, a frame object per step, an incremental UTF-8 decoder, an event object)
    cost more than the rest of the read.  Valid only between messages, with wsproto's frame
    buffer empty (the session checks); ``tests/test_ws_frames.py`` holds the verdicts and the
    messages to wsproto's over every opcode, bit, length form and mask.
    """
    size = len(data)
    if size < 6:
        return None
    first = data[0]
    if first != 0x81 and first != 0x82:  # FIN, no RSV, TEXT or BINARY
        return None
    n = data[1] ^ 0x80  # the mask bit must be set
    if n < 126:
        start = 6
    elif n == 126:
        n = (data[2] << 8) | data[3]
        if n < 126:  # not minimal: wsproto fails the connection
            return None
        start = 8
    else:  # masked with a 64-bit length (or not masked at all)
        return None
    if size != start + n or n > max_size:
        return None
    key = data[start - 4:start]
    payload = (int.from_bytes(data[start:], "little")
               ^ int.from_bytes(key * ((n >> 2) + 1), "little") & ((1 << (n << 3)) - 1)).to_bytes(n, "little")
    if first == 0x82:
        return payload
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError:
        return None


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



class _EventQueue(list[Event]):
    """wsproto's ``Connection._events``, which only ``receive_data(None)`` fills (never called
    here: an EOF is ours to handle): a deque costs ~700 bytes per idle websocket, an empty
    list 56 (bench/ws_probe.py).  Speaks the two deque calls wsproto makes on it."""

    __slots__ = ()

    def popleft(self) -> Event:
        return self.pop(0)


class _SendLock:
    """The send lock: one task at a time writes a frame; waiters get it in FIFO order.

    Not a ``trio.Lock``: its uncontended acquire and release register the owner as a breaker of
    the lock's parking lot (``inspect.getcoroutinestate``, a dict entry and a list made and
    removed per frame), which cost more than a trip through the scheduler on every frame sent.
    Here, free means ``held`` is False (and then nobody waits: a release with waiters hands the
    lock to the first one, as ``trio.Lock`` does, so a woken waiter never races a newcomer).
    """

    __slots__ = ("held", "_lot")

    def __init__(self) -> None:
        self.held = False
        self._lot: trio.lowlevel.ParkingLot | None = None  # made at the first contention

    def locked(self) -> bool:
        return self.held

    async def acquire(self) -> None:
        """Wait for the lock (a checkpoint either way).  Cancelled while waiting: not taken."""
        if self.held:
            if self._lot is None:
                self._lot = trio.lowlevel.ParkingLot()
            await self._lot.park()  # woken by release, which handed the lock over
        else:
            await trio.lowlevel.checkpoint_if_cancelled()
            self.held = True
            await trio.lowlevel.cancel_shielded_checkpoint()

    def release(self) -> None:
        if self._lot:  # (None or empty: nobody waits)
            self._lot.unpark()  # still held: now by the first waiter
        else:
            self.held = False

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *exc: object) -> None:
        self.release()


@dataclass(frozen=True, slots=True)
class _Options:
    max_message_size: int
    max_queue: int
    ping_interval: float | None
    idle_timeout: float | None
    close_timeout: float
    #: Whether get_message may read on the app's task (and cancel a background read to take
    #: over).  True on every transport: a cancelled read loses nothing on the raw connection
    #: or on an HTTP/2 tunnel (whose chunk is taken only past the read's last cancellation
    #: point); False makes the background reader do all the reading, as before the pull design.
    pull: bool = True


#: Seconds the app may stay away from ``get_message`` before a background reader takes the
#: read side (so pings and the peer's close are answered while the app does other things).
#: Short enough for any peer's pong or close timeout; long enough that an app which comes
#: back for its next message costs the keeper at most one wake-up per ``HANDOVER``.
HANDOVER = 1.0


class WebSocketContext:
    """What :func:`accept` returns: ``async with`` it to get the :class:`WebSocket`."""

    __slots__ = ("_open_stream", "_subprotocol", "_deflate", "_options", "_ws", "_nursery_cm",
                 "_nursery", "shutdown", "env")

    def __init__(self, open_stream: Callable[[], Awaitable[tuple[trio.abc.Stream, bytes]]],
                 subprotocol: str | None, deflate: _BoundedDeflate | None, options: _Options) -> None:
        #: Takes the stream and gives the handshake answer still to write on it: the full hijack
        #: and its ``101`` head (HTTP/1), or HTTP/2's tunnel whose ``200`` is already sent.
        self._open_stream: Callable[[], Awaitable[tuple[trio.abc.Stream, bytes]]] | None = open_stream
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
        open_stream, self._open_stream = self._open_stream, None  # (its closure is not kept)
        if open_stream is None:
            raise RuntimeError("a websocket context can be entered only once")
        stream, head = await open_stream()
        ws = self._ws = WebSocket(stream, self._subprotocol, self._deflate, self._options)
        try:
            if head:
                await stream.send_all(head)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            # The client left during the handshake: hand out a websocket that is already
            # closed (1006), so the app's ``async for`` just ends.
            ws.close_code, ws.close_reason = ABNORMAL, "the client left during the handshake"
            ws._stopping = True
            ws._set_finished()
            started = False
        else:
            started = True
            if self.env is not None:
                self.env["trio_rack.hijack_status"] = 101  # the access log's status of a full hijack
        self._nursery_cm = trio.open_nursery()
        nursery = self._nursery = await self._nursery_cm.__aenter__()
        if started:
            ws._nursery = nursery
            keeper = self.env.get("trio_rack.keeper") if self.env is not None else None
            if not isinstance(keeper, Keeper) or not keeper.running:
                # no server runs a shared keeper (the in-memory testing helpers): a private one
                keeper = Keeper(self.shutdown)
                nursery.start_soon(keeper.run)
            ws._keeper = keeper
            keeper.add(ws, ws._next_due())
            nursery.start_soon(ws._first_look)
        return ws

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
        try:
            with trio.CancelScope(shield=True) as shield:
                shield.deadline = trio.current_time() + ws._options.close_timeout + 1
                await ws._close(code, reason)
        finally:
            if ws._keeper is not None:
                ws._keeper.discard(ws)
        # No reader is left by now; the keeper may still be sleeping.
        assert self._nursery is not None
        self._nursery.cancel_scope.cancel()
        try:
            await self._nursery_cm.__aexit__(None, None, None)
        except BaseExceptionGroup as group:
            # The keeper and the reader are only ever cancelled (they log their own errors); a
            # Cancelled from an outer scope is already propagating as ``exc`` (or will be at the
            # next checkpoint).
            rest = group.split(trio.Cancelled)[1]
            if rest is not None:
                raise rest from None
        return isinstance(exc, ConnectionClosed) and exc.websocket is ws


def _is_cancellation(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return exc.split((trio.Cancelled, KeyboardInterrupt))[1] is None
    return isinstance(exc, (trio.Cancelled, KeyboardInterrupt, SystemExit))


class _Reader(enum.Enum):
    """Who holds the read side."""

    APP = "app"  # an app task inside get_message
    BACKGROUND = "background"  # the background reader, filling the channel


#: What reading and dispatching can end with, besides a message (str/bytes) or a failure
#: ((code, reason): fail the connection with that): more data needed, or the peer's close/EOF.
_MORE = object()
_ENDED = object()

#: Streams whose ``aclose`` from another task wakes a write blocked in them (a trio socket is
#: closed and its waiters get ClosedResourceError): the write timeout needs no cancel scope.
_ABORTABLE = (trio.SocketStream, trio.SSLStream)


def _plain_socket(stream: trio.abc.Stream) -> Any:
    """The trio socket under the server's hijacked plain-TCP stream, else None (see ``_read``)."""
    if type(stream) is HijackedStream and type(stream.transport) is trio.SocketStream:
        return stream.transport.socket
    return None


def _abortable(stream: trio.abc.Stream) -> bool:
    if isinstance(stream, _ABORTABLE):
        return True
    transport = getattr(stream, "transport", None)  # the server's hijacked stream
    return isinstance(transport, _ABORTABLE)


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

    __slots__ = (
        "_stream", "_deflate", "subprotocol", "compression", "_options", "_ws", "_send_lock",
        "_send_broken", "_stream_closed", "_parser_dead", "_messages_in", "_messages_out",
        "_channel_used", "_pings", "_parts", "_size", "_events", "_reader", "_read_scope",
        "_read_released", "_waiting", "_nursery", "_stopping", "_closing", "_finished", "_finished_event",
        "_quiet_since", "_pinged_at", "_away_since", "_write_since", "_abortable", "_keeper", "timer_due", "_socket",
        "_read_due", "_pending_close", "_gave", "_app_read", "_wakeup", "_bg_busy", "_receiving",
        "_held", "_take_read", "_simple", "_decoder", "_assembler", "close_code", "close_reason",
        "__weakref__",
    )

    def __init__(self, stream: trio.abc.Stream, subprotocol: str | None,
                 deflate: _BoundedDeflate | None, options: _Options) -> None:
        self._stream = stream
        self._deflate = deflate
        self.subprotocol = subprotocol
        self.compression = deflate is not None
        self._options = options
        self._ws = Connection(ConnectionType.SERVER, [deflate] if deflate else None)
        self._ws._events = _EventQueue()  # type: ignore[assignment]  # (see _EventQueue)
        #: No extension: a read that is one whole plain frame, between messages, is decoded by
        #: :func:`whole_frame`, not by wsproto's parser; its decoders say where the parser is.
        self._simple = deflate is None and PARSER_POSITION_KNOWN
        proto: Any = self._ws._proto
        self._decoder: Any = proto._frame_decoder if self._simple else None
        self._assembler: Any = proto._message_decoder if self._simple else None
        self._send_lock = _SendLock()
        self._send_broken = False  # a write was interrupted mid-frame: never write again
        self._stream_closed = False
        self._parser_dead = False
        #: The background reader's queue (max_queue); the app's own reads bypass it.  Made
        #: when first needed (``_queue``): most websockets of a reading app never need it.
        self._messages_in: trio.MemorySendChannel[str | bytes] | None = None
        self._messages_out: trio.MemoryReceiveChannel[str | bytes] | None = None
        #: Whether the channel may hold messages (so a pulling get_message skips it otherwise).
        self._channel_used = False
        self._pings: dict[bytes, trio.Event] = {}
        self._parts: list[Any] = []
        self._size = 0
        #: wsproto's events of the data read so far, not all consumed yet.
        self._events: Iterator[Event] | None = None
        #: A message the background reader had taken but could not queue when a close
        #: cancelled it: given after what the channel holds (it is newer), never dropped.
        self._held: str | bytes | None = None
        self._reader: _Reader | None = None
        #: The scope of the read under way (the app's, or the background reader's whole loop):
        #: what a closer cancels.
        self._read_scope: trio.CancelScope | None = None
        self._read_released: trio.Event | None = None  # a closer waits for the read side
        #: A closer wants the read side from the app's scope-free read (``_read_plain``).
        self._take_read = False
        self._waiting = 0  # app tasks in get_message waiting for a message or a change
        self._gave = False  # the reading app task passed its last message to a waiting one
        self._app_read = False  # an app task has read for itself
        self._wakeup: trio.Event | None = None  # what they wait on
        self._bg_busy = False  # the background reader is past its read (dispatching, delivering)
        self._receiving = False  # a reader is blocked waiting for data (silence counts only then)
        self._nursery: trio.Nursery | None = None
        self._stopping = False  # a close is under way: no new reads, get_message waits for it
        self._closing = False
        #: The close is decided (``_finished_event``, made only if someone waits for it).
        self._finished = False
        self._finished_event: trio.Event | None = None
        now = trio.current_time()
        self._quiet_since = now  # when the read under way (or the last one) began
        self._pinged_at = -math.inf
        self._away_since = now  # when an app task last left get_message with a message
        self._write_since = math.inf  # when the write under way started
        self._abortable = _abortable(stream)
        self._socket = _plain_socket(stream)
        #: What times this websocket (the server's shared :class:`~trio_rack.keeper.Keeper`, or a
        #: private one), and when it is due next there (the keeper's; ``_poke`` moves it earlier).
        self._keeper: Keeper | None = None
        self.timer_due = math.inf
        #: Seconds of silence while reading after which the keeper has something to do.
        self._read_due = min(options.ping_interval or math.inf, options.idle_timeout or math.inf)
        #: A close path the app's task handed to the keeper (see ``_end``).
        self._pending_close: tuple[int, str] | None = None
        self.close_code: int | None = None
        self.close_reason: str | None = None

    # ---------------------------------------------------------------------------- app side

    @property
    def closed(self) -> bool:
        """True once the close handshake started (either side) or the transport ended."""
        return self.close_code is not None or self._ws.state is not ConnectionState.OPEN

    def get_message(self) -> Coroutine[Any, Any, str | bytes]:
        """The next message (``await`` it): see the class docstring.  A plain function returning
        the coroutine, so that ``async for`` (``__anext__``) and ``get_message`` are one
        coroutine frame each, not two."""
        return self._next_message(False)

    def __aiter__(self) -> WebSocket:
        return self

    def __anext__(self) -> Coroutine[Any, Any, str | bytes]:
        return self._next_message(True)

    def _end_error(self, iterating: bool) -> Exception:
        return StopAsyncIteration() if iterating else self._closed_error()

    async def _next_message(self, iterating: bool) -> str | bytes:
        while True:
            if self._channel_used:
                assert self._messages_out is not None
                try:
                    message = self._messages_out.receive_nowait()
                except trio.WouldBlock:
                    if self._reader is None:
                        self._channel_used = False
                except (trio.EndOfChannel, trio.ClosedResourceError):
                    if self._held is None:
                        raise self._end_error(iterating) from None
                else:
                    await trio.lowlevel.cancel_shielded_checkpoint()
                    return message
            held = self._held
            if held is not None and self._reader is None:  # after the channel's older ones
                self._held = None
                await trio.lowlevel.cancel_shielded_checkpoint()
                return held
            if self._stopping:
                await self._wait_finished()
                if self._messages_out is None:
                    raise self._end_error(iterating)
                self._channel_used = True  # drain what was queued before the close, then raise
                try:
                    return self._messages_out.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                    if self._held is None:
                        raise self._end_error(iterating) from None
                continue  # the held message, next
            reader = self._reader
            if reader is None:
                if self._options.pull:
                    # The app's own read, until a whole message (returned) or the end of the
                    # connection (a close is then under way or done: looked at again above).
                    # Inline, not a coroutine of its own: one frame fewer per message.
                    self._reader = _Reader.APP
                    self._app_read = True
                    simple: str | bytes | None = None
                    try:
                        while True:
                            result: object
                            if simple is not None:  # a whole frame read last time (whole_frame)
                                result, simple = simple, None
                            elif self._events is None:
                                result = _MORE
                            else:
                                result = self._take()
                                if type(result) is Ping:  # (only wsproto's parser finds pings)
                                    if await self._pong(result):
                                        continue
                                    result = _ENDED
                            if result is _MORE:
                                self._events = None
                            elif isinstance(result, (str, bytes)):
                                self._gave = not self._gave
                                if self._waiting and self._gave:  # another task waits: every other one is theirs
                                    try:
                                        self._queue().send_nowait(result)
                                    except trio.WouldBlock:
                                        pass  # the queue is full: this one is ours
                                    else:
                                        self._channel_used = True
                                        self._wake()
                                        continue
                                away = self._away_since = trio.current_time()
                                if away + HANDOVER < self.timer_due:
                                    self._poke(away + HANDOVER)  # to hand over if the app stays away
                                return result
                            else:
                                await self._end(result, delegate=True)
                                break
                            if self._is_stopping() or self._take_read:
                                break
                            received: bytes | bytearray | None = b""
                            stream = self._stream
                            self._begin_read()
                            if self._socket is not None and not stream._replay and not stream.closed:  # type: ignore[attr-defined]
                                # the plain socket: no cancel scope (see _read_plain)
                                self._read_scope = None
                                try:
                                    received = await self._read_plain()
                                except (trio.BrokenResourceError, trio.ClosedResourceError):
                                    pass
                                finally:
                                    self._receiving = False
                                if received is None:  # a closer took the read side
                                    break
                            else:
                                scope = self._read_scope = trio.CancelScope()
                                try:
                                    with scope:
                                        received = await self._read()
                                except (trio.BrokenResourceError, trio.ClosedResourceError):
                                    pass
                                finally:
                                    self._receiving = False
                                if scope.cancelled_caught:  # a closer wants the read side
                                    break
                            assert received is not None
                            data = received if type(received) is bytes else bytes(received)
                            if not data:
                                await self._end(_ENDED, delegate=True)
                                break
                            if self._simple and self._decoder.header is None and not self._decoder.buffer.buffer \
                                    and self._assembler.opcode is None and self._ws.state is ConnectionState.OPEN:
                                # between frames and messages: one whole plain frame needs no parser
                                simple = whole_frame(data, self._options.max_message_size)
                                if simple is not None:
                                    continue
                            self._ws.receive_data(data)
                            self._events = self._ws.events()
                    finally:
                        self._release()
                    continue
                self._start_background_reader()
            elif reader is _Reader.BACKGROUND and not self._bg_busy and self._options.pull:
                self._stop_reader()  # it waits for data (or has not started): take the read side
            # wait until a message is queued, the read side is free or the connection closes
            self._waiting += 1
            try:
                wakeup = self._wakeup
                if wakeup is None:
                    wakeup = self._wakeup = trio.Event()
                await wakeup.wait()
            finally:
                self._waiting -= 1

    async def send_message(self, message: str | bytes | bytearray | memoryview) -> None:
        event: Event | bytes
        plain = self._deflate is None  # no extension: the frame is ours to make (server_frame)
        if isinstance(message, str):
            event = server_frame(_TEXT, message.encode("utf-8")) if plain else TextMessage(data=message)
        elif isinstance(message, (bytes, bytearray, memoryview)):
            event = server_frame(_BINARY, bytes(message)) if plain else BytesMessage(data=bytes(message))
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
            self._poke(self._away_since + HANDOVER)  # the pong must be read even if nobody else reads
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
                self._stop_reader()
                self._stream_closed = True
                await trio.aclose_forcefully(self._stream)

    def _closed_error(self) -> ConnectionClosed:
        return ConnectionClosed(self.close_code or ABNORMAL, self.close_reason or "", self)

    # ----------------------------------------------------------------------------- writing

    async def _send_event(self, event: Event | bytes) -> None:
        """Encode and write one frame under the send lock (``bytes``: a whole message framed
        already by :func:`server_frame`, sent only while the connection is open, as wsproto
        would).  An interrupted or failed write leaves the stream unusable (``_send_broken``).

        The write timeout (``idle_timeout``): the keeper closes the transport under a write
        that started too long ago (see the module docstring), or, on a stream that closing
        does not wake, a ``fail_after`` per write.  (One function, not two: a coroutine fewer
        per message.)
        """
        # taken without a checkpoint when free: the write below is the checkpoint, so an
        # uncontended send costs no extra trip through the scheduler.
        lock = self._send_lock
        if lock.held:
            await lock.acquire()
        else:
            lock.held = True
        try:
            if self._stream_closed or self._send_broken:
                raise self._closed_error()
            if type(event) is bytes:
                if self._ws.state is not ConnectionState.OPEN:
                    raise self._closed_error()
                data = event
            else:
                try:
                    data = self._ws.send(event)  # type: ignore[arg-type]
                except LocalProtocolError:
                    raise self._closed_error() from None
            self._send_broken = True
            timeout = self._options.idle_timeout
            try:
                if timeout is None:
                    await self._write(data)
                elif self._abortable:
                    self._write_since = since = trio.current_time()
                    if since + timeout < self.timer_due:
                        self._poke(since + timeout)
                    try:
                        await self._write(data)
                    finally:
                        self._write_since = math.inf
                else:
                    with trio.fail_after(timeout):
                        await self._stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError, trio.TooSlowError):
                if self.close_code is None:
                    self.close_code, self.close_reason = ABNORMAL, "connection lost while sending"
                raise self._closed_error() from None
            self._send_broken = False
        finally:
            self._send_lock.release()

    # ----------------------------------------------------------------------------- reading

    async def _read(self) -> bytes | bytearray:
        """One read of at most RECEIVE_SIZE bytes: through the stream, or, on the server's
        hijacked plain-TCP connection once its replay is drained, on the socket itself.

        Why: an echo's next message is not there yet when the app asks for it (the peer has
        just been sent the reply), so waiting for readability *first* and then reading saves
        the failing ``recv`` that ``trio.SocketStream.receive_some`` always tries first, and
        its layers (two conflict detectors, an error-translating generator context manager,
        the ``_nonblocking_helper``).  Same checkpoints: ``wait_readable`` is the one
        cancellation point, nothing is read before it returns, so a closer that cancels this
        read loses nothing.  A closed socket (``fileno()`` -1, or another task closed it while
        we waited: ``ClosedResourceError``) reads as the end.
        """
        stream = self._stream
        if self._socket is None or stream._replay or stream.closed:  # type: ignore[attr-defined]
            return await stream.receive_some(RECEIVE_SIZE)
        data = await self._read_plain()
        if data is None:  # (only the app's own read is ever taken this way, and it calls _read_plain)
            raise trio.ClosedResourceError
        return data

    async def _write(self, data: bytes) -> None:
        """``send_all`` through the stream, or, on the server's hijacked plain-TCP connection,
        one ``os.write`` on the socket first; what does not fit waits for room
        (``wait_writable``) and is written the same way.  The same checkpoints as
        ``trio.SocketStream.send_all`` (cancellable before anything is written, a scheduler pass
        after), without its layers.

        Not the stream's ``send_all`` for the rest: a closer wakes the app's scope-free read with
        ``notify_closing`` on this fd (``_stop_reader``), which wakes a write waiting here too
        (``ClosedResourceError``), and ``send_all`` would lose count of what it had written.
        Woken with the socket still open (``fileno()`` unchanged, the stream not closed), this
        write waits again; a real close (the keeper's write timeout, the close path's
        ``close_timeout``) says -1 and ends it.  (A close that waited for such a write instead
        waited as long as the peer read nothing: for ever with ``idle_timeout=None``, and the
        idle timeout's own close turned the write timeout off.)
        """
        sock = self._socket
        stream = self._stream
        if sock is None or stream.closed:  # type: ignore[attr-defined]
            await stream.send_all(data)
            return
        await trio.lowlevel.checkpoint_if_cancelled()
        fd = sock.fileno()
        if fd < 0:
            raise trio.ClosedResourceError
        try:
            sent = os.write(fd, data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            raise trio.BrokenResourceError from exc
        if sent == len(data):
            await trio.lowlevel.cancel_shielded_checkpoint()
            return
        rest = memoryview(data)[sent:]
        while rest:
            try:
                await trio.lowlevel.wait_writable(fd)
            except trio.ClosedResourceError:
                if sock.fileno() == fd and not stream.closed:  # type: ignore[attr-defined]
                    continue  # a closer woke the app's read on this fd (_stop_reader), not us
                raise
            if sock.fileno() != fd or stream.closed:  # type: ignore[attr-defined]
                raise trio.ClosedResourceError  # closed while we waited: never write a reused fd
            try:
                rest = rest[os.write(fd, rest):]
            except BlockingIOError:
                pass
            except OSError as exc:
                raise trio.BrokenResourceError from exc

    async def _read_plain(self) -> bytes | None:
        """The app's own read on the server's hijacked plain-TCP socket (replay drained), without
        a cancel scope: ``None`` if a closer took the read side while it waited.

        Why no scope: entering and leaving a ``trio.CancelScope`` per read (a cancel status, the
        task moved between status sets) was ~12% of an echo's instructions (bench/README.md,
        "WebSockets").  Instead a closer (``_stop_reader``) sets ``_take_read`` and wakes this
        wait with ``trio.lowlevel.notify_closing`` on the fd: the wait raises
        ``ClosedResourceError`` (or had returned already), this read sees the flag and reads
        nothing, exactly as a cancelled wait would.  Trio's epoll and kqueue backends only drop
        their registration of the fd there, so the next wait (the close path's) registers it
        afresh.  A write blocked on the same fd is woken too, and waits again (``_write``).
        Cancellation from outside (the app's own timeout, server shutdown) still arrives at the
        wait, the one checkpoint, before anything is read.
        """
        sock = self._socket
        stream = self._stream
        while True:
            fd = sock.fileno()
            if fd < 0:
                raise trio.ClosedResourceError
            try:
                await trio.lowlevel.wait_readable(fd)
            except trio.ClosedResourceError:
                if self._take_read:
                    return None
                raise
            if self._take_read:
                return None
            if sock.fileno() != fd or stream.closed:  # type: ignore[attr-defined]
                raise trio.ClosedResourceError  # closed while we waited: never read a reused fd
            try:
                return os.read(fd, RECEIVE_SIZE)
            except BlockingIOError:
                continue
            except OSError as exc:
                raise trio.BrokenResourceError from exc

    def _begin_read(self) -> None:
        """A read starts: silence is timed from now.  The keeper's ping and idle timeout count
        only while a reader waits (``_receiving``)."""
        now = self._quiet_since = trio.current_time()
        self._receiving = True
        if now + self._read_due < self.timer_due:
            self._poke(now + self._read_due)  # a ping or the idle timeout falls due sooner

    async def _receive(self) -> bytes:
        """One read; b"" at EOF or when the stream broke (get_message's own read has its own
        copy of these lines: a coroutine fewer per message on the echo path)."""
        self._begin_read()
        try:
            data = await self._read()
            return data if type(data) is bytes else bytes(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return b""
        finally:
            self._receiving = False

    def _queue(self) -> trio.MemorySendChannel[str | bytes]:
        if self._messages_in is None:
            self._messages_in, self._messages_out = trio.open_memory_channel[str | bytes](self._options.max_queue)
        return self._messages_in

    def _release(self) -> None:
        self._reader = None
        self._read_scope = None
        self._take_read = False
        self._bg_busy = False
        released = self._read_released
        if released is not None:
            self._read_released = None
            released.set()
        self._wake()

    def _wake(self) -> None:
        """Wake the app tasks waiting in get_message (they look again)."""
        wakeup = self._wakeup
        if wakeup is not None:
            self._wakeup = None
            wakeup.set()

    def _start_background_reader(self) -> None:
        assert self._nursery is not None and self._reader is None
        self._reader = _Reader.BACKGROUND
        self._read_scope = trio.CancelScope()
        self._nursery.start_soon(self._background_reader, self._read_scope)

    async def _background_reader(self, scope: trio.CancelScope) -> None:
        """Read while the app does not: messages go into the channel, with backpressure; give
        the read side back once an app task waits for a message.  Ends the connection itself
        when the peer closes, fails or leaves."""
        try:
            with scope:
                try:
                    while True:
                        self._bg_busy = True
                        if scope.cancel_called:
                            # The read side was taken while the last read's bytes came in (its
                            # final yield cannot be cancelled): leave their events to whoever
                            # reads next, untaken, rather than take one and fail to hand it over.
                            return
                        result = self._take() if self._events is not None else _MORE
                        if type(result) is Ping:
                            if await self._pong(result):
                                continue
                            result = _ENDED
                        if result is _MORE:
                            self._events = None
                            if self._stopping or (self._waiting and self._options.pull):
                                return  # closing, or the app is back and reads itself
                            self._bg_busy = False  # a waiting app task may cancel this read
                            data = await self._receive()
                            if not data:
                                result = _ENDED
                            else:
                                self._ws.receive_data(data)
                                self._events = self._ws.events()
                                continue
                        if isinstance(result, (str, bytes)):
                            self._channel_used = True
                            try:  # the read that follows is the checkpoint
                                self._queue().send_nowait(result)
                            except trio.WouldBlock:  # the queue is full: backpressure
                                self._wake()  # (max_queue=0: a waiting app task takes it from us)
                                try:
                                    await self._queue().send(result)
                                except trio.Cancelled:  # a close: the message stays readable
                                    self._held = result
                                    raise
                            self._wake()
                            if self._waiting and self._options.pull:
                                return  # the app is back: it reads from now on
                            continue
                        break
                except Exception:
                    log.exception("websocket reader failed")
                    result = (INTERNAL_ERROR, "internal error")
                # not cancelled: the connection ends here, and this task closes it
                self._read_scope = None
                await self._end(result)
        finally:
            if self._reader is _Reader.BACKGROUND:
                self._release()

    async def _end(self, result: object, *, delegate: bool = False) -> None:
        """The reader found the end (the peer's close or EOF: ``_ENDED``) or a failure
        ((code, reason)): it runs the close path, still holding the read side.

        With ``delegate`` (the app's own read) a task in the websocket's nursery runs it
        instead, and the app's get_message waits only until the close is decided
        (``_finished``), not for the transport's close: the app goes on at the same point as
        when a background reader closes (its cleanup, such as announcing a departure, overlaps
        the TCP close).
        """
        self._stopping = True
        if isinstance(result, tuple):
            code, reason = result
            if self.close_code is None:
                self.close_code, self.close_reason = code, reason
        else:
            code, reason = NORMAL, ""
        nursery = self._nursery
        if delegate and nursery is not None:
            self._pending_close = code, reason
            nursery.start_soon(self._run_pending_close)
            return
        await self._finish_close(code, reason)

    async def _run_pending_close(self) -> None:
        pending = self._pending_close
        if pending is not None:  # (else an explicit close took it over: ``_close``)
            self._pending_close = None
            await self._finish_close(*pending)

    async def _pong(self, ping: Ping) -> bool:
        """Answer ``ping``; whether the connection is still usable.  Shielded: an app task
        cancelled here must not cut the pong mid-frame (the write timeout still bounds it)."""
        try:
            with trio.CancelScope(shield=True):
                await self._send_event(ping.response())
        except ConnectionClosed:
            return False
        return True

    def _take(self) -> object:
        """Consume pending events until a whole message (returned), a failure ((code, reason)),
        the peer's close (``_ENDED``), a ping to answer (the :class:`Ping`) or the end of what
        was read (``_MORE``).  Not async: the echo's hot path creates no coroutine here."""
        events = self._events
        assert events is not None
        for event in events:
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
                    return message
            elif kind is Ping:
                return event  # the caller answers it (``_pong``) and comes back
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
                return _ENDED
        if self._deflate is not None and self._deflate.too_big:
            return MESSAGE_TOO_BIG, f"message larger than {self._options.max_message_size} bytes"
        return _MORE

    def _resolve_pings(self, payload: bytes) -> None:
        if payload not in self._pings:
            return
        for key in list(self._pings):
            self._pings.pop(key).set()
            if key == payload:
                break

    # ------------------------------------------------------------------------------ keeper

    def _set_finished(self) -> None:
        self._finished = True
        if self._finished_event is not None:
            self._finished_event.set()

    async def _wait_finished(self) -> None:
        if self._finished:
            await trio.lowlevel.checkpoint()
            return
        if self._finished_event is None:
            self._finished_event = trio.Event()
        await self._finished_event.wait()

    def _is_stopping(self) -> bool:
        return self._stopping  # (a call: not narrowed by mypy across the awaits that change it)

    def _poke(self, when: float) -> None:
        """Make the keeper fire this websocket by ``when``."""
        keeper = self._keeper
        if keeper is not None:
            keeper.schedule(self, when)

    def _next_due(self) -> float:
        opts = self._options
        due = self._write_since + (opts.idle_timeout or math.inf)
        if self._reader is None:
            return min(due, self._away_since + HANDOVER)
        if self._receiving:  # a reader waits for data: silence counts
            if opts.idle_timeout:
                due = min(due, self._quiet_since + opts.idle_timeout)
            if opts.ping_interval:
                due = min(due, max(self._quiet_since, self._pinged_at) + opts.ping_interval)
        return due

    async def _first_look(self) -> None:
        """Runs once the app's task has first blocked: if the app has not asked for a message
        by then, read for it until it does (so pings and backpressure work for an app that
        never reads); a reading app has the read side already."""
        if self._reader is None and not self._stopping and not self._app_read:
            self._start_background_reader()

    def timer_shutdown(self) -> None:
        """The keeper's call when the server's graceful shutdown begins: close with 1001."""
        if self._keeper is not None:
            self._keeper.discard(self)
        if not self._stopping and self._nursery is not None:
            self._nursery.start_soon(self._close, GOING_AWAY, "server shutting down")

    def timer_fire(self, now: float) -> float:
        """The keeper's call once this websocket's due time has passed: keepalive pings, the
        idle timeout, the write timeout, the hand-over to a background reader.  Does not
        block (what takes time runs as a task in the websocket's nursery); returns when it is
        due next.  Never waits for the send lock."""
        opts = self._options
        if self._stopping or self._nursery is None:
            return math.inf
        nursery = self._nursery
        if opts.idle_timeout and now >= self._write_since + opts.idle_timeout:
            # a peer that stopped reading: close the transport under the blocked write,
            # which then fails with ConnectionClosed (1006); the reader sees the end
            if self.close_code is None:
                self.close_code, self.close_reason = ABNORMAL, "connection lost while sending"
            self._stream_closed = True
            nursery.start_soon(trio.aclose_forcefully, self._stream)
            return math.inf
        if self._reader is not None:
            if not self._receiving:  # dispatching or a blocked delivery is not silence
                return self._next_due()
            if opts.idle_timeout and now >= self._quiet_since + opts.idle_timeout:
                if self.close_code is None:
                    self.close_code, self.close_reason = INTERNAL_ERROR, "idle timeout"
                nursery.start_soon(self._close, INTERNAL_ERROR, "idle timeout")
                return math.inf
            if (opts.ping_interval and now >= max(self._quiet_since, self._pinged_at) + opts.ping_interval
                    and not self._send_lock.locked()):  # a write under way: ping later
                self._pinged_at = now
                nursery.start_soon(self._keepalive_ping)
        elif now >= self._away_since + HANDOVER:
            self._start_background_reader()
        return self._next_due()

    async def _keepalive_ping(self) -> None:
        opts = self._options
        with trio.move_on_after(opts.idle_timeout or math.inf) as bounded:
            try:
                await self._send_event(Ping(payload=b""))
            except ConnectionClosed:
                pass
        if bounded.cancelled_caught:  # the ping itself could not be written: a dead peer
            if self.close_code is None:
                self.close_code, self.close_reason = ABNORMAL, "connection lost while sending"
            self._stream_closed = True
            await trio.aclose_forcefully(self._stream)  # the reader sees the end

    # ----------------------------------------------------------------------------- closing

    def _stop_reader(self) -> None:
        """Take the read side: cancel the read's scope, or wake the app's scope-free read
        (``_read_plain``; it looks at ``_take_read`` before its next read in any case)."""
        scope = self._read_scope
        if scope is not None:
            scope.cancel()
        elif self._reader is _Reader.APP:
            self._take_read = True
            sock = self._socket
            if self._receiving and sock is not None and sock.fileno() >= 0:
                trio.lowlevel.notify_closing(sock.fileno())

    async def _close(self, code: int, reason: str) -> None:
        """Stop the reader (or let it finish closing), then run the close path."""
        self._stopping = True
        if self._pending_close is not None:  # the app's read found the end first: that close wins
            (code, reason), self._pending_close = self._pending_close, None
        with trio.move_on_after(self._options.close_timeout):
            await self._take_read_side()
        if self._reader is not None and not self._closing and not self._stream_closed:
            # The reader is not in a read but in a write: a pong (shielded) behind a write to a
            # peer that reads nothing, and the keeper's write timeout is off once a close is
            # under way.  Closing the transport wakes that write; the reader then ends.
            if self.close_code is None:
                self.close_code, self.close_reason = ABNORMAL, "connection lost while sending"
            self._stream_closed = True
            await trio.aclose_forcefully(self._stream)
        await self._take_read_side()
        await self._finish_close(code, reason)

    async def _take_read_side(self) -> None:
        """Wait until no other task reads (stopping the reader under way), or a close is run."""
        while self._reader is not None and not self._closing:
            released = self._read_released = self._read_released or trio.Event()
            self._stop_reader()
            await released.wait()

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
            await self._wait_finished()
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
            self._set_finished()
            if self._messages_in is not None:
                self._messages_in.close()
            for waiter in self._pings.values():
                waiter.set()
            self._wake()
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
        """Read (discarding messages) until the peer's close frame or EOF; events already
        parsed but not consumed come first."""
        events = self._events
        self._events = None
        while True:
            if events is not None:
                for event in events:
                    if type(event) is CloseConnection:
                        assert isinstance(event, CloseConnection)
                        if self._ws.state is not ConnectionState.CLOSED:
                            return  # not a close frame but a protocol error: stop reading
                        if self.close_code is None:
                            self.close_code, self.close_reason = int(event.code), event.reason or ""
                        return
            data = await self._receive()
            if not data:
                return
            self._ws.receive_data(data)
            events = self._ws.events()
