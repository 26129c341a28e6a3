"""Overload flags: ``--backlog`` (the listen backlog) and the "max connections reached" log line.

The backlog is read back from the kernel with ``ss -ltn`` (its Send-Q column is a listening
socket's backlog).  Everything binds 127.0.0.1 port 0.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

import trio_rack
from e2e_support import wait_until
from trio_rack import Limits
from trio_rack.server.serve import _ConnectionSlots

SS = shutil.which("ss") or "/usr/bin/ss"
needs_ss = pytest.mark.skipif(not Path(SS).exists(), reason="ss (iproute2) is not installed")


async def app(env: dict[str, Any]) -> Any:
    return 200, {}, [b"ok"]


async def listen_backlog(port: int) -> int:
    result = await trio.run_process([SS, "-ltnH", f"sport = :{port}"], capture_stdout=True)
    fields = result.stdout.decode().split()
    assert fields and fields[0] == "LISTEN", result.stdout
    return int(fields[2])  # State Recv-Q Send-Q: Send-Q is the backlog of a listening socket


@needs_ss
@pytest.mark.parametrize(("limits", "expected"), [(Limits(backlog=7), 7), (None, 2048)])
async def test_backlog_sets_the_listen_backlog(nursery: trio.Nursery, limits: Limits | None, expected: int) -> None:
    binds = await nursery.start(
        functools.partial(trio_rack.serve, app, bind="http://127.0.0.1:0", limits=limits, access_log=False)
    )
    assert await listen_backlog(binds[0].port) == expected


@needs_ss
async def test_backlog_flag_under_the_supervisor(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text("async def app(env):\n    return 200, {}, [b'ok']\n")
    argv = [sys.executable, "-m", "trio_rack", "serve", "-n", "2", "--backlog", "9", "-b", "http://127.0.0.1:0"]
    proc = await trio.lowlevel.open_process(argv, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        banner = b""
        with trio.fail_after(20):
            while not (match := re.search(rb"listening on \S+:(\d+)\n", banner)):
                chunk = await proc.stdout.receive_some(4096)
                assert chunk
                banner += chunk
        assert await listen_backlog(int(match.group(1))) == 9
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        with trio.move_on_after(10):
            await proc.wait()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await proc.stdout.aclose()  # type: ignore[union-attr]


async def test_max_connections_reached_is_logged_once(nursery: trio.Nursery, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="trio_rack")
    binds = await nursery.start(
        functools.partial(
            trio_rack.serve, app, bind="http://127.0.0.1:0", limits=Limits(max_connections=2), access_log=False
        )
    )
    port = binds[0].port
    with trio.fail_after(10):
        held = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(4)]  # 2 served, 2 queued
        await wait_until(lambda: "max connections reached" in caplog.text, poll=0.01)  # the server's task logs
        # a queued connection is served once one closes ...
        await held.pop(0).aclose()
        await held[1].send_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")  # the first queued
        assert (await held[1].receive_some(100)).startswith(b"HTTP/1.1 200 ")
        # ... which fills the slots again, within the same second: no second line
        await trio.sleep(0.1)
    for stream in held:
        await stream.aclose()
    lines = [r for r in caplog.records if "max connections reached" in r.getMessage()]
    assert len(lines) == 1
    assert lines[0].getMessage() == "max connections reached (2 open): not accepting until one closes"


async def test_max_connections_line_is_rate_limited(
    autojump_clock: trio.abc.Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="trio_rack")
    slots = _ConnectionSlots(1)
    slots.acquire_nowait()
    for delay in (0, 0.3, 0.6, 0.5, 0.1, 1.5):  # at 0, 0.3, 0.9 | 1.4, 1.5 | 3.0
        await trio.sleep(delay)
        with pytest.raises(trio.WouldBlock):
            slots.acquire_nowait()
    assert caplog.text.count("max connections reached") == 3
    slots.release()
    slots.acquire_nowait()  # a free slot: taken, nothing logged
    assert caplog.text.count("max connections reached") == 3
