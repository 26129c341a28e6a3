"""A frame-level guard in front of h2: the flood classes h2 does not bound.  No I/O, no trio.

h2 parses frames and keeps the protocol state; it does not count.  Each attack class below is
"cheap to send, costly to answer" or "cheap to send, buffered forever", and each is bounded
here, on the raw bytes, before h2 sees them:

* **CONTINUATION flood** (CVE-2024-27316 and the 2024 family): HEADERS without END_HEADERS,
  then CONTINUATION frames forever.  h2 buffers up to 64 frames of up to the frame size each
  (16 MiB at most) before it complains; here the header block is cut off as soon as its encoded
  size passes ``max_head_size``, so no more than that is ever buffered.
* **Control-frame floods** (CVE-2019-9512 ping, -9513 priority/resource loop, -9515 settings,
  -9518 empty frames, -9511 data dribble through tiny WINDOW_UPDATEs): each such frame spends
  one token of a bucket of ``max_control_frames`` that refills over :data:`WINDOW` seconds.
  Frames that carry a request or response (HEADERS, non-empty DATA, sizeable WINDOW_UPDATE,
  SETTINGS ACK) are free, so a busy legitimate client never runs dry.

Rapid reset (CVE-2023-44487) is counted by the connection on h2's events, with a
:class:`TokenBucket` like the one here, because only h2 knows which stream a reset closes.
"""

from __future__ import annotations

__all__ = ["FrameGuard", "Flood", "TokenBucket", "PREFACE", "WINDOW"]

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
#: The period over which the flood budgets refill, in seconds.
WINDOW = 10.0
#: A WINDOW_UPDATE smaller than this counts as a control frame (data dribble, CVE-2019-9511):
#: each buys a DATA frame whose 9-byte header is a sizeable part of it.  Clients with small
#: but sane windows (nghttp ``-w 10``: 1 KiB updates) stay well above it.
SMALL_WINDOW_UPDATE = 128

_DATA, _HEADERS, _PRIORITY, _RST_STREAM, _SETTINGS = 0x0, 0x1, 0x2, 0x3, 0x4
_PUSH_PROMISE, _PING, _GOAWAY, _WINDOW_UPDATE, _CONTINUATION = 0x5, 0x6, 0x7, 0x8, 0x9
_END_STREAM, _ACK, _END_HEADERS = 0x1, 0x1, 0x4


class Flood(Exception):
    """The client crossed a limit; ``reason`` says which (for the log and GOAWAY debug data)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TokenBucket:
    """``capacity`` tokens, refilled at ``capacity / period`` per second; time is passed in."""

    __slots__ = ("capacity", "rate", "tokens", "last")

    def __init__(self, capacity: int, period: float = WINDOW) -> None:
        self.capacity = float(capacity)
        self.rate = capacity / period
        self.tokens = float(capacity)
        self.last = 0.0

    def take(self, now: float) -> bool:
        """Spend one token; False if there was none left."""
        self.tokens = min(self.capacity, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


class FrameGuard:
    """Walks the frame headers of the client's byte stream (skipping payloads) and raises
    :class:`Flood` on a header block over ``max_header_block`` or a control-frame flood.

    Payload bytes are skipped without copying, except the four of a WINDOW_UPDATE increment.
    The preface is expected first (h2 validates it; here it is only skipped).
    """

    __slots__ = ("_max_block", "_bucket", "_preface_left", "_pending", "_skip", "_block", "_wu", "_wu_expected")

    def __init__(self, *, max_header_block: int, max_control_frames: int, expect_preface: bool = True) -> None:
        self._max_block = max_header_block
        self._bucket = TokenBucket(max_control_frames)
        self._preface_left = len(PREFACE) if expect_preface else 0
        self._pending = b""  # an incomplete frame header (fewer than 9 bytes)
        self._skip = 0  # payload bytes of the current frame still to skip
        self._block = -1  # encoded bytes of the header block in progress; -1: none
        self._wu = b""  # the partial payload of a WINDOW_UPDATE being read
        self._wu_expected = False

    def feed(self, data: bytes, now: float) -> None:
        view = memoryview(data)
        pos = 0
        end = len(view)
        if self._preface_left:
            take = min(self._preface_left, end)
            self._preface_left -= take
            pos = take
        while pos < end:
            if self._skip:
                take = min(self._skip, end - pos)
                if self._wu_expected:
                    self._collect_wu(view[pos : pos + take], now)
                self._skip -= take
                pos += take
                continue
            need = 9 - len(self._pending)
            if end - pos < need:
                self._pending += bytes(view[pos:end])
                return
            header = self._pending + bytes(view[pos : pos + need])
            self._pending = b""
            pos += need
            self._frame(header, now)

    def _collect_wu(self, piece: memoryview, now: float) -> None:
        self._wu += bytes(piece[: max(0, 4 - len(self._wu))])
        if len(self._wu) >= 4:
            increment = int.from_bytes(self._wu[:4], "big") & 0x7FFFFFFF
            self._wu = b""
            self._wu_expected = False
            if increment < SMALL_WINDOW_UPDATE:
                self._control(now, "WINDOW_UPDATE")

    def _frame(self, header: bytes, now: float) -> None:
        length = int.from_bytes(header[0:3], "big")
        ftype = header[3]
        flags = header[4]
        self._skip = length
        if self._block >= 0:
            if ftype != _CONTINUATION:
                self._block = -1  # h2 answers this PROTOCOL_ERROR itself
            else:
                self._block += length
                if self._block > self._max_block:
                    raise Flood(f"header block over {self._max_block} bytes (CONTINUATION flood, CVE-2024-27316)")
                if flags & _END_HEADERS:
                    self._block = -1
                elif length == 0:
                    self._control(now, "empty CONTINUATION")
            return
        if ftype == _HEADERS:
            if length > self._max_block:
                raise Flood(f"header block over {self._max_block} bytes")
            if not flags & _END_HEADERS:
                self._block = length
            return
        if ftype == _DATA:
            if length == 0 and not flags & _END_STREAM:
                self._control(now, "empty DATA")
            return
        if ftype == _WINDOW_UPDATE:
            if length == 4:
                self._wu_expected = True
                self._wu = b""
            return
        if ftype == _SETTINGS:
            if not flags & _ACK:
                self._control(now, "SETTINGS")
            return
        if ftype in (_PING, _PRIORITY, _RST_STREAM, _CONTINUATION, _PUSH_PROMISE) or ftype > _CONTINUATION:
            # (RST_STREAM also spends a reset token in the connection; unknown types are ignored
            # by h2 but still cost a trip through the parser.)
            self._control(now, _NAMES.get(ftype, "unknown-type"))

    def _control(self, now: float, what: str) -> None:
        if not self._bucket.take(now):
            raise Flood(f"{what} flood: more than {int(self._bucket.capacity)} control frames in {WINDOW:g} s")


_NAMES = {_PING: "PING", _PRIORITY: "PRIORITY", _RST_STREAM: "RST_STREAM", _CONTINUATION: "CONTINUATION",
          _PUSH_PROMISE: "PUSH_PROMISE", _GOAWAY: "GOAWAY"}  # fmt: skip
