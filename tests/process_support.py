"""Shared helpers for the tests that run the real command in subprocesses (``python -m trio_rack``).

Not a test module; imported by name like ``e2e_support`` (pytest puts ``tests/`` on ``sys.path``).
One harness for every such test: :func:`spawn` starts a process with stdout piped to the test and
stderr to a log file, and in its ``finally`` SIGKILLs the process and every PID the test added to
``Server.pids`` (or passed as ``kill``: workers, which are not our children), then reaps it and
closes the pipe.  :func:`running` is ``spawn`` of ``serve ARGS`` that returns once the banner says
``listening on``.  Every server binds port 0 on 127.0.0.1 and the test reads the bound port from
the banner; every wait has a timeout.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import trio

from e2e_support import wait_until

__all__ = [
    "CURL",
    "START_TIMEOUT",
    "STOP_TIMEOUT",
    "Server",
    "assert_one_error_line",
    "command",
    "curl_text",
    "http_get",
    "is_gone",
    "listening_tcp_socket",
    "occupied_port",
    "run_to_completion",
    "running",
    "spawn",
    "subprocess_env",
    "wait_gone",
]

CURL = "/usr/bin/curl"
#: Backstops for a child that hangs; tests bound their own steps more tightly where it matters.
#: 20 s to start: a cold import of a framework app (FastAPI, Django) on a loaded machine.
START_TIMEOUT = 20
STOP_TIMEOUT = 10
_log_numbers = itertools.count()


def subprocess_env(tmp_path: Path) -> dict[str, str]:
    """This process's environment for a child server: no proxy variables (the clients talk to
    127.0.0.1), none of our own ``TRIO_RACK_*`` settings, no socket-activation ``LISTEN_*`` or
    ``WEB_CONCURRENCY`` leaking in from outside, and a per-test state directory (the development
    certificate)."""
    scrubbed = {
        k: v
        for k, v in os.environ.items()
        if "proxy" not in k.lower() and not k.startswith(("TRIO_RACK_", "LISTEN_")) and k != "WEB_CONCURRENCY"
    }
    return {**scrubbed, "TRIO_RACK_STATE_DIR": str(tmp_path / "state")}


def command(*args: str) -> list[str]:
    """``python -m trio_rack ARGS`` with this interpreter (so PYTHONPATH picks the tree under test)."""
    return [sys.executable, "-m", "trio_rack", *args]


# ------------------------------------------------------------------------------- processes


@dataclass
class Server:
    """A process started by :func:`spawn`: its stdout read line by line, its stderr in a file."""

    proc: trio.Process
    log_path: Path
    banner: list[str] = field(default_factory=list)  # every stdout line read so far
    buffer: bytes = b""
    pids: set[int] = field(default_factory=set)  # worker PIDs seen, killed in the finally
    start_timeout: float = START_TIMEOUT  # bounds each wait for a stdout line
    stop_timeout: float = STOP_TIMEOUT  # bounds each wait for the log, the exit, the rest of stdout

    @property
    def urls(self) -> list[str]:
        """The ``listening on`` URLs among the lines read so far."""
        return [line.split("listening on ", 1)[1] for line in self.banner if "listening on " in line]

    def port(self, scheme: str = "http") -> int:
        url = next(u for u in self.urls if u.startswith(scheme + "://"))
        return int(url.rsplit(":", 1)[1])

    async def read_line(self) -> str:
        assert self.proc.stdout is not None
        while b"\n" not in self.buffer:
            chunk = await self.proc.stdout.receive_some(4096)
            if not chunk:
                raise AssertionError(f"stdout closed; log:\n{self.log()}")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        self.banner.append(line.decode())
        return line.decode()

    async def line_with(self, text: str) -> str:
        """The next stdout line that contains ``text`` (within ``start_timeout``)."""
        with trio.fail_after(self.start_timeout):
            while text not in (line := await self.read_line()):
                pass
            return line

    async def read_until(self, text: str) -> None:
        await self.line_with(text)

    async def read_urls(self, count: int) -> list[str]:
        """The next ``count`` ``listening on`` URLs printed."""
        return [(await self.line_with("listening on ")).split("listening on ", 1)[1] for _ in range(count)]

    async def rest_of_stdout(self) -> list[str]:
        assert self.proc.stdout is not None
        with trio.fail_after(self.stop_timeout):
            data = self.buffer
            while chunk := await self.proc.stdout.receive_some(4096):
                data += chunk
        return data.decode().splitlines()

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    async def wait_for_log(self, text: str, count: int = 1) -> None:
        with trio.fail_after(self.stop_timeout):
            await wait_until(lambda: self.log().count(text) >= count)  # another process's file

    async def exit_code(self) -> int:
        with trio.fail_after(self.stop_timeout):
            return await self.proc.wait()


@contextlib.asynccontextmanager
async def spawn(
    argv: list[str], *, cwd: Path, env: dict[str, str], pass_fds: Sequence[int] = (), kill: set[int] | None = None
) -> AsyncIterator[Server]:
    """Start ``argv`` in ``cwd``; on exit SIGKILL it, every PID in ``Server.pids`` and every PID
    added to ``kill`` (its workers), reap it and close its stdout pipe."""
    log_path = cwd.parent / f"server-{next(_log_numbers)}.log"
    with open(log_path, "wb") as log_file:  # noqa: ASYNC230 (a local temp file, opened once)
        proc = await trio.lowlevel.open_process(
            argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=log_file, pass_fds=tuple(pass_fds)
        )
    server = Server(proc, log_path)
    try:
        yield server
    finally:
        for pid in [proc.pid, *server.pids, *(kill or ())]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with trio.move_on_after(STOP_TIMEOUT):
            await proc.wait()
        if proc.stdout is not None:
            await proc.stdout.aclose()


@contextlib.asynccontextmanager
async def running(
    args: list[str],
    *,
    cwd: Path,
    env: dict[str, str],
    ready: str = "listening on",
    program: list[str] | None = None,
) -> AsyncIterator[Server]:
    """``program`` (default ``python -m trio_rack``) ``serve ARGS``, once stdout has said ``ready``."""
    argv = [*program, "serve", *args] if program is not None else command("serve", *args)
    async with spawn(argv, cwd=cwd, env=env) as server:
        await server.read_until(ready)
        yield server


async def run_to_completion(
    args: list[str], *, cwd: Path, env: dict[str, str]
) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(START_TIMEOUT):
        return await trio.run_process(
            command(*args), cwd=cwd, env=env, capture_stdout=True, capture_stderr=True, check=False
        )


def assert_one_error_line(result: subprocess.CompletedProcess[bytes], *expected: str) -> str:
    """The house rule for bad configuration: exit 2, one ``trio-rack: error: ...`` line, no stdout."""
    stderr = result.stderr.decode()
    assert result.returncode == 2, stderr
    assert "Traceback" not in stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("trio-rack: error: "), stderr
    for text in expected:
        assert text in lines[0]
    assert result.stdout == b""
    return lines[0]


def is_gone(pid: int) -> bool:
    """True once ``pid`` has exited (a zombie awaiting a reaper counts as exited)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, IndexError):
        return True


async def wait_gone(pids: set[int]) -> None:
    with trio.fail_after(STOP_TIMEOUT):
        # not our children (they were the supervisor's): no exit to await, so poll
        await wait_until(lambda: all(is_gone(pid) for pid in pids), poll=0.05)


# ------------------------------------------------------------------------------- clients


async def http_get(port: int, path: str = "/", *, ca: Path | None = None) -> tuple[bytes, bytes]:
    """(head, body) of one GET over a fresh connection; over TLS trusting ``ca`` if given.
    Anything but a 200 is an AssertionError."""
    with trio.fail_after(5):
        stream: trio.abc.Stream
        if ca is None:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
        else:
            context = ssl.create_default_context(cafile=str(ca))
            stream = await trio.open_ssl_over_tcp_stream(
                "127.0.0.1", port, ssl_context=context, https_compatible=True
            )
        async with stream:
            await stream.send_all(
                f"GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n".encode()
            )
            data = b""
            while chunk := await stream.receive_some(4096):
                data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), data
    return head, body


async def curl_text(*args: str) -> str:
    """curl's stdout for ARGS (no ~/.curlrc, no proxy, a bare environment); exit 0 is asserted."""
    with trio.fail_after(10):
        result = await trio.run_process(
            [CURL, "-q", "-sS", "--noproxy", "*", "--max-time", "5", *args],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env={"PATH": os.environ.get("PATH", "/usr/bin")},
        )
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode()


# --------------------------------------------------------------------------------- sockets


def listening_tcp_socket() -> socket.socket:
    """A socket listening on 127.0.0.1, a free port (to hand to a child, or to occupy a port)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    return sock


@contextlib.contextmanager
def occupied_port() -> Iterator[int]:
    """A port on 127.0.0.1 that something is listening on, for as long as the block runs."""
    with listening_tcp_socket() as sock:
        yield sock.getsockname()[1]
