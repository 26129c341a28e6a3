"""systemd socket activation: adopt the listening sockets systemd passes (``sd_listen_fds(3)``).

The protocol: systemd opens the sockets of a ``.socket`` unit itself, then starts the service
with them as file descriptors 3, 4, … (``SD_LISTEN_FDS_START``) and three variables in its
environment: ``LISTEN_FDS`` (how many), ``LISTEN_PID`` (the PID they are meant for) and,
optionally, ``LISTEN_FDNAMES``.  The PID check matters: a process that inherited the variables
from its parent must not take the parent's sockets for its own.

trio-rack's choices:

* ``trio-rack serve`` with **no** ``-b`` adopts the sockets when it was activated, and binds
  the default address otherwise; ``-b systemd`` says so explicitly (and is an error when there
  are no sockets to adopt), and may be combined with other ``-b`` values.  This mirrors
  gunicorn, which also uses activated sockets in place of its default bind.
* The variables are removed from the environment first thing, whether or not they were meant
  for this process (``sd_listen_fds(unset_environment=1)`` does the same), so neither the
  workers nor anything the app starts sees them; the sockets get ``FD_CLOEXEC`` as
  ``sd_listen_fds`` gives them.  Workers receive the sockets as ``fd://N`` binds instead.
* Activated sockets serve plain HTTP (TLS is usually terminated in front of them); for TLS
  on an activated socket, name it: ``-b 'fd://3?scheme=https'``.
* Every fd must be a *listening* stream socket: a unit with ``Accept=yes`` (one service
  instance per connection, inetd style) is refused with a message saying so.

Nothing here imports trio.
"""

from __future__ import annotations

import os
import socket
from collections.abc import MutableMapping

from ..config import Bind, ConfigError

__all__ = ["SD_LISTEN_FDS_START", "SYSTEMD_BIND", "listen_binds", "listen_fds"]

#: The first passed file descriptor (after stdin, stdout, stderr).
SD_LISTEN_FDS_START = 3
#: The ``-b`` value that asks for the activated sockets explicitly.
SYSTEMD_BIND = "systemd"
_VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


def listen_fds(environ: MutableMapping[str, str] | None = None, *, pid: int | None = None) -> list[int]:
    """The file descriptors systemd passed to this process (``[]`` if none); unsets the variables.

    ``environ`` defaults to ``os.environ`` and ``pid`` to ``os.getpid()`` (both are parameters
    for tests).  Malformed variables count as "not activated".
    """
    env = os.environ if environ is None else environ
    values = {name: env.pop(name, None) for name in _VARIABLES}
    try:
        meant_for_us = int(values["LISTEN_PID"] or "") == (os.getpid() if pid is None else pid)
        count = int(values["LISTEN_FDS"] or "")
    except ValueError:
        return []
    if not meant_for_us or count <= 0:
        return []
    fds = list(range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + count))
    for fd in fds:
        try:
            os.set_inheritable(fd, False)
        except OSError:
            pass  # not open: listen_binds says so, naming the fd
    return fds


def listen_binds(fds: list[int]) -> list[Bind]:
    """``fd://N`` binds for activated sockets, after checking each is a listening stream socket.

    Raises :class:`ConfigError` naming the first fd that is not.
    """
    binds = []
    for fd in fds:
        try:
            sock = socket.socket(fileno=fd)
        except OSError as exc:
            raise ConfigError(f"systemd passed fd {fd}, which is not an open socket: {exc.strerror}") from None
        try:
            listening = sock.type == socket.SOCK_STREAM and sock.getsockopt(
                socket.SOL_SOCKET, socket.SO_ACCEPTCONN
            )
        finally:
            sock.detach()  # the fd stays open: serve() adopts it
        if not listening:
            raise ConfigError(
                f"systemd passed fd {fd}, which is not a listening stream socket "
                "(the .socket unit needs ListenStream= and Accept=no)"
            )
        binds.append(Bind(scheme="http", kind="fd", fd=fd))
    return binds
