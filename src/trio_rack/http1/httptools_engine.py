"""A second HTTP/1 parser for the driver: llhttp (through httptools) behind h11's API and verdicts.

Theory of operation
-------------------
:class:`~trio_rack.http1.connection.HTTPConnection` drives ``self.h11``, an ``h11.Connection``.
:class:`HttptoolsConnection` is a drop-in for exactly the part of that API the driver uses
(``receive_data``, ``next_event``, ``send``, ``send_with_data_passthrough``, ``start_next_cycle``,
``our_state``, ``their_state``, ``their_http_version``, ``they_are_waiting_for_100_continue``,
``trailing_data``), speaking h11's own event classes and state sentinels and raising h11's
``RemoteProtocolError``/``LocalProtocolError``, so the driver — and the strictness layer of
:mod:`.strict` it runs around the parser — stays one driver for both parsers.

* **Only heads go to llhttp.**  The head is cut from the buffer at its ``CRLF CRLF`` (found with
  ``bytearray.find``) and fed to llhttp whole, so llhttp never sees a byte past the head: the
  pipelined rest, an upgrade's first bytes and a hijacker's read-ahead stay in our buffer
  (``trailing_data``) exactly as h11 keeps them.  llhttp has no way to stop at a message
  boundary that httptools exposes (no pause; the upgrade offset only for upgrades), so it
  is not given the chance to run past one.  llhttp runs with every lenient flag off.
* **Bodies are h11's readers.**  A ``content-length`` body is counted off the buffer as it
  arrives (h11's ``ContentLengthReader``, inline); a chunked one is read by h11's own
  ``ChunkedReader`` on h11's ``ReceiveBuffer`` (with the stricter chunk-extension grammar of
  :mod:`._h11_patch`), so chunk sizes, extensions, footers and trailers get h11's verdicts by
  construction.  A ``content-length`` body with nothing of it buffered may also be read by
  the driver straight from the wire (:meth:`HttptoolsConnection.direct_body_size`), which
  then reports only the count: the bytes skip the buffer's copies.  After a request with a
  body, llhttp (which saw the head only) is replaced by a fresh one before the next request;
  bodiless requests — the keep-alive hot path — reuse one parser for the whole connection.
* **h11 has the last word on a refused head.**  When llhttp refuses a head, the same bytes go
  to a throwaway ``h11.Connection``: its error is raised (same status hint, same message as
  the h11 path), and a head h11 accepts (a method llhttp does not know, ``get`` in lower
  case) is served as h11 parsed it.  Heads llhttp accepts are turned into ``h11.Request``
  events, which re-run h11's checks on the parsed parts (Host count, ``Content-Length`` and
  ``Transfer-Encoding`` rules, method and target characters); what the request line and
  header grammar of h11 refuse and llhttp passes is refused here with h11's message
  (:func:`_h11_grammar_problem`).  ``tests/test_parser_differential.py`` feeds the same bytes
  to both and requires the same verdict, request and leftover bytes.
* **Response heads are serialised here**, with h11's decisions reproduced: framing
  (``content-length``, chunked, close-delimited for HTTP/1.0, none for HEAD/1xx/204/304 and a
  2xx to CONNECT), ``connection: close`` when keep-alive is off or the body is
  close-delimited, and the state machine of h11's ``_state.py`` for the server role
  (``MUST_CLOSE``, ``MIGHT_SWITCH_PROTOCOL``, ``ERROR``).  Framing headers are written in
  lower case (as :mod:`._h11_patch` makes h11 write them).

Nothing here does I/O; the driver owns the transport.  One instance per connection.
"""

from __future__ import annotations

import re
from typing import Any

import h11
from h11._readers import ChunkedReader
from h11._receivebuffer import ReceiveBuffer
from h11._util import LocalProtocolError, RemoteProtocolError

from ..app.response import length_field
from ._h11_patch import request_event

httptools: Any
try:  # optional: the [speedups] extra
    import httptools
except ImportError:  # pragma: no cover - exercised where httptools is missing
    httptools = None

__all__ = ["AVAILABLE", "HttptoolsConnection"]

#: Whether httptools is importable (``--http1-parser auto`` picks it then).
AVAILABLE = httptools is not None

IDLE = h11.IDLE
SEND_RESPONSE = h11.SEND_RESPONSE
SEND_BODY = h11.SEND_BODY
DONE = h11.DONE
MUST_CLOSE = h11.MUST_CLOSE
CLOSED = h11.CLOSED
ERROR = h11.ERROR
MIGHT_SWITCH_PROTOCOL = h11._state.MIGHT_SWITCH_PROTOCOL
SWITCHED_PROTOCOL = h11.SWITCHED_PROTOCOL
NEED_DATA = h11.NEED_DATA
PAUSED = h11.PAUSED
Request = h11.Request
Response = h11.Response
InformationalResponse = h11.InformationalResponse
Data = h11.Data
EndOfMessage = h11.EndOfMessage
ConnectionClosed = h11.ConnectionClosed

_SWITCH_UPGRADE = "upgrade"
_SWITCH_CONNECT = "connect"
#: h11's request-line and header-line grammar (h11/_abnf.py), for what llhttp lets through.
_REQUEST_LINE_RE = h11._readers.request_line_re
#: A blank line ending a head the way h11 also takes it (bare LF): left to h11 to judge.
_LF_HEAD_END_RE = re.compile(rb"\n\r?\n")
_EMPTY_HEADERS = h11.EndOfMessage().headers
#: llhttp's version strings as h11 spells them (bytes), without an encode per request.
_VERSIONS = {"1.1": b"1.1", "1.0": b"1.0"}
#: The end of a body without trailers: one shared instance (h11's events are immutable), so a
#: request does not build an event and an empty ``Headers`` for it.
_END_OF_MESSAGE = h11.EndOfMessage()
#: States (client, server) in which no state-triggered transition of h11's applies while
#: keep-alive is on and no protocol switch is proposed: :meth:`HttptoolsConnection._settle`'s
#: fast path (the rules it would otherwise run need MIGHT_SWITCH_PROTOCOL, CLOSED or ERROR).
_QUIET_CLIENT = frozenset({IDLE, SEND_BODY, DONE})
_QUIET_SERVER = frozenset({IDLE, SEND_RESPONSE, SEND_BODY, DONE})


def _comma_values(value: bytes) -> list[bytes]:
    """h11's ``get_comma_header`` for one value: lower-cased, split on commas, stripped."""
    return [part.strip() for part in value.lower().split(b",") if part.strip()]


class _Sink:
    """The llhttp callbacks of one connection: the target and the raw header fields."""

    __slots__ = ("url", "fields")

    def __init__(self) -> None:
        self.url = b""
        self.fields: list[tuple[bytes, bytes]] = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.fields.append((name, value))


class HttptoolsConnection:
    """The server side of one HTTP/1 connection, parsed by llhttp, judged like h11 (see the module)."""

    __slots__ = (
        "_max", "_buf", "_closed", "_searched", "_sink", "_parser", "our_state", "their_state",
        "_keep_alive", "_proposals", "_request_method", "their_http_version",
        "they_are_waiting_for_100_continue", "_remaining", "_length", "_chunked", "_out", "_out_left",
    )  # fmt: skip

    def __init__(self, max_incomplete_event_size: int = 16 * 1024) -> None:
        if httptools is None:
            raise RuntimeError("httptools is not installed: pip install 'trio-rack[speedups]'")
        self._max = max_incomplete_event_size
        self._buf = ReceiveBuffer()
        self._closed = False
        self._searched = 0  # where the search for the head's end resumes
        self._sink = _Sink()
        self._parser = httptools.HttpRequestParser(self._sink)
        self.our_state: Any = IDLE
        self.their_state: Any = IDLE
        self._keep_alive = True
        self._proposals: set[str] = set()
        self._request_method: bytes | None = None
        self.their_http_version: bytes | None = None
        self.they_are_waiting_for_100_continue = False
        self._remaining = self._length = 0  # content-length body bytes still to come, of
        self._chunked: ChunkedReader | None = None
        #: Response body framing: "length", "chunked" or "http/1.0"; None outside SEND_BODY.
        self._out: str | None = None
        self._out_left = 0

    # ------------------------------------------------------------------------------ receiving

    @property
    def trailing_data(self) -> tuple[bytes, bool]:
        return bytes(self._buf), self._closed

    def receive_data(self, data: bytes) -> None:
        if data:
            if self._closed:
                raise RuntimeError("received close, then received more data?")
            self._buf += data
        else:
            self._closed = True

    def next_event(self) -> Any:
        if self.their_state is ERROR:
            raise RemoteProtocolError("Can't receive data when peer state is ERROR")
        try:
            event = self._extract_event()
            if event is NEED_DATA:
                if len(self._buf) > self._max:
                    raise RemoteProtocolError("Receive buffer too long", error_status_hint=431)
                if self._closed:
                    raise RemoteProtocolError("peer unexpectedly closed connection")
            elif event is not PAUSED:
                self._client_event(event)
            return event
        except BaseException as exc:
            self.their_state = ERROR
            self._settle()
            if isinstance(exc, LocalProtocolError):
                exc._reraise_as_remote_protocol_error()
            raise

    def direct_body_size(self) -> int:
        """Bytes of a ``content-length`` body still to come while none is buffered, else 0:
        the driver may read up to that many from the wire itself (as with
        :meth:`trio_rack.http1._h11_fast.ServerConnection.direct_body_size`)."""
        if (
            self.their_state is SEND_BODY
            and self._chunked is None
            and not self._buf
            and not self._closed
            and not self._proposals
        ):
            return self._remaining
        return 0

    def body_bytes_read(self, count: int) -> None:
        """``count`` body bytes (1 to :meth:`direct_body_size`) were read past the buffer: the
        state becomes what ``receive_data`` of them and the ``Data`` event would leave."""
        if not 0 < count <= self.direct_body_size():
            raise RuntimeError(f"{count} body bytes read directly, {self.direct_body_size()} allowed")
        self._remaining -= count
        self.they_are_waiting_for_100_continue = False

    def _extract_event(self) -> Any:
        state = self.their_state
        buf = self._buf
        event: Any
        if state is SEND_BODY:
            chunked = self._chunked
            if chunked is not None:
                event = chunked(buf)
            elif self._remaining == 0:
                event = _END_OF_MESSAGE
            else:
                data = buf.maybe_extract_at_most(self._remaining)
                event = None if data is None else Data(data=data)  # type: ignore[arg-type]  # as h11
            if event is None and not buf and self._closed:
                if chunked is not None:
                    chunked.read_eof()
                raise RemoteProtocolError(
                    "peer closed connection without sending complete message body "
                    f"(received {self._length - self._remaining} bytes, expected {self._length})"
                )
        elif state is IDLE:
            event = self._read_head()
        elif state is DONE and buf:
            return PAUSED
        elif state is MIGHT_SWITCH_PROTOCOL or state is SWITCHED_PROTOCOL:
            return PAUSED
        else:  # DONE, MUST_CLOSE, CLOSED: h11's expect_nothing
            if buf:
                raise LocalProtocolError("Got data when expecting EOF")
            event = None
        if event is None:
            if not buf and self._closed:
                return ConnectionClosed()
            return NEED_DATA
        return event

    def _read_head(self) -> Request | None:
        data = self._buf._data
        if not data:
            return None
        searched = self._searched
        end = data.find(b"\r\n\r\n", searched)
        if end < 0:
            if data[0] < 0x21 or _LF_HEAD_END_RE.search(data, searched) is not None:
                return self._h11_head()  # h11's verdict on a bad start or a bare-LF head
            self._searched = max(0, len(data) - 3)  # a head arriving in pieces is searched once
            return None
        self._searched = 0
        if data[0] < 0x21:
            return self._h11_head()  # leading empty line / whitespace: h11's exact error
        end += 4
        head = data[:end]
        sink = self._sink
        sink.url = b""
        fields = sink.fields = []
        parser = self._parser
        try:
            parser.feed_data(head)
        except httptools.HttpParserUpgrade:
            pass  # Upgrade or CONNECT: the head was all llhttp got; h11's rules decide below
        except httptools.HttpParserError:
            return self._h11_head()
        text = parser.get_http_version()
        version = _VERSIONS.get(text) or text.encode()
        method = parser.get_method()
        problem = _h11_grammar_problem(method, sink.url, version, fields, head)
        if problem is not None:
            return self._h11_head()
        self._buf._extract(end)  # before h11's checks below raise, as h11 consumes the head first
        return _request(method, sink.url, fields, version, head)

    def _h11_head(self) -> Request | None:
        """h11's verdict on the buffered head: its error raised, or its request (consumed)."""
        self._searched = 0
        judge = h11.Connection(h11.SERVER, max_incomplete_event_size=self._max)
        buffered = bytes(self._buf)
        judge.receive_data(buffered)
        try:
            event = judge.next_event()
        except RemoteProtocolError:  # h11's error, with what h11 had consumed of the buffer
            self._buf._extract(len(buffered) - len(judge.trailing_data[0]))
            raise
        if type(event) is not Request:
            return None
        self._buf._extract(len(buffered) - len(judge.trailing_data[0]))
        self._parser = httptools.HttpRequestParser(self._sink)
        return event

    # ------------------------------------------------------------------------------- states

    def _client_event(self, event: Any) -> None:
        kind = type(event)
        if kind is Data:
            self.they_are_waiting_for_100_continue = False
            if self._chunked is None:
                self._remaining -= len(event.data)
            return
        if kind is EndOfMessage:
            self.they_are_waiting_for_100_continue = False
            self.their_state = DONE
            self._settle()
            return
        if kind is ConnectionClosed:
            if self.their_state not in (IDLE, DONE, MUST_CLOSE, CLOSED):
                raise LocalProtocolError(
                    f"can't handle event type ConnectionClosed when role=CLIENT and state={self.their_state}"
                )
            self.their_state = CLOSED
            self._settle()
            return
        # A Request
        close = expect = upgrade = False
        chunked = False
        length = 0
        for _, name, value in event.headers._full_items:
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = True
            elif name == b"connection":
                close = b"close" in _comma_values(value)
            elif name == b"upgrade":
                upgrade = upgrade or bool(_comma_values(value))
            elif name == b"expect":
                expect = expect or b"100-continue" in _comma_values(value)
        if event.method == b"CONNECT":
            self._proposals.add(_SWITCH_CONNECT)
        if upgrade:
            self._proposals.add(_SWITCH_UPGRADE)
        self._settle()
        self.their_state = SEND_BODY
        if self.our_state is not IDLE:
            raise LocalProtocolError(
                f"can't handle event type Request when role=SERVER and state={self.our_state}"
            )
        self.our_state = SEND_RESPONSE
        self._settle()
        self._request_method = event.method
        version = event.http_version
        self.their_http_version = version
        if close or version < b"1.1":
            self._keep_alive = False
            self._settle()
        if expect and version >= b"1.1":
            self.they_are_waiting_for_100_continue = True
        if chunked:
            self._chunked = ChunkedReader()
        else:
            self._chunked = None
            self._remaining = self._length = length
        if chunked or length or self._proposals or not self._keep_alive:
            # llhttp is past the head but not at a message boundary (a body, an upgrade):
            # a fresh one for the next request.
            self._parser = httptools.HttpRequestParser(self._sink)

    def _settle(self) -> None:
        """h11's ``_fire_state_triggered_transitions`` for (client, server)."""
        if (
            self._keep_alive
            and not self._proposals
            and self.their_state in _QUIET_CLIENT
            and self.our_state in _QUIET_SERVER
        ):
            return  # the keep-alive cycle's every step: nothing below would fire
        while True:
            client, server = self.their_state, self.our_state
            if self._proposals:
                if client is DONE:
                    client = MIGHT_SWITCH_PROTOCOL
            elif client is MIGHT_SWITCH_PROTOCOL:
                client = DONE
            if not self._keep_alive:
                if client is DONE:
                    client = MUST_CLOSE
                if server is DONE:
                    server = MUST_CLOSE
            if client is MIGHT_SWITCH_PROTOCOL and server is SWITCHED_PROTOCOL:
                client = SWITCHED_PROTOCOL
            elif client is CLOSED and (server is DONE or server is IDLE):
                server = MUST_CLOSE
            elif client is ERROR and server is DONE:
                server = MUST_CLOSE
            elif server is CLOSED and (client is DONE or client is IDLE):
                client = MUST_CLOSE
            elif client is DONE and server is ERROR:
                client = MUST_CLOSE
            if client is self.their_state and server is self.our_state:
                return
            self.their_state, self.our_state = client, server

    def start_next_cycle(self) -> None:
        if self.their_state is not DONE or self.our_state is not DONE:
            raise LocalProtocolError(
                f"not in a reusable state. self.states={{CLIENT: {self.their_state}, SERVER: {self.our_state}}}"
            )
        self.their_state = self.our_state = IDLE
        self._request_method = None  # their_http_version stays, as h11 keeps it
        self._chunked = None
        self._remaining = 0

    # ------------------------------------------------------------------------------- sending

    def send(self, event: Any) -> bytes | None:
        pieces = self.send_with_data_passthrough(event)
        return None if pieces is None else b"".join(pieces)

    def send_with_data_passthrough(self, event: Any) -> list[Any] | None:
        if self.our_state is ERROR:
            raise LocalProtocolError("Can't send data when our state is ERROR")
        try:
            kind = type(event)
            if kind is Data:
                return self._send_data(event.data)
            if kind is EndOfMessage:
                return self._send_end(event.headers)
            if kind is Response:
                return self._send_response(event)
            if kind is InformationalResponse:
                return self._send_informational(event)
            if kind is ConnectionClosed:
                if self.our_state not in (IDLE, DONE, MUST_CLOSE, CLOSED):
                    raise LocalProtocolError(
                        f"can't handle event type ConnectionClosed when role=SERVER and state={self.our_state}"
                    )
                self.our_state = CLOSED
                self._settle()
                return None
            raise LocalProtocolError(f"can't handle event type {kind.__name__} when role=SERVER")
        except BaseException:
            self.our_state = ERROR
            self._settle()
            raise

    def _send_data(self, data: Any) -> list[Any]:
        if self.our_state is not SEND_BODY:
            raise LocalProtocolError(f"can't handle event type Data when role=SERVER and state={self.our_state}")
        out = self._out
        if out == "length":
            self._out_left -= len(data)
            if self._out_left < 0:
                raise LocalProtocolError("Too much data for declared Content-Length")
            return [data]
        if out == "chunked":
            if not data:
                return []
            return [b"%x\r\n" % len(data), data, b"\r\n"]
        return [data]

    def _send_end(self, trailers: Any) -> list[Any]:
        if self.our_state is not SEND_BODY:
            raise LocalProtocolError(
                f"can't handle event type EndOfMessage when role=SERVER and state={self.our_state}"
            )
        self.our_state = DONE
        self._settle()
        out = self._out
        self._out = None
        if out == "length":
            if self._out_left != 0:
                raise LocalProtocolError("Too little data for declared Content-Length")
            if trailers:
                raise LocalProtocolError("Content-Length and trailers don't mix")
            return []
        if out == "chunked":
            return [b"0\r\n", *_header_lines(trailers._full_items), b"\r\n"]
        if trailers:
            raise LocalProtocolError("can't send trailers to HTTP/1.0 client")
        return []

    def _send_informational(self, event: Any) -> list[Any]:
        state = self.our_state
        if state is not SEND_RESPONSE:
            raise LocalProtocolError(
                f"can't handle event type InformationalResponse when role=SERVER and state={state}"
            )
        if event.status_code == 101:
            if _SWITCH_UPGRADE not in self._proposals:
                raise LocalProtocolError("Received server _SWITCH_UPGRADE event without a pending proposal")
            self.our_state = SWITCHED_PROTOCOL
        self.they_are_waiting_for_100_continue = False
        self._settle()
        return _head(event.status_code, event.reason, event.headers._full_items)

    def _send_response(self, event: Any) -> list[Any]:
        state = self.our_state
        status = event.status_code
        items = event.headers._full_items
        method = self._request_method
        # h11's _clean_up_response_headers_for_sending (headers chosen as for GET on a HEAD),
        # then _body_framing of the cleaned response for the body writer; one pass when the
        # head needs no change (the common case).  Values are h11-normalised: a content-length
        # is one number, a transfer-encoding is "chunked".
        framing, length, closing = _scan(items)
        if status in (204, 304) or (method == b"CONNECT" and 200 <= status < 300):
            framing, length = "length", 0
        need_close = False
        if framing != "length":
            items = _without(items, b"content-length")
            items = _without(items, b"transfer-encoding")
            if self.their_http_version is None or self.their_http_version < b"1.1":
                framing = "http/1.0"
                if method != b"HEAD":
                    need_close = True
            else:
                framing = "chunked"
                items.append((b"transfer-encoding", b"transfer-encoding", b"chunked"))
        if not self._keep_alive or need_close:
            tokens: set[bytes] = set()
            for _, name, value in items:
                if name == b"connection":
                    tokens.update(_comma_values(value))
            tokens.discard(b"keep-alive")
            tokens.add(b"close")
            items = _without(items, b"connection")
            items.extend((b"connection", b"connection", token) for token in sorted(tokens))
            closing = True
        if method == b"HEAD":
            framing, length = "length", 0
        # the state machine
        switch = _SWITCH_CONNECT if _SWITCH_CONNECT in self._proposals and 200 <= status < 300 else None
        if state is not IDLE and state is not SEND_RESPONSE:
            raise LocalProtocolError(f"can't handle event type Response when role=SERVER and state={state}")
        if switch is None:
            self._proposals.clear()
            self.our_state = SEND_BODY
        else:
            self.our_state = SWITCHED_PROTOCOL
        self.they_are_waiting_for_100_continue = False
        if closing:
            self._keep_alive = False
        self._settle()
        if self.our_state is SEND_BODY:
            self._out = framing
            self._out_left = length
        return _head(status, event.reason, items)

    def send_whole(
        self, status: int, reason: bytes, fields: list[tuple[bytes, bytes]], body: Any, length: int
    ) -> list[Any] | None:
        """A buffered response's ``Response``, ``Data`` for each non-empty chunk of ``body``
        and ``EndOfMessage``, in one call: their pieces (the head's lines, then the chunks) and
        the state they leave, exactly as the three sends give them — or None, with nothing
        changed, where the response is not the plain keep-alive case (then the caller sends
        the events).

        The plain case: a final status with a body (200–999, not 204 or 304) answering an
        HTTP/1.1 request that is not HEAD or CONNECT, keep-alive on, no protocol switch
        proposed, no ``100-continue`` awaited, our side in SEND_RESPONSE and theirs in IDLE,
        SEND_BODY or DONE; ``fields`` (lower-case
        names, validated) hold exactly one ``content-length``, equal to ``length`` and to the
        chunks' sum, and no ``transfer-encoding``, ``connection`` or ``host``.  There the
        events' path decides nothing: the framing is that length, the head is written as
        given, the state goes SEND_RESPONSE → SEND_BODY → DONE with no transition of
        :meth:`_settle` firing.  What it costs instead: an ``h11.Response`` and its
        ``Headers`` of triples built, three dispatches through
        :meth:`send_with_data_passthrough` with their ``try``, the framing scan and the
        header-line pass.  ``tests/test_httptools_whole.py`` holds it to the three sends.
        """
        if (
            self.our_state is not SEND_RESPONSE
            or self.their_state not in _QUIET_CLIENT
            or not self._keep_alive
            or self._proposals
            or self.they_are_waiting_for_100_continue
            or self.their_http_version != b"1.1"
            or status < 200
            or status > 999
            or status == 204
            or status == 304
        ):
            return None
        method = self._request_method
        if method == b"HEAD" or method == b"CONNECT":
            return None
        lengths = 0
        for name, value in fields:
            if name == b"content-length":
                if lengths or value != length_field(length)[1]:  # (the shared pair: no format)
                    return None
                lengths = 1
            elif name == b"transfer-encoding" or name == b"connection" or name == b"host":
                return None
        if not lengths:
            return None
        total = 0
        for chunk in body:
            total += len(chunk)
        if total != length:
            return None
        pieces = [b"HTTP/1.1 %d %s\r\n" % (status, reason)]
        pieces += [b"%s: %s\r\n" % field for field in fields]
        pieces.append(b"\r\n")
        for chunk in body:
            if chunk:
                pieces.append(chunk)
        # the three sends' state: SEND_BODY with the length framing, then DONE (quiet: see _settle)
        self._proposals.clear()
        self.our_state = DONE
        self._out = None
        self._out_left = 0
        return pieces

    # ----------------------------------------------------------------------- (h11 spellings)

    @property
    def our_role(self) -> Any:
        return h11.SERVER

    @property
    def their_role(self) -> Any:
        return h11.CLIENT


def _scan(items: list[tuple[bytes, bytes, bytes]]) -> tuple[str, int, bool]:
    """h11's ``_body_framing`` for a response with a body (chunked, a length, or close-delimited:
    "http/1.0"), and whether ``connection`` says ``close``, in one pass."""
    length = -1
    chunked = closing = False
    for _, name, value in items:
        if name == b"content-length":
            if length < 0:
                length = int(value)
        elif name == b"transfer-encoding":
            chunked = True
        elif name == b"connection" and b"close" in _comma_values(value):
            closing = True
    if chunked:
        return "chunked", 0, closing
    if length >= 0:
        return "length", length, closing
    return "http/1.0", 0, closing


def _without(items: list[tuple[bytes, bytes, bytes]], name: bytes) -> list[tuple[bytes, bytes, bytes]]:
    return [item for item in items if item[1] != name]


def _header_lines(items: Any) -> list[bytes]:
    """h11's ``write_headers`` without the blank line: Host first, then the rest in order (one
    pass over a response without Host, the usual one)."""
    lines = [b"%s: %s\r\n" % (raw, value) for raw, name, value in items if name != b"host"]
    if len(lines) < len(items):
        lines[:0] = [b"%s: %s\r\n" % (raw, value) for raw, name, value in items if name == b"host"]
    return lines


def _head(status: int, reason: bytes, items: Any) -> list[Any]:
    lines = _header_lines(items)
    lines.insert(0, b"HTTP/1.1 %d %s\r\n" % (status, reason))
    lines.append(b"\r\n")
    return lines


def _request(
    method: bytes, target: bytes, fields: list[tuple[bytes, bytes]], version: bytes, head: bytes | bytearray
) -> Request:
    """``h11.Request(..., _parsed=True)`` for a head llhttp parsed, without its second look at
    the request line (:func:`._h11_patch.request_event`).

    :func:`_h11_grammar_problem` has matched the whole line with h11's ``request_line``
    already; when the line begins with exactly ``method SP target SP`` (checked here), h11's
    re-match of the method and the target is a second validation of the same bytes.  Any other
    shape goes through ``Request(...)``.
    """
    if not head.startswith(b"%s %s " % (method, target)):
        return Request(method=method, target=target, headers=fields, http_version=version, _parsed=True)
    event: Request = request_event(method, target, fields, version)
    return event


def _h11_grammar_problem(
    method: bytes, target: bytes, version: bytes, fields: list[tuple[bytes, bytes]], head: bytearray
) -> bool | None:
    """Whether h11's grammar would refuse what llhttp parsed (then h11 is asked for its verdict).

    llhttp and h11 agree on nearly everything; where llhttp is more lenient it is cheaper to
    spot the few shapes here than to re-run h11's regexes on every line.
    """
    line_end = head.find(b"\r\n")
    if _REQUEST_LINE_RE.fullmatch(head, 0, line_end) is None:
        return True
    for name, value in fields:
        if not name or value != value.strip(b" \t"):
            return True
    return None
