"""The request cycle's shortcuts of branch s8-cut behave as the long ways did.

Each shortcut skips work whose outcome is already known: env's header caches read inline
(app/env.py), the ``content-length`` pair shared by length (app/response.py, compared with by
the httptools engine), ``Host`` values matched before (http1/strict.py), origin-form targets
without a call, and ``rack.errors`` without an ``__init__``.  These tests hold each to the
answer of the path it shortcuts: on every wire protocol where env is concerned, with cold and
warm caches, and with the invalid inputs still refused with the same messages.
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

import h11
import pytest

from trio_rack.app import response as response_module
from trio_rack.app.errors_sink import ErrorsSink
from trio_rack.app.response import length_field, prepare_response
from trio_rack.config import Limits
from trio_rack.http1 import strict
from trio_rack.testing import memory_connection

KEYS = ("HTTP_X_TOKEN", "HTTP_X_AUTH_USER", "HTTP_HOST", "SERVER_NAME", "SERVER_PORT", "HTTP_COOKIE")


async def env_app(env: dict[str, Any]) -> tuple[int, dict[str, str], list[bytes]]:
    seen = {key: env.get(key) for key in KEYS}
    seen["underscored"] = [k for k in env if "UNDER" in k]
    return 200, {"content-type": "application/json"}, [json.dumps(seen).encode()]


async def test_env_the_same_from_cold_and_warm_caches(protocol: str) -> None:
    # Names and values never seen by this process: the first request fills the caches
    # (the calls on a miss), the second reads them inline; env must not differ.
    token = uuid.uuid4().hex
    name = f"x-under-{token[:8]}"
    headers = [
        ("x-token", token),
        ("x-auth-user", "alice"),
        (name.replace("-", "_", 1), "spoof"),  # a name with "_": dropped, cached as "no key"
        ("cookie", f"a={token}"),
        ("cookie", "b=2"),
    ]
    async with memory_connection(env_app, protocol=protocol) as client:
        first = await client.request("GET", "/", headers=headers)
        second = await client.request("GET", "/", headers=headers)
    assert first.status == second.status == 200
    assert json.loads(first.body) == json.loads(second.body)
    seen = json.loads(second.body)
    assert seen["HTTP_X_TOKEN"] == token
    assert seen["HTTP_X_AUTH_USER"] == "alice"
    assert seen["underscored"] == []
    assert seen["HTTP_COOKIE"] == f"a={token}; b=2"
    assert seen["SERVER_NAME"] == "test" and seen["SERVER_PORT"] == "80"


@pytest.mark.parametrize("parser", ["h11", "httptools"])
async def test_env_host_cache_keeps_each_host_apart(parser: str) -> None:
    # the Host text is the cache's key with the scheme's port: another host is not served the
    # first one's name and port (HTTP/1: the memory HTTP/2 client always sends :authority "test")
    async with memory_connection(env_app, http1_parser=parser) as client:
        one = await client.request("GET", "/")
        client.h11.start_next_cycle()
        data = client.h11.send(h11.Request(method="GET", target="/", headers=[("host", "other.example:8080")]))
        await client.stream.send_all(data + client.h11.send(h11.EndOfMessage()))
        two = await client.read_response()
    assert (json.loads(one.body)["SERVER_NAME"], json.loads(one.body)["SERVER_PORT"]) == ("test", "80")
    assert (json.loads(two.body)["SERVER_NAME"], json.loads(two.body)["SERVER_PORT"]) == ("other.example", "8080")


def test_length_field_is_shared_and_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    assert length_field(13) == (b"content-length", b"13")
    assert length_field(13) is length_field(13)
    prepared = prepare_response((200, {}, [b"x" * 13]))
    assert prepared.headers[-1] is length_field(13)
    monkeypatch.setattr(response_module, "_LENGTH_FIELDS", {})
    monkeypatch.setattr(response_module, "_LENGTH_FIELDS_MAX", 3)
    for n in range(10):
        assert length_field(n) == (b"content-length", str(n).encode())
        assert len(response_module._LENGTH_FIELDS) <= 3
    assert prepare_response((200, {}, [b"ab", b"c"])).headers == [(b"content-length", b"3")]


@pytest.mark.parametrize("parser", ["h11", "httptools"])
async def test_lengths_on_one_connection(parser: str) -> None:
    # buffered responses of lengths seen and unseen, one connection: each content-length right
    # (the httptools engine compares the shared pair's value with the chunks' sum)
    async def app(env: dict[str, Any]) -> tuple[int, dict[str, str], list[bytes]]:
        n = int(env["QUERY_STRING"])
        return 200, {}, [b"y" * n]

    async with memory_connection(app, http1_parser=parser) as client:
        for n in (5, 13, 5, 700, 0, 13, 31337):
            got = await client.request("GET", f"/?{n}")
            assert got.status == 200
            assert got.body == b"y" * n
            assert dict(got.headers)["content-length"] == str(n)


@pytest.mark.parametrize("parser", ["h11", "httptools"])
async def test_bad_host_refused_after_good_ones(parser: str) -> None:
    async def app(env: dict[str, Any]) -> tuple[int, dict[str, str], list[bytes]]:
        return 200, {}, [b"ok"]

    async with memory_connection(app, http1_parser=parser) as client:
        assert (await client.request("GET", "/")).status == 200  # "test": matched, then remembered
        assert (await client.request("GET", "/")).status == 200
        await client.stream.send_all(b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n")
        raw = b""
        while b"\r\n\r\n" not in raw:
            raw += await client.stream.receive_some(65536)
    assert raw.startswith(b"HTTP/1.1 400 ")


def _request(target: bytes, host: bytes = b"example.com") -> h11.Request:
    return h11.Request(method=b"GET", target=target, headers=[(b"host", host)])


def test_check_request_verdicts_with_warm_host_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    limits = Limits()
    monkeypatch.setattr(strict, "_GOOD_HOSTS", set())
    monkeypatch.setattr(strict, "_GOOD_HOSTS_MAX", 2)
    assert strict.check_request(_request(b"/"), limits) is None
    assert b"example.com" in strict._GOOD_HOSTS
    assert strict.check_request(_request(b"/"), limits) is None  # from the set
    for host in (b"a.example", b"b.example", b"c.example"):
        assert strict.check_request(_request(b"/", host), limits) is None
        assert len(strict._GOOD_HOSTS) <= 2
    # h11 refuses a space in Host itself; a value h11 lets through but HOST_RE does not:
    assert strict.check_request(_request(b"/", b"a@b"), limits) == (400, "invalid Host header")
    assert b"a@b" not in strict._GOOD_HOSTS
    # the targets the shortcut sends on to target_problem, answered as before
    assert strict.check_request(_request(b"/a#frag"), limits) == (400, "fragment in the request target")
    assert strict.check_request(_request(b"http://example.com/x"), limits) is None
    assert strict.check_request(_request(b"http://u@example.com/x"), limits) == (
        400,
        "invalid authority in an absolute-form target",
    )
    assert strict.check_request(_request(b"*"), limits) == (400, "asterisk-form is only for OPTIONS")


def test_errors_sink_without_init(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="trio_rack.app")
    fresh = ErrorsSink()
    fresh.flush()  # nothing written: nothing logged, no AttributeError
    assert [r.getMessage() for r in caplog.records if r.name == "trio_rack.app"] == []
    sink = ErrorsSink()
    assert sink.write("one\ntw") == 6
    sink.write("o\n")
    sink.write("partial")
    sink.flush()
    sink.flush()  # once only
    assert [r.getMessage() for r in caplog.records if r.name == "trio_rack.app"] == ["one", "two", "partial"]
    with pytest.raises(TypeError, match="rack.errors takes str"):
        ErrorsSink().write(b"bytes")  # type: ignore[arg-type]


@pytest.mark.parametrize("parser", ["h11", "httptools"])
async def test_long_host_values_are_not_kept(parser: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Host values are client-chosen and may be as long as the head (32 KiB): a set of 1,024
    # of them would pin some 32 MiB a process.  Only short ones are remembered; a long one is
    # matched each time, and still answered (good) or refused (bad) as before.
    monkeypatch.setattr(strict, "_GOOD_HOSTS", set())

    async def app(env: dict[str, Any]) -> tuple[int, dict[str, str], list[bytes]]:
        return 200, {}, [b"ok"]

    async with memory_connection(app, http1_parser=parser) as client:
        for i in range(20):
            host = b"%02d" % i + b"a" * 20000
            await client.stream.send_all(b"GET / HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
            raw = b""
            while not raw.endswith(b"ok"):
                raw += await client.stream.receive_some(65536)
            assert raw.startswith(b"HTTP/1.1 200 ")
        assert not any(len(h) > 256 for h in strict._GOOD_HOSTS)
        await client.stream.send_all(b"GET / HTTP/1.1\r\nHost: " + b"a" * 20000 + b"@b\r\n\r\n")
        raw = b""
        while b"\r\n\r\n" not in raw:
            raw += await client.stream.receive_some(65536)
    assert raw.startswith(b"HTTP/1.1 400 ")
