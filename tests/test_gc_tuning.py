"""serve() tunes the cyclic garbage collector while it runs, and gives the process back its own.

Why it does (full collections over every open connection's objects took more of the core than
serving at 10,000 streams) is in :mod:`trio_rack.server.gc_tuning`; these tests pin what it
does: thresholds and the frozen start-up heap while serving, the previous state after, the
opt-out, and several servers in one process sharing one setting.
"""

from __future__ import annotations

import functools
import gc
from pathlib import Path
from typing import Any

import pytest
import trio

import trio_rack
from e2e_support import read_until_eof, split_head
from process_support import running, subprocess_env
from trio_rack.server.gc_tuning import SERVING_THRESHOLDS, serving_gc


async def app(env: dict[str, Any]) -> Any:
    return 200, {"content-type": "text/plain"}, [b"ok"]


async def _get(port: int) -> tuple[int, bytes]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data, _ = await read_until_eof(stream)
    status, _, body = split_head(data)
    return status, body


async def _serving(nursery: trio.Nursery, stop: trio.Event, **kwargs: Any) -> int:
    serving = functools.partial(
        trio_rack.serve, app, bind="http://127.0.0.1:0", access_log=False, shutdown_trigger=stop, **kwargs
    )
    binds = await nursery.start(serving)
    return int(binds[0].port)


async def test_serve_tunes_the_collector_while_serving_and_restores_it() -> None:
    before, frozen_before = gc.get_threshold(), gc.get_freeze_count()
    assert before != SERVING_THRESHOLDS  # (else this test could not tell)
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        port = await _serving(nursery, stop)
        assert gc.get_threshold() == SERVING_THRESHOLDS
        assert gc.get_freeze_count() > frozen_before  # the start-up heap is out of every collection
        assert await _get(port) == (200, b"ok")
        stop.set()
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == frozen_before


async def test_tune_gc_false_leaves_the_collector_alone() -> None:
    before, frozen_before = gc.get_threshold(), gc.get_freeze_count()
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        port = await _serving(nursery, stop, tune_gc=False)
        assert gc.get_threshold() == before
        assert gc.get_freeze_count() == frozen_before
        assert await _get(port) == (200, b"ok")
        stop.set()


def test_nested_users_share_one_setting_and_the_last_restores_it() -> None:
    before, frozen_before = gc.get_threshold(), gc.get_freeze_count()
    first = serving_gc()
    second = serving_gc()
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)
    assert gc.get_threshold() == SERVING_THRESHOLDS  # the other server still runs
    second.__exit__(None, None, None)
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == frozen_before


def test_a_program_that_froze_objects_itself_keeps_them_frozen() -> None:
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        assert frozen > 0
        with serving_gc():
            assert gc.get_threshold() == SERVING_THRESHOLDS
        # not unfrozen behind the program's back (a frozen object may still die by refcount)
        assert gc.get_freeze_count() >= frozen - 100
    finally:
        gc.unfreeze()


_THRESHOLD_APP = '''
import gc


async def app(env):
    return 200, {"content-type": "text/plain"}, [repr(gc.get_threshold()).encode()]
'''


@pytest.mark.parametrize(("flags", "expected"), [([], SERVING_THRESHOLDS), (["--no-gc-tuning"], gc.get_threshold())])
async def test_the_cli_tunes_the_collector_unless_no_gc_tuning(
    flags: list[str], expected: tuple[int, int, int], tmp_path: Path
) -> None:
    """``trio-rack serve`` tunes it like ``serve()``; ``--no-gc-tuning`` leaves CPython's defaults."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "thresholds.py").write_text(_THRESHOLD_APP)
    env = subprocess_env(tmp_path)
    args = ["thresholds.py", "-b", "http://127.0.0.1:0", "--no-access-log", *flags]
    async with running(args, cwd=project, env=env) as server:
        status, body = await _get(server.port())
    assert status == 200
    assert body.decode() == repr(expected)
