"""TLS for listeners: the server context, the handshake, and plain HTTP sent to a TLS port.

Falcon's most reported first-run confusion is a browser or curl speaking ``http://`` to its
default ``https://`` port and getting an opaque failure.  A TLS record always starts with byte
0x16 (handshake); an HTTP request starts with a method name.  So before handshaking, the
server peeks (without consuming) at the first byte: if it looks like HTTP, it reads the request
head with h11 and answers a plain-HTTP ``400`` with ``connection: close`` whose body names the
https URL to use.  Anything else goes to the handshake, which is bounded by the handshake
timeout; a client failing it costs one log line.

``SSLStream`` is a ``Stream`` but not a ``HalfCloseableStream`` (TLS has no half-close); the
connection loop never assumes ``send_eof`` on it.

Mutual TLS: with ``client_cert="optional"`` or ``"required"`` the context asks for a client
certificate and trusts **only** ``ca_certs`` for it (the context is built from
``PROTOCOL_TLS_SERVER``, not ``create_default_context``, whose client-auth purpose would also
load the system's CAs and let any publicly issued certificate in).  What the handshake settled
is handed to the app as ``env["trio_rack.tls"]`` (:func:`tls_info`).  Python's ssl module has
no verification callback, so a certificate that fails verification always fails the handshake,
in ``optional`` mode too: ``client_verified`` is False only when no certificate was sent.

The server name the client sent (SNI) is not readable from an ``SSLObject`` afterwards, so the
context's ``sni_callback`` records it per connection, in a weak mapping.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import types
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import h11
import trio

from ..authority import SAFE_HOST_RE
from ..config import ConfigError, TLSConfig
from ..state import SERVER_HEADER, date_header
from .quick_socket import QuickSocketStream

__all__ = ["make_server_context", "accept_tls", "tls_info"]

log = logging.getLogger("trio_rack.error")

TLS_HANDSHAKE_RECORD = 0x16


_VERSIONS = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}
_VERIFY = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}
#: SNI names seen by the handshake, per SSLObject (weak: gone with the connection).
_SERVER_NAMES: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()


def _check_readable(label: str, path: str | os.PathLike[str]) -> None:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{label} file {str(p)!r} does not exist")
    try:
        p.open("rb").close()
    except OSError as exc:
        raise ConfigError(f"cannot read {label} file {str(p)!r}: {exc.strerror}") from None


def _remember_server_name(ssl_object: Any, server_name: str | None, _ctx: ssl.SSLContext) -> None:
    if server_name is not None:
        _SERVER_NAMES[ssl_object] = server_name


class _EncryptedKey(Exception):
    pass


def _password(config: TLSConfig) -> str | bytes | Any:
    """The key's password, or a callback that refuses: without one, OpenSSL would prompt for a
    pass phrase on the terminal (and block a server started from a script)."""
    if config.key_password is not None:
        return config.key_password

    def refuse() -> bytes:
        raise _EncryptedKey

    return refuse


def make_server_context(config: TLSConfig | str | Path, key: str | Path | None = None) -> ssl.SSLContext:
    """The server context ``config`` describes (``config.cert`` must be set); offers ALPN
    ``h2`` then ``http/1.1`` by default (``TLSConfig.alpn``; ``serve(http2=False)`` drops
    ``h2``).  ``make_server_context(cert, key)`` is short for a TLSConfig with
    just those two.

    Raises :class:`ConfigError` with one line naming the file or value when something cannot
    be loaded: a missing file, a wrong key password, a cipher string OpenSSL rejects.
    """
    if not isinstance(config, TLSConfig):
        config = TLSConfig(cert=config, key=key)
    if config.cert is None or config.key is None:
        raise ConfigError("make_server_context needs a certificate and a key")
    cert, key = str(config.cert), str(config.key)
    _check_readable("certificate", cert)
    _check_readable("key", key)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = _VERSIONS[config.min_version]
    try:
        ctx.load_cert_chain(cert, key, password=_password(config))
    except _EncryptedKey:
        raise ConfigError(f"key {key!r} is encrypted: give its password with --key-password-file") from None
    except (ssl.SSLError, ValueError, OSError) as exc:
        hint = " (wrong --key-password-file?)" if config.key_password is not None else ""
        raise ConfigError(f"cannot load certificate {cert!r} with key {key!r}: {exc}{hint}") from None
    if config.ciphers is not None:
        try:
            ctx.set_ciphers(config.ciphers)
        except ssl.SSLError:
            raise ConfigError(f"--ssl-ciphers {config.ciphers!r} selects no cipher OpenSSL knows") from None
    if config.client_cert != "none":
        assert config.ca_certs is not None  # TLSConfig checked it
        _check_readable("CA certificates", config.ca_certs)
        try:
            ctx.load_verify_locations(cafile=str(config.ca_certs))
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(f"cannot load CA certificates {str(config.ca_certs)!r}: {exc}") from None
        ctx.verify_mode = _VERIFY[config.client_cert]
    ctx.set_alpn_protocols(list(config.alpn))
    ctx.sni_callback = _remember_server_name
    return ctx


def tls_info(tls: trio.SSLStream[Any]) -> Mapping[str, Any]:
    """What the handshake settled, as the read-only mapping the app sees as ``env["trio_rack.tls"]``.

    Keys: ``version`` ("TLSv1.3"), ``cipher`` (its OpenSSL name), ``alpn`` (the protocol chosen,
    or None), ``server_name`` (SNI, or None), ``client_cert`` (the client's certificate as PEM,
    or None), ``client_cert_chain`` (the PEM certificates the client presented, leaf first; empty
    without one), ``client_subject`` (the leaf's subject as RFC 4514 text, or None) and
    ``client_verified`` (True when a client certificate was sent and verified).
    """
    obj: Any = tls._ssl_object  # trio's SSLStream forwards attributes, but not to private ones
    cipher = obj.cipher()
    der = obj.getpeercert(binary_form=True)
    pem = ssl.DER_cert_to_PEM_cert(der) if der else None
    chain: tuple[str, ...] = ()
    subject = None
    if der:
        chain = _presented_chain(obj) or (pem,)  # type: ignore[assignment]
        from cryptography import x509

        subject = x509.load_der_x509_certificate(der).subject.rfc4514_string()
    info = {
        "version": obj.version(),
        "cipher": cipher[0] if cipher else None,
        "alpn": obj.selected_alpn_protocol(),
        "server_name": _SERVER_NAMES.get(obj),
        "client_cert": pem,
        "client_cert_chain": chain,
        "client_subject": subject,
        "client_verified": bool(der) and obj.context.verify_mode != ssl.CERT_NONE,
    }
    return types.MappingProxyType(info)


def _presented_chain(obj: Any) -> tuple[str, ...]:
    """The client's certificates as sent (``SSLObject.get_unverified_chain``, public from 3.13;
    3.10-3.12 have it on the private ``_sslobj``)."""
    getter = getattr(obj, "get_unverified_chain", None) or getattr(
        getattr(obj, "_sslobj", None), "get_unverified_chain", None
    )
    if getter is None:
        return ()
    try:
        certs = getter() or []
        return tuple(c.public_bytes(ssl._ssl.ENCODING_PEM) for c in certs)  # type: ignore[attr-defined]
    except (AttributeError, ssl.SSLError, ValueError):
        return ()


async def _peek_first_byte(stream: trio.SocketStream) -> bytes:
    sock = stream.socket
    return await sock.recv(1, socket.MSG_PEEK)


async def accept_tls(
    stream: trio.SocketStream,
    ctx: ssl.SSLContext,
    *,
    handshake_timeout: float,
    https_url: str,
) -> trio.SSLStream[QuickSocketStream] | None:
    """Handshake on an accepted TCP stream; None if the client spoke plain HTTP or failed.

    The TLS stream's transport is ``stream`` seen through :class:`QuickSocketStream` (a
    non-blocking system call tried before each trip through Trio's scheduler).

    Resource handling: never closes ``stream``; the caller does, in its ``finally``.
    """
    peer = _peer(stream)
    with trio.move_on_after(handshake_timeout):
        try:
            first = await _peek_first_byte(stream)
        except OSError:
            return None
        if not first:
            return None
        if first[0] != TLS_HANDSHAKE_RECORD:
            await _answer_plain_http(stream, https_url)
            return None
        tls = trio.SSLStream(QuickSocketStream(stream), ctx, server_side=True, https_compatible=True)
        try:
            await tls.do_handshake()
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            cause = exc.__cause__ or exc
            if _is_client_cert_refusal(cause):
                log.info("%s: TLS handshake refused: no valid client certificate (%s)", peer, cause)
            else:
                log.info("%s: TLS handshake failed: %s", peer, cause)
            return None
        lighten_locks(tls)
        return tls
    log.info("%s: TLS handshake timed out", peer)
    return None


class _YieldOnlyIfContended:
    """A trio lock that, taken while free, neither yields to the scheduler nor does trio's
    bookkeeping for waiters that are not there.

    Why: ``trio.SSLStream`` serialises its transport calls with two inner locks, and trio's
    ``Lock.acquire`` always ends in a scheduler pass, even uncontended.  A keep-alive TLS
    request takes each once, so two extra passes of the run loop per request (about a tenth
    of a TLS hello's instructions, ``bench/cg_paths.py tls``), on top of the pass that the
    transport's own ``receive_some``/``send_all`` inside the lock always make.  Even without
    the pass, ``acquire_nowait`` and ``release`` register and unregister the holder as the
    lock's "parking lot breaker" (so waiters learn when a holder dies without releasing):
    half of what the two locks still cost a request (27,700 instructions for both, all told).
    So a free lock is taken by naming the holder its owner (trio's own ``_owner`` field: the
    lock reads as held to everyone), and the breaker is registered only when a second task
    actually comes to wait (before it parks, so trio's release path finds it where it looks).
    ``SSLStream`` holds these locks only inside ``async with``, so a holder always releases.

    Everything else is the stream's own lock object: the cancellation check before taking it,
    strict FIFO order (a free-looking lock with anyone queued is not free: ``release`` hands
    it to the first waiter), parking when contended, the release.  trio's classes cannot be
    subclassed, hence a wrapper.  Who closes what: nothing to close.
    """

    __slots__ = ("_lock", "_light")

    def __init__(self, lock: trio.Lock | trio.StrictFIFOLock) -> None:
        self._lock = lock
        #: True while the holder took the lock the light way (no breaker registered).
        self._light = False

    @trio.lowlevel.enable_ki_protection
    async def __aenter__(self) -> None:
        lock = self._lock
        await trio.lowlevel.checkpoint_if_cancelled()
        if lock._owner is None and not lock._lot:
            lock._owner = trio.lowlevel.current_task()
            self._light = True
            return
        if self._light:  # a waiter at last: register the holder as trio would have
            self._light = False
            assert lock._owner is not None
            trio.lowlevel.add_parking_lot_breaker(lock._owner, lock._lot)
        await lock.acquire()  # contended: trio's own path (it parks in FIFO order)

    @trio.lowlevel.enable_ki_protection
    async def __aexit__(self, *exc_info: object) -> None:
        if self._light:
            self._light = False
            self._lock._owner = None
        else:
            self._lock.release()


def lighten_locks(tls: trio.SSLStream[Any]) -> None:
    """Swap ``tls``'s two inner locks for :class:`_YieldOnlyIfContended` views of themselves.

    Only when they are what trio 0.2x–0.3x has there (``_inner_send_lock``, a
    ``StrictFIFOLock``; ``_inner_recv_lock``, a ``Lock``; both with the ``_owner`` and
    ``_lot`` fields the light path uses); any other trio keeps its own.  Called after the
    handshake, before any other task can use the stream.
    """
    send = getattr(tls, "_inner_send_lock", None)
    recv = getattr(tls, "_inner_recv_lock", None)
    if (
        type(send) is trio.StrictFIFOLock
        and type(recv) is trio.Lock
        and all(hasattr(lock, "_owner") and hasattr(lock, "_lot") for lock in (send, recv))
    ):
        tls._inner_send_lock = _YieldOnlyIfContended(send)  # type: ignore[assignment]
        tls._inner_recv_lock = _YieldOnlyIfContended(recv)  # type: ignore[assignment]


def _is_client_cert_refusal(exc: BaseException) -> bool:
    reason = getattr(exc, "reason", None) or ""
    return reason in (
        "PEER_DID_NOT_RETURN_A_CERTIFICATE",
        "CERTIFICATE_VERIFY_FAILED",
        "NO_CERTIFICATE_RETURNED",
    )


async def _answer_plain_http(stream: trio.SocketStream, https_url: str) -> None:
    """Read a plain-HTTP request head from a TLS port and tell the client to use https."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=16 * 1024)
    target = "/"
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(16 * 1024))
                continue
            if type(event) is h11.Request:
                target = event.target.decode("latin-1")
                if not target.startswith("/"):
                    target = "/"
                for name, value in event.headers:
                    if name == b"host" and SAFE_HOST_RE.fullmatch(value):
                        https_url = "https://" + value.decode("ascii")
            break
    except (h11.RemoteProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    url = https_url.rstrip("/") + target
    body = (
        f"This port speaks HTTPS, but the request came as plain HTTP.\n"
        f"Use: {url}\n"
    ).encode("utf-8", "replace")
    head = (
        b"HTTP/1.1 400 Bad Request\r\n"
        b"content-type: text/plain; charset=utf-8\r\n"
        b"content-length: %d\r\n"
        b"connection: close\r\n"
        b"date: %s\r\n"
        b"%s: %s\r\n\r\n" % (len(body), date_header(), *SERVER_HEADER)  # as on every other response
    )
    log.info("%s: plain HTTP on a TLS port; told to use %s", _peer(stream), url)
    try:
        await stream.send_all(head + body)
        await stream.send_eof()
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


def _peer(stream: trio.SocketStream) -> str:
    try:
        addr = stream.socket.getpeername()
        return f"{addr[0]}:{addr[1]}"
    except (OSError, IndexError, TypeError):
        return "?"
