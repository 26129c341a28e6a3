"""Serve WSGI (PEP 3333) apps on trio-rack, each request in a worker thread.

Theory of operation.  A WSGI app blocks, so it never runs on the event loop: each request
calls the app (and iterates its response) in ``trio.to_thread.run_sync`` under a
``CapacityLimiter`` of ``threads`` (``--threads``, default 10, per worker process).  A slow
request holds one thread; the other connections, hijacks and streams stay tasks on the loop
(Puma's answer to the same problem).  When all threads are busy, further requests wait for
one, on the loop, without blocking it.

The thread talks to the loop only through ``trio.from_thread``:

* ``wsgi.input`` (:class:`InputStream`) reads the request body on demand, one piece per
  ``trio.from_thread.run(rack_input.receive_some)``; nothing is buffered beyond what a
  ``readline`` needs.  ``wsgi.input_terminated`` is True: ``read()`` returns ``b""`` at the
  body's end whatever the framing (chunked uploads included).
* The response head is held until the first non-empty body item (or ``write()``, or the end
  of the iterable), as PEP 3333 asks, so ``start_response(..., exc_info)`` can still replace
  it.  Then the head goes to the loop and :meth:`WSGIAdapter.__call__` returns.  Items the
  thread produces before the loop has taken the head are put aside (at most
  :data:`PENDING_LIMIT` bytes) without the thread waiting: if the iterable has ended by then
  — a list, or Werkzeug's one-chunk responses — the response goes out whole, with
  ``content-length``, and the thread is already free (an iterator whose ``length_hint`` says
  it is at its end after its one chunk does not wake the loop before that end).  Later items go through an unbuffered
  memory channel to the streaming body, whose ``send_all`` is the back-pressure: a thread
  writing to a slow client waits.  Nothing waits for a later item to send an earlier one.
  The channel is opened (on the loop) only when a response needs it — a streamed one, or a
  thread past :data:`PENDING_LIMIT` before the head was taken — since opening one costs
  more than the rest of a whole response's bookkeeping.
* A client that leaves makes the thread's next write raise :class:`ClientDisconnected` (an
  ``OSError``); a thread cannot be cancelled, so a request stuck elsewhere (a ``sleep``, a
  database call) runs to its end before its thread is free, and shutdown waits for it.
* The iterable's ``close()`` is called exactly once, in the thread, however the response
  ended (client gone included).

The thread task runs in the server's request-scoped nursery (``trio_rack_request_nursery``,
as for ASGI), because it outlives the rack call that returned the head.

Resource handling: the server closes ``rack.input`` and ends the response; the adapter closes
the channel's receiving end when the body ends, and the app's iterable in the thread.
"""

from __future__ import annotations

import io
import logging
import operator
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from urllib.parse import unquote_to_bytes

import trio

from .files import FileBody

__all__ = ["ClientDisconnected", "FileWrapper", "InputStream", "WSGIAdapter", "build_environ"]

log = logging.getLogger("trio_rack.error")

#: The largest piece of request body one read from the loop fetches.
READ_SIZE = 64 * 1024
#: Body bytes put aside for the loop before the rack call has taken the response head.
PENDING_LIMIT = 64 * 1024

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class ClientDisconnected(OSError):
    """Raised in the WSGI thread by a write after the client left."""


class InputStream(io.RawIOBase):
    """``wsgi.input``: a blocking, read-only file over ``env["rack.input"]`` (in the thread).

    ``read(n)``, ``read()``, ``readline(limit)``, ``readlines(hint)`` and iteration, as PEP
    3333 lists them; each fetch from the loop is one ``receive_some``.
    """

    def __init__(self, rack_input: Any) -> None:
        super().__init__()
        self._input = rack_input
        self._buffer = bytearray()
        self._eof = False

    def readable(self) -> bool:
        return True

    def _fill(self) -> bool:
        """Fetch one more piece; False at the end of the body."""
        if self._eof:
            return False
        try:
            data = trio.from_thread.run(self._input.receive_some, READ_SIZE)
        except trio.BrokenResourceError as exc:
            raise OSError(f"request body: {exc}") from exc
        except (trio.ClosedResourceError, trio.Cancelled, trio.RunFinishedError) as exc:
            raise ClientDisconnected("the request is over") from exc
        if not data:
            self._eof = True
            return False
        self._buffer += data
        return True

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            while self._fill():
                pass
            data = bytes(self._buffer)
            self._buffer.clear()
            return data
        while len(self._buffer) < size and self._fill():
            pass
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    def readinto(self, target: Any) -> int:
        data = self.read(len(target))
        target[: len(data)] = data
        return len(data)

    def readline(self, size: int | None = -1) -> bytes:
        limit = size if size is not None and size >= 0 else None
        start = 0
        while True:
            end = self._buffer.find(b"\n", start)
            if end >= 0:
                cut = end + 1
                break
            if limit is not None and len(self._buffer) >= limit:
                cut = limit
                break
            start = len(self._buffer)
            if not self._fill():
                cut = len(self._buffer)
                break
        if limit is not None:
            cut = min(cut, limit)
        data = bytes(self._buffer[:cut])
        del self._buffer[:cut]
        return data

    def readlines(self, hint: int | None = -1) -> list[bytes]:
        lines = []
        total = 0
        while line := self.readline():
            lines.append(line)
            total += len(line)
            if hint is not None and 0 < hint <= total:
                break
        return lines

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        line = self.readline()
        if not line:
            raise StopIteration
        return line


class FileWrapper:
    """``wsgi.file_wrapper``: a file the server sends from its path (as a
    :class:`~trio_rack.files.FileBody`, ``sendfile`` where the driver does it) when it is a
    regular file opened by name in binary mode; otherwise iterated in blocks in the thread.
    Closed with the response either way."""

    def __init__(self, filelike: Any, block_size: int = 256 * 1024) -> None:
        self.filelike = filelike
        self.block_size = block_size
        close = getattr(filelike, "close", None)
        if close is not None:
            self.close = close

    def __iter__(self) -> Iterator[bytes]:
        while block := self.filelike.read(self.block_size):
            yield block


def _file_path(result: Any) -> tuple[str, int] | None:
    """(path, offset) when ``result`` is our FileWrapper over a regular file opened by name."""
    if type(result) is not FileWrapper:
        return None
    filelike = result.filelike
    name = getattr(filelike, "name", None)
    if not isinstance(name, str) or "b" not in getattr(filelike, "mode", ""):
        return None
    try:
        import stat

        if not stat.S_ISREG(os.fstat(filelike.fileno()).st_mode):
            return None
        return name, filelike.tell()
    except (OSError, ValueError, AttributeError):
        return None


_APP_LOG = logging.getLogger("trio_rack.app")


class _ErrorStream:
    """``wsgi.errors``: a text stream whose lines go to the ``trio_rack.app`` logger."""

    def __init__(self) -> None:
        self._log = _APP_LOG
        self._partial = ""

    def write(self, text: str) -> int:
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        for line in lines:
            self._log.error("%s", line)
        return len(text)

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if self._partial:
            self._log.error("%s", self._partial)
            self._partial = ""


_SKIP = frozenset(
    {"rack.input", "rack.errors", "rack.hijack", "rack.hijack?", "rack.early_hints", "rack.response_finished"}
)


def build_environ(env: dict[str, Any], *, root_path: str = "") -> dict[str, Any]:
    """The WSGI environ for a trio-rack ``env`` (without ``wsgi.input``/``wsgi.errors``).

    ``PATH_INFO`` is percent-decoded to bytes and carried as latin-1 text (PEP 3333's "bytes in
    a str"); with ``root_path`` it becomes ``SCRIPT_NAME`` and is cut from ``PATH_INFO`` if the
    request kept the prefix.  Every CGI key is a ``str`` (``SERVER_PORT`` too).
    """
    environ: dict[str, Any] = {}
    for key, value in env.items():
        if key.isupper():
            environ[key] = value
        elif key == "trio_rack.shutdown" or (key.startswith("rack.") and key not in _SKIP):
            environ[key] = value  # not the request's nursery or cancel scope: loop objects, not for threads
    path = unquote_to_bytes(str(env.get("PATH_INFO", ""))).decode("latin-1")
    if root_path:
        if path == root_path or path.startswith(root_path + "/"):
            path = path[len(root_path) :]
    environ["SCRIPT_NAME"] = root_path
    environ["PATH_INFO"] = path
    environ["SERVER_PORT"] = str(env.get("SERVER_PORT", ""))
    environ["wsgi.version"] = (1, 0)
    environ["wsgi.url_scheme"] = env.get("rack.url_scheme", "http")
    environ["wsgi.multithread"] = True
    environ["wsgi.multiprocess"] = False
    environ["wsgi.run_once"] = False
    environ["wsgi.input_terminated"] = True
    environ["wsgi.file_wrapper"] = FileWrapper
    return environ


def _status_code(status: Any) -> int:
    if not isinstance(status, str) or len(status) < 3 or not status[:3].isdigit():
        raise ValueError(f"WSGI status must be a str like '200 OK', got {status!r:.40}")
    return int(status[:3])


#: Iterators whose ``length_hint`` is exact (the builtin list's and tuple's).
_EXACT_ITERATORS: tuple[type[Any], ...] = (type(iter([])), type(iter(())))


class _Response:
    """One request's bridge between the WSGI thread and the loop."""

    def __init__(self) -> None:
        # the channel to the streaming body, opened on the loop when first needed (channel())
        self.send: trio.MemorySendChannel[bytes] | None = None
        self.receive: trio.MemoryReceiveChannel[bytes] | None = None
        self.thread_done = False  # (loop side) the thread has returned: a new channel is closed at once
        self.status: str | None = None
        self.headers: list[tuple[str, str]] = []
        self.head_sent = False
        self.head_ready = trio.Event()
        self.whole: list[bytes] | FileBody | None = None
        self.error: BaseException | None = None
        self.finished = False  # (thread side) the iterable ended normally
        # Shared with the thread, under ``lock`` (held for a few list operations only): body
        # chunks put aside before the rack call took the head, whether it has, and whether the
        # iterable had ended by then (then the response goes out whole).
        self.lock = threading.Lock()
        self.pending: list[bytes] = []
        self.pending_size = 0
        self.taken = False
        self.complete = False
        self.token = trio.lowlevel.current_trio_token()

    def channel(self) -> trio.MemorySendChannel[bytes]:
        """(On the loop) the send side of the body channel, opened on first use."""
        if self.send is None:
            self.send, self.receive = trio.open_memory_channel[bytes](0)
            if self.thread_done:
                self.send.close()  # nothing more will come: the body ends after the pending chunks
        return self.send

    async def _send_chunk(self, data: bytes) -> None:
        await self.channel().send(data)

    # ---------------------------------------------------------------- in the thread

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], None]:
        if exc_info is not None:
            try:
                if self.head_sent:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None  # no reference cycle (PEP 3333)
        elif self.status is not None:
            raise AssertionError("start_response called a second time without exc_info")
        _status_code(status)
        for pair in headers:
            if not (isinstance(pair, tuple) and len(pair) == 2 and all(isinstance(p, str) for p in pair)):
                raise TypeError(f"WSGI headers must be (str, str) tuples, got {pair!r:.60}")
        self.status, self.headers = status, list(headers)
        return self.write

    def _commit_head(self) -> None:
        if self.status is None:
            raise AssertionError("the WSGI app sent body data before calling start_response")
        self.head_sent = True  # from now on start_response(exc_info) re-raises

    def write(self, data: bytes) -> None:
        """``write()``, and each item of the iterable: hand ``data`` to the loop."""
        self._hand_over(data, wake=True)

    def _hand_over(self, data: bytes, *, wake: bool) -> None:
        """Until the rack call has taken the head, a chunk is only put aside (no waiting for the
        client; at most PENDING_LIMIT bytes), and the first one wakes the rack call — unless
        ``wake`` is false: the iterable says it has nothing more (a list's or tuple's iterator
        at its end), so the end of :meth:`run` wakes it with the response whole.  After that it
        goes through the channel, waiting for the client to take it (back-pressure).
        """
        if not isinstance(data, (bytes, bytearray)):
            raise TypeError(f"WSGI body data must be bytes, got {type(data).__name__}")
        self._commit_head()
        if not data:
            return
        data = bytes(data)
        with self.lock:
            stashed = not self.taken and self.pending_size < PENDING_LIMIT
            if stashed:
                self.pending.append(data)
                self.pending_size += len(data)
                first = len(self.pending) == 1
        try:
            if stashed:
                if first and wake:  # wake the rack call without waiting for the loop
                    self.token.run_sync_soon(self.head_ready.set)
                return
            trio.from_thread.run(self._send_chunk, data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.Cancelled, trio.RunFinishedError) as exc:
            raise ClientDisconnected("the client went away") from exc

    def run(self, app: WSGIApp, environ: dict[str, Any]) -> None:
        result = app(environ, self.start_response)
        try:
            path = _file_path(result) if not self.head_sent else None
            if path is not None:  # wsgi.file_wrapper over a real file: let the server send it
                if self.status is None:
                    raise AssertionError("the WSGI app returned without calling start_response")
                self.whole = FileBody(*path)
                self.head_sent = True
                return
            if isinstance(result, (list, tuple)) and not self.head_sent:
                chunks = [bytes(c) for c in result]
                if self.status is None:
                    raise AssertionError("the WSGI app returned without calling start_response")
                self.whole = chunks  # returning wakes the rack call
                self.head_sent = True
                return
            items = iter(result)
            exact = type(items) in _EXACT_ITERATORS
            for item in items:
                if item:
                    # A list's or tuple's iterator knows exactly what is left: after its last
                    # chunk the response goes out whole, with content-length, whoever runs
                    # first.  Any other iterator's hint could be wrong (a __len__ of 0 while
                    # more follows would leave the rack call asleep): it wakes the loop at once.
                    self._hand_over(item, wake=not exact or operator.length_hint(items) != 0)
            self._commit_head()
            self.finished = True
            with self.lock:
                self.complete = True  # returning wakes the rack call
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()


class WSGIAdapter:
    """A trio-rack app serving the WSGI app ``app`` from a pool of ``threads`` threads."""

    trio_rack_request_nursery = True

    def __init__(self, app: WSGIApp, *, threads: int = 10, root_path: str = "") -> None:
        if threads < 1:
            raise ValueError("threads must be at least 1")
        self.app = app
        self.limiter = trio.CapacityLimiter(threads)
        self.root_path = root_path.rstrip("/")

    def __repr__(self) -> str:
        return f"WSGIAdapter({self.app!r})"

    async def __call__(self, env: dict[str, Any]) -> tuple[int, Any, Any]:
        nursery = env.get("trio_rack.nursery")
        if nursery is None:
            raise RuntimeError("this server gives no env['trio_rack.nursery']: cannot run a WSGI app")
        environ = build_environ(env, root_path=self.root_path)
        environ["wsgi.input"] = InputStream(env["rack.input"])
        environ["wsgi.errors"] = _ErrorStream()
        response = _Response()
        done = trio.Event()

        async def run_in_thread() -> None:
            try:
                await trio.to_thread.run_sync(response.run, self.app, environ, limiter=self.limiter)
            except Exception as exc:
                response.error = exc
                if response.finished and not isinstance(exc, ClientDisconnected):
                    # the body was complete: only close() failed, which the server's log of an
                    # aborted response would not show (before that, the body raises and is logged)
                    log.error("WSGI app's close() failed", exc_info=exc)
            finally:
                response.thread_done = True
                if response.send is not None:
                    response.send.close()
                done.set()
                response.head_ready.set()  # wakes the rack call when the app ended without a head

        nursery.start_soon(run_in_thread)
        await response.head_ready.wait()
        with response.lock:
            response.taken = True
            pending, response.pending = response.pending, []
            complete = response.complete
        if response.whole is None and not pending and not complete:
            if response.error is not None:
                raise response.error
            raise RuntimeError("the WSGI app returned without a response")
        assert response.status is not None
        headers: dict[str, Any] = {}
        for name, value in response.headers:
            key = name.lower()
            old = headers.get(key)
            headers[key] = value if old is None else (old + [value] if isinstance(old, list) else [old, value])
        status = _status_code(response.status)
        if response.whole is not None:
            return status, headers, response.whole
        if complete:  # the iterable ended before the head was taken: send it whole
            return status, headers, pending
        response.channel()
        receive = response.receive
        assert receive is not None

        async def body(stream: trio.abc.Stream) -> None:
            with receive:
                for chunk in pending:
                    await stream.send_all(chunk)
                async for chunk in receive:
                    await stream.send_all(chunk)
            await done.wait()
            if not response.finished:
                error = response.error
                raise RuntimeError(f"the WSGI app failed while streaming its response: {error!r}") from error

        return status, headers, body


