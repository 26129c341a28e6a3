"""Graceful shutdown against hostile and half-finished connections.

tests/test_fd_leaks.py covers the basic graceful sequence (idle keep-alive closed at once, a
response in flight finishes, a held hijack is cancelled after the grace period) and
tests/test_cli.py the signals and exit codes.  These add what a hostile client does to a
shutdown: a request in flight must be told ``connection: close`` and nothing pipelined behind
it may be served; a slowloris head, a TLS handshake that never completes and a client that
stopped reading must not hold ``serve()`` past ``graceful_timeout``; and when ``serve()`` has
returned, the file descriptors and Trio's living task count are back at their baseline.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio

import trio_rack
from e2e_support import (
    TLSFiles,
    fd_count,
    open_client,
    read_until,
    read_until_eof,
    split_head,
)
from trio_rack import Bind, Limits


def tasks_living() -> int:
    return trio.lowlevel.current_statistics().tasks_living


class Server:
    """``trio_rack.serve`` in a task of its own, with its shutdown trigger and return time."""

    def __init__(self) -> None:
        self.shutdown = trio.Event()
        self.returned = trio.Event()
        self.binds: list[Bind] = []

    async def start(self, nursery: trio.Nursery, app: Any, limits: Limits, tls: TLSFiles | None = None) -> None:
        kwargs: dict[str, Any] = {"access_log": False, "limits": limits, "shutdown_trigger": self.shutdown}
        if tls is None:
            kwargs["bind"] = "http://127.0.0.1:0"
        else:
            kwargs.update(bind="https://127.0.0.1:0", cert=tls.cert_pem, key=tls.key_pem)

        async def run(task_status: trio.TaskStatus[list[Bind]]) -> None:
            await trio_rack.serve(app, task_status=task_status, **kwargs)
            self.returned.set()

        self.binds = await nursery.start(run)


async def test_request_in_flight_is_told_to_close_and_pipelined_requests_are_not_served(nursery: trio.Nursery) -> None:
    """The client pipelined a second request behind a slow one.  Shutdown starts while the
    app works on the first: its response says ``connection: close``, the connection then
    closes, and the second request never reaches the app (the client will retry it)."""
    entered = trio.Event()
    release = trio.Event()
    calls: list[str] = []

    async def app(env: dict[str, Any]) -> Any:
        calls.append(env["PATH_INFO"])
        if env["PATH_INFO"] == "/slow":
            entered.set()
            await release.wait()
        return 200, {}, [b"done:" + env["PATH_INFO"].encode()]

    server = Server()
    await server.start(nursery, app, Limits(graceful_timeout=5))
    with trio.fail_after(5):
        client = await open_client(server.binds[0])
        await client.send_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\nGET /next HTTP/1.1\r\nHost: x\r\n\r\n")
        await entered.wait()
        server.shutdown.set()
        await trio.sleep(0.05)  # the drain has begun
        release.set()
        data, how = await read_until_eof(client)
        await client.aclose()
        await server.returned.wait()
    status, headers, body = split_head(data)
    assert status == 200 and body == b"done:/slow"
    assert headers["connection"] == ["close"]
    assert calls == ["/slow"] and how == "eof"


@pytest.mark.parametrize("holder", ["slowloris-head", "stalled-tls-handshake", "stalled-reader"])
async def test_hostile_connections_do_not_hold_shutdown_past_the_grace_period(
    nursery: trio.Nursery, tls_files: TLSFiles, holder: str
) -> None:
    """Long server timeouts (30 s), a 0.5 s grace period: whatever the hostile client is in
    the middle of, ``serve()`` returns within about the grace period, and every fd and task it
    had is gone."""
    grace = 0.5
    writing = trio.Event()

    async def app(env: dict[str, Any]) -> Any:
        async def endless(stream: trio.abc.Stream) -> None:
            while True:
                await stream.send_all(b"x" * 65536)
                writing.set()

        return 200, {}, endless

    limits = Limits(
        header_timeout=30, handshake_timeout=30, write_timeout=30, keepalive_timeout=30, graceful_timeout=grace
    )
    fds, tasks = fd_count(), tasks_living()
    server = Server()
    async with trio.open_nursery() as inner:
        await server.start(inner, app, limits, tls=tls_files if holder == "stalled-tls-handshake" else None)
        bind = server.binds[0]
        with trio.fail_after(5):
            client = await trio.open_tcp_stream(bind.host, bind.port)
            if holder == "slowloris-head":
                await client.send_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow:")
            elif holder == "stalled-tls-handshake":
                await client.send_all(b"\x16\x03\x01\x02\x00\x01")  # half a record header
            else:
                await client.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                await read_until(client, b"\r\n\r\n")
                await writing.wait()  # then never read again
            await trio.sleep(0.1)
            start = trio.current_time()
            server.shutdown.set()
            await server.returned.wait()
            elapsed = trio.current_time() - start
        _, how = await read_until_eof(client)
        assert how in ("eof", "reset")
        await client.aclose()
    assert elapsed <= grace + 1.0, elapsed
    assert (fd_count(), tasks_living()) == (fds, tasks)


async def test_connections_are_refused_once_shutdown_starts_even_while_requests_finish(nursery: trio.Nursery) -> None:
    entered = trio.Event()
    release = trio.Event()

    async def app(env: dict[str, Any]) -> Any:
        entered.set()
        await release.wait()
        return 200, {}, [b"ok"]

    server = Server()
    await server.start(nursery, app, Limits(graceful_timeout=5))
    bind = server.binds[0]
    with trio.fail_after(5):
        busy = await open_client(bind)
        await busy.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await entered.wait()
        server.shutdown.set()
        await trio.sleep(0.05)
        with pytest.raises(OSError):
            await trio.open_tcp_stream(bind.host, bind.port)
        release.set()
        data, _ = await read_until_eof(busy)
        await busy.aclose()
        await server.returned.wait()
    assert data.startswith(b"HTTP/1.1 200 ") and data.endswith(b"ok")
