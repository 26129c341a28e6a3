"""A real ``redis-server`` for the broadcast tests: a free port on 127.0.0.1, a temporary
directory, no persistence; started and stopped by PID (never by name).

Not a test module; imported by ``tests/test_broadcast*.py`` as ``e2e_support`` is.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trio

REDIS_SERVER = shutil.which("redis-server") or shutil.which("valkey-server")

needs_redis = pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed (.ci/run installs it)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One redis-server process; ``stop()`` and ``start()`` again keep the same port."""

    def __init__(self, directory: Path) -> None:
        assert REDIS_SERVER is not None
        self.directory = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert self.proc is None
        log = open(self.directory / "redis.log", "ab")  # noqa: SIM115 - handed to the child
        argv = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
                "--save", "", "--appendonly", "no", "--daemonize", "no", "--protected-mode", "yes"]
        self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + 10
        while not _ping(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start: {(self.directory / 'redis.log').read_text()[-800:]}")
            time.sleep(0.02)

    def stop(self) -> None:
        """SIGKILL by PID: an abrupt outage, as a crash would be."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None

    def client_count(self) -> int:
        """``CLIENT LIST`` line count, minus the asking connection itself."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
            s.sendall(b"CLIENT LIST\r\n")
            data = b""
            while True:
                data += s.recv(65536)
                head, sep, rest = data.partition(b"\r\n")
                if sep and head.startswith(b"$") and len(rest) >= int(head[1:]):
                    return rest[: int(head[1:])].decode().count("\n") - 1


async def wait_until(predicate: Callable[[], bool], *, poll: float = 0.02) -> None:
    """Poll ``predicate`` (state owned by another process or library; bound it with fail_after)."""
    while True:
        if predicate():
            return
        await trio.sleep(poll)


@pytest.fixture(name="redis_server")
def redis_server_fixture(tmp_path: Path) -> Iterator[RedisServer]:
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed (.ci/run installs it)")
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()
