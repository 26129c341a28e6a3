"""The request's own cancel scope, entered and left without ``with``'s machinery around it.

Why: every request runs in a :class:`trio.CancelScope` of its own
(``env["trio_rack.cancel_scope"]``: cancelling, shielding or moving the deadline of it must
touch that request only, even when the app keeps it past the request).  ``with
trio.CancelScope():`` costs about 47,000 instructions a request (``bench/cost_model.py --stage
scope``): the attrs constructor's checks, two ``current_time()`` calls, two generator context
managers (``_might_change_registered_deadline``) that find nothing to change, the
``CancelStatus`` constructor and ``recalculate``, and the task's status switched twice through
``_activate_cancel_status``.  For the one case the request cycle has — a scope made just now,
never cancelled, no deadline, entered by the running task, left by it with no exception — most
of that work decides nothing; :func:`enter` and :func:`leave` do the rest (about 13,000).

Theory of operation
-------------------
The result is Trio's own structure, exactly as ``__enter__`` builds it: a ``CancelStatus`` whose
parent is the task's current one, registered in its parent's children, the task moved from the
parent's tasks to the new status, ``effectively_cancelled`` computed as ``recalculate`` would
(the parent's, unless shielded).  The scope is a real :class:`trio.CancelScope` throughout:
``cancel()``, ``deadline``, ``shield`` and ``cancelled_caught`` work on it as on any other, and
everything but the plain exit goes through Trio's own code:

* :func:`enter` takes the short path only for a fresh scope (never entered nor cancelled, no
  deadline, so nothing to register in the run's deadline heap); any other goes through
  ``__enter__``.
* :func:`leave` (the block ended without an exception) takes the short path only when the
  scope is the task's innermost status with nothing else attached (no other task, no child
  status: a misnesting would have one) and no deadline registered (a deadline the app set, or
  ``--request-timeout``'s); otherwise, and for every exception, ``__exit__`` runs, which
  catches ``Cancelled``, sets ``cancelled_caught`` and unregisters the deadline.
* Both are KI-protected as ``__enter__``/``__exit__`` are (a Ctrl-C arriving in them waits for
  the next checkpoint), at no cost per call (Trio marks the code objects); so are
  :func:`exit_with` and :class:`Fresh`'s methods, the frames between the block and them (a
  Ctrl-C raised there would leave the scope entered: the task's status a dead request's).

Trio's private fields are read only when they are exactly the fields this was written against
and Trio's code around them is exactly the code it was checked against (:data:`FAST`, checked
once at import: ``attrs.fields`` of ``CancelScope``, ``CancelStatus`` and ``Task``, and the
sha256 of the source of ``__enter__``, ``_close``, ``__exit__``, the deadline registration,
``CancelStatus``' constructor, ``recalculate``, ``close`` and the task's status switch and
cancel delivery, :data:`_KNOWN_CODE`): any other Trio gets ``__enter__`` and ``__exit__`` for
every scope, the same semantics at the old price.  ``tests/test_scopes.py``
compares the two paths' structures field by field, so a change in Trio shows up there first.
"""

from __future__ import annotations

import hashlib
import inspect
import math
from types import TracebackType
from typing import Any

import attrs
import trio

__all__ = ["FAST", "Fresh", "enter", "exit_with", "leave", "new"]

#: The fields, in order, of the Trio internals this module builds by hand (trio 0.31–0.35).
_SCOPE_FIELDS = (
    "_cancel_status", "_has_been_entered", "_registered_deadline", "_cancel_called", "cancelled_caught",
    "_cancel_reason", "_relative_deadline", "_deadline", "_shield",
)  # fmt: skip
_STATUS_FIELDS = ("_scope", "effectively_cancelled", "_parent", "_children", "_tasks", "abandoned_by_misnesting")
_TASK_FIELDS = (
    "_parent_nursery", "coro", "_runner", "name", "context", "_counter", "_ki_protected", "_next_send_fn",
    "_next_send", "_abort_func", "custom_sleep_data", "_child_nurseries", "_eventual_parent_nursery",
    "_cancel_points", "_schedule_points", "_cancel_status",
)  # fmt: skip
#: sha256 of the source of the Trio code :func:`enter` and :func:`leave` stand in for or call
#: (:func:`_trio_code`), for each Trio it was checked against line by line.  The same fields with
#: a different body (a new step in ``__enter__`` or ``_close``) must turn the short path off too:
#: after re-reading that code against enter/leave, add its digest here.
_KNOWN_CODE = frozenset({
    "20cbc20c814d3b94da67fa8453d4c79a5fcb99a56da39b5d2aa5760a4b3d6d49",  # trio 0.35.0
})  # fmt: skip


def _trio_code(run: Any) -> str:
    """The sha256 of the source of the Trio functions the short paths replace or call."""
    scope, status, task = run.CancelScope, run.CancelStatus, run.Task
    functions = (
        scope.__enter__, scope._close, scope.__exit__, scope._might_change_registered_deadline.__wrapped__,
        status.__attrs_post_init__, status.recalculate, status.close, status.parent.fset,
        status.parent_cancellation_is_visible_to_us.fget,
        task._activate_cancel_status, task._attempt_delivery_of_any_pending_cancel,
    )  # fmt: skip
    digest = hashlib.sha256()
    for function in functions:
        digest.update(inspect.getsource(function).encode())
    return digest.hexdigest()


def _internals() -> tuple[Any, Any] | None:
    """``(CancelStatus, the run context)`` if Trio's internals are the ones known here, else None."""
    try:
        from trio._core import _run

        status_cls = _run.CancelStatus
        context = _run.GLOBAL_RUN_CONTEXT
        if trio.CancelScope is not _run.CancelScope:
            return None
        scope_fields = tuple(f.name for f in attrs.fields(_run.CancelScope))
        status_fields = tuple(f.name for f in attrs.fields(status_cls))
        task_fields = tuple(f.name for f in attrs.fields(_run.Task))
        code = _trio_code(_run)
    except (ImportError, AttributeError, TypeError, OSError, attrs.exceptions.NotAnAttrsClassError):
        return None  # (OSError, TypeError: no source to read, as in a frozen build)
    if scope_fields != _SCOPE_FIELDS or status_fields != _STATUS_FIELDS or task_fields != _TASK_FIELDS:
        return None
    if code not in _KNOWN_CODE:
        return None
    return status_cls, context


_FOUND = _internals()
#: Whether :func:`enter` and :func:`leave` take their short paths (Trio's internals as known).
FAST = _FOUND is not None
_CancelStatus: Any = _FOUND[0] if _FOUND is not None else None
_RUN: Any = _FOUND[1] if _FOUND is not None else None
_INF = math.inf


_new = object.__new__


def new() -> trio.CancelScope:
    """``trio.CancelScope()``: the same fields, without the constructor's checks of arguments
    it was not given (3,000 instructions fewer)."""
    if not FAST:
        return trio.CancelScope()
    s: Any = _new(trio.CancelScope)
    s._cancel_status = None
    s._has_been_entered = False
    s._registered_deadline = _INF
    s._cancel_called = False
    s.cancelled_caught = False
    s._cancel_reason = None
    s._relative_deadline = _INF
    s._deadline = _INF
    s._shield = False
    return s  # type: ignore[no-any-return]


@trio.lowlevel.enable_ki_protection
def enter(scope: trio.CancelScope) -> None:
    """``scope.__enter__()``, by the short path when ``scope`` is fresh (see the module docstring)."""
    s: Any = scope
    if (
        not FAST
        or s._has_been_entered
        or s._cancel_called
        or s._deadline != _INF
        or s._relative_deadline != _INF
        or type(scope) is not trio.CancelScope
    ):
        scope.__enter__()
        return
    task = _RUN.task  # (AttributeError outside a task, as current_task() would fail)
    parent = task._cancel_status
    s._has_been_entered = True
    status = object.__new__(_CancelStatus)
    status._scope = scope
    status._parent = parent
    status._children = set()
    status._tasks = {task}
    status.abandoned_by_misnesting = False
    status.effectively_cancelled = False
    parent._children.add(status)
    parent._tasks.remove(task)
    s._cancel_status = task._cancel_status = status
    if parent.effectively_cancelled and not s._shield:
        # What CancelStatus's own recalculate() does for a new child of a cancelled parent
        # (the reason copied, effectively_cancelled set); the running task has no abort to
        # attempt: its next checkpoint raises Cancelled.
        status.recalculate()


@trio.lowlevel.enable_ki_protection
def leave(scope: trio.CancelScope) -> None:
    """``scope.__exit__(None, None, None)``: the block ended without an exception."""
    s: Any = scope
    status = s._cancel_status
    if (
        not FAST
        or status is None
        or (task := _RUN.task)._cancel_status is not status  # (the run context read once: a thread-local)
        or s._registered_deadline != _INF
        or status._children
        or len(status._tasks) != 1
    ):
        scope.__exit__(None, None, None)
        return
    parent = status._parent
    status._tasks.clear()
    task._cancel_status = parent
    parent._tasks.add(task)
    parent._children.remove(status)
    status._parent = None
    s._cancel_status = None
    if parent.effectively_cancelled:
        task._attempt_delivery_of_any_pending_cancel()  # as _activate_cancel_status does


@trio.lowlevel.enable_ki_protection
def exit_with(scope: trio.CancelScope, exc: BaseException) -> bool:
    """``scope.__exit__`` for an exception: True if the scope swallowed it (its own Cancelled)."""
    tb: TracebackType | None = exc.__traceback__
    return bool(scope.__exit__(type(exc), exc, tb))


class Fresh:
    """``with scopes.Fresh() as scope:`` is ``with trio.CancelScope() as scope:`` through
    :func:`enter`, :func:`leave` and :func:`exit_with` (two small Python calls around them):
    for the scopes made per body read and per streamed send (app/streams.py)."""

    __slots__ = ("scope",)

    def __init__(self) -> None:
        self.scope = new()

    @trio.lowlevel.enable_ki_protection
    def __enter__(self) -> trio.CancelScope:
        enter(self.scope)
        return self.scope

    @trio.lowlevel.enable_ki_protection
    def __exit__(self, etype: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> bool:
        if exc is None:
            leave(self.scope)
            return False
        return exit_with(self.scope, exc)
