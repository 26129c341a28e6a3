"""Fixtures shared by the test files (plain helper functions live in ``e2e_support`` and
``process_support``; this file holds only what pytest injects by name).

- ``tls_files``: one throwaway CA and a localhost/127.0.0.1/::1 certificate as PEM files, made
  once per session (nothing writes to them; every TLS test may share them).
- ``env``: the environment for a child ``python -m trio_rack`` (see
  ``process_support.subprocess_env``); a file that needs more (``HOME``) overrides it.
- ``redis_server``: a private redis-server (skipped where none is installed).
- ``tls_redis_server``: the same, speaking TLS only (``rediss://``).
- ``bus_url`` / ``bus``: a broadcast bus over each backend, memory, ``redis_server`` and
  ``tls_redis_server``, for the broadcast tests.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trustme

from broadcast_support import REDIS_SERVER, RedisServer
from e2e_support import TLSFiles, make_tls_files
from process_support import subprocess_env
from trio_rack import broadcast
from trio_rack.testing import PROTOCOLS


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return subprocess_env(tmp_path)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A private redis-server on a free port under ``tmp_path``, stopped (by PID) afterwards."""
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed (.ci/run installs it)")
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def tls_redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A private redis-server speaking TLS only, its certificate for 127.0.0.1 from a fresh
    trustme CA; its ``url`` is ``rediss://127.0.0.1:PORT/0?ssl_ca_certs=…``."""
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed (.ci/run installs it)")
    server = RedisServer(tmp_path, tls=trustme.CA())
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["memory", "redis", "rediss"])
def bus_url(request: pytest.FixtureRequest) -> str:
    """``rediss``: the same contract over TLS (more in test_broadcast_tls.py)."""
    if request.param == "memory":
        return f"memory://test-{uuid.uuid4().hex}"
    name = "tls_redis_server" if request.param == "rediss" else "redis_server"
    server: RedisServer = request.getfixturevalue(name)
    return server.url


@pytest.fixture
async def bus(bus_url: str) -> AsyncIterator[broadcast.Bus]:
    async with broadcast.connect(bus_url) as bus:
        yield bus


@pytest.fixture(params=PROTOCOLS)
def protocol(request: pytest.FixtureRequest) -> str:
    """Each wire protocol ``trio_rack.testing`` speaks: contract tests taking it run on every one."""
    return str(request.param)
