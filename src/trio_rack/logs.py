"""Logging the way Python users expect: three named loggers, text or JSON, Apache-style access lines.

The loggers (configure them with :mod:`logging` like any other):

``trio_rack.error``
    the error log: start-up, listening URLs, malformed requests (INFO), app exceptions (ERROR).
    Its parent ``trio_rack`` is where the CLI attaches its handler.
``trio_rack.access``
    one line per response (hijacked ones marked ``hijacked``), Combined Log Format by default.
``trio_rack.app``
    what the app writes to ``env["rack.errors"]``.

Library use (:func:`trio_rack.serve`, :func:`trio_rack.run`): when neither the root logger nor
``trio_rack`` has a handler — the application configured no logging — :func:`ensure_default_logging`
attaches one stderr handler to ``trio_rack`` (INFO, the CLI's text format), so a script's user
sees what the CLI user sees.  An application that configured logging keeps full control.

Formats:

* ``text``: ``TIME [PID] LEVEL LOGGER: message``; access lines as :class:`AccessFormatter` makes them.
* ``json``: one JSON object a line, ``time`` (ISO 8601, UTC), ``level``, ``logger``, ``message``,
  and for access lines ``remote_addr``, ``method``, ``path``, ``query``, ``protocol``, ``status``,
  ``bytes``, ``duration_ms``, ``referer``, ``user_agent`` (and ``hijacked``).

Access fields come from ``record.access`` (a dict the server attaches with ``extra=``, see
:mod:`trio_rack.app.accesslog`; ``duration_ms`` from the parsed head to the response's end).
A record without it (a line logged by other code in the same format) is parsed back from the
Combined Log Format text: the line escapes everything that came from the client, so the parse
is unambiguous; its ``duration_ms`` is ``None`` (``%D``/``%T`` print ``-``).
"""

from __future__ import annotations

import json
import logging
import logging.config
import re
import sys
import time
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

from .config import ConfigError

__all__ = [
    "ACCESS_LOGGER",
    "APP_LOGGER",
    "COMBINED",
    "ERROR_LOGGER",
    "AccessFormatter",
    "JsonFormatter",
    "TextFormatter",
    "access_fields",
    "configure",
    "ensure_default_logging",
    "load_log_config",
]

ERROR_LOGGER = "trio_rack.error"
ACCESS_LOGGER = "trio_rack.access"
APP_LOGGER = "trio_rack.app"
#: The Combined Log Format, as Apache's ``LogFormat`` spells it.
COMBINED = '%h %l %u %t "%r" %>s %b "%{Referer}i" "%{User-agent}i"'
TEXT_FORMAT = "%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s"

_Q = r'"((?:[^"\\]|\\.)*)"'
_CLF = re.compile(rf"^(\S+) \S+ \S+ \[([^\]]*)\] {_Q} (\S+) (\S+) {_Q} {_Q}( hijacked)?$")


def access_fields(record: logging.LogRecord) -> dict[str, Any] | None:
    """The structured fields of an access-log record, or None if it is not one."""
    given = getattr(record, "access", None)
    if isinstance(given, Mapping):
        return dict(given)
    match = _CLF.match(record.getMessage())
    if match is None:
        return None
    host, when, request, status, size, referer, agent, hijacked = (
        _unescape(g) if isinstance(g, str) else g for g in match.groups()
    )
    method, _, rest = request.partition(" ")
    target, _, protocol = rest.rpartition(" ")
    path, _, query = target.partition("?")
    return {
        "remote_addr": host,
        "time_local": when,
        "method": method,
        "path": path,
        "query": query,
        "protocol": protocol,
        "status": int(status) if status.isdigit() else None,
        "bytes": int(size) if size.isdigit() else 0,
        "duration_ms": None,
        "referer": None if referer == "-" else referer,
        "user_agent": None if agent == "-" else agent,
        "hijacked": bool(hijacked),
    }


def _unescape(text: str) -> str:
    """Undo the access log's ``\\"`` and ``\\\\``; ``\\xHH`` (control bytes) stays escaped."""
    return re.sub(r'\\(["\\])', r"\1", text)


class AccessFormatter(logging.Formatter):
    """Apache ``LogFormat`` tokens over :func:`access_fields`.

    ``%h`` client address, ``%l`` and ``%u`` always ``-``, ``%t`` ``[time]``, ``%r`` request
    line, ``%m`` method, ``%U`` path, ``%q`` ``?query`` (or empty), ``%H`` protocol, ``%s`` and
    ``%>s`` status, ``%b`` bytes (``-`` for none), ``%B`` bytes (0 for none), ``%D`` duration
    in microseconds and ``%T`` in seconds (``-`` when unknown), ``%{Referer}i`` and
    ``%{User-agent}i`` (case-insensitive), ``%%`` a percent sign.  Any other token is an error
    at start-up.  Records that are not access lines are formatted as text.
    """

    _TOKEN = re.compile(r"%(?:>?([a-zA-Z%])|\{([^}]*)\}([a-z]))")

    def __init__(self, fmt: str = COMBINED) -> None:
        super().__init__()
        self.fmt = fmt
        for match in self._TOKEN.finditer(fmt):
            self._render(match, None)  # raises on an unknown token
        self._text = TextFormatter()

    def format(self, record: logging.LogRecord) -> str:
        fields = access_fields(record)
        if fields is None:
            return self._text.format(record)
        return self._TOKEN.sub(lambda m: self._render(m, fields), self.fmt)

    def _render(self, match: re.Match[str], f: dict[str, Any] | None) -> str:
        letter, name, kind = match.groups()
        if name is not None:
            header = name.lower().replace("_", "-")
            if kind != "i" or header not in ("referer", "user-agent"):
                raise ConfigError(
                    f"--access-log-format: unsupported token {match.group()!r} (only %{{Referer}}i, %{{User-agent}}i)"
                )
            if f is None:
                return ""
            value = f["referer"] if header == "referer" else f["user_agent"]
            return str(value or "-")
        if letter not in "hlutrmUqHsbBDT%":
            raise ConfigError(f"--access-log-format: unknown token {match.group()!r}")
        if f is None:
            return ""
        duration = f.get("duration_ms")
        query = f.get("query") or ""
        table: dict[str, str] = {
            "h": str(f["remote_addr"]),
            "l": "-",
            "u": "-",
            "t": f"[{f.get('time_local') or time.strftime('%d/%b/%Y:%H:%M:%S %z')}]",
            "r": f"{f['method']} {f['path']}{'?' + query if query else ''} {f['protocol']}",
            "m": f["method"],
            "U": f["path"],
            "q": "?" + query if query else "",
            "H": f["protocol"],
            "s": str(f["status"]) if f["status"] is not None else "-",
            "b": str(f["bytes"]) if f["bytes"] else "-",
            "B": str(f["bytes"] or 0),
            "D": str(round(duration * 1000)) if duration is not None else "-",
            "T": str(int(duration // 1000)) if duration is not None else "-",
            "%": "%",
        }
        return table[letter]


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)


class JsonFormatter(logging.Formatter):
    """One JSON object a line (see the module docstring for the keys)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.name == ACCESS_LOGGER:
            fields = access_fields(record)
            if fields is not None:
                fields.pop("time_local", None)
                out.update(fields)
        if record.exc_info:
            out["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def _handler(stream: TextIO, formatter: logging.Formatter) -> logging.Handler:
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    return handler


def configure(
    level: str = "info",
    *,
    access_log: bool = True,
    log_format: str = "text",
    access_log_format: str = COMBINED,
    stream: TextIO | None = None,
) -> None:
    """The CLI's logging: ``trio_rack`` (error and app log) at ``level``, the access log on or
    off regardless of level, both on ``stream`` (stderr) in ``log_format``."""
    stream = stream if stream is not None else sys.stderr
    if log_format not in ("text", "json"):
        raise ConfigError(f"--log-format must be text or json, got {log_format!r}")
    access_formatter = AccessFormatter(access_log_format)  # checks the tokens even when json
    errors = logging.getLogger("trio_rack")
    text: logging.Formatter = JsonFormatter() if log_format == "json" else TextFormatter()
    errors.handlers[:] = [_handler(stream, text)]
    errors.setLevel(level.upper())
    errors.propagate = False
    access = logging.getLogger(ACCESS_LOGGER)
    access.handlers[:] = [_handler(stream, JsonFormatter() if log_format == "json" else access_formatter)]
    access.setLevel(logging.INFO)
    access.propagate = False
    access.disabled = not access_log


def load_log_config(path: str | Path) -> None:
    """``--log-config FILE``: ``dictConfig`` from ``.json`` or ``.toml``, ``fileConfig`` from ``.ini``
    (or ``.conf``/``.cfg``).  Replaces :func:`configure`; errors are one ConfigError line."""
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".json":
            logging.config.dictConfig(json.loads(path.read_text()))
        elif suffix == ".toml":
            logging.config.dictConfig(tomllib.loads(path.read_text()))
        elif suffix in (".ini", ".conf", ".cfg"):
            if not path.is_file():
                raise FileNotFoundError(2, "No such file or directory")
            logging.config.fileConfig(path, disable_existing_loggers=False)
        else:
            raise ConfigError(f"--log-config {path}: use a .json or .toml file (dictConfig) or .ini (fileConfig)")
    except OSError as exc:
        raise ConfigError(f"--log-config {path}: {exc.strerror or exc}") from None
    except (ValueError, TypeError, KeyError, AttributeError, ImportError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"--log-config {path}: {' '.join(str(exc).split())}") from None


def ensure_default_logging() -> None:
    """Library use: attach a stderr handler to ``trio_rack`` if the application configured none."""
    root = logging.getLogger()
    ours = logging.getLogger("trio_rack")
    if root.handlers or ours.handlers or logging.getLogger(ACCESS_LOGGER).handlers:
        return
    ours.addHandler(_handler(sys.stderr, _DefaultFormatter()))
    if ours.level == logging.NOTSET:
        ours.setLevel(logging.INFO)


class _DefaultFormatter(logging.Formatter):
    """Text for the error and app logs, the Combined Log Format line as is for access lines."""

    def __init__(self) -> None:
        super().__init__()
        self._text = TextFormatter()

    def format(self, record: logging.LogRecord) -> str:
        return record.getMessage() if record.name == ACCESS_LOGGER else self._text.format(record)
