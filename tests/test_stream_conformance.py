"""Every stream class handed to apps passes trio's own stream conformance checks.

``rack.input`` (:class:`RequestBody`) is a one-way stream; the streaming body's stream
(:class:`ResponseStream`) is two-way (it sends the response, receives the request body); the
hijacked stream is two-way.  The first two are wired to in-memory one-way pairs through the
small protocols they are typed against (``BodySource``/``BodySink``), so the check exercises
the classes themselves: closed-ness, busy guards, EOF, ``max_bytes``, cancellation.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from trio_rack.app.streams import HijackedStream, RequestBody, ResponseStream


class PipeSource:
    """A BodySource reading from a memory receive stream."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self.stream = stream

    async def receive_body(self, size_hint: int | None = None) -> bytes:
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


class ClosableSink(PipeSink):
    """A PipeSink that records whether the response was ended (``end``) and whose
    ``wait_send_all_might_not_block`` blocks until cancelled, like a client that does not read."""

    def __init__(self, stream: trio.abc.SendStream) -> None:
        super().__init__(stream)
        self.ended = False
        self.waiting = trio.Event()

    async def end(self) -> None:
        self.ended = True
        await super().end()

    async def wait_send_all_might_not_block(self) -> None:
        self.waiting.set()
        await trio.sleep_forever()


async def test_closing_during_a_writability_wait_ends_the_response_cleanly() -> None:
    """Nothing was half-sent, so the response is complete, not aborted; the waiter is told."""
    out, _peer = trio.testing.memory_stream_one_way_pair()
    _unused, into = trio.testing.memory_stream_one_way_pair()
    sink = ClosableSink(out)
    stream = ResponseStream(sink, RequestBody(PipeSource(into)))
    outcome: list[str] = []

    async def waiter() -> None:
        try:
            await stream.wait_send_all_might_not_block()
        except trio.ClosedResourceError:
            outcome.append("closed")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await sink.waiting.wait()
        await stream.aclose()
    assert outcome == ["closed"]
    assert not stream.aborted
    assert sink.ended


async def test_closing_during_a_send_still_aborts_the_response() -> None:
    """A send cut off mid-way may have written part of the bytes: only an abort is honest."""
    out, _peer = trio.testing.lockstep_stream_one_way_pair()  # send_all blocks: nobody reads
    _unused, into = trio.testing.memory_stream_one_way_pair()
    sink = ClosableSink(out)
    stream = ResponseStream(sink, RequestBody(PipeSource(into)))
    started = trio.Event()

    async def sender() -> None:
        started.set()
        with pytest.raises(trio.ClosedResourceError):
            await stream.send_all(b"x" * 100)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender)
        await started.wait()
        await trio.testing.wait_all_tasks_blocked()
        await stream.aclose()
    assert stream.aborted
    assert not sink.ended
