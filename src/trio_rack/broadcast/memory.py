"""``memory://``: the bus inside one process, no broker, no dependency.

Every ``connect("memory://")`` in a process shares one :class:`~._core.Hub` (``memory://NAME``
gives a separate one, e.g. per test), so two connections — two websocket sessions, say — see
each other's messages; two processes (``-n 2`` workers, two hosts) never do: use ``redis://``
for that.  ``publish`` delivers synchronously to every local subscription (never waits, never
raises :class:`~._core.Unavailable`).

History: per channel a ring of the newest ``maxlen`` entries (lost when the process exits).  Ids
are made as Redis makes stream ids, ``"<unix ms>-<seq>"``, never going backwards, so an
``EventSource`` that reconnects after a restart with an old ``Last-Event-ID`` sees new entries
as newer.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

import trio

from ._core import Bus, Hub, encode_entry, id_key

__all__ = ["MemoryBus"]


@dataclass
class _Ring:
    entries: deque[tuple[str, bytes]] = field(default_factory=deque)
    last: tuple[int, int] = (0, 0)


@dataclass
class _Space:
    hub: Hub = field(default_factory=Hub)
    rings: dict[str, _Ring] = field(default_factory=dict)


#: One space per ``memory://NAME`` for the life of the process (a Trio run's tasks share it).
_SPACES: dict[str, _Space] = {}


class MemoryBus(Bus):
    def __init__(self, url: str, name: str) -> None:
        self._space = _SPACES.setdefault(name, _Space())
        super().__init__(url, self._space.hub)

    async def _publish(self, channel: str, payload: bytes) -> None:
        self._hub.deliver(channel, payload)
        await trio.lowlevel.checkpoint()

    async def _append(self, channel: str, payload: bytes, maxlen: int) -> str:
        ring = self._space.rings.setdefault(channel, _Ring())
        ms = time.time_ns() // 1_000_000
        ring.last = (ms, 0) if ms > ring.last[0] else (ring.last[0], ring.last[1] + 1)
        entry_id = f"{ring.last[0]}-{ring.last[1]}"
        ring.entries.append((entry_id, payload))
        while len(ring.entries) > maxlen:
            ring.entries.popleft()
        self._hub.deliver(channel, encode_entry(entry_id, payload))
        await trio.lowlevel.checkpoint()
        return entry_id

    async def _history(self, channel: str, after: str) -> list[tuple[str, bytes]]:
        await trio.lowlevel.checkpoint()
        ring = self._space.rings.get(channel)
        key = id_key(after)
        if ring is None or key is None:
            return []
        return [(i, p) for i, p in ring.entries if (id_key(i) or ()) > key]
