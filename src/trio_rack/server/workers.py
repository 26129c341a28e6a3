"""``-n COUNT``: a supervisor process and COUNT worker processes sharing the listening sockets.

Theory of operation
-------------------
The supervisor opens every listening socket once (a port in use is one error line before any
worker exists) and starts each worker as ``python -m trio_rack serve APP -b fd://N ...
--worker`` with the sockets passed by file descriptor.  All workers accept on the same
sockets; the kernel gives each new connection to one of them.  The supervisor never accepts
and never calls the app, so a worker that crashes takes only its own connections with it.

Workers start in a session of their own, so a Ctrl-C in the terminal reaches the supervisor
only, and the supervisor decides what each worker is told:

* first SIGINT/SIGTERM: every worker gets SIGTERM (its graceful shutdown);
* second: every worker gets SIGINT, which a worker takes as its second signal (stop at once);
* third: SIGKILL, for a worker stuck beyond cancellation (e.g. in a blocking C call).

The supervisor exits 0 once every worker has exited.  A worker that exits while nobody asked
it to is logged and restarted after a backoff that doubles from 0.1 s to 5 s while workers keep
dying young, so a crash loop costs little CPU and fills the log slowly.  Exit status 2 is
the one exception: it means a configuration error (see :mod:`trio_rack.cli`), which a restart
cannot fix, so the supervisor stops everything and exits 2.

``--max-requests N`` (with ``--max-requests-jitter J``) recycles workers, for apps that leak:
each worker wraps the app in a :class:`RequestBudget` of N + a random 0..J requests (the jitter
keeps workers started together from restarting together).  When the last one starts, the
worker shuts down gracefully (its listeners close at once; requests in flight get
``--graceful-timeout``) and exits with :data:`RECYCLE_EXIT`, which the supervisor answers by
starting a fresh worker at once, logged as routine, without backoff.  New connections wait in
the shared socket's listen backlog meanwhile, so none is refused; with ``-n 1`` they wait for
the new worker to start (and the old one to finish draining), which is why ``--max-requests``
always runs under the supervisor, even with ``-n 1``.

Each worker's stdin is the read end of a pipe whose write end only the supervisor holds: the
*lifeline*.  If the supervisor dies without stopping its workers (SIGKILL, a crash), every
worker reads EOF and shuts down gracefully, so no orphan keeps serving on a port nobody owns.
"""

from __future__ import annotations

import functools
import logging
import os
import random
import signal
import socket
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import trio

from ..config import Bind
from .serve import open_sockets, remove_unix_socket_files

__all__ = ["CONFIG_ERROR_EXIT", "RECYCLE_EXIT", "RequestBudget", "supervise", "watch_lifeline"]

log = logging.getLogger("trio_rack.error")

#: The exit status of a worker that found a configuration error: restarting will not help.
CONFIG_ERROR_EXIT = 2
#: The exit status of a worker whose ASGI lifespan startup failed: restarting will not help either.
LIFESPAN_FAILURE_EXIT = 3
#: The exit status of a worker that served its ``--max-requests``: replace it, it did not crash.
#: (75 is sysexits.h's EX_TEMPFAIL, "try again": nothing else in trio-rack exits with it.)
RECYCLE_EXIT = 75
#: Restart delays: doubling from MIN to MAX while workers die within STABLE_AFTER seconds.
MIN_BACKOFF = 0.1
MAX_BACKOFF = 5.0
STABLE_AFTER = 10.0

WorkerCommand = Callable[[Sequence[Bind]], list[str]]


def supervise(
    binds: Sequence[Bind],
    *,
    count: int,
    worker_command: WorkerCommand,
    announce: Callable[[list[Bind]], None],
) -> int:
    """Open ``binds``, run ``count`` workers until a signal stops them; return the exit status.

    ``worker_command(fd_binds)`` gives the argv of one worker serving the inherited sockets;
    ``announce(bound)`` is called once the workers are started.  Raises ConfigError (before any
    worker starts) for sockets that cannot be opened.
    """
    opened = open_sockets(binds)
    lifeline_read, lifeline_write = os.pipe()
    try:
        fd_binds = [Bind(scheme=b.scheme, kind="fd", fd=s.fileno()) for b, s in opened]
        supervisor = Supervisor(
            worker_command(fd_binds),
            count=count,
            sockets=[s for _, s in opened],
            lifeline=lifeline_read,
        )
        return trio.run(supervisor.run, functools.partial(announce, [b for b, _ in opened]))
    finally:
        os.close(lifeline_read)
        os.close(lifeline_write)
        for _, sock in opened:
            sock.close()
        remove_unix_socket_files(binds)


class Supervisor:
    """Keeps ``count`` workers running until stopped; see the module docstring."""

    def __init__(self, command: list[str], *, count: int, sockets: list[socket.socket], lifeline: int) -> None:
        self.command = command
        self.count = count
        self.sockets = sockets
        self.pass_fds = tuple(s.fileno() for s in sockets)
        self._starting = 0  # worker starts in flight (they still need the sockets' fds)
        self.lifeline = lifeline
        self.procs: dict[int, trio.Process] = {}
        self.stopping = trio.Event()
        self.signals_seen = 0
        self.exit_status = 0

    async def run(self, announce: Callable[[], None]) -> int:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watch_signals, signals)
                async with trio.open_nursery() as keepers:
                    for slot in range(1, self.count + 1):
                        await keepers.start(self._keep_worker, slot)
                    log.info("supervisor (pid %d) started %d workers", os.getpid(), self.count)
                    announce()
                nursery.cancel_scope.cancel()
        log.info("all workers have exited")
        return self.exit_status

    async def _watch_signals(self, signals: AsyncIterator[int]) -> None:
        async for signum in signals:
            self.signals_seen += 1
            name = signal.Signals(signum).name
            if self.signals_seen == 1:
                log.info("%s: stopping workers gracefully (again to stop them at once)", name)
                self._stop()
            elif self.signals_seen == 2:
                log.info("%s again: telling workers to stop at once", name)
                self._signal_all(signal.SIGINT)
            else:
                log.warning("%s a third time: killing workers", name)
                self._signal_all(signal.SIGKILL)

    def _stop(self) -> None:
        self.stopping.set()
        self._signal_all(signal.SIGTERM)
        self._release_sockets()

    def _release_sockets(self) -> None:
        """Once stopping, drop our copies of the listening sockets.

        The workers close theirs at once on SIGTERM; if we kept ours, the kernel would go on
        queueing new connections that nobody accepts, and clients would hang until the last
        worker exits and then be reset.  Closing them makes new connections fail fast instead.
        Not while a worker start is in flight: its ``pass_fds`` still name these descriptors.
        """
        if self.stopping.is_set() and self._starting == 0:
            for sock in self.sockets:
                sock.close()

    def _signal_all(self, signum: int) -> None:
        for proc in list(self.procs.values()):
            proc.send_signal(signum)

    async def _keep_worker(
        self, slot: int, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        delay = MIN_BACKOFF
        while not self.stopping.is_set():
            began = trio.current_time()
            code, pid = await self._run_worker(slot, task_status)
            task_status = trio.TASK_STATUS_IGNORED
            if self.stopping.is_set():
                log.info("worker %d (pid %d) exited (%s)", slot, pid, describe_exit(code))
                return
            if code == RECYCLE_EXIT:
                log.info("worker %d (pid %d) served its --max-requests; starting a new one", slot, pid)
                continue
            if code in (CONFIG_ERROR_EXIT, LIFESPAN_FAILURE_EXIT):
                what = "a configuration error" if code == CONFIG_ERROR_EXIT else "a lifespan startup failure"
                log.error("worker %d (pid %d) hit %s; stopping", slot, pid, what)
                self.exit_status = code
                self._stop()
                return
            if trio.current_time() - began >= STABLE_AFTER:
                delay = MIN_BACKOFF
            log.warning(
                "worker %d (pid %d) died unexpectedly (%s); restarting in %.1f s",
                slot,
                pid,
                describe_exit(code),
                delay,
            )
            with trio.move_on_after(delay):
                await self.stopping.wait()
            delay = min(delay * 2, MAX_BACKOFF)
        task_status.started()  # stopped before this slot's first worker: nothing to wait for

    async def _run_worker(self, slot: int, task_status: trio.TaskStatus[None]) -> tuple[int, int]:
        """Start one worker and wait for it to exit; return (exit status, pid).

        If the supervisor itself is cancelled (an internal error), trio.run_process delivers
        SIGTERM, then SIGKILL after 5 s: no worker outlives the supervisor's nursery.
        """
        async with trio.open_nursery() as nursery:
            self._starting += 1
            try:
                proc: trio.Process = await nursery.start(
                    functools.partial(
                        trio.run_process,
                        self.command,
                        check=False,
                        stdin=self.lifeline,
                        pass_fds=self.pass_fds,
                        start_new_session=True,
                    )
                )
            finally:
                self._starting -= 1
                self._release_sockets()
            self.procs[slot] = proc
            log.info("worker %d started (pid %d)", slot, proc.pid)
            task_status.started()
            if self.stopping.is_set():  # a signal came while it was starting
                proc.send_signal(signal.SIGTERM)
        del self.procs[slot]
        assert proc.returncode is not None
        return proc.returncode, proc.pid


def describe_exit(code: int) -> str:
    """``status 3`` / ``killed by SIGKILL``, for log lines."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"status {code}"


async def watch_lifeline(shutdown: trio.Event, *, fd: int = 0) -> None:
    """In a worker: set ``shutdown`` when stdin, the supervisor's lifeline, reaches EOF.

    Reads from a duplicate of ``fd`` so closing the stream leaves fd 0 itself alone.
    """
    stream = trio.lowlevel.FdStream(os.dup(fd))
    async with stream:
        try:
            while await stream.receive_some(1024):
                pass
        except (trio.BrokenResourceError, OSError):
            pass
    if not shutdown.is_set():
        log.warning("the supervisor is gone; shutting down")
        shutdown.set()


class RequestBudget:
    """The app, wrapped to count its calls: ``exhausted`` is set when call number ``limit`` starts.

    The worker (see :mod:`trio_rack.cli`) waits on ``exhausted`` and then shuts down
    gracefully.  It is set when the last request *starts*, not when it ends, so that the
    listeners are closed while that request is still being served: the next connection then
    goes to another (or the next) worker, never to this one.  The count is of app calls, so
    every request counts once, hijacked or not.
    """

    def __init__(self, app: Any, *, max_requests: int, jitter: int = 0, rng: random.Random | None = None) -> None:
        if max_requests < 1 or jitter < 0:
            raise ValueError("max_requests must be at least 1 and jitter at least 0")
        self.app = app
        self.limit = max_requests + (rng or random.Random()).randint(0, jitter)
        self.served = 0
        self.exhausted = trio.Event()
        functools.update_wrapper(self, app, updated=())  # error messages name the app, not us

    async def __call__(self, env: dict[str, Any]) -> Any:
        self.served += 1
        if self.served == self.limit:
            self.exhausted.set()
        return await self.app(env)
