"""An in-process websocket echo loop with Trio's clock stopped: the echo path's instructions
alone, for callgrind A/B of two source trees (no timer ever fires, so neither the keeper's
hand-over checks nor keepalive pings are counted, however slowly valgrind runs).

    python3 bench/ws_echo_loop.py [--connections 100] [--rounds 20] [--count]
    bench/ws_echo_loop.py --ab /tmp/a/src ./src --connections 100,1000   # callgrind, both trees

Each connection is a real ``socket.socketpair()``: the server end is a ``trio.SocketStream``
served by the real HTTP/1 connection driver (``trio_rack.testing.serve_stream``) running
``examples/websocket_echo.py``; the client end is driven by this script with hand-made masked
frames (a round: one 32-byte text message sent on every connection, then every echo read), so
the server sees batches of ready sockets as under ``ws_bench.py``.  The run uses
``trio.testing.MockClock()`` (rate 0: time stands still).  With ``--ab``, each tree runs twice
under callgrind (``--rounds`` R1 and 5×R1); (I2 − I1) / (4 × R1 × C) is the count per echo,
set-up and handshakes cancelling out; the client's share (a few Python-level socket calls per
echo) is in both trees alike.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
from ws_instructions import ECHO, FRAME, HANDSHAKE  # noqa: E402  (the same client bytes)


async def _exactly(stream: object, n: int) -> bytes:
    got = b""
    while len(got) < n:
        chunk = await stream.receive_some(n - len(got))  # type: ignore[attr-defined]
        if not chunk:
            raise ConnectionError("server closed")
        got += chunk
    return got


async def run(connections: int, rounds: int) -> None:
    import runpy

    import trio

    from trio_rack import Limits
    from trio_rack.state import ServerState
    from trio_rack.testing import serve_stream

    app = runpy.run_path(str(ROOT / "examples" / "websocket_echo.py"))["app"]
    state = ServerState(app, Limits(), access_log=False)
    clients = []
    async with trio.open_nursery() as nursery:
        for _ in range(connections):
            a, b = socket.socketpair()
            server, client = trio.SocketStream(trio.socket.from_stdlib_socket(a)), \
                trio.SocketStream(trio.socket.from_stdlib_socket(b))
            nursery.start_soon(serve_stream, server, state)
            await client.send_all(HANDSHAKE)
            head = b""
            while b"\r\n\r\n" not in head:
                head += await client.receive_some(4096)
            assert head.startswith(b"HTTP/1.1 101"), head[:100]
            clients.append(client)
        for _ in range(rounds):
            for client in clients:
                await client.send_all(FRAME)
            for client in clients:
                if await _exactly(client, len(ECHO)) != ECHO:
                    raise ConnectionError("unexpected echo")
        for client in clients:
            await client.aclose()
        nursery.cancel_scope.cancel()


def _instructions(python: str, src: str, connections: int, rounds: int, work: str) -> int:
    out = os.path.join(work, f"cg.{connections}.{rounds}.{abs(hash(src))}")
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env["PYTHONPATH"] = src
    subprocess.run(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", python, str(Path(__file__).resolve()),
         "--connections", str(connections), "--rounds", str(rounds)],
        env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=1800,
    )
    found = re.search(r"^(?:summary|totals): (\d+)", Path(out).read_text(), re.M)
    if found is None:
        raise RuntimeError(f"no totals in {out}")
    return int(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", default="100")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--ab", nargs="+", metavar="SRC", help="src/ trees to count under callgrind")
    parser.add_argument("--python", default=os.path.realpath(sys.executable))
    args = parser.parse_args()
    if not args.ab:
        import trio
        import trio.testing

        trio.run(run, int(args.connections), args.rounds, clock=trio.testing.MockClock())
        return
    with tempfile.TemporaryDirectory() as work:
        for n in (int(c) for c in args.connections.split(",")):
            base = None
            for src in args.ab:
                src = os.path.abspath(src)
                low = _instructions(args.python, src, n, args.rounds, work)
                high = _instructions(args.python, src, n, args.rounds * 5, work)
                per = (high - low) / (4 * args.rounds * n)
                ratio = "" if base is None else f"  ({per / base:.3f}× the first)"
                base = base or per
                print(f"{n:>5} websockets  {src}: {per:,.0f} instructions per echo{ratio}", flush=True)


if __name__ == "__main__":
    main()
