"""The cyclic garbage collector while a server runs: start-up objects frozen, rarer young passes.

Why
---
An open connection is some sixty container objects that live as long as it does (coroutine
frames, cancel scopes and their sets, the parser, the env), and an app that waits —
``await trio.sleep(1)`` between the chunks of a stream — makes a handful more at every wait
(a cancel scope, its status and two sets, three coroutine frames) that live for that second.
With CPython's default thresholds ``(700, 10, 10)`` a young collection runs every 700 net
allocations, so every wait's objects outlive two of them and are promoted to the oldest
generation, and its 25 % rule then triggers a *full* collection every few seconds — one that
visits every object of every open connection.  At 10,000 open streams that was 29 full
collections of about 0.9 s each in one ten-second run, and the cyclic GC took more of the
server's core than serving did (``bench/README.md``, "10,000 streams"): the streams' ticks
fell behind and the run took 2 to 3 times as long as its ten seconds.

What
----
While :func:`serving_gc` is entered (``serve()`` enters it once the app has started):

* :func:`gc.freeze` moves everything alive at start-up — modules, the app, its caches — to
  the permanent generation, which no collection visits again (``gc.unfreeze`` on exit; not
  when the program had frozen objects itself: then its freezing stands as it was);
* the thresholds are :data:`SERVING_THRESHOLDS`: a young collection every 10,000 net
  allocations instead of 700 (19 ms on average at 10,000 open streams on a loaded machine,
  where a full collection was 0.9 s), so a middle one every 100,000
  and a full one at most every million — and only when the 25 % rule also says so: the
  middle generation's promotions, which drove the full collections, come 14 times less
  often.  Nothing is disabled: cycles are still found, later (some 10,000 objects' worth of
  young garbage waits for the next pass).  ``(10000, 50, 10)`` took about as much CPU in
  the same run, but with middle collections of half a second; ``(50000, 50, 10)`` less
  CPU, but young pauses of ~130 ms.

The thresholds are process-wide, so several servers in one process (tests) share one
setting: the first to enter sets it, the last to leave restores what was there before.
``serve(tune_gc=False)`` leaves the collector alone (an embedding program with its own policy).
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

__all__ = ["SERVING_THRESHOLDS", "serving_gc"]

#: ``gc.set_threshold`` while serving (CPython's default is ``(700, 10, 10)``).
SERVING_THRESHOLDS = (10_000, 10, 10)

_users = 0
_saved: tuple[int, int, int] = (700, 10, 10)
_froze = False


@contextlib.contextmanager
def serving_gc(enabled: bool = True) -> Iterator[None]:
    """Tune the cyclic GC for serving while the block runs (see the module docstring)."""
    global _users, _saved, _froze
    if not enabled:
        yield
        return
    if _users == 0:
        _saved = gc.get_threshold()
        # A program that froze objects itself has a policy of its own: keep it (and do not
        # unfreeze its objects on the way out).
        _froze = gc.get_freeze_count() == 0
        if _froze:
            gc.collect()  # start-up's garbage cycles first, or freezing would keep them for good
            gc.freeze()
        gc.set_threshold(*SERVING_THRESHOLDS)
    _users += 1
    try:
        yield
    finally:
        _users -= 1
        if _users == 0:
            gc.set_threshold(*_saved)
            if _froze:
                gc.unfreeze()
