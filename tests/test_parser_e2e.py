"""``--http1-parser`` end to end: a real server process, real sockets, curl as the client.

The httptools engine serves keep-alive requests, a chunked upload and a pipelined pair over
TCP; the parser in use is named in the log; ``--http1-parser httptools`` without httptools is
one error line naming the ``speedups`` extra; the setting comes from the environment and the
config file like every other flag.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import trio

from e2e_support import curl, parse_responses
from process_support import assert_one_error_line, run_to_completion, running
from trio_rack.http1.httptools_engine import AVAILABLE

APP = """
    async def app(env):
        body = await env["rack.input"].read_all(limit=1 << 20)
        text = b"%s %s %d:" % (env["REQUEST_METHOD"].encode(), env["PATH_INFO"].encode(), len(body))
        return 200, {"content-type": "text/plain"}, [text + body]
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    directory = tmp_path / "project"
    directory.mkdir()
    (directory / "app.py").write_text(textwrap.dedent(APP))
    return directory


needs_httptools = pytest.mark.skipif(not AVAILABLE, reason="httptools is not installed (the test extra has it)")


@needs_httptools
async def test_httptools_serves_keep_alive_uploads_and_pipelining_over_tcp(project: Path, env: dict[str, str]) -> None:
    args = ["app.py", "-b", "http://127.0.0.1:0", "--http1-parser", "httptools"]
    async with running(args, cwd=project, env=env) as server:
        port = server.port()
        base = f"http://127.0.0.1:{port}"
        # two URLs on one curl: one connection, kept alive
        result = await curl("-v", f"{base}/one", f"{base}/two")
        assert result.stdout == b"GET /one 0:GET /two 0:"
        assert "Re-using existing connection" in result.stderr or "Reusing existing" in result.stderr
        upload = project / "upload.bin"
        upload.write_bytes(bytes(range(256)) * 400)
        result = await curl("-H", "Transfer-Encoding: chunked", "--data-binary", f"@{upload}", f"{base}/up")
        assert result.stdout == b"POST /up 102400:" + upload.read_bytes()
        # pipelined, by hand: both answered, in order, and nothing more
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(
                b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
                b"GET /b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
            data = b""
            with trio.fail_after(10):
                while chunk := await stream.receive_some():
                    data += chunk
        responses = parse_responses(data)
        assert [(r.status, r.body) for r in responses] == [(200, b"POST /a 3:abc"), (200, b"GET /b 0:")]
        # a smuggling vector gets the same 400 as on h11
        result = await curl(
            "-i", "-H", "Content-Length: 3", "-H", "Transfer-Encoding: chunked", "--data-binary", "abc", f"{base}/"
        )
        assert result.response()[0] == 400
        await server.wait_for_log("HTTP/1 parser: httptools")


async def test_h11_from_the_environment_and_httptools_from_a_config_file(project: Path, env: dict[str, str]) -> None:
    args = ["app.py", "-b", "http://127.0.0.1:0"]
    async with running(args, cwd=project, env={**env, "TRIO_RACK_HTTP1_PARSER": "h11"}) as server:
        assert (await curl(f"http://127.0.0.1:{server.port()}/x")).stdout == b"GET /x 0:"
        await server.wait_for_log("HTTP/1 parser: h11")
    if not AVAILABLE:
        return
    (project / "trio-rack.toml").write_text('http1_parser = "httptools"\n')
    async with running([*args, "--config", "trio-rack.toml"], cwd=project, env=env) as server:
        assert (await curl(f"http://127.0.0.1:{server.port()}/y")).stdout == b"GET /y 0:"
        await server.wait_for_log("HTTP/1 parser: httptools")


async def test_httptools_without_httptools_is_one_error_line_naming_the_extra(
    project: Path, env: dict[str, str]
) -> None:
    # A package that fails to import, ahead of any installed httptools on the path.
    shadow = project.parent / "shadow" / "httptools"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text('raise ImportError("httptools is not here")\n')
    path = f"{shadow.parent}:{env.get('PYTHONPATH', '')}"
    args = ["serve", "app.py", "-b", "http://127.0.0.1:0", "--http1-parser", "httptools"]
    result = await run_to_completion(args, cwd=project, env={**env, "PYTHONPATH": path})
    line = assert_one_error_line(result, "--http1-parser httptools", "trio-rack[speedups]")
    assert b"listening on" not in result.stdout, line
    # auto falls back to h11 there, and serves
    async with running(["app.py", "-b", "http://127.0.0.1:0"], cwd=project, env={**env, "PYTHONPATH": path}) as server:
        assert (await curl(f"http://127.0.0.1:{server.port()}/z")).stdout == b"GET /z 0:"
        await server.wait_for_log("HTTP/1 parser: h11")
