"""Deployment: Unix domain sockets, inherited sockets (``fd://N``), systemd socket activation and
``--max-requests`` worker recycling.

In-process tests use ``serve()``; the rest run the real command in subprocesses, hand them
sockets by file descriptor, read the bound address from the banner on stdout and kill every
process by PID in a ``finally``.  TCP sockets are on 127.0.0.1 port 0; every wait is bounded.
"""

from __future__ import annotations

import functools
import json
import random
import shutil
import signal
import socket
import stat
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

import trio_rack
from e2e_support import curl
from process_support import START_TIMEOUT, STOP_TIMEOUT, listening_tcp_socket, spawn
from trio_rack import ConfigError
from trio_rack.server.systemd import listen_binds, listen_fds
from trio_rack.server.workers import RequestBudget

APP = """
import json, os

async def app(env):
    body = {
        "pid": os.getpid(),
        "remote": env["REMOTE_ADDR"],
        "scheme": env["rack.url_scheme"],
        "listen_env": sorted(k for k in os.environ if k.startswith("LISTEN_")),
    }
    return 200, {"content-type": "application/json"}, [json.dumps(body).encode()]
"""

#: Stands in for systemd: moves the sockets it is given to fds 3, 4, ..., sets LISTEN_PID to its
#: own PID (which exec keeps) and LISTEN_FDS, then execs ``python -m trio_rack serve ARGS``.
ACTIVATE = """
import fcntl, os, sys

fds = [int(fd) for fd in sys.argv[1].split(",")]
high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for fd in fds]
for fd in fds:
    os.close(fd)
for i, fd in enumerate(high):
    os.dup2(fd, 3 + i)
    os.close(fd)
os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS=str(len(fds)), LISTEN_FDNAMES="web:admin")
os.execv(sys.executable, [sys.executable, "-m", "trio_rack", "serve", *sys.argv[2:]])
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    directory = tmp_path / "project"
    directory.mkdir()
    (directory / "app.py").write_text(textwrap.dedent(APP))
    (directory / "activate.py").write_text(textwrap.dedent(ACTIVATE))
    return directory


@pytest.fixture
def sockets_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory for socket files whose paths fit sun_path (107 bytes) even if tmp_path is long."""
    if len(str(tmp_path)) < 80:
        yield tmp_path
        return
    directory = tempfile.mkdtemp(prefix="trio-rack-")
    try:
        yield Path(directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


# ------------------------------------------------------------------------------- processes


def serve_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "trio_rack", "serve", "app.py", "--no-access-log", *args]


async def get_json(url: str, *curl_args: str) -> dict[str, Any]:
    """GET ``url`` with curl (over a fresh connection); the JSON body."""
    with trio.fail_after(STOP_TIMEOUT):
        result = await curl(*curl_args, url)
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def listening_unix_socket(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    sock.listen(64)
    return sock


# ---------------------------------------------------------------------------- unix sockets


async def echo_env_app(env: dict[str, Any]) -> Any:
    body = json.dumps({"remote": env["REMOTE_ADDR"], "port": env["REMOTE_PORT"], "scheme": env["rack.url_scheme"]})
    return 200, {"content-type": "application/json"}, [body.encode()]


async def test_unix_socket_serves_curl(sockets_dir: Path, nursery: trio.Nursery) -> None:
    path = sockets_dir / "app.sock"
    stale = listening_unix_socket(path)  # an earlier run's socket, left behind
    stale.close()
    assert stat.S_ISSOCK(path.stat().st_mode)
    binds = await nursery.start(
        functools.partial(trio_rack.serve, echo_env_app, bind=f"unix:{path}", access_log=False, proxy_headers=True)
    )
    assert [str(b) for b in binds] == [f"unix:{path}"]
    body = await get_json("http://localhost/", "--unix-socket", str(path))
    assert body == {"remote": "", "port": "0", "scheme": "http"}
    # a unix socket peer counts as a trusted proxy: it is this host's proxy, gated by file modes
    body = await get_json(
        "http://localhost/",
        "--unix-socket",
        str(path),
        "-H",
        "X-Forwarded-For: 198.51.100.2",
        "-H",
        "X-Forwarded-Proto: https",
    )
    assert body == {"remote": "198.51.100.2", "port": "0", "scheme": "https"}


async def test_unix_socket_path_that_is_not_a_socket_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "precious.txt"
    path.write_text("not a socket")
    with pytest.raises(ConfigError, match="cannot listen on unix:"):
        with trio.fail_after(STOP_TIMEOUT):
            await trio_rack.serve(echo_env_app, bind=f"unix:{path}")
    assert path.read_text() == "not a socket"  # never unlinked


# ----------------------------------------------------------------------- inherited sockets


async def test_inherited_socket_fd(project: Path, env: dict[str, str]) -> None:
    sock = listening_tcp_socket()
    port = sock.getsockname()[1]
    try:
        fd = sock.fileno()
        async with spawn(serve_argv("-b", f"fd://{fd}"), cwd=project, env=env, pass_fds=[fd]) as server:
            assert await server.read_urls(1) == [f"http://127.0.0.1:{port}"]
            body = await get_json(f"http://127.0.0.1:{port}/")
            assert body["pid"] == server.proc.pid
            assert body["remote"] == "127.0.0.1"
    finally:
        sock.close()


@pytest.mark.parametrize(
    "args",
    [
        pytest.param([], id="no-bind-single-process"),
        pytest.param(["-b", "systemd", "-n", "2"], id="explicit-with-workers"),
    ],
)
async def test_systemd_socket_activation(
    project: Path, env: dict[str, str], sockets_dir: Path, args: list[str]
) -> None:
    tcp = listening_tcp_socket()
    port = tcp.getsockname()[1]
    path = sockets_dir / "activated.sock"
    unix = listening_unix_socket(path)
    workers: set[int] = set()
    try:
        argv = [sys.executable, "activate.py", f"{tcp.fileno()},{unix.fileno()}", "app.py", "--no-access-log", *args]
        fds = [tcp.fileno(), unix.fileno()]
        async with spawn(argv, cwd=project, env=env, pass_fds=fds, kill=workers) as server:
            assert await server.read_urls(2) == [f"http://127.0.0.1:{port}", f"unix:{path}"]
            over_tcp = await get_json(f"http://127.0.0.1:{port}/")
            over_unix = await get_json("http://localhost/", "--unix-socket", str(path))
            for body in (over_tcp, over_unix):
                workers.add(body["pid"])
                assert body["listen_env"] == []  # unset before the app (and any worker) started
            if "-n" in args:
                assert server.proc.pid not in workers  # served by workers on the passed fds
            else:
                assert workers == {server.proc.pid}
                assert "systemd socket activation: serving 2 inherited socket(s)" in server.log()
            server.proc.send_signal(signal.SIGTERM)
            assert await server.exit_code() == 0
    finally:
        tcp.close()
        unix.close()


async def test_bind_systemd_without_activation_is_one_error_line(project: Path, env: dict[str, str]) -> None:
    with trio.fail_after(START_TIMEOUT):
        result = await trio.run_process(
            serve_argv("-b", "systemd"), cwd=project, env=env, capture_stdout=True, capture_stderr=True, check=False
        )
    assert result.returncode == 2
    assert result.stderr.decode().splitlines() == [
        "trio-rack: error: -b systemd: systemd passed no sockets (LISTEN_FDS/LISTEN_PID are not set for this process)"
    ]


def test_listen_fds_follows_sd_listen_fds() -> None:
    environ = {"LISTEN_PID": "4242", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "a:b", "PATH": "/bin"}
    assert listen_fds(environ, pid=4242) == [3, 4]
    assert environ == {"PATH": "/bin"}  # unset, so that children never see them
    for variables in (
        {"LISTEN_PID": "1", "LISTEN_FDS": "2"},  # meant for another process
        {"LISTEN_PID": "4242", "LISTEN_FDS": "0"},
        {"LISTEN_PID": "4242", "LISTEN_FDS": "x"},
        {"LISTEN_PID": "", "LISTEN_FDS": "1"},
        {"LISTEN_FDS": "1"},
    ):
        environ = dict(variables)
        assert listen_fds(environ, pid=4242) == []
        assert environ == {}


def test_listen_binds_refuses_what_is_not_a_listening_socket(tmp_path: Path) -> None:
    a, b = socket.socketpair()  # connected, not listening: what Accept=yes would pass
    try:
        with pytest.raises(ConfigError, match="Accept=no"):
            listen_binds([a.fileno()])
    finally:
        a.close()
        b.close()
    with open(tmp_path / "f", "w") as file, pytest.raises(ConfigError, match="not an open socket"):
        listen_binds([file.fileno()])


# ---------------------------------------------------------------------------- max-requests


async def test_max_requests_recycles_the_worker(project: Path, env: dict[str, str]) -> None:
    workers: set[int] = set()
    argv = serve_argv("-b", "http://127.0.0.1:0", "--max-requests", "3", "--graceful-timeout", "2")
    async with spawn(argv, cwd=project, env=env, kill=workers) as server:
        (url,) = await server.read_urls(1)
        pids = []
        for _ in range(7):
            pid = (await get_json(url + "/"))["pid"]  # every request must succeed
            workers.add(pid)
            pids.append(pid)
        assert server.proc.pid not in pids  # -n 1 still runs under the supervisor
        first, second, third = pids[0], pids[3], pids[6]
        assert pids == [first] * 3 + [second] * 3 + [third]
        assert len({first, second, third}) == 3
        await server.wait_for_log("served its --max-requests; starting a new one", count=2)
        server.proc.send_signal(signal.SIGTERM)
        assert await server.exit_code() == 0
    log = server.log()
    assert "died unexpectedly" not in log
    assert "Traceback" not in log
    assert log.count("served 3 requests (--max-requests): shutting down gracefully") == 2


async def test_request_budget_counts_calls_and_jitters() -> None:
    calls = []

    async def app(env: dict[str, Any]) -> Any:
        calls.append(env)
        return 200, {}, []

    budget = RequestBudget(app, max_requests=2)
    assert getattr(budget, "__wrapped__", None) is app  # error messages name the app
    assert getattr(budget, "__qualname__", None) == app.__qualname__
    await budget({})
    assert not budget.exhausted.is_set()
    await budget({})
    assert budget.exhausted.is_set() and len(calls) == 2
    limits = {RequestBudget(app, max_requests=10, jitter=5, rng=random.Random(seed)).limit for seed in range(200)}
    assert limits == set(range(10, 16))
    with pytest.raises(ValueError):
        RequestBudget(app, max_requests=0)


async def test_unix_socket_in_use_is_refused_and_removed_on_exit(tmp_path: Path) -> None:
    """A live server's socket file is never stolen; ours is removed when we stop."""
    import trio_rack
    from trio_rack.config import ConfigError

    async def app(env):
        return 200, {}, [b"ok"]

    path = tmp_path / "live.sock"
    async with trio.open_nursery() as nursery:
        await nursery.start(functools.partial(trio_rack.serve, app, bind=f"unix:{path}"))
        with pytest.raises(ConfigError, match="in use by a running server"):
            await trio_rack.serve(app, bind=f"unix:{path}")
        assert path.exists()
        nursery.cancel_scope.cancel()
    assert not path.exists()
