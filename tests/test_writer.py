"""The one writer per connection: two tasks' writes never interleave (the queue behind a
write under way is made at the first contention only: issue #12's memory per stream)."""

from __future__ import annotations

import math
import socket
import struct

import pytest
import trio
import trio.testing

from e2e_support import tcp_pair as _tcp_pair
from e2e_support import ticks_of_another_task_during
from trio_rack.errors import ClientGone
from trio_rack.net.transport import Deadlines, Writer


async def test_two_tasks_writing_on_one_connection_take_turns_whole_writes() -> None:
    client, server = trio.testing.lockstep_stream_pair()
    deadlines = Deadlines()
    deadlines.in_scope = True
    writer = Writer(server, deadlines, write_timeout=30)
    first, second = b"a" * 5000, b"b" * 5000
    received = bytearray()

    async def read_all() -> None:
        while len(received) < len(first) + len(second):
            received.extend(await client.receive_some(100))  # small reads: writes take many turns

    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer.write, first)
        await trio.testing.wait_all_tasks_blocked()  # nobody reads yet: the first write is stuck
        assert writer.blocked_since < math.inf
        nursery.start_soon(writer.write, second)
        await trio.testing.wait_all_tasks_blocked()  # the second waits behind it, unsent
        nursery.start_soon(read_all)
    assert bytes(received) == first + second
    assert writer.blocked_since == math.inf


def _tcp_writer(stream: trio.SocketStream) -> Writer:
    deadlines = Deadlines()
    deadlines.in_scope = True
    return Writer(stream, deadlines, write_timeout=30)


async def test_a_write_the_kernel_takes_only_in_part_is_finished_whole_and_in_order() -> None:
    client, server = await _tcp_pair()
    async with client, server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # the first write takes a part
        writer = _tcp_writer(server)
        first = bytes(range(256)) * 3000  # 768,000 bytes: under WRITE_SLICE, one piece
        second = b"tail"
        received = bytearray()

        async def read_all() -> None:
            while len(received) < len(first) + len(second):
                received.extend(await client.receive_some(65536))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_all)
            await writer.write(first)
            await writer.write(second)
        assert bytes(received) == first + second
        assert writer.blocked_since == math.inf


async def test_a_write_on_a_closed_socket_says_the_client_is_gone() -> None:
    client, server = await _tcp_pair()
    async with client:
        writer = _tcp_writer(server)
        await writer.write(b"one")
        assert await client.receive_some(10) == b"one"
        await server.aclose()  # its descriptor number may now belong to anything else
        with pytest.raises(ClientGone):
            await writer.write(b"two")
        assert writer.broken


async def test_a_write_to_a_reset_connection_says_the_client_is_gone() -> None:
    client, server = await _tcp_pair()
    async with server:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await client.aclose()  # RST
        writer = _tcp_writer(server)
        with pytest.raises(ClientGone):
            for _ in range(100):  # the reset may be seen at the first write or a later one
                await writer.write(b"x" * 1000)
                await trio.sleep(0.01)
        assert writer.broken


async def test_a_write_in_a_cancelled_scope_sends_nothing() -> None:
    client, server = await _tcp_pair()
    async with client, server:
        writer = _tcp_writer(server)
        with trio.CancelScope() as scope:
            scope.cancel()
            await writer.write(b"never")
        assert scope.cancelled_caught
        await writer.write(b"after")
        assert await client.receive_some(10) == b"after"


async def test_a_run_of_quick_writes_still_lets_the_other_tasks_run() -> None:
    """Writes the kernel takes at once skip the scheduler, but not QUICK_WRITES in a row: a
    body of many small chunks to a fast client cannot keep the other connections waiting."""
    from trio_rack.net.transport import QUICK_WRITES

    assert QUICK_WRITES == 16  # (the counts below)
    WRITES = 64  # noqa: N806
    client, server = await _tcp_pair()
    async with client, server:
        writer = _tcp_writer(server)

        async def writes() -> None:
            for _ in range(WRITES):
                await writer.write(b"x")

        ran = await ticks_of_another_task_during(writes)
        # every QUICK_WRITES-th write goes through send_all: 4 passes in 64 writes, and trio's
        # randomised run order may move the other task's count by one either way
        assert 3 <= ran <= 6
        received = bytearray()
        while len(received) < WRITES:
            received.extend(await client.receive_some(1000))
        assert bytes(received) == b"x" * WRITES


async def test_after_a_turn_taken_the_count_of_quick_writes_starts_afresh() -> None:
    """took_turn (the keep-alive read yielded): the next QUICK_WRITES - 1 writes are quick
    again, so one write per request never goes through send_all for fairness already given."""
    from trio_rack.net.transport import QUICK_WRITES

    client, server = await _tcp_pair()
    async with client, server:
        writer = _tcp_writer(server)
        sends = 0
        real_send_all = server.send_all

        async def counting_send_all(data: bytes) -> None:
            nonlocal sends
            sends += 1
            await real_send_all(data)

        server.send_all = counting_send_all  # type: ignore[method-assign]
        for _ in range(4):  # four "requests" of QUICK_WRITES - 1 writes, a turn taken before each
            writer.took_turn()
            for _ in range(QUICK_WRITES - 1):
                await writer.write(b"x")
        assert sends == 0
        for _ in range(QUICK_WRITES):  # without a turn taken: one in QUICK_WRITES goes through send_all
            await writer.write(b"y")
        assert sends == 1
        received = bytearray()
        while len(received) < 4 * (QUICK_WRITES - 1) + QUICK_WRITES:
            received.extend(await client.receive_some(1000))
        assert bytes(received) == b"x" * 4 * (QUICK_WRITES - 1) + b"y" * QUICK_WRITES
