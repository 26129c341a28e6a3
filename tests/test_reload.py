"""``trio-rack serve --reload``: a real server, a real file edit, a client that never stops asking.

The client opens a fresh connection for every request, back to back, for the whole test; every
connection must be answered (none refused, none reset) while the app is edited, broken by a
typo (the old worker must keep serving and the log must name the file and line), and fixed.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import trio

from process_support import command, http_get, running

pytest.importorskip("watchfiles")

APP = 'async def app(env):\n    return 200, {{"content-type": "text/plain"}}, [b"{version}"]\n'
CHANGE_TIMEOUT = 15


@pytest.fixture
def project(tmp_path: Path) -> Path:
    directory = tmp_path / "project"
    directory.mkdir()
    (directory / "app.py").write_text(APP.format(version="v1"))
    return directory


class Client:
    """GETs in a loop, each on a new connection; remembers the last body and every failure."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.last = b""
        self.requests = 0
        self.failures: list[str] = []
        self.changed = trio.Event()

    async def get(self) -> bytes:
        _, body = await http_get(self.port)  # a fresh connection; anything but a 200 is an AssertionError
        return body

    async def run(self) -> None:
        while True:
            try:
                body = await self.get()
            except (OSError, trio.BrokenResourceError, trio.TooSlowError, AssertionError) as exc:
                self.failures.append(repr(exc))
            else:
                self.requests += 1
                if body != self.last:
                    self.last = body
                    self.changed.set()
            await trio.sleep(0.01)

    async def wait_for(self, body: bytes) -> None:
        with trio.move_on_after(CHANGE_TIMEOUT):
            while self.last != body:
                self.changed = trio.Event()
                await self.changed.wait()
        assert self.last == body, f"still {self.last!r} after {CHANGE_TIMEOUT} s; failures: {self.failures[-3:]}"

    async def wait_requests(self, count: int) -> None:
        with trio.fail_after(CHANGE_TIMEOUT):
            target = self.requests + count
            while self.requests < target:
                self.changed = trio.Event()  # set on a change; the loop also wakes per response
                with trio.move_on_after(0.05):
                    await self.changed.wait()


async def test_edit_reloads_typo_keeps_serving_fix_reloads(project: Path, env: dict[str, str]) -> None:
    args = ["app.py", "-b", "http://127.0.0.1:0", "--reload", "--no-access-log"]
    async with running(args, cwd=project, env=env) as server:
        client = Client(server.port("http"))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.run)
            await client.wait_for(b"v1")

            (project / "app.py").write_text(APP.format(version="v2"))
            await client.wait_for(b"v2")

            # a typo: the new worker cannot import the app; the old one goes on serving v2
            (project / "app.py").write_text('async def app(env):\n    return 200, {}, [b"v3"\n')
            await server.wait_for_log("the previous one keeps serving")
            await client.wait_requests(5)
            assert client.last == b"v2"

            (project / "app.py").write_text(APP.format(version="v4"))
            await client.wait_for(b"v4")
            nursery.cancel_scope.cancel()
    log = server.log()
    assert client.failures == [], client.failures  # no connection refused or dropped, ever
    errors = [line for line in log.splitlines() if line.startswith("trio-rack: error:")]
    where = f"({project / 'app.py'}, line 2)"
    assert errors == [f"trio-rack: error: importing app 'app.py' failed: SyntaxError: '[' was never closed {where}"]
    assert log.count("reload: app.py changed; starting a new worker") == 3
    assert "Traceback" not in log


async def test_include_and_exclude_globs(project: Path, env: dict[str, str]) -> None:
    (project / "templates").mkdir()
    (project / "page.html").write_text("one")
    (project / "app.py").write_text(
        "from pathlib import Path\n"
        "PAGE = (Path(__file__).parent / 'page.html').read_bytes()\n"
        "async def app(env):\n    return 200, {}, [PAGE]\n"
    )
    args = ["app.py", "-b", "http://127.0.0.1:0", "--reload", "--no-access-log",
            "--reload-include", "*.html", "--reload-exclude", "ignored*"]  # fmt: skip
    async with running(args, cwd=project, env=env) as server:
        client = Client(server.port("http"))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.run)
            await client.wait_for(b"one")
            (project / "ignored.html").write_text("excluded: no reload")
            (project / "notes.txt").write_text("not included: no reload")
            (project / "page.html").write_text("two")
            await client.wait_for(b"two")
            nursery.cancel_scope.cancel()
    assert server.log().count("starting a new worker") == 1
    assert "reload: page.html changed" in server.log()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["-n", "2"], "trio-rack: error: --reload runs one worker: it cannot be combined with -n/--count above 1"),
        (["--max-requests", "5"], "trio-rack: error: --reload cannot be combined with --max-requests"),
    ],
)
def test_reload_refuses_several_workers(project: Path, env: dict[str, str], extra: list[str], message: str) -> None:
    done = subprocess.run(
        command("serve", "-b", "http://127.0.0.1:0", "--reload", *extra),
        cwd=project, env=env, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.splitlines() == [message]


def test_reload_with_an_app_that_does_not_import_exits_2(project: Path, env: dict[str, str]) -> None:
    (project / "app.py").write_text("import nowhere_to_be_found\n")
    done = subprocess.run(
        command("serve", "-b", "http://127.0.0.1:0", "--reload"),
        cwd=project, env=env, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 2
    assert [line for line in done.stderr.splitlines() if "error" in line] == [
        "trio-rack: error: importing app 'app.py' failed: ModuleNotFoundError: No module named "
        f"'nowhere_to_be_found' ({project / 'app.py'}, line 1)"
    ]


async def test_reload_dir_watches_only_the_given_directories(project: Path, env: dict[str, str]) -> None:
    lib = project / "lib"
    lib.mkdir()
    (lib / "version.py").write_text('VERSION = b"lib1"\n')
    (project / "app.py").write_text(
        "import sys, pathlib\nsys.path.insert(0, str(pathlib.Path(__file__).parent / 'lib'))\n"
        "from version import VERSION\nasync def app(env):\n    return 200, {}, [VERSION]\n"
    )
    args = ["app.py", "-b", "http://127.0.0.1:0", "--reload", "--no-access-log", "--reload-dir", "lib"]
    async with running(args, cwd=project, env=env) as server:
        client = Client(server.port("http"))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.run)
            await client.wait_for(b"lib1")
            (project / "other.py").write_text("x = 1\n")  # outside lib/: not watched
            (lib / "version.py").write_text('VERSION = b"lib2"\n')
            await client.wait_for(b"lib2")
            nursery.cancel_scope.cancel()
    assert server.log().count("starting a new worker") == 1
    assert client.failures == []


def test_reload_dir_must_exist(project: Path, env: dict[str, str]) -> None:
    done = subprocess.run(
        command("serve", "-b", "http://127.0.0.1:0", "--reload", "--reload-dir", "nope"),
        cwd=project, env=env, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.splitlines() == ["trio-rack: error: --reload-dir nope: not a directory"]
