"""``Deflater(app, ...)``: compress responses for clients that accept it (Rack::Deflater).

gzip always (zlib), brotli when the ``brotli`` package is installed, zstd when ``zstandard``
is (``pip install 'trio-rack[compression]'``).  The coding is chosen from ``Accept-Encoding``
with its q-values (:func:`trio_rack._encoding.choose_encoding`); ties go to ``encodings``'
order (br, zstd, gzip by default).

A response is compressed when all of these hold:

* its media type is compressible: ``text/*`` (``text/event-stream`` included), JSON,
  JavaScript, XML, SVG, ``+json``/``+xml`` types by default (``content_types=`` replaces the
  list; ``"text/*"`` style wildcards work);
* the status has a body and is not partial: not 1xx, 204, 206 or 304;
* it is not already encoded (``content-encoding`` other than ``identity``), carries no
  ``cache-control: no-transform``, and is not a partial hijack (``rack.hijack``: the app
  speaks its own protocol) or a full one;
* its body does not name a file (a ``path`` attribute, as :class:`~trio_rack.FileBody` has):
  those go out with ``sendfile``, which compressing would defeat — precompress them instead
  (``Files`` serves ``.br``/``.gz`` siblings) or pass ``compress_files=True``;
* its size, when known (a buffered body, or the app's ``content-length``), is at least
  ``min_size`` (1 KiB by default; ``min_size=0`` compresses everything).  A streamed body of
  unknown size is compressed.

Every response of a compressible type gets ``vary: accept-encoding``, compressed or not, so a
cache never hands a compressed body to a client that did not ask for it.  Compressed
responses lose ``content-length`` (buffered ones get the new length from the server), and a
strong ``etag`` becomes weak (the bytes changed, the meaning did not; nginx does the same).

Streaming: a streamed body (iterable, async iterable or ``body(stream)``) is compressed chunk by
chunk, **with a flush after every write**, so each chunk the app sends reaches the client as
soon as it would have uncompressed: SSE events and progress lines are never held back in the
compressor.  ``HEAD`` gets GET's headers: a body the app returned is compressed to know its
length (the server then drops it), otherwise the length is left out.

Large buffered bodies (over :data:`THREAD_THRESHOLD`) are compressed in a worker thread, so
the event loop never stalls on CPU work.

Resource handling: the app's body is closed by the Deflater's body when the server closes
that (or at once, after a buffered body was compressed); the Deflater never touches
``env["rack.input"]``.
"""

from __future__ import annotations

import fnmatch
import zlib
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Mapping
from typing import Any, Protocol

import trio

from ._encoding import choose_encoding, merge_vary
from .app.response import close_body
from .types import App, Env, Response

__all__ = ["Deflater", "DEFAULT_CONTENT_TYPES", "available_encodings"]

import importlib


def _optional(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError:  # pragma: no cover - optional
        return None


_brotli = _optional("brotli")
_zstd = _optional("zstandard")

DEFAULT_CONTENT_TYPES: tuple[str, ...] = (
    "text/*",
    "application/json",
    "application/*+json",
    "application/javascript",
    "application/x-javascript",
    "application/ecmascript",
    "application/xml",
    "application/*+xml",
    "image/svg+xml",
    "application/wasm",
)
#: Buffered bodies larger than this are compressed in a worker thread.
THREAD_THRESHOLD = 256 * 1024
_LIMITER = trio.CapacityLimiter(2)
_NO_BODY = (204, 206, 304)


class _Compressor(Protocol):
    def compress(self, data: bytes) -> bytes: ...
    def flush(self) -> bytes: ...
    def finish(self) -> bytes: ...


class _Gzip:
    def __init__(self, level: int) -> None:
        self._z = zlib.compressobj(level, zlib.DEFLATED, 31)

    def compress(self, data: bytes) -> bytes:
        return self._z.compress(data)

    def flush(self) -> bytes:
        return self._z.flush(zlib.Z_SYNC_FLUSH)

    def finish(self) -> bytes:
        return self._z.flush(zlib.Z_FINISH)


class _Brotli:
    def __init__(self, quality: int) -> None:
        assert _brotli is not None
        self._c = _brotli.Compressor(quality=quality)

    def compress(self, data: bytes) -> bytes:
        return bytes(self._c.process(data))

    def flush(self) -> bytes:
        return bytes(self._c.flush())

    def finish(self) -> bytes:
        return bytes(self._c.finish())


class _Zstd:
    def __init__(self, level: int) -> None:
        assert _zstd is not None
        self._c = _zstd.ZstdCompressor(level=level).compressobj()

    def compress(self, data: bytes) -> bytes:
        return bytes(self._c.compress(data))

    def flush(self) -> bytes:
        return bytes(self._c.flush(_zstd.COMPRESSOBJ_FLUSH_BLOCK))

    def finish(self) -> bytes:
        return bytes(self._c.flush(_zstd.COMPRESSOBJ_FLUSH_FINISH))


def available_encodings() -> tuple[str, ...]:
    """The codings this process can produce, in the default order of preference."""
    return tuple(c for c, ok in (("br", _brotli is not None), ("zstd", _zstd is not None), ("gzip", True)) if ok)


def _header(headers: Mapping[str, Any], name: str) -> str | None:
    value = headers.get(name)
    if isinstance(value, (list, tuple)):
        return ", ".join(value)
    return value if isinstance(value, str) else None



def _any(value: Any) -> Any:
    return value


class Deflater:
    """Compress ``app``'s responses; see the module docstring for when and how.

    ``min_size``: smallest known size compressed; ``content_types``: compressible media types
    (wildcards allowed); ``encodings``: codings offered, in order of preference (those not
    installed are skipped); ``level``: gzip level (brotli quality 4 and zstd level 3 are
    fixed: good ratios at streaming speeds); ``compress_files``: compress bodies that name a
    file too (they then lose ``sendfile``).
    """

    def __init__(
        self,
        app: App,
        *,
        min_size: int = 1024,
        content_types: Iterable[str] = DEFAULT_CONTENT_TYPES,
        encodings: Iterable[str] | None = None,
        level: int = 6,
        compress_files: bool = False,
    ) -> None:
        self.app = app
        self.compress_files = compress_files
        self.min_size = min_size
        self.content_types = tuple(t.lower() for t in content_types)
        have = available_encodings()
        wanted = tuple(encodings) if encodings is not None else have
        unknown = set(wanted) - {"br", "zstd", "gzip"}
        if unknown:
            raise ValueError(f"unknown encodings {sorted(unknown)}; choose from br, zstd, gzip")
        self.encodings = tuple(e for e in wanted if e in have)
        self.level = level

    def compressible(self, content_type: str | None) -> bool:
        if not content_type:
            return False
        media = content_type.partition(";")[0].strip().lower()
        return any(fnmatch.fnmatchcase(media, pattern) for pattern in self.content_types)

    def _compressor(self, coding: str) -> _Compressor:
        if coding == "br":
            return _Brotli(4)
        if coding == "zstd":
            return _Zstd(3)
        return _Gzip(self.level)

    async def __call__(self, env: Env) -> Response:
        status, headers, body = await self.app(env)
        body = _any(body)
        if not isinstance(headers, Mapping) or "rack.hijack" in headers or type(status) is not int:
            return status, headers, body  # hijacks (and broken triples, for the server to refuse)
        if not self.compressible(_header(headers, "content-type")):
            return status, headers, body
        headers = dict(headers)
        headers["vary"] = merge_vary(headers.get("vary"))
        encoding = _header(headers, "content-encoding")
        cache_control = (_header(headers, "cache-control") or "").lower()
        if (
            status < 200
            or status in _NO_BODY
            or (encoding is not None and encoding.strip().lower() != "identity")
            or "no-transform" in cache_control
        ):
            return status, headers, body
        if hasattr(body, "path") and not self.compress_files:
            return status, headers, body  # sendfile beats compression; precompress files
        coding = choose_encoding(env.get("HTTP_ACCEPT_ENCODING"), self.encodings)
        if coding is None:
            return status, headers, body
        buffered = isinstance(body, (list, tuple))
        declared = _header(headers, "content-length")
        if buffered:
            size = sum(len(chunk) for chunk in body if isinstance(chunk, (bytes, bytearray, memoryview)))
            if env.get("REQUEST_METHOD") == "HEAD" and size == 0 and declared and declared.isdigit():
                size = int(declared)  # the app answered HEAD without a body
            if size < self.min_size:
                return status, headers, body
        elif declared and declared.isdigit() and int(declared) < self.min_size:
            return status, headers, body

        headers.pop("content-length", None)
        headers["content-encoding"] = coding
        etag = _header(headers, "etag")
        if etag and not etag.startswith("W/"):
            headers["etag"] = "W/" + etag
        if buffered:
            chunks = [bytes(c) for c in body]
            await close_body(body)
            if env.get("REQUEST_METHOD") == "HEAD" and not any(chunks):
                return status, headers, _Empty()  # length unknown: leave it out
            data = b"".join(chunks)
            compressor = self._compressor(coding)

            def run() -> bytes:
                return compressor.compress(data) + compressor.finish()

            if len(data) > THREAD_THRESHOLD:
                compressed = await trio.to_thread.run_sync(run, limiter=_LIMITER)
            else:
                compressed = run()
            return status, headers, [compressed]
        if callable(body) and not hasattr(body, "__aiter__") and not hasattr(body, "__iter__"):
            return status, headers, _CompressedStreamingBody(body, self._compressor(coding))
        return status, headers, _CompressedIterable(body, self._compressor(coding))


class _Empty:
    """An empty streamed body (so the server adds no ``content-length: 0`` to a HEAD)."""

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        raise StopAsyncIteration


class _CompressedIterable:
    """An async iterable compressing the app's (async) iterable, flushing after each chunk."""

    def __init__(self, body: Any, compressor: _Compressor) -> None:
        self._body = body
        self._compressor = compressor
        self._iterator: AsyncGenerator[bytes, None] | None = None
        self._closed = False

    def __aiter__(self) -> AsyncIterator[bytes]:
        if self._iterator is not None:
            raise RuntimeError("a response body can be iterated only once")
        self._iterator = self._chunks()
        return self._iterator

    async def _chunks(self) -> AsyncGenerator[bytes, None]:
        compressor = self._compressor
        if hasattr(self._body, "__aiter__"):
            async for chunk in self._body:
                if chunk:
                    yield compressor.compress(bytes(chunk)) + compressor.flush()
        else:
            for chunk in self._body:
                if chunk:
                    yield compressor.compress(bytes(chunk)) + compressor.flush()
        yield compressor.finish()

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            if self._iterator is not None:
                await self._iterator.aclose()
            await close_body(self._body)


class _CompressingStream(trio.abc.Stream):
    """What the app's streaming body writes to: compressed and flushed on every send_all."""

    def __init__(self, stream: trio.abc.Stream, compressor: _Compressor) -> None:
        self._stream = stream
        self._compressor = compressor
        self._finished = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._finished:
            raise trio.ClosedResourceError("the response stream is closed")
        if not data:
            await self._stream.send_all(b"")  # "send the head now" keeps its meaning
            return
        await self._stream.send_all(self._compressor.compress(bytes(data)) + self._compressor.flush())

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self._stream.receive_some(max_bytes)

    async def finish(self) -> None:
        if not self._finished:
            self._finished = True
            await self._stream.send_all(self._compressor.finish())

    async def aclose(self) -> None:
        await self.finish()
        await self._stream.aclose()


class _CompressedStreamingBody:
    """``body(stream)`` whose stream compresses; ends the compressed stream when the app's
    body returns (not when it raises: the server then aborts the response visibly)."""

    def __init__(self, body: Any, compressor: _Compressor) -> None:
        self._body = body
        self._compressor = compressor
        self._closed = False

    async def __call__(self, stream: trio.abc.Stream) -> None:
        inner = _CompressingStream(stream, self._compressor)
        await self._body(inner)
        await inner.finish()

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            await close_body(self._body)
