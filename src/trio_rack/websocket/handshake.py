"""The websocket opening handshake (RFC 6455 §4.2), pure: no trio, no sockets.

What :func:`trio_rack.websocket.accept` decides before it touches the connection: whether the
request is an acceptable upgrade (:func:`check_request`, raising :class:`HandshakeError` with
the response to return), which subprotocol to select, whether to accept permessage-deflate, and
the bytes of the ``101`` head.  Everything here takes the Rack ``env`` (or plain values) and
returns values, so it is unit-testable on dicts.

Refusals (why a 426 is a partial hijack): RFC 9110 requires ``upgrade`` in a 426, but the
server drops hop-by-hop headers (``upgrade``, ``connection``) from ordinary responses.  A
partial hijack is the one response whose head the app owns, so :func:`upgrade_required` sends
``426`` with ``upgrade: websocket``, ``connection: upgrade, close`` and
``sec-websocket-version: 13`` that way, with a close-delimited text body (the connection then
closes).  A malformed upgrade (wrong method, HTTP/1.0, no ``connection: upgrade``, a bad
``sec-websocket-key``) is an ordinary ``400``; an unsupported ``sec-websocket-version`` is a
426 with ``sec-websocket-version: 13`` (RFC 6455 §4.4); a refused ``origin`` is a ``403``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from wsproto.extensions import PerMessageDeflate

if TYPE_CHECKING:  # only for an annotation: this module runs without trio
    import trio

__all__ = [
    "HandshakeError",
    "check_request",
    "is_websocket",
    "negotiate_deflate",
    "response_head",
    "select_subprotocol",
    "upgrade_required",
]

#: RFC 6455 §1.3: the fixed GUID hashed with the client's key into ``sec-websocket-accept``.
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class HandshakeError(Exception):
    """The request is not an acceptable websocket upgrade.  ``response`` is the triple to return
    (426, 400 or 403, with a text body saying why); ``status`` is its status."""

    def __init__(self, status: int, message: str, response: tuple[int, dict[str, Any], Any]) -> None:
        super().__init__(message)
        self.status = status
        self.response = response



def _tokens(value: str | None) -> list[str]:
    return [t.strip().lower() for t in (value or "").split(",") if t.strip()]


def is_websocket(env: Mapping[str, Any]) -> bool:
    """Whether the request asks for a websocket (``upgrade: websocket``, or on HTTP/2 an extended
    CONNECT with ``:protocol websocket``, RFC 8441); it may still be invalid."""
    return "websocket" in _tokens(env.get("HTTP_UPGRADE")) or is_extended_connect(env)


def is_extended_connect(env: Mapping[str, Any]) -> bool:
    """An HTTP/2 extended CONNECT for a websocket (RFC 8441): ``env["trio_rack.protocol"]``."""
    return str(env.get("trio_rack.protocol", "")).lower() == "websocket"


def tunnel_headers(subprotocol: str | None, extension: str | None, headers: Mapping[str, str]) -> dict[str, str]:
    """The ``200`` headers of an RFC 8441 websocket (no upgrade, no accept token)."""
    result = dict(headers)
    if subprotocol is not None:
        result["sec-websocket-protocol"] = subprotocol
    if extension is not None:
        result["sec-websocket-extensions"] = extension
    return result


def upgrade_required(env: Mapping[str, Any], message: str = "") -> tuple[int, dict[str, Any], Any]:
    """A ``426 Upgrade Required`` for a plain HTTP request to a websocket endpoint.

    Sent as a partial hijack so that ``upgrade``/``connection`` reach the wire (see the module
    docstring); the body explains, and the connection closes after it.
    """
    text = (message or "This is a WebSocket endpoint: connect with a WebSocket client "
            "(Upgrade: websocket, Sec-WebSocket-Version: 13).") + "\n"
    body = text.encode("utf-8")
    head_only = env.get("REQUEST_METHOD") == "HEAD"

    async def write_body(stream: trio.abc.Stream) -> None:
        if not head_only:
            await stream.send_all(body)

    headers = {
        "upgrade": "websocket",
        "connection": "upgrade, close",
        "sec-websocket-version": "13",
        "content-type": "text/plain; charset=utf-8",
        "rack.hijack": write_body,
    }
    return 426, headers, []


def _refuse(status: int, message: str, env: Mapping[str, Any]) -> HandshakeError:
    if status == 426:
        return HandshakeError(426, message, upgrade_required(env, message))
    headers = {"content-type": "text/plain; charset=utf-8"}
    return HandshakeError(status, message, (status, headers, [message.encode("utf-8") + b"\n"]))


def check_request(env: Mapping[str, Any], origins: Collection[str] | None) -> str:
    """Validate the upgrade request; return the client's key or raise HandshakeError."""
    if not is_websocket(env):
        raise _refuse(426, "This is a WebSocket endpoint: plain HTTP requests are not served here.", env)
    if is_extended_connect(env):
        # RFC 8441 §5: CONNECT with :protocol, no key and no accept token; version 13 still.
        if env.get("REQUEST_METHOD") != "CONNECT":
            raise _refuse(400, "Bad WebSocket handshake: :protocol needs the CONNECT method.", env)
        if env.get("HTTP_SEC_WEBSOCKET_VERSION", "").strip() != "13":
            raise _refuse(426, "Unsupported WebSocket version: this server speaks version 13.", env)
        if origins is not None and env.get("HTTP_ORIGIN") is not None and env["HTTP_ORIGIN"] not in origins:
            raise _refuse(403, "WebSocket connection refused: origin not allowed.", env)
        return ""
    if env.get("REQUEST_METHOD") != "GET":
        raise _refuse(400, "Bad WebSocket handshake: the method must be GET.", env)
    if env.get("SERVER_PROTOCOL") != "HTTP/1.1":
        raise _refuse(400, "Bad WebSocket handshake: HTTP/1.1 is required.", env)
    if "upgrade" not in _tokens(env.get("HTTP_CONNECTION")):
        raise _refuse(400, "Bad WebSocket handshake: 'Connection: Upgrade' is missing.", env)
    if env.get("HTTP_SEC_WEBSOCKET_VERSION", "").strip() != "13":
        raise _refuse(426, "Unsupported WebSocket version: this server speaks version 13.", env)
    key: str = env.get("HTTP_SEC_WEBSOCKET_KEY", "").strip()
    try:
        valid = len(base64.b64decode(key, validate=True)) == 16
    except (binascii.Error, ValueError):
        valid = False
    if not valid:
        raise _refuse(400, "Bad WebSocket handshake: Sec-WebSocket-Key must be 16 bytes in base64.", env)
    if origins is not None and env.get("HTTP_ORIGIN") is not None and env["HTTP_ORIGIN"] not in origins:
        raise _refuse(403, "WebSocket connection refused: origin not allowed.", env)
    return key


def select_subprotocol(env: Mapping[str, Any], supported: Sequence[str]) -> str | None:
    """The first of the server's ``supported`` subprotocols that the client offered (server's order)."""
    offered = {p.strip() for p in env.get("HTTP_SEC_WEBSOCKET_PROTOCOL", "").split(",")}
    return next((p for p in supported if p in offered), None)



def negotiate_deflate(env: Mapping[str, Any], deflate: PerMessageDeflate) -> str | None:
    """Offer the client's permessage-deflate offers to ``deflate`` in order; the
    ``sec-websocket-extensions`` value of the first one it accepts, else None (``deflate``
    is then not to be used)."""
    for offer in env.get("HTTP_SEC_WEBSOCKET_EXTENSIONS", "").split(","):
        if offer.split(";", 1)[0].strip() == deflate.name:
            params = deflate.accept(offer)
            if params is not None and params is not False:
                return deflate.name if params in (True, "") else f"{deflate.name}; {params}"
    return None


def response_head(key: str, subprotocol: str | None, extension: str | None, headers: Mapping[str, str]) -> bytes:
    accept_token = base64.b64encode(hashlib.sha1(key.encode("ascii") + _GUID).digest()).decode("ascii")
    lines = [
        "HTTP/1.1 101 Switching Protocols",
        "upgrade: websocket",
        "connection: Upgrade",
        f"sec-websocket-accept: {accept_token}",
        "server: trio-rack",
    ]
    if subprotocol is not None:
        lines.append(f"sec-websocket-protocol: {subprotocol}")
    if extension is not None:
        lines.append(f"sec-websocket-extensions: {extension}")
    for name, value in headers.items():
        if any(ord(c) < 32 or ord(c) == 127 for c in name + value) or ":" in name or name != name.lower():
            raise ValueError(f"invalid extra header {name!r}: {value!r}")
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
