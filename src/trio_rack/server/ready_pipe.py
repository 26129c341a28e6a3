"""The ready pipe: how a worker process tells its parent that its listeners accept.

Two parents start workers and must know when one serves: the ``-n`` supervisor
(:mod:`trio_rack.server.workers`, before it retires the old worker of a slot in a rolling
restart) and the ``--reload`` reloader (:mod:`trio_rack.cli.reload`, before it stops the old
worker).  Both use this one mechanism: the parent opens a pipe, passes the write end to the
child as ``--ready-fd N`` (an inherited descriptor, never an environment variable the app
could see or pass on), and waits on the read end; the child writes :data:`READY_MESSAGE` once
it accepts (:func:`report_ready`).  End of file first means the child exited, or failed,
before it served.

Resource handling: :func:`open_ready_pipe` returns both ends; the parent closes the write end
as soon as the child has started (:func:`child_argv` and ``pass_fds`` hand it over), and
:func:`wait_ready` closes the read end.  The child's :func:`report_ready` closes its end.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import trio

__all__ = ["FLAG", "READY_MESSAGE", "READY_TIMEOUT", "child_argv", "open_ready_pipe", "report_ready", "wait_ready"]

log = logging.getLogger("trio_rack.error")

#: The worker's command-line flag naming the write end.
FLAG = "--ready-fd"
#: What a worker writes to its ready pipe once its listeners accept.
READY_MESSAGE = b"ready\n"
#: How long a parent waits for a new worker to serve before giving up on it.
READY_TIMEOUT = 60.0


def open_ready_pipe() -> tuple[int, int]:
    """``(read_fd, write_fd)``: the write end inheritable, for the child."""
    read_fd, write_fd = os.pipe()
    os.set_inheritable(write_fd, True)
    return read_fd, write_fd


def child_argv(argv: Sequence[str], write_fd: int) -> list[str]:
    """The worker's command line with its ready pipe's write end."""
    return [*argv, FLAG, str(write_fd)]


async def wait_ready(read_fd: int) -> bool:
    """True once the child wrote :data:`READY_MESSAGE`; False if the pipe reached EOF first
    (the child exited or failed before serving).  Closes ``read_fd``.  Callers bound the wait
    with a timeout of their own."""
    data = b""
    async with trio.lowlevel.FdStream(read_fd) as stream:
        try:
            while b"\n" not in data and len(data) < 64:
                chunk = await stream.receive_some(64)
                if not chunk:
                    break
                data += chunk
        except (trio.BrokenResourceError, OSError):
            pass
    return data.startswith(READY_MESSAGE)


def report_ready(fd: int) -> None:
    """In a worker: tell the parent that we serve, then close the pipe."""
    try:
        os.write(fd, READY_MESSAGE)
    except OSError as exc:
        log.warning("could not report readiness to the parent process: %s", exc.strerror)
    finally:
        os.close(fd)
