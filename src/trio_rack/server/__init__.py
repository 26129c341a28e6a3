"""The server: listeners, ``serve()``/``run()``, liveness, workers, systemd, the dev CA."""

from .serve import run, serve

__all__ = ["run", "serve"]
