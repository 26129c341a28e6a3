"""Shared helpers for the ASGI/WSGI tests (not a test module).

``install_request_nursery_shim()``: until the protocol-neutral request cycle
(``trio_rack.app.exchange``) is on this branch, the HTTP/1 connection does not give apps the
request-scoped nursery the adapters ask for with ``trio_rack_request_nursery``.  The shim
patches :class:`~trio_rack.http1.connection.HTTPConnection` in-process to provide exactly the
documented contract — ``env["trio_rack.nursery"]`` (opened around the app call and the
response, waited for after it), ``env["trio_rack.disconnected"]`` (set when the liveness
sweeper cancels the request), plus ``trio_rack.request_head``, ``trio_rack.conn_info`` and
``trio_rack.tls``.  Once the exchange exists the shim does nothing: the tests then run on the
server's own implementation.
"""

from __future__ import annotations

import functools
import importlib.util
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import trio

from e2e_support import wait_until

_installed = False


@dataclass(slots=True)
class _Head:
    method: bytes
    path: bytes
    query: bytes
    http_version: str
    headers: list[tuple[bytes, bytes]]


def server_has_request_nursery() -> bool:
    return importlib.util.find_spec("trio_rack.app.exchange") is not None


def install_request_nursery_shim() -> None:
    global _installed
    if _installed or server_has_request_nursery():
        return
    _installed = True
    from trio_rack.http1.connection import HTTPConnection

    nurseries: dict[int, trio.Nursery] = {}
    events: dict[int, trio.Event] = {}
    serve_request = HTTPConnection._serve_request
    make_env = HTTPConnection._make_env
    cancel_app = HTTPConnection.cancel_app

    async def _serve_request(self: Any, request: Any) -> Any:
        if not getattr(self.state.app, "trio_rack_request_nursery", False):
            return await serve_request(self, request)
        async with trio.open_nursery() as nursery:
            nurseries[id(self)] = nursery
            events[id(self)] = trio.Event()
            try:
                return await serve_request(self, request)
            finally:
                del nurseries[id(self)]
                events.pop(id(self), None)

    def _make_env(self: Any, request: Any) -> dict[str, Any]:
        env: dict[str, Any] = make_env(self, request)
        nursery = nurseries.get(id(self))
        if nursery is not None:
            env["trio_rack.nursery"] = nursery
            env["trio_rack.disconnected"] = events[id(self)]
            target = request.target
            path, _, query = target.partition(b"?")
            if not target.startswith(b"/"):
                path = env["PATH_INFO"].encode("latin-1")
            headers = [(bytes(n).lower(), bytes(v)) for n, v in request.headers.raw_items()]
            env["trio_rack.request_head"] = _Head(request.method, path, query, request.http_version.decode(), headers)
            env["trio_rack.conn_info"] = self.info
            if isinstance(self.transport, trio.SSLStream):
                env["trio_rack.tls"] = self.transport
        return env

    def _cancel_app(self: Any) -> None:
        event = events.get(id(self))
        if event is not None:
            event.set()
        cancel_app(self)

    HTTPConnection._serve_request = _serve_request  # type: ignore[method-assign]
    HTTPConnection._make_env = _make_env  # type: ignore[method-assign]
    HTTPConnection.cancel_app = _cancel_app  # type: ignore[method-assign]


# ------------------------------------------------------------------------ serving in-process


@asynccontextmanager
async def serving(app: Any, *, tls: Any = None, **kwargs: Any) -> AsyncIterator[str]:
    """Serve ``app`` with ``trio_rack.serve`` on 127.0.0.1 (a free port); yield the base URL.

    When the block ends the server shuts down gracefully (unless the caller passed its own
    ``shutdown_trigger``: then it is cancelled); ``kwargs`` go to ``serve`` (interface=...).
    """
    import trio_rack

    install_request_nursery_shim()
    scheme = "https" if tls is not None else "http"
    options: dict[str, Any] = {"bind": f"{scheme}://127.0.0.1:0", "access_log": False, **kwargs}
    if tls is not None:
        options.update(cert=tls.cert_pem, key=tls.key_pem)
    own_trigger = options.get("shutdown_trigger") is None
    if own_trigger:
        options["shutdown_trigger"] = trio.Event()
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(functools.partial(trio_rack.serve, app, **options))
        yield str(binds[0])
        if own_trigger:  # a graceful shutdown, so that lifespan shutdown runs too
            options["shutdown_trigger"].set()
            nursery.cancel_scope.deadline = trio.current_time() + 15
        else:
            nursery.cancel_scope.cancel()


async def eventually(condition: Any) -> None:
    """Wait until ``condition()`` holds (state set by an app, a thread or a framework's hook,
    which the test cannot hand an Event to); fail after 5 seconds."""
    with trio.fail_after(5):
        await wait_until(condition, poll=0.01)  # the condition belongs to code we do not control


# ------------------------------------------------------------------------ HTTP/2 clients

#: The wire protocols the framework suites run over (httpx speaks both); the same names as
#: ``trio_rack.testing.PROTOCOLS`` (the ``protocol`` fixture), so either works with
#: :func:`httpx_options`.
WIRES = ["http1", "http2"]


def httpx_options(wire: str) -> dict[str, Any]:
    """httpx over HTTP/1.1, or HTTP/2 only: prior knowledge (h2c) on a plain bind, ALPN ``h2``
    over TLS — so a server that fell back to HTTP/1.1 fails the request instead of passing."""
    return {"http1": False, "http2": True} if wire == "http2" else {}


def http_version(wire: str) -> str:
    """What httpx's ``response.http_version`` must say on ``wire``."""
    return "HTTP/2" if wire == "http2" else "HTTP/1.1"


@asynccontextmanager
async def h2_client(url: str, context: ssl.SSLContext | None = None) -> AsyncIterator[Any]:
    """The h2 library as a client (:class:`trio_rack.testing.h2.H2MemoryClient`, whose h2 state
    machine works over any stream) over a real TCP socket to ``url``: prior knowledge on a
    plain bind, ALPN ``h2`` over TLS (asserted).  For what httpx cannot do: read trailers,
    reset one stream, RFC 8441 websockets.  Closes the socket on exit."""
    from trio_rack.testing.h2 import H2MemoryClient

    host, port = url.split("://", 1)[1].rsplit(":", 1)
    tcp = await trio.open_tcp_stream(host, int(port))
    stream: trio.abc.Stream = tcp
    if context is not None:
        context.set_alpn_protocols(["h2"])
        tls = trio.SSLStream(tcp, context, server_hostname=host)
        await tls.do_handshake()
        assert tls.selected_alpn_protocol() == "h2"
        stream = tls
    async with stream:
        yield H2MemoryClient(stream)
