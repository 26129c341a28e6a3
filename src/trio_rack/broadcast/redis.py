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

TLS (``rediss://``).  The context is built here, not by coredis, because coredis' default
checks the chain but not the host name; here both are checked.  The query string configures
it, with coredis' names (``rediss://HOST:PORT/DB?ssl_ca_certs=/path/ca.pem``):
``ssl_ca_certs`` (a CA file or directory; default: the system's trust store),
``ssl_certfile``/``ssl_keyfile`` (a client certificate, for a server with
``tls-auth-clients yes``), ``ssl_check_hostname`` (default ``true``) and ``ssl_cert_reqs``
(``required``, the default, or ``none`` to verify nothing, which only a test should do); or
the keyword ``ssl_context=`` takes a ready :class:`ssl.SSLContext` instead of the query.  A
handshake the client refuses (a certificate that is not trusted, not for the host, or a server
that does not speak TLS) on the first connection is configuration, not an outage: ``connect``
raises one :class:`~._core.Unavailable` that says why, and logs nothing.  Later it is an
outage like any other, and ``Unavailable`` from ``publish`` names the TLS reason.

History: ``append`` runs ``XADD key MAXLEN maxlen * m payload`` and ``PUBLISH`` in one Lua script,
so entries are published in id order; ``history`` is ``XRANGE key (after +``.  The stream key of
channel ``C`` is ``trio-rack:history:C``.

Resource handling: :func:`open_bus` owns the client, the pub/sub connection and the listener;
leaving it cancels the listener and closes both (cancelled subscribers only drop their queue).
"""

from __future__ import annotations

import logging
import math
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

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
#: The ``rediss://`` query parameters read here (coredis' names); any other ``ssl_*`` is a typo.
TLS_PARAMETERS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_check_hostname", "ssl_cert_reqs")
#: PINGs at most at connect to see a TLS 1.3 refusal through the reset race (see _check_tls).
_TLS_CHECKS = 8
#: OpenSSL's X509_V_ERR_HOSTNAME_MISMATCH and X509_V_ERR_IP_ADDRESS_MISMATCH: not a CA problem.
_NAME_MISMATCH = (62, 64)
_TRUE, _FALSE = ("true", "yes", "1", "on"), ("false", "no", "0", "off")


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


def tls_context(url: str, ssl_context: ssl.SSLContext | None = None) -> ssl.SSLContext | None:
    """The client TLS context for ``url`` (None for ``redis://``), from its query or
    ``ssl_context``.  Bad TLS settings are ``ValueError``: a ``redis://`` URL with TLS settings
    (they would be ignored, and the traffic plain text), an unknown ``ssl_*`` parameter, both
    the query and ``ssl_context``, a CA or certificate file that cannot be read."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    given = {name: values[-1] for name, values in query.items() if name.startswith("ssl_")}
    unknown = sorted(set(given) - set(TLS_PARAMETERS))
    if unknown:
        raise ValueError(f"unknown TLS parameter(s) {', '.join(unknown)} in the broadcast URL;"
                         f" known: {', '.join(TLS_PARAMETERS)}")
    if parts.scheme.lower() != "rediss":
        if given or ssl_context is not None:
            raise ValueError("TLS settings need a rediss:// URL (redis:// is plain text)")
        return None
    if ssl_context is not None:
        if given:
            raise ValueError("give TLS settings either in the URL query or as ssl_context=, not both")
        if not isinstance(ssl_context, ssl.SSLContext):
            raise TypeError(f"ssl_context must be an ssl.SSLContext, not {type(ssl_context).__name__}")
        return ssl_context
    check_hostname = _flag("ssl_check_hostname", given.get("ssl_check_hostname", "true"))
    reqs = given.get("ssl_cert_reqs", "required").lower()
    if reqs not in ("required", "optional", "none"):
        raise ValueError(f"ssl_cert_reqs must be required or none, got {reqs!r}")
    ca = given.get("ssl_ca_certs")
    try:
        context = ssl.create_default_context(
            cafile=ca if ca and not Path(ca).is_dir() else None, capath=ca if ca and Path(ca).is_dir() else None
        )
        if "ssl_certfile" in given:
            context.load_cert_chain(given["ssl_certfile"], given.get("ssl_keyfile"))
        elif "ssl_keyfile" in given:
            raise ValueError("ssl_keyfile needs ssl_certfile")
    except (OSError, ssl.SSLError) as exc:  # FileNotFoundError, a PEM that is not one
        raise ValueError(f"rediss:// TLS files: {exc}") from exc
    if reqs == "none":
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:  # "optional" means "required" for a client (the ssl module's own rule)
        context.check_hostname = check_hostname
    return context


def _flag(name: str, value: str) -> bool:
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise ValueError(f"{name} must be true or false, got {value!r}")


def tls_failure(exc: BaseException | None) -> ssl.SSLError | None:
    """The TLS error behind ``exc`` (coredis wraps it in its ConnectionError, anyio in groups)."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        err = todo.pop()
        if err is None or id(err) in seen:
            continue
        seen.add(id(err))
        if isinstance(err, ssl.SSLError):
            return err
        if isinstance(err, BaseExceptionGroup):
            todo.extend(err.exceptions)
        todo += [err.__cause__, err.__context__]
    return None


def _reason(exc: BaseException) -> str:
    """What an Unavailable says: the TLS failure if there was one, else the error itself."""
    tls = tls_failure(exc)
    if tls is not None:
        if isinstance(tls, ssl.SSLCertVerificationError):
            return f"TLS handshake refused: {tls.verify_message}"
        if "CERTIFICATE_REQUIRED" in (tls.reason or ""):
            return "TLS refused by the server: it requires a client certificate (ssl_certfile=, ssl_keyfile=)"
        if "ALERT" in (tls.reason or ""):
            return f"TLS refused by the server ({tls})"
        return f"TLS handshake failed, is it a TLS port? ({tls})"
    return str(exc)


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
            raise Unavailable(f"{what}: Redis at {safe_url(self.url)} unreachable ({_reason(exc)})") from exc
        except BaseExceptionGroup as group:
            match, rest = group.split(conn_errors)
            if rest is None and match is not None:
                first = match.exceptions[0]
                raise Unavailable(f"{what}: Redis at {safe_url(self.url)} unreachable ({_reason(first)})") from group
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

    async def run(
        self, *, task_status: trio.TaskStatus[ssl.SSLError | None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """The listener: connect, subscribe, deliver; on failure back off and reconnect.

        Reports started after the first connection attempt, whichever way it went, so a bus
        whose Redis is down at start-up still opens (and says so in the log) — except when
        that attempt's TLS handshake was refused: then it reports the ``ssl.SSLError`` and
        returns, and :func:`open_bus` raises (see TLS in the module docstring)."""
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
                failure: BaseException = group
            except Exception as exc:  # noqa: BLE001 - any failure of the connection is an outage
                failure = exc
            refused = tls_failure(failure)
            if not started and refused is not None:
                task_status.started(refused)
                return
            self._outage(failure)
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
    if tls_failure(exc) is not None:
        return _reason(exc)
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


@asynccontextmanager
async def open_bus(
    url: str,
    *,
    command_timeout: float = 5.0,
    max_backoff: float = 5.0,
    ssl_context: ssl.SSLContext | None = None,
) -> AsyncIterator[RedisBus]:
    coredis = _import_coredis()
    if not (command_timeout > 0 and math.isfinite(command_timeout)):
        raise ValueError("command_timeout must be positive seconds")
    context = tls_context(url, ssl_context)
    tls: dict[str, Any] = {} if context is None else {"ssl_context": context}  # coredis skips its own
    client = coredis.Redis.from_url(
        url,
        decode_responses=False,
        retry_policy=coredis.retry.NoRetryPolicy(),
        connect_timeout=command_timeout,
        verify_version=False,  # it runs a command at the first connection; one fewer failure mode
        **tls,
    )
    refused: ssl.SSLError | None = None
    body_error: BaseException | None = None
    unwrapped: BaseException | None = None
    try:
        async with client, trio.open_nursery() as nursery:
            if context is not None:
                refused = await _check_tls(client, command_timeout)
            if refused is None:
                bus = RedisBus(url, client, timeout=command_timeout, max_backoff=max_backoff)
                refused = await nursery.start(bus.run)
            if refused is None:
                try:
                    yield bus
                except BaseException as exc:
                    body_error = exc
                    raise
                finally:
                    bus._mark_up(closing=True)
                    nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # The nursery, and coredis' task group around it, wrap what the caller's block raised
        # (Unavailable from publish, say); hand it back as raised, as if there were no nursery.
        # Anything else (more than that one exception) stays a group.
        sole: BaseException = group
        while isinstance(sole, BaseExceptionGroup) and len(sole.exceptions) == 1:
            sole = sole.exceptions[0]
        if body_error is None or sole is not body_error:
            raise
        unwrapped = body_error
    if unwrapped is not None:
        raise unwrapped  # outside the except: no group in its context
    if refused is not None:  # raised here, not in the nursery: one plain exception, not a group
        hint = ""
        if isinstance(refused, ssl.SSLCertVerificationError) and refused.verify_code not in _NAME_MISMATCH:
            hint = "; give its CA with ?ssl_ca_certs=/path/ca.pem"
        raise Unavailable(f"Redis at {safe_url(url)}: {_reason(refused)}{hint}") from refused


async def _check_tls(client: Any, limit: float) -> ssl.SSLError | None:
    """A PING over a pooled connection: the TLS error if the server refused the session.

    Needed beside the listener's first attempt because with TLS 1.3 a server that wants a client
    certificate says so only after the handshake, in an alert that races our first write: about
    half the time the write meets the server's close first and the alert is lost to a reset.
    So a connection that was made and then lost at once is tried again, up to
    ``_TLS_CHECKS`` times (milliseconds each; a server that is really going away refuses the
    next connection outright, which ends the checks).  Any other failure (Redis down) is left
    to the listener, which treats it as an outage.  (So a ``rediss://`` host that drops packets
    delays ``connect`` by up to twice ``command_timeout``: this, then the listener.)"""
    with trio.move_on_after(limit):
        for _ in range(_TLS_CHECKS):
            try:
                await client.ping()
            except Exception as exc:  # noqa: BLE001 - only a TLS failure is of interest here (and groups of Exceptions)
                refused = tls_failure(exc)
                if refused is not None or not _lost_after_connecting(exc):
                    return refused
            else:
                return None
    return None


def _lost_after_connecting(exc: BaseException) -> bool:
    """coredis' "connection lost" (made, then reset or closed), not "unable to connect"."""
    todo: list[BaseException | None] = [exc]
    seen: set[int] = set()
    while todo:
        err = todo.pop()
        if err is None or id(err) in seen:
            continue
        seen.add(id(err))
        if isinstance(err, trio.BrokenResourceError | ConnectionResetError | BrokenPipeError):
            return True
        if type(err).__name__ in ("BrokenResourceError", "EndOfStream"):  # anyio's own
            return True
        if isinstance(err, BaseExceptionGroup):
            todo.extend(err.exceptions)
        todo += [err.__cause__, err.__context__]
    return False
