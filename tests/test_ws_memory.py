"""What an idle websocket keeps alive on the server (issue #12 point 4, bench/ws_probe.py).

A full hijack hands the raw connection to the app: the HTTP/1 driver's parser is never used
again (what it had buffered went with the hijacked stream), so the driver releases it, and a
long-lived websocket does not hold it.  Checked on both parsers, over the real connection loop.
"""

from __future__ import annotations

from typing import Any

import trio

from trio_rack.testing import memory_connection


async def test_full_hijack_releases_the_parser_and_keeps_the_pipelined_bytes(http1_parser: str) -> None:
    seen: dict[str, Any] = {}

    async def app(env: dict[str, Any]) -> Any:
        hijack = env["rack.hijack"]
        driver = hijack.__self__.sink  # the HTTP/1 driver of this connection
        seen["before"] = driver.h11
        stream = hijack()
        seen["after"] = driver.h11
        seen["replayed"] = await stream.receive_some(100)  # what came right behind the head
        await stream.send_all(b"raw bytes\n")
        await stream.aclose()
        return -1, {}, []

    async with memory_connection(app) as client:
        await client.stream.send_all(b"GET / HTTP/1.1\r\nHost: test\r\n\r\npipelined")
        received = b""
        with trio.fail_after(5):
            while chunk := await client.stream.receive_some(100):
                received += chunk
    assert seen["before"] is not None
    assert seen["after"] is None
    assert seen["replayed"] == b"pipelined"
    assert received == b"raw bytes\n"
