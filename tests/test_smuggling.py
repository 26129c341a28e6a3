"""Request smuggling and malformed requests, over the real connection loop on memory streams.

Every vector here is a request a front-end proxy and a back-end server could frame differently
(request smuggling, "desync"), or simply a malformed request.  For each rejected vector the
server must answer with the right status (400; 414 overlong target; 431 oversized head or too
many fields; 501 unknown transfer coding; 505 unsupported version), send exactly ONE response,
say ``connection: close``, close the connection, never call the app for a broken head, and log
at INFO — never a traceback.  Vectors that RFC 9112 lets a server accept are in the
``ACCEPTED`` table, with the reason, so that accepting them is a documented decision rather
than an accident.

Sources, cited in each parameter's id (``pytest -v`` shows them):

* RFC 9112 (HTTP/1.1): §2.2 (bare CR, bare LF), §3 (request line), §3.2 (Host), §3.2.2
  (absolute-form), §5.1 (no whitespace before the colon), §5.2 (obs-fold), §6.1 (CL + TE,
  unknown codings), §6.3 (message length), §7.1 (chunked coding).  RFC 9110 §5.5 (field
  values), §8.6 (Content-Length), §9.3.6 (CONNECT), §10.1.1 (Expect).
* Puma: CVE-2020-11076 (invalid Transfer-Encoding), CVE-2021-41136 (LF in header values),
  CVE-2022-24790 (lenient TE/CL/chunk sizes), CVE-2023-40175 (chunked trailers, empty
  Content-Length), CVE-2024-21647 (unbounded chunk extensions).
* gunicorn: CVE-2024-1135 (conflicting Transfer-Encoding headers), CVE-2024-6827 (invalid TE
  falls back to Content-Length).
* waitress: CVE-2019-16785 (LF vs CRLF), CVE-2019-16786 (``gzip, chunked``), CVE-2019-16789
  (whitespace characters in TE), CVE-2019-16792 (two Content-Length headers), CVE-2022-24761
  (``int()`` parsing of sizes, unvalidated chunk extensions).
* h11: CVE-2025-43859 (chunk data not followed by CRLF accepted).
* Node's llhttp: CVE-2021-22959 (space before the colon), CVE-2022-32214 (CRLF not enforced),
  CVE-2022-32215 (multi-line Transfer-Encoding); HAProxy CVE-2023-40225 (empty
  Content-Length); Falcon's protocol-http1 CVE-2023-38697 (``+``/``0x`` sizes, LF in chunk
  extensions).
* hypercorn issues #277 (CONNECT misuse) and #278 (method case); the h11-based peers that
  answer absolute-form targets with 404 (trio-rack issue 3).

Every vector here was once a gap of ours or h11's; each is closed now (see docs/limits.md),
h11's lenient chunk extensions by :mod:`trio_rack._h11_strict`.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import pytest
import trio

from e2e_support import parse_responses
from trio_rack import Limits
from trio_rack.app.response import AppError
from trio_rack.testing import ServerState, memory_connection

#: Every test here runs on both HTTP/1 parsers (h11 and httptools): see conftest.py.
pytestmark = pytest.mark.http1_parsers

HOST = b"Host: a\r\n"


def req(head: bytes, body: bytes = b"", *, method: bytes = b"POST", target: bytes = b"/") -> bytes:
    """A request line + Host + ``head`` (CRLF-terminated header lines) + blank line + body."""
    return method + b" " + target + b" HTTP/1.1\r\n" + HOST + head + b"\r\n" + body


CHUNKED = b"Transfer-Encoding: chunked\r\n"


def chunked(body: bytes) -> bytes:
    return req(CHUNKED, body)


# --------------------------------------------------------------------------------- helpers


class Seen:
    """The app of these tests: reads the whole body and answers with what it saw."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    async def __call__(self, env: dict[str, Any]) -> Any:
        body = await env["rack.input"].read_all()
        self.calls.append({"path": env["PATH_INFO"], "body": body, "host": env.get("HTTP_HOST")})
        return 200, {"content-type": "text/plain"}, [b"saw:" + env["PATH_INFO"].encode() + b":" + body]


def statuses(data: bytes) -> list[int]:
    return [r.status for r in parse_responses(data)]


async def exchange(
    raw: bytes | list[bytes],
    *,
    app: Any = None,
    limits: Limits | None = None,
    state: ServerState | None = None,
) -> tuple[bytes, bool]:
    """Send ``raw`` (or its pieces, one send each), read until the server closes.

    Returns (everything received, whether the server closed within 100 virtual seconds).
    """
    app = app or Seen()
    async with memory_connection(app, limits=limits, state=state) as client:
        for piece in [raw] if isinstance(raw, bytes) else raw:
            try:
                await client.stream.send_all(piece)
            except trio.BrokenResourceError:
                break
        data = b""
        closed = False
        with trio.move_on_after(100):
            while chunk := await client.stream.receive_some(65536):
                data += chunk
            closed = True
    return data, closed


def assert_rejected(data: bytes, closed: bool, status: int) -> bytes:
    """Exactly one response, with ``status`` and ``connection: close``, then the close."""
    responses = parse_responses(data)
    assert [r.status for r in responses] == [status], data[:300]
    head, body = responses[0].head, responses[0].body
    assert re.search(rb"(?im)^connection: close\r?$", head), head
    assert closed, "the server must close the connection after rejecting a request"
    return body


def assert_no_error_logs(caplog: pytest.LogCaptureFixture) -> None:
    """Rejections are logged at INFO; anything at ERROR (a traceback) is a failure."""
    errors = [r for r in caplog.records if r.name.startswith("trio_rack") and r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]


# ------------------------------------------------------------------- rejected before the app

STRICT_HEAD = "server gap: see /tmp/hardening-patches/strict-request-head.diff"

HEAD_VECTORS = [
    # --- Content-Length and Transfer-Encoding together (RFC 9112 §6.1) ----------------------
    pytest.param(req(b"Content-Length: 3\r\n" + CHUNKED, b"0\r\n\r\n"), 400, id="rfc9112-6.1-cl-then-te"),
    pytest.param(req(CHUNKED + b"Content-Length: 3\r\n", b"0\r\n\r\n"), 400, id="rfc9112-6.1-te-then-cl"),
    pytest.param(req(b"Content-Length: 5\r\nTransfer-Encoding: xchunked\r\n", b"hello"), 501,
                 id="gunicorn-CVE-2024-6827-unknown-te-does-not-fall-back-to-cl"),
    pytest.param(req(b"Content-Length: 5\r\nTransfer-Encoding: \x0bchunked\r\n", b"hello"), 400,
                 id="waitress-CVE-2019-16789-vertical-tab-before-chunked-with-cl"),
    # --- Content-Length values (RFC 9110 §8.6, RFC 9112 §6.3) ------------------------------
    pytest.param(req(b"Content-Length: 3\r\nContent-Length: 4\r\n", b"abcd"), 400,
                 id="rfc9112-6.3-differing-duplicate-cl"),
    pytest.param(req(b"Content-Length: 3, 4\r\n", b"abcd"), 400, id="rfc9110-8.6-differing-cl-list"),
    pytest.param(req(b"Content-Length: +3\r\n", b"abc"), 400, id="waitress-CVE-2022-24761-cl-plus-sign"),
    pytest.param(req(b"Content-Length: -3\r\n", b"abc"), 400, id="rfc9110-8.6-cl-negative"),
    pytest.param(req(b"Content-Length: 0x3\r\n", b"abc"), 400, id="protocol-http1-CVE-2023-38697-cl-hex-prefix"),
    pytest.param(req(b"Content-Length: 3 3\r\n", b"abc"), 400, id="puma-CVE-2022-24790-cl-inner-space"),
    pytest.param(req(b"Content-Length: 1_0\r\n", b"abc"), 400, id="waitress-CVE-2022-24761-cl-python-int-underscore"),
    pytest.param(req("Content-Length: \u0663\r\n".encode(), b"abc"), 400,
                 id="waitress-CVE-2022-24761-cl-unicode-digit"),
    pytest.param(req(b"Content-Length: 1e3\r\n", b"abc"), 400, id="rfc9110-8.6-cl-exponent"),
    pytest.param(req(b"Content-Length: 99999999999999999999999999\r\n", b"abc"), 400, id="rfc9110-8.6-cl-overflow"),
    pytest.param(req(b"Content-Length:\r\n"), 400, id="puma-CVE-2023-40175-empty-cl"),
    pytest.param(req(b"Content-Length: \r\n", b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n"), 400,
                 id="haproxy-CVE-2023-40225-blank-cl-with-smuggled-request"),
    # --- Transfer-Encoding values (RFC 9112 §6.1, §7) ---------------------------------------
    pytest.param(chunked(b"0\r\n\r\n").replace(b"chunked", b"chunked, identity"), 501,
                 id="rfc9112-6.1-chunked-not-last"),
    pytest.param(chunked(b"0\r\n\r\n").replace(b"chunked", b"identity, chunked"), 501,
                 id="puma-CVE-2020-11076-identity-chunked"),
    pytest.param(chunked(b"0\r\n\r\n").replace(b"chunked", b"identity"), 501, id="rfc9112-6.1-identity-alone"),
    pytest.param(chunked(b"0\r\n\r\n").replace(b"chunked", b"gzip, chunked"), 501,
                 id="waitress-CVE-2019-16786-gzip-chunked"),
    pytest.param(chunked(b"0\r\n\r\n").replace(b"chunked", b"xchunked"), 501, id="portswigger-te-xchunked"),
    pytest.param(chunked(b"0\r\n\r\n").replace(b"chunked", b"chunked;q=1"), 501, id="rfc9112-7-chunked-with-parameter"),
    pytest.param(chunked(b"0\r\n\r\n").replace(b"chunked", b"chunked,"), 501, id="tinyproxy-te-trailing-comma"),
    pytest.param(chunked(b"0\r\n\r\n").replace(b"chunked", b"chunked\x0b"), 400,
                 id="waitress-CVE-2019-16789-te-trailing-vertical-tab"),
    pytest.param(chunked(b"0\r\n\r\n").replace(b"chunked", b"chunked\x0c"), 400,
                 id="waitress-CVE-2019-16789-te-form-feed"),
    pytest.param(req(CHUNKED + CHUNKED, b"0\r\n\r\n"), 501, id="gunicorn-CVE-2024-1135-duplicate-te-headers"),
    pytest.param(req(CHUNKED + b"Transfer-Encoding: identity\r\n", b"0\r\n\r\n"), 501,
                 id="gunicorn-CVE-2024-1135-conflicting-te-headers"),
    # --- header syntax: whitespace, control bytes (RFC 9112 §5.1, RFC 9110 §5.5) ------------
    pytest.param(b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400, id="rfc9112-5.1-space-before-colon-host"),
    pytest.param(req(b"Transfer-Encoding : chunked\r\n", b"0\r\n\r\n"), 400,
                 id="llhttp-CVE-2021-22959-space-before-colon-te"),
    pytest.param(req(b"Content-Length\t: 3\r\n", b"abc"), 400, id="rfc9112-5.1-tab-before-colon-cl"),
    pytest.param(b"GET / HTTP/1.1\r\n Host: a\r\n\r\n", 400, id="rfc9112-5.2-fold-at-start-of-headers"),
    pytest.param(req(b"X-\x00: b\r\n", method=b"GET"), 400, id="rfc9110-5.5-nul-in-name"),
    pytest.param(req(b"X-A: b\x00c\r\n", method=b"GET"), 400, id="rfc9110-5.5-nul-in-value"),
    pytest.param(req(b"X\x7fA: b\r\n", method=b"GET"), 400, id="rfc9110-5.1-del-in-name"),
    pytest.param(req(b"X(A): b\r\n", method=b"GET"), 400, id="rfc9110-5.1-separator-in-name"),
    pytest.param(req(b": b\r\n", method=b"GET"), 400, id="rfc9110-5.1-empty-name"),
    pytest.param(req(b"nocolon\r\n", method=b"GET"), 400, id="rfc9112-5-line-without-colon"),
    # --- bare CR (RFC 9112 §2.2: MUST reject or replace) ------------------------------------
    pytest.param(req(b"X-A: b\rX-B: c\r\n", method=b"GET"), 400, id="rfc9112-2.2-bare-cr-in-header-line"),
    pytest.param(b"GET / HTTP/1.1\rHost: a\r\n\r\n", 400, id="rfc9112-2.2-bare-cr-after-request-line"),
    # --- request line (RFC 9112 §3) ---------------------------------------------------------
    pytest.param(b"GET /\x00 HTTP/1.1\r\nHost: a\r\n\r\n", 400, id="rfc9112-3-nul-in-target"),
    pytest.param(b"GET /a\x01b HTTP/1.1\r\nHost: a\r\n\r\n", 400, id="rfc9112-3-ctl-in-target"),
    pytest.param(b"GET /a\x7fb HTTP/1.1\r\nHost: a\r\n\r\n", 400, id="rfc9112-3-del-in-target"),
    pytest.param(b"GET /a\xffb HTTP/1.1\r\nHost: a\r\n\r\n", 400, id="rfc9112-3-non-ascii-in-target"),
    pytest.param(b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n", 400, id="rfc9112-3-space-in-target"),
    pytest.param(b"GET /a\tb HTTP/1.1\r\nHost: a\r\n\r\n", 400, id="rfc9112-3-tab-in-target"),
    pytest.param(b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n", 400, id="rfc9112-3-double-space"),
    pytest.param(b"GET / HTTP/1.1 \r\nHost: a\r\n\r\n", 400, id="rfc9112-3-trailing-space"),
    pytest.param(b" GET / HTTP/1.1\r\nHost: a\r\n\r\n", 400, id="rfc9112-3-leading-space"),
    pytest.param(b"G\x00T / HTTP/1.1\r\nHost: a\r\n\r\n", 400, id="rfc9112-3-nul-in-method"),
    pytest.param(b"G(T / HTTP/1.1\r\nHost: a\r\n\r\n", 400, id="rfc9112-3-separator-in-method"),
    pytest.param(b"GET /\r\n\r\n", 400, id="rfc9112-3-http09-request-line"),
    pytest.param(b"GARBAGE\r\n\r\n", 400, id="rfc9112-3-garbage"),
    pytest.param(b"GET / http/1.1\r\nHost: a\r\n\r\n", 400, id="rfc9112-2.3-lowercase-http-name"),
    pytest.param(b"GET / HTTP/1.10\r\nHost: a\r\n\r\n", 400, id="rfc9112-2.3-two-digit-minor"),
    pytest.param(b"GET / HTTP/3\r\nHost: a\r\n\r\n", 400, id="rfc9112-2.3-no-minor-version"),
    # --- versions (RFC 9110 §15.6.6) --------------------------------------------------------
    pytest.param(b"GET / HTTP/1.2\r\nHost: a\r\n\r\n", 505, id="rfc9110-15.6.6-http-1.2"),
    pytest.param(b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505, id="rfc9110-15.6.6-http-2.0"),
    pytest.param(b"GET / HTTP/0.9\r\nHost: a\r\n\r\n", 505, id="rfc9110-15.6.6-http-0.9"),
    pytest.param(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505, id="rfc9113-3.4-h2-preface-on-http1"),
    # --- Host (RFC 9112 §3.2: MUST 400 for missing, repeated or invalid) --------------------
    pytest.param(b"GET / HTTP/1.1\r\n\r\n", 400, id="rfc9112-3.2-missing-host"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", 400, id="rfc9112-3.2-repeated-identical-host"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, id="rfc9112-3.2-repeated-host"),
    pytest.param(b"GET http://x/ HTTP/1.1\r\n\r\n", 400, id="rfc9112-3.2-absolute-form-still-needs-host"),
    # --- limits -----------------------------------------------------------------------------
    pytest.param(b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 414, id="rfc9112-3-target-over-8k-414"),
    pytest.param(req(b"".join(b"X-%d: 1\r\n" % i for i in range(101)), method=b"GET"), 431,
                 id="rfc6585-5-too-many-fields"),
    pytest.param(req(b"X-Big: " + b"a" * 40000 + b"\r\n", method=b"GET"), 431, id="rfc6585-5-head-over-32k"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"b" * 70000, 431, id="rfc6585-5-unterminated-head-over-32k"),
    # --- gaps: the server accepts these today --------------------------------------------
    pytest.param(req(b"X: x\nContent-Length: 5\r\n", b"hello", method=b"GET"), 400,
                 id="waitress-CVE-2019-16785-bare-lf-hides-cl"),
    pytest.param(req(b"X-A: b\nX-B: c\r\n", method=b"GET"), 400, id="puma-CVE-2021-41136-lf-in-header-value"),
    pytest.param(b"GET / HTTP/1.1\nHost: a\n\n", 400, id="llhttp-CVE-2022-32214-lf-only-head"),
    pytest.param(req(b"Transfer-Encoding:\r\n chunked\r\n", b"0\r\n\r\n"), 400,
                 id="llhttp-CVE-2022-32215-te-continued-on-folded-line"),
    pytest.param(req(b"Content-Length:\r\n 5\r\n", b"hello"), 400, id="rfc9112-5.2-cl-continued-on-folded-line"),
    pytest.param(req(b"X-A: b\r\n c\r\n", method=b"GET"), 400, id="rfc9112-5.2-obs-fold-space"),
    pytest.param(req(b"X-A: b\r\n\tc\r\n", method=b"GET"), 400, id="rfc9112-5.2-obs-fold-tab"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\n\r\r\n", 400, id="rfc9112-2.2-bare-cr-in-blank-line",
                 ),
    pytest.param(req(b"X-A: b\x01c\r\n", method=b"GET"), 400, id="rfc9110-5.5-ctl-in-value"),
    pytest.param(req(b"X-A: b\x1bc\r\n", method=b"GET"), 400, id="rfc9110-5.5-escape-in-value"),
    pytest.param(req(b"X-A: b\x7fc\r\n", method=b"GET"), 400, id="rfc9110-5.5-del-in-value"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400, id="rfc9112-3.2-invalid-host-space"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", 400, id="rfc9112-3.2-invalid-host-slash"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: evil@a\r\n\r\n", 400, id="rfc9112-3.2-invalid-host-userinfo"),
    pytest.param(b"GET x HTTP/1.1\r\nHost: a\r\n\r\n", 400, id="rfc9112-3.2-target-neither-origin-nor-absolute"),
    pytest.param(b"GET * HTTP/1.1\r\nHost: a\r\n\r\n", 400, id="rfc9112-3.2.4-asterisk-form-only-for-options"),
    pytest.param(b"GET a:80 HTTP/1.1\r\nHost: a\r\n\r\n", 400, id="rfc9112-3.2.3-authority-form-only-for-connect"),
    pytest.param(b"GET ftp://a/x HTTP/1.1\r\nHost: a\r\n\r\n", 400, id="rfc9112-3.2.2-absolute-form-not-http"),
    pytest.param(b"GET /x#frag HTTP/1.1\r\nHost: a\r\n\r\n", 400, id="rfc9112-3.2.1-fragment-in-target"),
    pytest.param(b"GET http://evil@a/x HTTP/1.1\r\nHost: a\r\n\r\n", 400, id="rfc9110-4.2.4-userinfo-in-absolute-form"),
    pytest.param(b"GET /" + b"a" * 40000 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 414,
                 id="rfc9112-3-target-over-32k-in-one-read-414",
                 ),
]  # fmt: skip


@pytest.mark.parametrize("raw, status", HEAD_VECTORS)
async def test_malformed_head_is_rejected_once_and_closed(
    raw: bytes, status: int, caplog: pytest.LogCaptureFixture, autojump_clock: Any
) -> None:
    app = Seen()
    data, closed = await exchange(raw, app=app)
    assert_rejected(data, closed, status)
    assert app.calls == [], "the app must never see a request the server rejected"
    assert_no_error_logs(caplog)


def _short_and_passing(param: Any) -> bool:
    raw: bytes = param.values[0]
    return not param.marks and len(raw) < 2000


BYTE_BY_BYTE = [p for p in HEAD_VECTORS if _short_and_passing(p)][::4]


@pytest.mark.parametrize("raw, status", BYTE_BY_BYTE)
async def test_malformed_head_sent_byte_by_byte_is_rejected_the_same(
    raw: bytes, status: int, autojump_clock: Any
) -> None:
    """Splitting at every byte changes which code path sees the problem (h11's incremental
    parser, our size checks on the partial buffer); the answer must not change."""
    data, closed = await exchange([raw[i : i + 1] for i in range(len(raw))])
    assert_rejected(data, closed, status)


# ------------------------------------------------------------- chunked bodies (RFC 9112 §7.1)

STRICT_CHUNK_EXT = (
    "server gap (h11 accepts any byte but LF in a chunk extension): see /tmp/hardening-patches/strict-chunk-ext.diff"
)

BODY_VECTORS = [
    pytest.param(b"fffffffffffffffffffff\r\nx\r\n0\r\n\r\n", 400, id="puma-CVE-2022-24790-chunk-size-overflow"),
    pytest.param(b"1\r\nx\r\n" + b"0" * 41 + b"\r\n\r\n", 400, id="rfc9112-7.1-last-chunk-too-many-digits"),
    pytest.param(b"-1\r\nx\r\n0\r\n\r\n", 400, id="rfc9112-7.1-chunk-size-negative"),
    pytest.param(b"+1\r\nx\r\n0\r\n\r\n", 400, id="waitress-CVE-2022-24761-chunk-size-plus"),
    pytest.param(b"0x1\r\nx\r\n0\r\n\r\n", 400, id="protocol-http1-CVE-2023-38697-chunk-size-0x"),
    pytest.param(b" 1\r\nx\r\n0\r\n\r\n", 400, id="rfc9112-7.1-chunk-size-leading-space"),
    pytest.param(b"1_0\r\n" + b"x" * 16 + b"\r\n0\r\n\r\n", 400, id="waitress-CVE-2022-24761-chunk-size-underscore"),
    pytest.param(b"\r\n1\r\nx\r\n0\r\n\r\n", 400, id="rfc9112-7.1-empty-chunk-size"),
    pytest.param(b"1\r\nxXX0\r\n\r\n", 400, id="h11-CVE-2025-43859-chunk-data-not-followed-by-crlf"),
    pytest.param(b"1\r\nx\n0\r\n\r\n", 400, id="h11-CVE-2025-43859-chunk-data-followed-by-bare-lf"),
    pytest.param(b"2\r\nx\r\n0\r\n\r\n", 400, id="rfc9112-7.1-chunk-shorter-than-its-size"),
    pytest.param(b"1\r\nxy\r\n0\r\n\r\n", 400, id="rfc9112-7.1-chunk-longer-than-its-size"),
    pytest.param(b"1\nx\r\n0\r\n\r\n", 400, id="llhttp-CVE-2022-32214-chunk-size-bare-lf"),
    pytest.param(b"1\rx\r\n0\r\n\r\n", 400, id="rfc9112-2.2-chunk-size-bare-cr"),
    pytest.param(b"1;a\nb\r\nx\r\n0\r\n\r\n", 400, id="protocol-http1-CVE-2023-38697-lf-in-chunk-ext"),
    pytest.param(b'1;a="b\r\nc"\r\nx\r\n0\r\n\r\n', 400, id="rfc9112-7.1.1-crlf-in-quoted-chunk-ext"),
    pytest.param(b"1;" + b"a" * 100_000 + b"\r\nx\r\n0\r\n\r\n", 431, id="puma-CVE-2024-21647-100k-chunk-ext"),
    pytest.param(b"1\r\nx\r\n0\r\nGET /next HTTP/1.1\r\nHost: a\r\n\r\n", 400,
                 id="puma-CVE-2023-40175-request-line-as-trailer"),
    pytest.param(b"1\r\nx\r\n0\r\nX y\r\n\r\n", 400, id="rfc9112-7.1.2-malformed-trailer"),
    pytest.param(b"1\r\nx\r\n0\r\r\n\r\n", 400, id="rfc9112-2.2-bare-cr-after-last-chunk"),
    # gaps: h11's chunk-ext pattern is ";.*" — any byte but LF
    pytest.param(b"1;a\x00b\r\nx\r\n0\r\n\r\n", 400, id="waitress-CVE-2022-24761-nul-in-chunk-ext"),
    pytest.param(b"1;a\rb\r\nx\r\n0\r\n\r\n", 400, id="waitress-CVE-2022-24761-bare-cr-in-chunk-ext"),
    pytest.param(b"1;a b\r\nx\r\n0\r\n\r\n", 400, id="rfc9112-7.1.1-chunk-ext-not-a-token"),
]  # fmt: skip


@pytest.mark.parametrize("body, status", BODY_VECTORS)
async def test_malformed_chunked_body_is_rejected_once_and_closed(
    body: bytes, status: int, caplog: pytest.LogCaptureFixture, autojump_clock: Any
) -> None:
    """The app reads ``rack.input``, gets ``BrokenResourceError``, lets it escape; the client
    gets one error response and a closed connection; the bytes after the bad chunk are never
    parsed as a request."""
    app = Seen()
    data, closed = await exchange(chunked(body), app=app)
    assert_rejected(data, closed, status)
    assert app.calls == []  # it raised inside read_all()
    assert_no_error_logs(caplog)


async def test_chunk_extensions_count_toward_max_body_size(autojump_clock: Any) -> None:
    """Puma CVE-2024-21647: chunk extensions cost bandwidth and CPU but carry no body bytes.
    h11 bounds one chunk line (by ``max_head_size`` once it spans reads), but a client can
    send chunk after chunk of 1 data byte and 30 KB of extension: ``max_body_size`` counts
    only the 1s, so the limit never trips.  Expected: 413 once the bytes read for the body
    exceed the limit (plus slack for framing)."""
    app = Seen()
    pieces = [req(CHUNKED)] + [b"1;" + b"e" * 30_000 + b"\r\nx\r\n" for _ in range(40)] + [b"0\r\n\r\n"]
    data, closed = await exchange(pieces, app=app, limits=Limits(max_body_size=100_000))
    assert_rejected(data, closed, 413)


STREAMING_BODY_ERRORS = "server gap: see /tmp/hardening-patches/streaming-body-client-errors.diff"


@pytest.mark.parametrize("writes_first", [False, True], ids=["before-head", "after-head"])
async def test_malformed_chunk_read_by_a_streaming_body_is_logged_as_the_clients_fault(
    writes_first: bool, caplog: pytest.LogCaptureFixture, autojump_clock: Any
) -> None:
    """A streaming body that reads the request body through its stream (an echo, an upload
    proxy) sees ``BrokenResourceError`` for a malformed chunk, exactly like a ``rack.input``
    reader.  Found by tests/test_fuzz.py: today the server answers 400 (before the head) or
    aborts (after it) — correctly — but logs "app failed" / "response aborted" at ERROR with a
    traceback, so any client can fill the error log with tracebacks."""

    async def app(env: dict[str, Any]) -> Any:
        async def body(stream: trio.abc.Stream) -> None:
            if writes_first:  # an echo: the head goes out with the first chunk
                await stream.send_all(b"echo:")
                while data := await stream.receive_some():
                    await stream.send_all(data)
            else:  # reads the whole upload before answering
                received = b""
                while data := await stream.receive_some():
                    received += data
                await stream.send_all(received)

        return 200, {}, body

    data, closed = await exchange(chunked(b"1;a=b\r\nx\r\nzz\r\n0\r\n\r\n"), app=app)
    assert closed
    if writes_first:
        assert data.startswith(b"HTTP/1.1 200 ") and not data.endswith(b"0\r\n\r\n")  # aborted visibly
    else:
        assert_rejected(data, closed, 400)
    assert_no_error_logs(caplog)


# --------------------------------------------------------------- accepted on purpose (RFC)

ACCEPTED = [
    pytest.param(req(b"Content-Length: 5\r\nContent-Length: 5\r\n", b"hello"), b"hello",
                 id="waitress-CVE-2019-16792-identical-duplicate-cl-is-one-length"),
    pytest.param(req(b"Content-Length: 5, 5\r\n", b"hello"), b"hello",
                 id="rfc9110-8.6-identical-cl-list-may-be-accepted"),
    pytest.param(req(b"Content-Length:  5 \r\n", b"hello"), b"hello", id="rfc9112-5-ows-around-cl-value"),
    pytest.param(req(b"Transfer-Encoding:  chunked \r\n", b"5\r\nhello\r\n0\r\n\r\n"), b"hello",
                 id="rfc9112-5-ows-around-te-value"),
    pytest.param(req(b"Transfer-Encoding: CHUNKED\r\n", b"5\r\nhello\r\n0\r\n\r\n"), b"hello",
                 id="rfc9112-7-coding-names-case-insensitive"),
    pytest.param(chunked(b"5;name=value;q=\"quoted\"\r\nhello\r\n0\r\n\r\n"), b"hello",
                 id="rfc9112-7.1.1-valid-chunk-ext-ignored"),
    pytest.param(chunked(b"005\r\nhello\r\n0000\r\n\r\n"), b"hello", id="rfc9112-7.1-leading-zeros-in-chunk-size"),
    pytest.param(chunked(b"5\r\nhello\r\n0\r\nX-Trailer: v\r\n\r\n"), b"hello", id="rfc9112-7.1.2-trailer-discarded"),
    pytest.param(chunked(b"5\r\nhello\r\n0\r\nContent-Length: 99\r\n\r\n"), b"hello",
                 id="rfc9110-6.5.1-cl-in-trailer-ignored"),
    pytest.param(chunked(b"5 \r\nhello\r\n0\r\n\r\n"), b"hello", id="h11-leniency-whitespace-after-chunk-size"),
    pytest.param(req(b"X-A: \x80\xff\r\n", method=b"GET"), b"", id="rfc9110-5.5-obs-text-in-value"),
]  # fmt: skip


@pytest.mark.parametrize("raw, body", ACCEPTED)
async def test_vectors_rfc9112_allows_are_served_with_one_framing(
    raw: bytes, body: bytes, caplog: pytest.LogCaptureFixture, autojump_clock: Any
) -> None:
    """Each is answered once; the body the app saw is exactly the intended one (so no byte of
    it can have been taken for a second request), and the connection stays usable."""
    app = Seen()
    follow_up = b"GET /next HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    data, closed = await exchange(raw + follow_up, app=app)
    assert statuses(data) == [200, 200]
    assert [c["body"] for c in app.calls] == [body, b""]
    assert app.calls[1]["path"] == "/next" and closed
    assert_no_error_logs(caplog)


async def test_http_1_0_with_transfer_encoding_is_closed_after_the_response(
    caplog: pytest.LogCaptureFixture, autojump_clock: Any
) -> None:
    """RFC 9112 §6.1: TE in an HTTP/1.0 request means faulty framing: close after processing,
    even if the client asked for keep-alive."""
    app = Seen()
    data, closed = await exchange(
        b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n"
        b"1\r\nx\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
        app=app,
    )
    assert statuses(data) == [200] and closed
    assert [c["path"] for c in app.calls] == ["/"]
    assert_no_error_logs(caplog)


async def test_lower_case_method_is_passed_to_the_app_verbatim(autojump_clock: Any) -> None:
    """hypercorn #278 asks servers to reject ``PoST``; RFC 9110 §9.1 says methods are
    case-sensitive tokens, so ``get`` is simply a method the app does not know (it answers
    405/501).  It must not be treated as GET by the server either (no HEAD-like stripping)."""
    seen: list[str] = []

    async def app(env: dict[str, Any]) -> Any:
        seen.append(env["REQUEST_METHOD"])
        return 405, {}, [b"no"]

    data, _ = await exchange([b"head / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"], app=app)
    assert seen == ["head"]
    assert parse_responses(data)[0].body == b"no"  # a body: "head" is not HEAD


# ---------------------------------------------------- absolute-form targets (RFC 9112 §3.2.2)


@pytest.mark.parametrize(
    "target, path, query, host",
    [
        (b"http://example.org/x/y?z=1", "/x/y", "z=1", "example.org"),
        (b"http://example.org", "/", "", "example.org"),
        (b"https://example.org:8443/x", "/x", "", "example.org:8443"),
        (b"http://example.org?q", "/", "q", "example.org"),
        pytest.param(
            b"HTTP://EXAMPLE.ORG/x", "/x", "", "EXAMPLE.ORG",
            id="upper-case-scheme",
        ),
    ],
)  # fmt: skip
async def test_absolute_form_targets_are_answered_not_404(
    target: bytes, path: str, query: str, host: str, autojump_clock: Any
) -> None:
    """The h11-based peers answer ``GET http://host/path`` with 404 (trio-rack issue 3): the
    app must see the path, and the target's authority as the host (RFC 9112 §3.2.2)."""
    seen: list[dict[str, Any]] = []

    async def app(env: dict[str, Any]) -> Any:
        seen.append(env)
        return 200, {}, [b"ok"]

    data, closed = await exchange(b"GET " + target + b" HTTP/1.1\r\nHost: other\r\nConnection: close\r\n\r\n", app=app)
    assert statuses(data) == [200] and closed
    (env,) = seen
    assert (env["PATH_INFO"], env["QUERY_STRING"], env["HTTP_HOST"]) == (path, query, host)


async def test_connect_answered_2xx_without_hijack_gets_one_response_and_no_traceback(
    caplog: pytest.LogCaptureFixture, autojump_clock: Any
) -> None:
    """hypercorn #277 / RFC 9110 §9.3.6: a 2xx to CONNECT means "tunnel established"; h11 then
    refuses any body.  A catch-all app answering CONNECT with ``200 [b"..."]`` currently gets a
    traceback logged at ERROR and the client gets NOTHING (the head was built, the body
    refused, the connection closed).  Any client can trigger it.  Expected: one response
    (a 500: the app broke the contract — a 2xx to CONNECT must hijack) and a one-line log."""

    async def app(env: dict[str, Any]) -> Any:
        return 200, {"content-type": "text/plain"}, [b"catch-all"]

    data, closed = await exchange(b"CONNECT example.org:443 HTTP/1.1\r\nHost: example.org:443\r\n\r\n", app=app)
    responses = parse_responses(data)
    assert len(responses) == 1 and responses[0].status >= 400 and closed
    # an app contract breach may be logged (one line), but without a traceback
    assert not [r for r in caplog.records if r.name.startswith("trio_rack") and r.exc_info]


async def test_connect_answered_with_an_error_is_one_response(autojump_clock: Any) -> None:
    async def app(env: dict[str, Any]) -> Any:
        return 405, {"allow": "GET"}, [b"no tunnels here"]

    data, _ = await exchange(
        b"CONNECT example.org:443 HTTP/1.1\r\nHost: example.org:443\r\nConnection: close\r\n\r\n", app=app
    )
    assert statuses(data) == [405]


# ------------------------------------------------- bytes after "Connection: close" (issue 3)

AFTER_CLOSE = [
    pytest.param(b"GET /second HTTP/1.1\r\nHost: a\r\n\r\n", id="second-request"),
    pytest.param(b"GARBAGE\r\n\r\n", id="garbage-request"),
    pytest.param(b"\x00\xff" * 1000, id="binary-junk"),
    pytest.param(b"x" * 300_000, id="300k-of-junk"),
    pytest.param(
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", id="smuggling-attempt"
    ),
]


@pytest.mark.parametrize("extra", AFTER_CLOSE)
@pytest.mark.parametrize("when", ["with-the-request", "while-the-app-runs", "after-the-response"])
async def test_bytes_after_connection_close_get_no_second_response(
    extra: bytes, when: str, caplog: pytest.LogCaptureFixture, autojump_clock: Any
) -> None:
    """The Trio-based peer dies — every later connection refused — when a client sends more
    bytes after a ``Connection: close`` request: its error response raced the app's response
    on one stream (``BusyResourceError``).  Here: one response, the connection closed, and the
    NEXT connection to the same server state is served normally."""
    release = trio.Event()
    calls: list[str] = []

    async def app(env: dict[str, Any]) -> Any:
        calls.append(env["PATH_INFO"])
        if env["PATH_INFO"] == "/slow":
            await release.wait()
        return 200, {}, [b"ok"]

    state = ServerState(app, Limits(), access_log=False)
    async with memory_connection(app, state=state) as client:
        head = b"GET /slow HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        data = b""
        if when == "with-the-request":
            await client.stream.send_all(head + extra)
            release.set()
        elif when == "while-the-app-runs":
            await client.stream.send_all(head)
            await trio.sleep(1)  # the app is waiting now
            await client.stream.send_all(extra)
            release.set()
        else:
            release.set()
            await client.stream.send_all(head)
            data = bytes(await client.stream.receive_some(65536))
            try:
                await client.stream.send_all(extra)
            except trio.BrokenResourceError:
                pass
        with trio.fail_after(30):
            while chunk := await client.stream.receive_some(65536):
                data += chunk
    assert statuses(data) == [200]
    assert calls == ["/slow"]
    # the same server state serves the next connection
    data, closed = await exchange(b"GET /next HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", state=state)
    assert statuses(data) == [200] and closed
    assert_no_error_logs(caplog)


async def test_http_1_0_request_followed_by_another_gets_one_response(autojump_clock: Any) -> None:
    app = Seen()
    data, closed = await exchange(b"GET / HTTP/1.0\r\n\r\nGET /second HTTP/1.1\r\nHost: a\r\n\r\n", app=app)
    assert statuses(data) == [200] and closed
    assert [c["path"] for c in app.calls] == ["/"]


async def test_body_of_a_closing_request_is_never_parsed_as_a_request(autojump_clock: Any) -> None:
    """The request smuggled in a body stays body: the app sees it as bytes."""
    app = Seen()
    smuggled = b"GET /admin HTTP/1.1\r\nHost: a\r\n\r\n"
    data, closed = await exchange(
        req(b"Content-Length: %d\r\nConnection: close\r\n" % len(smuggled), smuggled)
        + b"GET /after HTTP/1.1\r\nHost: a\r\n\r\n",
        app=app,
    )
    assert statuses(data) == [200] and closed
    assert app.calls == [{"path": "/", "body": smuggled, "host": "a"}]


# ------------------------------------------------------------ Expect (RFC 9110 §10.1.1)


async def test_expect_100_continue_from_http_1_0_is_ignored(autojump_clock: Any) -> None:
    """RFC 9110 §10.1.1: a server MUST ignore a 100-continue expectation in HTTP/1.0."""
    data, _ = await exchange(b"POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nab")
    assert statuses(data) == [200]


@pytest.mark.parametrize("expect", [b"100-continue", b"100-Continue"])
async def test_expect_100_continue_is_case_insensitive_and_answered_once(expect: bytes, autojump_clock: Any) -> None:
    data, _ = await exchange([req(b"Expect: " + expect + b"\r\nContent-Length: 2\r\nConnection: close\r\n"), b"ab"])
    assert statuses(data) == [100, 200]


async def test_unknown_expectation_is_ignored_not_417(autojump_clock: Any) -> None:
    """RFC 9110 §10.1.1 allows (MAY) 417 for an expectation other than 100-continue; we serve
    the request instead, like Puma and h11's peers: documented in docs/limits.md."""
    data, _ = await exchange(req(b"Expect: 200-ok\r\nContent-Length: 2\r\nConnection: close\r\n", b"ab"))
    assert statuses(data) == [200]


async def test_expect_100_continue_refused_then_body_sent_anyway_is_not_a_request(autojump_clock: Any) -> None:
    """The app refuses without reading: no 100, one final response, the connection closes —
    so the body the client sends anyway is never parsed as the next request."""

    async def app(env: dict[str, Any]) -> Any:
        return 413, {}, [b"too big"]

    raw = req(b"Expect: 100-continue\r\nContent-Length: 34\r\n")
    data, closed = await exchange([raw, b"GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"], app=app)
    assert statuses(data) == [413] and closed


async def test_expect_100_continue_on_a_request_without_body_gets_one_final_response(autojump_clock: Any) -> None:
    """Sending 100 here is allowed (RFC 9110 §10.1.1: MAY omit); one final response is what matters."""
    data, closed = await exchange(b"GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n")
    assert statuses(data)[-1:] == [200] and statuses(data).count(200) == 1 and closed


async def test_early_hints_with_a_crlf_in_a_value_reach_no_wire(autojump_clock: Any) -> None:
    """Puma GHSA-33vf-4xgg-9r58 (response splitting through early hints) and uvicorn
    CVE-2020-7695 (CRLF in header values): a value with CR/LF is the app's bug; no byte of it
    may reach the wire."""

    async def app(env: dict[str, Any]) -> Any:
        try:
            await env["rack.early_hints"]({"link": "</a>\r\nset-cookie: pwned=1"})
        except AppError:
            return 200, {}, [b"refused"]
        return 200, {}, [b"sent"]

    data, _ = await exchange(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", app=app)
    assert b"pwned" not in data
    assert statuses(data) == [200]
