"""HttptoolsConnection.send_whole: a buffered response in one call, held to the three sends.

Two engines fed the same request: one answers with ``send_whole``, the other with the events
the driver sends otherwise (``Response`` with prebuilt ``Headers``, ``Data`` per non-empty
chunk, ``EndOfMessage``).  Where ``send_whole`` takes the response, the bytes and every piece
of state must be the events'; where it declines (None), it must have changed nothing.  Over
requests that leave the engine in each state the driver can answer from (keep-alive,
``connection: close``, HTTP/1.0, HEAD, CONNECT, an upgrade, a waiting ``100-continue``, an
unread and a read body) and responses of every framing shape.
"""

from __future__ import annotations

import itertools
from typing import Any

import h11
import pytest
from h11._headers import Headers

from trio_rack.http1 import httptools_engine
from trio_rack.http1.httptools_engine import HttptoolsConnection

pytestmark = pytest.mark.skipif(not httptools_engine.AVAILABLE, reason="httptools not installed")

REQUESTS = {
    "keep-alive": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    "close": b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    "http/1.0": b"GET / HTTP/1.0\r\n\r\n",
    "head": b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n",
    "connect": b"CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\n",
    "upgrade": b"GET / HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
    "100-continue": b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n",
    "body unread": b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc",
    "body read": b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc",
    "chunked unread": b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n",
}
BODIES: list[list[bytes]] = [[b"Hello, world!"], [b"", b"ab", b"", b"c"], [], [b""]]
STATUSES = [200, 201, 204, 304, 404, 500, 999]
EXTRA_HEADERS: list[list[tuple[bytes, bytes]]] = [
    [],
    [(b"connection", b"keep-alive")],
    [(b"transfer-encoding", b"chunked")],
    [(b"host", b"elsewhere")],
    [(b"x-a", b"1"), (b"x-b", b"")],
]
LENGTHS = ["right", "wrong", "none", "twice"]


def _engine(request: str) -> HttptoolsConnection:
    conn = HttptoolsConnection()
    conn.receive_data(REQUESTS[request])
    assert type(conn.next_event()) is h11.Request
    if request == "body read":
        while type(conn.next_event()) is not h11.EndOfMessage:
            pass
    return conn


def _state(conn: HttptoolsConnection) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for slot in HttptoolsConnection.__slots__:
        value = getattr(conn, slot)
        if slot == "_buf":
            value = bytes(value)
        elif slot in ("_sink", "_parser"):
            value = type(value)  # (each engine has its own; replaced or not is in the next cycle)
        elif slot == "_proposals":
            value = set(value)
        elif slot == "_chunked":
            value = None if value is None else vars(value) if hasattr(value, "__dict__") else type(value)
        seen[slot] = value
    return seen


def _fields(body: list[bytes], extra: list[tuple[bytes, bytes]], length: str) -> list[tuple[bytes, bytes]]:
    total = sum(map(len, body))
    fields = [(b"content-type", b"text/plain")] + extra
    if length == "right":
        fields.append((b"content-length", b"%d" % total))
    elif length == "wrong":
        fields.append((b"content-length", b"%d" % (total + 1)))
    elif length == "twice":
        fields += [(b"content-length", b"%d" % total)] * 2
    fields += [(b"date", b"Thu, 01 Jan 2026 00:00:00 GMT"), (b"server", b"trio-rack")]
    return fields


def _events(conn: HttptoolsConnection, status: int, fields: list[tuple[bytes, bytes]], body: list[bytes]) -> bytes:
    headers = Headers([(name, name, value) for name, value in fields])
    pieces = list(conn.send_with_data_passthrough(
        h11.Response(status_code=status, headers=headers, reason=b"R", _parsed=True)
    ) or [])  # fmt: skip
    for chunk in body:
        if chunk:
            pieces += conn.send_with_data_passthrough(h11.Data(data=chunk)) or []
    pieces += conn.send_with_data_passthrough(h11.EndOfMessage()) or []
    return b"".join(pieces)


def test_send_whole_is_the_three_sends_or_declines_without_a_trace() -> None:
    taken = declined = 0
    for request, status, body, extra, length in itertools.product(REQUESTS, STATUSES, BODIES, EXTRA_HEADERS, LENGTHS):
        fields = _fields(body, extra, length)
        total = sum(map(len, body))
        fast, slow = _engine(request), _engine(request)
        before = _state(fast)
        pieces = fast.send_whole(status, b"R", list(fields), body, total)
        if pieces is None:
            declined += 1
            assert _state(fast) == before, (request, status, body, extra, length)
            continue
        taken += 1
        assert _events(slow, status, fields, body) == b"".join(pieces), (request, status, body, extra, length)
        assert _state(fast) == _state(slow), (request, status, body, extra, length)
        assert fast.our_state is h11.DONE
        # and the rest of the request and the next cycle go on alike
        for conn in (fast, slow):
            while conn.their_state is h11.SEND_BODY and conn.next_event() is not h11.NEED_DATA:
                pass
        assert _state(fast) == _state(slow)
        if fast.their_state is h11.DONE:
            fast.start_next_cycle()
            slow.start_next_cycle()
            assert _state(fast) == _state(slow)
            fast.receive_data(REQUESTS["keep-alive"])
            slow.receive_data(REQUESTS["keep-alive"])
            assert fast.next_event() == slow.next_event()
    assert taken > 0 and declined > 0
    # the plain cases are the ones it takes
    cases = itertools.product(REQUESTS, STATUSES, BODIES, EXTRA_HEADERS, LENGTHS)
    assert taken == sum(
        1 for request, status, body, extra, length in cases
        if request in ("keep-alive", "body unread", "body read", "chunked unread")
        and status not in (204, 304) and length == "right" and extra in ([], [(b"x-a", b"1"), (b"x-b", b"")])
    )  # fmt: skip


def test_the_hello_response_takes_it() -> None:
    conn = _engine("keep-alive")
    fields = [(b"content-type", b"text/plain"), (b"content-length", b"13")]
    pieces = conn.send_whole(200, b"OK", fields, [b"Hello, world!"], 13)
    assert pieces is not None
    assert b"".join(pieces) == b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 13\r\n\r\nHello, world!"
    assert type(conn.next_event()) is h11.EndOfMessage
    conn.start_next_cycle()
    assert conn.our_state is h11.IDLE and conn.their_state is h11.IDLE


def test_not_in_send_response_it_declines() -> None:
    conn = HttptoolsConnection()  # no request yet: our side is IDLE
    assert conn.send_whole(200, b"OK", [(b"content-length", b"0")], [], 0) is None
    assert conn.our_state is h11.IDLE
