"""One HTTP/2 stream as the wire beneath one exchange: :class:`H2Stream` (a ``ResponseSink``)
and :class:`TunnelStream`, the ``trio.abc.Stream`` a partial hijack gets on HTTP/2.

The stream never touches the socket: it calls h2 through its :class:`~.connection.H2Connection`
(synchronous calls, so h2's state changes between two awaits of the one Trio thread) and waits
on its own :class:`trio.lowlevel.ParkingLot`, which the connection's reader unparks when DATA,
END_STREAM, RST_STREAM or a WINDOW_UPDATE arrives for it.

Flow control both ways:

* receive: DATA is queued as it arrives (at most the stream's window, which the client must
  respect) and acknowledged to h2 only when :meth:`H2Stream.receive_body` hands it to the app,
  so the client's window reopens as fast as the app reads, never faster;
* send: :meth:`H2Stream.send_data` sends what the window allows, one frame at a time, and
  otherwise waits for a WINDOW_UPDATE (and for the writer's backlog to drain).  A window that
  stays shut past ``write_timeout`` resets the stream, or closes the connection when it is the
  connection's window that is shut.

Resource handling: the exchange closes the :class:`TunnelStream` it handed out; closing it
ends the HTTP/2 stream with END_STREAM, never the connection.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import trio
from h2.errors import ErrorCodes
from h2.exceptions import H2Error

from ..app.streams import Busy
from ..errors import AppError, ClientGone, RequestBodyError

if TYPE_CHECKING:
    import h2.connection

    from ..app.exchange import Exchange
    from ..config import Limits

__all__ = ["H2Stream", "TunnelStream", "CONNECTION_SPECIFIC"]

log = logging.getLogger("trio_rack.error")


class StreamOwner(Protocol):
    """What a stream needs from its connection (:class:`~.connection.H2Connection`): h2's state,
    the one writer, flow control.  Typed here so that the stream never imports the connection."""

    h2: h2.connection.H2Connection
    limits: Limits
    fileno: int | None

    def send_headers(self, stream_id: int, headers: list[tuple[bytes, bytes]], *, end_stream: bool = False) -> None: ...

    def end_stream(self, stream_id: int) -> None: ...

    def reset(self, stream_id: int, code: ErrorCodes) -> None: ...

    def acknowledge(self, stream_id: int, flow: int) -> None: ...

    def flush(self) -> None: ...

    def max_frame_size(self) -> int: ...

    async def wait_window(self, stream: H2Stream) -> int: ...

#: RFC 9113 §8.2.2: never in an HTTP/2 message (``te`` only as ``te: trailers``).
CONNECTION_SPECIFIC = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"}
)


def strip_connection_specific(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """``headers`` without the connection-specific ones, each dropped with HTTP/1's warning."""
    kept = []
    for name, value in headers:
        if name in CONNECTION_SPECIFIC or (name == b"te" and value.strip().lower() != b"trailers"):
            log.warning("app set hop-by-hop header %r; dropped (the server owns the framing)", name.decode())
            continue
        kept.append((name, value))
    return kept


class H2Stream:
    """The ``ResponseSink`` of one HTTP/2 request; see the module docstring."""

    server_protocol = "HTTP/2"
    can_full_hijack = False
    #: A streamed response may end with a trailing HEADERS frame (:meth:`set_trailers`).
    can_send_trailers = True

    __slots__ = (
        "conn", "stream_id", "fileno", "lot", "scope", "exchange", "chunks", "body_ended",
        "broken", "received", "too_large", "expect_continue", "head_sent", "ended", "length",
        "sent", "head_only", "tunnel", "discarding", "trailers",
    )  # fmt: skip

    def __init__(self, conn: StreamOwner, stream_id: int, *, expect_continue: bool, head_only: bool) -> None:
        self.conn = conn
        self.stream_id = stream_id
        self.fileno = conn.fileno
        #: Unparked by the connection on any news for this stream.
        self.lot = trio.lowlevel.ParkingLot()
        #: The stream task's scope: cancelled when the client resets the stream before its
        #: exchange started, or when the connection goes.
        self.scope = trio.CancelScope()
        self.exchange: Exchange | None = None
        #: Request DATA not yet read by the app: (data, flow-controlled length).
        self.chunks: deque[tuple[bytes, int]] = deque()
        self.body_ended = False
        #: Why the stream can no longer be written or read (reset, connection lost), or None.
        self.broken: str | None = None
        self.received = 0
        self.too_large = False
        self.expect_continue = expect_continue
        self.head_sent = False
        self.ended = False
        self.length: int | None = None
        self.sent = 0
        self.head_only = head_only
        self.tunnel: TunnelStream | None = None
        #: The app closed rack.input: DATA is acknowledged and dropped as it arrives.
        self.discarding = False
        #: Trailers :meth:`end` sends as the final HEADERS frame (validated by the exchange).
        self.trailers: list[tuple[bytes, bytes]] | None = None

    # ---------------------------------------------------------------- called by the connection

    def on_data(self, data: bytes, flow: int, limit: int | None) -> None:
        if self.too_large or self.discarding:
            self.conn.acknowledge(self.stream_id, flow)
            return
        self.received += len(data)
        if limit is not None and self.received > limit:
            self.too_large = True
            self.conn.acknowledge(self.stream_id, flow)
        else:
            self.chunks.append((data, flow))
        self.lot.unpark_all()

    def on_end(self) -> None:
        self.body_ended = True
        self.lot.unpark_all()

    def on_broken(self, reason: str) -> None:
        """The client reset the stream, or the connection is gone: cancel this request only."""
        if self.broken is None:
            self.broken = reason
        self.lot.unpark_all()
        if self.exchange is not None:
            self.exchange.cancel(reason, client_gone=True)
        else:
            self.scope.cancel()

    def release_unread(self) -> None:
        """The exchange is over: give the window of unread request DATA back to the client."""
        while self.chunks:
            self.conn.acknowledge(self.stream_id, self.chunks.popleft()[1])

    # ---------------------------------------------------------------------- ResponseSink

    async def receive_body(self, size_hint: int | None = None, *, bounded: bool = True) -> bytes:
        # (size_hint unused: DATA frames arrive at the client's frame size, held under the
        # stream's flow-control window whatever the app's reads ask for.)
        if self.expect_continue and not self.head_sent:
            self.expect_continue = False
            self.conn.send_headers(self.stream_id, [(b":status", b"100")])
        deadline = trio.current_time() + self.conn.limits.body_timeout if bounded else float("inf")
        while not self.chunks:
            if self.too_large:
                raise RequestBodyError(413, f"request body exceeds {self.conn.limits.max_body_size} bytes")
            if self.broken is not None:
                raise ClientGone(self.broken)
            if self.body_ended:
                await trio.lowlevel.checkpoint()
                return b""
            with trio.move_on_at(deadline):
                await self.lot.park()
                continue
            raise RequestBodyError(408, "timed out waiting for the request body")
        # A queued chunk is taken only past the last point where a cancellation can come:
        # cancelled here, the chunk stays for the next read (bytes are sacred); the yield after
        # taking it cannot raise.
        await trio.lowlevel.checkpoint_if_cancelled()
        data, flow = self.chunks.popleft()
        self.conn.acknowledge(self.stream_id, flow)
        await trio.lowlevel.cancel_shielded_checkpoint()
        return data

    def discard_body(self) -> None:
        """The app closed ``rack.input``: what still comes is acknowledged and dropped (and
        RST_STREAM NO_ERROR follows the response if the body is still open).  What is queued
        stays, for a partial hijack that takes the body over (the exchange closes ``rack.input``
        just before it); it is released when the stream ends."""
        self.discarding = True

    async def send_file(self, fd: int, offset: int, length: int | None) -> int | None:
        """No zero-copy path on HTTP/2: file bytes go out as DATA frames under flow control, so
        the exchange reads the file in slices (None)."""
        return None

    def write_blocked_since(self) -> float:
        """Always ``inf``: the HTTP/2 driver enforces the write timeout itself — per stream on a
        shut window (RST_STREAM), per connection in its writer — not through the sweeper."""
        return math.inf

    async def send_informational(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        if self.head_sent:
            raise RuntimeError("informational responses must come before the response")
        self._check_open()
        self.conn.send_headers(self.stream_id, [(b":status", b"%d" % status)] + strip_connection_specific(headers))
        await trio.lowlevel.checkpoint()

    def _send_head_now(self, status: int, headers: list[tuple[bytes, bytes]], *, end_stream: bool) -> None:
        self._check_open()
        if self.head_sent:
            raise RuntimeError("the response head was already sent")
        headers = strip_connection_specific(headers)
        for name, value in headers:
            if name == b"content-length":
                self.length = int(value)
        self.head_sent = True
        self.conn.send_headers(self.stream_id, [(b":status", b"%d" % status), *headers], end_stream=end_stream)
        if end_stream:
            self.ended = True

    async def send_head(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self._send_head_now(status, headers, end_stream=False)
        await trio.lowlevel.checkpoint()

    async def send_whole(
        self, status: int, headers: list[tuple[bytes, bytes]], body: Sequence[bytes], length: int, head_only: bool
    ) -> None:
        empty = head_only or length == 0
        self._send_head_now(status, headers, end_stream=empty)
        if empty:
            await trio.lowlevel.checkpoint()
            return
        chunks = [chunk for chunk in body if chunk]
        for i, chunk in enumerate(chunks):
            await self._send(chunk, end_stream=i == len(chunks) - 1)
        self.sent = length
        self._end_stream()

    async def send_data(self, data: bytes) -> None:
        if self.ended:
            raise trio.ClosedResourceError("the response is already complete")
        if not self.head_sent:
            raise RuntimeError("send_head first")
        if not data:
            await trio.lowlevel.checkpoint()
            return
        if self.length is not None and self.sent + len(data) > self.length:
            raise AppError(f"response body is longer than its content-length {self.length}")
        self.sent += len(data)
        if self.head_only:
            await trio.lowlevel.checkpoint()
            return
        await self._send(data)

    def set_trailers(self, trailers: list[tuple[bytes, bytes]]) -> None:
        """Trailers for :meth:`end` (an empty list: none); raises once the response ended."""
        if self.ended:
            raise trio.ClosedResourceError("the response is already complete")
        self.trailers = trailers

    async def end(self) -> None:
        """END_STREAM: on the last DATA's stream as an empty DATA frame, or, with trailers, on
        a final HEADERS frame carrying them (RFC 9113 §8.1), after the head and any DATA."""
        if self.ended:
            await trio.lowlevel.checkpoint()
            return
        if self.length is not None and self.sent < self.length and not self.head_only:
            raise AppError(f"response ended short of its content-length ({self.sent} of {self.length} bytes)")
        self._check_open()
        if self.trailers:
            self.ended = True
            self.conn.send_headers(self.stream_id, self.trailers, end_stream=True)
        else:
            self._end_stream()
        await trio.lowlevel.checkpoint()

    async def send_error(self, status: int, body: bytes) -> None:
        if self.head_sent or self.broken is not None:
            await trio.lowlevel.checkpoint()
            return
        from ..state import SERVER_HEADER, date_header

        headers = [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", b"%d" % len(body)),
            (b"date", date_header()),
            SERVER_HEADER,
        ]
        await self.send_whole(status, headers, [body], len(body), self.head_only)

    async def wait_send_all_might_not_block(self) -> None:
        await self.conn.wait_window(self)

    def take_stream(self, leftover: bytes) -> Any:
        raise RuntimeError("a full hijack is impossible on a multiplexed HTTP/2 connection")

    async def start_partial_hijack(
        self, status: int, headers: list[tuple[bytes, bytes]], leftover: bytes = b""
    ) -> trio.abc.Stream:
        headers = [(n, v) for n, v in headers if n != b"content-length"]
        self.discarding = False  # the tunnel reads the request's DATA from here on
        self._send_head_now(status, headers, end_stream=False)
        self.tunnel = TunnelStream(self, leftover)
        await trio.lowlevel.checkpoint()
        return self.tunnel

    def abort(self) -> None:
        if not self.ended and self.broken is None:
            self.ended = True
            self.conn.reset(self.stream_id, ErrorCodes.INTERNAL_ERROR)

    # -------------------------------------------------------------------------- internals

    def _check_open(self) -> None:
        if self.broken is not None:
            raise ClientGone(self.broken)

    def _end_stream(self) -> None:
        if not self.ended:
            self._check_open()
            self.ended = True
            self.conn.end_stream(self.stream_id)

    async def _send(self, data: bytes, *, end_stream: bool = False) -> None:
        """DATA frames under flow control; waits for window, raises ClientGone when reset.

        With ``end_stream`` the last frame carries END_STREAM (no empty frame after it).
        """
        view = memoryview(data)
        pos = 0
        conn = self.conn
        send_data = conn.h2.send_data
        while pos < len(view):
            # as many frames as the window allows in one go (no await between them: the window
            # read is ours until the next checkpoint), then one flush to the writer
            budget = min(await conn.wait_window(self), len(view) - pos)
            frame_size = conn.max_frame_size()
            try:
                while budget > 0:
                    size = min(budget, frame_size)
                    last = end_stream and pos + size == len(view)
                    send_data(self.stream_id, view[pos : pos + size].tobytes(), end_stream=last)
                    pos += size
                    budget -= size
                    if last:
                        self.ended = True
            except H2Error as exc:
                if self.broken is None:  # not the client's doing: h2 refused what we computed
                    log.exception("stream %d: h2 refused DATA", self.stream_id)
                raise ClientGone(f"stream {self.stream_id} can no longer be written: {exc}") from None
            finally:
                conn.flush()


class TunnelStream(trio.abc.Stream):
    """A partial hijack on HTTP/2: ``receive_some`` reads the request's DATA, ``send_all`` sends
    response DATA, ``aclose`` ends the stream with END_STREAM.  The connection goes on."""

    def __init__(self, sink: H2Stream, leftover: bytes = b"") -> None:
        self._sink = sink
        self._leftover = leftover  # request body rack.input had read but the app had not
        self._closed = False
        self._send_busy = Busy("sending on this stream")
        self._receive_busy = Busy("receiving on this stream")

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._closed:
            raise trio.ClosedResourceError("the stream is closed")
        with self._send_busy:
            if self._sink.ended:
                raise trio.ClosedResourceError("the stream was ended")
            if data:
                await self._sink._send(bytes(data))
            else:
                await trio.lowlevel.checkpoint()

    async def wait_send_all_might_not_block(self) -> None:
        with self._send_busy:
            await self._sink.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._closed:
            raise trio.ClosedResourceError("the stream is closed")
        if max_bytes is not None and max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        with self._receive_busy:
            if not self._leftover:
                try:
                    self._leftover = await self._sink.receive_body(bounded=False)
                except RequestBodyError as exc:
                    raise trio.BrokenResourceError(str(exc)) from None
                if not self._leftover:
                    return b""
            data = self._leftover
            if max_bytes is not None and len(data) > max_bytes:
                self._leftover = data[max_bytes:]
                return data[:max_bytes]
            self._leftover = b""
            return data

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            sink = self._sink
            if not sink.ended and sink.broken is None:
                sink.ended = True
                sink.conn.end_stream(sink.stream_id)
        await trio.lowlevel.checkpoint()
