"""The HTTP/1.1 driver: one task drives one client connection through h11 and the exchange.

Theory of operation
-------------------
One task owns the transport.  It reads a request head (h11 parses it, :mod:`.strict` refuses
what h11 would let through), turns it into a protocol-neutral
:class:`~trio_rack.app.head.RequestHead`, and runs one :class:`~trio_rack.app.exchange.Exchange`
*in the same task* (no task per request on the keep-alive hot path), acting as its
:class:`~trio_rack.app.exchange.ResponseSink`: this class frames what the exchange sends
(content-length, chunked, close-delimited for HTTP/1.0, ``connection: close``).  Then it either
starts the next cycle (keep-alive, pipelining: bytes of the next request already buffered in h11
are parsed first) or closes.

* **One writer, one reader.**  Every write goes through one :class:`~trio_rack.net.transport.Writer`.
  Outside the app only this task reads; while the app runs, reads happen only on its behalf
  (``rack.input``, the streaming body), so a pipelined request is never consumed behind its back.
* **A read scope per request cycle, read deadlines the sweep enforces**
  (:class:`~trio_rack.net.transport.Deadlines`): idle, head, drain and body timeouts end the
  connection (at most 25 % late: no scope deadline moves per request); the scope covers the
  previous body's drain and the head's read, and the exchange only when the request has a
  body (see :meth:`HTTPConnection.run`);
  :meth:`HTTPConnection._after_cancel` then says why and answers ``408`` where one is due.
  A write blocked past the write timeout is found by the liveness sweeper, which cancels the
  request (see :mod:`trio_rack.net.transport`).  The request has a scope of its own, inside
  the exchange: a vanished client or a request deadline cancels the request, and
  the exchange records why.
* **Bodies past the parser.**  A ``content-length`` body the parser holds none of is read
  straight from the transport, at most the bytes still due, and handed to ``rack.input`` as
  it came (:meth:`HTTPConnection.receive_body`): the parser's buffer copied every byte three
  times.  The next request's bytes are never read with it.
* **Hijack.**  The app gets a :class:`~trio_rack.app.streams.HijackedStream` over the transport,
  with every byte h11 had buffered replayed first.  From then on h11 is out of the picture and
  the connection ends when the app does; the exchange closes the stream in a ``finally``.
* **Aborts are visible.**  If the app fails after the head went out, the connection is closed
  without the terminating chunk (or short of ``content-length``): clients see a truncated
  response as an error, never as a complete one.
"""

from __future__ import annotations

import inspect
import logging
import math
import os
import re
import socket
import struct
from collections.abc import Sequence
from typing import Any

import h11
import trio

from ..app import accesslog, scopes
from ..app.env import ConnInfo
from ..app.exchange import Exchange, Outcome
from ..app.response import REASONS
from ..app.streams import HijackedStream
from ..config import Limits
from ..errors import AppError, ClientGone, RequestBodyError
from ..net.transport import (
    BODY_RECEIVE_SIZE,
    COALESCE_LIMIT,
    DIRECT_BODY_SIZE,
    RECEIVE_SIZE,
    WRITE_SLICE,
    Deadlines,
    ReadPhase,
    Writer,
    end_sending,
    receive_after_turn,
    shutdown_transport,
    socket_fileno,
)
from ..net.write_batch import worth_holding
from ..state import SERVER_HEADER, ServerState, date_header
from . import strict
from ._h11_patch import fast_request_events, lower_case_framing_headers, tighten_chunk_extensions
from .body_rate import BodyRate
from .httptools_engine import HttptoolsConnection
from .parsers import new_parser
from .wire import serialize_head

__all__ = ["HTTPConnection"]

tighten_chunk_extensions()  # see _h11_patch: refuse NUL, bare CR, non-tokens in chunk-ext
lower_case_framing_headers()  # see _h11_patch: "transfer-encoding: chunked", not "Transfer-Encoding"
fast_request_events()  # see _h11_patch: no second match of the request line's method and target

log = logging.getLogger("trio_rack.error")

#: With ``max_body_size`` set, the bytes read for a body may exceed it by this much (chunk
#: headers, trailers, the start of a pipelined request) before the body counts as too large:
#: chunk extensions carry no body bytes but cost as much to read (Puma CVE-2024-21647).
BODY_FRAMING_SLACK = 64 * 1024
#: After a response, at most this much of an unread request body is drained to keep alive.
DRAIN_LIMIT = 64 * 1024
#: ... and for at most this long.
DRAIN_TIMEOUT = 1.0
#: h11's events take a private ``_parsed=True`` for headers its own parser produced, skipping
#: the name/value regexes (its framing checks — content-length, transfer-encoding — still run).
#: Response heads are validated by the exchange before they get here, and that second pass was
#: ~2.5 µs of a hello request; if a future h11 drops the flag, validation simply runs again.
_H11_TRUSTS_PARSED = "_parsed" in inspect.signature(h11.Response.__init__).parameters
_H11Headers: Any
try:
    from h11._headers import Headers as _H11Headers
except ImportError:  # pragma: no cover - another h11: the header list goes through h11's checks
    _H11Headers = None
#: ... and even with the flag, h11 normalises a header *list* once more (lower-cases every name,
#: re-splits and re-matches content-length: ~13,500 instructions of a hello response, the
#: second validation of a head the exchange built).  Handed a ``Headers`` (its internal
#: (raw name, name, value) form, which is what h11 itself passes when it rebuilds a response),
#: it takes it as it is: the exchange's names are lower-case tokens already, its
#: content-length digits, its values checked; h11 still derives the framing from them.
_PREBUILT_HEADERS = _H11_TRUSTS_PARSED and _H11Headers is not None and hasattr(_H11Headers, "_full_items")
#: ... and the event itself: ``h11.Response(...)`` with keyword arguments, ``super().__init__``
#: and ``__post_init__`` was ~1 µs of every response for what the exchange has checked already
#: (a validated head, an int status); with h11's four response slots as in h11 0.16, the event
#: is filled in directly (:meth:`HTTPConnection._head_event`), keeping h11's one rule on it:
#: a final response's status is 200 to 999.  Another h11: its constructor, as before.
_PREBUILT_RESPONSE = _PREBUILT_HEADERS and getattr(h11.Response, "__slots__", None) == (
    "headers", "http_version", "reason", "status_code",
)  # fmt: skip
#: h11's chunked body writer.  While it is the one in use, a streamed chunk is framed by
#: :meth:`HTTPConnection.send_data` itself, exactly as this writer frames it: in SEND_BODY a
#: Data event changes no state, and h11's event machinery around it (the event object, the
#: state-machine pass, the writer's three pieces) was 6.5 µs of each chunk against 0.15 µs.
#: If a future h11 renames it, every chunk simply goes through h11 again.
_CHUNKED_WRITER = getattr(getattr(h11, "_writers", None), "ChunkedWriter", None)
#: h11 gives every response a fresh, empty ``pending_switch_proposals`` set (216 B) and keeps it
#: until the next one: for a streamed response, as long as its body runs (10,000 sets at 10,000
#: open streams).  Nothing can be proposed while we send a body (proposals come with a request,
#: the next one is parsed only after this response ended), so from the head until
#: :meth:`HTTPConnection.end` one shared empty frozenset stands in, and a fresh set is put back
#: at the end, before h11 could ``add`` to it.  Only where h11 has that shape (0.16's).
_NO_PROPOSALS: frozenset[Any] = frozenset()
#: What :attr:`Deadlines.scope` is at the start of a cycle: typed as the attribute is (a plain
#: ``None`` would let mypy take the scope for None throughout the cycle, entered lazily or not).
_NO_SCOPE: trio.CancelScope | None = None
#: A ``bytearray(b'...')`` or ``b'...'`` repr inside h11's error messages.
_BYTES_REPR = re.compile(r"""bytearray\(b(['"])((?:\\.|(?!\1).)*)\1\)|\bb(['"])((?:\\.|(?!\3).)*)\3""")
#: How much of a refused request's first line the access log shows at most.
_LOGGED_LINE = 2048


def plain_reason(reason: str) -> str:
    """An error reason fit for the client: h11 quotes input as Python reprs, which mean nothing to
    an HTTP client (``illegal header line: bytearray(b'Host : x')``); this shows the text in
    double quotes instead, still escaped as the repr had it (``\\x00`` for a NUL byte)."""
    if "b'" not in reason and 'b"' not in reason:
        return reason
    return _BYTES_REPR.sub(lambda m: f'"{m.group(2) if m.group(1) else m.group(4)}"', reason)


_CONTINUE = h11.InformationalResponse(status_code=100, headers=[], reason=b"Continue")
#: The end of every response body (no trailers on HTTP/1): h11's events are immutable, so one
#: instance serves every response instead of an event and an empty ``Headers`` each.
_END = h11.EndOfMessage()


class _FileSlice:
    """Stands in for file bytes in h11's ``send_with_data_passthrough``: h11 needs only their length."""

    __slots__ = ("size",)

    def __init__(self, size: int) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size


class HTTPConnection:
    """Serve HTTP/1.1 requests on one transport until it closes, is hijacked or is cancelled.

    Resource handling: :meth:`run` does not close ``transport``: the caller owns it (the listener
    closes it in a ``finally``).  Streams handed to the app are closed before :meth:`run` returns.
    """

    # Slots: one of these lives per open connection; at 10,000 streams every byte counts.
    __slots__ = (
        "transport", "state", "info", "limits", "h11", "fileno", "client_gone", "writer",
        "deadlines", "exchange", "_cancel_reason", "_started", "_must_close", "_body_read",
        "_body_wire", "_head_only", "_fresh",
        "_body_rate", "parser", "_head_clock",
    )  # fmt: skip

    #: A full hijack hands over the raw connection (ResponseSink capability).
    can_full_hijack = True
    #: No response trailers on HTTP/1 (h11 could send chunked ones, but clients and proxies
    #: mostly drop them, and ASGI's trailers extension is offered on HTTP/2 only).
    can_send_trailers = False

    def __init__(
        self,
        transport: trio.abc.Stream,
        state: ServerState,
        info: ConnInfo,
        parser: str | None = None,
        *,
        waiting_since: float | None = None,
    ) -> None:
        self.transport = transport
        self.state = state
        self.info = info
        self.limits: Limits = state.limits
        #: "h11" or "httptools" (:mod:`.parsers`): the state's unless the caller (a test) says.
        self.parser = parser or state.http1_parser
        #: Named for h11, whose API both parsers speak (:mod:`.httptools_engine`).
        self.h11 = new_parser(self.parser, state.limits.max_head_size)
        self.fileno = socket_fileno(transport)
        self.deadlines = Deadlines()
        self.writer = Writer(transport, self.deadlines, state.limits.write_timeout, state.limits.write_batch)
        self.exchange: Exchange | None = None
        self._cancel_reason: str | None = None
        self.client_gone = False
        #: True until the first request head arrives.  A graceful drain closes idle keep-alive
        #: connections at once, but lets a connection accepted just before it send its first
        #: request (bounded by the header and graceful timeouts): closing it unanswered would fail
        #: a request that was never a keep-alive race (a rolling restart's new connections).
        self._fresh = True
        #: When the wait for the first head began, if before this driver (the dispatcher's
        #: peek for an HTTP/2 preface): the header timeout counts from then, not twice.
        self._head_clock = waiting_since
        self._reset_request()

    def _reset_request(self) -> None:
        self._started = False  # response head sent
        self._must_close = False
        self._body_read = 0
        self._body_wire = 0  # bytes read from the transport while reading the body
        self._head_only = False
        self._body_rate: BodyRate | None = None  # made at the first wait for body bytes

    # ----------------------------------------------------------------------------- main loop

    async def run(self) -> None:
        """The keep-alive loop: each cycle's reads in a scope of their own.

        One coroutine for the loop and the set-up around it (no ``_serve_requests`` of its
        own): its frame lives as long as the connection, 10,000 of them at 10,000 open
        streams, and every resumption of a streamed response passes through each frame.

        A cycle's scope (:attr:`Deadlines.scope`, the one the sweep cancels when a read
        deadline passes) covers the drain of the previous request's unread body and the read
        of this request's head; a request that announces a body (:func:`.strict.has_body`)
        runs its exchange inside it too, so its body reads are timed as the head's were.  A
        request without one leaves it before the exchange: nothing that exchange does reads
        from the transport, and while it runs (a stream: minutes) the task is in the
        request's own scope alone, not in two (a cancel status and its two sets, some 700 B
        a stream).  Outside both the server's cancellation still reaches it (the connections'
        nursery); writes stay timed by the sweep through the exchange (``in_scope`` stays set).

        The scope is entered lazily (:meth:`_enter_read_scope`): only before a read that may
        wait, or for the exchange of a request with a body.  Under load most keep-alive heads
        are read without waiting (:func:`.receive_after_turn`'s yield comes first), and then
        no scope is made at all: its making, entering and leaving were some 11,700 of a hello
        request's instructions (``bench/README.md``, "Since 23ec116").  Until it is entered
        ``Deadlines.scope`` is None, so the sweep and :meth:`close_if_idle` have nothing to
        cancel; entering it catches up on what they would have done meanwhile.
        """
        state = self.state
        state.connections.add(self)
        deadlines = self.deadlines
        state.read_deadlines.add(deadlines)
        hijacked = cancelled = False
        try:
            while True:
                # The cycle's scope is made and entered only when a read has to wait
                # (:meth:`_enter_read_scope`; see the docstring): None until then.
                deadlines.scope = _NO_SCOPE
                deadlines.in_scope = True
                try:
                    # (_fresh: the first cycle, with no previous request to finish)
                    ready = self._fresh or await self._prepare_next_cycle()
                    request = await self._read_request(self._fresh) if ready else None
                    self._fresh = False
                    if request is None:
                        outcome = None
                    else:
                        if strict.has_body(request):
                            self._enter_read_scope()  # its body reads are timed in it
                        elif deadlines.scope is not None:
                            scopes.leave(deadlines.scope)  # (see the docstring: the exchange runs outside it)
                            deadlines.scope = None  # (nor kept while it runs: 112 B a stream)
                        self._head_only = request.method == b"HEAD"
                        exchange = self.exchange = Exchange(state, self, strict.request_head(request), self.info)
                        # h11's event (its Headers, the raw names and target) is not needed once
                        # the head is built: not kept for the whole response (a long stream's life).
                        del request
                        # exchange.run(), its steps taken here: one coroutine fewer under a
                        # streamed response, 10,000 of them at 10,000 open streams
                        try:
                            if exchange.begin():
                                try:
                                    outcome = await exchange.respond()
                                except BaseException as exc:
                                    outcome = await exchange.finish(exc)
                                else:
                                    outcome = await exchange.finish(outcome)
                            else:
                                outcome = await exchange.run_begun()
                        finally:
                            self.exchange = None
                            if exchange.client_gone or self.writer.broken:
                                self.client_gone = True
                        del exchange  # (nor the exchange, its env and body, while the next request is awaited)
                except BaseException as exc:
                    scope = deadlines.scope
                    if scope is None:
                        raise
                    deadlines.in_scope = False
                    if not scopes.exit_with(scope, exc):
                        raise
                    cancelled = True
                    break
                scope = deadlines.scope
                if scope is not None:
                    scopes.leave(scope)
                    if scope.cancel_called:  # (an app that swallowed the Cancelled: still the end)
                        cancelled = True
                        break
                    del scope
                if outcome is None:
                    break
                if outcome is Outcome.HIJACKED:
                    hijacked = True
                    break
                if outcome is Outcome.CLOSE or state.draining or self.client_gone:
                    break
            deadlines.in_scope = False
            if cancelled:  # a read deadline passed, or close_if_idle
                await self._after_cancel()
            elif not hijacked and not self.client_gone and await self.writer.settle():
                await shutdown_transport(self.transport)
        finally:
            self.writer.release_held()
            deadlines.in_scope = False
            state.read_deadlines.discard(deadlines)
            state.connections.discard(self)

    @trio.lowlevel.enable_ki_protection
    def _enter_read_scope(self) -> None:
        """Enter this cycle's read scope (:attr:`Deadlines.scope`) unless it is entered already.

        Called before every read that may wait (a drain, a head's next bytes, the keep-alive
        wait once :func:`.receive_after_turn`'s first read found nothing) and before the
        exchange of a request with a body.  While no scope was entered the sweep
        (:meth:`.Deadlines.expire_if_due`) and a graceful drain's :meth:`close_if_idle` found
        nothing to cancel, so what they would have done is done here: a read deadline already
        passed cancels the new scope at once (the wait then raises ``Cancelled`` and
        :meth:`_after_cancel` answers as for the sweep's), and so does a drain begun while this
        connection was between requests.  Either way no deadline is enforced later than with
        the scope entered all along, and none earlier.

        KI-protected (at no cost per call: Trio marks the code object), as :func:`.scopes.enter`
        is: between making the scope, publishing it in :attr:`Deadlines.scope` and entering
        it, a Ctrl-C raised in place would reach :meth:`run`'s handler with a scope it never
        entered, and exiting that turned the ``KeyboardInterrupt`` into Trio's "cancel scope
        stack corrupted" ``RuntimeError``.  Deferred, it arrives at the next checkpoint: the
        read's, inside the entered scope, which :meth:`run` then exits cleanly.
        """
        deadlines = self.deadlines
        if deadlines.scope is not None:
            return
        scope = deadlines.scope = scopes.new()
        scopes.enter(scope)
        deadlines.expire_if_due(trio.current_time())
        if self.state.draining:
            self.close_if_idle()

    async def _after_cancel(self) -> None:
        """The connection's scope was cancelled: say why, and answer 408 where one is due
        (after the last response, if its write still holds some: net/write_batch.py)."""
        who = f"{self.info.remote_addr}:{self.info.remote_port}"
        if self._cancel_reason is not None:
            log.info("%s: %s", who, self._cancel_reason)
            await self.writer.settle()
            return
        phase = self.deadlines.read_phase
        if not await self.writer.settle():
            log.debug("%s: %s timeout; the client was gone", who, phase.value)
            return
        if phase is ReadPhase.HEAD:
            await self._reject(408, "timed out reading the request head")
        elif phase is ReadPhase.BODY and not self._started:
            await self._reject(408, "timed out waiting for the request body")
        else:
            log.debug("%s: %s timeout; closing", who, phase.value)
            await shutdown_transport(self.transport)  # (settled above)

    async def _receive_into_h11(self, size: int = RECEIVE_SIZE) -> int:
        """Read once (at most ``size`` bytes) from the transport into h11; how many bytes.  EOF
        and resets become b"" (in the cycle's read scope: :meth:`_enter_read_scope`)."""
        self._enter_read_scope()
        data = await self._receive_some(size)
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
        head_deadline = (now if self._head_clock is None else self._head_clock) + limits.header_timeout
        self._head_clock = None
        idle_deadline = head_deadline if first else min(head_deadline, now + limits.keepalive_timeout)
        self.deadlines.set_read(ReadPhase.IDLE, idle_deadline)
        skipped = 0  # empty lines ignored before this request line
        while True:
            buffered, closed = self.h11.trailing_data
            if not buffered and not closed:
                # Nothing buffered (the keep-alive case: the last response went out, the next
                # request is not here yet): the parser, waiting for a request line, can only
                # answer NEED_DATA, so it is not asked; the branch for NEED_DATA below, minus
                # what needs buffered bytes.
                if self.state.draining and not self._fresh:
                    return None  # graceful shutdown: no new request on this connection
                # _receive_into_h11, inline (one coroutine fewer per request, on the path
                # every keep-alive request waits in), and what it put in the parser's empty
                # buffer is what ``trailing_data`` would give next: not asked again.
                sock = self.writer.socket  # plain TCP: see receive_after_turn
                if sock is not None:
                    data = await receive_after_turn(sock, RECEIVE_SIZE, self._enter_read_scope, self.writer)
                    self.writer.took_turn()
                else:
                    self._enter_read_scope()
                    try:
                        data = bytes(await self.transport.receive_some(RECEIVE_SIZE))
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        data = b""
                self.h11.receive_data(data)
                buffered, closed = data, not data
            if len(buffered) > limits.max_head_size and not strict.has_head_end(buffered, limits.max_head_size):
                # h11's size limit only covers heads that arrive in pieces; this covers the rest.
                if strict.request_line_too_long(buffered, limits.max_request_line):
                    await self._reject(414, "request line too long")
                else:
                    await self._reject(431, "request head too large")
                return None
            trick = strict.line_break_trick(buffered) if buffered else None
            if trick is not None:
                await self._reject(400, trick)
                return None
            try:
                event = self.h11.next_event()
            except h11.RemoteProtocolError as exc:
                # h11 refuses an empty line before the request line; RFC 9112 §2.2 says ignore
                # at least one.  Checked only here, so the hot path pays nothing for it.
                allowed = strict.MAX_LEADING_EMPTY_LINES - skipped
                skip = strict.leading_empty_lines(buffered, allowed)
                rest = buffered[skip:]
                if skip or (rest == b"\r" and allowed > 0):
                    skipped += skip // 2
                    # h11 has no way to drop bytes it buffered, and is in its ERROR state now:
                    # a fresh one (equal to a reset one between keep-alive requests) gets the rest.
                    self.h11 = new_parser(self.parser, limits.max_head_size)
                    if rest == b"\r":  # h11 refuses a lone CR that may begin another empty line
                        if not await self._receive_into_h11():
                            return None
                        rest += self.h11.trailing_data[0]
                        self.h11 = new_parser(self.parser, limits.max_head_size)
                    if rest:  # (receive_data(b"") would mean end of file)
                        self.h11.receive_data(rest)
                    continue
                await self._reject(exc.error_status_hint, str(exc))
                return None
            if event is h11.NEED_DATA:
                if buffered:
                    if strict.request_line_too_long(buffered, limits.max_request_line):
                        await self._reject(414, "request line too long")
                        return None
                    deadlines = self.deadlines
                    if deadlines.read_phase is ReadPhase.IDLE:
                        # Later by as much as the idle wait's deadline was moved: the time the
                        # last response's held rest took to go out (Writer.settle) is not the head's.
                        deadlines.set_read(ReadPhase.HEAD, head_deadline + (deadlines.read_deadline - idle_deadline))
                elif self.state.draining and not self._fresh:
                    return None  # graceful shutdown: no new request on this connection
                await self._receive_into_h11()
                continue
            if type(event) is h11.Request:
                if self.writer.broken:
                    # The last response's held write found the client gone at the batch's flush
                    # (net/write_batch.py), after the cycle had looked: as after a failed write,
                    # no further request of this connection's is served.
                    self.client_gone = True
                    return None
                self.deadlines.set_read(ReadPhase.APP, math.inf)
                problem = strict.check_request(event, limits)
                if problem is not None:
                    await self._reject(*problem)
                    return None
                return event
            # ConnectionClosed, or PAUSED after a Connection: close exchange: we are done.
            return None

    async def _reject(self, status: int, reason: str) -> None:
        """Answer a protocol error with ``status`` and close, if the state allows an answer.

        The request never reached the app, so no exchange logs it: it gets its access-log line
        here (with the request line when h11 has not consumed it yet, else ``-``).

        No exchange means the sweep's write check does not watch this answer, nor does a read
        deadline stand once the head is parsed (:func:`.strict.check_request`'s refusals): the
        write times itself out (``in_scope`` off: :meth:`.Writer.write`), or a client that
        never reads would hold the connection until shutdown.  The connection ends after it.
        """
        self.deadlines.in_scope = False
        reason = plain_reason(reason)
        log.info("%s:%s: %d %s", self.info.remote_addr, self.info.remote_port, status, reason)
        if self.h11 is None or self.h11.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return  # (None: the connection was handed over by a full hijack)
        body = f"{status} {REASONS.get(status, b'').decode()}: {reason}\n".encode()
        line = self._unparsed_request_line()
        sent = await self._send_error_response(status, body)
        if self.state.access_log:
            accesslog.log_rejected(self.info.remote_addr, status, len(body) if sent else 0, line)

    def _unparsed_request_line(self) -> bytes | None:
        """The first line still in h11's buffer (at most :data:`_LOGGED_LINE` bytes), if any."""
        buffered = self.h11.trailing_data[0]
        if not buffered:
            return None
        return bytes(buffered[:_LOGGED_LINE]).split(b"\n", 1)[0].rstrip(b"\r") or None

    async def _send_error_response(
        self, status: int, body: bytes, extra: list[tuple[bytes, bytes]] | None = None
    ) -> bool:
        """An error response with ``connection: close``; whether it was sent."""
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
                data += self.h11.send(_END) or b""
            else:
                data += self.h11.send(h11.Data(data=body)) or b""
                data += self.h11.send(_END) or b""
            self._started = True
            await self.writer.write(data)
        except (h11.LocalProtocolError, ClientGone):
            return False
        return True

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
                if self.deadlines.read_phase is not ReadPhase.DRAIN:
                    # The response first, if its write still holds some (net/write_batch.py):
                    # outside the drain's read scope, so the write timeout bounds it, not the
                    # drain's second, which starts once it is out, as it did after an unheld write.
                    if self.writer.held is not None and not await self.writer.settle():
                        return False
                    self.deadlines.set_read(ReadPhase.DRAIN, trio.current_time() + DRAIN_TIMEOUT)
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


    # ------------------------------------------------------------------ ResponseSink (one request)

    def _framed_headers(self, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        if self._must_close or self.state.draining or self.h11.they_are_waiting_for_100_continue:
            # A client still waiting for 100-continue will not send its body: close after.
            headers.append((b"connection", b"close"))
        return headers

    def _head_event(self, status: int, headers: list[tuple[bytes, bytes]]) -> h11.Response:
        # The exchange validated these headers (app/response.py: token names, field values
        # without CTLs, Latin-1) and adds only constants, so h11's second pass over them is
        # skipped with its ``_parsed`` flag: see _H11_TRUSTS_PARSED.
        fields: Any = self._framed_headers(headers)
        if _PREBUILT_HEADERS:
            fields = _H11Headers([(name, name, value) for name, value in fields])
            if _PREBUILT_RESPONSE and 200 <= status < 1000:  # see _PREBUILT_RESPONSE
                event = object.__new__(h11.Response)
                object.__setattr__(event, "headers", fields)
                object.__setattr__(event, "http_version", b"1.1")
                object.__setattr__(event, "reason", REASONS.get(status, b""))
                object.__setattr__(event, "status_code", status)
                return event
        return h11.Response(
            status_code=status,
            headers=fields,
            reason=REASONS.get(status, b""),
            _parsed=_H11_TRUSTS_PARSED,
        )

    async def send_head(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        """The head of a streamed response (framing chosen by h11: chunked, or close-delimited)."""
        self._started = True
        h = self.h11
        data = h.send(self._head_event(status, headers))
        cstate = getattr(h, "_cstate", None)  # (h11's; see _NO_PROPOSALS)
        if cstate is not None and type(cstate.pending_switch_proposals) is set and not cstate.pending_switch_proposals:
            cstate.pending_switch_proposals = _NO_PROPOSALS
        await self.writer.write(data)

    async def send_whole(
        self, status: int, headers: list[tuple[bytes, bytes]], body: Sequence[bytes], length: int, head_only: bool
    ) -> None:
        """A buffered response, coalesced into one write when small."""
        h = self.h11
        pieces: Any = None
        if (
            type(h) is HttptoolsConnection
            and length <= COALESCE_LIMIT
            and not head_only
            and not self._must_close
            and not self.state.draining
        ):
            # head, chunks and end in one call of the engine's, where the response is the plain
            # keep-alive case (None otherwise: the events below); see its send_whole
            pieces = h.send_whole(status, REASONS.get(status, b""), headers, body, length)
            if pieces is not None:
                self._started = True
        if pieces is None:
            # The head's pieces as the parser made them (h11: a piece per header line), joined
            # once with the rest when small: one join, not one for the head and one for all.
            pieces = h.send_with_data_passthrough(self._head_event(status, headers)) or []
            self._started = True
            if length > COALESCE_LIMIT:
                pieces = [b"".join(pieces)]
            if not head_only:
                for chunk in body:
                    if chunk:
                        pieces.extend(h.send_with_data_passthrough(h11.Data(data=chunk)) or ())
            pieces.append(h.send(_END))
        if length <= COALESCE_LIMIT:
            # Held for the batch's flush (net/write_batch.py) while the scheduler is busy (asked
            # first: the cheapest test, and false under light load), where nothing else of this
            # connection's can happen before its next read, which sends it first if need be:
            # the connection stays open and no next request is buffered (whose hijack would
            # hand the socket over before the flush).
            batch = (
                self.writer.batch_limit > 1
                and worth_holding()
                and not self._must_close
                and not self.state.draining
                and h.our_state is h11.DONE
                and not h.trailing_data[0]
            )
            await self.writer.write(b"".join(pieces), batch)
        else:
            for piece in pieces:
                if piece:
                    await self.writer.write(piece)

    async def send_data(self, data: bytes) -> None:
        """Frame and write body bytes of a streamed response."""
        h = self.h11
        if (
            type(getattr(h, "_writer", None)) is _CHUNKED_WRITER
            and 0 < len(data) <= COALESCE_LIMIT
            and h.our_state is h11.SEND_BODY
        ):
            await self.writer.write(b"%x\r\n%b\r\n" % (len(data), data))  # see _CHUNKED_WRITER
            return
        try:
            pieces = self.h11.send_with_data_passthrough(h11.Data(data=data)) or []
        except h11.LocalProtocolError as exc:
            raise AppError(f"response body does not match its framing: {exc}") from None
        if len(data) <= COALESCE_LIMIT:
            await self.writer.write(b"".join(pieces))
        else:
            for piece in pieces:
                await self.writer.write(piece)

    async def send_file(self, fd: int, offset: int, length: int | None) -> int | None:
        """Send ``length`` bytes of the open file ``fd`` from ``offset`` (None: to its end) with
        ``os.sendfile``.

        Zero copy needs the kernel to see the wire: only a plain TCP (or Unix) socket stream
        qualifies; over TLS this returns None and the exchange reads the body in slices.  h11
        keeps the framing: each slice is passed through it as a placeholder with a length
        (:class:`_FileSlice`), so it checks ``content-length`` and writes chunk headers while
        the bytes themselves go from the page cache to the socket.  The exchange opened the file
        (before the head) and closes it.  Returns the bytes sent.
        """
        if type(self.transport) is not trio.SocketStream:
            return None
        size = os.fstat(fd).st_size
        remaining = max(0, size - offset) if length is None else length
        total = remaining
        h = self.h11
        while remaining > 0:
            count = min(remaining, WRITE_SLICE)
            try:
                placeholder: Any = _FileSlice(count)  # h11 needs only len(); see the docstring
                pieces: list[Any] = h.send_with_data_passthrough(h11.Data(data=placeholder)) or []
            except h11.LocalProtocolError as exc:
                raise AppError(f"response body does not match its framing: {exc}") from None
            # h11 returns [framing..., the placeholder, framing...]: bytes around the file's.
            at = next(i for i, piece in enumerate(pieces) if type(piece) is _FileSlice)
            try:
                await self.writer.send_file(
                    b"".join(pieces[:at]), fd, offset, count, b"".join(pieces[at + 1 :])
                )
            except EOFError as exc:
                raise AppError(f"file body shrank while being sent: {exc}") from None
            offset += count
            remaining -= count
        return total

    async def end(self) -> None:
        """End a streamed response (the terminating chunk, or the end of a close-delimited body)."""
        h = self.h11
        try:
            data = h.send(_END)
        except h11.LocalProtocolError as exc:
            raise AppError(f"response ended short of its content-length: {exc}") from None
        cstate = getattr(h, "_cstate", None)
        if cstate is not None and cstate.pending_switch_proposals is _NO_PROPOSALS:
            cstate.pending_switch_proposals = set()  # before the next request may propose a switch
        if data:
            await self.writer.write(data)
        if self.h11.our_state is h11.MUST_CLOSE:
            # Close-delimited (HTTP/1.0) body: the response ends only when the sending side does.
            if not await end_sending(self.transport):
                self.client_gone = True

    async def send_informational(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        """A 1xx (103 Early Hints) before the final response; HTTP/1.0 clients get none."""
        if self.h11.their_http_version != b"1.1":
            return
        event = h11.InformationalResponse(status_code=status, headers=headers, reason=REASONS.get(status, b""))
        await self.writer.write(self.h11.send(event))

    async def send_error(self, status: int, body: bytes) -> None:
        """A plain-text error response with ``connection: close``, if the state allows one."""
        await self._send_error_response(status, body)

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport.wait_send_all_might_not_block()

    def write_blocked_since(self) -> float:
        """When the write under way started, ``math.inf`` if none (for the write-timeout sweep)."""
        return self.writer.blocked_since

    def abort(self) -> None:
        """The response failed mid-body: the connection closes without finishing it.

        A chunked or ``content-length`` body shows the cut (no last chunk, too few bytes).  A
        close-delimited one (an HTTP/1.0 client's streamed body) would end with an orderly
        FIN, which *means* "complete": it is reset instead (``SO_LINGER`` 0), so the client
        sees an error, never a short body taken for a whole one.
        """
        self._must_close = True
        if self.h11.our_state is h11.SEND_BODY and self.h11.their_http_version == b"1.0":
            sock = _socket_of(self.transport)
            if sock is not None:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                except OSError:
                    pass
            self.client_gone = True  # no orderly half-close: the listener's close resets

    async def receive_body(self, size_hint: int | None = None) -> bytes:
        """The next piece of the decoded request body, b"" at its end (for ``rack.input``).

        A ``content-length`` body of which the parser holds nothing buffered is read straight
        from the transport, at most the bytes still due (never a byte of the next request), and
        handed on as it came: the parser is told only the count (``direct_body_size`` and
        ``body_bytes_read``, on both parsers; see :mod:`._h11_fast`), which spares every body
        byte the three copies of the parser's buffer and a fourth of ``bytes()``.  Anything else
        (bytes already buffered with the head, a chunked body, a peer that closed) goes through
        the parser's buffer and events as before.

        A direct read asks for up to :data:`DIRECT_BODY_SIZE` when the app reads all it can
        (``size_hint`` None: ``read_all``), and for no more than the reads through the parser
        would (``size``, or the app's ``size_hint`` if bigger) when the app reads in pieces:
        what a read brought is held until the app has read it, and an app reading 64 KiB at a
        time (the ASGI and WSGI adapters) must not hold 1 MiB per upload it is reading.
        """
        h = self.h11
        limit = self.limits.max_body_size
        size = BODY_RECEIVE_SIZE if limit is None else RECEIVE_SIZE
        piece = DIRECT_BODY_SIZE if size_hint is None else min(max(size_hint, size), DIRECT_BODY_SIZE)
        direct = getattr(h, "direct_body_size", None)  # (a plain h11.Connection has none)
        while True:
            if h.they_are_waiting_for_100_continue and not self._started:
                await self.writer.write(h.send(_CONTINUE))
            wanted = direct() if direct is not None else 0
            if wanted:
                # (A declared length over max_body_size was refused with the head: strict.py.)
                data = await self._receive_body_bytes(min(wanted, piece))
                if data:
                    received = len(data)
                    h.body_bytes_read(received)
                    self._body_wire += received
                    self._body_read += received
                    return data
                h.receive_data(b"")  # the end of the stream: the parser's verdict, just below
            try:
                event = h.next_event()
            except h11.RemoteProtocolError as exc:
                raise RequestBodyError(exc.error_status_hint, f"malformed request body: {exc}") from None
            if type(event) is h11.Data:
                self._body_read += len(event.data)
                if limit is not None and self._body_read > limit:
                    self._must_close = True
                    raise RequestBodyError(413, f"request body exceeds {limit} bytes")
                return bytes(event.data)
            if type(event) is h11.EndOfMessage:
                return b""
            if event is h11.NEED_DATA:
                if h.their_state is not h11.SEND_BODY:
                    return b""
                data = await self._receive_body_bytes(size)
                h.receive_data(data)
                self._body_wire += len(data)
                if limit is not None and self._body_wire > limit + BODY_FRAMING_SLACK:
                    self._must_close = True
                    raise RequestBodyError(413, f"request body framing exceeds {limit} bytes")
                continue
            if type(event) is h11.ConnectionClosed or event is h11.PAUSED:
                return b""

    async def _receive_body_bytes(self, size: int) -> bytes:
        """One read of at most ``size`` bytes for the request body (b"" at the end of the stream
        or when it broke), within the body timeout and the ``--min-body-rate`` minimum."""
        rate = self._body_rate
        if rate is None:
            rate = self._body_rate = BodyRate(self.limits.min_body_rate)
        now = trio.current_time()
        self.deadlines.set_read(ReadPhase.BODY, now + self.limits.body_timeout)
        left = rate.time_left()
        try:
            if left < self.limits.body_timeout:
                # --min-body-rate would fail before the body timeout: wait only that long.
                with trio.move_on_after(max(left, 0.0)) as slow:
                    data = await self._receive_some(size)  # cancelled on body timeout too
                if slow.cancelled_caught:
                    self._must_close = True
                    raise RequestBodyError(
                        408, f"request body slower than {rate.min_rate:g} bytes a second (--min-body-rate)"
                    )
            else:
                data = await self._receive_some(size)  # cancelled on timeout
        except BaseException:
            # The read did not finish.  Unless the body timeout itself expired (the sweep
            # set the deadline to infinity: the driver answers 408 from the BODY phase),
            # the app stopped reading (its own cancel or timeout, a slow-rate 408 it may
            # catch): the body deadline must not stay armed under what the app does
            # next (a long response, a hijack), or the sweep would cut that.
            if self.deadlines.read_deadline != math.inf:
                self.deadlines.set_read(ReadPhase.APP, math.inf)
            raise
        rate.record(trio.current_time() - now, len(data))
        self.deadlines.set_read(ReadPhase.APP, math.inf)
        return data

    async def _receive_some(self, size: int) -> bytes:
        """One read from the transport, as bytes; b"" at the end of the stream or when it broke
        (or when what the last response's write still held could not be sent first)."""
        writer = self.writer
        if writer.held is not None and not await writer.settle():
            return b""
        try:
            data = await self.transport.receive_some(size)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return b""
        return data if type(data) is bytes else bytes(data)

    def discard_body(self) -> None:
        """Nothing to do now: after the response, an unread body is drained briefly or the connection closes."""

    def set_trailers(self, trailers: list[tuple[bytes, bytes]]) -> None:
        """Never called: ``can_send_trailers`` is False (the exchange offers no trailers here)."""
        raise RuntimeError("response trailers are not sent over HTTP/1")

    def take_stream(self, leftover: bytes) -> HijackedStream:
        """Full hijack: the raw transport, replaying decoded-but-unread body bytes and h11's buffer."""
        stream = HijackedStream(self.transport, leftover + self.h11.trailing_data[0])
        # The parser is never used again (its buffer went with the stream): released, so an
        # idle websocket does not keep it (about 1.7 KiB each, bench/ws_probe.py).
        self.h11 = None
        return stream

    async def start_partial_hijack(
        self, status: int, headers: list[tuple[bytes, bytes]], leftover: bytes
    ) -> HijackedStream:
        """Send the head as the app wrote it (no body framing), then hand over the transport."""
        self._started = True
        await self.writer.write(serialize_head(status, headers))
        return self.take_stream(leftover)

    # ----------------------------------------------------------------------- server hooks

    def close_if_idle(self) -> None:
        """Graceful shutdown: end the connection now if it is waiting for a next request."""
        deadlines = self.deadlines
        if deadlines.read_phase is ReadPhase.IDLE and deadlines.in_scope and deadlines.scope and not self._fresh:
            self._cancel_reason = "closed while idle: server shutting down"
            deadlines.scope.cancel()


def _socket_of(stream: trio.abc.Stream) -> Any:
    """The trio socket under ``stream`` (plain TCP only: TLS has its own close), or None."""
    return getattr(stream, "socket", None) if isinstance(stream, trio.SocketStream) else None
