"""A websocket echo at any path: the reference endpoint the tests and the benchmark use.

Every message comes back as it came (text as text, binary as binary).  When the client closes,
the server answers with the client's own close code (the websocket layer replies to a close
frame with the same code) and the ``async for`` ends.  A plain HTTP request gets ``426 Upgrade
Required`` with ``upgrade: websocket``; a malformed upgrade gets ``400``.

The app is :func:`trio_rack.websocket.endpoint` around a three-line handler: the endpoint
checks the handshake, hijacks the connection, sends ``101`` and closes the websocket (1000,
1011 on an error, 1001 on server shutdown) when the handler ends.

Try it::

    trio-rack serve -b http://127.0.0.1:9292 examples/websocket_echo.py
    python -m websockets ws://127.0.0.1:9292/      # an interactive client (pip install websockets)
    curl -i http://127.0.0.1:9292/                 # 426 Upgrade Required
"""

from __future__ import annotations

from typing import Any

from trio_rack import websocket


@websocket.endpoint
async def app(ws: websocket.WebSocket, env: dict[str, Any]) -> None:
    async for message in ws:
        await ws.send_message(message)
