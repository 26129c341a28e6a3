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
