"""A Flask app on trio-rack (``--interface wsgi``): forms, a streaming generator, concurrent
slow requests on the thread pool, a 10 MiB upload — httpx over real sockets, plain and TLS,
over HTTP/1.1 and HTTP/2 (h2c prior knowledge on plain binds, ALPN h2 over TLS)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from asgi_support import WIRES, http_version, httpx_options, serving
from e2e_support import client_ssl_context, make_tls_files

pytest.importorskip("flask")

from flask import Flask, Response, request, stream_with_context  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def make_app() -> Flask:
    app = Flask(__name__)

    @app.route("/hello/<name>")
    def hello(name: str) -> str:
        return f"hello {name} at {request.script_root}{request.path}"

    @app.route("/version")
    def version() -> str:
        return str(request.environ["SERVER_PROTOCOL"])

    @app.route("/form", methods=["POST"])
    def form() -> dict[str, Any]:
        return {"name": request.form["name"], "tags": request.form.getlist("tag")}

    @app.route("/upload", methods=["POST"])
    def upload() -> dict[str, Any]:
        size = 0
        while chunk := request.stream.read(65536):
            size += len(chunk)
        return {"size": size}

    @app.route("/stream")
    def stream() -> Response:
        @stream_with_context
        def generate() -> Any:
            for i in range(5):
                yield f"part {i} {time.monotonic():.3f}\n"
                time.sleep(0.1)

        return Response(generate(), mimetype="text/plain")

    @app.route("/slow")
    def slow() -> str:
        time.sleep(1)
        return "slow"

    @app.route("/boom")
    def boom() -> str:
        raise RuntimeError("flask boom")

    return app


@pytest.fixture(params=["http", "https"])
def scheme(request: Any) -> str:
    return str(request.param)


@pytest.mark.parametrize("wire", WIRES)
async def test_flask_forms_streams_uploads_and_concurrency(scheme: str, wire: str, tmp_path: Path) -> None:
    tls = make_tls_files(tmp_path) if scheme == "https" else None
    async with serving(make_app(), tls=tls, root_path="/shop") as url:
        verify = client_ssl_context(tls) if tls else True
        async with httpx.AsyncClient(verify=verify, timeout=15, **httpx_options(wire)) as client:
            hello = await client.get(url + "/hello/J%C3%BCrgen")
            assert hello.http_version == http_version(wire)
            assert hello.text == "hello Jürgen at /shop/hello/Jürgen"
            assert (await client.get(url + "/version")).text == ("HTTP/2" if wire == "http2" else "HTTP/1.1")
            form = await client.post(url + "/form", data={"name": "Ada", "tag": ["a", "b"]})
            assert form.json() == {"name": "Ada", "tags": ["a", "b"]}

            arrivals: list[float] = []
            async with client.stream("GET", url + "/stream") as streamed:
                async for line in streamed.aiter_lines():
                    if line:
                        arrivals.append(trio.current_time())
            assert len(arrivals) == 5
            assert arrivals[-1] - arrivals[0] > 0.3  # delivered as generated, not at the end

            upload = await client.post(url + "/upload", content=b"u" * (10 * 1024 * 1024))
            assert upload.json() == {"size": 10 * 1024 * 1024}

            boom = await client.get(url + "/boom")
            assert boom.status_code == 500

            statuses: list[int] = []

            async def slow() -> None:
                statuses.append((await client.get(url + "/slow")).status_code)

            start = trio.current_time()
            async with trio.open_nursery() as nursery:
                for _ in range(10):
                    nursery.start_soon(slow)
            elapsed = trio.current_time() - start
    assert statuses == [200] * 10
    assert elapsed < 2.5  # 10 threads: about 1 s, not 10 s
