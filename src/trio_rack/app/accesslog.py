"""One access-log line per response, in the Combined Log Format, safe against forged lines.

Everything that came from the client is escaped: control bytes, quotes and backslashes become
``\\xHH`` / ``\\"`` / ``\\\\``, so no request can start a new log line or fake a field.
Hijacked requests are logged too, with ``hijacked`` appended to the line; requests refused
before they reached the app (400, 408, 414, 431, 505...) get a line of their own
(:func:`log_rejected`).

Every record also carries the fields structured, ``record.access`` (``extra={"access": ...}``):
``remote_addr``, ``method``, ``path``, ``query``, ``protocol``, ``status``, ``bytes``,
``duration_ms``, ``referer``, ``user_agent``, ``hijacked``, ``time_local`` — what
:mod:`trio_rack.logs` formats (JSON, ``--access-log-format``).  Their client-supplied text has
control and non-ASCII bytes as ``\\xHH`` (as in the line), so no format can be made to start
a new line; quotes and backslashes stay as they are (JSON quotes them itself).
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

__all__ = ["log_rejected", "log_response", "escape"]

access_log = logging.getLogger("trio_rack.access")

_UNSAFE_RE = re.compile(r'[\x00-\x1f\x7f-\xff"\\]')
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\xff]")


def _escape_char(match: re.Match[str]) -> str:
    char = match.group()
    if char in '"\\':
        return "\\" + char
    return f"\\x{ord(char):02x}"


def escape(text: str) -> str:
    """Make client-supplied text safe for one log field."""
    return _UNSAFE_RE.sub(_escape_char, text) if _UNSAFE_RE.search(text) else text


_stamp_second = -1
_stamp = ""


def _field(text: str) -> str:
    """Client-supplied text for a structured field: control and non-ASCII bytes as ``\\xHH``."""
    return _CONTROL_RE.sub(_escape_char, text) if _CONTROL_RE.search(text) else text


def _timestamp() -> str:
    """The log timestamp, formatted at most once a second."""
    global _stamp_second, _stamp
    now = int(time.time())
    if now != _stamp_second:
        _stamp_second, _stamp = now, time.strftime("%d/%b/%Y:%H:%M:%S %z", time.localtime(now))
    return _stamp


def log_response(
    env: dict[str, Any], status: int | None, sent: int, *, hijacked: bool = False, duration: float | None = None
) -> None:
    """One line for a request the app saw; ``duration`` in seconds (head parsed to response done)."""
    if not access_log.isEnabledFor(logging.INFO):
        return
    _log(
        env.get("REMOTE_ADDR") or "-",  # may come from a proxy header
        env.get("REQUEST_METHOD", "-"),
        env.get("PATH_INFO", ""),
        env.get("QUERY_STRING") or "",
        env.get("SERVER_PROTOCOL", "-"),
        status,
        sent,
        env.get("HTTP_REFERER"),
        env.get("HTTP_USER_AGENT"),
        hijacked,
        duration,
    )


def log_rejected(remote_addr: str | None, status: int, sent: int, request_line: bytes | None) -> None:
    """One line for a request refused before it reached the app: no env, maybe no request line.

    ``request_line`` (the raw first line, if one was read) gives method, target and protocol
    where it has the shape of one; otherwise they are ``-``.
    """
    if not access_log.isEnabledFor(logging.INFO):
        return
    method, path, query, protocol = "-", "-", "", "-"
    if request_line:
        parts = request_line.decode("latin-1").split(" ")
        if len(parts) == 3:
            method, target, protocol = parts
            path, _, query = target.partition("?")
    _log(remote_addr or "-", method, path, query, protocol, status, sent, None, None, False, None)


def _log(
    host: str,
    method: str,
    path: str,
    query: str,
    protocol: str,
    status: int | None,
    sent: int,
    referer: str | None,
    agent: str | None,
    hijacked: bool,
    duration: float | None,
) -> None:
    target = path + "?" + query if query else path
    if protocol == "HTTP/2":
        protocol = "HTTP/2.0"  # the request line as Apache, nginx and h2load's peers log it
    when = _timestamp()
    code = status if status is not None else "-"
    size = sent if sent else "-"
    line = (
        f'{escape(host)} - - [{when}] "{escape(f"{method} {target} {protocol}")}" {code} {size}'
        f' "{escape(referer or "-")}" "{escape(agent or "-")}"'
    )
    if hijacked:
        line += " hijacked"
    fields = {
        "remote_addr": _field(host),
        "method": _field(method),
        "path": _field(path),
        "query": _field(query),
        "protocol": _field(protocol),
        "status": status,
        "bytes": sent,
        "duration_ms": None if duration is None else round(duration * 1000, 3),
        "referer": None if referer is None else _field(referer),
        "user_agent": None if agent is None else _field(agent),
        "hijacked": hijacked,
        "time_local": when,
    }
    access_log.info("%s", line, extra={"access": fields})
