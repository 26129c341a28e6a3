"""``_h11_fast.ServerConnection`` against unpatched h11: the same bytes and the same state after
every event.

Each scenario is a request (or several, pipelined, or none) fed to both a plain
``h11.Connection(h11.SERVER)`` and a :class:`~trio_rack.http1._h11_fast.ServerConnection`, then a
program of response events sent to both, in two spellings: as h11 builds them (header lists
normalised by h11's constructors) and as the HTTP/1 driver builds them (a prebuilt lower-case
``Headers`` and the event filled in without h11's constructor: ``HTTPConnection._head_event``).
After every call the two must agree on the result (the pieces, or the exception's type, message
and status hint) and on a snapshot of everything h11 keeps: both roles' states, keep-alive, the
switch proposals, the peer's HTTP version, the 100-continue flag, the request method, the reader
and the writer (their types and counters) and the buffered bytes.  The corpus covers HTTP/1.0
and 1.1, keep-alive and ``connection: close``, HEAD, CONNECT, upgrades and 101, 1xx, 204 and 304,
chunked and content-length bodies, ``connection`` headers, 100-continue, a peer that closed, and
framing errors (too much, too little, events out of order), plus seeded random programs; and the
parser differential suite's transcripts (``test_parser_differential.drive``) on its whole corpus.
Content-length bodies read past h11's buffer (``direct_body_size``/``body_bytes_read``, the
driver's direct read: the "body" action) are held to h11 fed the same bytes the same way: whole,
in pieces, cut short, with a pipelined request behind, after bytes buffered with the head, after
100-continue, and for the requests where no direct read may be offered (chunked, no body).
"""

from __future__ import annotations

import itertools
import random
import types
from typing import Any

import h11
import pytest
from h11._headers import Headers

from test_parser_differential import SEED, VALID, _mutate, _smuggling_corpus, _splits, drive
from trio_rack.http1 import _h11_fast
from trio_rack.http1 import connection as _connection  # noqa: F401  (installs the h11 patches)
from trio_rack.http1.parsers import new_parser

#: The comparisons need the fast class in use; test_the_fast_class_serves_h11_connections says
#: so loudly where it is not (another h11 release: check _h11_fast against it, then add it).
needs_fast = pytest.mark.skipif(not _h11_fast.FAST_SEND, reason="h11 is not a release _h11_fast was checked against")


def _plain() -> h11.Connection:
    return h11.Connection(h11.SERVER)


def _fast() -> h11.Connection:
    return _h11_fast.ServerConnection()


def _thing(obj: Any) -> Any:
    """A reader or writer as a comparable value: its type, or its name, and its counters."""
    if obj is None:
        return None
    if isinstance(obj, types.FunctionType):
        return obj.__qualname__
    return (type(obj).__name__, sorted(vars(obj).items()))


def snapshot(conn: Any) -> Any:
    cstate = conn._cstate
    return (
        dict(cstate.states),
        cstate.keep_alive,
        set(cstate.pending_switch_proposals),
        conn.their_http_version,
        conn.client_is_waiting_for_100_continue,
        conn.they_are_waiting_for_100_continue,
        conn._request_method,
        _thing(conn._writer),
        _thing(conn._reader),
        conn.trailing_data,
    )


#: Body reads the fast class took past its buffer (the "body" action): the comparison of those
#: steps is not vacuous.
DIRECT_READS: list[int] = []


def _call(conn: Any, action: tuple[Any, ...]) -> Any:
    verb = action[0]
    try:
        if verb == "receive":
            conn.receive_data(action[1])
            return None
        if verb == "next":
            event = conn.next_event()
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return event
            return (type(event).__name__, repr(event))
        if verb == "body":  # the driver reading body bytes: past the buffer where offered
            payload = action[1]
            offer = getattr(conn, "direct_body_size", None)
            if offer is not None and 0 < len(payload) <= offer():
                conn.body_bytes_read(len(payload))
                DIRECT_READS.append(len(payload))
                return ("Data", payload)
            conn.receive_data(payload)
            event = conn.next_event()
            if type(event) is h11.Data:
                return ("Data", bytes(event.data))
            return event if event is h11.NEED_DATA or event is h11.PAUSED else (type(event).__name__, repr(event))
        if verb == "cycle":
            conn.start_next_cycle()
            return None
        if verb == "send":
            pieces = conn.send_with_data_passthrough(action[1]())
            return None if pieces is None else [bytes(p) for p in pieces]
        if verb == "send_bytes":
            return conn.send(action[1]())
    except Exception as exc:  # noqa: BLE001 - the verdict is what is compared
        return ("raised", type(exc).__name__, str(exc), getattr(exc, "error_status_hint", None))
    raise AssertionError(verb)


def transcript(make: Any, actions: list[tuple[Any, ...]]) -> list[Any]:
    conn = make()
    log = []
    for action in actions:
        log.append((action[0], _call(conn, action), snapshot(conn)))
    return log


# ------------------------------------------------------------------------------- the corpus

REQUESTS = {
    "get": b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    "get-close": b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    "get-close-mixed": b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Keep-Alive, CLOSE\r\n\r\n",
    "get-1.0": b"GET / HTTP/1.0\r\n\r\n",
    "get-1.0-keep-alive": b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    "head": b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n",
    "head-1.0": b"HEAD / HTTP/1.0\r\n\r\n",
    "post-length": b"POST /u HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
    "post-length-unread": b"POST /u HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhel",
    "post-chunked": b"POST /u HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "post-chunked-1.0": b"POST /u HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
    "expect": b"POST /u HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n",
    "expect-sent": b"POST /u HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nhi",
    "expect-1.0": b"POST /u HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nhi",
    "upgrade": b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x05hello",
    "upgrade-h2c": b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\nUpgrade: h2c\r\n\r\n",
    "connect": b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n\x16\x03\x01",
    "options": b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
    "pipelined": b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n"
    b"HEAD /3 HTTP/1.1\r\nHost: a\r\n\r\n",
    "pipelined-close": b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    "bad": b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "none": b"",
}

BASE = [(b"content-type", b"text/plain"), (b"server", b"t")]


def h11_style(status: int, headers: list[tuple[bytes, bytes]], reason: bytes = b"OK") -> Any:
    return lambda: h11.Response(status_code=status, headers=headers, reason=reason)


def driver_style(status: int, headers: list[tuple[bytes, bytes]], reason: bytes = b"OK") -> Any:
    """As ``HTTPConnection._head_event`` makes it: a ``Headers`` of (name, name, value), the event
    filled in directly (the driver's names are lower-case, as the exchange validated them)."""

    def make() -> Any:
        event = object.__new__(h11.Response)
        object.__setattr__(event, "headers", Headers([(name, name, value) for name, value in headers]))
        object.__setattr__(event, "http_version", b"1.1")
        object.__setattr__(event, "reason", reason)
        object.__setattr__(event, "status_code", status)
        return event

    return make


def data(payload: Any) -> Any:
    return lambda: h11.Data(data=payload)


def end(trailers: list[tuple[bytes, bytes]] | None = None) -> Any:
    return lambda: h11.EndOfMessage(headers=trailers or [])


def info(status: int, headers: list[tuple[bytes, bytes]] | None = None) -> Any:
    return lambda: h11.InformationalResponse(status_code=status, headers=headers or [], reason=b"")


class _Slice:
    """A sendfile placeholder: h11's writers need only its length (the driver's ``_FileSlice``)."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __bytes__(self) -> bytes:
        return b"<%d>" % self.size


def _heads(style: Any) -> dict[str, Any]:
    """Response heads by name, in one spelling."""
    heads = {
        "length": style(200, BASE + [(b"content-length", b"2")]),
        "length-zeros": style(200, BASE + [(b"content-length", b"002")]),
        "length-zero": style(200, BASE + [(b"content-length", b"0")]),
        "streamed": style(200, BASE),
        "chunked": style(200, BASE + [(b"transfer-encoding", b"chunked")]),
        "chunked-and-length": style(200, [(b"content-length", b"2"), *BASE, (b"transfer-encoding", b"chunked")]),
        "close": style(200, BASE + [(b"content-length", b"2"), (b"connection", b"close")]),
        "close-streamed": style(200, [(b"connection", b"close"), *BASE]),
        "keep-alive-foo": style(200, BASE + [(b"connection", b"keep-alive, foo")]),
        "keep-alive-foo-length": style(200, [(b"connection", b"Keep-Alive, foo"), (b"content-length", b"2")]),
        "204": style(204, BASE, b"No Content"),
        "204-length": style(204, BASE + [(b"content-length", b"0")], b"No Content"),
        "204-chunked": style(204, BASE + [(b"transfer-encoding", b"chunked")], b""),
        "304": style(304, BASE + [(b"content-length", b"10")], b"Not Modified"),
        "host-in-response": style(404, [(b"x-a", b"1"), (b"host", b"h"), (b"content-length", b"2")], b"Not Found"),
        "999": style(999, [(b"content-length", b"2")], b""),
        "500-close": style(500, [(b"content-length", b"2"), (b"connection", b"close"), (b"date", b"d")], b"Error"),
    }
    if style is h11_style:  # only h11's constructor normalises mixed case
        heads["mixed-case"] = style(200, [(b"Content-Type", b"a"), (b"Connection", b"Close"), (b"X-Y", b"z")])
        heads["mixed-case-length"] = style(200, [(b"Content-Length", b"2"), (b"Server", b"s")])
    else:  # what only a prebuilt Headers can hold: h11's own path must take them
        heads["long-length"] = style(200, [(b"content-length", b"1" * 21)])
        heads["two-lengths"] = style(200, [(b"content-length", b"2"), (b"content-length", b"2")])
        heads["comma-length"] = style(200, [(b"content-length", b"2, 2")])
        heads["two-codings"] = style(200, [(b"transfer-encoding", b"chunked"), (b"transfer-encoding", b"chunked")])
        heads["odd-coding"] = style(200, [(b"transfer-encoding", b"gzip")])
        heads["empty-length"] = style(200, [(b"content-length", b"")])
        # (name, name, value) with a name that is not lower-case: h11's rebuilds lower-case it
        heads["upper-name-slot"] = style(200, [(b"Connection", b"Keep-Alive, Foo"), (b"Content-Length", b"0")])
    return heads


BODIES = {
    "ok": [data(b"ok"), end()],
    "pieces": [data(b"o"), data(b""), data(b"k"), end()],
    "file": [data(_Slice(2)), end()],
    "too-much": [data(b"okk"), end()],
    "too-little": [data(b"o"), end()],
    "nothing": [end()],
    "trailers": [data(b"ok"), end([(b"x-t", b"v")])],
    "twice": [data(b"ok"), end(), end()],
    "after-end": [data(b"ok"), end(), data(b"x")],
}


def _read_request(n: int = 6) -> list[tuple[Any, ...]]:
    return [("next",)] * n


def _scenarios() -> list[tuple[str, list[tuple[Any, ...]]]]:
    out: list[tuple[str, list[tuple[Any, ...]]]] = []
    for style in (h11_style, driver_style):
        heads = _heads(style)
        for (rname, request), (hname, head), (bname, body) in itertools.product(
            REQUESTS.items(), heads.items(), BODIES.items()
        ):
            actions: list[tuple[Any, ...]] = [("receive", request), *_read_request(3)]
            actions += [("send", head), *[("send", e) for e in body]]
            actions += [*_read_request(2), ("cycle",), *_read_request(3), ("send", head), ("send", body[0])]
            out.append((f"{style.__name__}:{rname}:{hname}:{bname}", actions))
        for rname, request in REQUESTS.items():  # the peer's EOF before the response
            actions = [("receive", request), *_read_request(3), ("receive", b""), *_read_request(2)]
            actions += [("send", heads["length"]), ("send", data(b"ok")), ("send", end()), ("next",)]
            out.append((f"{style.__name__}:{rname}:eof", actions))
        extra: list[list[tuple[Any, ...]]] = [
            [("send", heads["length"])],  # a response before any request (an early error)
            [("receive", REQUESTS["get"]), ("next",), ("send", data(b"x"))],  # data before the head
            [("receive", REQUESTS["get"]), ("next",), ("send", heads["length"]), ("send", heads["length"])],
            [("receive", REQUESTS["expect"]), ("next",), ("send", info(100)), ("send", heads["length"]),
             ("send", data(b"ok")), ("send", end()), ("next",), ("receive", b"hi"), ("next",), ("next",)],
            [("receive", REQUESTS["upgrade"]), ("next",), ("next",), ("send", info(101, [(b"upgrade", b"websocket")])),
             ("next",), ("send", heads["length"])],
            [("receive", REQUESTS["upgrade"]), ("next",), ("next",), ("send", info(103, [(b"link", b"</a>")])),
             ("send", heads["length"]), ("send", data(b"ok")), ("send", end()), ("next",), ("cycle",)],
            [("receive", REQUESTS["connect"]), ("next",), ("next",), ("send", heads["streamed"]), ("next",)],
            [("receive", REQUESTS["connect"]), ("next",), ("next",), ("send", heads["204"]), ("send", end())],
            [("receive", REQUESTS["get"]), ("next",), ("next",), ("send", heads["length"]),
             ("send", data(b"ok")), ("send", end()), ("send", lambda: h11.ConnectionClosed())],
            [("receive", REQUESTS["get"]), ("next",), ("next",), ("send_bytes", heads["streamed"]),
             ("send_bytes", data(b"ab")), ("send_bytes", end())],
        ]  # fmt: skip
        out += [(f"{style.__name__}:extra{i}", actions) for i, actions in enumerate(extra)]
    return out


SCENARIOS = _scenarios()

#: Requests whose body the driver reads past h11's buffer: the head alone, then the body.
BODY_HEADS = {
    "length": b"POST /u HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n",
    "length-1.0": b"POST /u HTTP/1.0\r\nContent-Length: 10\r\n\r\n",
    "length-close": b"POST /u HTTP/1.1\r\nHost: a\r\nConnection: close\r\nContent-Length: 10\r\n\r\n",
    "expect": b"POST /u HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 10\r\n\r\n",
    "upgrade": b"POST /u HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\nConnection: Upgrade\r\nContent-Length: 10\r\n\r\n",
    "chunked": b"POST /u HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
    "zero": b"POST /u HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
    "get": b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
}
#: Ways the body arrives: whole, in pieces, short and then EOF, with the next request behind it.
BODY_ARRIVALS: dict[str, list[tuple[Any, ...]]] = {
    "whole": [("body", b"0123456789")],
    "pieces": [("body", b"0"), ("body", b"1234"), ("body", b"56789")],
    "short-eof": [("body", b"0123"), ("receive", b""), ("next",)],
    "pipelined": [("body", b"01234"), ("body", b"56789GET /2 HTTP/1.1\r\nHost: a\r\n\r\n")],
    "too-long": [("body", b"0123456789x")],
    "after-buffered": [("receive", b"01"), ("next",), ("body", b"2345"), ("body", b"6789")],
    "chunks": [("body", b"5\r\nhello\r\n"), ("body", b"0\r\n\r\n")],
}


def _body_scenarios() -> list[tuple[str, list[tuple[Any, ...]]]]:
    out = []
    head = driver_style(200, [(b"content-length", b"2")])
    for (hname, request), (aname, arrival) in itertools.product(BODY_HEADS.items(), BODY_ARRIVALS.items()):
        for continue_first in (False, True):
            actions: list[tuple[Any, ...]] = [("receive", request), ("next",)]
            if continue_first:
                actions.append(("send", info(100)))
            actions += [*arrival, *_read_request(2), ("send", head), ("send", data(b"ok")), ("send", end())]
            actions += [*_read_request(2), ("cycle",), *_read_request(3)]
            out.append((f"{hname}:{aname}:{continue_first}", actions))
    return out


BODY_SCENARIOS = _body_scenarios()


def _random_programs(count: int) -> list[list[tuple[Any, ...]]]:
    rng = random.Random(SEED)
    pool: list[Any] = [*_heads(h11_style).values(), *_heads(driver_style).values()]
    pool += [data(b"ok"), data(b""), data(b"abc"), data(_Slice(3)), end(), end([(b"x", b"y")]), info(100), info(103)]
    requests = list(REQUESTS.values())
    programs = []
    for _ in range(count):
        actions: list[tuple[Any, ...]] = [("receive", rng.choice(requests))]
        for _ in range(rng.randint(1, 12)):
            roll = rng.random()
            if roll < 0.55:
                actions.append(("send", rng.choice(pool)))
            elif roll < 0.85:
                actions.append(("next",))
            elif roll < 0.95:
                actions.append(("cycle",))
            else:
                actions.append(("receive", rng.choice([b"", b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", b"hi"])))
        programs.append(actions)
    return programs


# ------------------------------------------------------------------------------- the tests


def test_the_fast_class_serves_h11_connections() -> None:
    assert _h11_fast.FAST_SEND, (
        f"h11 {h11.__version__} is not in _h11_fast.CHECKED_H11: the driver runs on plain h11.Connection; "
        "check ServerConnection's steps against this h11's source, then add the release"
    )
    conn = new_parser("h11", 16 * 1024)
    assert type(conn) is _h11_fast.ServerConnection
    assert conn.our_role is h11.SERVER and conn._max_incomplete_event_size == 16 * 1024


#: The scenarios by request and spelling ("driver_style:get"): one test each.
GROUPS = sorted({":".join(name.split(":")[:2]) for name, _ in SCENARIOS})


@needs_fast
@pytest.mark.parametrize("group", GROUPS)
def test_each_scenario_leaves_the_same_bytes_and_states(group: str) -> None:
    count = 0
    for name, actions in SCENARIOS:
        if ":".join(name.split(":")[:2]) == group:
            assert transcript(_fast, actions) == transcript(_plain, actions), name
            count += 1
    assert count


@needs_fast
def test_random_programs_leave_the_same_bytes_and_states() -> None:
    for actions in _random_programs(4000):
        assert transcript(_fast, actions) == transcript(_plain, actions), actions


@needs_fast
def test_the_parser_differential_corpus_gives_the_same_transcripts() -> None:
    """Whole, split in two (at random, at the head's end, inside its blank line), with and
    without the peer's EOF after it."""
    rng = random.Random(SEED)
    base = VALID + _smuggling_corpus()
    head = driver_style(200, [(b"content-length", b"2")])
    for data_ in base + [_mutate(rng, rng.choice(base)) for _ in range(1500)]:
        for pieces in _splits(data_, rng):
            for eof in (False, True):
                assert drive(_fast(), pieces, eof) == drive(_plain(), pieces, eof), (pieces, eof)
                # ... and every piece of state, step by step, around a response to it
                actions: list[tuple[Any, ...]] = []
                for piece in pieces:
                    actions += [("receive", piece), *_read_request(3)]
                actions += [("send", head), ("send", data(b"ok")), ("send", end()), *_read_request(2), ("cycle",)]
                actions += [*_read_request(3), *([("receive", b""), *_read_request(2)] if eof else [])]
                assert transcript(_fast, actions) == transcript(_plain, actions), (pieces, eof)


@needs_fast
def test_the_comparison_is_not_vacuous() -> None:
    """The corpus takes the fast steps (not only h11's fallback) and reaches every framing."""
    seen: set[Any] = set()
    taken = 0
    original = h11.Connection.send_with_data_passthrough
    for _, actions in SCENARIOS:
        conn = _fast()
        for action in actions:
            before = snapshot(conn)[0]
            _call(conn, action)
            if action[0] == "send" and before.get(h11.SERVER) is h11.SEND_RESPONSE:
                seen.add(_thing(conn._writer) and _thing(conn._writer)[0])
    assert {"ContentLengthWriter", "ChunkedWriter", "Http10Writer"} <= seen
    calls = []

    def spy(self: Any, event: Any) -> Any:
        calls.append(type(event).__name__)
        return original(self, event)

    conn = _fast()
    conn.receive_data(REQUESTS["get"])
    conn.next_event(), conn.next_event()
    h11.Connection.send_with_data_passthrough = spy  # type: ignore[method-assign]
    try:
        for make in (driver_style(200, [(b"content-length", b"2")]), data(b"ok"), end()):
            taken += conn.send(make()) is not None
    finally:
        h11.Connection.send_with_data_passthrough = original  # type: ignore[method-assign]
    assert taken == 3 and calls == []  # all three steps were the fast ones


@needs_fast
def test_the_receiving_steps_are_taken_too() -> None:
    """A plain request, its body and its end are read without h11's general ``next_event``."""
    original = h11.Connection.next_event
    calls: list[Any] = []

    def spy(self: Any) -> Any:
        calls.append(self.their_state)
        return original(self)

    conn = _fast()
    conn.receive_data(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nh")
    h11.Connection.next_event = spy  # type: ignore[method-assign]
    try:
        kinds = [type(conn.next_event()).__name__ for _ in range(2)]
        assert conn.next_event() is h11.NEED_DATA
        conn.receive_data(b"i")
        kinds += [type(conn.next_event()).__name__ for _ in range(2)]
    finally:
        h11.Connection.next_event = original  # type: ignore[method-assign]
    assert kinds == ["Request", "Data", "Data", "EndOfMessage"] and calls == []
    assert conn.their_state is h11.DONE and conn.our_state is h11.SEND_RESPONSE


@needs_fast
@pytest.mark.parametrize("name", [name for name, _ in BODY_SCENARIOS])
def test_bodies_read_past_the_buffer_leave_the_same_bytes_and_states(name: str) -> None:
    """``direct_body_size``/``body_bytes_read`` (the driver's content-length body read straight
    from the wire) against plain h11 fed the same bytes: every event and every piece of state,
    step by step (the reader's count, 100-continue, keep-alive, the next request's bytes)."""
    actions = dict(BODY_SCENARIOS)[name]
    assert transcript(_fast, actions) == transcript(_plain, actions), name


@needs_fast
def test_random_programs_with_body_reads_leave_the_same_bytes_and_states() -> None:
    rng = random.Random(SEED + 1)
    pool: list[Any] = [*_heads(driver_style).values(), data(b"ok"), end(), info(100)]
    bodies = [b"0", b"0123", b"0123456789", b"0123456789x", b"", b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"]
    DIRECT_READS.clear()
    for _ in range(3000):
        actions: list[tuple[Any, ...]] = [("receive", rng.choice(list(BODY_HEADS.values()))), ("next",)]
        for _ in range(rng.randint(1, 10)):
            roll = rng.random()
            if roll < 0.45:
                actions.append(("body", rng.choice(bodies)))
            elif roll < 0.7:
                actions.append(("send", rng.choice(pool)))
            elif roll < 0.9:
                actions.append(("next",))
            elif roll < 0.95:
                actions.append(("cycle",))
            else:
                actions.append(("receive", b""))
        assert transcript(_fast, actions) == transcript(_plain, actions), actions
    assert len(DIRECT_READS) > 500  # the fast class took the direct steps, not only h11's


@needs_fast
def test_the_body_scenarios_take_the_direct_reads() -> None:
    DIRECT_READS.clear()
    for name, actions in BODY_SCENARIOS:
        if name.startswith("length:pieces:"):
            transcript(_fast, actions)
    assert DIRECT_READS == [1, 4, 5, 1, 4, 5]  # both spellings: every piece past the buffer
    DIRECT_READS.clear()
    for name, actions in BODY_SCENARIOS:
        if name.startswith(("chunked:", "get:", "zero:")) or ":too-long:" in name:
            transcript(_fast, actions)
    assert DIRECT_READS == []  # never for a chunked body, no body, or more than the body's rest
