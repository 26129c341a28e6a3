"""An HTTP/2 test client over an in-memory stream: h2 (client side) against the real server.

:class:`H2MemoryClient` has the shape of :class:`trio_rack.testing.MemoryClient` —
``request()`` and ``read_response()`` returning a :class:`~trio_rack.testing.TestResponse` — so
the contract tests run over both protocols, plus what only HTTP/2 has: :meth:`start_request`
and :meth:`read_response` by stream id (multiplexing), :meth:`reset` (RST_STREAM), and
:meth:`send_raw` / ``self.h2`` for protocol tests that write frames by hand.

    async with memory_h2_connection(app) as client:
        response = await client.request("GET", "/")

Resource handling: :func:`memory_h2_connection` cancels the server task and closes both ends.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings
import trio
import trio.testing

from ..app.env import ConnInfo
from ..config import Limits
from ..state import ServerState
from ._response import TestResponse

__all__ = ["H2MemoryClient", "memory_h2_connection", "StreamResult"]


@dataclass
class StreamResult:
    """Everything the client saw on one stream."""

    status: int | None = None
    headers: list[tuple[str, str]] = field(default_factory=list)
    informational: list[int] = field(default_factory=list)
    informational_headers: list[list[tuple[str, str]]] = field(default_factory=list)
    chunks: list[bytes] = field(default_factory=list)
    trailers: list[tuple[str, str]] = field(default_factory=list)
    ended: bool = False
    reset: int | None = None  # the error code of a RST_STREAM from the server


def _text(headers: Any) -> list[tuple[str, str]]:
    return [(bytes(k).decode(), bytes(v).decode("latin-1")) for k, v in headers]


class H2MemoryClient:
    """An h2 client on ``stream``; one instance per connection."""

    def __init__(self, stream: trio.abc.Stream, *, settings: dict[int, int] | None = None) -> None:
        self.stream = stream
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.results: dict[int, StreamResult] = {}
        self.goaway: h2.events.ConnectionTerminated | None = None
        self.closed = False
        self.events: list[Any] = []
        self._started = False
        self._buffer = b""
        self._settings = settings or {}
        #: Set when the server's connection task has returned (memory_h2_connection).
        self.server_done = trio.Event()

    async def _start(self) -> None:
        if not self._started:
            self._started = True
            self.h2.initiate_connection()
            if self._settings:
                self.h2.update_settings(self._settings)
            await self.flush()

    async def flush(self) -> None:
        data = self.h2.data_to_send()
        if data:
            await self.stream.send_all(data)

    async def send_raw(self, data: bytes) -> None:
        """Bytes on the wire as they are (after the client's preface and SETTINGS)."""
        await self._start()
        await self.stream.send_all(data)

    async def start_request(
        self,
        method: str,
        target: str,
        *,
        headers: Sequence[tuple[str, str]] = (),
        body: bytes | None = None,
        end_stream: bool = True,
        authority: str | None = "test",
        scheme: str = "http",
        protocol: str | None = None,
    ) -> int:
        """Open a stream with a request; returns its id.  ``end_stream=False`` keeps the body open;
        ``authority=None`` sends no ``:authority`` (a ``host`` field in ``headers`` may stand in)."""
        await self._start()
        sid = self.h2.get_next_available_stream_id()
        pseudo = [(":method", method)] + ([(":authority", authority)] if authority is not None else [])
        if method != "CONNECT" or protocol is not None:
            pseudo += [(":scheme", scheme), (":path", target)]
        if protocol is not None:
            pseudo.append((":protocol", protocol))
        all_headers = [(k.encode(), v.encode()) for k, v in pseudo + list(headers)]
        self.results[sid] = StreamResult()
        no_body = not body and end_stream
        self.h2.send_headers(sid, all_headers, end_stream=no_body)
        if body:
            await self.flush()
            await self.send_body(sid, body, end_stream=end_stream)
        await self.flush()
        return sid

    async def send_body(self, sid: int, data: bytes, *, end_stream: bool = False) -> None:
        """Request DATA on ``sid``, waiting for window like a real client."""
        view = memoryview(data)
        pos = 0
        while pos < len(view):
            window = self.h2.local_flow_control_window(sid)
            if window <= 0:
                await self._receive_once()
                continue
            size = min(window, self.h2.max_outbound_frame_size, len(view) - pos)
            self.h2.send_data(sid, view[pos : pos + size].tobytes())
            pos += size
            await self.flush()
        if end_stream:
            self.h2.end_stream(sid)
        await self.flush()

    async def reset(self, sid: int, code: int = 8) -> None:
        """RST_STREAM (CANCEL by default)."""
        self.h2.reset_stream(sid, code)
        await self.flush()

    async def request(
        self,
        method: str,
        target: str,
        *,
        headers: Sequence[tuple[str, str]] = (),
        body: bytes | None = None,
    ) -> TestResponse:
        """Send one request on a new stream and read its whole response."""
        hdrs = [(k.lower(), v) for k, v in headers if k.lower() != "host"]
        if body is not None and not any(k == "content-length" for k, _ in hdrs):
            hdrs.append(("content-length", str(len(body))))  # as MemoryClient (and browsers) do
        sid = await self.start_request(method, target, headers=hdrs, body=body)
        return await self.read_response(sid)

    async def _receive_once(self) -> None:
        if self.closed:
            raise trio.BrokenResourceError("the server closed the connection")
        try:
            data = await self.stream.receive_some(65536)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            data = b""
        if not data:
            self.closed = True
            return
        # One frame at a time, so that a GOAWAY's effect on h2's state (see _handle) is undone
        # before the frames after it in the same read.
        self._buffer += data
        while len(self._buffer) >= 9:
            end = 9 + int.from_bytes(self._buffer[:3], "big")
            if len(self._buffer) < end:
                break
            frame, self._buffer = bytes(self._buffer[:end]), self._buffer[end:]
            for event in self.h2.receive_data(frame):
                self.events.append(event)
                self._handle(event)
        await self.flush()

    def _handle(self, event: Any) -> None:
        sid = getattr(event, "stream_id", None)
        result = self.results.get(sid) if sid else None
        if isinstance(event, h2.events.ResponseReceived) and result is not None:
            headers = _text(event.headers)
            result.status = int(dict(headers)[":status"])
            result.headers = [(k, v) for k, v in headers if not k.startswith(":")]
        elif isinstance(event, h2.events.InformationalResponseReceived) and result is not None:
            headers = _text(event.headers)
            result.informational.append(int(dict(headers)[":status"]))
            result.informational_headers.append([(k, v) for k, v in headers if not k.startswith(":")])
        elif isinstance(event, h2.events.DataReceived):
            if result is not None:
                result.chunks.append(bytes(event.data))
            if event.flow_controlled_length:
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.TrailersReceived) and result is not None:
            result.trailers = _text(event.headers)
        elif isinstance(event, h2.events.StreamEnded) and result is not None:
            result.ended = True
        elif isinstance(event, h2.events.StreamReset) and result is not None:
            result.reset = int(event.error_code)
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.goaway = event
            # h2 (as a client) takes any GOAWAY as the end of the connection; RFC 9113 §6.8 lets
            # the streams up to last_stream_id complete, so the harness keeps reading them.
            self.h2.state_machine.state = h2.connection.ConnectionState.CLIENT_OPEN

    async def read_stream(self, sid: int) -> StreamResult:
        """Read until ``sid`` ended or was reset, or the connection closed."""
        result = self.results[sid]
        while not (result.ended or result.reset is not None or self.closed):
            await self._receive_once()
        return result

    async def read_until(self, predicate: Any) -> None:
        """Read until ``predicate()`` is true or the connection closed."""
        await self._start()
        while not predicate() and not self.closed:
            await self._receive_once()

    async def read_response(self, sid: int | None = None) -> TestResponse:
        """The response on ``sid`` (default: the latest stream)."""
        if sid is None:
            sid = max(self.results)
        result = await self.read_stream(sid)
        if result.status is None:
            raise AssertionError(f"stream {sid}: no response (reset {result.reset}, goaway {self.goaway})")
        return TestResponse(
            status=result.status,
            headers=result.headers,
            body=b"".join(result.chunks),
            informational=result.informational,
        )


@asynccontextmanager
async def memory_h2_connection(
    app: Any,
    *,
    limits: Limits | None = None,
    scheme: str = "http",
    state: ServerState | None = None,
    settings: dict[int, int] | None = None,
    lockstep: bool = False,
) -> AsyncIterator[H2MemoryClient]:
    """Run one :class:`~trio_rack.http2.connection.H2Connection` for ``app`` over a memory pair.

    ``lockstep=True`` uses an unbuffered pair: a write waits until the other side reads, as a
    socket with full buffers does (for tests of clients that stop reading).

    Resource handling: on exit the connection task is cancelled and both ends are closed.
    """
    from ..http2.connection import H2Connection

    pair = trio.testing.lockstep_stream_pair if lockstep else trio.testing.memory_stream_pair
    client, server = pair()
    state = state or ServerState(app, limits or Limits(), access_log=False)
    info = ConnInfo(scheme, ("testserver", 80), ("127.0.0.1", 12345))
    h2client = H2MemoryClient(client, settings=settings)

    async def run_server() -> None:
        try:
            await H2Connection(server, state, info).run()
        finally:
            h2client.server_done.set()
            await trio.aclose_forcefully(server)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_server)
        try:
            yield h2client
        finally:
            # Close first, cancel last: an await after cancel() would raise Cancelled here,
            # which replaces the body's exception (a failed assert) and the nursery absorbs it.
            await trio.aclose_forcefully(client)
            nursery.cancel_scope.cancel()
