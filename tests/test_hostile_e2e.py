"""Hostile clients against a real server: raw sockets on 127.0.0.1, small limits, real time.

Each test starts ``trio_rack.serve`` on port 0 with timeouts of a second or less, plays one
kind of hostile client — slowloris, an idle keep-alive, a client that vanishes mid-body or
stops reading, a TLS client that never finishes its handshake, too many connections, an
oversized upload, bytes after ``Connection: close`` — and checks what the server does and
that it leaves no file descriptor behind.  Timing assertions are bounds with generous upper
margins (CI machines are slow); each test is bounded by ``trio.fail_after``.
"""

from __future__ import annotations

import gc
import logging
import socket
from typing import Any

import pytest
import trio

from e2e_support import (
    TLSFiles,
    fd_count,
    fds_settle_at,
    open_client,
    read_until,
    read_until_eof,
    split_head,
    start_server,
)
from trio_rack import Limits

pytestmark = pytest.mark.filterwarnings("ignore::trio.TrioDeprecationWarning")


async def hello(env: dict[str, Any]) -> Any:
    return 200, {"content-type": "text/plain"}, [b"hello"]


GET = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


def no_error_logs(caplog: pytest.LogCaptureFixture) -> None:
    errors = [r for r in caplog.records if r.name.startswith("trio_rack") and r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]


# ------------------------------------------------------------------------------ timeouts


async def test_slowloris_gets_408_and_is_closed_at_the_header_timeout(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    """A client trickling header lines (one every 0.1 s, forever) is cut off when the whole
    head has not arrived within ``header_timeout`` — the deadline covers the head, not each
    read — with a 408 and a close."""
    bind = await start_server(nursery, hello, limits=Limits(header_timeout=1.0))
    gc.collect()  # earlier tests\' garbage sockets stay out of the baseline
    baseline = fd_count()
    with trio.fail_after(5):
        client = await open_client(bind)
        start = trio.current_time()

        async def trickle() -> None:
            await client.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
            try:
                for i in range(100):
                    await trio.sleep(0.1)
                    await client.send_all(b"X-Slow-%d: y\r\n" % i)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

        async with trio.open_nursery() as inner:
            inner.start_soon(trickle)
            data, _ = await read_until_eof(client)
            elapsed = trio.current_time() - start
            inner.cancel_scope.cancel()
        await client.aclose()
    assert data.startswith(b"HTTP/1.1 408 "), data[:100]
    assert 0.9 <= elapsed <= 2.0, elapsed
    await fds_settle_at(baseline)
    no_error_logs(caplog)


async def test_idle_keep_alive_connection_is_closed_at_the_keepalive_timeout(nursery: trio.Nursery) -> None:
    bind = await start_server(nursery, hello, limits=Limits(keepalive_timeout=0.5, header_timeout=5))
    gc.collect()  # earlier tests\' garbage sockets stay out of the baseline
    baseline = fd_count()
    with trio.fail_after(5):
        client = await open_client(bind)
        await client.send_all(GET)
        await read_until(client, b"hello")
        start = trio.current_time()
        data, how = await read_until_eof(client)
        elapsed = trio.current_time() - start
        await client.aclose()
    assert (data, how) == (b"", "eof")  # closed silently: no request had started
    assert 0.45 <= elapsed <= 1.5, elapsed
    await fds_settle_at(baseline)


async def test_a_connection_that_never_sends_is_closed_at_the_header_timeout_without_408(nursery: trio.Nursery) -> None:
    bind = await start_server(nursery, hello, limits=Limits(header_timeout=0.5))
    with trio.fail_after(5):
        client = await open_client(bind)
        start = trio.current_time()
        data, how = await read_until_eof(client)
        elapsed = trio.current_time() - start
        await client.aclose()
    assert (data, how) == (b"", "eof")
    assert 0.45 <= elapsed <= 1.5, elapsed


async def test_tls_handshake_that_never_completes_is_dropped_at_the_handshake_timeout(
    nursery: trio.Nursery, tls_files: TLSFiles, caplog: pytest.LogCaptureFixture
) -> None:
    """Connect-and-say-nothing, and half a ClientHello: both cost the server one socket for
    at most ``handshake_timeout``; the server goes on serving TLS clients."""
    bind = await start_server(nursery, hello, tls=tls_files, limits=Limits(handshake_timeout=0.5))
    gc.collect()  # earlier tests\' garbage sockets stay out of the baseline
    baseline = fd_count()
    with trio.fail_after(5):
        silent = await trio.open_tcp_stream(bind.host, bind.port)
        partial = await trio.open_tcp_stream(bind.host, bind.port)
        await partial.send_all(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 20)
        start = trio.current_time()
        for client in (silent, partial):
            _, how = await read_until_eof(client)
            assert how in ("eof", "reset")
        elapsed = trio.current_time() - start
        for client in (silent, partial):
            await client.aclose()
        assert 0.45 <= elapsed <= 1.5, elapsed
        good = await open_client(bind, tls_files)
        await good.send_all(GET)
        await read_until(good, b"hello")
        await good.aclose()
    await fds_settle_at(baseline)
    no_error_logs(caplog)


# ------------------------------------------------------------------------ clients gone


async def test_client_vanishing_mid_body_breaks_the_apps_read_and_leaves_nothing(nursery: trio.Nursery) -> None:
    """The app is blocked in ``rack.input``; the client sends half its body and closes.  The
    app's read raises BrokenResourceError (or the app is cancelled), its ``finally`` runs,
    and every fd of the connection is closed."""
    got_first = trio.Event()
    finished = trio.Event()
    outcome: list[str] = []

    async def app(env: dict[str, Any]) -> Any:
        try:
            first = await env["rack.input"].receive_some()
            assert first
            got_first.set()
            await env["rack.input"].read_all()
        except trio.BrokenResourceError:
            outcome.append("BrokenResourceError")
            raise
        except trio.Cancelled:
            outcome.append("Cancelled")
            raise
        finally:
            finished.set()
        return 200, {}, [b"unreachable"]

    bind = await start_server(nursery, app)
    gc.collect()  # earlier tests\' garbage sockets stay out of the baseline
    baseline = fd_count()
    with trio.fail_after(5):
        client = await open_client(bind)
        await client.send_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 1000)
        await got_first.wait()
        await client.aclose()
        await finished.wait()
    assert outcome in (["BrokenResourceError"], ["Cancelled"])
    await fds_settle_at(baseline)


async def test_stalled_reader_is_dropped_at_the_write_timeout_and_the_app_stopped(nursery: trio.Nursery) -> None:
    """The client reads the head of an endless streamed response, then stops reading.  The
    server buffers no more than the kernel does: the app's ``send_all`` waits, and once one
    write has waited ``write_timeout`` the connection is dropped and the app stopped (it sees
    Cancelled or BrokenResourceError).  Nothing is left open."""
    write_started = [0.0]
    stopped: list[tuple[str, float]] = []
    done = trio.Event()

    async def app(env: dict[str, Any]) -> Any:
        async def body(stream: trio.abc.Stream) -> None:
            try:
                while True:
                    write_started[0] = trio.current_time()
                    await stream.send_all(b"x" * 65536)
            except BaseException as exc:
                stopped.append((type(exc).__name__, trio.current_time()))
                raise
            finally:
                done.set()

        return 200, {}, body

    bind = await start_server(nursery, app, limits=Limits(write_timeout=1.0))
    gc.collect()  # earlier tests\' garbage sockets stay out of the baseline
    baseline = fd_count()
    with trio.fail_after(6):
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        await sock.connect((bind.host, bind.port))
        client = trio.SocketStream(sock)
        await client.send_all(GET)
        await read_until(client, b"\r\n\r\n")  # the head; then the client stops reading
        await done.wait()
        (name, when), = stopped
        assert name in ("Cancelled", "BrokenResourceError")
        assert 0.9 <= when - write_started[0] <= 2.5, when - write_started[0]  # the stuck write
        _, how = await read_until_eof(client)  # what the kernel held, then the end
        assert how in ("eof", "reset")
        await client.aclose()
    await fds_settle_at(baseline)


# ------------------------------------------------------------------ max_connections


async def test_at_max_connections_new_connections_wait_in_the_backlog(nursery: trio.Nursery) -> None:
    """With two slots taken by idle keep-alive clients, a third client's TCP handshake
    completes (the kernel's backlog) but the server does not accept it — no app call, no
    response — until a slot frees up; then it is served at once, not failed."""
    calls: list[str] = []

    async def app(env: dict[str, Any]) -> Any:
        calls.append(env["PATH_INFO"])
        return 200, {}, [env["PATH_INFO"].encode()]

    bind = await start_server(nursery, app, limits=Limits(max_connections=2, keepalive_timeout=30))
    with trio.fail_after(6):
        a, b = await open_client(bind), await open_client(bind)
        for client, path in ((a, b"/a"), (b, b"/b")):
            await client.send_all(b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n")
            await read_until(client, b"\r\n\r\n" + path)
        c = await open_client(bind)  # connect() succeeds: the kernel completed the handshake
        await c.send_all(b"GET /c HTTP/1.1\r\nHost: x\r\n\r\n")
        with trio.move_on_after(0.5):
            early = await c.receive_some(100)
            pytest.fail(f"served beyond max_connections: {early!r}")
        assert calls == ["/a", "/b"]
        await a.aclose()  # frees a slot
        start = trio.current_time()
        await read_until(c, b"\r\n\r\n/c")
        assert trio.current_time() - start < 1.0
        assert calls == ["/a", "/b", "/c"]
        for client in (b, c):
            await client.aclose()


# ---------------------------------------------------------------------- max_body_size


async def send_forever(client: trio.abc.Stream, chunk: bytes, sent: list[int]) -> None:
    try:
        while True:
            await client.send_all(chunk)
            sent[0] += len(chunk)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


async def test_declared_body_over_max_body_size_gets_413_at_once(nursery: trio.Nursery) -> None:
    """``Content-Length`` over the limit: 413 right after the head, the app never called, and
    the connection closed while the client is still sending — the body is not read through."""
    calls: list[int] = []

    async def app(env: dict[str, Any]) -> Any:
        calls.append(1)
        return 200, {}, [b""]

    bind = await start_server(nursery, app, limits=Limits(max_body_size=1000))
    gc.collect()  # earlier tests\' garbage sockets stay out of the baseline
    baseline = fd_count()
    sent = [0]
    with trio.fail_after(6):
        client = await open_client(bind)
        await client.send_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % 10**15)
        async with trio.open_nursery() as inner:
            inner.start_soon(send_forever, client, b"x" * 65536, sent)
            head = await read_until(client, b"\r\n\r\n")
            answered = trio.current_time()
            status, headers, _ = split_head(head)
            assert status == 413 and headers["connection"] == ["close"]
            assert calls == []
            # The server half-closes after the 413 and discards what arrives for at most about
            # a second (so a close with unread input cannot reset the 413 away), then closes:
            # the endless upload fails.
        assert trio.current_time() - answered <= 2.0
        await client.aclose()
    await fds_settle_at(baseline)


async def test_chunked_body_over_max_body_size_gets_413_without_reading_the_rest(nursery: trio.Nursery) -> None:
    seen: list[str] = []

    async def app(env: dict[str, Any]) -> Any:
        try:
            await env["rack.input"].read_all()
        except trio.BrokenResourceError:
            seen.append("BrokenResourceError")
            raise
        return 200, {}, [b"read it all?"]

    bind = await start_server(nursery, app, limits=Limits(max_body_size=100_000))
    gc.collect()  # earlier tests\' garbage sockets stay out of the baseline
    baseline = fd_count()
    sent = [0]
    with trio.fail_after(6):
        client = await open_client(bind)
        await client.send_all(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"%x\r\n%s\r\n" % (8192, b"y" * 8192)
        async with trio.open_nursery() as inner:
            inner.start_soon(send_forever, client, chunk, sent)
            head = await read_until(client, b"\r\n\r\n")
            assert split_head(head)[0] == 413
            await read_until_eof(client)
            inner.cancel_scope.cancel()
        await client.aclose()
    assert seen == ["BrokenResourceError"]
    await fds_settle_at(baseline)


# --------------------------------------------------- bytes after "Connection: close" (issue 3)


async def test_bytes_after_connection_close_never_take_the_listener_down(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    """The Trio-based peer stops accepting for good after one client sends more bytes after a
    ``Connection: close`` request.  Twenty such clients at once, each with a different tail
    (a second request, junk, a flood), each get exactly one response; the next client is
    served; nothing is logged at ERROR."""
    slow = trio.Event()

    async def app(env: dict[str, Any]) -> Any:
        if env["PATH_INFO"] == "/slow":
            await slow.wait()
        return 200, {}, [b"ok"]

    bind = await start_server(nursery, app)
    gc.collect()  # earlier tests\' garbage sockets stay out of the baseline
    baseline = fd_count()
    tails = [b"GET /second HTTP/1.1\r\nHost: x\r\n\r\n", b"\x00\xff" * 5000, b"GARBAGE\r\n\r\n", b"z" * 500_000]
    results: list[bytes] = []

    async def one(i: int) -> None:
        client = await open_client(bind)
        path = b"/slow" if i % 2 else b"/"
        try:
            await client.send_all(b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            await client.send_all(tails[i % len(tails)])
        except trio.BrokenResourceError:
            pass
        data, _ = await read_until_eof(client)
        results.append(data)
        await client.aclose()

    with trio.fail_after(8):
        async with trio.open_nursery() as clients:
            for i in range(20):
                clients.start_soon(one, i)
            await trio.sleep(0.2)
            slow.set()
        assert len(results) == 20
        for data in results:
            assert data.count(b"HTTP/1.1 ") == 1 and data.startswith(b"HTTP/1.1 200 "), data[:200]
        client = await open_client(bind)
        await client.send_all(GET)
        await read_until(client, b"\r\n\r\nok")
        await client.aclose()
    await fds_settle_at(baseline)
    no_error_logs(caplog)
