"""The shared keeper (trio_rack.keeper): one task timing every websocket of a server.

Unit tests of :class:`Keeper` with plain clients (many timers in order, one removed mid-wait, a
due time moved earlier, shutdown, a failing client surfacing, no spinning), then websockets over
the real HTTP/1.1 connection loop (memory streams, autojump clock) sharing one keeper the test
runs as ``serve()`` does: idle timeouts of many websockets with one leaving mid-wait, keepalive
pings, and a graceful shutdown with many websockets open (each closes with 1001).
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing
from wsproto.frame_protocol import Opcode

from e2e_support import read_until, split_head
from test_websocket_pull import Client
from trio_rack import Limits, websocket
from trio_rack.keeper import RETRY, Keeper
from trio_rack.state import ServerState
from trio_rack.testing import memory_connection


class Recorder:
    """A client that records when it fired and is due again after ``every`` seconds."""

    def __init__(self, name: str, log: list[tuple[str, float]], every: float = math.inf) -> None:
        self.name = name
        self.log = log
        self.every = every
        self.timer_due = math.inf
        self.shut = 0

    def timer_fire(self, now: float) -> float:
        self.log.append((self.name, now))
        return now + self.every

    def timer_shutdown(self) -> None:
        self.shut += 1


async def test_many_timers_fire_in_order_at_their_times(autojump_clock: Any) -> None:
    log: list[tuple[str, float]] = []
    keeper = Keeper()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(keeper.run)
        await trio.testing.wait_all_tasks_blocked()
        start = trio.current_time()
        clients = [Recorder(f"c{i}", log) for i in range(50)]
        for i, client in enumerate(reversed(clients)):  # added latest-first
            keeper.add(client, start + 50 - i)
        await trio.sleep(60)
        nursery.cancel_scope.cancel()
    assert [name for name, _ in log] == [f"c{i}" for i in range(50)]
    assert all(when == pytest.approx(start + 1 + i) for i, (_, when) in enumerate(log))
    assert all(c.timer_due == math.inf for c in clients)


async def test_a_client_removed_mid_wait_never_fires_and_others_do(autojump_clock: Any) -> None:
    log: list[tuple[str, float]] = []
    keeper = Keeper()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(keeper.run)
        start = trio.current_time()
        early, gone, late = Recorder("early", log), Recorder("gone", log), Recorder("late", log)
        keeper.add(early, start + 1)
        keeper.add(gone, start + 2)
        keeper.add(late, start + 3)
        await trio.sleep(1.5)
        keeper.discard(gone)
        keeper.schedule(gone, start + 2.5)  # a removed client cannot be scheduled again
        await trio.sleep(5)
        assert len(keeper) == 2
        nursery.cancel_scope.cancel()
    assert [name for name, _ in log] == ["early", "late"]


async def test_schedule_moves_a_due_time_earlier_only_and_repeats(autojump_clock: Any) -> None:
    log: list[tuple[str, float]] = []
    keeper = Keeper()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(keeper.run)
        start = trio.current_time()
        client = Recorder("c", log, every=10)
        keeper.add(client, start + 100)
        await trio.sleep(1)
        keeper.schedule(client, start + 5)  # earlier: the sleeping keeper wakes for it
        keeper.schedule(client, start + 50)  # later: ignored (found when it fires)
        await trio.sleep(30)
        nursery.cancel_scope.cancel()
    assert [when - start for _, when in log] == pytest.approx([5, 15, 25])


async def test_a_client_due_again_at_once_is_retried_without_spinning(autojump_clock: Any) -> None:
    log: list[tuple[str, float]] = []
    keeper = Keeper()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(keeper.run)
        start = trio.current_time()
        keeper.add(Recorder("again", log, every=0), start + 1)
        await trio.sleep(1 + 10 * RETRY + RETRY / 2)
        nursery.cancel_scope.cancel()
    assert len(log) == 11
    assert log[-1][1] - start == pytest.approx(1 + 10 * RETRY)


async def test_stale_entries_are_pruned_and_timers_stay_right(autojump_clock: Any) -> None:
    log: list[tuple[str, float]] = []
    keeper = Keeper()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(keeper.run)
        start = trio.current_time()
        client = Recorder("c", log)
        keeper.add(client, start + 10_000)
        for i in range(1000):  # each earlier than the last: 1,000 entries, all but one stale
            keeper.schedule(client, start + 5000 - i)
        assert len(keeper._heap) <= 4 * len(keeper) + 64
        await trio.sleep(5000)
        nursery.cancel_scope.cancel()
    assert [when - start for _, when in log] == pytest.approx([4001])


async def test_shutdown_reaches_every_client_once_also_one_added_later(autojump_clock: Any) -> None:
    shutdown = trio.Event()
    keeper = Keeper(shutdown)
    clients = [Recorder(f"c{i}", []) for i in range(100)]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(keeper.run)
        for client in clients:
            keeper.add(client, trio.current_time() + 1000)
        await trio.sleep(1)
        shutdown.set()
        await trio.sleep(1)
        late = Recorder("late", [])
        keeper.add(late, math.inf)
        await trio.sleep(1)
        nursery.cancel_scope.cancel()
    assert [c.shut for c in clients] == [1] * 100
    assert late.shut == 1


async def test_a_failing_client_surfaces_from_the_keeper(autojump_clock: Any) -> None:
    class Broken(Recorder):
        def timer_fire(self, now: float) -> float:
            raise RuntimeError("bug in a timer")

    keeper = Keeper()
    with pytest.raises(BaseExceptionGroup) as caught:
        with trio.fail_after(10):  # surfaces: does not hang
            async with trio.open_nursery() as nursery:
                nursery.start_soon(keeper.run)
                keeper.add(Broken("b", []), trio.current_time() + 1)
    assert caught.value.split(RuntimeError)[0] is not None
    assert not keeper.running


async def test_a_keeper_runs_once() -> None:
    keeper = Keeper()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(keeper.run)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(RuntimeError, match="running already"):
            await keeper.run()
        nursery.cancel_scope.cancel()


# ------------------------------------------------------------ websockets on one keeper


def _app(seen: list[Any]) -> Any:
    """An echo whose idle timeout (seconds) is the path: ``/ws/5``; records each env's keeper."""

    async def app(env: dict[str, Any]) -> Any:
        idle = float(env["PATH_INFO"].rsplit("/", 1)[1])
        async with websocket.accept(env, idle_timeout=idle, ping_interval=None) as ws:
            seen.append(ws._keeper)
            async for message in ws:
                await ws.send_message(message)
        return -1, {}, []

    return app


@asynccontextmanager
async def _serving(app: Any) -> AsyncIterator[ServerState]:
    """A server's state whose keeper runs, as ``serve()`` runs it beside the connections."""
    state = ServerState(app, Limits(), access_log=False)
    with trio.fail_after(100):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(state.keeper.run)
            await trio.testing.wait_all_tasks_blocked()
            yield state
            nursery.cancel_scope.cancel()


def _upgrade(path: str) -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


async def _open(state: ServerState, path: str, results: dict[str, Any], *,
                leave_after: float | None = None) -> None:
    """One client: handshake on ``path``, then wait for the server's close frame (or leave with
    1000 after ``leave_after`` seconds); records (code, reason, when) under ``path``."""
    async with memory_connection(None, state=state) as connection:
        client = Client(connection.stream)
        await client.stream.send_all(_upgrade(path))
        status, _, rest = split_head(await read_until(client.stream, b"\r\n\r\n"))
        assert status == 101
        client.codec.receive_bytes(rest)
        if leave_after is not None:
            await trio.sleep(leave_after)
            await client.stream.send_all(bytes(client.codec.close(1000, "bye")))
        frame = await client.frame()
        assert frame.opcode is Opcode.CLOSE
        code, reason = frame.payload
        results[path] = (int(code), reason, trio.current_time())
        if leave_after is None:
            await client.stream.send_all(bytes(client.codec.close(int(code), "")))


async def test_many_websockets_one_keeper_idle_timeouts_and_one_leaving(autojump_clock: Any) -> None:
    seen: list[Any] = []
    results: dict[str, Any] = {}
    async with _serving(_app(seen)) as state:
        start = trio.current_time()
        async with trio.open_nursery() as clients:
            for i in range(1, 21):
                clients.start_soon(_open, state, f"/ws/{i}", results)
            clients.start_soon(lambda: _open(state, "/ws/30", results, leave_after=10))
        assert len(state.keeper) == 0  # every websocket removed itself
    assert len(seen) == 21 and all(k is state.keeper for k in seen)  # one shared keeper
    for i in range(1, 21):
        code, reason, when = results[f"/ws/{i}"]
        assert (code, reason) == (1011, "idle timeout")
        assert when - start == pytest.approx(i, abs=0.1)
    code, reason, when = results["/ws/30"]
    assert code == 1000 and when - start == pytest.approx(10, abs=0.1)


async def test_keepalive_pings_from_the_shared_keeper(autojump_clock: Any) -> None:
    async def app(env: dict[str, Any]) -> Any:
        async with websocket.accept(env, idle_timeout=60, ping_interval=5) as ws:
            async for message in ws:
                await ws.send_message(message)
        return -1, {}, []

    async with _serving(app) as state, memory_connection(None, state=state) as connection:
        client = Client(connection.stream)
        await client.handshake()
        start = trio.current_time()
        for n in range(1, 4):
            frame = await client.frame()
            assert frame.opcode is Opcode.PING
            assert trio.current_time() - start == pytest.approx(5 * n, abs=0.1)
            await client.stream.send_all(bytes(client.codec.pong(frame.payload)))
        await client.send_text("still here")
        frame = await client.frame()
        assert (frame.opcode, frame.payload) == (Opcode.TEXT, "still here")
        assert len(state.keeper) == 1


async def test_graceful_shutdown_with_many_websockets_each_gets_1001(autojump_clock: Any) -> None:
    seen: list[Any] = []
    results: dict[str, Any] = {}
    async with _serving(_app(seen)) as state:
        async with trio.open_nursery() as clients:
            for i in range(30):
                clients.start_soon(_open, state, f"/ws/{1000 + i}", results)
            await trio.sleep(5)
            assert len(state.keeper) == 30 and all(k is state.keeper for k in seen)
            start = trio.current_time()
            state.shutdown_started.set()
        assert len(state.keeper) == 0
    assert len(results) == 30
    for code, reason, when in results.values():
        assert (code, reason) == (1001, "server shutting down")
        assert when - start < 0.1
