"""``trio-rack certs --install/--uninstall/--system/--out``: make browsers trust the dev CA.

Why: TLS is the default, and a browser shown a certificate from an unknown CA refuses the page
(or, worse, teaches the user to click through the warning).  Trusting the development CA once
fixes every later start, because :mod:`trio_rack.server.certs` reuses the same CA.

Where trust lives on Linux:

* **NSS databases**, one per user for Chromium and Chrome (``~/.pki/nssdb``, created if
  missing; the snap's ``~/snap/chromium/current/.pki/nssdb`` if present), and one per Firefox
  profile (every profile directory under ``~/.mozilla/firefox`` and the snap's
  ``~/snap/firefox/common/.mozilla/firefox`` that holds a ``cert9.db`` or ``cert8.db``).  They
  are edited with ``certutil`` from Debian's ``libnss3-tools``; without it, one clear error.
* **The system store** (``--system``, root only): the CA is copied to
  ``/usr/local/share/ca-certificates/`` and ``update-ca-certificates`` rebuilds
  ``/etc/ssl/certs``.  curl, OpenSSL and Python's ``ssl`` read that; browsers do not.

The certificate is stored under one nickname (:data:`NICKNAME`); installing first deletes
whatever an earlier CA left under it, so a re-made CA replaces the old one instead of piling up.
Only the CA *certificate* is ever copied anywhere; its private key does not exist on disk.

Every external command is run with a timeout and its failure becomes a
:class:`~trio_rack.config.ConfigError` naming the command and what it printed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..config import ConfigError
from ..server.certs import CA_FILE, CERT_FILE, KEY_FILE, DevCert, write_atomically

__all__ = ["NICKNAME", "NssDatabase", "export", "install", "nss_databases", "uninstall"]

#: The NSS nickname of the development CA (what ``certutil -L`` shows).
NICKNAME = "trio-rack development CA"
#: The file name in the system store (update-ca-certificates wants ``.crt``).
SYSTEM_FILE = "trio-rack-development-ca.crt"
SYSTEM_DIR = Path("/usr/local/share/ca-certificates")
#: Seconds any one certutil/update-ca-certificates run may take.
COMMAND_TIMEOUT = 60
_PACKAGE_HINT = "install Debian's libnss3-tools (apt-get install libnss3-tools)"


@dataclass(frozen=True)
class NssDatabase:
    """One NSS database: ``spec`` is what ``certutil -d`` takes (``sql:DIR`` or ``dbm:DIR``)."""

    spec: str
    owner: str  # who reads it, for the message: "Chromium", "Firefox profile abc.default"


def nss_databases(home: Path | None = None, *, create: bool = False) -> list[NssDatabase]:
    """The user's NSS databases; with ``create``, Chromium's ``~/.pki/nssdb`` is made if missing."""
    home = home if home is not None else Path.home()
    found: list[NssDatabase] = []
    chromium = home / ".pki" / "nssdb"
    if create and not (chromium / "cert9.db").exists():
        chromium.mkdir(mode=0o700, parents=True, exist_ok=True)
        _certutil("-N", "--empty-password", "-d", f"sql:{chromium}")
    if (chromium / "cert9.db").exists():
        found.append(NssDatabase(f"sql:{chromium}", "Chromium/Chrome"))
    snap_chromium = home / "snap" / "chromium" / "current" / ".pki" / "nssdb"
    if (snap_chromium / "cert9.db").exists():
        found.append(NssDatabase(f"sql:{snap_chromium}", "Chromium (snap)"))
    for profiles in (home / ".mozilla" / "firefox", home / "snap" / "firefox" / "common" / ".mozilla" / "firefox"):
        for profile in sorted(profiles.glob("*")) if profiles.is_dir() else []:
            if (profile / "cert9.db").exists():
                found.append(NssDatabase(f"sql:{profile}", f"Firefox profile {profile.name}"))
            elif (profile / "cert8.db").exists():
                found.append(NssDatabase(f"dbm:{profile}", f"Firefox profile {profile.name}"))
    return found


def _certutil(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    if shutil.which("certutil") is None:
        raise ConfigError(f"certutil not found: {_PACKAGE_HINT}")
    return _run(["certutil", *args], check=check)


def _run(argv: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    try:
        result = subprocess.run(
            argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired:
        raise ConfigError(f"{argv[0]} did not finish within {COMMAND_TIMEOUT} s") from None
    except OSError as exc:
        raise ConfigError(f"cannot run {argv[0]}: {exc.strerror}") from None
    if check and result.returncode != 0:
        said = " ".join((result.stderr or result.stdout).split()) or f"exit status {result.returncode}"
        raise ConfigError(f"{' '.join(argv[:2])} ... failed: {said}")
    return result


def _delete_ours(db: NssDatabase) -> int:
    """Delete every certificate stored under :data:`NICKNAME`; the number deleted."""
    deleted = 0
    while _certutil("-D", "-d", db.spec, "-n", NICKNAME, check=False).returncode == 0:
        deleted += 1
        if deleted > 100:  # certutil keeps succeeding: do not loop forever
            break
    return deleted


def install(dev: DevCert, *, system: bool = False, home: Path | None = None) -> Iterator[str]:
    """Trust ``dev.ca`` in every NSS database of the user (and the system store); yield what was done."""
    if system:
        yield from _install_system(dev.ca)
    if shutil.which("certutil") is None:
        raise ConfigError(f"certutil not found: {_PACKAGE_HINT}")
    for db in nss_databases(home, create=True):
        _delete_ours(db)
        # C,, = a trusted CA for TLS servers (not for e-mail or code signing).
        _certutil("-A", "-d", db.spec, "-t", "C,,", "-n", NICKNAME, "-i", str(dev.ca))
        yield f"trusted the development CA {dev.ca} in {db.spec} ({db.owner})"


def uninstall(*, system: bool = False, home: Path | None = None) -> Iterator[str]:
    """Remove the development CA from the user's NSS databases (and the system store)."""
    if system:
        yield from _uninstall_system()
    if shutil.which("certutil") is None:
        raise ConfigError(f"certutil not found: {_PACKAGE_HINT}")
    for db in nss_databases(home):
        if _delete_ours(db):
            yield f"removed the development CA from {db.spec} ({db.owner})"
        else:
            yield f"the development CA was not in {db.spec} ({db.owner})"


def _require_root() -> None:
    if os.geteuid() != 0:
        raise ConfigError("--system edits the system trust store: run as root (sudo trio-rack certs ...)")
    if shutil.which("update-ca-certificates") is None:
        raise ConfigError("update-ca-certificates not found: install Debian's ca-certificates package")


def _install_system(ca: Path) -> Iterator[str]:
    _require_root()
    target = SYSTEM_DIR / SYSTEM_FILE
    SYSTEM_DIR.mkdir(parents=True, exist_ok=True)
    write_atomically(target, ca.read_bytes(), mode=0o644)
    _run(["update-ca-certificates"])
    yield f"trusted the development CA in the system store ({target}; ran update-ca-certificates)"


def _uninstall_system() -> Iterator[str]:
    _require_root()
    target = SYSTEM_DIR / SYSTEM_FILE
    if not target.exists():
        yield f"the development CA was not in the system store ({target})"
        return
    target.unlink()
    _run(["update-ca-certificates", "--fresh"])
    yield f"removed the development CA from the system store ({target}; ran update-ca-certificates --fresh)"


def export(dev: DevCert, out: Path) -> Iterator[str]:
    """Copy the CA certificate, the certificate and its key (0600) into ``out``; never a CA key."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        for source, name, mode in ((dev.ca, CA_FILE, 0o644), (dev.cert, CERT_FILE, 0o644), (dev.key, KEY_FILE, 0o600)):
            write_atomically(out / name, source.read_bytes(), mode=mode)
            yield f"wrote {out / name}"
    except OSError as exc:
        raise ConfigError(f"cannot write the certificates into {str(out)!r}: {exc.strerror or exc}") from None
