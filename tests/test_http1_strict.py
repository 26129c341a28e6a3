"""The HTTP/1 strictness rules as pure functions, on bytes (h11's own test style).

Each case names the RFC section or advisory the rule enforces.  The same vectors are driven
through the real connection in ``test_smuggling.py``; here each rule is pinned alone, so a
change to one shows which rule moved.
"""

from __future__ import annotations

import h11
import pytest

from conftest import HTTP1_PARSERS, HTTPTOOLS_AVAILABLE
from trio_rack import Limits
from trio_rack.http1.parsers import new_parser
from trio_rack.http1.strict import (
    check_request,
    has_head_end,
    leading_empty_lines,
    line_break_trick,
    request_head,
    request_line_too_long,
    target_problem,
)


def parse(head: bytes, parser: str = "h11") -> h11.Request:
    """The request ``parser`` ("h11", "httptools": see trio_rack.http1.parsers) makes of ``head``."""
    conn = new_parser(parser, 16 * 1024)
    conn.receive_data(head)
    event = conn.next_event()
    assert isinstance(event, h11.Request)
    return event


@pytest.mark.parametrize(
    ("data", "verdict"),
    [
        (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", None),
        (b"GET / HTTP/1.1\r\nHost: a\r", None),  # a CR at the end: its LF may come next
        (b"GET / HTTP/1.1\nHost: a\r\n\r\n", "bare LF"),  # RFC 9112 §2.2; Puma CVE-2021-41136
        (b"GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n", "bare CR"),  # RFC 9112 §2.2; llhttp CVE-2022-32214
        (b"GET / HTTP/1.1\r\nHost: a\r\n\rX\r\n\r\n", "bare CR"),  # the blank line's CR alone
        (b"GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n", "folding"),  # RFC 9112 §5.2 obs-fold; waitress CVE-2019-16785
        (b"GET / HTTP/1.1\r\nHost: a\r\n\r\nbody\nwith LF", None),  # only the head is checked
    ],
)
def test_line_break_trick(data: bytes, verdict: str | None) -> None:
    found = line_break_trick(data)
    if verdict is None:
        assert found is None
    else:
        assert found is not None and verdict in found


@pytest.mark.parametrize(
    ("method", "target", "verdict"),
    [
        (b"GET", b"/a?b", None),
        (b"GET", b"/a#frag", "fragment"),  # RFC 9112 §3.2: no fragment in a request target
        (b"OPTIONS", b"*", None),  # §3.2.4 asterisk-form
        (b"GET", b"*", "asterisk-form"),
        (b"CONNECT", b"example.org:443", None),  # §3.2.3 authority-form
        (b"CONNECT", b"example.org", "CONNECT needs host:port"),
        (b"GET", b"http://example.org/x", None),  # §3.2.2 absolute-form
        (b"GET", b"HTTPS://example.org", None),  # the scheme is case-insensitive (RFC 3986 §3.1)
        (b"GET", b"http://user@example.org/", "invalid authority"),  # RFC 9110 §4.2.4 userinfo
        (b"GET", b"http:///x", "invalid authority"),  # empty authority
        (b"GET", b"ftp://example.org/", "neither"),
        (b"GET", b"example.org:80", "neither"),  # authority-form only for CONNECT
    ],
)
def test_target_forms(method: bytes, target: bytes, verdict: str | None) -> None:
    found = target_problem(method, target)
    if verdict is None:
        assert found is None
    else:
        assert found is not None and verdict in found


@pytest.mark.parametrize(
    ("data", "allowed", "skip"),
    [
        (b"GET / HTTP/1.1\r\n", 8, 0),
        (b"\r\nGET / HTTP/1.1\r\n", 8, 2),  # RFC 9112 §2.2: SHOULD ignore at least one
        (b"\r\n\r\n\r\nGET / HTTP/1.1\r\n", 8, 6),
        (b"\r\n", 8, 2),  # all that arrived so far
        (b"\r\n\r", 8, 2),  # a CR whose LF is still on its way stays
        (b"\r", 8, 0),
        (b"\nGET / HTTP/1.1\r\n", 8, 0),  # a bare LF is not an empty line: refused as before
        (b"\r\r\nGET / HTTP/1.1\r\n", 8, 0),  # nor a bare CR
        (b"\r\n \r\nGET / HTTP/1.1\r\n", 8, 2),  # whitespace is not empty: its line is h11's to refuse
        (b"\r\n" * 12 + b"GET", 8, 16),  # bounded: the rest is a 400
        (b"\r\n\r\nGET", 1, 2),  # what is left of the per-request allowance
        (b"\r\nGET", 0, 0),
    ],
)
def test_leading_empty_lines(data: bytes, allowed: int, skip: int) -> None:
    assert leading_empty_lines(data, allowed) == skip


def test_head_end_and_request_line_length() -> None:
    assert has_head_end(b"GET / HTTP/1.1\r\n\r\n", 100)
    assert not has_head_end(b"GET / HTTP/1.1\r\nX: " + b"a" * 200 + b"\r\n\r\n", 100)  # 431 territory
    assert has_head_end(b"GET / HTTP/1.1\n\n", 100)  # h11's bare-LF end counts (then refused as bare LF)
    assert request_line_too_long(b"GET /" + b"a" * 100 + b" HTTP/1.1\r\n", 50)  # 414
    assert not request_line_too_long(b"GET / HTTP/1.1\r\n" + b"X: " + b"a" * 100, 50)
    assert request_line_too_long(b"GET /" + b"a" * 100, 50)  # still arriving, already too long


LIMITS = Limits(max_request_line=64, max_header_count=4, max_body_size=10)


@pytest.mark.parametrize(
    ("head", "status", "verdict"),
    [
        (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", None, None),
        (b"GET /" + b"a" * 80 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 414, "target too long"),
        (b"GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n\r\n", 431, "too many"),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x01b\r\n\r\n", 400, "control character"),  # RFC 9110 §5.5
        (b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400, "invalid Host"),  # RFC 9112 §3.2
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            400,
            "both Transfer-Encoding and Content-Length",  # RFC 9112 §6.1; the classic CL.TE smuggle
        ),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\n", 413, "too large"),
        (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n".replace(b"1.1", b"1.2"), 505, "version"),  # RFC 9110 §15.6.6
    ],
)
@pytest.mark.parametrize("parser", HTTP1_PARSERS)
def test_check_request(head: bytes, status: int | None, verdict: str | None, parser: str) -> None:
    """The same verdicts on the requests of either parser (the check runs on both in the driver)."""
    if parser == "httptools" and not HTTPTOOLS_AVAILABLE:
        pytest.skip("httptools is not installed (the test extra installs it)")
    found = check_request(parse(head, parser), LIMITS)
    if status is None:
        assert found is None
    else:
        assert found is not None
        assert found[0] == status and verdict is not None and verdict in found[1]


def test_repeated_host_is_refused_even_past_h11() -> None:
    """RFC 9112 §3.2: more than one Host is a 400.  h11 0.16 refuses it while parsing; the rule
    stands on its own in case a parser lets it through (the check sees an event built without
    h11's parser)."""
    request = h11.Request(method="GET", target="/", headers=[("Host", "a")])
    request.headers._full_items.append((b"Host", b"host", b"b"))  # what a laxer parser would deliver
    found = check_request(request, LIMITS)
    assert found == (400, "more than one Host header")


def test_request_head_splits_origin_and_absolute_forms() -> None:
    head = request_head(parse(b"GET /p%20q?x=1&y HTTP/1.1\r\nHost: a\r\n\r\n"))
    assert (head.method, head.path, head.query, head.http_version, head.authority) == (
        b"GET", b"/p%20q", b"x=1&y", "1.1", None,
    )  # fmt: skip
    assert list(head.headers) == [(b"host", b"a")]
    absolute = request_head(parse(b"GET HTTP://example.org:8080?q HTTP/1.1\r\nHost: other\r\n\r\n"))
    assert (absolute.authority, absolute.path, absolute.query) == (b"example.org:8080", b"/", b"q")
    connect = request_head(parse(b"CONNECT example.org:443 HTTP/1.1\r\nHost: example.org:443\r\n\r\n"))
    assert (connect.path, connect.authority) == (b"example.org:443", None)
    star = request_head(parse(b"OPTIONS * HTTP/1.0\r\n\r\n"))
    assert (star.path, star.http_version) == (b"*", "1.0")
