"""Run the Autobahn|Testsuite fuzzing client against ``examples/websocket_echo.py`` and summarise.

Usage (from the repository root, with trio-rack importable)::

    python3 tests/autobahn/run.py --cases '1.*,2.*,3.*,4.*,5.*,6.*,7.*,10.*' --check   # what .ci/run does
    python3 tests/autobahn/run.py --cases '*' --max-message-size 16777216             # the full suite

What it does, each step bounded in time:

1. Finds ``wstest``: the Autobahn test suite (PyPI ``autobahntestsuite``, pinned below) runs on
   Python 2.7 only.  It lives in a Python 2.7 virtualenv *outside* the repository
   (``$AUTOBAHN_VENV``, default ``~/.cache/trio-rack/autobahn-py27``), created on first use with
   the Python 2.7 the machine image carries under pyenv (``$AUTOBAHN_PYTHON2``, else
   ``~/.pyenv/versions/2.7*``, else ``python2.7`` on the PATH) and ``virtualenv`` 20.21 (the last
   release that can create Python 2 environments; installed with pip into the same cache).
2. Starts ``python3 -m trio_rack serve -b http://127.0.0.1:0 examples/websocket_echo.py`` (its
   message limit from ``--max-message-size``, through ``WS_ECHO_MAX_MESSAGE_SIZE``), reading the
   port from its "listening on" line.
3. Writes a fuzzing-client spec pointing at ``ws://127.0.0.1:PORT`` and runs
   ``wstest -m fuzzingclient -s spec.json`` in the output directory (``--outdir``, default a
   fresh temporary directory; the HTML report is ``reports/index.html`` there).
4. Reads ``reports/index.json`` and each case's JSON report and prints, per case group (the
   number before the first dot), how many cases got each behaviour (OK, NON-STRICT,
   INFORMATIONAL, UNIMPLEMENTED, FAILED...) and each close behaviour (OK, UNCLEAN, FAILED BY
   CLIENT, WRONG CODE...), how many closes were clean, who started the closing handshake, and
   who dropped the TCP connection.
5. Stops the server (SIGTERM, then SIGKILL, by PID).

With ``--check`` it exits 1 if any case's behaviour is not OK, NON-STRICT or INFORMATIONAL or
any close behaviour is not OK (or INFORMATIONAL: the few cases, 7.1.6 and 7.13.x, where the suite
itself passes no verdict on the close) (``--allow-failed`` names cases exempt from the behaviour check,
e.g. the 9.x big messages under the default 1 MiB limit, which get 1009).  Exit 2 if the test
suite could not be installed or run.

Traffic goes to 127.0.0.1 only; the server and wstest are started and stopped by PID.
"""

from __future__ import annotations

import argparse
import collections
import fnmatch
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
ECHO = ROOT / "examples" / "websocket_echo.py"
#: The release of the suite that is pinned for Python 2.7 (its own requirements pin the rest).
AUTOBAHN = "autobahntestsuite==25.10.1"
#: virtualenv 20.22 dropped support for creating Python 2 environments.
VIRTUALENV = "virtualenv==20.21.1"
DEFAULT_VENV = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "trio-rack" / "autobahn-py27"
FAST_CASES = "1.*,2.*,3.*,4.*,5.*,6.*,7.*,10.*"
GOOD_BEHAVIOUR = {"OK", "NON-STRICT", "INFORMATIONAL"}
#: A few cases (7.1.6, 7.13.x) judge no closing behaviour: the suite reports INFORMATIONAL there.
GOOD_CLOSE = {"OK", "INFORMATIONAL"}


class SetupError(Exception):
    """wstest could not be installed or run: a one-line reason."""


# ----------------------------------------------------------------------------- wstest


def find_python2() -> str:
    """The Python 2.7 interpreter to build the virtualenv with."""
    explicit = os.environ.get("AUTOBAHN_PYTHON2")
    if explicit:
        return explicit
    pyenv_root = os.environ.get("PYENV_ROOT", str(Path.home() / ".pyenv"))
    for candidate in sorted(glob.glob(os.path.join(pyenv_root, "versions", "2.7*", "bin", "python2.7")), reverse=True):
        return candidate
    found = shutil.which("python2.7")
    if found:
        return found
    raise SetupError("no Python 2.7 found (set AUTOBAHN_PYTHON2, or install one with pyenv)")


def run_step(argv: list[str], what: str, timeout: float, **kwargs: Any) -> None:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                              check=False, **kwargs)
    except subprocess.TimeoutExpired:
        raise SetupError(f"{what}: timed out after {timeout:.0f} s") from None
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise SetupError(f"{what} failed (exit {proc.returncode}): " + " | ".join(tail))


def ensure_wstest(venv: Path) -> Path:
    """``venv``'s wstest, creating the virtualenv and installing the suite first if needed."""
    wstest = venv / "bin" / "wstest"
    if wstest.exists():
        return wstest
    python2 = find_python2()
    tools = venv.parent / "virtualenv-tool"
    if not (tools / "virtualenv").is_dir():
        print(f"autobahn: installing {VIRTUALENV} into {tools}", flush=True)
        run_step([sys.executable, "-m", "pip", "install", "-q", "--target", str(tools), VIRTUALENV],
                 "installing virtualenv", 300)
    print(f"autobahn: creating a Python 2.7 virtualenv at {venv} ({python2})", flush=True)
    env = dict(os.environ, PYTHONPATH=str(tools))
    run_step([sys.executable, "-m", "virtualenv", "-q", "-p", python2, str(venv)], "creating the virtualenv", 300,
             env=env)
    print(f"autobahn: installing {AUTOBAHN}", flush=True)
    run_step([str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", AUTOBAHN],
             f"installing {AUTOBAHN}", 900)
    if not wstest.exists():
        raise SetupError(f"{AUTOBAHN} installed, but {wstest} is missing")
    return wstest


# ----------------------------------------------------------------------------- server


def start_server(max_message_size: int | None, log_path: Path) -> tuple[subprocess.Popen[bytes], int]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src"), env.get("PYTHONPATH")) if p)
    if max_message_size is not None:
        env["WS_ECHO_MAX_MESSAGE_SIZE"] = str(max_message_size)
    argv = [sys.executable, "-m", "trio_rack", "serve", "-b", "http://127.0.0.1:0", "--no-access-log",
            "--log-level", "warning", str(ECHO)]
    log = log_path.open("wb")
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, env=env)
    log.close()
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stdout.readline().decode(errors="replace")
        if not line:
            break
        if "listening on http://127.0.0.1:" in line:
            return proc, int(line.rsplit(":", 1)[1])
    stop_server(proc)
    raise SetupError(f"the echo server did not start (see {log_path})")


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


# ---------------------------------------------------------------------------- the run


def run_wstest(wstest: Path, outdir: Path, port: int, cases: list[str], exclude: list[str], timeout: float) -> None:
    spec = {
        "outdir": str(outdir / "reports"),
        "servers": [{"agent": "trio-rack", "url": f"ws://127.0.0.1:{port}"}],
        "cases": cases,
        "exclude-cases": exclude,
        "exclude-agent-cases": {},
    }
    (outdir / "spec.json").write_text(json.dumps(spec, indent=2))
    with (outdir / "wstest.log").open("wb") as log:
        proc = subprocess.Popen([str(wstest), "-m", "fuzzingclient", "-s", "spec.json"], cwd=outdir,
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise SetupError(f"wstest did not finish within {timeout:.0f} s (see {outdir / 'wstest.log'})") from None
    if code != 0 or not (outdir / "reports" / "index.json").exists():
        raise SetupError(f"wstest failed (exit {code}; see {outdir / 'wstest.log'})")


def case_key(case_id: str) -> tuple[int, ...]:
    return tuple(int(part) for part in case_id.split("."))


def summarise(reports: Path, agent: str = "trio-rack") -> tuple[list[dict[str, Any]], str]:
    """One row per case (id, behaviour, close behaviour, clean, who closed) and the table."""
    index = json.loads((reports / "index.json").read_text())[agent]
    rows = []
    for case_id in sorted(index, key=case_key):
        entry = index[case_id]
        detail = json.loads((reports / entry["reportfile"]).read_text())
        rows.append({
            "id": case_id,
            "group": case_id.split(".", 1)[0],
            "behavior": entry["behavior"],
            "behaviorClose": entry["behaviorClose"],
            "remoteCloseCode": entry["remoteCloseCode"],
            "duration": entry["duration"],
            "clean": bool(detail.get("wasClean")),
            # the client (wstest) is "me" in its reports
            "initiated": "client" if detail.get("closedByMe") else "server",
            "tcp_closed_by": "client" if detail.get("droppedByMe") else "server",
        })
    groups: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for row in rows:
        groups[row["group"]].append(row)

    def counts(items: list[dict[str, Any]], key: str) -> str:
        tally = collections.Counter(str(item[key]) for item in items)
        return ", ".join(f"{name} {n}" for name, n in sorted(tally.items(), key=lambda kv: (-kv[1], kv[0])))

    lines = [
        "| group | cases | behaviour | close behaviour | clean close | close started by | TCP closed by |",
        "|---|---|---|---|---|---|---|",
    ]
    for group in sorted(groups, key=int):
        items = groups[group]
        clean = sum(item["clean"] for item in items)
        lines.append(f"| {group} | {len(items)} | {counts(items, 'behavior')} | {counts(items, 'behaviorClose')} | "
                     f"{clean}/{len(items)} | {counts(items, 'initiated')} | {counts(items, 'tcp_closed_by')} |")
    clean = sum(row["clean"] for row in rows)
    lines.append(f"| all | {len(rows)} | {counts(rows, 'behavior')} | {counts(rows, 'behaviorClose')} | "
                 f"{clean}/{len(rows)} | {counts(rows, 'initiated')} | {counts(rows, 'tcp_closed_by')} |")
    return rows, "\n".join(lines)


def problems(rows: list[dict[str, Any]], allow_failed: list[str]) -> list[str]:
    bad = []
    for row in rows:
        exempt = any(fnmatch.fnmatch(row["id"], pattern) for pattern in allow_failed)
        if row["behavior"] not in GOOD_BEHAVIOUR and not exempt:
            bad.append(f"{row['id']}: behaviour {row['behavior']}")
        if row["behaviorClose"] not in GOOD_CLOSE:
            bad.append(f"{row['id']}: close behaviour {row['behaviorClose']} (clean={row['clean']}, "
                       f"TCP closed by the {row['tcp_closed_by']})")
    return bad


def split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--cases", default=FAST_CASES,
                        help=f"comma-separated case patterns, '*' for all (default: {FAST_CASES})")
    parser.add_argument("--exclude", default="", help="comma-separated case patterns to skip")
    parser.add_argument("--max-message-size", type=int, default=None,
                        help="the echo's message limit in bytes (default: the example's, 1 MiB)")
    parser.add_argument("--outdir", type=Path, default=None, help="where spec, logs and reports go")
    parser.add_argument("--venv", type=Path, default=Path(os.environ.get("AUTOBAHN_VENV", DEFAULT_VENV)),
                        help="the Python 2.7 virtualenv with wstest (created if missing)")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds wstest may run (default: 3600)")
    parser.add_argument("--check", action="store_true",
                        help="exit 1 unless every case is OK/NON-STRICT/INFORMATIONAL and every close OK/INFORMATIONAL")
    parser.add_argument("--allow-failed", default="", help="case patterns exempt from the behaviour check")
    parser.add_argument("--json", type=Path, default=None, help="also write the per-case rows here")
    args = parser.parse_args(argv)

    outdir = args.outdir or Path(tempfile.mkdtemp(prefix="trio-rack-autobahn-"))
    outdir.mkdir(parents=True, exist_ok=True)
    try:
        wstest = ensure_wstest(args.venv)
        server, port = start_server(args.max_message_size, outdir / "server.log")
        try:
            started = time.monotonic()
            print(f"autobahn: wstest -m fuzzingclient, cases {args.cases} against ws://127.0.0.1:{port}", flush=True)
            run_wstest(wstest, outdir, port, split(args.cases), split(args.exclude), args.timeout)
            elapsed = time.monotonic() - started
        finally:
            stop_server(server)
    except SetupError as exc:
        print(f"autobahn: error: {exc}", file=sys.stderr)
        return 2
    rows, table = summarise(outdir / "reports")
    print(table)
    print(f"autobahn: {len(rows)} cases in {elapsed:.0f} s; reports in {outdir / 'reports'}")
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=1))
    if args.check:
        bad = problems(rows, split(args.allow_failed))
        for line in bad:
            print(f"autobahn: NOT OK: {line}")
        if bad:
            print(f"autobahn: {len(bad)} problems in {len(rows)} cases", file=sys.stderr)
            return 1
        print(f"autobahn: all {len(rows)} cases OK/NON-STRICT/INFORMATIONAL, every close OK/INFORMATIONAL")
    return 0


if __name__ == "__main__":
    sys.exit(main())
