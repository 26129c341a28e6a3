"""Turn the runner's raw results into markdown: the comparison table, the streams and workers
detail tables, and the README section between the ``<!-- results:begin/end -->`` markers.

Every figure in a table is the median of the rounds of one run; every ratio is trio-rack's
median divided by the peer's median from that same run.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "latency_table",
    "main_table",
    "median",
    "streams_table",
    "update_readme",
    "workers_table",
]

BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


def median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def fmt(value: float | None, digits: int | None = None) -> str:
    if value is None:
        return "—"
    if digits is not None:
        return f"{value:,.{digits}f}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


# (key, row label, higher is better, digits)
def metric_rows(
    stream_ns: Sequence[int], stream_seconds: int, rate: float
) -> list[tuple[str, str, bool, int | None]]:
    rows: list[tuple[str, str, bool, int | None]] = [
        ("hello_ka", "hello, keep-alive, req/s", True, 0),
        ("us_per_req", "µs per request (1 / keep-alive rate)", False, 1),
        ("hello_close", "hello, new connection per request, req/s", True, 0),
        ("tls_ka", "hello over TLS, keep-alive, req/s", True, 0),
        ("tls_close", "hello over TLS, new connection per request, req/s", True, 0),
        ("body", "256 MiB body, MB/s", True, 0),
        ("upload", "10 MiB upload echoed, MB/s (each way)", True, 0),
        ("lat_p50", f"latency at {rate:,.0f} req/s, p50 ms", False, 2),
        ("lat_p99", f"latency at {rate:,.0f} req/s, p99 ms", False, 2),
        ("lat_p999", f"latency at {rate:,.0f} req/s, p99.9 ms", False, 2),
    ]
    for n in stream_ns:
        rows.append(
            (f"streams_{n}_kib", f"{n:,} streams: KiB of RSS per stream", False, 1)
        )
        rows.append(
            (
                f"streams_{n}_done",
                f"{n:,} streams of {stream_seconds} s: s until all done",
                False,
                1,
            )
        )
    if stream_ns:
        rows.append(
            (
                f"streams_{stream_ns[-1]}_peak",
                f"{stream_ns[-1]:,} streams: peak RSS, MiB",
                False,
                0,
            )
        )
    return rows


def medians(server: dict[str, Any]) -> dict[str, float | None]:
    out = {key: median(values) for key, values in server["runs"].items()}
    if out.get("hello_ka"):
        out["us_per_req"] = 1e6 / out["hello_ka"]  # type: ignore[operator]
    return out


def main_table(
    results: dict[str, Any],
    order: Sequence[str],
    rows: Sequence[tuple[str, str, bool, int | None]],
) -> str:
    servers = results["servers"]
    names = [n for n in order if n in servers]
    meds = {n: medians(servers[n]) for n in names}
    ours = meds.get("trio-rack", {})
    header = "| scenario | " + " | ".join(servers[n]["label"] for n in names) + " |"
    lines = [header, "|---" * (len(names) + 1) + "|"]
    for key, label, higher, digits in rows:
        if all(meds[n].get(key) is None for n in names):
            continue
        cells = []
        for n in names:
            value = meds[n].get(key)
            cell = fmt(value, digits)
            mine = ours.get(key)
            if n != "trio-rack" and value and mine is not None:
                cell += f" ({mine / value:.2f}×)"
            cells.append(cell)
        lines.append(
            f"| {label} {'↑' if higher else '↓'} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines)


def streams_table(results: dict[str, Any], order: Sequence[str]) -> str:
    lines = [
        "| server | streams | all done, s | all had a byte, s | most open at once "
        "| baseline RSS, MiB | peak RSS, MiB | KiB per stream | errors |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in order:
        server = results["servers"].get(name)
        if not server:
            continue
        for n, runs in sorted(
            server.get("streams", {}).items(), key=lambda kv: int(kv[0])
        ):
            for r in runs:
                errors = ", ".join(f"{k}: {v}" for k, v in r["errors"].items()) or "0"
                lines.append(
                    f"| {server['label']} | {int(n):,} | {fmt(r['done_s'], 1)} | {fmt(r['all_open_s'], 1)} | "
                    f"{r['simultaneous']:,} | {fmt(r['baseline_mib'], 1)} | {fmt(r['peak_mib'], 1)} | "
                    f"{fmt(r['kib_per_stream'], 1)} | {errors} |"
                )
    return "\n".join(lines)


def latency_table(results: dict[str, Any], order: Sequence[str]) -> str:
    lines = [
        "| server | sent | completed | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | errors |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in order:
        server = results["servers"].get(name)
        if not server:
            continue
        for r in server.get("latency", []):
            errors = ", ".join(f"{k}: {v}" for k, v in r["errors"].items()) or "0"
            lines.append(
                f"| {server['label']} | {r['sent']:,} | {r['completed']:,} | "
                f"{fmt(r['p50_ms'], 2)} | {fmt(r['p90_ms'], 2)} | "
                f"{fmt(r['p99_ms'], 2)} | {fmt(r['p999_ms'], 2)} | {fmt(r['max_ms'], 1)} | {errors} |"
            )
    return "\n".join(lines)


def _split(values: Sequence[float]) -> str:
    total = sum(values)
    if not total:
        return "—"
    return " / ".join(f"{100 * v / total:.0f}%" for v in sorted(values, reverse=True))


def workers_table(workers: Sequence[dict[str, Any]]) -> str:
    lines = [
        (
            "| configuration | keep-alive req/s | × its 1 worker | keep-alive: requests per worker "
            "| connections per worker (of 64) | CPU per worker | new connection per request: req/s "
            "| requests per worker | one client, sequential connections: per worker |"
        ),
        "|---|---|---|---|---|---|---|---|---|",
    ]
    base: dict[str, float] = {}
    for w in workers:
        ka = median([r["ka"]["rps"] for r in w["rounds"] if r.get("ka")])
        if w["workers"] == 1 and ka:
            base[w["server"]] = ka
    for w in workers:
        rounds = [r for r in w["rounds"] if r.get("ka")]
        ka = median([r["ka"]["rps"] for r in rounds])
        scale = (
            f"{ka / base[w['server']]:.2f}×"
            if ka and w["server"] in base and w["workers"] > 1
            else ""
        )
        req_split = "; ".join(
            _split([s["requests"] for s in r["ka_stats"].values()]) for r in rounds
        )
        conn_split = "; ".join(
            " / ".join(
                str(c)
                for c in sorted(
                    (s["connections"] for s in r["ka_stats"].values()), reverse=True
                )
            )
            for r in rounds
        )
        cpu_split = "; ".join(_split(list(r["ka_cpu"].values())) for r in rounds)
        closes = [r for r in w["rounds"] if r.get("close")]
        close = median([r["close"]["rps"] for r in closes])
        close_split = "; ".join(
            _split([s["requests"] for s in r["close_stats"].values()]) for r in closes
        )
        seqs = [r for r in w["rounds"] if r.get("seq_stats")]
        seq_split = "; ".join(
            " / ".join(
                str(s["requests"])
                for s in sorted(r["seq_stats"].values(), key=lambda s: -s["requests"])
            )
            for r in seqs
        )
        if w["workers"] == 1:
            req_split = conn_split = cpu_split = close_split = seq_split = (
                "(one worker)"
            )
        lines.append(
            f"| {w['label']} | {fmt(ka, 0)} | {scale} | {req_split} | {conn_split} | {cpu_split} | "
            f"{fmt(close, 0) if closes else '—'} | {close_split if closes else '—'} | {seq_split or '—'} |"
        )
    return "\n".join(lines)


def update_readme(readme: Path, section: str, *, begin: str = BEGIN, end: str = END) -> None:
    """Replace what is between the markers (the results', by default), or append the section with them."""
    text = readme.read_text() if readme.exists() else ""
    block = f"{begin}\n{section.strip()}\n{end}"
    if begin in text and end in text:
        text = re.sub(
            re.escape(begin) + ".*?" + re.escape(end),
            lambda _: block,
            text,
            flags=re.DOTALL,
        )
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    readme.write_text(text)
