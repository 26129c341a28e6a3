"""The article's streaming-body clock (Rack 3 ``body = proc do |stream| ... end``), on Trio.

The body is an async callable ``body(stream)``: the server sends the head, then awaits it with
a ``trio.abc.Stream``.  ``stream.send_all()`` writes body bytes, which the server frames (chunked
on HTTP/1.1, close-delimited on HTTP/1.0); returning ends the response, and the connection can
serve the next request.  There is no ``ensure stream.close``: the server closes the stream
whatever the body does — returns, raises, or is cancelled because the client left.

``await trio.sleep(1)`` is where the article's Puma example ties up a thread.  Here it yields
to Trio's scheduler, so one trio-rack process on one thread serves any number of clocks at
once — the article's experiment with two simultaneous ``curl``s takes about 5 s, not 10.

Try it (two terminals, or ``&``; both finish after about 5 s)::

    trio-rack serve examples/clock.py
    curl --cacert "$(trio-rack certs | head -1)" https://localhost:9292/ &
    curl --cacert "$(trio-rack certs | head -1)" https://localhost:9292/ ; wait
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
    """A clock app: a tick then a pause of ``interval`` seconds, ``ticks`` times (as in the article).

    The tests use a fast clock; ``app`` below is the article's five ticks one second apart.
    """

    async def app(env: dict[str, Any]) -> Any:
        async def body(stream: trio.abc.Stream) -> None:
            for _ in range(ticks):
                await stream.send_all(now())
                await trio.sleep(interval)

        return 200, {"content-type": "text/plain"}, body

    return app


app = make_app()
