"""The article's partial hijack: a ``rack.hijack`` response header holding the clock.

The server sends the status line and the other headers — with no body framing, no
``content-length`` nor ``transfer-encoding`` — and then awaits ``hijack(stream)`` with the raw
connection (TLS already decrypted).  From there on the app speaks whatever it likes; the
client reads until the connection closes, and the connection is never reused.  The server
closes the stream when ``hijack`` returns, raises or is cancelled, so the article's
``ensure stream.close`` is built in.

Rack 3's streaming bodies (``examples/clock.py``) do the same job with framing and keep-alive;
prefer them.  Partial hijack remains useful for protocols that take over after an HTTP head.

Try it (``-i`` shows the head the server sent for the app)::

    trio-rack serve examples/partial_hijack.py
    curl -i --cacert "$(trio-rack certs | head -1)" https://localhost:9292/
"""

from __future__ import annotations

import time
from typing import Any

import trio

from trio_rack.types import App


def now() -> bytes:
    """One tick: the local time, as Ruby's ``Time.now`` prints it, and a blank line."""
    return time.strftime("%Y-%m-%d %H:%M:%S %z\n\n").encode("ascii")


def make_app(*, ticks: int = 5, interval: float = 1.0) -> App:
    async def app(env: dict[str, Any]) -> Any:
        async def hijack(stream: trio.abc.Stream) -> None:
            for _ in range(ticks):
                await stream.send_all(now())
                await trio.sleep(interval)

        return 200, {"content-type": "text/plain", "rack.hijack": hijack}, []

    return app


app = make_app()
