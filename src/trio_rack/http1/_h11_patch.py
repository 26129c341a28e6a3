"""Three adjustments to h11: strict chunk extensions, lower-case framing header names, and
request events built without a second look at the request line.

**Chunk extensions.**  Make h11 refuse malformed chunk extensions (RFC 9112 §7.1.1), until h11 does so itself.

h11 0.16 matches a chunk extension with ``;.*``: any byte but LF, NUL and bare CR included.
A proxy in front that reads those bytes differently frames the body differently — request
smuggling (waitress CVE-2022-24761).  The body bytes never reach us as anything but decoded
data, so the check cannot live in our own code: the chunk-header pattern must be stricter.

h11 looks ``_readers.chunk_header_re`` up each time it parses a chunk header, so replacing it
tightens every h11 connection in the process (h11-based clients included: they too should
refuse such chunks).  The replacement happens only if the pattern is exactly the one this was
written against; any other h11 keeps its own, and ``tests/test_smuggling.py`` says so loudly.

**Header case.**  Every header trio-rack writes is lower-case (Rack 3's rule for apps, and
HTTP/2's on the wire), but the framing headers h11 adds to a response itself —
``Transfer-Encoding: chunked``, ``Connection: close`` — it writes title-cased, and it rewrites
our own ``connection: close`` the same way: one response mixed both styles.  h11 builds those
with ``set_comma_header`` from ``h11._connection``'s namespace, only for responses it sends
(``_clean_up_response_headers_for_sending``); :func:`lower_case_framing_headers` puts a variant
there that keeps the lower-case name.  Names are case-insensitive (RFC 9110 §5.1): only the
spelling changes.  Installed only over the exact function it replaces;
``tests/test_driver_defects.py::test_every_header_name_on_the_wire_is_lower_case`` checks the
bytes on the wire.  The variant also skips the name/value regexes h11 would run again
(``_parsed=True``): every header it gets back came from a ``Headers`` h11 built (validated, or
the exchange's already validated head), and the values it adds are h11's constants or
comma-separated pieces of those values; the framing checks (content-length,
transfer-encoding) still run.  That second pass cost every streamed and every
``connection: close`` response about 10 µs (profiled).

**Request events.**  h11's reader for a request head (``maybe_read_from_IDLE_client``) matches
the request line with its ``request_line_re`` (``method SP target SP version``, the method a
``token``, the target ``vchar+``) and passes the groups to ``Request(...)``, whose constructor
matches the method and the target once more (``method_re``, ``request_target_re``: the same
sub-patterns, so they cannot fail on those groups), takes keyword arguments and counts Host
through the ``Headers`` sequence: 2.3 µs of every request, 0.6 µs with :func:`request_event`,
which keeps the rest of the constructor in its order and with its messages (and its header
lines are matched without h11's two generators and a dict per line, :func:`_header_fields`)
(``normalize_and_validate``: the Content-Length and Transfer-Encoding verdicts, then the Host
count).  :func:`fast_request_events` installs the reader variant in h11's ``READERS`` table
(every h11 server connection in the process), only over the exact function it replaces and only
with h11's four ``Request`` slots; the httptools engine builds its events with
:func:`request_event` too.  ``tests/test_h11_request_reader.py`` holds the variant to h11's own
reader on the differential corpus.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import h11
from h11 import _headers, _readers
from h11._util import LocalProtocolError, validate

__all__ = ["fast_request_events", "lower_case_framing_headers", "request_event", "tighten_chunk_extensions"]

log = logging.getLogger("trio_rack.error")

_H11_PATTERN = rb"(?P<chunk_size>([0-9A-Fa-f]){1,20})(?P<chunk_ext>;.*)?[ \t]*\r\n"
_TOKEN = rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+"
_QUOTED = rb'"(?:[\t !#-\[\]-~\x80-\xff]|\\[\t -~\x80-\xff])*"'
#: chunk-ext = *( BWS ";" BWS ext-name [ BWS "=" BWS ext-val ] ), ext-val = token / quoted-string
_EXT = rb"(?:[ \t]*;[ \t]*" + _TOKEN + rb"(?:[ \t]*=[ \t]*(?:" + _TOKEN + rb"|" + _QUOTED + rb"))?)*"
_STRICT_PATTERN = rb"(?P<chunk_size>[0-9A-Fa-f]{1,20})(?P<chunk_ext>" + _EXT + rb")[ \t]*\r\n"


def tighten_chunk_extensions() -> bool:
    """Install the strict chunk-header pattern in h11; False if h11 is not the expected one."""
    current = getattr(_readers, "chunk_header_re", None)
    if current is None:
        return False
    if current.pattern == _STRICT_PATTERN:
        return True
    if current.pattern != _H11_PATTERN:
        log.debug("h11's chunk header pattern changed; leaving it as it is")
        return False
    _readers.chunk_header_re = re.compile(_STRICT_PATTERN)
    return True


def lower_case_framing_headers() -> bool:
    """Make h11 write the framing headers it adds to responses in lower case; False if h11 differs."""
    from h11 import _connection

    current = getattr(_connection, "set_comma_header", None)
    if current is _set_comma_header_lower:
        return True
    if current is None or current is not getattr(_headers, "set_comma_header", None):
        log.debug("h11's set_comma_header changed; leaving it as it is")
        return False
    setattr(_connection, "set_comma_header", _set_comma_header_lower)  # noqa: B010 (a private name of h11)
    return True


def _set_comma_header_lower(headers: _headers.Headers, name: bytes, new_values: list[bytes]) -> _headers.Headers:
    """h11's ``set_comma_header`` (h11 0.14–0.16), with ``name`` kept as given (lower-case), and
    without revalidating headers already validated (see the module docstring)."""
    new_headers = [(raw, value) for raw, found, value in headers._full_items if found != name]
    new_headers.extend((name, value) for value in new_values)
    return _headers.normalize_and_validate(new_headers, _parsed=True)


#: Whether :func:`request_event` may fill in h11's ``Request`` itself (its slots as in h11 0.16).
FAST_REQUEST = getattr(h11.Request, "__slots__", None) == ("method", "headers", "target", "http_version")


def request_event(method: bytes, target: bytes, fields: list[tuple[bytes, bytes]], version: bytes) -> Any:
    """``h11.Request(..., _parsed=True)`` for a method and target known to match h11's request
    line (see the module docstring): the same event, the same errors, in the same order."""
    if not FAST_REQUEST:
        return h11.Request(method=method, target=target, headers=fields, http_version=version, _parsed=True)
    headers = _headers.normalize_and_validate(fields, _parsed=True)
    hosts = 0
    for item in headers._full_items:
        if item[1] == b"host":
            hosts += 1
    if version == b"1.1" and hosts == 0:
        raise LocalProtocolError("Missing mandatory Host: header")
    if hosts > 1:
        raise LocalProtocolError("Found multiple Host: headers")
    event = object.__new__(h11.Request)
    object.__setattr__(event, "method", method)
    object.__setattr__(event, "headers", headers)
    object.__setattr__(event, "target", target)
    object.__setattr__(event, "http_version", version)
    return event


def _read_request_head(buf: Any) -> Any:
    """h11's ``maybe_read_from_IDLE_client`` (h11 0.14–0.16), its event made by
    :func:`request_event`: the request line's groups are passed as they matched."""
    lines = buf.maybe_extract_lines()
    if lines is None:
        if buf.is_next_line_obviously_invalid_request_line():
            raise LocalProtocolError("illegal request line")
        return None
    if not lines:
        raise LocalProtocolError("no request line received")
    matches = validate(_readers.request_line_re, lines[0], "illegal request line: {!r}", lines[0])
    return request_event(matches["method"], matches["target"], _header_fields(lines), matches["http_version"])


def _header_fields(lines: list[bytearray]) -> list[tuple[bytes, bytes]]:
    """``list(_decode_header_lines(lines[1:]))``, h11's header lines after the request line,
    without its two generators and a dict per line while every line is one field that h11's
    ``header_field_re`` matches.  The first line that does not match sends the whole list
    through h11's own generators, for h11's exact fields or error; an obs-fold continuation
    (which h11 folds into the line before it before matching that) is such a line, since a
    field name cannot begin with the space or tab that makes a continuation."""
    match_field = _readers.header_field_re.fullmatch
    fields: list[tuple[bytes, bytes]] = []
    for index in range(1, len(lines)):
        found = match_field(lines[index])
        if found is None:
            rest: Any = lines[1:]
            return list(_readers._decode_header_lines(rest))
        fields.append((found["field_name"], found["field_value"]))
    return fields


def fast_request_events() -> bool:
    """Install :func:`_read_request_head` as h11's reader of request heads; False if h11 differs."""
    readers: Any = getattr(_readers, "READERS", None)
    key = (h11.CLIENT, h11.IDLE)
    if readers is None or key not in readers:
        return False
    current = readers[key]
    if current is _read_request_head:
        return True
    if not FAST_REQUEST or current is not getattr(_readers, "maybe_read_from_IDLE_client", None):
        log.debug("h11's request reader changed; leaving it as it is")
        return False
    readers[key] = _read_request_head
    return True
