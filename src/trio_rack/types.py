"""The whole app contract, as types.  The README's "trio-rack spec" says what each part means.

An app is ``async def app(env) -> (status, headers, body)``:

* ``env``: a dict of CGI-style keys (``REQUEST_METHOD``, ``PATH_INFO``, ``HTTP_*``…) and
  ``rack.*`` keys (``rack.input``, ``rack.hijack``…);
* ``status``: an int;
* ``headers``: lower-case ``str`` names to ``str`` or ``list[str]`` values; ``rack.*`` names are
  instructions to the server (``rack.hijack``: a partial hijack callable), never sent;
* ``body``: an iterable or async iterable of ``bytes``, or a streaming body
  ``async def body(stream)``.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Awaitable, Callable, Iterable, Mapping
from typing import Any

import trio

Env = dict[str, Any]
HeaderValue = str | list[str] | tuple[str, ...]
Headers = Mapping[str, Any]
StreamingBody = Callable[[trio.abc.Stream], Awaitable[None]]
Body = Iterable[bytes] | AsyncIterable[bytes] | StreamingBody
Response = tuple[int, Headers, Body]
App = Callable[[Env], Awaitable[Response]]
HijackCallback = Callable[[trio.abc.Stream], Awaitable[None]]
ResponseFinished = Callable[[Env, int | None, Headers | None, BaseException | None], Any]
