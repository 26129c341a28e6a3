"""The minimum request-body rate (``--min-body-rate``): a sliding window, pure arithmetic.

Why a rate and not only ``--body-timeout``: the body timeout resets on every byte, so a client
sending one byte a second holds its connection (and the app's request) indefinitely — the
slow-POST attack ("R.U.D.Y.").  Here a body is too slow when, once it has been arriving for
:data:`WINDOW` seconds, the last :data:`WINDOW` seconds brought fewer than
``min_rate * WINDOW`` bytes.

The clock is the time the server spent *waiting* for body bytes, not wall time: while the app
is busy between two reads of ``rack.input``, TCP flow control holds the client back, and that
must not count against it.  The window is kept in :data:`BUCKET`-second buckets (at most
``WINDOW / BUCKET + 1`` of them), so a fast upload of thousands of reads costs a few list
operations per read, never a scan of every read.

No I/O and no trio here: the HTTP/1 driver (:meth:`trio_rack.http1.connection.HTTPConnection.receive_body`)
asks :meth:`BodyRate.time_left` how long its next read may wait, and :meth:`BodyRate.record`
what the read brought; ``tests/test_body_rate.py`` tests the arithmetic with made-up times.
"""

from __future__ import annotations

import math
from collections import deque

__all__ = ["BUCKET", "WINDOW", "BodyRate"]

#: The sliding window, seconds (issue 9: "measured over a sliding window of 5 s once the body
#: has been arriving for 5 s").
WINDOW = 5.0
#: Bucket width, seconds: the window slides in steps this long (a bucket counts while any of it
#: is inside the window, which errs in the client's favour by at most one bucket).
BUCKET = 0.25


class BodyRate:
    """How fast one request body has been arriving, on the clock of time spent waiting for it."""

    __slots__ = ("min_rate", "waited", "_buckets", "_in_window")

    def __init__(self, min_rate: float) -> None:
        #: Bytes a second the body must keep up, averaged over the window.
        self.min_rate = min_rate
        #: Seconds spent waiting for body bytes so far (the window's clock).
        self.waited = 0.0
        self._buckets: deque[list[float]] = deque()  # [bucket end on the waiting clock, bytes]
        self._in_window = 0.0  # the bytes of every bucket in _buckets

    def record(self, waited: float, received: int) -> None:
        """One read waited ``waited`` seconds and brought ``received`` bytes."""
        self.waited += max(waited, 0.0)
        end = (math.floor(self.waited / BUCKET) + 1) * BUCKET
        buckets = self._buckets
        if buckets and buckets[-1][0] == end:
            buckets[-1][1] += received
        else:
            buckets.append([end, float(received)])
        self._in_window += received
        cutoff = self.waited - WINDOW
        while buckets and buckets[0][0] <= cutoff:
            self._in_window -= buckets.popleft()[1]

    def too_slow(self) -> bool:
        """Whether the body is below the minimum rate now."""
        return self.time_left() <= 0.0

    def time_left(self) -> float:
        """How much longer the next read may wait, if it brings nothing, before the body is too
        slow (``<= 0``: it is already); ``math.inf`` never happens (every byte leaves the window)."""
        need = self.min_rate * WINDOW
        first_check = max(self.waited, WINDOW)  # no verdict before the body has arrived for WINDOW
        remaining = self._in_window
        for end, received in self._buckets:
            leaves = end + WINDOW  # the clock reading at which this bucket leaves the window
            if leaves > first_check:
                if remaining < need:
                    return first_check - self.waited
                # still enough until this bucket leaves; check what is left after it
                first_check = leaves
            remaining -= received
        return (first_check if remaining < need else math.inf) - self.waited
