"""A finished request leaves no reference cycles: its objects go by reference counting.

A cycle per request (the exchange's env holding its bound methods) was freed only by the
cyclic garbage collector, with the request's buffers (RSS grew by hundreds of MiB after large
uploads) and with full collections that stalled the event loop for tens of milliseconds.
"""

from __future__ import annotations

import gc
from collections import Counter

import pytest

from trio_rack.testing import memory_connection


async def hello(env: dict[str, object]) -> tuple[int, dict[str, str], list[bytes]]:
    return 200, {"content-type": "text/plain"}, [b"Hello, world!"]


async def echo(env: dict[str, object]) -> tuple[int, dict[str, str], list[bytes]]:
    body = b""
    while chunk := await env["rack.input"].receive_some():  # type: ignore[attr-defined]
        body += chunk
    return 200, {"content-type": "application/octet-stream"}, [body]


@pytest.mark.parametrize(("app", "body"), [(hello, b"x" * 10), (echo, b"x" * 100_000)], ids=["hello", "upload"])
async def test_keep_alive_requests_leave_no_cyclic_garbage(app, body: bytes, http1_parser: str) -> None:
    async with memory_connection(app, http1_parser=http1_parser) as client:
        for _ in range(5):  # warm up: first-use caches, lazily made objects
            await client.request("POST", "/", body=body)
        gc.collect()
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            for _ in range(20):
                response = await client.request("POST", "/", body=body)
                assert response.status == 200
            gc.collect()
            left = Counter(type(o).__qualname__ for o in gc.garbage)
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
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
