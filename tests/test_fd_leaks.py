"""Guaranteed close, counted in file descriptors.

The spec promises that every stream handed to the app — a streaming body's, a partial or a
full hijack's — is closed by the server when the app returns, raises or is cancelled.  These
tests hold many such streams open, cancel the server, and count the process's open file
descriptors (``/proc/self/fd``): after the cancel only the clients' sockets may remain, every
client must see the connection end, and once the clients close the count is back where it
started.
"""

from __future__ import annotations

import functools
import gc
from typing import Any

import pytest
import trio

import trio_rack
from e2e_support import TLSFiles, fd_count, fds_settle_at, open_client, read_until, read_until_eof, start_server

N = 20
KINDS = ("full", "partial", "streaming")


def make_blocking_app(entered: list[str]) -> Any:
    """Every kind of stream, each writing "ready" and then blocking forever."""

    async def app(env: dict[str, Any]) -> Any:
        kind = env["PATH_INFO"].strip("/")
        entered.append(kind)
        if kind == "full":
            stream = env["rack.hijack"]()
            await stream.send_all(b"HTTP/1.1 200 OK\r\n\r\nready\n")
            await trio.sleep_forever()

        async def blocking_body(stream: trio.abc.Stream) -> None:
            await stream.send_all(b"ready\n")
            await trio.sleep_forever()

        if kind == "partial":
            return 200, {"rack.hijack": blocking_body}, []
        return 200, {}, blocking_body

    return app


@pytest.mark.parametrize("scheme", ["http", "https"])
async def test_cancelling_the_server_closes_every_stream_held_by_apps(scheme: str, tls_files: TLSFiles) -> None:
    tls = tls_files if scheme == "https" else None
    entered: list[str] = []
    clients: list[trio.abc.Stream] = []
    gc.collect()  # earlier tests\' garbage sockets stay out of the baseline
    baseline = fd_count()
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            bind = await start_server(nursery, make_blocking_app(entered), tls=tls)

            async def connect(kind: str) -> None:
                client = await open_client(bind, tls)
                clients.append(client)
                await client.send_all(f"GET /{kind} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                await read_until(client, b"ready\n")  # the app holds its stream now

            async with trio.open_nursery() as connecting:  # concurrently: TLS handshakes add up
                for kind in KINDS:
                    for _ in range(N):
                        connecting.start_soon(connect, kind)
            assert sorted(entered) == sorted(k for k in KINDS for _ in range(N))
            held = fd_count()
            # each connection: one client socket + one server socket; plus the listener
            assert held >= baseline + 2 * len(clients) + 1
            nursery.cancel_scope.cancel()
        # serve() has returned: only the clients' sockets are left
        assert fd_count() == baseline + len(clients)
        for client in clients:
            _, how = await read_until_eof(client)
            assert how in ("eof", "reset")
            await client.aclose()
    assert fd_count() == baseline


@pytest.mark.parametrize("kind", ["full", "partial", "streaming"])
@pytest.mark.parametrize("ending", ["return", "raise"])
async def test_app_ending_closes_the_stream_it_was_given(
    kind: str, ending: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The app neither closes its stream nor is cancelled: returning or raising is enough."""
    done = trio.Event()

    async def use(stream: trio.abc.Stream) -> None:
        await stream.send_all(b"data\n")
        if ending == "raise":
            raise RuntimeError("app failed while holding the stream")

    async def app(env: dict[str, Any]) -> Any:
        env["rack.response_finished"].append(lambda *args: done.set())
        if kind == "full":
            stream = env["rack.hijack"]()
            await stream.send_all(b"HTTP/1.1 200 OK\r\n\r\n")
            await use(stream)
            return -1, {}, []
        if kind == "partial":
            return 200, {"rack.hijack": use}, []
        return 200, {}, use

    gc.collect()  # earlier tests\' garbage sockets stay out of the baseline

    baseline = fd_count()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            bind = await start_server(nursery, app)
            client = await open_client(bind)
            await client.send_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data, how = await read_until_eof(client)  # ends only if the server closed the stream
            await done.wait()
            assert how == "eof"
            assert b"data\n" in data
            if kind == "streaming":
                # a body that returns ends the response; one that raises aborts it visibly
                assert data.endswith(b"0\r\n\r\n") == (ending == "return")
            await client.aclose()
            # the listener, nothing else (the server may still be reading the client's EOF)
            await fds_settle_at(baseline + 1)
            nursery.cancel_scope.cancel()
    assert fd_count() == baseline


async def test_server_cancelled_while_the_app_has_not_answered_yet_closes_the_connection() -> None:
    """Not a stream handed to the app, but the same guarantee: no fd outlives ``serve()``."""
    entered = trio.Event()

    async def app(env: dict[str, Any]) -> Any:
        entered.set()
        await trio.sleep_forever()

    gc.collect()  # earlier tests\' garbage sockets stay out of the baseline

    baseline = fd_count()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            bind = await nursery.start(
                functools.partial(trio_rack.serve, app, bind="http://127.0.0.1:0", access_log=False)
            )
            client = await open_client(bind[0])
            await client.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            await entered.wait()
            nursery.cancel_scope.cancel()
        assert fd_count() == baseline + 1
        _, how = await read_until_eof(client)
        assert how in ("eof", "reset")
        await client.aclose()
    assert fd_count() == baseline


async def test_graceful_shutdown_closes_idle_at_once_lets_responses_finish_then_cancels_hijacks() -> None:
    """``shutdown_trigger``: idle keep-alive connections close at once, a response in flight
    finishes, a hijacked stream is cancelled and closed after ``graceful_timeout``, and
    ``serve()`` returns by itself with no fd left behind."""
    shutdown = trio.Event()
    release = trio.Event()

    async def app(env: dict[str, Any]) -> Any:
        path = env["PATH_INFO"]
        if path == "/hijack":
            stream = env["rack.hijack"]()
            await stream.send_all(b"ready\n")
            await trio.sleep_forever()

        async def finishing(stream: trio.abc.Stream) -> None:
            await stream.send_all(b"ready\n")
            await release.wait()
            await stream.send_all(b"done\n")

        if path == "/finishing":
            return 200, {}, finishing
        return 200, {}, [b"ok"]

    grace = 0.5
    gc.collect()  # earlier tests\' garbage sockets stay out of the baseline
    baseline = fd_count()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            bind = await start_server(
                nursery, app, limits=trio_rack.Limits(graceful_timeout=grace), shutdown_trigger=shutdown
            )
            idle, busy, hijacked = [await open_client(bind) for _ in range(3)]
            await idle.send_all(b"GET /idle HTTP/1.1\r\nHost: x\r\n\r\n")
            await read_until(idle, b"ok")  # answered; now idle in keep-alive
            await busy.send_all(b"GET /finishing HTTP/1.1\r\nHost: x\r\n\r\n")
            await read_until(busy, b"ready\n")
            await hijacked.send_all(b"GET /hijack HTTP/1.1\r\nHost: x\r\n\r\n")
            await read_until(hijacked, b"ready\n")

            start = trio.current_time()
            shutdown.set()
            with trio.fail_after(grace):
                assert await read_until_eof(idle) == (b"", "eof")  # closed without waiting
            release.set()
            rest, how = await read_until_eof(busy)
            assert rest.endswith(b"done\n\r\n0\r\n\r\n") and how == "eof"  # finished properly
            rest, how = await read_until_eof(hijacked)
            assert how in ("eof", "reset")
            assert trio.current_time() - start >= grace * 0.9  # the hijack got its grace period
            with pytest.raises(OSError):
                await open_client(bind)  # the listener is closed
        # serve() returned by itself: the nursery was not cancelled
        assert not nursery.cancel_scope.cancel_called
        assert fd_count() == baseline + 3
        for client in (idle, busy, hijacked):
            await client.aclose()
    assert fd_count() == baseline
