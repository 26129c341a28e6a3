"""Trusted-proxy policy: apply ``X-Forwarded-*`` or ``Forwarded`` (RFC 7239) to ``env``.  No I/O.

Behind a reverse proxy the peer of every connection is the proxy, and the real client's address
and scheme arrive in headers the proxy adds.  Any client can send those headers too, so they
mean something only when the *peer* is a proxy we trust.  :class:`ProxyHeaders` is the policy;
the connection calls :meth:`ProxyHeaders.apply` on every request's ``env`` (``serve(...,
proxy_headers=True)``, ``trio-rack serve --proxy-headers``).

Theory of operation
-------------------
1. **The peer decides.**  ``env["REMOTE_ADDR"]`` (the socket's peer) must be in ``trusted``
   (IP addresses, CIDR networks, or ``"*"`` for any peer); otherwise ``env`` is left exactly as
   it is, whatever the headers say.  Peers on a Unix domain socket (``REMOTE_ADDR == ""``) are
   always trusted: such a socket is reachable only from this host, through a file whose
   permissions say who may connect, and in practice the only thing connecting to it is the
   proxy.  Serve on TCP instead if local users must not be able to set these headers.
2. **Walk the chain right to left.**  Each proxy *appends* the address it received the request
   from, so the rightmost entry was written by our peer and is the only one a client cannot
   forge.  The walk takes the entries from the right, skipping those that are trusted proxies
   themselves, and stops at the first untrusted one: that is the client.  If every entry is
   trusted, the leftmost one is the client (as in Uvicorn's ``ProxyHeadersMiddleware``,
   ``encode/uvicorn: uvicorn/middleware/proxy_headers.py``, ``get_trusted_client_host``).
   A malformed entry ends the walk before it: nothing at or left of it is believed, and the
   client is the last entry that could be read (or the peer itself).  ``unknown`` and
   obfuscated identifiers (``_hidden``, RFC 7239 §6.3) end the walk *at* that hop: its other
   parameters (``proto=``, ``host=``) count, but ``REMOTE_ADDR`` stays the nearest known node.
3. **``"*"`` trusts peers, not chain entries.**  Uvicorn makes ``*`` trust every entry too, so
   its walk always lands on the leftmost one, which the client wrote: behind nginx's
   ``$proxy_add_x_forwarded_for`` any client can then choose its own address.  Here ``*`` only
   says "whoever connects is a proxy" (the usual need in containers, where the proxy's address
   is not known in advance); chain entries are skipped only when they match an explicit address
   or network, so with ``*`` alone the client is the rightmost entry.
4. **One header family, chosen by the operator.**  ``header="x-forwarded-for"`` (the default)
   reads ``X-Forwarded-For`` / ``X-Forwarded-Proto`` (/ ``X-Forwarded-Host``);
   ``header="forwarded"`` reads RFC 7239 ``Forwarded``.  The policy never falls back from one
   to the other and never prefers whichever is present: proxies pass through the headers they
   do not write themselves (nginx, HAProxy, AWS ALB, Caddy and Traefik all write
   ``X-Forwarded-For`` and forward a client's ``Forwarded`` untouched), so "prefer
   ``Forwarded`` when present" would let any client behind such a proxy forge its address.
   Hypercorn's ``ProxyFixMiddleware`` makes the operator choose too, with
   ``mode="legacy"|"modern"`` (``pgjones/hypercorn: src/hypercorn/middleware/proxy_fix.py``);
   it trusts a fixed number of hops rather than addresses.
5. **What changes.**  ``REMOTE_ADDR`` (IPv6 without brackets), ``REMOTE_PORT`` (the port the
   header gives, else ``"0"``: the client's port is not known, and the proxy's would be a lie),
   and ``rack.url_scheme``, which accepts ``http``, ``https``, ``ws`` and ``wss`` (any case;
   ``ws``/``wss`` become ``http``/``https``: Rack's scheme is the HTTP one, and a WebSocket
   handshake is an HTTP request).  Other schemes are ignored.  When the scheme changes and the
   ``Host`` header has no port, ``SERVER_PORT`` follows (443 for https, 80 for http).  With
   ``forwarded_host=True`` the forwarded host also replaces ``HTTP_HOST``, ``SERVER_NAME`` and
   ``SERVER_PORT``; it is off by default because proxies usually pass ``Host`` through.
   ``X-Forwarded-Proto`` / ``-Host`` with one value apply as they are (the nearest proxy set
   them); with one value per ``X-Forwarded-For`` entry, the client's own entry applies.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from ..authority import is_safe_host
from ..config import ConfigError

__all__ = ["DEFAULT_TRUSTED", "ProxyHeaders", "parse_forwarded", "parse_trusted"]

#: Loopback only: a proxy on the same host.
DEFAULT_TRUSTED = ("127.0.0.1", "::1")

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_Address = ipaddress.IPv4Address | ipaddress.IPv6Address

_SCHEMES = {"http": "http", "https": "https", "ws": "http", "wss": "https"}
_DEFAULT_PORTS = {"http": "80", "https": "443"}
#: RFC 7239 §6.3 obfuscated node or port identifiers.
_OBFUSCATED_RE = re.compile(r"_[A-Za-z0-9._-]+")
#: One Forwarded pair: a token name, "=", then a quoted string or a bare value.  Bare values are
#: leniently wider than RFC 7230 tokens (``for=192.0.2.1:80`` unquoted is common): a value must
#: still parse as an address, a scheme or a host before it is used.
_PAIR_RE = re.compile(
    r'[ \t]*([A-Za-z0-9!#$%&\'*+.^_`|~-]+)=("(?:[^"\\]|\\.)*"|[^\s",;=]+)[ \t]*'
)
_FORWARDED_KEYS = ("HTTP_FORWARDED",)
_X_FORWARDED_KEYS = ("HTTP_X_FORWARDED_FOR", "HTTP_X_FORWARDED_PROTO", "HTTP_X_FORWARDED_HOST")


class _Malformed(Exception):
    """A header element that cannot be read; the walk believes nothing from it leftwards."""


@dataclass(frozen=True)
class _Hop:
    """One proxy hop as the header describes it: who it received the request from, and how."""

    addr: str | None  # None: unknown or obfuscated
    port: str | None
    proto: str | None = None
    host: str | None = None


def parse_trusted(entries: Iterable[str]) -> tuple[bool, frozenset[_Address], tuple[_Network, ...]]:
    """Split ``entries`` into (any peer trusted, addresses, networks); bad ones raise ConfigError."""
    if isinstance(entries, str):
        entries = entries.split(",")
    any_peer = False
    addresses: set[_Address] = set()
    networks: list[_Network] = []
    for raw in entries:
        entry = raw.strip()
        if not entry:
            continue
        if entry == "*":
            any_peer = True
            continue
        try:
            if "/" in entry:
                networks.append(ipaddress.ip_network(entry, strict=False))
            else:
                addresses.add(ipaddress.ip_address(entry.strip("[]")))
        except ValueError:
            raise ConfigError(
                f"forwarded-allow-ips: {entry!r} is not an IP address, a CIDR network or '*'"
            ) from None
    return any_peer, frozenset(addresses), tuple(networks)


class ProxyHeaders:
    """The trusted-proxy policy; see the module docstring for every rule.

    ``trusted``: IP addresses and CIDR networks (``"10.0.0.0/8"``) of the proxies, and ``"*"``
    to trust any peer; a comma-separated string works too.  ``header``: which header family
    the proxies write.  ``forwarded_host``: also apply the forwarded host.
    """

    def __init__(
        self,
        trusted: Iterable[str] = DEFAULT_TRUSTED,
        *,
        header: Literal["x-forwarded-for", "forwarded"] = "x-forwarded-for",
        forwarded_host: bool = False,
    ) -> None:
        if header not in ("x-forwarded-for", "forwarded"):
            raise ConfigError(f"proxy header must be 'x-forwarded-for' or 'forwarded', got {header!r}")
        self.any_peer, self.addresses, self.networks = parse_trusted(trusted)
        self.header = header
        self.forwarded_host = forwarded_host
        self._keys = _FORWARDED_KEYS if header == "forwarded" else _X_FORWARDED_KEYS

    def __repr__(self) -> str:
        trusted = [*(["*"] if self.any_peer else []), *map(str, self.addresses), *map(str, self.networks)]
        return f"ProxyHeaders(trusted={trusted!r}, header={self.header!r}, forwarded_host={self.forwarded_host!r})"

    # -- trust ---------------------------------------------------------------------------

    def is_trusted_peer(self, addr: str) -> bool:
        """Whether a connection from ``addr`` may set proxy headers ("" is a Unix socket peer)."""
        return addr == "" or self.any_peer or self._listed(addr)

    def _listed(self, addr: str) -> bool:
        """Whether ``addr`` matches an explicit trusted address or network."""
        try:
            ip = ipaddress.ip_address(addr)
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped  # a dual-stack socket's view of an IPv4 peer
        if ip in self.addresses:
            return True
        return any(ip in net for net in self.networks)

    # -- applying --------------------------------------------------------------------------

    def apply(self, env: dict[str, Any]) -> None:
        """Rewrite ``env`` in place from the proxy headers, if the peer is trusted."""
        if not any(key in env for key in self._keys):
            return  # the hot path: no proxy headers at all
        if not self.is_trusted_peer(env.get("REMOTE_ADDR", "")):
            return
        if self.header == "forwarded":
            proto, host = self._apply_forwarded(env)
        else:
            proto, host = self._apply_x_forwarded(env)
        if proto is not None:
            scheme = _SCHEMES.get(proto.lower())
            if scheme is not None:
                _set_scheme(env, scheme)
        if host is not None and self.forwarded_host and is_safe_host(host):
            _set_host(env, host)

    def _walk(self, hops: list[_Hop | None]) -> tuple[_Hop | None, int]:
        """The client's hop (right-to-left walk) and its index; (None, -1) if none is readable."""
        chosen: _Hop | None = None
        index = -1
        for i in range(len(hops) - 1, -1, -1):
            hop = hops[i]
            if hop is None:  # malformed: believe nothing from here leftwards
                break
            chosen, index = hop, i
            if hop.addr is None or not self._listed(hop.addr):
                break
        return chosen, index

    def _apply_forwarded(self, env: dict[str, Any]) -> tuple[str | None, str | None]:
        hops = parse_forwarded(env.get("HTTP_FORWARDED", ""))
        chosen, _ = self._walk(hops)
        if chosen is None:
            return None, None
        _set_client(env, chosen)
        return chosen.proto, chosen.host

    def _apply_x_forwarded(self, env: dict[str, Any]) -> tuple[str | None, str | None]:
        index = -1
        count = 0
        if "HTTP_X_FORWARDED_FOR" in env:
            hops = [_x_forwarded_hop(item) for item in _split_list(env["HTTP_X_FORWARDED_FOR"])]
            count = len(hops)
            chosen, index = self._walk(hops)
            if chosen is not None:
                _set_client(env, chosen)
        return (
            _pick(env.get("HTTP_X_FORWARDED_PROTO"), index, count),
            _pick(env.get("HTTP_X_FORWARDED_HOST"), index, count),
        )


# -- parsing -----------------------------------------------------------------------------------


def _split_list(value: str) -> list[str]:
    """A comma-separated header value's items (the env joins repeated headers with ", ")."""
    return [item.strip() for item in value.split(",")]


def _pick(value: str | None, index: int, count: int) -> str | None:
    """The client's value of an ``X-Forwarded-Proto``/``-Host`` list: its own entry when there
    is one per ``X-Forwarded-For`` entry, else the rightmost (set by the nearest proxy)."""
    if value is None:
        return None
    items = _split_list(value)
    if len(items) == count and index >= 0:
        return items[index] or None
    return items[-1] or None


def _parse_node(text: str) -> tuple[str | None, str | None]:
    """``(address, port)`` of a node (``192.0.2.1``, ``192.0.2.1:80``, ``[2001:db8::1]:80``,
    ``2001:db8::1``, ``unknown``, ``_obfuscated``); address None for unknown/obfuscated nodes.

    Raises :class:`_Malformed` for anything else.
    """
    if text.lower() == "unknown" or _OBFUSCATED_RE.fullmatch(text):
        return None, None
    port: str | None = None
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise _Malformed(text)
        host, rest = text[1:end], text[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise _Malformed(text)
            port = rest[1:]
        version = 6
    elif text.count(":") == 1:
        host, port = text.split(":")
        version = 4
    else:
        host = text
        version = 6 if ":" in text else 4
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise _Malformed(text) from None
    if ip.version != version:
        raise _Malformed(text)  # e.g. "[192.0.2.1]" or "::1:80" read as IPv4 with a port
    if port is not None:
        if _OBFUSCATED_RE.fullmatch(port):
            port = None
        elif not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
            raise _Malformed(text)
        else:
            port = str(int(port))
    return str(ip), port


def _x_forwarded_hop(item: str) -> _Hop | None:
    try:
        addr, port = _parse_node(item)
    except _Malformed:
        return None
    return _Hop(addr, port)


def parse_forwarded(value: str) -> list[_Hop | None]:
    """The hops of a ``Forwarded`` header value, left to right; None for a malformed element.

    Grammar (RFC 7239 §4): elements separated by ``,``, pairs by ``;``, ``name=value`` where
    the value is a token or a quoted string (which may hold ``,`` and ``;``).  Names are
    case-insensitive; empty elements and pairs are skipped (RFC 9110 §5.6.1 list rules).  A
    repeated name in one element, a pair without ``=``, a bad value or an unreadable ``for=``
    node make the element malformed; an unterminated quote makes the rest of the value one
    malformed element.  An element without ``for=`` is a hop with an unknown node.
    """
    hops: list[_Hop | None] = []
    for element, closed in _split_quoted(value, ","):
        if not element.strip(" \t;"):
            continue  # an empty element (or one of empty pairs only)
        try:
            if not closed:
                raise _Malformed("unterminated quoted string")
            hops.append(_forwarded_hop(element))
        except _Malformed:
            hops.append(None)
    return hops


def _split_quoted(text: str, separator: str) -> list[tuple[str, bool]]:
    """Split at ``separator`` outside quoted strings; each piece comes with "quotes closed"."""
    pieces: list[tuple[str, bool]] = []
    start = 0
    quoted = escaped = False
    for i, c in enumerate(text):
        if escaped:
            escaped = False
        elif quoted:
            if c == "\\":
                escaped = True
            elif c == '"':
                quoted = False
        elif c == '"':
            quoted = True
        elif c == separator:
            pieces.append((text[start:i], True))
            start = i + 1
    pieces.append((text[start:], not quoted))
    return pieces


def _unquote(text: str) -> str:
    """A quoted string's content with its backslash escapes undone (RFC 9110 §5.6.4)."""
    return re.sub(r"\\(.)", r"\1", text[1:-1])


def _forwarded_hop(element: str) -> _Hop:
    params: dict[str, str] = {}
    for pair, _ in _split_quoted(element, ";"):
        if not pair.strip():
            continue
        match = _PAIR_RE.fullmatch(pair)
        if match is None:
            raise _Malformed(pair)
        name, value = match.group(1).lower(), match.group(2)
        if name in params:
            raise _Malformed(f"repeated {name}=")  # RFC 7239 §4: at most once per element
        params[name] = _unquote(value) if value.startswith('"') else value
    addr = port = None
    if "for" in params:
        addr, port = _parse_node(params["for"])
    return _Hop(addr, port, proto=params.get("proto"), host=params.get("host"))


# -- rewriting env -----------------------------------------------------------------------------


def _set_client(env: dict[str, Any], hop: _Hop) -> None:
    if hop.addr is not None:
        env["REMOTE_ADDR"] = hop.addr
        env["REMOTE_PORT"] = hop.port or "0"


def _host_and_port(host: str) -> tuple[str, str | None]:
    if host.startswith("["):
        end = host.find("]")
        rest = host[end + 1 :]
        return host[: end + 1], rest[1:] if rest.startswith(":") else None
    name, sep, port = host.partition(":")
    return name, port if sep else None


def _set_scheme(env: dict[str, Any], scheme: str) -> None:
    if env.get("rack.url_scheme") == scheme:
        return
    env["rack.url_scheme"] = scheme
    host = env.get("HTTP_HOST")
    if host and _host_and_port(host)[1] is None:
        env["SERVER_PORT"] = _DEFAULT_PORTS[scheme]


def _set_host(env: dict[str, Any], host: str) -> None:
    env["HTTP_HOST"] = host
    name, port = _host_and_port(host)
    env["SERVER_NAME"] = name
    env["SERVER_PORT"] = port or _DEFAULT_PORTS.get(env.get("rack.url_scheme", "http"), "80")
