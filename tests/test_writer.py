"""The one writer per connection: two tasks' writes never interleave (the queue behind a
write under way is made at the first contention only: issue #12's memory per stream)."""

from __future__ import annotations

import math

import trio
import trio.testing

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
