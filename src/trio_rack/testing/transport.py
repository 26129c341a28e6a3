"""An ``httpx`` transport that runs the real request cycle in-process (``testing.Transport``).

Like httpx's ``ASGITransport``, but what runs is trio-rack's own HTTP/1.1 connection loop
(:func:`trio_rack.testing.serve_stream`, as under ``serve()``) over a memory stream pair: the
bytes the app's response becomes are the bytes a socket would carry, parsed back by h11.  So framing,
``HEAD``, ``content-length`` checks, hop-by-hop stripping, 500s for contract breaches and
hijacks all behave as under ``serve()``::

    async with httpx.AsyncClient(transport=Transport(app), base_url="http://test") as client:
        response = await client.get("/")

Theory of operation
-------------------
* **One connection per request**, over a stream pair whose upload direction is in lockstep
  (the app's reads pace the test's writes, as a socket's buffer does), sent with
  ``connection: close``; the server task for it runs in the transport's nursery, which
  ``async with AsyncClient(...)`` opens (httpx enters its transport).  Streaming responses
  (``client.stream(...)``, endless SSE feeds) need that: the app keeps running while the test
  reads.  Closing the response cancels that request's server
  task.  A transport used without ``async with`` runs each request in a nursery of its own and
  reads the whole response before returning (fine for anything that ends).
* **App errors reach the test.**  The connection loop turns an app exception into a 500 (or an
  aborted body) and logs it on ``trio_rack.error``; the transport's log handler records what
  *its own* server tasks log (a context variable tells them apart) and, with
  ``raise_app_exceptions=True`` (the default), re-raises the first exception in the test, once
  the response is over: an exception the app raised, a :class:`trio_rack.lint.LintError`, or an
  :class:`~trio_rack.app.response.AppError` for a contract breach the server caught.
* **Escape hatch for hijacks**: a ``101 Switching Protocols`` answer (websockets) comes back as
  an ``httpx.Response`` whose ``extensions["network_stream"]`` is the raw client end — the
  name and role httpx/httpcore give it — a ``trio.abc.Stream`` (also with httpcore's
  ``read``/``write``) that replays anything the server sent behind the 101.  A partial hijack
  without 101 reads as a close-delimited body; a full hijack's hand-written response is parsed
  like any other.

Resource handling: the transport owns every server task and memory stream it creates; leaving
``async with`` (httpx's ``aclose``) cancels and closes them all.  A response's stream is closed
by httpx (``aread``/``aclose``); a ``network_stream`` is the test's to close.
"""

from __future__ import annotations

import contextvars
import logging
import math
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any

import h11
import httpx
import trio
import trio.testing

from ..app.env import ConnInfo
from ..app.response import AppError
from ..config import Limits
from ..state import ServerState
from ._serve import serve_stream

__all__ = ["Transport", "NetworkStream"]

RECEIVE_SIZE = 64 * 1024


class _Recorder:
    """The app errors one request's server task logged, in order."""

    __slots__ = ("errors",)

    def __init__(self) -> None:
        self.errors: list[BaseException] = []


_RECORDER: contextvars.ContextVar[_Recorder | None] = contextvars.ContextVar("trio_rack_transport", default=None)


class _RecordingHandler(logging.Handler):
    """Collects errors logged by a transport's server task (found by context variable)."""

    def emit(self, record: logging.LogRecord) -> None:
        recorder = _RECORDER.get()
        if recorder is None or record.levelno < logging.ERROR:
            return
        if record.exc_info and record.exc_info[1] is not None:
            recorder.errors.append(record.exc_info[1])
        else:
            recorder.errors.append(AppError(record.getMessage()))


_HANDLER = _RecordingHandler(logging.ERROR)
_ERROR_LOGGER = logging.getLogger("trio_rack.error")


class NetworkStream(trio.abc.Stream):
    """The client end after a ``101``: bytes already read past the head come out first.

    Also speaks httpcore's ``AsyncNetworkStream`` verbs (``read``, ``write``), which is what
    ``extensions["network_stream"]`` is in httpx.
    """

    def __init__(self, stream: trio.abc.Stream, replay: bytes, on_close: Any) -> None:
        self._stream = stream
        self._replay = replay
        self._on_close = on_close

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self._replay:
            await trio.lowlevel.checkpoint()
            n = len(self._replay) if max_bytes is None else max_bytes
            data, self._replay = self._replay[:n], self._replay[n:]
            return data
        return await self._stream.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            self._on_close()

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes | bytearray:  # noqa: ASYNC109 (httpcore's signature)
        with trio.fail_after(math.inf if timeout is None else timeout):
            return await self.receive_some(max_bytes)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109 (httpcore's signature)
        with trio.fail_after(math.inf if timeout is None else timeout):
            await self.send_all(buffer)


class _Exchange:
    """One request over one in-memory connection: the client side's h11 and the server task."""

    def __init__(self, transport: Transport, request: httpx.Request) -> None:
        self.transport = transport
        self.request = request
        # Client to server in lockstep (a send waits for the server to read it, as a socket's
        # buffer fills): an upload is never buffered whole between the test and the app.
        # Server to client with a buffer, as a socket's receive buffer would hold a response.
        upload_send, upload_receive = trio.testing.lockstep_stream_one_way_pair()
        download_send, download_receive = trio.testing.memory_stream_one_way_pair()
        self.client = trio.StapledStream(upload_send, download_receive)
        self.server = trio.StapledStream(download_send, upload_receive)
        self.h11 = h11.Connection(h11.CLIENT)
        self.recorder = _Recorder()
        self.scope = trio.CancelScope()
        self.done = trio.Event()
        self.sent = trio.Event()  # the request is written (or writing it failed)

    async def run_server(self) -> None:
        _RECORDER.set(self.recorder)  # this task's context only (and its children's)
        url = self.request.url
        port = url.port or (443 if url.scheme == "https" else 80)
        info = ConnInfo(url.scheme, (url.host, port), self.transport.client)
        try:
            with self.scope:
                await serve_stream(self.server, self.transport.state, info=info)
        finally:
            await trio.aclose_forcefully(self.server)
            self.done.set()

    async def send_request(self) -> None:
        request = self.request
        headers = [(k, v) for k, v in request.headers.raw if k.lower() != b"connection"]
        connection = request.headers.get("connection", "")
        upgrade = "upgrade" in connection.lower()
        headers.append((b"connection", b"upgrade" if upgrade else b"close"))
        target = request.url.raw_path
        data = self.h11.send(h11.Request(method=request.method, target=target, headers=headers))
        try:
            await self.client.send_all(data or b"")
            async for chunk in request.stream:  # type: ignore[union-attr]
                if chunk:
                    await self.client.send_all(self.h11.send(h11.Data(data=chunk)) or b"")
            end = self.h11.send(h11.EndOfMessage())
            if end:
                await self.client.send_all(end)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the server closed early (an error response): the reader reports it
        finally:
            self.sent.set()

    async def next_event(self) -> Any:
        while True:
            try:
                event = self.h11.next_event()
            except h11.RemoteProtocolError as exc:
                await self.finish()
                raise httpx.RemoteProtocolError(str(exc)) from None
            if event is not h11.NEED_DATA:
                return event
            try:
                data = await self.client.receive_some(RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            self.h11.receive_data(bytes(data))

    async def finish(self, cancel: bool = False) -> None:
        """End the server side (cancelled if asked), then raise what the app did, if anything."""
        if cancel:
            self.scope.cancel()
        else:
            # The server sends EOF only after the request's clean-up (body close, finished
            # callbacks): read up to it, so whatever those log is recorded before we look.
            try:
                while await self.client.receive_some(RECEIVE_SIZE):
                    pass
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
        await trio.aclose_forcefully(self.client)
        await self.done.wait()
        self.raise_recorded()

    def raise_recorded(self) -> None:
        if self.transport.raise_app_exceptions and self.recorder.errors:
            raise self.recorder.errors[0]

    async def response(self) -> httpx.Response:
        """Read up to the final response head; the body streams from the returned response."""
        informational: list[int] = []
        while True:
            event = await self.next_event()
            if type(event) is h11.InformationalResponse:
                if event.status_code == 101:
                    # The raw stream is the test's now: the request writer must be out of it.
                    await self.sent.wait()
                    return self._switched(event)
                informational.append(event.status_code)
                continue
            if type(event) is h11.Response:
                break
            # the connection ended without a response
            await self.finish()
            raise httpx.RemoteProtocolError("the server closed the connection without a response")
        if event.status_code >= 500 and self.recorder.errors:
            # The app failed before its response: the 500 is the server's; the error is the news.
            await self.finish(cancel=True)
        return httpx.Response(
            status_code=event.status_code,
            headers=[(k, v) for k, v in event.headers],
            stream=_ResponseStream(self),
            extensions={
                "http_version": b"HTTP/" + event.http_version,
                "reason_phrase": event.reason,
                "informational": informational,
            },
        )

    def _switched(self, event: h11.InformationalResponse) -> httpx.Response:
        replay = self.h11.trailing_data[0]
        stream = NetworkStream(self.client, replay, self.scope.cancel)
        return httpx.Response(
            status_code=101,
            headers=[(k, v) for k, v in event.headers],
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": event.reason, "network_stream": stream},
        )


class _ResponseStream(httpx.AsyncByteStream):
    def __init__(self, exchange: _Exchange) -> None:
        self._exchange = exchange
        self._finished = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        exchange = self._exchange
        while True:
            event = await exchange.next_event()
            if type(event) is h11.Data:
                yield bytes(event.data)
            elif type(event) is h11.EndOfMessage:
                self._finished = True
                await exchange.finish()
                return
            else:  # ConnectionClosed before the end: the response was aborted
                self._finished = True
                await exchange.finish()
                raise httpx.RemoteProtocolError("response aborted: the server closed the connection mid-body")

    async def aclose(self) -> None:
        if not self._finished:
            self._finished = True
            await self._exchange.finish(cancel=True)


class Transport(httpx.AsyncBaseTransport):
    """Serve ``app`` to an ``httpx.AsyncClient`` in-process, through the real connection loop.

    ``limits``: the server's :class:`~trio_rack.Limits`; ``client``: the ``(REMOTE_ADDR,
    REMOTE_PORT)`` the app sees; ``raise_app_exceptions``: re-raise what the app raised (or
    the contract breach the server logged) in the test, after the response.
    """

    def __init__(
        self,
        app: Any,
        *,
        limits: Limits | None = None,
        client: tuple[str, int] = ("127.0.0.1", 12345),
        raise_app_exceptions: bool = True,
    ) -> None:
        self.app = app
        self.state = ServerState(app, limits or Limits(), access_log=False)
        self.client = client
        self.raise_app_exceptions = raise_app_exceptions
        self._nursery: trio.Nursery | None = None
        self._nursery_cm: Any = None

    async def __aenter__(self) -> Transport:
        if self._nursery_cm is not None:
            raise RuntimeError("this Transport is already open")
        if _HANDLER not in _ERROR_LOGGER.handlers:
            _ERROR_LOGGER.addHandler(_HANDLER)
        self._nursery_cm = trio.open_nursery()
        self._nursery = await self._nursery_cm.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc: BaseException | None = None,
        tb: TracebackType | None = None,
    ) -> None:
        cm, self._nursery_cm = self._nursery_cm, None
        nursery, self._nursery = self._nursery, None
        if cm is None or nursery is None:
            return
        nursery.cancel_scope.cancel()
        await cm.__aexit__(exc_type, exc, tb)

    async def aclose(self) -> None:
        await self.__aexit__()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if _HANDLER not in _ERROR_LOGGER.handlers:
            _ERROR_LOGGER.addHandler(_HANDLER)
        exchange = _Exchange(self, request)
        if self._nursery is not None:
            self._nursery.start_soon(exchange.run_server)
            self._nursery.start_soon(exchange.send_request)
            return await exchange.response()
        # Not entered: run this request in a nursery of its own and buffer the whole response.
        # Errors are carried out of the nursery so the test sees them bare, not in a group.
        failure: BaseException | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(exchange.run_server)
            nursery.start_soon(exchange.send_request)
            try:
                response = await exchange.response()
                if response.status_code == 101:
                    raise RuntimeError("a 101 upgrade needs the transport entered: async with httpx.AsyncClient(...)")
                content = b"".join([chunk async for chunk in response.aiter_raw()])  # still encoded
            except Exception as exc:
                failure = exc
                nursery.cancel_scope.cancel()
        if failure is not None:
            raise failure
        return httpx.Response(
            status_code=response.status_code,
            headers=response.headers,
            stream=httpx.ByteStream(content),  # (content= would rewrite content-length)
            extensions=response.extensions,
        )
