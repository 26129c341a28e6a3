"""ASGI websockets on trio-rack (on top of ``trio_rack.websocket``) with hand-written ASGI apps:
the message flow, close codes both ways (1005 for a close frame without a code, never 1006),
close before accept (403), the ``websocket.http.response`` denial, and a frame pipelined
behind the handshake reaching the app.  Over HTTP/2 (RFC 8441 extended CONNECT, the h2
library as the client over a real socket): the scope, the message flow and close code, the
403, the denial, and a frame sent behind the CONNECT headers."""

from __future__ import annotations

import base64
import os
from typing import Any

import pytest
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Message, Request, TextMessage

from asgi_support import eventually, h2_client
from asgi_support import serving as _serving
from e2e_support import read_until

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def serving(app: Any, **kwargs: Any) -> Any:
    kwargs.setdefault("lifespan", "off")
    return _serving(app, **kwargs)


def _split(url: str) -> tuple[str, int]:
    host, port = url.split("://", 1)[1].rsplit(":", 1)
    return host, int(port)


class Client:
    """A wsproto client over a raw socket, so the test controls every byte (and its timing)."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.events: list[Any] = []

    async def next_event(self) -> Any:
        while not self.events:
            data = await self.stream.receive_some()
            self.ws.receive_data(data or None)
            self.events.extend(self.ws.events())
            if not data and not self.events:
                raise EOFError
        return self.events.pop(0)


async def _connect(url: str, *, subprotocols: list[str] = (), extra: bytes = b"") -> Client:  # type: ignore[assignment]
    stream = await trio.open_tcp_stream(*_split(url))
    client = Client(stream)
    handshake = client.ws.send(Request(host="x", target="/ws", subprotocols=list(subprotocols)))
    await stream.send_all(handshake + extra)
    return client


async def test_messages_both_ways_and_the_peers_close_code() -> None:
    seen: list[dict[str, Any]] = []
    done = trio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        assert scope["type"] == "websocket"
        assert scope["subprotocols"] == ["v1", "v2"]
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept", "subprotocol": "v2", "headers": [(b"x-hello", b"there")]})
        while True:
            message = await receive()
            seen.append(message)
            if message["type"] == "websocket.disconnect":
                done.set()
                return
            if "text" in message:
                await send({"type": "websocket.send", "text": message["text"].upper()})
            else:
                await send({"type": "websocket.send", "bytes": message["bytes"] * 2})

    async with serving(app) as url:
        client = await _connect(url, subprotocols=["v1", "v2"])
        accepted = await client.next_event()
        assert isinstance(accepted, AcceptConnection)
        assert accepted.subprotocol == "v2"
        assert (b"x-hello", b"there") in accepted.extra_headers
        await client.stream.send_all(client.ws.send(Message(data="hi")))
        reply = await client.next_event()
        assert isinstance(reply, TextMessage) and reply.data == "HI"
        await client.stream.send_all(client.ws.send(Message(data=b"\x01\x02")))
        reply = await client.next_event()
        assert reply.data == b"\x01\x02\x01\x02"
        # a close frame with no status code at all: the app must see 1005, not 1006
        await client.stream.send_all(b"\x88\x80" + os.urandom(4))
        with trio.fail_after(5):
            await done.wait()
        await client.stream.aclose()
    assert seen[-1] == {"type": "websocket.disconnect", "code": 1005, "reason": ""}


async def test_app_close_code_and_reason_reach_the_client_and_send_after_close_fails() -> None:
    errors: list[BaseException] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": 4000, "reason": "bye now"})
        try:
            await send({"type": "websocket.send", "text": "too late"})
        except OSError as exc:
            errors.append(exc)

    async with serving(app) as url:
        client = await _connect(url)
        assert isinstance(await client.next_event(), AcceptConnection)
        with trio.fail_after(5):
            closing = await client.next_event()
        assert isinstance(closing, CloseConnection)
        assert (closing.code, closing.reason) == (4000, "bye now")
        await client.stream.send_all(client.ws.send(closing.response()))
        await client.stream.aclose()
        await eventually(lambda: errors)
    assert isinstance(errors[0], OSError)


async def test_close_before_accept_is_a_403() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.close", "code": 1008})

    async with serving(app) as url:
        client = await _connect(url)
        with trio.fail_after(5):
            data = await read_until(client.stream, b"\r\n\r\n")
        await client.stream.aclose()
    assert data.startswith(b"HTTP/1.1 403 ")


async def test_websocket_http_response_denial() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        assert "websocket.http.response" in scope["extensions"]
        await receive()
        headers = [(b"www-authenticate", b"Bearer")]
        await send({"type": "websocket.http.response.start", "status": 401, "headers": headers})
        await send({"type": "websocket.http.response.body", "body": b"who are ", "more_body": True})
        await send({"type": "websocket.http.response.body", "body": b"you?"})

    async with serving(app) as url:
        client = await _connect(url)
        with trio.fail_after(5):
            data = await read_until(client.stream, b"who are you?")
        await client.stream.aclose()
    assert data.startswith(b"HTTP/1.1 401 ")
    assert b"www-authenticate: Bearer" in data


async def test_a_frame_pipelined_behind_the_handshake_reaches_the_app() -> None:
    got: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await trio.sleep(0.1)  # the early frame is already in the server's buffer by now
        await send({"type": "websocket.accept"})
        got.append(await receive())
        await send({"type": "websocket.close"})

    async with serving(app) as url:
        probe = WSConnection(ConnectionType.CLIENT)
        probe.send(Request(host="x", target="/ws"))
        # a masked text frame "early", sent in the same write as the handshake
        mask = os.urandom(4)
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(b"early"))
        frame = b"\x81" + bytes([0x80 | 5]) + mask + payload
        key = base64.b64encode(os.urandom(16))
        handshake = (
            b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        stream = await trio.open_tcp_stream(*_split(url))
        async with stream:
            await stream.send_all(handshake + frame)
            with trio.fail_after(5):
                await read_until(stream, b"\r\n\r\n")
            await eventually(lambda: got)
    assert got == [{"type": "websocket.receive", "text": "early"}]


# ------------------------------------------------------------------- HTTP/2 (RFC 8441)


async def _open_h2_ws(client: Any, early: bytes = b"") -> int:
    """An extended CONNECT with ``:protocol websocket``; ``early`` DATA goes out right behind
    the headers, before the server's answer."""
    with trio.fail_after(5):
        await client.read_until(lambda: client.h2.remote_settings.enable_connect_protocol == 1)
    sid: int = await client.start_request(
        "CONNECT", "/ws", protocol="websocket", end_stream=False,
        headers=[("sec-websocket-version", "13"), ("sec-websocket-protocol", "v1, v2")],
    )  # fmt: skip
    if early:
        await client.send_body(sid, early)
    with trio.fail_after(5):
        await client.read_until(lambda: client.results[sid].status is not None)
    return sid


async def test_http2_websocket_scope_messages_and_the_peers_close_code() -> None:
    from wsproto.frame_protocol import FrameProtocol, Opcode

    seen: list[Any] = []
    done = trio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append((scope["type"], scope["http_version"], scope["scheme"], scope["subprotocols"]))
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept", "subprotocol": "v2", "headers": [(b"x-hello", b"there")]})
        while True:
            message = await receive()
            seen.append(message)
            if message["type"] == "websocket.disconnect":
                done.set()
                return
            await send({"type": "websocket.send", "text": message["text"].upper()})

    frames = FrameProtocol(client=True, extensions=[])
    async with serving(app) as url, h2_client(url) as client:
        sid = await _open_h2_ws(client, early=frames.send_data("early", fin=True))
        result = client.results[sid]
        assert result.status == 200
        assert ("sec-websocket-protocol", "v2") in result.headers and ("x-hello", "there") in result.headers
        with trio.fail_after(5):
            await client.read_until(lambda: result.chunks)
        frames.receive_bytes(b"".join(result.chunks))
        assert [(f.opcode, f.payload) for f in frames.received_frames()] == [(Opcode.TEXT, "EARLY")]
        await client.send_body(sid, frames.close(4002, "done here"))
        with trio.fail_after(5):
            await done.wait()
    assert seen[0] == ("websocket", "2", "ws", ["v1", "v2"])
    assert seen[1] == {"type": "websocket.receive", "text": "early"}  # sent behind the CONNECT
    assert seen[2]["type"] == "websocket.disconnect" and seen[2]["code"] == 4002


async def test_http2_websocket_close_before_accept_and_the_denial() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        if "v1" in scope["subprotocols"] and scope["query_string"] == b"deny":
            await send({"type": "websocket.http.response.start", "status": 401, "headers": []})
            await send({"type": "websocket.http.response.body", "body": b"who are you?"})
        else:
            await send({"type": "websocket.close", "code": 1008})

    async with serving(app) as url, h2_client(url) as client:
        refused = await _open_h2_ws(client)
        with trio.fail_after(5):
            await client.read_stream(refused)
        sid = await client.start_request(
            "CONNECT", "/ws?deny", protocol="websocket", end_stream=False,
            headers=[("sec-websocket-version", "13"), ("sec-websocket-protocol", "v1")],
        )  # fmt: skip
        with trio.fail_after(5):
            denied = await client.read_stream(sid)
    assert client.results[refused].status == 403
    assert denied.status == 401 and b"".join(denied.chunks) == b"who are you?"
