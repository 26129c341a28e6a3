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
- ``protocol``: each wire protocol, HTTP/1 once per parser (``http1`` on h11,
  ``http1-httptools``, ``http2``); the value is the protocol name ``memory_connection`` takes.
- ``http1_parser``: "h11" and "httptools", forced on every HTTP/1 connection the testing helpers
  serve.  A module marked ``pytestmark = pytest.mark.http1_parsers`` runs each of its tests that
  does not take ``protocol`` on both parsers.  httptools (the ``test`` extra installs it) is
  skipped, loudly, only where it is missing.
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
from trio_rack.http1.httptools_engine import AVAILABLE as HTTPTOOLS_AVAILABLE
from trio_rack.testing import PROTOCOLS, _serve

#: The HTTP/1 parsers every HTTP/1 contract test runs on.
HTTP1_PARSERS = ("h11", "httptools")


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


def _force_http1_parser(monkeypatch: pytest.MonkeyPatch, parser: str) -> None:
    if parser == "httptools" and not HTTPTOOLS_AVAILABLE:
        pytest.skip("httptools is not installed (pip install -e '.[test]' installs it; CI has it)")
    monkeypatch.setattr(_serve, "HTTP1_PARSER_OVERRIDE", parser)


_PROTOCOL_PARAMS = [
    pytest.param((name, parser), id="http1" if parser == "h11" else f"http1-{parser}")
    for parser in HTTP1_PARSERS
    for name in PROTOCOLS
    if name == "http1"
] + [pytest.param((name, None), id=name) for name in PROTOCOLS if name != "http1"]


@pytest.fixture(params=_PROTOCOL_PARAMS)
def protocol(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each wire protocol ``trio_rack.testing`` speaks (HTTP/1 on each parser): contract tests
    taking it run on every one."""
    name, parser = request.param
    if parser is not None:
        _force_http1_parser(monkeypatch, parser)
    return str(name)


@pytest.fixture(params=HTTP1_PARSERS)
def http1_parser(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each HTTP/1 parser, forced on the HTTP/1 connections of ``trio_rack.testing``."""
    _force_http1_parser(monkeypatch, request.param)
    return str(request.param)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "http1_parsers: run each test (not taking `protocol`) on both HTTP/1 parsers")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """``http1_parsers``-marked tests that take neither ``protocol`` nor ``http1_parser`` get the latter."""
    if metafunc.definition.get_closest_marker("http1_parsers") is None:
        return
    if "protocol" in metafunc.fixturenames or "http1_parser" in metafunc.fixturenames:
        return
    metafunc.fixturenames.append("http1_parser")
    metafunc.parametrize("http1_parser", HTTP1_PARSERS, indirect=True)
