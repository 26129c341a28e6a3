"""Zero-downtime rolling restarts (``kill -HUP`` the supervisor of ``-n``), and systemd
readiness (``NOTIFY_SOCKET``), with the real command in a subprocess.

The load test keeps a steady load on the server through a restart: keep-alive clients, clients
opening a new connection per request, and an open streaming response that spans the restart.
It counts every request (``restart_support.Load`` says what counts as failed).

Everything binds 127.0.0.1 port 0; the server is killed by PID (with the worker PIDs it
reported) in a ``finally``; the load is bounded in time.  The systemd tests bind a datagram
socket of their own as ``NOTIFY_SOCKET`` and read what the server sends.
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from restart_support import RESTART_TIMEOUT, Load, pids, running, versions, write_app

# ----------------------------------------------------------------------------- the tests


async def test_rolling_restart_under_load_fails_no_request(tmp_path: Path) -> None:
    write_app(tmp_path, "v1")
    async with running(tmp_path, "-n", "2", "--graceful-timeout", "10") as server:
        load = Load(server.port)
        stream_body = b""
        async with trio.open_nursery() as nursery:
            for _ in range(2):
                nursery.start_soon(load.keepalive_client)
                nursery.start_soon(load.new_connection_client)
            started = trio.Event()

            async def streaming() -> None:
                nonlocal stream_body
                stream_body = await load.stream_client(started)

            nursery.start_soon(streaming)
            with trio.fail_after(RESTART_TIMEOUT):
                await started.wait()
                await trio.sleep(0.5)  # the load is flowing
                before = pids(load.bodies)
                server.pids |= before
                # a changed app, whose source is longer (so no stale .pyc can be taken for it)
                write_app(tmp_path, "v2-changed")
                server.proc.send_signal(signal.SIGHUP)
                await server.wait_for_log("rolling restart done")
                done_at = trio.current_time()
                await trio.sleep(1.0)  # the load goes on against the new workers
            load.stop.set()
        server.pids |= pids(load.bodies)
        after = pids(load.bodies, after=done_at + 0.5)
        log = server.log()
        server.proc.send_signal(signal.SIGTERM)
        with trio.fail_after(RESTART_TIMEOUT):
            assert await server.proc.wait() == 0
    assert load.failed == [], f"{len(load.failed)} failed of {load.ok}: {load.failed[:5]}\n{log}"
    assert load.ok > 50, load.ok
    assert stream_body.startswith(b"v1 0\n")  # the old worker finished the stream it had begun
    assert versions(load.bodies, after=done_at + 0.5) == {"v2-changed"}
    assert after and not (after & before)  # only new workers serve (which of the two: the kernel's choice)
    assert "rolling restart done: 2 new worker(s)" in log
    assert log.count("rolling restart of 2 worker(s), one at a time") == 1
    assert "died unexpectedly" not in log and "Traceback" not in log
    print(f"rolling restart under load: {load.ok} requests ok, {load.retried} retried, 0 failed")


async def test_a_new_worker_that_fails_stops_the_restart(tmp_path: Path) -> None:
    write_app(tmp_path, "v1")
    async with running(tmp_path, "-n", "2") as server:
        load = Load(server.port)
        with trio.fail_after(RESTART_TIMEOUT):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(load.new_connection_client)
                # both old workers seen serving before the restart (0.3 s of load on a busy
                # machine sometimes reached only one, and the other's later answers then
                # looked like a new worker's)
                while len(pids(load.bodies)) < 2:  # noqa: ASYNC110 (the load task fills bodies; no event to wait on)
                    await trio.sleep(0.1)
                before = pids(load.bodies)
                server.pids |= before
                (tmp_path / "app.py").write_text("def broken(:\n")  # a syntax error
                server.proc.send_signal(signal.SIGHUP)
                await server.wait_for_log("rolling restart stopped")
                stopped_at = trio.current_time()
                await trio.sleep(0.5)
                load.stop.set()
            assert load.failed == []
            assert versions(load.bodies, after=stopped_at) == {"v1"}
            assert pids(load.bodies, after=stopped_at) <= before  # the old workers go on serving
            log = server.log()
            lines = [line for line in log.splitlines() if "rolling restart stopped" in line]
            assert len(lines) == 1, log
            assert "exited (status 2) before serving; the old workers keep serving" in lines[0]
            assert "SyntaxError" in log  # the new worker's own one-line error
            assert server.proc.poll() is None
            # fixed: the next SIGHUP goes through
            write_app(tmp_path, "v3-fixed-now")
            server.proc.send_signal(signal.SIGHUP)
            await server.wait_for_log("rolling restart done")
            load = Load(server.port)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(load.new_connection_client)
                await trio.sleep(0.5)
                load.stop.set()
            server.pids |= pids(load.bodies)
            assert versions(load.bodies, after=trio.current_time() - 0.3) == {"v3-fixed-now"}


async def test_sighup_in_a_single_process_is_logged_as_unsupported(tmp_path: Path) -> None:
    write_app(tmp_path, "v1")
    async with running(tmp_path) as server:
        server.proc.send_signal(signal.SIGHUP)
        await server.wait_for_log("SIGHUP: restarts are not supported in a single process")
        load = Load(server.port)
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(load.new_connection_client)
                await trio.sleep(0.2)
                load.stop.set()
        assert load.ok > 0 and load.failed == []
        assert "-n 2" in server.log()
        server.proc.send_signal(signal.SIGTERM)
        with trio.fail_after(10):
            assert await server.proc.wait() == 0


# ----------------------------------------------------------------------------- systemd notify


@contextlib.asynccontextmanager
async def notify_socket(directory: Path) -> AsyncIterator[tuple[str, trio.MemoryReceiveChannel[str]]]:
    """A fake systemd: a datagram socket; every message received goes into the channel."""
    path = str(directory / "notify.sock")
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_DGRAM)
    await sock.bind(path)
    send, receive = trio.open_memory_channel[str](1000)

    async def pump() -> None:
        while True:
            await send.send((await sock.recv(4096)).decode())

    with sock:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump)
            yield path, receive
            nursery.cancel_scope.cancel()


async def next_state(messages: trio.MemoryReceiveChannel[str], *, skip: str = "WATCHDOG=1\n") -> str:
    with trio.fail_after(RESTART_TIMEOUT):
        while True:
            message = await messages.receive()
            if message != skip:
                return message


@pytest.mark.parametrize("count", ["1", "2"])
async def test_systemd_notify_protocol(tmp_path: Path, count: str) -> None:
    write_app(tmp_path, "v1")
    async with notify_socket(tmp_path) as (address, messages):
        env = {"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "200000"}  # a ping every 0.1 s
        async with running(tmp_path, "-n", count, env=env) as server:
            ready = await next_state(messages)
            assert ready == "READY=1\n"
            # READY only once serving: a request now succeeds, and every worker had said so
            load = Load(server.port)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(load.new_connection_client)
                await trio.sleep(0.1)
                load.stop.set()
            assert load.ok > 0 and load.failed == []
            server.pids |= pids(load.bodies)
            if count == "2":
                assert server.log().count(") is serving") == 2
            # the watchdog pings from the event loop, at half WATCHDOG_USEC
            with trio.fail_after(5):
                pings = 0
                while pings < 3:
                    pings += await messages.receive() == "WATCHDOG=1\n"
            server.proc.send_signal(signal.SIGHUP)
            if count == "2":
                reloading = await next_state(messages)
                lines = reloading.splitlines()
                assert lines[0] == "RELOADING=1"
                usec = int(next(line for line in lines if line.startswith("MONOTONIC_USEC=")).split("=")[1])
                assert abs(usec - time.clock_gettime_ns(time.CLOCK_MONOTONIC) / 1000) < 5e6  # CLOCK_MONOTONIC
                again = await next_state(messages)
                assert again.startswith("READY=1\nSTATUS=rolling restart done")
            else:
                await server.wait_for_log("SIGHUP: restarts are not supported")
            server.proc.send_signal(signal.SIGTERM)
            stopping = await next_state(messages)
            assert stopping.startswith("STOPPING=1\n")
            with trio.fail_after(RESTART_TIMEOUT):
                assert await server.proc.wait() == 0
        log = server.log()
    assert "Traceback" not in log
    # NOTIFY_SOCKET was the main process's alone: no worker sent READY=1 of its own
    leftover = []
    while True:
        try:
            leftover.append(messages.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel):
            break
    assert not [m for m in leftover if m.startswith("READY=1")]


def test_notifier_reads_and_unsets_the_environment() -> None:
    from trio_rack.server.systemd import Notifier

    environ = {"NOTIFY_SOCKET": "@abstract", "WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "42", "OTHER": "x"}
    notifier = Notifier.from_environ(environ, pid=42)
    assert (notifier.address, notifier.watchdog_interval) == ("@abstract", 1.5)
    assert environ == {"OTHER": "x"}
    other = Notifier.from_environ({"NOTIFY_SOCKET": "/run/n", "WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "7"}, pid=42)
    assert other.enabled and other.watchdog_interval is None  # the watchdog is someone else's
    assert not Notifier.from_environ({}).enabled
    Notifier(None).ready()  # not under systemd: a no-op, never an error
    Notifier("/nonexistent/socket").ready()  # a socket that is gone: dropped, never raises
