"""``Lint``: a middleware that checks both sides of the trio-rack spec, as ``Rack::Lint`` does.

Wrap an app in development and in tests (``Builder().use(Lint)``, or ``Lint(app)``).  Every
breach raises :class:`LintError`, whose message starts with the rule's name in brackets
(``[response.content-length] ...``) and whose ``rule`` attribute is that name; :data:`RULES`
lists them all.  Through ``trio_rack.testing.Transport`` the error propagates to the test;
under a server it is the app's bug: a 500 (or an aborted body once the head is out) and the
rule in the error log.

What is checked
---------------
**The env the server built** (before the app runs): the CGI keys are ``str`` and well formed
(``REQUEST_METHOD`` a token, ``SCRIPT_NAME`` empty or ``/x``, ``PATH_INFO`` empty or ``/...``,
``SERVER_PORT`` digits, ``SERVER_PROTOCOL`` ``HTTP/x.y``), ``CONTENT_LENGTH`` digits, no
``HTTP_CONTENT_TYPE``/``HTTP_CONTENT_LENGTH``, every ``HTTP_*`` a ``str``, ``rack.url_scheme``
known, ``rack.input`` a ``trio.abc.ReceiveStream``, ``rack.errors`` writable,
``rack.hijack?`` a bool (with a callable ``rack.hijack`` when true), ``rack.response_finished``
a list, ``rack.early_hints`` callable, ``trio_rack.shutdown`` a ``trio.Event``.

**What the app does**: the triple's shape; status an ``int`` from 100 to 999 (1xx only with a
partial hijack); headers through the server's own validator (:mod:`trio_rack.app.response`:
lower-case token names, values without control bytes, Latin-1, ``str`` or lists of ``str``),
plus: no reserved ``rack.`` names other than ``rack.hijack``, no hop-by-hop headers except on
a partial hijack, no ``content-type``/``content-length`` on 1xx/204/304; the body is one of
the four kinds; ``content-length`` equals the bytes the body produces (not checked for
``HEAD``, which may be answered like a GET or with no body); no body bytes for 1xx/204/304; a
body is consumed at most once and is closed by the server; a body naming a file (``path``)
names a regular file, with sane ``offset``/``length`` matching ``content-length``; hijacks
only when ``rack.hijack?`` offers them; streams (``rack.input``, a streaming body's stream, a
hijacked stream) are not used after the app closed them or after the response finished; the
app is called at most once per request (a middleware above it calling twice is caught);
early hints carry valid headers.

Lint rewraps what it checks (``rack.input``, ``rack.hijack``, the body, the streams) without
changing what the server sees: a body keeps its kind, a file body keeps its ``path`` (so the
server may still send it with ``sendfile``, skipping Lint's byte count), hijacked streams
keep their extras (``socket``…).

Resource handling: Lint closes nothing itself; each wrapper forwards ``aclose``/``close`` to
what it wraps, once.
"""

from __future__ import annotations

import os
import re
import stat as stat_module
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Mapping
from typing import Any

import trio

from .app.response import HOP_BY_HOP, AppError, BodyKind, classify_body, close_body, encode_headers, prepare_response
from .app.streams import read_all
from .types import App, Env, Response

__all__ = ["Lint", "LintError", "RULES"]

RULES: dict[str, str] = {
    "env.type": "env must be a dict",
    "env.key": "a required CGI key is missing or not a str",
    "env.request-method": "REQUEST_METHOD must be an HTTP token",
    "env.script-name": "SCRIPT_NAME must be empty or start with '/' (and not be '/')",
    "env.path-info": "PATH_INFO must be empty or start with '/'",
    "env.server-port": "SERVER_PORT must be a string of digits",
    "env.server-protocol": "SERVER_PROTOCOL must look like HTTP/1.1",
    "env.content-length": "CONTENT_LENGTH must be digits",
    "env.http-content": "HTTP_CONTENT_TYPE and HTTP_CONTENT_LENGTH must not exist (use the CGI names)",
    "env.http-value": "HTTP_* values must be str",
    "env.url-scheme": "rack.url_scheme must be http, https, ws or wss",
    "env.input": "rack.input must be a trio.abc.ReceiveStream",
    "env.errors": "rack.errors must have write() and flush()",
    "env.hijack": "rack.hijack? must be a bool, and rack.hijack callable when it is True",
    "env.response-finished": "rack.response_finished must be a list",
    "env.early-hints": "rack.early_hints must be callable",
    "env.shutdown": "trio_rack.shutdown must be a trio.Event",
    "app.called-twice": "the app was called more than once for one request",
    "response.triple": "the app must return (status, headers, body)",
    "response.status": "status must be an int from 100 to 999; 1xx only with a partial hijack",
    "response.headers": "headers must be a dict of valid lower-case names to str or list of str",
    "response.headers.reserved": "header names starting with 'rack.' are reserved (only rack.hijack exists)",
    "response.headers.hop-by-hop": "hop-by-hop headers are the server's (except on a partial hijack)",
    "response.headers.no-body": "1xx, 204 and 304 responses must not have content-type or content-length",
    "response.no-body": "1xx, 204 and 304 responses must not have body bytes",
    "response.content-length": "content-length must equal the bytes the body produces",
    "response.hijack": "a rack.hijack response header needs rack.hijack? and an async callable",
    "body.type": "the body must be a list/tuple, an iterable or async iterable of bytes, or body(stream)",
    "body.chunk": "body chunks (and data sent on a stream) must be bytes-like",
    "body.once": "a body must be consumed at most once",
    "body.closed": "the body must be closed (once) when the response ends",
    "body.path": "a body naming a file must name a regular file, with offset >= 0 and length None or >= 0",
    "stream.closed": "streams must not be used after they were closed or the response finished",
    "stream.max-bytes": "receive_some(max_bytes) takes None or an int >= 1",
    "hijack.not-offered": "rack.hijack may be called only when rack.hijack? is True",
    "early-hints.headers": "early hints must be a dict of valid headers",
}

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_PROTOCOL = re.compile(r"HTTP/\d(\.\d)?")
_REQUIRED = ("REQUEST_METHOD", "SCRIPT_NAME", "PATH_INFO", "QUERY_STRING", "SERVER_NAME", "SERVER_PORT",
             "SERVER_PROTOCOL")  # fmt: skip
_NO_BODY = (204, 304)


class LintError(Exception):
    """A breach of the trio-rack spec; ``rule`` names it (a key of :data:`RULES`)."""

    def __init__(self, rule: str, message: str) -> None:
        assert rule in RULES, rule
        super().__init__(f"[{rule}] {message}")
        self.rule = rule


def check_env(env: Any) -> None:
    """Raise LintError if ``env`` is not what the spec says the server builds."""
    if not isinstance(env, dict):
        raise LintError("env.type", f"env is a {type(env).__name__}")
    for key in _REQUIRED:
        if not isinstance(env.get(key), str):
            raise LintError("env.key", f"env[{key!r}] must be a str, got {env.get(key)!r:.60}")
    method = env["REQUEST_METHOD"]
    if not _TOKEN.fullmatch(method):
        raise LintError("env.request-method", f"REQUEST_METHOD {method!r:.40}")
    script = env["SCRIPT_NAME"]
    if script and (not script.startswith("/") or script == "/"):
        raise LintError("env.script-name", f"SCRIPT_NAME {script!r:.60}")
    path = env["PATH_INFO"]
    if path and not path.startswith("/") and not (path == "*" or method == "CONNECT"):
        raise LintError("env.path-info", f"PATH_INFO {path!r:.60}")
    if not env["SERVER_PORT"].isdigit():
        raise LintError("env.server-port", f"SERVER_PORT {env['SERVER_PORT']!r:.20}")
    if not _PROTOCOL.fullmatch(env["SERVER_PROTOCOL"]):
        raise LintError("env.server-protocol", f"SERVER_PROTOCOL {env['SERVER_PROTOCOL']!r:.20}")
    length = env.get("CONTENT_LENGTH")
    if length is not None and not (isinstance(length, str) and length.isdigit()):
        raise LintError("env.content-length", f"CONTENT_LENGTH {length!r:.20}")
    for bad in ("HTTP_CONTENT_TYPE", "HTTP_CONTENT_LENGTH"):
        if bad in env:
            raise LintError("env.http-content", f"env has {bad}")
    for key, value in env.items():
        if isinstance(key, str) and key.startswith("HTTP_") and not isinstance(value, str):
            raise LintError("env.http-value", f"env[{key!r}] is a {type(value).__name__}")
    if env.get("rack.url_scheme") not in ("http", "https", "ws", "wss"):
        raise LintError("env.url-scheme", f"rack.url_scheme {env.get('rack.url_scheme')!r:.20}")
    if not isinstance(env.get("rack.input"), trio.abc.ReceiveStream):
        raise LintError("env.input", f"rack.input is a {type(env.get('rack.input')).__name__}")
    errors = env.get("rack.errors")
    if not (callable(getattr(errors, "write", None)) and callable(getattr(errors, "flush", None))):
        raise LintError("env.errors", f"rack.errors is a {type(errors).__name__}")
    offered = env.get("rack.hijack?", False)
    if type(offered) is not bool or (offered and not callable(env.get("rack.hijack"))):
        raise LintError("env.hijack", f"rack.hijack? is {offered!r:.20}, rack.hijack {env.get('rack.hijack')!r:.40}")
    if not isinstance(env.get("rack.response_finished"), list):
        raise LintError("env.response-finished", f"rack.response_finished is {env.get('rack.response_finished')!r:.40}")
    if "rack.early_hints" in env and not callable(env["rack.early_hints"]):
        raise LintError("env.early-hints", "rack.early_hints is not callable")
    if "trio_rack.shutdown" in env and not isinstance(env["trio_rack.shutdown"], trio.Event):
        raise LintError("env.shutdown", f"trio_rack.shutdown is a {type(env['trio_rack.shutdown']).__name__}")


class _State:
    """One request under Lint: what the app did, for the checks that come later."""

    def __init__(self, env: Env) -> None:
        self.head = env.get("REQUEST_METHOD") == "HEAD"
        self.status = 0
        self.declared: int | None = None
        self.finished = False
        self.hijacked = False
        self.body: _LintBody | None = None

    def check_open(self, closed: bool, what: str) -> None:
        if closed:
            raise LintError("stream.closed", f"{what} used after it was closed")
        if self.finished:
            raise LintError("stream.closed", f"{what} used after the response finished")

    def no_body(self) -> bool:
        return self.status < 200 or self.status in _NO_BODY

    def check_over(self, sent: int) -> None:
        """Too many bytes already: say so before the server's framing refuses them."""
        if not self.head and self.declared is not None and sent > self.declared:
            raise LintError(
                "response.content-length",
                f"content-length is {self.declared} but the body produced more ({sent} bytes so far)",
            )

    def check_length(self, sent: int) -> None:
        if self.head or self.declared is None:
            return
        if sent != self.declared:
            raise LintError(
                "response.content-length", f"content-length is {self.declared} but the body produced {sent} bytes"
            )


def _bytes_like(data: Any, where: str) -> int:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise LintError("body.chunk", f"{where} got {type(data).__name__}: {data!r:.40}")
    return len(data)


def _check_max_bytes(max_bytes: Any) -> None:
    if max_bytes is not None and (type(max_bytes) is not int or max_bytes < 1):
        raise LintError("stream.max-bytes", f"receive_some({max_bytes!r})")


class _LintInput(trio.abc.ReceiveStream):
    """``rack.input`` under Lint."""

    def __init__(self, inner: trio.abc.ReceiveStream, state: _State) -> None:
        self._inner = inner
        self._state = state
        self._closed = False

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        self._state.check_open(self._closed, "rack.input")
        _check_max_bytes(max_bytes)
        return await self._inner.receive_some(max_bytes)

    async def read_all(self, limit: int | None = None) -> bytes:
        return await read_all(self, limit)

    async def aclose(self) -> None:
        self._closed = True
        await self._inner.aclose()


class _LintStream(trio.abc.Stream):
    """A streaming body's stream or a hijacked stream, under Lint."""

    def __init__(self, inner: trio.abc.Stream, state: _State, what: str, *, counts: bool) -> None:
        self._inner = inner
        self._state = state
        self._what = what
        self._counts = counts  # a streaming body's bytes are the response body
        self._closed = False
        self.sent = 0

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self._state.check_open(self._closed, self._what)
        size = _bytes_like(data, f"{self._what}.send_all()")
        if self._counts and size and self._state.no_body() and not self._state.head:
            raise LintError("response.no-body", f"{self._state.status} response: the body sent {size} bytes")
        self.sent += size
        if self._counts:
            self._state.check_over(self.sent)
        await self._inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        self._state.check_open(self._closed, self._what)
        await self._inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        self._state.check_open(self._closed, self._what)
        _check_max_bytes(max_bytes)
        return await self._inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        if not self._closed and self._counts and not self._state.finished:
            self._state.check_length(self.sent)
        self._closed = True
        await self._inner.aclose()

    @property
    def closed(self) -> bool:
        return self._closed

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)  # socket extras of a hijacked stream



class _LintBody:
    """Base of the body wrappers: counts consumption and closing."""

    def __init__(self, body: Any, state: _State) -> None:
        self._body = body
        self._state = state
        self._consumed = False
        self.closed = 0

    def _consume(self) -> None:
        if self._consumed:
            raise LintError("body.once", f"the body {type(self._body).__name__} was consumed twice")
        self._consumed = True


class _LintIterable(_LintBody):
    def __iter__(self) -> Iterator[bytes]:
        self._consume()
        sent = 0
        for chunk in self._body:
            size = _bytes_like(chunk, "the body")
            if size and self._state.no_body():
                raise LintError("response.no-body", f"{self._state.status} response with body bytes")
            sent += size
            self._state.check_over(sent)
            yield chunk
        self._state.check_length(sent)

    def close(self) -> None:
        self.closed += 1
        close = getattr(self._body, "close", None)
        if close is not None:
            close()


class _LintAsyncIterable(_LintBody):
    def __init__(self, body: Any, state: _State) -> None:
        super().__init__(body, state)
        self._iterator: AsyncGenerator[bytes, None] | None = None

    def __aiter__(self) -> AsyncIterator[bytes]:
        self._consume()
        self._iterator = self._chunks()
        return self._iterator

    async def _chunks(self) -> AsyncGenerator[bytes, None]:
        sent = 0
        async for chunk in self._body:
            size = _bytes_like(chunk, "the body")
            if size and self._state.no_body():
                raise LintError("response.no-body", f"{self._state.status} response with body bytes")
            sent += size
            self._state.check_over(sent)
            yield chunk
        self._state.check_length(sent)

    async def aclose(self) -> None:
        self.closed += 1
        if self._iterator is not None:
            await self._iterator.aclose()
        await close_body(self._body)


class _LintFileIterable(_LintAsyncIterable):
    """An async iterable body naming a file: ``path``/``offset``/``length`` stay visible."""

    @property
    def path(self) -> Any:
        return self._body.path

    @property
    def offset(self) -> Any:
        return getattr(self._body, "offset", 0)

    @property
    def length(self) -> Any:
        return getattr(self._body, "length", None)


class _LintStreamingBody(_LintBody):
    async def __call__(self, stream: trio.abc.Stream) -> None:
        self._consume()
        inner = _LintStream(stream, self._state, "the response stream", counts=True)
        await self._body(inner)
        if not inner.closed:
            self._state.check_length(inner.sent)

    async def aclose(self) -> None:
        self.closed += 1
        await close_body(self._body)


def _check_path(body: Any, declared: int | None) -> None:
    path = body.path
    if not isinstance(path, (str, bytes, os.PathLike)):
        raise LintError("body.path", f"path is a {type(path).__name__}")
    offset = getattr(body, "offset", 0)
    length = getattr(body, "length", None)
    if type(offset) is not int or offset < 0:
        raise LintError("body.path", f"offset {offset!r:.20}")
    if length is not None and (type(length) is not int or length < 0):
        raise LintError("body.path", f"length {length!r:.20}")
    try:
        st = os.stat(path)
    except OSError as exc:
        raise LintError("body.path", f"{path!r}: {exc.strerror}") from None
    if not stat_module.S_ISREG(st.st_mode):
        raise LintError("body.path", f"{path!r} is not a regular file")
    if offset + (length or 0) > st.st_size:
        raise LintError("body.path", f"offset {offset} + length {length} is past the end of {path!r} ({st.st_size})")
    if declared is not None:
        expected = length if length is not None else st.st_size - offset
        if expected != declared:
            raise LintError("response.content-length", f"content-length is {declared} but the file body is {expected}")


class Lint:
    """Check the env ``app`` gets and everything ``app`` returns; see the module docstring."""

    def __init__(self, app: App) -> None:
        self.app = app
        self._key = f"trio_rack.lint.{id(self)}"

    async def __call__(self, env: Env) -> Response:
        check_env(env)
        if env.get(self._key):
            raise LintError("app.called-twice", "a middleware called the app twice for one request")
        env[self._key] = True
        state = _State(env)
        env["rack.input"] = _LintInput(env["rack.input"], state)
        if "rack.hijack" in env:
            env["rack.hijack"] = self._wrap_full_hijack(env, env["rack.hijack"], state)
        if "rack.early_hints" in env:
            env["rack.early_hints"] = self._wrap_early_hints(env["rack.early_hints"])
        env["rack.response_finished"].append(self._finished(state))
        result = await self.app(env)
        if state.hijacked:
            return result  # full hijack: the server ignores the triple
        return await self._check_response(env, result, state)

    @staticmethod
    def _finished(state: _State) -> Any:
        def finished(env: Env, status: Any, headers: Any, error: Any) -> None:
            state.finished = True
            body = state.body
            if body is not None and body.closed != 1:
                raise LintError("body.closed", f"the server closed the body {body.closed} times, not once")

        return finished

    @staticmethod
    def _wrap_full_hijack(env: Env, hijack: Any, state: _State) -> Any:
        def full_hijack() -> trio.abc.Stream:
            if env.get("rack.hijack?") is not True:
                raise LintError("hijack.not-offered", "rack.hijack called but rack.hijack? is not True")
            stream = hijack()
            state.hijacked = True
            return _LintStream(stream, state, "the hijacked stream", counts=False)

        return full_hijack

    @staticmethod
    def _wrap_early_hints(early_hints: Any) -> Any:
        async def hints(headers: Any) -> None:
            if not isinstance(headers, Mapping):
                raise LintError("early-hints.headers", f"early hints got a {type(headers).__name__}")
            try:
                encode_headers(headers)
            except AppError as exc:
                raise LintError("early-hints.headers", str(exc)) from None
            await early_hints(headers)

        return hints

    async def _check_response(self, env: Env, result: Any, state: _State) -> Response:
        if not isinstance(result, (tuple, list)) or len(result) != 3:
            raise LintError("response.triple", f"the app returned {type(result).__name__}: {result!r:.60}")
        status, headers, body = result
        if type(status) is not int or not 100 <= status <= 999:
            raise LintError("response.status", f"status {status!r:.40}")
        if not isinstance(headers, Mapping):
            raise LintError("response.headers", f"headers is a {type(headers).__name__}")
        state.status = status
        hijack = headers.get("rack.hijack")
        for name in headers:
            if isinstance(name, str) and name.startswith("rack.") and name != "rack.hijack":
                raise LintError("response.headers.reserved", f"header {name!r}")
            if name in HOP_BY_HOP and hijack is None:
                raise LintError("response.headers.hop-by-hop", f"header {name!r} (the server owns the framing)")
        if hijack is not None:
            if env.get("rack.hijack?") is not True:
                raise LintError("response.hijack", "rack.hijack response header but rack.hijack? is not True")
            if not callable(hijack):
                raise LintError("response.hijack", "rack.hijack must be an async callable hijack(stream)")
        elif status < 200:
            raise LintError("response.status", f"status {status} is informational; only a partial hijack may use it")
        try:
            kind = classify_body(body)
        except AppError as exc:
            raise LintError("body.type", str(exc)) from None
        try:
            prepare_response((status, headers, body))
        except AppError as exc:
            rule = "body.chunk" if "chunks must be bytes" in str(exc) else "response.headers"
            raise LintError(rule, str(exc)) from None
        if hijack is not None:
            async def wrapped_hijack(stream: trio.abc.Stream) -> None:
                await hijack(_LintStream(stream, state, "the hijacked stream", counts=False))

            return status, {**headers, "rack.hijack": wrapped_hijack}, body

        declared_text = headers.get("content-length")
        if state.no_body():
            present = [name for name in ("content-type", "content-length") if name in headers]
            if present:
                raise LintError("response.headers.no-body", f"{status} response with {', '.join(present)}")
        state.declared = int(declared_text) if isinstance(declared_text, str) and declared_text.isdigit() else None

        if kind is BodyKind.BUFFERED:
            size = sum(len(chunk) for chunk in body)
            if size and state.no_body():
                raise LintError("response.no-body", f"{status} response with a {size}-byte body")
            if not (state.head and size == 0):
                state.check_length(size)
            return status, headers, body
        if state.no_body():
            # The server never runs a streamed body for these: the app believes it sends something.
            raise LintError("response.no-body", f"a {status} response's {kind.value} body is never sent: return []")
        wrapper: _LintBody
        if hasattr(body, "path"):
            await trio.to_thread.run_sync(_check_path, body, None if state.head else state.declared)
        if kind is BodyKind.ASYNC_ITERABLE:
            wrapper = _LintFileIterable(body, state) if hasattr(body, "path") else _LintAsyncIterable(body, state)
        elif kind is BodyKind.ITERABLE:
            wrapper = _LintIterable(body, state)
        else:
            wrapper = _LintStreamingBody(body, state)
        state.body = wrapper
        return status, headers, wrapper
