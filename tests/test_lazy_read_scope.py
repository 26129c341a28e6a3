"""The HTTP/1 cycle's read scope, entered only when a read has to wait (plain TCP).

Over a real socket pair and the real driver: a head that is there after the keep-alive read's
yield costs no scope; a wait enters one (and the wait is then cancellable by the sweep); a
request with a body runs its exchange inside one even when its head needed no wait; and what
the sweep or a graceful drain would have cancelled while no scope was entered (a deadline that
passed, ``close_if_idle`` during the read's yield) is done when the scope is entered.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
import trio
import trio.testing

from trio_rack import Limits
from trio_rack.app.env import ConnInfo
from trio_rack.http1.connection import HTTPConnection
from trio_rack.net.transport import ReadPhase
from trio_rack.server.liveness import expire_read_deadlines
from trio_rack.testing import ServerState

_GET = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


def _count_scopes(monkeypatch: pytest.MonkeyPatch) -> list[ReadPhase]:
    """Record the read phase each time the driver makes (and enters) a cycle scope."""
    made: list[ReadPhase] = []
    original = HTTPConnection._enter_read_scope

    def counting(self: HTTPConnection) -> None:
        if self.deadlines.scope is None:
            made.append(self.deadlines.read_phase)
        original(self)

    monkeypatch.setattr(HTTPConnection, "_enter_read_scope", counting)
    return made


def _conn(sock: trio.socket.SocketType, state: ServerState) -> HTTPConnection:
    return HTTPConnection(trio.SocketStream(sock), state, ConnInfo("http", ("testserver", 80), ("127.0.0.1", 1)))


async def _read_responses(sock: trio.socket.SocketType, count: int) -> bytes:
    got = b""
    while got.count(b"hi") < count:
        chunk = await sock.recv(65536)
        assert chunk, got
        got += chunk
    return got


async def test_a_head_there_after_the_turn_makes_no_scope_and_a_wait_makes_one(
    monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock
) -> None:
    made = _count_scopes(monkeypatch)
    a, b = trio.socket.socketpair()
    waiting_scope: list[object] = []

    async def hello(env: dict[str, Any]) -> Any:
        if env["PATH_INFO"] == "/":
            os.write(b.fileno(), b"GET /2 HTTP/1.1\r\nHost: x\r\n\r\n")  # there before the next read
        return 200, {"content-type": "text/plain"}, [b"hi"]

    state = ServerState(hello, Limits(), access_log=False)
    with a, b:
        conn = _conn(a, state)
        await b.send(_GET)  # the first head too is there at the first read
        async with trio.open_nursery() as nursery:

            async def client() -> None:
                got = await _read_responses(b, 2)
                assert got.count(b"HTTP/1.1 200 ") == 2
                await trio.testing.wait_all_tasks_blocked()  # the driver waits for a third
                waiting_scope.append(conn.deadlines.scope)
                b.shutdown(trio.socket.SHUT_WR)

            nursery.start_soon(client)
            with trio.fail_after(5):
                await conn.run()
    assert made == [ReadPhase.IDLE]  # only the third read waited
    assert waiting_scope[0] is not None


async def test_the_wait_in_its_scope_is_cancelled_by_the_sweep(autojump_clock: trio.testing.MockClock) -> None:
    """The keep-alive timeout over plain TCP: the waiting read's scope is the one the sweep cancels."""

    async def hello(env: dict[str, Any]) -> Any:
        return 200, {"content-type": "text/plain"}, [b"hi"]

    state = ServerState(hello, Limits(keepalive_timeout=5.0), access_log=False)
    a, b = trio.socket.socketpair()
    expired: list[int] = []
    with a, b:
        conn = _conn(a, state)
        await b.send(_GET)
        async with trio.open_nursery() as nursery:

            async def client() -> None:
                await _read_responses(b, 1)
                await trio.sleep(5.01)  # the driver waits, its deadline passes
                expired.append(expire_read_deadlines(state, trio.current_time()))
                assert await b.recv(65536) == b""  # closed without an answer (idle)

            nursery.start_soon(client)
            with trio.fail_after(30):
                await conn.run()
    assert expired == [1]


async def test_a_body_request_whose_head_needed_no_wait_runs_in_a_scope(
    monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock
) -> None:
    """Its body reads are timed: a passed deadline ends the app and the driver answers 408."""
    made = _count_scopes(monkeypatch)
    seen: list[str] = []
    expired: list[int] = []

    async def app(env: dict[str, Any]) -> Any:
        now = trio.current_time()
        conn.deadlines.set_read(ReadPhase.BODY, now - 1)  # what a body read timing out sees
        expired.append(expire_read_deadlines(state, now))
        try:
            await trio.sleep(1)
        except trio.Cancelled:
            seen.append("cancelled")
            raise
        seen.append("slept")  # pragma: no cover - the failure this test is for
        return 200, {"content-type": "text/plain"}, [b"hi"]

    state = ServerState(app, Limits(), access_log=False)
    a, b = trio.socket.socketpair()
    with a, b:
        conn = _conn(a, state)
        await b.send(b"POST / HTTP/1.1\r\nHost: x\r\ncontent-length: 3\r\n\r\nab")
        with trio.fail_after(5):
            await conn.run()
        a.shutdown(trio.socket.SHUT_WR)
        got = b""
        while chunk := await b.recv(65536):
            got += chunk
    assert made == [ReadPhase.APP]  # entered for the exchange, not for a wait
    assert expired == [1]
    assert seen == ["cancelled"]
    assert got.startswith(b"HTTP/1.1 408 "), got


def _arming_hello(armed: list[bool]) -> Any:
    """A hello app that arms :func:`_during_the_turn` for the keep-alive read after it."""

    async def hello(env: dict[str, Any]) -> Any:
        armed.append(True)
        return 200, {"content-type": "text/plain"}, [b"hi"]

    return hello


def _during_the_turn(monkeypatch: pytest.MonkeyPatch, armed: list[bool], then: Any) -> None:
    """Run ``then`` inside the keep-alive read's yield (receive_after_turn's shielded
    checkpoint) once ``armed`` holds True: what another task can do while no scope is entered."""
    original = trio.lowlevel.cancel_shielded_checkpoint

    async def turn() -> None:
        if armed and armed[0]:
            armed[0] = False
            await then()
        await original()

    monkeypatch.setattr(trio.lowlevel, "cancel_shielded_checkpoint", turn)


async def test_a_drain_begun_during_the_reads_turn_closes_the_idle_connection(
    monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock
) -> None:
    """Graceful shutdown calls close_if_idle once per connection; one that came while the
    read yielded (no scope to cancel yet) is done when the wait enters its scope, not missed
    until the keep-alive timeout (here no sweep runs at all: it would hang)."""
    armed: list[bool] = []
    missed: list[object] = []

    async def drain_now() -> None:
        state.draining = True
        missed.append(conn.deadlines.scope)
        conn.close_if_idle()  # nothing to cancel yet

    _during_the_turn(monkeypatch, armed, drain_now)
    state = ServerState(_arming_hello(armed), Limits(keepalive_timeout=30.0), access_log=False)
    a, b = trio.socket.socketpair()
    with a, b:
        conn = _conn(a, state)
        await b.send(_GET)
        start = trio.current_time()
        async with trio.open_nursery() as nursery:

            async def client() -> None:
                got = await _read_responses(b, 1)
                assert got.startswith(b"HTTP/1.1 200 ")
                assert await b.recv(65536) == b""

            nursery.start_soon(client)
            with trio.fail_after(60):
                try:
                    await conn.run()
                finally:
                    a.close()  # (as the listener does after a close_if_idle)
    assert missed == [None]
    assert conn._cancel_reason == "closed while idle: server shutting down"
    assert trio.current_time() - start < 1.0


async def test_a_deadline_passed_during_the_reads_turn_is_enforced_when_the_wait_begins(
    monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock
) -> None:
    """The sweep found no scope to cancel while the read yielded; entering one for the wait
    cancels it at once (the connection ends as at its keep-alive timeout), no later."""
    armed: list[bool] = []
    swept: list[int] = []
    ended: list[float] = []

    async def late() -> None:
        await trio.sleep(6)  # past the keep-alive deadline (5 s) while no scope is entered
        swept.append(expire_read_deadlines(state, trio.current_time()))

    _during_the_turn(monkeypatch, armed, late)
    state = ServerState(_arming_hello(armed), Limits(keepalive_timeout=5.0), access_log=False)
    a, b = trio.socket.socketpair()
    with a, b:
        conn = _conn(a, state)
        await b.send(_GET)
        start = trio.current_time()
        async with trio.open_nursery() as nursery:

            async def client() -> None:
                await _read_responses(b, 1)
                assert await b.recv(65536) == b""
                ended.append(trio.current_time() - start)

            nursery.start_soon(client)
            with trio.fail_after(60):
                await conn.run()
    assert swept == [0]
    assert ended == [6.0]  # the end came as the wait began (the shutdown's drain after it)
    assert conn.deadlines.read_deadline == float("inf")  # expired (expire_if_due's mark)


def test_a_ctrl_c_while_the_scope_is_entered_stays_a_keyboard_interrupt() -> None:
    """A real SIGINT arriving between making the cycle's scope and entering it (the line of
    ``scopes.enter``, reached by a trace function that raises the signal there) must come out
    of ``trio.run`` as ``KeyboardInterrupt``: raised in place, ``run``'s handler exited a scope
    never entered and Trio turned it into "cancel scope stack corrupted" (a RuntimeError).
    Its own ``trio.run``, the driver as the main task: a deferred Ctrl-C goes to that task."""
    import inspect
    import signal
    import sys

    lines, first = inspect.getsourcelines(HTTPConnection._enter_read_scope)
    line = next(first + i for i, text in enumerate(lines) if "scopes.enter(scope)" in text)
    code = HTTPConnection._enter_read_scope.__code__
    fired: list[int] = []

    def tracer(frame: Any, event: str, arg: Any) -> Any:
        if frame.f_code is not code:
            return None

        def local(frame: Any, event: str, arg: Any) -> Any:
            if event == "line" and frame.f_lineno == line and not fired:
                fired.append(line)
                signal.raise_signal(signal.SIGINT)
            return local

        return local

    async def hello(env: dict[str, Any]) -> Any:
        return 200, {"content-type": "text/plain"}, [b"hi"]

    async def main() -> None:
        state = ServerState(hello, Limits(), access_log=False)
        a, b = trio.socket.socketpair()
        with a, b:
            conn = _conn(a, state)  # nothing sent: the first read waits, entering the scope
            previous = sys.gettrace()
            sys.settrace(tracer)
            try:
                with trio.fail_after(5):
                    await conn.run()
            finally:
                sys.settrace(previous)

    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # (so Trio installs its own)
    with pytest.raises(KeyboardInterrupt):
        trio.run(main)
    assert fired == [line]


async def _read_all(env: dict[str, Any]) -> Any:
    body = b""
    while chunk := await env["rack.input"].receive_some():
        body += chunk
    return 200, {"content-type": "text/plain"}, [b"got %d" % len(body)]


_POST = b"POST / HTTP/1.1\r\nHost: x\r\n"


@pytest.mark.parametrize("parser", ["h11", "httptools"])
@pytest.mark.parametrize(
    ("sent", "app", "last", "seconds"),
    [
        (_GET, None, b"hi", 5.0),  # keep-alive idle: the wait's scope
        (_GET + b"GET / HT", None, b"408 ", 8.0),  # the next head's rest: HEAD
        (_POST + b"content-length: 10\r\n\r\nabc", _read_all, b"408 ", 3.0),  # BODY
        (_POST + b"transfer-encoding: chunked\r\n\r\n3\r\nabc\r\n", _read_all, b"408 ", 3.0),
        (_POST + b"content-length: 10\r\nexpect: 100-continue\r\n\r\n", _read_all, b"408 ", 3.0),
        (_POST + b"content-length: 10\r\n\r\nabc", None, b"hi", 1.0),  # an unread body's drain
        (_GET + _POST + b"content-length: 10\r\n\r\nab", _read_all, b"408 ", 3.0),  # pipelined
    ],
    ids=["idle", "head", "body", "chunked", "100-continue", "drain", "pipelined-body"],
)
async def test_every_read_that_waits_after_a_head_read_without_waiting_is_timed_by_the_sweep(
    sent: bytes, app: Any, last: bytes, seconds: float, parser: str, autojump_clock: trio.testing.MockClock
) -> None:
    """Each head here is there at the first read (no scope made for it); every later read that
    waits (the next head, a body through the parser or straight from the socket, after a 100
    Continue, the drain of a body the app left unread) runs in the scope the real sweep
    cancels: the connection ends at its timeout (at most 25 % late), with 408 where one is due."""
    from trio_rack.server.liveness import run_liveness_sweeper

    limits = Limits(keepalive_timeout=5.0, header_timeout=8.0, body_timeout=3.0)

    async def hello(env: dict[str, Any]) -> Any:
        return 200, {"content-type": "text/plain"}, [b"hi"]

    state = ServerState(app or hello, limits, access_log=False, http1_parser=parser)
    a, b = trio.socket.socketpair()
    got = b""
    with a, b:
        conn = HTTPConnection(
            trio.SocketStream(a), state, ConnInfo("http", ("testserver", 80), ("127.0.0.1", 1)), parser
        )
        await b.send(sent)
        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_liveness_sweeper, state)
            with trio.fail_after(60):
                async with trio.open_nursery() as serving:

                    async def serve() -> None:
                        await conn.run()
                        a.shutdown(trio.socket.SHUT_RDWR)  # (the listener's close: a 408 leaves it to it)

                    serving.start_soon(serve)
                    while chunk := await b.recv(65536):
                        got += chunk
                    elapsed = trio.current_time() - start
                    b.close()  # (the driver's shutdown drain ends at this EOF)
            nursery.cancel_scope.cancel()
    responses = got.split(b"HTTP/1.1 ")[1:]
    # the last response answers the timeout (or is the one before an idle close); the ones
    # before it are the 200s (the 100 Continue before the wait for the body)
    assert responses[-1].startswith(last) if last == b"408 " else got.endswith(b"hi"), got
    before = [b"100 " if b"expect" in sent else b"200 "] * (len(responses) - 1)
    assert [r[:4] for r in responses[:-1]] == before, got
    assert (b"expect" in sent) is got.startswith(b"HTTP/1.1 100 "), got
    assert seconds <= elapsed <= seconds * 1.25 + 0.01, elapsed
