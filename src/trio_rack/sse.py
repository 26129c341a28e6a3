"""Server-Sent Events: a ``text/event-stream`` response built on the streaming body.

::

    from trio_rack import sse

    async def app(env):
        async def events(stream: sse.EventStream) -> None:
            n = int(stream.last_event_id or 0)          # resume where the client left off
            while True:
                n += 1
                await stream.send(f"tick {n}", event="tick", id=str(n))
                await trio.sleep(1)
        return sse.response(env, events, heartbeat=15, retry=2000)

Design:

* :func:`response` returns an ordinary ``(200, headers, body)`` triple whose body is a streaming
  body, so the server frames it (chunked on HTTP/1.1, close-delimited on HTTP/1.0) and owns the
  connection's life: when the client hangs up the server cancels the app (README, "When the
  client goes away"), the handler sees ``trio.Cancelled``, its ``finally`` blocks run, and the
  response ends quietly.  A write that finds the client gone (``BrokenResourceError``) also ends
  the response quietly.  Returning from the handler ends the stream (the browser will reconnect
  after ``retry`` ms unless the page closes its ``EventSource``).
* The head goes out at once (an empty write), so ``EventSource.onopen`` fires before the first
  event, and ``retry`` (if given) is sent first.
* **Heartbeats**: a comment line (``: heartbeat``) after every ``heartbeat`` seconds without
  output, so proxies and load balancers do not time the stream out.  It runs in a nursery next to
  the handler; writes from both are serialized by one lock.
* **Framing** (:func:`format_event`, pure): ``data`` is split on every line ending SSE knows
  (CRLF, CR, LF) into one ``data:`` line each, so multi-line data arrives intact; ``event`` and
  ``id`` must be single lines (``ValueError`` otherwise: a newline there would inject fields),
  ``id`` must not contain NUL (browsers ignore such ids), ``retry`` is a non-negative int of ms.
* ``Last-Event-ID`` (sent by a reconnecting ``EventSource``) is :attr:`EventStream.last_event_id`.
* ``HEAD`` gets GET's headers (the head of a streamed, so chunked, response) and no body; the
  handler is not run.
* **Graceful shutdown** ends the stream at once: the body watches ``env["trio_rack.shutdown"]``
  and, when it is set, cancels the handler (its ``finally`` blocks run) and ends the response
  cleanly, so the server need not wait out its grace period (as websockets close with 1001).

**Resumable streams** (:class:`History`): events published through the bus
(:mod:`trio_rack.broadcast`) are kept with ids — a bounded ring on ``memory://``, a Redis
Stream (``XADD``/``XRANGE``) on ``redis://`` — and ``sse.response(env, history.stream)`` sends
every client the events after its ``Last-Event-ID`` first, then the live ones, each once and in
order, whichever worker or host it reconnects to::

    feed = sse.History("news", url="redis://127.0.0.1:6379/0", maxlen=1000)
    await feed.publish("hello", event="note")          # anywhere, any process: returns the id
    return sse.response(env, feed.stream, retry=1000)    # in the app

A client that falls ``queue`` events behind is cut off (the response ends); its ``EventSource``
reconnects after ``retry`` ms with its ``Last-Event-ID`` and catches up from the history.  A
client whose ``Last-Event-ID`` is older than the oldest kept event gets what is kept.  While the
bus is unavailable the response ends (quietly, the bus logs the outage) and the browser retries.

Resource handling: the server owns and closes the stream; the handler must not keep it after
returning.  A :class:`History` made with ``url=`` opens a bus connection per call (per response,
per publish) and closes it when that ends; one made with ``bus=`` uses that bus, whose owner
closes it.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import trio

from . import broadcast

__all__ = ["EventStream", "History", "format_comment", "format_event", "response"]

log = logging.getLogger("trio_rack.error")

_LINES = re.compile(r"\r\n|\r|\n")
#: Headers every event stream gets.  ``x-accel-buffering: no`` stops nginx from buffering it.
STREAM_HEADERS = {
    "content-type": "text/event-stream; charset=utf-8",
    "cache-control": "no-cache",
    "x-accel-buffering": "no",
}


def _single_line(name: str, value: str) -> str:
    if _LINES.search(value):
        raise ValueError(f"SSE {name} must be a single line, got {value!r:.60}")
    return value


def format_event(
    data: str | None = None,
    *,
    event: str | None = None,
    id: str | None = None,
    retry: int | None = None,
) -> bytes:
    """One event's bytes (UTF-8), ending with the blank line that dispatches it."""
    lines = []
    if event is not None:
        lines.append("event: " + _single_line("event", event))
    if id is not None:
        if "\0" in id:
            raise ValueError("SSE id must not contain NUL")
        lines.append("id: " + _single_line("id", id))
    if retry is not None:
        if type(retry) is not int or retry < 0:
            raise ValueError(f"SSE retry must be a non-negative int of milliseconds, got {retry!r}")
        lines.append(f"retry: {retry}")
    if data is not None:
        lines.extend("data: " + line for line in _LINES.split(data))
    if not lines:
        raise ValueError("an SSE event needs data, event, id or retry")
    return ("\n".join(lines) + "\n\n").encode("utf-8")


def format_comment(text: str = "") -> bytes:
    """A comment block (ignored by clients; keeps intermediaries from timing out)."""
    return ("\n".join(":" + (" " + line if line else "") for line in _LINES.split(text)) + "\n\n").encode("utf-8")


class EventStream:
    """What the handler gets: send events and comments; ``last_event_id`` from the client."""

    def __init__(self, stream: trio.abc.SendStream, last_event_id: str | None) -> None:
        self._stream = stream
        self._lock = trio.Lock()
        self._wrote_at = trio.current_time()
        #: The ``Last-Event-ID`` header of a reconnecting client, or None.
        self.last_event_id = last_event_id

    async def send(
        self,
        data: str | None = None,
        *,
        event: str | None = None,
        id: str | None = None,
        retry: int | None = None,
    ) -> None:
        """Send one event (see :func:`format_event`)."""
        await self._write(format_event(data, event=event, id=id, retry=retry))

    async def comment(self, text: str = "") -> None:
        await self._write(format_comment(text))

    async def _write(self, data: bytes) -> None:
        async with self._lock:
            await self._stream.send_all(data)
            self._wrote_at = trio.current_time()

    async def _heartbeat(self, interval: float) -> None:
        while True:
            await trio.sleep_until(self._wrote_at + interval)
            if trio.current_time() >= self._wrote_at + interval:
                await self.comment("heartbeat")


Handler = Callable[[EventStream], Awaitable[None]]


def response(
    env: Mapping[str, Any],
    handler: Handler,
    *,
    heartbeat: float | None = 15.0,
    retry: int | None = None,
    headers: Mapping[str, str] | None = None,
) -> tuple[int, dict[str, Any], Any]:
    """The ``(200, headers, body)`` triple of an event stream driven by ``handler(stream)``.

    ``heartbeat``: seconds of silence before a comment is sent (None: never).  ``retry``: the
    reconnection delay (ms) to send first.  ``headers``: extra response headers.
    """
    if heartbeat is not None and heartbeat <= 0:
        raise ValueError("heartbeat must be positive seconds or None")
    all_headers: dict[str, Any] = {**STREAM_HEADERS, **(headers or {})}
    if env.get("REQUEST_METHOD") == "HEAD":

        async def head_only(stream: trio.abc.Stream) -> None:
            await stream.send_all(b"")  # a streamed head, as GET's: the server frames HEAD alike

        return 200, all_headers, head_only
    last_event_id = env.get("HTTP_LAST_EVENT_ID")
    shutdown: trio.Event | None = env.get("trio_rack.shutdown")

    async def body(stream: trio.abc.Stream) -> None:
        events = EventStream(stream, last_event_id)
        try:
            await stream.send_all(b"")  # sends the head now: EventSource.onopen fires
            if retry is not None:
                await events.send(retry=retry)
            async with trio.open_nursery() as nursery:
                if heartbeat is not None:
                    nursery.start_soon(events._heartbeat, heartbeat)
                if shutdown is not None:
                    nursery.start_soon(_end_on_shutdown, shutdown, nursery.cancel_scope)
                await handler(events)
                nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            # The nursery wraps the handler's exception; hand the server the exception itself.
            _gone, rest = group.split((trio.BrokenResourceError, trio.ClosedResourceError))
            if rest is None:
                return  # the client left mid-write: not an error
            if len(rest.exceptions) == 1 and not isinstance(rest.exceptions[0], BaseExceptionGroup):
                raise rest.exceptions[0] from None
            raise rest from None
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return

    return 200, all_headers, body


class History:
    """A channel of events kept by the bus so that reconnecting clients can resume (see above).

    ``url`` (default ``memory://``) or ``bus`` (an open :class:`~trio_rack.broadcast.Bus`) says
    where; ``maxlen`` how many events are kept; ``queue`` how far a client may fall behind
    before it is cut off (and resumes by reconnecting).
    """

    def __init__(
        self,
        channel: str,
        *,
        url: str = broadcast.DEFAULT_URL,
        bus: broadcast.Bus | None = None,
        maxlen: int = 1000,
        queue: int = 256,
    ) -> None:
        if maxlen < 1 or queue < 1:
            raise ValueError("maxlen and queue must be at least 1")
        self.channel = channel
        self.url = bus.url if bus is not None else url
        self.maxlen = maxlen
        self.queue = queue
        self._bus = bus

    @asynccontextmanager
    async def _open(self) -> AsyncIterator[broadcast.Bus]:
        if self._bus is not None:
            yield self._bus
        else:
            async with broadcast.connect(self.url) as bus:
                yield bus

    async def publish(self, data: str, *, event: str | None = None) -> str:
        """Keep and send one event to every client of the channel; return its id.  Raises
        ``ValueError`` for a malformed event (see :func:`format_event`) and
        :class:`~trio_rack.broadcast.Unavailable` when the bus cannot be reached."""
        format_event(data, event=event)  # refuse bad events here, not in every client's stream
        message = json.dumps({"data": data, "event": event}, separators=(",", ":"))
        async with self._open() as bus:
            return await bus.append(self.channel, message, maxlen=self.maxlen)

    async def stream(self, events: EventStream) -> None:
        """The handler for :func:`response`: the missed events after ``Last-Event-ID``, then
        live ones until the client leaves (or falls ``queue`` behind, or the bus is down)."""
        try:
            async with self._open() as bus, bus.follow(
                self.channel, after=events.last_event_id, queue=self.queue
            ) as entries:
                async for entry_id, message in entries:
                    data, event = _unpack(message)
                    await events.send(data, event=event, id=entry_id or None)
        except broadcast.SlowSubscriber:
            return  # the client reconnects with Last-Event-ID and catches up from the history
        except broadcast.Unavailable as exc:
            log.info("event stream %r ends: %s", self.channel, exc)


def _unpack(message: broadcast.Message) -> tuple[str, str | None]:
    """An event published by :meth:`History.publish`; anything else on the channel is data."""
    text = message if isinstance(message, str) else message.decode("utf-8", "replace")
    try:
        fields = json.loads(text)
    except ValueError:
        return text, None
    if isinstance(fields, dict) and isinstance(fields.get("data"), str):
        event = fields.get("event")
        return fields["data"], event if isinstance(event, str) else None
    return text, None
async def _end_on_shutdown(shutdown: trio.Event, scope: trio.CancelScope) -> None:
    await shutdown.wait()
    scope.cancel()  # the handler sees Cancelled; the body returns, so the response ends cleanly
