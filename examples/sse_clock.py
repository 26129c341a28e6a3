"""The article's clock as Server-Sent Events, with a page that shows it (``sse_clock.html``).

``GET /`` serves the page; ``GET /events`` is the event stream: one ``tick`` event a second whose
``data`` is the time and whose ``id`` counts up.  A reconnecting ``EventSource`` sends
``Last-Event-ID`` and the count resumes after it.  Nothing is closed by hand: when the browser
tab goes away the server notices the hang-up, cancels the handler and closes the stream.

Try it::

    trio-rack serve -b http://127.0.0.1:9292 examples/sse_clock.py
    # open http://127.0.0.1:9292/ in a browser, or:
    curl -N http://127.0.0.1:9292/events
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import trio

from trio_rack import sse
from trio_rack.types import App

PAGE = (Path(__file__).with_name("sse_clock.html")).read_bytes()


def make_app(*, interval: float = 1.0, ticks: int | None = None, heartbeat: float = 15.0) -> App:
    """``ticks=None`` ticks forever; the tests use a fast, finite clock."""

    async def clock(stream: sse.EventStream) -> None:
        try:
            n = int(stream.last_event_id or 0)
        except ValueError:
            n = 0
        while ticks is None or n < ticks:
            n += 1
            await stream.send(time.strftime("%H:%M:%S"), event="tick", id=str(n))
            await trio.sleep(interval)

    async def app(env: dict[str, Any]) -> Any:
        path = env["PATH_INFO"]
        if path == "/events":
            return sse.response(env, clock, heartbeat=heartbeat, retry=1000)
        if path in ("/", "/index.html"):
            return 200, {"content-type": "text/html; charset=utf-8"}, [PAGE]
        return 404, {"content-type": "text/plain"}, [b"not found\n"]

    return app


app = make_app()
