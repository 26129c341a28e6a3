"""What a streamed response keeps while its body is sent (issue #12 point 4: memory per open stream).

A streamed response may outlive its app call by minutes (an event stream, a long poll), and
10,000 of them are 10,000 of whatever each keeps.  These tests pin what is let go early — and
that everything an app can still reach stays whole:

* env: released before the body is sent when nothing but the exchange holds it and nothing
  at the end needs it (no access log, no ``rack.response_finished`` callback); kept when the
  body (or anything else) holds it, when a callback is registered, when the access log is on.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio
import trio.lowlevel
import trio.testing

from trio_rack import Limits
from trio_rack.state import ServerState
from trio_rack.testing import memory_connection


class _Marker:
    """Something an app puts in env, to see (by weak reference) how long env lives."""


def _marking_app(seen: list[bool | None], *, body_holds_env: bool = False) -> Any:
    """An app whose streamed body records, at its second chunk, whether env was still alive
    (True), gone (False) — or, with ``body_holds_env``, what it reads from env (kept)."""

    async def app(env: dict[str, Any]) -> tuple[int, dict[str, str], AsyncIterator[bytes]]:
        marker = env["test.marker"] = _Marker()
        ref = weakref.ref(marker)
        del marker

        async def body() -> AsyncIterator[bytes]:  # holds no env: only the weak reference
            yield b"first,"
            await trio.lowlevel.checkpoint()
            seen.append(ref() is not None)
            yield b"second,"

        async def body_with_env() -> AsyncIterator[bytes]:
            async for chunk in body():
                yield chunk
            yield env["PATH_INFO"].encode()

        return 200, {"content-type": "text/plain"}, body_with_env() if body_holds_env else body()

    return app


async def test_env_released_while_a_body_nobody_else_holds_streams(protocol: str) -> None:
    seen: list[bool | None] = []
    async with memory_connection(_marking_app(seen), protocol=protocol) as client:
        response = await client.request("GET", "/s")
        assert response.status == 200
        assert response.body == b"first,second,"
        assert seen == [False]  # gone before the body's second chunk
        again = await client.request("GET", "/s")  # the connection goes on as before
        assert again.body == b"first,second,"


async def test_env_kept_while_the_body_holds_it(protocol: str) -> None:
    seen: list[bool | None] = []
    async with memory_connection(_marking_app(seen, body_holds_env=True), protocol=protocol) as client:
        response = await client.request("GET", "/kept")
        assert response.status == 200
        assert response.body == b"first,second,/kept"
    assert seen == [True]


async def test_env_kept_for_a_response_finished_callback(protocol: str) -> None:
    seen: list[bool | None] = []
    finished: list[tuple[Any, ...]] = []
    inner = _marking_app(seen)

    async def app(env: dict[str, Any]) -> Any:
        env["rack.response_finished"].append(
            lambda e, status, headers, error: finished.append((e["PATH_INFO"], type(e["test.marker"]), status, error))
        )
        return await inner(env)

    async with memory_connection(app, protocol=protocol) as client:
        response = await client.request("GET", "/cb")
        assert response.body == b"first,second,"
    assert seen == [True]
    assert finished == [("/cb", _Marker, 200, None)]


async def test_env_kept_for_the_access_log(caplog: pytest.LogCaptureFixture) -> None:
    seen: list[bool | None] = []
    state = ServerState(_marking_app(seen), Limits(), access_log=True)
    with caplog.at_level(logging.INFO, logger="trio_rack.access"):
        async with memory_connection(None, state=state) as client:
            response = await client.request("GET", "/logged?q=1")
            assert response.body == b"first,second,"
    assert seen == [True]
    lines = [r.getMessage() for r in caplog.records if r.name == "trio_rack.access"]
    assert any("/logged?q=1" in line and " 200 " in line for line in lines), lines


async def test_env_kept_by_an_app_that_holds_it_elsewhere(protocol: str) -> None:
    """Held by the app outside the body (a registry of open streams, say): kept, and its
    callables are broken at the end as for any request (no reference cycle, a clear error)."""
    seen: list[bool | None] = []
    inner = _marking_app(seen)
    registry: list[dict[str, Any]] = []

    async def app(env: dict[str, Any]) -> Any:
        registry.append(env)
        return await inner(env)

    async with memory_connection(app, protocol=protocol) as client:
        assert (await client.request("GET", "/")).body == b"first,second,"
    assert seen == [True]
    assert isinstance(registry[0]["test.marker"], _Marker)
    with pytest.raises(RuntimeError, match="this request is over"):
        registry[0]["rack.early_hints"]({})


async def test_a_request_head_the_app_kept_stays_whole(protocol: str) -> None:
    """env goes, but a head the app kept (``trio_rack.request_head``) keeps its headers and query."""
    kept: list[Any] = []
    seen: list[bool | None] = []
    inner = _marking_app(seen)

    async def app(env: dict[str, Any]) -> Any:
        kept.append(env["trio_rack.request_head"])
        return await inner(env)

    async with memory_connection(app, protocol=protocol) as client:
        response = await client.request("GET", "/h?x=1", headers=[("x-probe", "yes")])
        assert response.body == b"first,second,"
    assert seen == [False]  # env itself was let go
    head = kept[0]
    assert head.path == b"/h" and head.query == b"x=1"
    assert (b"x-probe", b"yes") in list(head.headers)


async def test_a_request_deadline_after_env_was_let_go_still_logs_method_and_path(
    autojump_clock: trio.abc.Clock, caplog: pytest.LogCaptureFixture
) -> None:
    """The deadline's log line reads the head's method and path: kept when env and the rest of
    the head went."""
    seen: list[bool | None] = []

    async def app(env: dict[str, Any]) -> Any:
        marker = env["test.marker"] = _Marker()
        ref = weakref.ref(marker)
        del marker

        async def body() -> AsyncIterator[bytes]:
            yield b"first,"
            await trio.lowlevel.checkpoint()
            seen.append(ref() is not None)
            await trio.sleep_forever()
            yield b"never"  # pragma: no cover

        return 200, {"content-type": "text/plain"}, body()

    with caplog.at_level(logging.INFO, logger="trio_rack.error"):
        async with memory_connection(app, limits=Limits(request_timeout=2.0)) as client:
            await client.stream.send_all(b"GET /slow?q=1 HTTP/1.1\r\nHost: a\r\n\r\n")
            data = b""
            while chunk := await client.stream.receive_some(65536):
                data += chunk
    assert seen == [False]
    assert b"first," in data and not data.endswith(b"0\r\n\r\n")  # aborted visibly
    assert any("request deadline passed" in r.getMessage() and "GET /slow" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("first", ["GET", "HEAD"])
async def test_a_switch_proposed_after_a_streamed_response_on_the_same_connection(
    http1_parser: str, first: str
) -> None:
    """While a streamed body is sent, h11's per-response proposals set is a shared empty one
    (connection.py's _NO_PROPOSALS); a real set is back by the time the next request may
    propose a switch (Upgrade, CONNECT) on the same keep-alive connection."""

    async def app(env: dict[str, Any]) -> Any:
        if env["PATH_INFO"] == "/s":

            async def body() -> AsyncIterator[bytes]:
                yield b"streamed"

            return 200, {"content-type": "text/plain"}, body()
        return 200, {"content-type": "text/plain"}, [env.get("HTTP_UPGRADE", "none").encode()]

    async with memory_connection(app, http1_parser=http1_parser) as client:
        for _ in range(2):
            response = await client.request(first, "/s")
            assert response.status == 200
            assert response.body == (b"streamed" if first == "GET" else b"")
            upgraded = await client.request("GET", "/u", headers=[("connection", "upgrade"), ("upgrade", "websocket")])
            assert upgraded.status == 200 and upgraded.body == b"websocket"
        assert (await client.request("GET", "/u")).body == b"none"  # and the connection goes on


async def test_a_body_is_still_closed_when_env_and_the_return_value_were_let_go(protocol: str) -> None:
    """With env let go the exchange drops the app's return value too: the body is closed all the
    same (from the validated response), once."""
    closed: list[str] = []
    seen: list[bool | None] = []

    class Body:
        def __init__(self, ref: Any) -> None:
            self.ref = ref
            self.chunks = [b"a", b"b"]

        def __aiter__(self) -> Body:
            return self

        async def __anext__(self) -> bytes:
            if len(self.chunks) == 1:
                seen.append(self.ref() is not None)
            if not self.chunks:
                raise StopAsyncIteration
            return self.chunks.pop(0)

        async def aclose(self) -> None:
            closed.append("aclose")

    async def app(env: dict[str, Any]) -> Any:
        marker = env["test.marker"] = _Marker()
        return 200, {"content-type": "text/plain"}, Body(weakref.ref(marker))

    async with memory_connection(app, protocol=protocol) as client:
        assert (await client.request("GET", "/")).body == b"ab"
        assert (await client.request("GET", "/")).body == b"ab"
    assert seen == [False, False]
    assert closed == ["aclose", "aclose"]


class _Headers(dict[str, str]):
    """A headers dict a weak reference can follow (a plain dict cannot be weakly referenced)."""


async def test_the_apps_headers_go_with_env(protocol: str) -> None:
    """The headers dict the app returned is kept only as a ``rack.response_finished``
    argument: with env let go (no callback can exist), it goes before the body is sent."""
    seen: list[bool] = []

    async def app(env: dict[str, Any]) -> Any:
        headers = _Headers({"content-type": "text/plain"})
        ref = weakref.ref(headers)

        async def body() -> AsyncIterator[bytes]:
            yield b"first,"
            await trio.lowlevel.checkpoint()
            seen.append(ref() is not None)
            yield b"second"

        return 200, headers, body()

    async with memory_connection(app, protocol=protocol) as client:
        response = await client.request("GET", "/")
        assert response.body == b"first,second"
        assert ("content-type", "text/plain") in response.headers
    assert seen == [False]


async def test_a_callback_registered_by_a_body_that_kept_only_the_list_runs(protocol: str) -> None:
    """A body that kept ``rack.response_finished`` (not env) and registers a callback while it
    is sent: env is kept for it (the list's reference count says so), and the callback runs."""
    finished: list[tuple[Any, ...]] = []

    async def app(env: dict[str, Any]) -> Any:
        callbacks = env["rack.response_finished"]
        headers = {"content-type": "text/plain"}

        async def body() -> AsyncIterator[bytes]:
            yield b"first,"
            callbacks.append(lambda e, status, h, error: finished.append((e["PATH_INFO"], status, h is headers, error)))
            yield b"second"

        return 200, headers, body()

    async with memory_connection(app, protocol=protocol) as client:
        assert (await client.request("GET", "/list")).body == b"first,second"
    assert finished == [("/list", 200, True, None)]


async def test_a_callback_registered_by_a_mounted_apps_body_runs(protocol: str) -> None:
    """``Builder.mount`` gives the mounted app a copy of env (``dict(env)``) that shares the
    callbacks list: a body that holds that copy and registers a callback while it is sent
    must see it run, though nothing holds the server's env itself."""
    from trio_rack import Builder

    finished: list[tuple[Any, ...]] = []

    async def mounted(env: dict[str, Any]) -> Any:
        async def body() -> AsyncIterator[bytes]:
            yield b"first,"
            env["rack.response_finished"].append(
                lambda e, status, headers, error: finished.append((e["PATH_INFO"], e["SCRIPT_NAME"], status))
            )
            yield b"second"

        return 200, {"content-type": "text/plain"}, body()

    async def fallback(env: dict[str, Any]) -> Any:
        return 404, {}, []

    app = Builder().mount("/m", mounted).run(fallback)
    async with memory_connection(app, protocol=protocol) as client:
        assert (await client.request("GET", "/m/x")).body == b"first,second"
    assert finished == [("/m/x", "", 200)]  # (the server's env: the mount's copy had /x and /m)


def test_reference_counts_that_do_not_count_let_nothing_go(monkeypatch: pytest.MonkeyPatch) -> None:
    """The calibration must fail safe: an interpreter whose ``sys.getrefcount`` does not follow
    the references (a constant, say) gets -1, and env is never let go early there."""
    import sys

    from trio_rack.app import exchange

    assert exchange._references_of_a_local() == exchange._ONLY_A_LOCAL > 0  # (this CPython counts)
    monkeypatch.setattr(sys, "getrefcount", lambda obj: 2)
    assert exchange._references_of_a_local() == -1
    monkeypatch.delattr(sys, "getrefcount")
    assert exchange._references_of_a_local() == -1
