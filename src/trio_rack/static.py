"""Static files: ``Files(root)`` serves a directory, ``Static(app, urls=..., root=...)`` some prefixes.

``Files`` answers ``GET`` and ``HEAD`` (others get 405) with a :class:`~trio_rack.FileBody`, so
the server can send the file with ``os.sendfile`` (plain TCP) or in slices (TLS, HTTP/2):

* ``content-type`` from the extension (:mod:`mimetypes`; ``text/*`` and JavaScript get
  ``charset=utf-8``), ``content-length``, ``last-modified``, a strong ``etag`` (mtime and size,
  as nginx makes it), ``accept-ranges: bytes``, and ``cache-control`` when configured;
* ``If-None-Match`` (weak comparison) and, without it, ``If-Modified-Since`` give ``304``;
* one ``Range`` (``bytes=a-b``, ``a-``, ``-n``) gives ``206`` with ``content-range``; ranges
  past the end give ``416`` with ``content-range: bytes */SIZE``; a multi-range request or a
  syntactically invalid one gets the whole file (RFC 9110 §14.2 lets a server ignore them);
  ``If-Range`` that does not match turns the range off;
* precompressed siblings (``app.js.br``, ``app.js.gz``) are served when ``Accept-Encoding``
  allows them, with ``content-encoding`` and the original's type; every response for a file
  that has one carries ``vary: accept-encoding``.  Range requests get the identity file (byte
  ranges of a compressed variant surprise clients);
* a directory is served by its ``index`` file, after a 301 to the path with a trailing slash
  (so the page's relative links resolve inside the directory).

Traversal is refused before the file system is touched, in every spelling: ``..`` segments,
their percent-encodings (``%2e%2e``, ``.%2E``), an encoded slash (``%2f``: no segment may hold
one), backslashes raw or encoded (``\\``, ``%5c``: a Windows separator), all 404; bytes no path
may hold (NUL, ``%00``) are a 400.  After that, the resolved real path (symlinks followed) must
lie inside the real root, else 404: a symlink leaving the root is never followed out of it.
The check and the ``open`` are separate steps, so the root must not be writable by whoever
the server is protecting it from (as for every static server that follows symlinks).

The file system work of one request (``realpath``, ``stat`` of the file and its variants)
runs in one worker-thread hop under :data:`trio_rack.files.FILE_IO_LIMITER`.
"""

from __future__ import annotations

import mimetypes
import os
import stat as stat_module
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import formatdate, parsedate_to_datetime
from typing import Any
from urllib.parse import unquote_to_bytes

import trio

from ._encoding import choose_encoding
from .files import FILE_IO_LIMITER, FileBody
from .types import App, Env, Response

__all__ = ["Files", "Static"]

#: Precompressed sibling files, by coding, in our order of preference.
VARIANTS: tuple[tuple[str, str], ...] = (("br", ".br"), ("gzip", ".gz"))
_CHARSET_TYPES = ("application/javascript", "text/javascript")


class _Refused(Exception):
    def __init__(self, status: int) -> None:
        self.status = status


def _plain(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return status, {"content-type": "text/plain; charset=utf-8", **(headers or {})}, [message.encode() + b"\n"]


def safe_segments(path_info: str) -> list[str]:
    """The path's segments, decoded; raise _Refused(404 or 400) for any traversal spelling."""
    if path_info and not path_info.startswith("/"):
        raise _Refused(404)
    if "\\" in path_info or "%2f" in path_info.lower():
        raise _Refused(404)
    decoded = unquote_to_bytes(path_info)
    if b"\0" in decoded:
        raise _Refused(400)
    if b"\\" in decoded:
        raise _Refused(404)
    segments = [s for s in decoded.split(b"/") if s not in (b"", b".")]
    if b".." in segments:
        raise _Refused(404)
    return [os.fsdecode(s) for s in segments]


@dataclass(frozen=True, slots=True)
class _Found:
    path: str
    stat: os.stat_result
    variants: dict[str, tuple[str, os.stat_result]]
    is_dir_redirect: bool = False


def _inside(root: str, real: str) -> bool:
    return real == root or real.startswith(root + os.sep)


def _regular(root: str, candidate: str) -> tuple[str, os.stat_result] | None:
    real = os.path.realpath(candidate)
    if not _inside(root, real):
        return None
    try:
        st = os.stat(real)
    except OSError:
        return None
    return (real, st) if stat_module.S_ISREG(st.st_mode) else None


def _etag(st: os.stat_result) -> str:
    return f'"{st.st_mtime_ns // 1_000_000_000:x}-{st.st_size:x}"'


def _http_date(st: os.stat_result) -> str:
    return formatdate(st.st_mtime, usegmt=True)


def _parse_range(header: str, size: int) -> tuple[int, int] | None | bool:
    """(start, end) inclusive; False: unsatisfiable (416); None: ignore the header (200)."""
    unit, sep, spec = header.partition("=")
    if not sep or unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    first, last = first.strip(), last.strip()
    if not dash or (first and not first.isdigit()) or (last and not last.isdigit()) or not (first or last):
        return None
    if not first:  # suffix: the last N bytes
        n = int(last)
        if n == 0 or size == 0:
            return False
        return max(0, size - n), size - 1
    start = int(first)
    end = int(last) if last else size - 1
    if last and end < start:
        return None  # invalid range-spec: ignored
    if start >= size:
        return False
    return start, min(end, size - 1)


def _etag_matches(header: str, etag: str) -> bool:
    """If-None-Match's weak comparison (RFC 9110 §13.1.2)."""
    ours = etag.removeprefix("W/")
    for item in header.split(","):
        tag = item.strip()
        if tag == "*" or tag.removeprefix("W/") == ours:
            return True
    return False


class Files:
    """Serve the files under ``root`` by ``PATH_INFO``; see the module docstring.

    ``cache_control``: a ``cache-control`` value for every file response (None: none);
    ``headers``: more headers for every file response; ``index``: a directory's file (None:
    directories are 404); ``precompressed``: look for ``.br``/``.gz`` siblings.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        cache_control: str | None = None,
        headers: dict[str, str] | None = None,
        index: str | None = "index.html",
        precompressed: bool = True,
    ) -> None:
        self.root = os.path.realpath(os.fspath(root))
        if not os.path.isdir(self.root):
            raise ValueError(f"static root {os.fspath(root)!r} is not a directory")
        self.cache_control = cache_control
        self.headers = dict(headers or {})
        self.index = index
        self.precompressed = precompressed
        self._types = mimetypes.MimeTypes()

    def _lookup(self, segments: Sequence[str]) -> _Found | None:
        """Blocking: find the file (or the directory's index) and its variants, inside root."""
        root = self.root
        candidate = os.path.join(root, *segments)
        real = os.path.realpath(candidate)
        if not _inside(root, real):
            return None
        try:
            st = os.stat(real)
        except OSError:
            return None
        if stat_module.S_ISDIR(st.st_mode):
            if self.index is None:
                return None
            found = _regular(root, os.path.join(real, self.index))
            if found is None:
                return None
            candidate, (real, st) = os.path.join(candidate, self.index), found
            redirect = True
        elif stat_module.S_ISREG(st.st_mode):
            redirect = False
        else:
            return None
        variants: dict[str, tuple[str, os.stat_result]] = {}
        if self.precompressed:
            for coding, ext in VARIANTS:
                variant = _regular(root, candidate + ext)
                if variant is not None:
                    variants[coding] = variant
        return _Found(real, st, variants, redirect)

    def content_type(self, name: str) -> str:
        kind, _ = self._types.guess_type(name, strict=False)
        if kind is None:
            return "application/octet-stream"
        if kind.startswith("text/") or kind in _CHARSET_TYPES:
            return f"{kind}; charset=utf-8"
        return kind

    async def __call__(self, env: Env) -> Response:
        method = env.get("REQUEST_METHOD")
        if method not in ("GET", "HEAD"):
            return _plain(405, "Method Not Allowed", {"allow": "GET, HEAD"})
        path_info: str = env.get("PATH_INFO", "")
        try:
            segments = safe_segments(path_info)
        except _Refused as refused:
            return _plain(refused.status, "Bad Request" if refused.status == 400 else "Not Found")
        found = await trio.to_thread.run_sync(self._lookup, segments, limiter=FILE_IO_LIMITER)
        if found is None:
            return _plain(404, "Not Found")
        if found.is_dir_redirect and not path_info.endswith("/"):
            location = env.get("SCRIPT_NAME", "") + path_info + "/"
            if env.get("QUERY_STRING"):
                location += "?" + env["QUERY_STRING"]
            return _plain(301, f"Moved Permanently: {location}", {"location": location})
        return self.respond(env, found)

    def respond(self, env: Env, found: _Found) -> Response:
        """The response for a file found on disk (no I/O)."""
        range_header = env.get("HTTP_RANGE")
        coding = None
        path, st = found.path, found.stat
        if found.variants and range_header is None:
            coding = choose_encoding(env.get("HTTP_ACCEPT_ENCODING"), [c for c, _ in VARIANTS if c in found.variants])
            if coding is not None:
                path, st = found.variants[coding]
        etag = _etag(st)
        last_modified = _http_date(st)
        headers: dict[str, Any] = {}
        if self.cache_control is not None:
            headers["cache-control"] = self.cache_control
        if found.variants:
            headers["vary"] = "accept-encoding"
        headers["etag"] = etag
        headers["last-modified"] = last_modified
        headers.update(self.headers)

        if self._not_modified(env, etag, st):
            return 304, headers, []

        headers["content-type"] = self.content_type(found.path)
        headers["accept-ranges"] = "bytes"
        if coding is not None:
            headers["content-encoding"] = coding
        size = st.st_size
        if range_header is not None and self._range_applies(env, etag, last_modified):
            span = _parse_range(range_header, size)
            if span is False:
                headers.pop("content-type")
                return 416, {**headers, "content-range": f"bytes */{size}", "content-type": "text/plain"}, [
                    b"Range Not Satisfiable\n"
                ]
            if isinstance(span, tuple):
                start, end = span
                headers["content-range"] = f"bytes {start}-{end}/{size}"
                headers["content-length"] = str(end - start + 1)
                return 206, headers, FileBody(path, start, end - start + 1)
        headers["content-length"] = str(size)
        return 200, headers, FileBody(path, 0, size)

    @staticmethod
    def _not_modified(env: Env, etag: str, st: os.stat_result) -> bool:
        inm = env.get("HTTP_IF_NONE_MATCH")
        if inm is not None:
            return _etag_matches(inm, etag)
        ims = env.get("HTTP_IF_MODIFIED_SINCE")
        if ims:
            try:
                since = parsedate_to_datetime(ims)
            except (TypeError, ValueError, IndexError):
                return False
            if since.tzinfo is None:
                since = since.replace(tzinfo=UTC)
            return datetime.fromtimestamp(int(st.st_mtime), UTC) <= since
        return False

    @staticmethod
    def _range_applies(env: Env, etag: str, last_modified: str) -> bool:
        header = env.get("HTTP_IF_RANGE")
        if header is None:
            return True
        if_range = str(header).strip()
        if if_range.startswith(('"', "W/")):
            return if_range == etag  # strong comparison; a weak tag never matches
        return if_range == last_modified


class Static:
    """Serve ``urls`` prefixes from ``root``, pass everything else to ``app`` (Rack::Static).

    ``/assets/app.css`` with ``urls=["/assets"]`` is ``root/assets/app.css``: the URL path is
    kept, not stripped.  Prefixes match whole segments (``/assets`` does not serve
    ``/assetsx``); a listed file (``"/favicon.ico"``) matches only itself.  A miss under a
    prefix is a 404, unless ``cascade=True`` passes it on to ``app``.  Other keyword arguments
    go to :class:`Files`.
    """

    def __init__(
        self,
        app: App,
        *,
        urls: Iterable[str],
        root: str | os.PathLike[str],
        cascade: bool = False,
        **files_options: Any,
    ) -> None:
        self.app = app
        self.urls = [url.rstrip("/") or "/" for url in urls]
        if not self.urls or any(not url.startswith("/") for url in self.urls):
            raise ValueError("Static urls must be a non-empty list of paths starting with '/'")
        self.cascade = cascade
        self.files = Files(root, **files_options)

    def _matches(self, path: str) -> bool:
        for url in self.urls:
            if url == "/" or path == url or path.startswith(url + "/"):
                return True
        return False

    async def __call__(self, env: Env) -> Response:
        if self._matches(env.get("PATH_INFO", "")):
            response = await self.files(env)
            if not (self.cascade and response[0] in (404, 405)):
                return response
        return await self.app(env)
