"""systemd: socket activation (``sd_listen_fds(3)``) and readiness notification (``sd_notify(3)``).

Socket activation
-----------------

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

Readiness (``sd_notify``)
-------------------------
When systemd starts a ``Type=notify`` (or ``notify-reload``) service it sets ``NOTIFY_SOCKET``,
a Unix datagram socket (a path, or ``@name`` in the abstract namespace), and with
``WatchdogSec=`` also ``WATCHDOG_USEC`` (and ``WATCHDOG_PID``).  :class:`Notifier` speaks
the protocol, as the *main* process only (systemd's default ``NotifyAccess=main`` ignores
everyone else): the supervisor under ``-n``, the one process otherwise.  It sends

* ``READY=1`` once every listener accepts (under ``-n``: once every worker said it serves);
* ``RELOADING=1`` with ``MONOTONIC_USEC=`` when a SIGHUP rolling restart begins, and
  ``READY=1`` again when it ends, done or stopped (``Type=notify-reload``'s protocol);
* ``STOPPING=1`` when a graceful shutdown begins;
* ``WATCHDOG=1`` every half ``WATCHDOG_USEC``, from a task on the event loop, so that a loop
  that hangs stops the pings and systemd restarts the service.

The variables are removed from the environment at start (as ``sd_notify(unset_environment=1)``
does), so workers and the app's children do not notify in our name.  Sending never blocks and
never raises: a datagram the socket cannot take is dropped (logged at debug).

Only :meth:`Notifier.run_watchdog` and :meth:`Notifier.run` use trio.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import MutableMapping

import trio

from ..config import Bind, ConfigError

__all__ = ["SD_LISTEN_FDS_START", "SYSTEMD_BIND", "Notifier", "listen_binds", "listen_fds"]

log = logging.getLogger("trio_rack.error")

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


class Notifier:
    """``sd_notify`` for the main process; a no-op when ``address`` is None (not under systemd).

    ``address`` is ``NOTIFY_SOCKET``'s value; ``watchdog_interval`` (seconds) how often to send
    ``WATCHDOG=1`` (half of ``WATCHDOG_USEC``), None for no watchdog.
    """

    def __init__(self, address: str | None, *, watchdog_interval: float | None = None) -> None:
        self.address = address
        self.watchdog_interval = watchdog_interval if address else None

    @classmethod
    def from_environ(cls, environ: MutableMapping[str, str] | None = None, *, pid: int | None = None) -> Notifier:
        """The notifier ``NOTIFY_SOCKET``/``WATCHDOG_USEC``/``WATCHDOG_PID`` describe; unsets them."""
        env = os.environ if environ is None else environ
        address = env.pop("NOTIFY_SOCKET", None) or None
        usec, watchdog_pid = env.pop("WATCHDOG_USEC", None), env.pop("WATCHDOG_PID", None)
        interval = None
        try:
            mine = watchdog_pid is None or int(watchdog_pid) == (os.getpid() if pid is None else pid)
            if usec is not None and mine and int(usec) > 0:
                interval = int(usec) / 2 / 1_000_000
        except ValueError:
            log.warning("ignoring malformed WATCHDOG_USEC=%r / WATCHDOG_PID=%r", usec, watchdog_pid)
        if address is not None and not (address.startswith(("/", "@"))):
            log.warning("NOTIFY_SOCKET=%r: only Unix socket paths and @abstract names are supported", address)
            address = None
        return cls(address, watchdog_interval=interval)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *assignments: str) -> None:
        """Send one datagram of ``NAME=value`` lines; never blocks, never raises."""
        if self.address is None:
            return
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        message = ("\n".join(assignments) + "\n").encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.setblocking(False)
                sock.sendto(message, target)
        except OSError as exc:
            log.debug("sd_notify %r to %s failed: %s", assignments, self.address, exc)

    def ready(self, *, status: str | None = None) -> None:
        self.notify("READY=1", *([f"STATUS={_one_line(status)}"] if status else []))

    def reloading(self) -> None:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=rolling restart")

    def stopping(self) -> None:
        self.notify("STOPPING=1", "STATUS=shutting down")

    async def run_watchdog(self) -> None:
        """Send ``WATCHDOG=1`` every ``watchdog_interval`` until cancelled (forever idle without one)."""
        if self.watchdog_interval is None:
            await trio.sleep_forever()
        assert self.watchdog_interval is not None
        while True:
            self.notify("WATCHDOG=1")
            await trio.sleep(self.watchdog_interval)

    async def run(self, shutdown: trio.Event) -> None:
        """For a single process already serving: ``READY=1`` now, the watchdog until cancelled,
        and ``STOPPING=1`` once ``shutdown`` is set."""
        self.ready()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.run_watchdog)
            await shutdown.wait()
            self.stopping()


def _one_line(text: str) -> str:
    return " ".join(text.split())[:500]
