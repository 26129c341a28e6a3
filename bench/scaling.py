"""Scaling with load: hello and streams at 1, 64 and 512 concurrent connections, one run.

::

    python3 bench/scaling.py [--servers trio-rack,uvicorn-h11,hypercorn-trio,bare-trio]
                             [--levels 1,64,512] [--hello-seconds 3] [--stream-seconds 5]

Issue 12, point 6: how the cost of a request and of an open stream grows with the number of
connections.  Each server (started as ``bench/run`` starts it: :mod:`_servers`, one worker, on
core 0; this process and its load clients on core 1) serves, on one fresh process per server:

* **hello**: ``wrk -t1 -cC -dSs`` keep-alive for each C (req/s, and µs per request =
  1 / rate), after a one-second warm-up;
* **streams**: ``bench/clients.py streams -n C --seconds S`` for each C (``GET /stream?s=S``:
  a byte at once, then one a second): the seconds until all C are done (S is the floor), the
  server's CPU per stream (its ``/proc`` CPU over the run divided by C: the cost of holding a
  stream open and writing S+1 chunks, plus the server's own timers over the run, which
  dominate at C = 1) and RSS per open stream.

Peers come from the benchmark virtualenv (``bench/setup_peers.sh``, ``$BENCH_VENV``); a peer
that is missing or fails is skipped with a note.  Loopback only; every run is bounded (wrk by
``-d``, the streams client by ``--timeout``, servers stopped by PID).  Prints two markdown tables
with trio-rack's figure divided by each server's, from the same run.  Asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _procs import ServerProcess, free_port  # type: ignore[import-not-found]  # noqa: E402
from _scenarios import _client, _client_result, wrk  # type: ignore[import-not-found]  # noqa: E402
from _servers import BENCH, SPECS  # type: ignore[import-not-found]  # noqa: E402

VENV = Path(os.environ.get("BENCH_VENV", "/tmp/trio-rack-bench-venv"))
SERVER_CPU, LOAD_CPU = "0", "1"


def start(name: str) -> ServerProcess:
    spec = SPECS[name]
    port = free_port()
    server = ServerProcess(name, port)
    argv = ["taskset", "-c", SERVER_CPU, *spec.argv(port, venv=VENV)]
    out = Path(os.environ.get("TMPDIR", "/tmp")) / f"trio-rack-scaling-{os.getpid()}"
    server.spawn(argv, log=out / f"{name}.log", cwd=BENCH)
    try:
        server.wait_ready()
    except BaseException:
        server.stop()
        raise
    return server


def cpu(server: ServerProcess) -> float:
    """Seconds on a CPU (user + kernel) of the server's processes, every thread: schedstat's
    nanoseconds, not /proc/PID/stat's 10 ms ticks (one stream costs less than a tick)."""
    total = 0
    for pid in server.pids():
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                total += int((task / "schedstat").read_text().split()[0])
            except (OSError, ValueError, IndexError):
                pass  # a thread that just ended
    return total / 1e9


def hello(server: ServerProcess, levels: list[int], seconds: float) -> dict[int, dict[str, Any]]:
    url = f"http://127.0.0.1:{server.port}/"
    wrk(url, duration=1, server=server, connections=max(levels))  # warm-up
    results = {}
    for c in levels:
        r = wrk(url, duration=seconds, server=server, connections=c)
        results[c] = {"rps": r["rps"], "p99_ms": r["p99_ms"], "errors": r["errors"], "foreign": r["foreign_cores"]}
    return results


def streams(server: ServerProcess, n: int, seconds: int, python: str) -> dict[str, Any]:
    baseline = server.rss_kib()
    before = cpu(server)
    timeout = seconds + 30 + n / 100
    proc = _client(python, "streams", "--port", str(server.port), "-n", str(n), "--seconds", str(seconds),
                   "--timeout", str(timeout))  # fmt: skip
    peak = baseline
    deadline = time.monotonic() + timeout + 10
    while proc.poll() is None and time.monotonic() < deadline:
        peak = max(peak, server.rss_kib())
        time.sleep(0.1)
    result = _client_result(proc, timeout=max(1.0, deadline - time.monotonic()))
    used = cpu(server) - before
    open_ = max(1, result["peak_open"])
    return {
        "done_s": result["all_done_s"],
        "cpu_ms_per_stream": used / n * 1000,
        "kib_per_stream": (peak - baseline) / open_,
        "open": result["peak_open"],
        "errors": result["errors"],
    }


def measure_server(
    name: str, levels: list[int], hello_seconds: float, stream_seconds: int, python: str
) -> dict[str, Any]:
    """Hello at every level on one fresh server, then streams at every level, each on a fresh server."""
    server = start(name)
    try:
        result: dict[str, Any] = {"hello": hello(server, levels, hello_seconds), "streams": {}}
    finally:
        server.stop()
    for n in levels:  # a fresh server per N, as bench/run does
        server = start(name)
        try:
            result["streams"][n] = streams(server, n, stream_seconds, python)
        finally:
            server.stop()
    return result


def ratio(ours: float, theirs: float) -> str:
    return f" ({ours / theirs:.2f}×)" if theirs else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", default="trio-rack,uvicorn-h11,hypercorn-trio,bare-trio")
    parser.add_argument("--levels", default="1,64,512")
    parser.add_argument("--hello-seconds", type=float, default=3)
    parser.add_argument("--stream-seconds", type=int, default=5)
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    os.sched_setaffinity(0, {int(LOAD_CPU)})
    python = str(VENV / "bin" / "python") if (VENV / "bin" / "python").exists() else sys.executable
    data: dict[str, Any] = {}
    notes = []
    for name in args.servers.split(","):
        spec = SPECS[name]
        if spec.venv_tool and not (VENV / "bin" / spec.venv_tool).exists():
            notes.append(f"{spec.label}: not installed in {VENV} (bench/setup_peers.sh)")
            continue
        print(f"{spec.label} ...", file=sys.stderr, flush=True)
        try:
            data[name] = measure_server(name, levels, args.hello_seconds, args.stream_seconds, python)
        except Exception as exc:  # a peer's failure is a note; trio-rack's too, here (nothing is asserted)
            notes.append(f"{spec.label}: {exc}")
    print(json.dumps(data), file=sys.stderr)
    print(tables(data, levels, args.hello_seconds, args.stream_seconds))
    for note in notes:
        print(f"- {note}")


def tables(data: dict[str, Any], levels: list[int], hello_seconds: float, stream_seconds: int) -> str:
    """The two markdown tables (hello, streams) of ``data``: {server: {"hello": {C: ...}, "streams": {C: ...}}}."""
    names = list(data)
    ours = data.get("trio-rack")
    labels = [SPECS[n].label for n in names]
    out = [f"**hello, keep-alive** (`wrk -t1 -cC -d{hello_seconds:g}s`): req/s, and in brackets trio-rack's"
           " divided by the server's (↑)", ""]  # fmt: skip
    out += ["| connections | " + " | ".join(labels) + " |", "|---|" + "---|" * len(names)]
    for c in levels:
        cells = []
        for n in names:
            rps = data[n]["hello"][c]["rps"]
            r = ratio(ours["hello"][c]["rps"], rps) if ours and n != "trio-rack" else ""
            cells.append(f"{rps:,.0f} ({1e6 / rps:.0f} µs){r}" if rps else "—")
        out.append(f"| {c} | " + " | ".join(cells) + " |")
    out += ["", f"**streams** (`clients.py streams -n C --seconds {stream_seconds}`): server CPU ms per stream"
            " (↓; in brackets trio-rack's divided by the server's), KiB of RSS per open stream,"
            " s until all done", ""]  # fmt: skip
    out += ["| connections | " + " | ".join(labels) + " |", "|---|" + "---|" * len(names)]
    for c in levels:
        cells = []
        for n in names:
            s = data[n]["streams"][c]
            mine = ours["streams"][c]["cpu_ms_per_stream"] if ours and n != "trio-rack" else None
            r = ratio(mine, s["cpu_ms_per_stream"]) if mine is not None else ""
            err = f", {s['errors']} errors" if s["errors"] else ""
            cells.append(f"{s['cpu_ms_per_stream']:.2f} ms{r}; {s['kib_per_stream']:.1f} KiB; {s['done_s']:.1f} s{err}")
        out.append(f"| {c} | " + " | ".join(cells) + " |")
    errors = {n: {c: v["errors"] for c, v in data[n]["hello"].items() if v["errors"]} for n in names}
    errors = {n: e for n, e in errors.items() if e}
    if errors:
        out += ["", f"wrk errors: {errors}"]
    foreign = [v["foreign"] for n in names for v in data[n]["hello"].values()]
    if foreign:
        out += ["", f"Other processes used {sum(foreign) / len(foreign):.2f} cores on average during the wrk runs"
                f" (most {max(foreign):.2f})."]  # fmt: skip
    return "\n".join(out)


if __name__ == "__main__":
    main()
