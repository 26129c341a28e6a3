"""Echo: a streaming body that sends the request body back as it arrives.

``body(stream)`` gets one ``trio.abc.Stream`` for both directions: ``stream.receive_some()``
reads the (de-chunked) request body and returns ``b""`` at its end; ``stream.send_all()``
writes response bytes, chunked by the server.  Nothing is buffered whole: each piece goes back
out as soon as it came in, and back-pressure is the socket's.  A client that sent
``Expect: 100-continue`` gets its ``100 Continue`` on the first read.

Try it::

    trio-rack serve examples/echo.py
    curl --cacert "$(trio-rack certs | head -1)" --data-binary @README.md https://localhost:9292/
    # a chunked upload, from a pipe:
    cat README.md | curl --cacert "$(trio-rack certs | head -1)" -T - https://localhost:9292/
"""

from __future__ import annotations

from typing import Any

import trio


async def app(env: dict[str, Any]) -> Any:
    async def body(stream: trio.abc.Stream) -> None:
        while data := await stream.receive_some():
            await stream.send_all(data)

    content_type = env.get("CONTENT_TYPE") or "application/octet-stream"
    return 200, {"content-type": content_type}, body
