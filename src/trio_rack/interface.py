"""Which app protocol an app speaks — trio-rack's own (rack), ASGI 3 or WSGI — and the wrapper
that makes any of them a trio-rack app.

``detect(app)`` looks at the callable itself (for a class instance, at its ``__call__``):

======================================  =========
``async def app(env)``                  rack
``async def app(scope, receive, send)`` asgi (ASGI 3)
``def app(environ, start_response)``    wsgi
======================================  =========

Anything else — a class (ASGI 2's ``app(scope)(receive, send)`` shape), a sync callable of
one argument, ``*args`` signatures, a coroutine function of two — cannot be told apart
safely, and gets one :class:`~trio_rack.config.ConfigError` naming ``--interface``: guessing
wrong would fail at the first request with a confusing traceback instead of at startup.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from .config import LIFESPAN_MODES, ConfigError
from .errors import LifespanFailure

__all__ = ["INTERFACES", "LIFESPAN_MODES", "LifespanFailure", "ServedApp", "detect", "prepare", "wrap"]

log = logging.getLogger("trio_rack.error")

INTERFACES = ("auto", "rack", "asgi", "wsgi")
def _describe(app: Any) -> str:
    name = getattr(app, "__qualname__", None) or type(app).__qualname__
    return f"{name!r}"


def _positional_count(fn: Any) -> int | None:
    """Positional parameters of ``fn`` without a default (all of them if that count says
    nothing); None if ``*args`` makes it unknowable."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    required = total = 0
    for param in sig.parameters.values():
        if param.kind is param.VAR_POSITIONAL:
            return None
        if param.kind in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD):
            total += 1
            required += param.default is param.empty
    return required if required in (1, 2, 3) else total


def _is_async(app: Any) -> bool:
    if inspect.iscoroutinefunction(app):
        return True
    call = getattr(app, "__call__", None)  # noqa: B004 - instances: their __call__ decides
    return call is not None and inspect.iscoroutinefunction(call)


def detect(app: Any) -> str:
    """``"rack"``, ``"asgi"`` or ``"wsgi"`` for ``app``, or ConfigError naming ``--interface``."""
    hint = "pass --interface rack|asgi|wsgi (serve(app, interface=...))"
    if inspect.isclass(app):
        raise ConfigError(f"app {_describe(app)} is a class, not an app instance or function; {hint}")
    if not callable(app):
        raise ConfigError(f"app {_describe(app)} is not callable (its type is {type(app).__name__})")
    declared = getattr(app, "trio_rack_interface", None)
    if declared in ("rack", "asgi", "wsgi"):
        return str(declared)
    count = _positional_count(app)
    is_async = _is_async(app)
    if is_async and count == 1:
        return "rack"
    if is_async and count == 3:
        return "asgi"
    if not is_async and count == 2:
        return "wsgi"
    shape = "async" if is_async else "plain"
    params = "*args" if count is None else f"{count} positional parameter(s)"
    raise ConfigError(
        f"cannot tell which interface app {_describe(app)} speaks ({shape} callable with {params}); "
        f"expected async (env) for rack, async (scope, receive, send) for ASGI 3, or "
        f"(environ, start_response) for WSGI: {hint}"
    )


def wrap(
    app: Any,
    interface: str = "auto",
    *,
    root_path: str = "",
    threads: int = 10,
    lifespan: Any = None,
) -> tuple[Any, str]:
    """The trio-rack app serving ``app`` and the interface chosen.

    ``lifespan`` is the :class:`~trio_rack.asgi.Lifespan` whose state ASGI scopes get.
    """
    if interface not in INTERFACES:
        raise ConfigError(f"interface must be one of {', '.join(INTERFACES)}, not {interface!r}")
    chosen = detect(app) if interface == "auto" else interface
    if chosen == "rack":
        return app, chosen
    if chosen == "asgi":
        from .asgi import ASGIAdapter

        return ASGIAdapter(app, root_path=root_path, lifespan=lifespan), chosen
    from .wsgi import WSGIAdapter

    return WSGIAdapter(app, threads=threads, root_path=root_path), chosen


@dataclass
class ServedApp:
    """An app ready for :func:`trio_rack.serve`: its interface chosen, its lifespan pending.

    :meth:`running` is the server's whole life: it runs the ASGI lifespan startup (or enters a
    native factory's async context manager) before yielding the trio-rack app, and the
    shutdown after the server drained.  ``outer``, if set, wraps the final trio-rack app
    (the CLI's ``--max-requests`` counter).
    """

    target: Any
    interface: str = "auto"
    root_path: str = ""
    threads: int = 10
    lifespan: str = "auto"
    #: the native factory's async context manager (``--factory``), entered by :meth:`running`
    context: contextlib.AbstractAsyncContextManager[Any] | None = None
    outer: Callable[[Any], Any] | None = None
    #: the interface actually served (known once :meth:`check` or :meth:`running` ran)
    chosen: str = field(default="", init=False)

    def check(self) -> str:
        """Validate the configuration now (one ConfigError), and say which interface is served."""
        if self.lifespan not in LIFESPAN_MODES:
            raise ConfigError(f"lifespan must be one of auto, on, off, not {self.lifespan!r}")
        if self.threads < 1:
            raise ConfigError(f"threads must be at least 1, not {self.threads}")
        if self.root_path and not self.root_path.startswith("/"):
            raise ConfigError(f"root path must start with '/', not {self.root_path!r}")
        if self.context is not None:
            self.chosen = "rack" if self.interface == "auto" else self.interface
        else:
            self.chosen = detect(self.target) if self.interface == "auto" else self.interface
            if self.chosen not in INTERFACES[1:]:
                raise ConfigError(f"interface must be one of {', '.join(INTERFACES)}, not {self.interface!r}")
        return self.chosen

    @contextlib.asynccontextmanager
    async def running(self, *, shutdown_timeout: float = 10.0) -> AsyncIterator[Any]:
        self.check()
        async with contextlib.AsyncExitStack() as stack:
            target = self.target
            if self.context is not None:
                target = await stack.enter_async_context(self.context)
                self.chosen = detect(target) if self.interface == "auto" else self.interface
            lifespan = None
            nursery = await stack.enter_async_context(trio.open_nursery())
            if self.chosen == "asgi":
                from .asgi import Lifespan

                lifespan = Lifespan(target, mode=self.lifespan)
                await lifespan.startup(nursery)
            app, _ = wrap(target, self.chosen, root_path=self.root_path, threads=self.threads, lifespan=lifespan)
            if self.outer is not None:
                app = self.outer(app)
            try:
                yield app
                if lifespan is not None:
                    await lifespan.shutdown(timeout=shutdown_timeout)
            finally:
                nursery.cancel_scope.cancel()


def prepare(
    app: Any,
    *,
    interface: str = "auto",
    factory: bool = False,
    root_path: str = "",
    threads: int = 10,
    lifespan: str = "auto",
) -> ServedApp:
    """A :class:`ServedApp` for ``app``; ``factory``: call ``app()`` first (``--factory``).

    A factory may return the app, or (native apps) an async context manager whose value is the
    app: it is entered before serving and exited after draining, so the app can own tasks for
    the server's lifetime.  Raises ConfigError for anything that cannot be served.
    """
    if isinstance(app, ServedApp):
        return app
    if interface not in INTERFACES:
        raise ConfigError(f"interface must be one of {', '.join(INTERFACES)}, not {interface!r}")
    context = None
    if factory:
        try:
            app = app()
        except Exception as exc:
            log.debug("the app factory raised", exc_info=True)
            raise ConfigError(f"--factory: calling the app factory failed: {type(exc).__name__}: {exc}") from None
        if hasattr(app, "__aenter__") and hasattr(app, "__aexit__"):  # (asynccontextmanager objects are callable)
            context, app = app, None
    served = ServedApp(app, interface, root_path.rstrip("/"), threads, lifespan, context)
    served.check()
    return served
