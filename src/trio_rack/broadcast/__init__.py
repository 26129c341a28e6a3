"""A message bus for real-time features that outgrow one process: chat rooms, event feeds.

::

    from trio_rack import broadcast

    async with broadcast.connect("redis://127.0.0.1:6379/0") as bus:
        async with bus.subscribe("room:lobby") as subscription:
            await bus.publish("room:lobby", "hello")
            async for message in subscription:      # str or bytes, as published
                ...

URLs: ``memory://`` (the default; one process, no dependency: :mod:`.memory`) and
``redis://HOST:PORT/DB`` or ``rediss://…`` (TLS) for Redis or Valkey (:mod:`.redis`, the
optional extra ``trio-rack[redis]``).  The behaviour both share — bounded subscriptions and
:class:`SlowSubscriber`, message types, history ids — is in :mod:`._core`; the outage behaviour
of Redis (:class:`Unavailable`, reconnection) in :mod:`.redis`.

Exceptions::

    BroadcastError
    ├── Unavailable      publish/append/history while the broker cannot be reached
    └── SlowSubscriber   a subscription fell `queue` messages behind and was cut off

Resource handling: ``connect`` owns every connection and task of the bus; leaving the
``async with`` closes them.  ``subscribe``/``follow`` own their subscription; leaving (or being
cancelled) unsubscribes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

from ._core import BroadcastError, Bus, Entry, Follower, Message, SlowSubscriber, Subscription, Unavailable
from .memory import MemoryBus

__all__ = [
    "DEFAULT_URL",
    "BroadcastError",
    "Bus",
    "Entry",
    "Follower",
    "Message",
    "SlowSubscriber",
    "Subscription",
    "Unavailable",
    "connect",
]

DEFAULT_URL = "memory://"


@asynccontextmanager
async def connect(url: str = DEFAULT_URL, **options: Any) -> AsyncIterator[Bus]:
    """Open the bus named by ``url``.  Redis options (keyword-only): ``command_timeout=5.0`` (seconds a
    command may take before :class:`Unavailable`), ``max_backoff=5.0`` (reconnection cap),
    ``ssl_context=`` (``rediss://`` only: an :class:`ssl.SSLContext` instead of the URL's
    ``?ssl_ca_certs=…`` settings; see TLS in :mod:`.redis`).

    A bad URL is ``ValueError``; ``redis://`` without the extra is an ``ImportError`` naming it;
    a ``rediss://`` server whose certificate is refused is :class:`Unavailable`.
    """
    scheme = urlsplit(url).scheme.lower()
    if scheme == "memory":
        if options:
            raise TypeError(f"memory:// takes no options, got {sorted(options)}")
        parts = urlsplit(url)
        yield MemoryBus(url, parts.netloc + parts.path)
    elif scheme in ("redis", "rediss"):
        from .redis import open_bus

        async with open_bus(url, **options) as bus:
            yield bus
    else:
        raise ValueError(f"broadcast URL must be memory://, redis:// or rediss://, got {url!r}")
