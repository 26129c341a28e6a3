"""Which sans-IO parser serves HTTP/1: h11, or llhttp through httptools (``--http1-parser``).

``auto`` (the default) picks httptools when it is importable (``pip install
'trio-rack[speedups]'``), else h11.  Both sit under the same strictness layer
(:mod:`.strict`) and give the same verdicts: see :mod:`.httptools_engine`.
"""

from __future__ import annotations

from typing import Any

from ..config import HTTP1_PARSERS, ConfigError
from . import httptools_engine
from ._h11_fast import new_server_connection

__all__ = ["HTTP1_PARSERS", "new_parser", "resolve_parser"]


def resolve_parser(name: str) -> str:
    """The parser ``name`` (``auto``, ``h11``, ``httptools``) stands for here; ConfigError if unusable."""
    if name not in HTTP1_PARSERS:
        raise ConfigError(f"unknown HTTP/1 parser {name!r}; one of {', '.join(HTTP1_PARSERS)}")
    if name == "auto":
        return "httptools" if httptools_engine.AVAILABLE else "h11"
    if name == "httptools" and not httptools_engine.AVAILABLE:
        raise ConfigError(
            "--http1-parser httptools needs httptools, which is not installed: "
            "pip install 'trio-rack[speedups]'"
        )
    return name


def new_parser(name: str, max_head_size: int) -> Any:
    """A fresh server-side parser of the resolved kind ``name``, with h11's API (one per connection)."""
    if name == "httptools":
        return httptools_engine.HttptoolsConnection(max_incomplete_event_size=max_head_size)
    return new_server_connection(max_head_size)
