"""The server side of one in-memory (or caller-provided) connection, for the test helpers."""

from __future__ import annotations

import trio

from ..app.env import ConnInfo
from ..http1.connection import HTTPConnection
from ..http1.parsers import resolve_parser
from ..server.liveness import run_liveness_sweeper
from ..state import ServerState

__all__ = ["HTTP1_PARSER_OVERRIDE", "MEMORY_INFO", "PROTOCOLS", "serve_stream"]

#: The wire protocols :func:`memory_connection` and :func:`serve_stream` can speak.
PROTOCOLS = ("http1", "http2")
#: The HTTP/1 parser a test run forces on every HTTP/1 connection these helpers serve, over the
#: state's own (None: the state's).  The test suite's parser parametrization sets it, so a whole
#: contract test runs on h11 and on httptools without each test passing ``http1_parser=``.
HTTP1_PARSER_OVERRIDE: str | None = None
#: The connection info memory connections report: a test server and a loopback client.
MEMORY_INFO = ConnInfo("http", ("testserver", 80), ("127.0.0.1", 12345))


async def serve_stream(
    stream: trio.abc.Stream,
    state: ServerState,
    *,
    protocol: str = "http1",
    info: ConnInfo | None = None,
    http1_parser: str | None = None,
) -> None:
    """Serve one connection's worth of requests on ``stream`` until it ends.

    ``http1_parser`` ("h11" or "httptools") overrides the state's parser for this connection.

    Resource handling: ``stream`` stays the caller's to close, as a listener's would.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; one of {', '.join(PROTOCOLS)}")
    async with trio.open_nursery() as nursery:
        # as under serve(): the sweep enforces the write timeout (memory streams have no socket
        # to poll for a hang-up)
        nursery.start_soon(run_liveness_sweeper, state)
        if protocol == "http2":
            from ..http2.connection import H2Connection

            await H2Connection(stream, state, info or MEMORY_INFO).run()
        else:
            parser = http1_parser or HTTP1_PARSER_OVERRIDE
            if parser is not None:
                parser = resolve_parser(parser)
            await HTTPConnection(stream, state, info or MEMORY_INFO, parser).run()
        nursery.cancel_scope.cancel()
