""""Did you mean" hints for the spellings of other servers (Uvicorn, Gunicorn, Hypercorn, Granian).

Pure functions of strings, used by the parser's one-line errors: a user typing ``--port 8000``
or ``-b 127.0.0.1:8000`` learns trio-rack's spelling in the same line that refuses theirs.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable

__all__ = ["bind_hint", "flag_hint", "unknown_name_hint"]

#: Other servers' flags and what trio-rack says instead.
FOREIGN_FLAGS = {
    "--port": "-b https://HOST:PORT? (host and port are one URL; http:// for plain HTTP)",
    "--host": "-b https://HOST:PORT? (host and port are one URL; http:// for plain HTTP)",
    "--workers": "-n/--count COUNT? (or WEB_CONCURRENCY)",
    "-w": "-n/--count COUNT? (or WEB_CONCURRENCY)",
    "--uds": "-b unix:PATH?",
    "--unix-socket": "-b unix:PATH?",
    "--fd": "-b fd://N?",
    "--certfile": "--cert FILE?",
    "--keyfile": "--key FILE?",
    "--ssl-certfile": "--cert FILE?",
    "--ssl-keyfile": "--key FILE?",
    "--timeout-graceful-shutdown": "--graceful-timeout SECONDS?",
    "--limit-max-requests": "--max-requests N?",
}

_HOST_PORT = re.compile(r"(?:\[[0-9a-fA-F:.]+\]|[\w.-]+):\d{1,5}")


def flag_hint(unrecognized: Iterable[str], known: Iterable[str]) -> str | None:
    """A hint for the first unrecognized argument that we can place, else None."""
    known = list(known)
    for arg in unrecognized:
        name = arg.split("=", 1)[0]
        if name in FOREIGN_FLAGS:
            return f"did you mean {FOREIGN_FLAGS[name]}"
        if name.startswith("-"):
            close = difflib.get_close_matches(name, [k for k in known if k.startswith("--")], n=1, cutoff=0.7)
            if close:
                return f"did you mean {close[0]}?"
    return None


def bind_hint(text: str) -> str | None:
    """``127.0.0.1:8000`` (Gunicorn's and Hypercorn's ``-b``) needs a scheme here."""
    if "://" not in text and not text.startswith("unix:") and _HOST_PORT.fullmatch(text):
        return f"did you mean -b https://{text} (or -b http://{text})?"
    return None


def unknown_name_hint(name: str, known: Iterable[str]) -> str:
    """`` (did you mean X?)`` for a mistyped key, or ``""``."""
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""
