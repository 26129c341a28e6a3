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
"""

from __future__ import annotations

import logging
import re
import socket
import ssl
from pathlib import Path

import h11
import trio

from ..config import ConfigError

__all__ = ["make_server_context", "accept_tls"]

log = logging.getLogger("trio_rack.error")

TLS_HANDSHAKE_RECORD = 0x16
#: A Host header we are willing to echo back in the redirect hint: name or [v6] and a port.
_HOST_RE = re.compile(rb"[A-Za-z0-9.\-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")


def make_server_context(cert: str | Path, key: str | Path) -> ssl.SSLContext:
    """A server context for ``cert`` (a PEM chain) and ``key``, offering ALPN h2, then http/1.1.

    Raises :class:`ConfigError` with one line naming the file when either cannot be loaded.
    """
    for label, path in (("certificate", cert), ("key", key)):
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"{label} file {str(p)!r} does not exist")
        try:
            p.open("rb").close()
        except OSError as exc:
            raise ConfigError(f"cannot read {label} file {str(p)!r}: {exc.strerror}") from None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(str(cert), str(key))
    except (ssl.SSLError, ValueError, OSError) as exc:
        raise ConfigError(f"cannot load certificate {str(cert)!r} with key {str(key)!r}: {exc}") from None
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    return ctx


async def _peek_first_byte(stream: trio.SocketStream) -> bytes:
    sock = stream.socket
    return await sock.recv(1, socket.MSG_PEEK)


async def accept_tls(
    stream: trio.SocketStream,
    ctx: ssl.SSLContext,
    *,
    handshake_timeout: float,
    https_url: str,
) -> trio.SSLStream[trio.SocketStream] | None:
    """Handshake on an accepted TCP stream; None if the client spoke plain HTTP or failed.

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
        tls = trio.SSLStream(stream, ctx, server_side=True, https_compatible=True)
        try:
            await tls.do_handshake()
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            cause = exc.__cause__ or exc
            log.info("%s: TLS handshake failed: %s", peer, cause)
            return None
        return tls
    log.info("%s: TLS handshake timed out", peer)
    return None


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
                    if name == b"host" and _HOST_RE.fullmatch(value):
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
        b"connection: close\r\n\r\n" % len(body)
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
