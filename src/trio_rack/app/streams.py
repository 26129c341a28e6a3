"""The three streams an app can hold: request body, streaming response body, hijacked socket.

Each is a thin view onto what lies beneath it, typed by the small protocols below (what it needs:
read body data; send data, end) rather than by any wire protocol's class, so the same streams
serve HTTP/1 and HTTP/2.  The views exist so that the app gets plain ``trio.abc`` streams with trio's
error vocabulary — ``ClosedResourceError`` after close, ``BusyResourceError`` on concurrent use
of one direction, ``BrokenResourceError`` when the client is gone — and so that the server can
close each of them when the app is done, whatever the app did with them.

Resource handling: the app never closes the transport by closing a view, except the hijacked
stream, whose ``aclose()`` closes the connection for good.  The connection closes every view
when the app returns, raises or is cancelled.
"""

from __future__ import annotations

import operator
from typing import Any, Protocol

import trio

from ..errors import RequestBodyError
from . import scopes

__all__ = ["read_all", "BodySink", "BodySource", "Busy", "HijackedStream", "RequestBody", "ResponseStream"]


class BodySource(Protocol):
    """Where a request body comes from (the wire protocol's driver)."""

    async def receive_body(self, size_hint: int | None = None) -> bytes:
        """The next piece of the decoded body, ``b""`` at its end; RequestBodyError on the client's fault.

        ``size_hint`` is what the app's read asked for (None: as much as comes): a source that
        reads big pieces straight from the wire sizes them by it, so that an app reading in
        small pieces does not hold a big piece per upload it is reading."""
        ...

    def discard_body(self) -> None:
        """The app closed ``rack.input``: the rest of the body is not wanted (may be a no-op)."""
        ...


class BodySink(Protocol):
    """Where a streamed response body goes (the request cycle, which frames it through the driver)."""

    async def send_data(self, data: bytes) -> None: ...

    async def end(self) -> None: ...

    async def wait_send_all_might_not_block(self) -> None: ...


class Busy:
    """A one-at-a-time guard that raises trio.BusyResourceError instead of queueing."""

    __slots__ = ("_held", "_what", "_released")

    def __init__(self, what: str) -> None:
        self._held = False
        self._what = what
        #: Made only when someone waits for the holder to leave (:meth:`wait_released`).
        self._released: trio.Event | None = None

    def __enter__(self) -> None:
        if self._held:
            raise trio.BusyResourceError(f"another task is already {self._what}")
        self._held = True

    def __exit__(self, *exc: object) -> None:
        self._held = False
        if self._released is not None:
            self._released.set()
            self._released = None

    @property
    def held(self) -> bool:
        return self._held

    async def wait_released(self) -> None:
        """Until the task holding the guard has left it.  Not a checkpoint when nobody holds
        it: a closing caller goes on to its own I/O at once, even in a cancelled scope."""
        if not self._held:
            return
        if self._released is None:
            self._released = trio.Event()
        await self._released.wait()


class RequestBody(trio.abc.ReceiveStream):
    """``env["rack.input"]``: the decoded request body; ``receive_some()`` gives ``b""`` at its end.

    Chunked uploads arrive de-chunked.  When the client sent ``Expect: 100-continue``, the
    ``100 Continue`` goes out on the first read.  If the client vanishes mid-body, or stalls past
    the body timeout, or exceeds the size limit, ``receive_some`` raises
    ``trio.BrokenResourceError`` and the server answers 400, 408 or 413 if the app lets that
    error propagate before it has started its response.
    """

    __slots__ = ("_source", "_leftover", "_eof", "_closed", "_busy", "_pending", "failure")

    def __init__(self, source: BodySource) -> None:
        self._source = source
        #: The RequestBodyError a read raised, if any: the request cycle answers with its status
        #: if the app lets the error (or one it caused) escape before its response started.
        self.failure: RequestBodyError | None = None
        #: What is left of the piece the source gave last: a memoryview of it once a read took
        #: part, so that a read smaller than the piece copies only what it returns (slicing the
        #: rest off as bytes copied the rest each time: a 1 MiB piece read 64 KiB at a time, as
        #: the ASGI adapter reads, copied 7.5 MiB).  No slot of its own for an offset: every open
        #: request holds its ``rack.input``.
        self._leftover: bytes | memoryview = b""
        self._eof = False
        self._closed = False
        #: Made at the first read: most requests (every GET) never read a body, and every
        #: open request holds its ``rack.input`` (10,000 of them at 10,000 open streams).
        self._busy: Busy | None = None
        #: The scope of a read under way, so that closing the stream wakes its reader.
        self._pending: trio.CancelScope | None = None

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._closed:
            raise trio.ClosedResourceError("the request body stream is closed")
        if max_bytes is not None:
            max_bytes = operator.index(max_bytes)  # TypeError for a float, as trio's streams
            if max_bytes < 1:
                raise ValueError("max_bytes must be >= 1")
        busy = self._busy
        if busy is None:
            busy = self._busy = Busy("reading the request body")
        with busy:
            if not self._leftover:
                if self._eof:
                    await trio.lowlevel.checkpoint()
                    return b""
                fresh = scopes.Fresh()
                pending = self._pending = fresh.scope
                try:
                    with fresh:
                        data = await self._source.receive_body(max_bytes)
                except RequestBodyError as exc:
                    self.failure = exc
                    raise
                finally:
                    self._pending = None
                if pending.cancelled_caught:
                    raise trio.ClosedResourceError("the request body stream was closed during the read")
                if not data:
                    self._eof = True
                    return b""
                self._leftover = data
            left = self._leftover
            if max_bytes is not None and len(left) > max_bytes:
                view = left if type(left) is memoryview else memoryview(left)
                self._leftover = view[max_bytes:]
                return bytes(view[:max_bytes])
            self._leftover = b""
            return left if type(left) is bytes else bytes(left)

    async def read_all(self, limit: int | None = None) -> bytes:
        """Convenience: the whole remaining body (at most ``limit`` bytes, else ValueError)."""
        return await read_all(self, limit)

    def take_leftover(self) -> bytes:
        """Hand over bytes already decoded but not yet read (used by the full hijack)."""
        left, self._leftover = self._leftover, b""
        return left if type(left) is bytes else bytes(left)

    def close(self) -> None:
        """Close the view (a read under way raises ClosedResourceError); the rest of the body is dropped."""
        if self._closed:
            return
        self._closed = True
        if self._pending is not None:
            self._pending.cancel()
        self._source.discard_body()

    async def aclose(self) -> None:
        self.close()
        await trio.lowlevel.checkpoint()


class ResponseStream(trio.abc.Stream):
    """The stream a streaming body ``body(stream)`` gets.

    ``send_all`` writes response body bytes (the server frames them: chunked on HTTP/1.1,
    close-delimited on HTTP/1.0, or exactly ``content-length`` if the app declared one);
    ``receive_some`` reads the rest of the request body; ``aclose`` (or returning) ends the
    response, after which the connection may serve the next request.
    """

    __slots__ = ("_sink", "_input", "_closed", "_busy", "_pending", "_sending", "aborted")

    def __init__(self, sink: BodySink, request_body: RequestBody) -> None:
        self._sink = sink
        self._input = request_body
        self._closed = False
        self._busy = Busy("sending on this stream")
        #: The scope of a send under way, so that closing the stream wakes its sender.
        self._pending: trio.CancelScope | None = None
        #: Whether that is a send (bytes may be half-written) or only a wait for writability.
        self._sending = False
        #: Set when closing interrupted a send: the response cannot end cleanly and is aborted.
        self.aborted = False

    @property
    def closed(self) -> bool:
        return self._closed

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._closed:
            raise trio.ClosedResourceError("the response stream is closed")
        with self._busy:
            with self._interruptible(sending=True) as pending:
                await self._sink.send_data(bytes(data) if type(data) is not bytes else data)
            if pending.cancelled_caught:
                raise trio.ClosedResourceError("the response stream was closed during the send")

    async def wait_send_all_might_not_block(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("the response stream is closed")
        with self._busy:
            with self._interruptible(sending=False) as pending:
                await self._sink.wait_send_all_might_not_block()
            if pending.cancelled_caught:
                raise trio.ClosedResourceError("the response stream was closed during the wait")

    def _interruptible(self, *, sending: bool) -> scopes.Fresh:
        """A fresh scope for one send or wait, entered by the caller (app/scopes.py's short path)."""
        fresh = scopes.Fresh()
        self._pending = fresh.scope
        self._sending = sending
        return fresh

    def _interrupt(self) -> None:
        """Closing while a send waits: wake it; a half-sent body can only be aborted.  Closing
        while a task only waits for writability (nothing half-sent) wakes it, and the response
        can still end cleanly."""
        if self._pending is not None and not self._pending.cancelled_caught:
            self._pending.cancel()
            if self._sending:
                self.aborted = True

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._closed:
            raise trio.ClosedResourceError("the response stream is closed")
        return await self._input.receive_some(max_bytes)

    async def aclose(self) -> None:
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        self._input.close()  # both directions end: reading the request body after it is over
        if self._busy.held:
            self._interrupt()
        if self.aborted:
            await trio.lowlevel.checkpoint()
            return
        await self._busy.wait_released()  # an interrupted wait leaves the sink before the end uses it
        await self._sink.end()

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        """``async with stream:`` ends the response only if the block succeeded.

        When the block raised, ending the response would make a failed body look complete;
        instead the stream is just marked closed and the server aborts the response visibly.
        """
        if exc_type is None:
            await self.aclose()
        else:
            self.close_from_server()

    def close_from_server(self) -> None:
        """Mark closed without sending anything (the server ends or aborts the response)."""
        self._closed = True
        if self._busy.held:
            self._interrupt()


class HijackedStream(trio.abc.Stream):
    """The raw connection, after a partial or full hijack.

    Bytes the server had read past the request head (pipelined requests, a websocket frame sent
    right behind the handshake) come out of ``receive_some`` first: nothing the client sent is
    lost.  TLS is already decrypted.  ``aclose()`` closes the connection; the server calls it for
    the app when the app returns, raises or is cancelled.
    """

    __slots__ = ("transport", "_replay", "_closed", "_recv_busy", "_send_busy")

    def __init__(self, transport: trio.abc.Stream, replay: bytes) -> None:
        self.transport = transport
        self._replay = replay
        self._closed = False
        self._recv_busy = Busy("receiving on this stream")
        self._send_busy = Busy("sending on this stream")

    @property
    def closed(self) -> bool:
        return self._closed

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._closed:
            raise trio.ClosedResourceError("the hijacked stream is closed")
        with self._recv_busy:
            if self._replay:
                await trio.lowlevel.checkpoint()
                data = self._replay
                if max_bytes is not None and len(data) > max_bytes:
                    self._replay = data[max_bytes:]
                    return data[:max_bytes]
                self._replay = b""
                return data
            return bytes(await self.transport.receive_some(max_bytes))

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._closed:
            raise trio.ClosedResourceError("the hijacked stream is closed")
        with self._send_busy:
            await self.transport.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("the hijacked stream is closed")
        await self.transport.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        """Close the connection.  Never raises for a peer that is already gone."""
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        try:
            with trio.move_on_after(1):
                await self.transport.aclose()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await trio.aclose_forcefully(self.transport)

    def __getattr__(self, name: str) -> Any:
        # socket-level extras (getpeername via .socket, SSL info) stay reachable for apps that
        # need them, without making them part of the trio.abc.Stream contract.
        if name in ("socket", "getpeercert", "selected_alpn_protocol", "cipher", "transport_stream"):
            return getattr(self.transport, name)
        raise AttributeError(name)


async def read_all(stream: trio.abc.ReceiveStream, limit: int | None = None) -> bytes:
    """Everything ``stream`` still gives, at most ``limit`` bytes (else ValueError): the body of
    ``rack.input.read_all()``, shared with the views that wrap it (Lint's)."""
    parts = []
    size = 0
    while data := await stream.receive_some():
        size += len(data)
        if limit is not None and size > limit:
            raise ValueError(f"request body exceeds {limit} bytes")
        parts.append(data)
    return b"".join(parts)
