"""A streamed HTTP/1.1 body is framed byte for byte as h11 frames it, whichever path framed it.

The driver frames small chunks of a chunked body itself (``http1/connection.py``,
``_CHUNKED_WRITER``: h11's event machinery was most of a streamed chunk's cost) and leaves
large ones, the end and every other framing to h11; the wire must not tell the two apart.
"""

from __future__ import annotations

from typing import Any

import h11

from trio_rack.testing import memory_connection, read_until_closed

#: Around the fast path's bounds: 1 byte, hex-width changes, 64 KiB (the largest it frames), more.
SIZES = [1, 15, 16, 255, 256, 4095, 4096, 65535, 65536, 65537, 200_000, 3]


async def chunks(env: dict[str, Any]) -> Any:
    async def body() -> Any:
        for i, size in enumerate(SIZES):
            yield bytes([65 + i % 26]) * size

    return 200, {"content-type": "application/octet-stream"}, body()


def h11_framing() -> bytes:
    """The same body as a server-side h11 connection frames it, every chunk through h11."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert type(conn.next_event()) is h11.Request
    conn.send(h11.Response(status_code=200, headers=[(b"transfer-encoding", b"chunked")]))
    out = b""
    for i, size in enumerate(SIZES):
        out += conn.send(h11.Data(data=bytes([65 + i % 26]) * size)) or b""
    return out + (conn.send(h11.EndOfMessage()) or b"")


async def test_streamed_chunks_are_framed_as_h11_frames_them(http1_parser: str) -> None:
    async with memory_connection(chunks, http1_parser=http1_parser) as client:
        await client.stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        wire = await read_until_closed(client.stream)
    head, _, body = wire.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head.lower()
    assert body == h11_framing()
