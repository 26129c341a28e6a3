"""``FileBody``: a response body that names a file, as Rack's ``to_path`` does.

``FileBody(path, offset=0, length=None)`` is ``length`` bytes of ``path`` from ``offset``
(``None``: to the end).  Because it names the file, a server can send it without copying it
through Python: on plain TCP the HTTP/1 driver may hand ``path``/``offset``/``length`` to
``os.sendfile`` (any body with a ``path`` attribute and optional ``offset``/``length`` counts).
Everywhere else — TLS, memory streams, a driver without that path — it is an ordinary async
iterable of ``bytes``, read in slices of :data:`SLICE` with ``os.pread`` in a worker thread
(under :data:`FILE_IO_LIMITER`), so the event loop never waits on the disk.

The app sets ``content-length`` itself (``static.Files`` does, from ``stat``): the server then
checks the body against it, and a file that shrank under it aborts the response visibly rather
than looking complete.

The server opens the file *before* it sends the response head (:func:`open_file`), so a file
that is missing or unreadable is a 500 with the reason in the error log, never a 200 head
followed by an aborted body; it then reads from that descriptor (:func:`read_slices`) or hands
it to ``os.sendfile``, and closes it.

Resource handling: iterated by an app or a middleware, the file is opened when iteration
starts and closed when it ends, fails or the server calls :meth:`FileBody.aclose` (it always
does, once, after the response).  A ``FileBody`` may be iterated once.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import AsyncGenerator, AsyncIterator

import trio

__all__ = ["FILE_IO_LIMITER", "SLICE", "FileBody", "open_file", "read_slices"]

#: Bytes read per thread hop.  The HTTP/1 driver writes slices of 1 MiB (its write timeout is
#: per slice); reading the same size keeps one read per write.
SLICE = 1024 * 1024
#: File reads run in threads, at most this many at once (the disk does not get faster with more).
FILE_IO_LIMITER = trio.CapacityLimiter(16)


class FileBody:
    """``length`` bytes of the file at ``path`` from ``offset`` (None: to the end)."""

    __slots__ = ("path", "offset", "length", "_iterator")

    def __init__(self, path: str | os.PathLike[str], offset: int = 0, length: int | None = None) -> None:
        if type(offset) is not int or offset < 0:
            raise ValueError(f"offset must be an int >= 0, got {offset!r}")
        if length is not None and (type(length) is not int or length < 0):
            raise ValueError(f"length must be None or an int >= 0, got {length!r}")
        self.path = os.fspath(path)
        self.offset = offset
        self.length = length
        self._iterator: AsyncGenerator[bytes, None] | None = None

    def __aiter__(self) -> AsyncIterator[bytes]:
        if self._iterator is not None:
            raise RuntimeError("a FileBody can be iterated only once")
        self._iterator = self._slices()
        return self._iterator

    async def _slices(self) -> AsyncGenerator[bytes, None]:
        fd = await open_file(self.path)
        try:
            async for data in read_slices(fd, self.offset, self.length):
                yield data
        finally:
            os.close(fd)

    async def aclose(self) -> None:
        """Close the file if iteration started (the server calls this once, after the response)."""
        iterator = self._iterator
        if iterator is not None:
            await iterator.aclose()
        else:
            await trio.lowlevel.checkpoint()

    def __repr__(self) -> str:
        return f"FileBody({self.path!r}, offset={self.offset}, length={self.length})"


def _open_regular(path: str) -> int:
    # O_NONBLOCK: opening a FIFO must not wait for a writer (it has no effect on regular files).
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    mode = os.fstat(fd).st_mode
    if stat.S_ISREG(mode):
        return fd
    os.close(fd)
    raise OSError(errno.EISDIR if stat.S_ISDIR(mode) else errno.EINVAL, "not a regular file", path)


async def open_file(path: str) -> int:
    """Open the regular file at ``path`` read-only, in a worker thread (``open`` may wait on
    the disk); the caller closes the descriptor.  OSError when it is missing, unreadable or
    not a regular file (a directory or a FIFO would fail later, or block)."""
    return await trio.to_thread.run_sync(_open_regular, path, limiter=FILE_IO_LIMITER)


async def read_slices(fd: int, offset: int, length: int | None) -> AsyncGenerator[bytes, None]:
    """``length`` bytes (None: to the end) of the open file ``fd`` from ``offset``, in slices of
    :data:`SLICE` read with ``os.pread`` in a worker thread.  Stops early at the end of the file
    (if it shrank, the server's length check says so).  Does not close ``fd``."""
    position = offset
    remaining = length
    while remaining is None or remaining > 0:
        size = SLICE if remaining is None else min(SLICE, remaining)
        data = await trio.to_thread.run_sync(os.pread, fd, size, position, limiter=FILE_IO_LIMITER)
        if not data:
            return
        position += len(data)
        if remaining is not None:
            remaining -= len(data)
        yield data
