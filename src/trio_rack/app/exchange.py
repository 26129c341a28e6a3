"""One request/response cycle of the trio-rack spec, whatever the wire protocol ("the exchange").

Theory of operation
-------------------
A protocol driver (HTTP/1 today, one request at a time per connection; HTTP/2, one per stream)
parses a request head into a :class:`~trio_rack.app.head.RequestHead` and hands it, with a
:class:`ResponseSink` — its side of the seam — to :meth:`Exchange.run`.  The exchange:

1. builds ``env`` (the CGI keys from the head, then the ``rack.*`` keys; ``rack.hijack`` only
   where the sink can hand over the raw connection);
2. awaits the app under the request's **own cancel scope** (``env["trio_rack.cancel_scope"]``):
   :meth:`Exchange.cancel` ends this request — a vanished client, an HTTP/2 stream reset, a
   request deadline — and records why, without touching the connection's other work;
3. validates the triple (:func:`~trio_rack.app.response.prepare_response`) and dispatches on the
   body kind: a buffered body goes out in one :meth:`ResponseSink.send_whole`; iterables and
   streaming bodies through :meth:`send_data`/:meth:`end`, which start the head lazily; a body
   naming a file (a ``path`` attribute) is offered whole to :meth:`ResponseSink.send_file`
   (``os.sendfile`` on plain TCP) and iterated where the sink declines;
   a ``rack.hijack`` header sends the head and awaits the app's callable on the stream the
   sink returns;
4. in a ``finally``, closes every stream it handed out (``rack.input``, the streaming body's
   stream, a hijacked stream), closes the body, runs ``rack.response_finished`` in reverse, and
   writes the access-log line.

A streamed body may be sent for minutes after the app returned (10,000 event streams are
10,000 exchanges): before it is sent, the exchange lets go of env, the app's return value and
most of the request head when nothing else can reach them and nothing at the end needs them
(no access log, no ``rack.response_finished`` callback): :meth:`Exchange._release_env`.

The exchange never imports h11 or h2 and never touches a socket: framing (chunked, END_STREAM,
``connection: close``) is the sink's business.  The response's progress is one
:class:`ResponseState`; every decision about what may still be sent reads it.

Errors: an app exception before the head went out becomes a 500 (or the status a failed
``rack.input`` read carries, :class:`~trio_rack.errors.RequestBodyError`); after it, the response
is aborted visibly (:meth:`ResponseSink.abort`).  Cancellation from outside the request
(connection timeouts, server shutdown) propagates to the driver after the clean-up.

Request-scoped nursery: an app object with a true ``trio_rack_request_nursery`` attribute (the
ASGI adapter) gets ``env["trio_rack.nursery"]``, opened around the app call and the response, so
a task it starts may keep producing the response after ``app(env)`` returned; the exchange waits
for those tasks, and they are cancelled with the request.  With it comes
``env["trio_rack.disconnected"]``, set when the client is known to be gone, and, where the
sink can send trailers (HTTP/2), ``env["trio_rack.set_trailers"]`` (ASGI's trailers extension).

Deadline (``--request-timeout``): when configured, :meth:`Exchange.run` sets the request
scope's deadline as the app is called — only then, so the hot path without it pays one
``is not None``.  The app may move it (``env["trio_rack.cancel_scope"].deadline``).  When the
scope was cancelled and no :meth:`cancel` reason was recorded, a passed deadline is the cause:
:meth:`_after_cancel` records it, logs method and path, and answers 503 (the sink adds
``connection: close``) or aborts.  A hijack lifts the server's deadline if the app had not
moved it; a deadline set after the hijack is the app's opt-in and stands.

Overload (``--limit-concurrency``): ``ServerState.in_flight`` counts running exchanges
(given back at a hijack, so websockets do not hold a slot); past ``max_in_flight`` the app is
not called and a buffered 503 with ``retry-after`` goes out instead (one int comparison per
request; unlimited is ``sys.maxsize``).
"""

from __future__ import annotations

import enum
import inspect
import logging
import math
import os
import sys
from collections.abc import Sequence
from typing import Any, Protocol

import trio

from ..errors import AppError, ClientGone
from ..files import open_file, read_slices
from ..state import SERVER_HEADER, ServerState, date_field
from ..types import Env
from . import accesslog, scopes
from .accesslog import escape
from .env import ConnInfo, build_env
from .errors_sink import ErrorsSink
from .head import RequestHead
from .response import (
    REASONS,
    BodyKind,
    PreparedResponse,
    check_chunk,
    check_trailers,
    close_body,
    encode_headers,
    prepare_response,
)
from .streams import HijackedStream, RequestBody, ResponseStream

__all__ = ["Exchange", "Outcome", "ResponseSink", "ResponseState"]

log = logging.getLogger("trio_rack.error")

Headers = list[tuple[bytes, bytes]]
#: ``retry-after`` of a 503 over ``--limit-concurrency``, seconds (RFC 9110 §10.2.3).
OVERLOAD_RETRY_AFTER = "1"


class ResponseSink(Protocol):
    """The wire beneath one exchange: the HTTP/1 connection (one request at a time), an HTTP/2 stream.

    Header lists given to it are validated, lower-case, and carry ``date`` and ``server``; the
    sink adds its own framing.  Every send may raise :class:`~trio_rack.errors.ClientGone`.
    """

    #: Whether ``env["rack.hijack"]`` may hand over the raw connection (not on a multiplexed one).
    can_full_hijack: bool
    #: Whether a streamed response may end with trailers (:meth:`set_trailers`): HTTP/2 only.
    can_send_trailers: bool
    #: The socket the liveness sweeper polls for a hang-up; None for in-memory transports.
    fileno: int | None

    async def receive_body(self, size_hint: int | None = None) -> bytes:
        """The next piece of the decoded request body, ``b""`` at its end (RequestBodyError);
        ``size_hint`` as :meth:`.streams.BodySource.receive_body` says."""
        ...

    def discard_body(self) -> None:
        """The app closed ``rack.input``; the rest of the body is not wanted."""
        ...

    async def send_informational(self, status: int, headers: Headers) -> None:
        """A 1xx before the final response (103 Early Hints); a no-op where unsupported."""
        ...

    async def send_head(self, status: int, headers: Headers) -> None:
        """The head of a streamed response."""
        ...

    async def send_whole(
        self, status: int, headers: Headers, body: Sequence[bytes], length: int, head_only: bool
    ) -> None:
        """A buffered response: head (with ``content-length``), body and end, coalesced."""
        ...

    async def send_data(self, data: bytes) -> None:
        """Body bytes of a streamed response; AppError past a declared ``content-length``."""
        ...

    async def end(self) -> None:
        """The end of a streamed response; AppError if short of a declared ``content-length``."""
        ...

    async def send_file(self, fd: int, offset: int, length: int | None) -> int | None:
        """Body bytes of a streamed response straight from an open file (``length`` None: to
        its end).

        The zero-copy path for a body naming a file (``FileBody``, Rack's ``to_path``): the
        bytes sent, or None where the sink cannot (TLS, HTTP/2): the exchange then reads the
        file in slices.  The head has gone out already; AppError when the framing or file
        disagree.  The exchange owns ``fd`` (opened before the head, closed after).
        """
        ...

    def set_trailers(self, trailers: Headers) -> None:
        """Trailers (validated) for :meth:`end` to send after the body; only if ``can_send_trailers``."""
        ...

    async def send_error(self, status: int, body: bytes) -> None:
        """A plain-text error response, if none has started (and the protocol state allows one)."""
        ...

    async def wait_send_all_might_not_block(self) -> None: ...

    def write_blocked_since(self) -> float:
        """When the write under way started (``math.inf`` if none): the sweeper enforces the write timeout."""
        ...

    def take_stream(self, leftover: bytes) -> HijackedStream:
        """Full hijack: the raw connection, replaying ``leftover`` and whatever was read ahead."""
        ...

    async def start_partial_hijack(self, status: int, headers: Headers, leftover: bytes) -> trio.abc.Stream:
        """Send the head as the app wrote it (no body framing) and return the stream to hand over."""
        ...

    def abort(self) -> None:
        """The response failed after its head went out: make the failure visible to the client."""
        ...


class Outcome(enum.Enum):
    """How an exchange left the connection."""

    KEEP_ALIVE = "keep-alive"  # the response is complete; the driver decides about the next one
    CLOSE = "close"  # the connection must not carry another request
    HIJACKED = "hijacked"  # the app owned the connection; it is closed


class ResponseState(enum.Enum):
    PENDING = "no response sent yet"
    STREAMING = "head sent, body under way"
    DONE = "response complete"
    HIJACKED = "connection handed to the app"


class Exchange:
    """Run one request through the app and its response through a :class:`ResponseSink`.

    Resource handling: every stream the app is given is closed before :meth:`run` returns or
    raises; the sink (and the transport below it) stays the driver's.

    The request's scope is its own (a ``trio.CancelScope`` per request, made and entered by
    :mod:`.scopes`' short path: about 15,000 instructions of a hello request, 48,000 through
    ``with``): ``env["trio_rack.cancel_scope"]`` may outlive the request in the app's hands,
    and cancelling a scope whose request is over must do nothing.  Running
    the request in its connection's scope instead was tried (s5-req, a140405) and dropped: a
    scope kept and cancelled later ended a later request on the same keep-alive connection,
    and a ``shield`` set on it kept the connection out of reach of the server's cancellation.
    """

    __slots__ = (
        "state", "sink", "head", "info", "env", "fileno", "cancel_reason", "client_gone",
        "_scope", "_response", "_prepared", "_head_only", "_sent", "_status", "_headers", "_result",
        "_error", "_request_body", "_response_stream", "_hijacked", "_disconnected", "_began",
        "_deadline",
    )  # fmt: skip

    def __init__(self, state: ServerState, sink: ResponseSink, head: RequestHead, info: ConnInfo) -> None:
        self.state = state
        self.sink = sink
        self.head = head
        self.info = info
        self.fileno = sink.fileno
        #: Why :meth:`cancel` ended this request (None if it was not cancelled from inside).
        self.cancel_reason: str | None = None
        #: Set when the client is known to be gone (the driver then skips its orderly close).
        self.client_gone = False
        self._scope = scopes.new()
        self._response = ResponseState.PENDING
        self._prepared: PreparedResponse | None = None
        self._head_only = head.method == b"HEAD"
        self._sent = 0
        self._status: int | None = None
        self._headers: Any = None
        self._result: Any = None
        self._error: BaseException | None = None
        self._request_body = RequestBody(sink)
        self._response_stream: ResponseStream | None = None
        self._hijacked: trio.abc.Stream | None = None
        self._disconnected: trio.Event | None = None
        # Only the access log reads it (its duration_ms): no clock read on a server without one.
        self._began = trio.current_time() if state.access_log else 0.0
        #: The request deadline the server set (``--request-timeout``); ``math.inf`` if none.
        self._deadline = math.inf
        # env: the CGI keys, then the rack.* ones (here, not in a method of its own: one call
        # fewer a request).
        env = build_env(head, info)
        env["rack.input"] = self._request_body
        env["rack.errors"] = ErrorsSink()
        env["rack.hijack?"] = True
        if sink.can_full_hijack:
            env["rack.hijack"] = self._full_hijack
        env["rack.early_hints"] = self._early_hints
        env["rack.response_finished"] = []
        env["trio_rack.shutdown"] = state.shutdown_started
        env["trio_rack.cancel_scope"] = self._scope
        if head.protocol is not None:  # HTTP/2 extended CONNECT (RFC 8441)
            env["trio_rack.protocol"] = head.protocol.decode("latin-1")
            env["trio_rack.tunnel"] = self._tunnel
        # for adapters that need the request as the wire gave it (ASGI's ordered raw headers)
        env["trio_rack.request_head"] = head
        env["trio_rack.conn_info"] = info
        if state.proxy is not None:
            state.proxy.apply(env)
        #: None once released while a streamed body is sent (:meth:`_release_env`).
        self.env: Env | None = env

    # ---------------------------------------------------------------------------- the cycle

    async def run(self) -> Outcome:
        """Serve the request; never raises for the app's failures, only for outer cancellation.

        :meth:`begin`, :meth:`respond` and :meth:`finish`, which a driver whose frame lives as
        long as the response may call itself (HTTP/1: one coroutine fewer per open stream,
        some 260 B at each of 10,000 streams); the rare cases (overload, a request nursery)
        run here.
        """
        if self.begin():
            try:
                outcome = await self.respond()
            except BaseException as exc:
                return await self.finish(exc)
            return await self.finish(outcome)
        return await self.run_begun()

    async def run_begun(self) -> Outcome:
        """The rest of :meth:`run` for a request :meth:`begin` returned False for (overload, a
        request nursery): the caller awaits this instead of :meth:`respond` and :meth:`finish`."""
        outcome = Outcome.CLOSE
        try:
            if self.state.in_flight > self.state.max_in_flight:  # (as begin found it: no await since)
                with self._scope:  # the write timeout (the sweep) cancels this scope, as for any response
                    outcome = await self.respond(self._overloaded())
            else:
                outcome = await self._respond_in_nursery()
        except BaseException as exc:
            return await self.finish(exc, entered=False)
        return await self.finish(outcome, entered=False)

    def begin(self) -> bool:
        """The request is in flight; in the common case (not over ``--limit-concurrency``, no
        request nursery) its scope is entered and True returned: the caller then awaits
        :meth:`respond` and hands :meth:`finish` its outcome or exception, whatever happens.
        False: the caller awaits :meth:`run_begun` instead."""
        state = self.state
        state.active.add(self)
        state.in_flight += 1  # given back in finish, or at a hijack (_hand_over)
        if state.in_flight > state.max_in_flight or state.request_nursery:
            return False
        # ``with self._scope:``, by app/scopes.py's short path (a fresh scope, left without an
        # exception: a third of the price); any other exit is Trio's own (finish).
        scopes.enter(self._scope)
        if state.request_timeout is not None:
            self._arm_deadline(state.request_timeout)
        return True

    async def finish(self, result: Outcome | BaseException, *, entered: bool = True) -> Outcome:
        """The end of the cycle :meth:`begin` started: the request's scope left (``entered``),
        its cancellation answered, the request out of flight, what the app gave closed, the
        access-log line.  ``result`` is what :meth:`respond` returned or raised; an exception
        other than the scope's own ``Cancelled`` is raised again, after all that."""
        state = self.state
        outcome = Outcome.CLOSE
        try:
            if isinstance(result, BaseException):
                if not entered or not scopes.exit_with(self._scope, result):
                    raise result
            else:
                if entered:
                    scopes.leave(self._scope)
                outcome = result
            if self._scope.cancelled_caught:
                outcome = await self._after_cancel()
        finally:
            if self._response is not ResponseState.HIJACKED:
                state.in_flight -= 1
            state.active.discard(self)
            try:  # _finish, inline: the common request has nothing to await here
                body = self._close_given()
                if body is not _NO_CLEAN_UP:
                    await self._clean_up(body)
                if state.access_log:
                    self._log_response()
            finally:
                # The cycles broken: env holds bound methods of the exchange (``rack.hijack``,
                # ``rack.early_hints``, ...) and the exchange holds env, a reference cycle per
                # request that only the cyclic garbage collector frees — with whatever buffers
                # the request held (a 10 MiB upload's), and with full collections that stall the
                # loop for tens of milliseconds (the p99.9 latency of ``bench/run``).  Once the
                # request is over nothing may call them: an app that kept env and calls one gets
                # a clear error instead, and the request's objects are freed by reference
                # counting when the driver moves on.  (Here, not in a method: a call fewer.)
                env = self.env
                if env is not None:  # (None: released while its body streamed, see _release_env)
                    for key in _ENV_CALLBACKS:
                        if key in env:
                            env[key] = _request_over
                self._response_stream = None
        return outcome

    def _release_env(self) -> None:
        """A streamed body is about to be sent: let env go now if nothing else can reach it.

        A streamed response (an event stream; 10,000 of them in ``bench/run``'s streams
        scenario) may outlive its app call by minutes, and env with it: the 22-key dict alone
        is 768 B, with its strings, bound methods and sinks about 1.1 KB a request.  What the
        exchange itself still wants of env comes at the end: the access-log line and the
        ``rack.response_finished`` callbacks.  When neither is due (no access log, no
        callback registered) and the exchange holds the only reference (the app's body, a
        task or a closure that kept env keeps it whole: its reference count says so), env is
        dropped here and freed by reference counting, its cycle through the bound methods
        with it (the end of :meth:`finish`).  Nothing can register a callback later: the list's own
        reference count says env is its only holder.  The request nursery's tasks (ASGI) keep
        theirs.  The request head goes the same way when env was its only other holder: its header list
        and query (some 250 B) are dropped, its method and path kept for :meth:`_after_cancel`;
        and the app's return value and headers dict, which only the callbacks would be given.
        """
        env = self.env
        if env is None or self.state.access_log or self._disconnected is not None or _ONLY_A_LOCAL < 0:
            return
        callbacks = env["rack.response_finished"]
        if callbacks:
            return
        self.env = None
        # The callbacks list counts too: a body that kept only it (``cbs.append(...)`` from its
        # generator), or a copy of env that shares it (``Builder.mount``'s ``dict(env)``, kept
        # by a mounted app's body), may still register a callback, which needs env at the end.
        if sys.getrefcount(env) > _ONLY_A_LOCAL or sys.getrefcount(callbacks) > _ONLY_A_LOCAL + 1:
            self.env = env  # someone else holds it: kept (and its callables broken at the end)
            return
        del env, callbacks
        head = self.head
        if sys.getrefcount(head) <= _ONLY_A_LOCAL + 1:  # (this local and self.head)
            # The head was env's too (``trio_rack.request_head``); now no one else sees it, and
            # of it only the method and path are still read (_after_cancel's log line).
            head.headers = ()
            head.query = b""
        # Nor are the app's return value and its headers dict wanted any more: they were the
        # callbacks' arguments, and none can be registered now (the body is in _prepared).
        self._result = self._headers = None

    def _arm_deadline(self, timeout: float) -> None:
        """``--request-timeout``: the request's scope gets a deadline the app may move."""
        self._deadline = self._scope.deadline = trio.current_time() + timeout

    def _overloaded(self) -> Any:
        """``--limit-concurrency`` reached: the 503 with ``retry-after`` to send instead of
        calling the app.

        It goes out as an ordinary buffered response (:meth:`respond`), so the connection may
        stay open: reconnecting would cost an overloaded server more than the 503 does.
        """
        state = self.state
        now = trio.current_time()
        if now - state.overload_logged_at >= 1.0:
            state.overload_logged_at = now
            log.warning(
                "concurrency limit reached: %d requests in flight; answering 503 (logged at most once a second)",
                state.max_in_flight,
            )
        return (
            503,
            {"content-type": "text/plain; charset=utf-8", "retry-after": OVERLOAD_RETRY_AFTER},
            [b"503 Service Unavailable: server busy, retry later\n"],
        )

    async def _respond_in_nursery(self) -> Outcome:
        outcome = Outcome.CLOSE
        env = self.env  # (kept whole: the nursery's tasks may use it, see _release_env)
        assert env is not None
        self._disconnected = env["trio_rack.disconnected"] = trio.Event()
        try:
            async with trio.open_nursery() as nursery:
                self._scope = env["trio_rack.cancel_scope"] = nursery.cancel_scope
                if self.state.request_timeout is not None:
                    self._arm_deadline(self.state.request_timeout)
                env["trio_rack.nursery"] = nursery
                if self.sink.can_send_trailers:
                    env["trio_rack.set_trailers"] = self._set_trailers
                outcome = await self.respond()
        except Exception as exc:  # a task of the app's failed (the adapter should catch its own)
            self._error = exc
            outcome = await self._fail(exc)
        return outcome

    async def _after_cancel(self) -> Outcome:
        """:meth:`cancel` or the request's deadline ended the request: log why, answer 503 to a
        deadline when nothing was sent yet; the connection goes on only if intact."""
        timed_out = self.cancel_reason is None and self._scope.deadline <= trio.current_time()
        if timed_out:
            # The deadline is the only other way this scope is cancelled: record it here, where
            # it is known (the app may have moved it, so say which one passed).
            self.cancel_reason = (
                f"request deadline passed ({_deadline_origin(self)}): "
                f"{escape(self.head.method.decode('latin-1'))} {escape(self.head.path.decode('latin-1'))}; "
                "app cancelled"
            )
        elif self.cancel_reason is None:
            self.cancel_reason = "the app cancelled its request scope"
        log.info("%s:%s: %s", self.info.remote_addr, self.info.remote_port, self.cancel_reason)
        if self._hijacked is not None:
            return Outcome.HIJACKED
        if self._response is ResponseState.STREAMING:
            self.sink.abort()
        elif timed_out and self._response is ResponseState.PENDING:
            # a fresh scope for the 503's write: the sweep enforces the write timeout by
            # cancelling ``_scope``, and the request's own has already been used up
            self._scope = trio.CancelScope()
            with self._scope:
                await self._send_error(503)  # the sink adds connection: close
        return Outcome.CLOSE

    def cancel(self, reason: str, *, client_gone: bool = False) -> None:
        """End this request only (its app sees ``trio.Cancelled``); ``reason`` is logged."""
        if self.cancel_reason is None:
            self.cancel_reason = reason
        if client_gone:
            self.client_gone = True
            if self._disconnected is not None:
                self._disconnected.set()
        self._scope.cancel()

    def cancel_app(self) -> None:
        """The liveness sweeper saw the client hang up while the app was running."""
        self.cancel("client went away; app cancelled", client_gone=True)

    def write_blocked_since(self) -> float:
        return self.sink.write_blocked_since()

    def cancel_stalled_write(self) -> None:
        """The liveness sweeper saw a write blocked past the write timeout."""
        self.cancel("client stopped reading (write timeout); connection dropped", client_gone=True)

    async def respond(self, result: Any = None) -> Outcome:
        """Call the app (unless given its ``result``: the overload 503) and send what it
        returns; the app's failures end here."""
        try:
            try:
                if result is None:
                    result = await self.state.app(self.env)  # type: ignore[arg-type]  # (None only later)
            except Exception as exc:
                self._error = exc
                if self._hijacked is not None:
                    if self.sink.can_full_hijack:
                        log.error("app failed after a full hijack", exc_info=exc)
                    else:  # an HTTP/2 tunnel: reset, not a clean END_STREAM
                        log.error("app failed after opening a tunnel", exc_info=exc)
                        self.sink.abort()
                    return Outcome.HIJACKED
                return await self._fail(exc)
            self._result = result  # its body is closed in _finish, valid or not
            if self._hijacked is not None:
                return Outcome.HIJACKED
            try:
                prepared = self._prepared = prepare_response(result)
                if self.head.method == b"CONNECT" and 200 <= prepared.status < 300 and prepared.hijack is None:
                    # A 2xx to CONNECT opens a tunnel and carries no body: without a hijack the
                    # client would get nothing (and h11 a traceback: hypercorn #277).
                    raise AppError("a 2xx response to CONNECT opens a tunnel: the app must hijack (RFC 9110 §9.3.6)")
            except AppError as exc:
                self._error = exc
                log.error("app %r broke the contract: %s", _app_name(self.state.app), exc)
                await self._send_error(500)
                return Outcome.CLOSE
            self._status, self._headers = prepared.status, result[1]
            del result  # (held by self._result, unless _release_env lets it go)
            # The response is sent from this frame, not from a coroutine below it: a streamed
            # response's frames live as long as it does (10,000 stacks at 10,000 open streams)
            # and every one of them is resumed at each chunk.
            if prepared.hijack is not None:
                return await self._partial_hijack(prepared)
            kind = prepared.kind
            if kind is BodyKind.BUFFERED:
                # head, body and end in one send_whole (here, not in a coroutine of its own)
                no_body = self._head_only or prepared.status in (204, 304)
                self._response = ResponseState.STREAMING
                await self.sink.send_whole(
                    prepared.status, _with_date_and_server(prepared.headers), prepared.chunks, prepared.length, no_body
                )
                self._response = ResponseState.DONE
                if not no_body:
                    self._sent = prepared.length
                return Outcome.KEEP_ALIVE
            if self._head_only or prepared.status in (204, 304):
                await self._start()
                await self.end()
                return Outcome.KEEP_ALIVE
            self._release_env()  # a streamed body may run for minutes: env goes if no one else holds it
            if kind is BodyKind.STREAMING:
                stream = self._response_stream = ResponseStream(self, self._request_body)
                await prepared.body(stream)
                if not stream.closed:
                    stream.close_from_server()
                if stream.aborted:  # closed while a send was half done: it cannot end cleanly
                    self.sink.abort()
                    return Outcome.CLOSE
                await self.end()
            elif (where := _file_of(prepared.body)) is not None:
                await self._send_file(*where)
                await self.end()
            elif kind is BodyKind.ASYNC_ITERABLE:
                async for chunk in prepared.body:
                    await self.send_data(check_chunk(chunk))
                await self.end()
            else:
                for chunk in prepared.body:
                    await self.send_data(check_chunk(chunk))
                await self.end()
            if self._response is ResponseState.HIJACKED:  # the body called rack.hijack before its first write
                return Outcome.HIJACKED
            return Outcome.KEEP_ALIVE
        except ClientGone as exc:  # the driver knows, and logs nothing more: the client left
            self._error = self._error or exc
            return Outcome.CLOSE
        except Exception as exc:
            self._error = exc
            return await self._fail(exc)
        except BaseException as exc:  # cancelled: this request, its connection or the server
            self._error = exc
            raise

    async def _fail(self, exc: BaseException) -> Outcome:
        """The app (or its body) raised: a 500 or the request body's status, else a visible abort."""
        failure = self._request_body.failure
        who = f"{self.info.remote_addr}:{self.info.remote_port}"
        pending = self._response is ResponseState.PENDING
        if failure is not None and (pending or isinstance(exc, trio.BrokenResourceError)):
            # A malformed, oversized or cut-off request body: the client's doing, not the app's:
            # no traceback, and its status while one can still be sent.
            log.info("%s: %s", who, exc)
            status = failure.status
        elif isinstance(exc, AppError):  # the server's own finding: one line says it all
            if pending:
                log.error("app %r broke the contract: %s", _app_name(self.state.app), exc)
            else:
                log.error("response aborted after the head was sent: %s", exc)
            status = 500 if pending else 0
        elif pending:
            log.error("app raised before the response started", exc_info=exc)
            status = 500
        else:
            log.error("response aborted after the head was sent", exc_info=exc)
            status = 0
        if self._response is ResponseState.PENDING:
            await self._send_error(status)
        elif self._response is ResponseState.STREAMING or (
            self._response is ResponseState.HIJACKED and not self.sink.can_full_hijack
        ):
            self.sink.abort()  # (a failed partial hijack on HTTP/2: RST_STREAM, not END_STREAM)
        return Outcome.CLOSE

    async def _send_error(self, status: int) -> None:
        if self._response is not ResponseState.PENDING:
            return
        self._status = status
        self._response = ResponseState.DONE
        body = f"{status} {REASONS.get(status, b'').decode()}\n".encode()
        try:
            await self.sink.send_error(status, body)
        except ClientGone:
            return
        self._sent = len(body)

    # ----------------------------------------------------------------------- the response

    async def _start(self) -> None:
        """Send the head of a streamed response, once."""
        if self._response is not ResponseState.PENDING:
            return
        prepared = self._prepared
        assert prepared is not None
        self._response = ResponseState.STREAMING
        await self.sink.send_head(prepared.status, _with_date_and_server(prepared.headers))

    # BodySink, for ResponseStream and the iterable bodies
    async def send_data(self, data: bytes) -> None:
        """Write response body bytes (the sink frames them); the head goes out first."""
        if self._response is ResponseState.PENDING:
            await self._start()
        elif self._response is not ResponseState.STREAMING:
            raise trio.ClosedResourceError("the response is already complete")
        if not data or self._head_only:
            return  # HEAD: same head, no body
        await self.sink.send_data(data)
        self._sent += len(data)

    async def _send_file(self, path: str, offset: int, length: int | None) -> None:
        """A body naming a file: opened before the head goes out (a missing or unreadable file
        is a 500, not a 200 cut short), then offered to the sink whole (sendfile) or read in
        slices where the sink declines.  The descriptor is closed here."""
        try:
            fd = await open_file(path)
        except OSError as exc:
            raise AppError(f"file body {path!r} cannot be opened: {exc.strerror or exc}") from None
        try:
            await self._start()
            sent = await self.sink.send_file(fd, offset, length)
            if sent is not None:
                self._sent += sent
                return
            async for chunk in read_slices(fd, offset, length):
                await self.send_data(chunk)
        finally:
            os.close(fd)

    async def end(self) -> None:
        """Finish the response.  A body that never wrote gets ``content-length: 0``."""
        if self._response is ResponseState.PENDING:
            prepared = self._prepared
            if prepared is not None and not prepared.app_length and not self._head_only:
                prepared.headers.append((b"content-length", b"0"))
            await self._start()
        elif self._response is not ResponseState.STREAMING:
            await trio.lowlevel.checkpoint()
            return
        await self.sink.end()
        self._response = ResponseState.DONE

    async def wait_send_all_might_not_block(self) -> None:
        await self.sink.wait_send_all_might_not_block()

    def _set_trailers(self, trailers: Any) -> None:
        """``env["trio_rack.set_trailers"](pairs)``: end the streamed response with trailers.

        Given only to adapters (``trio_rack_request_nursery``: ASGI's ``http.response.trailers``)
        and only where the sink can send them (HTTP/2): Rack 3 has no response trailers, so a
        native app gets no such key.  Call it before the body ends; :meth:`end` sends them.
        Invalid trailers raise AppError (the adapter's failure then resets the stream).
        """
        if self._response is ResponseState.DONE or self._response is ResponseState.HIJACKED:
            raise RuntimeError("trailers must be set before the response ends")
        self.sink.set_trailers(check_trailers(trailers))

    async def _early_hints(self, headers: dict[str, Any]) -> None:
        """``env["rack.early_hints"]``: a 103 before the final response (where the protocol has one)."""
        if self._response is not ResponseState.PENDING or self._hijacked is not None:
            raise RuntimeError("early hints must come before the response")
        await self.sink.send_informational(103, encode_headers(headers))

    # --------------------------------------------------------------------------- hijacks

    def _full_hijack(self) -> trio.abc.Stream:
        """``env["rack.hijack"]()``: hand the raw connection to the app; the server writes nothing."""
        if self._hijacked is not None:
            raise RuntimeError("the connection is already hijacked")
        if self._response is not ResponseState.PENDING:
            raise RuntimeError("cannot hijack: the response has started")
        leftover = self._hand_over()
        stream = self._hijacked = self.sink.take_stream(leftover)
        return stream

    def _hand_over(self) -> bytes:
        """The app takes the connection: no more liveness polls; unread body bytes go with it."""
        self._response = ResponseState.HIJACKED
        leftover = self._request_body.take_leftover()
        self._request_body.close()
        self.state.active.discard(self)  # the app owns the stream now: no liveness sweeps
        self.state.in_flight -= 1  # a long-lived connection (a websocket) holds no request slot
        if self.env is not None:  # (always, before a streamed body: see _release_env)
            self.env["trio_rack.keeper"] = self.state.keeper  # its timers (trio_rack.keeper), for a websocket
        if self._deadline != math.inf and self._scope.deadline == self._deadline:
            # Hijacked connections are exempt from --request-timeout: the server's deadline is
            # lifted.  An app opts in by setting the scope's deadline itself after the hijack
            # (or keeps one it set before: only the server's own deadline is lifted).
            self._scope.deadline = math.inf
        return leftover

    async def _tunnel(self, status: int, headers: dict[str, Any]) -> trio.abc.Stream:
        """``env["trio_rack.tunnel"](status, headers)`` on an extended CONNECT (RFC 8441): send a
        2xx head now and hand the app the stream, during its call; it returns ``(-1, {}, [])``."""
        if self._response is not ResponseState.PENDING or not 200 <= status < 300:
            raise RuntimeError("a tunnel needs a 2xx status before any response")
        wire = _with_date_and_server(encode_headers(headers))
        stream = await self.sink.start_partial_hijack(status, wire, self._hand_over())
        self._hijacked = stream
        self._status = status
        return stream

    async def _partial_hijack(self, prepared: PreparedResponse) -> Outcome:
        """Send the head as the app wrote it (no body framing), then await ``hijack(stream)``."""
        headers = _with_date_and_server(prepared.headers)
        stream = await self.sink.start_partial_hijack(prepared.status, headers, self._hand_over())
        self._hijacked = stream
        await prepared.hijack(stream)
        return Outcome.HIJACKED

    # --------------------------------------------------------------------------- clean-up

    async def _finish(self) -> None:
        """Close everything the app was given, then run ``rack.response_finished`` callbacks,
        then write the access-log line (:meth:`run` runs these steps inline).

        Runs in a ``finally`` and may run while cancelled: closing must still happen, so every
        step here is either synchronous or shielded with a short deadline.
        """
        body = self._close_given()
        if body is not _NO_CLEAN_UP:
            await self._clean_up(body)
        if self.state.access_log:
            self._log_response()

    def _close_given(self) -> Any:
        """Close ``rack.input`` and the streaming body's stream; the body to clean up
        asynchronously (:meth:`_clean_up`), or ``_NO_CLEAN_UP`` when there is nothing to await:
        the common case, a list body, no callbacks, no hijack."""
        self._request_body.close()
        if self._response_stream is not None:
            self._response_stream.close_from_server()
        prepared = self._prepared  # (its body is the app's; _result may be gone, see _release_env)
        body = prepared.body if prepared is not None else _body_of(self._result)
        env = self.env
        if (
            self._hijacked is not None
            or (env is not None and env["rack.response_finished"])
            or (type(body) is not list and _closable(body))
        ):
            return body
        return _NO_CLEAN_UP

    async def _clean_up(self, body: Any) -> None:
        """Async clean-up: shielded (it must happen even when we are being cancelled) but bounded."""
        env = self.env
        callbacks = env["rack.response_finished"] if env is not None else ()
        headers = self._headers if self._prepared is not None else None
        with trio.CancelScope(shield=True, deadline=trio.current_time() + 5):
            if self._hijacked is not None:
                await self._hijacked.aclose()
            await _close_body(body)
            for callback in reversed(list(callbacks)):
                try:
                    ret = callback(env, self._status, headers, self._error)
                    if inspect.isawaitable(ret):
                        await ret
                except Exception:
                    log.exception("rack.response_finished callback %r failed", callback)

    def _log_response(self) -> None:
        env = self.env
        assert env is not None  # (never released with the access log on)
        status = self._status
        if status is None and self._hijacked is not None:
            # A full hijack: the app wrote the head itself; it may say which status
            # (trio_rack.websocket records its 101 here).
            status = env.get("trio_rack.hijack_status")
        accesslog.log_response(
            env,
            status if type(status) is int else None,
            self._sent,
            hijacked=self._hijacked is not None,
            duration=trio.current_time() - self._began,
        )


#: What :meth:`Exchange._close_given` returns when nothing is left to await.
_NO_CLEAN_UP: Any = object()

#: The env entries that are bound methods of the exchange (see the end of Exchange.finish).
_ENV_CALLBACKS = ("rack.hijack", "rack.early_hints", "trio_rack.tunnel", "trio_rack.set_trailers")


def _references_of_a_local() -> int:
    """``sys.getrefcount`` of an object only a local variable holds, as this interpreter counts
    (the call's own reference included): what :meth:`Exchange._release_env` compares with;
    -1 where the interpreter keeps no reference counts to read (then nothing is let go early).

    Read twice, the second time with one more holder: an interpreter whose number does not go up
    by exactly one (no reference counts under it, a constant) cannot tell "only the exchange"
    from "the app too", and gets -1 (PyPy has no ``getrefcount`` at all)."""
    getrefcount = getattr(sys, "getrefcount", None)
    if getrefcount is None:  # (PyPy)
        return -1
    only_here: dict[str, Any] = {}
    alone = getrefcount(only_here)
    one_more = [only_here]
    held = getrefcount(only_here)
    del one_more
    return alone if alone > 0 and held == alone + 1 else -1


#: See :func:`_references_of_a_local`.
_ONLY_A_LOCAL = _references_of_a_local()


def _request_over(*args: Any, **kwargs: Any) -> Any:
    """What env's callables become once their request has ended."""
    raise RuntimeError("this request is over: its env callables (rack.hijack, ...) cannot be used any more")


def _file_of(body: Any) -> tuple[str, int, int | None] | None:
    """``(path, offset, length)`` of a body that names a file (a ``path`` attribute), else None.

    Rack's ``to_path``: ``trio_rack.FileBody`` or any body with ``path`` and optional
    ``offset`` (default 0) / ``length`` (default None: to the end).  Odd values mean "not a
    file body": the body is iterated like any other.
    """
    path = getattr(body, "path", None)
    if path is None:
        return None
    offset = getattr(body, "offset", 0)
    length = getattr(body, "length", None)
    if type(offset) is not int or offset < 0 or (length is not None and (type(length) is not int or length < 0)):
        return None
    try:
        return os.fspath(path), offset, length
    except TypeError:
        return None


def _with_date_and_server(headers: Headers) -> Headers:
    """Add the ``date`` and ``server`` headers the app did not set (protocol-neutral)."""
    has_date = has_server = False
    for name, _ in headers:
        if name == b"date":
            has_date = True
        elif name == b"server":
            has_server = True
    if not has_date:
        headers.append(date_field())
    if not has_server:
        headers.append(SERVER_HEADER)
    return headers


def _closable(body: Any) -> bool:
    """Whether ``body`` has a ``close`` or ``aclose`` to call (never a plain list: the exchange
    skips the two failed attribute lookups, each an AttributeError raised and caught, for the
    common buffered body)."""
    return hasattr(body, "close") or hasattr(body, "aclose")


def _body_of(result: Any) -> Any:
    """The body of an app's return value that was never validated (for closing it)."""
    if isinstance(result, (tuple, list)) and len(result) == 3:
        return result[2]
    return None


async def _close_body(body: Any) -> None:
    """Call the body's ``aclose()`` or ``close()`` (once), logging failures."""
    if body is None:
        return
    try:
        await close_body(body)
    except Exception:
        log.exception("closing the response body failed")


def _deadline_origin(exchange: Exchange) -> str:
    timeout = exchange.state.request_timeout
    if timeout is not None and exchange._scope.deadline == exchange._deadline:
        return f"--request-timeout {timeout:g}s"
    return "set by the app"


def _app_name(app: Any) -> str:
    return getattr(app, "__qualname__", None) or type(app).__name__
