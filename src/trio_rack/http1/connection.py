"""The connection loop: one task drives one client connection through h11 and the app.

Theory of operation
-------------------
One task owns the transport.  It reads a request head (h11 parses it), builds ``env``, awaits
the app *in the same task* (no task per request on the keep-alive hot path), validates the
returned triple and writes the response.  Then it either starts the next cycle (keep-alive,
pipelining: bytes of the next request already buffered in h11 are parsed first) or closes.

* **One writer.**  Every write goes through :meth:`HTTPConnection._write` under one lock, so an
  error response can never race an app response on the stream.
* **One reader.**  Outside the app, only this task reads.  While the app runs, reads happen
  only on the app's behalf (``rack.input`` / the streaming body), so a pipelined request is
  never consumed behind its back and nothing limits back-pressure but the socket itself.
* **One cancel scope, moving deadlines.**  The whole connection runs in one cancel scope whose
  deadline is the nearer of a read deadline (idle, head, body) and a write deadline.  Entering
  a scope per read, per write and per app call cost more than h11's parsing; moving one
  deadline costs little.  Every reason to cancel — a timeout, a vanished client, shutdown —
  ends the connection anyway; :meth:`HTTPConnection._after_cancel` then says why and answers
  ``408`` where one is due.
* **Client gone.**  The server does not read to notice a vanished client: the liveness
  sweeper (:mod:`trio_rack.liveness`) polls the socket for a hang-up about once a second and
  cancels the connection's scope.  No reads, no extra task per connection.
* **Hijack.**  The app gets a :class:`~trio_rack.streams.HijackedStream` over the transport,
  with every byte h11 had buffered replayed first.  From then on h11 is out of the picture and
  the connection ends when the app does; the stream is closed in a ``finally``.
* **Aborts are visible.**  If the app fails after the head went out, the connection is closed
  without the terminating chunk (or short of ``content-length``): clients see a truncated
  response as an error, never as a complete one.
"""

from __future__ import annotations

import enum
import inspect
import logging
import math
import re
from typing import Any

import h11
import trio

from ..app import accesslog
from ..app.env import ConnInfo, build_env
from ..app.errors_sink import ErrorsSink
from ..app.response import (
    REASONS,
    AppError,
    BodyKind,
    PreparedResponse,
    check_chunk,
    encode_headers,
    prepare_response,
    serialize_head,
)
from ..app.streams import HijackedStream, RequestBody, ResponseStream
from ..config import Limits
from ..state import SERVER_HEADER, ServerState, date_header
from ._h11_patch import tighten_chunk_extensions

__all__ = ["HTTPConnection"]

tighten_chunk_extensions()  # see _h11_strict: refuse NUL, bare CR, non-tokens in chunk-ext

log = logging.getLogger("trio_rack.error")

RECEIVE_SIZE = 64 * 1024
#: Writes larger than this are split, so the write timeout bounds a stall, not a slow link: one
#: slice must go out within ``write_timeout`` (1 MiB in 30 s: clients slower than 35 KB/s are
#: dropped).  Smaller slices cost throughput: 256 KiB gave 80% of a bare Trio loop, 1 MiB 98%.
WRITE_SLICE = 1024 * 1024
#: Small responses are coalesced into one send_all up to this size.
COALESCE_LIMIT = 64 * 1024
#: With ``max_body_size`` set, the bytes read for a body may exceed it by this much (chunk
#: headers, trailers, the start of a pipelined request) before the body counts as too large:
#: chunk extensions carry no body bytes but cost as much to read (Puma CVE-2024-21647).
BODY_FRAMING_SLACK = 64 * 1024
#: After a response, at most this much of an unread request body is drained to keep alive.
DRAIN_LIMIT = 64 * 1024
#: ... and for at most this long.
DRAIN_TIMEOUT = 1.0

# Request-head strictness beyond h11 (each a request-smuggling vector; tests/test_smuggling.py).
#: The end of a request head as h11 finds it (it also takes a bare-LF blank line).
_HEAD_END_RE = re.compile(rb"\n\r?\n")
#: In a head: an LF without its CR, a CR without its LF, a line starting with SP/HTAB (obs-fold).
#: h11 accepts the first and the last (RFC 9112 §2.2 and §5.2 allow either), a proxy in front
#: may not: waitress CVE-2019-16785, Puma CVE-2021-41136, llhttp CVE-2022-32214 and -32215.
_LINE_BREAK_TRICK_RE = re.compile(rb"(?<!\r)\n|\r(?!\n)|\n[ \t]")
#: Control bytes h11 lets through in field values (it refuses NUL, CR, LF, VT and FF itself).
_VALUE_CTL_RE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
#: Host = uri-host [ ":" port ] (RFC 9112 §3.2, RFC 3986 §3.2.2): an IP-literal or a reg-name.
_HOST_RE = re.compile(rb"(?:\[[0-9A-Za-z:.%_~-]+\]|[-A-Za-z0-9._~!$&'()*+,;=%]*)(?::[0-9]*)?")
_ABSOLUTE_FORM_RE = re.compile(rb"(?i:https?)://([^/?#]*)[^#]*")


class _ReadPhase(enum.Enum):
    """What the connection is waiting for; tells, when a deadline passes, what timed out."""

    IDLE = "keep-alive idle"  # before the first byte of a request
    HEAD = "request head"
    APP = "app"  # no read deadline while the app runs, except around body reads
    BODY = "request body"
    DRAIN = "unread body drain"


class Outcome(enum.Enum):
    KEEP_ALIVE = "keep-alive"
    CLOSE = "close"
    HIJACKED = "hijacked"


class _ClientGone(trio.BrokenResourceError):
    """The transport broke, or stalled past the write timeout, while writing a response.

    A subclass of ``trio.BrokenResourceError``, so a streaming body sees trio's usual error.
    """


def socket_fileno(stream: trio.abc.Stream) -> int | None:
    """The OS socket under ``stream`` (through TLS), or None for in-memory streams."""
    while True:
        sock = getattr(stream, "socket", None)
        if sock is not None:
            try:
                return int(sock.fileno())
            except Exception:
                return None
        inner = getattr(stream, "transport_stream", None)
        if inner is None:
            return None
        stream = inner


class HTTPConnection:
    """Serve HTTP/1.1 requests on one transport until it closes, is hijacked or is cancelled.

    Resource handling: :meth:`run` does not close ``transport``: the caller owns it (the listener
    closes it in a ``finally``).  Streams handed to the app are closed before :meth:`run` returns.
    """

    # Slots: one of these lives per open connection; at 10,000 streams every byte counts.
    __slots__ = (
        "transport", "state", "info", "limits", "h11", "fileno", "client_gone",
        "_writing", "_write_waiters", "_scope", "_in_scope", "_read_deadline", "_read_phase",
        "_write_deadline", "_cancel_reason", "_started", "_finished", "_must_close",
        "_abort_status", "_body_read", "_body_wire", "_sent_bytes", "_head_only", "_prepared",
        "_hijacked", "_request_body", "_response_stream",
    )  # fmt: skip

    def __init__(self, transport: trio.abc.Stream, state: ServerState, info: ConnInfo) -> None:
        self.transport = transport
        self.state = state
        self.info = info
        self.limits: Limits = state.limits
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=state.limits.max_head_size)
        self.fileno = socket_fileno(transport)
        # One writer at a time, without a lock's extra trip through the scheduler when uncontended.
        self._writing = False
        self._write_waiters = trio.lowlevel.ParkingLot()
        # One cancel scope for the whole connection; its deadline is the nearer of the read and
        # write deadlines below.  Cheaper than a scope per read, write and app call, and every
        # reason to cancel (a timeout, a vanished client, shutdown) ends the connection anyway.
        self._scope = trio.CancelScope()
        self._in_scope = False
        self._read_deadline = math.inf
        self._read_phase = _ReadPhase.IDLE
        self._write_deadline = math.inf
        self._cancel_reason: str | None = None
        self.client_gone = False
        # per-request state, reset by _reset_request
        self._reset_request()

    def _reset_request(self) -> None:
        self._started = False  # response head sent
        self._finished = False  # response complete (EndOfMessage sent)
        self._must_close = False
        self._abort_status: int | None = None
        self._body_read = 0
        self._body_wire = 0  # bytes read from the transport while reading the body
        self._sent_bytes = 0
        self._head_only = False
        self._prepared: PreparedResponse | None = None
        self._hijacked: HijackedStream | None = None
        self._request_body: RequestBody | None = None
        self._response_stream: ResponseStream | None = None

    # ----------------------------------------------------------------------------- main loop

    async def run(self) -> None:
        self.state.connections.add(self)
        try:
            with self._scope:
                self._in_scope = True
                hijacked = await self._serve_requests()
            self._in_scope = False
            if self._scope.cancelled_caught:
                await self._after_cancel()
            elif not hijacked and not self.client_gone:
                await self._shutdown_transport()
        finally:
            self._in_scope = False
            state = self.state
            state.connections.discard(self)
            state.active.discard(self)
            if state.draining and not state.connections:
                state.all_closed.set()

    async def _serve_requests(self) -> bool:
        """The keep-alive loop.  Returns True if the connection was hijacked."""
        first = True
        while True:
            request = await self._read_request(first)
            first = False
            if request is None:
                return False
            outcome = await self._serve_request(request)
            if outcome is Outcome.HIJACKED:
                return True
            if outcome is Outcome.CLOSE or self.state.draining:
                return False
            if not await self._prepare_next_cycle():
                return False

    def _set_read_deadline(self, phase: _ReadPhase, deadline: float) -> None:
        self._read_phase = phase
        self._read_deadline = deadline
        self._scope.deadline = min(deadline, self._write_deadline)

    async def _after_cancel(self) -> None:
        """The connection's scope was cancelled: say why, and answer 408 where one is due."""
        who = f"{self.info.remote_addr}:{self.info.remote_port}"
        if self._cancel_reason is not None:
            log.info("%s: %s", who, self._cancel_reason)
            return
        if self._write_deadline <= trio.current_time():
            self.client_gone = True
            log.info("%s: client stopped reading (write timeout); connection dropped", who)
            return
        phase = self._read_phase
        if phase is _ReadPhase.HEAD:
            await self._reject(408, "timed out reading the request head")
        elif phase is _ReadPhase.BODY and not self._started:
            await self._reject(408, "timed out waiting for the request body")
        else:
            log.debug("%s: %s timeout; closing", who, phase.value)
            await self._shutdown_transport()

    async def _receive_into_h11(self) -> int:
        """Read once from the transport into h11; how many bytes.  EOF and resets become b""."""
        try:
            data = await self.transport.receive_some(RECEIVE_SIZE)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            data = b""
        self.h11.receive_data(data)
        return len(data)

    async def _read_request(self, first: bool) -> h11.Request | None:
        """The next request head, or None when the connection should end (after any error reply).

        Until the first byte arrives the keep-alive idle timeout applies (the header timeout
        for a new connection); the whole head must arrive within the header timeout.  When a
        deadline passes, the connection's scope is cancelled and :meth:`_after_cancel` answers.
        """
        limits = self.limits
        now = trio.current_time()
        head_deadline = now + limits.header_timeout
        self._set_read_deadline(
            _ReadPhase.IDLE, head_deadline if first else min(head_deadline, now + limits.keepalive_timeout)
        )
        while True:
            buffered = self.h11.trailing_data[0]
            if len(buffered) > limits.max_head_size and not _has_head_end(buffered, limits.max_head_size):
                # h11's size limit only covers heads that arrive in pieces; this covers the rest.
                if self._request_line_too_long(buffered):
                    await self._reject(414, "request line too long")
                else:
                    await self._reject(431, "request head too large")
                return None
            trick = _line_break_trick(buffered) if buffered else None
            if trick is not None:
                await self._reject(400, trick)
                return None
            try:
                event = self.h11.next_event()
            except h11.RemoteProtocolError as exc:
                await self._reject(exc.error_status_hint, str(exc))
                return None
            if event is h11.NEED_DATA:
                if buffered:
                    if self._request_line_too_long(buffered):
                        await self._reject(414, "request line too long")
                        return None
                    if self._read_phase is _ReadPhase.IDLE:
                        self._set_read_deadline(_ReadPhase.HEAD, head_deadline)
                elif self.state.draining:
                    return None  # graceful shutdown: no new request on this connection
                await self._receive_into_h11()
                continue
            if type(event) is h11.Request:
                self._set_read_deadline(_ReadPhase.APP, math.inf)
                problem = self._check_request(event)
                if problem is not None:
                    await self._reject(*problem)
                    return None
                return event
            # ConnectionClosed, or PAUSED after a Connection: close exchange: we are done.
            return None

    def _request_line_too_long(self, buffered: bytes) -> bool:
        end = buffered.find(b"\n")
        if end < 0:
            end = len(buffered)
        return end > self.limits.max_request_line

    def _check_request(self, request: h11.Request) -> tuple[int, str] | None:
        """RFC 9112 MUSTs and our limits that h11 leaves to the server."""
        if request.http_version not in (b"1.1", b"1.0"):
            return 505, "unsupported HTTP version"
        if len(request.target) > self.limits.max_request_line:
            return 414, "request target too long"
        headers = request.headers
        if len(headers) > self.limits.max_header_count:
            return 431, "too many header fields"
        problem = _target_problem(request.method, request.target)
        if problem is not None:
            return 400, problem
        hosts = 0
        has_te = has_cl = False
        for name, value in headers:
            if _VALUE_CTL_RE.search(value):  # RFC 9110 §5.5: invalid; we refuse, not retain
                return 400, "control character in a header field value"
            if name == b"host":
                hosts += 1
                if not _HOST_RE.fullmatch(value):  # RFC 9112 §3.2: MUST 400
                    return 400, "invalid Host header"
            elif name == b"transfer-encoding":
                has_te = True
            elif name == b"content-length":
                has_cl = True
                if self.limits.max_body_size is not None and int(value) > self.limits.max_body_size:
                    return 413, "request body too large"
        if hosts > 1:  # RFC 9112 §3.2: more than one Host is a 400
            return 400, "more than one Host header"
        if has_te and has_cl:  # RFC 9112 §6.1: a smuggling vector; refuse it outright
            return 400, "both Transfer-Encoding and Content-Length"
        return None

    async def _reject(self, status: int, reason: str) -> None:
        """Answer a protocol error with ``status`` and close, if the state allows an answer."""
        log.info("%s:%s: %d %s", self.info.remote_addr, self.info.remote_port, status, reason)
        if self.h11.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        body = f"{status} {REASONS.get(status, b'').decode()}: {reason}\n".encode()
        await self._send_error_response(status, body)

    async def _send_error_response(
        self, status: int, body: bytes, extra: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        headers = [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
            (b"date", date_header()),
            SERVER_HEADER,
        ]
        if extra:
            headers.extend(extra)
        try:
            data = self.h11.send(h11.Response(status_code=status, headers=headers, reason=REASONS.get(status, b"")))
            if self._head_only:
                data += self.h11.send(h11.EndOfMessage()) or b""
            else:
                data += self.h11.send(h11.Data(data=body)) or b""
                data += self.h11.send(h11.EndOfMessage()) or b""
            self._started = self._finished = True
            self._sent_bytes = len(body)
            await self._write(data)
        except (h11.LocalProtocolError, _ClientGone):
            pass

    async def _prepare_next_cycle(self) -> bool:
        """After a response: drain a small unread body, then ready h11 for the next request."""
        h = self.h11
        if h.our_state is not h11.DONE:
            return False
        drained = 0
        while h.their_state is not h11.DONE:
            if h.their_state is not h11.SEND_BODY:
                return False
            try:
                event = h.next_event()
            except h11.RemoteProtocolError:
                return False
            if event is h11.NEED_DATA:
                if self._read_phase is not _ReadPhase.DRAIN:
                    self._set_read_deadline(_ReadPhase.DRAIN, trio.current_time() + DRAIN_TIMEOUT)
                await self._receive_into_h11()
            elif type(event) is h11.Data:
                drained += len(event.data)
                if drained > DRAIN_LIMIT:
                    return False
        try:
            h.start_next_cycle()
        except h11.LocalProtocolError:
            return False
        self._reset_request()
        return True

    async def _shutdown_transport(self) -> None:
        """Half-close (where the transport can) so the client reads our last bytes before EOF.

        Closing a TCP socket with unread input in the kernel makes it send RST, which can destroy
        our error response in flight; sending FIN first and draining briefly avoids that.
        """
        send_eof = getattr(self.transport, "send_eof", None)
        if send_eof is None:
            return
        with trio.move_on_after(1):
            try:
                await send_eof()
                while await self.transport.receive_some(RECEIVE_SIZE):
                    pass
            except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError):
                pass

    # ------------------------------------------------------------------------- one request

    def _make_env(self, request: h11.Request) -> dict[str, Any]:
        env = build_env(request, self.info)
        body = self._request_body = RequestBody(self)
        env["rack.input"] = body
        env["rack.errors"] = ErrorsSink()
        env["rack.hijack?"] = True
        env["rack.hijack"] = self._full_hijack
        env["rack.early_hints"] = self._early_hints
        env["rack.response_finished"] = []
        env["trio_rack.shutdown"] = self.state.shutdown_started
        if self.state.proxy is not None:
            self.state.proxy.apply(env)
        return env

    async def _serve_request(self, request: h11.Request) -> Outcome:
        """Call the app and send what it returns.  Cancellation (timeouts, a vanished client,
        shutdown) propagates to :meth:`run`; the clean-up in ``finally`` happens regardless."""
        env = self._make_env(request)
        self._head_only = request.method == b"HEAD"
        status: int | None = None
        headers: Any = None
        error: BaseException | None = None
        result: Any = None
        self.state.active.add(self)
        try:
            try:
                result = await self.state.app(env)
            except Exception as exc:
                error = exc
            if self._hijacked is not None:
                if error is not None:
                    log.error("app failed after a full hijack", exc_info=error)
                return Outcome.HIJACKED
            if error is None:
                try:
                    prepared = self._prepared = prepare_response(result)
                    if request.method == b"CONNECT" and 200 <= prepared.status < 300 and prepared.hijack is None:
                        # h11 takes a 2xx to CONNECT as "tunnel open" and refuses any body: the
                        # client would get nothing and the log a traceback (hypercorn #277).
                        raise AppError(
                            "a 2xx response to CONNECT opens a tunnel: the app must hijack (RFC 9110 §9.3.6)"
                        )
                except AppError as exc:
                    error = exc
                    log.error("app %r broke the contract: %s", _app_name(self.state.app), exc)
                else:
                    status, headers = prepared.status, result[1]
                    return await self._send_response(prepared)
            elif self._abort_status is not None:
                # the request body was bad or too large; the app just let the error through
                log.info("%s:%s: %s", self.info.remote_addr, self.info.remote_port, error)
            else:
                log.error("app raised before the response started", exc_info=error)
            status = self._abort_status or 500
            await self._send_500(status)
            return Outcome.CLOSE
        except _ClientGone as exc:
            error = error or exc
            return Outcome.CLOSE
        except Exception as exc:
            # Failure while streaming the body after the head went out: abort visibly.
            error = exc
            if self._abort_status is not None and isinstance(exc, trio.BrokenResourceError):
                # A streaming body read a malformed, oversized or cut-off request body: the
                # client's doing, not the app's — no traceback, and its status if still possible.
                log.info("%s:%s: %s", self.info.remote_addr, self.info.remote_port, exc)
                if not self._started:
                    status = self._abort_status
                    await self._send_500(status)
            elif self._started:
                log.error("response aborted after the head was sent", exc_info=exc)
            else:
                log.error("app failed", exc_info=exc)
                status = self._abort_status or 500
                await self._send_500(status)
            return Outcome.CLOSE
        except BaseException as exc:  # cancelled: timeout, client gone or shutdown
            error = exc
            raise
        finally:
            self.state.active.discard(self)
            await self._finish_request(env, result, status, headers, error)

    async def _send_500(self, status: int) -> None:
        if self._started:
            return
        phrase = REASONS.get(status, b"").decode()
        await self._send_error_response(status, f"{status} {phrase}\n".encode())

    async def _finish_request(
        self,
        env: dict[str, Any],
        result: Any,
        status: int | None,
        headers: Any,
        error: BaseException | None,
    ) -> None:
        """Close everything the app was given, then run ``rack.response_finished`` callbacks.

        Runs in a ``finally`` and may run while cancelled: closing must still happen, so every
        step here is either synchronous or shielded with a short deadline.
        """
        if self._request_body is not None:
            self._request_body.close()
        if self._response_stream is not None:
            self._response_stream.close_from_server()
        body = result[2] if isinstance(result, (tuple, list)) and len(result) == 3 else None
        callbacks = env["rack.response_finished"]
        if self._hijacked is not None or callbacks or hasattr(body, "close") or hasattr(body, "aclose"):
            # Async clean-up: shielded (it must happen even when we are being cancelled) but
            # bounded.  The common case — a list body, no callbacks — never gets here.
            with trio.CancelScope(shield=True, deadline=trio.current_time() + 5):
                if self._hijacked is not None:
                    await self._hijacked.aclose()
                await _close_body(body)
                for callback in reversed(list(callbacks)):
                    try:
                        ret = callback(env, status, headers, error)
                        if inspect.isawaitable(ret):
                            await ret
                    except Exception:
                        log.exception("rack.response_finished callback %r failed", callback)
        if self.state.access_log:
            accesslog.log_response(env, status, self._sent_bytes, hijacked=self._hijacked is not None)

    # ------------------------------------------------------------------------------ output

    async def _write(self, data: bytes | memoryview) -> None:
        """The one way bytes reach the transport.  A stalled client raises _ClientGone.

        Writes are serialised (an app may read ``rack.input`` — which can send ``100 Continue``
        — in one task while its streaming body writes in another); large ones are sliced so the
        write timeout bounds a stall rather than a slow link.
        """
        while self._writing:  # another task of this connection is mid-write: queue behind it
            await self._write_waiters.park()
        self._writing = True
        view = memoryview(data) if len(data) > WRITE_SLICE else None
        try:
            if not self._in_scope:  # after the connection's scope (e.g. a 408 after a timeout)
                with trio.move_on_after(self.limits.write_timeout) as scope:
                    await self.transport.send_all(data)
                if scope.cancelled_caught:
                    raise _ClientGone("client stopped reading (write timeout)")
            elif view is None:
                self._set_write_deadline(trio.current_time() + self.limits.write_timeout)
                await self.transport.send_all(data)
            else:
                for offset in range(0, len(view), WRITE_SLICE):
                    self._set_write_deadline(trio.current_time() + self.limits.write_timeout)
                    await self.transport.send_all(view[offset : offset + WRITE_SLICE])
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self.client_gone = True
            raise _ClientGone(str(exc)) from None
        else:
            if self._in_scope:
                self._set_write_deadline(math.inf)
        finally:
            # (a cancelled write keeps its deadline: _after_cancel reads it to say why)
            self._writing = False
            self._write_waiters.unpark()

    def _set_write_deadline(self, deadline: float) -> None:
        self._write_deadline = deadline
        self._scope.deadline = min(deadline, self._read_deadline)

    def _final_headers(self, prepared: PreparedResponse) -> list[tuple[bytes, bytes]]:
        headers = prepared.headers
        names = {name for name, _ in headers}
        if b"date" not in names:
            headers.append((b"date", date_header()))
        if b"server" not in names:
            headers.append(SERVER_HEADER)
        if prepared.hijack is None and (
            self._must_close or self.state.draining or self.h11.they_are_waiting_for_100_continue
        ):
            # A client still waiting for 100-continue will not send its body: close after.
            headers.append((b"connection", b"close"))
        return headers

    def _head_event(self, prepared: PreparedResponse) -> h11.Response:
        return h11.Response(
            status_code=prepared.status,
            headers=self._final_headers(prepared),
            reason=REASONS.get(prepared.status, b""),
        )

    async def _send_response(self, prepared: PreparedResponse) -> Outcome:
        if prepared.hijack is not None:
            return await self._partial_hijack(prepared)
        no_body = self._head_only or prepared.status in (204, 304)
        kind = prepared.kind
        if kind is BodyKind.BUFFERED:
            pieces = [self.h11.send(self._head_event(prepared))]
            self._started = True
            if not no_body:
                for chunk in prepared.chunks:
                    if chunk:
                        pieces.extend(self.h11.send_with_data_passthrough(h11.Data(data=chunk)))
                self._sent_bytes = prepared.length
            pieces.append(self.h11.send(h11.EndOfMessage()))
            self._finished = True
            if prepared.length <= COALESCE_LIMIT:
                await self._write(b"".join(pieces))
            else:
                for piece in pieces:
                    if piece:
                        await self._write(piece)
        elif no_body:
            await self._start_streamed()
            await self.end_body()
        elif kind is BodyKind.STREAMING:
            stream = self._response_stream = ResponseStream(self, self._request_body)  # type: ignore[arg-type]
            await prepared.body(stream)
            if not stream.closed:
                stream.close_from_server()
                await self.end_body()
        elif kind is BodyKind.ASYNC_ITERABLE:
            async for chunk in prepared.body:
                await self.send_body_data(check_chunk(chunk))
            await self.end_body()
        else:
            for chunk in prepared.body:
                await self.send_body_data(check_chunk(chunk))
            await self.end_body()
        return Outcome.KEEP_ALIVE if self.h11.our_state is h11.DONE else Outcome.CLOSE

    async def _start_streamed(self) -> None:
        """Send the head of a streamed response (framing chosen by h11)."""
        if self._started:
            return
        assert self._prepared is not None
        self._started = True
        await self._write(self.h11.send(self._head_event(self._prepared)))

    async def send_body_data(self, data: bytes) -> None:
        """Frame and write response body bytes (used by streamed bodies and ResponseStream)."""
        if self._finished:
            raise trio.ClosedResourceError("the response is already complete")
        if not self._started:
            await self._start_streamed()
        if not data:
            return
        if self._head_only:
            return  # HEAD: same head, no body
        try:
            pieces = self.h11.send_with_data_passthrough(h11.Data(data=data))
        except h11.LocalProtocolError as exc:
            raise AppError(f"response body does not match its framing: {exc}") from None
        self._sent_bytes += len(data)
        if len(data) <= COALESCE_LIMIT:
            await self._write(b"".join(pieces))
        else:
            for piece in pieces:
                await self._write(piece)

    async def end_body(self) -> None:
        """Finish the response.  A body that never wrote gets ``content-length: 0``."""
        if self._finished:
            await trio.lowlevel.checkpoint()
            return
        if not self._started and self._prepared is not None and not self._prepared.app_length:
            if not self._head_only:
                self._prepared.headers.append((b"content-length", b"0"))
        await self._start_streamed()
        try:
            data = self.h11.send(h11.EndOfMessage())
        except h11.LocalProtocolError as exc:
            raise AppError(f"response ended short of its content-length: {exc}") from None
        self._finished = True
        if data:
            await self._write(data)
        if self.h11.our_state is h11.MUST_CLOSE:
            # Close-delimited (HTTP/1.0) body: the response ends only when the sending side does.
            await self._end_sending()

    async def _end_sending(self) -> None:
        send_eof = getattr(self.transport, "send_eof", None)
        try:
            if send_eof is not None:
                await send_eof()
            else:
                await self.transport.aclose()  # TLS has no half-close
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.client_gone = True

    async def _early_hints(self, headers: dict[str, Any]) -> None:
        """``env["rack.early_hints"]``: send a 103 before the final response (HTTP/1.1 only)."""
        if self._started or self._hijacked is not None:
            raise RuntimeError("early hints must come before the response")
        if self.h11.their_http_version != b"1.1":
            return
        wire = encode_headers(headers)
        await self._write(
            self.h11.send(h11.InformationalResponse(status_code=103, headers=wire, reason=b"Early Hints"))
        )

    async def receive_body_data(self) -> bytes:
        """The next piece of the decoded request body, b"" at its end (for RequestBody)."""
        h = self.h11
        limit = self.limits.max_body_size
        while True:
            if h.they_are_waiting_for_100_continue and not self._started:
                await self._write(h.send(h11.InformationalResponse(status_code=100, headers=[], reason=b"Continue")))
            try:
                event = h.next_event()
            except h11.RemoteProtocolError as exc:
                self._abort_status = exc.error_status_hint
                raise trio.BrokenResourceError(f"malformed request body: {exc}") from None
            if type(event) is h11.Data:
                self._body_read += len(event.data)
                if limit is not None and self._body_read > limit:
                    self._abort_status = 413
                    self._must_close = True
                    raise trio.BrokenResourceError(f"request body exceeds {limit} bytes")
                return bytes(event.data)
            if type(event) is h11.EndOfMessage:
                return b""
            if event is h11.NEED_DATA:
                if h.their_state is not h11.SEND_BODY:
                    return b""
                self._set_read_deadline(_ReadPhase.BODY, trio.current_time() + self.limits.body_timeout)
                self._body_wire += await self._receive_into_h11()  # cancelled on timeout
                self._set_read_deadline(_ReadPhase.APP, math.inf)
                if limit is not None and self._body_wire > limit + BODY_FRAMING_SLACK:
                    self._abort_status = 413
                    self._must_close = True
                    raise trio.BrokenResourceError(f"request body framing exceeds {limit} bytes")
                continue
            if type(event) is h11.ConnectionClosed or event is h11.PAUSED:
                return b""

    # ------------------------------------------------------------------------------ hijack

    def _take_transport(self) -> HijackedStream:
        assert self._request_body is not None
        replay = self._request_body.take_leftover() + self.h11.trailing_data[0]
        self._request_body.close()
        self.state.active.discard(self)  # the app owns the stream now: no liveness sweeps
        self._hijacked = HijackedStream(self.transport, replay)
        return self._hijacked

    def _full_hijack(self) -> HijackedStream:
        """``env["rack.hijack"]()``: hand the raw connection to the app; the server writes nothing."""
        if self._hijacked is not None:
            raise RuntimeError("the connection is already hijacked")
        if self._started:
            raise RuntimeError("cannot hijack: the response has started")
        return self._take_transport()

    async def _partial_hijack(self, prepared: PreparedResponse) -> Outcome:
        """Send the head as the app wrote it (no body framing), then await ``hijack(stream)``."""
        head = serialize_head(prepared.status, self._final_headers(prepared))
        self._started = True
        await self._write(head)
        stream = self._take_transport()
        await prepared.hijack(stream)
        return Outcome.HIJACKED

    def close_if_idle(self) -> None:
        """Graceful shutdown: end the connection now if it is waiting for a next request."""
        if self._read_phase is _ReadPhase.IDLE and self._in_scope:
            self._cancel_reason = "closed while idle: server shutting down"
            self._scope.cancel()

    def cancel_app(self) -> None:
        """Called by the liveness sweeper when the client hung up while the app was running."""
        self.client_gone = True
        self._cancel_reason = "client went away; app cancelled"
        self._scope.cancel()


def _line_break_trick(buffered: bytes) -> str | None:
    """Why the request head at the start of ``buffered`` must be refused, or None.

    Checked before h11 parses the head, on what has arrived so far: a bare CR in the blank
    line would otherwise keep the head "incomplete" until the header timeout.
    """
    end = _HEAD_END_RE.search(buffered)
    head = buffered[: end.end()] if end else buffered
    match = _LINE_BREAK_TRICK_RE.search(head)
    if match is None or (end is None and match.start() == len(head) - 1):
        return None  # clean, or a CR (or LF) at the very end whose partner may come next
    found = match.group()
    if found == b"\n":
        return "bare LF in the request head (RFC 9112 §2.2)"
    if found.startswith(b"\r"):
        return "bare CR in the request head (RFC 9112 §2.2)"
    return "obsolete line folding (RFC 9112 §5.2)"


def _target_problem(method: bytes, target: bytes) -> str | None:
    """RFC 9112 §3.2: which request-target forms a method may use, or None if fine."""
    if target.startswith(b"/"):
        return "fragment in the request target" if b"#" in target else None
    if target == b"*":
        return None if method == b"OPTIONS" else "asterisk-form is only for OPTIONS"
    if method == b"CONNECT":
        return None if _HOST_RE.fullmatch(target) and b":" in target else "CONNECT needs host:port"
    match = _ABSOLUTE_FORM_RE.fullmatch(target)
    if match is None:
        return "request target is neither origin-form nor absolute-form"
    if not _HOST_RE.fullmatch(match.group(1)) or not match.group(1):
        return "invalid authority in an absolute-form target"  # userinfo too (RFC 9110 §4.2.4)
    return None


def _has_head_end(buffered: bytes, limit: int) -> bool:
    """Whether a complete request head ends within the first ``limit`` bytes."""
    return buffered.find(b"\r\n\r\n", 0, limit + 4) >= 0 or buffered.find(b"\n\n", 0, limit + 2) >= 0


async def _close_body(body: Any) -> None:
    """Call the body's ``aclose()`` or ``close()`` (once), logging failures."""
    if body is None:
        return
    try:
        aclose = getattr(body, "aclose", None)
        if aclose is not None:
            await aclose()
            return
        close = getattr(body, "close", None)
        if close is not None:
            ret = close()
            if inspect.isawaitable(ret):
                await ret
    except Exception:
        log.exception("closing the response body failed")


def _app_name(app: Any) -> str:
    return getattr(app, "__qualname__", None) or type(app).__name__
