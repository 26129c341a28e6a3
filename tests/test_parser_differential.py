"""Differential test: the same bytes to h11 and to the httptools engine, the same verdict.

Both parsers run sans-IO under the driver's strictness layer (:mod:`trio_rack.http1.strict`:
the line-break check before each head is parsed, ``check_request`` after), as
:class:`~trio_rack.http1.connection.HTTPConnection` runs them.  For each input — a corpus of
valid requests, every smuggling vector of ``test_smuggling``, and seeded random mutations of
both, fed whole and split in two at every kind of boundary — the two must agree on:

* accept or reject (and the status the rejection would get, and h11's message);
* for each accepted request: method, target, version, headers (names as sent and lower-cased,
  values, order), body and trailers;
* the bytes left over after the last event (the pipelined rest, an upgrade's first bytes);
* the response bytes written for the same response events (framing, ``connection: close``),
  and the states both end in.

Bounded (a fixed seed and count) and fast: it runs in CI with the ``test`` extra's httptools.
"""

from __future__ import annotations

import random
from typing import Any

import h11
import pytest

from trio_rack import Limits
from trio_rack.http1 import connection as _connection  # noqa: F401  (installs the h11 patches)
from trio_rack.http1 import strict
from trio_rack.http1.httptools_engine import AVAILABLE, HttptoolsConnection
from trio_rack.http1.parsers import new_parser

pytestmark = pytest.mark.skipif(not AVAILABLE, reason="httptools is not installed (the test extra installs it)")

LIMITS = Limits()
SEED = 12
MUTANTS = 3000


def _values(params: list[Any]) -> list[bytes]:
    return [p.values[0] if hasattr(p, "values") else p for p in params]


def _smuggling_corpus() -> list[bytes]:
    import test_smuggling as ts

    corpus = _values(ts.HEAD_VECTORS) + _values(ts.ACCEPTED)
    corpus += [ts.chunked(body) for body in _values(ts.BODY_VECTORS)]
    corpus += [ts.req(b"", ts.chunked(b"1\r\nx\r\n0\r\n\r\n")) for _ in range(1)]
    return corpus


VALID = [
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /path?q=1&r=%20 HTTP/1.1\r\nHost: example.com:8080\r\nUser-Agent: x/1\r\nAccept: */*\r\n\r\n",
    b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.0\r\n\r\n",
    b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\nGET /after HTTP/1.1\r\nHost: a\r\n\r\n",
    b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
    b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
    b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n3;x=y\r\nabc\r\n0\r\nT: v\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nhi",
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n"
    b"POST /3 HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\nxGET /4 HTTP/1.1\r\n",
    b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x05hello",
    b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n\x16\x03\x01",
    b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET http://a/x?y HTTP/1.1\r\nHost: a\r\n\r\n",
    b"get / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"FOO-BAR / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"PURGE / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.1\r\nhOsT: a\r\nX-Empty:\r\nX-Spaces:   a  b   \r\nX-Tab:\tv\t\r\nX-Obs: \x80\xff\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nCookie: a=1\r\nCookie: b=2\r\n\r\n",
    b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\nhello",
    b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n0\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\nUpgrade: h2c\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n",
]

#: Bytes mutations insert: the delimiters and the classic troublemakers.
SPECIAL = [b"\r", b"\n", b"\r\n", b" ", b"\t", b":", b",", b";", b"\x00", b"\x01", b"\x0b", b"\x7f",
           b"\x80", b"\xff", b"0", b"9", b"a", b"Z", b"-", b"/", b"?", b"#", b"@", b"\"", b"chunked",
           b"Content-Length: 3\r\n", b"Transfer-Encoding: chunked\r\n", b"Host: b\r\n"]  # fmt: skip


def _mutate(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        kind = rng.randrange(5)
        at = rng.randrange(len(out) + 1)
        if kind == 0 and out:  # flip a byte
            out[min(at, len(out) - 1)] = rng.randrange(256)
        elif kind == 1:  # insert a special
            out[at:at] = rng.choice(SPECIAL)
        elif kind == 2 and out:  # delete a run
            del out[at : at + rng.randint(1, 4)]
        elif kind == 3:  # duplicate a run
            run = out[at : at + rng.randint(1, 12)]
            out[at:at] = run
        else:  # truncate
            del out[at:]
    return bytes(out)


def _response(index: int, method: bytes) -> list[Any]:
    """The response the harness sends to request ``index``: kinds that exercise every framing."""
    kind = index % 4
    base = [(b"content-type", b"text/plain"), (b"server", b"t")]
    if kind == 0:
        return [h11.Response(status_code=200, headers=base + [(b"content-length", b"2")], reason=b"OK"),
                h11.Data(data=b"ok"), h11.EndOfMessage()]  # fmt: skip
    if kind == 1:  # streamed: chunked, or close-delimited for HTTP/1.0
        return [h11.Response(status_code=200, headers=base), h11.Data(data=b"ab"), h11.Data(data=b""),
                h11.Data(data=b"cd"), h11.EndOfMessage()]  # fmt: skip
    if kind == 2:
        return [h11.InformationalResponse(status_code=103, headers=[(b"link", b"</a>")]),
                h11.Response(status_code=204, headers=base), h11.EndOfMessage()]  # fmt: skip
    return [h11.Response(status_code=200, headers=base + [(b"connection", b"keep-alive, foo")]),
            h11.Data(data=b"x"), h11.EndOfMessage()]  # fmt: skip


def drive(conn: Any, pieces: list[bytes], eof: bool, *, direct: list[int] | None = None) -> list[Any]:
    """What the driver would see and do; a transcript to compare (never raises).

    With ``direct`` (a list to count in), a piece the parser can take as body bytes read past
    its buffer (``direct_body_size``) goes that way, as the driver reads a content-length body,
    and is logged as the ``Data`` event it stands for; each such piece appends its length."""
    log: list[Any] = []
    feed = list(pieces)
    index = 0
    if feed:
        conn.receive_data(feed.pop(0))
    for _ in range(200):
        if conn.their_state is h11.IDLE:
            buffered = conn.trailing_data[0]
            trick = strict.line_break_trick(buffered) if buffered else None
            if trick is not None:
                log.append(("strict-reject", trick))
                break
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            log.append(("reject", exc.error_status_hint, str(exc)))
            break
        if event is h11.NEED_DATA:
            if feed:
                piece = feed.pop(0)
                offer = getattr(conn, "direct_body_size", None)  # (a plain h11.Connection has none)
                if direct is not None and offer is not None and 0 < len(piece) <= offer():
                    conn.body_bytes_read(len(piece))
                    direct.append(len(piece))
                    log.append(("data", piece))
                    continue
                conn.receive_data(piece)
                continue
            if eof:
                eof = False
                conn.receive_data(b"")
                continue
            log.append(("need-data",))
            break
        if event is h11.PAUSED or type(event) is h11.ConnectionClosed:
            log.append((type(event).__name__ if event is not h11.PAUSED else "paused",))
            if event is h11.PAUSED and conn.their_state is h11.DONE and conn.our_state is h11.DONE:
                conn.start_next_cycle()
                continue
            break
        if type(event) is h11.Request:
            problem = strict.check_request(event, LIMITS)
            if problem is not None:
                log.append(("check-reject", *problem))
                break
            raw = list(event.headers.raw_items())
            log.append(("request", event.method, event.target, event.http_version, raw, list(event.headers),
                        conn.they_are_waiting_for_100_continue))  # fmt: skip
            continue
        if type(event) is h11.Data:
            log.append(("data", bytes(event.data)))
            continue
        if type(event) is h11.EndOfMessage:
            log.append(("end", list(event.headers)))
            wire = []
            for out in _response(index, b""):
                try:
                    wire.append(conn.send(out))
                except h11.LocalProtocolError as exc:
                    wire.append(("local-error", str(exc)))
                    break
            index += 1
            log.append(("wrote", wire, conn.our_state, conn.their_state))
            if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                conn.start_next_cycle()
            continue
    log.append(("left", conn.trailing_data, conn.their_state, conn.our_state, conn.their_http_version))
    return log


def both(pieces: list[bytes], eof: bool = False) -> tuple[list[Any], list[Any]]:
    reference = drive(new_parser("h11", LIMITS.max_head_size), pieces, eof)
    candidate = drive(HttptoolsConnection(LIMITS.max_head_size), pieces, eof)
    return reference, candidate


def _splits(data: bytes, rng: random.Random) -> list[list[bytes]]:
    ways = [[data]]
    if len(data) > 1:
        at = rng.randrange(1, len(data))
        ways.append([data[:at], data[at:]])
        head_end = data.find(b"\r\n\r\n")
        if head_end > 0:  # at the head's end, and inside its blank line
            ways.append([data[: head_end + 4], data[head_end + 4 :]])
            ways.append([data[: head_end + 2], data[head_end + 2 :]])
    return [[piece for piece in way if piece] for way in ways]


def _check(data: bytes, rng: random.Random) -> None:
    for pieces in _splits(data, rng):
        for eof in (False, True):
            reference, candidate = both(pieces, eof)
            assert candidate == reference, (data, pieces, eof)


def _body_splits(data: bytes, rng: random.Random) -> list[list[bytes]]:
    """``data`` cut at its head's end, the rest in pieces (bytes one by one, at random points,
    and whole): the shapes in which a driver reads a body past the parser's buffer."""
    head_end = data.find(b"\r\n\r\n")
    if head_end < 0 or head_end + 4 == len(data):
        return []
    head, rest = data[: head_end + 4], data[head_end + 4 :]
    cuts = sorted(rng.sample(range(1, len(rest)), min(3, len(rest) - 1)))
    at_random = [rest[i:j] for i, j in zip([0, *cuts], [*cuts, len(rest)], strict=True)]
    return [[head, rest], [head, *at_random], [head, *(rest[i : i + 1] for i in range(len(rest)))]]


def test_bodies_read_past_the_buffer_get_the_same_transcripts() -> None:
    """The driver's direct read of a content-length body (``direct_body_size`` and
    ``body_bytes_read``, on both parsers) stands for exactly ``receive_data`` and the ``Data``
    event: the same events, verdicts, responses and leftover bytes as h11 fed every byte, on the
    whole corpus (a pipelined request behind a body, a body cut short by EOF, smuggling vectors)."""
    rng = random.Random(SEED)
    corpus = VALID + _smuggling_corpus()
    corpus += [_mutate(rng, rng.choice(corpus)) for _ in range(MUTANTS // 3)]
    corpus += [
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhelloGET / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc",
        b"POST / HTTP/1.0\r\nContent-Length: 4\r\n\r\nabcd",
        b"PUT / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nshort",
    ]
    taken: list[int] = []
    compared = 0
    for data in corpus:
        for pieces in _body_splits(data, rng):
            for eof in (False, True):
                reference = drive(new_parser("h11", LIMITS.max_head_size), pieces, eof)
                for candidate in (new_parser("h11", LIMITS.max_head_size), HttptoolsConnection(LIMITS.max_head_size)):
                    assert drive(candidate, pieces, eof, direct=taken) == reference, (type(candidate), pieces, eof)
                    compared += 1
    assert compared > 1000 and len(taken) > 300  # the direct reads were taken, not only offered


@pytest.mark.parametrize("parser", ["h11", "httptools"])
def test_a_body_is_offered_for_direct_reads_only_while_none_of_it_is_buffered(parser: str) -> None:
    def make() -> Any:
        return new_parser(parser, LIMITS.max_head_size)

    if not hasattr(make(), "direct_body_size"):
        pytest.skip("a plain h11.Connection (another h11 release): the driver reads through its buffer")

    conn = make()
    assert conn.direct_body_size() == 0  # no request yet
    conn.receive_data(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nab")
    assert type(conn.next_event()) is h11.Request
    assert conn.direct_body_size() == 0  # two body bytes are buffered: they come first
    assert bytes(conn.next_event().data) == b"ab"
    assert conn.direct_body_size() == 8  # never more than the body's rest
    conn.body_bytes_read(5)
    assert conn.direct_body_size() == 3
    with pytest.raises(RuntimeError):
        conn.body_bytes_read(4)  # past the body's end: refused, nothing counted
    conn.body_bytes_read(3)
    assert conn.direct_body_size() == 0
    assert type(conn.next_event()) is h11.EndOfMessage and conn.their_state is h11.DONE
    chunked = make()
    chunked.receive_data(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunked.next_event()
    assert chunked.direct_body_size() == 0  # a chunked body always goes through the parser
    closed = make()
    closed.receive_data(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n")
    closed.next_event()
    closed.receive_data(b"")
    assert closed.direct_body_size() == 0  # after EOF the parser's verdict comes first


@pytest.mark.parametrize("data", VALID, ids=range(len(VALID)))
def test_valid_requests_get_the_same_parse_and_responses(data: bytes) -> None:
    _check(data, random.Random(SEED))
    reference, _ = both([data])
    assert reference[0][0] in ("request", "reject")


def test_every_smuggling_vector_gets_the_same_verdict() -> None:
    rng = random.Random(SEED)
    for data in _smuggling_corpus():
        _check(data, rng)


def test_random_mutations_get_the_same_verdict() -> None:
    rng = random.Random(SEED)
    corpus = VALID + _smuggling_corpus()
    for _ in range(MUTANTS):
        _check(_mutate(rng, rng.choice(corpus)), rng)


def test_the_harness_tells_a_request_from_a_rejection() -> None:
    """The comparison is not vacuous: h11 accepts a valid request and refuses a smuggling vector."""
    accepted, _ = both([b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhiGET"])
    assert accepted[0][:3] == ("request", b"POST", b"/")
    assert ("data", b"hi") in accepted
    assert accepted[-1][1] == (b"GET", False)
    refused, _ = both([b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"])
    assert refused[-2][0] in ("reject", "check-reject")


def test_auto_is_httptools_when_installed_and_names_are_checked() -> None:
    from trio_rack import ConfigError
    from trio_rack.http1.parsers import resolve_parser

    assert resolve_parser("auto") == "httptools"
    assert resolve_parser("h11") == "h11"
    with pytest.raises(ConfigError, match="one of auto, h11, httptools"):
        resolve_parser("llhttp")


async def test_each_parser_serves_a_memory_connection_and_says_which() -> None:
    """``memory_connection(http1_parser=...)`` really swaps the parser under the driver."""
    from trio_rack.testing import ServerState, memory_connection

    seen: list[str] = []

    async def app(env: dict[str, Any]) -> Any:
        return 200, {"content-type": "text/plain"}, [b"hi"]

    for parser in ("h11", "httptools"):
        state = ServerState(app, LIMITS, access_log=False)
        async with memory_connection(app, state=state, http1_parser=parser) as client:
            response = await client.request("GET", "/")
            assert (response.status, response.body) == (200, b"hi")
            [connection] = state.connections
            seen.append(type(connection.h11).__name__)  # type: ignore[attr-defined]
    # h11's class, or its _h11_fast subclass where that is h11's exact equal (test_h11_fast_send)
    assert seen == [type(new_parser("h11", LIMITS.max_head_size)).__name__, "HttptoolsConnection"]
    assert seen[0] in ("Connection", "ServerConnection")


@pytest.mark.parametrize(
    "headers",
    [
        [(b"content-length", b"2"), (b"host", b"h"), (b"x-a", b"1"), (b"host", b"i")],
        [(b"host", b"h")],
        [(b"x-a", b"1"), (b"host", b"h")],
        [(b"x-a", b"1")],
    ],
    ids=["host-inside", "host-only-streamed", "host-last-streamed", "no-host-streamed"],
)
def test_response_heads_put_host_first_as_h11_does(headers: list[tuple[bytes, bytes]]) -> None:
    """h11's ``write_headers`` writes Host lines first; the engine's one-pass head keeps that."""
    wire = []
    for conn in (new_parser("h11", LIMITS.max_head_size), HttptoolsConnection(LIMITS.max_head_size)):
        conn.receive_data(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        conn.next_event(), conn.next_event()
        wire.append(conn.send(h11.Response(status_code=200, headers=headers, reason=b"OK")))
    assert wire[0] == wire[1]
    assert wire[0].split(b"\r\n")[1].startswith(b"host: " if (b"host", b"h") in headers else b"x-a: ")
