"""The chat example (``examples/chat/``) in a real browser: headless Chromium, two tabs.

Chromium is driven over the Chrome DevTools Protocol (``tests/cdp.py``).  Each tab loads the
page from trio-rack, joins the same room over a real websocket, and the tabs exchange messages;
then the server is cancelled and both pages must see their socket close with 1001.  Skipped
(with a reason) only if ``/usr/bin/chromium`` is missing; ``.ci/run`` installs it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from cdp import chromium_available, launch_chromium
from e2e_support import load_example, start_server

needs_chromium = pytest.mark.skipif(
    not chromium_available(), reason="chromium is not installed (apt-get install chromium)"
)


@needs_chromium
async def test_two_tabs_chat_and_shutdown_closes_with_1001(tmp_path: Path) -> None:
    chat = load_example("chat").Chat()
    with trio.fail_after(30):
        async with launch_chromium(tmp_path / "profile") as browser:
            async with trio.open_nursery() as server:
                bind = await start_server(server, chat)
                url = f"http://127.0.0.1:{bind.port}/"
                alice = await browser.new_page(url)
                bob = await browser.new_page(url)
                assert await alice.evaluate("document.title") == "trio-rack chat"

                await alice.evaluate("chat.connect('lobby', 'alice')")
                await bob.evaluate("chat.connect('lobby', 'bob')")
                # alice sees bob join: both are in the room now
                joined = await alice.evaluate("chat.waitFor(m => m.type === 'join' && m.nick === 'bob')")
                assert joined["members"] == 2
                assert {m.nick for m in chat.rooms["lobby"].members} == {"alice", "bob"}

                await alice.evaluate("chat.send('hello from alice ✓')")
                got = await bob.evaluate("chat.waitFor(m => m.type === 'message')")
                assert got == {
                    "type": "message",
                    "room": "lobby",
                    "nick": "alice",
                    "text": "hello from alice ✓",
                    "members": 2,
                }
                await bob.evaluate("chat.send('hi alice')")
                reply = await alice.evaluate("chat.waitFor(m => m.type === 'message' && m.nick === 'bob')")
                assert reply["text"] == "hi alice"
                # the page renders what it receives
                assert "alice: hello from alice ✓" in await bob.evaluate("document.getElementById('log').textContent")

                # Shutdown: cancelling the server closes every websocket with 1001.
                for page in (alice, bob):
                    await page.evaluate(
                        "window.closedWith = new Promise("
                        "r => chat.socket.addEventListener('close', e => r([e.code, e.reason]))); 0"
                    )
                server.cancel_scope.cancel()
            for page in (alice, bob):
                assert await page.evaluate("window.closedWith") == [1001, "going away"]
            assert chat.rooms == {}


async def test_cross_site_upgrade_is_refused(tmp_path: Path) -> None:
    """A page from another origin cannot open the chat's websocket (CSWSH protection): 403."""
    from e2e_support import open_client, read_until_eof, split_head

    async with trio.open_nursery() as server:
        bind = await start_server(server, load_example("chat").Chat())
        with trio.fail_after(5):
            client = await open_client(bind)
            await client.send_all(
                b"GET /ws/lobby?nick=mallory HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: http://evil.example\r\n"
                b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nConnection: close\r\n\r\n"
            )
            data, _ = await read_until_eof(client)
            await client.aclose()
        status, _, body = split_head(data)
        assert status == 403 and b"origin not allowed" in body
        server.cancel_scope.cancel()


async def test_a_slow_member_is_dropped_and_never_stalls_the_room() -> None:
    """Fan-out policy: a broadcast never waits; a member whose outbox is full is cut off."""
    chat = load_example("chat")
    room = chat.Room("lobby")
    fast, slow = chat.Member("fast", 2), chat.Member("slow", 2)
    room.members |= {fast, slow}
    for n in range(3):
        room.broadcast(type="message", nick="x", text=str(n))  # synchronous: cannot block
        fast.inbox.receive_nowait()  # the fast member keeps up
    assert slow.too_slow and not fast.too_slow
    # the slow member's pump drains what it had, then finds its outbox closed (-> close 1008)
    assert [slow.inbox.receive_nowait() for _ in range(2)]
    with pytest.raises(trio.EndOfChannel):
        slow.inbox.receive_nowait()
