"""One ASGI ``websocket`` connection, on top of :mod:`trio_rack.websocket` (no second
implementation of RFC 6455).

The trio-rack side runs inside the adapter's app call, in the connection's task: it starts the
ASGI app in a nursery of its own, waits for the app's decision, and then

* ``websocket.accept`` → enters ``websocket.accept(env, subprotocols=[chosen], headers=...)``
  (the full hijack and the ``101``, in this task, so the websocket's nursery, with its
  background reader and the tasks its timers start, nests properly) and stays in it until the app ends; the app task
  sends, receives (reading the socket itself while it waits for a message) and closes
  through the :class:`~trio_rack.websocket.WebSocket` object, which any task may use;
* ``websocket.close`` before accepting → an HTTP 403;
* ``websocket.http.response.start``/``.body`` (the denial extension) → that response instead
  of the handshake (its body is buffered, at most :data:`DENIAL_LIMIT` bytes).

The guarantees of :mod:`trio_rack.websocket` carry over: a frame pipelined behind the handshake
reaches the app (the hijacked stream replays it), the peer's close code is what the app's
``websocket.disconnect`` says (1005 when its close frame had none, 1006 only when no close
frame came), and cancellation closes with 1001.
"""

from __future__ import annotations

import enum
import logging
from typing import Any

import trio

from .. import websocket
from .http import ASGIApp, ASGIMessageError, ClientDisconnected, _rack_headers, asyncio_failure

__all__ = ["WebSocketCycle", "serve_websocket"]

log = logging.getLogger("trio_rack.error")

DENIAL_LIMIT = 1024 * 1024
_FORBIDDEN = (403, {"content-type": "text/plain; charset=utf-8"}, [b"403 Forbidden\n"])


class _Decision(enum.Enum):
    PENDING = "pending"
    ACCEPT = "accept"
    CLOSE = "close"
    DENY = "deny"
    ENDED = "ended"


class WebSocketCycle:
    """The ``receive``/``send`` pair of one ASGI websocket, and its translation."""

    def __init__(self, env: dict[str, Any], scope: dict[str, Any]) -> None:
        self.env = env
        self.scope = scope
        self.decision = _Decision.PENDING
        self.decided = trio.Event()
        self.accepted = trio.Event()  # the 101 went out (or the handshake failed): ws is set
        self.ws: websocket.WebSocket | None = None
        self.subprotocol: str | None = None
        self.accept_headers: dict[str, str] = {}
        self.denial_status = 403
        self.denial_headers: dict[str, Any] = {}
        self.denial_body: list[bytes] = []
        self._denial_size = 0
        self.denial_done = trio.Event()
        self._connected = False
        self._closed = False  # the app sent websocket.close, or the peer's close was delivered
        self.app_done = trio.Event()
        self.error: BaseException | None = None

    async def run_app(self, app: ASGIApp) -> None:
        try:
            await app(self.scope, self.receive, self.send)
        except Exception as exc:
            self.error = exc
        finally:
            self.app_done.set()
            if self.decision is _Decision.PENDING:
                self.decision = _Decision.ENDED
            self.decided.set()
            self.denial_done.set()

    # ------------------------------------------------------------------------------ receive

    async def receive(self) -> dict[str, Any]:
        if not self._connected:
            self._connected = True
            await trio.lowlevel.checkpoint()
            return {"type": "websocket.connect"}
        if self.decision is _Decision.PENDING:
            await self.decided.wait()
        if self.decision is _Decision.ACCEPT:
            await self.accepted.wait()
            ws = self.ws
            assert ws is not None
            try:
                message = await ws.get_message()
            except websocket.ConnectionClosed:
                self._closed = True
                return {"type": "websocket.disconnect", "code": ws.close_code or 1006, "reason": ws.close_reason or ""}
            if isinstance(message, str):
                return {"type": "websocket.receive", "text": message}
            return {"type": "websocket.receive", "bytes": message}
        await trio.lowlevel.checkpoint()
        return {"type": "websocket.disconnect", "code": 1006, "reason": ""}

    # --------------------------------------------------------------------------------- send

    async def send(self, message: dict[str, Any]) -> None:
        kind = message.get("type") if isinstance(message, dict) else None
        if self.decision is _Decision.PENDING:
            if kind == "websocket.accept":
                headers = _rack_headers(message.get("headers", ()), where="'websocket.accept'")
                self.accept_headers = {k: v if isinstance(v, str) else ", ".join(v) for k, v in headers.items()}
                self.subprotocol = message.get("subprotocol")
                self._decide(_Decision.ACCEPT)
                await self.accepted.wait()
                return
            if kind == "websocket.close":
                self._closed = True
                self._decide(_Decision.CLOSE)
                await trio.lowlevel.checkpoint()
                return
            if kind == "websocket.http.response.start":
                status = message.get("status")
                if type(status) is not int:
                    raise ASGIMessageError(
                        f"'websocket.http.response.start': 'status' must be an int, got {status!r:.40}"
                    )
                self.denial_status = status
                self.denial_headers = _rack_headers(message.get("headers", ()), where="'websocket.http.response.start'")
                self._decide(_Decision.DENY)
                await trio.lowlevel.checkpoint()
                return
            raise ASGIMessageError(
                f"{kind!r} before 'websocket.accept' (or websocket.close / websocket.http.response.start)"
            )
        if self.decision is _Decision.DENY:
            if kind != "websocket.http.response.body" or self.denial_done.is_set():
                raise ASGIMessageError(f"{kind!r} during (or after) a websocket.http.response denial")
            body = bytes(message.get("body", b""))
            self._denial_size += len(body)
            if self._denial_size > DENIAL_LIMIT:
                raise ASGIMessageError(f"'websocket.http.response.body': denial body over {DENIAL_LIMIT} bytes")
            self.denial_body.append(body)
            if not message.get("more_body", False):
                self.denial_done.set()
            await trio.lowlevel.checkpoint()
            return
        if self.decision is _Decision.ACCEPT:
            ws = self.ws
            assert ws is not None
            if kind == "websocket.send":
                text, data = message.get("text"), message.get("bytes")
                if (text is None) == (data is None):
                    raise ASGIMessageError("'websocket.send' needs exactly one of 'text' and 'bytes'")
                if self._closed or ws.closed:
                    raise ClientDisconnected("cannot send 'websocket.send': the websocket is closed")
                try:
                    await ws.send_message(str(text) if text is not None else bytes(data or b""))
                except websocket.ConnectionClosed:
                    raise ClientDisconnected("cannot send 'websocket.send': the websocket is closed") from None
                return
            if kind == "websocket.close":
                if self._closed and ws.closed:
                    await trio.lowlevel.checkpoint()
                    return
                self._closed = True
                await ws.aclose(int(message.get("code") or 1000), str(message.get("reason") or ""))
                return
            if kind == "websocket.accept":
                raise ASGIMessageError("'websocket.accept' sent twice")
            raise ASGIMessageError(f"unknown ASGI message type {kind!r} for a websocket scope")
        raise ClientDisconnected(f"cannot send {kind!r}: the websocket was closed before it was accepted")

    def _decide(self, decision: _Decision) -> None:
        self.decision = decision
        self.decided.set()


async def serve_websocket(app: ASGIApp, env: dict[str, Any], scope: dict[str, Any]) -> tuple[int, Any, Any]:
    """Run the ASGI app for an upgrade request; return the trio-rack triple.

    Resource handling: the websocket (and the hijacked socket under it) is closed when this
    returns; the ASGI app task ends before it does.
    """
    try:
        websocket.accept(env)  # validate the upgrade before the app sees anything
    except websocket.HandshakeError as refusal:
        return refusal.response
    cycle = WebSocketCycle(env, scope)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(cycle.run_app, app)
        await cycle.decided.wait()
        if cycle.decision is _Decision.ACCEPT:
            context = websocket.accept(
                env, subprotocols=[cycle.subprotocol] if cycle.subprotocol else (), headers=cycle.accept_headers
            )
            async with context as ws:
                cycle.ws = ws
                cycle.accepted.set()
                await cycle.app_done.wait()
                if cycle.error is not None and not ws.closed:
                    await ws.aclose(1011, "internal error")
            if cycle.error is not None:
                _log_error(cycle.error, "after accepting the websocket")
            return -1, {}, []
        if cycle.decision is _Decision.DENY:
            await cycle.denial_done.wait()
            if cycle.error is None:
                return cycle.denial_status, cycle.denial_headers, cycle.denial_body
    if cycle.error is not None:
        _log_error(cycle.error, "before accepting the websocket")
        return 500, {"content-type": "text/plain; charset=utf-8"}, [b"500 Internal Server Error\n"]
    return _FORBIDDEN


def _log_error(error: BaseException, when: str) -> None:
    if asyncio_failure(error):
        log.error("ASGI app used asyncio, which does not run on Trio (%s: %s)", type(error).__name__, error)
    else:
        log.error("ASGI websocket app raised %s", when, exc_info=error)
