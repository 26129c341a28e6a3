"""The backend-neutral half of the bus: payload encoding, bounded subscriptions, local fan-out.

Theory of operation.  Every backend ends in one place: a :class:`Hub` (a dict of channel →
live :class:`Subscription` objects) whose :meth:`Hub.deliver` hands one encoded payload to every
subscription of a channel with ``send_nowait``.  The memory backend calls ``deliver`` straight
from ``publish``; the Redis backend calls it from its one listener task, for every message its
single pub/sub connection receives.  So a process holds one Redis subscription per channel
however many local subscribers it has, and each local subscriber gets each message once.

**Overload policy.**  A subscription's queue holds at most ``queue`` messages.  ``deliver``
never waits: when a subscription's queue is full, that subscription is *cut off* — it is
removed from the hub and its queue is closed.  Its reader still gets the messages already
queued, in order, and then :class:`SlowSubscriber` instead of the next one.  Publishers and the
other subscribers are never held up, and memory never grows past ``queue`` messages per
subscriber.

**Payloads.**  Messages are ``str`` or ``bytes`` and arrive as what they were sent as: on the
wire each payload is one tag byte (``s`` UTF-8 text, ``b`` bytes) and the message.  A message
appended to a channel's history (``e``) also carries its history id: ``e<id>\\n`` then a
``s``/``b`` payload; plain subscribers see just the message, :meth:`Bus.follow` sees the id too.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

__all__ = [
    "BroadcastError",
    "Bus",
    "Entry",
    "Follower",
    "Hub",
    "Message",
    "SlowSubscriber",
    "Subscription",
    "Unavailable",
    "decode",
    "decode_entry",
    "encode",
    "encode_entry",
    "id_key",
]

Message = str | bytes
#: A history entry: ``(id, message)``.  Ids are ``"<milliseconds>-<sequence>"`` on both backends
#: (Redis stream ids; the memory ring makes the same kind), so they grow across restarts.
Entry = tuple[str, Message]

#: Default per-subscription queue: enough for bursts, small enough to bound memory.
DEFAULT_QUEUE = 1000


class BroadcastError(Exception):
    """Base of the bus's own errors."""


class Unavailable(BroadcastError):
    """The broker cannot be reached now: the message was *not* published (or the history not
    read).  Raised by ``publish``, ``append`` and ``history``; subscriptions never raise it (they
    reconnect by themselves)."""


class SlowSubscriber(BroadcastError):
    """This subscription fell ``queue`` messages behind and was cut off (see the overload policy
    in the module docstring).  Raised by the subscription's iterator after the messages it had
    already queued; leave the ``async with`` and subscribe again if you want to carry on."""

    def __init__(self, channel: str, queue: int) -> None:
        super().__init__(f"subscriber to {channel!r} fell {queue} messages behind and was cut off")
        self.channel = channel
        self.queue = queue


def encode(message: Message) -> bytes:
    if isinstance(message, str):
        return b"s" + message.encode("utf-8")
    if isinstance(message, bytes | bytearray | memoryview):
        return b"b" + bytes(message)
    raise TypeError(f"broadcast messages are str or bytes, not {type(message).__name__}")


def encode_entry(entry_id: str, encoded: bytes) -> bytes:
    return b"e" + entry_id.encode("ascii") + b"\n" + encoded


def decode_entry(payload: bytes) -> tuple[str | None, Message]:
    """``(id or None, message)`` of one wire payload."""
    tag = payload[:1]
    if tag == b"s":
        return None, payload[1:].decode("utf-8")
    if tag == b"b":
        return None, payload[1:]
    if tag == b"e":
        head, _, rest = payload[1:].partition(b"\n")
        return head.decode("ascii"), decode_entry(rest)[1]
    # Published by something that is not trio-rack (redis-cli, another client): raw bytes.
    return None, payload


def decode(payload: bytes) -> Message:
    return decode_entry(payload)[1]


def id_key(entry_id: str) -> tuple[int, ...] | None:
    """Sort key of a history id (``"1712345678901-0"``); None when ``entry_id`` is not one (a
    forged ``Last-Event-ID``).  A bare ``"1712345678901"`` counts, as Redis takes it."""
    parts = entry_id.split("-")
    if not 1 <= len(parts) <= 2 or not all(p.isdigit() and len(p) <= 20 for p in parts):
        return None
    return tuple(int(p) for p in parts)


class Subscription:
    """One subscriber's bounded queue; iterate it with ``async for``.

    Made by :meth:`Bus.subscribe`, which registers it in a hub and removes it on exit.
    """

    def __init__(self, channel: str, queue: int) -> None:
        if queue < 1:
            raise ValueError("queue must be at least 1")
        self.channel = channel
        self.queue = queue
        self._send, self._receive = trio.open_memory_channel[tuple[str | None, Message]](queue)
        self.cut_off = False

    def _offer(self, entry: tuple[str | None, Message]) -> bool:
        """Queue without waiting; False when full (the caller then cuts this subscription off)."""
        try:
            self._send.send_nowait(entry)
        except trio.WouldBlock:
            self.cut_off = True
            self._send.close()
            return False
        except trio.ClosedResourceError:
            return False
        return True

    async def receive_entry(self) -> tuple[str | None, Message]:
        try:
            return await self._receive.receive()
        except trio.EndOfChannel:
            if self.cut_off:
                raise SlowSubscriber(self.channel, self.queue) from None
            raise

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Message:
        try:
            return (await self.receive_entry())[1]
        except trio.EndOfChannel:
            raise StopAsyncIteration from None

    def _close(self) -> None:
        self._send.close()
        self._receive.close()


class Follower:
    """The iterator of :meth:`Bus.follow`: the backlog, then live entries newer than it."""

    def __init__(self, sub: Subscription, backlog: list[Entry]) -> None:
        self._sub = sub
        self._backlog = list(reversed(backlog))
        self._last: tuple[int, ...] | None = None

    def __aiter__(self) -> Follower:
        return self

    async def __anext__(self) -> Entry:
        if self._backlog:
            entry = self._backlog.pop()
            self._last = id_key(entry[0])
            await trio.lowlevel.checkpoint()
            return entry
        while True:
            try:
                entry_id, message = await self._sub.receive_entry()
            except trio.EndOfChannel:
                raise StopAsyncIteration from None
            if entry_id is None:
                return "", message
            key = id_key(entry_id)
            if self._last is not None and key is not None and key <= self._last:
                continue  # already replayed from the history
            self._last = None  # past the backlog: ids only grow from here
            return entry_id, message


class Hub:
    """Channel → live subscriptions of this process (or of one Redis bus)."""

    def __init__(self) -> None:
        self.channels: dict[str, set[Subscription]] = {}

    def add(self, sub: Subscription) -> bool:
        """Register; True when ``sub`` is its channel's first subscriber here."""
        subs = self.channels.setdefault(sub.channel, set())
        subs.add(sub)
        return len(subs) == 1

    def remove(self, sub: Subscription) -> bool:
        """Unregister; True when the channel has no subscriber left here."""
        subs = self.channels.get(sub.channel)
        if subs is None or sub not in subs:
            return False
        subs.discard(sub)
        if not subs:
            del self.channels[sub.channel]
            return True
        return False

    def deliver(self, channel: str, payload: bytes) -> None:
        """Hand ``payload`` to every subscription of ``channel`` without waiting (see the policy).
        Decoded once here, not once per subscriber."""
        subs = self.channels.get(channel)
        if not subs:
            return
        entry = decode_entry(payload)
        for sub in list(subs):
            if not sub._offer(entry):
                self.remove(sub)


class Bus:
    """What ``async with broadcast.connect(url) as bus`` gives: publish, subscribe, history.

    Subclasses (one per backend) implement ``_publish``, ``_append``, ``_history``,
    ``_listen``/``_unlisten`` (a channel gets its first/loses its last local subscriber).
    """

    url: str

    def __init__(self, url: str, hub: Hub) -> None:
        self.url = url
        self._hub = hub

    async def publish(self, channel: str, message: Message) -> None:
        """Send ``message`` to every current subscriber of ``channel`` (on every process sharing
        the broker).  Raises :class:`Unavailable` when the broker cannot be reached."""
        await self._publish(channel, encode(message))

    async def append(self, channel: str, message: Message, *, maxlen: int) -> str:
        """Publish ``message`` and keep it in ``channel``'s history (the newest ``maxlen``
        entries are kept); return its id.  Raises :class:`Unavailable`."""
        if maxlen < 1:
            raise ValueError("maxlen must be at least 1")
        return await self._append(channel, encode(message), maxlen)

    async def history(self, channel: str, *, after: str) -> list[Entry]:
        """The kept entries of ``channel`` newer than id ``after``, oldest first (empty when
        ``after`` is not an id).  Raises :class:`Unavailable`."""
        if id_key(after) is None:
            return []
        return [(i, decode(p)) for i, p in await self._history(channel, after)]

    @asynccontextmanager
    async def subscribe(self, channel: str, *, queue: int = DEFAULT_QUEUE) -> AsyncIterator[Subscription]:
        """Receive what is published to ``channel`` from now on (once the ``async with`` is
        entered; during a broker outage, from when the bus is back).  Leaving unsubscribes."""
        sub = Subscription(channel, queue)
        first = self._hub.add(sub)
        try:
            if first:
                await self._listen(channel)
            yield sub
        finally:
            sub._close()
            self._hub.remove(sub)
            if channel not in self._hub.channels:
                await self._unlisten(channel)  # re-checks under the backend's lock

    @asynccontextmanager
    async def follow(self, channel: str, *, after: str | None, queue: int = DEFAULT_QUEUE) -> AsyncIterator[Follower]:
        """Entries of ``channel`` after id ``after`` (from history), then live ones, each once and
        in order.  Subscribes first and reads the history second, so nothing falls in between;
        live entries already replayed are skipped.  Plain ``publish`` messages (no id) come
        through with id ``""``.  The iterator raises :class:`SlowSubscriber` like a
        subscription; the history read may raise :class:`Unavailable`."""
        async with self.subscribe(channel, queue=queue) as sub:
            backlog = await self.history(channel, after=after) if after is not None else []
            # Dedupe only against the backlog: live entries at or before its newest one were
            # appended between SUBSCRIBE and the history read.  (Not against ``after`` itself: a
            # stale or forged id must not hide live entries.)
            yield Follower(sub, backlog)

    # -- backend hooks
    # -- backend hooks
    async def _publish(self, channel: str, payload: bytes) -> None:
        raise NotImplementedError

    async def _append(self, channel: str, payload: bytes, maxlen: int) -> str:
        raise NotImplementedError

    async def _history(self, channel: str, after: str) -> list[tuple[str, bytes]]:
        raise NotImplementedError

    async def _listen(self, channel: str) -> None:
        await trio.lowlevel.checkpoint()

    async def _unlisten(self, channel: str) -> None:
        await trio.lowlevel.checkpoint()

