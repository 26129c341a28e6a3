"""Who reads a websocket: the app's own task inside ``get_message`` ("pull"), or the background
reader while the app does not read, and the keeper that times both (trio_rack.websocket.session).

Each path gets a test that could fail if the hand-over between them lost, reordered or
stalled anything: pings answered while the app is inside ``get_message`` and while it is away,
an app that cancels its own ``get_message`` losing no message, two receiving tasks, and the
write timeout the keeper enforces on a real socket (a peer that stopped reading).  Protocol
tests run through the real HTTP/1.1 connection loop over a memory stream pair with trio's
autojump clock; the write-timeout test needs a real TCP socket whose buffers fill.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio
import trio.testing
from wsproto.frame_protocol import Frame, FrameProtocol, Opcode

from e2e_support import next_frame, open_client, read_until, split_head, start_server
from trio_rack import websocket
from trio_rack.testing import memory_connection
from trio_rack.websocket.session import HANDOVER

KEY = "dGhlIHNhbXBsZSBub25jZQ=="
UPGRADE = (
    "GET /ws HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    f"Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
).encode()

Handler = Callable[[websocket.WebSocket], Awaitable[None]]


class Client:
    """The peer: wsproto's frame codec driven by hand."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.codec = FrameProtocol(client=True, extensions=[])

    async def handshake(self) -> None:
        await self.stream.send_all(UPGRADE)
        status, _, rest = split_head(await read_until(self.stream, b"\r\n\r\n"))
        assert status == 101
        self.codec.receive_bytes(rest)

    async def send_text(self, text: str) -> None:
        await self.stream.send_all(bytes(self.codec.send_data(text)))

    async def ping(self, payload: bytes) -> None:
        await self.stream.send_all(bytes(self.codec.ping(payload)))

    async def frame(self) -> Frame:
        frame = await next_frame(self.stream, self.codec)
        assert frame is not None, "the server closed"
        return frame


def app_of(handler: Handler, **options: Any) -> Any:
    async def app(env: dict[str, Any]) -> Any:
        async with websocket.accept(env, **options) as ws:
            await handler(ws)
        return -1, {}, []

    return app


@asynccontextmanager
async def served(handler: Handler, **options: Any) -> AsyncIterator[Client]:
    async with memory_connection(app_of(handler, **options)) as connection:
        client = Client(connection.stream)
        await client.handshake()
        yield client


async def test_ping_answered_while_the_app_waits_inside_get_message(autojump_clock: Any) -> None:
    """The app's own task is the reader (it waits in get_message): a ping is answered at once,
    without any message for the app, and the next message still reaches it."""
    got: list[str | bytes] = []

    async def handler(ws: websocket.WebSocket) -> None:
        got.append(await ws.get_message())
        got.append(await ws.get_message())
        await ws.send_message("done")

    with trio.fail_after(HANDOVER * 5):
        async with served(handler) as client:
            await client.send_text("one")
            await trio.testing.wait_all_tasks_blocked()
            start = trio.current_time()
            await client.ping(b"are you there")
            pong = await client.frame()
            assert (pong.opcode, pong.payload) == (Opcode.PONG, b"are you there")
            assert trio.current_time() - start < HANDOVER / 10  # answered by the app's own read
            await client.send_text("two")
            reply = await client.frame()
            assert (reply.opcode, reply.payload) == (Opcode.TEXT, "done")
    assert got == ["one", "two"]


async def test_ping_answered_while_the_app_is_away_then_messages_in_order(autojump_clock: Any) -> None:
    """The app takes one message, then does something else for a long time: within HANDOVER the
    background reader answers the peer's ping, queues what arrives (max_queue) and, when the
    app asks again, hands every message over in order."""
    got: list[str | bytes] = []
    away = trio.Event()

    async def handler(ws: websocket.WebSocket) -> None:
        got.append(await ws.get_message())
        away.set()
        await trio.sleep(HANDOVER * 20)  # not reading
        for _ in range(3):
            got.append(await ws.get_message())
        await ws.send_message("done")

    with trio.fail_after(HANDOVER * 40):
        async with served(handler, max_queue=4) as client:
            await client.send_text("first")
            await away.wait()
            start = trio.current_time()
            await client.ping(b"still there?")
            pong = await client.frame()
            assert (pong.opcode, pong.payload) == (Opcode.PONG, b"still there?")
            assert trio.current_time() - start <= HANDOVER * 1.5
            for text in ("a", "b", "c"):
                await client.send_text(text)
            reply = await client.frame()
            assert (reply.opcode, reply.payload) == (Opcode.TEXT, "done")
    assert got == ["first", "a", "b", "c"]


async def test_ping_answered_when_the_app_never_reads(autojump_clock: Any) -> None:
    """An app that only sends never calls get_message: the background reader answers pings."""

    async def handler(ws: websocket.WebSocket) -> None:
        for n in range(3):
            await ws.send_message(f"tick {n}")
            await trio.sleep(HANDOVER * 3)

    with trio.fail_after(HANDOVER * 20):
        async with served(handler) as client:
            first = await client.frame()
            assert first.payload == "tick 0"
            await client.ping(b"p")
            frame = await client.frame()
            assert (frame.opcode, frame.payload) == (Opcode.PONG, b"p")


async def test_an_app_cancelling_its_own_get_message_loses_nothing(autojump_clock: Any) -> None:
    """``move_on_after`` around get_message (the app's own timeout) cancels the app's read; the
    message that arrives later is not lost, and order is kept."""
    got: list[str | bytes] = []
    timeouts = 0

    async def handler(ws: websocket.WebSocket) -> None:
        nonlocal timeouts
        while len(got) < 3:
            with trio.move_on_after(0.25) as scope:
                got.append(await ws.get_message())
            timeouts += scope.cancelled_caught
        await ws.send_message("done")

    with trio.fail_after(30):
        async with served(handler) as client:
            for text in ("x", "y", "z"):
                await trio.sleep(1)  # several of the app's timeouts pass in between
                await client.send_text(text)
            reply = await client.frame()
            assert (reply.opcode, reply.payload) == (Opcode.TEXT, "done")
    assert got == ["x", "y", "z"]
    assert timeouts >= 6


async def test_two_receiving_tasks_share_the_messages(autojump_clock: Any) -> None:
    """Two tasks in get_message at once: one reads, the other is served through the channel;
    every message reaches exactly one of them."""
    seen: list[tuple[int, str | bytes]] = []
    count = 20

    async def handler(ws: websocket.WebSocket) -> None:
        async def receiver(n: int) -> None:
            while len(seen) < count:
                with trio.move_on_after(HANDOVER * 10):
                    seen.append((n, await ws.get_message()))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(receiver, 1)
            nursery.start_soon(receiver, 2)
        await ws.send_message("done")

    with trio.fail_after(HANDOVER * 100):
        async with served(handler) as client:
            for n in range(count):
                await client.send_text(str(n))
                await trio.sleep(0.01)
            reply = await client.frame()
            assert (reply.opcode, reply.payload) == (Opcode.TEXT, "done")
    assert sorted(int(message) for _, message in seen) == list(range(count))
    assert {n for n, _ in seen} == {1, 2}


async def test_a_peer_that_stops_reading_fails_the_send_with_1006() -> None:
    """A real socket whose peer reads nothing (but keeps sending, so it is not idle): the app's
    writes fill the buffers and block; the keeper finds the write overdue after idle_timeout
    and closes the transport under it, so send_message raises ConnectionClosed (1006)
    instead of hanging."""
    outcome: list[tuple[int, float]] = []
    failed = trio.Event()
    idle = 0.5

    async def handler(ws: websocket.WebSocket) -> None:
        start = trio.current_time()
        try:
            while trio.current_time() - start < 20:
                await ws.send_message(b"x" * 65536)
        except websocket.ConnectionClosed as exc:
            outcome.append((exc.code, trio.current_time() - start))
            failed.set()

    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            bind = await start_server(nursery, app_of(handler, idle_timeout=idle, ping_interval=None, max_queue=2))
            stream = await open_client(bind)
            client = Client(stream)
            await client.handshake()
            with trio.move_on_after(12):
                while not failed.is_set():  # read nothing, but keep talking
                    with trio.move_on_after(0.1):
                        await failed.wait()
                    try:
                        await client.send_text("still here")
                    except trio.BrokenResourceError:
                        break
            await stream.aclose()
            nursery.cancel_scope.cancel()
    assert len(outcome) == 1
    code, elapsed = outcome[0]
    assert code == 1006
    assert elapsed < 10  # idle_timeout after the buffers filled, not the 20 s the app would write


async def _first_message_after_taking_over(max_queue: int, checkpoints: int) -> str | bytes | None:
    """A message that is on the wire before the background reader's first read; the app asks
    for it after ``checkpoints`` scheduler rounds, so it takes the read side over at every
    point of that read (over a real socket pair: the read's last yield is where it raced)."""
    import socket

    from wsproto.connection import Connection, ConnectionType
    from wsproto.events import TextMessage

    from trio_rack.websocket.session import WebSocketContext, _Options

    a, b = socket.socketpair()
    server = trio.SocketStream(trio.socket.from_stdlib_socket(a))
    client = trio.SocketStream(trio.socket.from_stdlib_socket(b))
    options = _Options(max_message_size=1 << 20, max_queue=max_queue, ping_interval=None, idle_timeout=None,
                       close_timeout=0.01)

    async def open_stream() -> tuple[trio.abc.Stream, bytes]:
        return server, b""

    await client.send_all(Connection(ConnectionType.CLIENT).send(TextMessage(data="M1")))
    got: str | bytes | None = None
    async with client, trio.open_nursery() as nursery:

        async def drain() -> None:
            while await client.receive_some(65536):
                pass

        nursery.start_soon(drain)
        async with WebSocketContext(open_stream, None, None, options) as ws:
            for _ in range(checkpoints):
                await trio.lowlevel.checkpoint()
            with trio.move_on_after(2):
                got = await ws.get_message()
        nursery.cancel_scope.cancel()
    return got


async def test_a_message_read_while_the_app_takes_the_read_side_over_is_not_lost() -> None:
    """The background reader's read can be cancelled only before its bytes arrive; bytes that
    came in anyway are left to the app's read, not taken and dropped (max_queue=0 lost 1 in 7)."""
    for max_queue in (0, 4):
        for checkpoints in range(6):
            for _ in range(8):
                assert await _first_message_after_taking_over(max_queue, checkpoints) == "M1"
