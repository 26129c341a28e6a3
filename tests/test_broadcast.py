"""The bus's contract, run on both backends (``memory://`` and a real ``redis-server``), then
what only Redis can do: outages, connection ownership, the missing extra."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest
import trio

from broadcast_support import (
    REDIS_SERVER,
    RedisServer,
)
from e2e_support import free_port, wait_until
from trio_rack import broadcast


async def next_message(sub: broadcast.Subscription) -> broadcast.Message:
    with trio.fail_after(5):
        return await sub.__anext__()


# ------------------------------------------------------------------------- the contract


async def test_publish_reaches_every_subscriber_once_with_its_type(bus: broadcast.Bus) -> None:
    async with bus.subscribe("c") as one, bus.subscribe("c") as two, bus.subscribe("other") as other:
        await bus.publish("c", "text ✓")
        await bus.publish("c", b"\x00bytes\xff")
        await bus.publish("c", "")
        for sub in (one, two):
            assert [await next_message(sub) for _ in range(3)] == ["text ✓", b"\x00bytes\xff", ""]
        await bus.publish("other", "x")
        assert await next_message(other) == "x"  # "other" got nothing from "c" before this
        with trio.move_on_after(0.2):
            await one.__anext__()
            pytest.fail("a message arrived twice")


async def test_two_connections_share_the_channel(bus_url: str) -> None:
    async with broadcast.connect(bus_url) as a, broadcast.connect(bus_url) as b:
        async with b.subscribe("room") as sub:
            await a.publish("room", "from a")
            assert await next_message(sub) == "from a"


async def test_only_messages_published_after_subscribing_arrive(bus: broadcast.Bus) -> None:
    await bus.publish("c", "before")
    async with bus.subscribe("c") as sub:
        await bus.publish("c", "after")
        assert await next_message(sub) == "after"


async def test_leaving_unsubscribes(bus: broadcast.Bus) -> None:
    async with bus.subscribe("c") as sub:
        pass
    await bus.publish("c", "nobody listens")
    with pytest.raises(trio.ClosedResourceError):
        await sub.__anext__()
    async with bus.subscribe("c") as again:  # and the channel can be subscribed again
        await bus.publish("c", "back")
        assert await next_message(again) == "back"


async def test_a_message_must_be_str_or_bytes(bus: broadcast.Bus) -> None:
    with pytest.raises(TypeError, match="str or bytes"):
        await bus.publish("c", 42)  # type: ignore[arg-type]


async def test_a_slow_subscriber_is_cut_off_and_others_keep_receiving(bus: broadcast.Bus) -> None:
    async with bus.subscribe("c", queue=3) as slow, bus.subscribe("c", queue=100) as fast:
        for n in range(5):
            await bus.publish("c", str(n))  # never waits for the slow one
        assert [await next_message(fast) for _ in range(5)] == ["0", "1", "2", "3", "4"]
        # the slow one gets what it had queued, in order, then is told
        assert [await next_message(slow) for _ in range(3)] == ["0", "1", "2"]
        with pytest.raises(broadcast.SlowSubscriber) as info:
            await next_message(slow)
        assert info.value.channel == "c" and info.value.queue == 3
        await bus.publish("c", "5")
        assert await next_message(fast) == "5"


async def test_cancelling_a_subscriber_unsubscribes_it(bus: broadcast.Bus) -> None:
    async with trio.open_nursery() as nursery:
        async def listen() -> None:
            async with bus.subscribe("c") as sub:
                async for _ in sub:
                    pass
        nursery.start_soon(listen)
        await trio.sleep(0.1)
        nursery.cancel_scope.cancel()
    assert "c" not in bus._hub.channels


async def test_history_replays_after_an_id_then_follows_live(bus: broadcast.Bus) -> None:
    ids = [await bus.append("feed", f"e{n}", maxlen=100) for n in range(5)]
    assert len(set(ids)) == 5
    assert await bus.history("feed", after=ids[1]) == [(ids[2], "e2"), (ids[3], "e3"), (ids[4], "e4")]
    assert await bus.history("feed", after=ids[4]) == []
    assert await bus.history("feed", after="not an id") == []
    async with bus.follow("feed", after=ids[2]) as entries, bus.subscribe("feed") as plain:
        new = await bus.append("feed", b"live", maxlen=100)
        with trio.fail_after(5):
            got = [await entries.__anext__() for _ in range(3)]
        assert got == [(ids[3], "e3"), (ids[4], "e4"), (new, b"live")]
        assert await next_message(plain) == b"live"  # plain subscribers see just the message


async def test_a_future_or_forged_id_never_hides_live_entries(bus: broadcast.Bus) -> None:
    """Dedupe is against the replayed backlog only: an id from the future (another clock, a
    forged header) replays nothing and still gets every live entry."""
    async with bus.follow("feed", after="99999999999999-0") as entries:
        new = await bus.append("feed", "live", maxlen=10)
        with trio.fail_after(5):
            assert await entries.__anext__() == (new, "live")
    async with bus.follow("feed", after=None) as entries:  # no id: live only, no replay
        newer = await bus.append("feed", "again", maxlen=10)
        with trio.fail_after(5):
            assert await entries.__anext__() == (newer, "again")


async def test_history_keeps_the_newest_maxlen(bus: broadcast.Bus) -> None:
    first = await bus.append("feed", "0", maxlen=3)
    for n in range(1, 6):
        await bus.append("feed", str(n), maxlen=3)
    assert [m for _, m in await bus.history("feed", after=first)] == ["3", "4", "5"]


async def test_bad_urls_are_refused() -> None:
    with pytest.raises(ValueError, match="memory://, redis:// or rediss://"):
        async with broadcast.connect("amqp://x"):
            pass


# ------------------------------------------------------------------------- Redis only


async def test_redis_outage_publish_unavailable_subscribers_resume(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trio_rack.broadcast")
    async with broadcast.connect(redis_server.url, command_timeout=2, max_backoff=0.2) as bus:
        async with bus.subscribe("c") as sub:
            await bus.publish("c", "one")
            assert await next_message(sub) == "one"
            redis_server.stop()
            with trio.fail_after(5):
                with pytest.raises(broadcast.Unavailable, match="unreachable|did not answer"):
                    await bus.publish("c", "lost")
                await wait_until(lambda: bus._down)  # type: ignore[attr-defined]
            await trio.sleep(0.5)  # several reconnection attempts: still one log line
            redis_server.start()
            with trio.fail_after(10):
                while True:  # the listener resubscribes; then delivery resumes
                    try:
                        await bus.publish("c", "two")
                    except broadcast.Unavailable:
                        pass
                    with trio.move_on_after(0.2):
                        if await sub.__anext__() == "two":
                            break
    lost = [r for r in caplog.records if "lost Redis" in r.getMessage()]
    back = [r for r in caplog.records if "reconnected to Redis" in r.getMessage()]
    assert len(lost) == 1 and len(back) == 1, [r.getMessage() for r in caplog.records]


async def test_redis_down_at_start_opens_and_catches_up(tmp_path: Path) -> None:
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed")
    server = RedisServer(tmp_path)  # not started yet
    try:
        with trio.fail_after(15):
            async with broadcast.connect(server.url, command_timeout=1, max_backoff=0.1) as bus:
                async with bus.subscribe("c") as sub:
                    with pytest.raises(broadcast.Unavailable):
                        await bus.publish("c", "x")
                    server.start()
                    await wait_until(lambda: bus._pubsub is not None and b"c" in bus._pubsub.channels)  # type: ignore[attr-defined]
                    await bus.publish("c", "y")
                    assert await next_message(sub) == "y"
    finally:
        server.stop()


async def test_no_connection_leaks(redis_server: RedisServer) -> None:
    baseline = redis_server.client_count()
    async with broadcast.connect(redis_server.url) as bus:
        for n in range(20):
            async with trio.open_nursery() as nursery:
                async def listen(channel: str) -> None:
                    async with bus.subscribe(channel) as sub:
                        async for _ in sub:
                            pass
                for k in range(5):
                    nursery.start_soon(listen, f"c{n}-{k}")
                await bus.publish("c0-0", "x")
                await trio.sleep(0.01)
                nursery.cancel_scope.cancel()
        during = redis_server.client_count()
        assert during - baseline <= 3, (baseline, during)  # one pub/sub + a small pool
        assert not bus._hub.channels
    with trio.fail_after(5):
        await wait_until(lambda: redis_server.client_count() == baseline)


async def test_unreachable_redis_for_publish_is_unavailable_not_a_hang() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    with trio.fail_after(10):
        async with broadcast.connect(url, command_timeout=1) as bus:
            with pytest.raises(broadcast.Unavailable):
                await bus.publish("c", "x")
            with pytest.raises(broadcast.Unavailable):
                await bus.append("c", "x", maxlen=1)


async def test_missing_extra_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "coredis", None)  # makes `import coredis` fail
    with pytest.raises(ImportError, match=r"trio-rack\[redis\]"):
        async with broadcast.connect("redis://127.0.0.1:1/0"):
            pass


async def test_unavailable_leaves_the_bus_as_itself_not_as_a_group() -> None:
    """The bus's nursery would wrap what the block raises in an ExceptionGroup; ``connect`` hands
    it back as raised, so ``except broadcast.Unavailable`` around the whole block works."""
    url = f"redis://127.0.0.1:{free_port()}/0"
    with trio.fail_after(10), pytest.raises(broadcast.Unavailable, match="unreachable"):
        async with broadcast.connect(url, command_timeout=1) as bus:
            await bus.publish("c", "x")
    with pytest.raises(KeyError):  # any exception of the block, likewise
        async with broadcast.connect(url, command_timeout=1):
            raise KeyError("mine")
