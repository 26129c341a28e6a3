"""A real ``redis-server`` for the broadcast tests: a free port on 127.0.0.1, a temporary
directory, no persistence; started and stopped by PID (never by name).

Not a test module; imported by ``tests/test_broadcast*.py`` as ``e2e_support`` is.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import h11
import pytest
import trio
import trustme

from e2e_support import free_port

REDIS_SERVER = shutil.which("redis-server") or shutil.which("valkey-server")

needs_redis = pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed (.ci/run installs it)")


@contextlib.contextmanager
def _connect(port: int, tls: ssl.SSLContext | None, timeout: float) -> Iterator[socket.socket]:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw:
        if tls is None:
            yield raw
        else:
            with tls.wrap_socket(raw, server_hostname="127.0.0.1") as wrapped:
                yield wrapped


def _ping(port: int, tls: ssl.SSLContext | None = None) -> bool:
    try:
        with _connect(port, tls, 0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One redis-server process; ``stop()`` and ``start()`` again keep the same port.

    With ``tls`` (a trustme CA), it speaks TLS only (``--port 0 --tls-port PORT``) with a
    certificate for 127.0.0.1 issued by that CA, and ``url`` is ``rediss://…?ssl_ca_certs=…``.
    Clients are asked for a certificate by that CA only with ``auth_clients``
    (``--tls-auth-clients yes``; the helper's own probes then present one).
    """

    def __init__(
        self, directory: Path, *, tls: trustme.CA | None = None, port: int | None = None, auth_clients: bool = False
    ) -> None:
        assert REDIS_SERVER is not None
        self.directory = directory
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None
        self._tls_args: list[str] = []
        self._client_tls: ssl.SSLContext | None = None
        if tls is not None:
            cert = tls.issue_cert("127.0.0.1")
            ca_pem, cert_pem, key_pem = (directory / n for n in ("redis-ca.pem", "redis-cert.pem", "redis-key.pem"))
            tls.cert_pem.write_to_path(str(ca_pem))
            cert.cert_chain_pems[0].write_to_path(str(cert_pem))
            cert.private_key_pem.write_to_path(str(key_pem))
            self.ca_path = ca_pem
            self.url = f"rediss://127.0.0.1:{self.port}/0?ssl_ca_certs={ca_pem}"
            self._tls_args = ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(cert_pem),
                              "--tls-key-file", str(key_pem), "--tls-ca-cert-file", str(ca_pem),
                              "--tls-auth-clients", "yes" if auth_clients else "no"]
            self._client_tls = ssl.create_default_context(cafile=str(ca_pem))
            if auth_clients:
                tls.issue_cert("probe@test").configure_cert(self._client_tls)

    def start(self) -> None:
        assert self.proc is None
        log = open(self.directory / "redis.log", "ab")  # noqa: SIM115 - handed to the child
        argv = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
                "--save", "", "--appendonly", "no", "--daemonize", "no", "--protected-mode", "yes",
                *self._tls_args]  # (a later --port 0 wins: TLS only)
        self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + 10
        while not _ping(self.port, self._client_tls):
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
        with _connect(self.port, self._client_tls, 2) as s:
            s.sendall(b"CLIENT LIST\r\n")
            data = b""
            while True:
                data += s.recv(65536)
                head, sep, rest = data.partition(b"\r\n")
                if sep and head.startswith(b"$") and len(rest) >= int(head[1:]):
                    return rest[: int(head[1:])].decode().count("\n") - 1


# ------------------------------------------------------------------ trio-rack processes


def _children(pid: int) -> list[int]:
    """Child PIDs of ``pid`` (of any of its threads)."""
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


class ServeProcess:
    """``python -m trio_rack serve`` of one app on 127.0.0.1:``port``, its log in a file."""

    def __init__(self, app: Path, port: int, log: Path, *, bus_url: str, count: int = 1) -> None:
        self.app, self.port, self.log_path, self.bus_url, self.count = app, port, log, bus_url, count
        self.proc: trio.Process | None = None
        self.url = f"http://127.0.0.1:{port}"

    async def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
        env["TRIO_RACK_BROADCAST"] = self.bus_url
        argv = [sys.executable, "-m", "trio_rack", "serve", "-b", self.url, "-n", str(self.count),
                "--no-access-log", str(self.app)]
        with open(self.log_path, "ab") as log:  # noqa: ASYNC230 - a local temp file, opened once
            self.proc = await trio.lowlevel.open_process(
                argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=env, cwd=self.log_path.parent
            )
        with trio.fail_after(20):
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"trio-rack serve exited: {self.log()[-2000:]}")
                workers_up = self.count == 1 or self.log().count(" started (pid ") >= self.count
                if "listening on" in self.log() and workers_up:
                    try:
                        stream = await trio.open_tcp_stream("127.0.0.1", self.port)
                    except OSError:
                        pass
                    else:
                        await stream.aclose()
                        return
                await trio.sleep(0.05)

    async def stop(self) -> None:
        """SIGTERM by PID (graceful), then SIGKILL to whatever is left of it and its workers."""
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        workers = _children(proc.pid)
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        with trio.move_on_after(10):
            await proc.wait()
        for pid in [proc.pid, *workers]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with trio.move_on_after(5):
            await proc.wait()

    def log(self) -> str:
        return self.log_path.read_text("utf-8", "replace") if self.log_path.exists() else ""


@asynccontextmanager
async def serving(app: Path, directory: Path, *, bus_url: str, count: int = 1) -> AsyncIterator[ServeProcess]:
    server = ServeProcess(app, free_port(), directory / f"serve-{free_port()}.log", bus_url=bus_url, count=count)
    try:
        await server.start()
        yield server
    finally:
        await server.stop()


async def run_client(script: str, *args: str, limit: float = 30) -> Any:
    """Run an asyncio client script (the ``websockets`` library) and return its JSON stdout."""
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    with trio.fail_after(limit):
        proc = await trio.run_process(
            [sys.executable, "-c", script, *args], capture_stdout=True, capture_stderr=True, check=False,
            env=env, stdin=subprocess.DEVNULL,
        )
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    return json.loads(proc.stdout)


# ------------------------------------------------------------------ an SSE client


def parse_events(body: bytes) -> list[tuple[str, str]]:
    """(id, data) of every complete event in a ``text/event-stream`` body (de-chunked)."""
    out = []
    complete = body.rpartition(b"\n\n")[0].decode()
    for block in complete.split("\n\n"):
        fields = [line.split(": ", 1) for line in block.split("\n") if ": " in line and not line.startswith(":")]
        data = [value for name, value in fields if name == "data"]
        if data:  # data lines join with newlines, as an EventSource joins them
            out.append((next((value for name, value in fields if name == "id"), ""), "\n".join(data)))
    return out


class SSEClient:
    """A raw-socket EventSource: GET /events (with Last-Event-ID); h11 de-chunks the body."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream, self.data, self.ended = stream, b"", False
        self.h11 = h11.Connection(h11.CLIENT)

    @classmethod
    async def open(cls, port: int, last_event_id: str | None = None) -> SSEClient:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        client = cls(stream)
        headers = [("host", "x"), ("accept", "text/event-stream")]
        if last_event_id:
            headers.append(("last-event-id", last_event_id))
        await stream.send_all(client.h11.send(h11.Request(method="GET", target="/events", headers=headers)))
        await stream.send_all(client.h11.send(h11.EndOfMessage()))
        return client

    async def _pump(self) -> None:
        """Read once; append body bytes (the head is checked, then dropped)."""
        while True:
            event = self.h11.next_event()
            if event is h11.NEED_DATA:
                chunk = await self.stream.receive_some(1 << 20)
                self.h11.receive_data(chunk)
                if not chunk:
                    self.ended = True
                    return
                continue
            if isinstance(event, h11.Response):
                assert event.status_code == 200
                return
            if isinstance(event, h11.Data):
                self.data += bytes(event.data)
                return
            if isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                self.ended = True
                return

    async def events(self, count: int) -> list[tuple[str, str]]:
        """At least ``count`` complete events (all received so far)."""
        with trio.fail_after(10):
            if count == 0:  # just the head
                while self.h11.their_state is h11.SEND_RESPONSE:
                    await self._pump()
            while self.data.count(b"\n\n") < count or len(parse_events(self.data)) < count:
                assert not self.ended, f"the stream ended: {self.data[-300:]!r}"
                await self._pump()
        return parse_events(self.data)

    async def until_end(self) -> list[tuple[str, str]]:
        with trio.fail_after(20):
            while not self.ended:
                await self._pump()
        return parse_events(self.data)

    async def aclose(self) -> None:
        await self.stream.aclose()
