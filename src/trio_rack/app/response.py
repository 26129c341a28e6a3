"""Validate an app's ``(status, headers, body)`` and turn it into wire-ready pieces.

This is the boundary where the app's words become bytes, so nothing invalid may pass: an
upper-case or malformed header name, a value with CR/LF/NUL or other control bytes, a value
that is not text, a body of the wrong type — each raises :class:`AppError` with a message
that names the culprit, and the connection answers 500 instead.  Nothing here does I/O.

The server owns the framing: hop-by-hop headers the app sets are dropped with a warning
(except on a partial hijack, where the app speaks its own protocol after the head), and
``content-length`` is computed for buffered bodies.
"""

from __future__ import annotations

import enum
import inspect
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from ..errors import AppError

__all__ = [
    "AppError",
    "close_body",
    "BodyKind",
    "PreparedResponse",
    "check_trailers",
    "encode_headers",
    "length_field",
    "prepare_response",
    "REASONS",
]

log = logging.getLogger("trio_rack.error")

REASONS: dict[int, bytes] = {s.value: s.phrase.encode("ascii") for s in HTTPStatus}

#: Headers that describe one hop's framing; the server decides them, not the app.
HOP_BY_HOP = frozenset({"transfer-encoding", "connection", "keep-alive", "upgrade"})

_NAME_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9a-z]+")
# RFC 9110 field-value: visible characters and obs-text, with inner spaces/tabs only.
_VALUE_RE = re.compile(r"(?:[\x21-\x7e\x80-\xff]+(?:[ \t]+[\x21-\x7e\x80-\xff]+)*)?")
_DIGITS_RE = re.compile(r"[0-9]+")
#: h11's own cap (``CONTENT_LENGTH_MAX_DIGITS``): this is the one validation of a response's
#: content-length, since the HTTP/1 driver hands h11 the validated head as it is.
CONTENT_LENGTH_MAX_DIGITS = 20


#: Header (name, value) pairs already validated and encoded, with their wire form.  Only pairs
#: that reach the wire unchanged are cached (not rack.*, hop-by-hop or content-length).
_VALID_PAIRS: dict[tuple[str, str], tuple[bytes, bytes]] = {}
_VALID_PAIRS_MAX = 4096


#: ``content-length`` fields by length: most responses of a server repeat a few lengths, and a
#: shared pair is a format and a tuple fewer each (the HTTP/1 engine compares with it too).
#: Bounded: a full table starts afresh.
_LENGTH_FIELDS: dict[int, tuple[bytes, bytes]] = {}
_LENGTH_FIELDS_MAX = 1024


def length_field(length: int) -> tuple[bytes, bytes]:
    """``(b"content-length", b"<length>")``, shared with earlier responses of that length."""
    field = _LENGTH_FIELDS.get(length)
    if field is None:
        field = (b"content-length", b"%d" % length)
        if len(_LENGTH_FIELDS) >= _LENGTH_FIELDS_MAX:
            _LENGTH_FIELDS.clear()
        _LENGTH_FIELDS[length] = field
    return field


class BodyKind(enum.Enum):
    BUFFERED = "buffered"  # list/tuple of bytes: content-length known
    ITERABLE = "iterable"  # sync iterable of bytes: streamed
    ASYNC_ITERABLE = "async iterable"  # async iterable of bytes: streamed
    STREAMING = "streaming"  # async callable body(stream)


@dataclass(slots=True)
class PreparedResponse:
    status: int
    #: Wire headers, names lower-case bytes; ``content-length`` included for buffered bodies.
    headers: list[tuple[bytes, bytes]]
    kind: BodyKind
    body: Any
    #: For BUFFERED bodies: the chunks, and their total length (an empty tuple for the others:
    #: no list per streamed response, which keeps this object as long as it streams).
    chunks: Sequence[bytes]
    length: int
    #: The partial-hijack callable from the ``rack.hijack`` header, if any.
    hijack: Any = None
    #: True when the app set content-length itself (streamed bodies must then match it).
    app_length: bool = False


def classify_body(body: Any) -> BodyKind:
    """Say which of the four body shapes ``body`` is, or raise AppError."""
    if isinstance(body, (list, tuple)):
        return BodyKind.BUFFERED
    if isinstance(body, (bytes, bytearray, memoryview, str)):
        raise AppError(
            f"response body must be an iterable of bytes, not {type(body).__name__}; "
            "wrap it in a list: [body]"
        )
    if hasattr(body, "__aiter__"):
        return BodyKind.ASYNC_ITERABLE
    if hasattr(body, "__iter__"):
        return BodyKind.ITERABLE
    if callable(body):
        return BodyKind.STREAMING
    raise AppError(
        f"response body must be an iterable or async iterable of bytes, or an async callable "
        f"body(stream); got {type(body).__name__}"
    )


def check_chunk(chunk: Any) -> bytes:
    """Return ``chunk`` as bytes, or raise AppError if it is not bytes-like."""
    if type(chunk) is bytes:
        return chunk
    if isinstance(chunk, (bytes, bytearray, memoryview)):
        return bytes(chunk)
    raise AppError(f"response body chunks must be bytes, got {type(chunk).__name__}: {chunk!r:.60}")


def _encode_value(name: str, value: Any) -> bytes:
    if not isinstance(value, str):
        raise AppError(
            f"header {name!r}: value must be a str or a list of str, got {type(value).__name__}"
        )
    value = value.strip(" \t")
    try:
        encoded: bytes = value.encode("latin-1")
    except UnicodeEncodeError:
        raise AppError(f"header {name!r}: value {value!r:.80} is not Latin-1 text") from None
    if _VALUE_RE.fullmatch(value) is None:
        raise AppError(f"header {name!r}: value {value!r:.80} contains CR, LF, NUL or another control character")
    return encoded


def _encode_headers(
    headers: Mapping[str, Any], *, keep_hop_by_hop: bool, buffered: bool
) -> tuple[list[tuple[bytes, bytes]], bool]:
    """Wire form of the app's headers; also says whether the app set content-length."""
    wire: list[tuple[bytes, bytes]] = []
    app_length = False
    for name, value in headers.items():
        pair = _VALID_PAIRS.get((name, value)) if type(value) is str else None
        if pair is not None:  # seen and validated before: most apps repeat their headers
            wire.append(pair)
            continue
        if type(name) is not str:
            raise AppError(f"header names must be str, got {type(name).__name__}: {name!r:.40}")
        if _NAME_RE.fullmatch(name) is None:
            if name.lower() != name:
                raise AppError(f"header {name!r} must be lower-case (Rack 3): use {name.lower()!r}")
            raise AppError(f"header name {name!r:.60} is not a valid HTTP token")
        if name.startswith("rack."):
            continue  # reserved for the server: never on the wire
        if name in HOP_BY_HOP and not keep_hop_by_hop:
            log.warning("app set hop-by-hop header %r; dropped (the server owns the framing)", name)
            continue
        if name == "content-length":
            if buffered:
                continue  # recomputed from the actual chunks
            if not isinstance(value, str) or _DIGITS_RE.fullmatch(value) is None:
                raise AppError(f"header 'content-length': value {value!r:.40} is not a number")
            if len(value) > CONTENT_LENGTH_MAX_DIGITS:
                raise AppError(f"header 'content-length': value {value!r:.40} is longer than 20 digits")
            app_length = True
        bname = name.encode("ascii")
        if isinstance(value, (list, tuple)):
            for item in value:
                wire.append((bname, _encode_value(name, item)))
        else:
            pair = (bname, _encode_value(name, value))
            wire.append(pair)
            if name != "content-length" and name not in HOP_BY_HOP:
                if len(_VALID_PAIRS) >= _VALID_PAIRS_MAX:
                    _VALID_PAIRS.clear()  # bounded: values may be per-request (etags, cookies)
                _VALID_PAIRS[(name, value)] = pair
    return wire, app_length


def encode_headers(headers: Mapping[str, Any]) -> list[tuple[bytes, bytes]]:
    """Validate and encode a headers dict that carries no framing (e.g. for 103 Early Hints)."""
    if not isinstance(headers, Mapping):
        raise AppError(f"headers must be a dict, got {type(headers).__name__}")
    return _encode_headers(headers, keep_hop_by_hop=False, buffered=True)[0]


#: Fields a response must not carry as trailers: connection-specific ones (RFC 9113 §8.2.2)
#: and those RFC 9110 §6.5.1 keeps out of trailers because a recipient acts on them before
#: the body (framing, routing, authentication, response control data, content processing).
FORBIDDEN_TRAILERS = frozenset(
    {
        b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade", b"te",
        b"content-length", b"host", b"trailer", b"content-encoding", b"content-type", b"content-range",
        b"www-authenticate", b"proxy-authenticate", b"authorization", b"cache-control", b"expires",
        b"date", b"age", b"location", b"retry-after", b"vary",
    }
)  # fmt: skip


def check_trailers(headers: Any) -> list[tuple[bytes, bytes]]:
    """Validate response trailers given as ``(name, value)`` byte pairs; return them as a list.

    Names must be lower-case field names (HTTP/2 sends them as they are), never pseudo-headers
    (``:status``) nor one of :data:`FORBIDDEN_TRAILERS`; values follow the header rules.  A
    violation is the app's bug: :class:`AppError` naming the field, never a silent drop, since
    a trailer the client expects (``grpc-status``) must not just go missing.
    """
    checked: list[tuple[bytes, bytes]] = []
    try:
        pairs = [(bytes(name), bytes(value)) for name, value in headers]
    except (TypeError, ValueError) as exc:
        raise AppError(f"trailers must be (bytes, bytes) pairs ({exc})") from None
    for name, value in pairs:
        if name.startswith(b":"):
            raise AppError(f"trailer {name!r}: pseudo-header fields cannot be trailers")
        if _NAME_RE.fullmatch(name.decode("latin-1")) is None:
            raise AppError(f"trailer name {name!r:.60} is not a lower-case field name")
        if name in FORBIDDEN_TRAILERS:
            raise AppError(f"trailer {name.decode()!r} is not allowed in trailers (RFC 9110 §6.5.1, RFC 9113 §8.2.2)")
        if _VALUE_RE.fullmatch(value.decode("latin-1")) is None:
            raise AppError(f"trailer {name.decode()!r}: value {value!r:.80} has CR, LF, NUL or other control bytes")
        checked.append((name, value))
    return checked


def prepare_response(result: Any) -> PreparedResponse:
    """Validate the app's return value; raise AppError on any breach of the contract."""
    if type(result) is not tuple or len(result) != 3:
        if isinstance(result, list) and len(result) == 3:
            result = tuple(result)
        elif isinstance(result, tuple) and len(result) == 3:
            pass  # a tuple subclass (a named tuple)
        else:
            raise AppError(
                f"app must return (status, headers, body), got {type(result).__name__}: {result!r:.80}"
            )
    status, headers, body = result
    if type(status) is not int or not 100 <= status <= 999:
        raise AppError(f"status must be an int from 100 to 999, got {status!r:.40}")
    if type(headers) is not dict and not isinstance(headers, Mapping):  # (the ABC check only if needed)
        raise AppError(f"headers must be a dict, got {type(headers).__name__}")
    hijack = headers.get("rack.hijack")
    if hijack is not None and not callable(hijack):
        raise AppError("header 'rack.hijack' must be an async callable hijack(stream)")
    if hijack is None and status < 200:
        raise AppError(f"status {status} is informational; a final response needs 200-999")
    kind = BodyKind.BUFFERED if type(body) is list else classify_body(body)  # (the common body: no call)
    wire, app_length = _encode_headers(headers, keep_hop_by_hop=hijack is not None, buffered=kind is BodyKind.BUFFERED)
    chunks: Sequence[bytes] = ()
    length = 0
    if kind is BodyKind.BUFFERED:
        # A copy (the app may change its list later), checked in one pass: a call only for a
        # chunk that is not bytes, no comprehension's frame.
        copied: list[Any] = body.copy() if type(body) is list else list(body)
        for i, chunk in enumerate(copied):
            if type(chunk) is not bytes:
                copied[i] = chunk = check_chunk(chunk)
            length += len(chunk)
        chunks = copied
        if hijack is None:
            field = _LENGTH_FIELDS.get(length)
            wire.append(field if field is not None else length_field(length))
    return PreparedResponse(status, wire, kind, body, chunks, length, hijack, app_length)


async def close_body(body: Any) -> None:
    """Call the body's ``aclose()`` or ``close()`` (whichever it has; a sync ``close`` may return
    an awaitable).  The request cycle and the middleware that replace a body share this rule."""
    aclose = getattr(body, "aclose", None)
    if aclose is not None:
        await aclose()
        return
    close = getattr(body, "close", None)
    if close is not None:
        result = close()
        if inspect.isawaitable(result):
            await result
