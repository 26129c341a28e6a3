"""Hello, world: the smallest trio-rack app.

Shows the app protocol in one line: an async callable taking ``env`` and returning
``(status, headers, body)``.  A list body is buffered, so the server sends a
``content-length`` and keeps the connection alive for the next request.

Try it::

    trio-rack serve examples/hello.py
    curl --cacert "$(trio-rack certs | head -1)" https://localhost:9292/
    curl --cacert "$(trio-rack certs | head -1)" -I https://localhost:9292/    # HEAD: same head, no body
"""

from __future__ import annotations

from typing import Any

BODY = b"Hello, world!\n"


async def app(env: dict[str, Any]) -> tuple[int, dict[str, str], list[bytes]]:
    return 200, {"content-type": "text/plain; charset=utf-8"}, [BODY]
