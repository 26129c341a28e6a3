"""The connection loop over in-memory streams: the app protocol, framing, hijack, timeouts.

Every app here runs under :class:`trio_rack.lint.Lint` (the autouse fixture below), so a test
also proves the server keeps its side of the spec; a test of an app that breaks the spec on
purpose carries ``@pytest.mark.no_lint``.
"""

from __future__ import annotations

import functools
import logging
import sys

import pytest
import trio
import trio.testing

from trio_rack import Limits
from trio_rack.lint import LintError
from trio_rack.testing import memory_connection, read_until_closed

#: Every test here runs on both HTTP/1 parsers (h11 and httptools): see conftest.py.
pytestmark = pytest.mark.http1_parsers

#: Lint rules a *server* breaks (its env, calling the app twice, not closing or re-reading a
#: body): any of these logged fails the test.  The rules an app breaks show as the 500 the
#: contract tests here expect of a broken app anyway.
_SERVER_RULES = ("env.", "app.called-twice", "body.closed", "body.once")


class _LintFailures(logging.Handler):
    """Collects LintErrors of :data:`_SERVER_RULES` the server logged (under a server a broken rule is a 500)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.errors: list[BaseException] = []

    def emit(self, record: logging.LogRecord) -> None:
        exc = record.exc_info[1] if record.exc_info else None
        while exc is not None and not isinstance(exc, LintError):
            exc = exc.__cause__ or exc.__context__
        if exc is not None and exc.rule.startswith(_SERVER_RULES):
            self.errors.append(exc)


@pytest.fixture(autouse=True)
def lint_every_app(request, monkeypatch):
    """Run this module's apps under Lint (``memory_connection(..., lint=True)``), failing on any LintError."""
    if request.node.get_closest_marker("no_lint"):
        yield
        return
    monkeypatch.setattr(sys.modules[__name__], "memory_connection", functools.partial(memory_connection, lint=True))
    handler = _LintFailures()
    logger = logging.getLogger("trio_rack")
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
    assert not handler.errors, f"Lint: {handler.errors[0]}"


def streamed(response, protocol):
    """Streamed framing: chunked on HTTP/1.1; on HTTP/2, DATA frames with neither framing header."""
    if protocol == "http1":
        return response.header("transfer-encoding") == "chunked"
    return response.header("transfer-encoding") is None and response.header("content-length") is None


async def hello(env):
    return 200, {"content-type": "text/plain"}, [b"Hello, ", b"world!"]


async def test_buffered_body_gets_content_length_date_and_server(protocol):
    async with memory_connection(hello, protocol=protocol) as client:
        r = await client.request("GET", "/")
    assert r.status == 200
    assert r.body == b"Hello, world!"
    assert r.header("content-length") == "13"
    assert r.header("date")
    assert r.header("server") == "trio-rack"
    assert r.header("transfer-encoding") is None


async def test_keep_alive_serves_several_requests_on_one_connection(protocol):
    seen = []

    async def app(env):
        seen.append(env["PATH_INFO"])
        return 200, {}, [env["PATH_INFO"].encode()]

    async with memory_connection(app, protocol=protocol) as client:
        for path in ("/a", "/b", "/c"):
            r = await client.request("GET", path)
            assert r.body == path.encode()
    assert seen == ["/a", "/b", "/c"]


async def test_pipelined_requests_are_answered_in_order():
    async def app(env):
        return 200, {}, [env["PATH_INFO"].encode()]

    async with memory_connection(app) as client:
        await client.stream.send_all(
            b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /2 HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        data = await read_until_closed(client.stream)
    assert data.count(b"HTTP/1.1 200 OK") == 3
    assert data.index(b"\r\n\r\n/1") < data.index(b"\r\n\r\n/2") < data.index(b"\r\n\r\n/3")


# no_lint: it inspects the env exactly as the server built it; Lint adds its own response_finished
# callback (and rewraps rack.input / rack.hijack).
@pytest.mark.no_lint
async def test_env_has_cgi_keys_and_rack_keys(protocol):
    captured = {}

    async def app(env):
        captured.update(env)
        return 204, {}, []

    async with memory_connection(app, protocol=protocol) as client:
        await client.request(
            "POST",
            "/p%20ath?q=1&r=2",
            headers=[
                ("X-Thing", "a"),
                ("x-thing", "b"),
                ("cookie", "a=1"),
                ("cookie", "b=2"),
                ("content-type", "text/x"),
            ],
            body=b"xyz",
        )
    env = captured
    assert env["REQUEST_METHOD"] == "POST"
    assert env["PATH_INFO"] == "/p%20ath"
    assert env["QUERY_STRING"] == "q=1&r=2"
    assert env["SCRIPT_NAME"] == ""
    assert env["SERVER_PROTOCOL"] == ("HTTP/1.1" if protocol == "http1" else "HTTP/2")
    assert env["SERVER_NAME"] == "test" and env["SERVER_PORT"] == "80"
    assert env["REMOTE_ADDR"] == "127.0.0.1" and env["REMOTE_PORT"] == "12345"
    assert env["HTTP_X_THING"] == "a, b"
    assert env["HTTP_COOKIE"] == "a=1; b=2"
    assert env["CONTENT_TYPE"] == "text/x" and env["CONTENT_LENGTH"] == "3"
    assert "HTTP_CONTENT_TYPE" not in env
    assert env["rack.url_scheme"] == "http"
    assert env["rack.hijack?"] is True
    if protocol == "http1":
        assert callable(env["rack.hijack"])
    else:  # a multiplexed connection cannot be handed over: the capability is absent, not faked
        assert "rack.hijack" not in env
    assert isinstance(env["rack.input"], trio.abc.ReceiveStream)
    assert env["rack.response_finished"] == []


async def test_a_cancelled_body_read_loses_no_bytes(protocol):
    """A ``rack.input`` read cancelled while body bytes are queued leaves them for the next read
    (on HTTP/2 the chunk used to be taken, acknowledged and lost at the read's checkpoint)."""

    async def app(env):
        await trio.testing.wait_all_tasks_blocked()  # the whole body has arrived
        data = b""
        with trio.CancelScope() as scope:
            scope.cancel()
            data = await env["rack.input"].receive_some()  # Cancelled, or the bytes returned
        while chunk := await env["rack.input"].receive_some():
            data += chunk
        return 200, {}, [data]

    async with memory_connection(app, protocol=protocol) as client:
        response = await client.request("POST", "/", body=b"abc" * 1000)
    assert response.status == 200
    assert response.body == b"abc" * 1000


async def test_header_names_with_underscores_are_dropped(protocol):
    captured = {}

    async def app(env):
        captured.update(env)
        return 204, {}, []

    async with memory_connection(app, protocol=protocol) as client:
        await client.request("GET", "/", headers=[("x-auth_user", "evil"), ("x-auth-user", "good")])
    assert captured["HTTP_X_AUTH_USER"] == "good"


async def test_absolute_form_target_is_split_and_wins_over_host():
    captured = {}

    async def app(env):
        captured.update(env)
        return 200, {}, [b"ok"]

    async with memory_connection(app) as client:
        await client.stream.send_all(b"GET http://example.org:8080/x/y?z=1 HTTP/1.1\r\nHost: other\r\n\r\n")
        r = await client.read_response()
    assert r.status == 200
    assert captured["PATH_INFO"] == "/x/y" and captured["QUERY_STRING"] == "z=1"
    assert captured["SERVER_NAME"] == "example.org" and captured["SERVER_PORT"] == "8080"
    assert captured["HTTP_HOST"] == "example.org:8080"


async def test_rack_input_dechunks_uploads():
    async def app(env):
        return 200, {}, [await env["rack.input"].read_all()]

    async with memory_connection(app) as client:
        await client.stream.send_all(
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
        )
        r = await client.read_response()
    assert r.body == b"hello world"


async def test_expect_100_continue_is_sent_on_first_read_only():
    async def app(env):
        return 200, {}, [await env["rack.input"].read_all()]

    async with memory_connection(app) as client:
        await client.stream.send_all(
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
        )
        first = await client.stream.receive_some(1000)
        assert first.startswith(b"HTTP/1.1 100 ")
        await client.stream.send_all(b"abcde")
        rest = await client.stream.receive_some(1000)
    assert rest.startswith(b"HTTP/1.1 200 ") and rest.endswith(b"abcde")


async def test_expect_100_continue_without_read_answers_and_closes():
    async def app(env):
        return 413, {}, [b"no thanks"]

    async with memory_connection(app) as client:
        await client.stream.send_all(
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
        )
        data = await read_until_closed(client.stream)
    assert b"100 Continue" not in data
    assert data.startswith(b"HTTP/1.1 413 ") and b"connection: close" in data.lower()


async def test_sync_iterable_body_is_chunked(protocol):
    def gen():
        yield b"a"
        yield b""
        yield b"bc"

    async def app(env):
        return 200, {}, gen()

    async with memory_connection(app, protocol=protocol) as client:
        r = await client.request("GET", "/")
    assert r.body == b"abc" and streamed(r, protocol)


async def test_async_iterable_body_is_chunked_and_closed(protocol):
    closed = []

    class Body:
        def __init__(self):
            self.items = [b"x", b"y"]

        def __aiter__(self):
            return self

        async def __anext__(self):
            if not self.items:
                raise StopAsyncIteration
            return self.items.pop(0)

        async def aclose(self):
            closed.append(True)

    async def app(env):
        return 200, {}, Body()

    async with memory_connection(app, protocol=protocol) as client:
        r = await client.request("GET", "/")
    assert r.body == b"xy" and streamed(r, protocol)
    assert closed == [True]


async def test_empty_streamed_body_gets_content_length_zero(protocol):
    async def app(env):
        return 200, {}, iter(())

    async with memory_connection(app, protocol=protocol) as client:
        r = await client.request("GET", "/")
    assert r.body == b"" and r.header("content-length") == "0"


async def test_streaming_body_writes_reads_and_keeps_alive(protocol):
    async def app(env):
        async def body(stream):
            data = b""
            while chunk := await stream.receive_some():
                data += chunk
            await stream.send_all(b"got:")
            await stream.send_all(data)

        return 200, {}, body

    async with memory_connection(app, protocol=protocol) as client:
        r = await client.request("POST", "/", body=b"payload")
        assert r.body == b"got:payload" and streamed(r, protocol)
        r2 = await client.request("POST", "/", body=b"again")
        assert r2.body == b"got:again"


@pytest.mark.no_lint  # the app writes to its stream after closing it, to see that the server refuses
async def test_streaming_body_aclose_ends_response_and_stream_is_closed_after(protocol):
    kept = []

    async def app(env):
        async def body(stream):
            await stream.send_all(b"one")
            await stream.aclose()
            kept.append(stream)
            with pytest.raises(trio.ClosedResourceError):
                await stream.send_all(b"two")

        return 200, {}, body

    async with memory_connection(app, protocol=protocol) as client:
        r = await client.request("GET", "/")
    assert r.body == b"one"
    with pytest.raises(trio.ClosedResourceError):
        await kept[0].send_all(b"late")


async def test_streaming_body_with_app_content_length_is_not_chunked(protocol):
    async def app(env):
        async def body(stream):
            await stream.send_all(b"12345")

        return 200, {"content-length": "5"}, body

    async with memory_connection(app, protocol=protocol) as client:
        r = await client.request("GET", "/")
    assert r.body == b"12345" and r.header("transfer-encoding") is None


async def test_head_has_same_headers_and_no_body():
    async with memory_connection(hello) as client:
        await client.stream.send_all(
            b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        data = await read_until_closed(client.stream)
    head_response, _, get_response = data.partition(b"\r\n\r\n")
    assert b"content-length: 13" in head_response
    assert get_response.startswith(b"HTTP/1.1 200 ")
    assert get_response.endswith(b"Hello, world!")


@pytest.mark.no_lint  # the app sends body bytes with a 204/304, to see the server drop them
@pytest.mark.parametrize("status", [204, 304])
async def test_no_body_statuses_send_no_body(status):
    async def app(env):
        return status, {}, [b"ignored"]

    async with memory_connection(app) as client:
        await client.stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = await read_until_closed(client.stream)
    assert data.endswith(b"\r\n\r\n") and b"ignored" not in data


async def test_http_1_0_streamed_response_is_close_delimited():
    async def app(env):
        async def body(stream):
            await stream.send_all(b"abc")

        return 200, {}, body

    async with memory_connection(app) as client:
        await client.stream.send_all(b"GET / HTTP/1.0\r\n\r\n")
        data = await read_until_closed(client.stream)
    assert b"transfer-encoding" not in data.lower()
    assert data.endswith(b"\r\n\r\nabc")


@pytest.mark.no_lint  # the app sets connection/transfer-encoding, to see the server drop them
async def test_hop_by_hop_headers_from_app_are_dropped_with_warning(caplog, protocol):
    async def app(env):
        return 200, {"connection": "close", "transfer-encoding": "gzip", "x-ok": "1"}, [b"x"]

    with caplog.at_level(logging.WARNING, logger="trio_rack"):
        async with memory_connection(app, protocol=protocol) as client:
            r = await client.request("GET", "/")
    assert r.header("x-ok") == "1" and r.header("transfer-encoding") is None
    assert "hop-by-hop" in caplog.text


@pytest.mark.no_lint  # the app sets a reserved rack.* header, to see the server hide it
async def test_list_header_values_become_repeated_lines_and_rack_headers_are_hidden(protocol):
    async def app(env):
        return 200, {"set-cookie": ["a=1", "b=2"], "rack.something": "secret"}, [b"x"]

    async with memory_connection(app, protocol=protocol) as client:
        r = await client.request("GET", "/")
    assert [v for k, v in r.headers if k == "set-cookie"] == ["a=1", "b=2"]
    assert not any(k.startswith("rack.") for k, _ in r.headers)


@pytest.mark.parametrize(
    "headers, needle",
    [
        ({"Content-Type": "text/plain"}, "'Content-Type' must be lower-case"),
        ({"x-evil": "a\r\nset-cookie: pwned"}, "'x-evil'"),
        ({"x-nul": "a\x00b"}, "'x-nul'"),
        ({"x-num": 5}, "'x-num': value must be a str"),
        ({"bad name": "x"}, "not a valid HTTP token"),
    ],
)
async def test_invalid_headers_give_500_and_a_clear_log(caplog, headers, needle):
    async def app(env):
        return 200, headers, [b"body"]

    with caplog.at_level(logging.ERROR, logger="trio_rack"):
        async with memory_connection(app) as client:
            await client.stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            data = await read_until_closed(client.stream)
    assert data.startswith(b"HTTP/1.1 500 ")
    assert b"pwned" not in data and b"\x00" not in data
    assert needle in caplog.text


@pytest.mark.parametrize("body", [b"bytes", "str", 42, None])
async def test_invalid_body_types_give_500(caplog, body, protocol):
    async def app(env):
        return 200, {}, body

    with caplog.at_level(logging.ERROR, logger="trio_rack"):
        async with memory_connection(app, protocol=protocol) as client:
            r = await client.request("GET", "/")
    assert r.status == 500
    assert "response body must be" in caplog.text


async def test_app_exception_before_headers_gives_500_with_traceback(caplog, protocol):
    async def app(env):
        raise ValueError("kaboom")

    with caplog.at_level(logging.ERROR, logger="trio_rack"):
        async with memory_connection(app, protocol=protocol) as client:
            r = await client.request("GET", "/")
    assert r.status == 500
    if protocol == "http1":
        assert r.header("connection") == "close"
    assert "kaboom" in caplog.text and "Traceback" in caplog.text


async def test_app_exception_after_headers_aborts_visibly(caplog):
    async def app(env):
        async def body(stream):
            await stream.send_all(b"partial")
            raise RuntimeError("mid-stream")

        return 200, {}, body

    with caplog.at_level(logging.ERROR, logger="trio_rack"):
        async with memory_connection(app) as client:
            await client.stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            data = await read_until_closed(client.stream)
    assert b"partial" in data
    assert not data.endswith(b"0\r\n\r\n"), "a failed chunked body must not be terminated"
    assert "aborted" in caplog.text


async def test_streamed_body_shorter_than_declared_length_is_aborted():
    async def app(env):
        async def body(stream):
            await stream.send_all(b"abc")

        return 200, {"content-length": "10"}, body

    async with memory_connection(app) as client:
        await client.stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        data = await read_until_closed(client.stream)
    assert data.endswith(b"\r\n\r\nabc")  # then closed: the client sees 3 of 10 bytes


async def test_response_finished_callbacks_run_in_reverse_and_are_isolated(caplog, protocol):
    calls = []

    async def app(env):
        env["rack.response_finished"].append(lambda e, s, h, err: calls.append(("first", s, err)))
        env["rack.response_finished"].append(lambda e, s, h, err: 1 / 0)

        async def third(e, s, h, err):
            calls.append(("third", s, err))

        env["rack.response_finished"].append(third)
        return 201, {}, [b"x"]

    async with memory_connection(app, protocol=protocol) as client:
        r = await client.request("GET", "/")
        assert r.status == 201
        await client.request("GET", "/")  # the callbacks of the first request have run by now
    assert calls[:2] == [("third", 201, None), ("first", 201, None)]
    assert "ZeroDivisionError" in caplog.text


async def test_body_close_is_called_exactly_once(protocol):
    closes = []

    class Body(list):
        def close(self):
            closes.append(1)

    async def app(env):
        return 200, {}, Body([b"x"])

    async with memory_connection(app, protocol=protocol) as client:
        await client.request("GET", "/")
        await client.request("GET", "/")
    assert closes == [1, 1]


async def test_early_hints_send_103_before_the_response(protocol):
    async def app(env):
        await env["rack.early_hints"]({"link": "</style.css>; rel=preload"})
        return 200, {}, [b"x"]

    async with memory_connection(app, protocol=protocol) as client:
        r = await client.request("GET", "/")
    assert r.informational == [103] and r.status == 200


async def test_partial_hijack_sends_head_then_hands_over_the_stream():
    async def app(env):
        async def hijack(stream):
            assert isinstance(stream, trio.abc.Stream)
            await stream.send_all(b"raw bytes\n")
            assert await stream.receive_some() == b"client says hi"

        return 200, {"content-type": "text/plain", "rack.hijack": hijack}, []

    async with memory_connection(app) as client:
        await client.stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        head = b""
        while b"raw bytes\n" not in head:
            head += await client.stream.receive_some(1000)
        await client.stream.send_all(b"client says hi")
        rest = await read_until_closed(client.stream)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"content-type: text/plain\r\n" in head
    assert b"transfer-encoding" not in head.lower() and b"content-length" not in head.lower()
    assert head.endswith(b"\r\n\r\nraw bytes\n") and rest == b""


async def test_partial_hijack_keeps_upgrade_headers_for_101():
    async def app(env):
        async def hijack(stream):
            await stream.send_all(b"switched")

        return 101, {"upgrade": "x-proto", "connection": "upgrade", "rack.hijack": hijack}, []

    async with memory_connection(app) as client:
        await client.stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: x-proto\r\nConnection: upgrade\r\n\r\n")
        data = await read_until_closed(client.stream)
    assert data.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert b"upgrade: x-proto" in data and data.endswith(b"switched")


async def test_full_hijack_replays_pipelined_bytes_and_server_writes_nothing():
    async def app(env):
        stream = env["rack.hijack"]()
        got = b""
        while len(got) < len(b"EARLY DATA"):
            got += await stream.receive_some()
        await stream.send_all(b"app says: " + got)
        return -1, {}, []

    async with memory_connection(app) as client:
        await client.stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nEARLY DATA")
        data = await read_until_closed(client.stream)
    assert data == b"app says: EARLY DATA"


async def test_full_hijack_replays_unread_body_bytes():
    async def app(env):
        stream = env["rack.hijack"]()
        got = b""
        while len(got) < 9:
            got += await stream.receive_some()
        await stream.send_all(got)
        return -1, {}, []

    async with memory_connection(app) as client:
        await client.stream.send_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nbodyafter")
        data = await read_until_closed(client.stream)
    assert data == b"bodyafter"


async def test_hijacked_stream_is_closed_when_app_raises(caplog):
    async def app(env):
        stream = env["rack.hijack"]()
        await stream.send_all(b"bye")
        raise RuntimeError("app failed after hijack")

    async with memory_connection(app) as client:
        await client.stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        data = await read_until_closed(client.stream)
    assert data == b"bye"
    assert "after a full hijack" in caplog.text


async def test_hijack_after_response_started_is_refused():
    errors = []

    async def app(env):
        async def body(stream):
            await stream.send_all(b"x")
            try:
                env["rack.hijack"]()
            except RuntimeError as exc:
                errors.append(str(exc))

        return 200, {}, body

    async with memory_connection(app) as client:
        r = await client.request("GET", "/")
    assert r.body == b"x" and "response has started" in errors[0]


@pytest.mark.parametrize("holds", ["env", "callable"])
async def test_a_full_hijack_from_a_streaming_body_before_it_wrote_hands_the_connection_over(
    http1_parser: str, holds: str
) -> None:
    """A streaming body may still hijack before its first write (the response is pending): the
    exchange then reports the connection hijacked, and the driver leaves it alone (it used
    to take it for a keep-alive one and crash on the parser the hijack had released).  With
    only the callable kept, env itself is let go first (exchange._release_env)."""

    async def app(env):
        hijack = env["rack.hijack"]

        async def body(stream):
            raw = (env["rack.hijack"] if holds == "env" else hijack)()
            await raw.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\r\nraw")
            await raw.aclose()

        return 200, {}, body

    async with memory_connection(app, http1_parser=http1_parser) as client:
        await client.stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        data = await read_until_closed(client.stream)
        await trio.testing.wait_all_tasks_blocked()  # (the driver's crash surfaced here, at the exit)
    assert data.endswith(b"\r\n\r\nraw")


# ---------------------------------------------------------------------------------- timeouts


async def test_idle_keep_alive_connection_is_closed_after_timeout(autojump_clock):
    limits = Limits(keepalive_timeout=5, header_timeout=10)
    async with memory_connection(hello, limits=limits) as client:
        await client.request("GET", "/")
        start = trio.current_time()
        data = await read_until_closed(client.stream)
        assert data == b""
        assert 4.9 <= trio.current_time() - start <= 5.5


async def test_slowloris_head_gets_408_after_header_timeout(autojump_clock):
    limits = Limits(header_timeout=10)
    async with memory_connection(hello, limits=limits) as client:

        async def trickle():
            await client.stream.send_all(b"GET / HTTP/1.1\r\n")
            for _ in range(100):
                await trio.sleep(1)
                try:
                    await client.stream.send_all(b"X-A: b\r\n")
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return

        async with trio.open_nursery() as nursery:
            nursery.start_soon(trickle)
            start = trio.current_time()
            first = await client.stream.receive_some(1000)
            elapsed = trio.current_time() - start
            nursery.cancel_scope.cancel()
    assert first.startswith(b"HTTP/1.1 408 ")
    assert 9.9 <= elapsed <= 10.5


async def test_stalled_request_body_gets_408(autojump_clock):
    async def app(env):
        return 200, {}, [await env["rack.input"].read_all()]

    async with memory_connection(app, limits=Limits(body_timeout=3)) as client:
        await client.stream.send_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
        data = await read_until_closed(client.stream)
    assert data.startswith(b"HTTP/1.1 408 ")


async def test_declared_body_over_limit_gets_413_without_calling_app():
    called = []

    async def app(env):
        called.append(1)
        return 200, {}, [b""]

    async with memory_connection(app, limits=Limits(max_body_size=10)) as client:
        await client.stream.send_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\n")
        data = await read_until_closed(client.stream)
    assert data.startswith(b"HTTP/1.1 413 ") and called == []


async def test_streamed_body_over_limit_gets_413():
    async def app(env):
        return 200, {}, [await env["rack.input"].read_all()]

    async with memory_connection(app, limits=Limits(max_body_size=10)) as client:
        await client.stream.send_all(
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n8\r\n12345678\r\n8\r\n12345678\r\n"
        )
        data = await read_until_closed(client.stream)
    assert data.startswith(b"HTTP/1.1 413 ")


async def test_stalled_reader_is_dropped_after_write_timeout(autojump_clock):
    done = trio.Event()

    async def app(env):
        async def body(stream):
            try:
                while True:
                    await stream.send_all(b"x" * 65536)
            finally:  # the stalled write is interrupted (cancelled) and the app cleans up
                done.set()

        return 200, {}, body

    client_end, server_end = trio.testing.lockstep_stream_pair()
    from trio_rack.testing import ServerState, serve_stream

    state = ServerState(app, Limits(write_timeout=7), access_log=False)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_stream, server_end, state)
        await client_end.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await client_end.receive_some(10)  # read a little, then stop reading
        start = trio.current_time()
        with trio.fail_after(60):
            await done.wait()
        assert 6.9 <= trio.current_time() - start <= 8
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    "request_bytes, status",
    [
        (b"GET / HTTP/1.1\r\n\r\n", 400),  # no Host (RFC 9112 §3.2)
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),  # two Hosts (RFC 9112 §3.2)
        (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
        (b"GARBAGE\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 414),
        (b"GET / HTTP/1.1\r\nHost: a\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(101)) + b"\r\n", 431),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * 40000 + b"\r\n\r\n", 431),
    ],
)
async def test_malformed_requests_get_the_right_status_and_close(request_bytes, status):
    async with memory_connection(hello) as client:
        await client.stream.send_all(request_bytes)
        data = await read_until_closed(client.stream)
    assert data.startswith(b"HTTP/1.1 %d " % status), data[:80]
    assert b"connection: close" in data.lower()
    assert data.count(b"HTTP/1.1") == 1


async def test_a_file_body_naming_a_missing_file_is_a_500_not_a_200_cut_short(protocol, tmp_path):
    """Off the sendfile path (memory streams, TLS, HTTP/2) the file is opened before the head
    too: the client gets a 500, never a 200 head and then an aborted body."""
    from trio_rack.files import FileBody

    async def app(env):
        return 200, {"content-length": "5"}, FileBody(tmp_path / "gone.bin")

    async with memory_connection(app, protocol=protocol) as client:
        response = await client.request("GET", "/")
    assert response.status == 500
