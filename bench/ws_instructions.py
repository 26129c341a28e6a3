"""Instructions per echoed websocket message through the real server, for source trees: a
deterministic A/B on a shared machine (valgrind's callgrind counts instructions, not seconds).

    python3 bench/ws_instructions.py [--connections 100,1000] [--rounds 5] SRC [SRC ...]
    git archive main src | tar -x -C /tmp/a && python3 bench/ws_instructions.py /tmp/a/src ./src

For each ``SRC`` (a ``src/`` directory) and each connection count C, ``python -m trio_rack
serve examples/websocket_echo.py`` runs under callgrind; the client (this script, plain
blocking sockets, hand-made masked frames) opens C websockets and runs one warm-up round, then
``callgrind_control --zero`` resets the counters, ``--rounds`` rounds follow (a round sends one
32-byte text message on every connection, then reads every echo: the server sees the same
batches of ready sockets as with ``ws_bench.py``'s C concurrent clients), and
``callgrind_control --dump`` writes the counts of exactly those rounds.  The figure is
instructions / (C × rounds): handshakes, start-up and shutdown are outside the window.
``--cache-sim`` adds callgrind's cache simulation (first-level and last-level data misses per
echo: how the cost of the same instructions grows with the working set).  Under valgrind the
server runs ~50× slower, so timers (keepalive pings, the 1 s hand-over check) fire more often
per message than in real time: compare trees at the same settings, not with the real bench.  The
cyclic garbage collector runs inside it as in production, so garbage that needs it is counted.
Kernel time is not counted.

Needs valgrind and the real interpreter (``--python``; default: ``sys.executable`` resolved).
Loopback only; the server it starts it stops (by PID); every wait is bounded.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
MESSAGE = b"0123456789abcdef0123456789abcdef"
KEY = b"\x12\x34\x56\x78"
FRAME = bytes([0x81, 0x80 | len(MESSAGE)]) + KEY + bytes(b ^ KEY[i % 4] for i, b in enumerate(MESSAGE))
ECHO = bytes([0x81, len(MESSAGE)]) + MESSAGE
HANDSHAKE = (
    b"GET /bench HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _connect(port: int, deadline: float) -> socket.socket:
    while True:
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=60)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(HANDSHAKE)
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("closed during the handshake")
        head += chunk
    if not head.startswith(b"HTTP/1.1 101"):
        raise ConnectionError(head[:200].decode("latin-1"))
    return sock


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    got = b""
    while len(got) < n:
        chunk = sock.recv(n - len(got))
        if not chunk:
            raise ConnectionError("server closed")
        got += chunk
    return got


def _round(socks: list[socket.socket]) -> None:
    for sock in socks:
        sock.sendall(FRAME)
    for sock in socks:
        while True:  # skip the server's keepalive pings (valgrind makes its 20 s come soon)
            head = _recv_exactly(sock, 2)
            body = _recv_exactly(sock, head[1] & 0x7F)
            if head[0] != 0x89:
                break
        if head + body != ECHO:
            raise ConnectionError(f"unexpected echo {head + body!r}")


def _totals(path: str) -> dict[str, int]:
    """The dump's event totals by name (Ir; with the cache simulation also D1mr, DLmr...)."""
    text = Path(path).read_text()
    events = re.search(r"^events: (.+)$", text, re.M)
    found = re.search(r"^(?:summary|totals): ([\d ]+)$", text, re.M)
    if events is None or found is None:
        raise RuntimeError(f"no totals in {path}")
    return dict(zip(events.group(1).split(), map(int, found.group(1).split()), strict=False))


def count(python: str, src: str, connections: int, rounds: int, work: str, cache_sim: bool = False) -> dict[str, float]:
    """Events (instructions; cache misses with ``cache_sim``) per echoed message for one tree
    and one connection count."""
    port = _free_port()
    out = os.path.join(work, f"cg.{connections}.{abs(hash(src))}")
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env["PYTHONPATH"] = src
    server = subprocess.Popen(
        ["valgrind", "--tool=callgrind", f"--cache-sim={'yes' if cache_sim else 'no'}",
         f"--callgrind-out-file={out}.%p", python, "-m", "trio_rack", "serve",
         str(ROOT / "examples" / "websocket_echo.py"), "-b", f"http://127.0.0.1:{port}", "--no-access-log",
         "--log-level", "warning", "--max-connections", "30000"],
        env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    socks: list[socket.socket] = []
    try:
        deadline = time.monotonic() + 600
        for _ in range(connections):
            socks.append(_connect(port, deadline))
        _round(socks)
        subprocess.run(["callgrind_control", "--zero", str(server.pid)], check=True, capture_output=True, timeout=120)
        for _ in range(rounds):
            _round(socks)
        subprocess.run(["callgrind_control", "--dump", str(server.pid)], check=True, capture_output=True, timeout=120)
    finally:
        for sock in socks:
            sock.close()
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(120)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    dumps = sorted(Path(work).glob(f"{Path(out).name}.{server.pid}.*"))
    if not dumps:
        raise RuntimeError("callgrind wrote no dump")
    return {name: value / (connections * rounds) for name, value in _totals(str(dumps[0])).items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("srcs", nargs="+", help="src/ directories to compare")
    parser.add_argument("--connections", default="100,1000")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--python", default=os.path.realpath(sys.executable))
    parser.add_argument("--keep", metavar="DIR", help="keep the callgrind dumps there (for callgrind_annotate)")
    parser.add_argument("--cache-sim", action="store_true",
                        help="also simulate the caches: first-level and last-level data misses per echo")
    args = parser.parse_args()
    fan = [int(n) for n in args.connections.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or tmp
        os.makedirs(work, exist_ok=True)
        for n in fan:
            base = None
            for src in args.srcs:
                events = count(args.python, os.path.abspath(src), n, args.rounds, work, args.cache_sim)
                per = events["Ir"]
                ratio = "" if base is None else f"  ({per / base:.3f}× the first)"
                base = base or per
                misses = ""
                if args.cache_sim:
                    d1 = events.get("D1mr", 0) + events.get("D1mw", 0)
                    ll = events.get("DLmr", 0) + events.get("DLmw", 0)
                    misses = f"; {d1:,.0f} D1 and {ll:,.0f} LL data misses"
                print(f"{n:>5} websockets  {src}: {per:,.0f} instructions per echo{misses}{ratio}", flush=True)


if __name__ == "__main__":
    main()
