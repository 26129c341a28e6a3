"""The keep-alive hot path's shortcuts give the same bytes and verdicts as the long way round.

Issue #12's optimisations each skip work whose outcome is known; these tests pin that the
outcome is the same: the response head the driver builds (a pre-built h11 ``Headers``) against
h11 given the plain list, on both parsers; the one control-byte search over all header values
against a search per value; the plain header list of ``request_head`` against h11's
``Headers``; and the driver's read of an empty buffer (no parser call) when the client sends
its next request in pieces, or closes, between keep-alive requests.
"""

from __future__ import annotations

import h11
import pytest
import trio

from conftest import HTTP1_PARSERS
from trio_rack import Limits
from trio_rack.app.env import ConnInfo
from trio_rack.http1.connection import HTTPConnection
from trio_rack.http1.parsers import new_parser
from trio_rack.http1.strict import check_request, request_head
from trio_rack.state import ServerState
from trio_rack.testing import memory_connection

LIMITS = Limits()
REQUESTS = {
    "get-1.1": b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    "head-1.1": b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n",
    "get-1.0": b"GET / HTTP/1.0\r\n\r\n",
    "close-1.1": b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
}
HEADS = {
    "length": (200, [(b"content-type", b"text/plain"), (b"content-length", b"13")]),
    "streamed": (200, [(b"content-type", b"text/plain")]),
    "no-content": (204, [(b"x-a", b"1")]),
    "not-modified": (304, [(b"etag", b'"x"'), (b"content-length", b"5")]),
    "app-close": (200, [(b"connection", b"close"), (b"content-length", b"0")]),
}


def _parsed(parser: str, request: bytes) -> object:
    conn = new_parser(parser, 16 * 1024)
    conn.receive_data(request)
    assert type(conn.next_event()) is h11.Request
    return conn


@pytest.mark.parametrize("parser", HTTP1_PARSERS)
@pytest.mark.parametrize("request_name", sorted(REQUESTS))
@pytest.mark.parametrize("head_name", sorted(HEADS))
async def test_driver_head_equals_h11_given_the_list(parser: str, request_name: str, head_name: str) -> None:
    """The driver's response event (its headers pre-built) serialises, and moves the parser's
    states, exactly as h11 does with the same headers given as a list it normalises itself."""
    status, headers = HEADS[head_name]
    ours = _parsed(parser, REQUESTS[request_name])
    theirs = _parsed(parser, REQUESTS[request_name])
    a, _b = trio.testing.memory_stream_pair()
    driver = HTTPConnection(a, ServerState(None, LIMITS, access_log=False), ConnInfo("http", None, None), parser)
    driver.h11 = ours
    event = driver._head_event(status, list(headers))
    assert type(event.headers) is not list  # the pre-built form is what is under test
    wire = ours.send(event)  # type: ignore[attr-defined]
    expected = theirs.send(  # type: ignore[attr-defined]
        h11.Response(status_code=status, headers=list(driver._framed_headers(list(headers))), reason=event.reason)
    )
    assert wire == expected
    assert ours.our_state is theirs.our_state  # type: ignore[attr-defined]
    assert ours.their_state is theirs.their_state  # type: ignore[attr-defined]


@pytest.mark.parametrize("parser", HTTP1_PARSERS)
@pytest.mark.parametrize(
    ("fields", "refused"),
    [
        (b"X: a\tb\r\nY: c\r\n", False),  # a tab inside a value is allowed (and is the joiner)
        (b"X: a\r\nY: c\x01d\r\n", True),  # a control byte in the second value
        (b"X: a\x7f\r\n", True),  # DEL
        (b"X: ok\r\nY: fine\r\nZ: \x1fz\r\n", True),  # in the last value
    ],
)
def test_one_search_over_values_gives_each_values_verdict(parser: str, fields: bytes, refused: bool) -> None:
    conn = new_parser(parser, 16 * 1024)
    conn.receive_data(b"GET / HTTP/1.1\r\nHost: a\r\n" + fields + b"\r\n")
    try:
        event = conn.next_event()
    except h11.RemoteProtocolError:
        pytest.skip("the parser itself refuses these bytes")  # (then check_request never runs)
    found = check_request(event, LIMITS)
    assert (found == (400, "control character in a header field value")) is refused
    if not refused:
        assert found is None


@pytest.mark.parametrize("parser", HTTP1_PARSERS)
def test_request_head_headers_are_a_plain_list_equal_to_h11s(parser: str) -> None:
    conn = new_parser(parser, 16 * 1024)
    conn.receive_data(b"GET /p?q HTTP/1.1\r\nHost: a\r\nX-One: 1\r\nx-one: 2\r\nCookie: c\r\n\r\n")
    event = conn.next_event()
    head = request_head(event)
    assert type(head.headers) is list
    assert head.headers == list(event.headers)
    assert head.headers == [(b"host", b"a"), (b"x-one", b"1"), (b"x-one", b"2"), (b"cookie", b"c")]
    assert head.http_version == "1.1"


async def _hello(env: dict[str, object]) -> tuple[int, dict[str, str], list[bytes]]:
    return 200, {"content-type": "text/plain"}, [env["PATH_INFO"].encode()]  # type: ignore[union-attr]


@pytest.mark.parametrize("parser", HTTP1_PARSERS)
async def test_next_request_in_pieces_after_an_empty_buffer(parser: str) -> None:
    """Between keep-alive requests nothing is buffered and the driver reads without asking the
    parser: a next request arriving a byte at a time, then EOF, is still served, then closed."""
    async with memory_connection(_hello, http1_parser=parser) as client:
        stream = client.stream
        for path in (b"/one", b"/two"):
            for byte in b"GET " + path + b" HTTP/1.1\r\nHost: a\r\n\r\n":
                await stream.send_all(bytes([byte]))
                await trio.testing.wait_all_tasks_blocked()
            got = b""
            while not got.endswith(path[1:]):
                got += await stream.receive_some(65536)
            assert got.startswith(b"HTTP/1.1 200 ")
        await stream.send_eof()
        assert await stream.receive_some(65536) == b""  # closed in order, nothing more sent


@pytest.mark.parametrize("parser", HTTP1_PARSERS)
async def test_an_app_content_length_past_20_digits_is_the_apps_error(parser: str) -> None:
    """h11 refused a content-length of more than 20 digits when it normalised the head; it now
    takes the exchange's head as it is, so the exchange's validation refuses it: a 500."""

    async def app(env: dict[str, object]) -> tuple[int, dict[str, str], object]:
        async def body(stream: object) -> None:
            return None

        return 200, {"content-length": "1" + "0" * 20}, body

    async with memory_connection(app, http1_parser=parser) as client:
        response = await client.request("GET", "/")
    assert response.status == 500
