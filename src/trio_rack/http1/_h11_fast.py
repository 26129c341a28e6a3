"""h11's server connection, with the steady-state steps of a request cycle taken in one go.

Theory of operation
-------------------
h11 takes every event through the same general machinery.  ``next_event`` and
``send_with_data_passthrough`` both end in ``_process_event``, which copies the state dict,
asks ``_server_switch_event``, walks the transition tables, fires the state-triggered
transitions, works out ``_keep_alive`` and 100-continue with ``get_comma_header``, and lets
``_respond_to_state_changes`` pick the next reader or writer (running ``_body_framing`` again);
a ``Response`` is first cleaned up (``_clean_up_response_headers_for_sending``: the framing from
``_body_framing``, then ``set_comma_header`` for ``content-length``, ``transfer-encoding`` and
``connection``, each rebuilding and renormalising the whole header list).  For a plain request
and a response the driver has already validated, in the common states, every one of those
decisions is known from one pass over the header list: the general path was ~14 µs of the
~23 µs h11 spent on one hello cycle (parse, end of message, response, body, end).

:class:`ServerConnection` is ``h11.Connection(h11.SERVER)`` taking these steps directly, with
h11's exact result — the same events, bytes (the same pieces, even), states, keep-alive flag,
switch proposals, 100-continue flag, request method, peer version, reader and writer:

* **receiving a Request** (both sides IDLE, no proposal): h11's own reader (or the one
  :mod:`._h11_patch` installed) makes the event; a plain one (no CONNECT, no ``upgrade`` or
  ``expect`` header) takes h11's two transitions, its keep-alive rule (``connection: close``,
  HTTP/1.0) and the reader ``_body_framing`` picks; any other goes to h11's ``_process_event``;
* **receiving Data and EndOfMessage** (``SEND_BODY``, h11's content-length or chunked reader):
  Data moves no state and ends a 100-continue wait; the end is ``DONE`` and h11's own
  state-triggered transitions whenever any could fire.  A content-length reader with nothing
  left returns one shared ``EndOfMessage`` (h11 makes a fresh, equal one each time);
* **a content-length body read past the buffer** (:meth:`ServerConnection.direct_body_size`,
  :meth:`ServerConnection.body_bytes_read`): while h11 holds none of the body buffered, the
  driver reads at most the bytes still due straight from the socket and hands them to the app
  as they came, telling h11 only their count.  h11's own path copies each byte three times
  (``+=`` into its ``ReceiveBuffer``, then ``maybe_extract_at_most`` slices the buffer twice)
  and the driver a fourth (``bytes()`` of the ``bytearray``): four of the five copies of a
  10 MiB upload (``bench/README.md``).  The state afterwards is h11's after ``receive_data``
  and the ``Data`` event (the reader's count, 100-continue over), and never a byte past the
  body is read, so the next request's bytes stay in the kernel;
* **sending a Response** while our state is ``SEND_RESPONSE``, no protocol switch is proposed,
  and the head is plain: at most one ``content-length`` (ASCII digits, h11's 20 at most), at
  most one ``transfer-encoding`` (exactly ``chunked``), ``http_version`` ``1.1`` and an ``int``
  status; h11's cleanup rules, its one transition (``SEND_RESPONSE`` → ``SEND_BODY``), the
  keep-alive rule (``process_keep_alive_disabled``, h11's own method) and the writer
  ``_body_framing`` would pick; the head written by h11's own ``write_headers``;
* **sending Data** in ``SEND_BODY``: no state changes there, so just h11's body writer;
* **sending EndOfMessage** in ``SEND_BODY``: ``DONE``, then h11's own state-triggered
  transitions whenever any could fire (keep-alive off, a peer that closed or failed), then the
  writer's ``send_eom``;
* **the next cycle** from both sides DONE with keep-alive on: both IDLE, and IDLE's reader
  and writer.

Anything else (an ``InformationalResponse``, a response before a request or during a switch
proposal, a head that is not plain, ``ConnectionClosed``, any error state) goes through h11's
own methods unchanged; errors are h11's (``_process_error``, a local error re-raised as a
remote one when receiving).  The steps rely on one invariant of h11's state machine: after
every public call the states are a fixed point of the state-triggered transitions (every
change of ``ConnectionState.states`` is followed by ``_fire_state_triggered_transitions``), so
a step that moves only known states knows which of them can fire.

Installed only over the exact h11 it was written against: h11's version is one of
:data:`CHECKED_H11`, its ``send_with_data_passthrough`` is still its own, and the lower-case
framing headers of :mod:`._h11_patch` are in place (the names this writes); otherwise
:func:`new_server_connection` gives a plain ``h11.Connection``.
``tests/test_h11_fast_send.py`` holds this class to unpatched h11 on a corpus of request and
response pairs (HTTP/1.0 and 1.1, keep-alive and close, HEAD, CONNECT, upgrades, 1xx, 204 and
304, chunked and content-length, ``connection`` headers, 100-continue, framing errors) and on
the parser differential suite's corpus, split as it splits it: the events, the bytes and every
piece of state after each call.
"""

from __future__ import annotations

from typing import Any

import h11
from h11 import CLIENT, DONE, SEND_BODY, SEND_RESPONSE, SERVER, Data, EndOfMessage, Response, _connection, _writers
from h11._headers import Headers, get_comma_header
from h11._readers import ChunkedReader, ContentLengthReader
from h11._util import LocalProtocolError, RemoteProtocolError
from h11._writers import ChunkedWriter, ContentLengthWriter, Http10Writer, write_headers

from ._h11_patch import _set_comma_header_lower

__all__ = ["CHECKED_H11", "FAST_SEND", "ServerConnection", "new_server_connection"]

#: The h11 releases whose send machinery the steps here were checked against, line by line.
CHECKED_H11 = frozenset({"0.16.0"})

IDLE = h11.IDLE
NEED_DATA = h11.NEED_DATA
Request = h11.Request
READERS = h11._readers.READERS
WRITERS = _writers.WRITERS
_BODY_WRITERS = (ContentLengthWriter, ChunkedWriter, Http10Writer)
_BODY_READERS = (ContentLengthReader, ChunkedReader)
#: What a content-length reader with nothing left returns (h11 makes a fresh, equal one).
_END = EndOfMessage()
#: Request headers that send a request through h11's own ``_process_event``.
_RARE_REQUEST = frozenset({b"upgrade", b"expect"})
#: Client states in which, with keep-alive on and no switch proposed, none of h11's
#: state-triggered transitions can fire whatever our state becomes (they need the client in
#: MIGHT_SWITCH_PROTOCOL, CLOSED or ERROR, or keep-alive off).
_QUIET_CLIENT = frozenset({h11.IDLE, SEND_BODY, DONE})
#: Server states in which, with keep-alive on and no switch proposed, the client's DONE
#: triggers nothing (h11's rules for a DONE client need the server CLOSED or ERROR).
_QUIET_SERVER = frozenset({h11.IDLE, SEND_RESPONSE, SEND_BODY, DONE})
#: h11's CONTENT_LENGTH_MAX_DIGITS: a longer value goes through h11 (which refuses it).
_MAX_DIGITS = 20
#: The reader of a request without a body, one for every connection: a content-length reader
#: with nothing left changes nothing when called (it returns the end; ``read_eof`` raises), and
#: it is kept as long as the response takes (88 B at each of 10,000 open streams).
_NO_BODY = ContentLengthReader(0)
#: The writer of a chunked response body, one for every connection: h11's has no state (each
#: call writes what it is given), and it is kept as long as the response streams.
_CHUNKED = ChunkedWriter()
#: The request's method and version as one shared ``bytes`` each, for the common ones: the
#: connection keeps both for the response's life (h11's parser makes them anew per request).
_SHARED = {token: token for token in (b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"1.1", b"1.0")}


class ServerConnection(h11.Connection):
    """``h11.Connection(h11.SERVER)`` receiving a plain request and sending a plain response
    without h11's general path (see the module docstring).  One per connection, like h11's."""

    def __init__(self, max_incomplete_event_size: int = _connection.DEFAULT_MAX_INCOMPLETE_EVENT_SIZE) -> None:
        super().__init__(SERVER, max_incomplete_event_size=max_incomplete_event_size)

    # ------------------------------------------------------------------------------ receiving

    def next_event(self) -> Any:
        cstate = self._cstate
        states = cstate.states
        client = states[CLIENT]
        reader: Any = self._reader
        if cstate.pending_switch_proposals:
            return super().next_event()
        if client is IDLE:
            if states[SERVER] is not IDLE or reader is not READERS[(CLIENT, IDLE)]:
                return super().next_event()
        elif client is not SEND_BODY or type(reader) not in _BODY_READERS:
            return super().next_event()
        try:
            # _extract_next_receive_event, for a reader without read_eof (IDLE) or with one.
            buf = self._receive_buffer
            if type(reader) is ContentLengthReader and reader._remaining == 0:
                event: Any = _END
            else:
                event = reader(buf)
            if event is None:
                if not buf and self._receive_buffer_closed:
                    if client is IDLE:
                        event = h11.ConnectionClosed()
                        self._process_event(CLIENT, event)
                        return event
                    event = reader.read_eof()  # (raises: a body cut short)
                else:
                    if len(buf) > self._max_incomplete_event_size:
                        raise RemoteProtocolError("Receive buffer too long", error_status_hint=431)
                    if self._receive_buffer_closed:
                        raise RemoteProtocolError("peer unexpectedly closed connection")
                    return NEED_DATA
            kind = type(event)
            if kind is Request:
                self._received_request(event)
            elif kind is Data:
                # _process_event(CLIENT, Data) in SEND_BODY: no state moves; 100-continue is over.
                self.client_is_waiting_for_100_continue = False
            elif kind is EndOfMessage:
                self._received_end(event)
            else:
                self._process_event(CLIENT, event)
            return event
        except BaseException as exc:
            self._process_error(CLIENT)
            if isinstance(exc, LocalProtocolError):
                exc._reraise_as_remote_protocol_error()
            raise

    def direct_body_size(self) -> int:
        """Bytes of a ``content-length`` request body still to come while none of them is
        buffered, else 0: the driver may read up to that many from the wire itself and report
        them with :meth:`body_bytes_read` (the body path without the buffer's copies; see the
        module docstring)."""
        reader: Any = self._reader
        if (
            type(reader) is ContentLengthReader
            and not self._receive_buffer
            and not self._receive_buffer_closed
            and self._cstate.states[CLIENT] is SEND_BODY
            and not self._cstate.pending_switch_proposals
        ):
            return int(reader._remaining)
        return 0

    def body_bytes_read(self, count: int) -> None:
        """``count`` bytes of the body (1 to :meth:`direct_body_size`) were read past the
        buffer: the state becomes h11's after ``receive_data`` of them and the ``next_event``
        that returns them as one ``Data`` (the reader's count; the end of a 100-continue wait)."""
        reader: Any = self._reader
        if not 0 < count <= self.direct_body_size():
            raise RuntimeError(f"{count} body bytes read directly, {self.direct_body_size()} allowed")
        reader._remaining -= count
        # _process_event(CLIENT, Data) in SEND_BODY: no state moves; 100-continue is over.
        self.client_is_waiting_for_100_continue = False

    def _received_request(self, event: Any) -> None:
        """h11's ``_process_event(CLIENT, request)`` (see the module docstring)."""
        length = b""
        chunked = connection = rare = False
        for _, name, value in event.headers._full_items:
            if name == b"content-length":
                length = value  # (h11's Request kept one value, of digits)
            elif name == b"transfer-encoding":
                chunked = True  # (h11's Request kept one, "chunked")
            elif name == b"connection":
                connection = True
            elif name in _RARE_REQUEST:
                rare = True
        if rare or event.method == b"CONNECT":
            # A switch proposal (CONNECT, upgrade) or an expectation: h11's own step.
            self._process_event(CLIENT, event)
            return
        cstate = self._cstate
        # IDLE -> SEND_BODY, and the server's IDLE -> SEND_RESPONSE; nothing state-triggered
        # applies there (no proposal, neither side DONE).
        cstate.states[CLIENT] = SEND_BODY
        cstate.states[SERVER] = SEND_RESPONSE
        method, version = event.method, event.http_version
        self._request_method = _SHARED.get(method, method)
        version = self.their_http_version = _SHARED.get(version, version)
        # _keep_alive(request): "close" among the connection tokens, or HTTP/1.0
        if (connection and b"close" in get_comma_header(event.headers, b"connection")) or version < b"1.1":
            cstate.process_keep_alive_disabled()
        self._writer = WRITERS[(SERVER, SEND_RESPONSE)]  # type: ignore[assignment]
        # _body_framing(method, request): chunked, else content-length (none: 0)
        if chunked:
            self._reader = ChunkedReader()
        else:
            self._reader = ContentLengthReader(int(length)) if length and length.strip(b"0") else _NO_BODY

    def _received_end(self, event: Any) -> None:
        """h11's ``_process_event(CLIENT, EndOfMessage)``: DONE, then what that triggers."""
        cstate = self._cstate
        states = cstate.states
        server = states[SERVER]
        states[CLIENT] = DONE
        if not (cstate.keep_alive and server in _QUIET_SERVER):
            cstate._fire_state_triggered_transitions()
        self.client_is_waiting_for_100_continue = False
        if states[SERVER] is not server:
            self._writer = self._get_io_object(SERVER, event, WRITERS)
        self._reader = self._get_io_object(CLIENT, event, READERS)

    def start_next_cycle(self) -> None:
        """h11's ``start_next_cycle`` for both sides DONE on a keep-alive connection (what h11
        asserts then): IDLE again, and the readers and writers of IDLE."""
        cstate = self._cstate
        states = cstate.states
        if (
            states[CLIENT] is DONE
            and states[SERVER] is DONE
            and len(states) == 2
            and cstate.keep_alive
            and not cstate.pending_switch_proposals
            and not self.client_is_waiting_for_100_continue
        ):
            cstate.states = {CLIENT: IDLE, SERVER: IDLE}
            self._request_method = None
            self._writer = WRITERS.get((SERVER, IDLE))  # type: ignore[assignment]
            self._reader = READERS.get((CLIENT, IDLE))  # type: ignore[assignment]
            return
        super().start_next_cycle()

    # -------------------------------------------------------------------------------- sending

    def send_with_data_passthrough(self, event: Any) -> list[Any] | None:
        kind = type(event)
        cstate = self._cstate
        states = cstate.states
        ours = states[SERVER]
        if ours is SEND_BODY:
            writer: Any = self._writer
            if type(writer) in _BODY_WRITERS:
                if kind is Data:
                    # h11's _process_event for Data in SEND_BODY changes nothing: its writer.
                    out: list[Any] = []
                    try:
                        writer.send_data(event.data, out.append)
                    except BaseException:
                        self._process_error(SERVER)
                        raise
                    return out
                if kind is EndOfMessage and not cstate.pending_switch_proposals:
                    return self._send_end(event, writer)
        elif ours is SEND_RESPONSE and kind is Response and not cstate.pending_switch_proposals:
            try:
                head = self._send_response(event)
            except BaseException:
                self._process_error(SERVER)
                raise
            if head is not None:
                return head
        return super().send_with_data_passthrough(event)

    def _send_end(self, event: Any, writer: Any) -> list[Any]:
        cstate = self._cstate
        states = cstate.states
        client = states[CLIENT]
        try:
            states[SERVER] = DONE  # EVENT_TRIGGERED_TRANSITIONS[SERVER][SEND_BODY][EndOfMessage]
            if not (cstate.keep_alive and client in _QUIET_CLIENT):
                cstate._fire_state_triggered_transitions()
            self._writer = WRITERS.get((SERVER, states[SERVER]))  # type: ignore[assignment]  # (not SEND_BODY)
            if states[CLIENT] is not client:
                self._reader = self._get_io_object(CLIENT, event, READERS)
            out: list[Any] = []
            writer.send_eom(event.headers, out.append)
        except BaseException:
            self._process_error(SERVER)
            raise
        return out

    def _send_response(self, event: Any) -> list[Any] | None:
        """The plain response's bytes and state changes as h11 makes them, or None (h11's path)."""
        headers = event.headers
        status = event.status_code
        if type(headers) is not Headers or type(status) is not int or event.http_version != b"1.1":
            return None
        if self._writer is not _writers.write_any_response:
            return None
        items = headers._full_items
        lengths = codings = 0
        length = b""
        connection = False
        for _, name, value in items:
            if name == b"content-length":
                lengths += 1
                length = value
            elif name == b"transfer-encoding":
                codings += 1
                if value != b"chunked":
                    return None
            elif name == b"connection":
                connection = True
        if lengths > 1 or codings > 1 or (lengths and not (length.isdigit() and len(length) <= _MAX_DIGITS)):
            return None
        method = self._request_method
        empty = status == 204 or status == 304 or (method == b"CONNECT" and 200 <= status < 300)
        cstate = self._cstate
        # _clean_up_response_headers_for_sending: the framing chosen as for GET on a HEAD.
        need_close = False
        rebuilt = False
        if not empty and (codings or not lengths):  # "chunked" or "http/1.0"
            # h11's rebuild lower-cases every name from its raw spelling: a name that is not
            # its raw name lower-cased (even where both are one object) would change there.
            for raw, name, _ in items:
                if raw.lower() != name:
                    return None  # not a Headers h11 would rebuild unchanged: h11's own path
            items = [item for item in items if item[1] != b"content-length" and item[1] != b"transfer-encoding"]
            rebuilt = True
            version = self.their_http_version
            if version is None or version < b"1.1":
                codings = 0
                if method != b"HEAD":
                    need_close = True
            else:
                codings = 1
                items.append((b"transfer-encoding", b"transfer-encoding", b"chunked"))
            lengths = 0
        closing = False
        if not cstate.keep_alive or need_close:
            if not rebuilt:
                for raw, name, _ in items:
                    if raw.lower() != name:
                        return None
            tokens = set(get_comma_header(Headers(items), b"connection"))
            tokens.discard(b"keep-alive")
            tokens.add(b"close")
            items = [item for item in items if item[1] != b"connection"]
            items.extend((b"connection", b"connection", token) for token in sorted(tokens))
            rebuilt = closing = True
        elif connection:
            closing = b"close" in get_comma_header(headers, b"connection")
        if rebuilt:
            headers = Headers(items)
        # _process_event(SERVER, response): no switch event (none proposed), the one
        # event-triggered transition, then the keep-alive rule; the states were a fixed
        # point before and only ours moved, to SEND_BODY, where none of the
        # state-triggered transitions applies.
        client = cstate.states[CLIENT]
        cstate.pending_switch_proposals = set()
        cstate.states[SERVER] = SEND_BODY
        if closing:
            cstate.process_keep_alive_disabled()
        self.client_is_waiting_for_100_continue = False
        # _respond_to_state_changes: the writer _body_framing picks for the cleaned head.
        if empty or method == b"HEAD":
            self._writer = ContentLengthWriter(0)
        elif codings:
            self._writer = _CHUNKED
        elif lengths:
            self._writer = ContentLengthWriter(int(length))
        else:
            self._writer = Http10Writer()
        if cstate.states[CLIENT] is not client:
            self._reader = self._get_io_object(CLIENT, None, READERS)
        # write_any_response
        out: list[Any] = [b"HTTP/1.1 %s %s\r\n" % (str(status).encode("ascii"), event.reason)]
        write_headers(headers, out.append)
        return out


#: Whether :class:`ServerConnection` may stand in for h11's (see the module docstring).
FAST_SEND = (
    getattr(h11, "__version__", None) in CHECKED_H11
    and getattr(h11.Connection.send_with_data_passthrough, "__module__", None) == "h11._connection"
)


def new_server_connection(max_incomplete_event_size: int) -> h11.Connection:
    """A server-side h11 connection: :class:`ServerConnection` where it is h11's exact equal."""
    if FAST_SEND and getattr(_connection, "set_comma_header", None) is _set_comma_header_lower:
        return ServerConnection(max_incomplete_event_size)
    return h11.Connection(SERVER, max_incomplete_event_size=max_incomplete_event_size)

