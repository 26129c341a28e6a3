"""``env["rack.errors"]``: a text sink whose lines go to the server's error log.

Rack's ``rack.errors`` is an IO with ``puts``/``write``/``flush``; here it is a minimal text
stream: ``write(str)`` buffers until a newline, each complete line becomes one log record on
the ``trio_rack.app`` logger, and ``flush()`` emits a partial line.  The level is INFO: what an
app writes there is its own log (Rack servers print it as is), not a warning of the server's.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

__all__ = ["ErrorsSink"]

app_log = logging.getLogger("trio_rack.app")


class ErrorsSink:
    """One a request.  No ``__init__``: ``_pending`` (the partial line) is set at the first
    write, so making one is a bare object's allocation (every request gets one, few write to
    it: its Python ``__init__`` was some 600 instructions of a hello request)."""

    __slots__ = ("_pending",)

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"rack.errors takes str, not {type(text).__name__}")
        lines = (getattr(self, "_pending", "") + text).split("\n")
        self._pending = lines.pop()
        for line in lines:
            app_log.info("%s", line)
        return len(text)

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def puts(self, text: str) -> None:
        """Rack's spelling: write one line."""
        self.write(text if text.endswith("\n") else text + "\n")

    def flush(self) -> None:
        if getattr(self, "_pending", ""):
            app_log.info("%s", self._pending)
            self._pending = ""
