"""The newcomer defects of issue 11, one test each (the ones in the CLI, sse, certs, TLS and docs;
the HTTP/1 driver's are tested with it).  ``trio-rack certs | head`` is in test_certs_install."""

from __future__ import annotations

import ast
import builtins
import inspect
import re
import subprocess
from pathlib import Path

import pytest
import trio

import trio_rack
from e2e_support import EXAMPLES, ROOT, load_example, make_tls_files, open_client, read_until_eof, start_server
from process_support import command, running
from trio_rack import sse
from trio_rack.config import ConfigError
from trio_rack.testing import memory_connection


@pytest.fixture
def project(tmp_path: Path) -> Path:
    directory = tmp_path / "project"
    directory.mkdir()
    (directory / "app.py").write_text('async def app(env):\n    return 200, {}, [b"ok"]\n')
    return directory


# ------------------------------------------------------------------------------------ sse


def ticking_app(finished: list[str]) -> trio_rack.types.App:
    async def app(env: dict[str, object]) -> object:
        async def events(stream: sse.EventStream) -> None:
            try:
                n = 0
                while True:
                    n += 1
                    await stream.send(str(n))
                    await trio.sleep(0.05)
            finally:
                finished.append("handler finally ran")

        return sse.response(env, events, heartbeat=None)

    return app


async def test_sse_ends_at_once_on_graceful_shutdown() -> None:
    """Not after --graceful-timeout (30 s here): at once, a complete chunked response."""
    finished: list[str] = []
    shutdown = trio.Event()
    limits = trio_rack.Limits(graceful_timeout=30)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            bind = await start_server(nursery, ticking_app(finished), limits=limits, shutdown_trigger=shutdown)
            stream = await open_client(bind)
            await stream.send_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            first = await stream.receive_some(65536)
            assert b"200" in first.split(b"\r\n", 1)[0]
            shutdown.set()
            rest, _ = await read_until_eof(stream)
            await stream.aclose()
    data = first + rest
    assert data.endswith(b"0\r\n\r\n"), data[-200:]  # the stream was ended, not aborted
    assert finished == ["handler finally ran"]


async def test_sse_head_carries_the_headers_of_get() -> None:
    ran: list[str] = []

    async def app(env: dict[str, object]) -> object:
        async def events(stream: sse.EventStream) -> None:
            ran.append(str(env["REQUEST_METHOD"]))
            await stream.send("one")

        return sse.response(env, events, heartbeat=None)

    async with memory_connection(app) as client:
        head = await client.request("HEAD", "/")
        get = await client.request("GET", "/")
    assert head.status == get.status == 200
    assert head.body == b"" and b"data: one" in get.body
    assert [(k, v) for k, v in head.headers if k != "date"] == [(k, v) for k, v in get.headers if k != "date"]
    assert head.header("transfer-encoding") == "chunked" and head.header("content-length") is None
    assert ran == ["GET"]  # HEAD never runs the handler


# ---------------------------------------------------------------------------- start-up


def serve_once(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command("serve", *args), cwd=cwd, env=env, capture_output=True, text=True, timeout=30)


def test_sync_def_app_is_refused_at_start_up(project: Path, env: dict[str, str]) -> None:
    (project / "sync.py").write_text("def app(env):\n    return 200, {}, [b'never']\n")
    done = serve_once("sync.py", "-b", "http://127.0.0.1:0", cwd=project, env=env)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "trio-rack: error: app 'sync.py': 'app' is a plain def function (every request would get a 500); "
        "an app is async def app(env)"
    ]


def test_import_error_names_file_and_line(project: Path, env: dict[str, str]) -> None:
    (project / "helper.py").write_text("x = 1\n\nraise KeyError('settings')\n")
    (project / "uses_helper.py").write_text("import helper\n\nasync def app(env): ...\n")
    done = serve_once("uses_helper.py", "-b", "http://127.0.0.1:0", cwd=project, env=env)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "trio-rack: error: importing app 'uses_helper.py' failed: KeyError: 'settings' "
        f"({project / 'helper.py'}, line 3)"
    ]


@pytest.mark.parametrize("spelling", ["None", "unlimited"])
async def test_max_body_size_none_is_accepted(project: Path, env: dict[str, str], spelling: str) -> None:
    async with running(["-b", "http://127.0.0.1:0", "--max-body-size", spelling], cwd=project, env=env) as server:
        assert server.port("http") > 0


async def test_one_worker_is_one_worker(project: Path, env: dict[str, str]) -> None:
    async with running(["-b", "http://127.0.0.1:0", "--max-requests", "100"], cwd=project, env=env) as server:
        await server.wait_for_log("started 1 worker")
        assert "started 1 workers" not in server.log()


async def test_unix_bind_onto_a_regular_file_says_so(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("mine")

    async def app(env: dict[str, object]) -> object:
        return 200, {}, []

    with pytest.raises(ConfigError) as info:
        await trio_rack.serve(app, bind=f"unix:{path}")
    assert str(info.value) == (
        f"cannot listen on unix:{path}: a file that is not a socket is in the way (never replaced); remove it"
    )
    assert "already in use" not in str(info.value)
    assert path.read_text() == "mine"


async def test_plain_http_on_the_tls_port_gets_date_and_server(tmp_path: Path) -> None:
    async def app(env: dict[str, object]) -> object:
        return 200, {}, [b"tls"]

    tls = make_tls_files(tmp_path)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            bind = await start_server(nursery, app, tls=tls)
            stream = await trio.open_tcp_stream("127.0.0.1", bind.port)
            await stream.send_all(b"GET / HTTP/1.1\r\nhost: localhost\r\n\r\n")
            data, _ = await read_until_eof(stream)
            await stream.aclose()
            nursery.cancel_scope.cancel()
    head = data.split(b"\r\n\r\n", 1)[0].decode().split("\r\n")
    assert head[0] == "HTTP/1.1 400 Bad Request"
    names = {line.split(":", 1)[0] for line in head[1:]}
    assert {"date", "server", "connection", "content-length"} <= names
    assert "server: trio-rack" in head


# --------------------------------------------------------------------------------- docs

MARKDOWN = [ROOT / "README.md", ROOT / "examples" / "README.md", ROOT / "certs" / "README.md", *ROOT.glob("docs/*.md")]


@pytest.mark.parametrize("page", MARKDOWN, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_stay_inside_the_repository(page: Path) -> None:
    prose = re.sub(r"```.*?```|`[^`\n]*`", "", page.read_text(), flags=re.S)  # code is not links
    for target in re.findall(r"\]\(([^)#\s]+)", prose):
        if re.match(r"[a-z]+:", target):
            continue  # https://, mailto:
        resolved = (page.parent / target).resolve()
        assert resolved.is_relative_to(ROOT), f"{page.name} links {target}, outside the repository"
        assert resolved.exists(), f"{page.name} links {target}, which does not exist"


def _undefined_names(source: str) -> set[str]:
    """Names a snippet loads but never binds, imports or gets from builtins (pyflakes' F821)."""
    tree = ast.parse(source)
    bound: set[str] = set(dir(builtins))
    loaded: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (loaded if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
    return loaded - bound


def _python_blocks(page: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)


@pytest.mark.parametrize("page", [ROOT / "README.md", *ROOT.glob("docs/*.md")], ids=lambda p: p.name)
def test_readme_snippets_import_what_they_use(page: Path) -> None:
    for block in _python_blocks(page):
        assert not _undefined_names(block), f"{page.name}: a snippet uses {_undefined_names(block)}:\n{block}"


def test_examples_readme_states_the_make_app_signatures() -> None:
    text = (EXAMPLES / "README.md").read_text()
    stated = dict(re.findall(r"`(\w+)\.py` takes `make_app\(([^)]*)\)`", text))
    assert set(stated) >= {"clock", "sse_clock"}
    for name, signature in stated.items():
        params = inspect.signature(load_example(name).make_app).parameters.values()
        assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params)
        assert signature == "*, " + ", ".join(f"{p.name}={p.default!r}" for p in params), name


def test_readme_states_the_platforms_and_the_localhost_caveat() -> None:
    text = (ROOT / "README.md").read_text()
    assert "## Supported platforms" in text
    platforms = text.split("## Supported platforms", 1)[1].split("\n## ", 1)[0]
    assert "Linux" in platforms and "POLLRDHUP" in platforms and "Windows" in platforms
    tls = text.split("## TLS by default", 1)[1].split("\n## ", 1)[0]
    assert "/etc/hosts" in tls


def test_certs_folder_never_commits_a_key() -> None:
    ignore = (ROOT / "certs" / ".gitignore").read_text().split()
    assert ignore[:1] != [] and "*" in ignore
    checked = subprocess.run(
        ["git", "check-ignore", "certs/localhost-key.pem", "certs/mine.key", "certs/localhost.pem"],
        cwd=ROOT, capture_output=True, text=True, timeout=10,
    )  # fmt: skip
    if checked.returncode == 128:
        pytest.skip("not a git checkout")
    assert checked.stdout.split() == ["certs/localhost-key.pem", "certs/mine.key", "certs/localhost.pem"]
