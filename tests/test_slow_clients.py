"""Slow and odd clients, and overload (issue 9, points 6 and 7).

* ``--min-body-rate``: a body trickling slower than the minimum over a 5 s window (once it has
  been arriving for 5 s) gets 408 and is dropped; the arithmetic (:mod:`trio_rack.http1.body_rate`)
  is pinned on made-up times, the behaviour through the real connection under the autojump clock.
* Empty lines before a request line are ignored (RFC 9112 §2.2), a bounded number of them.
* ``--limit-concurrency``: requests beyond N in flight get 503 with ``retry-after`` without
  running the app, logged at most once a second.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import pytest
import trio
import trio.testing

from test_config_sources import resolve
from trio_rack import Limits
from trio_rack.cli.main import _given_limits
from trio_rack.http1.body_rate import WINDOW, BodyRate
from trio_rack.testing import ServerState, memory_connection, read_until_closed

# ------------------------------------------------------------------------------- BodyRate


def test_no_verdict_before_the_body_has_arrived_for_the_window() -> None:
    rate = BodyRate(1000)
    rate.record(1.0, 10)  # 10 B/s so far, far too slow, but only 1 s in
    assert not rate.too_slow()
    assert rate.time_left() == pytest.approx(WINDOW - 1.0)


def test_a_trickle_is_too_slow_once_the_window_is_full() -> None:
    rate = BodyRate(1000)
    for _ in range(5):
        rate.record(1.0, 100)  # 100 B/s
    assert rate.too_slow()


def test_a_steady_body_at_the_rate_is_fine_and_its_slack_is_known() -> None:
    rate = BodyRate(1000)
    for _ in range(20):
        rate.record(0.5, 600)  # 1200 B/s
        assert not rate.too_slow()
    # 6000 bytes in the window, 5000 needed: nothing more for ~1 s (one 0.5 s sample leaving
    # the window, then another) and the body is too slow
    assert 0.0 < rate.time_left() <= 1.25


def test_the_window_slides_a_fast_start_does_not_buy_a_slow_end() -> None:
    rate = BodyRate(1000)
    rate.record(0.1, 1_000_000)  # a megabyte at once
    for _ in range(5):
        assert not rate.too_slow()
        rate.record(1.0, 10)
    for _ in range(2):
        rate.record(1.0, 10)
    assert rate.too_slow()  # the megabyte left the window; 10 B/s remains


def test_time_left_is_when_the_rate_fails_if_nothing_more_arrives() -> None:
    rate = BodyRate(100)  # 500 bytes a window
    rate.record(2.0, 1000)
    left = rate.time_left()
    assert WINDOW <= left <= WINDOW + 0.25  # the 1000 bytes leave the window at ~7 s on its clock
    rate.record(left - 0.01, 0)
    assert not rate.too_slow()
    rate.record(0.02, 0)
    assert rate.too_slow()


# ----------------------------------------------------------------- --min-body-rate over HTTP/1


async def read_body_app(env: dict[str, Any]) -> Any:
    body = await env["rack.input"].read_all()
    return 200, {}, [str(len(body)).encode()]


async def trickle(stream: trio.abc.Stream, total: int, piece: int, every: float) -> None:
    """Send ``total`` body bytes, ``piece`` at a time, one piece every ``every`` seconds."""
    sent = 0
    try:
        while sent < total:
            await trio.sleep(every)
            await stream.send_all(b"x" * min(piece, total - sent))
            sent += piece
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # the server dropped us


async def test_a_trickling_body_gets_408_and_is_dropped(autojump_clock, caplog):
    caplog.set_level(logging.INFO, logger="trio_rack")
    async with memory_connection(read_body_app) as client:  # default: 1024 bytes a second
        start = trio.current_time()
        await client.stream.send_all(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trickle, client.stream, 100_000, 100, 1.0)  # 100 B/s: the R.U.D.Y. pace
            data = await read_until_closed(client.stream)
            elapsed = trio.current_time() - start
            nursery.cancel_scope.cancel()
    assert data.startswith(b"HTTP/1.1 408 ")
    assert b"connection: close" in data.lower()
    assert WINDOW <= elapsed < WINDOW + 1.5  # not --body-timeout (30 s), which each byte resets
    assert any("--min-body-rate" in r.getMessage() for r in caplog.records)


async def test_a_body_faster_than_the_minimum_is_served(autojump_clock):
    async with memory_connection(read_body_app, limits=Limits(min_body_rate=1000)) as client:
        await client.stream.send_all(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 24000\r\n\r\n")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trickle, client.stream, 24_000, 600, 0.5)  # 1200 B/s for 20 s
            response = await client.read_response()
    assert response.status == 200 and response.body == b"24000"


async def test_an_app_busy_between_reads_is_not_held_against_the_client(autojump_clock):
    """The rate's clock is the time spent waiting for body bytes: while the app sleeps between
    reads, the client (held back by flow control on a real socket) is not being slow."""

    async def slow_reader(env: dict[str, Any]) -> Any:
        got = 0
        while chunk := await env["rack.input"].receive_some(1000):
            got += len(chunk)
            await trio.sleep(3)
        return 200, {}, [str(got).encode()]

    async with memory_connection(slow_reader, limits=Limits(min_body_rate=1000)) as client:
        await client.stream.send_all(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 20000\r\n\r\n")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trickle, client.stream, 20_000, 4000, 1.0)  # faster than the app reads
            response = await client.read_response()
    assert response.status == 200 and response.body == b"20000"


async def test_a_slow_body_after_the_response_started_aborts_and_drops(autojump_clock):
    async def echo_streaming(env: dict[str, Any]) -> Any:
        async def body(stream: Any) -> None:
            await stream.send_all(b"started\n")
            while await env["rack.input"].receive_some(1000):
                pass

        return 200, {}, body

    async with memory_connection(echo_streaming) as client:
        await client.stream.send_all(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trickle, client.stream, 100_000, 10, 1.0)
            data = await read_until_closed(client.stream)
            nursery.cancel_scope.cancel()
    assert data.startswith(b"HTTP/1.1 200 ") and b"started" in data
    assert not data.endswith(b"0\r\n\r\n") and b"408" not in data


# ----------------------------------------------------------- empty lines before a request line


async def hello(env: dict[str, Any]) -> Any:
    return 200, {}, [env["PATH_INFO"].encode()]


async def test_empty_lines_before_a_request_line_are_ignored(autojump_clock):
    async with memory_connection(hello) as client:
        await client.stream.send_all(
            b"\r\nGET /first HTTP/1.1\r\nHost: a\r\n\r\n"
            b"POST /second HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nab\r\n"  # the classic extra CRLF
            b"\r\n\r\nGET /third HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        )
        data = await read_until_closed(client.stream)
    assert data.count(b"HTTP/1.1 200 OK") == 3
    assert data.index(b"/first") < data.index(b"/second") < data.index(b"/third")
    assert b"400" not in data


async def test_an_empty_line_arriving_alone_is_ignored(autojump_clock):
    async with memory_connection(hello) as client:
        await client.stream.send_all(b"\r")
        await trio.sleep(0.1)
        await client.stream.send_all(b"\n")
        await trio.sleep(0.1)
        await client.stream.send_all(b"\r\n")
        await trio.sleep(0.1)
        response = await client.request("GET", "/late")
    assert response.status == 200 and response.body == b"/late"


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"\r\n" * 9 + b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", id="more-than-eight-empty-lines"),
        pytest.param(b"\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", id="bare-lf-is-not-an-empty-line"),
        pytest.param(b"\r\n \r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", id="whitespace-line"),
    ],
)
async def test_what_is_not_an_allowed_empty_line_is_still_400(autojump_clock, raw: bytes):
    async with memory_connection(hello) as client:
        await client.stream.send_all(raw)
        data = await read_until_closed(client.stream)
    assert data.startswith(b"HTTP/1.1 400 ") and data.count(b"HTTP/1.1") == 1


# ------------------------------------------------------------------------ --limit-concurrency


async def test_requests_beyond_the_limit_get_503_with_retry_after(autojump_clock, caplog):
    caplog.set_level(logging.INFO, logger="trio_rack")
    release = trio.Event()
    calls: list[str] = []

    async def app(env: dict[str, Any]) -> Any:
        calls.append(env["PATH_INFO"])
        if env["PATH_INFO"] == "/hold":
            await release.wait()
        return 200, {}, [b"ok"]

    state = ServerState(app, Limits(limit_concurrency=2), access_log=False)
    async with (
        memory_connection(app, state=state) as a,
        memory_connection(app, state=state) as b,
        memory_connection(app, state=state) as c,
    ):
        await a.stream.send_all(b"GET /hold HTTP/1.1\r\nHost: a\r\n\r\n")
        await b.stream.send_all(b"GET /hold HTTP/1.1\r\nHost: a\r\n\r\n")
        await trio.sleep(0.1)
        assert state.in_flight == 2
        for _ in range(3):
            r = await c.request("GET", "/over")
            assert r.status == 503 and r.header("retry-after") == "1"
            assert r.header("connection") is None  # the 503 keeps the connection
        assert calls == ["/hold", "/hold"]  # the app never ran for them
        await trio.sleep(1.5)
        assert (await c.request("GET", "/over")).status == 503
        release.set()
        assert (await a.read_response()).status == 200
        assert (await b.read_response()).status == 200
        assert state.in_flight == 0
        r = await c.request("GET", "/now")
        assert r.status == 200 and calls[-1] == "/now"
    lines = [r for r in caplog.records if "concurrency limit" in r.getMessage()]
    assert len(lines) == 2  # four 503s, logged once a second at most


async def test_hijacked_connections_do_not_hold_a_slot_and_failures_give_theirs_back(autojump_clock):
    async def app(env: dict[str, Any]) -> Any:
        if env["PATH_INFO"] == "/ws":

            async def hijack(stream: Any) -> None:
                await trio.sleep_forever()

            return 101, {"upgrade": "x", "connection": "upgrade", "rack.hijack": hijack}, []
        if env["PATH_INFO"] == "/boom":
            raise RuntimeError("app bug")
        return 200, {}, [b"ok"]

    state = ServerState(app, Limits(limit_concurrency=1), access_log=False)
    async with memory_connection(app, state=state) as ws, memory_connection(app, state=state) as other:
        await ws.stream.send_all(b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: x\r\n\r\n")
        await trio.sleep(0.1)
        assert state.in_flight == 0
        assert (await other.request("GET", "/boom")).status == 500
    assert state.in_flight == 0
    async with memory_connection(app, state=state) as again:
        assert (await again.request("GET", "/")).status == 200


# ------------------------------------------------------------------------------- the flags


def test_flags_become_limits() -> None:
    args, _ = resolve(["--request-timeout", "2.5", "--min-body-rate", "100", "--limit-concurrency", "64"])
    limits = Limits(**_given_limits(args))
    assert (limits.request_timeout, limits.min_body_rate, limits.limit_concurrency) == (2.5, 100, 64)
    args, _ = resolve(["--request-timeout", "off"], {"TRIO_RACK_LIMIT_CONCURRENCY": "8"})
    limits = Limits(**_given_limits(args))
    assert limits.request_timeout is None and limits.limit_concurrency == 8
    defaults = Limits(**_given_limits(resolve([])[0]))
    assert (defaults.request_timeout, defaults.min_body_rate, defaults.limit_concurrency) == (None, 1024, None)


@pytest.mark.parametrize(
    "bad",
    [{"request_timeout": 0}, {"request_timeout": math.inf}, {"min_body_rate": 0}, {"limit_concurrency": 1.5}],
)
def test_bad_limits_are_config_errors(bad: dict[str, Any]) -> None:
    from trio_rack import ConfigError

    with pytest.raises(ConfigError):
        Limits(**bad)


@pytest.mark.parametrize("overloaded", [False, True], ids=["response", "overload-503"])
async def test_a_client_that_never_reads_is_dropped_after_the_write_timeout_even_for_a_503(
    autojump_clock: trio.testing.MockClock, overloaded: bool
) -> None:
    """The write timeout (enforced by the sweep cancelling the request's scope) holds for the
    ``--limit-concurrency`` 503 too: it used to be written outside the scope, so a client that
    pipelined and never read held the connection until shutdown."""
    from trio_rack.testing import ServerState, serve_stream

    async def app(env: Any) -> Any:
        return 200, {}, [b"ok"]

    client, server = trio.testing.lockstep_stream_pair()  # a send blocks until the peer reads
    state = ServerState(app, Limits(write_timeout=5, liveness_interval=1), access_log=False)
    if overloaded:
        state.max_in_flight = 0
    with trio.fail_after(30):  # virtual seconds: the server's task must end by itself
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_stream, server, state)
            await client.send_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")  # ... and never read
    await trio.aclose_forcefully(client)


@pytest.mark.parametrize(
    "head",
    [b"GET / HTTP/1.1\r\nhost: a b\r\n\r\n", b"GET / HTTP/1.2\r\nhost: x\r\n\r\n"],
    ids=["400-bad-host", "505-version"],
)
async def test_a_client_that_never_reads_its_rejection_is_dropped_after_the_write_timeout(
    autojump_clock: trio.testing.MockClock, head: bytes, http1_parser: str
) -> None:
    """A head refused after it was parsed (strict.check_request: a bad Host, a version we do
    not speak, too many fields) is answered by the driver, not by an exchange: no read deadline
    is armed then and the sweep's write check sees only exchanges, so that answer's write timed
    itself out never, and a client that never read held the connection (and its slot) until
    shutdown.  It now times out as any write outside the sweep's watch does."""
    from trio_rack.testing import ServerState, serve_stream

    async def app(env: Any) -> Any:
        return 200, {}, [b"ok"]

    client, server = trio.testing.lockstep_stream_pair()  # a send blocks until the peer reads
    state = ServerState(app, Limits(write_timeout=5, liveness_interval=1), access_log=False)
    with trio.fail_after(30):  # virtual seconds: the server's task must end by itself
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: serve_stream(server, state, http1_parser=http1_parser))
            await client.send_all(head)  # ... and never read
    await trio.aclose_forcefully(client)
