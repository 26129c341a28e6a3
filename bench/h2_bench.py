"""HTTP/2 benchmark: trio-rack beside Hypercorn (trio worker) and Granian (``--http 2``), with h2load.

    python3 bench/h2_bench.py            # every scenario, every server found, one table
    python3 bench/h2_bench.py --servers trio-rack --duration 3

Scenarios, all over cleartext HTTP/2 with prior knowledge on 127.0.0.1 (h2load's default for
``http://`` URIs), the server under ``taskset -c 0`` and h2load on core 1:

* **hello**: ``h2load -c 16 -m 16 -D DURATION /`` (16 connections, 16 streams in flight on each):
  requests per second;
* **256 MiB**: ``h2load -c 1 -m 1 -n 1 /big`` (one stream, 2^30-byte client windows): MB/s;
* **RSS per idle connection**: 500 HTTP/2 connections opened (preface, SETTINGS, one request
  answered, then idle) to the fresh server, its RSS before and after: KiB per connection.

Peers come from the benchmark virtualenv (``bench/setup_peers.sh``, ``$BENCH_VENV``); a peer
that is missing is skipped with a note.  Ratios are against trio-rack in the same run.
Servers are stopped by PID; nothing but 127.0.0.1 is contacted.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from _procs import ServerError, ServerProcess, free_port  # noqa: E402
from _servers import SPECS  # noqa: E402

VENV = Path(os.environ.get("BENCH_VENV", "/tmp/trio-rack-bench-venv"))
H2LOAD = shutil.which("h2load") or "/usr/bin/h2load"
SERVERS = ["trio-rack", "hypercorn-trio", "granian"]
IDLE_CONNECTIONS = 500
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
EMPTY_SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def argv_for(name: str, port: int) -> list[str]:
    argv = SPECS[name].argv(port, venv=VENV)
    if name == "granian":
        argv = argv[:-1] + ["--http", "2", argv[-1]]  # before the app path
    return ["taskset", "-c", "0", *argv]


def h2load(*args: str, timeout: float = 120) -> str:
    proc = subprocess.run(
        ["taskset", "-c", "1", H2LOAD, *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    return proc.stdout + proc.stderr


def start(name: str, out: Path) -> ServerProcess:
    port = free_port()
    server = ServerProcess(name, port)
    server.spawn(argv_for(name, port), log=out / f"{name}-h2.log", cwd=BENCH)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        server.check_alive()
        if " 1 succeeded" in h2load("-n", "1", "-c", "1", f"http://127.0.0.1:{port}/", timeout=10):
            server.pids()
            return server
        time.sleep(0.2)
    server.stop()
    raise ServerError(f"{name} does not answer HTTP/2 with prior knowledge; log: {server.log_tail()}")


def _succeeded(output: str) -> tuple[int, int]:
    match = re.search(r"requests: (\d+) total, \d+ started, \d+ done, (\d+) succeeded", output)
    if not match:
        raise ServerError("h2load printed no request summary:\n" + output[-800:])
    return int(match.group(1)), int(match.group(2))


#: Requests that failed in the last hello run, per server (a note under the table).
FAILED_REQUESTS: dict[int, int] = {}


def hello(port: int, duration: float) -> float:
    output = h2load("-c", "16", "-m", "16", "-D", str(max(1, round(duration))), "--warm-up-time", "1", f"http://127.0.0.1:{port}/")
    total, ok = _succeeded(output)
    if not ok:
        raise ServerError(f"hello: none of {total} succeeded")
    FAILED_REQUESTS[port] = total - ok
    match = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", output)
    assert match, output[-800:]
    return float(match.group(1))


def big(port: int) -> float:
    started = time.monotonic()
    output = h2load("-c", "1", "-m", "1", "-n", "1", f"http://127.0.0.1:{port}/big")
    elapsed = time.monotonic() - started
    total, ok = _succeeded(output)
    traffic = re.search(r"traffic: .*?\((\d+)\) total", output)
    if ok != 1 or traffic is None or int(traffic.group(1)) < 256 << 20:
        raise ServerError("256 MiB: incomplete:\n" + output[-800:])
    return (256 << 20) / elapsed / 1e6


def idle_rss(server: ServerProcess) -> float:
    """KiB of server RSS per idle HTTP/2 connection (each answered one request first)."""
    before = server.rss_kib()
    import hpack
    from hyperframe.frame import HeadersFrame

    fields = [(":method", "GET"), (":scheme", "http"), (":authority", "127.0.0.1"), (":path", "/")]
    block = hpack.Encoder().encode(fields)
    request = HeadersFrame(1, data=block, flags=["END_HEADERS", "END_STREAM"]).serialize()
    socks = []
    try:
        for _ in range(IDLE_CONNECTIONS):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
            sock.sendall(PREFACE + EMPTY_SETTINGS + request)
            socks.append(sock)
        for sock in socks:
            sock.recv(65536)  # the server's SETTINGS (and, usually, the answer)
        time.sleep(1.0)
        after = server.rss_kib()
    except OSError as exc:
        raise ServerError(f"idle connections: {exc}") from None
    finally:
        for sock in socks:
            sock.close()
    return (after - before) / IDLE_CONNECTIONS


def run_scenario(key: str, server: ServerProcess, duration: int) -> float:
    if key == "rss":
        return idle_rss(server)
    if key == "hello":
        return hello(server.port, duration)
    return big(server.port)


def cell(row: dict[str, float], base: dict[str, float] | None, key: str, fmt: str) -> str:
    """One table cell: the figure, and its ratio to trio-rack's (``base``)."""
    if key not in row:
        return "failed"
    text = format(row[key], fmt)
    if base is not None and row is not base and base.get(key):
        text += f" ({row[key] / base[key]:.2f}×)"
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--servers", default=",".join(SERVERS))
    parser.add_argument("--duration", type=int, default=5, help="seconds of the hello run (default 5)")
    parser.add_argument("--out", type=Path, default=BENCH / "results" / "h2")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows: dict[str, dict[str, float]] = {}
    notes = []
    for name in args.servers.split(","):
        tool = SPECS[name].venv_tool
        if tool is not None and not (VENV / "bin" / tool).exists():
            notes.append(f"{name}: skipped ({tool} is not installed in {VENV}; run bench/setup_peers.sh)")
            continue
        try:
            server = start(name, args.out)
        except ServerError as exc:
            notes.append(f"{name}: skipped ({exc})")
            continue
        row = rows[name] = {}
        try:
            # RSS first, on the fresh process: after the load runs, freed memory is reused
            for key in ("rss", "hello", "big"):
                try:
                    row[key] = run_scenario(key, server, args.duration)
                    if key == "hello" and FAILED_REQUESTS.get(server.port):
                        notes.append(f"{name}, hello: {FAILED_REQUESTS[server.port]} requests failed")
                        if name == "trio-rack":
                            print("\n".join(notes), file=sys.stderr)
                            return 1
                except (ServerError, subprocess.TimeoutExpired) as exc:
                    first = str(exc).strip().splitlines()
                    notes.append(f"{name}, {key}: failed ({first[0] if first else exc})")
                    if name == "trio-rack":
                        print("\n".join(notes), file=sys.stderr)
                        return 1
                    server.check_alive()
        except ServerError as exc:
            notes.append(f"{name}: died ({exc})")
        finally:
            server.stop()
    base = rows.get("trio-rack")
    print("| server | hello, -c 16 -m 16 (req/s) | 256 MiB, one stream (MB/s) | RSS per idle h2 connection (KiB) |")
    print("|---|---|---|---|")
    for name, row in rows.items():
        cells = [cell(row, base, "hello", ",.0f"), cell(row, base, "big", ",.0f"), cell(row, base, "rss", ".1f")]
        print(f"| {SPECS[name].label} | " + " | ".join(cells) + " |")
    for note in notes:
        print(f"\n{note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
