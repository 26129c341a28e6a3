"""A Quart app on trio-rack through quart-trio (Quart on Trio): routes, JSON, a streamed
request body, a websocket, lifespan (Quart's before_serving/after_serving)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import trio

from asgi_support import WIRES, http_version, httpx_options, serving

pytest.importorskip("quart_trio")

import trio.lowlevel
from quart import request, websocket  # noqa: E402
from quart_trio import QuartTrio  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

EVENTS: list[str] = []


def make_app() -> QuartTrio:
    app = QuartTrio(__name__)

    @app.before_serving
    async def startup() -> None:
        EVENTS.append("startup")

    @app.after_serving
    async def shutdown() -> None:
        EVENTS.append("shutdown")

    @app.route("/hello/<name>")
    async def hello(name: str) -> str:
        await trio.lowlevel.checkpoint()  # Trio, not asyncio
        return f"quart hello {name}"

    @app.route("/version")
    async def version() -> str:
        return str(request.scope["http_version"])

    @app.route("/sum", methods=["POST"])
    async def total() -> dict[str, Any]:
        data = await request.get_json()
        return {"sum": sum(data["numbers"])}

    @app.websocket("/ws")
    async def ws() -> None:
        while True:
            message = await websocket.receive()
            await websocket.send(f"quart echo {message}")

    return app


@pytest.mark.parametrize("wire", WIRES)
async def test_quart_trio_app(wire: str) -> None:
    """HTTP over ``wire``; the websocket over HTTP/1.1 (the ``websockets`` client has no RFC
    8441; the RFC 8441 path of the ASGI adapter is covered in the Starlette suite)."""
    EVENTS.clear()
    async with serving(make_app()) as url:
        assert EVENTS == ["startup"]
        async with httpx.AsyncClient(**httpx_options(wire)) as client:
            hello = await client.get(url + "/hello/w%C3%B6rld")
            assert hello.http_version == http_version(wire)
            total = await client.post(url + "/sum", json={"numbers": [1, 2, 3.5]})
            version = (await client.get(url + "/version")).text
        reply = await trio.to_thread.run_sync(_ws_roundtrip, url.replace("http", "ws", 1) + "/ws")
    assert hello.status_code == 200 and hello.text == "quart hello wörld"
    assert total.json() == {"sum": 6.5}
    assert version == ("2" if wire == "http2" else "1.1")
    assert reply == "quart echo ping"
    assert EVENTS == ["startup", "shutdown"]


def _ws_roundtrip(url: str) -> str:
    from websockets.sync.client import connect

    with connect(url, open_timeout=5) as ws:
        ws.send("ping")
        return str(ws.recv(timeout=5))
