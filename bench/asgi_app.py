"""The benchmark endpoints as an ASGI app, for the peers (Hypercorn, Uvicorn, Granian).

Same endpoints and bodies as :mod:`rack_app` (see its table): ``/``, ``/stream?s=S``,
``/big``, ``/upload``, ``/stats``.  The stream sleeps with whatever event loop runs it
(Trio under Hypercorn's trio worker, asyncio elsewhere), found through ``sniffio``.
"""

from __future__ import annotations

import json
import os
from typing import Any

HELLO = b"Hello, world!"
CHUNK = b"x" * (1 << 20)
BIG_COUNT = 256
TEXT = [(b"content-type", b"text/plain")]
HELLO_HEADERS = TEXT + [(b"content-length", b"13")]
BIG_HEADERS = [
    (b"content-type", b"application/octet-stream"),
    (b"content-length", str(BIG_COUNT << 20).encode()),
]

_requests = 0
_peers: set[Any] = set()


async def _sleep(seconds: float) -> None:
    try:
        import sniffio

        library = sniffio.current_async_library()
    except (ImportError, RuntimeError):  # no sniffio, or a loop it does not know
        library = "asyncio"
    if library == "trio":
        import trio

        await trio.sleep(seconds)
    else:
        import asyncio

        await asyncio.sleep(seconds)


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    global _requests
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    path = scope["path"]
    if path == "/stats":
        stats = {"pid": os.getpid(), "requests": _requests, "connections": len(_peers)}
        if scope.get("query_string") == b"reset=1":
            _requests = 0
            _peers.clear()
        body = json.dumps(stats).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        return
    _requests += 1
    client = scope.get("client")
    _peers.add(tuple(client) if client else None)
    if path == "/":
        await send(
            {"type": "http.response.start", "status": 200, "headers": HELLO_HEADERS}
        )
        await send({"type": "http.response.body", "body": HELLO})
    elif path == "/stream":
        seconds = _seconds(scope.get("query_string", b"").decode("latin-1"))
        await send({"type": "http.response.start", "status": 200, "headers": TEXT})
        await send({"type": "http.response.body", "body": b".", "more_body": True})
        for _ in range(seconds):
            await _sleep(1)
            await send({"type": "http.response.body", "body": b".", "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    elif path == "/big":
        await send(
            {"type": "http.response.start", "status": 200, "headers": BIG_HEADERS}
        )
        for _ in range(BIG_COUNT - 1):
            await send({"type": "http.response.body", "body": CHUNK, "more_body": True})
        await send({"type": "http.response.body", "body": CHUNK})
    elif path == "/upload":
        parts = []
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            parts.append(message.get("body", b""))
            more = message.get("more_body", False)
        data = b"".join(parts)
        headers = [
            (b"content-type", b"application/octet-stream"),
            (b"content-length", str(len(data)).encode()),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": data})
    else:
        await send({"type": "http.response.start", "status": 404, "headers": TEXT})
        await send({"type": "http.response.body", "body": b"not found"})


def _seconds(query: str) -> int:
    for part in query.split("&"):
        if part.startswith("s="):
            return max(0, min(int(part[2:]), 3600))
    return 10
