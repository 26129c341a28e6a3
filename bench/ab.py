"""A/B: hello keep-alive req/s of trio-rack at two git refs, interleaved in one run.

::

    python bench/ab.py A_REF B_REF [--rounds 7] [--seconds 5] [--connections 64] [--http1-parser h11|httptools]
    python bench/ab.py A_REF B_REF --upload      # bench/run's upload row instead: MB/s, -c4
    python bench/ab.py A_REF B_REF --upload --peer uvicorn-h11   # ... with the peer in the rotation

``--upload`` measures what ``bench/run``'s upload row does (``POST /upload`` of 10 MiB echoed
back, ``wrk -c4``) and prints MB/s instead of req/s.  ``--peer NAME`` (one of ``bench/run``'s
peers, e.g. ``uvicorn-h11``, started as ``bench/run`` starts it, from ``$BENCH_VENV``) runs as
a third arm after each A and B pair, and its median is divided by too.  Every round also
prints the server's CPU time per request (user + system, from ``/proc``; the process and its
children): on a shared machine a steadier figure than the rate, since another engineer's load
slows the rate down more than it changes what one request costs.

Each ref's ``src/`` is exported with ``git archive`` into a temporary folder and served from
there (``PYTHONPATH``), pinned to core 0 with ``taskset``; ``wrk -t1`` runs on core 1.  Rounds
alternate A, B, B, A, ... so a drift in the machine's load hits both alike; the medians and
their ratio are printed.  It asserts nothing: it is evidence for a change's note, with the
command that produced it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _procs import ServerProcess, cpu_seconds, free_port
from _scenarios import UPLOAD_BYTES, wrk
from _servers import BENCH, MAX_CONNECTIONS, SPECS

REPO = BENCH.parent


def export(ref: str, directory: Path) -> Path:
    archive = subprocess.run(["git", "archive", ref, "src"], cwd=REPO, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(directory)], input=archive, check=True)
    return directory / "src"


def one_round(src: Path | None, label: str, args: argparse.Namespace, logs: Path) -> tuple[float, float]:
    """One measurement of the trio-rack at ``src`` (None: the peer ``args.peer``): the rate,
    and the server's CPU milliseconds per request."""
    port = free_port()
    server = ServerProcess(f"trio-rack@{label}" if src is not None else args.peer, port)
    if src is None:
        venv = Path(os.environ.get("BENCH_VENV", "/tmp/trio-rack-bench-venv"))
        argv = ["taskset", "-c", "0", *SPECS[args.peer].argv(port, venv=venv)]
        os.environ.pop("PYTHONPATH", None)
    else:
        argv = ["taskset", "-c", "0", sys.executable, "-m", "trio_rack", "serve", str(BENCH / "rack_app.py")]
        argv += ["-b", f"http://127.0.0.1:{port}", "--no-access-log", "--log-level", "warning"]
        argv += ["--max-connections", str(MAX_CONNECTIONS)]
        if args.http1_parser:
            argv += ["--http1-parser", args.http1_parser]
        os.environ["PYTHONPATH"] = str(src)
    server.spawn(argv, log=logs / f"{label}.log", cwd=BENCH if src is None else None)
    try:
        server.wait_ready()
        url = f"http://127.0.0.1:{port}/" + ("upload" if args.upload else "")
        connections, upload = (4, UPLOAD_BYTES) if args.upload else (args.connections, 0)
        wrk(url, duration=1, cpus="1", connections=connections, upload=upload)  # warm-up
        before = sum(cpu_seconds(pid) for pid in server.pids())
        result = wrk(url, duration=args.seconds, server=server, cpus="1", connections=connections, upload=upload)
        cpu = sum(cpu_seconds(pid) for pid in server.pids()) - before
        if result["errors"]:
            raise SystemExit(f"{label}: wrk saw errors {result['errors']}")
        return float(result["upload_mbps" if args.upload else "rps"]), 1000 * cpu / max(1, result["requests"])
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a")
    parser.add_argument("b")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument(
        "--http1-parser", choices=["h11", "httptools"], help="pin the parser on both sides (default: auto)"
    )
    parser.add_argument("--upload", action="store_true", help="the 10 MiB upload (MB/s, -c4) instead of hello")
    parser.add_argument("--peer", help="a peer of bench/run's (e.g. uvicorn-h11) as a third arm")
    args = parser.parse_args()
    unit = "MB/s" if args.upload else "req/s"
    labels = ["A", "B"] + (["C"] if args.peer else [])
    with tempfile.TemporaryDirectory(prefix="trio-rack-ab-") as tmp:
        root = Path(tmp)
        srcs: dict[str, Path | None] = {"C": None}
        for label, ref in (("A", args.a), ("B", args.b)):
            (root / label).mkdir()
            srcs[label] = export(ref, root / label)
        results: dict[str, list[float]] = {label: [] for label in labels}
        cpus: dict[str, list[float]] = {label: [] for label in labels}
        order = ["A", "B", "B", "A"]
        for i in range(args.rounds * 2):
            for label in [order[i % 4]] + (["C"] if args.peer and i % 2 else []):
                rate, cpu = one_round(srcs[label], label, args, root)
                results[label].append(rate)
                cpus[label].append(cpu)
                print(f"round {i + 1:2d} {label} {rate:8.0f} {unit}  {cpu:8.3f} ms CPU a request", flush=True)
    med = {k: statistics.median(v) for k, v in results.items()}
    cpu_med = {k: statistics.median(v) for k, v in cpus.items()}
    names = {"A": args.a, "B": args.b, "C": args.peer}
    for label in labels:
        print(
            f"{label} {names[label]}: median {med[label]:.0f} {unit}, {cpu_med[label]:.3f} ms CPU a request,"
            f" over {len(results[label])} runs"
        )
    print(f"B/A = {med['B'] / med['A']:.3f} (CPU a request: {cpu_med['B'] / cpu_med['A']:.3f})")
    if args.peer:
        print(f"A/C = {med['A'] / med['C']:.3f}, B/C = {med['B'] / med['C']:.3f} (CPU a request:"
              f" {cpu_med['A'] / cpu_med['C']:.3f}, {cpu_med['B'] / cpu_med['C']:.3f})")


if __name__ == "__main__":
    main()
