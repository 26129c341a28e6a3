"""``redis://`` / ``rediss://``: the bus through Redis (or Valkey) pub/sub, with coredis.

Why coredis: it is a maintained, fully typed Redis client built on anyio, so it runs on Trio
natively (no asyncio loop in a thread); checked here by the contract tests, which run this
backend on Trio against a real ``redis-server``.  redis-py and valkey-py are asyncio-only.

Theory of operation.  One bus holds one coredis client (a connection pool, for ``PUBLISH``,
the history commands) and one pub/sub connection owned by a listener task in the bus's
nursery.  The listener subscribes to every channel that has a local subscriber and hands each
message to the local :class:`~._core.Hub`, which fans it out to the process's subscriptions
(bounded queues: see the overload policy in :mod:`._core`).  ``subscribe`` returns once Redis has
acknowledged the subscription, so everything published after that is delivered.

Outages.  coredis' own silent retrying is switched off; this module does it, visibly:

* ``publish``/``append``/``history`` raise :class:`~._core.Unavailable` at once (or after
  ``command_timeout`` seconds) while Redis cannot be reached: the message was not sent.
* The listener logs **one** warning when the pub/sub connection is lost, reconnects with
  exponential backoff (0.05 s doubling to ``max_backoff``), resubscribes every channel, and logs
  **one** line when it is back.  One per process and URL, not per bus: an app that opens a bus
  per websocket (the chat example) still logs one line per outage and one on recovery.
  Subscriptions stay open across the outage and carry on; what was published while this
  listener was disconnected is **not** delivered to it (Redis pub/sub keeps nothing), so an
  outage is a gap, never a duplicate.  Event streams with a history
  (:mod:`trio_rack.sse`) close that gap for clients that reconnect with ``Last-Event-ID``, as
  far as Redis kept the stream (not across a Redis restart without persistence).
* ``subscribe`` during an outage returns at once; the channel is subscribed on reconnection.

History: ``append`` runs ``XADD key MAXLEN maxlen * m payload`` and ``PUBLISH`` in one Lua script,
so entries are published in id order; ``history`` is ``XRANGE key (after +``.  The stream key of
channel ``C`` is ``trio-rack:history:C``.

Resource handling: :func:`open_bus` owns the client, the pub/sub connection and the listener;
leaving it cancels the listener and closes both (cancelled subscribers only drop their queue).
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import trio

from ._core import Bus, Hub, Unavailable

__all__ = ["RedisBus", "open_bus"]

log = logging.getLogger("trio_rack.broadcast")

EXTRA_HINT = "the redis:// broadcast backend needs coredis: pip install 'trio-rack[redis]'"

#: XADD (trimmed to exactly ARGV[1] entries) and PUBLISH of "e<id>\n<payload>", atomically.
_APPEND = """
local id = redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[1], '*', 'm', ARGV[2])
redis.call('PUBLISH', ARGV[3], 'e' .. id .. '\\n' .. ARGV[2])
return id
"""
HISTORY_PREFIX = "trio-rack:history:"
#: URL → buses of this process whose listener is disconnected: the first one in logs the
#: outage, the last one out logs the recovery.
_DOWN: dict[str, set[int]] = {}
FIRST_BACKOFF = 0.05


def _import_coredis() -> Any:
    try:
        import coredis
        import coredis.exceptions
        import coredis.retry
    except ImportError as exc:
        raise ImportError(EXTRA_HINT) from exc
    return coredis


def safe_url(url: str) -> str:
    """``url`` without its password, for log lines."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


class RedisBus(Bus):
    def __init__(self, url: str, client: Any, *, timeout: float, max_backoff: float) -> None:
        super().__init__(url, Hub())
        self._coredis = _import_coredis()
        self._client = client
        self._timeout = timeout
        self._max_backoff = max_backoff
        self._pubsub: Any = None
        self._lock = trio.Lock()  # orders SUBSCRIBE/UNSUBSCRIBE with (re)connection
        self._down = False
        #: Completed reconnections (for tests and metrics).
        self.reconnections = 0

    # -- publishing and history: fail fast with Unavailable
    async def _command(self, what: str, call: Any) -> Any:
        conn_errors = (self._coredis.exceptions.ConnectionError, OSError, TimeoutError)
        try:
            with trio.fail_after(self._timeout):
                return await call()
        except trio.TooSlowError as exc:
            raise Unavailable(f"{what}: Redis at {safe_url(self.url)} did not answer in {self._timeout}s") from exc
        except conn_errors as exc:
            raise Unavailable(f"{what}: Redis at {safe_url(self.url)} unreachable ({exc})") from exc
        except BaseExceptionGroup as group:
            match, rest = group.split(conn_errors)
            if rest is None and match is not None:
                first = match.exceptions[0]
                raise Unavailable(f"{what}: Redis at {safe_url(self.url)} unreachable ({first})") from group
            raise

    async def _publish(self, channel: str, payload: bytes) -> None:
        await self._command(f"publish to {channel!r}", lambda: self._client.publish(channel, payload))

    async def _append(self, channel: str, payload: bytes, maxlen: int) -> str:
        keys = [HISTORY_PREFIX + channel]
        args = [maxlen, payload, channel]
        entry_id = await self._command(f"append to {channel!r}", lambda: self._client.eval(_APPEND, keys, args))
        return entry_id.decode("ascii") if isinstance(entry_id, bytes) else str(entry_id)

    async def _history(self, channel: str, after: str) -> list[tuple[str, bytes]]:
        entries = await self._command(
            f"history of {channel!r}", lambda: self._client.xrange(HISTORY_PREFIX + channel, "(" + after, "+")
        )
        out = []
        for entry in entries:
            ident = entry.identifier
            out.append((ident.decode("ascii") if isinstance(ident, bytes) else str(ident), entry.field_values[b"m"]))
        return out

    # -- subscriptions: one pub/sub connection, resubscribed on reconnection
    async def _listen(self, channel: str) -> None:
        async with self._lock:
            pubsub = self._pubsub
            if pubsub is None or channel not in self._hub.channels:
                return  # an outage: the listener subscribes it on reconnection
            try:
                await pubsub.subscribe(channel)
            except Exception as exc:  # noqa: BLE001 - a dying connection: the listener reconnects
                log.debug("broadcast: SUBSCRIBE %r failed (%s); the listener will retry", channel, exc)

    async def _unlisten(self, channel: str) -> None:
        with trio.move_on_after(self._timeout, shield=True):
            async with self._lock:
                pubsub = self._pubsub
                if pubsub is None or channel in self._hub.channels:
                    return
                try:
                    await pubsub.unsubscribe(channel)
                except Exception as exc:  # noqa: BLE001 - a dying connection drops it anyway
                    log.debug("broadcast: UNSUBSCRIBE %r failed (%s)", channel, exc)

    def _mark_up(self, *, closing: bool = False) -> None:
        down = _DOWN.get(self.url)
        if down is None or id(self) not in down:
            return
        down.discard(id(self))
        if not down:
            del _DOWN[self.url]
            if not closing:
                log.warning("broadcast: reconnected to Redis at %s", safe_url(self.url))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The listener: connect, subscribe, deliver; on failure back off and reconnect.

        Reports started after the first connection attempt, whichever way it went, so a bus
        whose Redis is down at start-up still opens (and says so in the log)."""
        backoff = FIRST_BACKOFF
        started = False
        while True:
            try:
                async with self._client.pubsub(retry_policy=None, ignore_subscribe_messages=True) as pubsub:
                    async with self._lock:
                        channels = list(self._hub.channels)
                        if channels:
                            await pubsub.subscribe(*channels)
                        self._pubsub = pubsub
                    if self._down:
                        self._down = False
                        self.reconnections += 1
                        self._mark_up()
                    backoff = FIRST_BACKOFF
                    if not started:
                        started = True
                        task_status.started()
                    while True:
                        message = await pubsub.get_message()
                        if message is not None and message["type"] == "message":
                            name = message["channel"]
                            name = name.decode("utf-8") if isinstance(name, bytes) else name
                            self._hub.deliver(name, message["data"])
            except BaseExceptionGroup as group:
                cancelled, rest = group.split(trio.Cancelled)
                if cancelled is not None:
                    # Closing (the bus's owner was cancelled): coredis' shielded UNSUBSCRIBE on a
                    # connection that is being torn down fails too; that is not an error.
                    log.debug("broadcast: closing pub/sub: %s", rest and _summary(rest))
                    raise cancelled from None
                self._outage(group)
            except Exception as exc:  # noqa: BLE001 - any failure of the connection is an outage
                self._outage(exc)
            self._pubsub = None
            if not started:
                started = True
                task_status.started()
            await trio.sleep(backoff)
            backoff = min(backoff * 2, self._max_backoff)

    def _outage(self, exc: BaseException) -> None:
        """The pub/sub connection failed: log it if it is news for this process and URL."""
        self._pubsub = None
        if self._down:
            return
        self._down = True
        down = _DOWN.setdefault(self.url, set())
        if not down:
            log.warning(
                "broadcast: lost Redis at %s (%s); reconnecting, messages published meanwhile are"
                " not delivered here", safe_url(self.url), _summary(exc)
            )
        down.add(id(self))


def _summary(exc: BaseException) -> str:
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


@asynccontextmanager
async def open_bus(
    url: str, *, command_timeout: float = 5.0, max_backoff: float = 5.0
) -> AsyncIterator[RedisBus]:
    coredis = _import_coredis()
    if not (command_timeout > 0 and math.isfinite(command_timeout)):
        raise ValueError("command_timeout must be positive seconds")
    client = coredis.Redis.from_url(
        url,
        decode_responses=False,
        retry_policy=coredis.retry.NoRetryPolicy(),
        connect_timeout=command_timeout,
        verify_version=False,  # it runs a command at the first connection; one fewer failure mode
    )
    async with client, trio.open_nursery() as nursery:
        bus = RedisBus(url, client, timeout=command_timeout, max_backoff=max_backoff)
        await nursery.start(bus.run)
        try:
            yield bus
        finally:
            bus._mark_up(closing=True)
            nursery.cancel_scope.cancel()
