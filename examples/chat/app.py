"""A multi-room chat: one websocket per browser tab, fan-out through Trio memory channels.

``GET /`` serves ``index.html`` (plain JS, no build step); the page connects a websocket to
``/ws/<room>?nick=<nick>``.  Each connection is one task (the app call the server already runs
for it) plus a small pump task; every message a client sends is broadcast as JSON to everyone in
the room, joins and departures included::

    {"type": "message", "room": "lobby", "nick": "alice", "text": "hi"}
    {"type": "join" | "leave", "room": "lobby", "nick": "bob", "members": 2}

Fan-out: each member has a bounded outbox (a memory channel of ``outbox`` messages) drained by
its own pump task into its websocket.  A broadcast is ``send_nowait`` into every outbox, so a
room never waits for anyone.  **Slow clients are disconnected, not waited for**: when a
member's outbox is full, its outbox is closed and its pump closes the websocket with 1008
"too slow" — the client can reconnect, and nobody else's messages are held up or silently lost.

Shutdown: the server cancels every connection task; each websocket's ``async with`` turns that
into a 1001 "going away" close frame before the socket closes.

Browser endpoints are exposed to cross-site websocket hijacking, so the upgrade is refused
(403) unless its ``Origin`` is this server (``origins=`` of :func:`trio_rack.websocket.accept`).

Try it::

    trio-rack serve -b http://127.0.0.1:9292 examples/chat/app.py
    # open http://127.0.0.1:9292/ in two browser tabs
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote

import trio

from trio_rack import websocket

PAGE = Path(__file__).with_name("index.html").read_bytes()
MAX_NAME = 32
MAX_TEXT = 4096


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

    def broadcast(self, **fields: Any) -> None:
        payload = json.dumps({**fields, "room": self.name, "members": len(self.members)})
        for member in list(self.members):
            member.offer(payload)


class Chat:
    """The app: ``Chat()`` is callable as ``app(env)``; ``rooms`` maps names to live rooms."""

    def __init__(self, *, outbox: int = 64) -> None:
        self.outbox = outbox
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
        room.broadcast(type="join", nick=nick)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._pump, ws, member)
                async for text in ws:
                    if isinstance(text, str) and text.strip():
                        room.broadcast(type="message", nick=nick, text=text[:MAX_TEXT])
                nursery.cancel_scope.cancel()
        finally:
            room.members.discard(member)
            member.outbox.close()
            if room.members:
                room.broadcast(type="leave", nick=nick)
            elif self.rooms.get(name) is room:
                del self.rooms[name]

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
