"""The HTTP/1 driver reads a ``content-length`` body straight from the wire, past the parser.

``HTTPConnection.receive_body`` asks the parser (h11's ``_h11_fast.ServerConnection`` or the
httptools engine) how many body bytes are still due while none is buffered, reads at most that
many itself and tells the parser only the count (``direct_body_size``/``body_bytes_read``): the
bytes skip the parser's buffer and its copies.  The parser-level equivalence with h11 is in
``test_h11_fast_send.py`` and ``test_parser_differential.py``; these tests hold the driver to
what must not change around it, on both parsers: the body arrives whole and in order, no read
asks for a byte past the body (the next request, a hijacker's bytes stay where they belong),
100-continue, a body cut short, and the body size limit; and over real loopback sockets, plain
and TLS, that a pipelined request and a hijacker's bytes behind the body stay theirs.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import random
from typing import Any

import pytest
import trio
import trio.testing

import trio_rack
from e2e_support import TLSFiles, open_client, parse_responses, read_until, read_until_eof
from trio_rack import Limits
from trio_rack.http1._h11_fast import ServerConnection
from trio_rack.http1.httptools_engine import HttptoolsConnection
from trio_rack.net.transport import DIRECT_BODY_SIZE
from trio_rack.state import ServerState
from trio_rack.testing import memory_connection, read_until_closed, serve_stream

pytestmark = pytest.mark.http1_parsers


class RecordingStream(trio.abc.HalfCloseableStream):
    """A memory stream's server end that records every read: what it asked for, what it got."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.reads: list[tuple[int | None, int]] = []

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        data = await self.inner.receive_some(max_bytes)
        self.reads.append((max_bytes, len(data)))
        return bytes(data)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self.inner.send_eof()  # type: ignore[attr-defined]

    async def aclose(self) -> None:
        await self.inner.aclose()


async def _serve(stream: trio.abc.Stream, state: ServerState) -> None:
    """One connection, then the stream closed, as a listener does."""
    try:
        await serve_stream(stream, state)
    finally:
        await trio.aclose_forcefully(stream)


async def digest_app(env: dict[str, Any]) -> Any:
    body = await env["rack.input"].read_all()
    return 200, {"content-type": "text/plain"}, [b"%d %s" % (len(body), hashlib.sha256(body).hexdigest().encode())]


def _answer(body: bytes) -> bytes:
    return b"%d %s" % (len(body), hashlib.sha256(body).hexdigest().encode())


def _count_direct_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    counts: list[int] = []
    for cls in (ServerConnection, HttptoolsConnection):
        original = cls.body_bytes_read

        def spy(self: Any, count: int, original: Any = original) -> None:
            counts.append(count)
            original(self, count)

        monkeypatch.setattr(cls, "body_bytes_read", spy)
    return counts


async def test_a_body_read_past_the_parser_arrives_whole_and_no_read_runs_past_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """600 kB in uneven pieces, the next request sent in the same write as the body's last
    bytes: the body arrives intact, the driver's reads stop exactly at the body's end (the next
    request is read as a head, not swallowed), and both requests are answered in order."""
    direct = _count_direct_reads(monkeypatch)
    body = random.Random(7).randbytes(600_000)
    head = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body)
    following = b"POST /b HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 3\r\n\r\nxyz"
    client, server = trio.testing.memory_stream_pair()
    recording = RecordingStream(server)
    state = ServerState(digest_app, Limits(), access_log=False)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_serve, recording, state)
            await client.send_all(head)
            await trio.testing.wait_all_tasks_blocked()
            sent = 0
            for size in (1, 70_000, 300_000, 13, 200_000):
                await client.send_all(body[sent : sent + size])
                sent += size
                await trio.testing.wait_all_tasks_blocked()
            await client.send_all(body[sent:] + following)
            data = await read_until_closed(client)  # the second request says "connection: close"
            nursery.cancel_scope.cancel()
    first, second = data.split(b"HTTP/1.1 ")[1:]
    assert first.startswith(b"200 ") and first.endswith(b"\r\n\r\n" + _answer(body))
    assert second.startswith(b"200 ") and second.endswith(b"\r\n\r\n" + _answer(b"xyz"))
    assert sum(direct) >= len(body) - 70_000  # past the parser: all but what came with a head
    # Every read's size: a prefix of them ends exactly at the first body's last byte, and no
    # read of the body asked for more than the body still due (nor than DIRECT_BODY_SIZE).
    ends, total = set(), 0
    end_of_body = len(head) + len(body)
    for asked, got in recording.reads:
        if len(head) <= total < end_of_body:
            assert asked is not None and asked <= min(end_of_body - total, DIRECT_BODY_SIZE)
        total += got
        ends.add(total)
    assert end_of_body in ends
    assert total == len(head) + len(body) + len(following)


async def test_bytes_behind_a_body_read_past_the_parser_go_to_the_hijacker() -> None:
    """Bytes are sacred: what the client sent right behind the body reaches the hijacked stream."""
    got: list[bytes] = []

    async def app(env: dict[str, Any]) -> Any:
        body = await env["rack.input"].read_all()
        stream = env["rack.hijack"]()
        tail = b""
        while len(tail) < 9:
            tail += await stream.receive_some()
        got.append(body)
        got.append(tail)
        await stream.send_all(b"done")
        return -1, {}, []

    body = b"b" * 100_000
    async with memory_connection(app) as client:
        with trio.fail_after(10):
            await client.stream.send_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body))
            await trio.testing.wait_all_tasks_blocked()
            await client.stream.send_all(body[:50_000])
            await trio.testing.wait_all_tasks_blocked()
            await client.stream.send_all(body[50_000:] + b"after-it!")
            assert await client.stream.receive_some() == b"done"
    assert got == [body, b"after-it!"]


async def test_100_continue_then_a_body_read_past_the_parser() -> None:
    body = b"c" * 300_000
    async with memory_connection(digest_app) as client:
        with trio.fail_after(10):
            await client.stream.send_all(
                b"PUT / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body)
            )
            interim = await client.stream.receive_some()
            assert interim.startswith(b"HTTP/1.1 100 ")
            await client.stream.send_all(body)
            response = await client.read_response()
    assert response.status == 200 and response.body == _answer(body)


async def test_a_body_cut_short_is_a_400_that_counts_what_arrived(caplog: pytest.LogCaptureFixture) -> None:
    """The parser's count of the bytes read past it is right: h11's message says how many came."""
    caplog.set_level(logging.INFO, logger="trio_rack")
    async with memory_connection(digest_app) as client:
        with trio.fail_after(10):
            await client.stream.send_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n")
            await trio.testing.wait_all_tasks_blocked()
            await client.stream.send_all(b"d" * 123_457)
            await trio.testing.wait_all_tasks_blocked()
            await client.stream.send_eof()
            response = await client.read_response()
    assert response.status == 400
    assert any("received 123457 bytes, expected 1000000" in r.getMessage() for r in caplog.records)


async def test_the_body_limit_still_refuses_a_declared_length_over_it() -> None:
    async with memory_connection(digest_app, limits=Limits(max_body_size=100_000)) as client:
        with trio.fail_after(10):
            await client.stream.send_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100001\r\n\r\n")
            response = await client.read_response()
    assert response.status == 413


async def test_a_body_at_the_limit_is_read_past_the_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    direct = _count_direct_reads(monkeypatch)
    body = b"e" * 100_000
    async with memory_connection(digest_app, limits=Limits(max_body_size=100_000)) as client:
        with trio.fail_after(10):
            await client.stream.send_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
            await trio.testing.wait_all_tasks_blocked()
            await client.stream.send_all(body)
            response = await client.read_response()
    assert response.status == 200 and response.body == _answer(body)
    assert sum(direct) == len(body)


async def test_a_big_piece_read_in_small_reads_comes_out_whole_and_in_order() -> None:
    """``rack.input`` hands a 1 MiB piece out in reads of any size (a view of the rest, not a
    copy of it per read): the same bytes, in order, and after a partial read a full hijack
    still gets the rest of the piece first."""
    body = random.Random(9).randbytes(1_500_000)
    got: list[bytes] = []

    async def app(env: dict[str, Any]) -> Any:
        rack_input = env["rack.input"]
        parts, sizes = [], [7, 65536, 1, 300_000, 4096]
        for i in range(20):
            parts.append(await rack_input.receive_some(sizes[i % len(sizes)]))
        stream = env["rack.hijack"]()
        rest = len(body) - sum(map(len, parts))
        while rest:
            chunk = await stream.receive_some()
            rest -= len(chunk)
            parts.append(chunk)
        got.append(b"".join(parts))
        await stream.send_all(b"done")
        return -1, {}, []

    async with memory_connection(app) as client:
        with trio.fail_after(10):
            await client.stream.send_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body))
            await trio.testing.wait_all_tasks_blocked()
            await client.stream.send_all(body)
            assert await client.stream.receive_some() == b"done"
    assert got == [body]


@pytest.mark.parametrize("scheme", ["http", "https"])
async def test_over_real_sockets_and_tls_the_body_ends_where_it_should(
    scheme: str, http1_parser: str, tls_files: TLSFiles
) -> None:
    """A real server on loopback, plain TCP and TLS (where ``SSLStream`` decrypts past the body
    into its own buffer, and a direct read must still stop at the body's end): a 3 MB body with
    the next request in the same write, then a hijack after a partial read with bytes behind
    the body, then 100-continue; each answer from the bytes that belong to it."""
    body = random.Random(11).randbytes(3_000_000)

    async def app(env: dict[str, Any]) -> Any:
        rack_input = env["rack.input"]
        if env["PATH_INFO"] != "/hijack":
            return 200, {"content-type": "text/plain"}, [_answer(await rack_input.read_all())]
        parts = [await rack_input.receive_some(1000)]
        stream = env["rack.hijack"]()
        want = int(env["CONTENT_LENGTH"]) + len(b"after-it!")
        while sum(map(len, parts)) < want and (chunk := await stream.receive_some()):
            parts.append(chunk)
        answer = _answer(b"".join(parts))
        response = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % len(answer)
        await stream.send_all(response + answer)
        await stream.aclose()
        return -1, {}, []

    tls = tls_files if scheme == "https" else None
    head = b"POST /%b HTTP/1.1\r\nHost: x\r\n%bContent-Length: %d\r\n\r\n"
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            kwargs: dict[str, Any] = {"bind": f"{scheme}://127.0.0.1:0", "access_log": False}
            kwargs["http1_parser"] = http1_parser
            if tls is not None:
                kwargs.update(cert=tls.cert_pem, key=tls.key_pem)
            bind = (await nursery.start(functools.partial(trio_rack.serve, app, **kwargs)))[0]

            async with await open_client(bind, tls) as client:
                following = b"GET /b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                await client.send_all(head % (b"a", b"", len(body)) + body + following)
                data, _ = await read_until_eof(client)
                answers = [r.body for r in parse_responses(data)]
                assert answers == [_answer(body), _answer(b"")]

            async with await open_client(bind, tls) as client:
                await client.send_all(head % (b"hijack", b"", len(body)) + body + b"after-it!")
                data, _ = await read_until_eof(client)
                assert data.endswith(b"\r\n\r\n" + _answer(body + b"after-it!"))

            async with await open_client(bind, tls) as client:
                await client.send_all(head % (b"c", b"Expect: 100-continue\r\nConnection: close\r\n", len(body)))
                interim = await read_until(client, b"\r\n\r\n")
                assert interim.startswith(b"HTTP/1.1 100 ")
                await client.send_all(body)
                data, _ = await read_until_eof(client)
                assert [r.body for r in parse_responses(data)] == [_answer(body)]
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("max_body_size", "piece", "largest_read"),
    [
        (None, 65536, 256 * 1024),  # BODY_RECEIVE_SIZE, as the reads through the parser
        (10_000_000, 65536, 64 * 1024),  # RECEIVE_SIZE under a size limit
        (None, 600_000, 600_000),  # the app's own piece, when bigger
        (None, None, DIRECT_BODY_SIZE),  # everything at once (read_all's reads)
    ],
)
async def test_an_app_reading_in_pieces_gets_direct_reads_sized_by_its_piece(
    max_body_size: int | None, piece: int | None, largest_read: int
) -> None:
    """What a direct read brought is held until the app has read it: an app reading 64 KiB
    at a time (as the ASGI and WSGI adapters do) must not make the driver ask the wire for
    1 MiB per read, or each upload it reads would hold 1 MiB; only a read of everything asks
    for DIRECT_BODY_SIZE.  The largest read of the body asked for is exactly the piece's."""
    body = random.Random(11).randbytes(3_000_000)
    got: list[bytes] = []

    async def app(env: dict[str, Any]) -> Any:
        rack_input = env["rack.input"]
        parts = []
        while data := await rack_input.receive_some(piece):
            parts.append(data)
        got.append(b"".join(parts))
        return 200, {"content-type": "text/plain"}, [b"ok"]

    head = b"POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % len(body)
    client, server = trio.testing.memory_stream_pair()
    recording = RecordingStream(server)
    state = ServerState(app, Limits(max_body_size=max_body_size), access_log=False)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_serve, recording, state)
            await client.send_all(head)
            await trio.testing.wait_all_tasks_blocked()
            await client.send_all(body)
            data = await read_until_closed(client)
            nursery.cancel_scope.cancel()
    assert data.startswith(b"HTTP/1.1 200 ") and data.endswith(b"ok")
    assert got == [body]
    asked, total = [], 0
    for size, n in recording.reads:
        if total >= len(head):
            asked.append(size)
        total += n
    assert asked and max(a or 0 for a in asked) == largest_read
