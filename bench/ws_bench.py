"""WebSocket benchmark: trio-rack vs Hypercorn (trio worker) vs Uvicorn, one run, as ratios.

Usage (from the repository root)::

    python bench/ws_bench.py            # full run, about 3 minutes
    python bench/ws_bench.py --quick    # about 1 minute, for a smoke check

What it measures, for each server serving the same echo endpoint:

* **echo msg/s** over 1, 100 and 1,000 concurrent websockets: every connection sends a 32-byte
  text message, waits for its echo, and repeats, for ``--seconds``; the rate is echoes received
  per second across all connections.
* **peak RSS per idle websocket** at 10,000 connections: the server's peak RSS (``VmHWM``,
  summed over its process tree: Hypercorn serves from a worker process) with 10,000 websockets
  open and idle, minus its RSS with one open, divided by 9,999; measured on a fresh process.

Servers: trio-rack serves ``examples/websocket_echo.py`` (``trio_rack.websocket.endpoint``);
Hypercorn (``-k trio``) and Uvicorn (``--ws wsproto``, uvloop + httptools when installed) serve
:func:`app` below, the same echo as an ASGI app.  All use wsproto and no compression (the
client does not offer it).  Each server runs alone, pinned with ``taskset`` to CPU 0; the load
generator (this script, Trio, hand-rolled frames so the client costs little) is pinned to CPU 1.

Peers come from the virtualenv ``bench/setup_peers.sh`` makes (``$BENCH_VENV``, default
``/tmp/trio-rack-bench-venv``); it is run if the venv lacks a peer.  Only 127.0.0.1 is used;
every server is started and stopped by PID; every phase is bounded in count and time.

This file doubles as the peers' ASGI module (``ws_bench:app``), so it imports nothing at module
level that the peers' venv lacks.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _procs import free_port

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
VENV = Path(os.environ.get("BENCH_VENV", "/tmp/trio-rack-bench-venv"))
MESSAGE = b"0123456789abcdef0123456789abcdef"  # 32 bytes of text
SERVER_CPU, CLIENT_CPU = "0", "1"


# ------------------------------------------------------------------ the peers' ASGI app


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The echo endpoint as ASGI: text back as text, bytes as bytes; plain HTTP gets 426."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 426, "headers": [(b"upgrade", b"websocket")]})
        await send({"type": "http.response.body", "body": b"websocket endpoint\n"})
        return
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        if message.get("text") is not None:
            await send({"type": "websocket.send", "text": message["text"]})
        else:
            await send({"type": "websocket.send", "bytes": message["bytes"]})


# ------------------------------------------------------------------------------ servers


def server_argv(name: str, port: int) -> list[str]:
    pin = ["taskset", "-c", SERVER_CPU]
    if name == "trio-rack":
        return pin + [
            sys.executable, "-m", "trio_rack", "serve", str(ROOT / "examples" / "websocket_echo.py"),
            "-b", f"http://127.0.0.1:{port}", "--no-access-log", "--log-level", "warning",
            "--max-connections", "30000",
        ]
    if name == "hypercorn":
        return pin + [
            str(VENV / "bin" / "hypercorn"), "-k", "trio", "--bind", f"127.0.0.1:{port}",
            "--backlog", "2048", "--log-level", "warning", "ws_bench:app",
        ]
    if name == "uvicorn":
        return pin + [
            str(VENV / "bin" / "uvicorn"), "ws_bench:app", "--host", "127.0.0.1", "--port", str(port),
            "--ws", "wsproto", "--backlog", "2048", "--log-level", "warning", "--no-access-log",
        ]
    raise ValueError(name)


class Server:
    """One server process, started and stopped by PID."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
        # bench/ for the peers' ``ws_bench:app``, ahead of (not instead of) the caller's path, which
        # may put a trio-rack snapshot first (``bench/run --ref``)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(BENCH), env.get("PYTHONPATH")]))
        self.proc = subprocess.Popen(
            server_argv(name, self.port), cwd=BENCH, env=env,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 30
        while True:  # a benchmark, not a test: poll for the port, bounded
            if self.proc.poll() is not None:
                raise RuntimeError(f"{name} exited: {self.proc.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"{name} did not listen within 30 s") from None
                time.sleep(0.05)

    def pids(self) -> list[int]:
        """The server's process tree (Hypercorn serves from a worker process it spawns)."""
        found, todo = [], [self.proc.pid]
        while todo:
            pid = todo.pop()
            found.append(pid)
            try:
                for tid in os.listdir(f"/proc/{pid}/task"):
                    with open(f"/proc/{pid}/task/{tid}/children") as f:
                        todo.extend(int(child) for child in f.read().split())
            except OSError:
                pass
        return found

    def cpu_seconds(self) -> float:
        """User + system CPU time of the process tree so far."""
        ticks = 0
        for pid in self.pids():
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                ticks += int(fields[11]) + int(fields[12])  # utime, stime
            except (OSError, IndexError, ValueError):
                pass
        return ticks / os.sysconf("SC_CLK_TCK")

    def status(self, field: str) -> int:
        """A ``/proc/PID/status`` field in KiB (VmRSS, VmHWM), summed over the process tree."""
        total = 0
        for pid in self.pids():
            try:
                with open(f"/proc/{pid}/status") as f:
                    total += next(int(line.split()[1]) for line in f if line.startswith(field + ":"))
            except (OSError, StopIteration):
                pass
        return total

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# ------------------------------------------------------------------------- the client


def _masked_frame(payload: bytes) -> bytes:
    """One masked text frame (clients must mask; one fixed key is fine for a load generator)."""
    key = b"\x12\x34\x56\x78"
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    assert len(payload) < 126
    return bytes([0x81, 0x80 | len(payload)]) + key + masked


FRAME = _masked_frame(MESSAGE)
ECHO_SIZE = 2 + len(MESSAGE)  # the server's unmasked frame


async def _connect(port: int) -> Any:
    import trio

    stream = await trio.open_tcp_stream("127.0.0.1", port)
    stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    await stream.send_all(
        b"GET /bench HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = await stream.receive_some(4096)
        if not chunk:
            raise ConnectionError("closed during the handshake")
        head += chunk
    if not head.startswith(b"HTTP/1.1 101"):
        raise ConnectionError(head[:200].decode("latin-1"))
    if head.index(b"\r\n\r\n") + 4 != len(head):
        raise ConnectionError("unexpected bytes after the 101")
    return stream


async def _open_many(port: int, count: int, *, parallel: int = 200) -> list[Any]:
    import trio

    streams: list[Any] = []
    limiter = trio.CapacityLimiter(parallel)

    async def one() -> None:
        async with limiter:
            streams.append(await _connect(port))

    async with trio.open_nursery() as nursery:
        for _ in range(count):
            nursery.start_soon(one)
    return streams


async def _close_all(streams: list[Any]) -> None:
    import trio

    for stream in streams:
        await trio.aclose_forcefully(stream)


async def echo_rate(server: Server, connections: int, seconds: float) -> tuple[float, float]:
    """Echoes per second over ``connections`` websockets, each one message in flight, and the
    server's CPU time per echo (µs)."""
    import trio

    streams = await _open_many(server.port, connections)
    counts = [0] * connections
    try:
        async def loop(i: int, stream: Any) -> None:
            pending = 0
            while True:
                await stream.send_all(FRAME)
                need = ECHO_SIZE - pending
                while need > 0:
                    data = await stream.receive_some(65536)
                    if not data:
                        raise ConnectionError("server closed")
                    need -= len(data)
                pending = -need  # never more than one echo in flight, so 0
                counts[i] += 1

        async with trio.open_nursery() as nursery:
            for i, stream in enumerate(streams):
                nursery.start_soon(loop, i, stream)
            await trio.sleep(seconds / 5)  # warm-up
            start_count, start, start_cpu = sum(counts), trio.current_time(), server.cpu_seconds()
            await trio.sleep(seconds)
            echoed = sum(counts) - start_count
            rate = echoed / (trio.current_time() - start)
            cpu_us = (server.cpu_seconds() - start_cpu) / max(echoed, 1) * 1e6
            nursery.cancel_scope.cancel()
    finally:
        await _close_all(streams)
    return rate, cpu_us


async def idle_memory(server: Server, count: int) -> float:
    """KiB of peak RSS per idle websocket with ``count`` open."""
    import trio

    first = await _open_many(server.port, 1)
    await trio.sleep(0.5)
    base = server.status("VmRSS")
    streams = await _open_many(server.port, count - 1)
    try:
        # one round-trip on the last connection: the server has processed every handshake
        await streams[-1].send_all(FRAME)
        await streams[-1].receive_some(65536)
        await trio.sleep(1.0)
        peak = server.status("VmHWM")
    finally:
        await _close_all(streams + first)
    return (peak - base) / (count - 1)


# ------------------------------------------------------------------------------- runner


def ensure_peers() -> None:
    needed = [VENV / "bin" / "hypercorn", VENV / "bin" / "uvicorn"]
    ok = all(p.exists() for p in needed) and subprocess.run(
        [str(VENV / "bin" / "python"), "-c", "import wsproto, trio, hypercorn, uvicorn"], capture_output=True
    ).returncode == 0
    if not ok:
        subprocess.run(["bash", str(BENCH / "setup_peers.sh")], check=True)
        subprocess.run([str(VENV / "bin" / "python"), "-m", "pip", "install", "-q", "wsproto"], check=True)


def versions() -> dict[str, str]:
    code = (
        "import importlib.metadata as m, json; print(json.dumps({n: m.version(n) for n in "
        "['hypercorn', 'uvicorn', 'wsproto', 'trio'] }))"
    )
    out = subprocess.run([str(VENV / "bin" / "python"), "-c", code], capture_output=True, text=True, check=True)
    return dict(json.loads(out.stdout))


async def measure(name: str, seconds: float, idle: int, fan: list[int]) -> dict[str, float]:
    import trio

    results: dict[str, float] = {}
    server = await trio.to_thread.run_sync(Server, name)
    try:
        for n in fan:
            with trio.fail_after(seconds * 3 + 120):
                results[f"echo_{n}"], results[f"cpu_{n}"] = await echo_rate(server, n, seconds)
            print(f"  {name}: {n} websockets: {results[f'echo_{n}']:.0f} msg/s, "
                  f"{results[f'cpu_{n}']:.0f} µs server CPU per echo", file=sys.stderr)
    finally:
        await trio.to_thread.run_sync(server.stop)
    # a fresh process, so that the peak (VmHWM) is the idle websockets' and not the echo runs'
    server = await trio.to_thread.run_sync(Server, name)
    try:
        with trio.fail_after(300):
            results["kib_per_ws"] = await idle_memory(server, idle)
        print(f"  {name}: {results['kib_per_ws']:.1f} KiB per idle websocket", file=sys.stderr)
    finally:
        await trio.to_thread.run_sync(server.stop)
    return results


def table(results: dict[str, dict[str, float]], fan: list[int], idle: int) -> str:
    names = list(results)
    base = results["trio-rack"]
    lines = [
        "| metric | " + " | ".join(names) + " | " + " | ".join(f"trio-rack ÷ {n}" for n in names[1:]) + " |",
        "|---" * (1 + len(names) + len(names) - 1) + "|",
    ]
    for n in fan:
        key = f"echo_{n}"
        row = [f"echo msg/s, {n:,} websocket{'s' if n > 1 else ''}"]
        row += [f"{results[s][key]:,.0f}" for s in names]
        row += [f"{base[key] / results[s][key]:.2f}×" for s in names[1:]]
        lines.append("| " + " | ".join(row) + " |")
    for n in fan:
        key = f"cpu_{n}"
        row = [f"server CPU µs per echo, {n:,} websocket{'s' if n > 1 else ''}"]
        row += [f"{results[s][key]:,.0f}" for s in names]
        row += [f"{base[key] / results[s][key]:.2f}×" for s in names[1:]]
        lines.append("| " + " | ".join(row) + " |")
    row = [f"peak RSS per idle websocket at {idle:,} (KiB)"]
    row += [f"{results[s]['kib_per_ws']:.1f}" for s in names]
    row += [f"{base['kib_per_ws'] / results[s]['kib_per_ws']:.2f}×" for s in names[1:]]
    lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 s per rate, 2,000 idle websockets")
    parser.add_argument("--seconds", type=float, default=None, help="measuring time per echo rate (default 5)")
    parser.add_argument("--idle", type=int, default=None, help="idle websockets for the memory figure (default 10000)")
    parser.add_argument("--servers", default="trio-rack,hypercorn,uvicorn")
    args = parser.parse_args()
    seconds = args.seconds or (2.0 if args.quick else 5.0)
    idle = args.idle or (2_000 if args.quick else 10_000)
    fan = [1, 100, 1_000]
    names = args.servers.split(",")
    if names[0] != "trio-rack":
        parser.error("trio-rack must come first (the ratios are relative to it)")
    if len(names) > 1:
        ensure_peers()

    import trio  # the load generator runs on Trio, pinned to its own CPU

    os.sched_setaffinity(0, {int(CLIENT_CPU)})
    results = {}
    for name in names:
        print(f"{name} ...", file=sys.stderr)
        results[name] = trio.run(measure, name, seconds, idle, fan)
    peer_versions = versions() if len(names) > 1 else {}
    print(f"\nPython {sys.version.split()[0]}, {os.cpu_count()} CPUs; server on CPU {SERVER_CPU}, "
          f"client on CPU {CLIENT_CPU}; {seconds:g} s per rate; peers: "
          + ", ".join(f"{k} {v}" for k, v in peer_versions.items()))
    print()
    print(table(results, fan, idle))
    print("\nRatios: trio-rack's figure divided by the peer's. Above 1× is better for trio-rack in the "
          "msg/s rows, worse in the CPU and memory rows.")


if __name__ == "__main__":
    main()
