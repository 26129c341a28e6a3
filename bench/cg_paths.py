"""Instructions per unit of work on four server paths, for two source trees: deterministic
A/B on a shared machine (valgrind's callgrind counts instructions, not seconds).

    python3 bench/cg_paths.py MODE N1 N2 SRC [SRC ...]
    python3 bench/cg_paths.py new 100 500 /tmp/a/src ./src

``SRC`` is a ``src/`` directory (``git archive REF src | tar -x -C DIR`` gives one for any
commit).  Each run starts ``python -m trio_rack serve`` under callgrind, drives N units of
work, stops it; ``(I(N2) - I(N1)) / (N2 - N1)`` is the cost of one unit, start-up and
shutdown cancelling out.  Kernel time is not counted.  Modes (apps are ``bench/rack_app.py``
and, for ``stream``, a generator app this script writes to a temporary file):

``hello``   one keep-alive request (what ``bench/ab_instructions.sh`` measures)
``hello64`` one keep-alive request of 64 connections' rounds (64 requests sent, then the 64
            responses read): the scheduling of many connections, as wrk's ``-c64``
``new``     one request on a new connection (``Connection: close``): accept, first read,
            set-up, orderly close, and the request
``stream``  one one-byte chunk of a streamed (chunked) response, with no sleep between chunks
``upload``  one ``POST /upload`` of 10 MiB, echoed back, on a keep-alive connection

Needs valgrind and the real interpreter (``/root/.pyenv/versions/3.11.7/bin/python3.11`` here;
``--python`` to change it).  Loopback only; every server it starts it stops.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
STREAM_APP = '''
async def _chunks(n):
    for _ in range(n):
        yield b"."

async def app(env):
    q = env["QUERY_STRING"]
    return 200, {"content-type": "text/plain"}, _chunks(int(q[2:]) if q.startswith("n=") else 1)
'''


def _connect(port: int) -> socket.socket:
    deadline = time.monotonic() + 120
    while True:
        try:
            return socket.create_connection(("127.0.0.1", port))
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _drive(mode: str, port: int, n: int) -> None:
    if mode == "hello":
        with _connect(port) as c:
            for _ in range(n):
                c.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                buf = b""
                while b"Hello" not in buf:
                    buf += c.recv(65536)
    elif mode == "hello64":
        conns = [_connect(port) for _ in range(64)]
        for _ in range(n // 64):
            for c in conns:
                c.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            for c in conns:
                buf = b""
                while b"Hello" not in buf:
                    buf += c.recv(65536)
        for c in conns:
            c.close()
    elif mode == "new":
        _connect(port).close()
        for _ in range(n):
            with socket.create_connection(("127.0.0.1", port)) as c:
                c.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                while c.recv(65536):
                    pass
    elif mode == "stream":
        with _connect(port) as c:
            c.sendall(b"GET /?n=%d HTTP/1.1\r\nHost: x\r\n\r\n" % n)
            tail = b""
            while not tail.endswith(b"0\r\n\r\n"):
                tail = (tail + c.recv(65536))[-16:]
    elif mode == "upload":
        body = b"x" * (10 << 20)
        with _connect(port) as c:
            for _ in range(n):
                c.sendall(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body))
                c.sendall(body)
                buf = b""
                while b"\r\n\r\n" not in buf:
                    buf += c.recv(65536)
                got = len(buf.split(b"\r\n\r\n", 1)[1])
                while got < len(body):
                    got += len(c.recv(1 << 20))


def count(src: str, mode: str, n: int, python: str, app: str) -> int:
    """Instructions callgrind counts for one server run serving ``n`` units of ``mode``."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as work:
        out = os.path.join(work, "cg.out")
        server = subprocess.Popen(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", python, "-m", "trio_rack", "serve",
             app, "-b", f"http://127.0.0.1:{port}", "--no-access-log", "--log-level", "warning"],
            env=dict(os.environ, PYTHONPATH=src), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            _drive(mode, port, n)
        finally:
            server.terminate()
            log = server.communicate(timeout=300)[0].decode(errors="replace")
    found = re.search(r"Collected : (\d+)", log)
    if found is None:
        raise SystemExit(f"no callgrind total for {src}:\n{log[-2000:]}")
    return int(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=["hello", "hello64", "new", "stream", "upload"])
    parser.add_argument("n1", type=int)
    parser.add_argument("n2", type=int)
    parser.add_argument("src", nargs="+")
    parser.add_argument("--python", default="/root/.pyenv/versions/3.11.7/bin/python3.11")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        app = str(BENCH / "rack_app.py")
        if args.mode == "stream":
            app = os.path.join(work, "stream_app.py")
            Path(app).write_text(STREAM_APP)
        for src in args.src:
            low = count(src, args.mode, args.n1, args.python, app)
            high = count(src, args.mode, args.n2, args.python, app)
            print(f"{src}: {(high - low) // (args.n2 - args.n1):,} instructions per {args.mode} unit", flush=True)


if __name__ == "__main__":
    sys.exit(main())
