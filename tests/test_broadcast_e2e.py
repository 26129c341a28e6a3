"""End to end through a real ``redis-server``: the chat example (``examples/chat/``) and the feed
example (``examples/feed.py``) on separate ``trio-rack serve`` processes that share one Redis,
real clients (the ``websockets`` library, trio-websocket, raw sockets, curl)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import trio
import trio_websocket

from broadcast_support import (
    REDIS_SERVER,
    RedisServer,
    SSEClient,
    run_client,
    serving,
)
from e2e_support import EXAMPLES, curl, load_example, start_server, wait_until

pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed (.ci/run installs it)")

CHAT = EXAMPLES / "chat" / "app.py"
FEED = EXAMPLES / "feed.py"

CLIENT_PRELUDE = r'''
import asyncio, json, sys
from websockets.asyncio.client import connect

def ws(base, room, nick, **kw):
    return connect(base.replace("http://", "ws://") + f"/ws/{room}?nick={nick}", proxy=None, **kw)

async def recv_until(sock, pred, limit=10):
    async with asyncio.timeout(limit):
        while True:
            m = json.loads(await sock.recv())
            if pred(m):
                return m
'''

PAIR = CLIENT_PRELUDE + r'''
async def main():
    a, b = sys.argv[1], sys.argv[2]
    out = {}
    async with ws(a, "lobby", "alice") as alice:
        await recv_until(alice, lambda m: m["type"] == "join" and m["nick"] == "alice")
        async with ws(b, "lobby", "bob") as bob:
            await recv_until(bob, lambda m: m["type"] == "join" and m["nick"] == "bob")
            out["alice_saw_join"] = (await recv_until(alice, lambda m: m["type"] == "join"))["nick"]
            await alice.send("hi bob ✓")
            out["bob_got"] = await recv_until(bob, lambda m: m["type"] == "message")
            await bob.send("hi alice")
            out["alice_own"] = (await recv_until(alice, lambda m: m["type"] == "message"))["text"]
            out["alice_got"] = await recv_until(alice, lambda m: m["type"] == "message")
        out["alice_saw_leave"] = (await recv_until(alice, lambda m: m["type"] == "leave"))["nick"]
    print(json.dumps(out))

asyncio.run(main())
'''

EIGHT = CLIENT_PRELUDE + r'''
N, M = int(sys.argv[2]), int(sys.argv[3])
STAGGER = float(sys.argv[4]) if len(sys.argv) > 4 else 0.0  # seconds between connects

async def client(i, barrier, results):
    await asyncio.sleep(i * STAGGER)
    async with ws(sys.argv[1], "eight", f"c{i}", max_queue=None) as sock:
        await recv_until(sock, lambda m: m["type"] == "join" and m["nick"] == f"c{i}")  # subscribed
        await barrier.wait()
        for k in range(M):
            await sock.send(f"c{i}:{k}")
        got = results[i] = []
        try:
            async with asyncio.timeout(15):
                while len(got) < N * M:
                    m = json.loads(await sock.recv())
                    if m["type"] == "message":
                        got.append(m["text"])
                        members[m["nick"]] = m["members"]
        except TimeoutError:
            pass
        await barrier.wait()  # everybody has all they expect; now look for duplicates
        try:
            async with asyncio.timeout(0.5):
                while True:
                    m = json.loads(await sock.recv())
                    if m["type"] == "message":
                        got.append(m["text"])
        except TimeoutError:
            pass
        await barrier.wait()

members = {}  # sender -> members on the sender's server (worker)

async def main():
    barrier, results = asyncio.Barrier(N), {}
    await asyncio.gather(*(client(i, barrier, results) for i in range(N)))
    print(json.dumps({"results": results, "members": members}))

asyncio.run(main())
'''


async def test_two_servers_chat_through_redis(redis_server: RedisServer, tmp_path: Path) -> None:
    """alice on one trio-rack process, bob on another: they see each other through Redis."""
    url = redis_server.url
    async with serving(CHAT, tmp_path, bus_url=url) as a, serving(CHAT, tmp_path, bus_url=url) as b:
        out = await run_client(PAIR, a.url, b.url)
        logs = a.log() + b.log()
    assert out["alice_saw_join"] == "bob"
    assert out["bob_got"]["nick"] == "alice" and out["bob_got"]["text"] == "hi bob ✓"
    assert out["alice_own"] == "hi bob ✓"  # the sender sees its own message once, like everyone
    assert out["alice_got"]["nick"] == "bob" and out["alice_got"]["text"] == "hi alice"
    assert out["alice_saw_leave"] == "bob"
    assert "Traceback" not in logs and "ERROR" not in logs, logs[-3000:]


async def test_two_servers_chat_through_redis_over_tls(tls_redis_server: RedisServer, tmp_path: Path) -> None:
    """The same through a TLS-only redis-server: ``TRIO_RACK_BROADCAST=rediss://…?ssl_ca_certs=…``
    is all the chat needs."""
    url = tls_redis_server.url
    assert url.startswith("rediss://")
    async with serving(CHAT, tmp_path, bus_url=url) as a, serving(CHAT, tmp_path, bus_url=url) as b:
        out = await run_client(PAIR, a.url, b.url)
        logs = a.log() + b.log()
    assert out["alice_saw_join"] == "bob"
    assert out["bob_got"]["nick"] == "alice" and out["bob_got"]["text"] == "hi bob ✓"
    assert out["alice_got"]["nick"] == "bob" and out["alice_got"]["text"] == "hi alice"
    assert "Traceback" not in logs and "ERROR" not in logs and "lost Redis" not in logs, logs[-3000:]


async def test_same_servers_without_redis_do_not_see_each_other(tmp_path: Path) -> None:
    """The failure the issue started from, kept as a fact: memory:// is one process."""
    script = CLIENT_PRELUDE + r'''
async def main():
    async with ws(sys.argv[1], "lobby", "alice") as alice, ws(sys.argv[2], "lobby", "bob") as bob:
        for s, n in ((alice, "alice"), (bob, "bob")):
            await recv_until(s, lambda m: m["type"] == "join" and m["nick"] == n)
        await alice.send("anyone?")
        try:
            print(json.dumps(await recv_until(bob, lambda m: m["type"] == "message", limit=1)))
        except TimeoutError:
            print(json.dumps(None))
asyncio.run(main())
'''
    async with serving(CHAT, tmp_path, bus_url="memory://") as a, serving(CHAT, tmp_path, bus_url="memory://") as b:
        assert await run_client(script, a.url, b.url) is None


#: The chat example unchanged, plus ``GET /pid`` (which worker answered) for the -n test.
CHAT_WITH_PID = f"""
import importlib.util, os
spec = importlib.util.spec_from_file_location("chat_example", {str(CHAT)!r})
chat = importlib.util.module_from_spec(spec)
spec.loader.exec_module(chat)

async def app(env):
    if env["PATH_INFO"] == "/pid":
        return 200, {{"content-type": "text/plain"}}, [str(os.getpid()).encode()]
    return await chat.app(env)
"""


async def test_four_workers_eight_clients_every_message_exactly_once(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """Eight clients on one port served by ``-n 4``: every member gets every message once, in
    each sender's order.  Rounds repeat (at most 4) until the clients were spread over more than
    one worker (the kernel picks the worker; ``members`` says how many shared the sender's); the
    later rounds space the connects out, as clients arriving over time would."""
    n, m = 8, 5
    app = tmp_path / "chat_pid.py"
    app.write_text(CHAT_WITH_PID)
    expected = {f"c{i}:{k}" for i in range(n) for k in range(m)}
    async with serving(app, tmp_path, bus_url=redis_server.url, count=4) as server:
        pids: set[str] = set()
        with trio.fail_after(20):
            while len(pids) < 4:  # every worker is serving
                pids.add((await curl("-sS", f"{server.url}/pid")).stdout.decode())
        spreads = []
        for attempt in range(4):
            # Eight connects at once may all be taken by the one worker awake in accept (it
            # accepts in batches); later rounds space them out so the kernel can pick others.
            stagger = 0.0 if attempt == 0 else 0.05 * attempt
            out = await run_client(EIGHT, server.url, str(n), str(m), str(stagger), limit=60)
            results, members = out["results"], out["members"]
            assert len(results) == n
            for got in results.values():
                assert len(got) == n * m and set(got) == expected  # every message, once
                for i in range(n):  # and each sender's messages in the order sent
                    assert [t for t in got if t.startswith(f"c{i}:")] == [f"c{i}:{k}" for k in range(m)]
            spreads.append(sorted(members.values()))
            if max(members.values()) < n:
                break
        logs = server.log()
    assert max(spreads[-1]) < n, f"all clients landed on one worker in every round: {spreads}"
    assert logs.count("started (pid") == 4
    assert "Traceback" not in logs and "ERROR" not in logs, logs[-3000:]


# ------------------------------------------------------------------------------ the feed


async def publish(server: Any, text: str) -> str:
    result = await curl("-sS", "-d", text, f"{server.url}/events")
    event_id = result.stdout.decode().strip()
    assert re.fullmatch(r"\d+-\d+", event_id), result.stdout
    return event_id


async def test_feed_resumes_on_the_other_server_and_across_a_restart(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    url = redis_server.url
    async with serving(FEED, tmp_path, bus_url=url) as a, serving(FEED, tmp_path, bus_url=url) as b:
        e1, e2 = await publish(b, "one"), await publish(b, "two")
        # A client of server a that has seen nothing ("0") gets b's events from the shared history
        client = await SSEClient.open(a.port, last_event_id="0")
        assert await client.events(2) == [(e1, "one"), (e2, "two")]
        e3 = await publish(b, "three")  # live, across servers
        assert (await client.events(3))[2] == (e3, "three")
        await client.aclose()

        e4, e5 = await publish(a, "four"), await publish(a, "five")  # missed while away
        client = await SSEClient.open(b.port, last_event_id=e3)  # reconnects to the *other* server
        assert await client.events(2) == [(e4, "four"), (e5, "five")]
        e6 = await publish(a, "six")
        assert await client.events(3) == [(e4, "four"), (e5, "five"), (e6, "six")]
        await client.aclose()

        await a.stop()  # a restart of the server the client last used
        e7 = await publish(b, "seven")
        await a.start()
        client = await SSEClient.open(a.port, last_event_id=e6)
        assert await client.events(1) == [(e7, "seven")]
        await client.aclose()
        logs = a.log() + b.log()
    assert "Traceback" not in logs and "ERROR" not in logs, logs[-3000:]


# ---------------------------------------------------------------------- faults and overload


def open_chat(port: int, nick: str, **kw: Any) -> Any:
    return trio_websocket.open_websocket_url(f"ws://127.0.0.1:{port}/ws/lobby?nick={nick}", **kw)


async def receive_json(ws: Any, pred: Any, limit: float = 10) -> dict[str, Any]:
    with trio.fail_after(limit):
        while True:
            message = json.loads(await ws.get_message())
            if pred(message):
                return message  # type: ignore[no-any-return]


async def test_redis_killed_and_restarted_mid_chat(redis_server: RedisServer, tmp_path: Path) -> None:
    """No server error; the sender is told while Redis is gone; delivery resumes after."""
    url = redis_server.url
    async with serving(CHAT, tmp_path, bus_url=url) as a, serving(CHAT, tmp_path, bus_url=url) as b:
        async with open_chat(a.port, "alice") as alice, open_chat(b.port, "bob") as bob:
            await receive_json(alice, lambda m: m["type"] == "join" and m["nick"] == "alice")
            await receive_json(bob, lambda m: m["type"] == "join" and m["nick"] == "bob")
            await alice.send_message("before")
            assert (await receive_json(bob, lambda m: m["type"] == "message"))["text"] == "before"
            assert (await receive_json(alice, lambda m: m["type"] == "message"))["text"] == "before"  # her own

            redis_server.stop()
            await alice.send_message("during")
            error = await receive_json(alice, lambda m: m["type"] in ("error", "message"))
            assert error["type"] == "error" and "unavailable" in error["text"]
            with trio.fail_after(10):
                await wait_until(lambda: "lost Redis" in a.log() and "lost Redis" in b.log())
            redis_server.start()

            with trio.fail_after(20):
                n = 0
                while True:  # the servers reconnect with capped backoff; then messages flow again
                    n += 1
                    await alice.send_message(f"after {n}")
                    with trio.move_on_after(0.5):
                        got = await receive_json(bob, lambda m: m["type"] == "message")
                        break
            assert got["text"].startswith("after") and got["nick"] == "alice"
            await bob.send_message("back")
            reply = await receive_json(alice, lambda m: m["type"] == "message" and m["nick"] == "bob")
            assert reply["text"] == "back"
        logs = a.log() + b.log()
    for log in (a.log(), b.log()):
        assert log.count("lost Redis") == 1 and log.count("reconnected to Redis") == 1, log[-2000:]
    assert "Traceback" not in logs and "ERROR" not in logs, logs[-3000:]


async def test_a_slow_chat_member_is_cut_off_and_the_others_keep_receiving(redis_server: RedisServer) -> None:
    """A client that stops reading: its server-side outbox fills, it is disconnected; the fast
    member gets every message, in order, and nobody waited for the slow one."""
    chat = load_example("chat").Chat(outbox=16, url=redis_server.url)
    count, text = 400, "x" * 4000
    with trio.fail_after(30):
        async with trio.open_nursery() as server:
            bind = await start_server(server, chat)
            async with open_chat(bind.port, "slow", message_queue_size=1) as slow, \
                    open_chat(bind.port, "fast", message_queue_size=1000) as fast:
                await receive_json(slow, lambda m: m["type"] == "join" and m["nick"] == "slow")
                await receive_json(fast, lambda m: m["type"] == "join" and m["nick"] == "fast")
                await wait_until(lambda: {m.nick for m in chat.rooms["lobby"].members} == {"slow", "fast"})
                # the slow client reads nothing from here on
                for n in range(count):
                    await fast.send_message(f"{n} {text}")
                got = []
                while len(got) < count:
                    m = await receive_json(fast, lambda m: m["type"] == "message")
                    got.append(int(m["text"].split()[0]))
                assert got == list(range(count))
                await wait_until(lambda: {m.nick for m in chat.rooms["lobby"].members} == {"fast"})
                left = await receive_json(fast, lambda m: m["type"] == "leave")
                assert left["nick"] == "slow"
                with pytest.raises(trio_websocket.ConnectionClosed):
                    while True:
                        await slow.get_message()
            server.cancel_scope.cancel()
