"""``--request-timeout`` (issue 9, point 2): the request's own cancel scope gets a deadline.

The app of a request that has not finished its framed response in time is cancelled; the client
gets ``503`` with ``connection: close`` if the head was not sent, a visibly aborted response
otherwise; the connection's other work and other connections go on.  Hijacked connections are
exempt unless the app sets ``env["trio_rack.cancel_scope"].deadline`` after the hijack.  The
real HTTP/1 connection loop over memory streams, under trio's autojump clock.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import trio
import trio.testing

from trio_rack import Limits
from trio_rack.testing import ServerState, memory_connection, read_until_closed

TIMEOUT = Limits(request_timeout=2.0)


def slow_app(seconds: float, seen: list[str] | None = None) -> Any:
    async def app(env: dict[str, Any]) -> Any:
        try:
            await trio.sleep(seconds)
        except trio.Cancelled:
            if seen is not None:
                seen.append("cancelled")
            raise
        return 200, {}, [b"done"]

    return app


async def test_deadline_gives_503_with_connection_close_and_cancels_the_app(autojump_clock, caplog):
    caplog.set_level(logging.INFO, logger="trio_rack")
    seen: list[str] = []
    async with memory_connection(slow_app(60, seen), limits=TIMEOUT) as client:
        start = trio.current_time()
        await client.stream.send_all(b"GET /slow?x=1 HTTP/1.1\r\nHost: a\r\n\r\n")
        data = await read_until_closed(client.stream)  # the server closes the connection
        elapsed = trio.current_time() - start
    assert data.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert b"\r\nconnection: close\r\n" in data.lower()
    assert seen == ["cancelled"]
    assert 2.0 <= elapsed < 2.5
    lines = [r.getMessage() for r in caplog.records if "deadline" in r.getMessage()]
    assert len(lines) == 1 and "GET /slow" in lines[0] and "--request-timeout 2s" in lines[0]
    assert all(r.levelno == logging.INFO for r in caplog.records if "deadline" in r.getMessage())


async def test_a_fast_request_is_not_affected_and_keeps_alive(autojump_clock):
    async with memory_connection(slow_app(1.5), limits=TIMEOUT) as client:
        for _ in range(3):  # each request gets a fresh deadline: 4.5 s in all is fine
            r = await client.request("GET", "/")
            assert r.status == 200 and r.body == b"done"
            assert r.header("connection") is None


async def test_other_connections_go_on_while_and_after_one_times_out(autojump_clock):
    """The deadline cancels one request, not its server: a second connection on the same server
    state is served while the first waits and after it got its 503."""

    async def app(env: dict[str, Any]) -> Any:
        if env["PATH_INFO"] == "/slow":
            await trio.sleep_forever()
        return 200, {}, [b"quick"]

    state = ServerState(app, TIMEOUT, access_log=False)
    async with memory_connection(app, state=state) as slow, memory_connection(app, state=state) as other:
        await slow.stream.send_all(b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n")
        await trio.sleep(1)
        r = await other.request("GET", "/during")
        assert r.status == 200 and r.body == b"quick"
        data = await read_until_closed(slow.stream)
        assert data.startswith(b"HTTP/1.1 503 ")
        for path in ("/after", "/again"):  # keep-alive on the other connection still works
            r = await other.request("GET", path)
            assert r.status == 200 and r.body == b"quick"
    assert state.in_flight == 0


async def test_deadline_after_the_head_aborts_the_response_visibly(autojump_clock):
    async def app(env: dict[str, Any]) -> Any:
        async def body(stream: Any) -> None:
            await stream.send_all(b"first part")
            await trio.sleep_forever()

        return 200, {}, body

    async with memory_connection(app, limits=TIMEOUT) as client:
        await client.stream.send_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        data = await read_until_closed(client.stream)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and b"transfer-encoding: chunked" in head.lower()
    assert b"first part" in body
    assert not body.endswith(b"0\r\n\r\n")  # no terminating chunk: the client sees an abort
    assert b"503" not in body


async def test_app_extends_its_deadline_through_the_env_scope(autojump_clock):
    async def app(env: dict[str, Any]) -> Any:
        scope = env["trio_rack.cancel_scope"]
        if env["PATH_INFO"] == "/extend":
            scope.deadline = trio.current_time() + 10
        elif env["PATH_INFO"] == "/remove":
            scope.deadline = math.inf
        await trio.sleep(5)
        return 200, {}, [env["PATH_INFO"].encode()]

    async with memory_connection(app, limits=TIMEOUT) as client:
        assert (await client.request("GET", "/extend")).body == b"/extend"
        assert (await client.request("GET", "/remove")).body == b"/remove"
        r = await client.request("GET", "/neither")
        assert r.status == 503 and r.header("connection") == "close"


async def test_app_shortens_its_deadline_even_without_the_flag(autojump_clock, caplog):
    caplog.set_level(logging.INFO, logger="trio_rack")

    async def app(env: dict[str, Any]) -> Any:
        scope = env["trio_rack.cancel_scope"]
        assert scope.deadline == math.inf  # flag off: the server sets no deadline
        scope.deadline = trio.current_time() + 0.5
        await trio.sleep(5)
        return 200, {}, [b"late"]

    async with memory_connection(app) as client:
        r = await client.request("POST", "/short", body=b"x")
    assert r.status == 503
    assert any("deadline passed (set by the app): POST /short" in rec.getMessage() for rec in caplog.records)


async def test_partial_hijack_is_exempt(autojump_clock):
    async def app(env: dict[str, Any]) -> Any:
        async def hijack(stream: Any) -> None:
            await trio.sleep(10)  # well past the 2 s request timeout
            await stream.send_all(b"still here")

        return 101, {"upgrade": "x", "connection": "upgrade", "rack.hijack": hijack}, []

    async with memory_connection(app, limits=TIMEOUT) as client:
        await client.stream.send_all(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: x\r\n\r\n")
        data = await read_until_closed(client.stream)
    assert data.startswith(b"HTTP/1.1 101 ")
    assert data.endswith(b"still here")


async def test_full_hijack_is_exempt_unless_the_app_sets_a_deadline_after_it(autojump_clock):
    async def app(env: dict[str, Any]) -> Any:
        stream = env["rack.hijack"]()
        if env["PATH_INFO"] == "/opt-in":
            env["trio_rack.cancel_scope"].deadline = trio.current_time() + 3
        try:
            await trio.sleep(10)
            await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\nconnection: close\r\n\r\nlate")
        except trio.Cancelled:
            app.cancelled.append(trio.current_time() - start)  # type: ignore[attr-defined]
            raise
        return 200, {}, []

    app.cancelled = []  # type: ignore[attr-defined]
    async with memory_connection(app, limits=TIMEOUT) as client:
        start = trio.current_time()
        await client.stream.send_all(b"GET /exempt HTTP/1.1\r\nHost: a\r\n\r\n")
        assert (await read_until_closed(client.stream)).endswith(b"\r\n\r\nlate")
    async with memory_connection(app, limits=TIMEOUT) as client:
        start = trio.current_time()
        await client.stream.send_all(b"GET /opt-in HTTP/1.1\r\nHost: a\r\n\r\n")
        assert await read_until_closed(client.stream) == b""  # the server writes nothing after a hijack
    assert len(app.cancelled) == 1 and 3.0 <= app.cancelled[0] < 3.5  # type: ignore[attr-defined]


async def test_request_nursery_apps_get_the_deadline_too(autojump_clock):
    """Apps with a request-scoped nursery (the ASGI adapter): the nursery's scope is the request's."""

    async def app(env: dict[str, Any]) -> Any:
        env["trio_rack.nursery"].start_soon(trio.sleep_forever)
        return 200, {}, [b"body"]

    app.trio_rack_request_nursery = True  # type: ignore[attr-defined]
    async with memory_connection(app, limits=TIMEOUT) as client:
        start = trio.current_time()
        await client.stream.send_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        data = await read_until_closed(client.stream)
        elapsed = trio.current_time() - start
    # the buffered response went out; the task kept the request open until the deadline
    assert data.startswith(b"HTTP/1.1 200 ") and data.endswith(b"body")
    assert 2.0 <= elapsed < 2.5


async def test_deadline_is_set_only_when_the_flag_is_on(autojump_clock):
    deadlines: list[float] = []

    async def app(env: dict[str, Any]) -> Any:
        deadlines.append(env["trio_rack.cancel_scope"].deadline - trio.current_time())
        return 200, {}, [b""]

    async with memory_connection(app) as client:
        await client.request("GET", "/")
    async with memory_connection(app, limits=Limits(request_timeout=7)) as client:
        await client.request("GET", "/")
    assert deadlines[0] == math.inf and 6.9 < deadlines[1] <= 7.0


async def test_a_deadline_the_app_set_before_a_hijack_is_kept(autojump_clock):
    """Only the server's own deadline is lifted at a hijack."""
    ended: list[float] = []

    async def app(env: dict[str, Any]) -> Any:
        env["trio_rack.cancel_scope"].deadline = trio.current_time() + 4  # its own, then hijack

        async def hijack(stream: Any) -> None:
            try:
                await trio.sleep(10)
            finally:
                ended.append(trio.current_time() - start)

        return 101, {"upgrade": "x", "connection": "upgrade", "rack.hijack": hijack}, []

    async with memory_connection(app, limits=TIMEOUT) as client:
        start = trio.current_time()
        await client.stream.send_all(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: x\r\n\r\n")
        data = await read_until_closed(client.stream)
    assert data.startswith(b"HTTP/1.1 101 ")
    assert len(ended) == 1 and 4.0 <= ended[0] < 4.5


async def test_an_app_cancelling_its_own_scope_is_logged_as_such(caplog):
    caplog.set_level(logging.INFO, logger="trio_rack")

    async def app(env: dict[str, Any]) -> Any:
        env["trio_rack.cancel_scope"].cancel()
        await trio.sleep(1)
        return 200, {}, [b""]

    async with memory_connection(app, limits=TIMEOUT) as client:
        await client.stream.send_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        assert await read_until_closed(client.stream) == b""  # not a 503: no deadline passed
    assert any("the app cancelled its request scope" in r.getMessage() for r in caplog.records)


# ------------------------------------------------------------------------ HTTP/2: per stream


async def test_on_http2_the_deadline_is_per_stream(autojump_clock):
    """One stream's deadline ends that stream (503 before the head, RST_STREAM after it); the
    connection's other streams are served, before and after."""
    from trio_rack.testing.h2 import memory_h2_connection

    async def app(env: dict[str, Any]) -> Any:
        if env["PATH_INFO"] == "/slow":
            await trio.sleep_forever()
        if env["PATH_INFO"] == "/stream":

            async def body(stream: Any) -> None:
                await stream.send_all(b"part")
                await trio.sleep_forever()

            return 200, {}, body
        return 200, {}, [b"quick"]

    async with memory_h2_connection(app, limits=TIMEOUT) as client:
        slow = await client.start_request("GET", "/slow")
        streaming = await client.start_request("GET", "/stream")
        quick = await client.start_request("GET", "/quick")
        r = await client.read_response(quick)
        assert r.status == 200 and r.body == b"quick"
        r = await client.read_response(slow)
        assert r.status == 503
        result = await client.read_stream(streaming)
        assert result.status == 200 and result.reset is not None and not result.ended
        r = await client.request("GET", "/after")
        assert r.status == 200 and r.body == b"quick"


async def test_on_http2_streams_beyond_limit_concurrency_get_503(autojump_clock):
    from trio_rack.testing.h2 import memory_h2_connection

    release = trio.Event()

    async def app(env: dict[str, Any]) -> Any:
        if env["PATH_INFO"] == "/hold":
            await release.wait()
        return 200, {}, [b"ok"]

    async with memory_h2_connection(app, limits=Limits(limit_concurrency=1)) as client:
        held = await client.start_request("GET", "/hold")
        await trio.sleep(0.1)
        r = await client.request("GET", "/over")
        assert r.status == 503 and r.header("retry-after") == "1"
        release.set()
        assert (await client.read_response(held)).status == 200
        assert (await client.request("GET", "/now")).status == 200
