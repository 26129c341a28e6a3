"""The benchmark runner behind ``bench/run``: trio-rack against its peers, in one table.

Usage::

    bench/run [--quick] [--servers NAME,...] [--rounds N] [--no-readme] [--no-install]

Theory of operation
-------------------
* **Peers** come from a separate virtualenv made by ``setup_peers.sh`` ($BENCH_VENV, default
  /tmp/trio-rack-bench-venv).  A peer that cannot be installed or started is skipped with a
  note; trio-rack and the bare-Trio loop run from this interpreter.
* **Pinning.**  The runner pins itself to core 1, so the load generators it starts (wrk, the
  Python clients) run there; servers are started under ``taskset -c 0``.  The workers
  scenario is the exception: servers and wrk both get both cores.
* **Rounds.**  Each round starts every server afresh (a plain and a TLS instance), checks its
  answers once (``smoke``), warms it for a second, then runs the wrk scenarios and the
  fixed-rate client.  Servers run in a rotated order each round so drift spreads evenly.
  The table shows the median of the rounds; ratios are trio-rack over each peer, same run.
* **Streams** run once per N, each on a fresh server, so earlier scenarios' memory does not
  blur the RSS figures.  The workers scenario has rounds of its own.
* **Groups beyond the hello app.**  HTTP/2 hello (``h2_bench``) runs in every round; the
  websocket group (``ws_bench``), the static file (``static_bench``, beside nginx) and scaling
  (``scaling``) run once per run, after the streams: they are long, and their figures are
  single measurements.  Each reuses its script's functions; ``--skip h2,websocket,static,scaling``.
* **Two trio-rack rows**: the default (h11) and ``--http1-parser httptools`` when the trio-rack
  under test has the flag and httptools imports (else a note).  Both are "ours": either failing
  fails the run.
* **Targets.**  ``_targets`` judges issue #12's targets from the run's figures; a full run
  writes that table and the results into bench/README.md (``--no-readme``: neither).
* **Failure policy.**  Anything wrong with trio-rack (a crash, a wrong answer, a wrk error, a
  stream that does not complete) stops the run with exit status 1: that is what CI checks.
  A peer's failure is a note in the output, never a failure of the run.  Nothing is
  asserted about speed.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import resource
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h2_bench
import scaling
import static_bench
import ws_bench
from _procs import ServerError, ServerProcess, cpu_seconds, free_port, http_request
from _report import (
    fmt,
    latency_table,
    main_table,
    medians,
    metric_rows,
    streams_table,
    update_readme,
    workers_table,
)
from _scenarios import (
    UPLOAD_BYTES,
    ForeignLoad,
    fixed_rate,
    smoke,
    streams,
    wait_quiet,
    worker_stats,
    wrk,
)
from _servers import BENCH, MAX_CONNECTIONS, SPECS, TRIO_RACK_ARGS, ServerSpec, TLSFiles
from _targets import BEGIN as TARGETS_BEGIN
from _targets import END as TARGETS_END
from _targets import targets_table
from frameworks import CONFIGS as FRAMEWORK_CONFIGS
from frameworks import bench_frameworks, frameworks_table

REPO = BENCH.parent
VENV = Path(os.environ.get("BENCH_VENV", "/tmp/trio-rack-bench-venv"))
SERVER_CPU, LOAD_CPU, ALL_CPUS = "0", "1", "0,1"
#: A wrk run during which other processes used more cores than this is repeated (full mode).
NOISY = 0.3


@dataclass(frozen=True)
class WorkerConfig:
    label: str
    server: str
    workers: int
    reuseport: bool = False


@dataclass(frozen=True)
class Plan:
    servers: tuple[str, ...]
    rounds: int
    hello: float  # seconds of the keep-alive hello run
    short: float  # seconds of every other wrk run
    latency: float
    rate: float
    stream_ns: tuple[int, ...]
    stream_seconds: int
    workers: tuple[WorkerConfig, ...]
    workers_rounds: int
    workers_ka: float
    workers_close: float
    #: connections made one after another by one client to the idle workers
    workers_sequential: int
    warmup: float = 1.0  # wrk takes whole seconds only
    quiet_wait: float = 0.0  # see Run.quietly
    quiet_budget: float = 0.0
    peer_note: str = ""
    #: the frameworks, HTTP/2, websocket and scaling groups with the peers (False: trio-rack's
    #: rows only, to stay quick; the static group always has nginx beside trio-rack)
    group_peers: bool = True
    #: seconds of each round's HTTP/2 hello (h2load -c 16 -m 16; ``h2_bench.hello``)
    h2_seconds: float = 5
    #: websocket echo: connection counts, seconds each, and the idle websockets of the memory
    #: figure (``ws_bench.measure``; once per run, not per round)
    ws_fan: tuple[int, ...] = (100, 1000)
    ws_seconds: float = 5
    ws_idle: int = 10_000
    #: the static file (``static_bench.measure``; once per run): MiB and downloads each
    static_mib: int = 256
    static_runs: int = 5
    #: scaling (``scaling.measure_server``; once per run): connection counts, seconds
    scaling_levels: tuple[int, ...] = (1, 64, 512)
    scaling_hello: float = 3
    scaling_streams: int = 5


ALL_SERVERS = (
    "trio-rack",
    "trio-rack-httptools",
    "hypercorn-trio",
    "uvicorn-h11",
    "uvicorn-httptools",
    "granian",
    "bare-trio",
)
TRIO_RACK_WORKERS = (
    WorkerConfig("trio-rack -n 1", "trio-rack", 1),
    WorkerConfig("trio-rack -n 2 (shared socket)", "trio-rack", 2),
    WorkerConfig(
        "trio-rack ×2 on SO_REUSEPORT sockets", "trio-rack", 2, reuseport=True
    ),
)
PLANS = {
    "full": Plan(
        servers=ALL_SERVERS,
        rounds=3,
        hello=8,
        short=3,
        latency=6,
        rate=1000,
        stream_ns=(100, 1000, 10_000),
        stream_seconds=10,
        workers=TRIO_RACK_WORKERS
        + (
            WorkerConfig("Uvicorn h11 --workers 1", "uvicorn-h11", 1),
            WorkerConfig("Uvicorn h11 --workers 2", "uvicorn-h11", 2),
            WorkerConfig("Hypercorn trio -w 1", "hypercorn-trio", 1),
            WorkerConfig("Hypercorn trio -w 2", "hypercorn-trio", 2),
        ),
        workers_rounds=3,
        workers_ka=5,
        workers_close=3,
        workers_sequential=500,
        quiet_wait=10,
        quiet_budget=120,
    ),
    "quick": Plan(
        servers=("trio-rack", "trio-rack-httptools", "bare-trio", "uvicorn-h11", "hypercorn-trio"),
        rounds=1,
        hello=2,
        short=1,
        latency=2,
        rate=500,
        stream_ns=(100,),
        stream_seconds=2,
        workers=TRIO_RACK_WORKERS,
        workers_rounds=1,
        workers_ka=2,
        workers_close=0,
        workers_sequential=200,
        peer_note=(
            "quick mode: Uvicorn (httptools) and Granian are left out to stay under two minutes; "
            "the frameworks, HTTP/2 and websocket groups run trio-rack's rows only, the static file is 16 MiB, "
            "no scaling group"
        ),
        group_peers=False,
        h2_seconds=1,
        ws_fan=(100,),
        ws_seconds=1,
        ws_idle=300,
        static_mib=16,
        static_runs=1,
        scaling_levels=(),
    ),
}


class TrioRackFailed(Exception):
    """trio-rack itself misbehaved: the run fails."""


def ours(spec: ServerSpec) -> bool:
    """trio-rack in any of its configurations (the default parser or httptools): its failure fails the run."""
    return spec.name.startswith("trio-rack")


@dataclass
class Run:
    plan: Plan
    out: Path
    tls: TLSFiles
    client_python: str
    results: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    quiet_spent: float = 0.0

    def log(self, message: str) -> None:
        print(f"[{time.monotonic() - self.started:6.1f}s] {message}", flush=True)

    def server_results(self, spec: ServerSpec) -> dict[str, Any]:
        servers: dict[str, dict[str, Any]] = self.results["servers"]
        return servers.setdefault(
            spec.name,
            {
                "label": spec.label,
                "runs": {},
                "notes": [],
                "streams": {},
                "latency": [],
            },
        )

    def note(self, spec: ServerSpec, message: str, *, error: bool = True) -> None:
        """A remark in the output; an ``error`` of trio-rack's also stops the run."""
        self.log(f"{spec.name}: {message}")
        if error and ours(spec):
            raise TrioRackFailed(message)
        self.server_results(spec)["notes"].append(message)

    def record(
        self,
        spec: ServerSpec,
        key: str,
        value: float | None,
        errors: dict[str, Any] | None = None,
        foreign: float | None = None,
    ) -> None:
        results = self.server_results(spec)
        results["runs"].setdefault(key, []).append(value)
        if foreign is not None:
            results.setdefault("foreign", {}).setdefault(key, []).append(foreign)
            self.results["foreign"].append(foreign)
        shown = "—" if value is None else f"{value:,.2f}"
        extra = (
            f"  (other processes: {foreign:.2f} cores)" if foreign is not None else ""
        )
        self.log(
            f"{spec.name} {key}: {shown}{extra}"
            + (f"  errors {errors}" if errors else "")
        )
        if errors:
            self.note(spec, f"{key}: errors {errors}")

    def measure(
        self,
        spec: ServerSpec,
        server: ServerProcess,
        key: str,
        url: str,
        figure: str = "rps",
        **options: Any,
    ) -> None:
        """One wrk run, recorded under ``key``."""
        r = self.quiet_wrk(url, server, **options)
        self.record(spec, key, r[figure], r["errors"], r["foreign_cores"])

    def quiet_wrk(
        self, url: str, server: ServerProcess, **options: Any
    ) -> dict[str, Any]:
        return self.quietly(lambda: wrk(url, server=server, **options), url)

    def quietly(self, once: Callable[[], dict[str, Any]], what: str) -> dict[str, Any]:
        """Run a measurement when the machine is quiet; once more if others took CPU meanwhile.

        The machine may be shared with a test suite.  With ``plan.quiet_wait``, a measurement
        waits (that long at most) for other processes to go under 0.2 cores, and one during
        which they used more than ``NOISY`` cores is repeated once; the less disturbed one is
        kept.  All this waiting is capped by ``plan.quiet_budget`` seconds per run, so a
        machine that never goes quiet still finishes in time.  Either way the other processes'
        load is recorded beside the figure.
        """
        if self.quiet_left() <= 0:
            return once()
        self.wait_quiet()
        r = once()
        if r["foreign_cores"] > NOISY and self.quiet_left() > 0:
            self.wait_quiet()
            began = time.monotonic()
            again = once()
            self.quiet_spent += time.monotonic() - began
            self.log(
                f"re-measured {what}: others used {r['foreign_cores']:.2f}, then {again['foreign_cores']:.2f} cores"
            )
            if again["foreign_cores"] < r["foreign_cores"]:
                r = again
        return r

    def quiet_left(self) -> float:
        return self.plan.quiet_budget - self.quiet_spent

    def wait_quiet(self) -> None:
        began = time.monotonic()
        wait_quiet(min(self.plan.quiet_wait, max(0.0, self.quiet_left())))
        self.quiet_spent += time.monotonic() - began

    # -- servers ---------------------------------------------------------------------------------

    def start(
        self,
        spec: ServerSpec,
        *,
        tls: bool = False,
        workers: int = 1,
        cpus: str = SERVER_CPU,
    ) -> ServerProcess:
        port = free_port()
        server = ServerProcess(spec.name, port, ca=self.tls.ca if tls else None)
        argv = ["taskset", "-c", cpus] + spec.argv(
            port, venv=VENV, tls=self.tls if tls else None, workers=workers
        )
        log = self.out / "logs" / f"{spec.name}{'-tls' if tls else ''}-w{workers}.log"
        server.spawn(argv, log=log, cwd=BENCH)
        try:
            server.wait_ready()
        except BaseException:
            server.stop()
            raise
        return server

    def start_reuseport(self, count: int) -> ServerProcess:
        """trio-rack ×count, each on its own SO_REUSEPORT socket of one port (``-b fd://N``)."""
        port = free_port()
        server = ServerProcess("trio-rack (SO_REUSEPORT)", port)
        socks = []
        try:
            for _ in range(count):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                sock.bind(("127.0.0.1", port))
                sock.listen(2048)
                socks.append(sock)
            for i, sock in enumerate(socks):
                argv = [
                    "taskset",
                    "-c",
                    ALL_CPUS,
                    sys.executable,
                    "-m",
                    "trio_rack",
                    "serve",
                    str(BENCH / "rack_app.py"),
                ]
                argv += [
                    "-b",
                    f"fd://{sock.fileno()}",
                    "--no-access-log",
                    "--log-level",
                    "warning",
                ]
                argv += ["--max-connections", str(MAX_CONNECTIONS), *TRIO_RACK_ARGS]
                server.spawn(
                    argv,
                    log=self.out / "logs" / f"trio-rack-reuseport-{i}.log",
                    cwd=BENCH,
                    pass_fds=[sock.fileno()],
                )
        finally:
            for sock in socks:
                sock.close()  # the workers hold their own copies
        try:
            server.wait_ready()
        except BaseException:
            server.stop()
            raise
        return server

    # -- rounds ------------------------------------------------------------------------------------

    def bench_plain(self, spec: ServerSpec) -> None:
        plan = self.plan
        server = self.start(spec)
        url = f"http://127.0.0.1:{server.port}"
        try:
            smoke(server, tls=False, upload="upload" not in spec.unsupported)
            wrk(url + "/", duration=plan.warmup)
            self.measure(spec, server, "hello_ka", url + "/", duration=plan.hello)
            self.measure(
                spec, server, "hello_close", url + "/", duration=plan.short, close=True
            )
            self.measure(
                spec,
                server,
                "body",
                url + "/big",
                "mbps",
                duration=plan.short,
                connections=1,
            )
            if "upload" not in spec.unsupported:
                self.measure(
                    spec,
                    server,
                    "upload",
                    url + "/upload",
                    "upload_mbps",
                    duration=plan.short,
                    connections=4,
                    upload=UPLOAD_BYTES,
                )
            lat = self.quietly(
                lambda: fixed_rate(
                    server,
                    rate=plan.rate,
                    duration=plan.latency,
                    python=self.client_python,
                ),
                "latency",
            )
            self.server_results(spec)["latency"].append(lat)
            errors = lat["errors"] or None
            self.record(spec, "lat_p50", lat["p50_ms"])
            self.record(spec, "lat_p99", lat["p99_ms"])
            self.record(spec, "lat_p999", lat["p999_ms"], errors, lat["foreign_cores"])
            server.check_alive()
        finally:
            server.stop()

    def bench_tls(self, spec: ServerSpec) -> None:
        plan = self.plan
        server = self.start(spec, tls=True)
        url = f"https://127.0.0.1:{server.port}/"
        try:
            smoke(server, tls=True)
            wrk(url, duration=plan.warmup)
            self.measure(spec, server, "tls_ka", url, duration=plan.short)
            self.measure(
                spec, server, "tls_close", url, duration=plan.short, close=True
            )
            server.check_alive()
        finally:
            server.stop()

    def bench_streams(self, spec: ServerSpec, n: int) -> None:
        server = self.start(spec)
        try:
            r = streams(
                server, n=n, seconds=self.plan.stream_seconds, python=self.client_python
            )
        finally:
            server.stop()
        self.server_results(spec)["streams"].setdefault(str(n), []).append(r)
        self.log(
            f"{spec.name} streams n={n}: done in {r['done_s']:.1f} s, {r['simultaneous']} at once, "
            f"peak {r['peak_mib']:.1f} MiB, {r['kib_per_stream']:.1f} KiB/stream, errors {r['errors'] or 0}"
        )
        self.record(spec, f"streams_{n}_kib", r["kib_per_stream"])
        self.record(spec, f"streams_{n}_done", r["done_s"])
        self.record(spec, f"streams_{n}_peak", r["peak_mib"])
        if r["errors"] or r["ok"] != n:
            self.note(
                spec, f"streams n={n}: {r['ok']} of {n} complete, errors {r['errors']}"
            )
        elif r["simultaneous"] < n:
            self.note(
                spec,
                f"streams n={n}: at most {r['simultaneous']:,} of {n:,} open at once "
                f"(the last had its first byte after {r['all_open_s']:.1f} s)",
                error=False,
            )

    # -- the groups beyond the hello app: HTTP/2, websockets, the static file, scaling ---------------

    def bench_h2(self, spec: ServerSpec) -> None:
        """One round's HTTP/2 hello (``h2load -c 16 -m 16``, cleartext with prior knowledge)."""
        server = h2_bench.start(spec.name, self.out / "logs")
        try:
            seconds = self.plan.h2_seconds

            def once() -> dict[str, Any]:
                foreign = ForeignLoad(server)
                rps = h2_bench.hello(server.port, seconds)
                return {"rps": rps, "foreign_cores": round(foreign.cores(), 2)}

            r = self.quietly(once, f"{spec.name} h2")
            failed = h2_bench.FAILED_REQUESTS.get(server.port)
            errors = {"failed requests": failed} if failed else None
            self.record(spec, "h2_hello", r["rps"], errors, r["foreign_cores"])
            server.check_alive()
        finally:
            server.stop()

    def bench_ws(self, spec: ServerSpec) -> None:
        """Websocket echo at each of ``ws_fan`` connections, then KiB per idle websocket (fresh process)."""
        import trio

        plan = self.plan
        try:
            r = trio.run(ws_bench.measure, WS_NAMES[spec.name], plan.ws_seconds, plan.ws_idle, list(plan.ws_fan))
        except Exception as exc:  # a start failure, a closed connection, a time limit (maybe in a group)
            raise ServerError(f"websocket: {type(exc).__name__}: {exc}") from None
        for n in plan.ws_fan:
            self.record(spec, f"ws_rate_{n}", r[f"echo_{n}"])
            self.record(spec, f"ws_cpu_{n}", r[f"cpu_{n}"])
        self.record(spec, "ws_idle_kib", r["kib_per_ws"])

    def bench_static(self) -> None:
        """The static file from trio-rack's ``Files`` (sendfile) and from nginx, curl round-robin."""
        plan = self.plan
        ours, nginx = SPECS["trio-rack"], NGINX
        if not Path(static_bench.NGINX).exists() or not Path(static_bench.CURL).exists():
            self.results["skipped"].append(
                f"static file skipped: needs {static_bench.NGINX} and {static_bench.CURL} (Debian nginx-light, curl)"
            )
            return
        try:
            speeds = static_bench.measure(
                plan.static_mib, plan.static_runs, server=["taskset", "-c", SERVER_CPU]
            )
        except static_bench.StaticError as exc:
            if exc.who == "trio-rack":
                raise TrioRackFailed(f"static file: {exc}") from None
            self.note(nginx, f"static file: {exc}")
            return
        for spec, label in ((ours, static_bench.FILES_LABEL), (nginx, static_bench.NGINX_LABEL)):
            for speed in speeds[label]:
                self.record(spec, "static_mbps", speed / 1e6)
        for speed in speeds[static_bench.GENERATOR_LABEL]:
            self.record(ours, "static_gen_mbps", speed / 1e6)

    def bench_scaling(self, spec: ServerSpec) -> None:
        """Hello and streams at each of ``scaling_levels`` connections (``scaling.measure_server``)."""
        plan = self.plan
        levels = list(plan.scaling_levels)
        data = scaling.measure_server(spec.name, levels, plan.scaling_hello, plan.scaling_streams, self.client_python)
        self.results.setdefault("scaling", {})[spec.name] = data
        for c in levels:
            hello, stream = data["hello"][c], data["streams"][c]
            self.log(
                f"{spec.name} scaling c={c}: hello {hello['rps']:,.0f} req/s; streams {stream['done_s']:.1f} s, "
                f"{stream['cpu_ms_per_stream']:.2f} ms CPU, {stream['kib_per_stream']:.1f} KiB each"
            )
            if hello["errors"]:
                self.note(spec, f"scaling hello c={c}: errors {hello['errors']}")
            if stream["errors"] or stream["open"] < c:
                self.note(spec, f"scaling streams c={c}: {stream['open']} of {c} open, errors {stream['errors']}")

    def bench_workers(self, config: WorkerConfig, record: dict[str, Any]) -> None:
        plan = self.plan
        spec = SPECS[config.server]
        if config.reuseport:
            server = self.start_reuseport(config.workers)
        else:
            server = self.start(spec, workers=config.workers, cpus=ALL_CPUS)
        url = f"http://127.0.0.1:{server.port}/"
        result: dict[str, Any] = {}
        try:
            wrk(url, duration=plan.warmup, threads=2, cpus=ALL_CPUS)
            for mode, seconds, close in (
                ("ka", plan.workers_ka, False),
                ("close", plan.workers_close, True),
            ):
                if not seconds:
                    continue

                def once(
                    seconds: float = seconds, close: bool = close
                ) -> dict[str, Any]:
                    worker_stats(server, config.workers, reset=True)
                    cpu0 = {p: cpu_seconds(p) for p in server.pids()}
                    r = wrk(
                        url,
                        server=server,
                        duration=seconds,
                        threads=2,
                        close=close,
                        cpus=ALL_CPUS,
                    )
                    r["cpu"] = {
                        p: cpu_seconds(p) - cpu0.get(p, 0.0) for p in server.pids()
                    }
                    r["stats"] = worker_stats(server, config.workers)
                    return r

                r = self.quietly(once, f"{config.label} {mode}")
                cpu, stats = r.pop("cpu"), r.pop("stats")
                result[mode] = r
                result[f"{mode}_stats"] = {str(pid): s for pid, s in stats.items()}
                result[f"{mode}_cpu"] = {
                    str(pid): round(cpu.get(pid, 0.0), 2) for pid in stats
                }
                shares = ", ".join(
                    f"pid {p}: {s['requests']:,} req, {s['connections']} conn, "
                    f"{cpu.get(p, 0):.1f} s CPU"
                    for p, s in stats.items()
                )
                self.log(
                    f"{config.label} {mode}: {r['rps']:,.0f} req/s; {shares}; "
                    f"other processes {r['foreign_cores']:.2f} cores"
                )
                if r["errors"]:
                    self.note(spec, f"{config.label} {mode}: errors {r['errors']}")
                if len(stats) < config.workers:
                    result.setdefault("notes", []).append(
                        f"{mode}: only {len(stats)} of {config.workers} workers answered /stats"
                    )
            if plan.workers_sequential:
                # one client, one connection at a time, on an otherwise idle server: who accepts?
                worker_stats(server, config.workers, reset=True)
                for _ in range(plan.workers_sequential):
                    http_request(server.port)
                stats = worker_stats(server, config.workers)
                result["seq_stats"] = {str(pid): s for pid, s in stats.items()}
                self.log(
                    f"{config.label} sequential: "
                    + ", ".join(f"pid {p}: {s['requests']}" for p, s in stats.items())
                )
            server.check_alive()
        finally:
            server.stop()
        record["rounds"].append(result)


#: the websocket group's servers: ours -> ws_bench's names (its Uvicorn runs with its defaults,
#: uvloop + httptools, and ``--ws wsproto``: the "Uvicorn, httptools + uvloop" column)
WS_NAMES = {"trio-rack": "trio-rack", "hypercorn-trio": "hypercorn", "uvicorn-httptools": "uvicorn"}
H2_SERVERS = ("trio-rack", "hypercorn-trio", "granian")
SCALING_SERVERS = ("trio-rack", "uvicorn-h11", "hypercorn-trio", "bare-trio")
#: nginx is a peer of the static-file group only (``static_bench``), not a column of the main table
NGINX = ServerSpec("nginx", "nginx (sendfile on)", None)


def _available(spec: ServerSpec) -> str | None:
    """None if the server can run, else why not."""
    if spec.name == "trio-rack-httptools":
        return _httptools_missing()
    if spec.venv_tool is None:
        return None
    tool = VENV / "bin" / spec.venv_tool
    if not tool.exists():
        return f"{spec.venv_tool} is not installed in {VENV}"
    check = {
        "hypercorn-trio": "hypercorn, trio",
        "uvicorn-h11": "uvicorn",
        "uvicorn-httptools": "uvicorn, httptools, uvloop",
    }.get(spec.name, spec.venv_tool)
    ok = (
        subprocess.run(
            [str(VENV / "bin" / "python"), "-c", f"import {check}"],
            capture_output=True,
            check=False,
        ).returncode
        == 0
    )
    return None if ok else f"cannot import {check} in {VENV}"


def _has_parser_flag() -> bool:
    """Whether the trio-rack under test has ``--http1-parser`` (``PYTHONPATH`` may be a ``--ref`` snapshot)."""
    helped = subprocess.run(
        [sys.executable, "-m", "trio_rack", "serve", "--help"], capture_output=True, text=True, check=False
    )
    return "--http1-parser" in helped.stdout


def _httptools_missing() -> str | None:
    """Why trio-rack cannot serve with ``--http1-parser httptools`` here (None: it can).

    Asked of the trio-rack under test (``PYTHONPATH`` may point at a ``--ref`` snapshot): its
    ``serve --help`` must list the flag, and httptools (the ``[speedups]`` extra) must import.
    """
    if not _has_parser_flag():
        return "this trio-rack has no --http1-parser flag"
    imported = subprocess.run([sys.executable, "-c", "import httptools"], capture_output=True, check=False)
    if imported.returncode:
        return "httptools is not installed (pip install 'trio-rack[speedups]')"
    return None


def _make_tls(directory: Path) -> TLSFiles:
    import trustme
    from cryptography.hazmat.primitives import serialization

    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    key = serialization.load_pem_private_key(
        leaf.private_key_pem.bytes(), password=None
    )
    files = TLSFiles(
        directory / "ca.pem", directory / "cert.pem", directory / "key.pem"
    )
    ca.cert_pem.write_to_path(str(files.ca))
    files.cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    files.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return files


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def machine_info(
    peer_versions: dict[str, str], client_python: str, ref: str | None
) -> dict[str, Any]:
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kib = int(f.readline().split()[1])

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, check=False
        ).stdout.strip()

    dirty = git("status", "--porcelain", "--", "src")
    wrk_version = subprocess.run(
        ["wrk", "-v"], capture_output=True, text=True, check=False
    ).stdout.split()[1]
    client = subprocess.run(
        [client_python, "-c", "import sys; print(sys.version.split()[0])"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    try:
        subprocess.run(
            [client_python, "-c", "import uvloop"], check=True, capture_output=True
        )
        client += " + uvloop"
    except subprocess.CalledProcessError:
        client += " + asyncio"
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": f"{os.cpu_count()} × {cpu}",
        "memory": f"{mem_kib / 2**20:.0f} GiB",
        "kernel": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "trio-rack": (
            f"{_version('trio-rack')} at {git('rev-parse', '--short', ref)} (`--ref {ref}`)"
            if ref
            else f"{_version('trio-rack')} at {git('rev-parse', '--short', 'HEAD')}"
            + (" + uncommitted changes in src/" if dirty else "")
        ),
        "trio": _version("trio"),
        "h11": _version("h11"),
        "wrk": wrk_version,
        "load clients": f"Python {client}",
        "peers": ", ".join(f"{k} {v}" for k, v in peer_versions.items())
        or "none installed",
    }


def setup_peers(run_install: bool) -> dict[str, str]:
    if run_install:
        try:
            subprocess.run(
                ["bash", str(BENCH / "setup_peers.sh")],
                timeout=600,
                stdout=subprocess.DEVNULL,
                check=False,
            )
        except subprocess.TimeoutExpired:
            print(
                "setup_peers.sh timed out; using whatever peers are installed",
                flush=True,
            )
    try:
        versions: dict[str, str] = json.loads((VENV / "versions.json").read_text())
        return versions
    except (OSError, ValueError):
        return {}


def render(run: Run, command: str, elapsed: float) -> str:
    plan = run.plan
    results = run.results
    order = [n for n in ALL_SERVERS if n in results["servers"]]
    rows = metric_rows(plan.stream_ns, plan.stream_seconds, plan.rate)
    meta = results["meta"]
    parts = [
        (
            f"Produced by `{command}` on {meta['date']} in {elapsed / 60:.1f} minutes"
            f" ({'medians of ' + str(plan.rounds) + ' rounds' if plan.rounds > 1 else 'one round'})."
        ),
        "",
        "Machine: "
        + "; ".join(f"{k} {v}" for k, v in meta.items() if k != "date")
        + ".",
        "",
        (
            "Each cell is the server's figure; in brackets, **trio-rack's figure divided by that server's**, "
            "from the same run. "
            "↑ marks scenarios where higher is better (a ratio above 1 favours trio-rack), ↓ where lower is better "
            "(a ratio below 1 favours trio-rack). Server on core 0, load generator on core 1, one worker each; "
            "hello runs are `wrk -t1 -c64`, the 256 MiB body `-c1`, the upload `-c4`."
        ),
        "",
        main_table(results, order, rows),
    ]
    beyond = beyond_table(results, plan)
    if beyond:
        parts += [
            "",
            (
                "**Beyond the hello app** (the same run; each group against its own peers; in brackets trio-rack's "
                "figure divided by the peer's): HTTP/2 hello is `h2load -c 16 -m 16` over cleartext h2 with prior "
                f"knowledge for {plan.h2_seconds:g} s a round (`h2_bench.py`); websocket echo is one 32-byte text "
                f"message in flight per connection for {plan.ws_seconds:g} s, server CPU from `/proc`, every server on "
                "wsproto (Uvicorn with its defaults, uvloop + httptools, `--ws wsproto`), and peak RSS per idle "
                f"websocket at {plan.ws_idle:,} on a fresh process (`ws_bench.py`; once per run); the static file is "
                f"{plan.static_mib} MiB from `trio_rack.static.Files` (a `FileBody`, sent with `sendfile`) and from "
                f"nginx `sendfile on`, {plan.static_runs} curl downloads each, round-robin, medians "
                "(`static_bench.py`; once per run):"
            ),
            "",
            beyond,
        ]
    foreign = results.get("foreign") or []
    if foreign:
        parts += [
            "",
            (
                f"Other processes on the machine used {sum(foreign) / len(foreign):.2f} cores on average during the "
                f"measurements (most: {max(foreign):.2f}); a busy neighbour lowers every figure it overlaps, "
                "which the medians only partly absorb."
            ),
        ]
    notes = [
        f"- {results['servers'][n]['label']}: {m}"
        for n in order + [n for n in results["servers"] if n not in order]  # nginx: a group's peer only
        for m in results["servers"][n]["notes"]
    ]
    notes += [f"- {m}" for m in results.get("skipped", [])]
    if notes:
        parts += ["", "Notes:", *notes]
    if any(results["servers"][n].get("streams") for n in order):
        parts += [
            "",
            (
                f"**Streams** (`GET /stream?s={plan.stream_seconds}`: a byte at once, then one a second; "
                "each N on a fresh "
                "server; RSS is the sum over the server's processes, polled every 0.1 s; KiB per stream = "
                "(peak − RSS before) / most streams open at once):"
            ),
            "",
            streams_table(results, order),
        ]
    if any(results["servers"][n].get("latency") for n in order):
        parts += [
            "",
            (
                f"**Latency at a fixed rate** ({plan.rate:,.0f} req/s of `GET /` for {plan.latency:g} s "
                "over 32 keep-alive "
                "connections, open-loop: measured from when each request was due; Debian has no wrk2, so this is "
                "`bench/clients.py rate`; one row per round):"
            ),
            "",
            latency_table(results, order),
        ]
    if results.get("frameworks"):
        parts += [
            "",
            (
                "**Frameworks** (the same FastAPI and Flask hello apps, `bench/fastapi_app.py` and "
                "`bench/flask_app.py`, on each server; hello keep-alive, `wrk -t1 -c64`, one worker, server on "
                "core 0; in brackets trio-rack's req/s divided by the peer's; see `bench/frameworks.py`):"
            ),
            "",
            frameworks_table(results["frameworks"]),
        ]
    if results.get("scaling"):
        parts += [
            "",
            (
                "**Scaling with load** (once per run; one worker each, server on core 0; hello on one server "
                "process per server, streams on a fresh one per C; `scaling.py`):"
            ),
            "",
            scaling.tables(
                results["scaling"], list(plan.scaling_levels), plan.scaling_hello, plan.scaling_streams
            ),
        ]
    if results.get("workers"):
        parts += [
            "",
            (
                "**Workers** (hello; `wrk -t2 -c64` and the servers both on both cores; per-worker requests and "
                "connections from each worker's `/stats`, CPU from `/proc`; one entry per round):"
            ),
            "",
            workers_table(results["workers"]),
        ]
    return "\n".join(parts)


#: (key, row label, higher is better, digits, peers) of the "Beyond the hello app" table
BEYOND_ROWS: tuple[tuple[str, str, bool, int, tuple[str, ...]], ...] = (
    ("h2_hello", "HTTP/2 hello, `h2load -c 16 -m 16`, req/s", True, 0, ("hypercorn-trio", "granian")),
    *(
        row
        for n in (100, 1000)
        for row in (
            (f"ws_rate_{n}", f"websocket echo, {n:,} connections, messages/s", True, 0,
             ("hypercorn-trio", "uvicorn-httptools")),
            (f"ws_cpu_{n}", f"websocket echo, {n:,} connections, server CPU µs per message", False, 0,
             ("hypercorn-trio", "uvicorn-httptools")),
        )
    ),  # fmt: skip
    ("ws_idle_kib", "KiB of RSS per idle websocket", False, 1, ("hypercorn-trio", "uvicorn-httptools")),
    ("static_mbps", "static file through sendfile, MB/s", True, 0, ("nginx",)),
    ("static_gen_mbps", "the same bytes from a generator body (no file), MB/s", True, 0, ("nginx",)),
)


def beyond_table(results: dict[str, Any], plan: Plan) -> str:
    """HTTP/2, websockets and the static file: trio-rack's figure, then each peer's with the ratio."""
    servers = results["servers"]
    meds = {name: medians(server) for name, server in servers.items()}
    mine_all = meds.get("trio-rack", {})
    lines = ["| scenario | trio-rack | peers (trio-rack ÷ peer) |", "|---|---|---|"]
    for key, label, higher, digits, peers in BEYOND_ROWS:
        mine = mine_all.get(key)
        if mine is None:
            continue
        cells = []
        for peer in peers:
            theirs = meds.get(peer, {}).get(key if key != "static_gen_mbps" else "static_mbps")
            if theirs:
                cells.append(f"{servers[peer]['label']} {fmt(theirs, digits)} ({mine / theirs:.2f}×)")
        lines.append(f"| {label} {'↑' if higher else '↓'} | {fmt(mine, digits)} | {'; '.join(cells) or '—'} |")
    return "\n".join(lines) if len(lines) > 2 else ""


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="bench/run", description="Benchmark trio-rack against its peers."
    )
    parser.add_argument(
        "--quick", action="store_true", help="a short run (under two minutes) for CI"
    )
    parser.add_argument(
        "--servers", help=f"comma-separated subset of {','.join(ALL_SERVERS)}"
    )
    parser.add_argument(
        "--rounds", type=int, help="rounds (medians are taken over them)"
    )
    parser.add_argument(
        "--no-readme",
        action="store_true",
        help="do not rewrite bench/README.md's results",
    )
    parser.add_argument(
        "--no-install", action="store_true", help="do not run setup_peers.sh"
    )
    parser.add_argument(
        "--skip",
        default="",
        help="comma-separated parts to skip: rounds,streams,workers,frameworks,h2,websocket,static,scaling",
    )
    parser.add_argument(
        "--ref",
        help="benchmark trio-rack as of this git commit (its src/ exported to the results folder) "
        "instead of the working tree",
    )
    args = parser.parse_args()
    command = shlex.join(["bench/run", *sys.argv[1:]])
    plan = PLANS["quick" if args.quick else "full"]
    if args.servers:
        unknown = set(args.servers.split(",")) - set(ALL_SERVERS)
        if unknown:
            parser.error(f"unknown servers: {', '.join(sorted(unknown))}")
        plan = _replace(plan, servers=tuple(args.servers.split(",")))
    if args.rounds:
        plan = _replace(plan, rounds=args.rounds, workers_rounds=args.rounds)
    skip = set(filter(None, args.skip.split(",")))

    signal.signal(
        signal.SIGTERM, _exit_on_sigterm
    )  # so the finally blocks stop the servers
    os.sched_setaffinity(0, {int(LOAD_CPU)})
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = BENCH / "results" / f"{'quick' if args.quick else 'full'}-{stamp}"
    out.mkdir(parents=True, exist_ok=True)

    if args.ref:
        _use_snapshot(args.ref, out / "src-snapshot")
    peer_versions = setup_peers(not args.no_install)
    venv_python = VENV / "bin" / "python"
    client_python = str(venv_python) if venv_python.exists() else sys.executable
    run = Run(plan, out, _make_tls(out / "tls"), client_python)
    run.results = {
        "meta": machine_info(peer_versions, client_python, args.ref),
        "servers": {},
        "workers": [],
        "skipped": [],
        "foreign": [],
    }
    if plan.peer_note:
        run.results["skipped"].append(plan.peer_note)
    if _has_parser_flag():
        # "trio-rack" is the default install (h11), even where httptools is installed for its own row
        TRIO_RACK_ARGS[:] = ["--http1-parser", "h11"]
        run.results["skipped"].append(
            "trio-rack's default rows (and its FastAPI and Flask rows) run with `--http1-parser h11`: the default "
            "install's parser; the websocket and static-file groups leave the parser to `auto`"
        )
    specs = []
    for name in plan.servers:
        why = _available(SPECS[name])
        if why:
            run.log(f"skipping {name}: {why}")
            run.results["skipped"].append(f"{SPECS[name].label} skipped: {why}")
        else:
            specs.append(SPECS[name])
    if hard < max(plan.stream_ns) + 1000 and "streams" not in skip:
        run.log(
            f"RLIMIT_NOFILE hard limit {hard} may be too low for {max(plan.stream_ns)} streams"
        )

    failed: str | None = None
    try:
        _run_all(run, specs, skip)
    except TrioRackFailed as exc:
        failed = str(exc)
    except (
        ServerError
    ) as exc:  # raised outside a peer's guarded section: trio-rack's or ours
        failed = str(exc)
    finally:
        (out / "results.json").write_text(
            json.dumps(run.results, indent=1, default=str)
        )
    elapsed = time.monotonic() - run.started
    section = render(run, command, elapsed)
    targets = (
        f"Judged from the run in \"Results\" below (`{command}`, {run.results['meta']['date']}, "
        f"trio-rack {run.results['meta']['trio-rack']}), by `bench/_targets.py`:\n\n"
        + targets_table(run.results)
    )
    (out / "results.md").write_text(section + "\n\n## Targets\n\n" + targets + "\n")
    print("\n" + section + "\n\n" + targets + "\n", flush=True)
    if failed:
        print(
            f"bench/run: FAILED: trio-rack: {failed}\n(logs in {out / 'logs'})",
            file=sys.stderr,
            flush=True,
        )
        return 1
    if not args.quick and not args.no_readme:
        update_readme(BENCH / "README.md", section)
        update_readme(BENCH / "README.md", targets, begin=TARGETS_BEGIN, end=TARGETS_END)
        run.log("bench/README.md updated")
    run.log(f"done in {elapsed:.0f} s; raw results in {out}")
    return 0


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def _use_snapshot(ref: str, directory: Path) -> None:
    """Export ``ref``'s src/ and put it first on every child's PYTHONPATH (trio_rack only lives there)."""
    directory.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "archive", ref, "src"], cwd=REPO, capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(directory)], input=archive, check=True)
    os.environ["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(directory / "src"), os.environ.get("PYTHONPATH")])
    )


def _replace(plan: Plan, **changes: Any) -> Plan:
    import dataclasses

    return dataclasses.replace(plan, **changes)


def _guarded(run: Run, spec: ServerSpec, what: str, fn: Any, *args: Any) -> None:
    """Run one step; a peer's failure becomes a note, trio-rack's stops the run."""
    try:
        fn(*args)
    except ServerError as exc:
        if ours(spec):
            raise TrioRackFailed(f"{what}: {exc}") from None
        run.note(spec, f"{what} failed: {exc}")


def _run_all(run: Run, specs: list[ServerSpec], skip: set[str]) -> None:
    plan = run.plan
    h2 = "h2" not in skip and Path(h2_bench.H2LOAD).exists()
    if "h2" not in skip and not h2:
        run.results["skipped"].append(f"HTTP/2 hello skipped: needs {h2_bench.H2LOAD} (Debian nghttp2-client)")
    if "rounds" not in skip:
        for rnd in range(plan.rounds):
            order = specs[rnd % len(specs) :] + specs[: rnd % len(specs)]
            for spec in order:
                run.log(f"round {rnd + 1}/{plan.rounds}: {spec.name}")
                _guarded(run, spec, "plain HTTP scenarios", run.bench_plain, spec)
                _guarded(run, spec, "TLS scenarios", run.bench_tls, spec)
                if h2 and spec.name in H2_SERVERS and (plan.group_peers or spec.name == "trio-rack"):
                    _guarded(run, spec, "HTTP/2 hello", run.bench_h2, spec)
    if "streams" not in skip:
        for spec in specs:
            if "streams" in spec.unsupported:
                continue
            for n in plan.stream_ns:
                _guarded(run, spec, f"streams n={n}", run.bench_streams, spec, n)
    _run_groups(run, specs, skip)
    if "frameworks" not in skip:
        available = {s.name for s in specs}
        configs = [
            c for c in FRAMEWORK_CONFIGS
            if c.server in available and (plan.group_peers or c.server == "trio-rack")
        ]  # fmt: skip
        fw_records = [
            {"key": c.key, "label": c.label, "server": c.server, "rps": [], "p99_ms": []} for c in configs
        ]
        run.results["frameworks"] = fw_records
        for rnd in range(plan.rounds):
            for config, fw_record in zip(configs, fw_records, strict=True):
                run.log(f"frameworks round {rnd + 1}/{plan.rounds}: {config.label}")
                _guarded(
                    run, SPECS[config.server], config.label, bench_frameworks, run, config, fw_record, VENV, SERVER_CPU
                )  # fmt: skip
    if "workers" not in skip:
        available = {s.name for s in specs}
        configs = [c for c in plan.workers if c.server in available]
        records = [
            {"label": c.label, "server": c.server, "workers": c.workers, "rounds": []}
            for c in configs
        ]
        run.results["workers"] = records
        for rnd in range(plan.workers_rounds):
            for config, record in zip(configs, records, strict=True):
                run.log(
                    f"workers round {rnd + 1}/{plan.workers_rounds}: {config.label}"
                )
                _guarded(
                    run,
                    SPECS[config.server],
                    config.label,
                    run.bench_workers,
                    config,
                    record,
                )


def _run_groups(run: Run, specs: list[ServerSpec], skip: set[str]) -> None:
    """The groups measured once per run, not per round: websockets, the static file, scaling."""
    plan = run.plan

    def chosen(names: tuple[str, ...] | dict[str, str]) -> list[ServerSpec]:
        return [s for s in specs if s.name in names and (plan.group_peers or s.name == "trio-rack")]

    if "websocket" not in skip and plan.ws_fan:
        for spec in chosen(WS_NAMES):
            run.log(f"websocket: {spec.name}")
            _guarded(run, spec, "websocket", run.bench_ws, spec)
    if "static" not in skip and plan.static_mib and "trio-rack" in {s.name for s in specs}:
        run.log("static file: trio-rack and nginx")
        _guarded(run, SPECS["trio-rack"], "static file", run.bench_static)
    if "scaling" not in skip and plan.scaling_levels:
        for spec in chosen(SCALING_SERVERS):
            run.log(f"scaling: {spec.name}")
            _guarded(run, spec, "scaling", run.bench_scaling, spec)


if __name__ == "__main__":
    sys.exit(main())
