"""The real command, in subprocesses: ``python -m trio_rack serve|certs``.

Every server binds port 0 on 127.0.0.1 and the test reads the bound port from the banner on
stdout; every subprocess is killed by PID in a ``finally``; every wait has a timeout.  The
state directory (development certificate) is a per-test temporary directory.
"""

from __future__ import annotations

import os
import shlex
import signal
import textwrap
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import trio

from process_support import (
    STOP_TIMEOUT,
    Server,
    assert_one_error_line,
    curl_text,
    http_get,
    is_gone,
    occupied_port,
    run_to_completion,
    running,
    wait_gone,
)

HTTP = ["-b", "http://127.0.0.1:0"]
HTTPS = ["-b", "https://127.0.0.1:0"]

APP = """
import os
import trio

async def app(env):
    if env["PATH_INFO"] == "/hijack":
        stream = env["rack.hijack"]()
        await stream.send_all(b"hijacked\\n")
        await trio.sleep_forever()
    return 200, {"content-type": "text/plain"}, [str(os.getpid()).encode()]
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A working directory with app.py and a few broken apps."""
    directory = tmp_path / "project"
    directory.mkdir()
    (directory / "app.py").write_text(textwrap.dedent(APP))
    (directory / "notcallable.py").write_text("app = 42\n")
    (directory / "broken.py").write_text("raise RuntimeError('boom at import')\n")
    (directory / "garbage.pem").write_text("not a certificate\n")
    return directory


# -------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["serve", "missing.py", *HTTP], ["missing.py", "does not exist"]),
        (["serve", "app.py:nope", *HTTP], ["no attribute 'nope'"]),
        (["serve", "notcallable.py", *HTTP], ["not callable"]),
        (["serve", "broken.py", *HTTP], ["RuntimeError: boom at import"]),
        (["serve", "-b", "http://[::1"], ["malformed bind address"]),
        (["serve", "-b", "ftp://127.0.0.1:1"], ["must start with https://"]),
        (["serve", "--cert", "garbage.pem", *HTTPS], ["--cert and --key go together"]),
        (["serve", "--cert", "nope.pem", "--key", "nope.pem", *HTTPS], ["nope.pem", "does not exist"]),
        (["serve", "--cert", "garbage.pem", "--key", "garbage.pem", *HTTPS], ["cannot load certificate"]),
        (
            ["serve", "-n", "2", "--cert", "garbage.pem", "--key", "garbage.pem", *HTTPS],
            ["cannot load certificate"],
        ),
        (["serve", "--header-timeout", "0", *HTTP], ["--header-timeout", "positive"]),
        (["serve", "--max-body-size", "lots", *HTTP], ["--max-body-size", "whole number"]),
        (["serve", "-n", "0", *HTTP], ["-n/--count"]),
        (["serve", "--no-such-flag", *HTTP], ["unrecognized arguments"]),
        (["frobnicate"], ["invalid choice"]),
    ],
)
async def test_bad_input_is_one_error_line(
    project: Path, env: dict[str, str], args: list[str], expected: list[str]
) -> None:
    result = await run_to_completion(args, cwd=project, env=env)
    assert_one_error_line(result, *expected)


@pytest.mark.parametrize("count", ["1", "2"])
async def test_port_in_use_is_one_error_line(project: Path, env: dict[str, str], count: str) -> None:
    with occupied_port() as port:
        result = await run_to_completion(
            ["serve", "-n", count, "-b", f"http://127.0.0.1:{port}"], cwd=project, env=env
        )
    assert_one_error_line(result, f"127.0.0.1:{port} is already in use")


# -------------------------------------------------------------------------------- certs


async def test_certs_prints_three_paths_ca_first(project: Path, env: dict[str, str]) -> None:
    first = await run_to_completion(["certs"], cwd=project, env=env)
    assert first.returncode == 0, first.stderr
    paths = [Path(line) for line in first.stdout.decode().splitlines()]
    state = Path(env["TRIO_RACK_STATE_DIR"])
    assert paths == [state / "ca.pem", state / "localhost.pem", state / "localhost-key.pem"]
    assert all(p.is_file() for p in paths)
    assert b"BEGIN CERTIFICATE" in paths[0].read_bytes()
    assert b"PRIVATE KEY" in paths[2].read_bytes()
    ca_pem = paths[0].read_bytes()
    again = await run_to_completion(["certs"], cwd=project, env=env)
    assert again.stdout == first.stdout
    assert paths[0].read_bytes() == ca_pem  # reused, not re-made


async def test_certs_with_an_unusable_state_dir_is_one_error_line(
    project: Path, env: dict[str, str], tmp_path: Path
) -> None:
    (tmp_path / "a-file").write_text("")
    env = {**env, "TRIO_RACK_STATE_DIR": str(tmp_path / "a-file" / "state")}
    result = await run_to_completion(["certs"], cwd=project, env=env)
    assert_one_error_line(result, "cannot create the development certificate")


def test_console_script_is_declared() -> None:
    scripts = {ep.name: ep.value for ep in entry_points(group="console_scripts")}
    assert scripts.get("trio-rack") == "trio_rack.cli:main"


# -------------------------------------------------------------------------------- serving


async def test_https_with_dev_certificate_prints_a_working_curl_line(
    project: Path, env: dict[str, str]
) -> None:
    async with running(HTTPS, cwd=project, env=env, ready="try: curl") as server:
        port = server.port("https")
        ca = Path(env["TRIO_RACK_STATE_DIR"]) / "ca.pem"
        assert server.banner == [
            f"trio-rack: listening on https://127.0.0.1:{port}",
            f"trio-rack: development CA certificate: {ca}",
            f"trio-rack: try: curl --cacert {ca} https://localhost:{port}/",
        ]
        printed = shlex.split(server.banner[-1].split("try: ", 1)[1])
        assert printed[0] == "curl"
        # localhost may resolve to ::1 first; this server listens on 127.0.0.1 only
        resolve = ["--resolve", f"localhost:{port}:127.0.0.1"]
        assert await curl_text(*resolve, *printed[1:]) == str(server.proc.pid)
        server.proc.send_signal(signal.SIGINT)
        assert await server.exit_code() == 0
    log = server.log()
    assert '"GET / HTTP/1.1" 200' in log  # the access log, on stderr
    assert "Traceback" not in log


async def test_https_and_http_binds_together(project: Path, env: dict[str, str]) -> None:
    async with running([*HTTPS, *HTTP], cwd=project, env=env, ready="try: curl") as server:
        assert [u.split(":")[0] for u in server.urls] == ["https", "http"]
        ca = Path(env["TRIO_RACK_STATE_DIR"]) / "ca.pem"
        assert await curl_text("--cacert", str(ca), f"https://127.0.0.1:{server.port('https')}/") == str(
            server.proc.pid
        )
        assert await curl_text(f"http://127.0.0.1:{server.port('http')}/") == str(server.proc.pid)


async def test_sigterm_closes_a_held_hijack_and_exits_0(project: Path, env: dict[str, str]) -> None:
    args = ["-b", "http://127.0.0.1:0", "--graceful-timeout", "0.5"]
    async with running(args, cwd=project, env=env) as server:
        with trio.fail_after(STOP_TIMEOUT):
            client = await trio.open_tcp_stream("127.0.0.1", server.port("http"))
            async with client:
                await client.send_all(b"GET /hijack HTTP/1.1\r\nhost: localhost\r\n\r\n")
                assert await client.receive_some(100) == b"hijacked\n"
                server.proc.send_signal(signal.SIGTERM)
                assert await client.receive_some(100) == b""  # the server closed the hijacked stream
        assert await server.exit_code() == 0
    assert "SIGTERM: shutting down gracefully" in server.log()


async def test_second_sigint_stops_at_once(project: Path, env: dict[str, str]) -> None:
    args = ["-b", "http://127.0.0.1:0", "--graceful-timeout", "60", "--no-access-log"]
    async with running(args, cwd=project, env=env) as server:
        with trio.fail_after(STOP_TIMEOUT):
            client = await trio.open_tcp_stream("127.0.0.1", server.port("http"))
            async with client:
                await client.send_all(b"GET /hijack HTTP/1.1\r\nhost: localhost\r\n\r\n")
                assert await client.receive_some(100) == b"hijacked\n"
                server.proc.send_signal(signal.SIGINT)
                await server.wait_for_log("SIGINT: shutting down gracefully")
                server.proc.send_signal(signal.SIGINT)
                assert await client.receive_some(100) == b""
        with trio.fail_after(5):  # far less than the 60 s graceful timeout
            assert await server.exit_code() == 0
    assert "SIGINT again: stopping now" in server.log()
    assert "GET /hijack" not in server.log()  # --no-access-log


# -------------------------------------------------------------------------------- workers


async def pids_until(
    server: Server, port: int, done: Callable[[set[int]], bool], *, ca: Path | None = None
) -> set[int]:
    """GET / over fresh connections until ``done(pids seen)``; the PIDs seen."""
    seen: set[int] = set()
    with trio.fail_after(STOP_TIMEOUT):
        while not done(seen):
            _, body = await http_get(port, ca=ca)
            seen.add(int(body))
            server.pids.add(int(body))
    return seen


async def test_workers_share_the_sockets_and_stop_on_sigint(project: Path, env: dict[str, str]) -> None:
    ca = Path(env["TRIO_RACK_STATE_DIR"]) / "ca.pem"
    async with running(["-n", "2", *HTTPS], cwd=project, env=env, ready="try: curl") as server:
        port = server.port("https")
        workers = await pids_until(server, port, lambda seen: len(seen) >= 2, ca=ca)
        assert len(workers) == 2
        assert server.proc.pid not in workers
        assert int(await curl_text("--cacert", str(ca), f"https://127.0.0.1:{port}/")) in workers
        server.proc.send_signal(signal.SIGINT)
        assert await server.exit_code() == 0
        assert all(is_gone(pid) for pid in workers)  # reaped by the supervisor before it exited
        stdout = server.banner + await server.rest_of_stdout()
    assert sum("listening on" in line for line in stdout) == 1  # the supervisor's banner only
    log = server.log()
    assert log.count("exited (status 0)") == 2
    assert "Traceback" not in log


async def test_a_killed_worker_is_restarted(project: Path, env: dict[str, str]) -> None:
    async with running(["-n", "2", "-b", "http://127.0.0.1:0"], cwd=project, env=env) as server:
        port = server.port("http")
        (victim,) = await pids_until(server, port, lambda seen: len(seen) >= 1)
        os.kill(victim, signal.SIGKILL)
        await server.wait_for_log(f"(pid {victim}) died unexpectedly (killed by SIGKILL)")
        await pids_until(server, port, lambda seen: len(seen - {victim}) >= 2)  # the survivor and the new one
        server.proc.send_signal(signal.SIGTERM)
        assert await server.exit_code() == 0
    assert server.log().count("started (pid") == 3


async def test_workers_leave_when_the_supervisor_dies(project: Path, env: dict[str, str]) -> None:
    args = ["-n", "2", "-b", "http://127.0.0.1:0", "--graceful-timeout", "1"]
    async with running(args, cwd=project, env=env) as server:
        workers = await pids_until(server, server.port("http"), lambda seen: len(seen) >= 2)
        server.proc.kill()
        await server.exit_code()
        await wait_gone(workers)
    assert server.log().count("the supervisor is gone") == 2


async def test_workers_refuse_new_connections_at_once_after_sigterm(project: Path, env: dict[str, str]) -> None:
    """Stop accepting at once: while a held hijack keeps a worker draining, a new connection is
    refused rather than queued in a backlog nobody accepts from (the supervisor drops its copy
    of the listening socket when it starts stopping)."""
    args = ["-n", "2", "-b", "http://127.0.0.1:0", "--graceful-timeout", "30"]
    async with running(args, cwd=project, env=env) as server:
        port = server.port("http")
        await pids_until(server, port, lambda seen: len(seen) >= 1)
        held = await trio.open_tcp_stream("127.0.0.1", port)
        await held.send_all(b"GET /hijack HTTP/1.1\r\nhost: x\r\n\r\n")
        with trio.fail_after(5):
            assert await held.receive_some(100) == b"hijacked\n"
        server.proc.send_signal(signal.SIGTERM)
        await server.wait_for_log("stopping workers gracefully")
        refused = False
        with trio.fail_after(5):
            while not refused:
                try:
                    probe = await trio.open_tcp_stream("127.0.0.1", port)
                except OSError:
                    refused = True
                else:
                    await probe.aclose()
                    await trio.sleep(0.05)
        assert server.proc.returncode is None  # the worker holding the hijack is still draining
        await held.aclose()
        server.proc.send_signal(signal.SIGINT)  # second signal: stop at once
        assert await server.exit_code() == 0
