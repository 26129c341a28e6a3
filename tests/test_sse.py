"""Server-Sent Events: framing (pure), then real streams read by ``curl -N`` and parsed here
with the WHATWG event-stream parsing rules, then the clock page in headless Chromium."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio

from cdp import chromium_available, launch_chromium
from e2e_support import (
    curl,
    load_example,
    open_client,
    read_until,
    read_until_eof,
    start_server,
)
from trio_rack import Limits, sse

# --------------------------------------------------------------------------- the parser


@dataclass
class Event:
    type: str
    data: str
    id: str


@dataclass
class Parsed:
    events: list[Event] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    retry: int | None = None


def parse_event_stream(text: str) -> Parsed:
    """The HTML spec's "event stream interpretation", as a browser does it."""
    out = Parsed()
    data: list[str] = []
    event_type = ""
    last_id = ""
    for line in re.split(r"\r\n|\r|\n", text):
        if line == "":
            if data:
                out.events.append(Event(event_type or "message", "\n".join(data), last_id))
            data, event_type = [], ""
            continue
        if line.startswith(":"):
            out.comments.append(line[1:].lstrip(" "))
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            data.append(value)
        elif name == "event":
            event_type = value
        elif name == "id" and "\0" not in value:
            last_id = value
        elif name == "retry" and value.isdigit():
            out.retry = int(value)
    return out


# ------------------------------------------------------------------------------ framing


def test_multi_line_data_becomes_one_data_line_per_line() -> None:
    raw = sse.format_event("one\ntwo\r\nthree\rfour", event="note", id="7")
    assert raw == b"event: note\nid: 7\ndata: one\ndata: two\ndata: three\ndata: four\n\n"
    (event,) = parse_event_stream(raw.decode()).events
    assert (event.type, event.data, event.id) == ("note", "one\ntwo\nthree\nfour", "7")


def test_framing_edge_cases() -> None:
    assert sse.format_event("") == b"data: \n\n"  # an empty message is still dispatched
    assert parse_event_stream(sse.format_event("").decode()).events[0].data == ""
    assert parse_event_stream(sse.format_event(" leading space").decode()).events[0].data == " leading space"
    assert sse.format_event(retry=2500) == b"retry: 2500\n\n"
    assert sse.format_comment("a\nb") == b": a\n: b\n\n"
    assert sse.format_event("é✓") == "data: é✓\n\n".encode()
    for bad in ({"event": "a\nb"}, {"id": "1\r2"}, {"id": "a\0b"}, {"retry": -1}):
        with pytest.raises(ValueError):
            sse.format_event("x", **bad)
    with pytest.raises(ValueError):
        sse.format_event()


# ---------------------------------------------------------------------- over the wire


async def test_clock_over_curl_with_retry_ids_and_last_event_id() -> None:
    app = load_example("sse_clock").make_app(interval=0.02, ticks=5)
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            bind = await start_server(nursery, app)
            result = await curl("-N", "-i", f"http://127.0.0.1:{bind.port}/events")
            status, headers, body = result.response()
            assert status == 200
            assert headers["content-type"] == ["text/event-stream; charset=utf-8"]
            assert headers["cache-control"] == ["no-cache"]
            parsed = parse_event_stream(body.decode())
            assert parsed.retry == 1000
            assert [(e.type, e.id) for e in parsed.events] == [("tick", str(n)) for n in range(1, 6)]
            assert all(re.fullmatch(r"\d\d:\d\d:\d\d", e.data) for e in parsed.events)

            # a reconnecting EventSource sends Last-Event-ID: the count resumes after it
            resumed = await curl("-N", "-H", "Last-Event-ID: 3", f"http://127.0.0.1:{bind.port}/events")
            assert [e.id for e in parse_event_stream(resumed.stdout.decode()).events] == ["4", "5"]

            page = await curl(f"http://127.0.0.1:{bind.port}/")
            assert b"new EventSource" in page.stdout
            head = await curl("-I", f"http://127.0.0.1:{bind.port}/events")
            assert head.stdout.startswith(b"HTTP/1.1 200")
            nursery.cancel_scope.cancel()


async def test_heartbeats_and_multi_line_data_on_the_wire() -> None:
    async def app(env: dict[str, Any]) -> Any:
        async def quiet_then_talk(stream: sse.EventStream) -> None:
            await trio.sleep(0.35)  # silence: the heartbeat fills it
            await stream.send("first line\nsecond line", event="multi")

        return sse.response(env, quiet_then_talk, heartbeat=0.1)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            bind = await start_server(nursery, app)
            result = await curl("-N", f"http://127.0.0.1:{bind.port}/")
            parsed = parse_event_stream(result.stdout.decode())
            assert parsed.comments.count("heartbeat") >= 2
            assert [(e.type, e.data) for e in parsed.events] == [("multi", "first line\nsecond line")]
            nursery.cancel_scope.cancel()


async def test_stream_ends_cleanly_when_the_client_leaves(caplog: pytest.LogCaptureFixture) -> None:
    left = trio.Event()

    async def app(env: dict[str, Any]) -> Any:
        async def endless(stream: sse.EventStream) -> None:
            try:
                n = 0
                while True:
                    n += 1
                    await stream.send(str(n), id=str(n))
                    await trio.sleep(0.02)
            finally:
                left.set()

        return sse.response(env, endless)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            bind = await start_server(nursery, app, limits=Limits(liveness_interval=0.05))
            client = await open_client(bind)
            await client.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            await read_until(client, b"data: 2\n\n")
            await client.aclose()  # the client hangs up mid-stream
            await left.wait()  # the server cancelled the handler; its finally ran
            nursery.cancel_scope.cancel()
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]


async def test_a_failing_handler_aborts_the_stream_visibly(caplog: pytest.LogCaptureFixture) -> None:
    async def app(env: dict[str, Any]) -> Any:
        async def broken(stream: sse.EventStream) -> None:
            await stream.send("before")
            raise RuntimeError("handler bug")

        return sse.response(env, broken, heartbeat=None)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            bind = await start_server(nursery, app)
            client = await open_client(bind)
            await client.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            data, _ = await read_until_eof(client)
            await client.aclose()
            nursery.cancel_scope.cancel()
    assert b"data: before" in data and not data.endswith(b"0\r\n\r\n")  # no terminating chunk
    assert "handler bug" in caplog.text  # the handler's own exception, not a wrapper group


@pytest.mark.skipif(not chromium_available(), reason="chromium is not installed (apt-get install chromium)")
async def test_clock_page_in_a_browser(tmp_path: Path) -> None:
    app = load_example("sse_clock").make_app(interval=0.05)
    with trio.fail_after(30):
        async with launch_chromium(tmp_path / "profile") as browser, trio.open_nursery() as nursery:
            bind = await start_server(nursery, app)
            page = await browser.new_page(f"http://127.0.0.1:{bind.port}/")
            status = await page.evaluate(
                """new Promise(resolve => {
                    const el = document.getElementById('status');
                    const check = () => el.textContent === 'tick #3' && resolve(el.textContent);
                    new MutationObserver(check).observe(el, {childList: true, characterData: true, subtree: true});
                    check();
                })"""
            )
            assert status == "tick #3"
            assert re.fullmatch(r"\d\d:\d\d:\d\d", await page.evaluate("document.getElementById('clock').textContent"))
            nursery.cancel_scope.cancel()
