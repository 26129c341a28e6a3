"""The websocket closing handshake, frame by frame (RFC 6455 §5.5.1, §7.1.1, §7.1.7).

The server side is the real ``trio_rack.websocket`` session: either behind the real connection
loop over a memory stream pair (``trio_rack.testing.memory_connection``, so the hijacked stream
is the one the server hands out), or accepted directly over a lockstep stream pair when a test
needs a write to block until the client reads.  The client is wsproto's frame codec driven by
hand, so it can send what no polite client sends and decline to close.  Time is trio's autojump
clock: a wait for the close timeout costs no real time but shows up in ``trio.current_time()``.

Autobahn's fuzzing client found each of these against ``examples/websocket_echo.py``
(``tests/autobahn/run.py``): no close reply when the client's close frame arrived while the app
was writing its echo (cases 5.3, 6.1.2, 12.2.3...), and after a protocol error a server that left
the TCP close to the client (2.5, 3.1, 5.1...) and held the connection for its whole close
timeout when the client did not close.
"""

from __future__ import annotations

import runpy
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing
from wsproto.frame_protocol import Frame, FrameProtocol, Opcode

from e2e_support import EXAMPLES, load_example, next_frame, read_until, split_head
from trio_rack import websocket
from trio_rack.testing import memory_connection

KEY = "dGhlIHNhbXBsZSBub25jZQ=="
UPGRADE = (
    "GET /ws HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    f"Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
).encode()
CLOSE_TIMEOUT = 10.0  # long, so that waiting for it cannot pass for closing at once


class Peer:
    """The client end: raw frames out, parsed frames in, and when things happened."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.codec = FrameProtocol(client=True, extensions=[])

    async def handshake(self, *, send_request: bool = True) -> None:
        if send_request:
            await self.stream.send_all(UPGRADE)
        status, _, rest = split_head(await read_until(self.stream, b"\r\n\r\n"))
        assert status == 101
        self.codec.receive_bytes(rest)

    async def send(self, data: bytes | bytearray) -> None:
        await self.stream.send_all(bytes(data))

    async def next_frame(self) -> Frame | None:
        """The next frame, or None at EOF (the server closed, or half-closed, its side)."""
        return await next_frame(self.stream, self.codec)

    async def frames_until_eof(self) -> list[Frame]:
        frames = []
        while (frame := await self.next_frame()) is not None:
            frames.append(frame)
        return frames

    async def server_has_closed(self) -> bool:
        """Whether the server's end is closed for reading too (not just half-closed)."""
        try:
            await self.stream.send_all(b"\x00")
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return True
        return False


class EchoApp:
    """The echo example's handler behind ``websocket.accept``, timing when its block exits."""

    def __init__(self, **options: Any) -> None:
        self.options = {"close_timeout": CLOSE_TIMEOUT, **options}
        self.sockets: list[websocket.WebSocket] = []
        self.done_at: float | None = None
        self.done = trio.Event()

    async def __call__(self, env: dict[str, Any]) -> Any:
        try:
            async with websocket.accept(env, **self.options) as ws:
                self.sockets.append(ws)
                await load_example("websocket_echo").echo(ws, env)
        finally:
            self.done_at = trio.current_time()
            self.done.set()
        return -1, {}, []


@asynccontextmanager
async def served(app: EchoApp) -> AsyncIterator[Peer]:
    """``app`` behind the real HTTP/1.1 connection loop; the peer has done the handshake."""
    async with memory_connection(app) as client:
        peer = Peer(client.stream)
        await peer.handshake()
        yield peer


@asynccontextmanager
async def accepted_over_lockstep(app: EchoApp) -> AsyncIterator[Peer]:
    """``app`` accepted directly over a lockstep pair: a write blocks until the peer reads it."""
    client, server = trio.testing.lockstep_stream_pair()
    env = {
        "REQUEST_METHOD": "GET",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_UPGRADE": "websocket",
        "HTTP_CONNECTION": "Upgrade",
        "HTTP_SEC_WEBSOCKET_KEY": KEY,
        "HTTP_SEC_WEBSOCKET_VERSION": "13",
        "rack.hijack": lambda: server,
    }
    async with trio.open_nursery() as nursery:
        nursery.start_soon(app, env)
        peer = Peer(client)
        await peer.handshake(send_request=False)
        yield peer
        await client.aclose()


# ---------------------------------------------------------------- §5.5.1: always reply


async def test_close_frame_arriving_during_the_apps_write_is_answered(autojump_clock: Any) -> None:
    """The client's close frame is read while the app is still writing its echo (the client
    has not read it yet): the server must still answer with a close frame (RFC 6455 §5.5.1),
    after the echo, instead of dropping the connection."""
    app = EchoApp()
    with trio.fail_after(CLOSE_TIMEOUT / 2):
        async with accepted_over_lockstep(app) as peer:
            await peer.send(peer.codec.send_data("echo me"))
            await trio.testing.wait_all_tasks_blocked()  # the app's echo is blocked mid-write
            await peer.send(peer.codec.close(4001, "client done"))  # and the reader takes this
            await trio.testing.wait_all_tasks_blocked()
            frames = await peer.frames_until_eof()
            assert [(f.opcode, f.payload) for f in frames] == [
                (Opcode.TEXT, "echo me"),
                (Opcode.CLOSE, (4001, "client done")),  # the client's own code, echoed
            ]
            await app.done.wait()
    assert (app.sockets[0].close_code, app.sockets[0].close_reason) == (4001, "client done")


async def test_client_close_is_answered_and_the_server_closes_first(autojump_clock: Any) -> None:
    """The ordinary case, through the connection loop: message, close; reply, TCP closed."""
    app = EchoApp()
    with trio.fail_after(CLOSE_TIMEOUT / 2):
        async with served(app) as peer:
            await peer.send(peer.codec.send_data(b"\x01\x02"))
            frame = await peer.next_frame()
            assert frame is not None and (frame.opcode, frame.payload) == (Opcode.BINARY, b"\x01\x02")
            await peer.send(peer.codec.close(1000, ""))
            closed = await peer.next_frame()
            assert closed is not None and closed.opcode is Opcode.CLOSE and closed.payload[0] == 1000
            assert await peer.next_frame() is None  # EOF without the client closing anything
            await app.done.wait()
            assert await peer.server_has_closed()


# ----------------------------------------- §7.1.7 / §7.1.1: failing the connection


def bad_frames(codec: FrameProtocol) -> dict[str, tuple[bytes, int]]:
    """Frames that oblige the server to fail the connection, and the code it must send."""
    masked = codec._serialize_frame
    return {
        # hand-made where wsproto's encoder would refuse: FIN + opcode 3, masked, no payload
        "reserved-opcode": (bytes([0x83, 0x80]) + b"\x00\x00\x00\x00", 1002),
        "rsv1-without-extension": (bytes([0xC1, 0x81]) + b"\x00\x00\x00\x00x", 1002),
        "continuation-without-start": (bytes(masked(Opcode.CONTINUATION, b"x", fin=True)), 1002),
        "ping-too-long": (bytes([0x89, 0xFE, 0x00, 0x7E]) + b"\x00\x00\x00\x00" + b"p" * 126, 1002),
        "invalid-utf8": (bytes(masked(Opcode.TEXT, b"\xce\xba\xe1\xbd\xb9\xcf\x83\xed\xa0\x80", fin=True)), 1007),
    }


CASES = ["reserved-opcode", "rsv1-without-extension", "continuation-without-start", "ping-too-long", "invalid-utf8"]


@pytest.mark.parametrize("case", CASES)
async def test_failing_the_connection_the_server_closes_tcp_first(case: str, autojump_clock: Any) -> None:
    """After a protocol error the server sends its close frame and closes the TCP connection
    itself (RFC 6455 §7.1.1: the server closes first), although the client, like Autobahn's,
    answers with a close frame and then waits for the server's TCP close."""
    app = EchoApp()
    with trio.fail_after(CLOSE_TIMEOUT * 3):
        async with served(app) as peer:
            frame_bytes, code = bad_frames(peer.codec)[case]
            await peer.send(frame_bytes)
            start = trio.current_time()
            close = await peer.next_frame()
            assert close is not None and close.opcode is Opcode.CLOSE and close.payload[0] == code
            await peer.send(peer.codec.close(code, ""))  # the polite reply
            assert await peer.next_frame() is None  # the server's end of the TCP connection
            assert trio.current_time() - start < 1  # ...at once, not after the close timeout
            await peer.stream.aclose()  # what a client does on EOF
            await app.done.wait()
    assert app.sockets[0].close_code == code


async def test_failing_the_connection_does_not_wait_for_a_silent_peer(autojump_clock: Any) -> None:
    """Failing the connection (RFC 6455 §7.1.7) does not wait for the peer's close frame: a peer
    that neither answers nor closes gets the close frame and the end of the stream at once, and
    the server is done with the connection within the short linger, not the close timeout."""
    app = EchoApp()
    with trio.fail_after(CLOSE_TIMEOUT * 3):
        async with served(app) as peer:
            frame_bytes, code = bad_frames(peer.codec)["reserved-opcode"]
            await peer.send(frame_bytes)
            start = trio.current_time()
            close = await peer.next_frame()
            assert close is not None and close.payload[0] == code
            assert await peer.next_frame() is None
            assert trio.current_time() - start < 1
            await app.done.wait()  # the peer still has not closed anything
            assert app.done_at is not None and app.done_at - start <= websocket.session.FAIL_LINGER
            assert await peer.server_has_closed()


# ------------------------------------------------------- the echo example's message limit


@pytest.mark.parametrize("how", ["keyword", "environment"])
async def test_echo_example_message_limit_is_overridable(how: str, monkeypatch: pytest.MonkeyPatch,
                                                         autojump_clock: Any) -> None:
    """``make_app(max_message_size=...)`` or ``WS_ECHO_MAX_MESSAGE_SIZE`` (what
    ``tests/autobahn/run.py --max-message-size`` sets for the 16 MiB profile) sets the limit."""
    if how == "keyword":
        app = load_example("websocket_echo").make_app(max_message_size=16)
    else:
        monkeypatch.setenv("WS_ECHO_MAX_MESSAGE_SIZE", "16")
        app = runpy.run_path(str(EXAMPLES / "websocket_echo.py"))["app"]
    with trio.fail_after(CLOSE_TIMEOUT / 2):
        async with memory_connection(app) as client:
            peer = Peer(client.stream)
            await peer.handshake()
            await peer.send(peer.codec.send_data(b"x" * 16))
            echo = await peer.next_frame()
            assert echo is not None and echo.payload == b"x" * 16
            await peer.send(peer.codec.send_data(b"y" * 17))
            close = await peer.next_frame()
            assert close is not None and close.opcode is Opcode.CLOSE and close.payload[0] == 1009


def test_echo_example_default_limit_is_one_mib(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WS_ECHO_MAX_MESSAGE_SIZE", raising=False)
    assert runpy.run_path(str(EXAMPLES / "websocket_echo.py"))["MAX_MESSAGE_SIZE"] == 1024 * 1024
