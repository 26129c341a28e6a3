"""The article's full hijack: ``env["rack.hijack"]()`` and an HTTP head written by hand.

Calling ``env["rack.hijack"]()`` hands the app the raw connection as a ``trio.abc.Stream``
(TLS already decrypted); the server writes nothing for this request and ignores the triple
the app returns — ``(-1, {}, [])`` by convention, as in Rack.  Bytes the client sent right
behind the request head (a pipelined request, a body the server had not read yet) come out of
``stream.receive_some()`` first, so nothing is lost.

Everything HTTP is now the app's job: the status line, the headers, the framing.  This head
has no ``content-length`` and says ``connection: close``, so the client reads until the
connection closes — which the server does for the app when ``app`` returns, raises or is
cancelled (the article's ``ensure stream.close``).  As the article says: this is rife with
gotchas; prefer a streaming body (``examples/clock.py``).

Try it (``-i`` shows the head the app wrote — note there is no ``server: trio-rack``)::

    trio-rack serve examples/full_hijack.py
    curl -i --cacert "$(trio-rack certs | head -1)" https://localhost:9292/
"""

from __future__ import annotations

import time
from typing import Any

import trio

from trio_rack.types import App

HEAD = [
    "HTTP/1.1 200 OK",
    "content-type: text/plain",
    "connection: close",
]


def now() -> bytes:
    """One tick: the local time, as Ruby's ``Time.now`` prints it, and a blank line."""
    return time.strftime("%Y-%m-%d %H:%M:%S %z\n\n").encode("ascii")


def make_app(*, ticks: int = 5, interval: float = 1.0) -> App:
    async def app(env: dict[str, Any]) -> Any:
        stream: trio.abc.Stream = env["rack.hijack"]()
        await stream.send_all("".join(line + "\r\n" for line in HEAD).encode("ascii") + b"\r\n")
        for _ in range(ticks):
            await stream.send_all(now())
            await trio.sleep(interval)
        return -1, {}, []

    return app


app = make_app()
