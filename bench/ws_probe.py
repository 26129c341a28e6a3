"""What N idle websockets cost trio-rack, seen from inside the server process (issue #12 point 4).

::

    python3 bench/ws_probe.py -n 2000             # tracemalloc: bytes per idle websocket, by line
    python3 bench/ws_probe.py -n 2000 --no-trace  # RSS growth only (no tracemalloc overhead)
    python3 bench/ws_probe.py -n 2000 --objects   # live objects per websocket, by type (gc)

The server (``trio_rack.serve`` on ``examples/websocket_echo.py``, 127.0.0.1, port 0) runs in
this process; the client, ``bench/ws_bench.py``'s hand-rolled websocket opener, runs in a child
process (``--idle-client``) that opens N websockets, echoes one message on the last one (so the
server has processed every handshake), reports, and holds them until its stdin closes.  As
``bench/streams_probe.py`` does for streams, it prints the RSS growth per websocket and the
traced bytes and blocks per websocket, by file and by line.  Run it with the ``src/`` under test
first on ``PYTHONPATH``.

Resource handling: the client is a child process, killed by PID at the end; the server's
nursery is cancelled.  Traffic goes to 127.0.0.1 only and the run ends by itself.
"""

from __future__ import annotations

import argparse
import collections
import gc
import resource
import subprocess
import sys
import tracemalloc
from pathlib import Path
from typing import Any

import trio

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent / "examples"))

import websocket_echo  # noqa: E402

from streams_probe import print_traced  # noqa: E402
from trio_rack import Limits, serve  # noqa: E402


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


async def _idle_client(port: int, n: int) -> None:
    """The child: open ``n`` websockets, one echo on the last, say so, hold until stdin closes."""
    import ws_bench

    streams = await ws_bench._open_many(port, n)
    await streams[-1].send_all(ws_bench.FRAME)
    await streams[-1].receive_some(65536)
    print("ready", flush=True)
    await trio.to_thread.run_sync(sys.stdin.read)
    await ws_bench._close_all(streams)


async def probe(n: int, trace: bool, objects: bool, top: int) -> None:
    async with trio.open_nursery() as nursery:

        async def serving(task_status: trio.TaskStatus[Any]) -> None:
            await serve(websocket_echo.app, bind="http://127.0.0.1:0", access_log=False,
                        limits=Limits(max_connections=n + 100), task_status=task_status)

        binds = await nursery.start(serving)
        port = int(binds[0].port)
        argv = [sys.executable, __file__, "--idle-client", str(port), "-n"]

        async def run_client(count: int) -> trio.Process:
            proc = await trio.lowlevel.open_process(argv + [str(count)], stdin=subprocess.PIPE,
                                                    stdout=subprocess.PIPE)
            assert proc.stdout is not None
            line = b""
            while not line.endswith(b"\n"):
                chunk = await proc.stdout.receive_some(100)
                if not chunk:
                    raise RuntimeError("the idle client failed")
                line += chunk
            return proc

        warm = await run_client(20)  # warm-up: imports, caches, the first websockets
        await trio.sleep(0.5)
        gc.collect()
        if trace:
            tracemalloc.start(1)
        rss0 = _rss_kib()
        snap0 = tracemalloc.take_snapshot() if trace else None
        types0 = collections.Counter(type(o).__name__ for o in gc.get_objects()) if objects else None
        client = await run_client(n)
        try:
            await trio.sleep(1.0)
            gc.collect()
            rss1 = _rss_kib()
            snap1 = tracemalloc.take_snapshot() if trace else None
            types1 = collections.Counter(type(o).__name__ for o in gc.get_objects()) if objects else None
        finally:
            for proc in (client, warm):
                proc.kill()
                await proc.wait()
        print(f"{n} idle websockets: RSS grew {(rss1 - rss0) / n:.2f} KiB per websocket"
              + (" (with tracemalloc's own overhead)" if trace else ""))
        if types0 is not None and types1 is not None:
            print("\ngc-tracked objects per websocket by type:")
            diff = types1 - types0
            print(f"{sum(diff.values()) / n:7.1f}  (all)")
            for name, count in diff.most_common(top):
                print(f"{count / n:7.2f}  {name}")
        if snap0 is not None and snap1 is not None:
            print_traced(snap0, snap1, n, "websocket", top)
        nursery.cancel_scope.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=2000)
    parser.add_argument("--no-trace", action="store_true", help="RSS only, without tracemalloc's overhead")
    parser.add_argument("--objects", action="store_true", help="count live gc-tracked objects by type")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--idle-client", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.idle_client is not None:
        trio.run(_idle_client, args.idle_client, args.n)
        return
    trio.run(probe, args.n, not args.no_trace, args.objects, args.top)


if __name__ == "__main__":
    main()
