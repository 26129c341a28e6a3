"""The websocket's own reads and writes on the server's hijacked plain-TCP socket
(trio_rack.websocket.session: ``_read``/``_write``), over real socket pairs served by the real
HTTP/1 connection driver: a frame pipelined behind the handshake comes first (the hijacked
stream's replay), then the socket itself; a message larger than the socket buffer goes out
partly by ``os.write`` and the rest through the stream; a close from another task while the app
waits for a message ends the read and the close handshake completes; a peer that leaves without
a close frame ends the websocket as 1006."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio
import trio.testing
from wsproto.frame_protocol import Opcode

from e2e_support import read_until, split_head
from test_websocket_pull import UPGRADE, Client
from trio_rack import Limits, websocket
from trio_rack.state import ServerState
from trio_rack.testing import serve_stream
from trio_rack.websocket.session import _plain_socket


@asynccontextmanager
async def pair(app: Any) -> AsyncIterator[tuple[Client, socket.socket]]:
    """A real socket pair: the server end served by the HTTP/1 driver, the client end ours."""
    a, b = socket.socketpair()
    server = trio.SocketStream(trio.socket.from_stdlib_socket(a))
    client = trio.SocketStream(trio.socket.from_stdlib_socket(b))
    state = ServerState(app, Limits(), access_log=False)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:

            async def run() -> None:
                try:
                    await serve_stream(server, state)
                finally:
                    await trio.aclose_forcefully(server)

            nursery.start_soon(run)
            try:
                yield Client(client), b
            finally:
                await trio.aclose_forcefully(client)


async def handshake(client: Client, pipelined: bytes = b"") -> None:
    await client.stream.send_all(UPGRADE + pipelined)
    status, _, rest = split_head(await read_until(client.stream, b"\r\n\r\n"))
    assert status == 101
    client.codec.receive_bytes(rest)


async def text_message(client: Client) -> str:
    """The next text message, however many frames it came in."""
    got = ""
    while True:
        frame = await client.frame()
        assert frame.opcode in (Opcode.TEXT, Opcode.CONTINUATION)
        got += frame.payload
        if frame.message_finished:
            return got


def echo_app(seen: list[Any]) -> Any:
    async def app(env: dict[str, Any]) -> Any:
        async with websocket.accept(env, max_message_size=8 * 1024 * 1024) as ws:
            seen.append(ws)
            async for message in ws:
                await ws.send_message(message)
        return -1, {}, []

    return app


async def test_pipelined_frame_then_the_socket_then_a_large_message() -> None:
    seen: list[Any] = []
    async with pair(echo_app(seen)) as (client, _):
        first = bytes(client.codec.send_data("behind the handshake"))
        await handshake(client, first)
        frame = await client.frame()
        assert (frame.opcode, frame.payload) == (Opcode.TEXT, "behind the handshake")
        assert _plain_socket(seen[0]._stream) is not None  # the socket path is the one in use
        for n in range(20):
            await client.send_text(f"message {n}")
            frame = await client.frame()
            assert frame.payload == f"message {n}"
        big = "x" * (4 * 1024 * 1024)  # far more than a socket buffer: os.write sends part
        await client.send_text(big)
        assert await text_message(client) == big
        await client.stream.send_all(bytes(client.codec.close(1000, "done")))
        frame = await client.frame()
        assert frame.opcode is Opcode.CLOSE and frame.payload[0] == 1000
    assert seen[0].close_code == 1000


async def test_a_close_from_another_task_ends_the_apps_read() -> None:
    results: list[Any] = []

    async def app(env: dict[str, Any]) -> Any:
        async with websocket.accept(env) as ws:
            async with trio.open_nursery() as nursery:

                async def closer() -> None:
                    await trio.testing.wait_all_tasks_blocked()  # the app waits on the socket
                    await ws.aclose(4000, "closed by the app")

                nursery.start_soon(closer)
                try:
                    await ws.get_message()  # waits on the socket until the closer takes it
                except websocket.ConnectionClosed as exc:
                    results.append(exc.code)
        return -1, {}, []

    async with pair(app) as (client, _):
        await handshake(client)
        frame = await client.frame()
        assert frame.opcode is Opcode.CLOSE and tuple(frame.payload) == (4000, "closed by the app")
        await client.stream.send_all(bytes(client.codec.close(4000, "")))
        with trio.fail_after(5):
            assert await client.stream.receive_some(100) == b""  # the server closed the socket
    assert results == [4000]


async def test_a_peer_that_leaves_ends_the_websocket_as_1006() -> None:
    ended = trio.Event()
    codes: list[int | None] = []

    async def app(env: dict[str, Any]) -> Any:
        async with websocket.accept(env) as ws:
            async for message in ws:
                await ws.send_message(message)
        codes.append(ws.close_code)
        ended.set()
        return -1, {}, []

    async with pair(app) as (client, _):
        await handshake(client)
        await client.send_text("hello")
        assert (await client.frame()).payload == "hello"
        await trio.aclose_forcefully(client.stream)  # gone without a close frame
        with trio.fail_after(5):
            await ended.wait()
    assert codes == [1006]


async def test_a_close_while_a_write_waits_for_room_lets_that_write_finish_first() -> None:
    """The app's read on the plain socket has no cancel scope: a closer wakes it through the
    fd (``notify_closing``), which would also break a write waiting for room on that fd.  So a
    close that comes while one does leaves the read waiting until the write is done; then the
    read ends, the whole message is on the wire and the close handshake completes (the peer's
    reply is read on the same fd after the wake-up)."""
    from wsproto.connection import ConnectionState

    from trio_rack.websocket.session import _Reader

    big = "y" * (4 * 1024 * 1024)
    go = trio.Event()
    seen: list[Any] = []
    results: list[Any] = []

    async def app(env: dict[str, Any]) -> Any:
        async with websocket.accept(env, max_message_size=8 * 1024 * 1024) as ws:
            seen.append(ws)
            async with trio.open_nursery() as nursery:

                async def reader() -> None:
                    try:
                        await ws.get_message()
                    except websocket.ConnectionClosed as exc:
                        results.append(exc.code)

                nursery.start_soon(reader)
                nursery.start_soon(ws.send_message, big)
                await trio.testing.wait_all_tasks_blocked()
                assert ws._write_blocked  # the peer reads nothing yet: the write waits for room
                nursery.start_soon(ws.aclose, 4001, "closed mid-write")
                await trio.testing.wait_all_tasks_blocked()
                assert ws._take_read and ws._reader is _Reader.APP  # the read waits for the write
                go.set()
        return -1, {}, []

    async with pair(app) as (client, _):
        await handshake(client)
        await go.wait()
        assert await text_message(client) == big
        frame = await client.frame()
        assert frame.opcode is Opcode.CLOSE and tuple(frame.payload) == (4001, "closed mid-write")
        await client.stream.send_all(bytes(client.codec.close(4001, "")))
        with trio.fail_after(5):
            assert await client.stream.receive_some(100) == b""
    assert results == [4001]
    assert seen[0]._ws.state is ConnectionState.CLOSED  # the peer's close reply was read


async def test_a_closer_wakes_the_apps_read_and_the_close_reply_is_read_on_the_same_fd() -> None:
    """The idle timeout (the keeper's close) takes the read side from a waiting app read on the
    plain socket; the close path then reads the peer's close reply from the fd whose wait was
    woken, and the app's loop ends with the close."""
    from wsproto.connection import ConnectionState

    seen: list[Any] = []
    ended: list[int | None] = []

    async def app(env: dict[str, Any]) -> Any:
        async with websocket.accept(env, idle_timeout=0.5, ping_interval=None) as ws:
            seen.append(ws)
            async for message in ws:
                await ws.send_message(message)
            ended.append(ws.close_code)
        return -1, {}, []

    async with pair(app) as (client, _):
        await handshake(client)
        await client.send_text("one")
        assert (await client.frame()).payload == "one"
        frame = await client.frame()  # silence: the keeper closes with 1011
        assert frame.opcode is Opcode.CLOSE and frame.payload[0] == 1011
        await client.stream.send_all(bytes(client.codec.close(1011, "")))
        with trio.fail_after(5):
            assert await client.stream.receive_some(100) == b""
    assert ended == [1011]
    assert seen[0]._ws.state is ConnectionState.CLOSED
