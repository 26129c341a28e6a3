"""The scenarios: each drives one started server and returns a flat dict of figures.

Load generators run on core 1 (the runner pins itself there, and what it starts inherits
that), servers on core 0, except in the workers scenario where both use both cores.  Every
run is bounded: wrk by ``-d``, the Python clients by their own timeouts, and every
subprocess by a ``timeout`` on top.

Units: MB is 10^6 bytes; latencies in milliseconds; RSS in KiB or MiB (2^10, 2^20 bytes).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import time
from typing import Any

from _procs import ServerError, ServerProcess, cpu_seconds, http_request
from _servers import BENCH

__all__ = [
    "UPLOAD_BYTES",
    "fixed_rate",
    "smoke",
    "streams",
    "wait_quiet",
    "worker_stats",
    "wrk",
]

UPLOAD_BYTES = 10 << 20
BIG_BYTES = 256 << 20
HELLO = b"Hello, world!"


def _busy_cpu_seconds() -> float:
    """CPU time the whole machine spent busy so far (all cores), from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    self_usage = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(
        resource.RUSAGE_CHILDREN
    )  # reaped ones: wrk, the clients
    return (
        self_usage.ru_utime
        + self_usage.ru_stime
        + children.ru_utime
        + children.ru_stime
    )


class ForeignLoad:
    """How much CPU other processes (not this runner, its clients or the server) used meanwhile.

    The machine may be shared (a test suite running beside the benchmark); each figure is
    recorded with this, as a fraction of one core, so a disturbed run can be told apart.
    """

    def __init__(self, server: ServerProcess | None) -> None:
        self.server = server
        self.pids = server.pids() if server else []
        self.start = (
            time.monotonic(),
            _busy_cpu_seconds(),
            _own_cpu_seconds(),
            self._server_cpu(),
        )

    def _server_cpu(self) -> float:
        return sum(cpu_seconds(p) for p in self.pids)

    def cores(self) -> float:
        t0, busy0, own0, server0 = self.start
        elapsed = time.monotonic() - t0
        foreign = (
            (_busy_cpu_seconds() - busy0)
            - (_own_cpu_seconds() - own0)
            - (self._server_cpu() - server0)
        )
        return max(0.0, foreign / elapsed) if elapsed > 0 else 0.0


def wait_quiet(limit: float, *, threshold: float = 0.2, window: float = 0.3) -> float:
    """Wait (at most ``limit`` s) until other processes use under ``threshold`` cores; return that load."""
    deadline = time.monotonic() + limit
    while True:
        probe = ForeignLoad(None)
        time.sleep(window)
        load = probe.cores()
        if load < threshold or time.monotonic() >= deadline:
            return load


def wrk(
    url: str,
    *,
    duration: float,
    server: ServerProcess | None = None,
    connections: int = 64,
    threads: int = 1,
    close: bool = False,
    upload: int = 0,
    cpus: str | None = None,
) -> dict[str, Any]:
    """One wrk run; figures from report.lua's exact counts, not wrk's rounded summary."""
    argv = ["taskset", "-c", cpus] if cpus else []
    argv += [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        "--timeout",
        "10s",
    ]
    argv += ["-s", str(BENCH / "report.lua")]
    if close:
        argv += ["-H", "Connection: close"]
    argv.append(url)
    env = dict(os.environ, BENCH_UPLOAD_BYTES=str(upload))
    foreign = ForeignLoad(server)
    try:
        out = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=duration + 60,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise ServerError(f"wrk did not finish: {' '.join(argv)}") from None
    line = next((x for x in out.stdout.splitlines() if x.startswith("WRKJSON ")), None)
    if line is None:
        raise ServerError(
            f"wrk failed ({out.returncode}): {out.stderr.strip() or out.stdout.strip()}"
        )
    data = json.loads(line[len("WRKJSON ") :])
    seconds = data["duration_us"] / 1e6
    errors = {
        k: data[k] for k in ("connect", "read", "write", "status", "timeout") if data[k]
    }
    return {
        "requests": data["requests"],
        "rps": data["requests"] / seconds,
        "mbps": data["bytes"] / seconds / 1e6,
        "upload_mbps": data["requests"] * upload / seconds / 1e6,
        "p50_ms": data["p50_us"] / 1000,
        "p99_ms": data["p99_us"] / 1000,
        "errors": errors,
        "foreign_cores": round(foreign.cores(), 2),
    }


def smoke(server: ServerProcess, *, tls: bool, upload: bool = True) -> None:
    """Check each endpoint's answer once; raise ServerError on any difference."""
    ca = server.ca if tls else None
    status, _, body = http_request(server.port, ca=ca)
    if (status, body) != (200, HELLO):
        raise ServerError(f"{server.name}: GET / gave {status} {body[:40]!r}")
    if tls:
        return
    status, _, body = http_request(server.port, path="/stream?s=1")
    if (status, body) != (200, b".."):
        raise ServerError(f"{server.name}: GET /stream?s=1 gave {status} {body[:40]!r}")
    status, _headers, body = http_request(server.port, path="/big")
    if status != 200 or len(body) != BIG_BYTES:
        raise ServerError(
            f"{server.name}: GET /big gave {status} and {len(body)} bytes"
        )
    del body
    if upload:
        payload = os.urandom(1 << 20)
        status, _, body = http_request(server.port, "POST", "/upload", payload)
        if (status, body) != (200, payload):
            raise ServerError(
                f"{server.name}: POST /upload of 1 MiB gave {status}, {len(body)} bytes back"
            )


def _client(python: str, *args: str) -> subprocess.Popen[str]:
    argv = [python, str(BENCH / "clients.py"), *args]
    return subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _client_result(proc: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise ServerError("load client did not finish in time") from None
    if proc.returncode != 0 or not out.strip():
        raise ServerError(
            f"load client failed ({proc.returncode}): {err.strip()[-500:]}"
        )
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def streams(
    server: ServerProcess, *, n: int, seconds: int, python: str
) -> dict[str, Any]:
    """N simultaneous ``/stream?s=S``: time until all end, peak RSS of the server's processes."""
    for _ in range(3):
        http_request(server.port)
    time.sleep(0.3)
    baseline = server.rss_kib()
    timeout = seconds + 60 + n / 200
    proc = _client(
        python,
        "streams",
        "--port",
        str(server.port),
        "-n",
        str(n),
        "--seconds",
        str(seconds),
        "--timeout",
        str(timeout),
    )
    peak = baseline
    deadline = time.monotonic() + timeout + 30
    while proc.poll() is None and time.monotonic() < deadline:
        peak = max(peak, server.rss_kib())
        time.sleep(0.1)
    result = _client_result(proc, timeout=max(1.0, deadline - time.monotonic()))
    server.check_alive()
    return {
        "n": n,
        "ok": result["ok"],
        "simultaneous": result["peak_open"],
        "all_open_s": result["all_open_s"],
        "done_s": result["all_done_s"],
        "baseline_mib": baseline / 1024,
        "peak_mib": peak / 1024,
        # per stream actually open at the peak (a server slow to accept never holds all N)
        "kib_per_stream": (peak - baseline) / max(1, result["peak_open"]),
        "errors": result["errors"],
    }


def fixed_rate(
    server: ServerProcess, *, rate: float, duration: float, python: str
) -> dict[str, Any]:
    """Open-loop latency of ``GET /`` at ``rate`` requests a second (see clients.py)."""
    foreign = ForeignLoad(server)
    proc = _client(
        python,
        "rate",
        "--port",
        str(server.port),
        "--rate",
        f"{rate:g}",
        "--duration",
        f"{duration:g}",
    )
    result = _client_result(proc, timeout=duration + 60)
    result["foreign_cores"] = round(foreign.cores(), 2)
    server.check_alive()
    return result


def worker_stats(
    server: ServerProcess, count: int, *, reset: bool = False, tries: int = 300
) -> dict[int, dict[str, Any]]:
    """``/stats`` of every worker: fresh connections until ``count`` PIDs answered (or ``tries``).

    Each connection lands on whichever worker the kernel picks, so reaching them all takes a
    few tries; a worker that never answers is simply missing from the result.
    """
    seen: dict[int, dict[str, Any]] = {}
    path = "/stats?reset=1" if reset else "/stats"
    for _ in range(tries):
        if len(seen) >= count:
            break
        status, _, body = http_request(server.port, path=path, timeout=10)
        if status == 200:
            stats = json.loads(body)
            seen.setdefault(stats["pid"], stats)
    return seen


def cpu_by_pid(pids: list[int]) -> dict[int, float]:
    return {pid: cpu_seconds(pid) for pid in pids}
