"""A/B: hello keep-alive req/s of trio-rack at two git refs, interleaved in one run.

::

    python bench/ab.py A_REF B_REF [--rounds 7] [--seconds 5] [--connections 64] [--http1-parser h11|httptools]
    python bench/ab.py A_REF B_REF --upload      # bench/run's upload row instead: MB/s, -c4

``--upload`` measures what ``bench/run``'s upload row does (``POST /upload`` of 10 MiB echoed
back, ``wrk -c4``) and prints MB/s instead of req/s.

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

from _procs import ServerProcess, free_port
from _scenarios import UPLOAD_BYTES, wrk
from _servers import BENCH, MAX_CONNECTIONS

REPO = BENCH.parent


def export(ref: str, directory: Path) -> Path:
    archive = subprocess.run(["git", "archive", ref, "src"], cwd=REPO, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(directory)], input=archive, check=True)
    return directory / "src"


def one_round(src: Path, label: str, args: argparse.Namespace, logs: Path) -> float:
    port = free_port()
    server = ServerProcess(f"trio-rack@{label}", port)
    argv = ["taskset", "-c", "0", sys.executable, "-m", "trio_rack", "serve", str(BENCH / "rack_app.py")]
    argv += ["-b", f"http://127.0.0.1:{port}", "--no-access-log", "--log-level", "warning"]
    argv += ["--max-connections", str(MAX_CONNECTIONS)]
    if args.http1_parser:
        argv += ["--http1-parser", args.http1_parser]
    os.environ["PYTHONPATH"] = str(src)
    server.spawn(argv, log=logs / f"{label}.log")
    try:
        server.wait_ready()
        url = f"http://127.0.0.1:{port}/" + ("upload" if args.upload else "")
        connections, upload = (4, UPLOAD_BYTES) if args.upload else (args.connections, 0)
        wrk(url, duration=1, cpus="1", connections=connections, upload=upload)  # warm-up
        result = wrk(url, duration=args.seconds, server=server, cpus="1", connections=connections, upload=upload)
        if result["errors"]:
            raise SystemExit(f"{label}: wrk saw errors {result['errors']}")
        return float(result["upload_mbps" if args.upload else "rps"])
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
    args = parser.parse_args()
    unit = "MB/s" if args.upload else "req/s"
    with tempfile.TemporaryDirectory(prefix="trio-rack-ab-") as tmp:
        root = Path(tmp)
        srcs = {}
        for label, ref in (("A", args.a), ("B", args.b)):
            (root / label).mkdir()
            srcs[label] = export(ref, root / label)
        results: dict[str, list[float]] = {"A": [], "B": []}
        order = ["A", "B", "B", "A"]
        for i in range(args.rounds * 2):
            label = order[i % 4]
            rps = one_round(srcs[label], label, args, root)
            results[label].append(rps)
            print(f"round {i + 1:2d} {label} {rps:8.0f} {unit}", flush=True)
    med = {k: statistics.median(v) for k, v in results.items()}
    print(f"A {args.a}: median {med['A']:.0f} {unit} over {len(results['A'])} runs")
    print(f"B {args.b}: median {med['B']:.0f} {unit} over {len(results['B'])} runs")
    print(f"B/A = {med['B'] / med['A']:.3f}")


if __name__ == "__main__":
    main()
