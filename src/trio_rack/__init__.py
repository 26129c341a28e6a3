"""trio-rack: an HTTP/1.1 and HTTP/2 server on Trio with Ruby Rack's app protocol.

``await serve(app, bind=...)`` serves until cancelled; ``run(app)`` is the blocking form;
``trio-rack serve`` is the command line.  The app protocol (the "trio-rack spec") is in the
README and in :mod:`trio_rack.types`.
"""

from .builder import Builder
from .config import Bind, ConfigError, Limits, TLSConfig
from .files import FileBody
from .request import Request
from .server.serve import run, serve

__all__ = [
    "Bind",
    "Builder",
    "ConfigError",
    "FileBody",
    "Limits",
    "Request",
    "TLSConfig",
    "run",
    "serve",
    "__version__",
]

__version__ = "0.1.0"
