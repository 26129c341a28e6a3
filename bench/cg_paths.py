"""Instructions per unit of work on seven server paths, for two source trees: deterministic
A/B on a shared machine (valgrind's callgrind counts instructions, not seconds).

    python3 bench/cg_paths.py MODE N1 N2 SRC [SRC ...]
    python3 bench/cg_paths.py new 100 500 /tmp/a/src ./src

``SRC`` is a ``src/`` directory (``git archive REF src | tar -x -C DIR`` gives one for any
commit), or ``bare``: ``bench/bare_trio.py``, the floor (hello, hello64, new, tls, tlsnew: it
serves no uploads and streams only a second apart).  Each run starts ``python -m trio_rack
serve`` (or the bare loop) under callgrind, drives N units of work, stops it;
``(I(N2) - I(N1)) / (N2 - N1)`` is the cost of one unit, start-up and shutdown cancelling
out.  Kernel time is not counted.  Modes (apps are ``bench/rack_app.py`` and, for
``stream``, a generator app this script writes to a temporary file):

``hello``   one keep-alive request (what ``bench/ab_instructions.sh`` measures)
``hello64`` one keep-alive request of 64 connections' rounds (64 requests sent, then the 64
            responses read): the scheduling of many connections, as wrk's ``-c64``
``new``     one request on a new connection (``Connection: close``): accept, first read,
            set-up, orderly close, and the request
``stream``  one one-byte chunk of a streamed (chunked) response, with no sleep between chunks
``upload``  one ``POST /upload`` of 10 MiB, echoed back, on a keep-alive connection
``tls``     one keep-alive request over TLS (an ``https`` bind, HTTP/1.1 by ALPN; a throw-away
            CA and certificate from ``trustme``): ``hello`` plus the TLS record work
``tlsnew``  one request on a new TLS connection (``Connection: close``): ``new`` plus the
            handshake (TLS 1.3, a new session each time: no resumption)

``--http1-parser h11|httptools`` pins the server's HTTP/1 parser (default: the server's
``auto``, httptools when installed): measure both, since each is a target of its own.

Needs valgrind and the real interpreter (``/root/.pyenv/versions/3.11.7/bin/python3.11`` here;
``--python`` to change it).  Loopback only; every server it starts it stops.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import ssl
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


def _connect(port: int, tls: ssl.SSLContext | None = None) -> socket.socket:
    deadline = time.monotonic() + 120
    while True:
        try:
            sock = socket.create_connection(("127.0.0.1", port))
            return sock if tls is None else tls.wrap_socket(sock, server_hostname="localhost")
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _drive(mode: str, port: int, n: int, tls: ssl.SSLContext | None) -> None:
    if mode in ("hello", "tls"):
        with _connect(port, tls) as c:
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
    elif mode == "tlsnew":
        assert tls is not None
        _connect(port, tls).close()
        for _ in range(n):
            with tls.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="localhost") as c:
                c.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                try:
                    while c.recv(65536):
                        pass
                except ssl.SSLEOFError:  # the server's close without close_notify reads so
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


def count(src: str, mode: str, n: int, python: str, app: str, extra: list[str], keep: str | None = None) -> int:
    """Instructions callgrind counts for one server run serving ``n`` units of ``mode``
    (``keep``: a path the run's callgrind output is copied to, for ``callgrind_annotate``)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as work:
        out = os.path.join(work, "cg.out")
        bind = [f"http://127.0.0.1:{port}"]
        client_tls = None
        if mode in ("tls", "tlsnew"):
            import trustme  # the test extra's; only this mode needs it

            ca = trustme.CA()
            leaf = ca.issue_cert("localhost", "127.0.0.1")
            cert, key = os.path.join(work, "cert.pem"), os.path.join(work, "key.pem")
            leaf.private_key_and_cert_chain_pem.write_to_path(cert)
            leaf.private_key_pem.write_to_path(key)
            bind = [f"https://127.0.0.1:{port}", "--cert", cert, "--key", key]
            client_tls = ssl.create_default_context()
            ca.configure_trust(client_tls)
            client_tls.set_alpn_protocols(["http/1.1"])
        if src == "bare":  # the bare Trio loop: same port, its own TLS flags
            command = [str(BENCH / "bare_trio.py"), "--port", str(port), *bind[1:]]
        else:
            command = ["-m", "trio_rack", "serve", app, "-b", *bind, "--no-access-log", "--log-level", "warning"]
            command += extra
        server = subprocess.Popen(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", python, *command],
            env=dict(os.environ, PYTHONPATH="" if src == "bare" else src),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            _drive(mode, port, n, client_tls)
        finally:
            server.terminate()
            log = server.communicate(timeout=300)[0].decode(errors="replace")
        if keep is not None and os.path.exists(out):
            shutil.copyfile(out, keep)
    found = re.search(r"Collected : (\d+)", log)
    if found is None:
        raise SystemExit(f"no callgrind total for {src}:\n{log[-2000:]}")
    return int(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=["hello", "hello64", "new", "stream", "upload", "tls", "tlsnew"])
    parser.add_argument("n1", type=int)
    parser.add_argument("n2", type=int)
    parser.add_argument("src", nargs="+", help="src/ directories, or 'bare' for bench/bare_trio.py")
    parser.add_argument("--python", default="/root/.pyenv/versions/3.11.7/bin/python3.11")
    parser.add_argument("--http1-parser", choices=["h11", "httptools"], help="pin the server's HTTP/1 parser")
    parser.add_argument(
        "--keep", metavar="DIR",
        help="copy each run's callgrind output to DIR (callgrind_annotate: call counts of epoll_wait, recv, ...)",
    )  # fmt: skip
    args = parser.parse_args()
    extra = ["--http1-parser", args.http1_parser] if args.http1_parser else []
    with tempfile.TemporaryDirectory() as work:
        app = str(BENCH / "rack_app.py")
        if args.mode == "stream":
            app = os.path.join(work, "stream_app.py")
            Path(app).write_text(STREAM_APP)
        for i, src in enumerate(args.src):
            keep = [None, None]
            if args.keep:
                os.makedirs(args.keep, exist_ok=True)
                keep = [os.path.join(args.keep, f"{i}-{args.mode}-{n}.cg") for n in (args.n1, args.n2)]
            low = count(src, args.mode, args.n1, args.python, app, extra, keep[0])
            high = count(src, args.mode, args.n2, args.python, app, extra, keep[1])
            parser_note = f" ({args.http1_parser})" if args.http1_parser else ""
            per = (high - low) // (args.n2 - args.n1)
            print(f"{src}: {per:,} instructions per {args.mode} unit{parser_note}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
