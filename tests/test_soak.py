"""A bounded soak: a few thousand hostile and ordinary connections against one real server.

One in-process server (plain HTTP and TLS listeners on 127.0.0.1, port 0) takes 3,000
connections, 100 at a time, in a fixed pseudo-random mix: keep-alive and pipelined requests,
abandoned full and partial hijacks, malformed requests, clients that vanish mid-response,
mid-body or while the app sleeps, half-sent heads, connect-and-close, over TCP and TLS.

Afterwards the server must be back where it started: the process's open file descriptors
(``/proc/self/fd``: client and server sockets live in this process) and Trio's living task
count (``trio.lowlevel.current_statistics().tasks_living``) return to their baseline, every app
call that started has finished (its ``finally`` ran), and nothing was logged at ERROR.  The
return to baseline is awaited with a bounded poll: closes have no event to wait on.

It runs in the default suite (about 10-15 s here); ``-m "not slow"`` skips it.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio

from e2e_support import (
    TLSFiles,
    fd_count,
    open_client,
    read_until,
    read_until_eof,
    start_server,
    wait_until,
)
from trio_rack import Bind, Limits

pytestmark = pytest.mark.slow

CONNECTIONS = 3000
CONCURRENCY = 100
SEED = 20261126

LIMITS = Limits(
    header_timeout=2,
    keepalive_timeout=1,
    body_timeout=2,
    write_timeout=2,
    handshake_timeout=2,
    liveness_interval=0.05,  # vanished clients of sleeping apps are noticed within 50 ms
    max_body_size=1_000_000,
)

MALFORMED = [
    b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
    b"GET / HTTP/2.0\r\nHost: a\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
    b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: a\r\n\r\n",
    b"\x16\x03\x01garbage\r\n\r\n",
    b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2000000\r\n\r\n",
]


class Apps:
    """The server's app, counting app calls that started and finished."""

    def __init__(self) -> None:
        self.started = 0
        self.finished = 0

    async def __call__(self, env: dict[str, Any]) -> Any:
        self.started += 1
        try:
            return await self._route(env)
        finally:
            self.finished += 1

    async def _route(self, env: dict[str, Any]) -> Any:
        path = env["PATH_INFO"]
        if path == "/full-hijack":
            stream = env["rack.hijack"]()
            await stream.send_all(b"ready\n")
            while await stream.receive_some():  # until the client leaves
                pass
            return -1, {}, []
        if path == "/partial-hijack":

            async def hijack(stream: trio.abc.Stream) -> None:
                await stream.send_all(b"ready\n")
                while await stream.receive_some():
                    pass

            return 200, {"rack.hijack": hijack}, []
        if path == "/stream":

            async def endless(stream: trio.abc.Stream) -> None:
                while True:
                    await stream.send_all(b"tick\n")
                    await trio.sleep(0.005)

            return 200, {}, endless
        if path == "/sleep":
            await trio.sleep_forever()
        if path == "/upload":
            data = await env["rack.input"].read_all()
            return 200, {}, [b"%d" % len(data)]
        return 200, {"content-type": "text/plain"}, [b"ok:" + path.encode()]


def get(path: str, *, close: bool = False) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: x\r\n{'Connection: close' + chr(13) + chr(10) if close else ''}\r\n".encode()


Scenario = Callable[[trio.abc.Stream, random.Random], Awaitable[None]]


async def keep_alive(client: trio.abc.Stream, rng: random.Random) -> None:
    data = b""
    for i in range(3):
        await client.send_all(get(f"/k{i}"))
        data = await read_until(client, b"ok:/k%d" % i, buffer=data)


async def pipelined(client: trio.abc.Stream, rng: random.Random) -> None:
    await client.send_all(get("/p0") + get("/p1") + get("/p2", close=True))
    data, _ = await read_until_eof(client)
    assert data.count(b"HTTP/1.1 200 ") == 3


async def full_hijack_abandoned(client: trio.abc.Stream, rng: random.Random) -> None:
    await client.send_all(get("/full-hijack"))
    await read_until(client, b"ready\n")


async def partial_hijack_abandoned(client: trio.abc.Stream, rng: random.Random) -> None:
    await client.send_all(get("/partial-hijack"))
    await read_until(client, b"ready\n")


async def malformed(client: trio.abc.Stream, rng: random.Random) -> None:
    try:
        await client.send_all(rng.choice(MALFORMED))
    except trio.BrokenResourceError:
        return
    data, _ = await read_until_eof(client)
    assert data == b"" or data.startswith((b"HTTP/1.1 4", b"HTTP/1.1 5")), data[:80]


async def vanish_mid_response(client: trio.abc.Stream, rng: random.Random) -> None:
    await client.send_all(get("/stream"))
    await read_until(client, b"tick\n")


async def vanish_while_app_sleeps(client: trio.abc.Stream, rng: random.Random) -> None:
    await client.send_all(get("/sleep"))
    await trio.sleep(rng.choice([0, 0.01]))


async def vanish_mid_body(client: trio.abc.Stream, rng: random.Random) -> None:
    await client.send_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n" + b"b" * 1000)
    await trio.sleep(rng.choice([0, 0.005]))


async def half_sent_head(client: trio.abc.Stream, rng: random.Random) -> None:
    await client.send_all(b"GET /half HTTP/1.1\r\nHost: x\r\nX-A:")


async def connect_and_close(client: trio.abc.Stream, rng: random.Random) -> None:
    pass


#: (scenario, weight, over TLS?)
MIX: list[tuple[Scenario, int, bool]] = [
    (keep_alive, 20, False),
    (pipelined, 10, False),
    (full_hijack_abandoned, 10, False),
    (partial_hijack_abandoned, 10, False),
    (malformed, 15, False),
    (vanish_mid_response, 10, False),
    (vanish_while_app_sleeps, 6, False),
    (vanish_mid_body, 6, False),
    (half_sent_head, 4, False),
    (connect_and_close, 4, False),
    (keep_alive, 2, True),
    (full_hijack_abandoned, 1, True),
    (partial_hijack_abandoned, 1, True),
    (vanish_mid_response, 1, True),
]


def tasks_living() -> int:
    return trio.lowlevel.current_statistics().tasks_living


async def back_to(fds: int, tasks: int, *, within: float) -> None:
    with trio.move_on_after(within):
        await wait_until(lambda: fd_count() == fds and tasks_living() == tasks)
    assert (fd_count(), tasks_living()) == (fds, tasks), "fds/tasks did not return to baseline"


async def test_soak_returns_to_baseline(
    nursery: trio.Nursery, tls_files: TLSFiles, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="trio_rack")
    apps = Apps()
    plain = await start_server(nursery, apps, limits=LIMITS)
    secure = await start_server(nursery, apps, tls=tls_files, limits=LIMITS)
    await trio.sleep(0.1)  # let both servers settle into accept()
    fds, tasks = fd_count(), tasks_living()

    rng = random.Random(SEED)
    weighted = [(s, tls) for s, weight, tls in MIX for _ in range(weight)]
    plan = [rng.choice(weighted) for _ in range(CONNECTIONS)]
    done: Counter[str] = Counter()
    failures: list[str] = []

    async def run_one(scenario: Scenario, tls: bool, seed: int) -> None:
        bind: Bind = secure if tls else plain
        with trio.fail_after(10):
            client = await open_client(bind, tls_files if tls else None)
            try:
                await scenario(client, random.Random(seed))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # the server may end a hostile connection first
            finally:
                await trio.aclose_forcefully(client)
        done[scenario.__name__ + ("/tls" if tls else "")] += 1

    async def worker(queue: list[tuple[int, Scenario, bool]]) -> None:
        while queue:
            i, scenario, tls = queue.pop()
            try:
                await run_one(scenario, tls, SEED + i)
            except Exception as exc:  # noqa: BLE001 - collected: one failure must not hide the rest
                failures.append(f"#{i} {scenario.__name__}{'/tls' if tls else ''}: {exc!r}")

    queue = [(i, s, tls) for i, (s, tls) in enumerate(plan)][::-1]
    with trio.fail_after(120):
        async with trio.open_nursery() as workers:
            for _ in range(CONCURRENCY):
                workers.start_soon(worker, queue)
    assert not failures, failures[:10]
    assert sum(done.values()) == CONNECTIONS
    await back_to(fds, tasks, within=5)
    assert apps.started == apps.finished, (apps.started, apps.finished)
    assert apps.started > CONNECTIONS // 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, errors[:5]
