"""``trio-rack serve`` with ASGI and WSGI apps, in subprocesses: ``--interface`` (and its one
error line), ``--factory`` (a native app's async context manager owning a background task),
lifespan failure (exit status 3 before any port accepts), a FastAPI app as ``main:app`` and a
Flask app with ``--interface wsgi`` over plain and TLS, ``-n 2`` (a lifespan per worker) and
SIGTERM → exit 0.  Every subprocess is killed by PID in a ``finally``."""

from __future__ import annotations

import signal
import subprocess
import textwrap
from pathlib import Path

import pytest
import trio

from asgi_support import server_has_request_nursery
from e2e_support import curl, wait_until
from process_support import run_to_completion, running

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

needs_request_nursery = pytest.mark.skipif(
    not server_has_request_nursery(), reason="the server's request-scoped nursery (app/exchange.py) is not here yet"
)

FASTAPI_MAIN = """
import os
from fastapi import FastAPI
from contextlib import asynccontextmanager

@asynccontextmanager
async def lifespan(app):
    print(f"lifespan startup {os.getpid()}", flush=True, file=__import__("sys").stderr)
    yield {"pid": os.getpid()}
    print(f"lifespan shutdown {os.getpid()}", flush=True, file=__import__("sys").stderr)

app = FastAPI(lifespan=lifespan)

@app.get("/items/{name}")
async def item(name: str):
    return {"name": name, "pid": os.getpid()}

def create_app():
    return app
"""

FLASK_APP = """
from flask import Flask, request
app = Flask(__name__)

@app.route("/", methods=["GET", "POST"])
def index():
    return f"flask {request.method} {len(request.get_data())} {request.script_root}"
"""

FAILING_LIFESPAN = """
async def app(scope, receive, send):
    assert scope["type"] == "lifespan"
    await receive()
    await send({"type": "lifespan.startup.failed", "message": "cannot reach the database"})
"""

AMBIGUOUS = """
async def app(one, two):
    pass
"""

NATIVE_FACTORY = """
import sys
from contextlib import asynccontextmanager
import trio

@asynccontextmanager
async def make_app():
    ticks = [0]
    async def ticker():
        while True:
            ticks[0] += 1
            await trio.sleep(0.01)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ticker)
        async def app(env):
            return 200, {"content-type": "text/plain"}, [str(ticks[0]).encode()]
        print("factory entered", file=sys.stderr, flush=True)
        yield app
        print("factory exited", file=sys.stderr, flush=True)
        nursery.cancel_scope.cancel()
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    directory = tmp_path / "project"
    directory.mkdir()
    for name, text in {
        "main.py": FASTAPI_MAIN,
        "flaskapp.py": FLASK_APP,
        "failing.py": FAILING_LIFESPAN,
        "ambiguous.py": AMBIGUOUS,
        "native.py": NATIVE_FACTORY,
    }.items():
        (directory / name).write_text(textwrap.dedent(text))
    return directory


def _one_error_line(result: subprocess.CompletedProcess[bytes], status: int, *expected: str) -> None:
    stderr = result.stderr.decode()
    assert result.returncode == status, stderr
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if "trio-rack: error:" in line]
    assert len(lines) == 1, stderr
    for text in expected:
        assert text in lines[0], lines[0]


async def test_an_unrecognisable_app_is_one_error_line_naming_interface(project: Path, env: dict[str, str]) -> None:
    result = await run_to_completion(["serve", "ambiguous.py", "-b", "http://127.0.0.1:0"], cwd=project, env=env)
    _one_error_line(result, 2, "--interface", "cannot tell which interface")
    assert b"listening on" not in result.stdout


async def test_lifespan_startup_failure_exits_3_before_listening(project: Path, env: dict[str, str]) -> None:
    result = await run_to_completion(["serve", "failing.py", "-b", "http://127.0.0.1:0"], cwd=project, env=env)
    _one_error_line(result, 3, "lifespan startup failed", "cannot reach the database")
    assert b"listening on" not in result.stdout


async def test_lifespan_failure_in_a_worker_stops_the_supervisor_with_3(project: Path, env: dict[str, str]) -> None:
    result = await run_to_completion(
        ["serve", "failing.py", "-b", "http://127.0.0.1:0", "-n", "2"], cwd=project, env=env
    )
    assert result.returncode == 3, result.stderr.decode()


async def test_native_factory_context_manager_owns_a_background_task(project: Path, env: dict[str, str]) -> None:
    async with running(["native.py:make_app", "--factory", "-b", "http://127.0.0.1:0"], cwd=project, env=env) as server:
        first = int((await curl(f"http://127.0.0.1:{server.port()}/")).stdout)
        await trio.sleep(0.2)
        second = int((await curl(f"http://127.0.0.1:{server.port()}/")).stdout)
        assert second > first  # the factory's task runs while the server serves
        server.proc.send_signal(signal.SIGTERM)
        with trio.fail_after(10):
            assert await server.proc.wait() == 0
    log = server.log()
    assert log.index("factory entered") < log.index("factory exited")


@needs_request_nursery
@pytest.mark.parametrize("scheme", ["http", "https"])
async def test_fastapi_main_app_with_lifespan_and_sigterm(
    project: Path, env: dict[str, str], scheme: str
) -> None:
    async with running(["main:app", "-b", f"{scheme}://127.0.0.1:0"], cwd=project, env=env) as server:
        assert "trio-rack: serving an ASGI 3 app (--interface asgi)" in server.banner
        port = server.port(scheme)
        args = [f"{scheme}://127.0.0.1:{port}/items/caf%C3%A9"]
        if scheme == "https":
            ca = Path(env["TRIO_RACK_STATE_DIR"]) / "ca.pem"
            args = ["--cacert", str(ca), *args]
        body = (await curl(*args)).stdout
        assert b'"name":"caf\xc3\xa9"' in body
        # the same over HTTP/2: h2c prior knowledge on plain, ALPN h2 over TLS (curl -w says which)
        h2 = "--http2-prior-knowledge" if scheme == "http" else "--http2"
        got = (await curl(h2, "-w", "\n%{http_version}", *args)).stdout
        assert b'"name":"caf\xc3\xa9"' in got and got.endswith(b"\n2")
        server.proc.send_signal(signal.SIGTERM)
        with trio.fail_after(10):
            assert await server.proc.wait() == 0
    log = server.log()
    assert log.index("lifespan startup") < log.index("lifespan shutdown")


@needs_request_nursery
async def test_flask_with_interface_wsgi_and_two_workers_each_with_a_lifespan(
    project: Path, env: dict[str, str]
) -> None:
    async with running(
        ["flaskapp.py", "--interface", "wsgi", "--root-path", "/f", "-b", "http://127.0.0.1:0", "-n", "2"],
        cwd=project,
        env=env,
    ) as server:
        assert "trio-rack: serving a WSGI app (--interface wsgi)" in server.banner
        got = (await curl("-d", "abc", f"http://127.0.0.1:{server.port()}/f/")).stdout
        assert got == b"flask POST 3 /f"
    async with running(["main:app", "-b", "http://127.0.0.1:0", "-n", "2"], cwd=project, env=env) as server:
        with trio.fail_after(10):
            await wait_until(lambda: server.log().count("lifespan startup") >= 2, poll=0.05)  # another process's log


@needs_request_nursery
async def test_factory_returning_an_asgi_app(project: Path, env: dict[str, str]) -> None:
    async with running(["main:create_app", "--factory", "-b", "http://127.0.0.1:0"], cwd=project, env=env) as server:
        assert "trio-rack: serving an ASGI 3 app (--interface asgi)" in server.banner
        body = (await curl(f"http://127.0.0.1:{server.port()}/items/x")).stdout
    assert b'"name":"x"' in body


async def test_a_plain_wsgi_function_is_served_not_refused(project: Path, env: dict[str, str]) -> None:
    (project / "plainwsgi.py").write_text(
        "def app(environ, start_response):\n"
        "    start_response('200 OK', [('content-type', 'text/plain')])\n"
        "    return [b'plain wsgi']\n"
    )
    async with running(["plainwsgi.py", "-b", "http://127.0.0.1:0"], cwd=project, env=env) as server:
        assert "trio-rack: serving a WSGI app (--interface wsgi)" in server.banner
        assert (await curl(f"http://127.0.0.1:{server.port()}/")).stdout == b"plain wsgi"
