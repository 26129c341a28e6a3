"""A small Chrome DevTools Protocol client for driving headless Chromium from Trio tests.

Not a test module.  :func:`launch_chromium` starts Debian's ``/usr/bin/chromium`` headless with
a throwaway profile and ``--remote-debugging-port=0``; the browser picks a port and prints
"DevTools listening on ws://127.0.0.1:PORT/devtools/browser/ID" on stderr: the event we wait
for, and the address we use.  (It also writes port and path to ``DevToolsActivePort`` in the
profile, but a moment *after* that line: reading the file on the line's cue is a race, seen
under load.)  We then speak CDP over one websocket
(trio-websocket) in "flat" session mode: ``Target.createTarget`` opens a tab,
``Target.attachToTarget(flatten=True)`` gives a session id that later commands carry.

Only 127.0.0.1 is ever contacted: background networking, sync, component updates and proxies
are disabled, and pages are only navigated to the test server.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio
import trio_websocket

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")

__all__ = ["CHROMIUM", "Browser", "CDPError", "Page", "chromium_available", "launch_chromium"]


def chromium_available() -> bool:
    return shutil.which(CHROMIUM) is not None


class CDPError(Exception):
    """A CDP command failed, or a page threw."""


class Browser:
    """One CDP websocket to the browser; commands are matched to responses by id."""

    def __init__(self, ws: trio_websocket.WebSocketConnection) -> None:
        self._ws = ws
        self._ids = itertools.count(1)
        self._pending: dict[int, trio.MemorySendChannel[dict[str, Any]]] = {}
        self._waiters: list[tuple[str | None, str, trio.MemorySendChannel[dict[str, Any]]]] = []

    async def _dispatch(self) -> None:
        while True:
            try:
                raw = await self._ws.get_message()
            except trio_websocket.ConnectionClosed:
                return
            message = json.loads(raw)
            if "id" in message:
                channel = self._pending.pop(message["id"], None)
                if channel is not None:
                    channel.send_nowait(message)
                continue
            for waiter in list(self._waiters):
                session, method, channel = waiter
                if method == message.get("method") and session == message.get("sessionId"):
                    self._waiters.remove(waiter)
                    channel.send_nowait(message.get("params", {}))

    async def send(self, method: str, params: dict[str, Any] | None = None, *, session: str | None = None) -> Any:
        ident = next(self._ids)
        send, receive = trio.open_memory_channel[dict[str, Any]](1)
        self._pending[ident] = send
        message: dict[str, Any] = {"id": ident, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        await self._ws.send_message(json.dumps(message))
        reply = await receive.receive()
        if "error" in reply:
            raise CDPError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def expect_event(self, method: str, *, session: str | None = None) -> trio.MemoryReceiveChannel[dict[str, Any]]:
        """Subscribe *before* triggering: the returned channel gets the event's params once."""
        send, receive = trio.open_memory_channel[dict[str, Any]](1)
        self._waiters.append((session, method, send))
        return receive

    async def new_page(self, url: str) -> Page:
        """Open a tab, navigate to ``url`` and wait for its load event."""
        target = (await self.send("Target.createTarget", {"url": "about:blank"}))["targetId"]
        session = (await self.send("Target.attachToTarget", {"targetId": target, "flatten": True}))["sessionId"]
        await self.send("Page.enable", session=session)
        loaded = self.expect_event("Page.loadEventFired", session=session)
        await self.send("Page.navigate", {"url": url}, session=session)
        await loaded.receive()
        return Page(self, target, session)


class Page:
    def __init__(self, browser: Browser, target: str, session: str) -> None:
        self.browser = browser
        self.target = target
        self.session = session

    async def evaluate(self, expression: str) -> Any:
        """Evaluate JS in the page (awaiting a returned promise); return the value as JSON."""
        result = await self.browser.send(
            "Runtime.evaluate",
            {"expression": expression, "awaitPromise": True, "returnByValue": True},
            session=self.session,
        )
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise CDPError(f"page threw: {text}")
        return result["result"].get("value")


async def _drain(stream: trio.abc.ReceiveStream, lines: list[str], urls: list[str], started: trio.Event) -> None:
    buffer = b""
    async for chunk in stream:
        buffer += chunk
        *complete, buffer = buffer.split(b"\n")
        for line in complete:
            text = line.decode("utf-8", "replace")
            lines.append(text)
            del lines[:-50]  # keep the tail for error messages
            if text.startswith("DevTools listening on ") and not started.is_set():
                urls.append(text.removeprefix("DevTools listening on ").strip())
                started.set()


@asynccontextmanager
async def launch_chromium(
    profile: Path, *, home: Path | None = None, extra_args: Sequence[str] = ()
) -> AsyncIterator[Browser]:
    """Run headless Chromium with a fresh profile under ``profile``; yield a connected Browser.

    ``home``: the browser's ``$HOME``, whose ``.pki/nssdb`` holds the CAs it trusts beyond the
    built-in roots (``trio-rack certs --install`` writes there).  ``extra_args`` go on the
    command line before the start URL (e.g. ``--ignore-certificate-errors`` for a test CA).

    Resource handling: on exit the CDP websocket closes and the browser process is terminated
    (killed if it lingers) and reaped.
    """
    profile.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 (a local temp directory, once, before any task)
    argv = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--no-proxy-server",
        f"--user-data-dir={profile}",
        "--remote-debugging-port=0",
        *extra_args,
        "about:blank",
    ]
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    if home is not None:
        env["HOME"] = str(home)
    lines: list[str] = []
    started = trio.Event()
    async with trio.open_nursery() as nursery:
        proc = await trio.lowlevel.open_process(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env
        )
        try:
            assert proc.stderr is not None
            urls: list[str] = []
            nursery.start_soon(_drain, proc.stderr, lines, urls, started)
            with trio.move_on_after(20) as waited:
                await started.wait()
            if waited.cancelled_caught:
                raise CDPError("chromium did not start:\n" + "\n".join(lines))
            url = urls[0]
            if not url.startswith("ws://127.0.0.1:"):
                raise CDPError(f"unexpected DevTools address {url!r}")
            async with trio_websocket.open_websocket_url(url, max_message_size=64 * 1024 * 1024) as ws:
                browser = Browser(ws)
                nursery.start_soon(browser._dispatch)
                try:
                    yield browser
                finally:
                    with trio.CancelScope(shield=True), trio.move_on_after(2):
                        try:  # no reply to wait for: the browser closes this socket
                            await ws.send_message(json.dumps({"id": 0, "method": "Browser.close"}))
                        except trio_websocket.ConnectionClosed:
                            pass
        finally:
            with trio.CancelScope(shield=True):
                with trio.move_on_after(5):
                    await proc.wait()
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
            nursery.cancel_scope.cancel()
