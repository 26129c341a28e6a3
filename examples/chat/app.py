"""A multi-room chat: one websocket per browser tab, fan-out through the broadcast bus.

``GET /`` serves ``index.html`` (plain JS, no build step); the page connects a websocket to
``/ws/<room>?nick=<nick>``.  Each connection is one task (the app call the server already runs
for it) plus a small pump task; every message a client sends is broadcast as JSON to everyone in
the room, joins and departures included::

    {"type": "message", "room": "lobby", "nick": "alice", "text": "hi"}
    {"type": "join" | "leave", "room": "lobby", "nick": "bob", "members": 2}

Rooms span processes: every message goes through :mod:`trio_rack.broadcast` on the channel
``chat:<room>``, so members on other workers (``-n 4``) or other hosts see it.  The bus URL comes
from the environment variable ``TRIO_RACK_BROADCAST`` (default ``memory://``: one process).
Each session opens its own bus connection (trio-rack has no app-wide start-up hook to own a
shared one): on Redis, one pub/sub connection per websocket.  ``members`` counts the members
connected to the *sender's* server (presence across servers would need a roster in Redis).
When the bus is unavailable, a message the member sends is answered with
``{"type": "error", "text": ...}`` to that member alone; the connection stays open.

Fan-out: each member has a bounded outbox (a memory channel of ``outbox`` messages) drained by
its own pump task into its websocket.  Its relay task moves what the bus delivers into
it with ``send_nowait`` (and :meth:`Room.broadcast` does the same for one process's members),
so a room never waits for anyone.  **Slow clients are disconnected, not waited for**: when a
member's outbox is full, its outbox is closed and its pump closes the websocket with 1008
"too slow" — the client can reconnect, and nobody else's messages are held up or silently lost.

Shutdown: the server cancels every connection task; each websocket's ``async with`` turns that
into a 1001 "going away" close frame before the socket closes.

Browser endpoints are exposed to cross-site websocket hijacking, so the upgrade is refused
(403) unless its ``Origin`` is this server (``origins=`` of :func:`trio_rack.websocket.accept`).

Try it::

    trio-rack serve -b http://127.0.0.1:9292 examples/chat/app.py
    # open http://127.0.0.1:9292/ in two browser tabs

    # across workers and hosts: one Redis (or Valkey), any number of servers
    export TRIO_RACK_BROADCAST=redis://127.0.0.1:6379/0
    trio-rack serve -b http://127.0.0.1:9292 -n 4 examples/chat/app.py &
    trio-rack serve -b http://127.0.0.1:9293 examples/chat/app.py
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote

import trio

from trio_rack import broadcast, websocket

PAGE = Path(__file__).with_name("index.html").read_bytes()
MAX_NAME = 32
MAX_TEXT = 4096
#: Bounds a ``leave`` announcement made while the session is being cancelled.
LEAVE_TIMEOUT = 2.0
#: How long a member cut off as too slow may take to drain its outbox before its connection is
#: dropped (a client that stopped reading would otherwise hold its pump in a blocked write).
SLOW_GRACE = 2.0


class Member:
    """One connection's presence in a room: its nick and its bounded outbox."""

    def __init__(self, nick: str, outbox: int) -> None:
        self.nick = nick
        self.outbox, self.inbox = trio.open_memory_channel[str](outbox)
        self.too_slow = False

    def offer(self, payload: str) -> None:
        """Queue without waiting; a full outbox marks the member too slow and ends its pump."""
        try:
            self.outbox.send_nowait(payload)
        except trio.WouldBlock:
            self.too_slow = True
            self.outbox.close()
        except trio.ClosedResourceError:
            pass


class Room:
    def __init__(self, name: str) -> None:
        self.name = name
        self.members: set[Member] = set()

    @property
    def channel(self) -> str:
        return "chat:" + self.name

    def payload(self, **fields: Any) -> str:
        return json.dumps({**fields, "room": self.name, "members": len(self.members)})

    def broadcast(self, **fields: Any) -> None:
        """Fan out to this process's members only, without waiting (no bus)."""
        payload = self.payload(**fields)
        for member in list(self.members):
            member.offer(payload)


class Chat:
    """The app: ``Chat()`` is callable as ``app(env)``; ``rooms`` maps names to the rooms that
    have members on this process.  ``url``: the bus (default ``$TRIO_RACK_BROADCAST`` or
    ``memory://``)."""

    def __init__(self, *, outbox: int = 64, url: str | None = None) -> None:
        self.outbox = outbox
        self.url = url or os.environ.get("TRIO_RACK_BROADCAST") or broadcast.DEFAULT_URL
        self.rooms: dict[str, Room] = {}

    async def __call__(self, env: dict[str, Any]) -> Any:
        path = env["PATH_INFO"]
        if path in ("/", "/index.html"):
            return 200, {"content-type": "text/html; charset=utf-8", "cache-control": "no-cache"}, [PAGE]
        if not path.startswith("/ws/"):
            return 404, {"content-type": "text/plain"}, [b"not found\n"]
        room = unquote(path[len("/ws/"):])[:MAX_NAME] or "lobby"
        nick = (parse_qs(env["QUERY_STRING"]).get("nick", [""])[0].strip()[:MAX_NAME]) or "anonymous"
        host = env.get("HTTP_HOST", "")
        try:
            context = websocket.accept(
                env, max_message_size=MAX_TEXT * 4, origins={f"http://{host}", f"https://{host}"}
            )
        except websocket.HandshakeError as exc:
            return exc.response
        async with context as ws:
            await self.session(ws, room, nick)
        return -1, {}, []

    async def session(self, ws: websocket.WebSocket, name: str, nick: str) -> None:
        room = self.rooms.setdefault(name, Room(name))
        member = Member(nick, self.outbox)
        room.members.add(member)
        try:
            async with broadcast.connect(self.url) as bus, bus.subscribe(room.channel, queue=self.outbox) as sub:
                try:
                    await self._say(bus, ws, room, type="join", nick=nick)
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(self._relay, sub, member, nursery.cancel_scope)
                        nursery.start_soon(self._pump, ws, member)
                        async for text in ws:
                            if isinstance(text, str) and text.strip():
                                await self._say(bus, ws, room, type="message", nick=nick, text=text[:MAX_TEXT])
                        nursery.cancel_scope.cancel()
                    if member.too_slow and not ws.closed:
                        await ws.aclose(1008, "too slow: messages were piling up")
                finally:
                    room.members.discard(member)
                    with trio.move_on_after(LEAVE_TIMEOUT, shield=True):
                        await self._say(bus, None, room, type="leave", nick=nick)
        finally:
            room.members.discard(member)
            member.outbox.close()
            if not room.members and self.rooms.get(name) is room:
                del self.rooms[name]

    async def _say(self, bus: broadcast.Bus, ws: websocket.WebSocket | None, room: Room, **fields: Any) -> None:
        """Publish to the room on every server; if the bus is down, tell the sender only."""
        try:
            await bus.publish(room.channel, room.payload(**fields))
        except broadcast.Unavailable:
            if ws is not None and not ws.closed:
                error = {"type": "error", "room": room.name, "text": "chat is unavailable: message not sent"}
                await ws.send_message(json.dumps(error))

    @staticmethod
    async def _relay(sub: broadcast.Subscription, member: Member, session: trio.CancelScope) -> None:
        """Bus → outbox, never waiting: a full outbox (or subscription) cuts the member off; if
        its pump has not finished ``SLOW_GRACE`` later, the session is ended (then 1008)."""
        try:
            async for payload in sub:
                member.offer(payload if isinstance(payload, str) else payload.decode("utf-8", "replace"))
                if member.too_slow:
                    break
        except broadcast.SlowSubscriber:
            member.too_slow = True
            member.outbox.close()
        if member.too_slow:
            await trio.sleep(SLOW_GRACE)
            session.cancel()

    async def _pump(self, ws: websocket.WebSocket, member: Member) -> None:
        """Outbox → websocket.  Ends the connection when the member fell too far behind."""
        try:
            async for payload in member.inbox:
                await ws.send_message(payload)
            if member.too_slow:
                await ws.aclose(1008, "too slow: messages were piling up")
        except websocket.ConnectionClosed:
            pass  # the reading side sees it too and ends the session


app = Chat()
