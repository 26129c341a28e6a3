"""The TLS stream's inner locks taken without a scheduler pass when free (net/tls.py).

``lighten_locks`` wraps ``trio.SSLStream``'s two inner locks; these tests pin that the wrapper
is still a lock with trio's semantics (cancellation before taking it, strict FIFO order when
contended, released on the way out) and that a TLS connection through it still carries
concurrent sends and receives intact, both directions, byte for byte.
"""

from __future__ import annotations

import ssl

import trio
import trio.testing
import trustme

from trio_rack.net.tls import _YieldOnlyIfContended, lighten_locks


async def test_a_cancelled_acquire_does_not_take_the_lock() -> None:
    lock = trio.StrictFIFOLock()
    ran = False
    with trio.CancelScope() as scope:
        scope.cancel()
        async with _YieldOnlyIfContended(lock):
            ran = True
    assert not ran
    assert not lock.locked()


async def test_contended_acquires_are_served_in_fifo_order() -> None:
    lock = trio.StrictFIFOLock()
    wrapped = _YieldOnlyIfContended(lock)
    order: list[int] = []

    async def take(n: int) -> None:
        async with wrapped:
            order.append(n)
            await trio.lowlevel.checkpoint()

    async with wrapped:
        async with trio.open_nursery() as nursery:
            for n in range(5):
                nursery.start_soon(take, n)
                await trio.testing.wait_all_tasks_blocked()  # queued in this order
            assert lock.statistics().tasks_waiting == 5
            # a free-looking moment must not let a newcomer jump the queue
            lock.release()
            newcomer = trio.Event()

            async def late() -> None:
                async with wrapped:
                    order.append(99)
                newcomer.set()

            nursery.start_soon(late)
            await newcomer.wait()
            await lock.acquire()  # give the wrapper's exit something to release
    assert order == [0, 1, 2, 3, 4, 99]
    assert not lock.locked()


async def test_the_lock_is_released_when_the_body_raises() -> None:
    lock = trio.Lock()
    try:
        async with _YieldOnlyIfContended(lock):
            raise ValueError("boom")
    except ValueError:
        pass
    assert not lock.locked()


async def test_a_tls_stream_with_light_locks_carries_concurrent_traffic_intact() -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("localhost")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    left, right = trio.testing.memory_stream_pair()
    server = trio.SSLStream(left, server_ctx, server_side=True)
    client = trio.SSLStream(right, client_ctx, server_hostname="localhost")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.do_handshake)
        await client.do_handshake()
    lighten_locks(server)
    assert isinstance(server._inner_send_lock, _YieldOnlyIfContended)
    assert isinstance(server._inner_recv_lock, _YieldOnlyIfContended)
    payload = bytes(range(256)) * 400  # 100 KiB: many records each way

    async def read_exactly(stream: trio.SSLStream[trio.testing.MemoryStream], n: int) -> bytes:
        data = b""
        while len(data) < n:
            data += await stream.receive_some(65536)
        return data

    got: dict[str, bytes] = {}

    async def server_reads() -> None:
        got["server"] = await read_exactly(server, len(payload))

    async def client_reads() -> None:
        got["client"] = await read_exactly(client, len(payload))

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server_reads)
            nursery.start_soon(client_reads)
            nursery.start_soon(server.send_all, payload)
            nursery.start_soon(client.send_all, payload[::-1])
    assert got["server"] == payload[::-1]
    assert got["client"] == payload


async def test_a_free_lock_taken_the_light_way_reads_as_held_by_its_taker() -> None:
    lock = trio.Lock()
    async with _YieldOnlyIfContended(lock):
        assert lock.locked()
        assert lock.statistics().owner is trio.lowlevel.current_task()
        refused: list[BaseException] = []

        async def another_task() -> None:
            try:
                lock.acquire_nowait()
            except trio.WouldBlock as exc:  # nobody else can take it meanwhile
                refused.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(another_task)
        assert refused
    assert not lock.locked()
    await lock.acquire()  # and trio's own path takes and releases it as usual afterwards
    lock.release()


async def _take_and_note(wrapped: _YieldOnlyIfContended, order: list[int], n: int) -> None:
    async with wrapped:
        order.append(n)
        await trio.lowlevel.checkpoint()


async def test_waiters_behind_a_light_holder_get_the_lock_in_turn() -> None:
    lock = trio.StrictFIFOLock()
    wrapped = _YieldOnlyIfContended(lock)
    order: list[int] = []
    async with trio.open_nursery() as nursery:
        async with wrapped:  # taken the light way: no waiters then
            for n in range(3):
                nursery.start_soon(_take_and_note, wrapped, order, n)
                await trio.testing.wait_all_tasks_blocked()
            assert lock.statistics().tasks_waiting == 3
        # the light holder's release handed it on through trio's own release path
    assert order == [0, 1, 2]
    assert not lock.locked()


async def test_a_waiter_cancelled_behind_a_light_holder_leaves_the_lock_consistent() -> None:
    lock = trio.Lock()
    wrapped = _YieldOnlyIfContended(lock)
    got_it = False

    async def take() -> None:
        nonlocal got_it
        async with wrapped:
            got_it = True

    async with wrapped:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(take)
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()  # the waiter gives up while parked
        assert lock.statistics().tasks_waiting == 0
    assert not got_it
    assert not lock.locked()
    async with wrapped:  # and the light way works again
        assert lock.locked()
    assert not lock.locked()
