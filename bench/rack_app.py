"""The benchmark endpoints as a trio-rack app (``trio-rack serve bench/rack_app.py``).

The same endpoints, byte for byte in their bodies, as :mod:`asgi_app` serves to the peers:

=====================  ====================================================================
``GET /``              13 bytes, ``Hello, world!`` (buffered: ``content-length``)
``GET /stream?s=S``    a long-lived stream: one byte at once, then one a second, S+1 bytes
                       in all, chunked (an async generator body)
``GET /big``           256 MiB, ``content-length``: the same 1 MiB ``bytes`` object 256
                       times, so a request holds 1 MiB, not 256
``POST /upload``       the request body read whole and echoed back (``content-length``)
``GET /stats``         ``{"pid": ..., "requests": ..., "connections": ...}`` of the process
                       that answers (``?reset=1``: then zero them): per-worker counts for
                       the workers scenario
=====================  ====================================================================

Every request but ``/stats`` itself counts (a counter and a set of client addresses, so
``connections`` is the number of distinct client ports seen), in both apps, so the
bookkeeping costs every server the same.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from typing import Any

import trio

HELLO = b"Hello, world!"
CHUNK = b"x" * (1 << 20)
BIG = [CHUNK] * 256
TEXT = {"content-type": "text/plain"}
OCTETS = {"content-type": "application/octet-stream"}

_requests = 0
_peers: set[tuple[str, Any]] = set()


async def app(env: dict[str, Any]) -> tuple[int, dict[str, str], Any]:
    global _requests
    path = env["PATH_INFO"]
    if path == "/stats":
        stats = {"pid": os.getpid(), "requests": _requests, "connections": len(_peers)}
        if env["QUERY_STRING"] == "reset=1":
            _requests = 0
            _peers.clear()
        return 200, {"content-type": "application/json"}, [json.dumps(stats).encode()]
    _requests += 1
    _peers.add((env["REMOTE_ADDR"], env["REMOTE_PORT"]))
    if path == "/":
        return 200, TEXT, [HELLO]
    if path == "/stream":
        return 200, TEXT, _dribble(_seconds(env["QUERY_STRING"]))
    if path == "/big":
        return 200, OCTETS, BIG
    if path == "/upload":
        data = await env["rack.input"].read_all()
        return 200, OCTETS, [data]
    return 404, TEXT, [b"not found"]


def _seconds(query: str) -> int:
    for part in query.split("&"):
        if part.startswith("s="):
            return max(0, min(int(part[2:]), 3600))
    return 10


async def _dribble(seconds: int) -> AsyncIterator[bytes]:
    yield b"."
    for _ in range(seconds):
        await trio.sleep(1)
        yield b"."
