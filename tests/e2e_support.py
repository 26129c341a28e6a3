"""Shared helpers for the end-to-end tests: real sockets, real clients, examples/ apps.

Not a test module (no ``test_`` prefix); the e2e test files import it by name, which works
because pytest puts ``tests/`` on ``sys.path`` for rootdir-less test directories.

Everything here talks to 127.0.0.1 only: servers bind ``127.0.0.1:0`` and curl is run with
proxies disabled (``--noproxy '*'`` and a scrubbed environment) and ``-q`` (no ~/.curlrc).
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import socket
import ssl
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import h11
import trio
import trustme
from wsproto.frame_protocol import Frame, FrameProtocol

import trio_rack
from trio_rack import Bind, Limits

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
CURL = "/usr/bin/curl"

__all__ = [
    "CURL",
    "EXAMPLES",
    "Curl",
    "RawResponse",
    "Response",
    "ResponseReader",
    "TLSFiles",
    "client_ssl_context",
    "curl",
    "fd_count",
    "fds_settle_at",
    "free_port",
    "free_ports",
    "load_example",
    "make_tls_files",
    "next_frame",
    "open_client",
    "parse_responses",
    "read_until",
    "read_until_eof",
    "split_head",
    "start_server",
    "tcp_pair",
    "ticks_of_another_task_during",
    "wait_until",
]


def load_example(name: str) -> ModuleType:
    """Import ``examples/<name>.py``, or ``examples/<name>/app.py`` for an example that is a
    folder (chat, site), as a module of its own, once (examples/ is not a package)."""
    path = EXAMPLES / name / "app.py" if (EXAMPLES / name).is_dir() else EXAMPLES / f"{name}.py"
    module_name = f"_trio_rack_example_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def fd_count() -> int:
    """Open file descriptors of this process."""
    return len(os.listdir("/proc/self/fd"))


async def wait_until(predicate: Callable[[], bool], *, poll: float = 0.02) -> None:
    """Poll ``predicate`` until it is true: for state that has no event to wait on (another
    process's file or PID, the fd table, a library's internals).  The caller bounds it with
    ``trio.fail_after`` / ``move_on_after``; never a stand-in for an event we own."""
    while not predicate():  # noqa: ASYNC110 (nothing to await: the state is not ours to signal)
        await trio.sleep(poll)


async def tcp_pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    """A real loopback TCP connection, (client, server): for the transport's quick paths, which
    are system calls on a socket."""
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    async with listener:
        port = listener.socket.getsockname()[1]
        client = await trio.open_tcp_stream("127.0.0.1", port)
        server = await listener.accept()
    return client, server  # type: ignore[return-value]


async def ticks_of_another_task_during(work: Callable[[], Any]) -> int:
    """How many times another task got to run while ``await work()`` ran: the evidence that a
    run of calls that skip the scheduler still lets the other connections in."""
    ticks = 0

    async def other_connection() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(other_connection)
        await trio.lowlevel.checkpoint()  # it has started
        start = ticks
        await work()
        ran = ticks - start
        nursery.cancel_scope.cancel()
    return ran


async def fds_settle_at(expected: int, *, within: float = 2) -> None:
    """Wait until this process's fd count is ``expected``.  A close has no event to wait on, so
    this polls; it is bounded, and only used where the server legitimately closes a moment later
    (after its half-close drain), never as a stand-in for an event."""
    with trio.move_on_after(within):
        await wait_until(lambda: fd_count() == expected, poll=0.01)
    assert fd_count() == expected


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` different ports free on ``host`` (127.0.0.1 or ::1) right now, for a server
    started outside this process (redis-server, nginx) that cannot report a port-0 bind back.
    All are bound at once, so they differ; the child binds them a moment later, so a clash with
    another process is possible (and is the caller's to retry)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket(family)
            sock.bind((host, 0))
            socks.append(sock)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for sock in socks:
            sock.close()


def free_port(host: str = "127.0.0.1") -> int:
    """One port free on ``host`` right now (see :func:`free_ports`)."""
    return free_ports(1, host)[0]


# ------------------------------------------------------------------------------- TLS


@dataclass(frozen=True)
class TLSFiles:
    ca: trustme.CA
    ca_pem: Path
    cert_pem: Path
    key_pem: Path


def make_tls_files(directory: Path) -> TLSFiles:
    """A throwaway CA and a localhost/127.0.0.1/::1 certificate, written as PEM files."""
    ca = trustme.CA()
    leaf = ca.issue_cert("localhost", "127.0.0.1", "::1")
    ca_pem = directory / "ca.pem"
    cert_pem = directory / "cert.pem"
    key_pem = directory / "key.pem"
    ca.cert_pem.write_to_path(str(ca_pem))
    cert_pem.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(key_pem))
    return TLSFiles(ca, ca_pem, cert_pem, key_pem)


def client_ssl_context(tls: TLSFiles) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    tls.ca.configure_trust(ctx)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


# ---------------------------------------------------------------------------- servers


async def start_server(
    nursery: trio.Nursery,
    app: Any,
    *,
    tls: TLSFiles | None = None,
    limits: Limits | None = None,
    host: str = "127.0.0.1",
    shutdown_trigger: trio.Event | None = None,
) -> Bind:
    """Start ``trio_rack.serve`` for ``app`` on ``host`` (127.0.0.1 or [::1]), a free port;
    return its Bind."""
    scheme = "http" if tls is None else "https"
    kwargs: dict[str, Any] = {
        "bind": f"{scheme}://{host}:0",
        "access_log": False,
        "limits": limits,
        "shutdown_trigger": shutdown_trigger,
    }
    if tls is not None:
        kwargs.update(cert=tls.cert_pem, key=tls.key_pem)
    binds: list[Bind] = await nursery.start(functools.partial(trio_rack.serve, app, **kwargs))
    return binds[0]


async def open_client(bind: Bind, tls: TLSFiles | None = None) -> trio.abc.Stream:
    """A raw client connection to ``bind`` (TLS if ``tls`` is given)."""
    if tls is None:
        return await trio.open_tcp_stream(bind.host, bind.port)
    return await trio.open_ssl_over_tcp_stream(
        bind.host, bind.port, ssl_context=client_ssl_context(tls), https_compatible=True
    )


async def read_until(stream: trio.abc.ReceiveStream, marker: bytes, *, buffer: bytes = b"") -> bytes:
    """Read until ``marker`` has arrived; return everything read.  EOF first is an error."""
    data = buffer
    while marker not in data:
        chunk = await stream.receive_some(65536)
        if not chunk:
            raise AssertionError(f"EOF before {marker!r}; got {data!r:.300}")
        data += chunk
    return data


async def read_until_eof(stream: trio.abc.ReceiveStream) -> tuple[bytes, str]:
    """Everything until the peer closes; also how it closed: "eof" or "reset"."""
    parts = []
    try:
        while chunk := await stream.receive_some(65536):
            parts.append(chunk)
    except trio.BrokenResourceError:
        return b"".join(parts), "reset"
    return b"".join(parts), "eof"


async def next_frame(stream: trio.abc.ReceiveStream, codec: FrameProtocol) -> Frame | None:
    """The next websocket frame ``codec`` (wsproto's frame codec, driven by hand) parses off
    ``stream``, or None at EOF (the peer closed, half-closed or reset its side)."""
    while True:
        for frame in codec.received_frames():
            return frame
        try:
            data = await stream.receive_some(65536)
        except trio.BrokenResourceError:
            data = b""
        if not data:
            return None
        codec.receive_bytes(data)


def split_head(data: bytes) -> tuple[int, dict[str, list[str]], bytes]:
    """Split raw response bytes into (status, headers, rest); names lower-cased."""
    head, sep, rest = data.partition(b"\r\n\r\n")
    assert sep, f"no end of head in {data!r:.300}"
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers: dict[str, list[str]] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    return status, headers, rest


_STATUS_LINE = re.compile(rb"HTTP/1\.1 ([0-9]{3}) [^\r\n]*")
_HEADER_NAME = re.compile(rb"[A-Za-z0-9-]+")


@dataclass
class RawResponse:
    status: int
    head: bytes  # the status line and the header lines as sent, without the blank line
    headers: dict[bytes, list[bytes]]  # names and values lower-cased, for comparisons
    body: bytes  # de-chunked
    aborted: bool = False  # a chunked body cut off by the close (it is then the last response)


def parse_responses(data: bytes, methods: Sequence[str] = ()) -> list[RawResponse]:
    """Split a server's raw output into its responses; AssertionError on anything malformed,
    truncated or left over.

    Strict on purpose (it checks our own server): a status line ``HTTP/1.1 NNN reason``, header
    lines ``Name: value``.  A body is framed by chunking, by ``content-length``, or (HTTP/1.0
    streaming) by the close, which needs ``connection: close`` and makes it the last response;
    1xx, 204 and 304 responses have none.  The n-th final response answers the n-th request the
    app saw (``methods``): a response to HEAD has no body whatever its ``content-length`` says.
    A chunked body that stops short exactly at the close is ``aborted``, visible to the client
    as an error as the README promises, and must be the last.
    """
    responses = []
    finals = 0
    pos = 0
    while pos < len(data):
        end = data.find(b"\r\n\r\n", pos)
        assert end >= 0, f"truncated head at {pos}: {data[pos:pos + 200]!r}"
        head = data[pos:end]
        lines = head.split(b"\r\n")
        match = _STATUS_LINE.fullmatch(lines[0])
        assert match, f"bad status line {lines[0]!r}"
        headers: dict[bytes, list[bytes]] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(b": ")
            assert sep and _HEADER_NAME.fullmatch(name), f"bad header line {line!r}"
            headers.setdefault(name.lower(), []).append(value.lower())
        pos = end + 4
        status = int(match.group(1))
        head_only = status >= 200 and finals < len(methods) and methods[finals] == "HEAD"
        finals += status >= 200
        body = b""
        if head_only or status < 200 or status in (204, 304):
            pass
        elif b"transfer-encoding" in headers:
            assert headers[b"transfer-encoding"] == [b"chunked"]
            chunks = []
            while True:
                line_end = data.find(b"\r\n", pos)
                if line_end < 0 and pos == len(data):
                    responses.append(RawResponse(status, head, headers, b"".join(chunks), aborted=True))
                    return responses
                assert line_end >= 0, "truncated chunk header"
                size = int(data[pos:line_end], 16)
                chunks.append(data[line_end + 2 : line_end + 2 + size])
                pos = line_end + 2 + size
                assert data[pos : pos + 2] == b"\r\n", "bad chunk end"
                pos += 2
                if size == 0:
                    break
            body = b"".join(chunks)
        elif b"content-length" in headers:
            (length,) = headers[b"content-length"]
            body = data[pos : pos + int(length)]
            pos += int(length)
            assert pos <= len(data), "truncated body"
        else:
            assert headers.get(b"connection") == [b"close"], "close-delimited body without connection: close"
            body = data[pos:]
            pos = len(data)
        responses.append(RawResponse(status, head, headers, body))
    return responses


@dataclass
class Response:
    status: int
    headers: dict[str, list[str]]
    body: bytes
    informational: list[int]

    def header(self, name: str) -> str | None:
        values = self.headers.get(name)
        return ", ".join(values) if values else None


class ResponseReader:
    """Parse responses off a raw stream with an h11 client, one per request sent.

    The requests themselves are written by hand (so they can be pipelined); ``next()`` only
    tells h11 which request a response answers (HEAD matters for framing) and reads it.
    """

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.CLIENT)

    async def next(self, method: str = "GET", target: str = "/", http_version: str = "1.1") -> Response:
        c = self.conn
        if c.our_state is h11.DONE and c.their_state is h11.DONE:
            c.start_next_cycle()
        c.send(h11.Request(method=method, target=target, headers=[("host", "x")], http_version=http_version))
        c.send(h11.EndOfMessage())
        informational: list[int] = []
        response: h11.Response | None = None
        body = []
        while True:
            event = c.next_event()
            if event is h11.NEED_DATA:
                c.receive_data(bytes(await self.stream.receive_some(65536)))
            elif type(event) is h11.InformationalResponse:
                informational.append(event.status_code)
            elif type(event) is h11.Response:
                response = event
            elif type(event) is h11.Data:
                body.append(bytes(event.data))
            elif type(event) is h11.EndOfMessage:
                break
            else:
                raise AssertionError(f"unexpected {event!r}")
        assert response is not None
        headers: dict[str, list[str]] = {}
        for name, value in response.headers:
            headers.setdefault(name.decode(), []).append(value.decode("latin-1"))
        return Response(response.status_code, headers, b"".join(body), informational)


# ------------------------------------------------------------------------------- curl


@dataclass
class Curl:
    returncode: int
    stdout: bytes
    stderr: str

    def response(self) -> tuple[int, dict[str, list[str]], bytes]:
        """For ``-i`` output: the last final response's (status, headers, body)."""
        data = self.stdout
        while True:
            status, headers, rest = split_head(data)
            if status >= 200 or not rest.startswith(b"HTTP/"):
                return status, headers, rest
            data = rest  # skip a 1xx head that -i printed


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env["NO_PROXY"] = "*"
    return env


#: A backstop only: callers bound each test with their own ``trio.fail_after``.
CURL_TIMEOUT = 30


async def curl(*args: str | os.PathLike[str], check: bool = True) -> Curl:
    """Run ``curl -q -sS --noproxy '*' ARGS`` and capture its output (``-q``: no ~/.curlrc)."""
    argv = [CURL, "-q", "-sS", "--noproxy", "*", *map(str, args)]
    with trio.fail_after(CURL_TIMEOUT):
        proc = await trio.run_process(
            argv,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=_clean_env(),
            stdin=subprocess.DEVNULL,
        )
    result = Curl(proc.returncode, proc.stdout, proc.stderr.decode("utf-8", "replace"))
    if check and proc.returncode != 0:
        raise AssertionError(f"curl {args} exited {proc.returncode}: {result.stderr[-2000:]}")
    return result
