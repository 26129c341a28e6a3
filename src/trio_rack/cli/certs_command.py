"""``trio-rack certs``: print the development certificate's paths, trust it, or export it.

Without flags it prints the CA certificate, the server certificate and its key, one path a
line, CA first (so ``"$(trio-rack certs | head -1)"`` is the CA).  ``--install`` and
``--uninstall`` edit the user's NSS databases (and with ``--system`` the system store), and
``--out DIR`` copies the three files into DIR (:mod:`trio_rack.cli.trust`); each prints one
line per thing it did.  The flags combine: ``--out certs/ --install`` does both.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import ConfigError
from ..server.certs import dev_certificate
from . import trust

__all__ = ["add_certs_flags"]

PROG = "trio-rack"


def add_certs_flags(parser: argparse.ArgumentParser) -> None:
    action = parser.add_mutually_exclusive_group()
    action.add_argument(
        "--install",
        action="store_true",
        help="trust the development CA in your NSS databases: Chromium/Chrome (~/.pki/nssdb) and "
        "every Firefox profile under ~/.mozilla/firefox (needs certutil: apt-get install libnss3-tools)",
    )
    action.add_argument("--uninstall", action="store_true", help="remove the development CA from them")
    parser.add_argument(
        "--system",
        action="store_true",
        help="with --install/--uninstall: also the system store (update-ca-certificates; as root)",
    )
    parser.add_argument(
        "--out",
        metavar="DIR",
        type=Path,
        help="copy ca.pem, localhost.pem and localhost-key.pem (mode 0600) into DIR; never a CA key",
    )
    parser.set_defaults(run=certs_command)


def certs_command(args: argparse.Namespace) -> int:
    if args.system and not (args.install or args.uninstall):
        raise ConfigError("--system goes with --install or --uninstall")
    if args.uninstall:
        for line in trust.uninstall(system=args.system):
            _say(line)
        return 0
    dev = dev_certificate()
    if args.out is not None:
        for line in trust.export(dev, args.out):
            _say(line)
    if args.install:
        for line in trust.install(dev, system=args.system):
            _say(line)
    if args.out is None and not args.install:
        print(dev.ca, dev.cert, dev.key, sep="\n", flush=True)
    return 0


def _say(line: str) -> None:
    print(f"{PROG}: {line}", flush=True)
