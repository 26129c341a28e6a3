"""app/scopes.py: the request scope's short enter/leave, held to Trio's own ``with`` (issue #12 point 2).

Two kinds of test, each run with the short paths on and off (``FAST`` monkeypatched: the
second run is Trio's ``__enter__``/``__exit__`` for every scope, the fallback a different Trio
gets):

* **Structure**: after :func:`scopes.enter` the scope, its ``CancelStatus``, the parent's and
  the task's fields are what ``__enter__`` leaves (for a plain parent, a cancelled parent, a
  shielded scope), and after :func:`scopes.leave` what ``__exit__`` leaves.  A Trio whose
  internals moved fails here, or turns ``FAST`` off (``test_the_short_path_is_taken``).
* **Behaviour**: cancel from another task, a deadline set inside, a shield against an outer
  cancel, a cancelled parent, nested scopes and a nursery inside, a scope cancelled after it
  was left, misnesting: the same outcome as with ``with``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import trio
import trio.testing

from trio_rack.app import scopes


@pytest.fixture(params=["short", "trio"])
def fast(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[bool]:
    if request.param == "trio":
        monkeypatch.setattr(scopes, "FAST", False)
    yield scopes.FAST


def test_the_short_path_is_taken_on_this_trio() -> None:
    """The installed Trio is one app/scopes.py knows; if not, re-read Trio's CancelScope.__enter__,
    _close and CancelStatus against scopes.enter/leave and update their field lists."""
    assert scopes.FAST, f"trio {trio.__version__}: CancelScope/CancelStatus/Task fields or their code changed"


def _status_fields(status: Any) -> dict[str, Any]:
    return {
        "scope": status._scope,
        "effectively_cancelled": status.effectively_cancelled,
        "parent": status._parent,
        "children": set(status._children),
        "tasks": set(status._tasks),
        "abandoned": status.abandoned_by_misnesting,
    }


def _scope_fields(scope: Any) -> dict[str, Any]:
    return {name: getattr(scope, name) for name in scopes._SCOPE_FIELDS if name != "_cancel_status"}


async def _entered_both_ways(prepare: Callable[[trio.CancelScope], None]) -> None:
    """Enter one scope with ``with`` and one with scopes.enter under the same parent; compare."""
    task = trio.lowlevel.current_task()
    parent = task._cancel_status
    reference = trio.CancelScope()
    prepare(reference)
    with reference:
        want_status = _status_fields(reference._cancel_status)
        want_scope = _scope_fields(reference)
        want_parent_children = len(parent._children)
    want_after = _scope_fields(reference)
    assert task._cancel_status is parent

    ours = scopes.new()
    prepare(ours)
    scopes.enter(ours)
    try:
        status = ours._cancel_status
        assert task._cancel_status is status
        got = _status_fields(status)
        assert got.pop("scope") is ours and want_status.pop("scope") is reference
        assert got == want_status
        assert _scope_fields(ours) == want_scope
        assert len(parent._children) == want_parent_children
        assert task not in parent._tasks
    finally:
        scopes.leave(ours)
    assert task._cancel_status is parent
    assert task in parent._tasks
    assert status not in parent._children and status._parent is None and not status._tasks
    assert ours._cancel_status is None
    assert _scope_fields(ours) == want_after


async def test_new_is_a_fresh_cancel_scope(fast: bool) -> None:
    assert _scope_fields(scopes.new()) == _scope_fields(trio.CancelScope())
    assert type(scopes.new()) is trio.CancelScope
    with scopes.Fresh() as scope:
        assert type(scope) is trio.CancelScope and scope._cancel_status is not None
    assert scope._cancel_status is None


async def test_structure_under_a_plain_parent(fast: bool) -> None:
    await _entered_both_ways(lambda scope: None)


async def test_structure_for_a_shielded_scope(fast: bool) -> None:
    def shield(scope: trio.CancelScope) -> None:
        scope.shield = True

    await _entered_both_ways(shield)


async def test_structure_under_a_cancelled_parent(fast: bool) -> None:
    with trio.CancelScope() as outer:
        outer.cancel("test")
        await _entered_both_ways(lambda scope: None)
    assert outer.cancelled_caught is False  # nothing checkpointed


async def test_structure_under_a_cancelled_parent_shielded(fast: bool) -> None:
    def shield(scope: trio.CancelScope) -> None:
        scope.shield = True

    with trio.CancelScope() as outer:
        outer.cancel()
        await _entered_both_ways(shield)


def _run_block(scope: trio.CancelScope) -> scopes.Fresh:
    """``with scope:`` through scopes.Fresh (enter, then leave or exit_with: the exchange spells
    the same three calls inline)."""
    fresh = scopes.Fresh()
    fresh.scope = scope
    return fresh


async def test_cancel_from_another_task_ends_the_block(fast: bool, autojump_clock: trio.testing.MockClock) -> None:
    scope = scopes.new()
    reached = False
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_cancel_soon, scope)
        with _run_block(scope):
            await trio.sleep_forever()
            reached = True
    assert scope.cancelled_caught and not reached


async def _cancel_soon(scope: trio.CancelScope) -> None:
    await trio.sleep(1)
    scope.cancel()


async def test_a_deadline_set_inside_fires_and_is_unregistered(
    fast: bool, autojump_clock: trio.testing.MockClock
) -> None:
    scope = scopes.new()
    start = trio.current_time()
    with _run_block(scope):
        scope.deadline = trio.current_time() + 5
        await trio.sleep(10)
    assert scope.cancelled_caught
    assert trio.current_time() - start == pytest.approx(5)
    # left with no deadline still in the run's heap: a later sleep is not cut
    await trio.sleep(10)


async def test_a_deadline_not_reached_is_unregistered_at_leave(
    fast: bool, autojump_clock: trio.testing.MockClock
) -> None:
    scope = scopes.new()
    with _run_block(scope):
        scope.deadline = trio.current_time() + 5
        await trio.sleep(1)
    assert not scope.cancelled_caught
    assert scope._registered_deadline == math.inf
    await trio.sleep(10)  # the passed deadline cancels nothing now


async def test_a_shield_inside_holds_off_an_outer_cancel(fast: bool) -> None:
    scope = scopes.new()
    with trio.CancelScope() as outer:
        with _run_block(scope):
            scope.shield = True
            outer.cancel()
            await trio.lowlevel.checkpoint()  # shielded: no Cancelled
            finished = True
        await trio.lowlevel.checkpoint()  # outside the shield: the outer cancel arrives
        raise AssertionError("not reached")
    assert finished and outer.cancelled_caught and not scope.cancelled_caught


async def test_a_cancelled_parent_reaches_inside_and_is_not_swallowed(fast: bool) -> None:
    scope = scopes.new()
    with trio.CancelScope() as outer:
        outer.cancel()
        with _run_block(scope):
            await trio.lowlevel.checkpoint()
    assert outer.cancelled_caught and not scope.cancelled_caught


async def test_nested_scopes_and_a_nursery_inside(fast: bool) -> None:
    scope = scopes.new()
    with _run_block(scope):
        with trio.move_on_after(0) as inner:
            await trio.sleep(1)
        assert inner.cancelled_caught
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.sleep, 0)
    assert not scope.cancelled_caught
    await trio.lowlevel.checkpoint()


async def test_cancelling_after_the_block_touches_nothing(fast: bool) -> None:
    scope = scopes.new()
    with _run_block(scope):
        await trio.lowlevel.checkpoint()
    scope.cancel()
    scope.shield = True
    await trio.lowlevel.checkpoint()  # no Cancelled: the scope is over
    assert not scope.cancelled_caught


async def test_an_exception_goes_through_and_the_task_is_restored(fast: bool) -> None:
    task = trio.lowlevel.current_task()
    parent = task._cancel_status
    scope = scopes.new()
    with pytest.raises(KeyError):
        with _run_block(scope):
            raise KeyError("x")
    assert task._cancel_status is parent


async def test_a_scope_cannot_be_entered_twice(fast: bool) -> None:
    scope = scopes.new()
    with _run_block(scope):
        pass
    with pytest.raises(RuntimeError, match="single 'with' block"):
        scopes.enter(scope)


async def test_misnesting_is_reported_as_trio_reports_it(fast: bool) -> None:
    scope = scopes.new()
    inner = trio.CancelScope()
    scopes.enter(scope)
    inner.__enter__()
    with pytest.raises(RuntimeError, match="Cancel scope stack corrupted"):
        scopes.leave(scope)  # the inner scope is still open: Trio's own _close says so
    inner.__exit__(None, None, None)


def _with_body_changed(owner: Any, name: str) -> Any:
    """A stand-in for ``owner.name`` that behaves the same but whose source differs (a Trio
    whose code around the same fields changed)."""
    original = getattr(owner, name)

    def changed(*args: Any, **kwargs: Any) -> Any:
        return original(*args, **kwargs)  # a different body: a newer Trio's, say

    return changed


@pytest.mark.parametrize(
    "where",
    [
        ("CancelScope", "__enter__"),
        ("CancelScope", "_close"),
        ("CancelScope", "__exit__"),
        ("CancelStatus", "recalculate"),
        ("CancelStatus", "close"),
        ("CancelStatus", "__attrs_post_init__"),
        ("Task", "_activate_cancel_status"),
        ("Task", "_attempt_delivery_of_any_pending_cancel"),
    ],
)
def test_the_gate_closes_when_trios_code_changes_under_the_same_fields(
    where: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The field lists alone let a Trio through whose ``__enter__``/``_close``/... do something
    new with the same fields (the short path would then silently skip it): the code's digest
    turns the short path off too."""
    from trio._core import _run

    assert scopes._internals() is not None
    owner = getattr(_run, where[0])
    monkeypatch.setattr(owner, where[1], _with_body_changed(owner, where[1]))
    assert scopes._internals() is None


def test_the_gate_closes_when_a_method_it_calls_is_gone(monkeypatch: pytest.MonkeyPatch) -> None:
    from trio._core import _run

    monkeypatch.delattr(_run.Task, "_attempt_delivery_of_any_pending_cancel")
    assert scopes._internals() is None


def test_the_gate_closes_when_the_task_fields_change(monkeypatch: pytest.MonkeyPatch) -> None:
    """A new ``Task`` field (a per-task record ``__enter__`` would keep) turns the short path off:
    this Trio's fields stand for the known ones, a known list one longer for a changed Trio."""
    assert scopes._internals() is not None
    monkeypatch.setattr(scopes, "_TASK_FIELDS", (*scopes._TASK_FIELDS, "_cancel_scope_stack"))
    assert scopes._internals() is None


def test_the_gate_closes_for_unknown_code(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scopes, "_KNOWN_CODE", frozenset())
    assert scopes._internals() is None


async def test_leave_with_a_child_status_still_attached_is_trios(fast: bool) -> None:
    """A status still hanging under the scope's at the end (only misnesting makes one) is Trio's
    case: ``close`` abandons the subtree and cancels it; the short path (which would only unlink
    the scope's own status, leaving the child under a closed parent, uncancelled) must not run."""
    from trio._core import _run

    scope = scopes.new()
    scopes.enter(scope)
    status = scope._cancel_status  # type: ignore[attr-defined]
    child = _run.CancelStatus(scope=trio.CancelScope(), parent=status)
    scopes.leave(scope)
    assert trio.lowlevel.current_task()._cancel_status is status._parent or status._parent is None
    assert status.abandoned_by_misnesting and child.abandoned_by_misnesting
    assert status.effectively_cancelled and child.effectively_cancelled


async def test_the_frames_around_enter_and_leave_are_ki_protected(monkeypatch: pytest.MonkeyPatch) -> None:
    """``with trio.CancelScope():`` calls Trio's KI-protected ``__exit__`` directly; Fresh's
    ``__exit__`` and :func:`scopes.exit_with` are Python frames in between, and a Ctrl-C raised in
    one of them (before Trio's code runs) would leave the scope entered.  They are protected too."""
    seen: dict[str, bool] = {}
    real_leave, real_enter, real_exit = scopes.leave, scopes.enter, trio.CancelScope.__exit__

    def probe_enter(scope: trio.CancelScope) -> None:
        seen["Fresh.__enter__"] = trio.lowlevel.currently_ki_protected()  # (the probe's caller decides)
        real_enter(scope)

    def probe_leave(scope: trio.CancelScope) -> None:
        seen["Fresh.__exit__"] = trio.lowlevel.currently_ki_protected()
        real_leave(scope)

    def probe_exit(self: trio.CancelScope, *args: Any) -> bool:
        seen.setdefault("exit_with", trio.lowlevel.currently_ki_protected())
        return real_exit(self, *args)

    monkeypatch.setattr(scopes, "enter", probe_enter)
    monkeypatch.setattr(scopes, "leave", probe_leave)
    monkeypatch.setattr(trio.CancelScope, "__exit__", probe_exit)
    assert not trio.lowlevel.currently_ki_protected()  # (the test itself is not: the probes can tell)
    with scopes.Fresh():
        pass
    with pytest.raises(ValueError), scopes.Fresh():
        raise ValueError
    assert seen == {"Fresh.__enter__": True, "Fresh.__exit__": True, "exit_with": True}
