"""HTTP/1 wire bytes the driver writes itself, outside h11: the partial hijack's head."""

from __future__ import annotations

from ..app.response import REASONS

__all__ = ["serialize_head"]


def serialize_head(status: int, headers: list[tuple[bytes, bytes]]) -> bytes:
    """Bytes of an HTTP/1.1 status line and header block, for the partial hijack.

    The headers were validated by :func:`~trio_rack.app.response.prepare_response`, so they can
    be joined as they are.
    """
    reason = REASONS.get(status, b"")
    parts = [b"HTTP/1.1 %d %s\r\n" % (status, reason)]
    parts.extend(b"%s: %s\r\n" % (name, value) for name, value in headers)
    parts.append(b"\r\n")
    return b"".join(parts)
