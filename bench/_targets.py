"""Issue #12's targets, judged from one ``bench/run``'s results: the "Targets" table.

Every row is computed from the run's own figures (medians of its rounds, or the one
measurement of a group that runs once per run), never written by hand: a target, its
threshold as the issue states it, the measured ratio (and the two figures it divides), and
met / not met.  A figure the run did not produce (a group skipped, a peer or the httptools
parser unavailable) makes the row "not measured", never "met".  The rows without a threshold
(Flask beside Uvicorn's WSGI, scaling) are shown for the record.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from _report import median, medians

__all__ = ["BEGIN", "END", "targets_table"]

BEGIN, END = "<!-- targets:begin -->", "<!-- targets:end -->"


class Figures:
    """Read access to one run's results: medians by (server, key), framework rows, labels."""

    def __init__(self, results: dict[str, Any]) -> None:
        self.results = results
        self._medians = {n: medians(s) for n, s in results.get("servers", {}).items()}

    def get(self, server: str, key: str) -> float | None:
        return self._medians.get(server, {}).get(key)

    def framework(self, app: str, server: str) -> float | None:
        for record in self.results.get("frameworks") or []:
            if record["key"] == app and record["server"] == server:
                return median(record["rps"])
        return None


@dataclass(frozen=True)
class Measure:
    """A ratio ours / theirs, each a (server, key) figure (or a framework row)."""

    ours: tuple[str, str]
    theirs: tuple[str, str]
    unit: str
    framework: bool = False

    def __call__(self, figs: Figures) -> tuple[float | None, str]:
        get = figs.framework if self.framework else figs.get
        if self.framework:
            a, b = get(self.ours[1], self.ours[0]), get(self.theirs[1], self.theirs[0])
        else:
            a, b = get(*self.ours), get(*self.theirs)
        if a is None or b is None or not b:
            missing = [s for s, v in ((self.ours[0], a), (self.theirs[0], b)) if v is None]
            return None, f"no figure for {', '.join(missing) or 'a zero'} in this run (skipped or failed: see Notes)"
        return a / b, f"{a / b:.2f}× ({_num(a)} / {_num(b)} {self.unit})"


@dataclass(frozen=True)
class Absolute:
    """One figure against an absolute limit (its ratio to a peer shown beside it)."""

    ours: tuple[str, str]
    beside: tuple[str, str]
    unit: str

    def __call__(self, figs: Figures) -> tuple[float | None, str]:
        a, b = figs.get(*self.ours), figs.get(*self.beside)
        if a is None:
            return None, f"no figure for {self.ours[0]} in this run (skipped or failed: see Notes)"
        extra = f"; {a / b:.2f}× {SHORT.get(self.beside[0], self.beside[0])}'s {_num(b)}" if b else ""
        return a, f"{_num(a)} {self.unit}{extra}"


@dataclass(frozen=True)
class Target:
    what: str
    threshold: str
    measure: Callable[[Figures], tuple[float | None, str]]
    #: operator.ge / operator.le with its limit, or None: shown, not judged
    check: tuple[Callable[[float, float], bool], float] | None


def _num(value: float) -> str:
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


TR, HT, UV, HY, BARE = "trio-rack", "trio-rack-httptools", "uvicorn-h11", "hypercorn-trio", "bare-trio"
GE, LE = operator.ge, operator.le
SHORT = {UV: "Uvicorn-h11"}

TARGETS = (
    Target("2. hello keep-alive, default install (h11)", "≥ 0.8× Uvicorn-h11",
           Measure((TR, "hello_ka"), (UV, "hello_ka"), "req/s"), (GE, 0.8)),
    Target("2. hello, new connection per request", "≥ 0.7× Uvicorn-h11",
           Measure((TR, "hello_close"), (UV, "hello_close"), "req/s"), (GE, 0.7)),
    Target("2. hello over TLS, keep-alive", "≥ 0.8× Uvicorn-h11",
           Measure((TR, "tls_ka"), (UV, "tls_ka"), "req/s"), (GE, 0.8)),
    Target("2. 10 MiB upload echoed", "≥ 0.9× Uvicorn-h11",
           Measure((TR, "upload"), (UV, "upload"), "MB/s"), (GE, 0.9)),
    Target("3. hello keep-alive, httptools parser", "≥ 1.3× Uvicorn-h11",
           Measure((HT, "hello_ka"), (UV, "hello_ka"), "req/s"), (GE, 1.3)),
    Target("3. hello keep-alive, httptools parser", "≥ 0.35× the bare Trio loop",
           Measure((HT, "hello_ka"), (BARE, "hello_ka"), "req/s"), (GE, 0.35)),
    Target("4. RSS per open stream at 10,000", "≤ 8 KiB",
           Absolute((TR, "streams_10000_kib"), (UV, "streams_10000_kib"), "KiB"), (LE, 8.0)),
    Target("4. 10,000 ten-second streams: time until all done", "≤ 1.3× Uvicorn-h11",
           Measure((TR, "streams_10000_done"), (UV, "streams_10000_done"), "s"), (LE, 1.3)),
    Target("4. WebSocket echo, server CPU per message, 100 connections", "≤ 1.5× Uvicorn (wsproto)",
           Measure((TR, "ws_cpu_100"), ("uvicorn-httptools", "ws_cpu_100"), "µs"), (LE, 1.5)),
    Target("4. WebSocket echo, server CPU per message, 1,000 connections", "≤ 1.5× Uvicorn (wsproto)",
           Measure((TR, "ws_cpu_1000"), ("uvicorn-httptools", "ws_cpu_1000"), "µs"), (LE, 1.5)),
    Target("4. RSS per idle websocket at 10,000", "≤ 1× Uvicorn (wsproto)",
           Measure((TR, "ws_idle_kib"), ("uvicorn-httptools", "ws_idle_kib"), "KiB"), (LE, 1.0)),
    Target("5. HTTP/2 hello, `h2load -c 16 -m 16`", "≥ 2× Hypercorn trio worker on h2",
           Measure((TR, "h2_hello"), (HY, "h2_hello"), "req/s"), (GE, 2.0)),
    Target("5. FastAPI hello", "≥ 1.5× Hypercorn trio worker",
           Measure((TR, "fastapi"), (HY, "fastapi"), "req/s", framework=True), (GE, 1.5)),
    Target("5. FastAPI hello", "≥ 0.8× Uvicorn-h11",
           Measure((TR, "fastapi"), (UV, "fastapi"), "req/s", framework=True), (GE, 0.8)),
    Target("5. Flask hello, trio-rack's WSGI adapter", "beside Uvicorn's WSGI interface (no threshold)",
           Measure((TR, "flask"), (UV, "flask"), "req/s", framework=True), None),
    Target("5. 256 MiB static file through sendfile", "≥ 0.8× nginx",
           Measure((TR, "static_mbps"), ("nginx", "static_mbps"), "MB/s"), (GE, 0.8)),
)


def _scaling_row(results: dict[str, Any]) -> str | None:
    data = (results.get("scaling") or {}).get("trio-rack")
    if not data:
        return None
    uv = (results.get("scaling") or {}).get(UV)
    cells = []
    for c, r in data["hello"].items():
        theirs = uv["hello"].get(c, {}).get("rps") if uv else None
        versus = f" ({r['rps'] / theirs:.2f}× Uvicorn-h11)" if theirs else ""
        cells.append(f"{int(c):,}: {r['rps']:,.0f} req/s{versus}")
    streams = [f"{int(c):,}: {s['cpu_ms_per_stream']:.2f} ms CPU" for c, s in data["streams"].items()]
    return (
        "| 6. hello and streams at 1, 64 and 512 connections | shown (no threshold) | hello "
        + "; ".join(cells) + "; streams " + "; ".join(streams) + " (the Scaling table) | shown |"
    )


def targets_table(results: dict[str, Any]) -> str:
    """The markdown table of every target, and a one-line tally."""
    figs = Figures(results)
    lines = ["| target (issue #12, by point) | threshold | measured in this run | verdict |", "|---|---|---|---|"]
    met, missed, unmeasured = [], [], []
    for t in TARGETS:
        value, detail = t.measure(figs)
        if value is None:
            verdict = "not measured"
            unmeasured.append(t)
        elif t.check is None:
            verdict = "shown"
        else:
            op, limit = t.check
            ok = op(value, limit)
            verdict = "**met**" if ok else "not met"
            if not ok and f"{value:.2f}" == f"{limit:.2f}":  # "0.80×, not met" needs its third digit
                detail += f" (exactly {value:.3f})"
            (met if ok else missed).append(t)
        lines.append(f"| {t.what} | {t.threshold} | {detail} | {verdict} |")
    scaling = _scaling_row(results)
    if scaling:
        lines.append(scaling)
    lines.append(
        "| 2. no scenario slower than today | every row ≥ the run at b2c6a7e | not judged by one run: "
        "compare with `bench/run --ref b2c6a7e` (the older table below) | not judged |"
    )
    judged = len(met) + len(missed)
    tally = f"{len(met)} of {judged} judged targets met in this run"
    if missed:
        tally += "; not met: " + "; ".join(f"{t.what} ({t.threshold})" for t in missed)
    if unmeasured:
        tally += f"; {len(unmeasured)} not measured"
    return "\n".join(lines) + "\n\n" + tally + "."
