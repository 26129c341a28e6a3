"""One ASGI ``http`` request: the message state machine between an ASGI app and trio-rack.

Theory of operation.  An ASGI app decides its response head inside a task that keeps running
after it (it streams the body, then may run background work), while a trio-rack app returns
``(status, headers, body)``.  The adapter bridges the two with the server's request-scoped
nursery (``env["trio_rack.nursery"]``, see :mod:`trio_rack.asgi`): the ASGI app runs as a
task there; :meth:`HTTPCycle.response` waits for ``http.response.start`` (or the app's end)
and returns the triple, whose body is then fed by the app's ``http.response.body`` messages.

* **The common case is buffered, with one wake-up.**  ``send(http.response.start)`` does not
  checkpoint, so an app that sends its head and its only body message back to back
  (Starlette, FastAPI) has both recorded before :meth:`response` resumes; the response is
  then a list, with a ``content-length``, in one write.  :meth:`response` parks the request
  task itself (``wait_task_rescheduled``, no ``Event``) and the app's side reschedules it
  once: at the head, a hijack, or the app's end.  Such a response is complete when taken, so
  the cycle registers no ``rack.response_finished`` callback for it (a callback would cost
  the server a shielded clean-up step per request); only a streamed response does.  Chunks
  sent before the server takes the head are held, at most :data:`PENDING_LIMIT` bytes, after
  which ``send`` waits.
* **Streams are bounded.**  Later body messages go through an unbuffered memory channel to
  the streaming body, whose ``send_all`` is the server's back-pressure: a client that reads
  slowly slows the app's ``send``, nothing piles up.
* **The request body is read on demand.**  Each ``receive()`` reads at most one piece from
  ``env["rack.input"]``; nothing is read ahead.
* **Disconnects.**  ``receive()`` returns ``http.disconnect`` once the response is complete or
  the client is gone; a disconnect already known is returned *without a checkpoint*, so a
  caller inside an already-cancelled scope (Starlette's ``request.is_disconnected()``) still
  gets it.  Waiting for it is one wait on the server's ``trio_rack.disconnected`` event in a
  cancel scope that the response's completion cancels (no nursery, no waiter tasks).
  ``send()`` after the client left raises :class:`ClientDisconnected`, an ``OSError`` (spec 2.4).
* **Trailers** (``http.response.trailers``, HTTP/2 only: offered where the server gives
  ``env["trio_rack.set_trailers"]``).  ``trailers: True`` on the head makes the response
  streamed whatever its size; the body messages go out as DATA, the trailers messages are
  collected (validated as each is sent: a bad one raises in the app's ``send``) and the last
  one ends the stream with a HEADERS frame.  An app that fails or returns before its last
  trailers message gets its stream reset, never a response that looks complete.
* **Errors.**  An app that raises before ``http.response.start`` gets a 500 (the server logs
  the traceback); after it, the streaming body raises and the server aborts the response
  visibly.  An app that returns without a response gets a 500 with a message saying so.
  Messages out of order raise :class:`ASGIMessageError` in the app, naming the message.

Resource handling: the server closes ``rack.input`` and ends the response; the cycle closes
the receiving end of its channel when the streaming body ends, so a later ``send`` fails
instead of blocking.  The ASGI task belongs to the server's request nursery.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import trio

from ..app.response import AppError, check_trailers

__all__ = ["ASGIMessageError", "ClientDisconnected", "HTTPCycle", "PENDING_LIMIT", "asyncio_failure"]

log = logging.getLogger("trio_rack.error")

#: Body bytes held for the server before it has taken the response head.
PENDING_LIMIT = 64 * 1024
#: The largest piece of request body one ``http.request`` message carries.
RECEIVE_SIZE = 64 * 1024

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[dict[str, Any], Receive, Send], Awaitable[None]]


class ASGIMessageError(RuntimeError):
    """The app sent a message the protocol does not allow now (its bug); the text names it."""


class ClientDisconnected(OSError):
    """``send()`` after the client went away or the response ended (ASGI spec 2.4)."""


def asyncio_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is what an asyncio-only library raises when it runs under Trio."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text = str(current)
        if isinstance(current, RuntimeError) and ("no running event loop" in text or "no current event loop" in text):
            return True
        if isinstance(current, TypeError) and "unrecognized yield message" in text:  # an asyncio future
            return True
        if type(current).__name__ == "AsyncLibraryNotFoundError":
            return True
        tb = current.__traceback__
        while tb is not None:
            if f"{os.sep}asyncio{os.sep}" in tb.tb_frame.f_code.co_filename:
                return True
            tb = tb.tb_next
        current = current.__cause__ or current.__context__
    return False


def _caused_by_disconnect(exc: BaseException) -> bool:
    seen = 0
    current: BaseException | None = exc
    while current is not None and seen < 10:
        if isinstance(current, ClientDisconnected):
            return True
        current, seen = current.__cause__ or current.__context__, seen + 1
    return False


#: ASGI header pairs already decoded, ``(name, value)`` bytes -> ``(name, value)`` str: apps
#: send the same few headers with every response.  Bounded (values may be per-request).
_DECODED: dict[tuple[bytes, bytes], tuple[str, str]] = {}
_DECODED_MAX = 4096
#: Longer values (a per-request cookie, a policy) are decoded each time, not kept.
_DECODED_VALUE_MAX = 256


def _rack_headers(raw: Iterable[Any], *, where: str) -> dict[str, Any]:
    """ASGI header pairs (bytes) as a trio-rack headers dict (str; repeats as lists).

    Only decoding happens here; the server validates the result (``app/response.py``).
    """
    headers: dict[str, Any] = {}
    decoded = _DECODED
    try:
        for pair in raw:
            # only an exact (bytes, bytes) pair is hashable for certain (a bytearray is not)
            cacheable = type(pair) is tuple and len(pair) == 2 and type(pair[0]) is bytes and type(pair[1]) is bytes
            pair_str = decoded.get(pair) if cacheable else None
            if pair_str is None:
                name, value = pair
                pair_str = (bytes(name).decode("latin-1").lower(), bytes(value).decode("latin-1"))
                if cacheable and len(value) <= _DECODED_VALUE_MAX:
                    if len(decoded) >= _DECODED_MAX:
                        decoded.clear()
                    decoded[pair] = pair_str
            key, text = pair_str
            old = headers.get(key)
            if old is None:
                headers[key] = text
            elif isinstance(old, list):
                old.append(text)
            else:
                headers[key] = [old, text]
    except (TypeError, ValueError) as exc:
        raise ASGIMessageError(f"{where}: 'headers' must be an iterable of [bytes, bytes] pairs ({exc})") from None
    return headers


class _PathSend:
    __slots__ = ("path",)

    def __init__(self, path: str) -> None:
        self.path = path


def _file_chunks(path: str) -> AsyncIterator[bytes]:
    """The file as a :class:`~trio_rack.files.FileBody`: read off the loop in slices, and sent
    with ``sendfile`` wherever the driver does that for bodies that name a file."""
    from ..files import FileBody

    return FileBody(path).__aiter__()


class HTTPCycle:
    """The ``receive``/``send`` pair of one request, and the trio-rack response it becomes."""

    __slots__ = (
        "env", "scope", "_input", "_disconnected", "_complete", "_gone_scopes", "_body_left", "_body_done",
        "_body_error", "_request_sent", "_waiter", "_ready", "_head", "_done", "_taken", "_taken_event",
        "_pending", "_pending_size", "_pathsend", "_send_ch", "_recv_ch", "_app_finished", "_app_done", "_error",
        "_hijacked", "set_trailers", "_trailers_wanted", "_trailers_done", "_trailers", "hijack",
    )  # fmt: skip

    def __init__(self, env: dict[str, Any], scope: dict[str, Any]) -> None:
        self.env = env
        self.scope = scope
        self._input = env["rack.input"]
        disconnected = env.get("trio_rack.disconnected")
        self._disconnected: trio.Event = disconnected if disconnected is not None else trio.Event()
        self._complete = False  # the response is over: receive() says http.disconnect
        self._gone_scopes: set[trio.CancelScope] | None = None  # receive()s waiting for the disconnect
        length = env.get("CONTENT_LENGTH")
        self._body_left: int | None = int(length) if length and length.isdigit() else None
        self._body_done = (
            self._body_left == 0
            or (self._body_left is None and "HTTP_TRANSFER_ENCODING" not in env and scope["http_version"] != "2")
        )
        self._body_error: BaseException | None = None
        self._request_sent = False
        self._waiter: trio.lowlevel.Task | None = None  # response(), parked until _ready
        self._ready = False  # head ready, hijacked, or the app ended: response() may go on
        self._head: tuple[int, dict[str, Any]] | None = None
        self._done = False  # the final body message (more_body False) was sent
        self._taken = False
        self._taken_event: trio.Event | None = None
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._pathsend: _PathSend | None = None
        # the channel to the streaming body: made only for a streamed response (see response())
        self._send_ch: trio.MemorySendChannel[bytes | _PathSend] | None = None
        self._recv_ch: trio.MemoryReceiveChannel[bytes | _PathSend] | None = None
        self._app_finished = False
        self._app_done: trio.Event | None = None
        self._error: BaseException | None = None
        self._hijacked = False
        # http.response.trailers (HTTP/2 only: the server gives env["trio_rack.set_trailers"])
        self.set_trailers: Callable[[list[tuple[bytes, bytes]]], None] | None = env.get("trio_rack.set_trailers")
        self._trailers_wanted = False  # http.response.start said trailers: True
        self._trailers_done = False  # the last trailers message (more_trailers False) was sent
        self._trailers: list[tuple[bytes, bytes]] = []
        self.hijack: Callable[[], trio.abc.Stream] | None = None
        if callable(env.get("rack.hijack")):
            self.hijack = self._hijack

    # -------------------------------------------------------------------------- the app task

    async def run_app(self, app: ASGIApp) -> None:
        """Run the ASGI app; its exception is kept for :meth:`response` or the streaming body."""
        try:
            await app(self.scope, self.receive, self.send)
        except Exception as exc:
            if _caused_by_disconnect(exc):
                # The client's doing, not a bug: neither logged nor kept, since the traceback
                # would keep the app's frames (a streaming generator whose ``finally`` should
                # run now) alive.
                self._error = ClientDisconnected("the client disconnected")
            else:
                self._error = exc
                if self._complete or (self._done and (self._trailers_done or not self._trailers_wanted)):
                    # Nothing will raise it again (the response is whole, or is held whole for
                    # the server to take): logged here, or an app bug would pass unseen.
                    log.error("ASGI app raised after its response was complete", exc_info=exc)
        finally:
            self._app_finished = True
            if self._app_done is not None:
                self._app_done.set()
            if self._send_ch is not None:
                self._send_ch.close()
            self._wake()

    # ------------------------------------------------------------------------------ receive

    async def receive(self) -> dict[str, Any]:
        if self._complete or self._disconnected.is_set():
            return {"type": "http.disconnect"}  # no checkpoint: see the module docstring
        if self._body_done and not self._request_sent:  # a request without a body: one empty message
            # a cancel point, not a schedule point: this message needs no waiting, and an app
            # that reads every body (Django) would pay a scheduler round per request for one.
            # Before the flag: a receive() cancelled here does not lose the message.
            await trio.lowlevel.checkpoint_if_cancelled()
            self._request_sent = True
            return {"type": "http.request", "body": b"", "more_body": False}
        if not self._body_done:
            self._request_sent = True
            try:
                data = await self._input.receive_some(RECEIVE_SIZE)
            except trio.BrokenResourceError as exc:  # bad, oversized or cut-off request body
                self._body_error = exc
                self._body_done = True
                return {"type": "http.disconnect"}
            except trio.ClosedResourceError:
                self._body_done = True
                return {"type": "http.disconnect"}
            if self._body_left is not None:
                self._body_left -= len(data)
                more = bool(data) and self._body_left > 0
            else:
                more = bool(data)
            self._body_done = not more
            return {"type": "http.request", "body": data, "more_body": more}
        with trio.CancelScope() as scope:  # cancelled by _mark_complete
            waiting = self._gone_scopes
            if waiting is None:
                waiting = self._gone_scopes = set()
            waiting.add(scope)
            try:
                await self._disconnected.wait()
            finally:
                waiting.discard(scope)
        return {"type": "http.disconnect"}

    # --------------------------------------------------------------------------------- send

    async def send(self, message: dict[str, Any]) -> None:
        kind = message.get("type") if isinstance(message, dict) else None
        if self._disconnected.is_set():
            raise ClientDisconnected(f"cannot send {kind!r}: the client disconnected")
        if kind == "http.response.start":
            self._start(message)  # no checkpoint: see the module docstring
            return
        if kind == "http.response.body":
            await self._body(message)
            return
        if kind == "http.response.pathsend":
            await self._path_send(message)
            return
        if kind == "http.response.trailers":
            await self._send_trailers(message)
            return
        raise ASGIMessageError(f"unknown or unsupported ASGI message type {kind!r} for an http scope")

    def _start(self, message: dict[str, Any]) -> None:
        if self._head is not None:
            raise ASGIMessageError("'http.response.start' sent twice")
        if self._hijacked:
            raise ASGIMessageError("'http.response.start' after trio_rack.hijack: the connection is the app's")
        status = message.get("status")
        if type(status) is not int:
            raise ASGIMessageError(f"'http.response.start': 'status' must be an int, got {status!r:.40}")
        headers = _rack_headers(message.get("headers", ()), where="'http.response.start'")
        if message.get("trailers"):
            if self.set_trailers is None:
                raise ASGIMessageError("'http.response.start': trailers need HTTP/2 (no 'http.response.trailers' here)")
            self._trailers_wanted = True
        self._head = (status, headers)
        self._wake()

    def _check_body_allowed(self, kind: str) -> None:
        if self._head is None:
            raise ASGIMessageError(f"{kind!r} before 'http.response.start'")
        if self._done:
            raise ASGIMessageError(f"{kind!r} after the response ended (more_body was False)")

    async def _body(self, message: dict[str, Any]) -> None:
        self._check_body_allowed("http.response.body")
        body = message.get("body", b"")
        if not isinstance(body, (bytes, bytearray, memoryview)):
            raise ASGIMessageError(f"'http.response.body': 'body' must be bytes, got {type(body).__name__}")
        body = bytes(body)
        more = bool(message.get("more_body", False))
        if not more:
            self._done = True
        if not self._taken:
            if body:
                self._pending.append(body)
                self._pending_size += len(body)
            if more and self._pending_size > PENDING_LIMIT:
                if self._taken_event is None:
                    self._taken_event = trio.Event()
                await self._taken_event.wait()  # the server takes the head, then the pending bytes
            return
        assert self._send_ch is not None  # taken and not done: a streamed response
        try:
            if body:
                await self._send_ch.send(body)
            if not more and not self._trailers_wanted:
                self._send_ch.close()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise ClientDisconnected("cannot send 'http.response.body': the response is gone") from None

    async def _path_send(self, message: dict[str, Any]) -> None:
        self._check_body_allowed("http.response.pathsend")
        path = message.get("path")
        if not isinstance(path, str):
            raise ASGIMessageError(f"'http.response.pathsend': 'path' must be a str, got {type(path).__name__}")
        if not await trio.Path(path).is_file():
            raise ASGIMessageError(f"'http.response.pathsend': {path!r} is not a file")
        self._done = True
        if not self._taken:
            self._pathsend = _PathSend(path)
            return
        assert self._send_ch is not None
        try:
            await self._send_ch.send(_PathSend(path))
            if not self._trailers_wanted:
                self._send_ch.close()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise ClientDisconnected("cannot send 'http.response.pathsend': the response is gone") from None

    async def _send_trailers(self, message: dict[str, Any]) -> None:
        """``http.response.trailers``: collect ``headers``; the last one (``more_trailers``
        False) ends the response, its trailers going out as the final HEADERS frame."""
        if not self._trailers_wanted:
            raise ASGIMessageError("'http.response.trailers' without 'trailers': True in 'http.response.start'")
        if not self._done:
            raise ASGIMessageError("'http.response.trailers' before the body ended (more_body was still True)")
        if self._trailers_done:
            raise ASGIMessageError("'http.response.trailers' after the last trailers (more_trailers was False)")
        try:
            self._trailers += check_trailers(message.get("headers", ()))
        except AppError as exc:
            raise ASGIMessageError(f"'http.response.trailers': {exc}") from None
        if not message.get("more_trailers", False):
            self._trailers_done = True
            if self._taken:
                assert self._send_ch is not None
                self._send_ch.close()  # the streaming body ends, with the trailers
        await trio.lowlevel.checkpoint()

    # --------------------------------------------------------------------- the rack response

    def _wake(self) -> None:
        """The head is ready, the app hijacked, or it ended: resume :meth:`response` (once)."""
        if not self._ready:
            self._ready = True
            waiter, self._waiter = self._waiter, None
            if waiter is not None:
                trio.lowlevel.reschedule(waiter)

    async def response(self) -> tuple[int, Any, Any]:
        """Wait for the head and return the trio-rack triple (see the module docstring)."""
        if not self._ready:  # (ready already only when the app ran first: bench/asgi_cost.py)
            self._waiter = trio.lowlevel.current_task()

            def abort(_: Any) -> trio.lowlevel.Abort:
                self._waiter = None
                return trio.lowlevel.Abort.SUCCEEDED

            await trio.lowlevel.wait_task_rescheduled(abort)
        if self._hijacked:
            if not self._app_finished:
                self._app_done = trio.Event()
                await self._app_done.wait()
            if self._error is not None:
                log.error("ASGI app failed after trio_rack.hijack", exc_info=self._error)
            return -1, {}, []
        if self._head is None:
            error = self._error
            if error is None:
                raise AppError("ASGI app returned without sending 'http.response.start'")
            if self._body_error is not None:
                raise self._body_error from error
            if asyncio_failure(error):
                log.error(
                    "ASGI app used asyncio, which does not run on Trio (%s: %s); use a Trio-compatible "
                    "framework (anyio-based Starlette/FastAPI, quart-trio) or another server",
                    type(error).__name__,
                    error,
                )
                return 500, {"content-type": "text/plain; charset=utf-8"}, [b"500 Internal Server Error\n"]
            raise error
        status, headers = self._head
        self._taken = True
        if self._taken_event is not None:
            self._taken_event.set()
        if self._done and not self._trailers_wanted:
            self._mark_complete()
            if self._pathsend is not None:
                from ..files import FileBody

                return status, headers, FileBody(self._pathsend.path)
            return status, headers, self._pending
        self._send_ch, self._recv_ch = trio.open_memory_channel[bytes | _PathSend](0)
        if self._app_finished or self._trailers_done:  # nothing more will come: the body ends
            self._send_ch.close()
        # however the streamed response ends (aborted too), receive() then says disconnect
        self.env["rack.response_finished"].append(self._response_finished)
        return status, headers, self._stream_body

    async def _stream_body(self, stream: trio.abc.Stream) -> None:
        assert self._recv_ch is not None
        with self._recv_ch:
            pending, self._pending = self._pending, []
            for chunk in pending:
                await stream.send_all(chunk)
            if self._pathsend is not None:  # a pathsend before the head was taken (trailers follow)
                async for chunk in _file_chunks(self._pathsend.path):
                    await stream.send_all(chunk)
            async for item in self._recv_ch:
                if isinstance(item, _PathSend):
                    async for chunk in _file_chunks(item.path):
                        await stream.send_all(chunk)
                else:
                    await stream.send_all(item)
        if not self._done:
            if self._error is not None:
                raise AppError(f"ASGI app raised after starting its response: {self._error!r}") from self._error
            raise AppError("ASGI app returned before ending its response (no body message with more_body=False)")
        if self._trailers_wanted:
            if not self._trailers_done:
                if self._error is not None:
                    raise AppError(f"ASGI app raised before its last trailers: {self._error!r}") from self._error
                raise AppError("ASGI app returned without its last 'http.response.trailers' (more_trailers=False)")
            assert self.set_trailers is not None
            self.set_trailers(self._trailers)
        self._mark_complete()

    def _response_finished(self, env: Any, status: Any, headers: Any, error: Any) -> None:
        self._mark_complete()

    def _mark_complete(self) -> None:
        self._complete = True
        for scope in self._gone_scopes or ():  # every receive() waiting for the disconnect
            scope.cancel()

    def _hijack(self) -> trio.abc.Stream:
        """``scope["extensions"]["trio_rack.hijack"]()``: the raw connection (HTTP/1 only)."""
        if self._head is not None:
            raise ASGIMessageError("trio_rack.hijack after 'http.response.start'")
        stream: trio.abc.Stream = self.env["rack.hijack"]()
        self._hijacked = True
        self._wake()
        return stream
