"""Every stream class handed to apps passes trio's own stream conformance checks.

``rack.input`` (:class:`RequestBody`) is a one-way stream; the streaming body's stream
(:class:`ResponseStream`) is two-way (it sends the response, receives the request body); the
hijacked stream is two-way.  The first two are wired to in-memory one-way pairs through the
small protocols they are typed against (``BodySource``/``BodySink``), so the check exercises
the classes themselves: closed-ness, busy guards, EOF, ``max_bytes``, cancellation.
"""

from __future__ import annotations

import trio
import trio.testing

from trio_rack.app.streams import HijackedStream, RequestBody, ResponseStream


class PipeSource:
    """A BodySource reading from a memory receive stream."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self.stream = stream

    async def receive_body(self) -> bytes:
        return bytes(await self.stream.receive_some())

    def discard_body(self) -> None:
        """Closing the body closes the pipe: the sender sees BrokenResourceError, as trio expects."""
        self.stream.close()  # type: ignore[attr-defined]  # trio's memory and lockstep streams have it


class PipeSink:
    """A BodySink writing to a memory send stream; ``end`` closes it (EOF on the other side)."""

    def __init__(self, stream: trio.abc.SendStream) -> None:
        self.stream = stream

    async def send_data(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def end(self) -> None:
        await self.stream.aclose()

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()


async def test_request_body_is_a_conforming_receive_stream() -> None:
    async def maker() -> tuple[trio.abc.SendStream, RequestBody]:
        send, receive = trio.testing.memory_stream_one_way_pair()
        return send, RequestBody(PipeSource(receive))

    async def clogged() -> tuple[trio.abc.SendStream, RequestBody]:
        send, receive = trio.testing.lockstep_stream_one_way_pair()
        return send, RequestBody(PipeSource(receive))

    await trio.testing.check_one_way_stream(maker, clogged)


def _response_pair(
    pair: object,
) -> tuple[ResponseStream, ResponseStream]:
    a_out, b_in = pair()  # type: ignore[operator]
    b_out, a_in = pair()  # type: ignore[operator]
    a = ResponseStream(PipeSink(a_out), RequestBody(PipeSource(a_in)))
    b = ResponseStream(PipeSink(b_out), RequestBody(PipeSource(b_in)))
    return a, b


async def test_response_stream_is_a_conforming_two_way_stream() -> None:
    async def maker() -> tuple[ResponseStream, ResponseStream]:
        return _response_pair(trio.testing.memory_stream_one_way_pair)

    async def clogged() -> tuple[ResponseStream, ResponseStream]:
        return _response_pair(trio.testing.lockstep_stream_one_way_pair)

    await trio.testing.check_two_way_stream(maker, clogged)


async def test_hijacked_stream_is_a_conforming_two_way_stream() -> None:
    async def maker() -> tuple[HijackedStream, HijackedStream]:
        a, b = trio.testing.memory_stream_pair()
        return HijackedStream(a, b""), HijackedStream(b, b"")

    async def clogged() -> tuple[HijackedStream, HijackedStream]:
        a, b = trio.testing.lockstep_stream_pair()
        return HijackedStream(a, b""), HijackedStream(b, b"")

    await trio.testing.check_two_way_stream(maker, clogged)


async def test_hijacked_stream_replays_what_was_read_ahead_first() -> None:
    a, b = trio.testing.memory_stream_pair()
    stream = HijackedStream(b, b"early bytes")
    await a.send_all(b" then the rest")
    assert await stream.receive_some(5) == b"early"
    assert await stream.receive_some() == b" bytes"
    assert await stream.receive_some() == b" then the rest"
    await stream.aclose()
