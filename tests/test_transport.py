"""trio_rack.testing.Transport: httpx over the real connection loop, in-process."""

from __future__ import annotations

import httpx
import pytest
import trio
import wsproto.events
from wsproto.connection import Connection, ConnectionType

from trio_rack import sse, testing, websocket
from trio_rack.app.response import AppError
from trio_rack.testing import Transport


def test_exported_from_testing():
    assert testing.Transport is Transport


async def test_streaming_response_is_read_while_the_app_runs_and_closing_cancels_it():
    state = {"cancelled": False}
    tick = trio.Event()

    async def app(env):
        async def events(stream):
            try:
                n = 0
                while True:
                    n += 1
                    await stream.send(f"tick {n}", id=str(n))
                    await tick.wait()
            except trio.Cancelled:
                state["cancelled"] = True
                raise

        return sse.response(env, events, heartbeat=None)

    with trio.fail_after(5):
        async with httpx.AsyncClient(transport=Transport(app), base_url="http://test") as client:
            async with client.stream("GET", "/events") as r:
                assert r.headers["content-type"] == "text/event-stream; charset=utf-8"
                lines = r.aiter_lines()
                assert await lines.__anext__() == "id: 1"
                assert await lines.__anext__() == "data: tick 1"
            # leaving the stream closed the response: the endless app was cancelled
    assert state["cancelled"]


async def test_request_bodies_stream_both_ways():
    async def echo(env):
        async def body(stream):
            while data := await stream.receive_some():
                await stream.send_all(data.upper())

        return 200, {"content-type": "application/octet-stream"}, body

    async def upload():
        for piece in (b"abc", b"def", b"ghi"):
            yield piece

    async with httpx.AsyncClient(transport=Transport(echo), base_url="http://test") as client:
        r = await client.post("/", content=upload())
        assert r.content == b"ABCDEFGHI"
        r = await client.put("/", content=b"x" * 300_000)
        assert r.content == b"X" * 300_000


async def test_cookies_round_trip_through_the_client_jar():
    async def app(env):
        if env["PATH_INFO"] == "/login":
            return 200, {"set-cookie": ["sid=s3cret; Path=/; HttpOnly", "theme=dark; Path=/"]}, [b"ok"]
        return 200, {}, [env.get("HTTP_COOKIE", "").encode()]

    async with httpx.AsyncClient(transport=Transport(app), base_url="http://test") as client:
        await client.get("/login")
        r = await client.get("/whoami")
    assert sorted(r.text.split("; ")) == ["sid=s3cret", "theme=dark"]


async def test_app_exceptions_reach_the_test_before_and_after_the_head():
    async def app(env):
        if env["PATH_INFO"] == "/before":
            raise LookupError("before the head")

        async def body(stream):
            await stream.send_all(b"partial")
            raise ZeroDivisionError("after the head")

        return 200, {}, body

    async with httpx.AsyncClient(transport=Transport(app), base_url="http://test") as client:
        with pytest.raises(LookupError, match="before the head"):
            await client.get("/before")
        with pytest.raises(ZeroDivisionError, match="after the head"):
            await client.get("/after")


async def test_contract_breaches_the_server_catches_are_raised_too():
    async def app(env):
        return 200, {"Content-Type": "text/plain"}, [b"x"]

    async with httpx.AsyncClient(transport=Transport(app), base_url="http://test") as client:
        with pytest.raises(AppError, match="must be lower-case"):
            await client.get("/")


async def test_raise_app_exceptions_false_shows_the_500():
    async def app(env):
        raise RuntimeError("boom")

    transport = Transport(app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        r = await client.get("/")
    assert r.status_code == 500 and r.headers["connection"] == "close"


async def test_without_async_with_each_request_runs_on_its_own():
    async def app(env):
        return 200, {"content-type": "text/plain"}, [b"hello " + env["REQUEST_METHOD"].encode()]

    client = httpx.AsyncClient(transport=Transport(app), base_url="http://test")
    assert (await client.get("/")).text == "hello GET"
    r = await client.head("/")
    assert r.status_code == 200 and r.content == b"" and r.headers["content-length"] == "10"  # "hello HEAD"


async def test_env_reflects_the_url_and_client():
    seen = {}

    async def app(env):
        seen.update({k: env[k] for k in ("rack.url_scheme", "SERVER_NAME", "SERVER_PORT", "REMOTE_ADDR",
                                          "REMOTE_PORT", "PATH_INFO", "QUERY_STRING", "HTTP_HOST")})
        return 204, {}, []

    async with httpx.AsyncClient(transport=Transport(app, client=("10.1.2.3", 999)), base_url="https://app.test") as c:
        await c.get("/a%20b?x=1")
    assert seen == {"rack.url_scheme": "https", "SERVER_NAME": "app.test", "SERVER_PORT": "443",
                    "REMOTE_ADDR": "10.1.2.3", "REMOTE_PORT": "999", "PATH_INFO": "/a%20b", "QUERY_STRING": "x=1",
                    "HTTP_HOST": "app.test"}


async def test_partial_and_full_hijacks():
    async def app(env):
        if env["PATH_INFO"] == "/full":
            stream = env["rack.hijack"]()
            await stream.send_all(b"HTTP/1.1 202 Accepted\r\ncontent-length: 5\r\n\r\nfully")
            return -1, {}, []

        async def hijack(stream):
            await stream.send_all(b"raw after the head")

        return 200, {"content-type": "text/plain", "rack.hijack": hijack}, []

    async with httpx.AsyncClient(transport=Transport(app), base_url="http://test") as client:
        partial = await client.get("/partial")
        full = await client.get("/full")
    assert partial.status_code == 200 and partial.text == "raw after the head"
    assert partial.headers["server"] == "trio-rack" and "content-length" not in partial.headers
    assert full.status_code == 202 and full.text == "fully" and "server" not in full.headers


async def test_websocket_through_the_network_stream_escape_hatch():
    async def app(env):
        try:
            ctx = websocket.accept(env, subprotocols=["echo.v1"])
        except websocket.HandshakeError as refusal:
            return refusal.response
        async with ctx as ws:
            await ws.send_message("welcome")
            async for message in ws:
                await ws.send_message(message)
        return -1, {}, []

    headers = {"connection": "upgrade", "upgrade": "websocket", "sec-websocket-version": "13",
               "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==", "sec-websocket-protocol": "echo.v1"}
    with trio.fail_after(5):
        async with httpx.AsyncClient(transport=Transport(app), base_url="http://test") as client:
            r = await client.get("/ws", headers=headers)
            assert r.status_code == 101 and r.headers["sec-websocket-protocol"] == "echo.v1"
            stream = r.extensions["network_stream"]
            ws = Connection(ConnectionType.CLIENT)
            received: list[object] = []

            async def next_message():
                while not received:
                    ws.receive_data(await stream.read(65536))
                    received.extend(e for e in ws.events() if isinstance(e, wsproto.events.TextMessage))
                return received.pop(0).data

            assert await next_message() == "welcome"
            await stream.write(ws.send(wsproto.events.TextMessage("ping ✓")))
            assert await next_message() == "ping ✓"
            await stream.write(ws.send(wsproto.events.CloseConnection(1000)))
            ws.receive_data(await stream.read(65536))
            closes = [e for e in ws.events() if isinstance(e, wsproto.events.CloseConnection)]
            assert closes and closes[0].code == 1000
            await stream.aclose()


async def test_a_101_needs_the_transport_entered():
    async def app(env):
        async def hijack(stream):
            await stream.send_all(b"")

        return 101, {"upgrade": "x", "connection": "upgrade", "rack.hijack": hijack}, []

    client = httpx.AsyncClient(transport=Transport(app), base_url="http://test")
    with pytest.raises(RuntimeError, match="needs the transport entered"):
        await client.get("/", headers={"connection": "upgrade", "upgrade": "x"})


async def test_without_async_with_app_errors_are_raised_bare():
    async def app(env):
        raise KeyError("bare")

    client = httpx.AsyncClient(transport=Transport(app), base_url="http://test")
    with pytest.raises(KeyError, match="bare"):
        await client.get("/")
