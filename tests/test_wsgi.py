"""The WSGI (PEP 3333) adapter with hand-written WSGI apps over real sockets: the environ,
wsgi.input on demand, start_response/exc_info, write(), streaming and close(), the thread
pool's bound, file_wrapper.  Flask and Django are in ``test_frameworks_*.py``."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from asgi_support import h2_client, http_version, httpx_options, serving
from e2e_support import read_until, read_until_eof

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _split(url: str) -> tuple[str, int]:
    host, port = url.split("://", 1)[1].rsplit(":", 1)
    return host, int(port)


async def _raw(url: str, request: bytes) -> bytes:
    stream = await trio.open_tcp_stream(*_split(url))
    async with stream:
        await stream.send_all(request)
        data, _ = await read_until_eof(stream)
    return data if isinstance(data, bytes) else data.encode()


async def test_environ_keys_per_pep_3333() -> None:
    seen: dict[str, Any] = {}

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen.update(environ)
        seen["thread"] = threading.current_thread() is not threading.main_thread()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    async with serving(app, interface="wsgi", root_path="/app") as url:
        data = await _raw(
            url, b"GET /app/caf%C3%A9/x%2Fy?q=%20 HTTP/1.1\r\nHost: example.test:8080\r\nConnection: close\r\n\r\n"
        )
    assert data.startswith(b"HTTP/1.1 200 ") and data.endswith(b"ok")
    assert seen["thread"] is True  # the app never runs on the event loop's thread
    assert seen["REQUEST_METHOD"] == "GET"
    assert seen["SCRIPT_NAME"] == "/app"
    assert seen["PATH_INFO"] == "/café/x/y".encode().decode("latin-1")  # bytes as latin-1
    assert seen["QUERY_STRING"] == "q=%20"
    assert seen["SERVER_NAME"] == "example.test"
    assert seen["SERVER_PORT"] == "8080" and isinstance(seen["SERVER_PORT"], str)
    assert seen["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert seen["HTTP_HOST"] == "example.test:8080"
    assert seen["wsgi.version"] == (1, 0)
    assert seen["wsgi.url_scheme"] == "http"
    assert seen["wsgi.multithread"] is True
    assert seen["wsgi.run_once"] is False
    assert seen["wsgi.input_terminated"] is True
    assert callable(seen["wsgi.file_wrapper"])
    assert hasattr(seen["wsgi.errors"], "write") and hasattr(seen["wsgi.errors"], "flush")


async def test_wsgi_input_read_readline_iteration_on_a_chunked_body() -> None:
    got: dict[str, Any] = {}

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        stream = environ["wsgi.input"]
        got["first"] = stream.readline()
        got["three"] = stream.read(3)
        got["lines"] = list(stream)
        got["end"] = stream.read()
        start_response("200 OK", [])
        return [b"done"]

    async with serving(app, interface="wsgi") as url:
        data = await _raw(
            url,
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            b"6\r\nline1\n\r\n9\r\nabcline2\n\r\n6\r\nline3\n\r\n0\r\n\r\n",
        )
    assert data.endswith(b"done")
    assert got == {"first": b"line1\n", "three": b"abc", "lines": [b"line2\n", b"line3\n"], "end": b""}


async def test_headers_wait_for_the_first_non_empty_item_and_exc_info_can_replace_them(protocol: str) -> None:
    def app(environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", [("content-type", "text/plain")])

        def body() -> Any:
            yield b""
            try:
                raise ValueError("changed my mind")
            except ValueError:
                start_response("503 Service Unavailable", [("x-replaced", "yes")], sys.exc_info())
            yield b"replaced"

        return body()

    async with serving(app, interface="wsgi") as url:
        async with httpx.AsyncClient(**httpx_options(protocol)) as client:
            response = await client.get(url + "/")
    assert response.status_code == 503 and response.http_version == http_version(protocol)
    assert response.headers["x-replaced"] == "yes"
    assert response.text == "replaced"


async def test_exc_info_after_the_head_went_out_reraises_and_aborts() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", [])

        def body() -> Any:
            yield b"first"
            try:
                raise KeyError("late")
            except KeyError:
                start_response("500 Oops", [], sys.exc_info())  # raises KeyError again
            yield b"never"

        return body()

    async with serving(app, interface="wsgi") as url:
        data = await _raw(url, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 200 ")
    assert b"first" in data and b"never" not in data
    assert not data.endswith(b"0\r\n\r\n")  # aborted visibly


async def test_write_callable_and_streamed_iterable_closed_exactly_once(protocol: str) -> None:
    closed: list[int] = []

    class Body:
        def __init__(self) -> None:
            self.items = iter([b"b", b"c"])

        def __iter__(self) -> Any:
            return self

        def __next__(self) -> bytes:
            return next(self.items)

        def close(self) -> None:
            closed.append(1)

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        write = start_response("200 OK", [("content-type", "text/plain")])
        write(b"a")
        return Body()

    async with serving(app, interface="wsgi") as url:
        async with httpx.AsyncClient(**httpx_options(protocol)) as client:
            response = await client.get(url + "/")
    assert response.text == "abc" and response.http_version == http_version(protocol)
    assert closed == [1]


async def test_client_leaving_fails_the_next_write_and_close_still_runs() -> None:
    closed = threading.Event()
    failure: list[BaseException] = []

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", [])

        def body() -> Any:
            try:
                for _ in range(2000):
                    yield b"x" * 1000 + b"\n"
                    time.sleep(0.01)
            except BaseException as exc:  # GeneratorExit when the server closes the iterable
                failure.append(exc)
                raise
            finally:
                closed.set()

        return body()

    async with serving(app, interface="wsgi") as url:
        stream = await trio.open_tcp_stream(*_split(url))
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await read_until(stream, b"xxxx")
        await stream.aclose()
        with trio.fail_after(5):
            await trio.to_thread.run_sync(closed.wait, 5)
    assert closed.is_set()
    assert failure and isinstance(failure[0], GeneratorExit)


async def test_slow_requests_run_in_parallel_threads_and_the_pool_is_bounded(protocol: str) -> None:
    active = 0
    peak = 0
    lock = threading.Lock()

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        time.sleep(0.5)
        with lock:
            active -= 1
        start_response("200 OK", [])
        return [b"slept"]

    async with serving(app, interface="wsgi", threads=3) as url:
        async with httpx.AsyncClient(timeout=10, **httpx_options(protocol)) as client:
            start = trio.current_time()
            async with trio.open_nursery() as nursery:
                for _ in range(6):
                    nursery.start_soon(client.get, url + "/")
                # the event loop stays free while the threads sleep
                ping = await client.get(url + "/")
            elapsed = trio.current_time() - start
    assert ping.text == "slept" and ping.http_version == http_version(protocol)  # over h2: 7 streams, 1 connection
    assert peak == 3  # bounded by --threads
    assert 0.9 < elapsed < 3  # 7 requests, 3 at a time: three rounds of 0.5 s


async def test_file_wrapper_sends_the_file(tmp_path: Path, protocol: str) -> None:
    path = tmp_path / "big.bin"
    path.write_bytes(bytes(range(256)) * 10_000)

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", [("content-length", str(path.stat().st_size))])
        return environ["wsgi.file_wrapper"](open(path, "rb"), 65536)  # noqa: SIM115 - closed by the server

    async with serving(app, interface="wsgi") as url:
        async with httpx.AsyncClient(**httpx_options(protocol)) as client:
            response = await client.get(url + "/")
    assert response.content == path.read_bytes() and response.http_version == http_version(protocol)


async def test_app_raising_before_the_head_gets_500(caplog: Any, protocol: str) -> None:
    def app(environ: dict[str, Any], start_response: Any) -> Any:
        raise RuntimeError("wsgi boom")

    async with serving(app, interface="wsgi") as url:
        async with httpx.AsyncClient(**httpx_options(protocol)) as client:
            response = await client.get(url + "/")
    assert response.status_code == 500 and response.http_version == http_version(protocol)
    assert "wsgi boom" in caplog.text


async def test_header_values_are_latin_1_and_server_port_a_str_on_the_wire() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        assert isinstance(environ["SERVER_PORT"], str)
        start_response("200 OK", [("X-Name", "café"), ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")])
        return [b"ok"]

    async with serving(app, interface="wsgi") as url:
        data = await _raw(url, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head = data.split(b"\r\n\r\n", 1)[0].lower()
    assert b"x-name: caf\xe9" in head  # latin-1 on the wire, not UTF-8
    assert b"set-cookie: a=1" in head and b"set-cookie: b=2" in head


async def test_file_wrapper_over_a_non_file_is_iterated(protocol: str) -> None:
    import io

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", [])
        return environ["wsgi.file_wrapper"](io.BytesIO(b"in memory " * 1000), 4096)

    async with serving(app, interface="wsgi") as url:
        async with httpx.AsyncClient(**httpx_options(protocol)) as client:
            response = await client.get(url + "/")
    assert response.content == b"in memory " * 1000 and response.http_version == http_version(protocol)


# ------------------------------------------------------------------------------- HTTP/2
# The tests above that speak raw HTTP/1.1 bytes (chunked framing, a closed socket, a missing
# terminating chunk), over HTTP/2 with the h2 library on a real socket.


async def test_environ_over_http2_and_a_body_of_unknown_length() -> None:
    """``SERVER_PROTOCOL`` is ``HTTP/2``; DATA frames without ``content-length`` read through
    ``wsgi.input`` line by line up to END_STREAM (``wsgi.input_terminated``: read() to the end)."""
    seen: dict[str, Any] = {}

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen.update(environ)
        stream = environ["wsgi.input"]
        seen["lines"] = [stream.readline(), stream.read(3), *list(stream), stream.read()]
        start_response("200 OK", [("X-Name", "café")])
        return [b"ok"]

    async with serving(app, interface="wsgi", root_path="/app") as url, h2_client(url) as client:
        sid = await client.start_request("POST", "/app/caf%C3%A9?q=1", end_stream=False)
        for piece in (b"line1\n", b"abcline2\n", b"line3\n"):
            await client.send_body(sid, piece)
        await client.send_body(sid, b"", end_stream=True)
        with trio.fail_after(5):
            result = await client.read_stream(sid)
    assert result.status == 200 and b"".join(result.chunks) == b"ok"
    assert ("x-name", "café") in result.headers  # latin-1 on the wire (the client decodes it so)
    assert seen["SERVER_PROTOCOL"] == "HTTP/2"
    assert seen["SCRIPT_NAME"] == "/app" and seen["PATH_INFO"] == "/café".encode().decode("latin-1")
    assert seen["QUERY_STRING"] == "q=1" and isinstance(seen["SERVER_PORT"], str)
    assert seen["wsgi.input_terminated"] is True
    assert seen["lines"] == [b"line1\n", b"abc", b"line2\n", b"line3\n", b""]


async def test_exc_info_after_the_head_over_http2_resets_the_stream() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", [])

        def body() -> Any:
            yield b"first"
            try:
                raise KeyError("late")
            except KeyError:
                start_response("500 Oops", [], sys.exc_info())  # raises KeyError again
            yield b"never"

        return body()

    async with serving(app, interface="wsgi") as url, h2_client(url) as client:
        sid = await client.start_request("GET", "/")
        with trio.fail_after(5):
            result = await client.read_stream(sid)
    assert result.status == 200 and b"".join(result.chunks) == b"first"
    assert not result.ended and result.reset == 2  # INTERNAL_ERROR: aborted visibly


async def test_rst_stream_fails_the_next_write_and_close_still_runs() -> None:
    """The HTTP/2 client leaves one stream (RST_STREAM): the thread's next write fails, the
    iterable's close() runs, and the connection's next stream is served."""
    closed = threading.Event()
    failure: list[BaseException] = []

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", [])
        if environ["PATH_INFO"] == "/next":
            return [b"next"]

        def body() -> Any:
            try:
                for _ in range(2000):
                    yield b"x" * 1000 + b"\n"
                    time.sleep(0.01)
            except BaseException as exc:
                failure.append(exc)
                raise
            finally:
                closed.set()

        return body()

    async with serving(app, interface="wsgi") as url, h2_client(url) as client:
        sid = await client.start_request("GET", "/")
        with trio.fail_after(5):
            await client.read_until(lambda: b"xxxx" in b"".join(client.results[sid].chunks))
        await client.reset(sid)
        with trio.fail_after(5):
            await trio.to_thread.run_sync(closed.wait, 5)
            again = await client.request("GET", "/next")
    assert closed.is_set()
    assert failure and isinstance(failure[0], GeneratorExit)
    assert again.status == 200 and again.body == b"next"
