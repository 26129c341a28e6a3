"""The two load clients wrk cannot be: N simultaneous long-lived streams, and a fixed rate.

::

    python bench/clients.py streams --port P -n N --seconds S [--timeout T]
    python bench/clients.py rate --port P --rate R --duration D [--connections C]

Each prints one JSON line on stdout and exits 0 (errors are counted in the JSON, not raised).
asyncio, on uvloop when it is importable (the runner starts these with the peers' virtualenv
when it has one, so the client is the same for every server of a run).

``streams`` opens N connections (at most ``--connect-concurrency`` connects in flight, so a
server's accept backlog is not the bottleneck), sends ``GET /stream?s=S`` on each and reads
the chunked body to its end, checking the S+1 payload bytes.  It reports when every stream
had its first byte, the most streams open at once (N when the server really held them all
simultaneously) and when the last one ended.

``rate`` is open-loop: request *i* is due at ``start + i/R`` whatever happened before, is sent
on the first idle keep-alive connection, and its latency is measured **from when it was due**,
so a server that stalls is charged for the queue it causes (no coordinated omission, as in
wrk2, which Debian does not package).  The client's own overhead (tens of microseconds in
Python) is in every figure, the same for every server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import time
from collections import Counter
from typing import Any


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _status(head: bytes) -> int:
    return int(head.split(b" ", 2)[1])


def _header(head: bytes, name: bytes) -> bytes | None:
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name:
            return value.strip()
    return None


# -- streams -------------------------------------------------------------------------------------


async def _read_body(reader: asyncio.StreamReader, head: bytes, on_first: Any) -> int:
    """Read one response body (chunked, content-length or to EOF); return its length."""
    total = 0
    if (_header(head, b"transfer-encoding") or b"").lower() == b"chunked":
        while True:
            size = int((await reader.readline()).split(b";")[0], 16)
            if size == 0:
                await reader.readline()  # no trailers: the final CRLF
                return total
            total += len((await reader.readexactly(size + 2))[:-2])
            on_first()
    length = _header(head, b"content-length")
    if length is not None:
        await reader.readexactly(int(length))
        on_first()
        return int(length)
    while data := await reader.read(65536):
        total += len(data)
        on_first()
    return total


async def streams(
    # timeout: when to stop waiting and count the streams still open as errors, not a deadline on the call
    host: str, port: int, n: int, seconds: int, concurrency: int, timeout: float  # noqa: ASYNC109
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    connect_slots = asyncio.Semaphore(concurrency)
    request = f"GET /stream?s={seconds} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode()
    errors: Counter[str] = Counter()
    opened = 0
    open_now = 0
    peak_open = 0
    ok = 0
    all_open = asyncio.Event()
    start = loop.time()
    open_at: float | None = None

    async def one() -> None:
        nonlocal opened, ok, open_at, open_now
        first = False

        def on_first() -> None:
            nonlocal first, opened, open_at, open_now, peak_open
            if not first:
                first = True
                opened += 1
                open_now += 1
                peak_open = max(peak_open, open_now)
                if opened == n:
                    open_at = loop.time() - start
                    all_open.set()

        writer = None
        try:
            async with connect_slots:
                reader, writer = await asyncio.open_connection(host, port)
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            if _status(head) != 200:
                errors[f"status {_status(head)}"] += 1
                return
            got = await _read_body(reader, head, on_first)
            if got == seconds + 1:
                ok += 1
            else:
                errors[f"body of {got} bytes, expected {seconds + 1}"] += 1
        except Exception as exc:  # noqa: BLE001 -- counted and reported: the runner judges errors
            errno = getattr(exc, "errno", None)
            errors[type(exc).__name__ + (f" {errno}" if errno else "")] += 1
        finally:
            if first:
                open_now -= 1
            if writer is not None:
                writer.close()

    tasks = [asyncio.ensure_future(one()) for _ in range(n)]
    _done, pending = await asyncio.wait(tasks, timeout=timeout)
    for task in pending:
        task.cancel()
    if pending:
        errors["timed out"] += len(pending)
        await asyncio.wait(pending)
    return {
        "n": n,
        "seconds": seconds,
        "ok": ok,
        "peak_open": peak_open,
        "all_open_s": open_at,
        "all_done_s": loop.time() - start,
        "errors": dict(errors),
    }


# -- fixed rate ----------------------------------------------------------------------------------


async def rate(
    host: str, port: int, rps: float, duration: float, connections: int, path: str
) -> dict[str, Any]:
    clock = time.perf_counter  # uvloop's loop.time() has millisecond resolution
    request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
    queue: asyncio.Queue[float | None] = asyncio.Queue()
    latencies: list[float] = []
    errors: Counter[str] = Counter()

    async def connection() -> None:
        reader = writer = None
        while True:
            due = await queue.get()
            if due is None:
                break
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection(host, port)
                assert reader is not None
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                await reader.readexactly(int(_header(head, b"content-length") or 0))
                latencies.append(clock() - due)
                if _status(head) != 200:
                    errors[f"status {_status(head)}"] += 1
            except Exception as exc:  # noqa: BLE001 -- counted and reported, then reconnect
                errors[type(exc).__name__] += 1
                if writer is not None:
                    writer.close()
                reader = writer = None
        if writer is not None:
            writer.close()

    workers = [asyncio.ensure_future(connection()) for _ in range(connections)]
    total = int(rps * duration)
    start = clock() + 0.1
    for i in range(total):
        due = start + i / rps
        delay = due - clock()
        if delay > 0:
            await asyncio.sleep(delay)
        queue.put_nowait(due)
    for _ in workers:
        queue.put_nowait(None)
    _, pending = await asyncio.wait(workers, timeout=30)
    for task in pending:
        task.cancel()
    elapsed = clock() - start
    latencies.sort()

    def pct(p: float) -> float | None:
        if not latencies:
            return None
        return round(
            latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))] * 1000, 3
        )

    return {
        "rate": rps,
        "sent": total,
        "completed": len(latencies),
        "elapsed_s": round(elapsed, 3),
        "p50_ms": pct(50),
        "p90_ms": pct(90),
        "p99_ms": pct(99),
        "p999_ms": pct(99.9),
        "max_ms": round(latencies[-1] * 1000, 3) if latencies else None,
        "errors": dict(errors)
        | ({"unfinished": total - len(latencies)} if len(latencies) < total else {}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("streams")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("-n", type=int, required=True)
    s.add_argument("--seconds", type=int, default=10)
    s.add_argument("--connect-concurrency", type=int, default=256)
    s.add_argument("--timeout", type=float, default=120)
    r = sub.add_parser("rate")
    r.add_argument("--host", default="127.0.0.1")
    r.add_argument("--port", type=int, required=True)
    r.add_argument("--rate", type=float, required=True)
    r.add_argument("--duration", type=float, required=True)
    r.add_argument("--connections", type=int, default=32)
    r.add_argument("--path", default="/")
    args = parser.parse_args()
    _raise_nofile()
    if args.command == "streams":
        coro = streams(
            args.host,
            args.port,
            args.n,
            args.seconds,
            args.connect_concurrency,
            args.timeout,
        )
    else:
        coro = rate(
            args.host, args.port, args.rate, args.duration, args.connections, args.path
        )
    try:
        import uvloop
    except ImportError:
        uvloop = None
    result = uvloop.run(coro) if uvloop is not None else asyncio.run(coro)
    result["client_loop"] = "uvloop" if uvloop is not None else "asyncio"
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
