"""End to end behind a real nginx (Debian's ``nginx-light``) as reverse proxy, on loopback.

The test starts trio-rack in process on 127.0.0.1 with ``proxy_headers=True`` trusting
127.0.0.1 (where nginx connects from), and nginx as the test's child: ``daemon off;
master_process off;``, every path (pid, logs, temp directories) under ``tmp_path``, listening on
``[::1]`` on free ports, plain and TLS.  Clients connect to nginx over ``[::1]``, which is *not*
a trusted proxy, so the address the app sees is the client's own even when the client sends a
forged ``X-Forwarded-For``.  The config is the one ``docs/deployment.md`` recommends.

nginx is stopped by PID in a ``finally``.  No traffic leaves loopback.
"""

from __future__ import annotations

import contextlib
import functools
import json
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio

import trio_rack
from e2e_support import (
    TLSFiles,
    curl,
    free_ports,
    make_tls_files,
    read_until,
    read_until_eof,
    split_head,
)
from restart_support import RESTART_TIMEOUT, Load, pids, running, versions, write_app

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
START_TIMEOUT = 10
TEST_TIMEOUT = 20

pytestmark = pytest.mark.skipif(not Path(NGINX).exists(), reason="nginx is not installed (apt-get install nginx-light)")

NGINX_CONF = """
daemon off;
master_process off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log info;

events {{
    worker_connections 64;
}}

http {{
    access_log {dir}/access.log;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;

    # "Connection: upgrade" for upgrade requests, and none otherwise so the upstream
    # connections stay keep-alive.
    map $http_upgrade $connection_upgrade {{
        default upgrade;
        ""      "";
    }}

    upstream trio_rack {{
        server 127.0.0.1:{upstream_port};
        keepalive 8;
        keepalive_timeout 4s;  # below trio-rack's --keepalive-timeout (5 s): nginx closes first
    }}

    server {{
        listen [::1]:{http_port};
        listen [::1]:{https_port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};

        location / {{
            proxy_pass http://trio_rack;
            proxy_http_version 1.1;
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_read_timeout 30s;
        }}
    }}
}}
"""


@dataclass
class Proxied:
    http_port: int
    https_port: int
    tls: TLSFiles
    directory: Path

    @property
    def http_url(self) -> str:
        return f"http://[::1]:{self.http_port}"

    @property
    def https_url(self) -> str:
        return f"https://[::1]:{self.https_port}"

    def error_log(self) -> str:
        path = self.directory / "error.log"
        return path.read_text() if path.exists() else ""


async def _wait_until_listening(proc: trio.Process, port: int) -> bool:
    """True once nginx accepts on ``port``; False if it exited (e.g. the port got taken)."""
    with trio.fail_after(START_TIMEOUT):
        while proc.poll() is None:
            try:
                stream = await trio.open_tcp_stream("::1", port)
            except OSError:
                await trio.sleep(0.02)
                continue
            await stream.aclose()
            return True
    return False


@contextlib.asynccontextmanager
async def nginx_in_front(app: Any, tmp_path: Path) -> AsyncIterator[Proxied]:
    """trio-rack serving ``app`` (trusting 127.0.0.1) behind an nginx on [::1]."""
    async with trio.open_nursery() as nursery:
        serving = functools.partial(
            trio_rack.serve,
            app,
            bind="http://127.0.0.1:0",
            access_log=False,
            proxy_headers=True,
            forwarded_allow_ips=["127.0.0.1"],
        )
        (upstream,) = await nursery.start(serving)
        async with nginx_proxy(upstream.port, tmp_path) as proxy:
            yield proxy
        nursery.cancel_scope.cancel()


@contextlib.asynccontextmanager
async def nginx_proxy(upstream_port: int, tmp_path: Path) -> AsyncIterator[Proxied]:
    """An nginx on [::1] in front of whatever serves 127.0.0.1:``upstream_port``."""
    tls = make_tls_files(tmp_path)
    directory = tmp_path / "nginx"
    directory.mkdir()
    for _attempt in range(3):
        http_port, https_port = free_ports(2, "::1")
        conf = directory / "nginx.conf"
        conf.write_text(
            NGINX_CONF.format(
                dir=directory,
                upstream_port=upstream_port,
                http_port=http_port,
                https_port=https_port,
                cert=tls.cert_pem,
                key=tls.key_pem,
            )
        )
        argv = [NGINX, "-p", str(directory), "-c", str(conf), "-e", str(directory / "error.log")]
        quiet = subprocess.DEVNULL
        proc = await trio.lowlevel.open_process(argv, stdin=quiet, stdout=quiet, stderr=quiet)
        try:
            if await _wait_until_listening(proc, http_port):
                yield Proxied(http_port, https_port, tls, directory)
                break
            log = (directory / "error.log").read_text()
            if "Address already in use" not in log:
                raise AssertionError(f"nginx exited {proc.returncode}:\n{log}")
        finally:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with trio.move_on_after(5):
                await proc.wait()
    else:
        raise AssertionError("nginx found no free port in 3 attempts")


# ------------------------------------------------------------------------------- the tests


async def whoami(env: dict[str, Any]) -> Any:
    body = {
        "remote": env["REMOTE_ADDR"],
        "scheme": env["rack.url_scheme"],
        "host": env.get("HTTP_HOST"),
        "server_port": env["SERVER_PORT"],
        "x_forwarded_for": env.get("HTTP_X_FORWARDED_FOR"),
    }
    return 200, {"content-type": "application/json"}, [json.dumps(body).encode()]


async def test_client_address_and_scheme_through_nginx(tmp_path: Path) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with nginx_in_front(whoami, tmp_path) as proxy:
            # the client forges X-Forwarded-For; nginx appends the real address, ::1
            plain = await curl("-g", "-H", "X-Forwarded-For: 203.0.113.66", proxy.http_url + "/")
            body = json.loads(plain.stdout)
            assert body == {
                "remote": "::1",
                "scheme": "http",
                "host": f"[::1]:{proxy.http_port}",
                "server_port": str(proxy.http_port),
                "x_forwarded_for": "203.0.113.66, ::1",
            }
            secure = await curl("-g", "--cacert", str(proxy.tls.ca_pem), proxy.https_url + "/")
            body = json.loads(secure.stdout)
            assert (body["remote"], body["scheme"]) == ("::1", "https")  # TLS ends at nginx


FILLER = 64 * 1024 * 1024  # more than loopback socket buffers hold, far less than nginx would spool


async def test_streaming_response_is_not_buffered(tmp_path: Path) -> None:
    """The first chunk arrives while the app is still producing, and the client's pace holds the
    app back: with ``x-accel-buffering: no`` nginx does not read ahead into temp files (with
    buffering on, the same app writes all 64 MiB while the client reads nothing)."""
    release = trio.Event()
    written = 0

    async def app(env: dict[str, Any]) -> Any:
        async def body(stream: trio.abc.Stream) -> None:
            nonlocal written
            await stream.send_all(b"first\n")
            with trio.fail_after(TEST_TIMEOUT):
                await release.wait()  # the rest only once the client has the first chunk
            chunk = b"x" * 65536
            for _ in range(FILLER // len(chunk)):
                await stream.send_all(chunk)
                written += len(chunk)
            await stream.send_all(b"last\n")

        return 200, {"content-type": "text/plain", "x-accel-buffering": "no"}, body

    with trio.fail_after(TEST_TIMEOUT):
        async with nginx_in_front(app, tmp_path) as proxy:
            client = await trio.open_tcp_stream("::1", proxy.http_port)
            async with client:
                await client.send_all(b"GET /stream HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
                early = await read_until(client, b"first\n")
                assert b"last" not in early
                release.set()
                # read nothing until the app stalls: blocked by back-pressure, not finished
                seen = -1
                while written != seen:
                    seen = written
                    await trio.sleep(0.25)
                assert written < FILLER
                rest, how = await read_until_eof(client)
    status, headers, body = split_head(early + rest)
    assert status == 200
    assert headers["transfer-encoding"] == ["chunked"]
    assert "x-accel-buffering" not in headers  # nginx consumes it
    assert body.startswith(b"6\r\nfirst\n\r\n")
    assert body.endswith(b"last\n\r\n0\r\n\r\n")
    assert len(body) > FILLER
    assert how == "eof"


async def test_upgrade_and_partial_hijack_through_nginx(tmp_path: Path) -> None:
    hijack_ended = trio.Event()

    async def app(env: dict[str, Any]) -> Any:
        if env.get("HTTP_UPGRADE", "").lower() != "echo":
            return 426, {"upgrade": "echo", "content-type": "text/plain"}, [b"upgrade to echo\n"]

        async def hijack(stream: trio.abc.Stream) -> None:
            try:
                await stream.send_all(f"hello {env['REMOTE_ADDR']}\n".encode())
                while data := await stream.receive_some(65536):
                    await stream.send_all(data)
            finally:
                hijack_ended.set()

        return 101, {"connection": "upgrade", "upgrade": "echo", "rack.hijack": hijack}, []

    with trio.fail_after(TEST_TIMEOUT):
        async with nginx_in_front(app, tmp_path) as proxy:
            refused = await curl("-g", "-i", proxy.http_url + "/echo")
            assert refused.response()[0] == 426
            client = await trio.open_tcp_stream("::1", proxy.http_port)
            async with client:
                await client.send_all(
                    b"GET /echo HTTP/1.1\r\nhost: localhost\r\nupgrade: echo\r\nconnection: upgrade\r\n\r\n"
                )
                data = await read_until(client, b"\r\n\r\n")
                status, headers, rest = split_head(data)
                assert status == 101
                assert headers["upgrade"] == ["echo"]
                assert headers["connection"] == ["upgrade"]
                assert await read_until(client, b"\n", buffer=rest) == b"hello ::1\n"
                blob = bytes(range(256)) * 1024  # 256 KiB both ways, through the tunnel
                for message in (b"ping\n", blob):
                    await client.send_all(message)
                    echoed = b""
                    while len(echoed) < len(message):
                        echoed += await client.receive_some(65536)
                    assert echoed == message
            await hijack_ended.wait()  # nginx passed the close on; the server closed the stream


async def test_rolling_restart_behind_nginx_shows_no_5xx(tmp_path: Path) -> None:
    """``trio-rack serve -n 2`` behind nginx, under load through nginx (keep-alive and new client
    connections; nginx keeps its own keep-alive connections upstream), restarted with SIGHUP:
    every response the clients see is a 200, and the changed app is served afterwards."""
    project = tmp_path / "project"
    project.mkdir()
    write_app(project, "v1")
    async with running(project, "-n", "2", "--proxy-headers") as server:
        async with nginx_proxy(server.port, tmp_path) as proxy:
            load = Load(proxy.http_port, host="::1")
            with trio.fail_after(RESTART_TIMEOUT):
                async with trio.open_nursery() as nursery:
                    for _ in range(2):
                        nursery.start_soon(load.keepalive_client)
                        nursery.start_soon(load.new_connection_client)
                    await trio.sleep(0.5)
                    before = pids(load.bodies)
                    server.pids |= before
                    write_app(project, "v2-behind-nginx")
                    server.proc.send_signal(signal.SIGHUP)
                    await server.wait_for_log("rolling restart done")
                    done_at = trio.current_time()
                    await trio.sleep(1.0)
                    load.stop.set()
            server.pids |= pids(load.bodies)
            errors = proxy.error_log()
    assert load.failed == [], f"{load.failed[:5]}\n{server.log()}\n{errors}"
    assert load.retried == 0  # nginx never closes the clients' keep-alive connections
    assert load.ok > 50
    assert versions(load.bodies, after=done_at + 0.5) == {"v2-behind-nginx"}
    assert not pids(load.bodies, after=done_at + 0.5) & before
