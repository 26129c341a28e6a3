"""The HTTP/2 driver: one connection, many streams, each stream its own request cycle.

Theory of operation
-------------------
* **One task owns the socket's read side and h2's state.**  :meth:`H2Connection.run` reads,
  passes the bytes through :class:`~.guard.FrameGuard` (the floods h2 does not bound) and then
  to h2, and turns h2's events into work: a new request starts a stream task, DATA and resets
  are handed to that stream's :class:`~.stream.H2Stream`.  Stream tasks call h2 too (to send
  headers and data); every call is synchronous, so h2 is never seen half-updated.
* **One writer.**  Whatever h2 wants to send is moved into one outgoing queue by
  :meth:`flush`; the writer task alone calls ``send_all``, each write bounded by
  ``write_timeout``.  The reader stops reading while the queue is over :data:`HIGH_WATER`:
  a client that sends PINGs or SETTINGS but does not read (CVE-2019-9512/-9515) stalls itself
  and is dropped by the write timeout, and nothing is buffered without bound (CVE-2019-9517).
* **One task per stream**, in the connection's nursery, runs ``Exchange(...).run()`` with the
  stream as its sink.  A client's RST_STREAM cancels that exchange only.  When the connection
  ends — the client closed it, a protocol error, a timeout, shutdown past the grace period —
  the nursery is cancelled and every exchange with it.
* **Refusals are stream errors where RFC 9113 allows it.**  h2 treats a stream beyond
  SETTINGS_MAX_CONCURRENT_STREAMS as a connection error; RFC 9113 §5.1.2 allows REFUSED_STREAM,
  which lets the client retry, so h2's own check is lifted and this module refuses.
* **Rapid reset** (CVE-2023-44487): every reset by the client and every refused stream spends a
  token of a ``max_stream_resets`` bucket that refills over 10 s; an empty bucket is answered
  with GOAWAY ENHANCE_YOUR_CALM.  Stream tasks start after h2 has handled the whole batch of
  bytes read, so a HEADERS reset in the same batch never costs a task.
* **Idle and drain.**  With no open stream for ``keepalive_timeout`` (``header_timeout`` for a
  new connection) the connection ends with GOAWAY NO_ERROR.  Graceful shutdown is RFC 9113
  §6.8's two-step GOAWAY: one with the largest stream id and a PING at once, the final one
  naming the last stream served when the PING comes back (or after a second); the streams in
  flight finish, later ones are refused, and the connection closes when the last one ends.

Resource handling: :meth:`H2Connection.run` does not close ``transport``: its caller does.
Every stream task ends before ``run`` returns.
"""

from __future__ import annotations

import collections
import logging
import math
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import trio
from h2.errors import ErrorCodes
from hyperframe.frame import GoAwayFrame

from ..app.env import ConnInfo
from ..app.head import RequestHead
from ..authority import HOST_RE
from ..config import Limits
from ..net.transport import socket_fileno
from ..state import ServerState
from .guard import Flood, FrameGuard, TokenBucket
from .stream import H2Stream

__all__ = ["H2Connection"]

log = logging.getLogger("trio_rack.error")

RECEIVE_SIZE = 64 * 1024
#: The reader pauses while more than this waits for the writer.
HIGH_WATER = 256 * 1024
#: How long the final GOAWAY and its last bytes may take to go out.
FINAL_FLUSH = 1.0
#: Without a PING answer, the second (final) GOAWAY of a graceful drain goes out after this.
DRAIN_RTT = 1.0
_MAX_STREAM_ID = 2**31 - 1
_CTL_RE_BYTES = bytes(range(0x20)).replace(b"\t", b"") + b"\x7f"
_DRAIN_PING = b"trdrain\x00"


def extended_connect_supported() -> bool:
    """Whether the request cycle can hand an extended CONNECT (RFC 8441) its tunnel.

    SETTINGS_ENABLE_CONNECT_PROTOCOL is advertised only then: a browser that sees it opens its
    ``wss://`` websockets as extended CONNECTs, which ``websocket.accept`` can serve only with
    ``env["trio_rack.tunnel"]`` (the exchange's ``_tunnel``); without it the browser keeps to
    websockets over HTTP/1.1.
    """
    from ..app.exchange import Exchange

    return hasattr(Exchange, "_tunnel")


class H2Connection:
    """Serve HTTP/2 on one transport until it closes, fails, idles out or drains.

    ``transport`` has already been chosen for HTTP/2 (ALPN ``h2`` or the prior-knowledge
    preface); the preface itself is read from it here.
    """

    def __init__(self, transport: trio.abc.Stream, state: ServerState, info: ConnInfo) -> None:
        self.transport = transport
        self.state = state
        self.info = info
        self.limits: Limits = state.limits
        self.fileno = socket_fileno(transport)
        limits = self.limits
        self.h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding=None, validate_inbound_headers=True)
        )
        codes = h2.settings.SettingCodes
        self.h2.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                codes.MAX_CONCURRENT_STREAMS: limits.max_concurrent_streams,
                codes.MAX_HEADER_LIST_SIZE: limits.max_head_size,
                codes.INITIAL_WINDOW_SIZE: max(limits.stream_window_size, 65535),
                codes.ENABLE_CONNECT_PROTOCOL: int(extended_connect_supported()),
            },
        )
        # Until it sees our SETTINGS the client may fill RFC 9113's default window (65535): a
        # smaller window takes effect only when it acknowledges a SETTINGS frame of its own.
        self._smaller_window = limits.stream_window_size if limits.stream_window_size < 65535 else None
        # h2's HPACK decoder limits the decoded header list itself (an HPACK bomb stops there).
        self.h2.decoder.max_header_list_size = limits.max_head_size
        self.guard = FrameGuard(max_header_block=limits.max_head_size, max_control_frames=limits.max_control_frames)
        self.resets = TokenBucket(limits.max_stream_resets)
        self.streams: dict[int, H2Stream] = {}
        self._out: list[bytes] = []
        self._out_size = 0
        self._out_lot = trio.lowlevel.ParkingLot()
        self._drain_lot = trio.lowlevel.ParkingLot()
        self._read_scope = trio.CancelScope()
        self._read_deadline = math.inf
        self._nursery: trio.Nursery | None = None
        self._gone: str | None = None  # the transport failed: why
        self._ending: str | None = None  # the connection is being ended by us: why
        self._draining = False
        self._last_stream_id: int | None = None  # after the final GOAWAY
        self._peer_goaway = False
        self._served_any = False
        self._who = f"{info.remote_addr}:{info.remote_port}"

    # ------------------------------------------------------------------ ConnectionHandle

    def close_if_idle(self) -> None:
        """Graceful shutdown: GOAWAY now; the connection ends when its streams have."""
        if self._draining or self._ending or self._gone:
            return
        self._draining = True
        self.flush()
        self._queue_raw(GoAwayFrame(stream_id=0, last_stream_id=_MAX_STREAM_ID, error_code=0).serialize())
        try:
            self.h2.ping(_DRAIN_PING)
        except h2.exceptions.ProtocolError:
            pass
        self.flush()
        if self._nursery is not None:
            self._nursery.start_soon(self._final_goaway_later)
        self._update_idle()

    # ------------------------------------------------------------------------- main loop

    async def run(self) -> None:
        state = self.state
        state.connections.add(self)
        try:
            self.h2.initiate_connection()
            if self._smaller_window is not None:
                self.h2.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: self._smaller_window})
            # Lift h2's own stream cap (a connection error); ours refuses with REFUSED_STREAM.
            self.h2.local_settings._settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] = collections.deque(
                [_MAX_STREAM_ID]
            )
            window = 4 * self.limits.stream_window_size
            self.h2.increment_flow_control_window(window - self.h2.inbound_flow_control_window)
            self.flush()
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._write_loop)
                if state.draining:
                    self.close_if_idle()
                await self._read_loop()
                if self._gone is None:
                    with trio.move_on_after(FINAL_FLUSH):
                        while self._out_size and self._gone is None:
                            await self._drain_lot.park()
                nursery.cancel_scope.cancel()
            for stream in list(self.streams.values()):
                stream.on_broken("connection closed")
        finally:
            state.connections.discard(self)

    async def _read_loop(self) -> None:
        self._update_idle(first=True)
        while self._ending is None and self._gone is None:
            if self._out_size > HIGH_WATER:
                await self._drain_lot.park()  # the writer (and its write timeout) lets us go on
                continue
            data: bytes | bytearray = b""
            with trio.CancelScope(deadline=self._read_deadline) as scope:
                self._read_scope = scope
                try:
                    data = await self.transport.receive_some(RECEIVE_SIZE)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    data = b""
            if scope.cancelled_caught:
                if self._ending is None and self._gone is None and not self.streams:
                    why = "idle" if self._served_any else "no request"
                    self._goaway(ErrorCodes.NO_ERROR, why, log_level=logging.DEBUG)
                continue
            if not data:
                if self._gone is None:
                    self._lost("client closed the connection")
                return
            self._receive(bytes(data))

    def _receive(self, data: bytes) -> None:
        try:
            self.guard.feed(data, trio.current_time())
        except Flood as exc:
            self._goaway(ErrorCodes.ENHANCE_YOUR_CALM, exc.reason)
            return
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            # h2 has queued the GOAWAY with the error's code (PROTOCOL_ERROR, COMPRESSION_ERROR...)
            log.info("%s: HTTP/2 protocol error: %s; GOAWAY", self._who, exc)
            if self.h2.state_machine.state is not h2.connection.ConnectionState.CLOSED:
                # (a bad preface fails before h2 queues its GOAWAY)
                self.h2.close_connection(ErrorCodes.PROTOCOL_ERROR)
            self._ending = f"protocol error: {exc}"
            self.flush()
            return
        started: list[tuple[H2Stream, RequestHead | tuple[int, str]]] = []
        for event in events:
            self._handle(event, started)
            if self._ending is not None:
                break
        self.flush()
        for stream, work in started:
            if stream.broken is None and self._ending is None:
                assert self._nursery is not None
                self._nursery.start_soon(self._run_stream, stream, work)
            else:
                self._forget(stream)

    def _handle(self, event: h2.events.Event, started: list[Any]) -> None:
        if isinstance(event, h2.events.RequestReceived):
            self._on_request(event, started)
        elif isinstance(event, h2.events.DataReceived):
            sid = event.stream_id
            flow = event.flow_controlled_length or 0
            stream = self.streams.get(sid)
            if stream is None:
                self.acknowledge(sid, flow)
            else:
                padding = flow - len(event.data or b"")
                if padding:
                    self.acknowledge(sid, padding)
                stream.on_data(bytes(event.data or b""), flow - padding, self.limits.max_body_size)
            if event.stream_ended is not None and stream is not None:
                stream.on_end()
        elif isinstance(event, h2.events.StreamEnded):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.on_end()
        elif isinstance(event, h2.events.StreamReset):
            stream = self.streams.get(event.stream_id)
            if event.remote_reset:
                self._spend_reset()
            if stream is not None:
                stream.on_broken("client reset the stream")
        elif isinstance(event, h2.events.WindowUpdated):
            if event.stream_id:
                stream = self.streams.get(event.stream_id)
                if stream is not None:
                    stream.lot.unpark_all()
            else:
                self._wake_all()
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            self._wake_all()
        elif isinstance(event, h2.events.PingAckReceived):
            if event.ping_data == _DRAIN_PING:
                self._final_goaway()
        elif isinstance(event, h2.events.ConnectionTerminated):
            self._peer_goaway = True
            if event.error_code != ErrorCodes.NO_ERROR:
                self._lost(f"client sent GOAWAY {event.error_code!r}")
                return
            # A client's GOAWAY NO_ERROR: no new streams, but the ones open may finish (RFC 9113
            # §6.8).  h2 closes its state machine on any GOAWAY received; reopen it for them.
            self.h2.state_machine.state = h2.connection.ConnectionState.SERVER_OPEN
            self._update_idle()

    def _on_request(self, event: h2.events.RequestReceived, started: list[Any]) -> None:
        sid = event.stream_id
        if self._last_stream_id is not None and sid > self._last_stream_id:
            self.reset(sid, ErrorCodes.REFUSED_STREAM)
            return
        if len(self.streams) >= self.limits.max_concurrent_streams:
            self.reset(sid, ErrorCodes.REFUSED_STREAM)
            self._spend_reset()
            return
        head, problem = self._parse_head(event.headers or [])
        expect = head is not None and any(n == b"expect" and v.lower() == b"100-continue" for n, v in head.headers)
        stream = H2Stream(self, sid, expect_continue=expect, head_only=head is not None and head.method == b"HEAD")
        self.streams[sid] = stream
        self._served_any = True
        self._update_idle()
        if event.stream_ended is not None:
            stream.body_ended = True
        started.append((stream, head if head is not None else problem))

    def _parse_head(self, headers: list[Any]) -> tuple[RequestHead | None, tuple[int, str]]:
        """A RequestHead from h2's (already RFC 9113-validated) headers, or a (status, reason)."""
        pseudo: dict[bytes, bytes] = {}
        regular: list[tuple[bytes, bytes]] = []
        limits = self.limits
        for name, value in headers:
            name, value = bytes(name), bytes(value)
            if name.startswith(b":"):
                pseudo[name] = value
                continue
            if value.translate(None, _CTL_RE_BYTES) != value:
                return None, (400, "control character in a header field value")
            regular.append((name, value))
        if len(regular) > limits.max_header_count:
            return None, (431, "too many header fields")
        method = pseudo.get(b":method", b"")
        authority = pseudo.get(b":authority")
        protocol = pseudo.get(b":protocol")
        # The authority grammar HTTP/1's Host gets (strict.check_request): h2 checks the
        # field's characters, not its shape, and env repeats it (HTTP_HOST, SERVER_NAME).
        # Without ``:authority`` a ``host`` field stands in for it (RFC 9113 §8.3.1), so it is
        # held to the same grammar (h2 refuses a second ``host``, and a ``host`` that differs
        # from ``:authority``, but checks neither one's shape).
        host = authority if authority is not None else next((v for n, v in regular if n == b"host"), None)
        if host is not None and HOST_RE.fullmatch(host) is None:
            return None, (400, "malformed :authority" if authority is not None else "malformed host")
        if method == b"CONNECT" and protocol is None:
            return RequestHead(method, authority or b"", b"", "2", regular, authority), (0, "")
        target = pseudo.get(b":path", b"")
        if len(target) > limits.max_request_line:
            return None, (414, "request target too long")
        path, _, query = target.partition(b"?")
        if limits.max_body_size is not None:
            for name, value in regular:
                if name == b"content-length" and value.isdigit() and int(value) > limits.max_body_size:
                    return None, (413, "request body too large")
        return RequestHead(method, path, query, "2", regular, authority, protocol), (0, "")

    async def _run_stream(self, stream: H2Stream, work: RequestHead | tuple[int, str]) -> None:
        from ..app.exchange import Exchange
        from ..app.response import REASONS

        try:
            with stream.scope:
                if isinstance(work, tuple):
                    status, reason = work
                    log.info("%s: stream %d: %d %s", self._who, stream.stream_id, status, reason)
                    phrase = REASONS.get(status, b"").decode()
                    await stream.send_error(status, f"{status} {phrase}: {reason}\n".encode())
                else:
                    stream.exchange = Exchange(self.state, stream, work, self.info)
                    await stream.exchange.run()
        except Exception:
            log.exception("%s: stream %d crashed", self._who, stream.stream_id)
        finally:
            self._forget(stream)

    def _forget(self, stream: H2Stream) -> None:
        """A stream's task is over: settle h2's side of it and the connection's books."""
        sid = stream.stream_id
        self.streams.pop(sid, None)
        if stream.broken is None and not self._ending and not self._gone:
            if not stream.ended:
                stream.ended = True
                self.reset(sid, ErrorCodes.CANCEL if stream.scope.cancel_called else ErrorCodes.INTERNAL_ERROR)
            elif not stream.body_ended:
                # RFC 9113 §8.1: the response is complete; the rest of the request is not wanted.
                self.reset(sid, ErrorCodes.NO_ERROR)
        stream.release_unread()
        stream.broken = stream.broken or "stream closed"
        self.flush()
        self._update_idle()

    # ------------------------------------------------------------ ending the connection

    def _spend_reset(self) -> None:
        if not self.resets.take(trio.current_time()):
            self._goaway(
                ErrorCodes.ENHANCE_YOUR_CALM,
                f"more than {self.limits.max_stream_resets} stream resets in 10 s (rapid reset, CVE-2023-44487)",
            )

    def _goaway(self, code: ErrorCodes, reason: str, *, log_level: int = logging.INFO) -> None:
        """End the connection with GOAWAY ``code``: every stream is cancelled after the flush."""
        if self._ending is not None or self._gone is not None:
            return
        log.log(log_level, "%s: GOAWAY %s: %s", self._who, code.name, reason)
        self._ending = reason
        self.flush()
        debug = reason.encode("ascii", "replace")[:256] if code != ErrorCodes.NO_ERROR else None
        last = self._last_stream_id if self._last_stream_id is not None else self.h2.highest_inbound_stream_id
        frame = GoAwayFrame(stream_id=0, last_stream_id=last, error_code=code, additional_data=debug or b"")
        self._queue_raw(frame.serialize())
        self._read_scope.cancel()
        for stream in list(self.streams.values()):
            stream.on_broken(f"connection closing: {reason}")

    def _lost(self, reason: str) -> None:
        """The transport is gone (or stalled): cancel every stream now."""
        if self._gone is not None:
            return
        log.info("%s: %s", self._who, reason)
        self._gone = reason
        self._read_scope.cancel()
        self._drain_lot.unpark_all()
        for stream in list(self.streams.values()):
            stream.on_broken(reason)
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    def _final_goaway(self) -> None:
        if self._last_stream_id is not None or self._ending or self._gone:
            return
        self._last_stream_id = self.h2.highest_inbound_stream_id
        self.flush()
        self._queue_raw(GoAwayFrame(stream_id=0, last_stream_id=self._last_stream_id, error_code=0).serialize())
        self._update_idle()

    async def _final_goaway_later(self) -> None:
        await trio.sleep(DRAIN_RTT)
        self._final_goaway()

    def _update_idle(self, first: bool = False) -> None:
        """Set the reader's deadline: none while streams are open, else the idle timeout."""
        if self.streams:
            self._read_deadline = self._read_scope.deadline = math.inf
            return
        if self._draining and self._last_stream_id is not None or self._peer_goaway:
            self._goaway(ErrorCodes.NO_ERROR, "drained", log_level=logging.DEBUG)
            return
        limits = self.limits
        timeout = limits.header_timeout if first else limits.keepalive_timeout
        self._read_deadline = self._read_scope.deadline = trio.current_time() + timeout

    # ------------------------------------------------------------------------------ output

    def flush(self) -> None:
        """Move what h2 wants sent to the writer's queue."""
        data = self.h2.data_to_send()
        if data:
            self._queue_raw(data)

    def _queue_raw(self, data: bytes) -> None:
        self._out.append(data)
        self._out_size += len(data)
        self._out_lot.unpark()

    async def _write_loop(self) -> None:
        timeout = self.limits.write_timeout
        while True:
            while not self._out:
                await self._out_lot.park()
            data = b"".join(self._out)
            self._out.clear()
            try:
                with trio.move_on_after(timeout) as scope:
                    await self.transport.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._lost("client went away")
                return
            if scope.cancelled_caught:
                self._lost("client stopped reading (write timeout); connection dropped")
                return
            self._out_size -= len(data)
            self._drain_lot.unpark_all()

    def send_headers(self, stream_id: int, headers: list[tuple[bytes, bytes]], *, end_stream: bool = False) -> None:
        from ..errors import ClientGone

        try:
            self.h2.send_headers(stream_id, headers, end_stream=end_stream)
        except h2.exceptions.StreamClosedError as exc:
            raise ClientGone(f"stream {stream_id} is closed: {exc}") from None
        except h2.exceptions.ProtocolError as exc:
            if self._ending or self._gone or self.h2.state_machine.state is h2.connection.ConnectionState.CLOSED:
                raise ClientGone(f"the connection is closing: {exc}") from None
            raise
        self.flush()

    def end_stream(self, stream_id: int) -> None:
        try:
            self.h2.end_stream(stream_id)
        except h2.exceptions.H2Error:
            pass
        self.flush()

    def reset(self, stream_id: int, code: ErrorCodes) -> None:
        try:
            self.h2.reset_stream(stream_id, code)
        except h2.exceptions.H2Error:
            pass
        self.flush()

    def acknowledge(self, stream_id: int, flow: int) -> None:
        if flow <= 0 or self._ending or self._gone:
            return
        try:
            self.h2.acknowledge_received_data(flow, stream_id)
        except h2.exceptions.H2Error:
            pass
        self.flush()

    def max_frame_size(self) -> int:
        return int(self.h2.max_outbound_frame_size)

    def _wake_all(self) -> None:
        for stream in self.streams.values():
            stream.lot.unpark_all()

    async def wait_window(self, stream: H2Stream) -> int:
        """Wait until ``stream`` may send a byte and the writer is not behind; how many.

        A window that stays shut past ``write_timeout`` resets the stream (or, if the
        connection's own window is shut, ends the connection with GOAWAY) and raises.
        """
        from ..errors import ClientGone

        deadline = trio.current_time() + self.limits.write_timeout
        await trio.lowlevel.checkpoint()  # first: the window read below must be used at once
        while True:
            if stream.broken is not None:
                raise ClientGone(stream.broken)
            try:
                window = self.h2.local_flow_control_window(stream.stream_id)
            except h2.exceptions.H2Error as exc:
                raise ClientGone(f"stream {stream.stream_id} is closed: {exc}") from None
            if window > 0 and self._out_size <= HIGH_WATER:
                return int(window)  # no await before the caller sends: another stream may not take it
            with trio.move_on_at(deadline):
                if window > 0:
                    await self._drain_lot.park()
                else:
                    await stream.lot.park()
                continue
            if window > 0:
                continue  # the writer's own write timeout handles a stalled socket
            if self.h2.outbound_flow_control_window <= 0:
                self._goaway(
                    ErrorCodes.FLOW_CONTROL_ERROR, "connection flow-control window stayed shut past the write timeout"
                )
            else:
                log.info(
                    "%s: stream %d: flow-control window stayed shut past the write timeout; reset",
                    self._who,
                    stream.stream_id,
                )
                stream.ended = True
                self.reset(stream.stream_id, ErrorCodes.CANCEL)
                stream.on_broken("flow-control window stayed shut (write timeout)")
            raise ClientGone("flow-control window stayed shut past the write timeout")
