"""Processes for the benchmark: servers started, watched and stopped by PID, and /proc reads.

Resource handling: a :class:`ServerProcess` owns the processes it started (its roots) and
every descendant they spawn (supervisors' workers).  ``stop()`` sends SIGTERM to the roots,
waits, then SIGKILLs whatever of that tree is left, by PID, never by name.  The runner stops
every server in a ``finally``.
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = [
    "ServerError",
    "ServerProcess",
    "cpu_seconds",
    "free_port",
    "http_request",
    "rss_kib",
    "tree_pids",
]

CLK_TCK = os.sysconf("SC_CLK_TCK")


class ServerError(Exception):
    """A server failed to start, died, or answered wrongly."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                kids.extend(int(k) for k in f.read().split())
    except OSError:
        pass
    return kids


def tree_pids(roots: Sequence[int]) -> list[int]:
    """The live processes of the trees rooted at ``roots`` (roots first)."""
    seen: list[int] = []
    todo = [p for p in roots if os.path.exists(f"/proc/{p}")]
    while todo:
        pid = todo.pop(0)
        if pid not in seen:
            seen.append(pid)
            todo.extend(_children(pid))
    return seen


def _start_time(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of ``pid`` so far."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return 0.0


def http_request(
    port: int,
    method: str = "GET",
    path: str = "/",
    body: bytes | None = None,
    *,
    ca: Path | None = None,
    timeout: float = 30.0,
) -> tuple[int, dict[str, str], bytes]:
    """One request on a fresh connection (``connection: close``); (status, headers, body)."""
    if ca is not None:
        ctx = ssl.create_default_context(cafile=str(ca))
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            "127.0.0.1", port, timeout=timeout, context=ctx
        )
    else:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers={"Connection": "close"})
        response = conn.getresponse()
        data = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, data
    finally:
        conn.close()


class ServerProcess:
    """One server under test: one or more root processes listening on ``port``."""

    def __init__(self, name: str, port: int, *, ca: Path | None = None) -> None:
        self.name = name
        self.port = port
        self.ca = ca
        self.roots: list[subprocess.Popen[bytes]] = []
        #: every PID seen in our trees, with its start time: a PID reused since is not ours
        self.known: dict[int, int | None] = {}
        self.log_paths: list[Path] = []

    def spawn(
        self,
        argv: Sequence[str],
        *,
        log: Path,
        cwd: Path | None = None,
        pass_fds: Sequence[int] = (),
    ) -> None:
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                list(argv),
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                pass_fds=tuple(pass_fds),
            )
        self.roots.append(proc)
        self.log_paths.append(log)

    def pids(self) -> list[int]:
        pids = tree_pids([p.pid for p in self.roots])
        for pid in pids:
            self.known.setdefault(pid, _start_time(pid))
        return pids

    def rss_kib(self) -> int:
        return sum(rss_kib(p) for p in self.pids())

    def check_alive(self) -> None:
        for proc in self.roots:
            if proc.poll() is not None:
                raise ServerError(
                    f"{self.name} exited with status {proc.returncode}; log: {self.log_tail()}"
                )

    def log_tail(self, lines: int = 8) -> str:
        text = []
        for path in self.log_paths:
            try:
                text += path.read_text(errors="replace").splitlines()[-lines:]
            except OSError:
                pass
        return " | ".join(text[-lines:]) or "(empty)"

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until ``GET /`` answers 200 (over TLS when ``ca`` is set)."""
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                status, _, _ = http_request(self.port, ca=self.ca, timeout=5)
                if status == 200:
                    self.pids()
                    return
                last = ServerError(f"status {status}")
            except (OSError, http.client.HTTPException) as exc:
                last = exc
            time.sleep(0.1)
        raise ServerError(
            f"{self.name} not ready after {timeout:.0f} s ({last}); log: {self.log_tail()}"
        )

    def stop(self, grace: float = 8.0) -> None:
        self.pids()
        for proc in self.roots:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in self.roots:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        # whatever of the tree is left (a worker stuck, an orphan): by PID, only our own
        self.pids()
        for pid, started in self.known.items():
            if started is not None and _start_time(pid) == started:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for proc in self.roots:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
