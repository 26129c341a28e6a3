"""A request head as every wire protocol delivers it, before any app-protocol decision."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["RequestHead"]


@dataclass(slots=True)
class RequestHead:
    """What a protocol driver hands the request cycle for one request.

    HTTP/1 fills it from the request line and header block (splitting an absolute-form target
    into ``authority`` and path), HTTP/2 from the pseudo-headers.  Bytes stay bytes: decoding is
    :func:`trio_rack.app.env.build_env`'s job, once, for every protocol.
    """

    #: ``b"GET"``, ``b"POST"``...
    method: bytes
    #: The path, still percent-encoded; ``b"*"`` for ``OPTIONS *``; for CONNECT, the authority.
    path: bytes
    #: What follows ``?`` in the target, ``b""`` if nothing.
    query: bytes
    #: ``"1.0"``, ``"1.1"`` or ``"2"``.
    http_version: str
    #: The header fields as received, names lower-case, in order (no HTTP/2 pseudo-headers).
    headers: Sequence[tuple[bytes, bytes]]
    #: An absolute-form target's authority (HTTP/1) or ``:authority`` (HTTP/2); wins over Host.
    authority: bytes | None = None
    #: HTTP/2 extended CONNECT's ``:protocol`` (RFC 8441), e.g. ``b"websocket"``.
    protocol: bytes | None = None
