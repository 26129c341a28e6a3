"""HTTP/2 protocol tests: the real H2Connection over memory streams, an h2 client or raw frames.

Each attack-class test names its advisory.  Timeouts run on the autojump clock.
"""

from __future__ import annotations

import logging
from typing import Any

import hpack
import pytest
import trio
import trio.testing
from h2.errors import ErrorCodes
from h2.settings import SettingCodes
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from h2_support import FrameReader, encode_request_headers, goaway_of, headers_frame
from trio_rack import Limits
from trio_rack.state import ServerState
from trio_rack.testing.h2 import H2MemoryClient, memory_h2_connection


async def hello(env: dict[str, Any]) -> Any:
    return 200, {"content-type": "text/plain"}, [b"hello"]


# ------------------------------------------------------------------------- the app protocol


async def test_env_over_http2() -> None:
    seen: dict[str, Any] = {}

    async def app(env: dict[str, Any]) -> Any:
        seen.update(env)
        return 200, {}, [b"ok"]

    async with memory_h2_connection(app, scheme="https") as client:
        sid = await client.start_request("GET", "/a%20b?x=1", authority="example.org:8443", scheme="https",
                                         headers=[("x-thing", "1"), ("cookie", "a=1"), ("cookie", "b=2")])
        response = await client.read_response(sid)
    assert response.status == 200 and response.body == b"ok"
    assert seen["SERVER_PROTOCOL"] == "HTTP/2"
    assert seen["HTTP_HOST"] == "example.org:8443"
    assert seen["SERVER_NAME"] == "example.org" and seen["SERVER_PORT"] == "8443"
    assert seen["PATH_INFO"] == "/a%20b" and seen["QUERY_STRING"] == "x=1"
    assert seen["rack.url_scheme"] == "https"
    assert seen["HTTP_X_THING"] == "1"
    assert seen["HTTP_COOKIE"] == "a=1; b=2"
    assert seen["rack.hijack?"] is True
    assert "rack.hijack" not in seen  # no full hijack on a multiplexed connection
    assert not any(k.startswith("HTTP_:") for k in seen)


async def test_request_body_and_streaming_response() -> None:
    async def app(env: dict[str, Any]) -> Any:
        data = b""
        while chunk := await env["rack.input"].receive_some():
            data += chunk

        async def body(stream: trio.abc.Stream) -> None:
            for piece in (data[:3], data[3:]):
                await stream.send_all(piece)

        return 200, {}, body

    async with memory_h2_connection(app) as client:
        response = await client.request("POST", "/", body=b"x" * 100_000)
    assert response.status == 200
    assert response.body == b"x" * 100_000


@pytest.mark.parametrize("kind", ["list", "iterable", "async-iterable"])
async def test_body_kinds(kind: str) -> None:
    async def agen() -> Any:
        yield b"a"
        yield b"b"

    bodies = {"list": lambda: [b"a", b"b"], "iterable": lambda: iter([b"a", b"b"]), "async-iterable": agen}

    async def app(env: dict[str, Any]) -> Any:
        return 200, {}, bodies[kind]()

    async with memory_h2_connection(app) as client:
        response = await client.request("GET", "/")
        head = await client.request("HEAD", "/")
    assert response.body == b"ab"
    assert head.status == 200 and head.body == b""


async def test_expect_100_continue_is_sent_when_the_app_reads() -> None:
    async def app(env: dict[str, Any]) -> Any:
        return 200, {}, [await env["rack.input"].receive_some()]

    async with memory_h2_connection(app) as client:
        sid = await client.start_request("POST", "/", headers=[("expect", "100-continue")], end_stream=False)
        await client.read_until(lambda: 100 in client.results[sid].informational)
        await client.send_body(sid, b"payload", end_stream=True)
        response = await client.read_response(sid)
    assert response.informational == [100]
    assert response.body == b"payload"


async def test_early_hints_are_an_informational_headers_frame() -> None:
    async def app(env: dict[str, Any]) -> Any:
        await env["rack.early_hints"]({"link": "</a.css>; rel=preload"})
        return 200, {}, [b"x"]

    async with memory_h2_connection(app) as client:
        sid = await client.start_request("GET", "/")
        response = await client.read_response(sid)
    assert response.informational == [103]
    assert client.results[sid].informational_headers[0] == [("link", "</a.css>; rel=preload")]


async def test_response_finished_runs_over_http2() -> None:
    calls: list[Any] = []

    async def app(env: dict[str, Any]) -> Any:
        env["rack.response_finished"].append(lambda env, status, headers, error: calls.append(status))
        return 201, {}, [b""]

    async with memory_h2_connection(app) as client:
        response = await client.request("GET", "/")
    assert response.status == 201
    assert calls == [201]


async def test_connection_specific_headers_are_stripped_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    async def app(env: dict[str, Any]) -> Any:
        return 200, {"connection": "close", "keep-alive": "5", "proxy-connection": "x", "te": "gzip",
                     "upgrade": "foo", "transfer-encoding": "chunked", "x-ok": "1"}, [b"ok"]

    with caplog.at_level(logging.WARNING, logger="trio_rack.error"):
        async with memory_h2_connection(app) as client:
            response = await client.request("GET", "/")
    assert response.status == 200 and response.body == b"ok"
    names = {k for k, _ in response.headers}
    assert names.isdisjoint({"connection", "keep-alive", "proxy-connection", "te", "upgrade", "transfer-encoding"})
    assert "x-ok" in names
    warned = " ".join(r.getMessage() for r in caplog.records)
    for name in ("proxy-connection", "te", "keep-alive", "connection"):
        assert f"hop-by-hop header '{name}'" in warned


async def test_websocket_refusals_work_without_connection_specific_headers() -> None:
    from trio_rack import websocket

    async def app(env: dict[str, Any]) -> Any:
        try:
            websocket.accept(env)
        except websocket.HandshakeError as exc:
            return exc.response
        return 500, {}, [b"accepted?"]

    async with memory_h2_connection(app) as client:
        response = await client.request("GET", "/ws")
    assert response.status == 426
    assert b"WebSocket" in response.body
    assert not {k for k, _ in response.headers} & {"connection", "upgrade"}


# --------------------------------------------------------------------------------- flow control


async def test_the_receive_window_opens_only_as_the_app_reads() -> None:
    """The server acknowledges request DATA only when ``rack.input`` hands it to the app."""
    release = trio.Event()
    read = []

    async def app(env: dict[str, Any]) -> Any:
        await release.wait()
        while chunk := await env["rack.input"].receive_some():
            read.append(len(chunk))
        return 200, {}, [b"%d" % sum(read)]

    window = 64 * 1024
    async with memory_h2_connection(app, limits=Limits(stream_window_size=window)) as client:
        sid = await client.start_request("POST", "/", end_stream=False)
        await client.read_until(lambda: client.h2.remote_settings.initial_window_size == window)
        total = 3 * window
        sent: list[bool] = []

        async def send_all() -> None:
            await client.send_body(sid, b"y" * total, end_stream=True)
            sent.append(True)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_all)
            await trio.testing.wait_all_tasks_blocked()
            # the app has not read: the client is stuck at the stream window, its upload unfinished
            assert client.h2.local_flow_control_window(sid) == 0
            assert not sent and not read
            release.set()
        response = await client.read_response(sid)
    assert response.body == b"%d" % total


async def test_send_all_waits_for_the_clients_window() -> None:
    """Back-pressure: with the client's window at 100 bytes, the app's writes wait."""
    progress: list[int] = []

    async def app(env: dict[str, Any]) -> Any:
        async def body(stream: trio.abc.Stream) -> None:
            for i in range(10):
                await stream.send_all(b"z" * 50)
                progress.append(i)

        return 200, {}, body

    async with memory_h2_connection(app, settings={SettingCodes.INITIAL_WINDOW_SIZE: 100}) as client:
        client.h2.acknowledge_received_data = lambda *a, **k: None  # type: ignore[method-assign]
        sid = await client.start_request("GET", "/")
        await client.read_until(lambda: sum(map(len, client.results[sid].chunks)) >= 100)
        await trio.testing.wait_all_tasks_blocked()
        assert sum(map(len, client.results[sid].chunks)) == 100
        assert len(progress) <= 3  # two sends fit, the third waits for window
        del client.h2.acknowledge_received_data
        client.h2.increment_flow_control_window(10_000, stream_id=sid)
        await client.flush()
        response = await client.read_response(sid)
    assert response.body == b"z" * 500 and progress == list(range(10))


async def test_zero_window_stall_resets_the_stream_and_cancels_its_app(autojump_clock: Any) -> None:
    """CVE-2019-9517 (internal data buffering) and the zero-window stall: a client that opens
    no window gets no more than the window; past ``write_timeout`` the stream is reset."""
    outcome: list[str] = []

    async def app(env: dict[str, Any]) -> Any:
        async def body(stream: trio.abc.Stream) -> None:
            try:
                for _ in range(1000):
                    await stream.send_all(b"q" * 1000)
            except trio.BrokenResourceError:
                outcome.append("broken")
                raise
            except trio.Cancelled:
                outcome.append("cancelled")
                raise

        return 200, {}, body

    shut = {SettingCodes.INITIAL_WINDOW_SIZE: 0}
    async with memory_h2_connection(app, limits=Limits(write_timeout=5), settings=shut) as client:
        sid = await client.start_request("GET", "/")
        result = await client.read_stream(sid)
        assert result.reset == ErrorCodes.CANCEL
        assert result.chunks == []
        assert outcome and outcome[0] in ("broken", "cancelled")
        assert client.goaway is None  # the connection goes on


async def test_connection_window_stall_closes_the_connection_with_goaway(autojump_clock: Any) -> None:
    async def app(env: dict[str, Any]) -> Any:
        return 200, {}, [b"w" * 200_000]

    big_window = {SettingCodes.INITIAL_WINDOW_SIZE: 2**20}
    async with memory_h2_connection(app, limits=Limits(write_timeout=5), settings=big_window) as client:
        # a big stream window, but the connection window (65535) is never reopened
        client.h2.acknowledge_received_data = lambda *a, **k: None  # type: ignore[method-assign]
        sid = await client.start_request("GET", "/")
        await client.read_until(lambda: client.goaway is not None)
        assert sum(map(len, client.results[sid].chunks)) == 65535
        assert client.goaway is not None and client.goaway.error_code == ErrorCodes.FLOW_CONTROL_ERROR


# ------------------------------------------------------------------------- hijack and cancel


async def test_partial_hijack_is_a_framed_stream_and_other_streams_go_on() -> None:
    async def app(env: dict[str, Any]) -> Any:
        if env["PATH_INFO"] == "/plain":
            return 200, {}, [b"plain"]

        async def tunnel(stream: trio.abc.Stream) -> None:
            while data := await stream.receive_some():
                await stream.send_all(data.upper())
                if data.endswith(b"."):
                    break
            await stream.aclose()

        return 200, {"rack.hijack": tunnel, "content-type": "text/x-echo"}, []

    async with memory_h2_connection(app) as client:
        sid = await client.start_request("POST", "/echo", end_stream=False)
        await client.send_body(sid, b"hello ")
        await client.read_until(lambda: client.results[sid].chunks)
        assert b"".join(client.results[sid].chunks) == b"HELLO "
        plain = await client.request("GET", "/plain")
        assert plain.body == b"plain"
        await client.send_body(sid, b"world.")
        result = await client.read_stream(sid)
    assert result.status == 200 and result.ended and result.reset is None
    assert b"".join(result.chunks) == b"HELLO WORLD."


async def test_rst_stream_cancels_only_that_streams_app() -> None:
    started = trio.Event()
    cleaned: list[str] = []

    async def app(env: dict[str, Any]) -> Any:
        if env["PATH_INFO"] == "/slow":
            async def body(stream: trio.abc.Stream) -> None:
                try:
                    await stream.send_all(b"tick")
                    started.set()
                    await trio.sleep_forever()
                finally:
                    cleaned.append("body")

            return 200, {}, body
        return 200, {}, [b"fast"]

    async with memory_h2_connection(app) as client:
        sid = await client.start_request("GET", "/slow")
        await started.wait()
        await client.reset(sid)
        await trio.testing.wait_all_tasks_blocked()
        assert cleaned == ["body"]
        response = await client.request("GET", "/fast")
        assert response.body == b"fast"
        assert client.goaway is None


async def test_client_closing_the_connection_cancels_every_stream() -> None:
    running = 0
    cancelled = 0
    both = trio.Event()

    async def app(env: dict[str, Any]) -> Any:
        nonlocal running, cancelled
        running += 1
        if running == 2:
            both.set()
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            cancelled += 1
            raise

    async with memory_h2_connection(app) as client:
        await client.start_request("GET", "/1")
        await client.start_request("GET", "/2")
        await both.wait()
        await client.stream.aclose()
        with trio.fail_after(2):
            await client.server_done.wait()
    assert cancelled == 2


async def test_graceful_shutdown_sends_goaway_first_and_lets_streams_finish(autojump_clock: Any) -> None:
    state = ServerState(None, Limits(), access_log=False)
    finish = trio.Event()
    shutdown_seen: list[bool] = []

    async def app(env: dict[str, Any]) -> Any:
        await finish.wait()
        shutdown_seen.append(env["trio_rack.shutdown"].is_set())
        return 200, {}, [b"done"]

    state.app = app
    async with memory_h2_connection(app, state=state) as client:
        sid = await client.start_request("GET", "/")
        await trio.testing.wait_all_tasks_blocked()
        state.draining = True
        state.shutdown_started.set()
        for conn in list(state.connections):
            conn.close_if_idle()
        await client.read_until(lambda: client.goaway is not None)
        assert client.results[sid].status is None  # GOAWAY came before the in-flight response
        finish.set()
        response = await client.read_response(sid)
        assert response.body == b"done"
        await client.read_until(lambda: False)  # the server closes once its streams are done
        assert client.closed
    assert shutdown_seen == [True]


async def test_idle_connection_is_closed_with_goaway_no_error(autojump_clock: Any) -> None:
    async with memory_h2_connection(hello, limits=Limits(keepalive_timeout=3)) as client:
        assert (await client.request("GET", "/")).status == 200
        start = trio.current_time()
        await client.read_until(lambda: False)
        assert client.goaway is not None and client.goaway.error_code == ErrorCodes.NO_ERROR
        assert 3 <= trio.current_time() - start < 4


# ----------------------------------------------------------------------------- limits, refusals


async def test_settings_advertise_the_limits() -> None:
    limits = Limits(max_concurrent_streams=7, max_head_size=20_000, stream_window_size=100_000)
    async with memory_h2_connection(hello, limits=limits) as client:
        await client.request("GET", "/")
        remote = client.h2.remote_settings
        assert remote.max_concurrent_streams == 7
        assert remote.max_header_list_size == 20_000
        assert remote.initial_window_size == 100_000
        from trio_rack.http2.connection import extended_connect_supported

        assert remote.enable_connect_protocol == int(extended_connect_supported())


async def test_streams_beyond_max_concurrent_are_refused() -> None:
    gate = trio.Event()

    async def app(env: dict[str, Any]) -> Any:
        await gate.wait()
        return 200, {}, [b"ok"]

    async with memory_h2_connection(app, limits=Limits(max_concurrent_streams=2)) as client:
        await client.read_until(lambda: client.h2.remote_settings.max_concurrent_streams == 2)
        client.h2.remote_settings._settings[SettingCodes.MAX_CONCURRENT_STREAMS].appendleft(100)  # lie, to send a third
        client.h2.remote_settings._settings[SettingCodes.MAX_CONCURRENT_STREAMS].pop()
        a = await client.start_request("GET", "/a")
        b = await client.start_request("GET", "/b")
        c = await client.start_request("GET", "/c")
        with trio.fail_after(5):  # served instead of refused, it would wait for the gate
            third = await client.read_stream(c)
        assert third.reset == ErrorCodes.REFUSED_STREAM
        gate.set()
        assert (await client.read_response(a)).status == 200
        assert (await client.read_response(b)).status == 200
        assert client.goaway is None


async def test_request_limits_answer_on_the_stream(autojump_clock: Any) -> None:
    async def reader(env: dict[str, Any]) -> Any:
        return 200, {}, [await env["rack.input"].receive_some()]

    limits = Limits(max_body_size=10, max_header_count=5, body_timeout=2)
    async with memory_h2_connection(reader, limits=limits) as client:
        big = await client.request("POST", "/", headers=[("content-length", "20")], body=b"x" * 20)
        assert big.status == 413
        many = await client.request("GET", "/", headers=[(f"x-{i}", "1") for i in range(6)])
        assert many.status == 431
        sid = await client.start_request("POST", "/", end_stream=False)
        stalled = await client.read_response(sid)
        assert stalled.status == 408
        chunked = await client.start_request("POST", "/", end_stream=False)
        await client.send_body(chunked, b"y" * 30, end_stream=True)
        assert (await client.read_response(chunked)).status == 413
        assert client.goaway is None


async def test_invalid_preface_gets_goaway_protocol_error() -> None:
    async with memory_h2_connection(hello) as client:
        await client.stream.send_all(b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n" + b"\x00" * 20)
        reader = FrameReader(client.stream)
        frames = await reader.until_closed()
    goaway = goaway_of(frames)
    assert goaway is not None and goaway.error_code == ErrorCodes.PROTOCOL_ERROR


# -------------------------------------------------------------------------------- attack classes


async def _raw_client(client: H2MemoryClient) -> FrameReader:
    await client.send_raw(b"")
    return FrameReader(client.stream)


async def test_rapid_reset_cve_2023_44487_is_cut_off_with_enhance_your_calm() -> None:
    """CVE-2023-44487: open and reset streams in a loop; GOAWAY ENHANCE_YOUR_CALM after a bounded
    number of resets, and the app runs for only a bounded number of them."""
    calls = 0

    async def app(env: dict[str, Any]) -> Any:
        nonlocal calls
        calls += 1
        await trio.sleep_forever()

    limit = 50
    async with memory_h2_connection(app, limits=Limits(max_stream_resets=limit)) as client:
        reader = await _raw_client(client)
        block = encode_request_headers()
        sent = 0
        for batch in range(100):
            data = b""
            for i in range(20):
                sid = 1 + 2 * (batch * 20 + i)
                data += headers_frame(sid, block, end_stream=False)
                data += RstStreamFrame(sid, error_code=8).serialize()
            try:
                await client.stream.send_all(data)
            except trio.BrokenResourceError:
                break
            sent += 20
            await trio.testing.wait_all_tasks_blocked()
            if reader.closed:
                break
            with trio.move_on_after(0):
                await reader.until(goaway_of)  # type: ignore[arg-type]
            if goaway_of(reader.frames):
                break
        await reader.until(lambda frames: goaway_of(frames) is not None)
    goaway = goaway_of(reader.frames)
    assert goaway is not None and goaway.error_code == ErrorCodes.ENHANCE_YOUR_CALM
    assert sent <= limit + 20
    assert calls <= limit + 20


async def test_continuation_flood_cve_2024_27316_is_cut_off_at_the_head_size_limit() -> None:
    """CVE-2024-27316 (and the April 2024 CONTINUATION family): endless CONTINUATION without
    END_HEADERS is cut off once the block passes ``max_head_size``, not after h2's 64 frames."""
    calls = 0

    async def app(env: dict[str, Any]) -> Any:
        nonlocal calls
        calls += 1
        return 200, {}, []

    limits = Limits(max_head_size=16 * 1024)
    async with memory_h2_connection(app, limits=limits) as client:
        reader = await _raw_client(client)
        await client.stream.send_all(headers_frame(1, encode_request_headers(), end_headers=False))
        sent = 0
        filler = b"\x00" * 1024  # not even valid HPACK: it must never be decoded
        for _ in range(1000):
            frame = ContinuationFrame(1, data=filler)
            try:
                await client.stream.send_all(frame.serialize())
            except trio.BrokenResourceError:
                break
            sent += len(filler)
            await trio.testing.wait_all_tasks_blocked()
            if reader.closed or client.server_done.is_set():
                break
        await reader.until(lambda frames: goaway_of(frames) is not None)
    goaway = goaway_of(reader.frames)
    assert goaway is not None and goaway.error_code == ErrorCodes.ENHANCE_YOUR_CALM
    assert sent <= limits.max_head_size + 2048
    assert calls == 0


async def test_hpack_bomb_is_stopped_by_the_decoded_size_limit() -> None:
    """HPACK bomb (CVE-2016-6581 class): a small block of indexed references to one large
    dynamic-table entry decodes to megabytes; the decoder stops at ``max_head_size``."""
    encoder = hpack.Encoder()
    block = bytes(encoder.encode([(":method", "GET"), (":scheme", "http"), (":authority", "t"), (":path", "/")]))
    block += bytes(encoder.encode([("x-bomb", "a" * 4000)]))
    reference = bytes(encoder.encode([("x-bomb", "a" * 4000)]))
    assert len(reference) == 1
    block += reference * 8000  # ~8 KB on the wire, 32 MB decoded
    calls = 0

    async def app(env: dict[str, Any]) -> Any:
        nonlocal calls
        calls += 1
        return 200, {}, []

    async with memory_h2_connection(app) as client:
        reader = await _raw_client(client)
        frame = HeadersFrame(1, data=block[:16384])
        data = frame.serialize()
        rest = block[16384:]
        if not rest:
            frame.flags.add("END_HEADERS")
        frame.flags.add("END_STREAM")
        data = frame.serialize()
        while rest:
            cont = ContinuationFrame(1, data=rest[:16384])
            rest = rest[16384:]
            if not rest:
                cont.flags.add("END_HEADERS")
            data += cont.serialize()
        await client.stream.send_all(data)
        await reader.until(lambda frames: goaway_of(frames) is not None)
    goaway = goaway_of(reader.frames)
    assert goaway is not None and goaway.error_code in (ErrorCodes.COMPRESSION_ERROR, ErrorCodes.ENHANCE_YOUR_CALM)
    assert calls == 0


def _ping(i: int) -> bytes:
    return bytes(PingFrame(0, opaque_data=i.to_bytes(8, "big")).serialize())


def _settings(i: int) -> bytes:
    return bytes(SettingsFrame(0, settings={SettingCodes.HEADER_TABLE_SIZE: 4096}).serialize())


def _priority(i: int) -> bytes:
    return bytes(PriorityFrame(1 + 2 * (i % 50), depends_on=1 + 2 * ((i + 1) % 50), stream_weight=16).serialize())


def _empty_data(i: int) -> bytes:
    return bytes(DataFrame(1, data=b"").serialize())


def _tiny_window_update(i: int) -> bytes:
    return bytes(WindowUpdateFrame(0, window_increment=1).serialize())


@pytest.mark.parametrize(
    ("advisory", "make"),
    [
        ("CVE-2019-9512 ping flood", _ping),
        ("CVE-2019-9515 settings flood", _settings),
        ("CVE-2019-9513 resource loop (PRIORITY)", _priority),
        ("CVE-2019-9518 empty frames flood", _empty_data),
        ("CVE-2019-9511 data dribble (tiny WINDOW_UPDATE)", _tiny_window_update),
    ],
)
async def test_2019_control_frame_floods_are_cut_off(advisory: str, make: Any) -> None:
    """The 2019 family: frames that cost the server work (or queued answers) but carry no
    request.  They spend a bucket of ``max_control_frames`` per 10 s; then GOAWAY."""
    limit = 100
    async with memory_h2_connection(hello, limits=Limits(max_control_frames=limit)) as client:
        reader = await _raw_client(client)
        if make is _empty_data:  # an open stream to send empty DATA on
            await client.stream.send_all(headers_frame(1, encode_request_headers(method="POST"), end_stream=False))
        payload = b"".join(make(i) for i in range(limit * 3))
        try:
            await client.stream.send_all(payload)
        except trio.BrokenResourceError:
            pass
        await reader.until(lambda frames: goaway_of(frames) is not None)
    goaway = goaway_of(reader.frames)
    assert goaway is not None, advisory
    assert goaway.error_code == ErrorCodes.ENHANCE_YOUR_CALM, advisory
    acks = [f for f in reader.frames if isinstance(f, PingFrame)]
    assert len(acks) <= limit + 1


async def test_ping_flood_without_reading_does_not_buffer_without_bound(autojump_clock: Any) -> None:
    """CVE-2019-9512 with a client that never reads: the server stops reading once its queue is
    full and drops the connection at the write timeout."""
    limits = Limits(write_timeout=5, max_control_frames=10**7)
    async with memory_h2_connection(hello, limits=limits, lockstep=True) as client:
        await client.send_raw(b"")
        sent = 0
        with trio.move_on_after(30):
            try:
                while True:
                    await client.stream.send_all(_ping(sent) * 100)
                    sent += 100
            except trio.BrokenResourceError:
                pass
        await client.server_done.wait()
    # a lockstep pair buffers nothing: the server read only until its queue reached HIGH_WATER
    assert 0 < sent * 17 < 2 * 1024 * 1024


async def test_cve_2019_9516_empty_header_names_are_refused() -> None:
    """CVE-2019-9516 (0-length headers leak): a header with an empty name never reaches the app."""
    calls = 0

    async def app(env: dict[str, Any]) -> Any:
        nonlocal calls
        calls += 1
        return 200, {}, []

    async with memory_h2_connection(app) as client:
        reader = await _raw_client(client)
        encoder = hpack.Encoder()
        fields = [(":method", "GET"), (":scheme", "http"), (":authority", "t"), (":path", "/"), ("", "")]
        block = bytes(encoder.encode(fields))
        await client.stream.send_all(headers_frame(1, block))
        frames = await reader.until(lambda fs: any(isinstance(f, (RstStreamFrame, GoAwayFrame)) for f in fs))
    refusals = [f for f in frames if isinstance(f, (RstStreamFrame, GoAwayFrame))]
    assert any(f.error_code == ErrorCodes.PROTOCOL_ERROR for f in refusals)
    assert calls == 0


@pytest.mark.parametrize("authority", ["victim.example 443", "a/b", "x@y"])
async def test_a_malformed_authority_gets_a_400_as_on_http1(authority: str) -> None:
    """``:authority`` is held to the grammar HTTP/1's Host is (HOST_RE): env repeats it
    (HTTP_HOST, SERVER_NAME), so a malformed one is a 400, never the app's."""
    calls = 0

    async def app(env: dict[str, Any]) -> Any:
        nonlocal calls
        calls += 1
        return 200, {}, [b"ok"]

    async with memory_h2_connection(app) as client:
        sid = await client.start_request("GET", "/", authority=authority)
        response = await client.read_response(sid)
        assert response.status == 400
        good = await client.request("GET", "/")  # the connection goes on
        assert (good.status, good.body) == (200, b"ok")
    assert calls == 1


@pytest.mark.parametrize(
    ("hosts", "status"),
    [(["victim.example 443"], 400), (["a/b"], 400), (["ok.example:81"], 200)],
)
async def test_a_host_field_without_authority_is_held_to_the_same_grammar(hosts: list[str], status: int) -> None:
    """Without ``:authority`` a ``host`` field stands in for it (RFC 9113 §8.3.1) and env repeats
    it: it gets HTTP/1's Host grammar (HOST_RE; h2 itself refuses a second one), a 400 otherwise,
    and the connection goes on."""
    seen: list[tuple[str, str]] = []

    async def app(env: dict[str, Any]) -> Any:
        seen.append((env["SERVER_NAME"], env["SERVER_PORT"]))
        return 200, {}, [b"ok"]

    async with memory_h2_connection(app) as client:
        sid = await client.start_request("GET", "/", authority=None, headers=[("host", h) for h in hosts])
        response = await client.read_response(sid)
        assert response.status == status
        good = await client.request("GET", "/")
        assert (good.status, good.body) == (200, b"ok")
    expected = [("ok.example", "81")] if status == 200 else []
    assert seen == expected + [("test", "80")]


@pytest.mark.parametrize("seed", range(5))
async def test_garbage_after_the_preface_never_crashes_the_connection(
    seed: int, caplog: pytest.LogCaptureFixture, autojump_clock: Any
) -> None:
    """Whatever a client sends becomes GOAWAY or RST_STREAM, never a crash."""
    import random

    rng = random.Random(seed)
    async with memory_h2_connection(hello) as client:
        reader = await _raw_client(client)
        junk = bytes(rng.getrandbits(8) for _ in range(2000))
        try:
            await client.stream.send_all(junk)
        except trio.BrokenResourceError:
            pass
        await reader.until_closed()  # a GOAWAY, or the idle timeout if the junk looks like a frame
        assert goaway_of(reader.frames) is not None
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


# ------------------------------------------------------------------ WebSockets over HTTP/2


def _exchange_has_tunnel() -> bool:
    from trio_rack.app.exchange import Exchange

    return hasattr(Exchange, "_tunnel")


@pytest.mark.skipif(not _exchange_has_tunnel(), reason="needs env['trio_rack.tunnel'] from the exchange (RFC 8441)")
async def test_websocket_over_extended_connect_rfc_8441() -> None:
    """The echo example over HTTP/2: extended CONNECT with :protocol websocket gets 200 (not
    101) and the frames travel as DATA on that one stream; the connection's other streams go on."""
    from wsproto.frame_protocol import FrameProtocol, Opcode

    from e2e_support import load_example

    echo = load_example("websocket_echo").app

    async def app(env: dict[str, Any]) -> Any:
        if env["PATH_INFO"] == "/plain":
            return 200, {}, [b"plain"]
        return await echo(env)

    async with memory_h2_connection(app) as client:
        await client.read_until(lambda: client.h2.remote_settings.enable_connect_protocol == 1)
        sid = await client.start_request(
            "CONNECT", "/echo", protocol="websocket", headers=[("sec-websocket-version", "13")], end_stream=False
        )
        with trio.fail_after(5):
            await client.read_until(lambda: client.results[sid].status is not None)
        assert client.results[sid].status == 200
        frames = FrameProtocol(client=True, extensions=[])
        await client.send_body(sid, frames.send_data("hello over h2", fin=True))
        with trio.fail_after(5):
            await client.read_until(lambda: client.results[sid].chunks)
            assert (await client.request("GET", "/plain")).body == b"plain"  # multiplexed beside it
            frames.receive_bytes(b"".join(client.results[sid].chunks))
            got = list(frames.received_frames())
        assert [(f.opcode, f.payload) for f in got] == [(Opcode.TEXT, "hello over h2")]
        client.results[sid].chunks.clear()
        await client.send_body(sid, frames.close(1000, "bye"))
        with trio.fail_after(5):
            result = await client.read_stream(sid)
        frames.receive_bytes(b"".join(result.chunks))
        closing = list(frames.received_frames())
        assert closing and closing[0].opcode == Opcode.CLOSE
        assert result.ended and result.reset is None  # the tunnel ended with END_STREAM


async def test_a_file_body_is_sent_as_data_frames(tmp_path: Any) -> None:
    """FileBody on HTTP/2: no sendfile (the sink declines), the exchange reads it in slices."""
    from trio_rack import FileBody

    path = tmp_path / "f.bin"
    path.write_bytes(bytes(range(256)) * 1000)

    async def ranged(env: Any) -> Any:
        return 200, {}, FileBody(path, offset=10, length=5)

    async with memory_h2_connection(ranged) as client:
        response = await client.request("GET", "/")
    assert response.status == 200 and response.body == bytes(range(10, 15))


async def test_a_partial_hijack_that_fails_is_reset_not_ended_cleanly() -> None:
    """On HTTP/2 a partial hijack is a framed stream: if the app raises half-way, the stream
    gets RST_STREAM, so the client cannot take the half payload for the whole."""

    async def app(env: Any) -> Any:
        async def hijack(stream: trio.abc.Stream) -> None:
            await stream.send_all(b"first half")
            raise RuntimeError("the app fails mid-stream")

        return 200, {"rack.hijack": hijack}, []

    async with memory_h2_connection(app) as client:
        await client.request("GET", "/")
        result = client.results[max(client.results)]
    assert not result.ended and result.reset is not None
