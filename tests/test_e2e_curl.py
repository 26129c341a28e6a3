"""End to end with curl: a real client over real sockets, plain HTTP and TLS with ``--cacert``.

One server pair per test (an http and an https listener for the same app) on 127.0.0.1 port 0.
The app routes to the examples in ``examples/`` (clocks sped up to 3 ticks 50 ms apart), so
these tests are also the examples' tests.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio

from e2e_support import Curl, TLSFiles, curl, load_example, start_server

TICKS = 3
FAST = {"ticks": TICKS, "interval": 0.05}
TICK_RE = re.compile(rb"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d{4}\n\n")


@dataclass
class Router:
    """Routes by path to the example apps; remembers who asked what."""

    seen: list[tuple[str, str, str]] = field(default_factory=list)  # (method, path, remote port)

    def __post_init__(self) -> None:
        self.routes: dict[str, Any] = {
            "/": load_example("hello").app,
            "/echo": load_example("echo").app,
            "/clock": load_example("clock").make_app(**FAST),
            "/partial": load_example("partial_hijack").make_app(**FAST),
            "/full": load_example("full_hijack").make_app(**FAST),
            "/threads": load_example("no_threads_needed").make_app(**FAST, rounds=1000),
            "/tls_demo": load_example("tls_demo").app,
            "/hints": self.hints,
        }

    async def __call__(self, env: dict[str, Any]) -> Any:
        self.seen.append((env["REQUEST_METHOD"], env["PATH_INFO"], env["REMOTE_PORT"]))
        return await self.routes[env["PATH_INFO"]](env)

    @staticmethod
    async def hints(env: dict[str, Any]) -> Any:
        await env["rack.early_hints"]({"link": "</style.css>; rel=preload; as=style"})
        return 200, {"content-type": "text/plain"}, [b"hinted\n"]


@dataclass
class Servers:
    router: Router
    tls: TLSFiles
    http: str
    https: str

    def url(self, scheme: str, path: str = "/") -> str:
        return (self.http if scheme == "http" else self.https) + path

    def curl(self, scheme: str, *args: str | Path, **kwargs: Any) -> Any:
        if scheme == "https":
            args = ("--cacert", self.tls.ca_pem, *args)
        return curl(*args, **kwargs)


@pytest.fixture
async def servers(nursery: trio.Nursery, tls_files: TLSFiles) -> Servers:
    router = Router()
    http = await start_server(nursery, router)
    https = await start_server(nursery, router, tls=tls_files)
    return Servers(router, tls_files, str(http), str(https))


@pytest.fixture(params=["http", "https"])
def scheme(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def upload(tmp_path: Path) -> Path:
    """300 kB of bytes that survive no accidental text processing."""
    path = tmp_path / "upload.bin"
    path.write_bytes(bytes(range(256)) * 1200)
    return path


async def test_hello(servers: Servers, scheme: str) -> None:
    with trio.fail_after(10):
        r = await servers.curl(scheme, "-i", servers.url(scheme))
    status, headers, body = r.response()
    assert status == 200
    assert body == b"Hello, world!\n"
    assert headers["content-length"] == ["14"]
    assert headers["server"] == ["trio-rack"]
    assert headers["date"]
    assert "transfer-encoding" not in headers


@pytest.mark.parametrize("path", ["/", "/clock"])
async def test_head_sends_the_head_only_and_the_connection_stays_usable(
    servers: Servers, scheme: str, path: str
) -> None:
    # HEAD, then GET on the same connection: any body bytes after the HEAD response would
    # corrupt the second response.
    with trio.fail_after(10):
        trust = ["--cacert", str(servers.tls.ca_pem)] if scheme == "https" else []  # --next resets options
        r = await servers.curl(
            scheme, "-v", "-I", servers.url(scheme, path), "--next", *trust, "-v", "-i", servers.url(scheme, "/")
        )
    assert r.stdout.count(b"HTTP/1.1 200 OK") == 2
    head, _, second = r.stdout.partition(b"\r\n\r\n")
    assert second.startswith(b"HTTP/1.1 200 OK")
    status, headers, body = Curl(0, second, "").response()
    assert body == b"Hello, world!\n"
    if path == "/":
        assert b"content-length: 14" in head
    assert "Re-using existing connection" in r.stderr
    assert [m for m, *_ in servers.router.seen] == ["HEAD", "GET"]


async def test_chunked_upload_is_echoed(servers: Servers, scheme: str, upload: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.bin"
    with trio.fail_after(10):
        r = await servers.curl(
            scheme,
            "-v",
            "-H",
            "Transfer-Encoding: chunked",
            "--data-binary",
            f"@{upload}",
            "-o",
            out,
            servers.url(scheme, "/echo"),
        )
    assert "> Transfer-Encoding: chunked" in r.stderr
    assert re.search(r"< transfer-encoding: chunked", r.stderr, re.I)
    assert await trio.Path(out).read_bytes() == await trio.Path(upload).read_bytes()


async def test_content_length_upload_is_echoed(servers: Servers, scheme: str, upload: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.bin"
    with trio.fail_after(10):
        await servers.curl(scheme, "--data-binary", f"@{upload}", "-o", out, servers.url(scheme, "/echo"))
    assert await trio.Path(out).read_bytes() == await trio.Path(upload).read_bytes()


async def test_expect_100_continue_gets_100_then_the_body_is_echoed(
    servers: Servers, scheme: str, upload: Path, tmp_path: Path
) -> None:
    # --expect100-timeout 30: if the server never sent 100, curl would wait 30 s and fail_after
    # would fire; curl going ahead after its default 1 s would hide the bug.
    out = tmp_path / "out.bin"
    with trio.fail_after(10):
        r = await servers.curl(
            scheme,
            "-v",
            "-H",
            "Expect: 100-continue",
            "--expect100-timeout",
            "30",
            "--data-binary",
            f"@{upload}",
            "-o",
            out,
            servers.url(scheme, "/echo"),
        )
    assert "> Expect: 100-continue" in r.stderr
    assert re.search(r"< HTTP/1.1 100\b", r.stderr)
    assert await trio.Path(out).read_bytes() == await trio.Path(upload).read_bytes()


async def test_expect_100_continue_to_an_app_that_does_not_read_gets_the_answer_and_close(
    servers: Servers, scheme: str, upload: Path
) -> None:
    with trio.fail_after(10):
        r = await servers.curl(
            scheme,
            "-v",
            "-i",
            "-H",
            "Expect: 100-continue",
            "--expect100-timeout",
            "30",
            "--data-binary",
            f"@{upload}",
            servers.url(scheme, "/"),
        )
    status, headers, body = r.response()
    assert status == 200 and body == b"Hello, world!\n"
    assert not re.search(r"< HTTP/1.1 100\b", r.stderr)
    assert headers["connection"] == ["close"]


async def test_streaming_body_clock_is_chunked(servers: Servers, scheme: str) -> None:
    with trio.fail_after(10):
        r = await servers.curl(scheme, "-i", servers.url(scheme, "/clock"))
    status, headers, body = r.response()
    assert status == 200
    assert headers["transfer-encoding"] == ["chunked"]
    assert "content-length" not in headers
    assert len(TICK_RE.findall(body)) == TICKS and TICK_RE.sub(b"", body) == b""


async def test_no_threads_needed_example_interleaves_clock_and_worker_thread(servers: Servers, scheme: str) -> None:
    with trio.fail_after(10):
        r = await servers.curl(scheme, servers.url(scheme, "/threads"))
    assert len(TICK_RE.findall(r.stdout)) == TICKS
    assert re.search(rb"digest computed in a worker thread: [0-9a-f]{16}\n\n", r.stdout)


async def test_partial_hijack_example(servers: Servers, scheme: str) -> None:
    with trio.fail_after(10):
        r = await servers.curl(scheme, "-v", "-i", servers.url(scheme, "/partial"))
    status, headers, body = r.response()
    assert status == 200
    assert headers["content-type"] == ["text/plain"]
    assert headers["server"] == ["trio-rack"]  # the server wrote this head
    assert "transfer-encoding" not in headers and "content-length" not in headers
    assert len(TICK_RE.findall(body)) == TICKS and TICK_RE.sub(b"", body) == b""
    assert "Re-using" not in r.stderr


async def test_full_hijack_example(servers: Servers, scheme: str) -> None:
    with trio.fail_after(10):
        r = await servers.curl(scheme, "-i", servers.url(scheme, "/full"))
    status, headers, body = r.response()
    assert status == 200
    assert headers == {"content-type": ["text/plain"], "connection": ["close"]}  # the app's head only
    assert len(TICK_RE.findall(body)) == TICKS and TICK_RE.sub(b"", body) == b""


async def test_http_1_0_streaming_body_is_close_delimited(servers: Servers, scheme: str) -> None:
    with trio.fail_after(10):
        r = await servers.curl(scheme, "-v", "-i", "--http1.0", servers.url(scheme, "/clock"))
    assert "> GET /clock HTTP/1.0" in r.stderr
    status, headers, body = r.response()
    assert status == 200
    assert "transfer-encoding" not in headers and "content-length" not in headers
    assert len(TICK_RE.findall(body)) == TICKS and TICK_RE.sub(b"", body) == b""


async def test_keep_alive_reuses_one_connection_for_two_urls(servers: Servers, scheme: str) -> None:
    with trio.fail_after(10):
        r = await servers.curl(scheme, "-v", servers.url(scheme, "/"), servers.url(scheme, "/clock"))
    assert "Re-using existing connection" in r.stderr
    assert r.stdout.startswith(b"Hello, world!\n")
    assert len(TICK_RE.findall(r.stdout)) == TICKS
    (m1, p1, port1), (m2, p2, port2) = servers.router.seen
    assert (p1, p2) == ("/", "/clock")
    assert port1 == port2  # counted server-side: one connection


async def test_early_hints_arrive_before_the_response(servers: Servers, scheme: str) -> None:
    with trio.fail_after(10):
        r = await servers.curl(scheme, "-v", servers.url(scheme, "/hints"))
    hint = re.search(r"< HTTP/1.1 103\b", r.stderr)
    assert hint, r.stderr
    assert "< link: </style.css>; rel=preload; as=style" in r.stderr
    assert hint.start() < r.stderr.index("< HTTP/1.1 200 OK")
    assert r.stdout == b"hinted\n"


@pytest.mark.parametrize("version", [[], ["--http1.1"]], ids=["default", "http1.1"])
async def test_tls_alpn_negotiates_http_1_1(servers: Servers, version: list[str]) -> None:
    # By default curl offers h2 and http/1.1 (when built with nghttp2); the server picks http/1.1.
    with trio.fail_after(10):
        r = await servers.curl("https", "-v", *version, servers.url("https", "/tls_demo"))
    assert re.search(r"ALPN.*server accepted.*http/1\.1", r.stderr), r.stderr
    assert r.stdout.startswith(b"Hello over https!\n")
    assert "SSL certificate verify ok" in r.stderr


async def test_tls_with_an_untrusted_ca_fails_and_the_server_keeps_serving(servers: Servers) -> None:
    with trio.fail_after(10):
        bad = await curl(servers.url("https"), check=False)  # no --cacert: not trusted
        assert bad.returncode == 60  # CURLE_PEER_FAILED_VERIFICATION
        good = await servers.curl("https", servers.url("https"))
    assert good.stdout == b"Hello, world!\n"


async def test_plain_http_to_the_tls_port_gets_400_naming_the_https_url(servers: Servers) -> None:
    plain_url = servers.https.replace("https://", "http://") + "/some/path?q=1"
    with trio.fail_after(10):
        r = await curl("-i", plain_url)
    status, headers, body = r.response()
    assert status == 400
    assert headers["connection"] == ["close"]
    assert (servers.https + "/some/path?q=1").encode() in body
    assert servers.router.seen == []  # the app never saw it


async def test_ipv6_literal_bind(nursery: trio.Nursery, tls_files: TLSFiles, scheme: str) -> None:
    tls = tls_files if scheme == "https" else None
    bind = await start_server(nursery, Router(), tls=tls, host="[::1]")
    assert bind.host == "::1"
    url = f"{scheme}://[::1]:{bind.port}/"
    assert str(bind) + "/" == url
    trust = ["--cacert", str(tls_files.ca_pem)] if tls else []
    with trio.fail_after(10):
        r = await curl(*trust, url)
    assert r.stdout == b"Hello, world!\n"
