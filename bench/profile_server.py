"""Profile trio-rack under load and say where the time goes (and how much of it is h11's).

::

    python bench/profile_server.py [--scenario hello|streams] [--tool cprofile|pyinstrument]
                            [--seconds 10] [--streams 10000] [--top 20] [--ref REF]

The server runs under the profiler on core 0 (``python -m cProfile -m trio_rack serve
bench/rack_app.py ...`` or ``python -m pyinstrument -r pstats ...``, which needs
``pip install pyinstrument``; py-spy cannot attach in this sandbox); the load runs on core 1:
``wrk -t1 -c64`` on ``GET /`` for ``hello``, ``clients.py streams`` for ``streams`` (N
streams of a byte a second).  Then SIGTERM, the profiler writes its file, and this script
prints the top functions by own and by cumulative time and the share of busy time (time not
spent waiting in epoll) of each part: trio-rack's code, h11, trio, the app, the rest of the
standard library, and system calls.  C functions (``{method ...}``) count towards the part
that called them, except socket and poll calls, which are "system calls".

cProfile charges every Python call, so it inflates call-heavy code (h11's and ours alike);
pyinstrument samples, and distorts less.  Read shares, not absolute times.
"""

from __future__ import annotations

import argparse
import datetime
import os
import pstats
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _procs import ServerProcess, free_port
from _scenarios import wrk
from _servers import BENCH, MAX_CONNECTIONS

SYSCALLS = {
    "send",
    "recv",
    "recv_into",
    "sendmsg",
    "accept",
    "poll",
    "close",
    "shutdown",
    "setsockopt",
    "getpeername",
}


def category(func: tuple[str, int, str]) -> str:
    filename, _, _name = func
    path = filename.replace(os.sep, "/")
    if "/trio_rack/" in path:
        return "trio-rack"
    if "/h11/" in path:
        return "h11"
    if "/trio/" in path or "/outcome/" in path:
        return "trio"
    if path.endswith("rack_app.py"):
        return "app"
    if filename == "~":
        return "C"
    return "stdlib/other"


def _is_syscall(name: str) -> bool:
    return any(f"'{s}'" in name or name.endswith(f".{s}") for s in SYSCALLS) and (
        "socket" in name or "select" in name or "poll" in name
    )


def shares(stats: pstats.Stats) -> tuple[dict[str, float], float, float]:
    """Own time by part (C calls charged to their caller's part); epoll idle time; total."""
    parts: dict[str, float] = defaultdict(float)
    idle = 0.0
    total = 0.0
    for func, (_cc, _nc, tt, _ct, callers) in stats.stats.items():  # type: ignore[attr-defined]
        total += tt
        kind = category(func)
        name = func[2]
        if "epoll" in name and "poll" in name:
            idle += tt  # trio waiting for I/O (also the syscall, but mostly idle under light load)
            continue
        if kind != "C":
            parts[kind] += tt
            continue
        if _is_syscall(name):
            parts["system calls"] += tt
            continue
        # a C function: split its own time among its callers' parts
        caller_tt = {
            c: v[2] if isinstance(v, tuple) else 0.0 for c, v in callers.items()
        }
        known = sum(caller_tt.values())
        if not known:
            parts["C, caller unknown"] += tt
            continue
        for caller, part_tt in caller_tt.items():
            owner = category(caller)
            parts[owner if owner != "C" else "C, caller unknown"] += (
                tt * part_tt / known
            )
    return dict(parts), idle, total


def _label(func: tuple[str, int, str]) -> str:
    filename, line, name = func
    if filename == "~":
        return name
    path = filename.replace(os.sep, "/")
    for marker in ("/site-packages/", "/src/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{path}:{line}({name})"


def h11_cycle_us(cycles: int = 20_000) -> float:
    """h11 alone: µs for one keep-alive cycle of wrk's request and trio-rack's hello response."""
    import h11

    request = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n"
    headers = [
        (b"content-type", b"text/plain"),
        (b"content-length", b"13"),
        (b"date", b"Thu, 26 Nov 2026 17:00:00 GMT"),
        (b"server", b"trio-rack"),
    ]
    conn = h11.Connection(h11.SERVER)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(cycles):
            conn.receive_data(request)
            conn.next_event()  # Request
            conn.next_event()  # EndOfMessage
            conn.next_event()  # PAUSED: a server asks once more before responding
            conn.send(h11.Response(status_code=200, headers=headers))
            conn.send(h11.Data(data=b"Hello, world!"))
            conn.send(h11.EndOfMessage())
            conn.start_next_cycle()
        best = min(best, (time.perf_counter() - start) / cycles * 1e6)
    return best


def report(profile: Path, top: int) -> str:
    stats = pstats.Stats(str(profile))
    parts, idle, total = shares(stats)
    busy = total - idle
    lines = [
        f"profile: {profile}",
        f"total {total:.2f} s, waiting in epoll {idle:.2f} s, busy {busy:.2f} s",
        "",
    ]
    lines.append("share of busy time by part:")
    for part, seconds in sorted(parts.items(), key=lambda kv: -kv[1]):
        lines.append(f"  {part:<20} {seconds:8.2f} s  {100 * seconds / busy:5.1f} %")
    entries = stats.stats.items()  # type: ignore[attr-defined]
    for title, index in (
        ("own time (tottime)", 2),
        (
            "cumulative time (cumtime), below the entry chain (functions under 90 % of the total)",
            3,
        ),
    ):
        lines += [
            "",
            f"top {top} by {title}:",
            f"  {'calls':>9} {'own s':>7} {'cum s':>7}  function",
        ]
        chosen = [kv for kv in entries if index == 2 or kv[1][3] < 0.9 * total]
        for func, (_cc, nc, tt, ct, _) in sorted(chosen, key=lambda kv: -kv[1][index])[
            :top
        ]:
            lines.append(f"  {nc:>9} {tt:7.2f} {ct:7.2f}  {_label(func)}")
    return "\n".join(lines)


def _unprofiled(out: Path, seconds: int) -> str:
    """The same load without a profiler, and h11's own cost per cycle, for a distortion-free share."""
    port = free_port()
    argv = [
        "taskset",
        "-c",
        "0",
        sys.executable,
        "-m",
        "trio_rack",
        "serve",
        str(BENCH / "rack_app.py"),
    ]
    argv += [
        "-b",
        f"http://127.0.0.1:{port}",
        "--no-access-log",
        "--log-level",
        "warning",
    ]
    server = ServerProcess("trio-rack", port)
    server.spawn(argv, log=out / "server-unprofiled.log", cwd=BENCH)
    try:
        server.wait_ready()
        wrk(f"http://127.0.0.1:{port}/", duration=1)
        rps = wrk(f"http://127.0.0.1:{port}/", duration=seconds)["rps"]
    finally:
        server.stop()
    os.sched_setaffinity(0, {0})
    h11_us = h11_cycle_us()
    os.sched_setaffinity(0, {1})
    per_request = 1e6 / rps
    return (
        f"without a profiler: {rps:,.0f} req/s = {per_request:.1f} µs per request; "
        f"h11 alone (request parsed, hello response serialised, next cycle) {h11_us:.1f} µs per request "
        f"= {100 * h11_us / per_request:.0f} % of it\n"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", choices=["hello", "streams"], default="hello")
    parser.add_argument(
        "--tool", choices=["cprofile", "pyinstrument"], default="cprofile"
    )
    parser.add_argument(
        "--seconds",
        type=int,
        default=10,
        help="load duration (stream length for streams)",
    )
    parser.add_argument("--streams", type=int, default=10_000)
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument(
        "--ref",
        help="profile trio-rack as of this git commit instead of the working tree",
    )
    args = parser.parse_args()

    os.sched_setaffinity(0, {1})
    import resource

    resource.setrlimit(
        resource.RLIMIT_NOFILE, (resource.getrlimit(resource.RLIMIT_NOFILE)[1],) * 2
    )
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = BENCH / "results" / f"profile-{args.scenario}-{args.tool}-{stamp}"
    out.mkdir(parents=True)
    if args.ref:
        from runner import _use_snapshot

        _use_snapshot(args.ref, out / "src-snapshot")
    profile = out / "trio-rack.prof"
    port = free_port()
    if args.tool == "cprofile":
        runner = [sys.executable, "-m", "cProfile", "-o", str(profile)]
    else:
        runner = [
            sys.executable,
            "-m",
            "pyinstrument",
            "-r",
            "pstats",
            "-o",
            str(profile),
            "-i",
            "0.0005",
        ]
    argv = [
        "taskset",
        "-c",
        "0",
        *runner,
        "-m",
        "trio_rack",
        "serve",
        str(BENCH / "rack_app.py"),
    ]
    argv += [
        "-b",
        f"http://127.0.0.1:{port}",
        "--no-access-log",
        "--log-level",
        "warning",
    ]
    argv += ["--max-connections", str(MAX_CONNECTIONS)]
    server = ServerProcess("trio-rack (profiled)", port)
    server.spawn(argv, log=out / "server.log", cwd=BENCH)
    try:
        server.wait_ready()
        if args.scenario == "hello":
            wrk(f"http://127.0.0.1:{port}/", duration=1)
            r = wrk(f"http://127.0.0.1:{port}/", duration=args.seconds)
            load = (
                f"wrk -t1 -c64 -d{args.seconds}s: {r['rps']:,.0f} req/s under the profiler, "
                f"errors {r['errors'] or 0}"
            )
        else:
            client = [
                sys.executable,
                str(BENCH / "clients.py"),
                "streams",
                "--port",
                str(port),
                "-n",
                str(args.streams),
            ]
            client += [
                "--seconds",
                str(args.seconds),
                "--timeout",
                str(args.seconds + 120),
            ]
            done = subprocess.run(
                client,
                capture_output=True,
                text=True,
                timeout=args.seconds + 180,
                check=False,
            )
            load = f"{args.streams} streams of {args.seconds} s: {done.stdout.strip()}"
        server.roots[0].send_signal(signal.SIGTERM)
        server.roots[0].wait(60)
    finally:
        server.stop()
    deadline = time.monotonic() + 10
    while not profile.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    text = f"{' '.join(argv)}\n{load}\n"
    if args.scenario == "hello":
        text += _unprofiled(out, args.seconds)
    text += f"\n{report(profile, args.top)}"
    (out / "report.txt").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
