"""Broadcast benchmark: fan-out to 1,000 subscribers over ``memory://`` and over Redis.

Usage (from the repository root)::

    python bench/broadcast_bench.py               # both backends; Redis: a redis-server it starts
    python bench/broadcast_bench.py --quick       # fewer messages, for a smoke check
    python bench/broadcast_bench.py --redis-url redis://127.0.0.1:6379/0   # an existing server

What it measures, per backend, with ``--subscribers`` (1,000) subscriptions to one channel in
one process (one bus: on Redis that is one pub/sub connection and local fan-out):

* **burst**: ``--messages`` publishes back to back; *deliveries/s* is messages × subscribers
  divided by the time from the first publish to the last delivery; *publishes/s* is the
  publisher's own rate.  Every subscription's queue holds the whole burst, so nothing is cut
  off (checked: the run fails if a delivery is missing).
* **latency**: ``--paced`` messages, one every ``--interval`` seconds, each carrying its
  ``perf_counter_ns`` send time; p50/p99/max over all (message, subscriber) deliveries of the
  time from ``publish`` being called to the subscriber's ``async for`` receiving it.

The Redis server (Debian ``redis-server``) is started on a free 127.0.0.1 port in a temporary
directory with no persistence and stopped by PID.  Only 127.0.0.1 is used; every phase is
bounded in count.  One process, one core of Trio: the numbers are per process.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import trio

from _procs import free_port

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from trio_rack import broadcast  # noqa: E402


@contextmanager
def redis_server() -> Iterator[str]:
    exe = shutil.which("redis-server") or shutil.which("valkey-server")
    if exe is None:
        raise SystemExit("broadcast_bench: redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="trio-rack-bench-redis-") as tmp:
        proc = subprocess.Popen(
            [exe, "--port", str(port), "--bind", "127.0.0.1", "--dir", tmp, "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.5) as c:
                        c.sendall(b"PING\r\n")
                        if c.recv(16).startswith(b"+PONG"):
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit("broadcast_bench: redis-server did not start")
                time.sleep(0.02)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.kill()
            proc.wait(10)


async def burst(bus: broadcast.Bus, subscribers: int, messages: int) -> dict[str, float]:
    done = trio.Event()
    remaining = subscribers
    last_delivery = 0.0

    async def subscriber(task_status: trio.TaskStatus[None]) -> None:
        nonlocal remaining, last_delivery
        async with bus.subscribe("bench", queue=messages + 1) as sub:
            task_status.started()
            got = 0
            async for _ in sub:
                got += 1
                if got == messages:
                    break
        last_delivery = max(last_delivery, time.perf_counter())
        remaining -= 1
        if remaining == 0:
            done.set()

    async with trio.open_nursery() as nursery:
        for _ in range(subscribers):
            await nursery.start(subscriber)
        start = time.perf_counter()
        for n in range(messages):
            await bus.publish("bench", b"%d" % n)
        published = time.perf_counter()
        with trio.fail_after(120):
            await done.wait()
    elapsed = last_delivery - start
    return {
        "publishes_per_s": messages / (published - start),
        "deliveries_per_s": messages * subscribers / elapsed,
        "messages_per_s": messages / elapsed,
        "seconds": elapsed,
    }


async def latency(bus: broadcast.Bus, subscribers: int, paced: int, interval: float) -> dict[str, float]:
    samples: list[int] = []
    done = trio.Event()
    remaining = subscribers

    async def subscriber(task_status: trio.TaskStatus[None]) -> None:
        nonlocal remaining
        async with bus.subscribe("lat", queue=paced + 1) as sub:
            task_status.started()
            got = 0
            async for message in sub:
                samples.append(time.perf_counter_ns() - int(message))
                got += 1
                if got == paced:
                    break
        remaining -= 1
        if remaining == 0:
            done.set()

    async with trio.open_nursery() as nursery:
        for _ in range(subscribers):
            await nursery.start(subscriber)
        for _ in range(paced):
            await bus.publish("lat", str(time.perf_counter_ns()))
            await trio.sleep(interval)
        with trio.fail_after(60):
            await done.wait()
    assert len(samples) == subscribers * paced, "a delivery is missing"
    ms = sorted(s / 1e6 for s in samples)
    return {
        "p50_ms": statistics.median(ms),
        "p99_ms": ms[int(len(ms) * 0.99) - 1],
        "max_ms": ms[-1],
    }


async def run_backend(url: str, args: argparse.Namespace) -> dict[str, float]:
    async with broadcast.connect(url) as bus:
        result = await burst(bus, args.subscribers, args.messages)
        result.update(await latency(bus, args.subscribers, args.paced, args.interval))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=1000, help="burst length (default 1000)")
    parser.add_argument("--paced", type=int, default=100, help="latency samples per subscriber (default 100)")
    parser.add_argument("--interval", type=float, default=0.01, help="seconds between paced publishes")
    parser.add_argument("--redis-url", help="an existing Redis/Valkey (default: start one)")
    parser.add_argument("--backends", default="memory,redis")
    parser.add_argument("--quick", action="store_true", help="200 burst messages, 20 paced")
    parser.add_argument("--json", action="store_true", help="print JSON only")
    args = parser.parse_args()
    if args.quick:
        args.messages, args.paced = 200, 20
    results: dict[str, dict[str, float]] = {}
    for backend in args.backends.split(","):
        if backend == "memory":
            results["memory"] = trio.run(run_backend, "memory://bench", args)
        elif backend == "redis":
            if args.redis_url:
                results["redis"] = trio.run(run_backend, args.redis_url, args)
            else:
                with redis_server() as url:
                    results["redis"] = trio.run(run_backend, url, args)
        else:
            raise SystemExit(f"broadcast_bench: unknown backend {backend!r}")
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"{args.subscribers} subscribers, burst of {args.messages}, {args.paced} paced every {args.interval}s"
          f" (python {sys.version.split()[0]}, trio {trio.__version__}, {os.cpu_count()} cpus)")
    heads = ("msg/s", 9), ("deliveries/s", 13), ("publish/s", 10), ("p50 ms", 8), ("p99 ms", 8), ("max ms", 8)
    print(f"{'backend':8} " + " ".join(f"{h:>{w}}" for h, w in heads))
    for name, r in results.items():
        print(f"{name:8} {r['messages_per_s']:9.0f} {r['deliveries_per_s']:13.0f} {r['publishes_per_s']:10.0f}"
              f" {r['p50_ms']:8.2f} {r['p99_ms']:8.2f} {r['max_ms']:8.2f}")


if __name__ == "__main__":
    main()
