"""What http1/_h11_fast.py shares between connections instead of keeping one per request:
the reader of a request without a body, and the common methods' and versions' bytes."""

from __future__ import annotations

import h11

from trio_rack.http1 import _h11_fast


def _parsed(data: bytes) -> tuple[_h11_fast.ServerConnection, h11.Request]:
    conn = _h11_fast.ServerConnection()
    conn.receive_data(data)
    event = conn.next_event()
    assert type(event) is h11.Request
    return conn, event


def test_a_bodyless_request_gets_the_shared_reader_and_it_never_changes() -> None:
    for head in (b"GET / HTTP/1.1\r\nhost: a\r\n\r\n", b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 0\r\n\r\n"):
        conn, _ = _parsed(head)
        assert conn._reader is _h11_fast._NO_BODY
        assert type(conn.next_event()) is h11.EndOfMessage
        assert _h11_fast._NO_BODY._remaining == 0 and _h11_fast._NO_BODY._length == 0
    conn, _ = _parsed(b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 3\r\n\r\nabc")
    assert conn._reader is not _h11_fast._NO_BODY
    event = conn.next_event()
    assert type(event) is h11.Data and event.data == b"abc"
    assert type(conn.next_event()) is h11.EndOfMessage
    assert _h11_fast._NO_BODY._remaining == 0


def test_the_next_request_on_a_connection_after_a_bodyless_one() -> None:
    conn, _ = _parsed(b"GET /a HTTP/1.1\r\nhost: a\r\n\r\nPOST /b HTTP/1.1\r\nhost: a\r\ncontent-length: 2\r\n\r\nhi")
    assert type(conn.next_event()) is h11.EndOfMessage
    conn.send(h11.Response(status_code=200, headers=[(b"content-length", b"0")]))
    conn.send(h11.EndOfMessage())
    conn.start_next_cycle()
    event = conn.next_event()
    assert type(event) is h11.Request and event.target == b"/b"
    event = conn.next_event()
    assert type(event) is h11.Data and event.data == b"hi"


def test_common_methods_and_versions_are_one_object_for_every_connection() -> None:
    a, _ = _parsed(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
    b, _ = _parsed(b"GET /x HTTP/1.1\r\nhost: b\r\n\r\n")
    assert a._request_method == b"GET" and a._request_method is b._request_method
    assert a.their_http_version == b"1.1" and a.their_http_version is b.their_http_version
    c, _ = _parsed(b"PATCH / HTTP/1.0\r\nhost: a\r\n\r\n")  # not shared: kept as parsed
    assert c._request_method == b"PATCH" and c.their_http_version == b"1.0"


def test_chunked_responses_share_one_stateless_writer() -> None:
    writers = []
    for _ in range(2):
        conn, _ = _parsed(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
        conn.next_event()
        head = conn.send(h11.Response(status_code=200, headers=[(b"transfer-encoding", b"chunked")]))
        assert head is not None and head.endswith(b"\r\n\r\n")
        writers.append(conn._writer)
        assert conn.send(h11.Data(data=b"abc")) == b"3\r\nabc\r\n"
        assert conn.send(h11.EndOfMessage()) == b"0\r\n\r\n"
    assert writers[0] is writers[1] is _h11_fast._CHUNKED
    assert vars(_h11_fast._CHUNKED) == {}  # nothing a response could leave behind for the next
