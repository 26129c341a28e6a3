"""Helpers for the rolling-restart tests (``test_restart.py``, ``test_nginx.py``): the real
command in a subprocess, a versioned app, and a steady load that counts every request.

Not a test module.  A request counts as failed unless it got its complete response, with one
allowance, the race the issue names: a keep-alive connection the old worker closes while idle,
at the moment the client reuses it, fails before any byte of the response arrives; a retrying
client (as nginx, browsers and most HTTP libraries are) sends the request again on a new
connection, and so does ours, counting it as a retry, not a failure.  Clients talk to
loopback only (``host``: 127.0.0.1 or ::1).
"""

from __future__ import annotations

import contextlib
import os
import textwrap
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import h11
import trio

import process_support
from process_support import command, spawn

START_TIMEOUT = 20
RESTART_TIMEOUT = 30

APP = """
import os
import trio

VERSION = {version!r}

async def app(env):
    if env["PATH_INFO"] == "/stream":
        async def body(stream):
            for i in range(40):
                await stream.send_all(f"{{VERSION}} {{i}}\\n".encode())
                await trio.sleep(0.05)
        return 200, {{"content-type": "text/plain"}}, body
    return 200, {{"content-type": "text/plain"}}, [f"{{VERSION}} {{os.getpid()}}".encode()]
"""


def write_app(directory: Path, version: str) -> None:
    (directory / "app.py").write_text(textwrap.dedent(APP.format(version=version)))


@dataclass
class Server:
    """A running ``trio-rack serve`` (a :class:`process_support.Server`) and its bound port;
    PIDs added to ``pids`` (workers seen) are killed with it."""

    process: process_support.Server
    port: int
    pids: set[int]

    @property
    def proc(self) -> trio.Process:
        return self.process.proc

    def log(self) -> str:
        return self.process.log()

    async def wait_for_log(self, text: str, *, count: int = 1) -> None:
        await self.process.wait_for_log(text, count)


@contextlib.asynccontextmanager
async def running(directory: Path, *args: str, env: dict[str, str] | None = None) -> AsyncIterator[Server]:
    """``trio-rack serve app.py -b http://127.0.0.1:0 ARGS`` in ``directory``, until the block ends."""
    argv = command("serve", "app.py", "-b", "http://127.0.0.1:0", "--no-access-log", *args)
    scrubbed = {k: v for k, v in os.environ.items() if "proxy" not in k.lower() and k != "NOTIFY_SOCKET"}
    workers: set[int] = set()
    async with spawn(argv, cwd=directory, env={**scrubbed, **(env or {})}, kill=workers) as process:
        process.start_timeout, process.stop_timeout = START_TIMEOUT, RESTART_TIMEOUT
        line = await process.line_with("listening on ")
        yield Server(process, int(line.rsplit(":", 1)[1]), workers)


# ----------------------------------------------------------------------------- the load


class Reset(Exception):
    """The connection ended before any byte of the response: the request may be retried."""


async def read_response(stream: trio.abc.Stream, conn: h11.Connection) -> tuple[h11.Response, bytes]:
    response = None
    body = []
    got_any = False
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            try:
                data = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                data = b""
                if not got_any:
                    raise Reset from None
                raise
            if not data and not got_any:
                raise Reset
            got_any = True
            conn.receive_data(data)
        elif type(event) is h11.Response:
            response = event
        elif type(event) is h11.Data:
            body.append(bytes(event.data))
        elif type(event) is h11.EndOfMessage:
            assert response is not None
            return response, b"".join(body)
        elif type(event) is h11.ConnectionClosed:
            raise AssertionError("connection closed mid-response")


def request_bytes(conn: h11.Connection, target: str = "/", *, close: bool = False) -> bytes:
    headers = [("host", "localhost")] + ([("connection", "close")] if close else [])
    return conn.send(h11.Request(method="GET", target=target, headers=headers)) + conn.send(h11.EndOfMessage())


@dataclass
class Load:
    port: int
    host: str = "127.0.0.1"
    ok: int = 0
    failed: list[str] = field(default_factory=list)
    retried: int = 0
    bodies: list[tuple[float, bytes]] = field(default_factory=list)  # (time, body) of every success
    stop: trio.Event = field(default_factory=trio.Event)

    def record(self, body: bytes) -> None:
        self.ok += 1
        self.bodies.append((trio.current_time(), body))

    async def keepalive_client(self) -> None:
        stream: trio.abc.Stream | None = None
        conn = h11.Connection(h11.CLIENT)
        try:
            while not self.stop.is_set():
                reused = stream is not None
                if stream is None:
                    stream = await trio.open_tcp_stream(self.host, self.port)
                    conn = h11.Connection(h11.CLIENT)
                try:
                    await stream.send_all(request_bytes(conn))
                    response, body = await read_response(stream, conn)
                except (Reset, trio.BrokenResourceError) as exc:
                    await stream.aclose()
                    stream = None
                    if reused and (isinstance(exc, Reset) or conn.their_state is h11.SEND_RESPONSE):
                        self.retried += 1  # the idle keep-alive race: send it again, fresh
                        continue
                    self.failed.append(f"keep-alive: {exc!r}")
                    continue
                if response.status_code != 200:
                    self.failed.append(f"keep-alive: status {response.status_code}")
                else:
                    self.record(body)
                if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                    await stream.aclose()  # the old worker said connection: close; reconnect
                    stream = None
                else:
                    conn.start_next_cycle()
        finally:
            if stream is not None:
                await stream.aclose()

    async def new_connection_client(self) -> None:
        while not self.stop.is_set():
            try:
                stream = await trio.open_tcp_stream(self.host, self.port)
            except OSError as exc:
                self.failed.append(f"connect: {exc!r}")
                continue
            async with stream:
                conn = h11.Connection(h11.CLIENT)
                try:
                    await stream.send_all(request_bytes(conn, close=True))
                    response, body = await read_response(stream, conn)
                except (Reset, trio.BrokenResourceError) as exc:
                    self.failed.append(f"new connection: {exc!r}")
                    continue
            if response.status_code != 200:
                self.failed.append(f"new connection: status {response.status_code}")
            else:
                self.record(body)

    async def stream_client(self, started: trio.Event) -> bytes:
        """One streaming response (2 s) that spans the restart; must arrive complete."""
        async with await trio.open_tcp_stream(self.host, self.port) as stream:
            conn = h11.Connection(h11.CLIENT)
            await stream.send_all(request_bytes(conn, "/stream", close=True))
            started.set()
            try:
                response, body = await read_response(stream, conn)
            except (Reset, trio.BrokenResourceError, AssertionError) as exc:
                self.failed.append(f"stream: {exc!r}")
                return b""
        lines = body.count(b"\n")
        if response.status_code != 200 or lines != 40:
            self.failed.append(f"stream: status {response.status_code}, {lines} lines")
        else:
            self.ok += 1
        return body


def versions(bodies: list[tuple[float, bytes]], *, after: float = -1.0) -> set[str]:
    return {body.split()[0].decode() for t, body in bodies if t > after}


def pids(bodies: list[tuple[float, bytes]], *, after: float = -1.0) -> set[int]:
    return {int(body.split()[1]) for t, body in bodies if t > after}
