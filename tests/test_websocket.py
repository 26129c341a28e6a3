"""WebSockets over real sockets, plain and TLS, against real clients.

Peers: ``trio-websocket`` in-process (trio-native), the ``websockets`` library (asyncio) in a
subprocess running a battery of scenarios, and a raw socket with wsproto's frame codec for
what no polite client does (a frame pipelined behind the handshake, a silent peer, a flood).
Every wait is bounded by ``trio.fail_after``; nothing sleeps to synchronise.
"""

from __future__ import annotations

import gc
import json
import os
import socket
import subprocess
import sys
import zlib
from typing import Any

import pytest
import trio
import trio.testing
import trio_websocket
from wsproto.frame_protocol import Frame, FrameProtocol, Opcode

from e2e_support import (
    TLSFiles,
    client_ssl_context,
    fd_count,
    load_example,
    next_frame,
    open_client,
    read_until,
    split_head,
    start_server,
)
from trio_rack import Limits, websocket
from trio_rack.websocket import HandshakeError, WebSocket

KEY = "dGhlIHNhbXBsZSBub25jZQ=="
ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="  # RFC 6455 §1.3's example


class Recorder:
    """The test app: routes by path; remembers every WebSocket it accepted."""

    def __init__(self) -> None:
        self.sockets: list[WebSocket] = []
        self.done = trio.Event()
        self.release = trio.Event()

    async def __call__(self, env: dict[str, Any]) -> Any:
        path = env["PATH_INFO"]
        options: dict[str, Any] = {"subprotocols": ["chat.v2", "chat.v1"]}
        if path == "/idle":
            options.update(ping_interval=0.1, idle_timeout=0.5, close_timeout=0.5)
        if path == "/slow":
            options.update(max_queue=2)
        try:
            context = websocket.accept(env, **options)
        except HandshakeError as exc:
            return exc.response
        try:
            async with context as ws:
                self.sockets.append(ws)
                await self.handle(path, ws)
        finally:
            self.done.set()
        return -1, {}, []

    async def handle(self, path: str, ws: WebSocket) -> None:
        if path == "/slow":
            await self.release.wait()  # read nothing until told
        if path == "/server-ping":
            await ws.ping(b"from-server")
            await ws.send_message("pong received")
        if path.startswith("/close/"):
            await ws.get_message()
            await ws.aclose(int(path.rsplit("/", 1)[1]), "app closes")
            return
        if path == "/return":
            await ws.get_message()
            return
        if path == "/raise":
            await ws.get_message()
            raise RuntimeError("app failure")
        async for message in ws:
            await ws.send_message(message)


def url(bind: Any, path: str, tls: TLSFiles | None) -> str:
    return f"{'wss' if tls else 'ws'}://127.0.0.1:{bind.port}{path}"


def ws_connect(bind: Any, path: str, tls: TLSFiles | None, **kwargs: Any) -> Any:
    ctx = client_ssl_context(tls) if tls else None
    return trio_websocket.open_websocket_url(url(bind, path, tls), ssl_context=ctx, **kwargs)


# ------------------------------------------------------------------------- raw client


class RawClient:
    """A websocket client written by hand: handshake bytes in, wsproto's frame codec out."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.codec = FrameProtocol(client=True, extensions=[])
        self.head = b""

    @staticmethod
    def request(path: str = "/echo", *, key: str = KEY, version: str = "13", extra: str = "") -> bytes:
        return (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: {version}\r\n{extra}\r\n"
        ).encode()

    async def read_head(self) -> tuple[int, dict[str, list[str]]]:
        data = await read_until(self.stream, b"\r\n\r\n")
        status, headers, rest = split_head(data)
        self.codec.receive_bytes(rest)
        return status, headers

    async def next_frame(self) -> Frame | None:
        """The next frame, or None at EOF."""
        return await next_frame(self.stream, self.codec)


async def raw_connect(bind: Any, tls: TLSFiles | None) -> RawClient:
    return RawClient(await open_client(bind, tls))


# --------------------------------------------------------------------------- echo etc.


@pytest.mark.parametrize("scheme", ["ws", "wss"])
async def test_echo_text_binary_large_and_subprotocol(scheme: str, tls_files: TLSFiles) -> None:
    tls = tls_files if scheme == "wss" else None
    app = Recorder()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            bind = await start_server(nursery, app, tls=tls)
            offered = ["chat.v1", "chat.v2"]
            async with ws_connect(bind, "/echo", tls, subprotocols=offered, max_message_size=2**21) as client:
                assert client.subprotocol == "chat.v2"  # the server's preference wins
                await client.send_message("héllo ✓")
                assert await client.get_message() == "héllo ✓"
                await client.send_message(b"\x00\xffbinary")
                assert await client.get_message() == b"\x00\xffbinary"
                big = os.urandom(1024 * 1024 - 1)  # just under the default 1 MiB limit
                await client.send_message(big)
                assert await client.get_message() == big
                await client.ping(b"client-ping")  # returns when the pong arrived
            assert app.sockets[0].close_code == 1000
            assert app.sockets[0].subprotocol == "chat.v2"
            nursery.cancel_scope.cancel()


async def test_no_common_subprotocol_means_none() -> None:
    app = Recorder()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            bind = await start_server(nursery, app)
            async with ws_connect(bind, "/echo", None, subprotocols=["other"]) as client:
                assert client.subprotocol is None
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize("scheme", ["ws", "wss"])
async def test_frame_pipelined_behind_the_handshake_is_not_lost(scheme: str, tls_files: TLSFiles) -> None:
    """Handshake and first frame in one write: the hijacked stream replays the frame."""
    tls = tls_files if scheme == "wss" else None
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            bind = await start_server(nursery, Recorder(), tls=tls)
            raw = await raw_connect(bind, tls)
            await raw.stream.send_all(RawClient.request() + bytes(raw.codec.send_data("first!")))
            status, headers = await raw.read_head()
            assert status == 101
            assert headers["sec-websocket-accept"] == [ACCEPT]
            assert headers["upgrade"] == ["websocket"]
            frame = await raw.next_frame()
            assert frame is not None and (frame.opcode, frame.payload) == (Opcode.TEXT, "first!")
            await raw.stream.aclose()
            nursery.cancel_scope.cancel()


async def test_fragmented_message_with_a_character_split_across_frames() -> None:
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            bind = await start_server(nursery, Recorder())
            raw = await raw_connect(bind, None)
            await raw.stream.send_all(RawClient.request())
            assert (await raw.read_head())[0] == 101
            text = "fragment ✓ done".encode()
            cut = text.index("✓".encode()) + 1  # in the middle of a 3-byte character
            codec = raw.codec
            # hand-made continuation: TEXT(fin=0) + CONTINUATION(fin=0) + CONTINUATION(fin=1)
            frames = codec._serialize_frame(Opcode.TEXT, text[:cut], fin=False)
            frames += codec._serialize_frame(Opcode.PING, b"in-between")  # control frames may interleave
            frames += codec._serialize_frame(Opcode.CONTINUATION, text[cut:-2], fin=False)
            frames += codec._serialize_frame(Opcode.CONTINUATION, text[-2:], fin=True)
            await raw.stream.send_all(bytes(frames))
            pong = await raw.next_frame()
            assert pong is not None and (pong.opcode, pong.payload) == (Opcode.PONG, b"in-between")
            echo = await raw.next_frame()
            assert echo is not None and (echo.opcode, echo.payload) == (Opcode.TEXT, "fragment ✓ done")
            await raw.stream.aclose()
            nursery.cancel_scope.cancel()


async def test_server_ping_waits_for_the_pong() -> None:
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            bind = await start_server(nursery, Recorder())
            async with ws_connect(bind, "/server-ping", None) as client:  # trio-websocket pongs by itself
                assert await client.get_message() == "pong received"
            nursery.cancel_scope.cancel()


# ----------------------------------------------------------------------------- closing


@pytest.mark.parametrize(
    ("path", "code"), [("/return", 1000), ("/raise", 1011), ("/close/4002", 4002)]
)
async def test_the_app_ending_sends_the_right_close_code(
    path: str, code: int, caplog: pytest.LogCaptureFixture
) -> None:
    app = Recorder()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            bind = await start_server(nursery, app)
            async with ws_connect(bind, path, None) as client:
                await client.send_message("go")
                with pytest.raises(trio_websocket.ConnectionClosed) as closed:
                    await client.get_message()
                assert closed.value.reason.code == code
            await app.done.wait()
            assert app.sockets[0].close_code == code  # the client echoed our code
            nursery.cancel_scope.cancel()
    if path == "/raise":
        assert "app failure" in caplog.text  # the exception still reaches the server's log


async def test_the_client_closing_ends_the_loop_and_is_echoed() -> None:
    app = Recorder()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            bind = await start_server(nursery, app)
            async with ws_connect(bind, "/echo", None) as client:
                await client.aclose(4005, "client done")
                assert client.closed is not None and client.closed.code == 4005
            await app.done.wait()
            assert (app.sockets[0].close_code, app.sockets[0].close_reason) == (4005, "client done")
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize("scheme", ["ws", "wss"])
async def test_protocol_error_fails_the_connection_at_once(scheme: str, tls_files: TLSFiles) -> None:
    """A reserved opcode: close 1002, then the server ends the TCP connection itself, at once
    (RFC 6455 §7.1.1, §7.1.7), though this client neither replies nor closes first; over TLS
    too.  (The peer that never closes is tested in test_websocket_close.py.)"""
    tls = tls_files if scheme == "wss" else None
    app = Recorder()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            bind = await start_server(nursery, app, tls=tls)
            raw = await raw_connect(bind, tls)
            await raw.stream.send_all(RawClient.request())
            assert (await raw.read_head())[0] == 101
            await raw.stream.send_all(bytes([0x83, 0x80]) + b"\x00\x00\x00\x00")  # opcode 3, masked, empty
            start = trio.current_time()
            frame = await raw.next_frame()
            assert frame is not None and frame.opcode is Opcode.CLOSE and frame.payload[0] == 1002
            assert await raw.next_frame() is None  # the server's EOF, without our reply or close
            assert trio.current_time() - start < 2  # not after the 3 s close timeout
            await raw.stream.aclose()  # what a client does on EOF: the server is done at once
            with trio.fail_after(0.5):
                await app.done.wait()
            assert app.sockets[0].close_code == 1002
            nursery.cancel_scope.cancel()


async def test_oversize_message_closes_with_1009() -> None:
    app = Recorder()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            bind = await start_server(nursery, app)
            async with ws_connect(bind, "/echo", None) as client:
                await client.send_message(b"x" * (1024 * 1024 + 1))
                with pytest.raises(trio_websocket.ConnectionClosed) as closed:
                    await client.get_message()
                assert closed.value.reason.code == 1009
            await app.done.wait()
            assert app.sockets[0].close_code == 1009
            nursery.cancel_scope.cancel()


async def test_silent_peer_is_pinged_then_closed_for_idleness() -> None:
    """A peer that never answers: pings every 0.1 s, then 1011 "idle timeout" after 0.5 s."""
    app = Recorder()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            bind = await start_server(nursery, app)
            raw = await raw_connect(bind, None)
            await raw.stream.send_all(RawClient.request("/idle"))
            assert (await raw.read_head())[0] == 101
            start = trio.current_time()
            opcodes = []
            while (frame := await raw.next_frame()) is not None:
                opcodes.append(frame.opcode)
                if frame.opcode is Opcode.CLOSE:
                    assert frame.payload == (1011, "idle timeout")
            assert opcodes.count(Opcode.PING) >= 3 and opcodes[-1] is Opcode.CLOSE
            assert 0.45 <= trio.current_time() - start < 2.5  # idle 0.5 s, then close_timeout 0.5 s at most
            await app.done.wait()
            assert app.sockets[0].close_code == 1011
            await raw.stream.aclose()
            nursery.cancel_scope.cancel()


async def test_slow_reader_applies_backpressure_instead_of_buffering() -> None:
    """The app reads nothing: the reader queues max_queue (2) messages, then blocks and stops
    reading the socket (the rest waits in kernel buffers, where TCP flow control pushes back
    on the client).  Once the app reads, every message arrives, in order."""
    app = Recorder()
    count = 40
    messages = [bytes([i]) * 65536 for i in range(count)]
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            bind = await start_server(nursery, app)
            raw = await raw_connect(bind, None)
            await raw.stream.send_all(RawClient.request("/slow"))
            assert (await raw.read_head())[0] == 101

            async def flood() -> None:
                for message in messages:
                    await raw.stream.send_all(bytes(raw.codec.send_data(message)))

            nursery.start_soon(flood)
            await trio.testing.wait_all_tasks_blocked(cushion=0.05)
            stats = app.sockets[0]._messages_in.statistics()
            assert stats.current_buffer_used == 2  # max_queue messages, and no more
            assert stats.tasks_waiting_send == 1  # the reader holds one more and reads nothing
            app.release.set()  # the app echoes now; nothing was lost or reordered
            for message in messages:
                frame = await raw.next_frame()
                payload = frame.payload if frame is not None else b""
                while frame is not None and not frame.message_finished:
                    frame = await raw.next_frame()
                    payload += frame.payload if frame is not None else b""
                assert payload == message
            await raw.stream.aclose()
            nursery.cancel_scope.cancel()


# --------------------------------------------------------------------------- handshakes


@pytest.mark.parametrize(
    ("request_bytes", "status", "needle"),
    [
        (b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n", 426, b"WebSocket endpoint"),
        (RawClient.request(version="8"), 426, b"version 13"),
        (RawClient.request(key="c2hvcnQ="), 400, b"Sec-WebSocket-Key"),
        (RawClient.request().replace(b"GET", b"POST", 1), 400, b"must be GET"),
        (RawClient.request().replace(b"Connection: Upgrade", b"Connection: keep-alive"), 400, b"Connection: Upgrade"),
        (RawClient.request().replace(b"HTTP/1.1", b"HTTP/1.0"), 400, b"HTTP/1.1"),
    ],
    ids=["plain-http", "version-8", "short-key", "post", "no-connection-upgrade", "http-1.0"],
)
async def test_bad_handshakes_are_refused(request_bytes: bytes, status: int, needle: bytes) -> None:
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            bind = await start_server(nursery, Recorder())
            client = await open_client(bind)
            await client.send_all(request_bytes)
            data = await read_until(client, needle)
            got, headers, _ = split_head(data)
            assert got == status
            if status == 426:  # RFC 9110 §15.5.22 and RFC 6455 §4.4
                assert headers["upgrade"] == ["websocket"]
                assert headers["sec-websocket-version"] == ["13"]
            await client.aclose()
            nursery.cancel_scope.cancel()


def test_accept_refuses_before_touching_the_connection() -> None:
    def hijack() -> Any:
        raise AssertionError("hijacked a refused request")

    env = {"REQUEST_METHOD": "GET", "SERVER_PROTOCOL": "HTTP/1.1", "rack.hijack": hijack}
    with pytest.raises(HandshakeError) as refused:
        websocket.accept(env)
    assert refused.value.status == 426
    status, headers, _ = refused.value.response
    assert status == 426 and callable(headers["rack.hijack"])  # a partial hijack: upgrade reaches the wire


# ---------------------------------------------------------------------------- shutdown


async def test_shutdown_closes_100_websockets_with_1001_and_leaks_no_fd() -> None:
    app = load_example("websocket_echo").app
    gc.collect()  # sockets earlier tests left to the GC must not be in (or leave) the baseline
    baseline = fd_count()
    codes: list[int] = []
    with trio.fail_after(20):
        async with trio.open_nursery() as clients:
            async with trio.open_nursery() as server:
                bind = await start_server(server, app)
                connected = trio.Semaphore(0)

                async def client() -> None:
                    async with ws_connect(bind, "/", None) as ws:
                        await ws.send_message("hi")
                        assert await ws.get_message() == "hi"
                        connected.release()
                        with pytest.raises(trio_websocket.ConnectionClosed) as closed:
                            await ws.get_message()
                        codes.append(closed.value.reason.code)

                for _ in range(100):
                    clients.start_soon(client)
                for _ in range(100):
                    await connected.acquire()
                assert len(sockets_on_port(bind.port)) == 101  # the listener + 100 connections
                server.cancel_scope.cancel()  # what serve()'s caller does on shutdown
            # serve() returned normally (no exception escaped the server nursery), and every
            # server-side socket is closed before it did
            assert sockets_on_port(bind.port) == []
    assert codes == [1001] * 100
    # trio-websocket's client leaves its socket to the GC after a server-initiated close
    gc.collect()
    assert fd_count() == baseline


def sockets_on_port(port: int) -> list[int]:
    """This process's open sockets whose *local* port is ``port`` (the server's side)."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            if not os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                continue
            dup = socket.socket(fileno=os.dup(int(name)))
        except OSError:
            continue
        try:
            if dup.family in (socket.AF_INET, socket.AF_INET6) and dup.getsockname()[1] == port:
                found.append(int(name))
        finally:
            dup.close()
    return found


async def test_graceful_shutdown_closes_websockets_with_1001_at_once() -> None:
    """A graceful shutdown tells websockets right away (env["trio_rack.shutdown"]), instead of
    leaving them open until the grace period (here 30 s) runs out; serve() then returns."""
    app = load_example("websocket_echo").app
    stop = trio.Event()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            bind = await start_server(nursery, app, limits=Limits(graceful_timeout=30), shutdown_trigger=stop)
            async with ws_connect(bind, "/", None) as ws:
                await ws.send_message("hi")
                assert await ws.get_message() == "hi"
                stop.set()
                with pytest.raises(trio_websocket.ConnectionClosed) as closed:
                    await ws.get_message()
                assert closed.value.reason.code == 1001
                assert closed.value.reason.reason == "server shutting down"


# ------------------------------------------------------------- the websockets library

CLIENT = r'''
import asyncio, json, ssl, sys, zlib
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

base, cafile = sys.argv[1], sys.argv[2]
ctx = None
if cafile:
    ctx = ssl.create_default_context(cafile=cafile)

def opts(**kw):
    kw.setdefault("proxy", None)
    if ctx is not None:
        kw["ssl"] = ctx
    return kw

async def main():
    out = {}
    async with connect(base + "/echo", **opts(subprotocols=["chat.v1"])) as ws:
        out["subprotocol"] = ws.subprotocol
        out["extensions"] = ws.response.headers.get("Sec-WebSocket-Extensions")
        await ws.send("text ✓"); out["text"] = await ws.recv()
        await ws.send(b"\x01\x02"); out["binary"] = list(await ws.recv())
        await ws.send(["frag-", "ment", "ed"]); out["fragmented"] = await ws.recv()
        big = "0123456789abcdef" * 60000  # ~960 kB, compresses well
        await ws.send(big); out["big_ok"] = (await ws.recv()) == big
        waiter = await ws.ping(b"lib-ping"); await asyncio.wait_for(waiter, 5); out["pong"] = True
        await ws.close(4005, "bye")
        out["close"] = [ws.close_code, ws.close_reason]
    async with connect(base + "/echo", **opts(compression=None)) as ws:
        out["plain_extensions"] = ws.response.headers.get("Sec-WebSocket-Extensions")
        await ws.send("x"); await ws.recv()
    async with connect(base + "/echo", **opts()) as ws:
        await ws.send(b"y" * (1024 * 1024 + 10))
        try:
            await ws.recv()
        except ConnectionClosed as exc:
            out["oversize"] = exc.rcvd.code if exc.rcvd else None
    async with connect(base + "/echo", **opts()) as ws:
        # a deflate bomb: 64 MiB of zeros is ~64 kB compressed
        await ws.send(bytes(64 * 1024 * 1024))
        try:
            await ws.recv()
        except ConnectionClosed as exc:
            out["bomb"] = exc.rcvd.code if exc.rcvd else None
    print(json.dumps(out))

asyncio.run(main())
'''


@pytest.mark.parametrize("scheme", ["ws", "wss"])
async def test_websockets_library_battery(scheme: str, tls_files: TLSFiles) -> None:
    """Echo, fragmentation, compression, ping, close codes and size limits with `websockets`."""
    tls = tls_files if scheme == "wss" else None
    app = Recorder()
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            bind = await start_server(nursery, app, tls=tls)
            proc = await trio.run_process(
                [sys.executable, "-c", CLIENT, url(bind, "", tls), str(tls.ca_pem) if tls else ""],
                capture_stdout=True, capture_stderr=True, check=False, env=env, stdin=subprocess.DEVNULL,
            )
            nursery.cancel_scope.cancel()
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    out = json.loads(proc.stdout)
    assert out["subprotocol"] == "chat.v1"
    assert out["extensions"].startswith("permessage-deflate")
    assert out["text"] == "text ✓"
    assert out["binary"] == [1, 2]
    assert out["fragmented"] == "frag-mented"
    assert out["big_ok"] and out["pong"]
    assert out["close"] == [4005, "bye"]  # the echo app answers with the client's own code
    assert out["plain_extensions"] is None
    assert out["oversize"] == 1009
    assert out["bomb"] == 1009
    assert app.sockets[0].compression and app.sockets[0].close_code == 4005
    assert [ws.close_code for ws in app.sockets[2:]] == [1009, 1009]


# ------------------------------------------------------------------------------ pure bits


def test_bounded_deflate_stops_inflating_at_the_limit() -> None:
    from trio_rack.websocket import _BoundedDeflate

    deflate = _BoundedDeflate(1000)
    assert deflate.accept("permessage-deflate; client_max_window_bits") is not None
    compressor = zlib.compressobj(wbits=-15)
    bomb = compressor.compress(bytes(10**6)) + compressor.flush(zlib.Z_SYNC_FLUSH)
    frame = FrameProtocol(client=True, extensions=[])
    raw = bytes(frame._serialize_frame(Opcode.BINARY, bomb[:-4]))
    raw = bytes([raw[0] | 0x40]) + raw[1:]  # RSV1: compressed
    server = FrameProtocol(client=False, extensions=[deflate])
    server.receive_bytes(raw)
    inflated = sum(len(frame.payload) for frame in server.received_frames())
    assert deflate.too_big and inflated <= 1000
    assert _BoundedDeflate(10).accept("permessage-deflate; client_max_window_bits=abc") is None

