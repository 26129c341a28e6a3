"""A small site composed with ``trio_rack.Builder``: trio-rack's ``config.ru``.

    trio-rack serve -b http://127.0.0.1:9292 examples/site/app.py
    # open http://127.0.0.1:9292/ — and http://127.0.0.1:9292/chat/

What is where:

==============  ==========================================================================
``/``           ``public/index.html`` (``Files``; the page's JS and CSS under ``/static``)
``/static/…``   ``public/static/`` with ``cache-control: public, max-age=3600``: a
                ``FileBody``, so plain-HTTP responses can go out with ``sendfile``
``/api/hello``  ``GET ?name=…`` → JSON, with ``Request``'s query multi-dict
``/api/notes``  ``GET`` the notes as JSON; ``POST {"text": …}`` adds one (``Request.json``,
                bounded; bad input gets a 400/413/415 from ``RequestError``)
``/events``     a Server-Sent Events feed: every new note, as it is posted
``/chat/``      the websocket chat of ``examples/chat``, mounted (``SCRIPT_NAME`` ``/chat``)
==============  ==========================================================================

Every response goes through ``Deflater`` (the JSON, the page, the event feed — flushed per
event —, the chat page; not the static files, which keep ``sendfile``), and, in development
(``SITE_ENV`` unset or ``development``), through ``Lint``, so a breach of the spec fails loudly
while you work.

Fan-out: each feed subscriber has a bounded channel; a subscriber that falls 32 notes behind is
dropped (its feed ends; ``EventSource`` reconnects) instead of holding up ``POST``.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

import trio

from trio_rack import Builder, Request, sse
from trio_rack.deflate import Deflater
from trio_rack.lint import Lint
from trio_rack.request import RequestError, json_response
from trio_rack.static import Files

HERE = Path(__file__).resolve().parent
MAX_NOTE = 500


def _load_chat() -> Any:
    """examples/chat/app.py (its module is named "app" too, so import it under its own name)."""
    name = "_trio_rack_example_chat"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, HERE.parent / "chat" / "app.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


class Notes:
    """The notes in memory, and the feeds listening for new ones."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []
        self.listeners: set[trio.MemorySendChannel[dict[str, Any]]] = set()

    def add(self, text: str) -> dict[str, Any]:
        note = {"id": len(self.items) + 1, "text": text}
        self.items.append(note)
        for channel in list(self.listeners):
            try:
                channel.send_nowait(note)
            except trio.WouldBlock:  # too far behind: drop it rather than wait
                self.listeners.discard(channel)
                channel.close()
        return note

    async def feed(self, stream: sse.EventStream) -> None:
        send, receive = trio.open_memory_channel[dict[str, Any]](32)
        self.listeners.add(send)
        try:
            async with receive:
                async for note in receive:
                    await stream.send(str(note["text"]), event="note", id=str(note["id"]))
        finally:
            self.listeners.discard(send)
            send.close()


def make_app(*, development: bool | None = None) -> Builder:
    """The site; a fresh one (its own notes) per call."""
    if development is None:
        development = os.environ.get("SITE_ENV", "development") == "development"
    notes = Notes()

    async def api(env: dict[str, Any]) -> Any:
        request = Request(env)
        try:
            if request.path == "/hello":
                return json_response({"hello": request.query.get("name", "world")})
            if request.path == "/notes":
                if request.method == "GET":
                    return json_response(notes.items)
                if request.method == "POST":
                    data = await request.json(limit=4096)
                    text = data.get("text") if isinstance(data, dict) else None
                    if not isinstance(text, str) or not text.strip() or len(text) > MAX_NOTE:
                        raise RequestError(400, f"a note is {{\"text\": \"...\"}}, 1 to {MAX_NOTE} characters")
                    return json_response(notes.add(text.strip()), status=201)
                return json_response({"error": "method not allowed"}, status=405, headers={"allow": "GET, POST"})
        except RequestError as exc:
            return json_response({"error": str(exc)}, status=exc.status)
        return json_response({"error": "not found"}, status=404)

    async def events(env: dict[str, Any]) -> Any:
        return sse.response(env, notes.feed, heartbeat=15)

    site = Builder()
    if development:
        site.use(Lint)
    site.use(Deflater)
    site.mount("/static", Files(HERE / "public" / "static", cache_control="public, max-age=3600"))
    site.mount("/api", api)
    site.mount("/events", events)
    site.mount("/chat", _load_chat().Chat())
    site.run(Files(HERE / "public", cache_control="no-cache"))
    site.notes = notes  # type: ignore[attr-defined]  # for tests and the curious
    return site


app = make_app()
