"""``Request(env)``: the request as an object, and three response helpers.  Not a framework.

What it saves an app from writing: query-string and cookie parsing, case-insensitive header
lookup, the request URL as the client used it, and reading the body safely — bounded, as JSON,
or as a form.  Forms are parsed while the body arrives (``python-multipart``'s streaming
parser): a file part goes into memory up to ``spool_size`` bytes and to a temporary file past
that (the writes run in a worker thread), so an upload is never held in memory whole.

Bad input raises :class:`RequestError`, whose ``status`` (400, 413, 415) and ``response()``
answer the client::

    async def app(env):
        request = Request(env)
        try:
            data = await request.json(limit=64 * 1024)
        except RequestError as exc:
            return exc.response()
        return json_response({"hello": data.get("name")})

Routing is out of scope: that is what Starlette and friends are for.

Resource handling: uploaded files are closed (temporary files deleted) when the response is
finished, through ``env["rack.response_finished"]``, or earlier by ``await form.aclose()`` /
``async with form:``.
"""

from __future__ import annotations

import json as _json
import os
import tempfile
from collections.abc import Iterator, Mapping
from typing import IO, Any
from urllib.parse import parse_qsl, quote, unquote

import trio
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from .types import Env, Response

__all__ = [
    "FormData",
    "Headers",
    "QueryParams",
    "Request",
    "RequestError",
    "UploadFile",
    "json_response",
    "redirect",
    "text",
]

#: Default for body(), json() and the non-file part of form(): enough for any API payload.
DEFAULT_LIMIT = 1024 * 1024
#: File parts stay in memory up to this size, then move to a temporary file.
DEFAULT_SPOOL = 1024 * 1024
#: Query-string and form field count limit (a hash-flooding and CPU bound).
MAX_FIELDS = 1000
#: Disk writes and reads of spooled uploads run in threads, at most this many at once.
FILE_IO_LIMITER = trio.CapacityLimiter(8)


class RequestError(ValueError):
    """The request cannot be read as asked: ``status`` says why (400, 413 or 415)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status

    def response(self) -> Response:
        return text(f"{self}\n", status=self.status)


class QueryParams(Mapping[str, str]):
    """A multi-dict: ``params["a"]`` and ``get("a")`` give the first value, ``getall("a")`` all."""

    def __init__(self, items: list[tuple[str, Any]]) -> None:
        self._items = items
        self._first: dict[str, Any] = {}
        for key, value in items:
            self._first.setdefault(key, value)

    def __getitem__(self, key: str) -> Any:
        return self._first[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._first)

    def __len__(self) -> int:
        return len(self._first)

    def getall(self, key: str) -> list[Any]:
        return [value for name, value in self._items if name == key]

    def multi_items(self) -> list[tuple[str, Any]]:
        return list(self._items)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._items!r})"


class Headers(Mapping[str, str]):
    """The request headers from ``env``, looked up case-insensitively by their HTTP names."""

    def __init__(self, env: Env) -> None:
        self._env = env

    @staticmethod
    def _key(name: str) -> str:
        upper = name.upper().replace("-", "_")
        return upper if upper in ("CONTENT_TYPE", "CONTENT_LENGTH") else "HTTP_" + upper

    def __getitem__(self, name: str) -> str:
        value = self._env[self._key(name)]
        if not isinstance(value, str):
            raise KeyError(name)
        return value

    def __iter__(self) -> Iterator[str]:
        for key in self._env:
            if key.startswith("HTTP_"):
                yield key[5:].lower().replace("_", "-")
            elif key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
                yield key.lower().replace("_", "-")

    def __len__(self) -> int:
        return sum(1 for _ in self)


class UploadFile:
    """One uploaded file: in memory up to the spool size, then in a temporary file.

    ``await read()`` / ``await seek()`` work either way (disk I/O in a worker thread);
    ``filename``, ``content_type``, ``size`` and ``headers`` describe the part.
    """

    def __init__(self, filename: str, content_type: str, headers: dict[str, str], spool_size: int) -> None:
        self.filename = filename
        self.content_type = content_type
        self.headers = headers
        self.size = 0
        self._spool_size = spool_size
        self._memory: bytearray | None = bytearray()
        self._file: IO[bytes] | None = None
        self._position = 0
        self.closed = False

    @property
    def in_memory(self) -> bool:
        return self._file is None

    async def _write(self, data: bytes) -> None:
        self.size += len(data)
        if self._memory is not None and len(self._memory) + len(data) <= self._spool_size:
            self._memory += data
            return
        if self._file is None:
            held, self._memory = bytes(self._memory or b""), None
            self._file = await trio.to_thread.run_sync(_new_spool_file, held, limiter=FILE_IO_LIMITER)
        await trio.to_thread.run_sync(self._file.write, data, limiter=FILE_IO_LIMITER)

    async def seek(self, offset: int) -> None:
        self._position = offset
        await trio.lowlevel.checkpoint()

    async def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes (all that is left if negative) from the current position."""
        if self.closed:
            raise ValueError("the upload is closed")
        if self._file is None:
            memory = self._memory or b""
            end = len(memory) if size < 0 else self._position + size
            data = bytes(memory[self._position : end])
            await trio.lowlevel.checkpoint()
        else:
            file = self._file
            position = self._position

            def read() -> bytes:
                file.seek(position)
                return file.read(size)

            data = await trio.to_thread.run_sync(read, limiter=FILE_IO_LIMITER)
        self._position += len(data)
        return data

    async def aclose(self) -> None:
        """Drop the data (the temporary file is deleted).  Idempotent."""
        self.closed = True
        self._memory = None
        file, self._file = self._file, None
        if file is not None:
            await trio.to_thread.run_sync(file.close, limiter=FILE_IO_LIMITER)
        else:
            await trio.lowlevel.checkpoint()

    def __repr__(self) -> str:
        return f"UploadFile(filename={self.filename!r}, content_type={self.content_type!r}, size={self.size})"


def _new_spool_file(held: bytes) -> IO[bytes]:
    file = tempfile.TemporaryFile(prefix="trio-rack-upload-")  # unlinked at once: no leftovers
    file.write(held)
    return file


class FormData(QueryParams):
    """A parsed form: field names to ``str`` values, or :class:`UploadFile` for file parts."""

    async def aclose(self) -> None:
        for _, value in self._items:
            if isinstance(value, UploadFile):
                await value.aclose()

    async def __aenter__(self) -> FormData:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class Request:
    """A view of one request's ``env``; body readers consume ``rack.input`` (once)."""

    def __init__(self, env: Env) -> None:
        self.env = env
        self._body: bytes | None = None
        self._form: FormData | None = None
        self._query: QueryParams | None = None
        self._cookies: dict[str, str] | None = None

    @property
    def method(self) -> str:
        return str(self.env["REQUEST_METHOD"])

    @property
    def script_name(self) -> str:
        """Where the app is mounted (``Builder.mount``), as the client wrote it."""
        return str(self.env.get("SCRIPT_NAME", ""))

    @property
    def path(self) -> str:
        """``PATH_INFO`` percent-decoded (UTF-8; ``raw_path`` keeps the encoded form)."""
        return unquote(self.raw_path, errors="surrogateescape")

    @property
    def raw_path(self) -> str:
        return str(self.env.get("PATH_INFO", ""))

    @property
    def query(self) -> QueryParams:
        if self._query is None:
            try:
                items = parse_qsl(
                    self.env.get("QUERY_STRING", ""), keep_blank_values=True, max_num_fields=MAX_FIELDS
                )
            except ValueError as exc:
                raise RequestError(400, f"bad query string: {exc}") from None
            self._query = QueryParams(items)
        return self._query

    @property
    def headers(self) -> Headers:
        return Headers(self.env)

    @property
    def content_type(self) -> str:
        """The media type of the body, lower-case, without parameters ("" if none)."""
        return str(self.env.get("CONTENT_TYPE", "")).partition(";")[0].strip().lower()

    @property
    def cookies(self) -> dict[str, str]:
        """The ``Cookie`` header as a dict; of repeated names the first wins (the most specific)."""
        if self._cookies is None:
            cookies: dict[str, str] = {}
            for piece in str(self.env.get("HTTP_COOKIE", "")).split(";"):
                name, sep, value = piece.partition("=")
                name = name.strip()
                if not sep or not name:
                    continue
                value = value.strip()
                if len(value) >= 2 and value[0] == value[-1] == '"':
                    value = value[1:-1]
                cookies.setdefault(name, unquote(value))
            self._cookies = cookies
        return self._cookies

    @property
    def scheme(self) -> str:
        return str(self.env.get("rack.url_scheme", "http"))

    @property
    def host(self) -> str:
        """``host[:port]`` as the client addressed it (the port only when not the default)."""
        host = self.env.get("HTTP_HOST")
        if host:
            return str(host)
        name, port = str(self.env.get("SERVER_NAME", "")), str(self.env.get("SERVER_PORT", ""))
        default = "443" if self.scheme in ("https", "wss") else "80"
        return name if port in ("", default) else f"{name}:{port}"

    @property
    def url(self) -> str:
        """The full URL: scheme from ``rack.url_scheme`` (proxy-aware), host from ``Host``."""
        query = self.env.get("QUERY_STRING", "")
        return f"{self.scheme}://{self.host}{self.script_name}{self.raw_path}" + (f"?{query}" if query else "")

    @property
    def client(self) -> tuple[str, int]:
        """``(REMOTE_ADDR, REMOTE_PORT)``: the peer, or the client a trusted proxy named."""
        port = str(self.env.get("REMOTE_PORT", "0"))
        return str(self.env.get("REMOTE_ADDR", "")), int(port) if port.isdigit() else 0

    def _declared_length(self, limit: int | None) -> None:
        length = self.env.get("CONTENT_LENGTH")
        if limit is not None and length and str(length).isdigit() and int(length) > limit:
            raise RequestError(413, f"request body of {length} bytes exceeds the limit of {limit}")

    async def body(self, *, limit: int | None = DEFAULT_LIMIT) -> bytes:
        """The whole body (read once, then cached); over ``limit`` bytes: RequestError 413."""
        if self._body is None:
            self._declared_length(limit)
            stream = self.env["rack.input"]
            parts: list[bytes] = []
            size = 0
            while data := await stream.receive_some(64 * 1024):
                size += len(data)
                if limit is not None and size > limit:
                    raise RequestError(413, f"request body exceeds the limit of {limit} bytes")
                parts.append(data)
            self._body = b"".join(parts)
        return self._body

    async def json(self, *, limit: int | None = DEFAULT_LIMIT) -> Any:
        """The body parsed as JSON; invalid JSON or UTF-8 is a RequestError 400."""
        data = await self.body(limit=limit)
        try:
            return _json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise RequestError(400, f"invalid JSON body: {exc}") from None

    async def form(
        self,
        *,
        limit: int | None = DEFAULT_LIMIT,
        max_file_size: int | None = None,
        spool_size: int = DEFAULT_SPOOL,
        max_fields: int = MAX_FIELDS,
    ) -> FormData:
        """The body as a form: ``application/x-www-form-urlencoded`` or ``multipart/form-data``.

        ``limit`` bounds the non-file data (field values, part headers); ``max_file_size`` each
        file (None: unbounded, it goes to disk); ``spool_size`` is where a file leaves memory.
        Anything else than the two form types is a RequestError 415.  Parsed once, then cached.
        """
        if self._form is not None:
            return self._form
        media = self.content_type
        if media == "application/x-www-form-urlencoded":
            form = await self._urlencoded(limit, max_fields)
        elif media == "multipart/form-data":
            form = await _MultipartReader(self, limit, max_file_size, spool_size, max_fields).read()
        else:
            raise RequestError(415, f"not a form: content-type {media or 'missing'!r}")
        self._form = form
        finished = self.env.get("rack.response_finished")
        if isinstance(finished, list):
            finished.append(lambda *_: form.aclose())
        return form

    async def _urlencoded(self, limit: int | None, max_fields: int) -> FormData:
        # Bounded by ``limit``, so reading it whole is as safe as streaming it.
        data = await self.body(limit=limit)
        try:
            items = parse_qsl(data.decode("utf-8", "replace"), keep_blank_values=True, max_num_fields=max_fields)
        except ValueError as exc:
            raise RequestError(413, f"form has too many fields: {exc}") from None
        return FormData(items)


class _MultipartReader:
    """Feed ``rack.input`` to python-multipart; turn its callbacks into fields and uploads.

    The parser's callbacks are synchronous, so they only queue events; after each chunk of the
    body the queue is applied, awaiting the (threaded) disk writes.  At most one chunk's worth
    of events is ever queued.
    """

    def __init__(
        self, request: Request, limit: int | None, max_file_size: int | None, spool_size: int, max_fields: int
    ) -> None:
        self.request = request
        self.limit = limit
        self.max_file_size = max_file_size
        self.spool_size = spool_size
        self.max_fields = max_fields
        self.events: list[tuple[str, bytes]] = []
        self.items: list[tuple[str, Any]] = []
        self.small = 0  # bytes of non-file data: field values and part headers

    async def read(self) -> FormData:
        params = parse_options_header(self.request.env.get("CONTENT_TYPE", ""))[1]
        boundary = params.get(b"boundary")
        if not boundary:
            raise RequestError(400, "multipart/form-data without a boundary")
        ev = self.events
        parser = MultipartParser(
            boundary,
            {
                "on_part_begin": lambda: ev.append(("begin", b"")),
                "on_part_data": lambda d, s, e: ev.append(("data", bytes(d[s:e]))),
                "on_part_end": lambda: ev.append(("end", b"")),
                "on_header_field": lambda d, s, e: ev.append(("hname", bytes(d[s:e]))),
                "on_header_value": lambda d, s, e: ev.append(("hvalue", bytes(d[s:e]))),
                "on_header_end": lambda: ev.append(("hend", b"")),
                "on_headers_finished": lambda: ev.append(("hdone", b"")),
            },
        )
        stream = self.request.env["rack.input"]
        try:
            self.state = _PartState()
            while data := await stream.receive_some(64 * 1024):
                parser.write(data)
                await self._apply()
            parser.finalize()
            await self._apply()
            if self.state.open:
                raise RequestError(400, "malformed multipart body: it ends inside a part")
        except BaseException as exc:
            with trio.CancelScope(shield=True):  # a failed parse leaves no temporary file behind
                await FormData(self.items).aclose()
            if isinstance(exc, MultipartParseError):
                raise RequestError(400, f"malformed multipart body: {exc}") from None
            raise
        return FormData(self.items)

    def _count_small(self, n: int) -> None:
        self.small += n
        if self.limit is not None and self.small > self.limit:
            raise RequestError(413, f"form fields exceed the limit of {self.limit} bytes")

    async def _apply(self) -> None:
        events, self.events[:] = list(self.events), []
        part = self.state
        for kind, data in events:
            if kind == "begin":
                if len(self.items) >= self.max_fields:
                    raise RequestError(413, f"more than {self.max_fields} form parts")
                part = self.state = _PartState()
                part.open = True
            elif kind == "hname":
                part.name_buf += data
                self._count_small(len(data))
            elif kind == "hvalue":
                part.value_buf += data
                self._count_small(len(data))
            elif kind == "hend":
                part.headers[part.name_buf.decode("latin-1").lower()] = part.value_buf.decode("latin-1")
                part.name_buf, part.value_buf = b"", b""
            elif kind == "hdone":
                self._start_part(part)
            elif kind == "data":
                if part.upload is not None:
                    if self.max_file_size is not None and part.upload.size + len(data) > self.max_file_size:
                        raise RequestError(413, f"uploaded file exceeds the limit of {self.max_file_size} bytes")
                    await part.upload._write(data)
                else:
                    self._count_small(len(data))
                    part.value += data
            elif kind == "end":
                if part.upload is None:
                    charset = "utf-8"
                    try:
                        self.items.append((part.field, part.value.decode(charset)))
                    except UnicodeDecodeError:
                        raise RequestError(400, f"form field {part.field!r} is not UTF-8") from None
                part.open = False

    def _start_part(self, part: _PartState) -> None:
        disposition, params = parse_options_header(part.headers.get("content-disposition", ""))
        if disposition != b"form-data" or b"name" not in params:
            raise RequestError(400, "multipart part without content-disposition: form-data; name=...")
        part.field = params[b"name"].decode("utf-8", "replace")
        if b"filename" in params:
            filename = os.path.basename(params[b"filename"].decode("utf-8", "replace").replace("\\", "/"))
            content_type = part.headers.get("content-type", "application/octet-stream")
            part.upload = UploadFile(filename, content_type, dict(part.headers), self.spool_size)
            self.items.append((part.field, part.upload))


class _PartState:
    __slots__ = ("open", "headers", "name_buf", "value_buf", "field", "value", "upload")

    def __init__(self) -> None:
        self.open = False
        self.headers: dict[str, str] = {}
        self.name_buf = b""
        self.value_buf = b""
        self.field = ""
        self.value = b""
        self.upload: UploadFile | None = None


# ------------------------------------------------------------------------ response helpers


def text(
    body: str, *, status: int = 200, headers: Mapping[str, str] | None = None, content_type: str = "text/plain"
) -> Response:
    """A UTF-8 text response (``content_type`` gets ``; charset=utf-8``)."""
    return status, {"content-type": f"{content_type}; charset=utf-8", **(headers or {})}, [body.encode("utf-8")]


def json_response(data: Any, *, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    """``data`` as compact UTF-8 JSON, ``content-type: application/json``."""
    payload = _json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return status, {"content-type": "application/json", **(headers or {})}, [payload]


def redirect(location: str, *, status: int = 303, headers: Mapping[str, str] | None = None) -> Response:
    """A redirect to ``location`` (non-ASCII and spaces percent-encoded; 303 See Other by default)."""
    if status not in (301, 302, 303, 307, 308):
        raise ValueError(f"{status} is not a redirect status")
    target = quote(location, safe="/:?#[]@!$&'()*+,;=%~")
    return status, {"location": target, "content-type": "text/plain; charset=utf-8", **(headers or {})}, [
        f"Redirecting to {target}\n".encode()
    ]
