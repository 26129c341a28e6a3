"""Test helpers: the real connection loop over an in-memory stream pair.

Like httpx's ``ASGITransport``, the point is to test apps (and the server) through the real
code path, minus sockets::

    async with memory_connection(app) as client:
        response = await client.request("GET", "/")
        assert response.status == 200

``client.stream`` is the raw client end, for tests that write bytes by hand.  ``protocol``
names the wire protocol (:data:`PROTOCOLS`), so a contract test parametrized over it runs
unchanged on each.  :func:`serve_stream` runs the server side over a stream of the caller's
(a lockstep pair, a fuzzer's), and :class:`ServerState` is the shared per-server state a test
may build to share between connections or to watch (``state.active``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import h11
import trio
import trio.testing

from ..app.env import ConnInfo
from ..config import Limits
from ..state import ServerState
from ._response import TestResponse
from ._serve import PROTOCOLS, serve_stream

__all__ = [
    "PROTOCOLS",
    "ConnInfo",
    "MemoryClient",
    "ServerState",
    "TestResponse",
    "memory_connection",
    "read_until_closed",
    "serve_stream",
]




class MemoryClient:
    """An h11 client over the client end of the pair."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.h11 = h11.Connection(h11.CLIENT)

    async def request(
        self,
        method: str,
        target: str,
        *,
        headers: Sequence[tuple[str, str]] = (),
        body: bytes | None = None,
    ) -> TestResponse:
        """Send one request and read its whole response (keep-alive aware)."""
        if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
            self.h11.start_next_cycle()
        hdrs = [("host", "test")] + list(headers)
        if body is not None and not any(k.lower() in ("content-length", "transfer-encoding") for k, _ in hdrs):
            hdrs.append(("content-length", str(len(body))))
        data = self.h11.send(h11.Request(method=method, target=target, headers=hdrs))
        if body:
            data += self.h11.send(h11.Data(data=body))
        data += self.h11.send(h11.EndOfMessage())
        await self.stream.send_all(data)
        return await self.read_response()

    async def read_response(self) -> TestResponse:
        informational = []
        response: h11.Response | None = None
        chunks = []
        while True:
            event = self.h11.next_event()
            if event is h11.NEED_DATA:
                self.h11.receive_data(bytes(await self.stream.receive_some(65536)))
                continue
            if type(event) is h11.InformationalResponse:
                informational.append(event.status_code)
            elif type(event) is h11.Response:
                response = event
            elif type(event) is h11.Data:
                chunks.append(bytes(event.data))
            elif type(event) in (h11.EndOfMessage, h11.ConnectionClosed):
                break
        assert response is not None
        return TestResponse(
            status=response.status_code,
            headers=[(k.decode(), v.decode("latin-1")) for k, v in response.headers],
            body=b"".join(chunks),
            informational=informational,
        )


async def read_until_closed(stream: trio.abc.ReceiveStream) -> bytes:
    """Everything the peer sends until it closes."""
    parts = []
    while data := await stream.receive_some(65536):
        parts.append(data)
    return b"".join(parts)


@asynccontextmanager
async def memory_connection(
    app: Any,
    *,
    limits: Limits | None = None,
    scheme: str = "http",
    state: ServerState | None = None,
    protocol: str = "http1",
    lint: bool = False,
    http1_parser: str | None = None,
) -> AsyncIterator[MemoryClient]:
    """Serve ``app`` over one in-memory connection speaking ``protocol``; yield its client.

    ``http1_parser`` picks the HTTP/1 parser ("h11", "httptools", "auto"); None: the state's
    (h11 for a state made here), unless the test run forces one (``_serve.HTTP1_PARSER_OVERRIDE``).

    ``lint=True`` runs the app under :class:`trio_rack.lint.Lint`: a broken rule of the spec
    (by the server's env or by the app) is the app's failure, a 500 with the rule in the log.

    Resource handling: on exit the connection task is cancelled and both ends are closed.
    """
    if protocol == "http2":
        from .h2 import memory_h2_connection

        async with memory_h2_connection(app, limits=limits, scheme=scheme, state=state) as h2client:
            yield h2client  # type: ignore[misc]  # the same request()/read_response() shape
        return
    client, server = trio.testing.memory_stream_pair()
    if lint:
        from ..lint import Lint

        if state is not None:
            raise ValueError("lint=True wraps the app: pass the app, not a ServerState")
        app = Lint(app)
    state = state or ServerState(app, limits or Limits(), access_log=False)
    info = ConnInfo(scheme, ("testserver", 80), ("127.0.0.1", 12345))

    async def run_server() -> None:
        try:
            await serve_stream(server, state, protocol=protocol, info=info, http1_parser=http1_parser)
        finally:
            await trio.aclose_forcefully(server)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_server)
        try:
            yield MemoryClient(client)
        finally:
            nursery.cancel_scope.cancel()
            # Shielded: a checkpoint in the now-cancelled scope would raise Cancelled, which
            # would replace the exception the ``async with`` body raised (a failing assert),
            # and the nursery would then swallow it.
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(client)



def __getattr__(name: str) -> Any:
    # ``Transport`` (trio_rack.testing.transport) needs httpx, a test-only dependency: imported
    # on first use, so memory_connection works without httpx installed.
    if name == "Transport":
        from .transport import Transport

        return Transport
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
