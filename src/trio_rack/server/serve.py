"""Listeners and the public entry points: ``serve(app)`` (async) and ``run(app)`` (blocking).

Shape: ``serve`` opens every bind, then runs one nursery in which each listener has an accept
loop and each accepted connection a task of its own.  A slow or endless response therefore
never blocks another connection; an exception in one connection is logged and contained.

Shutdown:

* cancelling ``serve`` (its nursery or an enclosing scope) stops everything at once: every
  connection task is cancelled, which closes every stream, hijacked ones included;
* setting ``shutdown_trigger`` (a ``trio.Event``) shuts down gracefully: listeners close at
  once, idle keep-alive connections close, requests in flight get ``limits.graceful_timeout``
  seconds to finish (answered with ``connection: close``), then whatever is left is cancelled.
  ``serve`` then returns normally.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import math
import os
import signal
import socket
import ssl
import stat
from collections.abc import AsyncIterator, Sequence
from typing import Any

import trio

from ..app.env import ConnInfo
from ..app.proxy import DEFAULT_TRUSTED, ProxyHeaders
from ..config import DEFAULT_BIND, Bind, ConfigError, Limits, TLSConfig, parse_bind
from ..http1.parsers import resolve_parser
from ..interface import prepare as prepare_app
from ..logs import ensure_default_logging
from ..net.dispatch import choose_driver
from ..net.tls import accept_tls, make_server_context, tls_info
from ..state import ServerState
from .gc_tuning import serving_gc
from .liveness import run_liveness_sweeper

__all__ = ["serve", "run", "open_sockets", "normalize_binds"]

log = logging.getLogger("trio_rack.error")

#: The default listen backlog (``Limits.backlog`` sets it per server).
BACKLOG = Limits.backlog
#: "max connections reached" is logged at most this often (seconds).
CONNECTION_LIMIT_LOG_INTERVAL = 1.0
#: accept() errors that mean "out of resources for now": pause and retry, as trio does.
_RETRY_ACCEPT = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
#: accept() errors about one client that left early: skip it (trio's list, in SocketListener).
_IGNORED_ACCEPT = {
    getattr(errno, name)
    for name in ("ECONNABORTED", "EPROTO", "ENETDOWN", "ENOPROTOOPT", "EHOSTDOWN", "ENONET",
                 "EHOSTUNREACH", "EOPNOTSUPP", "ENETUNREACH", "EPERM")
    if hasattr(errno, name)
}  # fmt: skip
#: Connections accepted in one go, at most, before the accept loop yields to the other tasks:
#: the listen backlog (the default one, or ``Limits.backlog`` if larger), so one turn can empty
#: the kernel's accept queue.
#: Trio runs each runnable task once per scheduler pass, and with thousands of open streams a
#: pass is long (each stream's write, each new connection's first steps): with 64 a pass, the
#: queue filled, the kernel dropped SYNs (``ListenOverflows``) and clients retried after 1, 3,
#: 7 s — 10,000 simultaneous streams had their first bytes after 13 s and up to 13,000 drops
#: (bench/README.md, "10,000 streams").  asyncio's accept handler takes the backlog per wake-up
#: the same way.  The bound keeps a flood from holding the loop for more than one queue's worth.
ACCEPT_BATCH = Limits.backlog


def normalize_binds(bind: str | Bind | Sequence[str | Bind]) -> list[Bind]:
    """Accept one bind or several, as URLs or :class:`Bind` objects."""
    items = [bind] if isinstance(bind, (str, Bind)) else list(bind)
    if not items:
        raise ConfigError("no bind address given")
    return [parse_bind(b) if isinstance(b, str) else b for b in items]


def _bind_tcp(bind: Bind, backlog: int = BACKLOG) -> list[tuple[Bind, socket.socket]]:
    try:
        infos = socket.getaddrinfo(bind.host, bind.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(f"cannot resolve bind host {bind.host!r}: {exc.strerror}") from None
    seen = set()
    result: list[tuple[Bind, socket.socket]] = []
    port = bind.port
    last_error: OSError | None = None
    for family, type_, proto, _, sockaddr in infos:
        if (family, sockaddr[0]) in seen:
            continue
        seen.add((family, sockaddr[0]))
        sock = socket.socket(family, type_, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((sockaddr[0], port) + tuple(sockaddr[2:]))
            sock.listen(backlog)
        except OSError as exc:
            sock.close()
            if exc.errno == errno.EADDRINUSE:
                for _, s in result:
                    s.close()
                raise ConfigError(f"address {sockaddr[0]}:{port} is already in use") from None
            if exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT) and len(infos) > 1:
                last_error = exc  # e.g. localhost resolves to ::1 on a host without IPv6
                continue
            for _, s in result:
                s.close()
            raise ConfigError(f"cannot listen on {sockaddr[0]}:{port}: {exc.strerror}") from None
        port = sock.getsockname()[1]  # port 0: every address of one bind shares the first port
        result.append((Bind(scheme=bind.scheme, host=str(sockaddr[0]), port=port), sock))
    if not result:
        reason = last_error.strerror if last_error else "no usable address"
        raise ConfigError(f"cannot listen on {bind}: {reason}")
    return result


def _socket_is_live(path: str) -> bool:
    """Whether a server is accepting on the Unix socket at ``path``."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(0.5)
    try:
        probe.connect(path)
    except OSError:
        return False
    else:
        return True
    finally:
        probe.close()


def _bind_unix(bind: Bind, backlog: int = BACKLOG) -> socket.socket:
    """Bind a Unix socket; a stale socket file is replaced, a live one is an error."""
    path = bind.path
    try:
        mode = os.stat(path).st_mode
        if stat.S_ISSOCK(mode):
            if _socket_is_live(path):
                raise ConfigError(f"unix:{path} is in use by a running server")
            os.unlink(path)  # a stale socket from an earlier run
        else:  # bind() would say "Address already in use", which sends users looking for a server
            kind = "a directory" if stat.S_ISDIR(mode) else "a file that is not a socket"
            raise ConfigError(f"cannot listen on unix:{path}: {kind} is in the way (never replaced); remove it")
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise ConfigError(f"cannot use unix socket path {path!r}: {exc.strerror}") from None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on unix:{path}: {exc.strerror}") from None
    return sock


def _adopt_fd(bind: Bind) -> socket.socket:
    try:
        sock = socket.socket(fileno=bind.fd)
    except OSError as exc:
        raise ConfigError(f"fd://{bind.fd} is not an open socket: {exc.strerror}") from None
    if sock.type != socket.SOCK_STREAM:
        raise ConfigError(f"fd://{bind.fd} is not a stream socket")
    return sock


def open_sockets(binds: Sequence[Bind], *, backlog: int = BACKLOG) -> list[tuple[Bind, socket.socket]]:
    """Bind and listen on every bind (synchronously); the Bind returned has the real port.

    ``backlog`` applies to the sockets opened here; inherited (``fd://``, systemd) sockets keep
    the backlog their opener gave them (a ``.socket`` unit's ``Backlog=``).
    On error every socket opened so far is closed and :class:`ConfigError` is raised.
    Resource handling: the caller owns the returned sockets.
    """
    opened: list[tuple[Bind, socket.socket]] = []
    try:
        for bind in binds:
            if bind.kind == "tcp":
                opened.extend(_bind_tcp(bind, backlog))
            elif bind.kind == "unix":
                opened.append((bind, _bind_unix(bind, backlog)))
            else:
                sock = _adopt_fd(bind)
                name = sock.getsockname()
                if sock.family in (socket.AF_INET, socket.AF_INET6):
                    actual = Bind(scheme=bind.scheme, host=name[0], port=name[1])
                else:
                    actual = Bind(scheme=bind.scheme, kind="unix", path=name if isinstance(name, str) else "")
                opened.append((actual, sock))
    except BaseException:
        for _, sock in opened:
            sock.close()
        raise
    return opened


def remove_unix_socket_files(binds: Sequence[Bind]) -> None:
    """On exit, remove the socket files of the ``unix:`` binds this process created."""
    for bind in binds:
        if bind.kind == "unix":
            try:
                if stat.S_ISSOCK(os.stat(bind.path).st_mode):
                    os.unlink(bind.path)
            except OSError:
                pass


def _resolve_tls(
    binds: Sequence[Bind],
    cert: str | os.PathLike[str] | None,
    key: str | os.PathLike[str] | None,
    tls: TLSConfig | None,
) -> ssl.SSLContext | None:
    if tls is None:
        tls = TLSConfig(cert=cert, key=key)  # checks that both or neither are given
    elif cert is not None or key is not None:
        raise ConfigError("give the certificate either as cert=/key= or in tls=TLSConfig(...), not both")
    if not any(b.tls for b in binds):
        return None
    if tls.cert is None:
        from .certs import dev_certificate

        dev = dev_certificate()
        tls = dataclasses.replace(tls, cert=dev.cert, key=dev.key)
    return make_server_context(tls)


async def serve(
    app: Any,
    *,
    bind: str | Bind | Sequence[str | Bind] = DEFAULT_BIND,
    cert: str | os.PathLike[str] | None = None,
    key: str | os.PathLike[str] | None = None,
    tls: TLSConfig | None = None,
    limits: Limits | None = None,
    access_log: bool = True,
    proxy_headers: bool | ProxyHeaders = False,
    forwarded_allow_ips: Sequence[str] = DEFAULT_TRUSTED,
    shutdown_trigger: trio.Event | None = None,
    interface: str = "auto",
    root_path: str = "",
    threads: int = 10,
    lifespan: str = "auto",
    http2: bool = True,
    http1_parser: str = "auto",
    tune_gc: bool = True,
    task_status: trio.TaskStatus[list[Bind]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` until cancelled (or until ``shutdown_trigger`` is set, gracefully).

    With ``await nursery.start(serve, app, ...)`` the start value is the list of bound
    addresses (:class:`~trio_rack.config.Bind`, whose ``str()`` is the URL); port 0 comes back
    as the real port.  ``https`` binds without ``cert``/``key`` use the local development
    certificate (:mod:`trio_rack.certs`).  ``tls=TLSConfig(...)`` says the rest of how TLS is
    done (client certificates, key password, ciphers, minimum version); ``cert``/``key`` are
    short for ``TLSConfig(cert=..., key=...)``.  Bad configuration raises :class:`ConfigError`.

    ``proxy_headers=True`` applies ``X-Forwarded-For``/``-Proto`` to ``REMOTE_ADDR`` and
    ``rack.url_scheme`` for requests whose peer is in ``forwarded_allow_ips`` (addresses, CIDR
    networks, ``"*"``; Unix-socket peers always count); a
    :class:`~trio_rack.proxy.ProxyHeaders` instance sets the whole policy instead (e.g. RFC 7239
    ``Forwarded``).  See :mod:`trio_rack.proxy`.

    ``interface`` is ``"auto"`` (tell rack, ASGI 3 and WSGI apps apart), ``"rack"``,
    ``"asgi"`` or ``"wsgi"`` (:mod:`trio_rack.interface`); ``root_path`` is the ASGI
    ``root_path`` / WSGI ``SCRIPT_NAME``; ``threads`` the WSGI thread pool's size; ``lifespan``
    ``"auto"``/``"on"``/``"off"`` for ASGI apps: startup runs before any listener accepts
    (a failure raises :class:`~trio_rack.asgi.LifespanFailure`), shutdown after the drain.
    ``http2=False`` turns HTTP/2 off: ``https`` binds offer only ALPN ``http/1.1`` and a
    prior-knowledge preface on ``http`` binds gets HTTP/1's answer to a bad version.
    ``http1_parser`` is ``"auto"`` (httptools when installed, else h11), ``"h11"`` or
    ``"httptools"`` (a ConfigError naming the ``speedups`` extra if it is not installed); both
    give h11's verdicts (:mod:`trio_rack.http1.httptools_engine`).
    ``tune_gc`` (default True) freezes the start-up heap and makes the cyclic garbage
    collector's young passes rarer while serving (:mod:`trio_rack.server.gc_tuning`: at 10,000
    open streams CPython's defaults spent more of the core on full collections than on
    serving); False leaves the process's collector as it is.
    """
    ensure_default_logging()  # a script that configured no logging still sees our log on stderr
    parser = resolve_parser(http1_parser)
    served = prepare_app(
        app, interface=interface, root_path=root_path, threads=threads, lifespan=lifespan
    )
    binds = normalize_binds(bind)
    limits = limits or Limits()
    proxy = _proxy_policy(proxy_headers, forwarded_allow_ips)
    ctx = await trio.to_thread.run_sync(_resolve_tls, binds, cert, key, tls)
    opened = open_sockets(binds, backlog=limits.backlog)
    if ctx is not None and not http2:
        offered = tls.alpn if tls is not None else TLSConfig().alpn
        ctx.set_alpn_protocols([p for p in offered if p != "h2"])
    limits = _fit_connections_to_fd_limit(limits)
    try:
        async with served.running(shutdown_timeout=limits.graceful_timeout) as rack_app:
            state = ServerState(rack_app, limits, access_log=access_log, proxy=proxy, http1_parser=parser)
            log.info("HTTP/1 parser: %s", parser)
            for _, sock in opened:
                sock.setblocking(False)
            with serving_gc(tune_gc):  # after the app's start-up: its objects are frozen with ours
                await _serve_listeners(opened, state, ctx, shutdown_trigger, task_status, http2=http2)
    finally:
        for _, sock in opened:
            sock.close()
        remove_unix_socket_files(binds)


async def _serve_listeners(
    listeners: list[tuple[Bind, socket.socket]],
    state: ServerState,
    ctx: ssl.SSLContext | None,
    shutdown_trigger: trio.Event | None,
    task_status: trio.TaskStatus[list[Bind]],
    *,
    http2: bool = True,
) -> None:
    connection_slots = _ConnectionSlots(state.limits.max_connections)
    async with trio.open_nursery() as connections:
        connections.start_soon(run_liveness_sweeper, state)
        connections.start_soon(state.keeper.run)  # (websockets' timers: trio_rack.keeper)
        async with trio.open_nursery() as acceptors:
            for actual, listener in listeners:
                acceptors.start_soon(
                    _accept_loop,
                    listener,
                    actual,
                    state,
                    ctx if actual.tls else None,
                    connection_slots,
                    connections,
                    http2,
                )
            for bound, _ in listeners:
                log.info("listening on %s", bound)
            task_status.started([b for b, _ in listeners])
            if shutdown_trigger is not None:
                await shutdown_trigger.wait()
                acceptors.cancel_scope.cancel()
        # graceful shutdown: listeners are closed; let requests in flight finish
        await _drain(state, connections)


class _ConnectionSlots:
    """The ``max_connections`` semaphore, which says (at most once a second, for all listeners)
    when the limit is reached: a server that silently stops accepting looks hung.
    (``trio.Semaphore`` cannot be subclassed, hence the wrapper.)"""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._semaphore = trio.Semaphore(limit)
        self._logged_at = -math.inf
        self.release = self._semaphore.release
        self.acquire = self._semaphore.acquire

    def acquire_nowait(self) -> None:
        try:
            self._semaphore.acquire_nowait()
        except trio.WouldBlock:
            now = trio.current_time()
            if now - self._logged_at >= CONNECTION_LIMIT_LOG_INTERVAL:
                self._logged_at = now
                log.warning("max connections reached (%d open): not accepting until one closes", self.limit)
            raise


#: File descriptors kept for everything that is not a client connection (listeners, logs, app).
FD_RESERVE = 64


def _fit_connections_to_fd_limit(limits: Limits) -> Limits:
    """Make room for ``max_connections`` descriptors, or lower it to what the process may open.

    At the fd limit ``accept()`` fails with EMFILE and the server can only pause and retry; with
    the connection cap below the limit it stops accepting cleanly instead (the backlog queues).
    So: raise the soft RLIMIT_NOFILE towards the hard one if needed, and if that is not enough,
    cap ``max_connections`` with a warning.
    """
    try:
        import resource
    except ImportError:  # not on this platform: nothing to fit
        return limits
    needed = limits.max_connections + FD_RESERVE
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft != resource.RLIM_INFINITY and soft < needed:
        fitted = max(1, soft - FD_RESERVE)
        log.warning(
            "max_connections %d exceeds the open-file limit %d; serving at most %d connections",
            limits.max_connections,
            soft,
            fitted,
        )
        return dataclasses.replace(limits, max_connections=fitted)
    return limits


def _proxy_policy(proxy_headers: bool | ProxyHeaders, allow: Sequence[str]) -> ProxyHeaders | None:
    if isinstance(proxy_headers, ProxyHeaders):
        return proxy_headers
    return ProxyHeaders(allow) if proxy_headers else None


async def _drain(state: ServerState, connections: trio.Nursery) -> None:
    state.draining = True
    state.shutdown_started.set()
    for conn in list(state.connections):
        conn.close_if_idle()
    with trio.move_on_after(state.limits.graceful_timeout):
        # every accepted connection, including one not yet past choosing its protocol (which
        # would otherwise be cancelled unanswered: a rolling restart's new connections)
        if state.accepted:
            await state.all_closed.wait()
    if state.connections:
        log.info("graceful timeout: cancelling %d connection(s)", len(state.connections))
    connections.cancel_scope.cancel()


async def _accept_loop(
    listener: socket.socket,
    bind: Bind,
    state: ServerState,
    ctx: ssl.SSLContext | None,
    slots: _ConnectionSlots,
    nursery: trio.Nursery,
    http2: bool = True,
) -> None:
    """Accept until cancelled.  At ``max_connections`` it stops accepting (the backlog queues).

    Accepts in batches: every connection already waiting in the backlog is accepted in one go,
    without a trip through the scheduler per connection (``trio.SocketListener.accept`` makes
    one).  With thousands of busy connections a scheduler pass is long, and one accept per pass
    let the backlog overflow while clients waited: 10,000 simultaneous streams took 20 s to all
    be accepted.  A batch is bounded (by the listen backlog: :data:`ACCEPT_BATCH`), so the
    other tasks still get their turn.
    """
    batch = max(ACCEPT_BATCH, state.limits.backlog)
    where = _Listener(bind, state, ctx, slots, http2)
    try:
        while True:
            for _ in range(batch):
                try:
                    slots.acquire_nowait()
                except trio.WouldBlock:
                    await slots.acquire()
                try:
                    conn, _ = listener.accept()
                except BlockingIOError:
                    slots.release()
                    break
                except OSError as exc:
                    slots.release()
                    if exc.errno in _IGNORED_ACCEPT:
                        continue  # that client was gone before we accepted it
                    if exc.errno in _RETRY_ACCEPT:
                        log.error("accept() failed: %s; pausing 100 ms", exc)
                        await trio.sleep(0.1)
                        break
                    raise
                except BaseException:
                    slots.release()
                    raise
                stream = trio.SocketStream(trio.socket.from_stdlib_socket(conn))
                state.accepted += 1  # before the task runs: the drain must wait for it too
                nursery.start_soon(_handle_connection, stream, where, conn, name=_CONNECTION_TASK)
            else:
                await trio.lowlevel.checkpoint()  # a full batch: let the others run, then go on
                continue
            await trio.lowlevel.wait_readable(listener)
    finally:
        # stop accepting at once, even while requests in flight drain
        trio.lowlevel.notify_closing(listener)
        listener.close()


class _Listener:
    """What every connection of one listener is served with, as one argument: the connection
    task's coroutine and its frame (Trio makes the frame object of every task's coroutine)
    both hold a slot per argument for the connection's life, 10,000 of them at 10,000 streams."""

    __slots__ = ("bind", "state", "ctx", "slots", "http2")

    def __init__(
        self, bind: Bind, state: ServerState, ctx: ssl.SSLContext | None, slots: _ConnectionSlots, http2: bool
    ) -> None:
        self.bind = bind
        self.state = state
        self.ctx = ctx
        self.slots = slots
        self.http2 = http2


#: Every connection task's name, one string for all: without it trio formats the same name
#: anew for each task, a 90-byte string held for the connection's life.
_CONNECTION_TASK = f"{__name__}._handle_connection"


def _addr(value: Any) -> tuple[str, int] | None:
    if isinstance(value, tuple) and len(value) >= 2:
        return str(value[0]), int(value[1])
    return None


def _conn_info(stream: trio.SocketStream, bind: Bind, tls: trio.SSLStream[Any] | None) -> ConnInfo | None:
    """What the connection knows about itself, or None if the client has already gone."""
    try:
        peer = _addr(stream.socket.getpeername())
    except OSError:
        return None
    server = (bind.host, bind.port) if bind.kind == "tcp" else None
    return ConnInfo(bind.scheme, server, peer, tls=None if tls is None else tls_info(tls))


async def _handle_connection(stream: trio.SocketStream, where: _Listener, raw: socket.socket | None = None) -> None:
    """One connection's task.  Whatever happens, the socket is closed and the slot released.

    Its frame lives as long as the connection (10,000 of them at 10,000 open streams), so what
    it needs only to set up — the addresses, the handshake's details — is made in
    :func:`_conn_info` and held by the :class:`ConnInfo` alone, not by a local here too; the
    listener's settings come as one :class:`_Listener`.
    """
    transport: trio.abc.Stream = stream
    try:
        tls = None
        if where.ctx is not None:
            tls = await accept_tls(
                stream, where.ctx, handshake_timeout=where.state.limits.handshake_timeout, https_url=str(where.bind)
            )
            if tls is None:
                return
            transport = tls
        info = _conn_info(stream, where.bind, tls)
        del tls  # the transport holds it
        if info is None:
            return  # gone before we looked
        driver = await choose_driver(transport, where.state, info, http2=where.http2, peek_socket=raw)
        del raw  # (the trio socket owns it)
        del info  # the driver holds it
        await driver.run()  # awaited here, not inside a dispatch coroutine: one frame fewer per resumption
    except Exception:
        log.exception("connection from %s crashed; closing it", where.bind)
    finally:
        where.slots.release()
        where.state.accepted -= 1
        if where.state.draining and not where.state.accepted:
            where.state.all_closed.set()
        if transport is stream:
            # A plain socket: what ``SocketStream.aclose()`` does before its checkpoint, which
            # ``aclose_forcefully`` wraps in a cancelled scope: two cancel scopes per connection
            # for no effect (a socket's close cannot block).
            stream.socket.close()
        else:
            await trio.aclose_forcefully(transport)
            await trio.aclose_forcefully(stream)


def run(app: Any, **kwargs: Any) -> None:
    """Blocking form of :func:`serve` for scripts: serve until SIGINT or SIGTERM.

    The first signal shuts down gracefully (see :func:`serve`); a second one cancels at once.
    Keyword arguments are those of :func:`serve`.
    """
    trio.run(_run_until_signalled, app, kwargs)


async def watch_signals(signals: AsyncIterator[int], shutdown: trio.Event, scope: trio.CancelScope) -> None:
    """The shutdown protocol shared by :func:`run` and the CLI: the first SIGINT/SIGTERM sets
    ``shutdown`` (graceful), a second cancels ``scope`` (at once).  A SIGHUP (if ``signals``
    carries it: the CLI's single process) is logged as unsupported: only the supervisor of
    ``-n`` restarts workers."""
    async for signum in signals:
        name = signal.Signals(signum).name
        if signum == signal.SIGHUP:
            log.warning(
                "SIGHUP: restarts are not supported in a single process (ignored); "
                "run with -n 2 (or more) for zero-downtime rolling restarts on SIGHUP"
            )
            continue
        if shutdown.is_set():
            log.info("%s again: stopping now", name)
            scope.cancel()
            return
        log.info("%s: shutting down gracefully (again to stop at once)", name)
        shutdown.set()


async def _run_until_signalled(app: Any, kwargs: dict[str, Any]) -> None:
    shutdown = trio.Event()
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch_signals, signals, shutdown, nursery.cancel_scope)
            await serve(app, shutdown_trigger=shutdown, **kwargs)
            nursery.cancel_scope.cancel()
