"""The frameworks scenario of ``bench/run``: the same FastAPI and Flask hello apps on trio-rack,
Hypercorn (trio worker) and Uvicorn (h11), one worker each, plus the adapter's own cost.

Rows (hello, ``wrk -t1 -c64`` keep-alive, the run's hello duration, one figure per round):

* ``asgi_app.py`` (the peers' raw ASGI benchmark app, no framework) on trio-rack against
  ``rack_app.py`` (the same answer as a native trio-rack app): the difference of the two
  per-request times is what the ASGI adapter costs per request;
* ``fastapi_app.py`` on trio-rack / Hypercorn-trio / Uvicorn-h11;
* ``flask_app.py`` on trio-rack (``--interface wsgi``, the thread pool) / Hypercorn-trio
  (its WSGI support) / Uvicorn-h11 (``--interface wsgi``).

Servers run on core 0 and the load on core 1, as everywhere in the benchmark; a server that
cannot start (a peer without the framework installed) is a note, not a failure.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

from _procs import ServerError, ServerProcess, free_port
from _scenarios import wrk
from _servers import BENCH, trio_rack_args

__all__ = ["CONFIGS", "bench_frameworks", "frameworks_table"]


@dataclass(frozen=True)
class FrameworkConfig:
    key: str
    label: str
    server: str  # trio-rack | hypercorn-trio | uvicorn-h11
    app: str  # module:attr in bench/
    interface: str  # rack | asgi | wsgi

    def argv(self, port: int, venv: Any) -> list[str]:
        host = "127.0.0.1"
        if self.server == "trio-rack":
            spec = "rack_app.py" if self.interface == "rack" else self.app
            return [
                sys.executable, "-m", "trio_rack", "serve", spec, "--interface", self.interface,
                "-b", f"http://{host}:{port}", "--no-access-log", "--log-level", "warning", *trio_rack_args(),
            ]  # fmt: skip
        if self.server == "hypercorn-trio":
            return [
                str(venv / "bin" / "hypercorn"), "-k", "trio", "-b", f"{host}:{port}", "-w", "1",
                "--log-level", "warning", self.app,
            ]  # fmt: skip
        if self.server == "uvicorn-h11":
            argv = [
                str(venv / "bin" / "uvicorn"), self.app, "--app-dir", str(BENCH), "--host", host,
                "--port", str(port), "--http", "h11", "--loop", "asyncio", "--no-access-log",
                "--log-level", "warning",
            ]  # fmt: skip
            if self.interface == "wsgi":
                argv += ["--interface", "wsgi"]
            return argv
        raise ValueError(self.server)


CONFIGS = (
    FrameworkConfig("native", "trio-rack, native hello (rack_app.py)", "trio-rack", "rack_app:app", "rack"),
    FrameworkConfig("raw-asgi", "trio-rack, raw ASGI hello (asgi_app.py)", "trio-rack", "asgi_app:app", "asgi"),
    FrameworkConfig("fastapi", "FastAPI on trio-rack", "trio-rack", "fastapi_app:app", "asgi"),
    FrameworkConfig("fastapi", "FastAPI on Hypercorn, trio worker", "hypercorn-trio", "fastapi_app:app", "asgi"),
    FrameworkConfig("fastapi", "FastAPI on Uvicorn, h11", "uvicorn-h11", "fastapi_app:app", "asgi"),
    FrameworkConfig("flask", "Flask on trio-rack (--interface wsgi)", "trio-rack", "flask_app:app", "wsgi"),
    FrameworkConfig("flask", "Flask on Hypercorn, trio worker", "hypercorn-trio", "flask_app:app", "wsgi"),
    FrameworkConfig("flask", "Flask on Uvicorn, h11 (--interface wsgi)", "uvicorn-h11", "flask_app:app", "wsgi"),
)


def bench_frameworks(run: Any, config: FrameworkConfig, record: dict[str, Any], venv: Any, cpus: str) -> None:
    """One round of one configuration: start, check, warm, measure hello keep-alive, stop."""
    port = free_port()
    server = ServerProcess(config.label, port)
    server.spawn(["taskset", "-c", cpus, *config.argv(port, venv)], log=run.out / "logs" / f"fw-{port}.log", cwd=BENCH)
    try:
        server.wait_ready()
        url = f"http://127.0.0.1:{port}/"
        wrk(url, duration=run.plan.warmup)
        result = run.quiet_wrk(url, server, duration=run.plan.hello)
        if result["errors"]:
            raise ServerError(f"wrk errors {result['errors']}")
        record["rps"].append(result["rps"])
        record["p99_ms"].append(result["p99_ms"])
        run.log(f"{config.label}: {result['rps']:,.0f} req/s, p99 {result['p99_ms']:.2f} ms")
        server.check_alive()
    finally:
        server.stop()


def _median(values: list[float]) -> float | None:
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def frameworks_table(records: list[dict[str, Any]]) -> str:
    """Markdown: req/s and p99 per configuration, with trio-rack's figure divided by each peer's."""
    by = {(r["key"], r["server"]): r for r in records}
    lines = ["| app and server | hello keep-alive req/s ↑ | p99 ms ↓ |", "|---|---|---|"]
    for r in records:
        rps, p99 = _median(r["rps"]), _median(r["p99_ms"])
        ours = by.get((r["key"], "trio-rack"))
        ratio = ""
        if ours is not None and r["server"] != "trio-rack" and rps:
            mine = _median(ours["rps"])
            ratio = f" ({mine / rps:.2f})" if mine else ""
        shown = "—" if rps is None else f"{rps:,.0f}{ratio}"
        lines.append(f"| {r['label']} | {shown} | {'—' if p99 is None else f'{p99:.2f}'} |")
    native, raw = by.get(("native", "trio-rack")), by.get(("raw-asgi", "trio-rack"))
    if native and raw and _median(native["rps"]) and _median(raw["rps"]):
        cost = (1 / _median(raw["rps"]) - 1 / _median(native["rps"])) * 1e6  # type: ignore[operator]
        lines += ["", f"The ASGI adapter's cost per request over a native trio-rack app: {cost:.0f} µs "
                  "(1/req/s of the raw ASGI hello minus that of the native hello, one core)."]  # fmt: skip
    return "\n".join(lines)
