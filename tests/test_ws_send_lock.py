"""The websocket's send lock (trio_rack.websocket.session._SendLock): FIFO hand-over, a
cancelled waiter never takes it, a newcomer never overtakes a woken waiter, and the
uncontended path (a flag) leaves the lock free again."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from trio_rack.websocket.session import _SendLock


async def test_waiters_get_the_lock_in_order_and_a_newcomer_waits_its_turn(autojump_clock: Any) -> None:
    lock = _SendLock()
    order: list[str] = []

    async def user(name: str, hold: float) -> None:
        async with lock:
            order.append(name)
            await trio.sleep(hold)

    async with trio.open_nursery() as nursery:
        await lock.acquire()  # held by this task
        for name in ("a", "b", "c"):
            nursery.start_soon(user, name, 1)
            await trio.testing.wait_all_tasks_blocked()
        lock.release()  # handed to "a": still held
        assert lock.locked()
        nursery.start_soon(user, "late", 0)  # must not overtake b and c
        await trio.testing.wait_all_tasks_blocked()
    assert order == ["a", "b", "c", "late"]
    assert not lock.locked()


async def test_a_cancelled_waiter_does_not_take_the_lock(autojump_clock: Any) -> None:
    lock = _SendLock()
    got: list[str] = []

    async def waiter(name: str, patience: float) -> None:
        with trio.move_on_after(patience):
            async with lock:
                got.append(name)

    async with trio.open_nursery() as nursery:
        await lock.acquire()
        nursery.start_soon(waiter, "gives up", 1)
        nursery.start_soon(waiter, "patient", 100)
        await trio.sleep(5)
        lock.release()
    assert got == ["patient"]
    assert not lock.locked()


async def test_acquire_is_a_checkpoint_and_respects_cancellation() -> None:
    lock = _SendLock()
    with trio.CancelScope() as scope:
        scope.cancel()
        with pytest.raises(trio.Cancelled):
            await lock.acquire()
    assert not lock.locked()
    await lock.acquire()
    assert lock.locked()
    lock.release()
    assert not lock.locked()
