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


def log_response(env: dict[str, Any], status: int | None, sent: int, *, hijacked: bool = False) -> None:
    if not access_log.isEnabledFor(logging.INFO):
        return
    path = env.get("PATH_INFO", "")
    query = env.get("QUERY_STRING")
    target = path + "?" + query if query else path
    request_line = f'{env.get("REQUEST_METHOD", "-")} {target} {env.get("SERVER_PROTOCOL", "-")}'
    when = time.strftime("%d/%b/%Y:%H:%M:%S %z")
    line = '%s - - [%s] "%s" %s %s "%s" "%s"' % (
        env.get("REMOTE_ADDR") or "-",
        when,
        escape(request_line),
        status if status is not None else "-",
        sent if sent else "-",
        escape(env.get("HTTP_REFERER", "-")),
        escape(env.get("HTTP_USER_AGENT", "-")),
    )
    if hijacked:
        line += " hijacked"
    access_log.info("%s", line)
