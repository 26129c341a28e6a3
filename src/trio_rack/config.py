"""Server configuration: bind URLs and limits, parsed and validated without I/O.

Everything here is a frozen dataclass built from plain values, so the CLI, ``serve()`` and
the worker supervisor share one vocabulary and one set of error messages.  A bad value raises
:class:`ConfigError` whose message is a single line fit to print after ``trio-rack: error:``.

Bind URLs::

    https://localhost:9292      TLS on every address "localhost" resolves to (the default)
    http://0.0.0.0:8080         plain HTTP
    https://[::1]:9292          IPv6 literals go in brackets
    unix:/run/app.sock          a Unix domain socket (plain HTTP)
    fd://3                      an inherited, already listening socket (plain HTTP)

An ``fd://`` URL may carry ``?scheme=https`` so that the worker supervisor can hand a TLS
listener to its workers.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

__all__ = ["Bind", "ConfigError", "Limits", "TLSConfig", "parse_bind", "DEFAULT_BIND"]

DEFAULT_BIND = "https://localhost:9292"


#: ``--lifespan`` / ``serve(lifespan=...)``: run an ASGI app's lifespan protocol always, never, or
#: when the app supports it.
LIFESPAN_MODES = ("auto", "on", "off")
#: ``--http1-parser`` / ``serve(http1_parser=...)``: the sans-IO HTTP/1 parser; ``auto`` is
#: httptools when installed (the ``speedups`` extra), else h11 (see trio_rack.http1.parsers).
HTTP1_PARSERS = ("auto", "h11", "httptools")


class ConfigError(ValueError):
    """A configuration value is wrong; the message is one line, meant for a human."""


@dataclass(frozen=True)
class Bind:
    """Where to listen.

    ``scheme`` is what clients speak on the socket ("http" or "https"); ``kind`` is how the
    socket is obtained: "tcp" (bind ``host``:``port``), "unix" (bind ``path``) or "fd"
    (inherit file descriptor ``fd``).
    """

    scheme: str
    kind: str = "tcp"
    host: str = ""
    port: int = 0
    path: str = ""
    fd: int = -1

    @property
    def tls(self) -> bool:
        return self.scheme == "https"

    def __str__(self) -> str:
        if self.kind == "unix":
            return f"unix:{self.path}"
        if self.kind == "fd":
            return f"fd://{self.fd}" + ("?scheme=https" if self.tls else "")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def parse_bind(url: str) -> Bind:
    """Parse one ``-b`` value; raise :class:`ConfigError` naming what is wrong."""
    if not isinstance(url, str) or not url:
        raise ConfigError(f"bind address must be a non-empty URL, got {url!r}")
    if url.startswith("unix:"):
        path = url[len("unix:") :]
        if path.startswith("//"):
            path = path[2:]
        if not path:
            raise ConfigError(f"bind address {url!r} names no socket path")
        return Bind(scheme="http", kind="unix", path=path)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"malformed bind address {url!r}: {exc}") from None
    if parts.scheme == "fd":
        try:
            fd = int(parts.netloc)
        except ValueError:
            raise ConfigError(f"bind address {url!r}: fd:// needs a file descriptor number") from None
        scheme = parse_qs(parts.query).get("scheme", ["http"])[0]
        if scheme not in ("http", "https") or fd < 0:
            raise ConfigError(f"malformed bind address {url!r}")
        return Bind(scheme=scheme, kind="fd", fd=fd)
    if parts.scheme not in ("http", "https"):
        raise ConfigError(
            f"bind address {url!r} must start with https://, http://, unix: or fd://"
        )
    if not parts.hostname:
        raise ConfigError(f"bind address {url!r} names no host")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise ConfigError(f"bind address {url!r} must be scheme://host:port and nothing more")
    if port is None:
        port = 443 if parts.scheme == "https" else 80
    return Bind(scheme=parts.scheme, host=parts.hostname, port=port)


def _positive(name: str, value: float | None, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ConfigError(f"{name} must be a positive number, got {value!r}")


@dataclass(frozen=True)
class Limits:
    """Per-connection limits and timeouts (seconds, bytes).  The README explains each default.

    ``None`` for ``max_body_size`` and ``limit_concurrency`` means unlimited, for
    ``request_timeout`` off.
    """

    #: Request line plus headers, in bytes; over it: 431 (h11's max_incomplete_event_size).
    max_head_size: int = 32 * 1024
    #: Request target, in bytes; over it: 414.
    max_request_line: int = 8 * 1024
    #: Number of header fields; over it: 431.
    max_header_count: int = 100
    #: From accept (or the end of the previous response) to a complete request head.
    header_timeout: float = 10.0
    #: Idle time allowed between keep-alive requests before the first byte of the next one.
    keepalive_timeout: float = 5.0
    #: Longest wait for the next piece of a request body.
    body_timeout: float = 30.0
    #: Longest a TLS handshake may take.
    handshake_timeout: float = 10.0
    #: Longest a single write may wait for the client to read.
    write_timeout: float = 30.0
    #: Request bodies larger than this get 413; None = unlimited.
    max_body_size: int | None = None
    #: Open connections per worker; at the limit the server stops accepting.
    max_connections: int = 10_000
    #: On shutdown, how long requests in flight may take to finish.
    graceful_timeout: float = 10.0
    #: How often a connection whose app is producing a response is checked for a vanished client.
    liveness_interval: float = 1.0
    #: HTTP/2 streams open at once on one connection (SETTINGS_MAX_CONCURRENT_STREAMS); more are refused.
    max_concurrent_streams: int = 100
    #: HTTP/2 receive window of one stream (SETTINGS_INITIAL_WINDOW_SIZE); a connection's is 4 times it.
    stream_window_size: int = 256 * 1024
    #: HTTP/2 streams a client may reset (or have refused) per 10 s before GOAWAY (CVE-2023-44487).
    max_stream_resets: int = 100
    #: HTTP/2 PING, SETTINGS, PRIORITY, tiny WINDOW_UPDATE and empty frames a client may send per 10 s.
    max_control_frames: int = 1000
    #: Listen backlog: connections the kernel queues for accept() (capped by net.core.somaxconn).
    backlog: int = 2048
    #: Longest an app may take to finish its framed response; then 503 (or an abort).
    request_timeout: float | None = None
    #: Slowest request body accepted, bytes a second over 5 s; slower: 408, dropped.
    min_body_rate: int = 1024
    #: Requests in flight per worker; beyond it 503 with retry-after.
    limit_concurrency: int | None = None
    #: Small whole responses held to be written back to back, at most this many, at the end of
    #: the scheduler's batch (net/write_batch.py); 1: each is written at once.
    write_batch: int = 16

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            _positive(field.name, value, allow_none=field.default is None)
            if field.type in ("int", "int | None") and value is not None and not isinstance(value, int):
                raise ConfigError(f"{field.name} must be a whole number, got {value!r}")
        if self.stream_window_size * 4 > 2**31 - 1:
            raise ConfigError(f"stream_window_size must be at most {(2**31 - 1) // 4}, got {self.stream_window_size}")


#: ``TLSConfig.client_cert`` values: whether a client certificate is asked for and required.
CLIENT_CERT_MODES = ("none", "optional", "required")
#: ``TLSConfig.min_version`` values.
TLS_VERSIONS = ("TLSv1.2", "TLSv1.3")

PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class TLSConfig:
    """How ``https://`` listeners do TLS.  Validated here; the files are read by
    :func:`trio_rack.net.tls.make_server_context`.

    ``cert``/``key`` ``None`` (both) means the local development certificate.  ``client_cert``
    is ``"none"`` (no certificate asked for), ``"optional"`` (asked for; a client without one
    is served, one with a certificate that does not verify against ``ca_certs`` is refused by
    OpenSSL) or ``"required"`` (a handshake without a valid one is refused); the last two need
    ``ca_certs``, the only CAs trusted for client certificates (the system store never is).
    ``ciphers`` is an OpenSSL cipher string for TLS 1.2 (TLS 1.3's suites are not configurable
    through Python's ssl module).
    """

    cert: PathLike | None = None
    key: PathLike | None = None
    key_password: str | bytes | None = dataclasses.field(default=None, repr=False)
    ca_certs: PathLike | None = None
    client_cert: str = "none"
    ciphers: str | None = None
    min_version: str = "TLSv1.2"
    alpn: tuple[str, ...] = ("h2", "http/1.1")

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise ConfigError("--cert and --key go together: give both or neither")
        if self.key_password is not None and self.cert is None:
            raise ConfigError("a key password needs --cert and --key")
        if self.client_cert not in CLIENT_CERT_MODES:
            raise ConfigError(
                f"client_cert must be one of {', '.join(CLIENT_CERT_MODES)}, got {self.client_cert!r}"
            )
        if self.client_cert != "none" and self.ca_certs is None:
            raise ConfigError(f"--client-cert {self.client_cert} needs --ca-certs FILE (the trusted client CAs)")
        if self.min_version not in TLS_VERSIONS:
            raise ConfigError(f"min_version must be one of {', '.join(TLS_VERSIONS)}, got {self.min_version!r}")
        if self.ciphers is not None and (not isinstance(self.ciphers, str) or not self.ciphers.strip()):
            raise ConfigError(f"ciphers must be a non-empty OpenSSL cipher string, got {self.ciphers!r}")
        if isinstance(self.alpn, str | bytes) or not all(  # type: ignore[unreachable,unused-ignore]
            isinstance(p, str) and 0 < len(p.encode("ascii", "replace")) < 256 for p in self.alpn
        ):
            raise ConfigError(f"alpn must be a sequence of protocol names, got {self.alpn!r}")
        object.__setattr__(self, "alpn", tuple(self.alpn))
