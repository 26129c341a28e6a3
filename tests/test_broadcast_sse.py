"""Resumable event streams (``sse.History``) in process, on both bus backends: replay after
``Last-Event-ID``, the slow-client policy (cut off, then resumed from the history), and the feed
example's refusals."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import trio

from broadcast_support import SSEClient
from e2e_support import curl, free_port, load_example, start_server
from trio_rack import broadcast, sse


def feed_app(history: sse.History) -> Any:
    async def app(env: dict[str, Any]) -> Any:
        return sse.response(env, history.stream, heartbeat=None)

    return app


async def test_reconnect_with_last_event_id_gets_the_missed_events_in_order(bus: broadcast.Bus) -> None:
    history = sse.History("news", bus=bus, maxlen=100)
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            bind = await start_server(nursery, feed_app(history))
            first = [await history.publish(f"old {n}", event="note") for n in range(2)]
            client = await SSEClient.open(bind.port)  # no Last-Event-ID: live events only
            await client.events(0)
            await trio.testing.wait_all_tasks_blocked()
            live = await history.publish("live 1\nsecond line", event="note")
            assert await client.events(1) == [(live, "live 1\nsecond line")]  # multi-line data intact
            assert b"event: note\n" in client.data
            await client.aclose()
            missed = [await history.publish(f"missed {n}") for n in range(3)]
            again = await SSEClient.open(bind.port, last_event_id=live)
            assert await again.events(3) == [(i, f"missed {n}") for n, i in enumerate(missed)]
            await again.aclose()
            stale = await SSEClient.open(bind.port, last_event_id="garbage")  # not an id: live only
            await stale.events(0)
            await trio.testing.wait_all_tasks_blocked()
            newest = await history.publish("after garbage")
            assert await stale.events(1) == [(newest, "after garbage")]
            await stale.aclose()
            assert first[0] < first[1]  # ids sort as strings of the same shape here
            nursery.cancel_scope.cancel()


async def test_a_slow_event_stream_is_cut_off_and_resumes_from_the_history(bus: broadcast.Bus) -> None:
    """The client stops reading: the publisher never waits; the stream's queue (2) overflows and
    the response ends; the client's reconnection with Last-Event-ID gets the rest, in order."""
    history = sse.History("big", bus=bus, maxlen=1000, queue=2)
    count, blob = 200, "x" * 65536  # ~13 MB: more than the socket buffers hold
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            bind = await start_server(nursery, feed_app(history))
            client = await SSEClient.open(bind.port, last_event_id="0")
            await client.events(0)
            await trio.testing.wait_all_tasks_blocked()
            ids = []
            for n in range(count):
                ids.append(await history.publish(f"{n} {blob}"))  # never blocked by the client
            first = await client.until_end()  # the server ends the stream
            await client.aclose()
            assert 0 < len(first) < count  # cut off part-way
            again = await SSEClient.open(bind.port, last_event_id=first[-1][0])
            rest = await again.events(count - len(first))
            await again.aclose()
            got = [int(d.split()[0]) for _, d in first + rest]
            assert got == list(range(count))
            assert [i for i, _ in first + rest] == ids
            nursery.cancel_scope.cancel()


async def test_history_refuses_bad_events_at_the_publisher() -> None:
    history = sse.History("x", url=f"memory://{uuid.uuid4().hex}")
    with pytest.raises(ValueError, match="single line"):
        await history.publish("data", event="two\nlines")
    with pytest.raises(ValueError):
        sse.History("x", maxlen=0)


async def test_feed_example_publish_and_refusals() -> None:
    feed = load_example("feed").make_app(url=f"memory://{uuid.uuid4().hex}")
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            bind = await start_server(nursery, feed)
            base = f"http://127.0.0.1:{bind.port}/events"
            created = await curl("-sS", "-i", "-d", "hello", base)
            status, _, body = created.response()
            assert status == 201 and body.decode().strip().count("-") == 1
            bad = (await curl("-sS", "-i", "-d", "x", base + "?event=a%0Ab")).response()
            assert bad[0] == 400 and b"single line" in bad[2]
            big = (await curl("-sS", "-i", "--data-binary", "@-", base, "-H", "expect:")).response()
            assert big[0] == 201  # empty body is an empty event
            too_big = (await curl("-sS", "-i", "-d", "y" * 70000, base)).response()
            assert too_big[0] == 413
            head = (await curl("-sS", "-I", base)).response()
            assert head[0] == 200 and head[1]["content-type"][0].startswith("text/event-stream")
            nursery.cancel_scope.cancel()


async def test_history_on_an_unreachable_redis_raises_unavailable_itself() -> None:
    """``History(url=...)`` opens a bus per call; its documented ``Unavailable`` (the feed
    example's 503) must arrive as itself, not inside the bus's ExceptionGroup.  (No server
    needed: nothing listens on the port.)"""
    history = sse.History("feed", url=f"redis://127.0.0.1:{free_port()}/0")
    with trio.fail_after(15), pytest.raises(broadcast.Unavailable, match="unreachable"):
        await history.publish("lost")
