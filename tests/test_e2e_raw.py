"""End to end over raw sockets: the byte-level cases a friendly client would never produce.

Each test starts ``trio_rack.serve`` on 127.0.0.1 port 0 and talks to it with
``trio.open_tcp_stream``, writing requests by hand (pipelined, half-sent, abandoned) and
reading responses with an h11 client or as raw bytes.  Synchronisation is by events and by
bytes on the wire, never by sleeping; every test is bounded by ``trio.fail_after``.
"""

from __future__ import annotations

import logging
from typing import Any

import h11
import pytest
import trio

from e2e_support import (
    ResponseReader,
    TLSFiles,
    load_example,
    open_client,
    read_until,
    read_until_eof,
    split_head,
    start_server,
)

#: The liveness sweeper polls once a second (Limits.liveness_interval): "within about 2 s".
GONE_WITHIN = 2.5


@pytest.fixture(params=["http", "https"])
def tls(request: pytest.FixtureRequest, tls_files: TLSFiles) -> TLSFiles | None:
    """Run a test over plain TCP and over TLS (what the app sees is decrypted either way)."""
    return tls_files if request.param == "https" else None


def get(path: str, *extra: str, version: str = "1.1") -> bytes:
    lines = [f"GET {path} HTTP/{version}", "Host: x", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def path_app(env: dict[str, Any]) -> Any:
    return 200, {"content-type": "text/plain"}, [env["PATH_INFO"].encode()]


# ------------------------------------------------------------------------ keep-alive, 1.0


async def test_pipelined_requests_are_answered_in_order(nursery: trio.Nursery) -> None:
    bind = await start_server(nursery, path_app)
    with trio.fail_after(5):
        client = await open_client(bind)
        await client.send_all(get("/one") + get("/two") + get("/three"))
        reader = ResponseReader(client)
        bodies = [(await reader.next()).body for _ in range(3)]
        assert bodies == [b"/one", b"/two", b"/three"]
        # and the connection is still alive for a fourth
        await client.send_all(get("/four"))
        assert (await reader.next()).body == b"/four"
        await client.aclose()


async def test_pipelined_requests_with_bodies_each_get_exactly_their_own_body(nursery: trio.Nursery) -> None:
    """A streaming body reading its request body must not eat into the next request."""
    bind = await start_server(nursery, load_example("echo").app)
    chunked = b"POST /2 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\ntwo\r\n5\r\n-two!\r\n0\r\n\r\n"
    with trio.fail_after(5):
        client = await open_client(bind)
        await client.send_all(b"POST /1 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\none" + chunked + get("/3"))
        reader = ResponseReader(client)
        bodies = [(await reader.next("POST")).body, (await reader.next("POST")).body, (await reader.next()).body]
        await client.aclose()
    assert bodies == [b"one", b"two-two!", b""]


async def test_pipelined_requests_split_at_odd_places_are_answered_in_order(nursery: trio.Nursery) -> None:
    bind = await start_server(nursery, path_app)
    data = get("/a") + get("/b") + get("/c", "Connection: close")
    with trio.fail_after(5):
        client = await open_client(bind)
        for i in range(0, len(data), 7):  # 7-byte writes: heads straddle TCP segments
            await client.send_all(data[i : i + 7])
        raw, how = await read_until_eof(client)
        await client.aclose()
    assert how == "eof"
    assert raw.count(b"HTTP/1.1 200 OK") == 3
    assert raw.index(b"\r\n\r\n/a") < raw.index(b"\r\n\r\n/b") < raw.index(b"\r\n\r\n/c")


async def test_http_1_0_request_gets_a_response_and_the_connection_closes(nursery: trio.Nursery) -> None:
    bind = await start_server(nursery, path_app)
    with trio.fail_after(5):
        client = await open_client(bind)
        await client.send_all(b"GET /old HTTP/1.0\r\n\r\n")  # no Host: fine in 1.0
        raw, how = await read_until_eof(client)
        await client.aclose()
    status, headers, body = split_head(raw)
    assert how == "eof"
    assert status == 200 and body == b"/old"
    assert headers["content-length"] == ["4"]


async def test_http_1_0_streaming_body_is_close_delimited(nursery: trio.Nursery) -> None:
    async def app(env: dict[str, Any]) -> Any:
        async def body(stream: trio.abc.Stream) -> None:
            for word in (b"one ", b"two ", b"three"):
                await stream.send_all(word)

        return 200, {}, body

    bind = await start_server(nursery, app)
    with trio.fail_after(5):
        client = await open_client(bind)
        await client.send_all(get("/", version="1.0"))
        raw, how = await read_until_eof(client)
        await client.aclose()
    status, headers, body = split_head(raw)
    assert how == "eof"
    assert "transfer-encoding" not in headers and "content-length" not in headers
    assert body == b"one two three"


@pytest.mark.parametrize(
    "version",
    [
        "1.1",
        "1.0",
    ],
)
async def test_streaming_body_aclose_ends_the_response_while_the_body_goes_on(
    nursery: trio.Nursery, version: str
) -> None:
    """The spec: ``stream.aclose()`` *or* returning ends the response."""
    release = trio.Event()

    async def body(stream: trio.abc.Stream) -> None:
        await stream.send_all(b"all of it")
        await stream.aclose()
        await release.wait()  # the app goes on with some cleanup of its own

    async def app(env: dict[str, Any]) -> Any:
        return 200, {}, body

    bind = await start_server(nursery, app)
    client = await open_client(bind)
    await client.send_all(get("/", version=version))
    try:
        with trio.fail_after(2):
            if version == "1.1":
                body_bytes = (await ResponseReader(client).next()).body
            else:  # close-delimited: the response ends with the server's EOF
                raw = b""
                while chunk := await client.receive_some(65536):
                    raw += chunk
                body_bytes = raw.partition(b"\r\n\r\n")[2]
    finally:
        release.set()
        await client.aclose()
    assert body_bytes == b"all of it"


# --------------------------------------------------------------------------------- hijack


async def test_full_hijack_replays_pipelined_bytes_first(nursery: trio.Nursery, tls: TLSFiles | None) -> None:
    """Bytes sent right behind the request head come out of the hijacked stream, in order."""
    received = []

    async def app(env: dict[str, Any]) -> Any:
        stream = env["rack.hijack"]()
        await stream.send_all(b"ECHO:")
        data = b""
        while b"END" not in data:
            chunk = await stream.receive_some()
            assert chunk, "EOF before END"
            data += chunk
            await stream.send_all(chunk)
        received.append(data)
        return -1, {}, []

    bind = await start_server(nursery, app, tls=tls)
    behind = get("/pipelined-request-the-server-must-not-eat") + b"early-data-"
    with trio.fail_after(5):
        client = await open_client(bind, tls)
        await client.send_all(get("/hijack") + behind)  # one write: the server reads it all at once
        echoed = await read_until(client, b"ECHO:" + behind)  # no END yet: must come from the replay
        await client.send_all(b"END")
        echoed += (await read_until_eof(client))[0]
        await client.aclose()
    assert echoed == b"ECHO:" + behind + b"END"  # the server itself wrote nothing
    assert received == [behind + b"END"]


async def test_full_hijack_replays_an_unread_request_body(nursery: trio.Nursery) -> None:
    async def app(env: dict[str, Any]) -> Any:
        stream = env["rack.hijack"]()
        await stream.send_all(await read_until(stream, b"tail"))
        return -1, {}, []

    bind = await start_server(nursery, app)
    with trio.fail_after(5):
        client = await open_client(bind)
        await client.send_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nabcdetail")
        raw, how = await read_until_eof(client)
        await client.aclose()
    assert raw == b"abcdetail"


async def test_partial_hijack_sends_the_head_and_the_connection_is_not_reused(
    nursery: trio.Nursery, tls: TLSFiles | None
) -> None:
    served: list[str] = []

    async def app(env: dict[str, Any]) -> Any:
        served.append(env["PATH_INFO"])
        if env["PATH_INFO"] != "/hijack":
            return 200, {}, [b"should never be served"]

        async def hijack(stream: trio.abc.Stream) -> None:
            await stream.send_all(b"bye\n")  # and return without reading what follows

        return 200, {"content-type": "text/x-custom", "rack.hijack": hijack}, []

    bind = await start_server(nursery, app, tls=tls)
    with trio.fail_after(5):
        client = await open_client(bind, tls)
        await client.send_all(get("/hijack"))
        raw = await read_until(client, b"bye\n")
        try:
            await client.send_all(get("/second"))  # a keep-alive attempt after the hijack
        except trio.BrokenResourceError:
            pass
        rest, _ = await read_until_eof(client)
        await client.aclose()
    status, headers, body = split_head(raw + rest)
    assert status == 200
    assert headers["content-type"] == ["text/x-custom"]
    assert headers["server"] == ["trio-rack"]
    assert "content-length" not in headers and "transfer-encoding" not in headers
    assert body == b"bye\n"  # nothing after the app's bytes: no second response
    assert served == ["/hijack"]


# ------------------------------------------------------------------------------- failures


async def test_app_exception_before_headers_gives_500(nursery: trio.Nursery, caplog: pytest.LogCaptureFixture) -> None:
    async def app(env: dict[str, Any]) -> Any:
        raise ValueError("boom before headers")

    bind = await start_server(nursery, app)
    with trio.fail_after(5):
        client = await open_client(bind)
        await client.send_all(get("/"))
        raw, how = await read_until_eof(client)
        await client.aclose()
    status, headers, body = split_head(raw)
    assert status == 500
    assert headers["connection"] == ["close"]
    assert int(headers["content-length"][0]) == len(body)
    assert b"boom" not in body  # no traceback to the client
    assert "boom before headers" in caplog.text  # but one in the log


@pytest.mark.parametrize(
    "shape",
    [
        "streaming",
        "async-iterable",
        "streaming-async-with",
    ],
)
async def test_app_exception_after_headers_aborts_without_terminating_the_chunked_body(
    nursery: trio.Nursery, shape: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def body(stream: trio.abc.Stream) -> None:
        await stream.send_all(b"partial")
        raise RuntimeError("boom mid-body")

    async def body_in_async_with(stream: trio.abc.Stream) -> None:
        async with stream:  # the idiomatic Trio way to say "close it when done"
            await stream.send_all(b"partial")
            raise RuntimeError("boom mid-body")

    async def chunks() -> Any:
        yield b"partial"
        raise RuntimeError("boom mid-body")

    async def app(env: dict[str, Any]) -> Any:
        if shape == "async-iterable":
            return 200, {}, chunks()
        return 200, {}, body if shape == "streaming" else body_in_async_with

    bind = await start_server(nursery, app)
    with trio.fail_after(5):
        client = await open_client(bind)
        await client.send_all(get("/") + get("/next"))  # a pipelined request must not be served
        raw, how = await read_until_eof(client)
        await client.aclose()
    status, headers, rest = split_head(raw)
    assert status == 200
    assert headers["transfer-encoding"] == ["chunked"]
    assert rest == b"7\r\npartial\r\n"  # the chunk, then the connection closed: no 0\r\n\r\n
    assert raw.count(b"HTTP/1.1") == 1
    assert "boom mid-body" in caplog.text
    # and a real client parser sees a truncated response, not a complete one
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/", headers=[("host", "x")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(raw)
    conn.receive_data(b"")
    with pytest.raises(h11.RemoteProtocolError):
        while type(conn.next_event()) is not h11.EndOfMessage:
            pass


# ----------------------------------------------------------------------------- client gone


@pytest.mark.parametrize("writes", [True, False], ids=["writing", "silent"])
async def test_client_disconnect_mid_stream_stops_the_streaming_body(nursery: trio.Nursery, writes: bool) -> None:
    """A streaming body whose client left: the app sees BrokenResourceError or is cancelled,
    within about 2 s (a writing body finds out on its next write, a silent one from the
    liveness sweeper), and its ``finally`` runs."""
    started = trio.Event()
    finished = trio.Event()
    outcome: list[str] = []

    async def body(stream: trio.abc.Stream) -> None:
        try:
            await stream.send_all(b"first\n")
            started.set()
            while True:
                await trio.sleep(0.05 if writes else 3600)
                await stream.send_all(b"tick\n")
        except trio.BrokenResourceError:
            outcome.append("BrokenResourceError")
            raise
        except trio.Cancelled:
            outcome.append("Cancelled")
            raise
        finally:
            finished.set()

    async def app(env: dict[str, Any]) -> Any:
        return 200, {}, body

    bind = await start_server(nursery, app)
    with trio.fail_after(5):
        client = await open_client(bind)
        await client.send_all(get("/"))
        await read_until(client, b"first\n")
        await started.wait()
        await client.aclose()
        t0 = trio.current_time()
    with trio.fail_after(GONE_WITHIN):
        await finished.wait()
    assert trio.current_time() - t0 < GONE_WITHIN
    assert len(outcome) == 1 and outcome[0] in ("BrokenResourceError", "Cancelled")


async def test_app_sleeping_forever_is_cancelled_when_its_client_closes(
    nursery: trio.Nursery, tls: TLSFiles | None
) -> None:
    """The app never reads nor writes; only the liveness sweeper can notice the client left."""
    started = trio.Event()
    cancelled = trio.Event()

    async def app(env: dict[str, Any]) -> Any:
        started.set()
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            cancelled.set()
            raise
        raise AssertionError("unreachable")

    bind = await start_server(nursery, app, tls=tls)
    with trio.fail_after(5):
        client = await open_client(bind, tls)
        await client.send_all(get("/"))
        await started.wait()
        await client.aclose()
    with trio.fail_after(GONE_WITHIN):
        await cancelled.wait()


async def test_client_half_close_after_the_request_cancels_a_slow_app(nursery: trio.Nursery) -> None:
    """Documented trade-off of the sweeper (as Uvicorn/Hypercorn): shutdown(SHUT_WR) = gone."""
    started = trio.Event()
    cancelled = trio.Event()

    async def app(env: dict[str, Any]) -> Any:
        started.set()
        try:
            await trio.sleep_forever()
        finally:
            cancelled.set()

    bind = await start_server(nursery, app)
    with trio.fail_after(5):
        client = await open_client(bind)
        assert isinstance(client, trio.SocketStream)
        await client.send_all(get("/"))
        await started.wait()
        await client.send_eof()
    with trio.fail_after(GONE_WITHIN):
        await cancelled.wait()
    await client.aclose()


# --------------------------------------------------------------- response_finished, close()


async def test_response_finished_callbacks_run_in_reverse_order_with_the_status(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[tuple[str, int | None, BaseException | None]] = []
    done = trio.Event()

    def callback(name: str, *, fail: bool = False, last: bool = False) -> Any:
        def cb(env: dict[str, Any], status: int | None, headers: Any, error: BaseException | None) -> None:
            calls.append((name, status, error))
            if last:
                done.set()
            if fail:
                raise RuntimeError(f"callback {name} fails")

        return cb

    async def app(env: dict[str, Any]) -> Any:
        env["rack.response_finished"].append(callback("first", last=True))
        env["rack.response_finished"].append(callback("second", fail=True))
        env["rack.response_finished"].append(callback("third"))
        if env["PATH_INFO"] == "/fail":
            raise ValueError("app failed")
        return 201, {}, [b"made"]

    bind = await start_server(nursery, app)
    with trio.fail_after(5):
        client = await open_client(bind)
        await client.send_all(get("/ok"))
        response = await ResponseReader(client).next()
        assert response.status == 201
        await done.wait()  # callbacks run after the response went out
        assert calls == [("third", 201, None), ("second", 201, None), ("first", 201, None)]
        assert "callback second fails" in caplog.text  # logged, and the others still ran
        await client.aclose()

        calls.clear()
        done = trio.Event()
        client = await open_client(bind)
        await client.send_all(get("/fail"))
        raw, _ = await read_until_eof(client)
        await client.aclose()
        assert split_head(raw)[0] == 500
        await done.wait()
    assert [name for name, _, _ in calls] == ["third", "second", "first"]
    assert {status for _, status, _ in calls} == {500}
    assert all(isinstance(error, ValueError) for _, _, error in calls)


class ClosingIterable:
    """A sync iterable body with close(); counts the calls."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks
        self.closed = 0

    def __iter__(self) -> Any:
        return iter(self.chunks)

    def close(self) -> None:
        self.closed += 1


class AsyncClosingIterable:
    def __init__(self, chunks: list[bytes], *, forever: bool = False) -> None:
        self.chunks = chunks
        self.forever = forever
        self.closed = 0

    def __aiter__(self) -> Any:
        return self._gen()

    async def _gen(self) -> Any:
        for chunk in self.chunks:
            yield chunk
        while self.forever:
            await trio.sleep(0.02)
            yield b"."

    async def aclose(self) -> None:
        self.closed += 1


class ClosingStreamingBody:
    """A streaming body (async callable) that also has close()."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks
        self.closed = 0

    async def __call__(self, stream: trio.abc.Stream) -> None:
        for chunk in self.chunks:
            await stream.send_all(chunk)

    def close(self) -> None:
        self.closed += 1


class ClosingList(list):  # type: ignore[type-arg]
    """A buffered body (a list) that has close(), like a Rack body that is an Array subclass."""

    closed = 0

    def close(self) -> None:
        self.closed += 1


BODIES = {
    "iterable": lambda: ClosingIterable([b"a", b"b"]),
    "async-iterable": lambda: AsyncClosingIterable([b"a", b"b"]),
    "streaming": lambda: ClosingStreamingBody([b"a", b"b"]),
    "list-subclass": lambda: ClosingList([b"a", b"b"]),
}


async def _serve_body_once(nursery: trio.Nursery, make_body: Any, method: str) -> tuple[Any, bytes]:
    bodies: list[Any] = []
    done = trio.Event()

    async def app(env: dict[str, Any]) -> Any:
        body = make_body()
        bodies.append(body)
        env["rack.response_finished"].append(lambda *args: done.set())
        return 200, {}, body

    bind = await start_server(nursery, app)
    client = await open_client(bind)
    await client.send_all(f"{method} / HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    response = await ResponseReader(client).next(method)
    await done.wait()  # close() runs before the callbacks
    await client.aclose()
    return bodies[0], response.body


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize(
    "kind",
    ["iterable", "async-iterable", "streaming", "list-subclass"],
)
async def test_body_close_is_called_exactly_once(nursery: trio.Nursery, kind: str, method: str) -> None:
    with trio.fail_after(5):
        body, received = await _serve_body_once(nursery, BODIES[kind], method)
    assert received == (b"ab" if method == "GET" else b"")
    assert body.closed == 1


async def test_body_close_is_called_once_when_the_client_leaves_mid_body(nursery: trio.Nursery) -> None:
    bodies: list[AsyncClosingIterable] = []
    finished = trio.Event()

    async def app(env: dict[str, Any]) -> Any:
        env["rack.response_finished"].append(lambda *args: finished.set())
        bodies.append(AsyncClosingIterable([b"first\n"], forever=True))
        return 200, {}, bodies[-1]

    bind = await start_server(nursery, app)
    with trio.fail_after(5):
        client = await open_client(bind)
        await client.send_all(get("/"))
        await read_until(client, b"first\n")
        await client.aclose()
    with trio.fail_after(GONE_WITHIN):
        await finished.wait()
    assert bodies[0].closed == 1


async def test_body_close_is_called_once_when_the_body_raises(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    class Exploding(ClosingIterable):
        def __iter__(self) -> Any:
            yield b"a"
            raise RuntimeError("body exploded")

    bodies: list[Exploding] = []
    finished = trio.Event()

    async def app(env: dict[str, Any]) -> Any:
        env["rack.response_finished"].append(lambda *args: finished.set())
        bodies.append(Exploding([]))
        return 200, {}, bodies[-1]

    bind = await start_server(nursery, app)
    with trio.fail_after(5):
        client = await open_client(bind)
        await client.send_all(get("/"))
        raw, _ = await read_until_eof(client)
        await client.aclose()
        await finished.wait()
    assert not raw.endswith(b"0\r\n\r\n")
    assert bodies[0].closed == 1


async def test_server_logs_do_not_crash_on_many_quick_connections(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    """Connect-and-vanish clients (port scanners, health checks) cost nothing visible."""
    caplog.set_level(logging.ERROR, logger="trio_rack.error")
    bind = await start_server(nursery, path_app)
    with trio.fail_after(5):
        for _ in range(20):
            client = await open_client(bind)
            await client.aclose()
        client = await open_client(bind)
        await client.send_all(get("/still-fine"))
        assert (await ResponseReader(client).next()).body == b"/still-fine"
        await client.aclose()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_an_aborted_close_delimited_http_1_0_body_ends_with_a_reset(nursery: trio.Nursery) -> None:
    """For an HTTP/1.0 client a streamed body ends when the connection does, so an orderly
    close would say "complete".  A body that fails half-way must end with a reset instead;
    a complete one still ends with a clean EOF."""

    async def app(env: dict[str, object]) -> object:
        async def body(stream: trio.abc.Stream) -> None:
            await stream.send_all(b"part one, ")
            if env["PATH_INFO"] == "/fail":
                raise RuntimeError("the body fails half-way")
            await stream.send_all(b"part two")

        return 200, {"content-type": "text/plain"}, body

    bind = await start_server(nursery, app)
    with trio.fail_after(5):
        outcomes = {}
        for path in ("/ok", "/fail"):
            client = await open_client(bind)
            await client.send_all(f"GET {path} HTTP/1.0\r\n\r\n".encode())
            raw, how = await read_until_eof(client)
            await client.aclose()
            outcomes[path] = (how, raw.endswith(b"part one, part two"))
    assert outcomes["/ok"] == ("eof", True)
    assert outcomes["/fail"][0] == "reset", "a failed close-delimited body must not look complete"
