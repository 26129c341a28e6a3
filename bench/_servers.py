"""The servers under test and how to start each: trio-rack, the bare-Trio ceiling, the peers.

Every server serves the same endpoints (:mod:`rack_app` for trio-rack, :mod:`bare_trio`'s
fixed responses, :mod:`asgi_app` for the peers) on ``127.0.0.1:PORT``, without an access log,
logging warnings only.  Limits that would cap the 10,000-stream scenario are raised to the
same value everywhere (trio-rack's ``--max-connections``, Granian's ``--backpressure``) and
every listen backlog is 2048 (trio-rack's own).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = ["BENCH", "SPECS", "TRIO_RACK_ARGS", "ServerSpec", "TLSFiles", "trio_rack_args"]

BENCH = Path(__file__).resolve().parent
#: Connection caps raised for the streams scenario (10,000 streams plus headroom).
MAX_CONNECTIONS = 30_000
BACKLOG = 2048
#: Extra arguments of every default trio-rack row: ``bench/run`` sets ``--http1-parser h11`` when
#: the trio-rack under test has that flag, so that "trio-rack" is the default install's parser
#: (h11) even where httptools is installed and ``auto`` would pick it; the httptools row is
#: ``trio-rack-httptools``.  Read it through :func:`trio_rack_args` (it is set after import).
TRIO_RACK_ARGS: list[str] = []


def trio_rack_args() -> list[str]:
    return list(TRIO_RACK_ARGS)


@dataclass(frozen=True)
class TLSFiles:
    ca: Path
    cert: Path
    key: Path  # PKCS#8: Granian accepts nothing else, and the others all read it


@dataclass(frozen=True)
class ServerSpec:
    name: str
    label: str
    #: a peer: runs from the peers' virtualenv (``None``: this interpreter)
    venv_tool: str | None
    #: scenarios it cannot serve (the bare loop has no request-body parsing) or that are left
    #: out for time (the httptools row's streams: the parser is not what a stream costs)
    unsupported: frozenset[str] = frozenset()

    def argv(
        self, port: int, *, venv: Path, tls: TLSFiles | None = None, workers: int = 1
    ) -> list[str]:
        bin_ = venv / "bin"
        host = "127.0.0.1"
        if self.name in ("trio-rack", "trio-rack-httptools"):
            scheme = "https" if tls else "http"
            argv = [
                sys.executable,
                "-m",
                "trio_rack",
                "serve",
                str(BENCH / "rack_app.py"),
                "-b",
                f"{scheme}://{host}:{port}",
            ]
            argv += [
                "--no-access-log",
                "--log-level",
                "warning",
                "--max-connections",
                str(MAX_CONNECTIONS),
            ]
            argv += ["-n", str(workers)]
            if tls:
                argv += ["--cert", str(tls.cert), "--key", str(tls.key)]
            if self.name == "trio-rack-httptools":
                argv += ["--http1-parser", "httptools"]
            else:
                argv += trio_rack_args()
            return argv
        if self.name == "bare-trio":
            assert workers == 1
            argv = [sys.executable, str(BENCH / "bare_trio.py"), "--port", str(port)]
            if tls:
                argv += ["--cert", str(tls.cert), "--key", str(tls.key)]
            return argv
        if self.name == "hypercorn-trio":
            argv = [
                str(bin_ / "hypercorn"),
                "-k",
                "trio",
                "-b",
                f"{host}:{port}",
                "--backlog",
                str(BACKLOG),
            ]
            argv += ["-w", str(workers), "--log-level", "warning"]
            if tls:
                argv += ["--certfile", str(tls.cert), "--keyfile", str(tls.key)]
            return argv + ["asgi_app:app"]
        if self.name.startswith("uvicorn"):
            http, loop = (
                ("h11", "asyncio")
                if self.name == "uvicorn-h11"
                else ("httptools", "uvloop")
            )
            argv = [
                str(bin_ / "uvicorn"),
                "asgi_app:app",
                "--app-dir",
                str(BENCH),
                "--host",
                host,
                "--port",
                str(port),
            ]
            argv += [
                "--http",
                http,
                "--loop",
                loop,
                "--no-access-log",
                "--log-level",
                "warning",
            ]
            argv += ["--backlog", str(BACKLOG), "--workers", str(workers)]
            if tls:
                argv += ["--ssl-certfile", str(tls.cert), "--ssl-keyfile", str(tls.key)]
            return argv
        if self.name == "granian":
            argv = [
                str(bin_ / "granian"),
                "--interface",
                "asgi",
                "--host",
                host,
                "--port",
                str(port),
            ]
            argv += [
                "--workers",
                str(workers),
                "--backlog",
                str(BACKLOG),
                "--backpressure",
                str(MAX_CONNECTIONS),
            ]
            argv += ["--no-ws", "--log-level", "warning", "--working-dir", str(BENCH)]
            if tls:
                argv += [
                    "--ssl-certificate",
                    str(tls.cert),
                    "--ssl-keyfile",
                    str(tls.key),
                ]
            return argv + ["asgi_app:app"]
        raise ValueError(self.name)


SPECS = {
    spec.name: spec
    for spec in [
        ServerSpec("trio-rack", "trio-rack", None),
        # the optional fast HTTP/1 parser (``[speedups]`` extra); bench/run skips it with a note
        # when the CLI has no ``--http1-parser`` or httptools is not importable
        ServerSpec("trio-rack-httptools", "trio-rack, httptools parser", None, frozenset({"streams"})),
        ServerSpec("hypercorn-trio", "Hypercorn, trio worker", "hypercorn"),
        ServerSpec("uvicorn-h11", "Uvicorn, h11 + asyncio", "uvicorn"),
        ServerSpec("uvicorn-httptools", "Uvicorn, httptools + uvloop", "uvicorn"),
        ServerSpec("granian", "Granian (Rust)", "granian"),
        ServerSpec(
            "bare-trio", "bare Trio loop (ceiling)", None, frozenset({"upload"})
        ),
    ]
}
