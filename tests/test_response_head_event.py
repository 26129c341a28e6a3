"""The response event the HTTP/1 driver fills in itself (``_PREBUILT_RESPONSE``: h11's
``Response`` without its constructor) goes out byte for byte as the event h11's constructor
makes — on both parsers, for statuses with and without a body, HEAD and ``connection: close``.
"""

from __future__ import annotations

from typing import Any

import pytest

from trio_rack.http1 import connection
from trio_rack.testing import memory_connection, read_until_closed

pytestmark = pytest.mark.http1_parsers


async def _serve(status: int, method: bytes, close: bool) -> bytes:
    body = b"" if status in (204, 304) else b"hello"

    async def app(env: dict[str, Any]) -> Any:
        return status, {"content-type": "text/plain", "date": "Tue, 01 Dec 2026 19:00:00 GMT"}, [body]

    request = b"%s / HTTP/1.1\r\nHost: a\r\n%s\r\n" % (method, b"Connection: close\r\n" if close else b"")
    async with memory_connection(app) as client:
        await client.stream.send_all(request)
        if close:
            return await read_until_closed(client.stream)
        data = b""
        while b"\r\n\r\n" not in data or (method != b"HEAD" and body and not data.endswith(body)):
            data += await client.stream.receive_some(65536)
        return data


@pytest.mark.parametrize("status", [200, 201, 204, 304, 404, 503, 599, 999])
@pytest.mark.parametrize("method", [b"GET", b"HEAD"])
@pytest.mark.parametrize("close", [False, True])
async def test_the_wire_is_that_of_h11s_own_event(
    status: int, method: bytes, close: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert connection._PREBUILT_RESPONSE  # (h11 0.16: the path under test is the one taken)
    fast = await _serve(status, method, close)
    monkeypatch.setattr(connection, "_PREBUILT_RESPONSE", False)
    reference = await _serve(status, method, close)
    assert fast == reference
    assert fast.startswith(b"HTTP/1.1 %d " % status)
