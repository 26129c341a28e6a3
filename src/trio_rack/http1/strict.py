"""HTTP/1 request-head strictness beyond h11: pure functions over bytes and h11 events.

Each check closes a request-smuggling or parser-confusion vector that h11 lets through, because
RFC 9112 allows a recipient to be lenient where a proxy in front of us may not be; we refuse
instead of guessing.  ``tests/test_http1_strict.py`` tests each on bytes, naming the RFC section
or CVE it enforces; ``tests/test_smuggling.py`` drives them through the real connection.

Nothing here does I/O or keeps state (but a bounded set of ``Host`` values already matched,
:data:`_GOOD_HOSTS`, which only skips a match that would succeed): the connection loop
(:mod:`trio_rack.http1.connection`) calls them at the points named in their docstrings.
"""

from __future__ import annotations

import re
from operator import itemgetter

import h11

from ..app.head import RequestHead
from ..authority import HOST_RE
from ..config import Limits

__all__ = [
    "check_request",
    "has_body",
    "has_head_end",
    "leading_empty_lines",
    "line_break_trick",
    "request_head",
    "request_line_too_long",
    "target_problem",
]

#: The end of a request head as h11 finds it (it also takes a bare-LF blank line).
_HEAD_END_RE = re.compile(rb"\n\r?\n")
#: In a head: an LF without its CR, a CR without its LF, a line starting with SP/HTAB (obs-fold).
#: h11 accepts the first and the last (RFC 9112 §2.2 and §5.2 allow either), a proxy in front
#: may not: waitress CVE-2019-16785, Puma CVE-2021-41136, llhttp CVE-2022-32214 and -32215.
_LINE_BREAK_TRICK_RE = re.compile(rb"(?<!\r)\n|\r(?!\n)|\n[ \t]")
#: Control bytes h11 lets through in field values (it refuses NUL, CR, LF, VT and FF itself).
_VALUE_CTL_RE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_ABSOLUTE_FORM_RE = re.compile(rb"(?i:https?)://([^/?#]*)[^#]*")
#: Empty lines ignored before one request line.  RFC 9112 §2.2 asks for "at least one" (clients
#: that end a POST body with an extra CRLF); this many is lenient and still bounded, and more is
#: not a buggy client: 400.
MAX_LEADING_EMPTY_LINES = 8


def leading_empty_lines(buffered: bytes, allowed: int = MAX_LEADING_EMPTY_LINES) -> int:
    """How many bytes of empty lines (CRLF, nothing else) at the start of ``buffered`` to ignore.

    RFC 9112 §2.2: "a server that is expecting to receive and parse a request-line SHOULD
    ignore at least one empty line (CRLF) received prior to the request-line".  Only complete
    CRLF pairs, at most ``allowed`` of them: a bare LF or CR stays for :func:`line_break_trick`
    (and h11) to refuse.
    """
    count = 0
    while count < allowed and buffered.startswith(b"\r\n", 2 * count):
        count += 1
    return 2 * count


def line_break_trick(buffered: bytes) -> str | None:
    """Why the request head at the start of ``buffered`` must be refused (400), or None.

    RFC 9112 §2.2 (bare CR, bare LF) and §5.2 (obs-fold).  Checked before h11 parses the head,
    on what has arrived so far: a bare CR in the blank line would otherwise keep the head
    "incomplete" until the header timeout.
    """
    end = _HEAD_END_RE.search(buffered)
    stop = end.end() if end else len(buffered)
    match = _LINE_BREAK_TRICK_RE.search(buffered, 0, stop)  # the head only, without copying it
    if match is None or (end is None and match.start() == stop - 1):
        return None  # clean, or a CR (or LF) at the very end whose partner may come next
    found = match.group()
    if found == b"\n":
        return "bare LF in the request head (RFC 9112 §2.2)"
    if found.startswith(b"\r"):
        return "bare CR in the request head (RFC 9112 §2.2)"
    return "obsolete line folding (RFC 9112 §5.2)"


def target_problem(method: bytes, target: bytes) -> str | None:
    """RFC 9112 §3.2: which request-target forms a method may use, or None if fine."""
    if target.startswith(b"/"):
        return "fragment in the request target" if b"#" in target else None
    if target == b"*":
        return None if method == b"OPTIONS" else "asterisk-form is only for OPTIONS"
    if method == b"CONNECT":
        return None if HOST_RE.fullmatch(target) and b":" in target else "CONNECT needs host:port"
    match = _ABSOLUTE_FORM_RE.fullmatch(target)
    if match is None:
        return "request target is neither origin-form nor absolute-form"
    if not HOST_RE.fullmatch(match.group(1)) or not match.group(1):
        return "invalid authority in an absolute-form target"  # userinfo too (RFC 9110 §4.2.4)
    return None


def has_head_end(buffered: bytes, limit: int) -> bool:
    """Whether a complete request head ends within the first ``limit`` bytes."""
    return buffered.find(b"\r\n\r\n", 0, limit + 4) >= 0 or buffered.find(b"\n\n", 0, limit + 2) >= 0


def request_line_too_long(buffered: bytes, limit: int) -> bool:
    """Whether the request line at the start of ``buffered`` is (already) over ``limit`` bytes (414)."""
    end = buffered.find(b"\n")
    if end < 0:
        end = len(buffered)
    return end > limit


#: ``Host`` values that matched :data:`HOST_RE` before (most requests repeat one of a few): a
#: set lookup instead of the match.  Bounded (values are client-chosen): a full set starts
#: afresh, and a value over :data:`_GOOD_HOST_LONGEST` bytes is matched each time, not kept —
#: else distinct long Hosts (up to ``max_head_size`` each) would pin some 32 MiB a process.
_GOOD_HOSTS: set[bytes] = set()
_GOOD_HOSTS_MAX = 1024
_GOOD_HOST_LONGEST = 256
#: The value of h11's ``(raw name, name, value)`` header triple.
_VALUE_OF = itemgetter(2)


def _good_host(value: bytes) -> None:
    if len(value) > _GOOD_HOST_LONGEST:
        return
    if len(_GOOD_HOSTS) >= _GOOD_HOSTS_MAX:
        _GOOD_HOSTS.clear()
    _GOOD_HOSTS.add(bytes(value))  # (a copy, if h11 ever gives a bytearray)


def check_request(request: h11.Request, limits: Limits) -> tuple[int, str] | None:
    """RFC 9112 MUSTs and our limits that h11 leaves to the server: (status, reason) or None."""
    if request.http_version not in (b"1.1", b"1.0"):
        return 505, "unsupported HTTP version"  # RFC 9110 §15.6.6
    if len(request.target) > limits.max_request_line:
        return 414, "request target too long"
    items = request.headers._full_items  # (raw name, name, value): h11's own list, not a copy
    if len(items) > limits.max_header_count:
        return 431, "too many header fields"
    target = request.target
    if target[:1] != b"/" or b"#" in target:  # (origin-form without a fragment, the common one: no call)
        problem = target_problem(request.method, target)
        if problem is not None:
            return 400, problem
    # RFC 9110 §5.5: invalid; we refuse, not retain.  One search over the values joined by a
    # tab (a byte the pattern allows) gives every value's verdict at once.
    if _VALUE_CTL_RE.search(b"\t".join(map(_VALUE_OF, items))):
        return 400, "control character in a header field value"
    hosts = 0
    has_te = has_cl = False
    for _, name, value in items:
        if name == b"host":
            hosts += 1
            if type(value) is not bytes or value not in _GOOD_HOSTS:
                if not HOST_RE.fullmatch(value):  # RFC 9112 §3.2: MUST 400
                    return 400, "invalid Host header"
                _good_host(value)
        elif name == b"transfer-encoding":
            has_te = True
        elif name == b"content-length":
            has_cl = True
            if limits.max_body_size is not None and int(value) > limits.max_body_size:
                return 413, "request body too large"
    if hosts > 1:  # RFC 9112 §3.2: more than one Host is a 400
        return 400, "more than one Host header"
    if has_te and has_cl:  # RFC 9112 §6.1: a smuggling vector; refuse it outright
        return 400, "both Transfer-Encoding and Content-Length"
    return None


def has_body(request: h11.Request) -> bool:
    """Whether a checked request announces a body: ``transfer-encoding``, or a
    ``content-length`` other than 0 (h11 has reduced it to one value of digits).

    Without one, nothing the request's exchange does reads from the transport: the driver
    runs it outside the scope its reads are timed by (http1/connection.py).
    """
    for _, name, value in request.headers._full_items:
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip(b"0")):
            return True
    return False


def request_head(request: h11.Request) -> RequestHead:
    """The protocol-neutral head of a checked request; an absolute-form target is split (RFC 9112 §3.2.2)."""
    target = request.target
    authority = None
    if target[:1] != b"/" and target != b"*" and request.method != b"CONNECT":
        # absolute-form: the scheme is case-insensitive (RFC 3986 §3.1); check_request vetted it
        rest = target.split(b"://", 1)[1]
        cut = len(rest)
        for sep in (b"/", b"?"):
            index = rest.find(sep)
            if 0 <= index < cut:
                cut = index
        authority, target = rest[:cut], rest[cut:]
        if not target.startswith(b"/"):
            target = b"/" + target
    path, _, query = target.partition(b"?")
    fields = request.headers._full_items
    return RequestHead(
        _SHARED.get(request.method) or _share(request.method),
        path,
        query,
        _HTTP_VERSIONS.get(request.http_version) or request.http_version.decode("ascii"),
        # a plain list of (name, value): the env builder and the adapters walk it, and h11's
        # ``Headers`` is a Sequence whose iteration is one __getitem__ call per field
        [(_SHARED.get(name) or _share(name), _SHARED.get(value) or _share(value)) for _, name, value in fields],
        authority,
    )


#: Header names and values seen before, one ``bytes`` for every request that repeats them
#: (``host``, ``Host``'s value, ``keep-alive``, ``accept``...): the head lives as long as its
#: request (``env["trio_rack.request_head"]``: 10,000 heads at 10,000 open streams), and a
#: shared object also brings its hash along to the env builder's lookups.  State, as
#: :data:`_GOOD_HOSTS` is, and bounded: names and values are client-chosen, so a full cache
#: starts afresh; values over :data:`_SHARED_LONGEST` bytes (cookies, tokens) are not kept.
_SHARED: dict[bytes, bytes] = {}
_SHARED_MAX = 2048
_SHARED_LONGEST = 256


def _share(data: bytes) -> bytes:
    """``data`` as the cached object from now on (if short enough); ``data`` itself this time."""
    if len(data) <= _SHARED_LONGEST:
        if len(_SHARED) >= _SHARED_MAX:
            _SHARED.clear()
        _SHARED[data] = data
    return data


_HTTP_VERSIONS = {b"1.1": "1.1", b"1.0": "1.0"}
