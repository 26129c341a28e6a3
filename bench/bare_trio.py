"""The ceiling for any HTTP server on Trio: a socket loop that answers without parsing.

``python bench/bare_trio.py --port P [--cert C --key K]``

Per connection one task reads, finds the end of each request head (``\\r\\n\\r\\n``) and answers
with a fixed response chosen by the request line's prefix, keeping the connection alive unless
the head contains ``connection: close``.  No header parsing, no validation, no request bodies:
only what keep-alive and the benchmark's endpoints need, so whatever trio-rack costs above this
is its own (and h11's).  ``/stream?s=S`` dribbles S+1 bytes a second apart like the apps do;
``/big`` sends 256 MiB as the same 1 MiB chunk 256 times.  ``/upload`` is not served (it would
need parsing); the runner skips that scenario for this server.

Runs until SIGTERM/SIGINT.  With ``--cert``/``--key`` every connection is TLS
(``trio.SSLStream``).
"""

from __future__ import annotations

import argparse
import signal
import ssl

import trio

HELLO = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n\r\nHello, world!"
HELLO_CLOSE = HELLO.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1)
CHUNK = b"x" * (1 << 20)
BIG_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n"
    % (256 << 20)
)
STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
)
NOT_FOUND = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


async def handle(stream: trio.abc.Stream) -> None:
    buffered = b""
    try:
        while True:
            data = await stream.receive_some(65536)
            if not data:
                return
            buffered += data
            while (end := buffered.find(b"\r\n\r\n")) >= 0:
                head, buffered = buffered[:end], buffered[end + 4 :]
                close = b"connection: close" in head.lower()
                if head.startswith(b"GET / "):
                    await stream.send_all(HELLO_CLOSE if close else HELLO)
                elif head.startswith(b"GET /big "):
                    await stream.send_all(BIG_HEAD)
                    for _ in range(256):
                        await stream.send_all(CHUNK)
                elif head.startswith(b"GET /stream"):
                    await _dribble(stream, head)
                else:
                    await stream.send_all(NOT_FOUND)
                    return
                if close:
                    return
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # the client left (serve_listeners closes the stream)


async def _dribble(stream: trio.abc.Stream, head: bytes) -> None:
    line = head.split(b"\r\n", 1)[0]
    seconds = 10
    if b"?s=" in line:
        seconds = int(line.split(b"?s=", 1)[1].split(b" ", 1)[0])
    await stream.send_all(STREAM_HEAD + b"1\r\n.\r\n")
    for _ in range(seconds):
        await trio.sleep(1)
        await stream.send_all(b"1\r\n.\r\n")
    await stream.send_all(b"0\r\n\r\n")


async def main(port: int, ctx: ssl.SSLContext | None) -> None:
    listeners: list[trio.abc.Listener[trio.abc.Stream]] = list(
        await trio.open_tcp_listeners(port, host="127.0.0.1", backlog=2048)
    )
    if ctx is not None:
        listeners = [
            trio.SSLListener(lst, ctx, https_compatible=True) for lst in listeners
        ]
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, handle, listeners)
            print(f"bare-trio: listening on 127.0.0.1:{port}", flush=True)
            async for _ in signals:
                nursery.cancel_scope.cancel()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cert")
    parser.add_argument("--key")
    args = parser.parse_args()
    context = None
    if args.cert:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.cert, args.key)
    trio.run(main, args.port, context)
