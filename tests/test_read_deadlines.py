"""Read deadlines (idle, head, body) as floats the liveness sweep enforces (issue #12 point 2).

The connection's cancel scope no longer carries a moving deadline; these tests pin what
replaced it: the sweep cancels a connection whose read deadline has passed, never one whose
deadline is ahead or which has left its scope, and each timeout fires no earlier than set and
at most a quarter of the shortest read timeout late.  Autojump clock: no real waiting.
"""

from __future__ import annotations

import math

import trio
import trio.testing

from trio_rack import Limits
from trio_rack.net.transport import Deadlines, ReadPhase
from trio_rack.server.liveness import expire_read_deadlines, read_deadline_tick
from trio_rack.testing import ServerState, memory_connection, read_until_closed


async def hello(env: dict[str, object]) -> tuple[int, dict[str, str], list[bytes]]:
    return 200, {"content-type": "text/plain"}, [b"hi"]


def test_the_tick_is_a_quarter_of_the_shortest_read_timeout_at_most_the_liveness_interval() -> None:
    assert read_deadline_tick(Limits()) == 1.0  # defaults: 5 s keep-alive / 4 > 1 s
    assert read_deadline_tick(Limits(header_timeout=0.5)) == 0.125
    assert read_deadline_tick(Limits(keepalive_timeout=2.0, liveness_interval=0.25)) == 0.25
    assert read_deadline_tick(Limits(body_timeout=0.002)) == 0.001  # never a busy loop


async def test_expire_if_due_cancels_only_a_passed_deadline_inside_the_scope() -> None:
    deadlines = Deadlines()
    now = trio.current_time()
    deadlines.set_read(ReadPhase.HEAD, now - 1)
    assert not deadlines.expire_if_due(now)  # not yet running inside its scope
    deadlines.in_scope = True
    deadlines.set_read(ReadPhase.HEAD, now + 1)
    assert not deadlines.expire_if_due(now)
    assert not deadlines.scope.cancel_called
    assert deadlines.expire_if_due(now + 1)
    assert deadlines.scope.cancel_called
    assert deadlines.read_deadline == math.inf  # counted once, not at every later sweep
    assert not deadlines.expire_if_due(now + 2)
    assert deadlines.read_phase is ReadPhase.HEAD  # the driver still knows what timed out


async def test_the_sweep_counts_and_cancels_the_passed_ones() -> None:
    state = ServerState(hello, Limits(), access_log=False)
    late, early = Deadlines(), Deadlines()
    for d in (late, early):
        d.in_scope = True
        state.read_deadlines.add(d)
    now = trio.current_time()
    late.set_read(ReadPhase.IDLE, now - 0.1)
    early.set_read(ReadPhase.IDLE, now + 10)
    assert expire_read_deadlines(state, now) == 1
    assert late.scope.cancel_called and not early.scope.cancel_called


async def test_keepalive_timeout_closes_an_idle_connection_on_time(autojump_clock: trio.testing.MockClock) -> None:
    limits = Limits(keepalive_timeout=2.0)
    async with memory_connection(hello, limits=limits) as client:
        response = await client.request("GET", "/")
        assert response.status == 200
        start = trio.current_time()
        assert await read_until_closed(client.stream) == b""  # closed without a word
        elapsed = trio.current_time() - start
    assert 2.0 <= elapsed <= 2.0 * 1.25 + 0.01, elapsed


async def test_a_slow_head_gets_408_on_time_and_an_app_running_long_is_never_cut(
    autojump_clock: trio.testing.MockClock,
) -> None:
    limits = Limits(header_timeout=4.0)
    async with memory_connection(hello, limits=limits) as client:
        start = trio.current_time()
        await client.stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n")  # never finished
        data = await read_until_closed(client.stream)
        elapsed = trio.current_time() - start
    assert data.startswith(b"HTTP/1.1 408 "), data
    assert 4.0 <= elapsed <= 5.01, elapsed

    async def slow(env: dict[str, object]) -> tuple[int, dict[str, str], list[bytes]]:
        await trio.sleep(60)  # far past every read timeout: no read deadline while the app runs
        return 200, {"content-type": "text/plain"}, [b"late"]

    async with memory_connection(slow, limits=Limits(header_timeout=1.0, keepalive_timeout=1.0)) as client:
        response = await client.request("GET", "/")
    assert (response.status, response.body) == (200, b"late")



async def test_the_h2_preface_peek_counts_towards_the_header_timeout(autojump_clock: trio.testing.MockClock) -> None:
    """On a plain socket the dispatcher peeks for an HTTP/2 preface before HTTP/1 reads: a
    client that never sends is closed one header timeout after it connected, not two."""
    from trio_rack.app.env import ConnInfo
    from trio_rack.net.dispatch import serve_connection
    from trio_rack.server.liveness import run_liveness_sweeper

    state = ServerState(hello, Limits(header_timeout=4.0), access_log=False)
    server_sock, client_sock = trio.socket.socketpair()
    server, client = trio.SocketStream(server_sock), trio.SocketStream(client_sock)
    info = ConnInfo("http", ("testserver", 80), ("127.0.0.1", 12345))
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_liveness_sweeper, state)
        async with server:
            await serve_connection(server, state, info)
        elapsed = trio.current_time() - start
        nursery.cancel_scope.cancel()
    assert await read_until_closed(client) == b""
    await client.aclose()
    assert 4.0 <= elapsed <= 4.0 * 1.25 + 0.01, elapsed


async def test_a_head_begun_during_the_preface_peek_still_gets_its_408_on_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """"P" could be POST or the preface: the peek waits; when the head never finishes, HTTP/1
    answers 408 at the header timeout counted from the start, not from the end of the peek."""
    from trio_rack.app.env import ConnInfo
    from trio_rack.net.dispatch import serve_connection
    from trio_rack.server.liveness import run_liveness_sweeper

    state = ServerState(hello, Limits(header_timeout=4.0), access_log=False)
    server_sock, client_sock = trio.socket.socketpair()
    server, client = trio.SocketStream(server_sock), trio.SocketStream(client_sock)
    info = ConnInfo("http", ("testserver", 80), ("127.0.0.1", 12345))
    await client.send_all(b"P")
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_liveness_sweeper, state)
        async with server:
            await serve_connection(server, state, info)
        elapsed = trio.current_time() - start
        nursery.cancel_scope.cancel()
    assert (await read_until_closed(client)).startswith(b"HTTP/1.1 408 ")
    await client.aclose()
    assert 4.0 <= elapsed <= 4.0 * 1.25 + 0.01, elapsed


async def test_on_plain_tcp_the_keepalive_read_times_out_and_a_partial_next_head_gets_408(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Over a real socket the keep-alive read is ``receive_after_turn`` (not the memory
    stream's ``receive_some``): an idle keep-alive connection is closed at the keep-alive
    timeout, and a next head begun in time but never finished gets its 408 at the header timeout."""
    from trio_rack.app.env import ConnInfo
    from trio_rack.net.dispatch import serve_connection
    from trio_rack.server.liveness import run_liveness_sweeper

    info = ConnInfo("http", ("testserver", 80), ("127.0.0.1", 12345))
    request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    for tail, expected, timeout in ((b"", b"", 2.0), (b"GET / HT", b"HTTP/1.1 408 ", 3.0)):
        state = ServerState(hello, Limits(keepalive_timeout=2.0, header_timeout=3.0), access_log=False)
        server_sock, client_sock = trio.socket.socketpair()
        server, client = trio.SocketStream(server_sock), trio.SocketStream(client_sock)
        await client.send_all(request + tail)
        start = trio.current_time()
        got: dict[str, bytes] = {}
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_liveness_sweeper, state)

            async def serve(server: trio.SocketStream, state: ServerState, got: dict[str, bytes]) -> None:
                async with server:
                    await serve_connection(server, state, info)
                got["served"] = b"yes"

            nursery.start_soon(serve, server, state, got)
            got["data"] = await read_until_closed(client)  # (the server's close drains until this EOF)
            elapsed = trio.current_time() - start
            await client.aclose()
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
        data = got["data"]
        assert got.get("served") == b"yes"
        first, _, rest = data.partition(b"\r\n\r\nhi")
        assert first.startswith(b"HTTP/1.1 200 "), data
        assert rest.startswith(expected) if expected else rest == b"", data
        assert timeout <= elapsed <= timeout * 1.25 + 0.01, (tail, elapsed)
