"""HTTP/2 end to end: real sockets, real TLS, real clients (curl, httpx, nghttp, Chromium).

Every server binds 127.0.0.1 on a free port; every client talks only to it.
"""

from __future__ import annotations

import functools
import gc
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import trio

import trio_rack
from cdp import chromium_available, launch_chromium
from e2e_support import EXAMPLES, TLSFiles, curl, fd_count, load_example, make_tls_files, read_until_eof
from trio_rack import Bind, Limits
from trio_rack.testing.h2 import H2MemoryClient

NGHTTP = shutil.which("nghttp")
needs_nghttp = pytest.mark.skipif(NGHTTP is None, reason="nghttp is not installed (apt-get install nghttp2-client)")


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


async def proto_app(env: dict[str, Any]) -> Any:
    if env["PATH_INFO"] == "/upload":
        size = 0
        while chunk := await env["rack.input"].receive_some():
            size += len(chunk)
        return 200, {"content-type": "text/plain"}, [b"%d\n" % size]
    if env["PATH_INFO"] == "/big":
        return 200, {"content-type": "application/octet-stream"}, [b"b" * (1024 * 1024)]
    return 200, {"content-type": "text/plain"}, [env["SERVER_PROTOCOL"].encode() + b"\n"]


async def start(
    nursery: trio.Nursery, app: Any, *, tls: TLSFiles | None = None, http2: bool = True, limits: Limits | None = None
) -> Bind:
    scheme = "https" if tls else "http"
    kwargs: dict[str, Any] = {"bind": f"{scheme}://127.0.0.1:0", "access_log": False, "http2": http2, "limits": limits}
    if tls is not None:
        kwargs.update(cert=tls.cert_pem, key=tls.key_pem)
    binds: list[Bind] = await nursery.start(functools.partial(trio_rack.serve, app, **kwargs))
    return binds[0]


# --------------------------------------------------------------------------------- curl


async def test_curl_http2_over_tls_with_alpn(tls_files: TLSFiles) -> None:
    async with trio.open_nursery() as nursery:
        bind = await start(nursery, proto_app, tls=tls_files)
        url = f"https://localhost:{bind.port}/"
        result = await curl("--http2", "--cacert", tls_files.ca_pem, "--resolve", f"localhost:{bind.port}:127.0.0.1",
                            "-w", "\n%{http_version}", url)
        nursery.cancel_scope.cancel()
    body, version = result.stdout.rsplit(b"\n", 1)
    assert version == b"2"
    assert body == b"HTTP/2\n"


async def test_curl_prior_knowledge_and_http1_share_the_plain_port() -> None:
    async with trio.open_nursery() as nursery:
        bind = await start(nursery, proto_app)
        url = f"http://127.0.0.1:{bind.port}/"
        h2 = await curl("--http2-prior-knowledge", "-w", "%{http_version}", url)
        h1 = await curl("-w", "%{http_version}", url)
        # curl --http2 on http:// sends Upgrade: h2c, which is ignored: served as HTTP/1.1
        upgrade = await curl("--http2", "-v", "-w", "%{http_version}", url)
        nursery.cancel_scope.cancel()
    assert h2.stdout == b"HTTP/2\n2"
    assert h1.stdout == b"HTTP/1.1\n1.1"
    assert "Upgrade: h2c" in upgrade.stderr
    assert upgrade.stdout == b"HTTP/1.1\n1.1"


async def test_no_http2_turns_it_off_everywhere(tls_files: TLSFiles) -> None:
    async with trio.open_nursery() as nursery:
        plain = await start(nursery, proto_app, http2=False)
        secure = await start(nursery, proto_app, tls=tls_files, http2=False)
        tls_result = await curl("--http2", "--cacert", tls_files.ca_pem, "--resolve",
                                f"localhost:{secure.port}:127.0.0.1", "-w", "%{http_version}",
                                f"https://localhost:{secure.port}/")
        with trio.fail_after(10):
            stream = await trio.open_tcp_stream("127.0.0.1", plain.port)
            async with stream:
                await stream.send_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
                data, _ = await read_until_eof(stream)
        nursery.cancel_scope.cancel()
    assert tls_result.stdout == b"HTTP/1.1\n1.1"
    assert data.startswith(b"HTTP/1.1 505 ")


# -------------------------------------------------------------------------------- httpx


async def test_httpx_http2(tls_files: TLSFiles) -> None:
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("h2")
    import ssl

    context = ssl.create_default_context(cafile=str(tls_files.ca_pem))
    async with trio.open_nursery() as nursery:
        bind = await start(nursery, proto_app, tls=tls_files)
        base = f"https://127.0.0.1:{bind.port}"
        with trio.fail_after(20):
            async with httpx.AsyncClient(http2=True, verify=context) as client:
                response = await client.get(base + "/")
                upload = await client.post(base + "/upload", content=b"u" * 300_000)
        nursery.cancel_scope.cancel()
    assert response.http_version == "HTTP/2"
    assert response.text == "HTTP/2\n"
    assert upload.http_version == "HTTP/2" and upload.text == "300000\n"


# -------------------------------------------------------------------------------- nghttp


async def _nghttp(*args: str) -> tuple[int, str, str]:
    assert NGHTTP is not None
    with trio.fail_after(30):
        proc = await trio.run_process([NGHTTP, *args], capture_stdout=True, capture_stderr=True, check=False,
                                      stdin=subprocess.DEVNULL)
    return proc.returncode, proc.stdout.decode("latin-1"), proc.stderr.decode("latin-1")


@needs_nghttp
async def test_nghttp_multiplexes_many_streams_and_respects_small_windows(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        bind = await start(nursery, proto_app, limits=Limits(stream_window_size=16 * 1024))
        base = f"http://127.0.0.1:{bind.port}"
        # 20 streams on one connection, with a 2**10-byte client window for each and the connection
        code, out, err = await _nghttp("-n", "-v", "-w", "10", "-W", "12", *[f"{base}/big?{i}" for i in range(20)])
        # an upload larger than the server's stream window
        upload = trio.Path(tmp_path / "upload.bin")
        await upload.write_bytes(b"x" * 500_000)
        ucode, uout, uerr = await _nghttp("-d", str(upload), f"{base}/upload")
        nursery.cancel_scope.cancel()
    assert code == 0, err
    assert out.count(":status: 200") == 20
    assert out.count("send HEADERS frame") == 20  # all on the one connection nghttp opened
    data_bytes = sum(int(line.split("length=")[1].split(",")[0]) for line in out.splitlines()
                     if "recv DATA frame" in line)
    assert data_bytes == 20 * 1024 * 1024
    assert ucode == 0, uerr
    assert uout.strip() == "500000"


@needs_nghttp
async def test_two_clock_streams_on_one_connection_finish_together() -> None:
    """The seed's experiment, multiplexed: two clocks (5 ticks, 1 s apart) on ONE connection
    take about 5 s, not 10."""
    clock = load_example("clock").app
    async with trio.open_nursery() as nursery:
        bind = await start(nursery, clock)
        base = f"http://127.0.0.1:{bind.port}"
        started = time.monotonic()
        code, out, err = await _nghttp("-v", f"{base}/one", f"{base}/two")
        elapsed = time.monotonic() - started
        nursery.cancel_scope.cancel()
    assert code == 0, err
    assert out.count(":status: 200") == 2
    assert out.count("send HEADERS frame") == 2
    ticks = [line for line in out.splitlines() if line[:2] == "20" and ":" in line]
    assert len(ticks) == 10, out[-2000:]
    assert 4.0 <= elapsed < 7.0


# ------------------------------------------------------------------------------ fd counts


async def test_reset_and_cancelled_streams_leak_no_descriptors() -> None:
    holding = 0

    async def app(env: dict[str, Any]) -> Any:
        nonlocal holding
        if env["PATH_INFO"] == "/quick":
            return 200, {}, [b"q"]

        async def body(stream: trio.abc.Stream) -> None:
            nonlocal holding
            holding += 1
            try:
                await stream.send_all(b"held")
                await trio.sleep_forever()
            finally:
                holding -= 1

        return 200, {}, body

    async with trio.open_nursery() as nursery:
        bind = await start(nursery, app)
        gc.collect()
        baseline = fd_count()
        for _ in range(3):
            sock = await trio.open_tcp_stream("127.0.0.1", bind.port)
            client = H2MemoryClient(sock)
            ids = [await client.start_request("GET", f"/hold/{i}") for i in range(10)]
            await client.read_until(lambda: all(client.results[i].chunks for i in ids))  # noqa: B023
            assert holding == 10
            for sid in ids[:5]:
                await client.reset(sid)  # reset: those apps are cancelled now
            assert (await client.request("GET", "/quick")).body == b"q"
            with trio.fail_after(5):
                while holding != 5:  # noqa: ASYNC110 (the server task runs in this process)
                    await trio.sleep(0.01)
            await sock.aclose()  # the client leaves: the other five are cancelled
            with trio.fail_after(5):
                while holding or fd_count() != baseline:  # noqa: ASYNC110
                    await trio.sleep(0.01)
        assert fd_count() == baseline
        nursery.cancel_scope.cancel()


# ------------------------------------------------------------------------------- Chromium

needs_chromium = pytest.mark.skipif(not chromium_available(), reason="chromium is not installed")


@needs_chromium
async def test_chromium_loads_a_page_over_h2(tls_files: TLSFiles, tmp_path: Path) -> None:
    async def page(env: dict[str, Any]) -> Any:
        return 200, {"content-type": "text/html"}, [b"<!doctype html><title>h2</title><p>hello"]

    async with trio.open_nursery() as nursery:
        bind = await start(nursery, page, tls=tls_files)
        with trio.fail_after(60):
            async with launch_chromium(tmp_path / "profile", extra_args=["--ignore-certificate-errors"]) as browser:
                tab = await browser.new_page(f"https://127.0.0.1:{bind.port}/")
                protocol = await tab.evaluate("performance.getEntries()[0].nextHopProtocol")
                title = await tab.evaluate("document.title")
        nursery.cancel_scope.cancel()
    assert title == "h2"
    assert protocol == "h2"


# ---------------------------------------------------------------------------------- the CLI


async def _cli_port(proc: trio.Process) -> int:
    assert proc.stdout is not None
    buffer = b""
    with trio.fail_after(20):
        while b"listening on " not in buffer or not buffer.split(b"listening on ", 1)[1].count(b"\n"):
            chunk = await proc.stdout.receive_some(4096)
            if not chunk:
                raise AssertionError("the server exited before listening")
            buffer += chunk
    url = buffer.split(b"listening on ", 1)[1].split(b"\n", 1)[0].decode().strip()
    return int(url.rsplit(":", 1)[1])


@pytest.mark.parametrize("flag", [[], ["--no-http2"]])
async def test_cli_serves_http2_unless_no_http2(flag: list[str], tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env["TRIO_RACK_STATE_DIR"] = str(tmp_path / "state")
    hello = str(EXAMPLES / "hello.py")
    argv = [sys.executable, "-m", "trio_rack", "serve", hello, "-b", "http://127.0.0.1:0", "--no-access-log", *flag]
    proc = await trio.lowlevel.open_process(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    try:
        port = await _cli_port(proc)
        result = await curl("--http2-prior-knowledge", "-w", "\n%{http_version}", f"http://127.0.0.1:{port}/",
                            check=False)
    finally:
        proc.kill()
        with trio.move_on_after(5):
            await proc.wait()
        if proc.stdout is not None:
            await proc.stdout.aclose()
    if flag:
        assert result.returncode != 0 or not result.stdout.endswith(b"\n2")
    else:
        assert result.returncode == 0, result.stderr
        assert result.stdout.endswith(b"\n2")


def _exchange_has_tunnel() -> bool:
    from trio_rack.http2.connection import extended_connect_supported

    return extended_connect_supported()


@needs_chromium
@pytest.mark.skipif(not _exchange_has_tunnel(), reason="needs env['trio_rack.tunnel'] from the exchange (RFC 8441)")
async def test_chromium_websocket_over_h2_extended_connect(tls_files: TLSFiles, tmp_path: Path) -> None:
    """Chromium opens ``wss://`` as an RFC 8441 extended CONNECT on the page's h2 connection."""
    echo = load_example("websocket_echo").app
    protocols: list[tuple[str, str]] = []

    async def app(env: dict[str, Any]) -> Any:
        if env["PATH_INFO"] == "/ws":
            protocols.append((env["SERVER_PROTOCOL"], env["REQUEST_METHOD"]))
            return await echo(env)
        return 200, {"content-type": "text/html"}, [b"<!doctype html><title>ws</title>"]

    script = """new Promise((resolve, reject) => {
        const ws = new WebSocket("wss://" + location.host + "/ws");
        ws.onopen = () => ws.send("ping over h2");
        ws.onmessage = (e) => { resolve(e.data); ws.close(1000); };
        ws.onerror = () => reject(new Error("websocket error"));
    })"""
    async with trio.open_nursery() as nursery:
        bind = await start(nursery, app, tls=tls_files)
        with trio.fail_after(60):
            async with launch_chromium(tmp_path / "profile", extra_args=["--ignore-certificate-errors"]) as browser:
                tab = await browser.new_page(f"https://127.0.0.1:{bind.port}/")
                echoed = await tab.evaluate(script)
        nursery.cancel_scope.cancel()
    assert echoed == "ping over h2"
    assert protocols == [("HTTP/2", "CONNECT")]
