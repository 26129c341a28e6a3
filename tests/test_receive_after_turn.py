"""net.transport.receive_after_turn: the keep-alive read of plain TCP, yield first, then one read.

Over a real socket pair: it lets the other tasks run before it reads (even with bytes waiting),
reads what is there in one call, waits when nothing is, reads the end, a reset and a closed
socket as b"", and is a checkpoint in receive_some's order (cancelled before its yield, never
after bytes were taken: nothing read is lost).
"""

from __future__ import annotations

import os
import socket
import struct

import pytest
import trio
import trio.testing

from trio_rack.net.transport import receive_after_turn


class _Steps(trio.abc.Instrument):
    """Counts the times ``task`` gives the scheduler back control; calls ``at_yield`` at each."""

    def __init__(self, task: trio.lowlevel.Task) -> None:
        self.task = task
        self.yields = 0
        self.at_yield: list[object] = []

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        if task is self.task:
            self.yields += 1
            for callback in self.at_yield:
                callback()  # type: ignore[operator]


async def test_one_yield_before_the_read_even_with_bytes_waiting() -> None:
    """The schedule point comes first (the other connections run), then one read takes the
    bytes: exactly one suspension, where a wait would be two steps and a park."""
    a, b = trio.socket.socketpair()
    with a, b:
        await b.send(b"GET / HTTP/1.1\r\n\r\n")
        steps = _Steps(trio.lowlevel.current_task())
        trio.lowlevel.add_instrument(steps)
        try:
            data = await receive_after_turn(a, 65536)
        finally:
            trio.lowlevel.remove_instrument(steps)
        assert data == b"GET / HTTP/1.1\r\n\r\n"
        assert steps.yields == 1


async def test_bytes_that_arrive_while_the_others_run_are_read_without_a_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The point of the order: the client answers while the other connections' tasks run, and
    the read finds its bytes (no failed read, no epoll re-arm, no park)."""
    a, b = trio.socket.socketpair()
    with a, b:

        async def no_wait(sock: object) -> None:
            pytest.fail("waited for bytes that were there")  # pragma: no cover

        monkeypatch.setattr(trio.lowlevel, "wait_readable", no_wait)
        steps = _Steps(trio.lowlevel.current_task())
        steps.at_yield.append(lambda: os.write(b.fileno(), b"next request"))
        trio.lowlevel.add_instrument(steps)
        try:
            data = await receive_after_turn(a, 65536)
        finally:
            trio.lowlevel.remove_instrument(steps)
        assert data == b"next request"
        assert steps.yields == 1


async def test_it_waits_for_bytes_that_are_not_there_yet() -> None:
    a, b = trio.socket.socketpair()
    with a, b:
        async with trio.open_nursery() as nursery:

            async def later() -> None:
                await trio.sleep(0.01)
                await b.send(b"late")

            nursery.start_soon(later)
            with trio.fail_after(5):
                assert await receive_after_turn(a, 65536) == b"late"


async def test_at_most_size_bytes_and_the_rest_stays_in_the_socket() -> None:
    a, b = trio.socket.socketpair()
    with a, b:
        await b.send(b"abcdef")
        assert await receive_after_turn(a, 4) == b"abcd"
        assert await receive_after_turn(a, 4) == b"ef"


async def test_end_reset_and_closed_socket_read_as_the_end() -> None:
    a, b = trio.socket.socketpair()
    with a:
        b.close()
        assert await receive_after_turn(a, 65536) == b""
    # a reset (RST by SO_LINGER 0) over TCP
    with trio.socket.socket() as listener:
        await listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        client = trio.socket.socket()
        await client.connect(listener.getsockname())
        server, _ = await listener.accept()
        with server:
            await client.send(b"x")
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            await trio.sleep(0.05)  # the byte arrives before the reset
            client.close()
            await trio.sleep(0.05)
            got = await receive_after_turn(server, 65536)
            assert got in (b"", b"x")  # the kernel may hand over the byte before the RST
            if got:
                assert await receive_after_turn(server, 65536) == b""
    a, b = trio.socket.socketpair()
    with b:
        a.close()  # fileno() is -1 now: EBADF, never another socket's descriptor
        assert await receive_after_turn(a, 65536) == b""


async def test_cancelled_before_the_yield_leaves_the_bytes_in_the_socket() -> None:
    a, b = trio.socket.socketpair()
    with a, b:
        await b.send(b"sacred")
        with trio.CancelScope() as scope:
            scope.cancel()
            await receive_after_turn(a, 65536)
            pytest.fail("not a checkpoint")  # pragma: no cover
        assert scope.cancelled_caught
        assert await receive_after_turn(a, 65536) == b"sacred"


async def test_a_cancel_during_the_yield_still_returns_the_bytes_that_are_there() -> None:
    """As receive_some: once past its cancel check the read is not cut; the caller sees the
    cancellation at its next checkpoint (the driver's 408 comes from the phase those bytes set)."""
    a, b = trio.socket.socketpair()
    with a, b:
        await b.send(b"head")
        with trio.CancelScope() as scope:
            steps = _Steps(trio.lowlevel.current_task())
            steps.at_yield.append(scope.cancel)  # cancelled while suspended in the yield
            trio.lowlevel.add_instrument(steps)
            try:
                data = await receive_after_turn(a, 65536)
            finally:
                trio.lowlevel.remove_instrument(steps)
            assert data == b"head"
            assert scope.cancel_called
            await trio.lowlevel.checkpoint()
            pytest.fail("the cancellation was lost")  # pragma: no cover
        assert scope.cancelled_caught


async def test_a_wait_is_cancellable() -> None:
    a, b = trio.socket.socketpair()
    with a, b:
        with trio.move_on_after(0.05) as scope:
            await receive_after_turn(a, 65536)
        assert scope.cancelled_caught
        await b.send(b"after")
        assert await receive_after_turn(a, 65536) == b"after"


async def test_a_socket_another_task_closes_during_the_wait_reads_as_the_end() -> None:
    """Trio wakes a wait on a socket another task closes (``notify_closing``) with
    ClosedResourceError; the driver read that from ``receive_some`` as the end, and so does this."""
    a, b = trio.socket.socketpair()
    with a, b:
        async with trio.open_nursery() as nursery:

            async def close_while_it_waits() -> None:
                await trio.testing.wait_all_tasks_blocked()
                a.close()

            nursery.start_soon(close_while_it_waits)
            with trio.fail_after(5):
                assert await receive_after_turn(a, 65536) == b""


async def test_the_driver_ends_cleanly_when_its_idle_socket_is_closed_by_another_task() -> None:
    """The keep-alive read of HTTPConnection on plain TCP: a socket closed under the idle wait
    ends the connection as the end of input did with ``receive_some`` (no ClosedResourceError
    out of ``run``, which the listener would log as a crash)."""
    from trio_rack import Limits
    from trio_rack.app.env import ConnInfo
    from trio_rack.http1.connection import HTTPConnection
    from trio_rack.testing import ServerState

    async def hello(env: dict[str, object]) -> tuple[int, dict[str, str], list[bytes]]:
        return 200, {"content-type": "text/plain"}, [b"hi"]

    state = ServerState(hello, Limits(), access_log=False)
    a, b = trio.socket.socketpair()
    with a, b:
        conn = HTTPConnection(trio.SocketStream(a), state, ConnInfo("http", ("testserver", 80), ("127.0.0.1", 1)))
        async with trio.open_nursery() as nursery:

            async def client() -> None:
                await b.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                got = b""
                while not got.endswith(b"hi"):
                    got += await b.recv(65536)
                assert got.startswith(b"HTTP/1.1 200 ")
                await trio.testing.wait_all_tasks_blocked()  # the driver waits for the next request
                a.close()

            nursery.start_soon(client)
            with trio.fail_after(5):
                await conn.run()
