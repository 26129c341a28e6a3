"""The httptools engine builds h11's ``Request`` itself (``httptools_engine._request``): the
same event, the same errors and messages as ``h11.Request(..., _parsed=True)``, in h11's order.

``tests/test_parser_differential.py`` compares the whole engine with h11 on thousands of
inputs; these pin the constructor alone, on the shapes whose verdict it reproduces (framing
headers, Host count) and on the fallback to h11's constructor when the request line does not
begin with the parsed method and target.
"""

from __future__ import annotations

import h11
import pytest
from h11._util import LocalProtocolError

from trio_rack.http1.httptools_engine import AVAILABLE, _request

pytestmark = pytest.mark.skipif(not AVAILABLE, reason="httptools is not installed (the test extra installs it)")

CASES = [
    (b"GET", b"/", [(b"Host", b"a")], b"1.1"),
    (b"POST", b"/up?x=1", [(b"Host", b"a"), (b"Content-Length", b"5"), (b"X-A", b"b")], b"1.1"),
    (b"GET", b"/", [], b"1.0"),
    (b"GET", b"/", [(b"host", b"a"), (b"Transfer-Encoding", b"Chunked")], b"1.1"),
    # h11's refusals, each with its message (and its 501 hint for Transfer-Encoding)
    (b"GET", b"/", [], b"1.1"),
    (b"GET", b"/", [(b"Host", b"a"), (b"HOST", b"b")], b"1.1"),
    (b"GET", b"/", [(b"Host", b"a"), (b"Content-Length", b"5"), (b"Content-Length", b"6")], b"1.1"),
    (b"GET", b"/", [(b"Host", b"a"), (b"Content-Length", b"x")], b"1.1"),
    (b"GET", b"/", [(b"Host", b"a"), (b"Transfer-Encoding", b"gzip")], b"1.1"),
    (b"GET", b"/", [(b"Host", b"a"), (b"Transfer-Encoding", b"chunked")] * 2, b"1.1"),
    (b"GET", b"/", [(b"Content-Length", b"x")], b"1.1"),  # the framing error comes before the Host one
]


def _verdict(make: object, *args: object) -> object:
    try:
        return make(*args)  # type: ignore[operator]
    except LocalProtocolError as exc:
        return ("refused", str(exc), exc.error_status_hint)


def _h11(method: bytes, target: bytes, fields: list[tuple[bytes, bytes]], version: bytes) -> h11.Request:
    return h11.Request(method=method, target=target, headers=fields, http_version=version, _parsed=True)


@pytest.mark.parametrize(("method", "target", "fields", "version"), CASES)
def test_the_same_event_or_the_same_refusal_as_h11(
    method: bytes, target: bytes, fields: list[tuple[bytes, bytes]], version: bytes
) -> None:
    head = b"%s %s HTTP/%s\r\n" % (method, target, version)
    ours = _verdict(_request, method, target, list(fields), version, bytearray(head))
    theirs = _verdict(_h11, method, target, list(fields), version)
    assert ours == theirs
    if isinstance(theirs, h11.Request):
        assert type(ours) is h11.Request
        assert ours.headers._full_items == theirs.headers._full_items  # type: ignore[attr-defined]


def test_a_line_not_beginning_with_the_parsed_method_and_target_gets_h11s_own_checks() -> None:
    # Not a shape llhttp produces from a line h11's grammar passed; if it ever were, h11's
    # constructor (which re-matches method and target) decides.
    bad_target = b"/\x7f"
    with pytest.raises(LocalProtocolError, match="Illegal target characters"):
        _request(b"GET", bad_target, [(b"Host", b"a")], b"1.1", bytearray(b"GET / HTTP/1.1\r\n"))
    event = _request(b"GET", b"/b", [(b"Host", b"a")], b"1.1", bytearray(b"GET /a HTTP/1.1\r\n"))
    assert event == _h11(b"GET", b"/b", [(b"Host", b"a")], b"1.1")
