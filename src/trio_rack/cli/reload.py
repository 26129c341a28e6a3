"""``trio-rack serve --reload``: restart the worker when a watched file changes (development).

Theory of operation
-------------------

The process the user started (the *reloader*) opens the listening sockets once and never
serves: it runs one worker at a time (``python -m trio_rack serve ... --worker`` on the
inherited sockets, as :mod:`trio_rack.server.workers` does) and watches files with
`watchfiles <https://watchfiles.helpmanual.io>`_.  When a file changes:

1. a **new** worker is started beside the old one, on the same sockets;
2. it imports the app and starts accepting, then reports through its *ready pipe*
   (``--ready-fd``, :mod:`trio_rack.server.ready_pipe`, as ``-n`` workers do); only then
3. the **old** worker gets SIGTERM and shuts down gracefully (requests in flight finish).

Because the sockets stay open in the reloader and some worker is accepting at every moment,
no connection is refused during a reload: at worst it waits in the listen backlog for a few
milliseconds.  If the new worker fails instead — a typo: it exits with the usual one
``trio-rack: error: importing app ... (FILE, line N)`` line on stderr before it is ready —
the old worker **keeps serving** and the reloader says so; the next change tries again.

Watched: ``--reload-dir DIR`` (repeatable; default the app's directory), files whose name
matches a ``--reload-include`` glob (default ``*.py``) and no ``--reload-exclude`` glob;
watchfiles' default filter drops ``__pycache__``, ``.git``, editor swap files and the like.
``--reload`` runs exactly one worker: with ``-n`` above 1 or ``--max-requests`` it is one
error line.

Resource handling: the reloader owns the sockets and every worker process (each in a task of
its nursery; on exit they get SIGTERM, and trio's ``run_process`` kills what lingers when
cancelled).  Workers watch their stdin, a pipe from the reloader, and exit if it dies.
"""

from __future__ import annotations

import argparse
import fnmatch
import functools
import logging
import os
import signal
import socket
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import trio

from ..config import Bind, ConfigError
from ..server import ready_pipe
from ..server.workers import describe_exit, worker_sockets

__all__ = ["add_reload_flags", "check_reload_args", "run_reloading"]

log = logging.getLogger("trio_rack.error")

DEFAULT_INCLUDE = ("*.py",)
#: watchfiles batches changes for this long (ms): an editor's save is often several writes.
DEBOUNCE_MS = 300


def add_reload_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("development")
    group.add_argument(
        "--reload",
        action="store_true",
        help="restart the worker when a watched file changes; the old one serves until the new one "
        "has imported the app (one worker; needs watchfiles)",
    )
    group.add_argument(
        "--reload-dir", action="append", metavar="DIR", help="watch DIR; repeatable (default: the app's directory)"
    )
    group.add_argument(
        "--reload-include", action="append", metavar="GLOB",
        help="watch files matching GLOB, repeatable (default: *.py)"
    )
    group.add_argument(
        "--reload-exclude", action="append", metavar="GLOB", help="ignore files matching GLOB; repeatable"
    )


def check_reload_args(args: argparse.Namespace) -> None:
    if args.count > 1:
        raise ConfigError("--reload runs one worker: it cannot be combined with -n/--count above 1")
    if args.max_requests:
        raise ConfigError("--reload cannot be combined with --max-requests")
    for directory in args.reload_dir or []:
        if not Path(directory).is_dir():
            raise ConfigError(f"--reload-dir {directory}: not a directory")


def watched_dirs(args: argparse.Namespace) -> list[Path]:
    if args.reload_dir:
        return [Path(d).absolute() for d in args.reload_dir]
    target = str(args.app).rpartition(":")[0] or str(args.app)
    if target.endswith(".py") or "/" in target:
        return [Path(target).absolute().parent]
    return [Path.cwd()]


class GlobFilter:
    """watchfiles' default filter, then ``include`` and ``exclude`` globs on the file name
    (a glob with a ``/`` is matched against the whole path instead)."""

    def __init__(self, include: Sequence[str], exclude: Sequence[str]) -> None:
        import watchfiles

        self._default = watchfiles.DefaultFilter()
        self.include = tuple(include)
        self.exclude = tuple(exclude)

    def _matches(self, path: str, globs: Sequence[str]) -> bool:
        name = os.path.basename(path)
        return any(fnmatch.fnmatch(path if "/" in glob else name, glob) for glob in globs)

    def __call__(self, change: Any, path: str) -> bool:
        if not self._default(change, path):
            return False
        return self._matches(path, self.include) and not self._matches(path, self.exclude)


def run_reloading(
    args: argparse.Namespace,
    binds: Sequence[Bind],
    *,
    worker_command: Callable[[Sequence[Bind]], list[str]],
    announce: Callable[[list[Bind]], None],
) -> int:
    """Open ``binds`` and serve them through reloaded workers until SIGINT/SIGTERM."""
    try:
        import watchfiles  # noqa: F401
    except ImportError:
        raise ConfigError("--reload needs watchfiles: pip install 'trio-rack[reload]' (or watchfiles)") from None
    check_reload_args(args)
    with worker_sockets(binds) as held:
        reloader = Reloader(
            worker_command(held.fd_binds),
            sockets=held.sockets,
            lifeline=held.lifeline,
            dirs=watched_dirs(args),
            watch_filter=GlobFilter(args.reload_include or DEFAULT_INCLUDE, args.reload_exclude or ()),
        )
        return trio.run(reloader.run, functools.partial(announce, held.binds))


class Worker:
    """One worker process, its ready pipe, and whether it has exited."""

    def __init__(self, proc: trio.Process) -> None:
        self.proc = proc
        self.exited = trio.Event()


class Reloader:
    def __init__(
        self,
        command: list[str],
        *,
        sockets: list[socket.socket],
        lifeline: int,
        dirs: list[Path],
        watch_filter: GlobFilter,
    ) -> None:
        self.command = command
        self.pass_fds = tuple(s.fileno() for s in sockets)
        self.lifeline = lifeline
        self.dirs = dirs
        self.watch_filter = watch_filter
        self.current: Worker | None = None
        self.exit_status = 0

    async def run(self, announce: Callable[[], None]) -> int:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                self.first_started = trio.Event()
                # Watch first: a change made while the first worker starts is not missed.
                nursery.start_soon(self._watch_files)
                first = await self._start_worker()
                if first is None:  # the app does not import: the worker said why
                    nursery.cancel_scope.cancel()
                    return 2
                self.current = first
                self.first_started.set()
                log.info("reloader (pid %d) watching %s", os.getpid(), ", ".join(map(str, self.dirs)))
                announce()
                async for signum in signals:
                    log.info("%s: stopping the worker gracefully", signal.Signals(signum).name)
                    break
                nursery.cancel_scope.cancel()
        return self.exit_status

    async def _watch_files(self) -> None:
        import watchfiles

        async for changes in watchfiles.awatch(
            *self.dirs, watch_filter=self.watch_filter, debounce=DEBOUNCE_MS, step=50, yield_on_timeout=False
        ):
            await self.first_started.wait()
            paths = sorted({path for _, path in changes})
            log.info("reload: %s changed; starting a new worker", ", ".join(_relative(p) for p in paths))
            await self._replace()

    async def _replace(self) -> None:
        new = await self._start_worker()
        if new is None:
            if self.current is not None and not self.current.exited.is_set():
                log.error("reload: the new worker did not start (see above); the previous one keeps serving")
            else:
                log.error("reload: the new worker did not start (see above); waiting for the next change")
            return
        old, self.current = self.current, new
        if old is not None and not old.exited.is_set():
            old.proc.send_signal(signal.SIGTERM)  # graceful: its requests in flight finish
        log.info("reload: worker pid %d serving", new.proc.pid)

    async def _start_worker(self) -> Worker | None:
        """Start a worker and wait until it serves (the Worker) or exits first (None)."""
        ready_read, ready_write = ready_pipe.open_ready_pipe()
        try:
            proc: trio.Process = await self.nursery.start(
                functools.partial(
                    trio.run_process,
                    ready_pipe.child_argv(self.command, ready_write),
                    check=False,
                    stdin=self.lifeline,
                    pass_fds=(*self.pass_fds, ready_write),
                    start_new_session=True,
                )
            )
        except BaseException:
            os.close(ready_read)
            raise
        finally:
            os.close(ready_write)
        worker = Worker(proc)
        self.nursery.start_soon(self._reap, worker)
        with trio.move_on_after(ready_pipe.READY_TIMEOUT):
            if await ready_pipe.wait_ready(ready_read):
                return worker
        if proc.returncode is None:
            proc.kill()
        await worker.exited.wait()
        return None

    async def _reap(self, worker: Worker) -> None:
        try:
            await worker.proc.wait()
        finally:
            worker.exited.set()
        if worker is self.current:
            log.warning(
                "worker pid %d exited (%s); the next change starts a new one",
                worker.proc.pid,
                describe_exit(worker.proc.returncode or 0),
            )


def _relative(path: str) -> str:
    try:
        return os.path.relpath(path)
    except ValueError:
        return path
