"""examples/site: the Builder-composed site, in-process (Transport, under Lint) and in Chromium.

The in-process tests check each mounted piece through the real connection loop with the site's
own Lint on; the browser test loads the page from a real server over a real socket, drives the
JSON API and the event feed from the page, and joins the chat mounted under ``/chat``.
Skipped (with a reason) only if ``/usr/bin/chromium`` is missing; ``.ci/run`` installs it.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import httpx
import pytest
import trio

from cdp import chromium_available, launch_chromium
from e2e_support import load_example, start_server
from trio_rack.builder import Builder
from trio_rack.testing import Transport

needs_chromium = pytest.mark.skipif(
    not chromium_available(), reason="chromium is not installed (apt-get install chromium)"
)


def test_the_site_is_a_builder_with_lint_in_development(monkeypatch):
    site = load_example("site")
    assert isinstance(site.app, Builder)
    from trio_rack.lint import Lint

    assert isinstance(site.make_app(development=True).to_app(), Lint)
    monkeypatch.setenv("SITE_ENV", "production")
    assert not isinstance(site.make_app().to_app(), Lint)


async def test_each_mounted_piece_in_process():
    app = load_example("site").make_app(development=True)
    async with httpx.AsyncClient(transport=Transport(app), base_url="http://test") as c:
        page = await c.get("/")
        assert page.status_code == 200 and b"<title>trio-rack site</title>" in page.content
        assert page.headers["cache-control"] == "no-cache"
        css = await c.get("/static/style.css")
        assert css.headers["content-type"] == "text/css; charset=utf-8"
        assert css.headers["cache-control"] == "public, max-age=3600"
        assert "content-encoding" not in css.headers  # a file body: left for sendfile
        assert (await c.get("/static/../app.py")).status_code == 404
        assert (await c.get("/api/hello", params={"name": "trio"})).json() == {"hello": "trio"}
        assert (await c.post("/api/notes", json={"text": "  first  "})).json() == {"id": 1, "text": "first"}
        assert (await c.post("/api/notes", json={"text": ""})).status_code == 400
        assert (await c.post("/api/notes", content=b"x" * 5000)).status_code == 413
        assert (await c.delete("/api/notes")).status_code == 405
        for n in range(40):
            await c.post("/api/notes", json={"text": f"note {n} " + "padding " * 5})
        r = await c.get("/api/notes", headers={"accept-encoding": "gzip"})
        assert r.headers["content-encoding"] == "gzip" and len(r.json()) == 41  # > 1 KiB: compressed
        chat = await c.get("/chat/")
        assert chat.status_code == 200 and b"trio-rack chat" in chat.content
        with trio.fail_after(5):
            async with c.stream("GET", "/events", headers={"accept-encoding": "gzip"}) as feed:
                assert feed.headers["content-encoding"] == "gzip"
                raw = feed.aiter_raw()
                await c.post("/api/notes", json={"text": "live note"})
                inflate = zlib.decompressobj(31)
                text = b""
                while b"\n\n" not in text:
                    text += inflate.decompress(await raw.__anext__())
                assert text == b"event: note\nid: 42\ndata: live note\n\n"


@needs_chromium
async def test_the_page_in_chromium(tmp_path: Path) -> None:
    app = load_example("site").make_app(development=True)
    with trio.fail_after(40):
        async with launch_chromium(tmp_path / "profile") as browser:
            async with trio.open_nursery() as server:
                bind = await start_server(server, app)
                base = f"http://127.0.0.1:{bind.port}"
                page = await browser.new_page(base + "/")
                assert await page.evaluate("document.title") == "trio-rack site"
                # the stylesheet from /static was applied
                assert await page.evaluate("getComputedStyle(document.body).backgroundColor") == "rgb(250, 248, 240)"
                assert await page.evaluate("site.ready") is True  # EventSource open
                hello = await page.evaluate("fetch('/api/hello?name=chromium').then(r => r.json())")
                assert hello == {"hello": "chromium"}
                note = await page.evaluate("site.post('hello from chromium ✓')")
                assert note == {"id": 1, "text": "hello from chromium ✓"}
                delivered = await page.evaluate("site.waitForNote('hello from chromium ✓')")
                assert delivered == note  # came back through the SSE feed
                assert "hello from chromium ✓" in await page.evaluate("document.getElementById('notes').textContent")
                # the chat, mounted under /chat, works from its prefix (websocket at /chat/ws/...)
                chat = await browser.new_page(base + "/chat/")
                assert await chat.evaluate("document.title") == "trio-rack chat"
                await chat.evaluate("chat.connect('lobby', 'carol')")
                joined = await chat.evaluate("chat.waitFor(m => m.type === 'join')")
                assert joined["nick"] == "carol" and joined["members"] == 1
                server.cancel_scope.cancel()
