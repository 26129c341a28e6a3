"""The HTTP/1 driver's per-cycle read scope (http1/connection.py ``run``).

Each request cycle's reads (the previous body's drain, this head) run in a scope of their own,
the one the liveness sweep cancels when a read deadline passes; a request announcing a body
runs its exchange inside it (its body reads are timed the same way), one without a body runs
its exchange outside it, in the request's own scope only.
"""

from __future__ import annotations

from typing import Any

import h11
import pytest
import trio
import trio.testing

from trio_rack import Limits
from trio_rack.http1 import strict
from trio_rack.net.transport import ReadPhase
from trio_rack.server.liveness import expire_read_deadlines
from trio_rack.testing import ServerState, read_until_closed, serve_stream


def _request(*headers: tuple[bytes, bytes]) -> h11.Request:
    return h11.Request(method=b"POST", target=b"/", headers=[(b"host", b"a"), *headers])


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ((), False),
        (((b"content-length", b"0"),), False),
        (((b"content-length", b"000"),), False),
        (((b"content-length", b"5"),), True),
        (((b"content-length", b"10"),), True),
        (((b"transfer-encoding", b"chunked"),), True),
        (((b"accept", b"*/*"), (b"content-length", b"1")), True),
    ],
)
def test_has_body(headers: tuple[tuple[bytes, bytes], ...], expected: bool) -> None:
    assert strict.has_body(_request(*headers)) is expected


def _driver(state: ServerState) -> Any:
    (driver,) = state.connections
    return driver


async def _serve_one(method: bytes, extra: bytes) -> tuple[bytes, list[str], list[int]]:
    """One request whose app makes the connection's read deadline pass and runs the sweep's
    check (what a body read timing out does) while it runs, then sleeps a second; the bytes
    the client got, what the app saw, and how many connections the check cancelled."""
    seen: list[str] = []
    expired: list[int] = []

    async def app(env: dict[str, Any]) -> Any:
        now = trio.current_time()
        _driver(state).deadlines.set_read(ReadPhase.BODY, now - 1)
        expired.append(expire_read_deadlines(state, now))
        try:
            await trio.sleep(1)
        except trio.Cancelled:
            seen.append("cancelled")
            raise
        seen.append("slept")
        return 200, {"content-type": "text/plain"}, [b"done"]

    async def serve() -> None:
        try:
            await serve_stream(server, state)
        finally:
            await server.aclose()  # (as the listener does: the 408 path leaves the close to it)

    state = ServerState(app, Limits(), access_log=False)
    client, server = trio.testing.memory_stream_pair()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            await client.send_all(method + b" / HTTP/1.1\r\nhost: a\r\nconnection: close\r\n" + extra)
            data = await read_until_closed(client)
            nursery.cancel_scope.cancel()
    return data, seen, expired


async def test_a_bodyless_requests_app_runs_outside_the_read_scope(autojump_clock: trio.testing.MockClock) -> None:
    """No read scope is left to cancel under it (nor kept: the exchange reads nothing)."""
    data, seen, expired = await _serve_one(b"GET", b"\r\n")
    assert expired == [0]
    assert seen == ["slept"]
    assert data.startswith(b"HTTP/1.1 200 ") and data.endswith(b"done"), data


async def test_a_request_with_a_body_runs_its_app_inside_the_read_scope(autojump_clock: trio.testing.MockClock) -> None:
    """Its body reads are timed by that scope: a passed deadline ends the app, and the driver
    answers 408 as for any body read timing out."""
    data, seen, expired = await _serve_one(b"POST", b"content-length: 3\r\n\r\nabc")
    assert expired == [1]
    assert seen == ["cancelled"]
    assert data.startswith(b"HTTP/1.1 408 "), data
    assert b"timed out waiting for the request body" in data


async def test_the_idle_timeout_after_a_bodyless_stream_still_ends_the_connection(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """After a response served outside the read scope, the next cycle's scope times the wait."""

    async def app(env: dict[str, Any]) -> Any:
        async def ticks() -> Any:
            for _ in range(3):
                await trio.sleep(1)
                yield b"."

        return 200, {"content-type": "text/plain"}, ticks()

    state = ServerState(app, Limits(keepalive_timeout=5.0), access_log=False)
    client, server = trio.testing.memory_stream_pair()
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_stream, server, state)
            await client.send_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
            received = b""
            while not received.endswith(b"0\r\n\r\n"):
                received += await client.receive_some()
            done = trio.current_time()
            rest = await read_until_closed(client)
            waited = trio.current_time() - done
            nursery.cancel_scope.cancel()
    assert received.count(b"\r\n.\r\n") == 3
    assert rest == b""
    assert 5.0 <= waited <= 5.0 * 1.25 + 0.01, waited


def _awaiting(coro: Any) -> list[str]:
    """The qualified names of the coroutines ``coro`` awaits through, outermost first."""
    names = []
    while coro is not None and hasattr(coro, "cr_code"):
        names.append(coro.cr_code.co_qualname)
        coro = coro.cr_await
    return names


async def test_a_streamed_response_runs_from_the_drivers_frame_without_exchange_run(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The driver takes the exchange's steps itself: under a streamed body, the connection's
    task awaits ``HTTPConnection.run`` then ``Exchange.respond``, with no ``Exchange.run``
    between them (a coroutine fewer per open stream)."""
    tasks: list[trio.lowlevel.Task] = []

    async def app(env: dict[str, Any]) -> Any:
        async def body() -> Any:
            tasks.append(trio.lowlevel.current_task())
            yield b"."
            await trio.sleep(1)
            yield b"."

        return 200, {"content-type": "text/plain"}, body()

    state = ServerState(app, Limits(), access_log=False)
    client, server = trio.testing.memory_stream_pair()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_stream, server, state)
            await client.send_all(b"GET / HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n")
            data = b""
            while b"1\r\n.\r\n" not in data:  # the first chunk: the body now sleeps
                data += await client.receive_some()
            (task,) = tasks
            chain = _awaiting(task.coro)  # (suspended now: each coroutine's cr_await is set)
            data += await read_until_closed(client)
            nursery.cancel_scope.cancel()
    assert data.endswith(b"1\r\n.\r\n0\r\n\r\n"), data
    assert "HTTPConnection.run" in chain, chain
    assert chain[chain.index("HTTPConnection.run") + 1] == "Exchange.respond", chain
    assert "Exchange.run" not in chain, chain


async def test_an_overloaded_request_through_the_drivers_steps_is_counted_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """``begin`` says False over ``--limit-concurrency``: the driver goes on with ``run_begun``
    (which does not begin again), and every request is out of flight afterwards."""
    release = trio.Event()

    async def app(env: dict[str, Any]) -> Any:
        if env["PATH_INFO"] == "/hold":
            await release.wait()
        return 200, {}, [env["PATH_INFO"].encode()]

    state = ServerState(app, Limits(limit_concurrency=1), access_log=False)
    (held, held_server), (other, other_server) = (trio.testing.memory_stream_pair() for _ in range(2))
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_stream, held_server, state)
            nursery.start_soon(serve_stream, other_server, state)
            await held.send_all(b"GET /hold HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n")
            await trio.testing.wait_all_tasks_blocked()
            assert state.in_flight == 1
            await other.send_all(b"GET /x HTTP/1.1\r\nhost: a\r\n\r\n")
            data = b""
            while not data.endswith(b"retry later\n"):
                data += await other.receive_some()
            assert data.startswith(b"HTTP/1.1 503 "), data
            await trio.testing.wait_all_tasks_blocked()
            assert state.in_flight == 1  # the held one only: the 503's request was counted once
            release.set()
            assert (await read_until_closed(held)).endswith(b"/hold")
            await other.send_all(b"GET /y HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n")
            assert (await read_until_closed(other)).endswith(b"/y")
            assert state.in_flight == 0 and not state.active
            nursery.cancel_scope.cancel()



async def _read_body(env: dict[str, Any]) -> Any:
    body = b""
    while chunk := await env["rack.input"].receive_some():
        body += chunk
    return 200, {}, [body]


@pytest.mark.parametrize(
    "head",
    [
        b"POST / HTTP/1.1\r\nHost: a\r\nCONTENT-LENGTH: 5\r\n\r\nab",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 005\r\n\r\nab",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\nab",
        b"GET / HTTP/1.0\r\nHost: a\r\nContent-Length: 5\r\n\r\nab",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n5\r\nab",
        b"POST / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: x\r\nContent-Length: 5\r\n\r\nab",
    ],
    ids=["upper-case-name", "leading-zeros", "repeated-value", "http10-get", "chunked-mixed-case", "upgrade"],
)
async def test_every_body_framing_either_parser_reads_is_timed_by_the_read_scope(
    autojump_clock: trio.testing.MockClock, head: bytes, http1_parser: str
) -> None:
    """The gate fails closed: whatever spelling of a body's framing the parser takes as a body,
    :func:`.strict.has_body` sees one too, so a body that stops arriving gets the body timeout's
    408 (a request wrongly taken as bodyless would run outside the read scope: the sweep would
    find no scope to cancel, and the app would wait on the body forever)."""
    state = ServerState(_read_body, Limits(body_timeout=2.0), access_log=False)
    client, server = trio.testing.memory_stream_pair()

    async def serve() -> None:
        try:
            await serve_stream(server, state, http1_parser=http1_parser)
        finally:
            await server.aclose()

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            await client.send_all(head)
            data = await read_until_closed(client)
            nursery.cancel_scope.cancel()
    assert data.startswith(b"HTTP/1.1 408 "), data
    assert b"timed out waiting for the request body" in data
