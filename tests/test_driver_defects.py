"""Issue 11 point 7, the defects in the request cycle: each test fails without its fix.

Plain-text 400 reasons, lower-case header names on the wire, the access log for rejected
requests and for websockets (101), ``rack.errors`` at INFO, and the structured access fields
(with a real ``duration_ms``, hence ``%D``/``%T``).  In-memory connections with the autojump
clock, except where a real client matters.
"""

from __future__ import annotations

import base64
import logging
import os

import pytest
import trio

from trio_rack import Limits, websocket
from trio_rack.builder import Builder
from trio_rack.logs import AccessFormatter, JsonFormatter, access_fields
from trio_rack.state import ServerState
from trio_rack.testing import memory_connection, read_until_closed

ACCESS_KEYS = {"remote_addr", "method", "path", "query", "protocol", "status", "bytes", "duration_ms",
               "referer", "user_agent", "hijacked", "time_local"}  # fmt: skip


async def hello(env):
    return 200, {"content-type": "text/plain"}, [b"hello"]


def logged(app, **kwargs):
    """A memory connection whose server writes access-log lines."""
    return memory_connection(None, state=ServerState(app, kwargs.pop("limits", None) or Limits(), access_log=True))


async def exchange(app, request: bytes) -> bytes:
    async with memory_connection(app) as client:
        await client.stream.send_all(request)
        return await read_until_closed(client.stream)


def header_names(response: bytes) -> list[bytes]:
    head = response.partition(b"\r\n\r\n")[0]
    return [line.partition(b":")[0] for line in head.split(b"\r\n")[1:]]


def access_records(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "trio_rack.access"]


# ----------------------------------------------------------------------- 400 text, header case


async def test_the_400_for_a_space_before_the_colon_is_plain_text():
    response = await exchange(hello, b"GET / HTTP/1.1\r\nHost : x\r\n\r\n")
    assert response.startswith(b"HTTP/1.1 400 ")
    body = response.partition(b"\r\n\r\n")[2]
    assert body == b'400 Bad Request: illegal header line: "Host : x"\n'
    assert b"bytearray" not in response and b"b'" not in response


async def streamed(env):
    async def body(stream):
        await stream.send_all(b"hi")

    return 200, {"content-type": "text/plain"}, body


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",  # h11 adds transfer-encoding, rewrites connection
        b"GET / HTTP/1.0\r\nHost: x\r\n\r\n",  # h11 adds connection: close
        b"GET / HTTP/1.1\r\nHost : x\r\n\r\n",  # our 400
    ],
    ids=["chunked", "http10", "400"],
)
async def test_every_header_name_on_the_wire_is_lower_case(request_bytes):
    response = await exchange(streamed, request_bytes)
    names = header_names(response)
    assert names and all(name == name.lower() for name in names), names
    if b"HTTP/1.1\r\nHost: x" in request_bytes:
        assert b"\r\ntransfer-encoding: chunked\r\n" in response and b"\r\nconnection: close\r\n" in response


# ------------------------------------------------------------------------------- access log


@pytest.mark.parametrize(
    ("request_bytes", "status", "request_line"),
    [
        (b"GET / HTTP/1.1\r\nHost : x\r\n\r\n", 400, None),
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, None),
        (b"GET /big HTTP/1.1\r\nHost: x\r\n" + b"X-A: " + b"b" * 70000 + b"\r\n\r\n", 431, "GET /big HTTP/1.1"),
        (b"GET /v HTTP/2.0\r\nHost: x\r\n\r\n", 505, None),
    ],
    ids=["400", "414", "431", "505"],
)
async def test_rejected_requests_get_an_access_log_line(caplog, request_bytes, status, request_line):
    caplog.set_level(logging.INFO, logger="trio_rack")
    async with logged(hello) as client:
        await client.stream.send_all(request_bytes)
        response = await read_until_closed(client.stream)
    assert response.startswith(f"HTTP/1.1 {status} ".encode())
    (record,) = access_records(caplog)
    fields = record.access
    assert set(fields) == ACCESS_KEYS
    assert fields["status"] == status and fields["remote_addr"] == "127.0.0.1"
    assert fields["bytes"] == len(response.partition(b"\r\n\r\n")[2])
    assert f'" {status} ' in record.getMessage()
    if request_line is not None:
        assert f'"{request_line}"' in record.getMessage() and fields["path"] == "/big"


def upgrade_request(path: str) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


@websocket.endpoint()
async def closes_at_once(ws, env):
    await ws.send_message("hi")


@pytest.mark.parametrize("mounted", [False, True], ids=["bare", "under-builder-mount"])
async def test_websocket_access_log_line_says_101(caplog, mounted, autojump_clock):
    # (autojump: the client never answers the close frame; the server waits its close_timeout)
    app = Builder().mount("/chat", closes_at_once) if mounted else closes_at_once
    caplog.set_level(logging.INFO, logger="trio_rack")
    async with logged(app) as client:
        await client.stream.send_all(upgrade_request("/chat/ws" if mounted else "/ws"))
        data = await read_until_closed(client.stream)
    assert data.startswith(b"HTTP/1.1 101 ") and b"hi" in data  # the text frame after the head
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    (record,) = access_records(caplog)
    assert record.access["status"] == 101 and record.access["hijacked"] is True
    assert '" 101 ' in record.getMessage() and record.getMessage().endswith(" hijacked")


async def test_partial_hijack_access_log_line_has_its_status(caplog):
    async def app(env):
        async def hijack(stream):
            await stream.send_all(b"raw")

        return 101, {"upgrade": "x", "connection": "upgrade", "rack.hijack": hijack}, []

    caplog.set_level(logging.INFO, logger="trio_rack")
    async with logged(app) as client:
        await client.stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await read_until_closed(client.stream)
    (record,) = access_records(caplog)
    assert record.access["status"] == 101


async def test_access_fields_are_structured_with_a_real_duration(caplog, autojump_clock):
    async def slow(env):
        await trio.sleep(1.5)
        return 200, {"content-type": "text/plain"}, [b"done"]

    caplog.set_level(logging.INFO, logger="trio_rack")
    async with logged(slow) as client:
        await client.stream.send_all(
            b"GET /p?q=1 HTTP/1.1\r\nHost: x\r\nReferer: http://r/\r\nUser-Agent: t\"a\r\nConnection: close\r\n\r\n"
        )
        await read_until_closed(client.stream)
    (record,) = access_records(caplog)
    fields = record.access
    assert fields == {
        "remote_addr": "127.0.0.1", "method": "GET", "path": "/p", "query": "q=1", "protocol": "HTTP/1.1",
        "status": 200, "bytes": 4, "duration_ms": pytest.approx(1500, abs=1), "referer": "http://r/",
        "user_agent": fields["user_agent"], "hijacked": False, "time_local": fields["time_local"],
    }  # fmt: skip
    assert access_fields(record) == fields  # the structured extra, not the text parse (which has no duration)
    assert AccessFormatter("%D %T %s").format(record) == "1500000 1 200"
    assert '"duration_ms": 1500' in JsonFormatter().format(record)


async def test_structured_fields_keep_client_bytes_escaped_in_formatted_lines(caplog):
    caplog.set_level(logging.INFO, logger="trio_rack")
    async with logged(hello) as client:
        # h11 refuses control bytes in a header value; obs-text (non-ASCII) gets through.
        await client.stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\nUser-Agent: a\xffb\r\nConnection: close\r\n\r\n")
        await read_until_closed(client.stream)
    (record,) = access_records(caplog)
    assert record.access["status"] == 200 and record.access["user_agent"] == "a\\xffb"
    assert AccessFormatter('"%{User-agent}i"').format(record) == '"a\\xffb"'  # as the text line has it


async def test_rack_errors_lines_are_info_on_trio_rack_app(caplog):
    async def app(env):
        env["rack.errors"].write("from the app\n")
        return 200, {}, [b"ok"]

    caplog.set_level(logging.DEBUG, logger="trio_rack")
    response = await exchange(app, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert response.startswith(b"HTTP/1.1 200 ")
    (record,) = [r for r in caplog.records if r.name == "trio_rack.app"]
    assert record.levelno == logging.INFO and record.getMessage() == "from the app"
