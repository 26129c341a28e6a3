"""The ASGI and WSGI adapters' own cost per request, in CPU time, over the real connection loop.

Serves the same 13-byte hello as a native trio-rack app, as a raw ASGI app (through
:class:`trio_rack.asgi.ASGIAdapter`) and as a raw WSGI app (through
:class:`trio_rack.wsgi.WSGIAdapter`, its thread pool included) over an in-memory connection
(``trio_rack.testing``), and reports the process CPU time per keep-alive request of each and
the differences.  CPU time,
unlike req/s, is barely moved by other processes on a shared machine.  The client's share
(h11 on the other end) is the same in both and cancels out in the difference.

    python3 bench/asgi_cost.py [--requests N] [--rounds R]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import trio

from trio_rack.asgi import ASGIAdapter
from trio_rack.interface import ServedApp
from trio_rack.testing import memory_connection
from trio_rack.wsgi import WSGIAdapter


async def native(env: dict[str, Any]) -> Any:
    return 200, {"content-type": "text/plain"}, [b"Hello, world!"]


async def raw_asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"Hello, world!"})


def raw_wsgi(environ: dict[str, Any], start_response: Any) -> Any:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return iter([b"Hello, world!"])  # an iterator, not a list: the general path


async def cpu_per_request(app: Any, requests: int) -> float:
    async with memory_connection(app) as client:
        for _ in range(200):  # warm-up
            await client.request("GET", "/")
        start = time.process_time()
        for _ in range(requests):
            response = await client.request("GET", "/")
        elapsed = time.process_time() - start
    assert response.status == 200 and response.body == b"Hello, world!"
    return elapsed / requests * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    assert ServedApp(raw_asgi).check() == "asgi"
    apps = {"native": native, "asgi": ASGIAdapter(raw_asgi), "wsgi": WSGIAdapter(raw_wsgi)}
    results: dict[str, list[float]] = {name: [] for name in apps}
    for _ in range(args.rounds):  # interleaved, so that drift hits all alike
        for name, app in apps.items():
            results[name].append(trio.run(cpu_per_request, app, args.requests))
    n, a, w = (statistics.median(results[name]) for name in ("native", "asgi", "wsgi"))
    print(f"native hello: {n:.1f} µs CPU per request (client included)")
    print(f"ASGI hello:   {a:.1f} µs CPU per request: the adapter costs {a - n:.1f} µs")
    print(f"WSGI hello:   {w:.1f} µs CPU per request: the adapter and its thread hop cost {w - n:.1f} µs")
    print(f"({args.rounds} rounds of {args.requests} requests, medians)")


if __name__ == "__main__":
    main()
