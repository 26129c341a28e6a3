"""The cost model of one hello request (HTTP/1.1 keep-alive), stage by stage, beside the floor.

::

    python3 bench/cost_model.py                 # instructions (callgrind) and µs, ~4 minutes
    python3 bench/cost_model.py --no-callgrind  # µs only, ~1 minute
    python3 bench/cost_model.py --per-connection  # what a connection costs (accept ... close)
    python3 bench/cost_model.py --stage parse_fresh -n 1000   # one loop (what callgrind runs)
    python3 bench/cost_model.py --stage exchange --instructions  # one loop's instructions per iteration

What it measures, and how
-------------------------
**End to end** (the real server, real sockets): ``python -m trio_rack serve bench/rack_app.py``
(access log off, then on, written to ``/dev/null``) and ``bench/bare_trio.py`` (the floor: the
same ``receive_some``/``send_all`` syscalls and Trio scheduling, no parsing), each serving one
keep-alive connection from a client in this process, **one request at a time** (so every request
pays one ``epoll_wait``, one ``recv``, one ``send``, as wrk's requests do at low load).

* *instructions*: the server runs under ``valgrind --tool=callgrind`` twice, serving N1 and N2
  requests; ``(I(N2) - I(N1)) / (N2 - N1)`` is the per-request count, start-up and shutdown
  cancelling out (``bench/ab_instructions.sh``'s method).  Deterministic on a busy machine;
  user space only (the kernel's share of a syscall is not counted).
* *µs*: the server's own CPU time (user + kernel, ``/proc/PID/task/*/schedstat``) over N requests
  after a warm-up, divided by N; the least of three runs.  Includes the kernel's work.

**A connection** (``--per-connection``): accept, the first read, the connection's objects and
the orderly close are not part of a keep-alive request; they are the same end-to-end figures
with every request on a new connection (``Connection: close``) minus keep-alive requests, for
trio-rack and the bare loop.

**Stages** (the real functions on the real inputs, in isolation): each stage is a loop in this
script (``--stage NAME``) calling trio-rack's own functions exactly as the HTTP/1 driver and the
exchange call them for the hello request — ``h11.Connection`` with the server's
``max_incomplete_event_size``, ``strict.check_request``/``request_head``, ``Exchange(...)``
(env), ``rack_app.app``, ``prepare_response`` plus the date/server headers, h11's ``send`` with
the driver's ``_parsed`` flag, the connection scope's deadline moves *inside* the entered scope,
``ServerState.active`` add/discard, ``accesslog.log_response`` to a real handler, and so on.
Instructions by the same N1/N2 difference under callgrind; µs as the least of five timed loops.
Stages that cannot run alone are found by subtraction (each a difference of two loops that
differ only in that stage):

* parse = (new ``h11.Connection`` + receive + strict checks + Request + EndOfMessage) − (new
  ``h11.Connection``)
* serialise = (that + ``send`` Response/Data/EndOfMessage + join) − (that without the sends)
* request-cycle reset = (one connection reused: ``start_next_cycle`` + the driver's
  ``_reset_request``) − (a fresh connection per request, no reset)

**The rest** is end-to-end minus the sum of the stages: the syscalls and Trio's scheduling
(``receive_some``, ``send_all``, the checkpoint and task switches around them), the driver's and
the exchange's glue (method calls, the ``async`` frames, ``Outcome`` decisions).  The bare loop
is the floor for the first part of it.  Isolated loops run with warm caches, so a stage's
in-situ cost can be a little higher than shown; the rest absorbs that.  The numbers are
evidence for the issue-12 optimisations, not assertions.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
REQUEST = b"GET / HTTP/1.1\r\nHost: x\r\nUser-Agent: cost-model\r\n\r\n"


# ------------------------------------------------------------------------------- the stages


def _stage_loops() -> dict[str, Callable[[int], Any]]:
    """Each stage: ``run(n)`` performs n iterations (a coroutine function: run under trio.run)."""
    import logging

    import h11
    import trio
    import trio.testing

    sys.path.insert(0, str(HERE))
    import rack_app  # type: ignore[import-not-found]
    from trio_rack import logs
    from trio_rack.app import accesslog
    from trio_rack.app.env import ConnInfo, build_env
    from trio_rack.app.exchange import Exchange, _with_date_and_server
    from trio_rack.app.response import prepare_response
    from trio_rack.config import Limits
    from trio_rack.http1 import strict
    from trio_rack.http1.connection import _H11_TRUSTS_PARSED, HTTPConnection
    from trio_rack.net.transport import ReadPhase
    from trio_rack.state import ServerState

    limits = Limits()
    size = limits.max_head_size
    info = ConnInfo("http", ("127.0.0.1", 8000), ("127.0.0.1", 54321))
    hello: Any = rack_app.app

    def parse_one(c: h11.Connection) -> Any:
        c.receive_data(REQUEST)
        buffered = c.trailing_data[0]
        strict.line_break_trick(buffered)
        event = c.next_event()
        strict.check_request(event, limits)
        head = strict.request_head(event)
        c.next_event()  # EndOfMessage: the empty body (read by _prepare_next_cycle)
        return head

    def headers() -> list[tuple[bytes, bytes]]:
        return _with_date_and_server(prepare_response((200, rack_app.TEXT, [rack_app.HELLO])).headers)

    def serialise(c: h11.Connection, hdrs: list[tuple[bytes, bytes]]) -> bytes:
        pieces = [c.send(h11.Response(status_code=200, headers=hdrs, reason=b"OK", _parsed=_H11_TRUSTS_PARSED))]
        pieces.extend(c.send_with_data_passthrough(h11.Data(data=rack_app.HELLO)) or ())
        pieces.append(c.send(h11.EndOfMessage()))
        return b"".join(pieces)

    async def h11_new(n: int) -> None:
        for _ in range(n):
            h11.Connection(h11.SERVER, max_incomplete_event_size=size)

    async def parse_fresh(n: int) -> None:
        for _ in range(n):
            parse_one(h11.Connection(h11.SERVER, max_incomplete_event_size=size))

    async def cycle_fresh(n: int) -> None:
        hdrs = headers()
        for _ in range(n):
            c = h11.Connection(h11.SERVER, max_incomplete_event_size=size)
            parse_one(c)
            serialise(c, list(hdrs))

    async def cycle_reused(n: int) -> None:
        hdrs = headers()
        a, _b = trio.testing.memory_stream_pair()
        conn = HTTPConnection(a, ServerState(hello, limits, access_log=False), info)
        c = conn.h11
        for _ in range(n):
            parse_one(c)
            serialise(c, list(hdrs))
            c.start_next_cycle()
            conn._reset_request()

    async def copy_headers(n: int) -> None:  # the list() the serialise loops pay
        hdrs = headers()
        for _ in range(n):
            list(hdrs)

    def head_and_env() -> tuple[Any, Any]:
        c = h11.Connection(h11.SERVER, max_incomplete_event_size=size)
        return parse_one(c), None

    async def env_only(n: int) -> None:
        head, _ = head_and_env()
        for _ in range(n):
            build_env(head, info)

    async def exchange_env(n: int) -> None:  # Exchange(...): build_env + rack.* keys + scope + rack.input
        head, _ = head_and_env()
        a, _b = trio.testing.memory_stream_pair()
        state = ServerState(hello, limits, access_log=False)
        sink = HTTPConnection(a, state, info)
        for _ in range(n):
            Exchange(state, sink, head, info)

    async def app_call(n: int) -> None:
        head, _ = head_and_env()
        env = build_env(head, info)
        for _ in range(n):
            await hello(env)

    async def validate(n: int) -> None:
        result = (200, rack_app.TEXT, [rack_app.HELLO])
        for _ in range(n):
            _with_date_and_server(prepare_response(result).headers)

    async def deadlines(n: int) -> None:  # _read_request's two moves of the entered scope's deadline
        a, _b = trio.testing.memory_stream_pair()
        conn = HTTPConnection(a, ServerState(hello, limits, access_log=False), info)
        d = conn.deadlines
        with d.scope:
            for _ in range(n):
                now = trio.current_time()
                head_deadline = now + limits.header_timeout
                d.set_read(ReadPhase.IDLE, min(head_deadline, now + limits.keepalive_timeout))
                d.set_read(ReadPhase.APP, math.inf)

    async def liveness(n: int) -> None:  # the exchange's registration for the sweeper
        head, _ = head_and_env()
        a, _b = trio.testing.memory_stream_pair()
        state = ServerState(hello, limits, access_log=False)
        ex = Exchange(state, HTTPConnection(a, state, info), head, info)
        for _ in range(n):
            state.active.add(ex)
            state.active.discard(ex)

    async def finish(n: int) -> None:  # Exchange._finish, access log off (closes, callbacks check)
        head, _ = head_and_env()
        a, _b = trio.testing.memory_stream_pair()
        state = ServerState(hello, limits, access_log=False)
        ex = Exchange(state, HTTPConnection(a, state, info), head, info)
        ex._result = (200, rack_app.TEXT, [rack_app.HELLO])
        for _ in range(n):
            await ex._finish()

    devnull = open(os.devnull, "w")  # noqa: SIM115  (this process's lifetime: the log's sink)

    async def access_log(n: int) -> None:  # one access-log line, to a real handler (/dev/null)
        logs.configure("warning", access_log=True, stream=devnull)
        head, _ = head_and_env()
        env = build_env(head, info)
        for _ in range(n):
            accesslog.log_response(env, 200, 13, duration=trio.current_time() - 1.0)
        logging.getLogger("trio_rack").handlers.clear()
        logging.getLogger("trio_rack.access").handlers.clear()

    async def empty(n: int) -> None:
        for _ in range(n):
            pass

    # Trio's own prices, for the glue and TLS arguments (not in the table; ``--stage NAME``):
    async def scope(n: int) -> None:  # the request's cancel scope: made, entered, left
        for _ in range(n):
            with trio.CancelScope():  # noqa: ASYNC100 (its price is the point)
                pass

    async def checkpoint(n: int) -> None:  # one trip through the scheduler, nothing else ready
        for _ in range(n):
            await trio.lowlevel.checkpoint()

    async def free_lock(n: int) -> None:  # an uncontended lock, as SSLStream takes per send/receive
        lock = trio.StrictFIFOLock()
        for _ in range(n):
            async with lock:
                pass

    async def scope_short(n: int) -> None:  # the same scope through app/scopes.py, as the exchange enters it
        from trio_rack.app import scopes

        for _ in range(n):
            s = scopes.new()
            scopes.enter(s)
            scopes.leave(s)

    class _NoSink:  # a ResponseSink that sends nothing: the exchange's own cost alone
        can_full_hijack = True
        can_send_trailers = False
        fileno = None

        async def send_whole(self, *args: Any) -> None:
            pass

        def discard_body(self) -> None:
            pass

    async def exchange(n: int) -> None:  # Exchange(...).run() of the hello request, the sink a no-op
        head, _ = head_and_env()
        state = ServerState(hello, limits, access_log=False)
        sink: Any = _NoSink()
        for _ in range(n):
            await Exchange(state, sink, head, info).run()

    return {
        "empty": empty,
        "scope": scope,
        "scope_short": scope_short,
        "exchange": exchange,
        "checkpoint": checkpoint,
        "free_lock": free_lock,
        "h11_new": h11_new,
        "parse_fresh": parse_fresh,
        "cycle_fresh": cycle_fresh,
        "cycle_reused": cycle_reused,
        "copy_headers": copy_headers,
        "env_only": env_only,
        "exchange_env": exchange_env,
        "app_call": app_call,
        "validate": validate,
        "deadlines": deadlines,
        "liveness": liveness,
        "finish": finish,
        "access_log": access_log,
    }


def run_stage(name: str, n: int) -> float:
    """Run stage ``name`` n times in this process; seconds of CPU it took."""
    import trio
    import trio.testing

    loop = _stage_loops()[name]

    async def main() -> float:
        await loop(50)  # warm-up: first-call paths, caches
        start = time.process_time()
        await loop(n)
        return time.process_time() - start

    return trio.run(main)


# ----------------------------------------------------------------------------- callgrind


def _collected(log: str) -> int:
    found = re.findall(r"Collected : (\d+)", log)
    if not found:
        raise RuntimeError(f"no callgrind total in: {log[-2000:]}")
    return int(found[-1])


def _python() -> str:
    return os.path.realpath(sys.executable)


def _callgrind(argv: list[str], workdir: str) -> list[str]:
    out = tempfile.mktemp(prefix="cg.", dir=workdir)
    return ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *argv]


def stage_instructions(name: str, n1: int, n2: int, workdir: str) -> float:
    counts = []
    for n in (n1, n2):
        argv = _callgrind([_python(), str(Path(__file__)), "--stage", name, "-n", str(n)], workdir)
        done = subprocess.run(argv, capture_output=True, text=True, timeout=600, env=_env())
        counts.append(_collected(done.stderr))
    return (counts[1] - counts[0]) / (n2 - n1)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


# ----------------------------------------------------------------------------- end to end


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _server_argv(kind: str, port: int) -> list[str]:
    if kind == "bare":
        return [_python(), str(HERE / "bare_trio.py"), "--port", str(port)]
    log = "--access-log" if kind == "log" else "--no-access-log"
    return [_python(), "-m", "trio_rack", "serve", str(HERE / "rack_app.py"), "-b", f"http://127.0.0.1:{port}",
            log, "--log-level", "warning"]  # fmt: skip


def _connect(port: int, timeout: float) -> socket.socket:
    deadline = time.monotonic() + timeout
    while True:
        try:
            s = socket.create_connection(("127.0.0.1", port))
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return s
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _new_connections(port: int, n: int) -> None:
    """n requests, each on a connection of its own (``Connection: close``), read to EOF."""
    request = REQUEST.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n")
    for _ in range(n):
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(request)
            while s.recv(65536):
                pass


def _requests(s: socket.socket, n: int) -> None:
    for _ in range(n):
        s.sendall(REQUEST)
        buf = b""
        while not buf.endswith(b"Hello, world!"):
            data = s.recv(65536)
            if not data:
                raise RuntimeError("server closed the connection")
            buf += data


def _cpu_seconds(pid: int) -> float:
    """The process's time on a CPU, user + kernel, every thread: schedstat's nanoseconds (not
    /proc/PID/stat's 10 ms ticks, too coarse for a few thousand requests)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pass  # a thread that just ended
    return total / 1e9


def _pinned(argv: list[str], core: str) -> list[str]:
    return ["taskset", "-c", core, *argv] if shutil.which("taskset") and (os.cpu_count() or 1) > 1 else argv


def e2e_microseconds(kind: str, n: int, *, close: bool = False) -> float:
    """Server CPU (user + system) per request, µs, over n sequential keep-alive requests
    (``close``: each on a new connection)."""
    port = _free_port()
    with open(os.devnull, "w") as devnull:
        proc = subprocess.Popen(_pinned(_server_argv(kind, port), "0"), env=_env(), stdout=devnull, stderr=devnull)
        try:
            s = _connect(port, 30)
            with s:
                _requests(s, 500)  # warm-up
                before = _cpu_seconds(proc.pid)
                _new_connections(port, n) if close else _requests(s, n)
                after = _cpu_seconds(proc.pid)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    return (after - before) / n * 1e6


def e2e_instructions(kind: str, n1: int, n2: int, workdir: str, *, close: bool = False) -> float:
    counts = []
    for n in (n1, n2):
        port = _free_port()
        log = Path(workdir) / f"e2e-{kind}-{n}.log"
        with open(log, "w") as out:
            proc = subprocess.Popen(_callgrind(_server_argv(kind, port), workdir), env=_env(), stdout=out, stderr=out)
            try:
                with _connect(port, 180) as s:
                    _new_connections(port, n) if close else _requests(s, n)
            finally:
                proc.terminate()
                proc.wait(timeout=120)
        counts.append(_collected(log.read_text()))
    return (counts[1] - counts[0]) / (n2 - n1)


# ------------------------------------------------------------------------------- the table

#: (row, how it is derived from the loops: {loop: sign}, what it is)
STAGES: list[tuple[str, dict[str, int], str]] = [
    ("parse (h11 + strict checks)", {"parse_fresh": 1, "h11_new": -1},
     "receive_data, line_break_trick, next_event → Request, check_request, request_head, next_event → EndOfMessage"),
    ("env (Exchange(): build_env + rack.* keys)", {"exchange_env": 1, "empty": -1},
     "CGI keys, rack.input, rack.errors, hijack, cancel scope"),
    ("  of which build_env", {"env_only": 1, "empty": -1}, "the CGI keys alone"),
    ("the app call (rack_app hello)", {"app_call": 1, "empty": -1}, "await app(env): counters, path test, the tuple"),
    ("validation (prepare_response + date/server)", {"validate": 1, "empty": -1},
     "status, headers dict → list, body kind, length"),
    ("serialisation (h11 send)", {"cycle_fresh": 1, "parse_fresh": -1, "copy_headers": -1},
     "Response (_parsed), Data, EndOfMessage, join"),
    ("deadlines (two moves of the scope's deadline)", {"deadlines": 1, "empty": -1},
     "set_read(IDLE/…) and set_read(APP, inf), inside the entered scope"),
    ("liveness registration", {"liveness": 1, "empty": -1}, "state.active add + discard"),
    ("exchange clean-up (_finish, log off)", {"finish": 1, "empty": -1}, "rack.input close, body/callback checks"),
    ("request-cycle reset", {"cycle_reused": 1, "cycle_fresh": -1, "h11_new": 1},
     "h11.start_next_cycle + the driver's _reset_request"),
]
ACCESS_LOG = ("access log line (when on)", {"access_log": 1, "empty": -1}, "log_response → the handler")
LOOPS = sorted({loop for _, parts, _ in [*STAGES, ACCESS_LOG] for loop in parts})


def _derive(per_loop: dict[str, float], parts: dict[str, int]) -> float:
    return sum(sign * per_loop[loop] for loop, sign in parts.items())


def per_connection(n: int) -> None:
    """Accept, first read, the connection's objects, the orderly close: a new connection per
    request (``Connection: close``) minus a keep-alive request, trio-rack and the bare loop."""
    callgrind = shutil.which("valgrind") is not None
    rows = {}
    with tempfile.TemporaryDirectory() as work, concurrent.futures.ThreadPoolExecutor(2) as pool:
        jobs = {
            (kind, close): pool.submit(e2e_instructions, kind, 100, 500, work, close=close)
            for kind in ("rack", "bare") for close in (False, True)
        } if callgrind else {}  # fmt: skip
        for kind in ("rack", "bare"):
            rows[kind] = [min(e2e_microseconds(kind, n, close=close) for _ in range(3)) for close in (False, True)]
        ins = {key: job.result() for key, job in jobs.items()}
    print("| per request | trio-rack µs | trio-rack instructions | bare loop µs | bare loop instructions |")
    print("|---|---|---|---|---|")
    for label, close in (("keep-alive", False), ("new connection (`Connection: close`)", True)):
        cells = []
        for kind in ("rack", "bare"):
            i = ins.get((kind, close))
            cells += [f"{rows[kind][int(close)]:.1f}", f"{i:,.0f}" if i is not None else "—"]
        print(f"| {label} | " + " | ".join(cells) + " |")
    cells = []
    for kind in ("rack", "bare"):
        i = ins.get((kind, True), 0) - ins.get((kind, False), 0) if ins else None
        cells += [f"{rows[kind][1] - rows[kind][0]:.1f}", f"{i:,.0f}" if i is not None else "—"]
    print("| **a connection: accept, first read, set-up, orderly close** | " + " | ".join(cells) + " |")
    print(f"(µs: server CPU, least of 3 runs of {n:,}; instructions: callgrind, 100 and 500 requests)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", help="run one stage's loop and exit (for callgrind)")
    parser.add_argument("-n", type=int, default=1000)
    parser.add_argument(
        "--instructions", action="store_true", help="with --stage: callgrind instructions per iteration (1,000 / 3,000)"
    )
    parser.add_argument("--no-callgrind", action="store_true", help="µs only")
    parser.add_argument("--requests", type=int, default=20000, help="end-to-end µs: requests per run")
    parser.add_argument(
        "--per-connection", action="store_true", help="only a connection's cost: new-connection against keep-alive"
    )
    args = parser.parse_args()
    if args.per_connection:
        per_connection(args.requests // 10)
        return
    if args.stage and args.instructions:
        with tempfile.TemporaryDirectory() as work:
            print(f"{args.stage}: {stage_instructions(args.stage, 1000, 3000, work):,.0f} instructions per iteration")
        return
    if args.stage:
        run_stage(args.stage, args.n)
        return
    sys.path.insert(0, str(ROOT / "src"))
    callgrind = not args.no_callgrind and shutil.which("valgrind") is not None

    print("µs: stage loops ...", file=sys.stderr, flush=True)
    us = {loop: min(run_stage(loop, 20000) for _ in range(5)) / 20000 * 1e6 for loop in LOOPS}
    print("µs: end to end ...", file=sys.stderr, flush=True)
    e2e_us = {kind: min(e2e_microseconds(kind, args.requests) for _ in range(3)) for kind in ("rack", "log", "bare")}

    ins: dict[str, float] = {}
    e2e_ins: dict[str, float] = {}
    if callgrind:
        print("instructions: callgrind runs (2 at a time) ...", file=sys.stderr, flush=True)
        with tempfile.TemporaryDirectory() as work, concurrent.futures.ThreadPoolExecutor(2) as pool:
            futures = {loop: pool.submit(stage_instructions, loop, 1000, 3000, work) for loop in LOOPS}
            e2e_futures = {
                kind: pool.submit(e2e_instructions, kind, 300, 1300, work) for kind in ("rack", "log", "bare")
            }
            ins = {loop: f.result() for loop, f in futures.items()}
            e2e_ins = {kind: f.result() for kind, f in e2e_futures.items()}

    def cells(us_value: float, ins_value: float | None) -> str:
        i = f"{ins_value:,.0f}" if ins_value is not None else "—"
        return f"{us_value:.2f} | {i}"

    def row(name: str, parts: dict[str, int], what: str) -> tuple[float, float | None]:
        u = _derive(us, parts)
        i = _derive(ins, parts) if ins else None
        print(f"| {name} | {cells(u, i)} | {what} |")
        return u, i

    total_us, total_ins = e2e_us["rack"], e2e_ins.get("rack")
    print("| stage of one hello keep-alive request | µs | instructions | what runs |")
    print("|---|---|---|---|")
    sum_us, sum_ins = 0.0, 0.0
    for name, parts, what in STAGES:
        u, i = row(name, parts, what)
        if not name.startswith("  "):
            sum_us += u
            sum_ins += i or 0.0
    print(f"| **sum of the stages above** | {cells(sum_us, sum_ins if ins else None)} | |")
    rest_ins = total_ins - sum_ins if total_ins is not None else None
    print(f"| the rest: syscalls, Trio, the loop's glue | {cells(total_us - sum_us, rest_ins)} |"
          " end to end minus the stages (the kernel's time is in µs only) |")  # fmt: skip
    print(f"| **end to end, access log off** | {cells(total_us, total_ins)} |"
          " the real server, one keep-alive connection, one request at a time |")  # fmt: skip
    row(*ACCESS_LOG)
    log_on = cells(e2e_us["log"], e2e_ins.get("log"))
    print(f"| end to end, access log on | {log_on} | the same, `--access-log` to /dev/null |")
    print(f"| **bare Trio loop (the floor)** | {cells(e2e_us['bare'], e2e_ins.get('bare'))} |"
          " `bench/bare_trio.py`: the same recv/send/epoll, no parsing |")  # fmt: skip
    bare_ins = e2e_ins.get("bare")
    ratio_ins = f", {total_ins / bare_ins:.1f}× in instructions" if total_ins and bare_ins else ""
    print(f"\ntrio-rack / bare loop: {total_us / e2e_us['bare']:.1f}× in server CPU µs{ratio_ins}.")
    print(f"(µs: stage loops are the least of 5 runs of 20,000; end to end the least of 3 runs of {args.requests:,}"
          " requests, server CPU from schedstat; instructions: callgrind, N2 − N1 = 2,000 loop iterations"
          " or 1,000 requests)")  # fmt: skip


if __name__ == "__main__":
    main()
