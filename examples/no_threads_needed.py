"""The article's "spawn a Thread" clock, re-imagined: why trio-rack needs no thread for it.

Under Puma (one thread per request) the streaming-body clock holds a thread for five seconds,
so the article moves the loop into ``Thread.new`` to hand the request thread back.  In
trio-rack there is no request thread to hand back: each connection is a Trio task, and every
``await`` — ``trio.sleep(1)``, ``stream.send_all()`` — yields to the scheduler.  A single
process on a single thread serves any number of slow clocks at once (``examples/clock.py``
as written passes the article's two-``curl`` experiment; ``tests/test_concurrency.py`` runs it
with 50 clients).

What the thread also did was escape the request: it kept running, writing to a stream nobody
owned, after the server had moved on.  Trio has no detached tasks.  Background work belongs
in a nursery *inside* the request, so its lifetime is the response's:

* the streaming body opens a nursery, starts producers, and forwards what they put in a
  memory channel to the client;
* the response ends when every producer is done and the channel drains;
* if the client leaves, the server cancels the body, the nursery cancels the producers, and
  nothing outlives the request — no ``ensure``, no leaked thread, no write to a closed socket.

Work that really blocks (a CPU-bound function, a library without async I/O) still goes to a
thread — ``trio.to_thread.run_sync`` — but awaited inside that nursery, not fired and
forgotten.  Here one producer is the clock, the other a blocking computation in a worker
thread; their lines interleave on the wire.

Try it (``-N`` turns off curl's output buffering, to watch the lines arrive)::

    trio-rack serve examples/no_threads_needed.py
    curl -N --cacert "$(trio-rack certs | head -1)" https://localhost:9292/
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

import trio

from trio_rack.types import App


def now() -> bytes:
    """One tick: the local time, as Ruby's ``Time.now`` prints it, and a blank line."""
    return time.strftime("%Y-%m-%d %H:%M:%S %z\n\n").encode("ascii")


def blocking_digest(rounds: int) -> str:
    """Stand-in for a blocking library call: a deliberately slow key derivation."""
    return hashlib.pbkdf2_hmac("sha256", b"trio-rack", b"salt", rounds).hex()[:16]


def make_app(*, ticks: int = 5, interval: float = 1.0, rounds: int = 200_000) -> App:
    async def app(env: dict[str, Any]) -> Any:
        async def body(stream: trio.abc.Stream) -> None:
            send, receive = trio.open_memory_channel[bytes](0)

            async def clock(out: trio.MemorySendChannel[bytes]) -> None:
                async with out:
                    for _ in range(ticks):
                        await out.send(now())
                        await trio.sleep(interval)

            async def digest(out: trio.MemorySendChannel[bytes]) -> None:
                async with out:
                    value = await trio.to_thread.run_sync(blocking_digest, rounds)
                    await out.send(f"digest computed in a worker thread: {value}\n\n".encode())

            async with trio.open_nursery() as nursery:
                async with send:
                    nursery.start_soon(clock, send.clone())
                    nursery.start_soon(digest, send.clone())
                async with receive:
                    async for line in receive:
                        await stream.send_all(line)

        return 200, {"content-type": "text/plain"}, body

    return app


app = make_app()
