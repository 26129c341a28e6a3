"""Raw HTTP/2 frames for the protocol tests: build them with hyperframe, read the server's back.

Not a test module.  The attack-class tests write frames a well-behaved h2 client would never
send, so they bypass the client's state machine: :func:`raw_frames` reads what the server sends
as frames until it closes (or a predicate holds).
"""

from __future__ import annotations

from collections.abc import Callable

import hpack
import trio
from hyperframe.frame import Frame, GoAwayFrame, HeadersFrame

__all__ = ["FrameReader", "encode_request_headers", "goaway_of", "headers_frame"]


def encode_request_headers(path: str = "/", method: str = "GET", extra: list[tuple[str, str]] | None = None) -> bytes:
    encoder = hpack.Encoder()
    headers = [(":method", method), (":scheme", "http"), (":authority", "test"), (":path", path)]
    return bytes(encoder.encode(headers + (extra or [])))


def headers_frame(stream_id: int, block: bytes, *, end_headers: bool = True, end_stream: bool = True) -> bytes:
    frame = HeadersFrame(stream_id, data=block)
    if end_headers:
        frame.flags.add("END_HEADERS")
    if end_stream:
        frame.flags.add("END_STREAM")
    return bytes(frame.serialize())


class FrameReader:
    """Reads frames the server sends on ``stream`` (after its preface there is none)."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self.stream = stream
        self.buffer = bytearray()
        self.frames: list[Frame] = []
        self.closed = False
        self.received = 0

    def _parse(self) -> None:
        while len(self.buffer) >= 9:
            frame, length = Frame.parse_frame_header(memoryview(bytes(self.buffer[:9])))
            if len(self.buffer) < 9 + length:
                return
            frame.parse_body(memoryview(bytes(self.buffer[9 : 9 + length])))
            del self.buffer[: 9 + length]
            self.frames.append(frame)

    async def until(self, predicate: Callable[[list[Frame]], bool]) -> list[Frame]:
        while not predicate(self.frames) and not self.closed:
            try:
                data = await self.stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not data:
                self.closed = True
                break
            self.received += len(data)
            self.buffer += data
            self._parse()
        return self.frames

    async def until_closed(self) -> list[Frame]:
        return await self.until(lambda frames: False)


def goaway_of(frames: list[Frame]) -> GoAwayFrame | None:
    for frame in frames:
        if isinstance(frame, GoAwayFrame):
            return frame
    return None
