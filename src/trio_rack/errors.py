"""The exceptions trio-rack raises, and who sees each.

::

    Exception
    ├── ConfigError (ValueError)      bad configuration: one ``trio-rack: error:`` line, exit 2
    ├── AppError                      the app broke the contract: 500 (or a visible abort), logged
    └── LifespanFailure               an ASGI app's lifespan startup failed: no port accepts, exit 3
    trio.BrokenResourceError
    ├── RequestBodyError              ``rack.input`` failed because of the client: ``.status`` says
    │                                 what answer is due (400 malformed, 408 stalled, 413 too large)
    └── ClientGone                    the transport broke, or stalled past the write timeout,
                                      while the server was writing a response

``RequestBodyError`` and ``ClientGone`` subclass trio's own error, so an app that catches
``trio.BrokenResourceError`` around its reads and writes keeps working; the request cycle tells
them apart to answer with the right status and to log a client's fault without a traceback.
"""

from __future__ import annotations

import trio

from .config import ConfigError

__all__ = ["AppError", "ClientGone", "ConfigError", "LifespanFailure", "RequestBodyError"]


class AppError(Exception):
    """The app broke the trio-rack contract; the message says how, naming the header or type."""


class RequestBodyError(trio.BrokenResourceError):
    """The request body cannot be read because of the client; ``status`` is the answer due."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class ClientGone(trio.BrokenResourceError):
    """The transport broke, or stalled past the write timeout, while writing a response."""


class LifespanFailure(Exception):
    """The app's ASGI lifespan startup failed: the server must not serve (exit status 3).

    Here, not in :mod:`trio_rack.asgi`, so that the command line can catch it without importing
    the ASGI machinery (a native app's worker starts faster without it).
    """
