"""The article's experiment: a slow response never delays another connection.

The article runs Puma with one worker and one thread, starts two ``curl``s of the streaming
clock (five ticks, one second apart) at once, and watches the second wait for the first:
about 10 s.  With Falcon (fibers) both finish in about 5 s.  trio-rack is one process, one
thread, a task per connection: both must finish in about 5 s.  This test legitimately uses
real time — it reproduces the article with ``examples/clock.py`` exactly as shipped.
"""

from __future__ import annotations

import re

import trio

from e2e_support import ResponseReader, curl, load_example, open_client, start_server

TICK_RE = re.compile(rb"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d{4}\n\n")


async def test_two_simultaneous_curls_of_the_clock_both_finish_in_about_5_seconds(nursery: trio.Nursery) -> None:
    clock = load_example("clock")
    bind = await start_server(nursery, clock.app)  # the example as shipped: 5 ticks, 1 s apart
    outputs: list[bytes] = []
    finished_at: list[float] = []

    async def one_curl() -> None:
        result = await curl(str(bind) + "/")
        outputs.append(result.stdout)
        finished_at.append(trio.current_time())

    start = trio.current_time()
    with trio.fail_after(15):
        async with trio.open_nursery() as clients:
            clients.start_soon(one_curl)
            clients.start_soon(one_curl)
    elapsed = trio.current_time() - start
    assert 4 < elapsed < 8, f"two clocks took {elapsed:.1f} s; served one after the other would be ~10 s"
    assert max(finished_at) - min(finished_at) < 1  # they ran side by side
    for out in outputs:
        assert len(TICK_RE.findall(out)) == 5 and TICK_RE.sub(b"", out) == b""


async def test_fifty_simultaneous_clients_of_a_fast_clock_all_finish_together(nursery: trio.Nursery) -> None:
    clock = load_example("clock").make_app(ticks=5, interval=0.1)  # 0.5 s per response
    bind = await start_server(nursery, clock)
    bodies: list[bytes] = []

    async def one_client() -> None:
        client = await open_client(bind)
        async with client:
            await client.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            response = await ResponseReader(client).next()
        assert response.status == 200
        bodies.append(response.body)

    start = trio.current_time()
    with trio.fail_after(10):
        async with trio.open_nursery() as clients:
            for _ in range(50):
                clients.start_soon(one_client)
    elapsed = trio.current_time() - start
    assert elapsed < 3, f"50 half-second clocks took {elapsed:.1f} s"
    assert len(bodies) == 50
    assert all(len(TICK_RE.findall(body)) == 5 for body in bodies)
