"""What N open streams cost trio-rack, seen from inside the server process (issue #12 point 4).

::

    python3 bench/streams_probe.py memory -n 2000      # tracemalloc: bytes per open stream, by line
    python3 bench/streams_probe.py run -n 10000        # GC time, server CPU, kernel accept drops
    python3 bench/streams_probe.py process -n 10000    # RSS per stream as bench/run measures it

Both run ``trio_rack.serve`` on ``bench/rack_app.py`` in this process (on 127.0.0.1, port 0) and
drive it with ``bench/clients.py streams`` in a child process (the peers' virtualenv Python when
it exists, as ``bench/run`` does; pinned to core 1 with ``taskset`` when available, the server
to core 0).  Run it with the ``src/`` under test first on ``PYTHONPATH``.

``memory``: after 20 warm-up streams, a tracemalloc snapshot; then N streams of 30 s are
opened, and once every one has had its first byte and a sleep or two, a second snapshot.  It
prints the RSS growth per stream (without tracemalloc's own overhead only in ``--no-trace``
mode), the traced bytes and blocks per stream, the traced bytes by file and the top lines.
Deterministic to about 100 bytes a stream (what is in flight at the snapshot varies).

``run``: N ten-second streams (the ``bench/run`` streams scenario), reporting the client's
figures (until all had a byte, until all done), the server's CPU seconds, the time the cyclic
garbage collector took by generation (``gc.callbacks``) and how many connections the kernel
dropped at the listen queue meanwhile (``TcpExt: ListenOverflows``, machine-wide).  Wall-clock
figures move with the machine's load; CPU seconds less; the GC and drop counts little.

``process``: the ``bench/run`` streams scenario alone, for the trio-rack on ``PYTHONPATH``: a
server process of its own (``python3 -m trio_rack serve bench/rack_app.py -n 1
--no-access-log --max-connections 30000``, the parser as ``--http1-parser`` says, pinned to core
0), N ten-second streams from ``bench/clients.py``, the server's RSS polled every 0.1 s; prints
``bench/_scenarios.streams``'s figures (KiB per stream = (peak − baseline) / most open at once).

Resource handling: the client is a child process, killed by PID at the end; the server's
nursery is cancelled.  Traffic goes to 127.0.0.1 only and the runs end by themselves.
"""

from __future__ import annotations

import argparse
import collections
import gc
import json
import linecache
import os
import resource
import shutil
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

import trio

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import rack_app  # noqa: E402
from trio_rack import Limits, serve  # noqa: E402

PEER_PYTHON = Path(os.environ.get("BENCH_VENV", "/tmp/trio-rack-bench-venv")) / "bin" / "python"


def _client_argv(port: int, n: int, seconds: int) -> list[str]:
    python = str(PEER_PYTHON) if PEER_PYTHON.exists() else sys.executable
    argv = [python, str(BENCH / "clients.py"), "streams", "--port", str(port), "-n", str(n)]
    argv += ["--seconds", str(seconds), "--timeout", str(seconds + 60 + n / 200)]
    return (["taskset", "-c", "1"] if shutil.which("taskset") else []) + argv


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def _listen_overflows() -> int | None:
    try:
        with open("/proc/net/netstat") as f:
            lines = [line.split() for line in f if line.startswith("TcpExt:")]
        return int(lines[1][lines[0].index("ListenOverflows")])
    except (OSError, ValueError, IndexError):
        return None


#: ``--http1-parser``: h11 by default, the default install's parser (as bench/run's trio-rack row).
PARSER = ["h11"]


async def _serving(nursery: trio.Nursery, n: int) -> int:
    async def serving(task_status: trio.TaskStatus[Any]) -> None:
        limits = Limits(max_connections=n + 100)
        await serve(
            rack_app.app, bind="http://127.0.0.1:0", access_log=False, limits=limits,
            http1_parser=PARSER[0], task_status=task_status,
        )  # fmt: skip

    binds = await nursery.start(serving)
    return int(binds[0].port)


async def memory(n: int, trace: bool, top: int) -> None:
    async with trio.open_nursery() as nursery:
        port = await _serving(nursery, n)
        await trio.run_process(_client_argv(port, 20, 1), capture_stdout=True)  # warm-up
        await trio.sleep(0.5)
        gc.collect()
        if trace:
            tracemalloc.start(1)
        rss0, before = _rss_kib(), rack_app._requests
        snap0 = tracemalloc.take_snapshot() if trace else None
        client = await trio.lowlevel.open_process(_client_argv(port, n, 30), stdout=subprocess.DEVNULL)
        try:
            while rack_app._requests - before < n:  # noqa: ASYNC110 -- the app's counter has no event
                await trio.sleep(0.1)
            await trio.sleep(2.5)  # every stream past its first byte and a sleep or two
            gc.collect()
            rss1 = _rss_kib()
            snap1 = tracemalloc.take_snapshot() if trace else None
        finally:
            client.kill()
            await client.wait()
        print(f"{n} open streams: RSS grew {(rss1 - rss0) / n:.2f} KiB per stream"
              + (" (with tracemalloc's own overhead)" if trace else ""))  # fmt: skip
        if snap0 is None or snap1 is None:
            nursery.cancel_scope.cancel()
            return
        print_traced(snap0, snap1, n, "stream", top)
        nursery.cancel_scope.cancel()


def _short(filename: str) -> str:
    return filename.split("site-packages/")[-1].split("/src/")[-1]


def print_traced(snap0: tracemalloc.Snapshot, snap1: tracemalloc.Snapshot, n: int, unit: str, top: int) -> None:
    """What the ``n`` units (streams, websockets) allocated between the two snapshots, per
    unit: in all, by file, and the ``top`` lines (``ws_probe.py`` prints the same report)."""
    stats = snap1.compare_to(snap0, "lineno")
    size = sum(s.size_diff for s in stats)
    blocks = sum(s.count_diff for s in stats)
    print(f"traced: {size / n:,.0f} B and {blocks / n:.1f} blocks per {unit}")
    by_file: collections.Counter[str] = collections.Counter()
    for s in stats:
        by_file[_short(s.traceback[0].filename)] += s.size_diff
    print(f"\nbytes per {unit} by file:")
    for name, b in by_file.most_common(top):
        print(f"{b / n:7.0f}  {name}")
    print(f"\nbytes and blocks per {unit} by line:")
    for s in stats[:top]:
        frame = s.traceback[0]
        code = linecache.getline(frame.filename, frame.lineno).strip()[:80]
        print(f"{s.size_diff / n:7.0f} {s.count_diff / n:4.1f}  {_short(frame.filename)}:{frame.lineno}  {code}")


async def run(n: int, seconds: int) -> None:
    spent = {0: 0.0, 1: 0.0, 2: 0.0}
    count = {0: 0, 1: 0, 2: 0}
    started = [0.0]

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            spent[info["generation"]] += time.perf_counter() - started[0]
            count[info["generation"]] += 1

    async with trio.open_nursery() as nursery:
        port = await _serving(nursery, n)
        drops0, cpu0 = _listen_overflows(), time.process_time()
        gc.callbacks.append(on_gc)
        try:
            done = await trio.run_process(_client_argv(port, n, seconds), capture_stdout=True)
        finally:
            gc.callbacks.remove(on_gc)
        cpu, drops1 = time.process_time() - cpu0, _listen_overflows()
        result = json.loads(done.stdout.decode().strip().splitlines()[-1])
        report = {
            "n": n,
            "ok": result["ok"],
            "most_open": result["peak_open"],
            "all_had_a_byte_s": result["all_open_s"],
            "all_done_s": round(result["all_done_s"], 2),
            "server_cpu_s": round(cpu, 2),
            "gc_s_by_generation": [round(spent[g], 2) for g in range(3)],
            "gc_collections_by_generation": [count[g] for g in range(3)],
            "gc_thresholds": list(gc.get_threshold()),
            "listen_overflows": None if drops0 is None or drops1 is None else drops1 - drops0,
            "errors": result["errors"],
        }
        print(json.dumps(report))
        nursery.cancel_scope.cancel()


def process(n: int, seconds: int) -> None:
    """``bench/run``'s streams scenario against a server process (see the module docstring)."""
    from _procs import ServerProcess, free_port
    from _scenarios import streams

    port = free_port()
    server = ServerProcess("trio-rack", port)
    argv = ["taskset", "-c", "0"] if shutil.which("taskset") else []
    argv += [sys.executable, "-m", "trio_rack", "serve", str(BENCH / "rack_app.py"), "-b", f"http://127.0.0.1:{port}"]
    argv += ["--no-access-log", "--log-level", "warning", "--max-connections", "30000", "-n", "1"]
    argv += ["--http1-parser", PARSER[0]]
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"streams-probe-{port}.log"
    server.spawn(argv, log=log)
    try:
        server.wait_ready()
        python = str(PEER_PYTHON) if PEER_PYTHON.exists() else sys.executable
        result = streams(server, n=n, seconds=seconds, python=python)
    finally:
        server.stop()
    print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in result.items()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("memory")
    m.add_argument("-n", type=int, default=2000)
    m.add_argument("--no-trace", action="store_true", help="RSS only, without tracemalloc's overhead")
    m.add_argument("--top", type=int, default=40)
    r = sub.add_parser("run")
    r.add_argument("-n", type=int, default=10_000)
    r.add_argument("--seconds", type=int, default=10)
    pr = sub.add_parser("process")
    pr.add_argument("-n", type=int, default=10_000)
    pr.add_argument("--seconds", type=int, default=10)
    for p in (m, r, pr):
        p.add_argument("--http1-parser", default="h11", choices=["h11", "httptools", "auto"])
    args = parser.parse_args()
    PARSER[0] = args.http1_parser
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.command == "process":
        if hasattr(os, "sched_setaffinity") and shutil.which("taskset") and (os.cpu_count() or 1) > 1:
            os.sched_setaffinity(0, {1})  # the client (a child) on core 1, as bench/run has it
        process(args.n, args.seconds)
        return
    if hasattr(os, "sched_setaffinity") and shutil.which("taskset") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {0})  # the server on core 0, the client on core 1
    if args.command == "memory":
        trio.run(memory, args.n, not args.no_trace, args.top)
    else:
        trio.run(run, args.n, args.seconds)


if __name__ == "__main__":
    main()
