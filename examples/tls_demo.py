"""TLS by default: a self-contained script that serves https and prints how to ``curl`` it.

Like Falcon, trio-rack speaks https unless told otherwise.  With no certificate given it uses
the local development CA and certificate (made once with trustme, kept in a per-user
directory; ``trio-rack certs`` prints their paths), valid for ``localhost``, ``127.0.0.1`` and
``::1``.  ``--cert FILE --key FILE`` serve a real certificate instead.

The script binds the https URL and, beside it, answers plain ``http://`` sent to the same port
with a ``400`` that names the https URL to use — try it to see the hint instead of an opaque
TLS error.  The app reports ``env["rack.url_scheme"]``.

Which certificate: ``--cert/--key`` if given; else ``certs/localhost.pem`` and
``certs/localhost-key.pem`` from the repository's ``certs/`` folder (``--certs DIR`` for
another folder) when they are there — ``trio-rack certs --out certs/`` puts them there, see
``certs/README.md``; else the development certificate itself.

Run it, then paste the ``curl`` line it prints; Ctrl-C stops it::

    trio-rack certs --out certs/                      # once: certs/ca.pem, localhost.pem, -key.pem
    python examples/tls_demo.py                       # https://localhost:9292 with certs/localhost.pem
    python examples/tls_demo.py -b https://127.0.0.1:8443 --cert cert.pem --key key.pem

``app`` is importable too: ``trio-rack serve examples/tls_demo.py`` serves it the same way.
"""

from __future__ import annotations

import argparse
import functools
import shlex
import signal
import sys
from pathlib import Path
from typing import Any

import trio

import trio_rack
from trio_rack.config import ConfigError

#: The repository's certs/ folder (certs/README.md), where ``trio-rack certs --out certs/`` writes.
CERTS = Path(__file__).resolve().parent.parent / "certs"


async def app(env: dict[str, Any]) -> Any:
    text = (
        f"Hello over {env['rack.url_scheme']}!\n"
        f"You asked {env['SERVER_NAME']}:{env['SERVER_PORT']} for {env['PATH_INFO']}.\n"
    )
    return 200, {"content-type": "text/plain; charset=utf-8"}, [text.encode()]


def from_folder(folder: Path) -> tuple[str, str, str | None] | None:
    """(cert, key, ca) from ``folder`` if it holds ``localhost.pem`` and ``localhost-key.pem``."""
    cert, key, ca = folder / "localhost.pem", folder / "localhost-key.pem", folder / "ca.pem"
    if cert.is_file() and key.is_file():
        return str(cert), str(key), str(ca) if ca.is_file() else None
    return None


async def main(bind: str, cert: str | None, key: str | None, folder: Path = CERTS) -> None:
    """Serve until SIGINT/SIGTERM, then shut down gracefully (what ``trio_rack.run`` does),
    printing the URLs once they are bound."""
    ca: str | None = None
    if cert is None and (found := from_folder(folder)) is not None:
        cert, key, ca = found
        print(f"certificate: {cert} (from {folder})")
    if cert is None:
        from trio_rack.server.certs import dev_certificate

        dev = await trio.to_thread.run_sync(dev_certificate)
        cert, key, ca = str(dev.cert), str(dev.key), str(dev.ca)
    shutdown = trio.Event()
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            serve = functools.partial(trio_rack.serve, app, bind=bind, cert=cert, key=key, shutdown_trigger=shutdown)
            binds = await nursery.start(serve)
            for b in binds:
                print(f"serving {b}")
            url = f"https://localhost:{binds[0].port}/"
            trust = f"--cacert {shlex.quote(ca)}" if ca else "--cacert YOUR-CA.pem"
            print("try:")
            print(f"  curl {trust} {url}")
            plain = url.replace("https://", "http://", 1)
            print(f"  curl {plain}    # plain http to the TLS port: a 400 naming the https URL")
            print("Ctrl-C to stop", flush=True)
            async for _ in signals:
                print("shutting down", flush=True)
                shutdown.set()  # serve() closes its listeners, lets requests finish, returns
                break


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve a hello app over https with trio-rack.")
    parser.add_argument("-b", "--bind", default="https://localhost:9292", help="https URL to listen on")
    parser.add_argument("--cert", help="certificate chain (PEM); default: the development certificate")
    parser.add_argument("--key", help="private key (PEM) for --cert")
    parser.add_argument(
        "--certs", type=Path, default=CERTS, help=f"folder with localhost.pem/localhost-key.pem (default: {CERTS})"
    )
    args = parser.parse_args(argv)
    if (args.cert is None) != (args.key is None):
        parser.error("--cert and --key go together")
    if not args.bind.startswith("https://"):
        parser.error("this demo is about TLS: give an https:// URL")
    errors: list[ConfigError] = []
    try:
        trio.run(main, args.bind, args.cert, args.key, args.certs)
    except* ConfigError as group:  # a bad path, a port in use: one line, no traceback
        errors.extend(e for e in group.exceptions if isinstance(e, ConfigError))
    for exc in errors:
        print(f"tls_demo: error: {exc}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(cli())
