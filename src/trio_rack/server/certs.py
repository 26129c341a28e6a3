"""The local development certificate: what ``https://localhost:9292`` serves when no
``--cert``/``--key`` is given (Falcon's https default, done the trustme way).

Theory of operation
-------------------

The first time it is needed, :func:`dev_certificate` makes a local certificate authority and,
signed by it, one server certificate for ``localhost``, ``127.0.0.1`` and ``::1``.  It stores
three files in a per-user state directory (see :func:`state_dir`)::

    ca.pem                 the CA certificate: what a client trusts (``curl --cacert``)
    localhost.pem          the server certificate chain
    localhost-key.pem      its private key (mode 0600)

Every later call, in any process, returns the same files, so a client (or a browser, or the
system trust store) that trusted the CA once keeps working across restarts.

The CA's private key is *not* stored.  It is needed only to issue a certificate, and we issue
exactly one, right after the CA is made; keeping the key would let anyone who can read the
directory mint certificates that every client trusting ``ca.pem`` accepts, for any host.
The cost: the server certificate can never be re-issued under the same CA.  It never needs to
be (trustme certificates are valid until the year 3000); if a file goes missing or stops
loading, a new CA and certificate are made and the client has to trust the new ``ca.pem``.

Concurrency and crashes: several processes may start at once (``-n`` workers, two terminals),
so creation happens under an exclusive ``fcntl.flock`` on ``.lock`` in the directory; whoever
gets the lock second finds the files and reuses them.  Each file is written to a temporary file
and moved into place with ``os.replace``, so no reader ever sees a half-written file, and a
crash mid-way leaves either the old set or an incomplete one that the next start replaces.
The directory is created mode 0700; the key file is 0600 from the moment it exists.

Every step is blocking (file locks, key generation): from async code call it through
``trio.to_thread.run_sync``, as ``serve()`` does.  A directory that cannot be created or
written raises :class:`~trio_rack.config.ConfigError` with one line naming it.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import ssl
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import trustme

from ..config import ConfigError

__all__ = ["DevCert", "dev_certificate", "state_dir", "write_atomically"]

log = logging.getLogger("trio_rack.error")

#: The names the development certificate is valid for: what "localhost" may resolve to.
IDENTITIES = ("localhost", "127.0.0.1", "::1")
CA_FILE = "ca.pem"
CERT_FILE = "localhost.pem"
KEY_FILE = "localhost-key.pem"
LOCK_FILE = ".lock"


@dataclass(frozen=True)
class DevCert:
    """Paths of the development CA certificate, server certificate chain and private key."""

    ca: Path
    cert: Path
    key: Path


def state_dir() -> Path:
    """Where the files live: ``$TRIO_RACK_STATE_DIR``, else ``$XDG_STATE_HOME/trio-rack``,
    else ``~/.local/state/trio-rack`` (the XDG base directory spec's default)."""
    explicit = os.environ.get("TRIO_RACK_STATE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_STATE_HOME")
    if xdg and Path(xdg).is_absolute():  # the XDG spec says to ignore relative values
        return Path(xdg) / "trio-rack"
    try:
        home = Path.home()
    except RuntimeError:
        raise ConfigError(
            "cannot find a home directory for the development certificate; set TRIO_RACK_STATE_DIR"
        ) from None
    return home / ".local" / "state" / "trio-rack"


def dev_certificate(*, directory: Path | None = None) -> DevCert:
    """Return the development certificate's paths, creating the files the first time.

    ``directory`` overrides :func:`state_dir` (tests).  Blocking; raises ConfigError.
    """
    directory = directory if directory is not None else state_dir()
    paths = DevCert(ca=directory / CA_FILE, cert=directory / CERT_FILE, key=directory / KEY_FILE)
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        with _locked(directory / LOCK_FILE):
            if not _usable(paths):
                _create(paths)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError(
            f"cannot create the development certificate in {str(directory)!r}: {reason}"
        ) from None
    return paths


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on ``path`` (released on close, even if the process dies)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _usable(paths: DevCert) -> bool:
    """True if all three files exist and load as a CA and a matching certificate and key."""
    if not all(p.is_file() for p in (paths.ca, paths.cert, paths.key)):
        if any(p.exists() for p in (paths.ca, paths.cert, paths.key)):
            log.warning("development certificate in %s is incomplete; making a new CA", paths.ca.parent)
        return False
    try:
        ssl.create_default_context(cafile=str(paths.ca))
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(str(paths.cert), str(paths.key))
    except (ssl.SSLError, ValueError) as exc:
        log.warning("development certificate in %s does not load (%s); making a new CA", paths.ca.parent, exc)
        return False
    return True


def _create(paths: DevCert) -> None:
    ca = trustme.CA(organization_name="trio-rack", organization_unit_name="trio-rack development CA")
    leaf = ca.issue_cert(*IDENTITIES, common_name="localhost", organization_name="trio-rack")
    # The key first and the CA last: a set is complete only once ca.pem is in place.
    write_atomically(paths.key, leaf.private_key_pem.bytes(), mode=0o600)
    write_atomically(paths.cert, b"".join(blob.bytes() for blob in leaf.cert_chain_pems), mode=0o644)
    write_atomically(paths.ca, ca.cert_pem.bytes(), mode=0o644)
    log.info("created a development CA and certificate in %s", paths.ca.parent)


def write_atomically(path: Path, data: bytes, *, mode: int) -> None:
    """Write ``data`` to a temporary file beside ``path`` (created 0600), then rename it over."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
