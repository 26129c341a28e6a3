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

The message limit is ``MAX_MESSAGE_SIZE`` (bytes of one message; larger ones close with 1009):
1 MiB, like :func:`trio_rack.websocket.accept`'s default, unless the environment variable
``WS_ECHO_MAX_MESSAGE_SIZE`` says otherwise, so a larger profile needs no code change::

    WS_ECHO_MAX_MESSAGE_SIZE=16777216 trio-rack serve -b http://127.0.0.1:9292 examples/websocket_echo.py

(the Autobahn test suite's 9.x cases send messages of up to 16 MiB; see
``tests/autobahn/run.py``).  From Python, ``make_app(max_message_size=...)`` builds the same app
with another limit.
"""

from __future__ import annotations

import os
from typing import Any

from trio_rack import websocket

#: Bytes of one message; over it the connection closes with 1009 "message too big".
MAX_MESSAGE_SIZE = int(os.environ.get("WS_ECHO_MAX_MESSAGE_SIZE", str(1024 * 1024)))


async def echo(ws: websocket.WebSocket, env: dict[str, Any]) -> None:
    async for message in ws:
        await ws.send_message(message)


def make_app(*, max_message_size: int = MAX_MESSAGE_SIZE) -> Any:
    """The echo endpoint with a message limit of ``max_message_size`` bytes."""
    return websocket.endpoint(echo, max_message_size=max_message_size)


app = make_app()
