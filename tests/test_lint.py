"""trio_rack.lint.Lint: every rule has an app (or env) that breaks it, and good apps pass.

App-side rules run through ``testing.Transport`` (the real connection loop), where the
LintError reaches the test; env-side rules take a real env captured from the server and spoil
one key.  One test runs under ``serve()`` to show the 500 and the rule in the log.
"""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
import pytest
import trio
import wsproto.events
from wsproto.connection import Connection, ConnectionType

from e2e_support import open_client, read_until_eof, split_head, start_server
from trio_rack import Builder, FileBody, sse, websocket
from trio_rack.deflate import Deflater
from trio_rack.lint import RULES, Lint, LintError
from trio_rack.static import Files
from trio_rack.testing import Transport


def client(app) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=Transport(Lint(app)), base_url="http://test")


async def expect_rule(rule: str, app, method: str = "GET", **kwargs) -> None:
    async with client(app) as c:
        with pytest.raises(LintError) as info:
            await c.request(method, "/", **kwargs)
    assert info.value.rule == rule, str(info.value)
    assert str(info.value).startswith(f"[{rule}] ")


def returning(status=200, headers=None, body=None):
    async def app(env):
        return status, {"content-type": "text/plain"} if headers is None else headers, [b"ok"] if body is None else body

    return app


# ------------------------------------------------------------------------- the app's side

@pytest.mark.parametrize(
    ("rule", "app"),
    [
        ("response.triple", "returns None"),
        ("response.triple", "returns a pair"),
        ("response.status", returning(status="200")),
        ("response.status", returning(status=1000)),
        ("response.status", returning(status=103)),
        ("response.headers", returning(headers=[("content-type", "text/plain")])),
        ("response.headers", returning(headers={"Content-Type": "text/plain"})),
        ("response.headers", returning(headers={"x-bad": "a\r\nb"})),
        ("response.headers", returning(headers={"x-num": 5})),
        ("response.headers", returning(headers={"x-bad name": "v"})),
        ("response.headers.reserved", returning(headers={"rack.session": "x"})),
        ("response.headers.hop-by-hop", returning(headers={"transfer-encoding": "chunked"})),
        ("response.headers.hop-by-hop", returning(headers={"connection": "close"})),
        ("response.headers.no-body", returning(status=204, headers={"content-type": "text/plain"}, body=[])),
        ("response.headers.no-body", returning(status=304, headers={"content-length": "10"}, body=[])),
        ("response.no-body", returning(status=204, headers={}, body=[b"oops"])),
        ("response.content-length", returning(headers={"content-length": "5"}, body=[b"too long"])),
        ("response.hijack", returning(headers={"rack.hijack": "not callable"})),
        ("body.type", returning(body=b"bare bytes")),
        ("body.type", returning(body=42)),
        ("body.chunk", returning(body=["text, not bytes"])),
    ],
)
async def test_response_rules(rule, app):
    if isinstance(app, str):
        result = None if app == "returns None" else (200, {})

        async def app(env):
            return result

    await expect_rule(rule, app)


async def test_streamed_content_length_must_match():
    async def gen():
        yield b"abc"

    await expect_rule("response.content-length", returning(headers={"content-length": "10"}, body=gen()))

    async def body(stream):
        await stream.send_all(b"abcdef")

    await expect_rule("response.content-length", returning(headers={"content-length": "3"}, body=body))


async def test_chunks_of_streamed_bodies_must_be_bytes():
    def gen():
        yield "str chunk"

    await expect_rule("body.chunk", returning(body=gen()))

    async def body(stream):
        await stream.send_all("str")

    await expect_rule("body.chunk", returning(body=body))


async def test_no_streamed_body_for_204_or_304():
    """The server never runs a streamed body for these statuses: an app returning one is wrong."""

    async def body(stream):
        await stream.send_all(b"x")

    await expect_rule("response.no-body", returning(status=204, headers={}, body=body))
    await expect_rule("response.no-body", returning(status=304, headers={}, body=iter([b"x"])))


async def test_a_body_is_consumed_at_most_once():
    status, headers, body = await Lint(returning(body=(b for b in [b"a"])))(await real_env())
    assert list(body) == [b"a"]
    with pytest.raises(LintError) as info:
        list(body)
    assert info.value.rule == "body.once"


async def test_the_body_must_be_closed_once():
    """The server closes the body exactly once; a middleware that drops the app's body breaks it."""

    async def gen():
        yield b"a"

    def swallow(app):
        async def mw(env):
            status, headers, body = await app(env)
            return status, headers, [b"replaced"]  # never closes the Lint-wrapped body

        return mw

    async with httpx.AsyncClient(transport=Transport(swallow(Lint(returning(body=gen())))), base_url="http://t") as c:
        with pytest.raises(LintError, match="the server closed the body 0 times") as info:
            await c.get("/")
    assert info.value.rule == "body.closed"


async def test_file_bodies_must_name_a_regular_file(tmp_path):
    (tmp_path / "f.txt").write_bytes(b"12345")
    await expect_rule("body.path", returning(body=FileBody(tmp_path / "missing")))
    await expect_rule("body.path", returning(body=FileBody(tmp_path)))
    await expect_rule("body.path", returning(body=FileBody(tmp_path / "f.txt", 3, 10)))
    await expect_rule(
        "response.content-length", returning(headers={"content-length": "5"}, body=FileBody(tmp_path / "f.txt", 1))
    )


async def test_streams_are_not_used_after_close():
    async def body(stream):
        await stream.aclose()
        await stream.send_all(b"late")

    await expect_rule("stream.closed", returning(body=body))

    async def reader(env):
        await env["rack.input"].aclose()
        await env["rack.input"].receive_some()
        return 200, {}, []

    await expect_rule("stream.closed", reader, "POST", content=b"data")


async def test_streams_are_not_used_after_the_response_finished():
    """A task that outlives its request and touches rack.input gets the rule, not silence."""
    kept = {}

    async def app(env):
        kept["input"] = env["rack.input"]
        return 200, {}, [b"done"]

    async with client(app) as c:
        assert (await c.get("/")).text == "done"
    with pytest.raises(LintError, match=r"\[stream.closed\] rack.input used after the response finished"):
        await kept["input"].receive_some()


async def test_receive_some_max_bytes_is_checked():
    async def app(env):
        await env["rack.input"].receive_some(0)
        return 200, {}, []

    await expect_rule("stream.max-bytes", app, "POST", content=b"x")


async def test_hijack_only_when_offered():
    async def app(env):
        env["rack.hijack?"] = False  # as a server without hijack support would say
        env["rack.hijack"]()
        return -1, {}, []

    await expect_rule("hijack.not-offered", app)


async def test_app_called_twice_by_a_middleware():

    def twice(app):
        async def mw(env):
            await app(env)
            return await app(env)

        return mw

    async with httpx.AsyncClient(transport=Transport(twice(Lint(returning()))), base_url="http://t") as c:
        with pytest.raises(LintError) as info:
            await c.get("/")
    assert info.value.rule == "app.called-twice"


async def test_early_hints_headers_are_checked():
    async def app(env):
        await env["rack.early_hints"]({"Link": "</a.css>; rel=preload"})
        return 200, {}, []

    await expect_rule("early-hints.headers", app)


# ------------------------------------------------------------------------- the server's side

async def real_env() -> dict:
    """An env exactly as the server builds it (captured through the real loop)."""
    captured = {}

    async def app(env):
        captured.update(env)
        return 200, {}, []

    async with httpx.AsyncClient(transport=Transport(app), base_url="http://test") as c:
        await c.get("/path?q=1")
    return captured


@pytest.mark.parametrize(
    ("rule", "change"),
    [
        ("env.type", None),
        ("env.key", {"QUERY_STRING": None}),
        ("env.key", {"SERVER_NAME": 5}),
        ("env.request-method", {"REQUEST_METHOD": "GE T"}),
        ("env.script-name", {"SCRIPT_NAME": "/"}),
        ("env.script-name", {"SCRIPT_NAME": "app"}),
        ("env.path-info", {"PATH_INFO": "path"}),
        ("env.server-port", {"SERVER_PORT": "eighty"}),
        ("env.server-protocol", {"SERVER_PROTOCOL": "HTTP 1.1"}),
        ("env.content-length", {"CONTENT_LENGTH": "-1"}),
        ("env.http-content", {"HTTP_CONTENT_TYPE": "text/plain"}),
        ("env.http-content", {"HTTP_CONTENT_LENGTH": "3"}),
        ("env.http-value", {"HTTP_X_THING": b"bytes"}),
        ("env.url-scheme", {"rack.url_scheme": "ftp"}),
        ("env.input", {"rack.input": b"body"}),
        ("env.errors", {"rack.errors": None}),
        ("env.hijack", {"rack.hijack?": "yes"}),
        ("env.hijack", {"rack.hijack": None}),
        ("env.response-finished", {"rack.response_finished": ()}),
        ("env.early-hints", {"rack.early_hints": "no"}),
        ("env.shutdown", {"trio_rack.shutdown": True}),
    ],
)
async def test_env_rules(rule, change):
    env = await real_env()
    if change is None:
        env = list(env.items())
    else:
        for key, value in change.items():
            env[key] = value
    with pytest.raises(LintError) as info:
        await Lint(returning())(env)
    assert info.value.rule == rule


async def test_the_servers_env_passes_and_so_does_a_mounted_one():
    env = await real_env()
    status, _, _ = await Lint(returning())(env)
    assert status == 200
    env = await real_env()
    env.update(SCRIPT_NAME="/app", PATH_INFO="")
    assert (await Lint(returning())(env))[0] == 200


def test_every_rule_has_a_test():
    """Each rule of RULES is named by a test in this file (a violating app or env)."""
    source = Path(__file__).read_text()
    assert [rule for rule in RULES if f'"{rule}"' not in source] == []


# ------------------------------------------------------------------------- good apps pass


async def test_well_behaved_apps_pass_lint(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"file body")

    async def streaming(env):
        async def body(stream):
            data = await env["rack.input"].read_all()
            await stream.send_all(b"got " + data)

        return 200, {"content-type": "text/plain"}, body

    async def events(env):
        async def handler(stream):
            await stream.send("hi")

        return sse.response(env, handler, heartbeat=None)

    async def partial(env):
        async def hijack(stream):
            await stream.send_all(b"raw")

        return 200, {"content-type": "text/plain", "rack.hijack": hijack}, []

    async def full(env):
        stream = env["rack.hijack"]()
        await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\nconnection: close\r\n\r\nfull")
        return -1, {}, []

    async def hinted(env):
        await env["rack.early_hints"]({"link": "</a.css>; rel=preload"})
        return 204, {}, []

    app = (
        Builder()
        .use(Lint)
        .use(Deflater)
        .use(Lint)
        .mount("/files", Files(tmp_path))
        .mount("/stream", streaming)
        .mount("/events", events)
        .mount("/partial", partial)
        .mount("/full", full)
        .mount("/hinted", hinted)
        .run(returning())
    )
    async with httpx.AsyncClient(transport=Transport(app), base_url="http://test") as c:
        assert (await c.get("/files/a.txt")).content == b"file body"
        assert (await c.head("/files/a.txt")).headers["content-length"] == "9"
        assert (await c.get("/files/a.txt", headers={"range": "bytes=0-3"})).content == b"file"
        assert (await c.post("/stream", content=b"x")).text == "got x"
        assert (await c.get("/events")).text == "data: hi\n\n"
        assert (await c.get("/partial")).text == "raw"
        assert (await c.get("/full")).text == "full"
        assert (await c.get("/hinted")).status_code == 204
        assert (await c.get("/other")).text == "ok"
        assert (await c.head("/other")).status_code == 200


async def test_websocket_under_lint():
    async def app(env):
        try:
            ctx = websocket.accept(env)
        except websocket.HandshakeError as refusal:
            return refusal.response
        async with ctx as ws:
            async for message in ws:
                await ws.send_message(message)
        return -1, {}, []

    async with httpx.AsyncClient(transport=Transport(Lint(app)), base_url="http://test") as c:
        refused = await c.get("/")  # plain HTTP: the 426 partial hijack passes Lint too
        assert refused.status_code == 426
        ws = Connection(ConnectionType.CLIENT)  # frames only: httpx did the handshake
        r = await c.get(
            "/",
            headers={"connection": "upgrade", "upgrade": "websocket", "sec-websocket-version": "13",
                     "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ=="},
        )
        assert r.status_code == 101
        stream = r.extensions["network_stream"]
        await stream.send_all(ws.send(wsproto.events.TextMessage("echo me")))
        ws.receive_data(await stream.receive_some())
        events = list(ws.events())
        assert any(isinstance(e, wsproto.events.TextMessage) and e.data == "echo me" for e in events)
        await stream.send_all(ws.send(wsproto.events.CloseConnection(1000)))
        with trio.fail_after(5):
            while await stream.receive_some():
                pass
        await stream.aclose()


async def test_under_a_server_a_lint_error_is_a_500_with_the_rule_in_the_log(caplog):
    caplog.set_level(logging.ERROR, "trio_rack")
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            bind = await start_server(nursery, Lint(returning(headers={"rack.session": "x"})))
            stream = await open_client(bind)
            await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data, _ = await read_until_eof(stream)
            await stream.aclose()
            nursery.cancel_scope.cancel()
    assert split_head(data)[0] == 500
    assert "[response.headers.reserved] header 'rack.session'" in caplog.text
