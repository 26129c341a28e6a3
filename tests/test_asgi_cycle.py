"""The ASGI request cycle's cheap paths (asgi/http.py) keep every behaviour they replace.

The cycle parks the request task itself instead of waiting on an event, registers a
``rack.response_finished`` callback only for streamed responses, waits for a disconnect in one
cancel scope instead of a nursery with two waiter tasks, and decodes repeated header pairs
from a cache.  These tests pin what each of those must still do, over the real connection
loop on an in-memory connection (both protocols), with trio's autojump clock for the waits.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio

from trio_rack import Limits
from trio_rack.asgi import ASGIAdapter
from trio_rack.testing import memory_connection

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


class Recording:
    """A rack app around :class:`ASGIAdapter` that records how many ``rack.response_finished``
    callbacks the adapter left in each request's env (read after the adapter returned)."""

    trio_rack_request_nursery = True

    def __init__(self, app: Any) -> None:
        self.adapter = ASGIAdapter(app)
        self.envs: list[dict[str, Any]] = []

    async def __call__(self, env: dict[str, Any]) -> Any:
        self.envs.append(env)
        return await self.adapter(env)


async def test_buffered_response_has_no_finished_callback_a_streamed_one_has_one(protocol: str) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        if scope["path"] == "/stream":
            await send({"type": "http.response.body", "body": b"one ", "more_body": True})
            await trio.sleep(0.1)  # the server takes the head before the last part
            await send({"type": "http.response.body", "body": b"two"})
        else:
            await send({"type": "http.response.body", "body": b"whole"})

    recording = Recording(app)
    async with memory_connection(recording, protocol=protocol) as client:
        whole = await client.request("GET", "/")
        streamed = await client.request("GET", "/stream")
    assert (whole.status, whole.body) == (200, b"whole")
    assert (streamed.status, streamed.body) == (200, b"one two")
    counts = [len(env["rack.response_finished"]) for env in recording.envs]
    assert counts == [0, 1]


async def test_receive_waiting_for_disconnect_returns_when_a_streamed_response_completes(
    protocol: str, autojump_clock: Any
) -> None:
    """A task of the app waiting in receive() (after the request body) gets http.disconnect
    once the streamed response is complete: the completion cancels its wait."""
    got: list[tuple[float, dict[str, Any]]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        assert (await receive())["type"] == "http.request"

        async def watch() -> None:
            message = await receive()
            got.append((trio.current_time(), message))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"a", "more_body": True})
            await trio.sleep(5)
            await send({"type": "http.response.body", "body": b"b"})
        got.append((trio.current_time(), {"type": "app done"}))

    async with memory_connection(ASGIAdapter(app), protocol=protocol) as client:
        start = trio.current_time()
        with trio.fail_after(30):
            response = await client.request("GET", "/")
    assert (response.status, response.body) == (200, b"ab")
    assert [message for _, message in got] == [{"type": "http.disconnect"}, {"type": "app done"}]
    assert got[0][0] - start >= 5  # not before the response was complete


async def test_receive_waiting_for_disconnect_in_a_buffered_response_background(
    protocol: str, autojump_clock: Any
) -> None:
    """After a buffered response, receive() returns http.disconnect at once, again and again."""
    got: list[dict[str, Any]] = []
    done = trio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
        for _ in range(3):
            got.append(await receive())
        done.set()

    async with memory_connection(ASGIAdapter(app), protocol=protocol) as client:
        response = await client.request("GET", "/")
        with trio.fail_after(1):
            await done.wait()
    assert response.body == b"ok"
    assert got == [{"type": "http.disconnect"}] * 3


async def test_request_deadline_while_waiting_for_the_head_gives_503_and_cancels_the_app(
    autojump_clock: Any,
) -> None:
    """The request task parked for the head is cancelled by the request deadline (the abort
    path of its park): 503, the app cancelled, and the next request on the connection served."""
    cancelled: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["path"] == "/slow":
            try:
                await trio.sleep_forever()
            except trio.Cancelled:
                cancelled.append(scope["path"])
                raise
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"fast"})

    async with memory_connection(ASGIAdapter(app), limits=Limits(request_timeout=3)) as client:
        slow = await client.request("GET", "/slow")
    async with memory_connection(ASGIAdapter(app), limits=Limits(request_timeout=3)) as client:
        fast = await client.request("GET", "/")
    assert slow.status == 503
    assert cancelled == ["/slow"]
    assert (fast.status, fast.body) == (200, b"fast")


async def test_header_pairs_decode_alike_whether_cached_or_not(protocol: str) -> None:
    """Tuples of bytes (cached), lists and bytearrays (not cached) give the same headers,
    names lower-cased, repeats kept; a str pair is still the app's error (500) after the
    same pair in bytes was cached."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        kind = scope["path"]
        if kind == "/tuples":
            headers: Any = [(b"X-Thing", b"1"), (b"x-thing", b"2"), (b"content-type", b"text/plain")]
        elif kind == "/lists":
            headers = [[b"X-Thing", b"1"], [bytearray(b"x-thing"), b"2"], [b"content-type", bytearray(b"text/plain")]]
        else:
            headers = [("x-thing", "1")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"h"})

    async with memory_connection(ASGIAdapter(app), protocol=protocol) as client:
        first = await client.request("GET", "/tuples")
        again = await client.request("GET", "/tuples")
        lists = await client.request("GET", "/lists")
        bad = await client.request("GET", "/str")
    for response in (first, again, lists):
        assert response.status == 200
        things = [value for name, value in response.headers if name == "x-thing"]
        assert things in (["1", "2"], ["1, 2"]), response.headers
        assert response.header("content-type") == "text/plain"
    assert bad.status == 500


async def test_empty_request_message_is_a_cancel_point_and_not_lost(protocol: str, autojump_clock: Any) -> None:
    """receive() of a bodyless request: inside a cancelled scope it raises Cancelled (a cancel
    point), and the message it did not deliver is still the next receive()'s (it used to be
    lost, and the next receive() waited for a disconnect that never came)."""
    got: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        with trio.CancelScope() as cancelled:
            cancelled.cancel()
            got.append(await receive())
        got.append(("cancelled", cancelled.cancelled_caught))
        got.append(await receive())
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async with memory_connection(ASGIAdapter(app), protocol=protocol) as client:
        with trio.fail_after(30):
            response = await client.request("GET", "/")
    assert response.body == b"ok"
    assert got == [("cancelled", True), {"type": "http.request", "body": b"", "more_body": False}]


async def test_every_receive_waiting_for_the_disconnect_is_woken_when_the_response_completes() -> None:
    """Two tasks of one app waiting in ``receive()`` both get ``http.disconnect`` (a single slot
    for the waiting scope woke only the last one)."""
    import trio.testing

    from trio_rack.asgi.http import HTTPCycle

    env: dict[str, Any] = {"rack.input": None, "CONTENT_LENGTH": "0", "rack.response_finished": []}
    cycle = HTTPCycle(env, {"http_version": "1.1"})
    assert (await cycle.receive())["type"] == "http.request"  # the empty body
    woken: list[tuple[int, str]] = []

    async def wait(n: int) -> None:
        woken.append((n, (await cycle.receive())["type"]))

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(wait, 1)
            nursery.start_soon(wait, 2)
            await trio.testing.wait_all_tasks_blocked()
            cycle._mark_complete()
    assert sorted(woken) == [(1, "http.disconnect"), (2, "http.disconnect")]


def test_header_pairs_of_bytearrays_are_decoded_as_before() -> None:
    """ASGI allows any bytes-like header names and values; the decoded-pair cache must not turn
    an unhashable pair into an error (nor keep long values)."""
    from trio_rack.asgi.http import _DECODED, _rack_headers

    headers = _rack_headers(
        [(bytearray(b"X-One"), b"1"), (b"x-two", bytearray(b"2")), [b"x-three", b"3"], (b"set-cookie", b"v" * 300)],
        where="http.response.start",
    )
    assert headers == {"x-one": "1", "x-two": "2", "x-three": "3", "set-cookie": "v" * 300}
    assert (b"set-cookie", b"v" * 300) not in _DECODED
