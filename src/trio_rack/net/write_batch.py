"""Small responses of one scheduler batch written back to back: one wake-up of a local client serves several.

Why: over loopback (a benchmark, or a reverse proxy on the same host) ``write`` delivers the
bytes in the writer's own system call, and when the client is asleep in ``epoll_wait`` that
call also wakes it: on a virtual machine an inter-processor interrupt, some 10 µs of the
server's time per request (``perf``: 17 % of trio-rack's samples on the httptools hello
against 8 % for the bare Trio loop, bench/README.md "The run at d1b6e9d").  A client is
asleep when each response arrives alone, a few tens of µs of Python after the last.  Written
back to back, the first response wakes it and the next ones find it awake.

Theory of operation
-------------------
* **Who holds.**  :meth:`.Writer.write` with ``batch=True`` (the HTTP/1 driver passes it only
  for a whole small response on a connection that stays open, with no next request buffered:
  nothing else of the connection's can happen before its next read) stores its bytes in the
  writer and the writer here, instead of writing them, and returns.
* **Only while the scheduler is busy**: the driver passes ``batch=True`` only when
  :func:`worth_holding` says so: at least :data:`HOLD_AFTER` tasks are already queued for the
  next batch (:func:`tasks_runnable`: the tasks of this batch that ran before this one and
  yielded, under a keep-alive load).  Under light load a batch is a few tasks,
  and each of them reads its next request right after the batch's end: a response held to
  that end has not been answered yet, so the read fails and waits (a cancel scope, an epoll
  registration), and the client, asleep anyway, gained nothing.  Measured with ``wrk -c4``
  (hold always): 17–20 % fewer requests a second than writing at once; with ``-c64``, 14 %
  more.
* **When they go out.**  All held writes of a run are written, in the order they were held,
  when :data:`~trio_rack.config.Limits.write_batch` of them are held (the bound on how long a
  response waits: the steps of that many tasks) and in any case at the end of the scheduler's
  batch: Trio's ``before_io_wait`` instrument hook, called before every ``epoll_wait``, which
  is before any task that yielded or waits runs again.  So a connection's task never resumes
  with its response still held here (its next read's yield, or its wait, passes that point).
* **What the kernel did not take** (a partial write, ``EAGAIN``) stays in the writer, and a
  broken socket marks it broken: the flush runs outside every task and must never wait or
  raise.  The writer's next write, and every read of the HTTP/1 driver before it reads, sends
  the rest first (:meth:`.Writer.settle`) within the write timeout, or learns that the
  client is gone (then no further request of the connection's is served).  That time is not
  the read's: the read deadline moves by it (a drain's is set only after it), as an unheld
  write went out before the deadline was set.  The driver also settles before it
  half-closes, and writes what it can at once if it ends otherwise (:meth:`.Writer.release_held`).
* **Per run**: a :class:`trio.lowlevel.RunVar` holds the batch, whose instrument is added to
  the run the first time a write is held, and ends with it.

The cost: a held response is written at its task's next yield (or after ``write_batch - 1``
more held responses), not at once: after the cycle's access log and ``response_finished``, and
after up to ``write_batch - 1`` other requests' steps.  ``--write-batch 1`` turns it off.
"""

from __future__ import annotations

from typing import Any, Protocol

import attrs
import trio

__all__ = ["HOLD_AFTER", "Held", "WriteBatch", "current_batch", "tasks_runnable", "worth_holding"]

#: A write is held only when at least this many tasks are queued for the next batch.
HOLD_AFTER = 8


class Held(Protocol):
    """What the batch holds: a writer with bytes to write at the flush."""

    def write_held(self) -> None:
        """Write the held bytes without waiting; keep what the kernel did not take.  Never raises."""


class WriteBatch(trio.abc.Instrument):
    """The run's held writes, written when ``limit`` are held or before the next I/O wait."""

    __slots__ = ("held",)

    def __init__(self) -> None:
        self.held: list[Held] = []

    def hold(self, writer: Held, limit: int) -> None:
        """Hold ``writer``'s bytes until the flush (at once when ``limit`` are held)."""
        held = self.held
        held.append(writer)
        if len(held) >= limit:
            self.flush()

    def release(self, writer: Held) -> None:
        """``writer`` writes its bytes itself (it must before anything else): no longer held here."""
        self.held.remove(writer)

    def flush(self) -> None:
        """Write every held writer's bytes, in the order they were held."""
        held = self.held
        if held:
            self.held = []
            for writer in held:
                writer.write_held()

    def before_io_wait(self, timeout: float) -> None:
        self.flush()


def _run_context() -> Any:
    """Trio's run context, whose ``runner.runq`` is the deque ``current_statistics()
    .tasks_runnable`` measures, where Trio's internals are as known (trio 0.25–0.35); else
    None, and :func:`tasks_runnable` asks that public call, which builds the whole statistics
    object (1.5 µs against 0.05 here) for one number."""
    try:
        from trio._core import _run

        context = _run.GLOBAL_RUN_CONTEXT
        if "runq" not in {field.name for field in attrs.fields(_run.Runner)}:
            return None
    except (ImportError, AttributeError, TypeError, attrs.exceptions.NotAnAttrsClassError):
        return None
    return context


_CONTEXT = _run_context()


def tasks_runnable() -> int:
    """How many tasks are queued to run in the scheduler's next batch (inside a run)."""
    if _CONTEXT is not None:
        return len(_CONTEXT.runner.runq)
    return trio.lowlevel.current_statistics().tasks_runnable


def worth_holding() -> bool:
    """Whether a response written now should be held (the scheduler is busy: see the module
    docstring).  Asked first by the caller, before its own costlier checks; asked for every
    keep-alive response, so :func:`tasks_runnable` is inlined (a call fewer)."""
    context = _CONTEXT
    if context is not None:
        return len(context.runner.runq) >= HOLD_AFTER
    return trio.lowlevel.current_statistics().tasks_runnable >= HOLD_AFTER


_BATCH: trio.lowlevel.RunVar[WriteBatch] = trio.lowlevel.RunVar("trio_rack.write_batch")


def current_batch() -> WriteBatch:
    """This run's batch, made (and its instrument added) at the first call."""
    try:
        return _BATCH.get()
    except LookupError:
        batch = WriteBatch()
        _BATCH.set(batch)
        trio.lowlevel.add_instrument(batch)
        return batch
