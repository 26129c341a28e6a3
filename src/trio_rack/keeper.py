"""The shared keeper: one task that times many long-lived connections (websockets).

Why: a websocket needs a timer (keepalive ping, idle timeout, write timeout, the hand-over to a
background reader, graceful shutdown).  A sleeping task per websocket for that costs a task, two
cancel scopes, a nursery's worth of bookkeeping and a suspended coroutine stack each, about 3 KiB
of RSS per idle websocket (``bench/ws_probe.py``), and every live object is one more for the cyclic
garbage collector to walk.  One :class:`Keeper` per server holds instead a heap of
``(due, seq, client)`` entries and sleeps until the earliest.

Theory of operation
-------------------
* **Clients** are objects with a ``timer_due`` float attribute (``math.inf`` when nothing is
  due; the keeper owns it) and two synchronous methods: ``timer_fire(now)``, called once their
  due time has passed, which acts (without blocking: anything async it starts in its own
  nursery) and returns when it is due next (``math.inf``: nothing); and ``timer_shutdown()``,
  called once when the server's graceful shutdown begins (or at :meth:`add` if it already has).
* **Lazy deletion.**  :meth:`schedule` only ever moves a client's due time *earlier* (pushing a
  heap entry and, if it is the earliest, the keeper's wake-up); a later due time is not pushed at
  all: the client finds it when the keeper fires it at the earlier one and it returns the later
  one.  So the hot path (a websocket read or write) costs one float comparison.  A heap entry
  whose due differs from its client's ``timer_due`` is stale and skipped; the heap is rebuilt
  from the live entries when stale ones outnumber them.
* **Lifetime.**  :meth:`run` is started by the server in the nursery that owns its connections
  (``serve()``), so it outlives every client; clients :meth:`add` themselves when they start and
  :meth:`discard` themselves in a ``finally``.  A client that finds no running keeper (the
  in-memory testing helpers run no server) runs a private one in its own nursery.  An exception
  in ``timer_fire`` is a bug: it propagates out of :meth:`run` and fails the server (it surfaces,
  nothing hangs silently).
"""

from __future__ import annotations

import heapq
import itertools
import math
from typing import Protocol

import trio

__all__ = ["RETRY", "Keeper", "Timed"]

#: Seconds after which a client that says it is due again at once (it could not act yet, such
#: as a ping while a write holds the lock) is fired again: the keeper never spins.
RETRY = 0.05


class Timed(Protocol):
    """What the keeper times."""

    timer_due: float

    def timer_fire(self, now: float) -> float: ...

    def timer_shutdown(self) -> None: ...


class Keeper:
    """Times :class:`Timed` clients from one task; see the module docstring."""

    __slots__ = ("_shutdown", "_heap", "_clients", "_sleep", "_count", "running", "_shut")

    def __init__(self, shutdown: trio.Event | None = None) -> None:
        #: The server's "graceful shutdown has begun" event.
        self._shutdown = shutdown
        self._heap: list[tuple[float, int, Timed]] = []
        self._clients: set[Timed] = set()
        #: The keeper's sleep while it sleeps; :meth:`schedule` moves its deadline earlier.
        self._sleep: trio.CancelScope | None = None
        self._count = itertools.count()
        #: True while :meth:`run` runs: clients use a keeper only then.
        self.running = False
        self._shut = False

    def __len__(self) -> int:
        return len(self._clients)

    def add(self, client: Timed, due: float) -> None:
        """Start timing ``client``, first at ``due``."""
        client.timer_due = math.inf
        self._clients.add(client)
        if self._shut:
            client.timer_shutdown()
        self.schedule(client, due)

    def discard(self, client: Timed) -> None:
        """Stop timing ``client`` (its heap entries go stale)."""
        client.timer_due = math.inf
        self._clients.discard(client)

    def schedule(self, client: Timed, due: float) -> None:
        """Make ``client`` fire by ``due`` (no-op unless earlier than its current due time)."""
        if due >= client.timer_due or client not in self._clients:
            return
        client.timer_due = due
        heap = self._heap
        heapq.heappush(heap, (due, next(self._count), client))
        if len(heap) > 64 and len(heap) > 4 * len(self._clients):
            self._prune()
        sleep = self._sleep
        if sleep is not None and sleep.deadline > due:
            sleep.deadline = due

    def _prune(self) -> None:
        heap = self._heap
        heap[:] = [entry for entry in heap if entry[2].timer_due == entry[0]]
        heapq.heapify(heap)

    async def run(self) -> None:
        """Fire clients as they fall due, until cancelled.

        Resource handling: owns nothing but its heap; clients start their own tasks.
        """
        if self.running:
            raise RuntimeError("the keeper is running already")
        self.running = True
        heap = self._heap
        shutdown = self._shutdown
        try:
            while True:
                with trio.CancelScope(deadline=heap[0][0] if heap else math.inf) as sleep:
                    self._sleep = sleep
                    if shutdown is not None and not self._shut:
                        await shutdown.wait()
                    else:
                        await trio.sleep_forever()
                self._sleep = None
                if shutdown is not None and not self._shut and shutdown.is_set():
                    self._shut = True
                    for client in list(self._clients):
                        client.timer_shutdown()
                now = trio.current_time()
                while heap and heap[0][0] <= now:
                    due, _, client = heapq.heappop(heap)
                    if client.timer_due != due:
                        continue  # stale: moved earlier since, or discarded
                    client.timer_due = math.inf
                    self.schedule(client, max(client.timer_fire(now), now + RETRY))
        finally:
            self._sleep = None
            self.running = False
