"""ASGI's ``http.response.trailers`` extension: offered on HTTP/2 only, sent as the final
HEADERS frame with END_STREAM, read by real clients (the h2 library over a real socket, plain
h2c and TLS with ALPN; nghttp) from a server the test starts; absent on HTTP/1.1; bad
trailers or a missing last trailers message reset the stream instead of ending it cleanly."""

from __future__ import annotations

import logging
import shutil
import ssl
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from h2.errors import ErrorCodes

from asgi_support import h2_client
from asgi_support import serving as _serving
from e2e_support import client_ssl_context, make_tls_files
from trio_rack.testing.h2 import StreamResult

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def serving(app: Any, **kwargs: Any) -> Any:
    kwargs.setdefault("lifespan", "off")
    return _serving(app, **kwargs)


async def fetch(url: str, context: ssl.SSLContext | None, path: str = "/", method: str = "GET") -> StreamResult:
    async with h2_client(url, context) as client:
        scheme = "https" if context is not None else "http"
        sid = await client.start_request(method, path, scheme=scheme, authority="localhost")
        with trio.fail_after(10):
            return await client.read_stream(sid)


def trailers_app(seen: dict[str, Any], *, paced: bool) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen["extensions"] = dict(scope["extensions"])
        seen["http_version"] = scope["http_version"]
        head = [(b"content-type", b"text/plain")]
        await send({"type": "http.response.start", "status": 200, "headers": head, "trailers": True})
        for part in (b"first ", b"second"):
            await send({"type": "http.response.body", "body": part, "more_body": True})
            if paced:  # the server has taken the head: the streamed path
                await trio.sleep(0.05)
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        await send({"type": "http.response.trailers", "headers": [(b"x-checksum", b"c0ffee")], "more_trailers": True})
        await send({"type": "http.response.trailers", "headers": [(b"grpc-status", b"0")], "more_trailers": False})

    return app


@pytest.mark.parametrize("scheme", ["http", "https"])
@pytest.mark.parametrize("paced", [False, True], ids=["at-once", "paced"])
async def test_trailers_reach_a_real_http2_client(scheme: str, paced: bool, tmp_path: Path) -> None:
    seen: dict[str, Any] = {}
    tls = make_tls_files(tmp_path) if scheme == "https" else None
    async with serving(trailers_app(seen, paced=paced), tls=tls) as url:
        result = await fetch(url, client_ssl_context(tls) if tls else None)
    assert seen["http_version"] == "2"
    assert seen["extensions"]["http.response.trailers"] == {}
    assert result.status == 200 and result.reset is None and result.ended
    assert b"".join(result.chunks) == b"first second"
    assert ("content-length", "12") not in result.headers  # streamed: the length is not known first
    assert result.trailers == [("x-checksum", "c0ffee"), ("grpc-status", "0")]


async def test_trailers_after_an_empty_body_and_after_pathsend(tmp_path: Path) -> None:
    """A head, no DATA at all, then the trailers; and a file sent by path, then the trailers."""
    (tmp_path / "f.txt").write_bytes(b"from a file\n" * 1000)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [], "trailers": True})
        if scope["path"] == "/file":
            await send({"type": "http.response.pathsend", "path": str(tmp_path / "f.txt")})
        else:
            await send({"type": "http.response.body", "body": b""})
        await send({"type": "http.response.trailers", "headers": [(b"x-done", b"yes")]})

    async with serving(app) as url:
        empty = await fetch(url, None, "/empty")
        file = await fetch(url, None, "/file")
    assert empty.status == 200 and empty.reset is None and b"".join(empty.chunks) == b""
    assert empty.trailers == [("x-done", "yes")]
    assert file.status == 200 and file.reset is None and b"".join(file.chunks) == b"from a file\n" * 1000
    assert file.trailers == [("x-done", "yes")]


@pytest.mark.skipif(shutil.which("nghttp") is None, reason="nghttp (nghttp2-client) not installed")
async def test_nghttp_shows_the_trailers() -> None:
    seen: dict[str, Any] = {}
    async with serving(trailers_app(seen, paced=False)) as url:
        done = await trio.run_process(
            ["nghttp", "-v", "--timeout=10", url + "/"], capture_stdout=True, capture_stderr=True, check=False
        )
    out = done.stdout.decode()
    assert done.returncode == 0, done.stderr.decode()
    # nghttp prints a frame's fields, then the frame: the trailers after the DATA, then a
    # HEADERS frame with END_STREAM
    trailing = out[out.rindex("recv DATA frame") :]
    assert "x-checksum: c0ffee" in trailing and "grpc-status: 0" in trailing
    assert "; END_STREAM | END_HEADERS" in trailing[trailing.index("recv HEADERS frame") :]
    assert out.index("second") < out.index("grpc-status: 0")


async def test_the_extension_is_absent_on_http1_and_trailers_true_there_is_a_clear_500(caplog: Any) -> None:
    seen: dict[str, Any] = {}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen["extensions"] = dict(scope["extensions"])
        await send({"type": "http.response.start", "status": 200, "headers": [], "trailers": True})
        await send({"type": "http.response.body", "body": b"never"})

    async with serving(app) as url:
        async with httpx.AsyncClient() as client:
            response = await client.get(url + "/")
    assert response.http_version == "HTTP/1.1"
    assert "http.response.trailers" not in seen["extensions"]
    assert response.status_code == 500
    assert "trailers need HTTP/2" in caplog.text


BAD_TRAILERS = [
    ([(b":status", b"200")], "pseudo-header"),
    ([(b"Grpc-Status", b"0")], "not a lower-case field name"),
    ([(b"connection", b"close")], "not allowed in trailers"),
    ([(b"content-length", b"3")], "not allowed in trailers"),
    ([(b"x-split", b"a\r\nb")], "control bytes"),
    ([("x-text", "not bytes")], "(bytes, bytes) pairs"),
]


@pytest.mark.parametrize(("headers", "named"), BAD_TRAILERS, ids=["pseudo", "upper", "hop", "framing", "crlf", "str"])
async def test_bad_trailers_reset_the_stream_and_name_the_fault(
    headers: list[tuple[Any, Any]], named: str, caplog: Any
) -> None:
    raised: list[BaseException] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [], "trailers": True})
        await send({"type": "http.response.body", "body": b"body before the bad trailers"})
        try:
            await send({"type": "http.response.trailers", "headers": headers})
        except Exception as exc:
            raised.append(exc)
            raise

    caplog.set_level(logging.ERROR, logger="trio_rack")
    async with serving(app) as url:
        result = await fetch(url, None)
        again = await fetch(url, None)  # the server (and the next stream) carry on
    assert raised and "'http.response.trailers'" in str(raised[0]) and named in str(raised[0])
    assert result.reset == ErrorCodes.INTERNAL_ERROR  # not a response that looks complete
    assert result.trailers == []
    assert again.reset == ErrorCodes.INTERNAL_ERROR
    assert named in caplog.text


@pytest.mark.parametrize(
    ("messages", "named"),
    [
        (
            [{"type": "http.response.body", "body": b"x", "more_body": True}, {"type": "http.response.trailers"}],
            "before the body ended",
        ),
        (
            [{"type": "http.response.body", "body": b"x"}, {"type": "http.response.trailers", "more_trailers": True}],
            "without its last 'http.response.trailers'",
        ),
        (
            [{"type": "http.response.body", "body": b"x"}],
            "without its last 'http.response.trailers'",
        ),
        (
            [
                {"type": "http.response.body", "body": b"x"},
                {"type": "http.response.trailers"},
                {"type": "http.response.trailers"},
            ],
            "after the last trailers",
        ),
    ],
    ids=["before-body-end", "more-trailers-then-return", "no-trailers", "twice"],
)
async def test_trailer_messages_out_of_order_are_named_and_reset(
    messages: list[dict[str, Any]], named: str, caplog: Any
) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [], "trailers": True})
        for message in messages:
            await send(message)

    caplog.set_level(logging.ERROR, logger="trio_rack")
    async with serving(app) as url:
        result = await fetch(url, None)
    assert named in caplog.text
    if named == "after the last trailers":  # the response may have ended before the app's bug
        assert result.status == 200 and b"".join(result.chunks) == b"x"
    else:
        assert result.reset == ErrorCodes.INTERNAL_ERROR


async def test_trailers_without_the_flag_are_named(caplog: Any) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"x"})
        await send({"type": "http.response.trailers", "headers": [(b"x-a", b"1")]})

    caplog.set_level(logging.ERROR, logger="trio_rack")
    async with serving(app) as url:
        result = await fetch(url, None)
    assert result.status == 200 and b"".join(result.chunks) == b"x" and result.trailers == []
    assert "without 'trailers': True" in caplog.text

