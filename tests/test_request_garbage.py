"""A finished request leaves no reference cycles: its objects go by reference counting.

A cycle per request (the exchange's env holding its bound methods) was freed only by the
cyclic garbage collector, with the request's buffers (RSS grew by hundreds of MiB after large
uploads) and with full collections that stalled the event loop for tens of milliseconds.
"""

from __future__ import annotations

import gc
from collections import Counter
from collections.abc import AsyncIterator

import h11
import pytest
import trio
import trio.testing

from trio_rack.testing import memory_connection


async def hello(env: dict[str, object]) -> tuple[int, dict[str, str], list[bytes]]:
    return 200, {"content-type": "text/plain"}, [b"Hello, world!"]


async def echo(env: dict[str, object]) -> tuple[int, dict[str, str], list[bytes]]:
    body = b""
    while chunk := await env["rack.input"].receive_some():  # type: ignore[attr-defined]
        body += chunk
    return 200, {"content-type": "application/octet-stream"}, [body]


async def streamed(env: dict[str, object]) -> tuple[int, dict[str, str], AsyncIterator[bytes]]:
    """A streamed body that holds no env: the exchange lets env go before sending it."""

    async def body() -> AsyncIterator[bytes]:
        yield b"Hello, "
        await trio.lowlevel.checkpoint()
        yield b"world!"

    return 200, {"content-type": "text/plain"}, body()


async def _cyclic_garbage_of_requests(app, http1_parser: str, method: str, body: bytes | None = None) -> Counter[str]:
    """The types of what 20 keep-alive requests (each answered 200) left for the cyclic
    collector, after 5 to warm up first-use caches and lazily made objects."""
    async with memory_connection(app, http1_parser=http1_parser) as client:
        for _ in range(5):
            await client.request(method, "/", body=body)
        gc.collect()
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            for _ in range(20):
                response = await client.request(method, "/", body=body)
                assert response.status == 200
            gc.collect()
            return Counter(type(o).__qualname__ for o in gc.garbage)
        finally:
            gc.set_debug(0)
            gc.garbage.clear()


@pytest.mark.parametrize(
    ("app", "body"),
    [(hello, b"x" * 10), (echo, b"x" * 100_000), (streamed, b"x" * 10)],
    ids=["hello", "upload", "streamed"],
)
async def test_keep_alive_requests_leave_no_cyclic_garbage(app, body: bytes, http1_parser: str) -> None:
    left = await _cyclic_garbage_of_requests(app, http1_parser, "POST", body)
    assert not left, left.most_common(10)



@pytest.mark.parametrize("app", [hello, streamed], ids=["hello", "streamed"])
async def test_bodyless_keep_alive_requests_leave_no_cyclic_garbage(app, http1_parser: str) -> None:
    """The same for requests without a body (GET), whose exchange the HTTP/1 driver runs
    outside the cycle's read scope, with the exchange's steps (begin, respond, finish) taken
    in its own frame: that path leaves nothing for the collector either."""
    left = await _cyclic_garbage_of_requests(app, http1_parser, "GET")
    assert not left, left.most_common(10)


async def test_env_callables_kept_past_the_request_fail_clearly(http1_parser: str) -> None:
    kept: list[dict[str, object]] = []

    async def app(env: dict[str, object]) -> tuple[int, dict[str, str], list[bytes]]:
        kept.append(env)
        return 200, {"content-type": "text/plain"}, [b"ok"]

    async with memory_connection(app, http1_parser=http1_parser) as client:
        assert (await client.request("GET", "/")).status == 200
    hijack = kept[0]["rack.hijack"]
    with pytest.raises(RuntimeError, match="this request is over"):
        hijack()  # type: ignore[operator]


class _Marker:
    """Something an app puts in env, to see (by weak reference) how long env lives."""


async def test_idle_keep_alive_connection_holds_no_finished_request(http1_parser: str) -> None:
    """Between keep-alive requests the connection keeps nothing of the last one: its env (and so
    whatever the app put there) goes by reference counting when the response is complete, not
    when the next request arrives (an idle connection would hold it for its keep-alive life)."""
    import weakref

    refs: list[weakref.ref[_Marker]] = []

    async def app(env: dict[str, object]) -> tuple[int, dict[str, str], list[bytes]]:
        marker = env["test.marker"] = _Marker()
        refs.append(weakref.ref(marker))
        return 200, {"content-type": "text/plain"}, [b"ok"]

    async with memory_connection(app, http1_parser=http1_parser) as client:
        assert (await client.request("GET", "/")).status == 200
        await trio.testing.wait_all_tasks_blocked()  # the server waits for the next request
        assert refs[0]() is None
        assert (await client.request("GET", "/")).status == 200  # the connection still serves


def _h11_requests() -> int:
    return sum(1 for o in gc.get_objects() if type(o) is h11.Request)


async def test_streamed_response_does_not_keep_the_parsed_request(http1_parser: str) -> None:
    """While a response streams (a long-lived one: a stream, a long poll), the driver does not
    keep h11's Request event (its header list, raw names, target): only the protocol-neutral
    head the env was built from."""
    release = trio.Event()

    async def app(env: dict[str, object]) -> tuple[int, dict[str, str], object]:
        async def body() -> AsyncIterator[bytes]:
            yield b"first"
            await release.wait()
            yield b"last"

        return 200, {"content-type": "text/plain"}, body()

    async with memory_connection(app, http1_parser=http1_parser) as client:
        gc.collect()
        before = _h11_requests()
        await client.stream.send_all(b"GET /stream HTTP/1.1\r\nHost: x\r\nX-Probe: 1\r\n\r\n")
        received = b""
        while b"first" not in received:
            received += await client.stream.receive_some(65536)
        await trio.testing.wait_all_tasks_blocked()  # the app waits, mid-response
        gc.collect()
        during = _h11_requests()
        release.set()
        while not received.endswith(b"0\r\n\r\n"):
            received += await client.stream.receive_some(65536)
    assert during == before
    assert b"last" in received
