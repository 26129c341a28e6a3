"""The zero-copy path: bodies naming a file go out with ``os.sendfile`` on plain TCP.

Real sockets against a real server; the evidence that ``os.sendfile`` carried the bytes is the
driver's own counter, ``trio_rack.http1.sendfile_bytes()`` (this process only: each test reads
the counter's delta around its own requests, and no other test sends files concurrently).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import h11
import trio

from e2e_support import open_client, read_until_eof, start_server
from trio_rack import Limits, http1
from trio_rack.files import FileBody

MIB = 1024 * 1024


class PathBody:
    """Rack's ``to_path`` shape without FileBody: a path, an offset, a length, and an iterable fallback."""

    def __init__(self, path: Path, offset: int, length: int) -> None:
        self.path, self.offset, self.length = path, offset, length

    def __iter__(self):
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            yield f.read(self.length)


def file_app(path: Path, data_len: int):
    async def app(env):
        query = env["QUERY_STRING"]
        if query == "chunked":  # no content-length: h11 frames the file's bytes as chunks
            return 200, {"content-type": "application/octet-stream"}, FileBody(path)
        if query == "slice":
            return 200, {"content-length": "1000"}, PathBody(path, 5000, 1000)
        if query == "short":  # claims more than the file holds
            return 200, {"content-length": str(data_len + 10)}, FileBody(path)
        return 200, {"content-length": str(data_len)}, FileBody(path)

    return app


def parse_responses(raw: bytes, methods: list[bytes]) -> list[tuple[h11.Response, bytes]]:
    """Parse pipelined responses off the wire with h11 as a client would."""
    client = h11.Connection(h11.CLIENT)
    client.receive_data(raw)
    out = []
    for method in methods:
        client.send(h11.Request(method=method, target="/", headers=[("host", "x")]))
        client.send(h11.EndOfMessage())
        response, body = None, b""
        while True:
            event = client.next_event()
            if type(event) is h11.Response:
                response = event
            elif type(event) is h11.Data:
                body += event.data
            elif type(event) is h11.EndOfMessage:
                break
            else:
                raise AssertionError(f"unexpected {event!r}")
        out.append((response, body))
        if client.our_state is h11.DONE and client.their_state is h11.DONE:
            client.start_next_cycle()
    return out


async def test_chunked_ranged_and_head_file_bodies_keep_framing_over_keep_alive(tmp_path):
    data = os.urandom(2 * MIB + 123)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            bind = await start_server(nursery, file_app(path, len(data)))
            stream = await open_client(bind)
            before = http1.sendfile_bytes()
            await stream.send_all(
                b"GET /?chunked HTTP/1.1\r\nHost: x\r\n\r\n"
                b"GET /?slice HTTP/1.1\r\nHost: x\r\n\r\n"
                b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n"
                b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
            raw, how = await read_until_eof(stream)
            sent = http1.sendfile_bytes() - before
            await stream.aclose()
            nursery.cancel_scope.cancel()
    assert how == "eof"
    (chunked, cbody), (sliced, sbody), (head, hbody), (whole, wbody) = parse_responses(
        raw, [b"GET", b"GET", b"HEAD", b"GET"]
    )
    assert (b"transfer-encoding", b"chunked") in chunked.headers and cbody == data
    assert sliced.status_code == 200 and sbody == data[5000:6000]
    assert head.status_code == 200 and hbody == b"" and (b"content-length", str(len(data)).encode()) in head.headers
    assert wbody == data
    # Every body byte went through os.sendfile: the chunked file, the slice and the whole file; HEAD none.
    assert sent == 2 * len(data) + 1000


async def test_a_file_shorter_than_its_content_length_aborts_the_response_visibly(tmp_path):
    data = os.urandom(300_000)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            bind = await start_server(nursery, file_app(path, len(data)))
            stream = await open_client(bind)
            await stream.send_all(b"GET /?short HTTP/1.1\r\nHost: x\r\n\r\n")
            raw, _ = await read_until_eof(stream)
            await stream.aclose()
            nursery.cancel_scope.cancel()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert f"content-length: {len(data) + 10}".encode() in head
    assert body == data  # the connection closed short of content-length: the client sees a truncation


async def test_a_client_that_stops_reading_a_sendfile_body_hits_the_write_timeout(tmp_path, caplog):
    """The liveness sweep sees the blocked ``os.sendfile`` (Writer.blocked_since) and drops the request."""
    data = os.urandom(1024 * 1024) * 48  # far more than the socket buffers of both ends hold
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    limits = Limits(write_timeout=0.5, liveness_interval=0.1)
    caplog.set_level(logging.INFO, logger="trio_rack")
    timed_out = trio.Event()
    caplog.handler.addFilter(lambda record: ("write timeout" in record.getMessage() and timed_out.set()) or True)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            bind = await start_server(nursery, file_app(path, len(data)), limits=limits)
            stream = await open_client(bind)
            before = http1.sendfile_bytes()
            await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            await stream.receive_some(65536)  # the head and the first bytes: then stop reading
            await timed_out.wait()
            sent = http1.sendfile_bytes() - before
            received, _ = await read_until_eof(stream)  # the server closed the connection
            await stream.aclose()
            nursery.cancel_scope.cancel()
    assert 0 < sent < len(data) and len(received) < len(data)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_client_that_leaves_mid_sendfile_costs_no_traceback(tmp_path, caplog):
    data = os.urandom(1024 * 1024) * 32
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    caplog.set_level(logging.INFO, logger="trio_rack")
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            bind = await start_server(nursery, file_app(path, len(data)), limits=Limits(liveness_interval=0.1))
            stream = await open_client(bind)
            await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            await stream.receive_some(65536)
            await stream.aclose()  # gone with most of the file unsent
            # Another request on a new connection is served: the server is fine.
            second = await open_client(bind)
            await second.send_all(b"GET /?slice HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            raw, _ = await read_until_eof(second)
            await second.aclose()
            nursery.cancel_scope.cancel()
    assert raw.endswith(data[5000:6000])
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def missing_file_app(tmp_path: Path):
    """``?missing``: a FileBody naming no file; ``?dir``: one naming a directory; else a real file."""
    real = tmp_path / "real.txt"
    real.write_bytes(b"still serving")

    async def app(env):
        query = env["QUERY_STRING"]
        if query == "missing":
            return 200, {"content-length": "10"}, FileBody(tmp_path / "gone.bin")
        if query == "dir":
            return 200, {}, FileBody(tmp_path)
        return 200, {"content-length": "13"}, FileBody(real)

    return app


async def test_a_missing_or_non_regular_file_is_a_500_before_any_200_head(tmp_path, caplog):
    """The file is opened before the head goes out: over sendfile (real TCP) a file that is
    not there, or a directory, is a clean 500 with the reason logged; the server serves on."""
    caplog.set_level(logging.INFO, logger="trio_rack")
    answers = []
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            bind = await start_server(nursery, missing_file_app(tmp_path))
            for query in (b"missing", b"dir", b"real"):
                stream = await open_client(bind)
                await stream.send_all(b"GET /?" + query + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                raw, how = await read_until_eof(stream)
                await stream.aclose()
                assert how == "eof"
                answers.append(parse_responses(raw, [b"GET"])[0])
            nursery.cancel_scope.cancel()
    (missing, _), (directory, _), (real, body) = answers
    assert missing.status_code == 500 and directory.status_code == 500
    assert real.status_code == 200 and body == b"still serving"
    text = caplog.text
    assert "gone.bin" in text and "cannot be opened" in text and "not a regular file" in text
    assert "Traceback" not in text
