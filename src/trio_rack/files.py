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

Resource handling: the file is opened when iteration starts and closed when it ends, fails or
the server calls :meth:`FileBody.aclose` (it always does, once, after the response).  A
``FileBody`` may be iterated once.
"""

from __future__ import annotations

import os
from collections.abc import AsyncGenerator, AsyncIterator

import trio

__all__ = ["FileBody", "FILE_IO_LIMITER", "SLICE"]

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
        fd = await trio.to_thread.run_sync(os.open, self.path, os.O_RDONLY | os.O_CLOEXEC, limiter=FILE_IO_LIMITER)
        try:
            position = self.offset
            remaining = self.length
            while remaining is None or remaining > 0:
                size = SLICE if remaining is None else min(SLICE, remaining)
                data = await trio.to_thread.run_sync(os.pread, fd, size, position, limiter=FILE_IO_LIMITER)
                if not data:
                    return  # end of file (early if it shrank: the server's length check says so)
                position += len(data)
                if remaining is not None:
                    remaining -= len(data)
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
