"""Small whole responses held to the end of the scheduler's batch and written back to back
(net/write_batch.py, ``Limits.write_batch``), over real sockets.

The writer: a held write is on the wire after the next yield and not before, all of them at
once when ``write_batch`` are held, in order with what the same writer writes next; what the
kernel did not take at the flush is sent by the next write or :meth:`.Writer.settle`; a reset
or closed socket at the flush marks the writer broken and never breaks the run.  The HTTP/1
driver: which responses it holds (keep-alive, nothing buffered) and which it never does
(``connection: close``, a pipelined next request, ``--write-batch 1``), that a held response
whose rest the kernel refused still arrives whole and in order, that a drain begun while one
is held sends it before the half-close, and, against a real server, that many clients'
keep-alive responses all arrive right on both parsers.
"""

from __future__ import annotations

import os
import socket
import struct
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from e2e_support import start_server, tcp_pair
from test_config_sources import resolve
from trio_rack import ConfigError, Limits
from trio_rack.app.env import ConnInfo
from trio_rack.cli.main import _given_limits
from trio_rack.errors import ClientGone
from trio_rack.http1.connection import HTTPConnection
from trio_rack.net import write_batch
from trio_rack.net.transport import BATCH_WRITE_LIMIT, Deadlines, Writer
from trio_rack.net.write_batch import current_batch, tasks_runnable, worth_holding
from trio_rack.server.liveness import run_liveness_sweeper
from trio_rack.testing import ServerState

_GET = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
PARSERS = pytest.mark.parametrize("parser", ["h11", "httptools"])


def _writer(stream: trio.SocketStream, batch_limit: int = 16) -> Writer:
    deadlines = Deadlines()
    deadlines.in_scope = True
    return Writer(stream, deadlines, write_timeout=30, batch_limit=batch_limit)


def _waiting(sock: trio.socket.SocketType | trio.SocketStream) -> bytes:
    """What the peer can read right now, without waiting (b"" when nothing)."""
    fd = sock.socket.fileno() if isinstance(sock, trio.SocketStream) else sock.fileno()
    try:
        return os.read(fd, 1 << 20)
    except BlockingIOError:
        return b""


def _peek(sock: trio.socket.SocketType) -> bytes:
    """What ``sock`` could read right now, left there (b"" when nothing)."""
    with socket.socket(fileno=os.dup(sock.fileno())) as plain:
        try:
            return plain.recv(1 << 20, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return b""


@pytest.fixture(autouse=True)
def _hold_even_when_idle(monkeypatch: pytest.MonkeyPatch) -> None:
    """The driver holds a response only while the scheduler is busy (``HOLD_AFTER`` tasks
    queued); these tests hold them with nothing else to run, except where a test says otherwise."""
    monkeypatch.setattr(write_batch, "HOLD_AFTER", 0)


# ----------------------------------------------------------------------------- the writer


async def test_a_held_write_is_on_the_wire_after_the_next_yield_and_not_before() -> None:
    client, server = await tcp_pair()
    async with client, server:
        writer = _writer(server)
        await writer.write(b"hello", batch=True)
        assert writer.held == b"hello"
        assert _waiting(client) == b""
        await trio.lowlevel.checkpoint()  # the batch ends: its flush writes it
        assert writer.held is None
        assert _waiting(client) == b"hello"


async def test_holding_is_worth_it_once_enough_tasks_are_queued(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(write_batch, "HOLD_AFTER", 8)
    async with trio.open_nursery() as nursery:
        for _ in range(7):
            nursery.start_soon(trio.lowlevel.checkpoint)  # a new task is queued at once
        assert tasks_runnable() == 7 and not worth_holding()
        nursery.start_soon(trio.lowlevel.checkpoint)
        assert worth_holding()


@pytest.mark.parametrize("direct", [True, False], ids=["trio-internals", "public-statistics"])
async def test_tasks_runnable_is_what_trio_counts(direct: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(write_batch, "HOLD_AFTER", 3)
    if not direct:
        monkeypatch.setattr(write_batch, "_CONTEXT", None)  # Trio's internals not as known
    else:
        assert write_batch._CONTEXT is not None  # (trio 0.35 here: the direct read)
    async with trio.open_nursery() as nursery:
        for expected in range(5):
            assert tasks_runnable() == trio.lowlevel.current_statistics().tasks_runnable == expected
            assert worth_holding() == (expected >= 3)
            nursery.start_soon(trio.lowlevel.checkpoint)


async def test_at_the_limit_every_held_write_goes_out_at_once() -> None:
    pairs = [await tcp_pair() for _ in range(3)]
    try:
        writers = [_writer(server, batch_limit=3) for _, server in pairs]
        await writers[0].write(b"one", batch=True)
        await writers[1].write(b"two", batch=True)
        assert [_waiting(client) for client, _ in pairs] == [b"", b"", b""]
        await writers[2].write(b"three", batch=True)  # the third: all three, before any yield
        assert [_waiting(client) for client, _ in pairs] == [b"one", b"two", b"three"]
    finally:
        for client, server in pairs:
            await client.aclose()
            await server.aclose()


async def test_a_write_batch_of_one_holds_nothing() -> None:
    client, server = await tcp_pair()
    async with client, server:
        writer = _writer(server, batch_limit=1)
        await writer.write(b"at once", batch=True)
        assert writer.held is None
        assert _waiting(client) == b"at once"


async def test_only_small_writes_are_held() -> None:
    client, server = await tcp_pair()
    async with client, server:
        writer = _writer(server)
        big = b"x" * (BATCH_WRITE_LIMIT + 1)
        await writer.write(big, batch=True)
        assert writer.held is None
        got = b""
        while len(got) < len(big):
            got += await client.receive_some()
        assert got == big


async def test_the_next_write_of_the_same_writer_sends_the_held_bytes_first() -> None:
    client, server = await tcp_pair()
    async with client, server:
        writer = _writer(server)
        await writer.write(b"first,", batch=True)
        await writer.write(b"second")
        assert _waiting(client) == b"first,second"
        await trio.lowlevel.checkpoint()  # the batch's flush finds nothing more of it
        assert _waiting(client) == b""


async def _fill(sock: trio.SocketStream) -> bytes:
    """Write to ``sock`` until the kernel takes no more; what was written."""
    sent = bytearray()
    piece = bytes(range(256)) * 64
    while True:
        try:
            sent += piece[: os.write(sock.socket.fileno(), piece)]
        except BlockingIOError:
            return bytes(sent)


async def test_what_the_kernel_refused_at_the_flush_is_sent_by_settle_whole_and_in_order() -> None:
    client, server = await tcp_pair()
    async with client, server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        writer = _writer(server)
        before = await _fill(server)
        response = b"R" * 5000
        await writer.write(response, batch=True)
        await trio.lowlevel.checkpoint()  # the flush: the kernel takes nothing, or a part
        assert writer.held is not None and bytes(writer.held) == response[len(response) - len(writer.held) :]
        received = bytearray()

        async def read_all() -> None:
            while len(received) < len(before) + len(response):
                received.extend(await client.receive_some(65536))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_all)
            assert await writer.settle()
        assert writer.held is None
        assert bytes(received) == before + response


async def test_a_flush_to_a_reset_connection_marks_the_writer_broken_and_the_run_goes_on() -> None:
    client, server = await tcp_pair()
    async with server:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await client.aclose()  # an RST
        await trio.sleep(0.05)
        writer = _writer(server)
        await writer.write(b"lost", batch=True)
        await trio.lowlevel.checkpoint()
        assert writer.broken and writer.held is None
        with pytest.raises(ClientGone):
            await writer.write(b"more")
    # the flush did not raise (Trio would have removed the instrument): the batch still works
    other_client, other_server = await tcp_pair()
    async with other_client, other_server:
        await _writer(other_server).write(b"still", batch=True)
        await trio.lowlevel.checkpoint()
        assert _waiting(other_client) == b"still"


async def test_a_socket_closed_before_the_flush_marks_the_writer_broken() -> None:
    client, server = await tcp_pair()
    async with client:
        writer = _writer(server)
        await writer.write(b"never", batch=True)
        server.socket.close()
        await trio.lowlevel.checkpoint()
        assert writer.broken and writer.held is None
        assert await client.receive_some() == b""


async def test_release_held_writes_what_fits_at_once_and_leaves_the_batch() -> None:
    client, server = await tcp_pair()
    async with client, server:
        writer = _writer(server)
        await writer.write(b"bye", batch=True)
        writer.release_held()
        assert writer.held is None and current_batch().held == []
        assert _waiting(client) == b"bye"


# ----------------------------------------------------------------------- the HTTP/1 driver


def _small_buffer_pair() -> tuple[trio.socket.SocketType, trio.socket.SocketType]:
    """A socket pair (server side, client side) with small send and receive buffers: a client
    that does not read soon makes the server's writes, and a flush, take only a part."""
    a, b = trio.socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    return a, b


def _conn(sock: trio.socket.SocketType, state: ServerState, parser: str) -> HTTPConnection:
    info = ConnInfo("http", ("testserver", 80), ("127.0.0.1", 1))
    return HTTPConnection(trio.SocketStream(sock), state, info, parser)


async def _serve_one(
    app: Any, sent: bytes, parser: str, limits: Limits | None = None, responses: int = 1
) -> tuple[bytes, list[bytes]]:
    """Serve ``sent`` over a socket pair; what the client received in all, and what it could
    could read at each ``response_finished`` (after the response was written or held), peeked."""
    seen: list[bytes] = []
    a, b = trio.socket.socketpair()

    async def wrapped(env: dict[str, Any]) -> Any:
        env["rack.response_finished"].append(lambda *_: seen.append(_peek(b)))
        return await app(env)

    state = ServerState(wrapped, limits or Limits(), access_log=False, http1_parser=parser)
    got = bytearray()
    with a, b:
        conn = _conn(a, state, parser)
        await b.send(sent)
        async with trio.open_nursery() as nursery:

            async def client() -> None:
                while got.count(b"HTTP/1.1 ") < responses or not got.endswith(b"hi"):
                    chunk = await b.recv(65536)
                    assert chunk, got
                    got.extend(chunk)
                b.shutdown(trio.socket.SHUT_WR)

            nursery.start_soon(client)
            with trio.fail_after(5):
                await conn.run()
        got.extend(_waiting(b))
    return bytes(got), seen


async def _hello(env: dict[str, Any]) -> Any:
    return 200, {"content-type": "text/plain"}, [b"hi"]


@PARSERS
async def test_a_keep_alive_response_is_held_past_its_cycles_end(parser: str) -> None:
    got, seen = await _serve_one(_hello, _GET, parser)
    assert seen == [b""]  # response_finished ran with the response held
    assert got.startswith(b"HTTP/1.1 200 ") and got.endswith(b"\r\n\r\nhi")


@PARSERS
async def test_a_connection_close_response_is_never_held(parser: str) -> None:
    got, seen = await _serve_one(_hello, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", parser)
    assert seen[0].startswith(b"HTTP/1.1 200 ") and seen[0].endswith(b"hi")
    assert got == seen[0]


@PARSERS
async def test_a_response_with_the_next_request_buffered_is_not_held(parser: str) -> None:
    got, seen = await _serve_one(_hello, _GET + _GET, parser, responses=2)
    assert seen[0].count(b"HTTP/1.1 200 ") == 1  # written: a hijack by the next could follow it
    assert seen[1] == seen[0]  # the last one is held: nothing more to read than the first
    assert got.count(b"HTTP/1.1 200 ") == 2


@PARSERS
async def test_a_response_while_the_scheduler_is_idle_is_not_held(parser: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(write_batch, "HOLD_AFTER", 8)
    got, seen = await _serve_one(_hello, _GET, parser)
    assert seen[0].startswith(b"HTTP/1.1 200 ") and seen[0].endswith(b"hi")


@PARSERS
async def test_write_batch_one_holds_no_response(parser: str) -> None:
    got, seen = await _serve_one(_hello, _GET, parser, Limits(write_batch=1))
    assert seen[0].startswith(b"HTTP/1.1 200 ") and seen[0].endswith(b"hi")


@PARSERS
async def test_a_drain_begun_while_a_response_is_held_sends_it_before_the_half_close(parser: str) -> None:
    state_box: list[ServerState] = []

    async def app(env: dict[str, Any]) -> Any:
        # draining set after the write (held), before the loop looks: it ends the connection
        env["rack.response_finished"].append(lambda *_: setattr(state_box[0], "draining", True))
        return await _hello(env)

    a, b = trio.socket.socketpair()
    state = ServerState(app, Limits(), access_log=False, http1_parser=parser)
    state_box.append(state)
    with a, b:
        conn = _conn(a, state, parser)
        await b.send(_GET)
        with trio.fail_after(5):
            await conn.run()
        got = b""
        while chunk := _waiting(b):
            got += chunk
        assert got.startswith(b"HTTP/1.1 200 ") and got.endswith(b"hi")
        assert await b.recv(10) == b""  # then the half-close


@PARSERS
async def test_responses_whose_rest_the_kernel_refused_still_arrive_whole_and_in_order(
    parser: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client that sends its requests without reading: the send buffers fill, a flush takes
    only a part; the driver's next read sends the rest first, and when the client reads at
    last every response is there, whole and in order."""
    short = []
    original = Writer.write_held

    def recording(self: Writer) -> None:
        original(self)
        if self.held is not None:
            short.append(len(self.held))

    monkeypatch.setattr(Writer, "write_held", recording)
    count = 40

    async def app(env: dict[str, Any]) -> Any:
        n = int(env["PATH_INFO"][1:])
        return 200, {"content-type": "text/plain"}, [b"%05d" % n + b"." * 5000]

    a, b = _small_buffer_pair()
    state = ServerState(app, Limits(), access_log=False, http1_parser=parser)
    with a, b:
        conn = _conn(a, state, parser)
        async with trio.open_nursery() as nursery:

            async def client() -> None:
                for n in range(count):
                    await b.send(b"GET /%d HTTP/1.1\r\nHost: x\r\n\r\n" % n)
                    await trio.testing.wait_all_tasks_blocked()  # the driver is back at its read
                got = b""
                while got.count(b"HTTP/1.1 200 ") < count or not got.endswith(b"." * 5000):
                    got += await b.recv(65536)
                bodies = [part.split(b"\r\n\r\n", 1)[1][:5] for part in got.split(b"HTTP/1.1 200 ")[1:]]
                assert bodies == [b"%05d" % n for n in range(count)]
                b.shutdown(trio.socket.SHUT_WR)

            nursery.start_soon(client)
            with trio.fail_after(10):
                await conn.run()
    assert short, "no flush was short: the test did not reach the case"


async def test_many_keep_alive_clients_of_a_real_server_get_every_response_right(http1_parser: str) -> None:
    """Under load many responses are held and flushed together: each client gets its own."""

    async def app(env: dict[str, Any]) -> Any:
        return 200, {"content-type": "text/plain"}, [env["PATH_INFO"].encode()]

    wrong: list[str] = []
    async with trio.open_nursery() as nursery:
        bind = await start_server(nursery, app)

        async def one_client(c: int) -> None:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{bind.port}") as http:
                for r in range(20):
                    path = f"/{c}/{r}"
                    response = await http.get(path)
                    if response.status_code != 200 or response.text != path:
                        wrong.append(f"{path}: {response.status_code} {response.text!r}")

        async with trio.open_nursery() as clients:
            for c in range(30):
                clients.start_soon(one_client, c)
        nursery.cancel_scope.cancel()
    assert wrong == []


def test_the_flag_sets_the_limit_and_zero_is_refused() -> None:
    args, _ = resolve(["--write-batch", "4"])
    assert Limits(**_given_limits(args)).write_batch == 4
    assert Limits(**_given_limits(resolve([])[0])).write_batch == 16
    with pytest.raises(ConfigError):
        Limits(write_batch=0)


@PARSERS
async def test_a_held_response_to_a_slow_reader_is_not_cut_by_the_drain_of_an_unread_body(
    parser: str, autojump_clock: trio.abc.Clock
) -> None:
    """The app answers a POST without reading its body (not sent yet); the client reads its
    responses only 3 s later, well within the write timeout.  The response was held and the
    kernel took none of it at the flush (the send buffer full): it must still go out whole,
    timed by the write timeout, not be cut by the drain's 1 s read deadline."""
    body = b"R" * 5000

    async def app(env: dict[str, Any]) -> Any:
        return 200, {"content-type": "text/plain"}, [body]

    a, b = _small_buffer_pair()
    state = ServerState(app, Limits(), access_log=False, http1_parser=parser)
    got = bytearray()
    with a, b:
        conn = _conn(a, state, parser)
        before = await _fill(trio.SocketStream(a))  # what the client has not read yet
        await b.send(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n")

        async def client() -> None:
            await trio.sleep(3)
            while chunk := await b.recv(65536):
                got.extend(chunk)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_liveness_sweeper, state)
            nursery.start_soon(client)
            with trio.fail_after(20):
                await conn.run()
            a.shutdown(socket.SHUT_RDWR)
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
    assert bytes(got[: len(before)]) == before
    response = bytes(got[len(before) :])
    assert response.startswith(b"HTTP/1.1 200 ") and response.endswith(b"\r\n\r\n" + body)


@PARSERS
async def test_a_client_found_gone_at_the_flush_gets_no_further_request_served(parser: str) -> None:
    """The client sends its next request and resets the connection before the response to
    the first is written.  Unheld, that write fails and the connection ends: the second
    request never reaches the app.  Held, the flush is the write that fails (the writer is
    marked broken after the cycle looked at it), and the next request, still in the
    kernel's receive queue, must not be served either."""
    client, server = await tcp_pair()
    calls: list[str] = []
    plain = client.socket

    async def app(env: dict[str, Any]) -> Any:
        calls.append(env["PATH_INFO"])
        if env["PATH_INFO"] == "/1":
            os.write(plain.fileno(), b"GET /2 HTTP/1.1\r\nHost: x\r\n\r\n")
            plain.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            plain.close()  # an RST, the request for /2 already sent
        return 200, {"content-type": "text/plain"}, [b"hi"]

    state = ServerState(app, Limits(), access_log=False, http1_parser=parser)
    async with server:
        conn = HTTPConnection(server, state, ConnInfo("http", ("testserver", 80), ("127.0.0.1", 1)), parser)
        await client.send_all(b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n")
        with trio.fail_after(5):
            await conn.run()
    assert conn.writer.broken
    assert calls == ["/1"]


@PARSERS
@pytest.mark.parametrize("in_pieces", [False, True], ids=["whole-head", "head-in-pieces"])
async def test_the_keep_alive_wait_counts_from_when_a_held_responses_rest_went_out(
    parser: str, in_pieces: bool, autojump_clock: trio.abc.Clock
) -> None:
    """A client reads its response only after more than the keep-alive timeout (well within
    the write timeout), then at once sends its next request.  The kernel took none of the held
    response at the flush, so its rest went out during the keep-alive read's wait: that time
    must not count as idle, or the connection would close just as the next request comes,
    where an unheld write went out before the idle wait began.  Nor as the head's: a client
    that reads after more than the header timeout and then sends a head in two pieces 2 s
    apart must not get a 408."""
    body = b"R" * 5000

    async def app(env: dict[str, Any]) -> Any:
        return 200, {"content-type": "text/plain"}, [body]

    a, b = _small_buffer_pair()
    limits = Limits()
    state = ServerState(app, limits, access_log=False, http1_parser=parser)
    got = bytearray()
    second = bytearray()
    with a, b:
        conn = _conn(a, state, parser)
        before = await _fill(trio.SocketStream(a))  # what the client has not read yet
        await b.send(_GET)

        async def client() -> None:
            await trio.sleep((limits.header_timeout if in_pieces else limits.keepalive_timeout) + 1)
            while len(got) < len(before) or not got.endswith(body):
                got.extend(await b.recv(65536))
            await trio.sleep(0.01)
            if in_pieces:
                await b.send(_GET[:16])
                await trio.sleep(2)
                await b.send(_GET[16:])
            else:
                await b.send(_GET)
            while not second.endswith(body) and (chunk := await b.recv(65536)):
                second.extend(chunk)
            b.shutdown(socket.SHUT_WR)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_liveness_sweeper, state)
            nursery.start_soon(client)
            with trio.fail_after(60):
                await conn.run()
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
    assert bytes(got[: len(before)]) == before and got.endswith(b"\r\n\r\n" + body)
    assert second.startswith(b"HTTP/1.1 200 ") and second.endswith(b"\r\n\r\n" + body)


async def test_the_reason_for_a_cancel_is_logged_even_when_the_held_rest_finds_the_client_gone(
    caplog: pytest.LogCaptureFixture,
) -> None:
    a, b = trio.socket.socketpair()
    state = ServerState(_hello, Limits(), access_log=False)
    with a, b:
        conn = _conn(a, state, "h11")
        b.close()  # the client is gone
        conn.writer.held = b"the rest of a response"  # what the kernel refused at a flush
        conn._cancel_reason = "closed while idle: server shutting down"
        with caplog.at_level("INFO", logger="trio_rack"):
            await conn._after_cancel()
    assert conn.writer.broken and conn.writer.held is None
    assert any("closed while idle: server shutting down" in r.getMessage() for r in caplog.records)
