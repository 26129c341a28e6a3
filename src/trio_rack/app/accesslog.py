"""One access-log line per response, in the Combined Log Format, safe against forged lines.

Everything that came from the client is escaped: control bytes, quotes and backslashes become
``\\xHH`` / ``\\"`` / ``\\\\``, so no request can start a new log line or fake a field.
Hijacked requests are logged too, with ``hijacked`` appended to the line.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

__all__ = ["log_response", "escape"]

access_log = logging.getLogger("trio_rack.access")

_UNSAFE_RE = re.compile(r'[\x00-\x1f\x7f-\xff"\\]')


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


def _timestamp() -> str:
    """The log timestamp, formatted at most once a second."""
    global _stamp_second, _stamp
    now = int(time.time())
    if now != _stamp_second:
        _stamp_second, _stamp = now, time.strftime("%d/%b/%Y:%H:%M:%S %z", time.localtime(now))
    return _stamp


def log_response(env: dict[str, Any], status: int | None, sent: int, *, hijacked: bool = False) -> None:
    if not access_log.isEnabledFor(logging.INFO):
        return
    path = env.get("PATH_INFO", "")
    query = env.get("QUERY_STRING")
    target = path + "?" + query if query else path
    protocol = env.get("SERVER_PROTOCOL", "-")
    if protocol == "HTTP/2":
        protocol = "HTTP/2.0"  # the request line as Apache, nginx and h2load's peers log it
    request_line = f'{env.get("REQUEST_METHOD", "-")} {target} {protocol}'
    when = _timestamp()
    host = escape(env.get("REMOTE_ADDR") or "-")  # may come from a proxy header
    code = status if status is not None else "-"
    size = sent if sent else "-"
    referer = escape(env.get("HTTP_REFERER", "-"))
    agent = escape(env.get("HTTP_USER_AGENT", "-"))
    line = f'{host} - - [{when}] "{escape(request_line)}" {code} {size} "{referer}" "{agent}"'
    if hijacked:
        line += " hijacked"
    access_log.info("%s", line)
