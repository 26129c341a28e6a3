"""Build ASGI ``http`` and ``websocket`` scopes from a trio-rack request ``env``.  No I/O.

The env is the server's one description of a request (whatever the wire protocol), so the
scope is a translation of it, with the pieces ASGI wants that CGI keys lose:

* ``headers`` are the request's own header lines, lower-case, in order, repeated ones kept
  apart.  They come from ``env["trio_rack.request_head"]`` (the driver's ``RequestHead``) when
  the server provides it; otherwise they are rebuilt from the ``HTTP_*`` keys (joined repeats,
  order not kept, names with ``_`` already dropped by the env builder).
* ``path`` is percent-decoded as UTF-8 (invalid sequences replaced), ``raw_path`` is the
  target's path as received.  With a root path (``--root-path``), ``path`` is the full path
  the app's router sees: ``root_path`` + the request path, unless the proxy kept the prefix.
* ``client`` and ``server`` carry int ports (a frequent peer bug is str ports); ``server`` is
  the listening address when the server provides ``env["trio_rack.conn_info"]``, else the
  ``SERVER_NAME``/``SERVER_PORT`` pair.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote_to_bytes

__all__ = ["ASGI_VERSION", "http_scope", "request_headers", "decode_path", "websocket_scope"]

#: ASGI 3.0, HTTP/WebSocket spec 2.4 (2.4 adds: send() after a disconnect raises OSError).
ASGI_VERSION = {"version": "3.0", "spec_version": "2.4"}
_WS_ASGI_VERSION = {"version": "3.0", "spec_version": "2.4"}

_CGI_HEADERS = {"CONTENT_TYPE": b"content-type", "CONTENT_LENGTH": b"content-length"}


def request_head(env: Mapping[str, Any]) -> Any:
    """The driver's ``RequestHead`` (method, path, query, http_version, headers), or None."""
    return env.get("trio_rack.request_head")


def conn_info(env: Mapping[str, Any]) -> Any:
    """The connection's ``ConnInfo`` (scheme, listening and peer addresses), or None."""
    return env.get("trio_rack.conn_info")


def tls_stream(env: Mapping[str, Any]) -> Any:
    """What the connection knows of its TLS on https binds (``trio_rack.net.tls.tls_info``), else None."""
    return env.get("trio_rack.tls")


def request_headers(env: Mapping[str, Any], head: Any = None) -> list[tuple[bytes, bytes]]:
    """The request's header lines as ``(name, value)`` byte pairs, names lower-case."""
    if head is None:
        head = request_head(env)
    if head is not None:
        return list(head.headers)
    headers: list[tuple[bytes, bytes]] = []
    for key, value in env.items():
        if key.startswith("HTTP_"):
            name = key[5:].lower().replace("_", "-").encode("latin-1")
        elif key in _CGI_HEADERS:
            name = _CGI_HEADERS[key]
        else:
            continue
        headers.append((name, value.encode("latin-1")))
    return headers


def decode_path(raw: bytes) -> str:
    """Percent-decode a request path as UTF-8, replacing what is not UTF-8."""
    if b"%" not in raw:
        try:
            return raw.decode("ascii")
        except UnicodeDecodeError:
            pass
    return unquote_to_bytes(raw).decode("utf-8", "replace")


def _http_version(env: Mapping[str, Any], head: Any) -> str:
    if head is not None:
        return str(head.http_version)
    protocol = str(env.get("SERVER_PROTOCOL", "HTTP/1.1"))
    version = protocol.partition("/")[2]
    return "2" if version.startswith("2") else version or "1.1"


def _addresses(env: Mapping[str, Any]) -> tuple[tuple[str, int] | None, tuple[str, int | None] | None]:
    client: tuple[str, int] | None = None
    if env.get("REMOTE_ADDR"):
        client = (str(env["REMOTE_ADDR"]), int(env.get("REMOTE_PORT") or 0))
    info = conn_info(env)
    if info is not None and info.server_port:
        return client, (info.server_name, int(info.server_port))
    try:
        port: int | None = int(env.get("SERVER_PORT") or 0)
    except ValueError:
        port = None
    name = str(env.get("SERVER_NAME", "")).strip("[]")
    return client, (name, port)


def _paths(env: Mapping[str, Any], root_path: str, head: Any) -> tuple[str, bytes]:
    if head is not None and head.path.startswith(b"/"):
        raw = bytes(head.path)
    else:
        raw = str(env.get("PATH_INFO", "")).encode("latin-1")
    path = decode_path(raw)
    if root_path and not (path == root_path or path.startswith(root_path + "/")):
        path = root_path + path
    return path, raw


_SCHEMES = {"https": "https", "wss": "https"}


def http_scope(
    env: Mapping[str, Any], *, root_path: str = "", state: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The ``http`` scope for ``env``; ``state`` (the lifespan's) is copied shallowly.

    Built once per request, so written flat: each env key is read once, and with the driver's
    ``RequestHead`` (every trio-rack server gives it) the headers, raw path and version come
    straight from it.
    """
    head = env.get("trio_rack.request_head")
    client, server = _addresses(env)
    if head is not None and not root_path and head.path.startswith(b"/"):
        raw = bytes(head.path)
        path = decode_path(raw)
    else:
        path, raw = _paths(env, root_path, head)
    return {
        "type": "http",
        "asgi": dict(ASGI_VERSION),
        "http_version": str(head.http_version) if head is not None else _http_version(env, head),
        "method": str(env["REQUEST_METHOD"]),
        "scheme": _SCHEMES.get(env.get("rack.url_scheme"), "http"),  # type: ignore[arg-type]
        "path": path,
        "raw_path": raw,
        "query_string": str(env.get("QUERY_STRING", "")).encode("latin-1"),
        "root_path": root_path,
        "headers": list(head.headers) if head is not None else request_headers(env),
        "client": client,
        "server": server,
        "state": dict(state) if state is not None else {},
        "extensions": {},
    }


def websocket_scope(
    env: Mapping[str, Any], *, root_path: str = "", state: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The ``websocket`` scope for an upgrade request ``env``."""
    scope = http_scope(env, root_path=root_path, state=state)
    scope["type"] = "websocket"
    scope["asgi"] = dict(_WS_ASGI_VERSION)
    scope["scheme"] = "wss" if scope["scheme"] == "https" else "ws"
    del scope["method"]
    offered = env.get("HTTP_SEC_WEBSOCKET_PROTOCOL", "")
    scope["subprotocols"] = [p.strip() for p in offered.split(",") if p.strip()]
    return scope


_TLS_VERSIONS = {"TLSv1": 0x0301, "TLSv1.1": 0x0302, "TLSv1.2": 0x0303, "TLSv1.3": 0x0304}


_CIPHER_IDS: dict[str, int] = {}


def _cipher_id(name: str | None) -> int | None:
    """The IANA number of an OpenSSL cipher name (from OpenSSL's own table, read once)."""
    if not name:
        return None
    if not _CIPHER_IDS:
        import ssl

        for entry in ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).get_ciphers():
            _CIPHER_IDS[entry["name"]] = int(entry["id"]) & 0xFFFF
    return _CIPHER_IDS.get(name)


def tls_extension(tls: Any) -> dict[str, Any] | None:
    """The ``tls`` extension from what :func:`tls_stream` found.

    ``tls_version`` and ``cipher_suite`` are the IANA numbers the spec asks for (the cipher's
    number from OpenSSL's cipher table, by name); certificates are PEM text.
    """
    import ssl

    if isinstance(tls, Mapping):  # the server's tls_info mapping
        return {
            "server_cert": None,
            "client_cert_chain": list(tls.get("client_cert_chain") or ()),
            "client_cert_name": tls.get("client_subject"),
            "client_cert_error": None,
            "tls_version": _TLS_VERSIONS.get(tls.get("version") or ""),
            "cipher_suite": _cipher_id(tls.get("cipher")),
        }
    try:
        version = tls.version()
        cipher = tls.cipher()
    except (AttributeError, ValueError, ssl.SSLError):
        return None
    suite = None
    context = getattr(tls, "context", None)
    if cipher and context is not None:
        for entry in context.get_ciphers():
            if entry.get("name") == cipher[0]:
                suite = int(entry["id"]) & 0xFFFF
                break
    peer = None
    try:
        peer = tls.getpeercert(binary_form=True)
    except (ValueError, ssl.SSLError):
        peer = None
    chain = [ssl.DER_cert_to_PEM_cert(peer)] if peer else []
    name = None
    if peer:
        subject = dict(item[0] for item in (tls.getpeercert() or {}).get("subject", ()))
        name = ",".join(f"{k}={v}" for k, v in subject.items()) or None
    return {
        "server_cert": None,
        "client_cert_chain": chain,
        "client_cert_name": name,
        "client_cert_error": None,
        "tls_version": _TLS_VERSIONS.get(version or ""),
        "cipher_suite": suite,
    }
