"""The CPU cost of one hello request through the real HTTP/1 code path, without sockets.

::

    python bench/inprocess.py [--requests 20000] [--batch 50]
    # deterministic, for an A/B of two trees (instructions, not seconds):
    N=500  valgrind --tool=callgrind python3.11 bench/inprocess.py   # then N=1500; the difference / 1000
                                                                    # is the instruction count per request

``trio_rack.testing.memory_connection`` serves ``bench/rack_app.py``'s hello over a memory
stream; the client pipelines ``--batch`` requests at a time and only counts responses, so
nearly all the CPU is the server's.  Figures: process CPU time per request (noisy on a busy
machine) — under callgrind, the instruction count, which does not depend on the machine's load.
It asserts nothing: evidence for a change's note.
"""

from __future__ import annotations

import argparse
import os
import time

import trio

from trio_rack.testing import memory_connection


async def hello(env: dict[str, object]) -> tuple[int, dict[str, str], list[bytes]]:
    return 200, {"content-type": "text/plain"}, [b"Hello, world!\n"]


REQUEST = b"GET / HTTP/1.1\r\nHost: x\r\nUser-Agent: wrk\r\n\r\n"


async def main(requests: int, batch: int) -> None:
    async with memory_connection(hello) as client:
        stream = client.stream

        async def burst() -> None:
            await stream.send_all(REQUEST * batch)
            got = 0
            while got < batch:
                got += (await stream.receive_some(1 << 20)).count(b"HTTP/1.1 200")

        for _ in range(2):
            await burst()  # warm-up: caches, first-request paths
        start = time.process_time()
        for _ in range(requests // batch):
            await burst()
        seconds = time.process_time() - start
    print(f"{seconds / requests * 1e6:.1f} µs of CPU per request ({requests} requests, pipelined x{batch})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=int(os.environ.get("N", "20000")))
    parser.add_argument("--batch", type=int, default=50)
    args = parser.parse_args()
    trio.run(main, args.requests, args.batch)
