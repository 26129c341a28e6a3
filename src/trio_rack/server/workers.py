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

**Rolling restart** (``kill -HUP`` the supervisor): the workers are replaced one at a time.
For each slot a new worker starts (a new process, so it imports the app afresh and serves
changed code); it reports through a pipe of its own (``--ready-fd``) once its listeners accept;
only then is the old worker of that slot sent SIGTERM (its graceful shutdown: requests in
flight finish, idle keep-alive connections close), and the next slot's replacement starts.
The listening sockets are the supervisor's and never close, so no connection is refused: a
connection arriving meanwhile is queued in the backlog and accepted by whichever worker is
accepting.  A new worker that exits before it serves (a syntax error in the changed app), or
does not serve within ``ready_pipe.READY_TIMEOUT`` (60 s), stops the restart with one error line; the old
workers (and the slots already replaced) go on serving.  The slot's keeper task follows the
handover: it waits for the old worker to exit, then watches the new one as before.

Each worker's stdin is the read end of a pipe whose write end only the supervisor holds: the
*lifeline*.  If the supervisor dies without stopping its workers (SIGKILL, a crash), every
worker reads EOF and shuts down gracefully, so no orphan keeps serving on a port nobody owns.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import random
import signal
import socket
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

import trio

from ..config import Bind
from . import ready_pipe
from .serve import BACKLOG, open_sockets, remove_unix_socket_files
from .systemd import Notifier

__all__ = [
    "CONFIG_ERROR_EXIT",
    "RECYCLE_EXIT",
    "RequestBudget",
    "supervise",
    "worker_sockets",
    "watch_lifeline",
]

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
    notifier: Notifier | None = None,
    backlog: int = BACKLOG,
) -> int:
    """Open ``binds``, run ``count`` workers until a signal stops them; return the exit status.

    ``worker_command(fd_binds)`` gives the argv of one worker serving the inherited sockets;
    ``announce(bound)`` is called once every worker serves; ``notifier`` (systemd's
    ``NOTIFY_SOCKET``) hears READY/RELOADING/STOPPING/WATCHDOG.  Raises ConfigError (before any
    worker starts) for sockets that cannot be opened.
    """
    with worker_sockets(binds, backlog=backlog) as held:
        supervisor = Supervisor(
            worker_command(held.fd_binds),
            count=count,
            sockets=held.sockets,
            lifeline=held.lifeline,
            notifier=notifier,
        )
        return trio.run(supervisor.run, functools.partial(announce, held.binds))


@dataclasses.dataclass(frozen=True)
class WorkerSockets:
    """What a parent of worker processes holds for them (:func:`worker_sockets`)."""

    #: The binds as the user gave them (for the banner) and their open listening sockets.
    binds: list[Bind]
    sockets: list[socket.socket]
    #: The same sockets as ``fd://N`` binds, for a worker's command line.
    fd_binds: list[Bind]
    #: The read end of the workers' lifeline pipe (their stdin: EOF when the parent dies).
    lifeline: int


@contextlib.contextmanager
def worker_sockets(
    binds: Sequence[Bind], *, backlog: int = BACKLOG
) -> Iterator[WorkerSockets]:
    """For a parent of worker processes (this supervisor, the ``--reload`` reloader): open
    ``binds`` once, with the workers' *lifeline* pipe.

    Resource handling: on exit the sockets and both ends of the lifeline are closed and Unix
    socket files removed; the parent's workers must have exited by then.
    """
    opened = open_sockets(binds, backlog=backlog)
    lifeline_read, lifeline_write = os.pipe()
    try:
        fd_binds = [Bind(scheme=b.scheme, kind="fd", fd=s.fileno()) for b, s in opened]
        yield WorkerSockets([b for b, _ in opened], [s for _, s in opened], fd_binds, lifeline_read)
    finally:
        os.close(lifeline_read)
        os.close(lifeline_write)
        for _, sock in opened:
            sock.close()
        remove_unix_socket_files(binds)


@dataclasses.dataclass(eq=False)
class Worker:
    """One worker process.  ``ready`` is set when it reports that it accepts (its ready pipe);
    ``exited`` when it has exited and been reaped (``proc.returncode`` is then set)."""

    slot: int
    proc: trio.Process
    started_at: float
    ready: trio.Event = dataclasses.field(default_factory=trio.Event)
    exited: trio.Event = dataclasses.field(default_factory=trio.Event)

    @property
    def pid(self) -> int:
        return int(self.proc.pid)


class Supervisor:
    """Keeps ``count`` workers running until stopped; see the module docstring.

    ``workers`` maps each slot to its current worker; ``live`` holds every worker process not
    yet exited, including an old one draining after a rolling restart replaced it and a new
    one still starting.  Every process runs in the ``run`` nursery, so none outlives it.
    """

    def __init__(
        self,
        command: list[str],
        *,
        count: int,
        sockets: list[socket.socket],
        lifeline: int,
        notifier: Notifier | None = None,
    ) -> None:
        self.command = command
        self.count = count
        self.sockets = sockets
        self.pass_fds = tuple(s.fileno() for s in sockets)
        self._starting = 0  # worker starts in flight (they still need the sockets' fds)
        self.lifeline = lifeline
        self.notifier = notifier or Notifier(None)
        self.workers: dict[int, Worker] = {}
        self.live: set[Worker] = set()
        self._changed = trio.Event()  # set (and replaced) whenever ``workers`` changes
        self._nursery: trio.Nursery | None = None
        self.stopping = trio.Event()
        self.restarting = False
        self.signals_seen = 0
        self.exit_status = 0

    async def run(self, announce: Callable[[], None]) -> int:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._watch_signals, signals)
                nursery.start_soon(self.notifier.run_watchdog)
                async with trio.open_nursery() as keepers:
                    for slot in range(1, self.count + 1):
                        await keepers.start(self._keep_worker, slot)
                    plural = "" if self.count == 1 else "s"
                    log.info("supervisor (pid %d) started %d worker%s", os.getpid(), self.count, plural)
                    if await self._all_ready():
                        announce()
                        self.notifier.ready()
                nursery.cancel_scope.cancel()
        log.info("all workers have exited")
        return self.exit_status

    async def _watch_signals(self, signals: AsyncIterator[int]) -> None:
        async for signum in signals:
            name = signal.Signals(signum).name
            if signum == signal.SIGHUP:
                self._start_rolling_restart()
                continue
            self.signals_seen += 1
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
        if not self.stopping.is_set():
            self.notifier.stopping()
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
        for worker in list(self.live):
            worker.proc.send_signal(signum)

    def _install(self, slot: int, worker: Worker) -> None:
        self.workers[slot] = worker
        self._changed.set()
        self._changed = trio.Event()

    # -- starting workers -------------------------------------------------------------------

    async def _spawn(self, slot: int) -> Worker:
        """Start one worker process (in the ``run`` nursery) with a ready pipe; return it.

        Resource handling: the pipe's write end is the child's (ours is closed here); the read
        end belongs to the :meth:`_watch_ready` task, which closes it.
        """
        assert self._nursery is not None
        read_fd, write_fd = ready_pipe.open_ready_pipe()
        self._starting += 1
        try:
            argv = ready_pipe.child_argv(self.command, write_fd)
            worker: Worker = await self._nursery.start(self._run_process, slot, argv, (*self.pass_fds, write_fd))
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
            self._starting -= 1
            self._release_sockets()
        self._nursery.start_soon(self._watch_ready, worker, read_fd)
        log.info("worker %d started (pid %d)", slot, worker.pid)
        if self.stopping.is_set():  # a signal came while it was starting
            worker.proc.send_signal(signal.SIGTERM)
        return worker

    async def _run_process(
        self, slot: int, argv: list[str], pass_fds: tuple[int, ...], *, task_status: trio.TaskStatus[Worker]
    ) -> None:
        """Run one worker until it exits.  If the supervisor itself is cancelled (an internal
        error), trio.run_process delivers SIGTERM, then SIGKILL after 5 s: no worker outlives
        the supervisor's nursery."""
        async with trio.open_nursery() as nursery:
            proc: trio.Process = await nursery.start(
                functools.partial(
                    trio.run_process,
                    argv,
                    check=False,
                    stdin=self.lifeline,
                    pass_fds=pass_fds,
                    start_new_session=True,
                )
            )
            worker = Worker(slot, proc, trio.current_time())
            self.live.add(worker)
            task_status.started(worker)
        self.live.discard(worker)
        worker.exited.set()

    async def _watch_ready(self, worker: Worker, read_fd: int) -> None:
        """Set ``worker.ready`` when the worker writes ``ready`` to its pipe (after its
        listeners accept); EOF first means it exited (or failed) before serving."""
        if await ready_pipe.wait_ready(read_fd):
            log.info("worker %d (pid %d) is serving", worker.slot, worker.pid)
            worker.ready.set()

    async def _all_ready(self) -> bool:
        """Wait until every slot's current worker serves; False if stopping first."""
        for slot in range(1, self.count + 1):
            while not self.stopping.is_set():
                worker = self.workers[slot]
                await _first(worker.ready, worker.exited, self.stopping)
                if worker.ready.is_set():
                    break
                while self.workers[slot] is worker and not self.stopping.is_set():
                    await _first(self._changed, self.stopping)  # the keeper replaces it
        return not self.stopping.is_set()

    # -- keeping workers running -------------------------------------------------------------

    async def _keep_worker(
        self, slot: int, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        delay = MIN_BACKOFF
        if self.stopping.is_set():
            task_status.started()  # stopped before this slot's first worker: nothing to wait for
            return
        worker = await self._spawn(slot)
        self._install(slot, worker)
        task_status.started()
        while True:
            worker = await self._wait_for_exit(slot, worker)
            code, pid = worker.proc.returncode, worker.pid
            assert code is not None
            if self.stopping.is_set():
                log.info("worker %d (pid %d) exited (%s)", slot, pid, describe_exit(code))
                return
            if code == RECYCLE_EXIT:
                log.info("worker %d (pid %d) served its --max-requests; starting a new one", slot, pid)
            elif code in (CONFIG_ERROR_EXIT, LIFESPAN_FAILURE_EXIT):
                what = "a configuration error" if code == CONFIG_ERROR_EXIT else "a lifespan startup failure"
                log.error("worker %d (pid %d) hit %s; stopping", slot, pid, what)
                self.exit_status = code
                self._stop()
                return
            else:
                if trio.current_time() - worker.started_at >= STABLE_AFTER:
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
            if self.stopping.is_set():
                return
            if self.workers[slot] is not worker:  # a rolling restart replaced it meanwhile
                worker = self.workers[slot]
                continue
            worker = await self._spawn(slot)
            self._install(slot, worker)

    async def _wait_for_exit(self, slot: int, worker: Worker) -> Worker:
        """Wait until the slot's current worker exits, following rolling-restart handovers."""
        while True:
            await worker.exited.wait()
            current = self.workers[slot]
            if current is worker:
                return worker
            assert worker.proc.returncode is not None
            log.info(
                "worker %d (pid %d) exited (%s), replaced by pid %d",
                slot,
                worker.pid,
                describe_exit(worker.proc.returncode),
                current.pid,
            )
            worker = current

    # -- rolling restart (SIGHUP) ------------------------------------------------------------

    def _start_rolling_restart(self) -> None:
        if self.stopping.is_set():
            log.info("SIGHUP: ignored, the server is stopping")
        elif self.restarting:
            log.info("SIGHUP: ignored, a rolling restart is in progress")
        elif len(self.workers) < self.count:
            log.info("SIGHUP: ignored, the workers are still starting")
        else:
            assert self._nursery is not None
            self.restarting = True
            self._nursery.start_soon(self._rolling_restart)

    async def _rolling_restart(self) -> None:
        """Replace the workers one at a time: start a new one (which imports the app afresh),
        wait until it serves, then stop the old one gracefully.  The listening sockets stay
        open throughout, so no connection is refused.  A new worker that exits (or does not
        serve within READY_TIMEOUT) before serving stops the restart; the old ones go on."""
        self.notifier.reloading()
        log.info("SIGHUP: rolling restart of %d worker(s), one at a time", self.count)
        status = "rolling restart done"
        try:
            for slot in range(1, self.count + 1):
                old = self.workers[slot]
                new = await self._spawn(slot)
                with trio.move_on_after(ready_pipe.READY_TIMEOUT):
                    await _first(new.ready, new.exited, self.stopping)
                if self.stopping.is_set():
                    new.proc.send_signal(signal.SIGTERM)
                    status = "rolling restart abandoned: the server is stopping"
                    return
                if not new.ready.is_set():
                    if new.exited.is_set():
                        assert new.proc.returncode is not None
                        why = f"exited ({describe_exit(new.proc.returncode)})"
                    else:
                        why = f"did not serve within {ready_pipe.READY_TIMEOUT:.0f} s"
                        new.proc.kill()
                    status = (
                        f"rolling restart stopped: the new worker {slot} (pid {new.pid}) {why} before serving; "
                        f"the old workers keep serving (replaced {slot - 1} of {self.count})"
                    )
                    log.error("%s", status)
                    return
                self._install(slot, new)
                log.info("worker %d: pid %d serves; stopping the old pid %d gracefully", slot, new.pid, old.pid)
                if not old.exited.is_set():
                    old.proc.send_signal(signal.SIGTERM)
            log.info("rolling restart done: %d new worker(s)", self.count)
        finally:
            self.restarting = False
            if not self.stopping.is_set():
                self.notifier.ready(status=status)


async def _first(*events: trio.Event) -> None:
    """Return as soon as any of ``events`` is set."""
    if any(e.is_set() for e in events):
        return
    async with trio.open_nursery() as nursery:

        async def wait(event: trio.Event) -> None:
            await event.wait()
            nursery.cancel_scope.cancel()

        for event in events:
            nursery.start_soon(wait, event)


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
