"""Serve ASGI 3 apps (HTTP, WebSocket, lifespan) on trio-rack.

:class:`ASGIAdapter` wraps an ASGI app ``app(scope, receive, send)`` into a trio-rack app.  It
is an ordinary rack app object with one extra attribute, ``trio_rack_request_nursery = True``,
which asks the server for a request-scoped nursery (``env["trio_rack.nursery"]``): the ASGI
app runs as a task there, because it decides the response head and then keeps running (the
body, background tasks) after the rack call has returned the head.  The server waits for that
task after the response ended and cancels it with the request (client gone, timeout,
shutdown past the grace period): the ASGI app inherits every guarantee of a native app.

Pieces: :mod:`.scope` (the ``http``/``websocket`` scopes, the ``tls`` extension),
:mod:`.http` (the message state machine of one request), :mod:`.websocket` (websockets on
:mod:`trio_rack.websocket`), :mod:`.lifespan` (startup/shutdown and the shared ``state``).

Extensions offered in ``scope["extensions"]``: ``http.response.pathsend``,
``http.response.trailers`` (HTTP/2 only), ``tls`` (https),
``websocket.http.response`` (websocket scopes), and ours: ``trio_rack.hijack`` — a callable
returning the raw connection as a ``trio.abc.Stream`` (HTTP/1 only; the server closes it when
the app returns) — and ``trio_rack.shutdown``, the graceful-shutdown ``trio.Event``.
"""

from __future__ import annotations

from typing import Any

from .. import websocket as _websocket
from .http import ASGIApp, ASGIMessageError, ClientDisconnected, HTTPCycle
from .lifespan import LIFESPAN_MODES, Lifespan, LifespanFailure
from .scope import http_scope, tls_extension, tls_stream, websocket_scope
from .websocket import serve_websocket

__all__ = [
    "ASGIAdapter",
    "ASGIMessageError",
    "ClientDisconnected",
    "LIFESPAN_MODES",
    "Lifespan",
    "LifespanFailure",
]


class ASGIAdapter:
    """A trio-rack app that serves the ASGI 3 app ``app``.

    ``root_path`` is the scope's ``root_path`` (``--root-path``); ``lifespan``, if given, is
    the :class:`Lifespan` whose ``state`` is copied into each scope.
    """

    #: Ask the server for ``env["trio_rack.nursery"]`` (see the module docstring).
    trio_rack_request_nursery = True

    def __init__(self, app: ASGIApp, *, root_path: str = "", lifespan: Lifespan | None = None) -> None:
        self.app = app
        self.root_path = root_path.rstrip("/")
        self.lifespan = lifespan

    def __repr__(self) -> str:
        return f"ASGIAdapter({self.app!r})"

    def _extensions(self, env: dict[str, Any]) -> dict[str, Any]:
        extensions: dict[str, Any] = {}
        shutdown = env.get("trio_rack.shutdown")
        if shutdown is not None:
            extensions["trio_rack.shutdown"] = shutdown
        tls = tls_stream(env)
        if tls is not None:
            info = tls_extension(tls)
            if info is not None:
                extensions["tls"] = info
        return extensions

    async def __call__(self, env: dict[str, Any]) -> tuple[int, Any, Any]:
        state = self.lifespan.state if self.lifespan is not None and self.lifespan.active else None
        if ("HTTP_UPGRADE" in env or "trio_rack.protocol" in env) and _websocket.is_websocket(env):
            scope = websocket_scope(env, root_path=self.root_path, state=state)
            scope["extensions"] = self._extensions(env)
            scope["extensions"]["websocket.http.response"] = {}
            return await serve_websocket(self.app, env, scope)
        nursery = env.get("trio_rack.nursery")
        if nursery is None:
            raise RuntimeError(
                "this server gives no env['trio_rack.nursery'] (trio_rack_request_nursery): cannot run an ASGI app"
            )
        scope = http_scope(env, root_path=self.root_path, state=state)
        cycle = HTTPCycle(env, scope)
        extensions = self._extensions(env)
        extensions["http.response.pathsend"] = {}
        if cycle.set_trailers is not None:  # HTTP/2: the sink can end a response with trailers
            extensions["http.response.trailers"] = {}
        if cycle.hijack is not None:
            extensions["trio_rack.hijack"] = cycle.hijack
        scope["extensions"] = extensions
        nursery.start_soon(cycle.run_app, self.app)
        return await cycle.response()
