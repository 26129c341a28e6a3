"""Compose apps: middleware in the order written, apps mounted under path prefixes.

``Builder`` is Rack's ``Rack::Builder`` and ``Rack::URLMap`` in one, the Trio way::

    app = Builder()
    app.use(Lint)                            # outermost: sees every request first
    app.use(Deflater, min_size=512)
    app.mount("/static", Files("public"))    # /static/app.css -> public/app.css
    app.mount("/chat", chat)                 # SCRIPT_NAME "/chat", PATH_INFO "/..."
    app.run(api)                             # everything else (404 when no run())

An ``app.py`` whose ``app`` is a Builder is trio-rack's ``config.ru``.

The middleware convention
-------------------------
A middleware is any callable ``mw(app, *args, **kwargs) -> app``: a class whose instances are
apps, or a function returning one.  ``use(mw, *args, **kwargs)`` calls it with the next app in
the chain.  A middleware must keep these rules (``trio_rack.lint.Lint`` checks the visible ones):

* call the inner app **at most once** per request, and return its triple or one of its own;
* pass **streaming bodies and hijacks through untouched** unless transforming them is its job
  (a ``rack.hijack`` response header, or ``env["rack.hijack"]()`` having been called, means the
  connection is no longer HTTP: leave it alone);
* **close what it replaces**: a middleware that returns a different body than the app's must
  make its own body's ``close``/``aclose`` close the app's body (or close the app's body itself
  once it has consumed it), because the server closes only the body it was given;
* keep ``env`` a plain dict it may add keys to; copy before changing ``SCRIPT_NAME`` or
  ``PATH_INFO`` (as :meth:`Builder.mount` does) so the outer layers see what they saw.

Mounting (Rack's URLMap rules)
------------------------------
``mount(prefix, app)`` serves ``prefix`` and everything below it.  The longest matching prefix
wins; matches are on whole path segments, so ``/app`` serves ``/app`` and ``/app/x`` but not
``/apple``.  The mounted app sees ``SCRIPT_NAME`` extended by the prefix and ``PATH_INFO`` the
rest: ``""`` for ``/app`` itself, ``"/"`` for ``/app/``, as in Rack.  ``mount(prefix, app,
host="example.com")`` matches only requests for that host (``Host`` header, port ignored), and
host mounts win over host-less ones for the same prefix.  Paths are matched as they arrived
(percent-encoded, like ``PATH_INFO``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .types import App, Env, Response

__all__ = ["Builder", "Middleware", "not_found"]

Middleware = Callable[..., App]

_NOT_FOUND_BODY = b"Not Found\n"


async def not_found(env: Env) -> Response:
    """The app used when nothing else matches: a plain 404 (with Rack's ``x-cascade: pass``)."""
    return 404, {"content-type": "text/plain; charset=utf-8", "x-cascade": "pass"}, [_NOT_FOUND_BODY]


class _Mount:
    __slots__ = ("prefix", "host", "app")

    def __init__(self, prefix: str, host: str | None, app: App) -> None:
        self.prefix = prefix
        self.host = host
        self.app = app


def _normalize_prefix(prefix: str) -> str:
    if not isinstance(prefix, str) or not prefix.startswith("/"):
        raise ValueError(f"a mount prefix must be a str starting with '/', got {prefix!r}")
    return prefix.rstrip("/")  # "/" becomes "": mounted at the root


def _request_host(env: Env) -> str:
    host = env.get("HTTP_HOST") or env.get("SERVER_NAME") or ""
    if host.startswith("["):
        return host[: host.find("]") + 1].lower()
    return host.partition(":")[0].lower()


class _URLMap:
    """Dispatch on the longest mounted prefix; the fallback app for the rest."""

    __slots__ = ("mounts", "fallback")

    def __init__(self, mounts: list[_Mount], fallback: App) -> None:
        # Longest prefix first; for equal prefixes, host-specific before host-less.
        self.mounts = sorted(mounts, key=lambda m: (-len(m.prefix), m.host is None))
        self.fallback = fallback

    async def __call__(self, env: Env) -> Response:
        path: str = env.get("PATH_INFO", "")
        host: str | None = None
        for mount in self.mounts:
            prefix = mount.prefix
            if mount.host is not None:
                if host is None:
                    host = _request_host(env)
                if host != mount.host:
                    continue
            if not path.startswith(prefix):
                continue
            rest = path[len(prefix) :]
            if rest and not rest.startswith("/"):
                continue  # /app must not match /apple
            inner = dict(env)
            inner["SCRIPT_NAME"] = env.get("SCRIPT_NAME", "") + prefix
            inner["PATH_INFO"] = rest
            try:
                return await mount.app(inner)
            finally:
                if "trio_rack.hijack_status" in inner:  # a full hijack's status, for the access log
                    env["trio_rack.hijack_status"] = inner["trio_rack.hijack_status"]
        return await self.fallback(env)


class Builder:
    """An app made of middleware (``use``), mounted apps (``mount``) and a fallback (``run``).

    Calling methods after the first request rebuilds the chain on the next request (the
    middleware factories are called again), so configure first, then serve.  Each method returns
    the builder, so calls can be chained.
    """

    def __init__(self) -> None:
        self._middleware: list[tuple[Middleware, tuple[Any, ...], dict[str, Any]]] = []
        self._mounts: list[_Mount] = []
        self._app: App | None = None
        self._built: App | None = None

    def use(self, middleware: Middleware, /, *args: Any, **kwargs: Any) -> Builder:
        """Add ``middleware(app, *args, **kwargs)``; the first added is the outermost."""
        if not callable(middleware):
            raise TypeError(f"middleware must be callable, got {type(middleware).__name__}")
        self._middleware.append((middleware, args, kwargs))
        self._built = None
        return self

    def mount(self, prefix: str, app: App, *, host: str | None = None) -> Builder:
        """Serve ``app`` under ``prefix`` (``SCRIPT_NAME``/``PATH_INFO`` adjusted)."""
        if not callable(app):
            raise TypeError(f"a mounted app must be callable, got {type(app).__name__}")
        normalized = _normalize_prefix(prefix)
        key = host.lower() if host is not None else None
        if any(m.prefix == normalized and m.host == key for m in self._mounts):
            raise ValueError(f"{prefix!r} is already mounted" + (f" for host {host!r}" if host else ""))
        self._mounts.append(_Mount(normalized, key, app))
        self._built = None
        return self

    def run(self, app: App) -> Builder:
        """The app for every request no mount matches (a 404 app when never called)."""
        if not callable(app):
            raise TypeError(f"app must be callable, got {type(app).__name__}")
        self._app = app
        self._built = None
        return self

    def to_app(self) -> App:
        """The composed app (built once, cached until the builder changes)."""
        if self._built is None:
            app: App = self._app or not_found
            if self._mounts:
                app = _URLMap(list(self._mounts), app)
            for middleware, args, kwargs in reversed(self._middleware):
                app = middleware(app, *args, **kwargs)
                if not callable(app):
                    raise TypeError(f"middleware {middleware!r} returned {type(app).__name__}, not an app")
            self._built = app
        return self._built

    async def __call__(self, env: Env) -> Response:
        return await self.to_app()(env)
