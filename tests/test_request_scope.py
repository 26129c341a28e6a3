"""The request's own cancel scope on HTTP/1 (issue #12 point 2 tried sharing the connection's).

``env["trio_rack.cancel_scope"]`` is a scope of the request's own on every HTTP/1 request.
Running the request in its connection's scope instead saved ~43,000 instructions a hello
request, and was dropped: a scope the app kept and cancelled after its request ended cut a
later request on the same keep-alive connection.  These tests pin that every documented way a
request is cancelled ends that request only — the app's ``cancel()``, a deadline the app set,
the sweep's client-gone and write-timeout cancels — while the connection's own cancellations
(a body read timing out, server shutdown) stay the connection's, that a scope kept past its
request does nothing to the next one, and that a body read the app gives up on leaves no body
deadline armed under its response.  Every test runs on both HTTP/1 parsers (``http1_parsers``);
timeouts on trio's autojump clock.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import pytest
import trio
import trio.testing

from trio_rack import Limits
from trio_rack.testing import ServerState, memory_connection, read_until_closed, serve_stream

pytestmark = pytest.mark.http1_parsers


def _messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records]


async def _ticks(n: int) -> Any:
    """A streamed body: ``n`` ticks a second apart."""
    for i in range(n):
        yield b"tick %d\n" % i
        await trio.sleep(1)


async def _ticks_received(client: trio.abc.Stream) -> int:
    """Read one chunked response to its last chunk; how many ticks it had (fails if cut)."""
    got = b""
    while not got.endswith(b"0\r\n\r\n"):
        data = await client.receive_some(65536)
        assert data, f"the response was cut after {got.count(b'tick')} ticks"
        got += data
    return got.count(b"tick")


async def test_every_request_has_a_scope_of_its_own_with_or_without_a_request_timeout() -> None:
    seen: list[trio.CancelScope] = []

    async def app(env: dict[str, Any]) -> Any:
        scope = env["trio_rack.cancel_scope"]
        assert isinstance(scope, trio.CancelScope)
        seen.append(scope)
        return 200, {"x-deadline": str(scope.deadline)}, [b"ok"]

    async with memory_connection(app) as client:
        first = await client.request("GET", "/")
        second = await client.request("GET", "/")
    assert first.status == second.status == 200
    assert first.header("x-deadline") == second.header("x-deadline") == "inf"
    assert seen[0] is not seen[1]

    seen.clear()
    async with memory_connection(app, limits=Limits(request_timeout=30)) as client:
        first = await client.request("GET", "/")
        second = await client.request("GET", "/")
    assert float(first.header("x-deadline") or "inf") < math.inf
    assert seen[0] is not seen[1]  # --request-timeout: a scope (and deadline) per request


@pytest.mark.parametrize("misuse", ["cancel", "shield"])
async def test_a_scope_kept_past_its_request_does_nothing_to_the_next(
    misuse: str, autojump_clock: trio.testing.MockClock
) -> None:
    """A watchdog in an app-wide nursery cancels (or shields) "its" request's scope after the
    request ended: the next request on the same keep-alive connection is served whole, and the
    server's own cancellation still ends the connection."""
    app_nursery: list[trio.Nursery] = []

    async def watchdog(scope: trio.CancelScope) -> None:
        await trio.sleep(2)
        if misuse == "cancel":
            scope.cancel()
        else:
            scope.shield = True

    async def app(env: dict[str, Any]) -> Any:
        if env["PATH_INFO"] == "/fast":
            app_nursery[0].start_soon(watchdog, env["trio_rack.cancel_scope"])
            return 200, {"content-type": "text/plain"}, [b"fast\n"]
        return 200, {"content-type": "text/plain"}, _ticks(4)

    state = ServerState(app, Limits(), access_log=False)
    client, server = trio.testing.memory_stream_pair()
    served = trio.Event()

    async def connection() -> None:
        try:
            await serve_stream(server, state)
        finally:
            served.set()

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            app_nursery.append(nursery)
            nursery.start_soon(connection)
            await client.send_all(b"GET /fast HTTP/1.1\r\nhost: x\r\n\r\n")
            got = b""
            while not got.endswith(b"fast\n"):
                got += await client.receive_some(65536)
            await client.send_all(b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n")
            assert await _ticks_received(client) == 4  # the whole second response
            nursery.cancel_scope.cancel()  # the server's cancellation reaches the idle connection
            with trio.CancelScope(shield=True):
                with trio.move_on_after(5):
                    await served.wait()
                reached = served.is_set()
                if not reached:  # a shielded connection: end it from the client side, then fail
                    await client.aclose()
            assert reached, "the server's cancellation did not reach the connection"


async def test_a_body_read_the_app_gives_up_on_leaves_no_body_deadline_under_its_response(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The app stops waiting for a slow body (its own timeout) and streams 10 s of ticks: the
    body timeout (3 s) is the read's, not the response's, and no tick is cut."""

    async def app(env: dict[str, Any]) -> Any:
        with trio.move_on_after(0.5):
            await env["rack.input"].receive_some()
        return 200, {"content-type": "text/plain"}, _ticks(10)

    state = ServerState(app, Limits(body_timeout=3.0), access_log=False)
    client, server = trio.testing.memory_stream_pair()
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_stream, server, state)
            await client.send_all(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\n")
            assert await _ticks_received(client) == 10
            nursery.cancel_scope.cancel()


async def test_cancelling_the_scope_ends_the_request_and_its_connection_only(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="trio_rack")
    finished: list[str] = []

    async def app(env: dict[str, Any]) -> Any:
        if env["PATH_INFO"] == "/cancel":
            try:
                env["trio_rack.cancel_scope"].cancel()
                await trio.sleep(1)
            finally:
                finished.append("finally")
        return 200, {}, [b"fine"]

    async with memory_connection(app) as client:
        await client.stream.send_all(b"GET /cancel HTTP/1.1\r\nHost: a\r\n\r\n")
        assert await read_until_closed(client.stream) == b""  # nothing sent, connection closed
    assert finished == ["finally"]
    assert any("the app cancelled its request scope" in m for m in _messages(caplog))
    async with memory_connection(app) as client:  # the server serves the next connection
        response = await client.request("GET", "/")
    assert (response.status, response.body) == (200, b"fine")


async def test_cancelling_inside_the_apps_own_nursery_is_caught_as_well(caplog: pytest.LogCaptureFixture) -> None:
    """The Cancelled reaches the exchange wrapped in the app's nursery's exception group."""
    caplog.set_level(logging.INFO, logger="trio_rack")

    async def app(env: dict[str, Any]) -> Any:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.sleep_forever)
            env["trio_rack.cancel_scope"].cancel()
            await trio.sleep_forever()
        return 200, {}, [b""]

    async with memory_connection(app) as client:
        await client.stream.send_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        assert await read_until_closed(client.stream) == b""
    assert any("the app cancelled its request scope" in m for m in _messages(caplog))


async def test_cancelling_after_the_head_aborts_the_response_visibly() -> None:
    async def app(env: dict[str, Any]) -> Any:
        scope = env["trio_rack.cancel_scope"]

        async def body(stream: Any) -> None:
            await stream.send_all(b"part")
            scope.cancel()
            await stream.send_all(b"never")

        return 200, {"content-type": "text/plain"}, body

    async with memory_connection(app) as client:
        await client.stream.send_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        data = await read_until_closed(client.stream)
    assert data.startswith(b"HTTP/1.1 200 ")
    assert b"4\r\npart\r\n" in data and b"never" not in data
    assert not data.endswith(b"0\r\n\r\n")  # no terminating chunk: the cut is visible


async def test_a_deadline_the_app_sets_is_enforced_with_a_503(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trio_rack")

    async def app(env: dict[str, Any]) -> Any:
        env["trio_rack.cancel_scope"].deadline = trio.current_time() + 2
        await trio.sleep(10)
        return 200, {}, [b"late"]

    async with memory_connection(app) as client:
        start = trio.current_time()
        await client.stream.send_all(b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n")
        data = await read_until_closed(client.stream)
        elapsed = trio.current_time() - start
    assert data.startswith(b"HTTP/1.1 503 "), data
    assert b"connection: close" in data.lower()
    assert 2.0 <= elapsed < 2.5, elapsed
    assert any("request deadline passed (set by the app): GET /slow" in m for m in _messages(caplog))


async def test_a_deadline_not_reached_is_not_inherited_by_the_next_request(
    autojump_clock: trio.testing.MockClock,
) -> None:
    deadlines: list[float] = []

    async def app(env: dict[str, Any]) -> Any:
        scope = env["trio_rack.cancel_scope"]
        deadlines.append(scope.deadline)
        if env["PATH_INFO"] == "/short":
            scope.deadline = trio.current_time() + 1  # a tight budget, met
        else:
            await trio.sleep(5)  # well past the first request's deadline
        return 200, {}, [b"ok"]

    async with memory_connection(app) as client:
        first = await client.request("GET", "/short")
        second = await client.request("GET", "/long")
        third = await client.request("GET", "/long")  # the same connection, still open
    assert (first.status, second.status, third.status) == (200, 200, 200)
    assert deadlines == [math.inf, math.inf, math.inf]


async def test_a_body_read_timing_out_is_still_the_connections_408(autojump_clock: trio.testing.MockClock) -> None:
    async def app(env: dict[str, Any]) -> Any:
        body = b""
        while piece := await env["rack.input"].receive_some():
            body += piece
        return 200, {}, [body]

    async with memory_connection(app, limits=Limits(body_timeout=2.0, min_body_rate=1)) as client:
        start = trio.current_time()
        await client.stream.send_all(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc")
        data = await read_until_closed(client.stream)
        elapsed = trio.current_time() - start
    assert data.startswith(b"HTTP/1.1 408 "), data
    assert b"timed out waiting for the request body" in data
    assert 2.0 <= elapsed <= 2.0 * 1.25 + 0.01, elapsed


async def test_a_client_that_hangs_up_gets_its_app_cancelled(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Real sockets: the sweep's poll sees the hang-up and cancels the request's scope."""
    caplog.set_level(logging.INFO, logger="trio_rack")
    cancelled = trio.Event()

    async def app(env: dict[str, Any]) -> Any:
        try:
            await trio.sleep_forever()
        finally:
            cancelled.set()

    state = ServerState(app, Limits(liveness_interval=0.5), access_log=False)
    server_sock, client_sock = trio.socket.socketpair()
    server, client = trio.SocketStream(server_sock), trio.SocketStream(client_sock)
    async with trio.open_nursery() as nursery:

        async def run() -> None:
            async with server:
                await serve_stream(server, state)

        nursery.start_soon(run)
        await client.send_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        await trio.sleep(0.1)
        start = trio.current_time()
        await client.aclose()
        with trio.fail_after(5):
            await cancelled.wait()
        assert trio.current_time() - start <= 1.0
    assert any("client went away; app cancelled" in m for m in _messages(caplog))


async def test_a_stalled_write_is_cut_by_the_write_timeout(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trio_rack")
    chunk = b"x" * 65536

    async def app(env: dict[str, Any]) -> Any:
        async def body(stream: Any) -> None:
            while True:
                await stream.send_all(chunk)

        return 200, {"content-type": "text/plain"}, body

    state = ServerState(app, Limits(write_timeout=3.0, liveness_interval=0.5), access_log=False)
    server_sock, client_sock = trio.socket.socketpair()
    server, client = trio.SocketStream(server_sock), trio.SocketStream(client_sock)
    async with client:
        with trio.fail_after(30):
            async with server:
                await client.send_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
                start = trio.current_time()
                await serve_stream(server, state)  # returns once the stalled write is dropped
            elapsed = trio.current_time() - start
    assert 3.0 <= elapsed <= 4.0, elapsed
    assert any("write timeout" in m for m in _messages(caplog))


async def test_server_shutdown_is_not_taken_for_the_requests_cancel(caplog: pytest.LogCaptureFixture) -> None:
    """A cancellation from outside (the server's nursery) is not caught as the request's: it
    propagates, and nothing logs it as the app's doing."""
    caplog.set_level(logging.INFO, logger="trio_rack")
    started = trio.Event()
    state = ServerState(lambda env: _sleep_then(started), Limits(), access_log=False)
    client, server = trio.testing.memory_stream_pair()
    with trio.move_on_after(5) as guard:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_stream, server, state)
            await client.send_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            await started.wait()
            nursery.cancel_scope.cancel()
    assert not guard.cancelled_caught
    assert not any("cancel" in m for m in _messages(caplog))


async def _sleep_then(started: trio.Event) -> Any:
    started.set()
    await trio.sleep_forever()


async def test_a_deadline_set_around_a_hijack_still_ends_the_hijacked_connection(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Without --request-timeout the app's own deadline: before a partial hijack it is kept,
    after a full one it is the app's opt-in; either way it ends the app and the stream is
    closed."""
    ended: list[float] = []

    async def partial(env: dict[str, Any]) -> Any:
        env["trio_rack.cancel_scope"].deadline = trio.current_time() + 4

        async def hijack(stream: Any) -> None:
            try:
                await trio.sleep(10)
            finally:
                ended.append(trio.current_time() - start)

        return 101, {"upgrade": "x", "connection": "upgrade", "rack.hijack": hijack}, []

    async def full(env: dict[str, Any]) -> Any:
        stream = env["rack.hijack"]()
        env["trio_rack.cancel_scope"].deadline = trio.current_time() + 3
        await stream.send_all(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\nconnection: upgrade\r\n\r\n")
        try:
            await trio.sleep(10)
        finally:
            ended.append(trio.current_time() - start)
        return -1, {}, []

    for app, expected in ((partial, 4.0), (full, 3.0)):
        async with memory_connection(app) as client:
            start = trio.current_time()
            await client.stream.send_all(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: x\r\n\r\n")
            data = await read_until_closed(client.stream)
        assert data.startswith(b"HTTP/1.1 101 ")
        assert expected <= ended[-1] < expected + 0.5, ended


async def test_with_a_request_timeout_the_own_scope_still_gets_its_503(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """--request-timeout: the deadline passes, 503, the log names the flag; the connection's
    scope is not the one cancelled (nothing left for the next)."""
    caplog.set_level(logging.INFO, logger="trio_rack")

    async def app(env: dict[str, Any]) -> Any:
        await trio.sleep(10)
        return 200, {}, [b"late"]

    async with memory_connection(app, limits=Limits(request_timeout=2)) as client:
        start = trio.current_time()
        await client.stream.send_all(b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n")
        data = await read_until_closed(client.stream)
        elapsed = trio.current_time() - start
    assert data.startswith(b"HTTP/1.1 503 "), data
    assert 2.0 <= elapsed < 2.5, elapsed
    assert any("request deadline passed (--request-timeout 2s): GET /slow" in m for m in _messages(caplog))
