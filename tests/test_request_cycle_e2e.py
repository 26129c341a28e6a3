"""Issue 9's request-cycle points end to end: a real ``trio_rack.serve`` on 127.0.0.1 over real
TLS, curl and raw sockets as clients (``--request-timeout``, ``--limit-concurrency``, an empty
line before a request).  The protocol details are in test_request_deadline.py and
test_slow_clients.py; here the point is that they hold on real sockets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from e2e_support import (
    TLSFiles,
    curl,
    make_tls_files,
    open_client,
    read_until,
    read_until_eof,
    split_head,
    start_server,
)
from trio_rack import Limits


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    return make_tls_files(Path(tmp_path_factory.mktemp("tls")))


def url(bind: Any, path: str) -> str:
    return f"https://localhost:{bind.port}{path}"


async def get(
    tls: TLSFiles, bind: Any, path: str, version: str = "--http1.1"
) -> tuple[int, dict[str, list[str]], bytes]:
    resolve = f"localhost:{bind.port}:127.0.0.1"
    return (await curl("-i", version, "--cacert", tls.ca_pem, "--resolve", resolve, url(bind, path))).response()


async def test_request_timeout_gives_503_and_other_requests_are_served(tls: TLSFiles) -> None:
    cancelled = trio.Event()  # set by either protocol's slow request

    async def app(env: dict[str, Any]) -> Any:
        if env["PATH_INFO"] == "/slow":
            try:
                await trio.sleep(30)
            finally:
                cancelled.set()
        return 200, {}, [b"fast"]

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            bind = await start_server(nursery, app, tls=tls, limits=Limits(request_timeout=0.5))
            results: dict[str, Any] = {}

            async def fetch(path: str, version: str) -> None:
                results[path, version] = await get(tls, bind, path, version)

            async with trio.open_nursery() as clients:
                for version in ("--http1.1", "--http2"):
                    clients.start_soon(fetch, "/slow", version)
                    clients.start_soon(fetch, "/fast", version)
            status, headers, _ = results["/slow", "--http1.1"]
            assert status == 503 and headers["connection"] == ["close"]
            status, _, _ = results["/slow", "--http2"]
            assert status == 503  # on HTTP/2 the stream ends; the connection is not closed for it
            assert cancelled.is_set()
            for version in ("--http1.1", "--http2"):
                status, _, body = results["/fast", version]
                assert status == 200 and body == b"fast"
            nursery.cancel_scope.cancel()


async def test_limit_concurrency_answers_503_with_retry_after(tls: TLSFiles) -> None:
    release = trio.Event()
    holding = trio.Event()

    async def app(env: dict[str, Any]) -> Any:
        if env["PATH_INFO"] == "/hold":
            holding.set()
            await release.wait()
        return 200, {}, [env["PATH_INFO"].encode()]

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            bind = await start_server(nursery, app, tls=tls, limits=Limits(limit_concurrency=1))
            held = await open_client(bind, tls)
            await held.send_all(b"GET /hold HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            await holding.wait()
            status, headers, _ = await get(tls, bind, "/x")
            assert status == 503 and headers["retry-after"] == ["1"]
            release.set()
            data, _ = await read_until_eof(held)
            assert data.startswith(b"HTTP/1.1 200 ") and data.endswith(b"/hold")
            await held.aclose()
            status, _, body = await get(tls, bind, "/y")
            assert status == 200 and body == b"/y"
            nursery.cancel_scope.cancel()


async def test_an_empty_line_before_a_request_is_ignored_over_tls(tls: TLSFiles) -> None:
    async def app(env: dict[str, Any]) -> Any:
        return 200, {}, [env["PATH_INFO"].encode()]

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            bind = await start_server(nursery, app, tls=tls)
            stream = await open_client(bind, tls)
            await stream.send_all(b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nz\r\n")
            first = await read_until(stream, b"\r\n\r\n/a")
            await stream.send_all(b"\r\nGET /b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            rest, _ = await read_until_eof(stream)
            assert split_head(first)[0] == 200
            status, _, body = split_head(rest)
            assert status == 200 and body == b"/b"
            await stream.aclose()
            nursery.cancel_scope.cancel()


@pytest.mark.slow  # the window is 5 s of real time
async def test_a_trickling_body_over_tls_gets_408(tls: TLSFiles) -> None:
    async def app(env: dict[str, Any]) -> Any:
        body = await env["rack.input"].read_all()
        return 200, {}, [str(len(body)).encode()]

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            bind = await start_server(nursery, app, tls=tls, limits=Limits(min_body_rate=1000))
            stream = await open_client(bind, tls)
            await stream.send_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
            start = trio.current_time()

            async def trickle() -> None:
                try:
                    while True:
                        await stream.send_all(b"x" * 50)  # 200 B/s
                        await trio.sleep(0.25)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass

            nursery.start_soon(trickle)
            data, _ = await read_until_eof(stream)
            elapsed = trio.current_time() - start
            status, headers, _ = split_head(data)
            assert status == 408 and headers["connection"] == ["close"]
            assert 5.0 <= elapsed < 8.0
            nursery.cancel_scope.cancel()
        await stream.aclose()  # after the trickle task has stopped
