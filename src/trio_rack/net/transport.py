"""Connection I/O shared by the protocol drivers: one writer, moving deadlines, orderly close.

Theory of operation
-------------------
* **A read scope, a read deadline the sweeper enforces.**  A driver runs its reads inside
  :attr:`Deadlines.scope` (HTTP/1: one scope per request cycle); the current read deadline (idle, head, body,
  drain: the :class:`ReadPhase` says which, so when it passes the driver knows what timed out)
  is a plain float, :attr:`Deadlines.read_deadline`.  The liveness sweeper, which wakes about
  once a second anyway, cancels the scope of every connection whose read deadline has passed
  (:meth:`Deadlines.expire_if_due`), checking them every quarter of the shortest read timeout
  (at least every ``liveness_interval``: :func:`~trio_rack.server.liveness.read_deadline_tick`),
  so a timeout fires at most 25 % late, never early.  Entering a scope per read cost more than h11's parsing; moving
  the one scope's deadline twice a request (to the idle deadline, then to infinity while the
  app runs) cost 36,000 instructions of a hello request (bench/README.md, "Cost model");
  storing a float costs next to nothing (HTTP/1's scope per request cycle, by app/scopes.py's
  short path, is ~13,500 instructions of a hello request: bench/README.md).  Exact and
  race-free all the same: the sweep runs in the connection's own Trio run, between its steps,
  so it never sees a phase half-changed.
* **One writer, stalls found by the sweeper.**  Every byte reaches the stream through
  :meth:`Writer.write`, one task at a time (an app may read ``rack.input`` — which can send
  ``100 Continue`` — in one task while its streaming body writes in another).  A write inside
  the connection's scope only records when it started (:attr:`Writer.blocked_since`): moving a
  scope deadline before and after every write cost two deadline updates per response, and the
  liveness sweeper, which visits every busy request about once a second anyway, ends a
  request whose write has been blocked past the write timeout.  Large writes are sliced so
  that the timeout bounds a stall rather than a slow link.  A broken stream raises
  :class:`~trio_rack.errors.ClientGone`.
* **Quick writes on plain TCP.**  ``send_all`` passes through Trio's scheduler even when the
  kernel takes every byte at once; on a :class:`trio.SocketStream` the writer first tries one
  non-blocking ``os.write`` (every :data:`QUICK_WRITES`-th write goes through ``send_all``, so
  other tasks still run between a fast client's many chunks).  A hello request then passes
  through the scheduler once (at its read), as the bare loop does.
* **Small responses held for the batch's end.**  ``write(..., batch=True)`` (the HTTP/1
  driver's whole small keep-alive response, while the scheduler is busy) stores the bytes in
  :attr:`Writer.held` for :mod:`.write_batch`'s flush, which writes every held response back
  to back before the next ``epoll_wait``; what the kernel does not take then stays held, and
  every later write (and the driver, before each read and its half-close: :meth:`Writer.settle`)
  sends it first.

Resource handling: nothing here closes the stream except :func:`end_sending` on a transport
that cannot half-close; the listener that accepted it closes it.
"""

from __future__ import annotations

import enum
import math
import os
from collections.abc import Callable

import trio

from ..errors import ClientGone
from .write_batch import WriteBatch, current_batch

__all__ = [
    "BATCH_WRITE_LIMIT",
    "BODY_RECEIVE_SIZE",
    "COALESCE_LIMIT",
    "DIRECT_BODY_SIZE",
    "QUICK_WRITES",
    "RECEIVE_SIZE",
    "WRITE_SLICE",
    "Deadlines",
    "ReadPhase",
    "Writer",
    "end_sending",
    "receive_after_turn",
    "sendfile_bytes",
    "shutdown_transport",
    "socket_fileno",
]

RECEIVE_SIZE = 64 * 1024
#: Reads for a request body without ``max_body_size`` take up to this much at once: each read
#: costs its trip through Trio, h11 and ``rack.input`` whatever its size, and a fast upload
#: brings more than 64 KiB per wake-up (with a size limit the reads stay at
#: :data:`RECEIVE_SIZE`, which bounds how far past the limit a read may go).
BODY_RECEIVE_SIZE = 256 * 1024
#: Reads of a ``content-length`` body straight from the wire (past the parser: the HTTP/1
#: driver's ``receive_body``) take up to this much, whatever ``max_body_size`` is: they never
#: go past the body's declared end, which was checked against the limit with the head.  Each
#: read's trip through Trio, the driver and ``rack.input`` costs the same whatever its size
#: (a 10 MiB upload: 21.9 M instructions in 256 KiB reads, 16.3 M in 1 MiB ones,
#: ``bench/cg_paths.py upload``).  Memory: nothing per idle connection; ``recv`` makes a
#: bytes object of this size and shrinks it to what arrived, one read at a time per process
#: (the event loop runs one task at a time), so at most one *empty* such buffer exists at any
#: moment.  What a read brought is held until the app has read all of it, so only a read of
#: everything (``read_all``, ``receive_some()``) asks for this much: an app reading
#: ``rack.input`` in pieces (the ASGI and WSGI adapters read 64 KiB at a time) gets direct
#: reads no bigger than the reads through the parser (:data:`BODY_RECEIVE_SIZE`,
#: :data:`RECEIVE_SIZE` with ``max_body_size``) or its own piece if bigger.  Before that,
#: 100 concurrent 16 MiB uploads read 64 KiB every 20 ms grew the peak RSS by about 118 MiB
#: against 24 MiB without the direct read (when the kernel's receive buffer had grown past 1 MiB).
DIRECT_BODY_SIZE = 1024 * 1024
#: Writes larger than this are split, so the write timeout bounds a stall, not a slow link: one
#: slice must go out within ``write_timeout`` (1 MiB in 30 s: clients slower than 35 KB/s are
#: dropped).  Smaller slices cost throughput: 256 KiB gave 80% of a bare Trio loop, 1 MiB 98%.
WRITE_SLICE = 1024 * 1024
#: Small responses are coalesced into one send_all up to this size.
COALESCE_LIMIT = 64 * 1024
#: Only writes up to this size are held for the batch's flush (``write(..., batch=True)``):
#: what the kernel did not take at the flush is sent after the cycle has logged the response,
#: so the write held must be one a socket's send buffer takes whole (a fresh one takes 16 KiB).
BATCH_WRITE_LIMIT = 8 * 1024
#: Every QUICK_WRITES-th write of a :class:`Writer` on plain TCP goes through ``send_all`` (and
#: so through the scheduler), the others try one non-blocking ``os.write`` first: the bound on
#: how long a connection's task runs without letting the others run while the kernel takes
#: every write.
QUICK_WRITES = 16

#: Bytes ``os.sendfile`` reported sent, process-wide (see :func:`sendfile_bytes`).
_sendfile_total = 0


def sendfile_bytes() -> int:
    """Bytes sent with ``os.sendfile`` by this process so far: evidence of the zero-copy path."""
    return _sendfile_total


class ReadPhase(enum.Enum):
    """What the connection is waiting for; tells, when a deadline passes, what timed out."""

    IDLE = "keep-alive idle"  # before the first byte of a request
    HEAD = "request head"
    APP = "app"  # no read deadline while the app runs, except around body reads
    BODY = "request body"
    DRAIN = "unread body drain"


class Deadlines:
    """The connection's read deadline, enforced by the liveness sweep, and the scope it cancels.

    Registered in :attr:`~trio_rack.state.ServerState.read_deadlines` by the driver for the
    connection's life (see the module docstring for why no scope deadline moves).
    """

    __slots__ = ("scope", "in_scope", "read_phase", "read_deadline")

    def __init__(self) -> None:
        #: The scope the driver's reads run in (HTTP/1: one per request cycle, made and put here
        #: by the driver when a read first has to wait; the one made here is set aside at the
        #: first cycle's start and serves only code that uses a bare :class:`Deadlines`); None
        #: while no read can happen (HTTP/1: the exchange of a request without a body) or none
        #: has had to wait yet, when there is nothing to cancel.
        self.scope: trio.CancelScope | None = trio.CancelScope()
        #: True while the driver runs inside :attr:`scope`, or in a request's exchange the sweep
        #: watches (writes outside both, e.g. a 408 after a timeout, time out on their own).
        self.in_scope = False
        self.read_phase = ReadPhase.IDLE
        #: When the read under way times out (Trio's clock); ``math.inf`` while none does.
        self.read_deadline = math.inf

    def set_read(self, phase: ReadPhase, deadline: float) -> None:
        self.read_phase = phase
        self.read_deadline = deadline

    def postpone(self, delay: float) -> None:
        """Move the read deadline ``delay`` seconds later (time spent on something else than
        the read: :meth:`Writer.settle`)."""
        self.read_deadline += delay

    def expire_if_due(self, now: float) -> bool:
        """The sweep's visit: cancel the connection's scope if its read deadline has passed."""
        scope = self.scope
        if self.read_deadline > now or not self.in_scope or scope is None:
            return False
        self.read_deadline = math.inf
        scope.cancel()
        return True


class Writer:
    """The one way bytes reach a connection's stream."""

    __slots__ = (
        "stream", "deadlines", "write_timeout", "broken", "blocked_since", "_writing", "_waiters", "socket",
        "_quick_writes", "batch_limit", "held", "_batch",
    )  # fmt: skip

    def __init__(
        self, stream: trio.abc.SendStream, deadlines: Deadlines, write_timeout: float, batch_limit: int = 1
    ) -> None:
        self.stream = stream
        #: How many held writes of the run are written together at most (``Limits.write_batch``;
        #: 1: none is held): see :mod:`.write_batch`.
        self.batch_limit = batch_limit
        #: Bytes of a ``write(..., batch=True)`` not on the wire yet: held in :attr:`_batch`
        #: until its flush, or (``_batch`` None) what the kernel did not take at the flush.
        #: Never set while a write is under way: every write sends these first.
        self.held: bytes | memoryview | None = None
        self._batch: WriteBatch | None = None
        #: The socket when ``stream`` is a plain TCP :class:`trio.SocketStream`: :meth:`write`
        #: first tries one non-blocking ``os.write`` of the whole piece.  Its descriptor is
        #: asked for at each write, never kept: a closed socket says -1 (EBADF, the client is
        #: gone), where a kept number could by then name another connection's socket.
        self.socket = stream.socket if type(stream) is trio.SocketStream else None
        #: Quick writes left before one goes through ``send_all`` and its scheduler pass.
        self._quick_writes = QUICK_WRITES
        self.deadlines = deadlines
        self.write_timeout = write_timeout
        #: Set when the stream broke under a write: the client is gone.
        self.broken = False
        #: When the write under way started (``math.inf`` when none is): the liveness sweeper
        #: cancels the request once this is ``write_timeout`` in the past.
        self.blocked_since = math.inf
        # One writer at a time, without a lock's extra trip through the scheduler when uncontended;
        # the parking lot is made at the first contention only (an OrderedDict and an attrs
        # object: some 600 bytes per connection at 10,000 streams, for the rare second writer).
        self._writing = False
        self._waiters: trio.lowlevel.ParkingLot | None = None

    def took_turn(self) -> None:
        """The connection's task just let the others run (its keep-alive read yields first,
        :func:`receive_after_turn`): the bound of :data:`QUICK_WRITES` starts afresh, so a
        hello request's response is never the write that goes through ``send_all`` (and a
        scheduler pass of its own) for fairness the read's yield already gave."""
        self._quick_writes = QUICK_WRITES

    def write_held(self) -> None:
        """The batch's flush: write the held bytes without waiting; keep the rest, or mark the
        writer broken (the flush runs outside every task: it must neither wait nor raise)."""
        self._batch = None
        data = self.held
        if data is None:
            return
        sock = self.socket
        fd = -1 if sock is None else sock.fileno()
        if fd == -1:  # closed meanwhile: the connection ended without them
            self.held = None
            self.broken = True
            return
        try:
            sent = os.write(fd, data)
        except BlockingIOError:
            return  # all of it stays held: the next write or read of the driver sends it
        except OSError:  # EPIPE, ECONNRESET: the client is gone
            self.held = None
            self.broken = True
            return
        self.held = None if sent == len(data) else memoryview(data)[sent:]

    async def _send_held(self) -> None:
        """Send what an earlier ``write(..., batch=True)`` still holds, before anything else (the
        caller holds the writer).  Within ``write_timeout`` of its own: this may run outside a
        request (a driver's read, its close), where the sweep times no write."""
        batch = self._batch
        if batch is not None:  # not flushed yet: try now, as the flush would
            batch.release(self)
            self.write_held()
        rest = self.held
        if rest is not None:
            self.held = None
            try:
                self.blocked_since = trio.current_time()
                with trio.move_on_after(self.write_timeout) as scope:
                    await self.stream.send_all(rest)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self.broken = True
            else:
                if scope.cancelled_caught:
                    self.broken = True
                    raise ClientGone("client stopped reading (write timeout)")
            finally:
                self.blocked_since = math.inf
        if self.broken:
            raise ClientGone("the connection broke under an earlier response")

    async def settle(self) -> bool:
        """Send what an earlier ``write(..., batch=True)`` still holds (:attr:`held`); False
        when that found the client gone.  A cancellation point only when something is held.
        The HTTP/1 driver calls it before each read (when :attr:`held` is set) and before it
        half-closes.

        The time this takes (a client slow to read what the kernel refused at the flush) does
        not count against the read deadline set before it (:meth:`Deadlines.postpone`): an
        unheld write went out before the driver set its next read's deadline, so a keep-alive
        wait, for one, counts from the end of the response, not from before its rest went."""
        if self.held is not None:
            since = trio.current_time()
            try:
                await self.write(b"")
            except ClientGone:
                return False
            self.deadlines.postpone(trio.current_time() - since)
        return True

    def release_held(self) -> None:
        """The connection ends now: write what is held without waiting, drop what does not fit."""
        batch = self._batch
        if batch is not None:
            batch.release(self)
            self.write_held()
        self.held = None

    async def _park(self) -> None:
        """Wait for the writer under way to finish."""
        if self._waiters is None:
            self._waiters = trio.lowlevel.ParkingLot()
        await self._waiters.park()

    async def write(self, data: bytes | memoryview, batch: bool = False) -> None:
        """Write ``data``; a stalled or broken stream raises ClientGone.

        ``batch``: the caller has nothing else to send or read before its next read (the HTTP/1
        driver's whole small response on a connection that stays open) and the scheduler is
        busy (:func:`.write_batch.worth_holding`): on plain TCP, with :attr:`batch_limit` over 1,
        bytes up to :data:`BATCH_WRITE_LIMIT` are held for the scheduler batch's flush
        (:mod:`.write_batch`), written with the other tasks' responses; bytes held, or what the
        kernel did not take of them, always go out before anything written later.
        """
        while self._writing:  # another task of this connection is mid-write: queue behind it
            await self._park()
        self._writing = True
        deadlines = self.deadlines
        view = memoryview(data) if len(data) > WRITE_SLICE else None
        try:
            if self.held is not None:
                await self._send_held()
            if not data:
                return
            if not deadlines.in_scope:  # after the connection's scope (e.g. a 408 after a timeout)
                with trio.move_on_after(self.write_timeout) as scope:
                    await self.stream.send_all(data)
                if scope.cancelled_caught:
                    raise ClientGone("client stopped reading (write timeout)")
            elif view is None:
                sock = self.socket
                if sock is not None and self._quick_writes > 1:
                    # Most responses fit the socket's send buffer: one non-blocking write and
                    # no trip through the scheduler, which ``send_all`` makes even when the
                    # kernel takes everything at once (a tenth of a hello request's
                    # instructions; nearly all of a streamed chunk's).  Still a cancellation
                    # point.  Every QUICK_WRITES-th write goes through ``send_all`` all the
                    # same, so a body of many small chunks to a fast client cannot keep the
                    # other connections waiting.  What the kernel did not take goes through
                    # ``send_all``, timed by the sweeper as any write.
                    self._quick_writes -= 1
                    await trio.lowlevel.checkpoint_if_cancelled()
                    if batch and self.batch_limit > 1 and len(data) <= BATCH_WRITE_LIMIT:
                        # Held for the batch's flush (see write_batch.py): written back to back
                        # with the other tasks' responses, so one wake-up of a sleeping local
                        # client serves several.
                        self.held = data
                        held_in = self._batch = current_batch()
                        held_in.hold(self, self.batch_limit)
                        return
                    try:
                        sent = os.write(sock.fileno(), data)
                    except BlockingIOError:
                        sent = 0
                    except OSError as exc:  # EPIPE, ECONNRESET: as send_all would have it
                        raise trio.BrokenResourceError(str(exc)) from None
                    if sent == len(data):
                        return
                    data = memoryview(data)[sent:]
                self._quick_writes = QUICK_WRITES
                self.blocked_since = trio.current_time()
                await self.stream.send_all(data)
            else:
                for offset in range(0, len(view), WRITE_SLICE):
                    self.blocked_since = trio.current_time()
                    await self.stream.send_all(view[offset : offset + WRITE_SLICE])
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self.broken = True
            raise ClientGone(str(exc)) from None
        finally:
            self.blocked_since = math.inf
            self._writing = False
            if self._waiters:
                self._waiters.unpark()


    async def send_file(self, prefix: bytes, fd: int, offset: int, count: int, suffix: bytes) -> None:
        """Write ``prefix``, ``count`` bytes of file ``fd`` from ``offset`` (``os.sendfile``), then ``suffix``.

        Only for a plain :class:`trio.SocketStream` (no TLS: the kernel must put the file's
        bytes on the wire as they are).  The three parts go out in one turn of the writer, so
        framing and file bytes never interleave with another task's write.  Each
        ``os.sendfile`` call is capped at :data:`WRITE_SLICE` and stamps :attr:`blocked_since`,
        so the write timeout bounds a stall exactly as for :meth:`write`.  A file shorter than
        ``count`` raises :class:`EOFError` (the response cannot be completed: the caller
        aborts it).  The caller owns ``fd``.
        """
        global _sendfile_total
        while self._writing:
            await self._park()
        self._writing = True
        stream = self.stream
        sock = stream.socket  # type: ignore[attr-defined]
        try:
            if self.held is not None:
                await self._send_held()
            out = sock.fileno()
            with trio.CancelScope() as scope:
                if not self.deadlines.in_scope:  # after the connection's scope: a deadline of its own
                    scope.deadline = trio.current_time() + self.write_timeout
                if prefix:
                    self.blocked_since = trio.current_time()
                    await stream.send_all(prefix)
                while count > 0:
                    self.blocked_since = trio.current_time()
                    try:
                        sent = os.sendfile(out, fd, offset, min(count, WRITE_SLICE))
                    except BlockingIOError:
                        await trio.lowlevel.wait_writable(sock)
                        continue
                    if sent == 0:
                        raise EOFError(f"the file ended {count} bytes short of the response")
                    _sendfile_total += sent
                    offset += sent
                    count -= sent
                    await trio.lowlevel.checkpoint()  # a fast client must not starve the other tasks
                if suffix:
                    self.blocked_since = trio.current_time()
                    await stream.send_all(suffix)
            if scope.cancelled_caught:
                raise ClientGone("client stopped reading (write timeout)")
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            # EPIPE, ECONNRESET, a closed socket: the client is gone.
            self.broken = True
            raise ClientGone(str(exc)) from None
        finally:
            self.blocked_since = math.inf
            self._writing = False
            if self._waiters:
                self._waiters.unpark()


async def receive_after_turn(
    sock: trio.socket.SocketType,
    size: int,
    before_wait: Callable[[], None] | None = None,
    writer: Writer | None = None,
) -> bytes:
    """The next bytes from plain TCP socket ``sock`` (at most ``size``), read after the other
    tasks had their turn; b"" at EOF, reset or a closed socket.

    For a keep-alive connection waiting for its next request.  ``receive_some`` tries
    ``recv`` first: right after the response went out (the writer's quick write does not
    yield), the client has rarely answered yet, so under many connections the read fails
    (``BlockingIOError`` raised and caught), the socket is re-armed in epoll (an
    ``epoll_ctl``) and the task parks until the next ``epoll_wait`` reports it; when the
    read succeeds, Trio yields after it all the same.  Here the yield comes first: by the
    time the other connections' tasks have run, this client's next request has usually
    arrived, and one ``os.read`` takes it without a failed call, a re-arm or a second yield.
    Only when it has not does this wait for the socket (``wait_readable``, no yield after).
    The bare Trio loop gets the same order from ``send_all``'s yield before its next read
    (``bench/README.md``: 0.96 failed reads and epoll_ctl calls per request under 64
    connections before this, against none for the bare loop).  A checkpoint, as
    ``receive_some`` is, in the same order of its two halves: cancelled only before the
    yield, which is shielded, so bytes that arrived by then are read even if the connection's
    scope was cancelled meanwhile (a head whose deadline passed in that yield gets its 408
    from the phase the bytes move it to, as with ``receive_some``).  The descriptor is asked
    for at each call (a closed socket says -1: EBADF, read as the end), never kept; a socket
    another task closes while this waits wakes the wait (Trio's ``notify_closing``:
    ``ClosedResourceError``), read as the end too, as the driver read ``receive_some``'s.

    ``before_wait`` is called (once) when the first read found nothing, before the wait: the
    HTTP/1 driver enters its cycle's read scope there, and only there, so a read that does
    not wait costs no scope at all (http1/connection.py, ``_enter_read_scope``).

    ``writer``: the connection's, whose response the yield's batch end has just flushed
    (:mod:`.write_batch`): what the kernel did not take of it is sent before the read
    (:meth:`Writer.settle`), and a client found gone then reads as the end.
    """
    await trio.lowlevel.checkpoint_if_cancelled()
    await trio.lowlevel.cancel_shielded_checkpoint()
    if writer is not None and writer.held is not None and not await writer.settle():
        return b""
    while True:
        try:
            return os.read(sock.fileno(), size)
        except BlockingIOError:
            pass
        except OSError:  # ECONNRESET, EBADF: as receive_some's BrokenResourceError, the end
            return b""
        if before_wait is not None:
            before_wait()
            before_wait = None
        try:
            await trio.lowlevel.wait_readable(sock)
        except trio.ClosedResourceError:  # closed by another task during the wait
            return b""


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


async def shutdown_transport(stream: trio.abc.Stream) -> None:
    """Half-close (where the transport can) so the client reads our last bytes before EOF.

    Closing a TCP socket with unread input in the kernel makes it send RST, which can destroy
    our last response in flight; sending FIN first and draining briefly avoids that.
    """
    send_eof = getattr(stream, "send_eof", None)
    if send_eof is None:
        return
    with trio.move_on_after(1):
        try:
            await send_eof()
            while await stream.receive_some(RECEIVE_SIZE):
                pass
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError):
            pass


async def end_sending(stream: trio.abc.Stream) -> bool:
    """End our sending side (a close-delimited body's end); False if the peer was already gone."""
    send_eof = getattr(stream, "send_eof", None)
    try:
        if send_eof is not None:
            await send_eof()
        else:
            await stream.aclose()  # TLS has no half-close
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return False
    return True
