"""The ASGI ``lifespan`` protocol: startup before the first request, shutdown after the drain.

:class:`Lifespan` runs the app once with a ``lifespan`` scope, as a task in a nursery the
server owns for its whole life (so an app may keep background work there).  Its ``state``
dict is the one copied shallowly into every request's scope.

Modes (``--lifespan``): ``on`` — a failure to start (``lifespan.startup.failed``, the app
raising, or returning before it completed startup) is a :class:`LifespanFailure` and the
server stops before any listener accepts (exit status 3 on the command line); ``auto`` — an
app that raises (or returns) before answering ``lifespan.startup`` does not speak lifespan:
it is served without it, with one info line; ``lifespan.startup.failed`` still stops the
server; ``off`` — no lifespan scope at all.

Resource handling: the lifespan task belongs to the nursery given to :meth:`startup`;
:meth:`shutdown` waits for ``lifespan.shutdown.complete`` (or the app's end) at most
``timeout`` seconds, then the owner's nursery ends the task.
"""

from __future__ import annotations

import enum
import logging
from typing import Any

import trio

from ..config import LIFESPAN_MODES, ConfigError
from ..errors import LifespanFailure
from .http import ASGIApp, ASGIMessageError, asyncio_failure
from .scope import ASGI_VERSION

__all__ = ["Lifespan", "LifespanFailure", "LIFESPAN_MODES"]

log = logging.getLogger("trio_rack.error")

class _Phase(enum.Enum):
    STARTING = "starting"
    STARTED = "started"
    UNSUPPORTED = "unsupported"
    FAILED = "failed"
    STOPPING = "stopping"
    STOPPED = "stopped"


class Lifespan:
    """One app's lifespan.  ``state`` is the dict the app filled during startup."""

    def __init__(self, app: ASGIApp, *, mode: str = "auto") -> None:
        if mode not in LIFESPAN_MODES:
            raise ConfigError(f"lifespan must be one of {', '.join(LIFESPAN_MODES)}, not {mode!r}")
        self.app = app
        self.mode = mode
        self.state: dict[str, Any] = {}
        self._phase = _Phase.STARTING
        self._to_app, self._from_server = trio.open_memory_channel[dict[str, Any]](1)
        self._answered = trio.Event()
        self._stopped = trio.Event()
        self._message = ""
        self._error: BaseException | None = None

    @property
    def active(self) -> bool:
        return self._phase in (_Phase.STARTED, _Phase.STOPPING)

    async def startup(self, nursery: trio.Nursery) -> None:
        """Send ``lifespan.startup`` and wait for the answer; raise LifespanFailure on failure."""
        if self.mode == "off":
            self._phase = _Phase.UNSUPPORTED
            return
        nursery.start_soon(self._run)
        await self._to_app.send({"type": "lifespan.startup"})
        await self._answered.wait()
        if self._phase is _Phase.STARTED:
            return
        if self._phase is _Phase.UNSUPPORTED and self.mode == "auto":
            reason = f"{type(self._error).__name__}: {self._error}" if self._error else "it returned"
            log.info("the ASGI app does not support lifespan (%s); serving without it", reason)
            return
        if self._error is not None:
            if asyncio_failure(self._error):
                raise LifespanFailure(
                    f"ASGI lifespan startup failed: the app used asyncio, which does not run on Trio "
                    f"({type(self._error).__name__}: {self._error})"
                )
            log.debug("lifespan startup failed", exc_info=self._error)
            raise LifespanFailure(f"ASGI lifespan startup failed: {type(self._error).__name__}: {self._error}")
        raise LifespanFailure(f"ASGI lifespan startup failed: {self._message or 'the app returned during startup'}")

    async def shutdown(self, *, timeout: float = 10.0) -> None:  # noqa: ASYNC109 - the grace period, passed on
        """Send ``lifespan.shutdown`` and wait (at most ``timeout``) for the answer."""
        if self._phase is not _Phase.STARTED:
            return
        self._phase = _Phase.STOPPING
        self._answered = trio.Event()
        with trio.move_on_after(timeout) as scope:
            try:
                await self._to_app.send({"type": "lifespan.shutdown"})
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            await self._answered.wait()
        if scope.cancelled_caught:
            log.warning("ASGI lifespan shutdown did not complete within %s s", timeout)
        elif self._phase is _Phase.FAILED:
            log.error("ASGI lifespan shutdown failed: %s", self._message or self._error)

    async def _run(self) -> None:
        scope = {"type": "lifespan", "asgi": dict(ASGI_VERSION), "state": self.state}
        try:
            await self.app(scope, self._receive, self._send)
        except Exception as exc:
            self._error = exc
            if self._phase is _Phase.STARTING:
                self._phase = _Phase.UNSUPPORTED if self.mode == "auto" else _Phase.FAILED
            elif self._phase is _Phase.STOPPING:
                self._phase = _Phase.FAILED
            else:
                log.error("ASGI lifespan task raised", exc_info=exc)
        else:
            if self._phase is _Phase.STARTING:
                self._phase = _Phase.UNSUPPORTED if self.mode == "auto" else _Phase.FAILED
        finally:
            self._from_server.close()
            self._answered.set()
            self._stopped.set()

    async def _receive(self) -> dict[str, Any]:
        try:
            return await self._from_server.receive()
        except trio.EndOfChannel:  # never sent twice; the server is gone: wait to be cancelled
            await trio.sleep_forever()
            raise AssertionError("unreachable") from None

    async def _send(self, message: dict[str, Any]) -> None:
        kind = message.get("type") if isinstance(message, dict) else None
        await trio.lowlevel.checkpoint()
        if self._phase is _Phase.STARTING and kind in ("lifespan.startup.complete", "lifespan.startup.failed"):
            self._phase = _Phase.STARTED if kind == "lifespan.startup.complete" else _Phase.FAILED
            self._message = str(message.get("message", ""))
        elif self._phase is _Phase.STOPPING and kind in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
            self._phase = _Phase.STOPPED if kind == "lifespan.shutdown.complete" else _Phase.FAILED
            self._message = str(message.get("message", ""))
        else:
            raise ASGIMessageError(f"unexpected lifespan message {kind!r} (phase: {self._phase.value})")
        self._answered.set()
