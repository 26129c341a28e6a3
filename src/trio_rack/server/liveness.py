"""Notice clients that hung up while their app is still producing a response.

Reading from the socket to detect EOF would consume pipelined requests or the request body
behind the app's back, and a watcher task per request would cost the keep-alive hot path a
spawn.  Instead one task per server polls, about once a second, the sockets of the connections
whose app is running, asking the kernel only "has the peer hung up?" (``POLLRDHUP``: the peer
shut down its sending side; ``POLLHUP``/``POLLERR``: reset).  Nothing is read, so nothing is
lost; a request whose peer is gone gets its app's cancel scope cancelled.  The same visit
enforces the write timeout: a request whose response write has been blocked that long is
cancelled as if its client had gone (so the timeout holds to within one sweep interval).
The sweep also enforces the connections' read deadlines (idle, head, body, drain): a deadline
is a float each connection updates, and the sweep cancels the connection whose deadline has
passed — cheaper per request than moving a cancel scope's deadline (see net/transport.py).

Consequence worth documenting: a client that half-closes (``shutdown(SHUT_WR)``) after sending
its request counts as gone, as with Uvicorn and Hypercorn.
"""

from __future__ import annotations

import select

import trio

from ..config import Limits
from ..state import LiveRequest, ServerState

__all__ = ["expire_read_deadlines", "read_deadline_tick", "sweep_once", "run_liveness_sweeper"]

_HANGUP = getattr(select, "POLLRDHUP", 0x2000) | select.POLLHUP | select.POLLERR


def sweep_once(state: ServerState) -> int:
    """Visit every active request once; cancel the apps of vanished or stalled clients.  Returns how many.

    First, every connection whose read deadline has passed is cancelled (and counted).

    A client is stalled when a response write has been blocked for ``limits.write_timeout``
    (the writers record when each write started; see :mod:`trio_rack.net.transport`).
    """
    by_fd: dict[int, list[LiveRequest]] = {}
    now = trio.current_time()
    stalled_before = now - state.limits.write_timeout
    stalled = expire_read_deadlines(state, now)
    for request in list(state.active):
        if request.write_blocked_since() <= stalled_before:
            request.cancel_stalled_write()
            stalled += 1
        elif request.fileno is not None:
            by_fd.setdefault(request.fileno, []).append(request)
    if not by_fd:
        return stalled
    poller = select.poll()
    for fd in by_fd:
        poller.register(fd, _HANGUP)
    gone = stalled
    for fd, events in poller.poll(0):
        if events & _HANGUP:
            for request in by_fd.get(fd, ()):
                request.cancel_app()
                gone += 1
    return gone


def expire_read_deadlines(state: ServerState, now: float) -> int:
    """Cancel the connections whose read deadline (idle, head, body, drain) has passed; how many."""
    expired = 0
    for reader in list(state.read_deadlines):
        if reader.expire_if_due(now):
            expired += 1
    return expired


def read_deadline_tick(limits: Limits) -> float:
    """How often the read deadlines are checked: a quarter of the shortest read timeout (so
    each fires at most 25 % late: 10 s of header timeout within 2.5 s, a 0.5 s one within
    0.125 s), and at least once a ``liveness_interval``."""
    shortest = min(limits.header_timeout, limits.keepalive_timeout, limits.body_timeout)
    return max(min(limits.liveness_interval, shortest / 4), 0.001)


async def run_liveness_sweeper(state: ServerState) -> None:
    """Sweep forever at ``state.limits.liveness_interval``, and check the read deadlines every
    :func:`read_deadline_tick` between sweeps; cancelled with the server."""
    limits = state.limits
    tick = read_deadline_tick(limits)
    next_sweep = trio.current_time() + limits.liveness_interval
    while True:
        await trio.sleep(min(tick, max(next_sweep - trio.current_time(), 0.0)))
        now = trio.current_time()
        if now >= next_sweep:
            sweep_once(state)
            next_sweep = now + limits.liveness_interval
        else:
            expire_read_deadlines(state, now)
