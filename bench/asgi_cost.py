"""The ASGI and WSGI adapters' own cost per request, and where a FastAPI hello's time goes.

Two kinds of loop, both in one process, both reporting process CPU time per request (CPU
time, unlike req/s, is barely moved by other processes on a shared machine):

* **Through the server** (``served``): the same hello as a native trio-rack app, a raw ASGI
  app (through :class:`trio_rack.asgi.ASGIAdapter`), a raw WSGI app (through
  :class:`trio_rack.wsgi.WSGIAdapter`, its thread pool included) and ``bench/fastapi_app.py``
  over the real connection loop on an in-memory connection (``trio_rack.testing``).  The
  client pipelines ``--batch`` requests and only counts responses (as ``bench/inprocess.py``
  does), so nearly all the CPU is the server's; the client's share is the same for every app
  and cancels out in the differences.
* **The app alone** (``direct``): the ASGI app called as ``await app(scope, receive, send)``
  in a loop, with a prebuilt scope and no server, under ``trio.run`` and under
  ``asyncio.run``.  For FastAPI this is what the framework costs on each backend — the part
  no server can remove — and their difference is what running FastAPI on Trio (anyio's trio
  backend) costs over asyncio.

::

    python3 bench/asgi_cost.py [--requests N] [--rounds R] [--apps native,asgi,wsgi,fastapi]
    python3 bench/asgi_cost.py --direct          # also the app-alone loops (trio and asyncio)
    # instructions instead of seconds (deterministic, for an A/B on a busy machine): each loop
    # run twice under valgrind's callgrind, N1 and N2 requests; (I(N2) - I(N1)) / (N2 - N1)
    python3 bench/asgi_cost.py --instructions served:native,served:asgi,served:fastapi,direct-trio:fastapi
    # (one loop alone: python3.11 bench/asgi_cost.py --one served:fastapi --requests N)

It asserts nothing beyond each response being the hello: evidence for a change's note.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from trio_rack.asgi import ASGIAdapter
from trio_rack.interface import ServedApp
from trio_rack.testing import memory_connection
from trio_rack.wsgi import WSGIAdapter

sys.path.insert(0, str(Path(__file__).resolve().parent))

REQUEST = b"GET / HTTP/1.1\r\nHost: x\r\nUser-Agent: wrk\r\n\r\n"


async def native(env: dict[str, Any]) -> Any:
    return 200, {"content-type": "text/plain"}, [b"Hello, world!"]


async def raw_asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"Hello, world!"})


def raw_wsgi(environ: dict[str, Any], start_response: Any) -> Any:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return iter([b"Hello, world!"])  # an iterator, not a list: the general path


def fastapi_app() -> Any:
    from fastapi_app import app

    return app


class InlineASGI:
    """A measuring device, not an adapter: the ASGI cycle of :class:`ASGIAdapter` with the app
    awaited inline in the request task, before the response is taken.  Right only for an app
    that finishes its response without waiting for the server (these hellos); it prices what
    the adapter's app task costs (its spawn, the request task's park and wake-up), and with
    ``nursery=False`` also the server's request nursery that the task needs."""

    def __init__(self, app: Any, *, nursery: bool) -> None:
        self.app = app
        self.trio_rack_request_nursery = nursery

    async def __call__(self, env: dict[str, Any]) -> Any:
        from trio_rack.asgi.http import HTTPCycle
        from trio_rack.asgi.scope import http_scope

        scope = http_scope(env)
        cycle = HTTPCycle(env, scope)
        scope["extensions"] = {"http.response.pathsend": {}}
        await cycle.run_app(self.app)
        return await cycle.response()


def served_apps(names: list[str]) -> dict[str, Any]:
    apps: dict[str, Any] = {}
    for name in names:
        if name == "native":
            apps[name] = native
        elif name == "asgi":
            assert ServedApp(raw_asgi).check() == "asgi"
            apps[name] = ASGIAdapter(raw_asgi)
        elif name == "wsgi":
            apps[name] = WSGIAdapter(raw_wsgi)
        elif name == "fastapi":
            apps[name] = ASGIAdapter(fastapi_app())
        elif name in ("inline-asgi", "inline-asgi-no-nursery", "inline-fastapi"):
            inner = fastapi_app() if name == "inline-fastapi" else raw_asgi
            apps[name] = InlineASGI(inner, nursery=name != "inline-asgi-no-nursery")
        else:
            raise SystemExit(f"unknown app {name!r}")
    return apps


async def _burst(stream: trio.abc.Stream, batch: int) -> None:
    """Pipeline ``batch`` hellos and read until that many responses have begun."""
    await stream.send_all(REQUEST * batch)
    left = batch
    while left > 0:
        left -= (await stream.receive_some(1 << 20)).count(b"HTTP/1.1 200")


async def served(app: Any, requests: int, batch: int) -> float:
    """CPU µs per request of ``app`` behind the real HTTP/1 connection loop."""
    bursts = max(1, requests // batch)
    async with memory_connection(app) as client:
        for _ in range(4):  # warm-up: caches, first-request paths
            await _burst(client.stream, batch)
        response = await client.request("GET", "/")
        assert response.status == 200 and b"Hello, world!" in response.body, response
        start = time.process_time()
        for _ in range(bursts):
            await _burst(client.stream, batch)
        elapsed = time.process_time() - start
    return elapsed / (bursts * batch) * 1e6


def direct_scope() -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/",
        "raw_path": b"/",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"x"), (b"user-agent", b"wrk")],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "state": {},
        "extensions": {"http.response.pathsend": {}},
    }


async def direct(app: Any, requests: int, checkpoint: Any) -> float:
    """CPU µs per call of ``await app(scope, receive, send)`` with no server (a minimal
    receive/send pair that checkpoints as a server's would: once per receive)."""
    template = direct_scope()
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        await checkpoint()
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def one() -> None:
        sent.clear()
        await app(dict(template), receive, send)

    for _ in range(200):
        await one()
    assert sent[0]["status"] == 200 and b"Hello, world!" in sent[-1]["body"], sent
    start = time.process_time()
    for _ in range(requests):
        await one()
        sent.clear()
    return (time.process_time() - start) / requests * 1e6


def run_direct(app: Any, backend: str, requests: int) -> float:
    if backend == "trio":
        return trio.run(direct, app, requests, trio.lowlevel.checkpoint)
    return asyncio.run(direct(app, requests, lambda: asyncio.sleep(0)))


def run_one(spec: str, requests: int, batch: int) -> None:
    """``--one served:NAME`` or ``--one direct-trio:NAME`` / ``direct-asyncio:NAME`` (NAME
    asgi or fastapi): one loop and nothing else, for callgrind."""
    kind, _, name = spec.partition(":")
    if kind == "served":
        print(f"{trio.run(served, served_apps([name])[name], requests, batch):.1f} µs")
        return
    app = raw_asgi if name == "asgi" else fastapi_app()
    print(f"{run_direct(app, kind.removeprefix('direct-'), requests):.1f} µs")


def instructions(specs: list[str], n1: int, n2: int) -> None:
    """Instructions per request of each ``--one`` loop, by callgrind (start-up cancels out)."""
    python = os.path.realpath(sys.executable)  # the real interpreter, not a pyenv shim
    with tempfile.TemporaryDirectory() as tmp:
        for spec in specs:
            counts = []
            for n in (n1, n2):
                out = os.path.join(tmp, f"cg.{n}")
                subprocess.run(
                    ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", python, __file__,
                     "--one", spec, "--requests", str(n)],
                    check=True, capture_output=True,
                )  # fmt: skip
                text = Path(out).read_text()
                counts.append(int(re.search(r"^(?:summary|totals): (\d+)", text, re.M).group(1)))  # type: ignore[union-attr]
            per = (counts[1] - counts[0]) / (n2 - n1)
            print(f"{spec:<24} {per / 1000:8.1f} k instructions per request", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=int(os.environ.get("N", "5000")))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=50, help="requests pipelined per burst")
    parser.add_argument("--apps", default="native,asgi,wsgi,fastapi")
    parser.add_argument("--direct", action="store_true", help="also the app-alone loops (trio, asyncio)")
    parser.add_argument("--one", metavar="KIND:NAME", help="one loop only (for callgrind), see above")
    parser.add_argument("--instructions", metavar="SPECS", help="comma-separated --one specs, counted by callgrind")
    parser.add_argument("--n1", type=int, default=300)
    parser.add_argument("--n2", type=int, default=1300)
    args = parser.parse_args()
    if args.instructions:
        instructions(args.instructions.split(","), args.n1, args.n2)
        return
    if args.one:
        run_one(args.one, args.requests, args.batch)
        return
    apps = served_apps(args.apps.split(","))
    results: dict[str, list[float]] = {name: [] for name in apps}
    directs = [(n, b) for n in ("asgi", "fastapi") for b in ("trio", "asyncio")] if args.direct else []
    for name, backend in directs:
        results[f"direct-{backend}:{name}"] = []
    for _ in range(args.rounds):  # interleaved, so that drift hits all alike
        for name, app in apps.items():
            results[name].append(trio.run(served, app, args.requests, args.batch))
        for name, backend in directs:
            app = raw_asgi if name == "asgi" else fastapi_app()
            results[f"direct-{backend}:{name}"].append(run_direct(app, backend, args.requests))
    med = {name: statistics.median(values) for name, values in results.items()}
    n = med.get("native")
    for name in apps:
        extra = f"  ({med[name] - n:+.1f} µs over native)" if n is not None and name != "native" else ""
        print(f"served {name:<8} {med[name]:7.1f} µs CPU per request{extra}")
    for key in results:
        if key.startswith("direct-"):
            print(f"{key:<22} {med[key]:7.1f} µs CPU per call (the app alone, no server)")
    print(f"({args.rounds} rounds of {args.requests} requests, pipelined x{args.batch}, medians)")


if __name__ == "__main__":
    main()
