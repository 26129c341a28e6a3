"""Starlette and FastAPI apps on trio-rack (``--interface asgi``), with real clients over real
sockets: httpx for HTTP, the ``websockets`` client for WebSockets, plain and TLS, each over
HTTP/1.1 and HTTP/2 (``wire``: h2c prior knowledge on plain binds, ALPN h2 over TLS).  Over
HTTP/2 the websockets are RFC 8441 (extended CONNECT), spoken by the h2 library with wsproto,
since no Python websocket client speaks RFC 8441."""

from __future__ import annotations

import contextlib
import json
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from asgi_support import WIRES, eventually, h2_client, http_version, httpx_options, serving
from e2e_support import client_ssl_context, make_tls_files, read_until

pytest.importorskip("starlette")
pytest.importorskip("fastapi")

import trio.lowlevel
from fastapi import BackgroundTasks, FastAPI  # noqa: E402
from starlette.applications import Starlette  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, StreamingResponse  # noqa: E402
from starlette.routing import Route, WebSocketRoute  # noqa: E402
from starlette.websockets import WebSocket, WebSocketDisconnect  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

EVENTS: dict[str, Any] = {}


def make_starlette(tmp_path: Path) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        EVENTS["startup"] = True
        yield {"greeting": "hi from lifespan"}
        EVENTS["shutdown"] = True

    async def hello(request: Request) -> PlainTextResponse:
        return PlainTextResponse(f"hello {request.path_params['name']} ({request.state.greeting})")

    async def version(request: Request) -> PlainTextResponse:
        return PlainTextResponse(request.scope["http_version"])

    async def upload(request: Request) -> JSONResponse:
        sizes = [len(chunk) async for chunk in request.stream()]
        return JSONResponse({"total": sum(sizes), "pieces": len([s for s in sizes if s])})

    async def ticks(request: Request) -> StreamingResponse:
        async def gen() -> AsyncIterator[str]:
            try:
                for i in range(1000):
                    yield f"tick {i}\n"
                    await trio.sleep(0.1)
            finally:
                EVENTS["stream_finally"] = trio.current_time()

        return StreamingResponse(gen(), media_type="text/plain")

    async def boom(request: Request) -> PlainTextResponse:
        raise RuntimeError("starlette boom")

    async def slow(request: Request) -> PlainTextResponse:
        await trio.sleep(1)
        return PlainTextResponse("slow done")

    async def file(request: Request) -> FileResponse:
        return FileResponse(tmp_path / "file.bin")

    async def ws_echo(websocket: WebSocket) -> None:
        await websocket.accept(subprotocol="echo.v2" if "echo.v2" in websocket.scope["subprotocols"] else None)
        try:
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    EVENTS["ws_close_code"] = message["code"]
                    return
                if message.get("text") == "close-please":
                    await websocket.close(code=4321, reason="as you wish")
                    return
                if message.get("text") is not None:
                    await websocket.send_text("echo " + message["text"])
                else:
                    await websocket.send_bytes(message["bytes"][::-1])
        except WebSocketDisconnect as exc:
            EVENTS["ws_close_code"] = exc.code

    async def ws_refuse(websocket: WebSocket) -> None:
        await websocket.close(code=1008)

    return Starlette(
        routes=[
            Route("/hello/{name}", hello),
            Route("/version", version),
            Route("/upload", upload, methods=["POST"]),
            Route("/ticks", ticks),
            Route("/boom", boom),
            Route("/slow", slow),
            Route("/file", file),
            WebSocketRoute("/ws", ws_echo),
            WebSocketRoute("/refuse", ws_refuse),
        ],
        lifespan=lifespan,
    )


@pytest.fixture(params=["http", "https"])
def scheme(request: Any) -> str:
    return str(request.param)


@pytest.fixture(params=WIRES)
def wire(request: Any) -> str:
    return str(request.param)


@contextlib.asynccontextmanager
async def starlette_server(
    tmp_path: Path, scheme: str, wire: str = "http1", **kwargs: Any
) -> AsyncIterator[tuple[str, httpx.AsyncClient, Any]]:
    EVENTS.clear()
    (tmp_path / "file.bin").write_bytes(b"0123456789" * 50_000)
    tls = make_tls_files(tmp_path) if scheme == "https" else None
    context = client_ssl_context(tls) if tls else None
    async with serving(make_starlette(tmp_path), tls=tls, **kwargs) as url:
        async with httpx.AsyncClient(verify=context or True, timeout=10, **httpx_options(wire)) as client:
            yield url, client, context


async def test_starlette_routes_json_streams_files_and_errors(tmp_path: Path, scheme: str, wire: str) -> None:
    async with starlette_server(tmp_path, scheme, wire) as (url, client, _):
        assert EVENTS == {"startup": True}
        hello = await client.get(url + "/hello/J%C3%BCrgen%20K")
        assert hello.status_code == 200
        assert hello.http_version == http_version(wire)
        assert hello.text == "hello Jürgen K (hi from lifespan)"
        assert (await client.get(url + "/version")).text == ("2" if wire == "http2" else "1.1")

        async def body() -> AsyncIterator[bytes]:
            for _ in range(8):
                yield b"x" * 100_000
                await trio.lowlevel.checkpoint()

        upload = await client.post(url + "/upload", content=body())
        assert upload.json()["total"] == 800_000
        assert upload.json()["pieces"] >= 2  # streamed in pieces, not buffered whole

        file = await client.get(url + "/file")
        assert file.content == (tmp_path / "file.bin").read_bytes()
        assert file.headers["content-length"] == "500000"

        boom = await client.get(url + "/boom")
        assert boom.status_code == 500
        again = await client.get(url + "/hello/again")
        assert again.status_code == 200  # the server keeps serving
    assert EVENTS.get("shutdown") is True


async def test_starlette_streaming_is_incremental_and_stops_when_the_client_leaves(tmp_path: Path) -> None:
    async with starlette_server(tmp_path, "http") as (url, _client, _):
        host, port = url.split("://")[1].rsplit(":", 1)
        stream = await trio.open_tcp_stream(host, int(port))
        await stream.send_all(b"GET /ticks HTTP/1.1\r\nHost: x\r\n\r\n")
        with trio.fail_after(5):
            got = await read_until(stream, b"tick 0\n")
            assert b"tick 5" not in got  # incremental: the first tick came before the rest existed
            got = await read_until(stream, b"tick 2\n", buffer=got)
        left = trio.current_time()
        await stream.aclose()
        await eventually(lambda: "stream_finally" in EVENTS)
        assert EVENTS["stream_finally"] - left < 1.6  # within about a second (the liveness poll)


@pytest.mark.parametrize("leave", ["rst_stream", "close_connection"])
async def test_starlette_streaming_over_http2_is_incremental_and_stops_when_the_client_leaves(
    tmp_path: Path, leave: str
) -> None:
    """The two ways an HTTP/2 client leaves: RST_STREAM on the one stream (the connection
    stays and serves the next stream), or closing the connection.  Either way the generator's
    ``finally`` runs within about a second."""
    async with starlette_server(tmp_path, "http") as (url, _client, _):
        async with h2_client(url) as client:
            sid = await client.start_request("GET", "/ticks")
            result = client.results[sid]
            with trio.fail_after(5):
                await client.read_until(lambda: b"tick 0\n" in b"".join(result.chunks))
                assert b"tick 5" not in b"".join(result.chunks)  # incremental
                await client.read_until(lambda: b"tick 2\n" in b"".join(result.chunks))
            left = trio.current_time()
            if leave == "close_connection":
                await client.stream.aclose()
            else:
                await client.reset(sid)
                with trio.fail_after(5):
                    again = await client.request("GET", "/hello/again")
                assert again.status == 200 and again.body == b"hello again (hi from lifespan)"
            await eventually(lambda: "stream_finally" in EVENTS)
            assert EVENTS["stream_finally"] - left < 1.6


async def test_starlette_100_slow_requests_finish_concurrently(tmp_path: Path, wire: str) -> None:
    """Over HTTP/2 the 100 requests are 100 streams of one connection (the server's
    SETTINGS_MAX_CONCURRENT_STREAMS is 100)."""
    async with starlette_server(tmp_path, "http", wire) as (url, client, _):
        results: list[int] = []

        async def one() -> None:
            response = await client.get(url + "/slow")
            assert response.http_version == http_version(wire)
            results.append(response.status_code)

        start = trio.current_time()
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                for _ in range(100):
                    nursery.start_soon(one)
        elapsed = trio.current_time() - start
    assert results == [200] * 100
    assert elapsed < 5  # one at a time would take 100 s


async def test_starlette_websockets_subprotocols_and_close_codes(tmp_path: Path, scheme: str) -> None:
    """HTTP/1.1 (the ``websockets`` client has no RFC 8441); HTTP/2 in the test below."""
    from websockets.asyncio.client import connect  # noqa: F401 - asyncio client: run in a thread below

    async with starlette_server(tmp_path, scheme) as (url, _client, context):
        ws_url = url.replace("http", "ws", 1)
        result = await trio.to_thread.run_sync(_websocket_session, ws_url, context)
        await eventually(lambda: "ws_close_code" in EVENTS)
    assert result["subprotocol"] == "echo.v2"
    assert result["text"] == "echo hello"
    assert result["bytes"] == b"cba"
    assert result["server_close"] == (4321, "as you wish")
    assert result["refused"] == 403
    assert EVENTS["ws_close_code"] == 4001  # the client's own code, not 1006


async def test_starlette_websockets_over_http2_rfc_8441(tmp_path: Path, scheme: str) -> None:
    """The same websocket routes over HTTP/2: extended CONNECT with ``:protocol websocket``
    (RFC 8441), the frames as DATA on the stream; subprotocol, echo, the server's close code,
    the refusal (403) and the client's own close code reaching the app."""
    from wsproto.frame_protocol import FrameProtocol, Opcode

    async with starlette_server(tmp_path, scheme) as (url, _client, context):
        async with h2_client(url, context) as client:
            with trio.fail_after(5):
                await client.read_until(lambda: client.h2.remote_settings.enable_connect_protocol == 1)
            ws_headers = [("sec-websocket-version", "13"), ("sec-websocket-protocol", "nope, echo.v2")]

            async def open_ws(path: str) -> int:
                sid = await client.start_request(
                    "CONNECT", path, protocol="websocket", headers=ws_headers, end_stream=False,
                    scheme="https" if context else "http", authority="localhost",
                )  # fmt: skip
                with trio.fail_after(5):
                    await client.read_until(lambda: client.results[sid].status is not None)
                return sid

            async def frames_on(sid: int, frames: FrameProtocol, count: int) -> list[Any]:
                got: list[Any] = []

                def more() -> bool:
                    chunks = client.results[sid].chunks
                    frames.receive_bytes(b"".join(chunks))
                    chunks.clear()
                    got.extend(frames.received_frames())
                    return len(got) >= count or client.results[sid].ended

                with trio.fail_after(5):
                    await client.read_until(more)
                return got

            sid = await open_ws("/ws")
            result = client.results[sid]
            assert result.status == 200 and ("sec-websocket-protocol", "echo.v2") in result.headers
            frames = FrameProtocol(client=True, extensions=[])
            await client.send_body(sid, frames.send_data("hello", fin=True))
            await client.send_body(sid, frames.send_data(b"abc", fin=True))
            got = await frames_on(sid, frames, 2)
            assert [(f.opcode, f.payload) for f in got] == [(Opcode.TEXT, "echo hello"), (Opcode.BINARY, b"cba")]
            await client.send_body(sid, frames.send_data("close-please", fin=True))
            closing = await frames_on(sid, frames, 1)
            assert closing[0].opcode == Opcode.CLOSE and closing[0].payload == (4321, "as you wish")

            refused = await open_ws("/refuse")
            assert client.results[refused].status == 403

            sid = await open_ws("/ws")
            frames = FrameProtocol(client=True, extensions=[])
            await client.send_body(sid, frames.send_data("hi", fin=True))
            await frames_on(sid, frames, 1)
            await client.send_body(sid, frames.close(4001, "client leaving"))
            await eventually(lambda: "ws_close_code" in EVENTS)
            assert EVENTS["ws_close_code"] == 4001  # the client's own code, not 1006


def _websocket_session(ws_url: str, context: ssl.SSLContext | None) -> dict[str, Any]:
    """A blocking websockets client session (the library's sync client), in a worker thread."""
    from websockets.exceptions import ConnectionClosed, InvalidStatus
    from websockets.sync.client import connect

    out: dict[str, Any] = {}
    kwargs: dict[str, Any] = {"ssl": context} if context else {}
    with connect(ws_url + "/ws", subprotocols=["nope", "echo.v2"], open_timeout=5, **kwargs) as ws:
        out["subprotocol"] = ws.subprotocol
        ws.send("hello")
        out["text"] = ws.recv(timeout=5)
        ws.send(b"abc")
        out["bytes"] = ws.recv(timeout=5)
        ws.send("close-please")
        try:
            ws.recv(timeout=5)
        except ConnectionClosed as closed:
            out["server_close"] = (closed.rcvd.code, closed.rcvd.reason) if closed.rcvd else None
    try:
        with connect(ws_url + "/refuse", open_timeout=5, **kwargs):
            out["refused"] = "accepted?!"
    except InvalidStatus as exc:
        out["refused"] = exc.response.status_code
    with connect(ws_url + "/ws", open_timeout=5, **kwargs) as ws:
        ws.send("hi")
        ws.recv(timeout=5)
        ws.close(code=4001, reason="client leaving")
    return out


# ------------------------------------------------------------------------------- FastAPI


def make_fastapi() -> FastAPI:
    api = FastAPI()

    @api.get("/items/{item_id}")
    async def item(item_id: str, q: str | None = None) -> dict[str, Any]:
        return {"item_id": item_id, "q": q}

    @api.post("/items")
    async def create(payload: dict[str, Any], tasks: BackgroundTasks) -> dict[str, Any]:
        tasks.add_task(_after, payload["name"])
        return {"created": payload["name"]}

    @api.get("/sync")
    def sync_endpoint() -> dict[str, str]:  # FastAPI runs it in a thread (anyio on trio)
        return {"sync": "ok"}

    return api


async def _after(name: str) -> None:
    await trio.sleep(0.05)
    EVENTS["background"] = name


async def test_fastapi_json_path_params_and_background_tasks(scheme: str, wire: str, tmp_path: Path) -> None:
    EVENTS.clear()
    tls = make_tls_files(tmp_path) if scheme == "https" else None
    async with serving(make_fastapi(), tls=tls) as url:
        verify = client_ssl_context(tls) if tls else True
        async with httpx.AsyncClient(verify=verify, timeout=10, **httpx_options(wire)) as client:
            got = await client.get(url + "/items/a%2Fb%20c?q=z")
            assert got.http_version == http_version(wire)
            # Starlette routes on the decoded path: %2F is a slash there, so the route does not match
            assert got.status_code == 404
            got = await client.get(url + "/items/%C3%A9t%C3%A9?q=z")
            assert got.json() == {"item_id": "été", "q": "z"}
            created = await client.post(
                url + "/items", content=json.dumps({"name": "widget"}), headers={"content-type": "application/json"}
            )
            assert created.json() == {"created": "widget"}
            await eventually(lambda: "background" in EVENTS)
            assert EVENTS["background"] == "widget"
            assert (await client.get(url + "/sync")).json() == {"sync": "ok"}
            bad = await client.post(url + "/items", content=b"not json")
            assert bad.status_code == 422
