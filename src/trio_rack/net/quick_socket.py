"""The TCP stream under a TLS connection, with a non-blocking try before each trip through Trio.

Why: ``trio.SSLStream`` encrypts inside its ``send_all`` and then calls its transport's
``send_all``; on a :class:`trio.SocketStream` that is a pass through Trio's scheduler even
when the kernel takes every byte at once (about 33,000 instructions), plus the socket layer's
generator context managers (``_try_sync``, the error translation).  The plain-TCP
:class:`~trio_rack.net.transport.Writer` sidesteps this with one ``os.write`` first; through
TLS the writer never sees the encrypted bytes, so the same care has to sit under
``SSLStream``: :class:`QuickSocketStream` is the ``transport_stream`` it is built on.

Theory of operation
-------------------
* **send_all** first tries one non-blocking ``os.write`` of the whole piece; what the kernel
  did not take goes through the wrapped stream's own ``send_all`` (which waits for the socket
  and keeps Trio's semantics for the rest).  **receive_some** first tries one non-blocking
  ``os.read``; when nothing is there it waits for the socket itself (``wait_readable``: the
  one scheduler pass a keep-alive request needs, as in the bare loop) and reads again.
* **Still checkpoints where Trio needs them.**  Each call is a cancellation point
  (``checkpoint_if_cancelled`` before any byte moves, so a cancelled call did nothing); a call
  that did not wait is not a schedule point, so every :data:`QUICK_CALLS`-th call in each
  direction goes through the wrapped stream's own method and its scheduler pass: a fast
  client whose bytes are always there (a big upload, a big download the kernel keeps taking)
  cannot keep the other connections from running.  A call that waited was a schedule point
  and starts the count afresh.
* **The descriptor is asked for at each call, never kept**: a closed socket says -1 and the
  call goes to the wrapped stream, which raises :class:`trio.ClosedResourceError`; a kept
  number could by then name another connection's socket.  A socket closed while a read waits
  wakes it with ``ClosedResourceError`` (Trio's ``notify_closing``), as in ``SocketStream``.
* **Errors as SocketStream gives them**: ``EBADF`` → :class:`trio.ClosedResourceError`, any
  other ``OSError`` (``EPIPE``, ``ECONNRESET``) → :class:`trio.BrokenResourceError`, the
  ``OSError`` as the cause of either (``SocketStream`` drops it for ``EBADF``), which
  ``SSLStream`` passes on as it always has.
* **One sender and one receiver at a time**: ``SSLStream`` serialises its transport calls with
  its inner locks already; a second task calling the same direction directly gets
  :class:`trio.BusyResourceError`, as from ``SocketStream``.

It is a :class:`trio.abc.Stream`, not half-closeable: ``SSLStream`` never half-closes its
transport (TLS has no half-close).  ``socket`` is the wrapped stream's, so code that walks
``transport_stream`` down to the socket (``socket_fileno``) finds it.

Resource handling: ``aclose`` closes the wrapped stream (``SSLStream.aclose`` calls it); the
listener that accepted the socket closes that too, in its ``finally``.
"""

from __future__ import annotations

import errno
import os

import trio

__all__ = ["QUICK_CALLS", "QuickSocketStream"]

#: Every QUICK_CALLS-th send and every QUICK_CALLS-th receive goes through the wrapped
#: ``SocketStream`` and its scheduler pass: the bound on how long one connection's task runs
#: without letting the others run while the kernel takes (or has) its bytes at once.  The
#: same bound as the plain-TCP writer's (``transport.QUICK_WRITES``).
QUICK_CALLS = 16
#: What ``SocketStream.receive_some()`` reads when not told (``trio``'s ``DEFAULT_RECEIVE_SIZE``).
DEFAULT_RECEIVE_SIZE = 65536


def _stream_error(exc: OSError) -> trio.BrokenResourceError | trio.ClosedResourceError:
    """The stream error ``SocketStream`` raises for ``exc`` (its error translation)."""
    if exc.errno == errno.EBADF:
        return trio.ClosedResourceError("this socket was already closed")
    return trio.BrokenResourceError(f"socket connection broken: {exc}")


class QuickSocketStream(trio.abc.Stream):
    """``stream`` (a :class:`trio.SocketStream`) whose ``send_all`` and ``receive_some`` try a
    non-blocking system call before a trip through Trio (see the module docstring)."""

    __slots__ = ("stream", "_sends_left", "_receives_left", "_sending", "_receiving")

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self._sends_left = QUICK_CALLS
        self._receives_left = QUICK_CALLS
        self._sending = False
        self._receiving = False

    @property
    def socket(self) -> trio.socket.SocketType:
        return self.stream.socket

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is currently sending data on this stream")
        self._sending = True
        try:
            if self._sends_left > 1 and data:
                fd = self.stream.socket.fileno()
                if fd != -1:
                    self._sends_left -= 1
                    await trio.lowlevel.checkpoint_if_cancelled()
                    try:
                        sent = os.write(fd, data)
                    except BlockingIOError:
                        sent = 0
                    except OSError as exc:
                        raise _stream_error(exc) from exc
                    if sent == len(data):
                        return
                    data = memoryview(data)[sent:]
            self._sends_left = QUICK_CALLS
            await self.stream.send_all(data)
        finally:
            self._sending = False

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if max_bytes is None:
            max_bytes = DEFAULT_RECEIVE_SIZE
        elif max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        if self._receiving:
            raise trio.BusyResourceError("another task is currently receiving data on this stream")
        self._receiving = True
        try:
            sock = self.stream.socket
            fd = sock.fileno()
            if self._receives_left > 1 and fd != -1:
                self._receives_left -= 1
                await trio.lowlevel.checkpoint_if_cancelled()
                while True:
                    try:
                        return os.read(fd, max_bytes)
                    except BlockingIOError:
                        pass
                    except OSError as exc:
                        raise _stream_error(exc) from exc
                    # Nothing there yet: wait for it (a schedule point, so the count restarts).
                    self._receives_left = QUICK_CALLS
                    await trio.lowlevel.wait_readable(sock)
                    fd = sock.fileno()  # asked again: the socket may have been closed meanwhile
                    if fd == -1:
                        break  # the wrapped stream says so
            self._receives_left = QUICK_CALLS
            return await self.stream.receive_some(max_bytes)
        finally:
            self._receiving = False

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self.stream.aclose()
