"""Build the CGI-style part of a request's ``env`` from a :class:`RequestHead`.  No I/O.

Decisions worth knowing (the README's spec repeats them):

* ``PATH_INFO`` and ``QUERY_STRING`` are the raw, still percent-encoded target pieces, as in
  Rack; decoding is the app's (or its router's) business.
* An absolute-form target's authority (``GET http://host/path``, RFC 9112 §3.2.2; the HTTP/1
  driver splits it off) and HTTP/2's ``:authority`` win over the ``Host`` header.
* Repeated headers are joined with ", "; repeated ``Cookie`` headers with "; " (RFC 6265 §5.4).
* Header names containing "_" are dropped: after the ``-`` → ``_`` mapping they would be
  indistinguishable from their dashed twins (``X-Auth_User`` vs ``X-Auth-User``), a known
  spoofing vector behind proxies (nginx drops them too).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..types import Env
from .head import RequestHead

__all__ = ["ConnInfo", "build_env", "split_host"]

#: Precomputed env keys for the headers every browser sends, to skip string work per request.
_KEY_CACHE: dict[bytes, str | None] = {}


#: Header values seen before, as env's text: most of them repeat from request to request and
#: connection to connection (``Host``, ``Connection``, ``Accept``, ``User-Agent``...), and one
#: shared ``str`` is one allocation fewer per header and request — and fewer bytes for as long
#: as the request lives (a 10,000-stream server holds 10,000 envs).  Bounded: values are
#: client-chosen, so a full cache starts afresh (as the response header cache does).
_VALUE_CACHE: dict[bytes, str] = {}
_VALUE_CACHE_MAX = 1024
#: ... values longer than this (cookies, tokens: mostly unique) are decoded each time.
_VALUE_CACHE_LONGEST = 256
#: ``SERVER_NAME`` and ``SERVER_PORT`` by ``Host`` text, the same way (the same bound).
_HOST_CACHE: dict[tuple[str, int], tuple[str, str]] = {}
#: The methods of RFC 9110 as env's text (any other is decoded).
_METHODS = {m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")}


def _text(value: bytes) -> str:
    """A header value as env's text (Latin-1), shared with earlier requests where it repeats."""
    text = _VALUE_CACHE.get(value)
    if text is None:
        text = value.decode("latin-1")
        if len(value) <= _VALUE_CACHE_LONGEST:
            if len(_VALUE_CACHE) >= _VALUE_CACHE_MAX:
                _VALUE_CACHE.clear()
            _VALUE_CACHE[bytes(value)] = text
    return text


def _server_name_and_port(host: str, default_port: int) -> tuple[str, str]:
    """:func:`split_host`, shared with earlier requests for the same ``Host`` and scheme."""
    key = (host, default_port)  # a pair: no Host text can pass for another scheme's key
    pair = _HOST_CACHE.get(key)
    if pair is None:
        pair = split_host(host, default_port)
        if len(host) <= _VALUE_CACHE_LONGEST:
            if len(_HOST_CACHE) >= _VALUE_CACHE_MAX:
                _HOST_CACHE.clear()
            _HOST_CACHE[key] = pair
    return pair


#: What :data:`_KEY_CACHE` gives for a name not seen yet (None is a seen name's "no key").
_UNSEEN: Any = object()


def _env_key(name: bytes) -> str | None:
    key = _KEY_CACHE.get(name)
    if key is None and name not in _KEY_CACHE:
        text = name.decode("ascii")
        if "_" in text:
            key = None
        elif text == "content-type":
            key = "CONTENT_TYPE"
        elif text == "content-length":
            key = "CONTENT_LENGTH"
        else:
            key = "HTTP_" + text.upper().replace("-", "_")
        if len(_KEY_CACHE) < 1024:  # bounded: header names are client-chosen
            _KEY_CACHE[name] = key
    return key


class ConnInfo:
    """What the connection knows about itself: scheme, both ends' addresses, and for TLS what
    the handshake settled (``trio_rack.net.tls.tls_info``; None on plain connections)."""

    __slots__ = ("scheme", "server_name", "server_port", "remote_addr", "remote_port", "tls", "_port_text")

    def __init__(
        self,
        scheme: str,
        server: tuple[str, int] | None,
        remote: tuple[str, int] | None,
        *,
        tls: Mapping[str, Any] | None = None,
    ) -> None:
        self.scheme = scheme
        self.tls = tls
        self.server_name, self.server_port = server or ("localhost", 0)
        self.remote_addr, self.remote_port = remote or ("", 0)
        #: ``REMOTE_PORT`` as env's text: once per connection, not per request.
        self._port_text = str(self.remote_port)


def split_host(host: str, default_port: int) -> tuple[str, str]:
    """``host[:port]`` (an IPv6 literal in brackets) as (name, port), the port as text."""
    if host.startswith("["):  # IPv6 literal
        end = host.find("]")
        name, rest = host[: end + 1], host[end + 1 :]
        return name, rest[1:] if rest.startswith(":") else str(default_port)
    name, sep, port = host.partition(":")
    return name, port if sep else str(default_port)


_PROTOCOLS = {"1.1": "HTTP/1.1", "1.0": "HTTP/1.0", "2": "HTTP/2"}


def build_env(head: RequestHead, info: ConnInfo) -> Env:
    """The CGI keys of ``env`` for ``head``; the request cycle adds the ``rack.*`` keys."""
    env: Env = {
        "REQUEST_METHOD": _METHODS.get(head.method) or head.method.decode("ascii"),
        "SCRIPT_NAME": "",
        "PATH_INFO": head.path.decode("latin-1"),
        "QUERY_STRING": head.query.decode("latin-1"),
        "SERVER_PROTOCOL": _PROTOCOLS.get(head.http_version) or "HTTP/" + head.http_version,
        "REMOTE_ADDR": info.remote_addr,
        "REMOTE_PORT": info._port_text,
        "rack.url_scheme": info.scheme,
    }
    if info.tls is not None:
        env["trio_rack.tls"] = info.tls
    cookies: list[str] | None = None
    # The caches' hits read here, their misses in _env_key and _text: no call per header in the
    # common case (two Python calls a header were some 1,500 instructions of a hello request).
    key_cache = _KEY_CACHE
    value_cache = _VALUE_CACHE
    for name, value in head.headers:
        key = key_cache.get(name, _UNSEEN)
        if key is _UNSEEN:
            key = _env_key(name)
        if key is None:
            continue
        text = value_cache.get(value)
        if text is None:
            text = _text(value)
        if key == "HTTP_COOKIE":
            if cookies is None:
                cookies = [text]
            else:
                cookies.append(text)
            continue
        old = env.get(key)
        env[key] = text if old is None else old + ", " + text
    if cookies is not None:
        env["HTTP_COOKIE"] = "; ".join(cookies)
    host: str | None
    if head.authority is not None:
        host = env["HTTP_HOST"] = head.authority.decode("latin-1")
    else:
        host = env.get("HTTP_HOST")
    default_port = 443 if info.scheme == "https" else 80
    if host:
        env["SERVER_NAME"], env["SERVER_PORT"] = _HOST_CACHE.get((host, default_port)) or _server_name_and_port(
            host, default_port
        )
    else:
        env["SERVER_NAME"], env["SERVER_PORT"] = info.server_name, str(info.server_port)
    return env
