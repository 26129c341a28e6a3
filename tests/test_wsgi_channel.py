"""The WSGI adapter opens its body channel only for a response that needs one (wsgi.py).

A whole response (a list, or an iterable that ended before the loop took the head) goes out
with no channel; a streamed one gets exactly one, opened on the loop by whichever side needs
it first: the rack call taking the head, or a thread already past ``PENDING_LIMIT``.  These
tests pin both paths and the bodies they deliver, over the real connection loop (both
protocols) with real worker threads.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
import trio

from trio_rack import wsgi
from trio_rack.testing import memory_connection
from trio_rack.wsgi import WSGIAdapter


@pytest.fixture
def channels(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the memory channels the WSGI adapter opens while the test runs (trio's own
    function, wrapped; calls from anywhere but ``trio_rack.wsgi`` are not counted)."""
    opened: list[int] = []
    real = trio.open_memory_channel

    class Counting:
        def __getitem__(self, item: Any) -> Any:
            return self

        def __call__(self, size: float) -> Any:
            if sys._getframe(1).f_globals.get("__name__") == "trio_rack.wsgi":
                opened.append(1)
            return real(size)

    monkeypatch.setattr(wsgi.trio, "open_memory_channel", Counting())
    return opened


def whole_list(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"whole ", b"list"]


def one_chunk_iterator(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return iter([b"one chunk"])


def slow_stream(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    yield b"first "
    time.sleep(0.2)  # the loop takes the head meanwhile: the rest is streamed
    yield b"second"


def big_stream(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
    """Far past PENDING_LIMIT at once: the thread may need the channel before the head is taken."""
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    for i in range(64):
        yield bytes([i]) * 16384


async def test_whole_responses_open_no_channel(channels: list[int], protocol: str) -> None:
    for app, body in ((whole_list, b"whole list"), (one_chunk_iterator, b"one chunk")):
        async with memory_connection(WSGIAdapter(app), protocol=protocol) as client:
            response = await client.request("GET", "/")
            again = await client.request("GET", "/")
        assert (response.status, response.body) == (200, body)
        assert (again.status, again.body) == (200, body)
    assert channels == []


async def test_a_streamed_response_opens_one_channel(channels: list[int], protocol: str) -> None:
    async with memory_connection(WSGIAdapter(slow_stream), protocol=protocol) as client:
        response = await client.request("GET", "/")
    assert (response.status, response.body) == (200, b"first second")
    assert channels == [1]


async def test_a_body_past_the_pending_limit_arrives_whole_and_in_order(channels: list[int], protocol: str) -> None:
    assert 64 * 16384 > wsgi.PENDING_LIMIT
    async with memory_connection(WSGIAdapter(big_stream), protocol=protocol) as client:
        response = await client.request("GET", "/")
        again = await client.request("GET", "/")
    expected = b"".join(bytes([i]) * 16384 for i in range(64))
    assert response.status == 200 and response.body == expected
    assert again.body == expected
    assert channels == [1, 1]


class _ClaimsToBeDone:
    """An iterator whose hint says nothing is left while chunks past PENDING_LIMIT follow."""

    def __init__(self) -> None:
        self.chunks = [b"a" * 10, b"b" * (2 * wsgi.PENDING_LIMIT), b"c"]

    def __iter__(self) -> _ClaimsToBeDone:
        return self

    def __next__(self) -> bytes:
        if not self.chunks:
            raise StopIteration
        return self.chunks.pop(0)

    def __length_hint__(self) -> int:
        return 0


def claims_to_be_done(environ: dict[str, Any], start_response: Any) -> _ClaimsToBeDone:
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    return _ClaimsToBeDone()


async def test_an_iterator_whose_hint_is_wrong_is_streamed_whole(channels: list[int], protocol: str) -> None:
    """Only a list's or tuple's iterator is believed at its end: another's hint of 0 while more
    follows (past PENDING_LIMIT) still wakes the loop at its first chunk, so the thread's channel
    sends find a reader and the body arrives whole, streamed."""
    with trio.fail_after(30):
        async with memory_connection(WSGIAdapter(claims_to_be_done), protocol=protocol) as client:
            response = await client.request("GET", "/")
    assert (response.status, response.body) == (200, b"a" * 10 + b"b" * (2 * wsgi.PENDING_LIMIT) + b"c")
    assert channels == [1]
