"""The ASGI 3 adapter with hand-written ASGI apps: the scope, the message state machine, the
errors, the extensions (ours included) and lifespan — over real sockets with real clients
(httpx, raw sockets for framing details), plain and TLS.  The frameworks are in
``test_frameworks_*.py``."""

from __future__ import annotations

import logging
import ssl
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

import trio_rack
from asgi_support import WIRES, eventually, h2_client, http_version, httpx_options
from asgi_support import serving as _serving
from e2e_support import client_ssl_context, make_tls_files, read_until, read_until_eof
from trio_rack.asgi import LifespanFailure
from trio_rack.config import ConfigError
from trio_rack.interface import detect

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def serving(app: Any, **kwargs: Any) -> Any:
    """Most apps here are http-only: lifespan off unless a test asks for it."""
    kwargs.setdefault("lifespan", "off")
    return _serving(app, **kwargs)


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def _split(url: str) -> tuple[str, int]:
    host, port = url.split("://", 1)[1].rsplit(":", 1)
    return host, int(port)


async def _raw(url: str, request: bytes) -> bytes:
    host, port = _split(url)
    stream = await trio.open_tcp_stream(host, port)
    async with stream:
        await stream.send_all(request)
        data, _ = await read_until_eof(stream)
    return data if isinstance(data, bytes) else data.encode()


# ----------------------------------------------------------------------------- detection


async def _rack(env: Any) -> Any:
    return 200, {}, []


async def _asgi(scope: Any, receive: Any, send: Any) -> None:
    pass


def _wsgi(environ: Any, start_response: Any) -> Any:
    return []


class _ASGIClass:
    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        pass


class _WSGIClass:
    def __call__(self, environ: Any, start_response: Any) -> Any:
        return []


def test_detect_tells_the_three_interfaces_apart() -> None:
    assert detect(_rack) == "rack"
    assert detect(_asgi) == "asgi"
    assert detect(_wsgi) == "wsgi"
    assert detect(_ASGIClass()) == "asgi"
    assert detect(_WSGIClass()) == "wsgi"


@pytest.mark.parametrize(
    "app",
    [lambda a, b, c: None, lambda env: None, _ASGIClass, lambda *args: None],
    ids=["sync-three", "sync-one", "a-class", "star-args"],
)
def test_detect_refuses_what_it_cannot_tell_naming_the_flag(app: Any) -> None:
    with pytest.raises(ConfigError, match="--interface"):
        detect(app)


# --------------------------------------------------------------------------------- scope


async def test_http_scope_has_every_required_key_with_the_right_types() -> None:
    seen: dict[str, Any] = {}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.update(scope)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"ok"})

    async with serving(app, root_path="/mount") as url:
        request = (
            b"GET /caf%C3%A9/a%2Fb?x=1&y=%20 HTTP/1.1\r\nHost: example.test:8080\r\nX-Two: 1\r\n"
            b"x-two: 2\r\nUser-Agent: raw\r\nConnection: close\r\n\r\n"
        )
        data = await _raw(url, request)
    assert data.startswith(b"HTTP/1.1 200 ")
    assert data.endswith(b"\r\n\r\nok")
    assert seen["type"] == "http"
    assert seen["asgi"] == {"version": "3.0", "spec_version": "2.4"}
    assert seen["http_version"] == "1.1"
    assert seen["method"] == "GET"
    assert seen["scheme"] == "http"
    assert seen["path"] == "/mount/café/a/b"
    assert seen["raw_path"] == b"/caf%C3%A9/a%2Fb"
    assert seen["query_string"] == b"x=1&y=%20"
    assert seen["root_path"] == "/mount"
    assert seen["headers"][:4] == [
        (b"host", b"example.test:8080"),
        (b"x-two", b"1"),
        (b"x-two", b"2"),
        (b"user-agent", b"raw"),
    ]
    host, port = _split(url)
    client = seen["client"]
    assert client[0] == "127.0.0.1" and type(client[1]) is int and client[1] > 0
    assert seen["server"] == (host, port) and type(seen["server"][1]) is int
    assert seen["state"] == {}
    assert "http.response.pathsend" in seen["extensions"]
    assert callable(seen["extensions"]["trio_rack.hijack"])
    assert isinstance(seen["extensions"]["trio_rack.shutdown"], trio.Event)


async def test_http_1_0_scope_version() -> None:
    seen: dict[str, Any] = {}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.update(scope)
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body"})

    async with serving(app) as url:
        data = await _raw(url, b"GET / HTTP/1.0\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 204 ")
    assert seen["http_version"] == "1.0"


@pytest.mark.parametrize("wire", WIRES)
async def test_tls_scope_and_extension(tmp_path: Path, wire: str) -> None:
    tls = make_tls_files(tmp_path)
    seen: dict[str, Any] = {}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.update(scope)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"secure"})

    async with serving(app, tls=tls) as url:
        async with httpx.AsyncClient(verify=client_ssl_context(tls), **httpx_options(wire)) as client:
            response = await client.get(url + "/")
    assert response.text == "secure" and response.http_version == http_version(wire)
    assert seen["scheme"] == "https"
    assert seen["http_version"] == ("2" if wire == "http2" else "1.1")
    info = seen["extensions"]["tls"]
    assert info["tls_version"] in (0x0303, 0x0304)
    assert isinstance(info["cipher_suite"], int) and info["cipher_suite"] > 0
    assert info["client_cert_chain"] == []
    assert ssl.HAS_TLSv1_3 is False or info["tls_version"] == 0x0304


# ------------------------------------------------------------------------- request body


async def test_request_body_is_read_on_demand_not_ahead() -> None:
    """The app's first receive() answers with what has arrived; the rest is not read before the
    app asks: here the response goes out before the client has sent the second half."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        first = await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        echo = first["body"] + b"|%d" % first["more_body"]
        await send({"type": "http.response.body", "body": echo, "more_body": True})
        second = await receive()
        await send({"type": "http.response.body", "body": b"|" + second["body"] + b"|%d" % second["more_body"]})

    async with serving(app) as url:
        host, port = _split(url)
        stream = await trio.open_tcp_stream(host, port)
        async with stream:
            await stream.send_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nhello")
            with trio.fail_after(5):
                got = await read_until(stream, b"hello|1")
            await stream.send_all(b"world")
            with trio.fail_after(5):
                got = await read_until(stream, b"0\r\n\r\n", buffer=got)
    assert b"|world|0" in got


async def test_request_body_is_read_on_demand_over_http2() -> None:
    """The same over HTTP/2: the first DATA frame is answered before the second is sent."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        first = await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        echo = first["body"] + b"|%d" % first["more_body"]
        await send({"type": "http.response.body", "body": echo, "more_body": True})
        second = await receive()
        await send({"type": "http.response.body", "body": b"|" + second["body"] + b"|%d" % second["more_body"]})

    async with serving(app) as url, h2_client(url) as client:
        sid = await client.start_request("POST", "/", headers=[("content-length", "10")], end_stream=False)
        await client.send_body(sid, b"hello")
        result = client.results[sid]
        with trio.fail_after(5):
            await client.read_until(lambda: b"hello|1" in b"".join(result.chunks))
        await client.send_body(sid, b"world", end_stream=True)
        with trio.fail_after(5):
            await client.read_stream(sid)
    assert b"".join(result.chunks) == b"hello|1|world|0" and result.reset is None


async def test_request_body_of_unknown_length_over_http2_ends_with_end_stream() -> None:
    """HTTP/2's counterpart of a chunked body: DATA frames without ``content-length``, the end
    being END_STREAM: ``more_body`` True until then (never False early, never a hang)."""
    messages: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            messages.append(message)
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"".join(m.get("body", repr(m).encode()) for m in messages)})

    async with serving(app) as url, h2_client(url) as client:
        sid = await client.start_request("POST", "/", end_stream=False)
        await client.send_body(sid, b"abc")
        await client.send_body(sid, b"de", end_stream=True)
        with trio.fail_after(5):
            result = await client.read_stream(sid)
    assert b"".join(result.chunks) == b"abcde"
    assert all(m["type"] == "http.request" for m in messages), messages
    assert messages[-1]["more_body"] is False and messages[0]["more_body"] is True


async def test_chunked_request_body_arrives_with_more_body_then_the_end() -> None:
    messages: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            messages.append(message)
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"".join(m.get("body", repr(m).encode()) for m in messages)})

    async with serving(app) as url:
        data = await _raw(
            url,
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        )
    assert data.endswith(b"abcde")
    assert all(m["type"] == "http.request" for m in messages), messages
    assert messages[-1]["more_body"] is False and messages[0]["more_body"] is True


async def test_disconnect_after_the_response_and_in_a_cancelled_scope(protocol: str) -> None:
    """Background work after the response gets http.disconnect; so does a receive() made
    inside an already-cancelled scope (Starlette's request.is_disconnected())."""
    got: list[Any] = []
    done = trio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"done"})
        got.append(await receive())
        with trio.CancelScope() as cancelled:
            cancelled.cancel()
            got.append(await receive())
        done.set()

    async with serving(app) as url:
        async with httpx.AsyncClient(**httpx_options(protocol)) as client:
            response = await client.get(url + "/")
            with trio.fail_after(5):
                await done.wait()
    assert response.text == "done"
    assert got == [{"type": "http.disconnect"}, {"type": "http.disconnect"}]


# -------------------------------------------------------------------------------- errors


async def test_app_raising_before_start_gets_500_and_the_server_keeps_serving(caplog: Any, protocol: str) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["path"] == "/boom":
            raise ValueError("kaboom")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"fine"})

    async with serving(app) as url:
        async with httpx.AsyncClient(**httpx_options(protocol)) as client:
            bad = await client.get(url + "/boom")
            good = await client.get(url + "/")
    assert bad.status_code == 500
    assert good.status_code == 200 and good.text == "fine"
    assert "kaboom" in caplog.text


async def test_app_raising_after_start_aborts_the_response_visibly() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        await trio.sleep(0.05)
        raise RuntimeError("mid-stream")

    async with serving(app) as url:
        data = await _raw(url, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 200 ")
    assert b"partial" in data
    assert not data.endswith(b"0\r\n\r\n")  # no terminating chunk: the client sees the abort


async def test_app_raising_after_start_over_http2_resets_the_stream() -> None:
    """HTTP/2's visible abort: RST_STREAM after the partial body, never END_STREAM."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        await trio.sleep(0.05)
        raise RuntimeError("mid-stream")

    async with serving(app) as url, h2_client(url) as client:
        sid = await client.start_request("GET", "/")
        with trio.fail_after(5):
            result = await client.read_stream(sid)
    assert result.status == 200 and b"".join(result.chunks) == b"partial"
    assert not result.ended and result.reset == 2  # INTERNAL_ERROR


async def test_app_raising_after_a_whole_response_is_logged(caplog: Any, protocol: str) -> None:
    """The response was complete (held whole for the server) when the app raised: the client
    gets it, and the app's bug is logged rather than dropped with the unused error."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"whole"})
        raise RuntimeError("bug after the response")

    async with serving(app) as url:
        async with httpx.AsyncClient(**httpx_options(protocol)) as client:
            response = await client.get(url + "/")
            await eventually(lambda: "bug after the response" in caplog.text)
    assert response.status_code == 200 and response.text == "whole"
    assert "ASGI app raised after its response was complete" in caplog.text


async def test_app_returning_without_a_response_gets_500(caplog: Any, protocol: str) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        return None

    async with serving(app) as url:
        async with httpx.AsyncClient(**httpx_options(protocol)) as client:
            response = await client.get(url + "/")
    assert response.status_code == 500
    assert "without sending 'http.response.start'" in caplog.text


@pytest.mark.parametrize(
    ("messages", "named"),
    [
        ([{"type": "http.response.body", "body": b"x"}], "'http.response.body' before 'http.response.start'"),
        (
            [{"type": "http.response.start", "status": 200}, {"type": "http.response.start", "status": 200}],
            "'http.response.start' sent twice",
        ),
        ([{"type": "http.response.strat", "status": 200}], "'http.response.strat'"),
    ],
    ids=["body-first", "start-twice", "typo"],
)
async def test_messages_out_of_order_are_named(
    messages: list[dict[str, Any]], named: str, caplog: Any, protocol: str
) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        for message in messages:
            await send(message)

    async with serving(app) as url:
        async with httpx.AsyncClient(**httpx_options(protocol)) as client:
            response = await client.get(url + "/")
    assert response.status_code == 500
    assert named in caplog.text


async def test_asyncio_only_app_fails_with_one_line_saying_so(caplog: Any, protocol: str) -> None:
    import asyncio

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await asyncio.sleep(0.01)

    caplog.set_level(logging.INFO, logger="trio_rack")
    async with serving(app) as url:
        async with httpx.AsyncClient(**httpx_options(protocol)) as client:
            response = await client.get(url + "/")
    assert response.status_code == 500
    records = [r for r in caplog.records if "asyncio" in r.getMessage()]
    assert len(records) == 1
    assert records[0].exc_info is None  # one line, no traceback
    assert "does not run on Trio" in records[0].getMessage()


async def test_streaming_app_is_cancelled_when_the_client_leaves() -> None:
    """Within about a second (the liveness poll) of the client closing, the app is cancelled
    and its finally runs; a send() it makes after the disconnect raises OSError (spec 2.4)."""
    ended = trio.Event()
    started = trio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        try:
            while True:
                await send({"type": "http.response.body", "body": b"tick\n", "more_body": True})
                started.set()
                await trio.sleep(0.05)
        finally:
            ended.set()

    async with serving(app) as url:
        host, port = _split(url)
        stream = await trio.open_tcp_stream(host, port)
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await read_until(stream, b"tick")
        await stream.aclose()
        with trio.fail_after(3):
            await ended.wait()


async def test_streaming_app_is_cancelled_at_rst_stream_and_send_raises_oserror() -> None:
    """Over HTTP/2 the client leaves one stream with RST_STREAM: the app is cancelled at once
    (its finally runs), a shielded send() raises OSError (spec 2.4), and the connection's
    other streams go on."""
    ended = trio.Event()
    raised: list[BaseException] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["path"] == "/other":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"other"})
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        try:
            while True:
                await send({"type": "http.response.body", "body": b"tick\n", "more_body": True})
                await trio.sleep(0.05)
        finally:
            with trio.CancelScope(shield=True):
                try:
                    await send({"type": "http.response.body", "body": b"late"})
                except OSError as exc:
                    raised.append(exc)
            ended.set()

    async with serving(app) as url, h2_client(url) as client:
        sid = await client.start_request("GET", "/ticks")
        with trio.fail_after(5):
            await client.read_until(lambda: b"tick" in b"".join(client.results[sid].chunks))
        await client.reset(sid)
        with trio.fail_after(1):
            await ended.wait()
        with trio.fail_after(5):
            other = await client.request("GET", "/other")
    assert isinstance(raised[0], OSError)
    assert other.status == 200 and other.body == b"other"


# ---------------------------------------------------------------------------- extensions


async def test_trio_rack_hijack_gives_the_raw_connection_with_buffered_bytes() -> None:
    """The capability ASGI lacks: the app takes the socket (a CONNECT proxy, say); the bytes
    pipelined behind the request come out first; the server closes the stream at the end."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        stream = scope["extensions"]["trio_rack.hijack"]()
        await stream.send_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
        tunnelled = await stream.receive_some()
        await stream.send_all(b"echo:" + tunnelled)

    async with serving(app) as url:
        host, port = _split(url)
        data = await _raw(url, b"CONNECT upstream.test:443 HTTP/1.1\r\nHost: upstream.test:443\r\n\r\nEARLY")
    assert data == b"HTTP/1.1 200 Connection Established\r\n\r\necho:EARLY"


async def test_pathsend_serves_a_file(tmp_path: Path, protocol: str) -> None:
    path = tmp_path / "data.bin"
    path.write_bytes(bytes(range(256)) * 4000)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        assert "http.response.pathsend" in scope["extensions"]
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"1024000")]})
        await send({"type": "http.response.pathsend", "path": str(path)})

    async with serving(app) as url:
        async with httpx.AsyncClient(**httpx_options(protocol)) as client:
            response = await client.get(url + "/")
    assert response.content == path.read_bytes()


async def test_shutdown_extension_is_set_on_graceful_shutdown() -> None:
    shutdown = trio.Event()
    saw_it = trio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"waiting\n", "more_body": True})
        await scope["extensions"]["trio_rack.shutdown"].wait()
        saw_it.set()
        await send({"type": "http.response.body", "body": b"bye\n"})

    async with serving(app, shutdown_trigger=shutdown) as url:
        host, port = _split(url)
        stream = await trio.open_tcp_stream(host, port)
        async with stream:
            await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            got = await read_until(stream, b"waiting")
            shutdown.set()
            with trio.fail_after(5):
                await saw_it.wait()
                got = await read_until(stream, b"0\r\n\r\n", buffer=got)
    assert b"bye" in got


# ----------------------------------------------------------------------------- lifespan


def _lifespan_app(events: list[str], *, fail: bool = False) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            message = await receive()
            assert message["type"] == "lifespan.startup"
            if fail:
                await send({"type": "lifespan.startup.failed", "message": "no database"})
                return
            scope["state"]["db"] = "connected"
            events.append("startup")
            await send({"type": "lifespan.startup.complete"})
            message = await receive()
            assert message["type"] == "lifespan.shutdown"
            events.append("shutdown")
            await send({"type": "lifespan.shutdown.complete"})
            return
        events.append(f"request {sorted(scope['state'])}")
        scope["state"]["scribble"] = True  # a shallow copy: never reaches the next request
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": scope["state"]["db"].encode()})

    return app


async def test_lifespan_startup_state_and_shutdown_after_the_drain(protocol: str) -> None:
    events: list[str] = []
    shutdown = trio.Event()
    async with serving(_lifespan_app(events), shutdown_trigger=shutdown, lifespan="auto") as url:
        assert events == ["startup"]
        async with httpx.AsyncClient(**httpx_options(protocol)) as client:
            first = await client.get(url + "/")
            second = await client.get(url + "/")
        shutdown.set()
        await eventually(lambda: "shutdown" in events)
    assert first.text == second.text == "connected"
    assert events == ["startup", "request ['db']", "request ['db']", "shutdown"]


async def test_lifespan_startup_failure_stops_before_listening() -> None:
    with pytest.raises(BaseException) as info:  # noqa: PT011 - inspected below, through groups
        async with serving(_lifespan_app([], fail=True), lifespan="auto"):
            raise AssertionError("the server must not start")
    leaves = _leaves(info.value)
    assert any(isinstance(e, LifespanFailure) and "no database" in str(e) for e in leaves)


async def test_lifespan_auto_serves_an_app_that_refuses_it(caplog: Any, protocol: str) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            raise ValueError(f"unsupported scope {scope['type']}")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"no lifespan"})

    caplog.set_level(logging.INFO, logger="trio_rack")
    async with serving(app, lifespan="auto") as url:
        async with httpx.AsyncClient(**httpx_options(protocol)) as client:
            response = await client.get(url + "/")
    assert response.text == "no lifespan"
    assert "does not support lifespan" in caplog.text
    with pytest.raises(BaseException) as info:  # noqa: PT011
        async with serving(app, lifespan="on"):
            raise AssertionError("--lifespan on must not serve it")
    leaves = _leaves(info.value)
    assert any(isinstance(e, LifespanFailure) for e in leaves)


async def test_serve_refuses_a_bad_interface_value() -> None:
    with pytest.raises(ConfigError, match="interface"):
        await trio_rack.serve(_asgi, bind="http://127.0.0.1:0", interface="cgi")


async def test_send_after_the_client_left_raises_oserror() -> None:
    """ASGI 2.4: a send() once the client is gone raises an OSError (here from a shielded
    loop, which the request's cancellation cannot interrupt)."""
    raised: list[BaseException] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        with trio.CancelScope(shield=True), trio.fail_after(10):
            try:
                while True:
                    await send({"type": "http.response.body", "body": b"tick\n", "more_body": True})
                    await trio.sleep(0.05)
            except OSError as exc:
                raised.append(exc)

    async with serving(app) as url:
        host, port = _split(url)
        stream = await trio.open_tcp_stream(host, port)
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await read_until(stream, b"tick")
        await stream.aclose()
        await eventually(lambda: raised)
    assert isinstance(raised[0], OSError)


async def test_http2_scope_says_http_version_2_and_offers_no_raw_connection() -> None:
    """Over HTTP/2 (prior knowledge), ``http_version`` is exactly "2", and ``trio_rack.hijack``
    (the raw connection) is absent: a multiplexed connection cannot be handed over."""
    seen: dict[str, Any] = {}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.update(scope)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"over h2"})

    async with serving(app) as url:
        async with httpx.AsyncClient(**httpx_options("http2")) as client:
            response = await client.get(url + "/x?y=1")
    assert response.http_version == "HTTP/2" and response.text == "over h2"
    assert seen["http_version"] == "2"
    assert seen["path"] == "/x" and seen["query_string"] == b"y=1"
    assert "trio_rack.hijack" not in seen.get("extensions", {})
