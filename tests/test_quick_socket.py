"""QuickSocketStream (net/quick_socket.py): the TCP stream under every TLS connection, whose
send_all and receive_some try one non-blocking system call before a trip through Trio.

Over real loopback sockets (the quick paths are system calls): trio's stream conformance
checks, plain and under ``trio.SSLStream``; writes the kernel takes only in part; a reset
peer; a socket closed under a waiting read; cancellation before and during a call; the bound
on quick calls in a row (a fast peer cannot keep the other tasks from running); large bodies
both ways through TLS; and the server's TLS connections built on it.
"""

from __future__ import annotations

import hashlib
import socket
import ssl
import struct
from typing import Any

import pytest
import trio
import trio.testing
import trustme

from e2e_support import TLSFiles, open_client, read_until, start_server, ticks_of_another_task_during
from e2e_support import tcp_pair as _tcp_pair
from trio_rack.net.quick_socket import QUICK_CALLS, QuickSocketStream
from trio_rack.net.tls import accept_tls, lighten_locks


async def _quick_pair() -> tuple[QuickSocketStream, QuickSocketStream]:
    client, server = await _tcp_pair()
    return QuickSocketStream(client), QuickSocketStream(server)


def _contexts() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    return server_ctx, client_ctx


async def _tls_pair() -> tuple[trio.SSLStream[QuickSocketStream], trio.SSLStream[QuickSocketStream]]:
    """(client, server) TLS streams, both on QuickSocketStreams over one loopback connection,
    handshaken; the server's inner locks lightened as the server's are."""
    server_ctx, client_ctx = _contexts()
    raw_client, raw_server = await _quick_pair()
    client = trio.SSLStream(raw_client, client_ctx, server_hostname="localhost")
    server = trio.SSLStream(raw_server, server_ctx, server_side=True)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.do_handshake)
        await client.do_handshake()
    lighten_locks(server)
    return client, server


async def _receive_exactly(stream: trio.abc.ReceiveStream, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = await stream.receive_some(65536)
        assert chunk, f"EOF after {len(data)} of {n} bytes"
        data.extend(chunk)
    return bytes(data)


# ------------------------------------------------------------------ the stream contract


class _SchedulePointAfter(trio.abc.Stream):
    """``stream`` with a schedule point (not a cancellation point) after each call: what the
    quick paths deliberately skip, and what trio's checks require of every call (the test
    below pins where the quick paths do schedule).  All else is ``stream``'s own behaviour."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        try:
            await self.stream.send_all(data)
        finally:
            await trio.lowlevel.cancel_shielded_checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        try:
            return await self.stream.receive_some(max_bytes)
        finally:
            await trio.lowlevel.cancel_shielded_checkpoint()

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self.stream.aclose()


async def _checked_quick_pair() -> tuple[trio.abc.Stream, trio.abc.Stream]:
    client, server = await _quick_pair()
    return _SchedulePointAfter(client), _SchedulePointAfter(server)


async def _checked_tls_pair() -> tuple[trio.abc.Stream, trio.abc.Stream]:
    client, server = await _tls_pair()
    return _SchedulePointAfter(client), _SchedulePointAfter(server)


async def test_it_passes_trios_two_way_stream_checks() -> None:
    await trio.testing.check_two_way_stream(_checked_quick_pair, None)


async def test_tls_on_it_passes_trios_two_way_stream_checks() -> None:
    await trio.testing.check_two_way_stream(_checked_tls_pair, None)


async def test_every_call_is_a_cancellation_point_and_every_16th_a_schedule_point() -> None:
    """The one departure from trio's stream checks, and its bound: a call the kernel serves at
    once does not yield to the scheduler, but it is always a cancellation point, and no more
    than QUICK_CALLS - 1 calls in a row in each direction skip the scheduler."""
    client, server = await _quick_pair()
    async with client, server:
        task: Any = trio.lowlevel.current_task()
        await client.send_all(b"q" * 64)
        await trio.sleep(0.05)
        for name, call in (("send", lambda: server.send_all(b"x")), ("receive", lambda: server.receive_some(1))):
            schedules = []
            for _ in range(2 * QUICK_CALLS):
                cancel_points, schedule_points = task._cancel_points, task._schedule_points
                await call()
                assert task._cancel_points > cancel_points, name
                schedules.append(task._schedule_points > schedule_points)
            expected = ([False] * (QUICK_CALLS - 1) + [True]) * 2
            assert schedules == expected, name


async def test_it_finds_the_socket_for_code_that_walks_down_to_it() -> None:
    from trio_rack.net.transport import socket_fileno

    client, server = await _tls_pair()
    async with client, server:
        assert server.transport_stream.socket is server.transport_stream.stream.socket
        assert socket_fileno(server) == server.transport_stream.stream.socket.fileno() != -1


async def test_a_bad_max_bytes_is_refused() -> None:
    client, server = await _quick_pair()
    async with client, server:
        with pytest.raises(ValueError):
            await server.receive_some(0)


# ---------------------------------------------------------------------------- sending


async def test_a_send_the_kernel_takes_only_in_part_arrives_whole_and_in_order() -> None:
    client, server = await _quick_pair()
    async with client, server:
        server.stream.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # a part at first
        first = bytes(range(256)) * 3000  # 768,000 bytes
        got = b""

        async def read() -> None:
            nonlocal got
            got = await _receive_exactly(client, len(first) + 4)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            await server.send_all(first)
            await server.send_all(b"tail")
        assert got == first + b"tail"


async def test_a_send_on_a_reset_connection_is_a_broken_resource() -> None:
    client, server = await _tcp_pair()
    quick = QuickSocketStream(server)
    async with quick:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await client.aclose()  # RST
        with pytest.raises(trio.BrokenResourceError) as caught:
            for _ in range(100):  # the reset may be seen at the first send or a later one
                await quick.send_all(b"x" * 1000)
                await trio.sleep(0.01)
        assert isinstance(caught.value.__cause__, OSError)


async def test_a_send_after_close_is_a_closed_resource() -> None:
    client, server = await _quick_pair()
    async with client:
        await server.send_all(b"one")
        assert await client.receive_some(10) == b"one"
        await server.aclose()  # its descriptor number may now belong to anything else
        with pytest.raises(trio.ClosedResourceError):
            await server.send_all(b"two")


async def test_a_send_in_a_cancelled_scope_sends_nothing() -> None:
    client, server = await _quick_pair()
    async with client, server:
        with trio.CancelScope() as scope:
            scope.cancel()
            await server.send_all(b"never")
        assert scope.cancelled_caught
        await server.send_all(b"after")
        assert await client.receive_some(10) == b"after"


async def test_a_send_blocked_on_a_full_socket_is_cancellable() -> None:
    client, server = await _quick_pair()
    async with client, server:
        server.stream.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        with trio.move_on_after(0.2) as scope:
            await server.send_all(b"x" * (8 * 1024 * 1024))  # nobody reads: it must wait
        assert scope.cancelled_caught


async def test_two_tasks_sending_at_once_is_a_busy_resource() -> None:
    client, server = await _quick_pair()
    async with client, server:
        server.stream.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.send_all, b"x" * (8 * 1024 * 1024))
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(trio.BusyResourceError):
                await server.send_all(b"y")
            nursery.cancel_scope.cancel()


async def test_a_run_of_quick_sends_still_lets_the_other_tasks_run() -> None:
    """Sends the kernel takes at once skip the scheduler, but not QUICK_CALLS in a row."""
    assert QUICK_CALLS == 16  # (the counts below)
    sends = 64
    client, server = await _quick_pair()
    async with client, server:
        ran = await ticks_of_another_task_during(lambda: _repeat(sends, server.send_all, b"x"))
        # every QUICK_CALLS-th send goes through SocketStream.send_all: 4 passes in 64 sends,
        # and trio's randomised run order may move the other task's count by one either way
        assert 3 <= ran <= 6
        assert await _receive_exactly(client, sends) == b"x" * sends


# -------------------------------------------------------------------------- receiving


async def test_a_read_waits_for_bytes_and_gets_them() -> None:
    client, server = await _quick_pair()
    async with client, server:
        got = b""

        async def read() -> None:
            nonlocal got
            got = await server.receive_some(100)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            await trio.testing.wait_all_tasks_blocked()  # nothing there: it waits on the socket
            assert got == b""
            await client.send_all(b"hello")
        assert got == b"hello"


async def test_a_read_of_a_reset_connection_is_a_broken_resource() -> None:
    client, server = await _tcp_pair()
    quick = QuickSocketStream(server)
    async with quick:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await client.send_all(b"unread")  # unread input makes the close a reset
        await client.aclose()
        with trio.fail_after(5), pytest.raises(trio.BrokenResourceError) as caught:
            while await quick.receive_some(100):
                pass
        assert isinstance(caught.value.__cause__, ConnectionResetError)


async def test_closing_the_socket_wakes_a_waiting_read_with_closed_resource() -> None:
    client, server = await _quick_pair()
    async with client:
        failure: list[BaseException] = []

        async def read() -> None:
            try:
                await server.receive_some(100)
            except trio.ClosedResourceError as exc:
                failure.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            await trio.testing.wait_all_tasks_blocked()
            await server.aclose()
        assert failure


async def test_a_cancelled_read_loses_no_bytes() -> None:
    client, server = await _quick_pair()
    async with client, server:
        with trio.CancelScope() as before:
            before.cancel()
            await client.send_all(b"kept")
            await trio.sleep(0.05)  # (cancelled: returns at once) the bytes are there
            await server.receive_some(100)
        assert before.cancelled_caught
        with trio.move_on_after(0.05):  # during: nothing more arrives, the wait is cancelled
            assert await server.receive_some(100) == b"kept"
            await server.receive_some(100)
        await client.send_all(b" and more")
        assert await server.receive_some(100) == b" and more"


async def test_two_tasks_reading_at_once_is_a_busy_resource() -> None:
    client, server = await _quick_pair()
    async with client, server:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.receive_some, 100)
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(trio.BusyResourceError):
                await server.receive_some(100)
            nursery.cancel_scope.cancel()


async def test_a_run_of_quick_reads_still_lets_the_other_tasks_run() -> None:
    """A fast peer: its bytes are always there, so no read waits; every QUICK_CALLS-th read
    still goes through SocketStream.receive_some and its scheduler pass."""
    reads = 64
    client, server = await _quick_pair()
    async with client, server:
        await client.send_all(b"y" * (reads * 10))
        await trio.sleep(0.05)  # all of it in the server's receive buffer
        got = bytearray()

        async def read_all() -> None:
            for _ in range(reads):
                got.extend(await server.receive_some(10))

        ran = await ticks_of_another_task_during(read_all)
        assert bytes(got) == b"y" * (reads * 10)
        assert 3 <= ran <= 6


# ------------------------------------------------------------------------- through TLS


async def test_large_bodies_both_ways_through_tls_arrive_intact() -> None:
    client, server = await _tls_pair()
    up = bytes(range(256)) * 32768  # 8 MiB each way, at once
    down = up[::-1]
    got: dict[str, bytes] = {}

    async def receive(name: str, stream: trio.abc.ReceiveStream) -> None:
        got[name] = await _receive_exactly(stream, len(up))

    async with client, server:
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(receive, "server", server)
                nursery.start_soon(receive, "client", client)
                nursery.start_soon(client.send_all, up)
                nursery.start_soon(server.send_all, down)
    assert hashlib.sha256(got["server"]).digest() == hashlib.sha256(up).digest()
    assert hashlib.sha256(got["client"]).digest() == hashlib.sha256(down).digest()


async def test_a_run_of_quick_tls_sends_still_lets_the_other_tasks_run() -> None:
    """Each TLS send_all ends in one transport send (so SSLStream itself never yields there):
    a streamed body of many small chunks to a fast client still lets the other tasks run at
    every QUICK_CALLS-th chunk."""
    sends = 64
    client, server = await _tls_pair()
    async with client, server:
        ran = await ticks_of_another_task_during(lambda: _repeat(sends, server.send_all, b"chunk"))
        assert 3 <= ran <= 6
        assert await _receive_exactly(client, 5 * sends) == b"chunk" * sends


async def test_a_fast_tls_peer_does_not_keep_the_other_tasks_from_running() -> None:
    """The client's records are all in the server's receive buffer before it reads, so no
    read waits for the socket; the other tasks run all the same."""
    client, server = await _tls_pair()
    async with client, server:
        body = b"z" * (1024 * 1024)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.send_all, body)
            await trio.sleep(0.2)  # all sent (the loopback buffers take it)
            got = bytearray()

            async def read_all() -> None:
                while len(got) < len(body):
                    got.extend(await server.receive_some(65536))

            ran = await ticks_of_another_task_during(read_all)
        assert bytes(got) == body
        assert ran >= len(body) // (16 * 1024) // QUICK_CALLS  # at least once per 16 records


async def test_a_reset_under_tls_is_a_broken_resource() -> None:
    client, server = await _tls_pair()
    async with server:
        raw = client.transport_stream.stream
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await client.send_all(b"unread")
        await raw.aclose()  # RST, no close_notify
        with trio.fail_after(5), pytest.raises(trio.BrokenResourceError):
            for _ in range(100):
                await server.send_all(b"x" * 1000)
                await trio.sleep(0.01)


async def test_a_tls_send_cancelled_mid_way_breaks_the_stream_as_trio_documents() -> None:
    client, server = await _tls_pair()
    async with client, server:
        server.transport_stream.stream.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        with trio.move_on_after(0.2) as scope:
            await server.send_all(b"x" * (8 * 1024 * 1024))  # the client does not read
        assert scope.cancelled_caught
        with pytest.raises(trio.BrokenResourceError):  # "may leave the SSLStream unusable"
            await server.send_all(b"more")


async def test_a_tls_read_cancelled_while_waiting_loses_no_bytes() -> None:
    client, server = await _tls_pair()
    async with client, server:
        with trio.move_on_after(0.05) as scope:
            await server.receive_some(100)
        assert scope.cancelled_caught
        await client.send_all(b"after the cancelled read")
        assert await _receive_exactly(server, 24) == b"after the cancelled read"


# ------------------------------------------------------------------ the server's TLS


async def test_accept_tls_builds_the_tls_stream_on_a_quick_socket_stream(tls_files: TLSFiles) -> None:
    from trio_rack.net.tls import make_server_context

    ctx = make_server_context(tls_files.cert_pem, tls_files.key_pem)
    client_ctx = ssl.create_default_context()
    tls_files.ca.configure_trust(client_ctx)
    raw_client, raw_server = await _tcp_pair()
    async with raw_client, raw_server:
        client = trio.SSLStream(raw_client, client_ctx, server_hostname="localhost")
        result: list[Any] = []

        async def accept() -> None:
            result.append(await accept_tls(raw_server, ctx, handshake_timeout=5, https_url="https://x"))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(accept)
            await client.do_handshake()
        tls = result[0]
        assert isinstance(tls, trio.SSLStream)
        assert type(tls.transport_stream) is QuickSocketStream
        assert tls.transport_stream.stream is raw_server
        await client.send_all(b"ping")
        assert await tls.receive_some(10) == b"ping"
        await tls.send_all(b"pong")
        assert await client.receive_some(10) == b"pong"


async def test_a_big_upload_and_a_big_download_over_https_with_hellos_beside_them(tls_files: TLSFiles) -> None:
    size = 6 * 1024 * 1024

    async def app(env: dict[str, Any]) -> Any:
        if env["PATH_INFO"] == "/echo":
            body = await env["rack.input"].read_all()
            return 200, {"content-type": "application/octet-stream"}, [hashlib.sha256(body).hexdigest().encode()]
        if env["PATH_INFO"] == "/big":

            async def chunks() -> Any:
                for i in range(size // 65536):
                    yield bytes([i % 256]) * 65536

            return 200, {"content-type": "application/octet-stream"}, chunks()
        return 200, {"content-type": "text/plain"}, [b"hello"]

    upload = bytes(range(256)) * (size // 256)
    expected_download = b"".join(bytes([i % 256]) * 65536 for i in range(size // 65536))
    results: dict[str, Any] = {}

    async def upload_client(bind: Any) -> None:
        stream = await open_client(bind, tls_files)
        async with stream:
            await stream.send_all(
                b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n" % len(upload) + upload
            )
            data = await read_until(stream, hashlib.sha256(upload).hexdigest().encode())
            results["upload"] = data

    async def download_client(bind: Any) -> None:
        stream = await open_client(bind, tls_files)
        async with stream:
            await stream.send_all(b"GET /big HTTP/1.1\r\nhost: x\r\n\r\n")
            data = await read_until(stream, b"\r\n\r\n")
            head, _, rest = data.partition(b"\r\n\r\n")
            body = bytearray()
            buf = bytearray(rest)
            while True:  # chunked
                while b"\r\n" not in buf:
                    buf.extend(await stream.receive_some(65536))
                line, _, after = bytes(buf).partition(b"\r\n")
                n = int(line, 16)
                buf = bytearray(after)
                while len(buf) < n + 2:
                    buf.extend(await stream.receive_some(65536))
                body.extend(buf[:n])
                buf = buf[n + 2 :]
                if n == 0:
                    break
            results["download"] = bytes(body)

    async def hello_client(bind: Any) -> None:
        stream = await open_client(bind, tls_files)
        async with stream:
            for _ in range(20):
                await stream.send_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
                assert (await read_until(stream, b"hello")).startswith(b"HTTP/1.1 200")
        results["hellos"] = 20

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            bind = await start_server(nursery, app, tls=tls_files)
            async with trio.open_nursery() as clients:
                clients.start_soon(upload_client, bind)
                clients.start_soon(download_client, bind)
                clients.start_soon(hello_client, bind)
            nursery.cancel_scope.cancel()
    assert results["upload"].startswith(b"HTTP/1.1 200")
    assert hashlib.sha256(results["download"]).digest() == hashlib.sha256(expected_download).digest()
    assert results["hellos"] == 20


# ---------------------------------------------------------------------------- helpers


async def _repeat(n: int, fn: Any, *args: Any) -> None:
    for _ in range(n):
        await fn(*args)
