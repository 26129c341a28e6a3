"""A resumable event feed: Server-Sent Events with a history on the broadcast bus.

``POST /events`` (a text body, optional ``?event=NAME``) publishes one event and answers with its
id; ``GET /events`` is the event stream.  Every event is kept (the newest ``FEED_LENGTH``) by the
bus named by ``TRIO_RACK_BROADCAST`` (default ``memory://``), so an ``EventSource`` that reconnects
with ``Last-Event-ID`` — after a network blip, a restart of the server, or to another server
behind the same load balancer — first gets the events it missed, in order, then the live ones.

With ``memory://`` the history lives in the server process (and ``-n`` workers each have their
own); with Redis it is one Redis Stream that every worker and host shares and that outlives a
restart of the servers::

    export TRIO_RACK_BROADCAST=redis://127.0.0.1:6379/0
    trio-rack serve -b http://127.0.0.1:9292 examples/feed.py &
    trio-rack serve -b http://127.0.0.1:9293 examples/feed.py &
    curl -N http://127.0.0.1:9292/events &                      # listens on one server
    curl -d 'hello' http://127.0.0.1:9293/events                # publishes through the other
    curl -N -H 'Last-Event-ID: <an id seen>' http://127.0.0.1:9293/events   # resumes
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import parse_qs

from trio_rack import broadcast, sse
from trio_rack.types import App

FEED_LENGTH = 1000
MAX_EVENT = 64 * 1024


def make_app(*, url: str | None = None, channel: str = "feed", maxlen: int = FEED_LENGTH) -> App:
    history = sse.History(
        channel, url=url or os.environ.get("TRIO_RACK_BROADCAST") or broadcast.DEFAULT_URL, maxlen=maxlen
    )

    def text(status: int, body: str) -> tuple[int, dict[str, str], list[bytes]]:
        return status, {"content-type": "text/plain; charset=utf-8"}, [body.encode() + b"\n"]

    async def app(env: dict[str, Any]) -> Any:
        if env["PATH_INFO"] != "/events":
            return text(404, "not found: GET or POST /events")
        if env["REQUEST_METHOD"] in ("GET", "HEAD"):
            return sse.response(env, history.stream, heartbeat=15, retry=1000)
        if env["REQUEST_METHOD"] != "POST":
            return 405, {"content-type": "text/plain", "allow": "GET, HEAD, POST"}, [b"method not allowed\n"]
        try:
            body = await env["rack.input"].read_all(limit=MAX_EVENT)
        except ValueError:
            return text(413, f"an event is at most {MAX_EVENT} bytes")
        event = parse_qs(env["QUERY_STRING"]).get("event", [None])[0]
        try:
            event_id = await history.publish(body.decode("utf-8"), event=event)
        except (UnicodeDecodeError, ValueError) as exc:
            return text(400, f"bad event: {exc}")
        except broadcast.Unavailable:
            return text(503, "the feed is unavailable: event not published")
        return text(201, event_id)

    return app


app = make_app()
