"""trio_rack.Request and the response helpers, through the real connection loop (Transport)."""

from __future__ import annotations

import json
import os
import tracemalloc

import httpx
import pytest

from trio_rack import Builder, Request
from trio_rack.lint import Lint
from trio_rack.request import RequestError, UploadFile, json_response, redirect, text
from trio_rack.testing import Transport


def client(app, **kwargs) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=Transport(Lint(app), **kwargs), base_url="http://test")


async def test_request_line_query_headers_cookies_url_and_client():
    seen = {}

    async def app(env):
        r = Request(env)
        seen.update(
            method=r.method, path=r.path, raw=r.raw_path, script=r.script_name, url=r.url, client=r.client,
            a=r.query.get("a"), all_a=r.query.getall("a"), empty=r.query["empty"], missing=r.query.get("zz"),
            ua=r.headers["USER-AGENT"], ct=r.headers.get("Content-Type"), has_x="x-thing" in r.headers,
            cookies=r.cookies, content_type=r.content_type,
        )
        return 200, {}, []

    app = Builder().mount("/api", app)
    async with client(app, client=("203.0.113.7", 5555)) as c:
        await c.post(
            "/api/caf%C3%A9/x?a=1&a=2&empty=&b=%20sp",
            content=b"{}",
            headers={"user-agent": "test-agent", "content-type": "Application/JSON; charset=utf-8", "x-thing": "1",
                     "cookie": 'sid="abc"; theme=dark; sid=second; bad'},
        )
    assert seen == {
        "method": "POST", "path": "/café/x", "raw": "/caf%C3%A9/x", "script": "/api",
        "url": "http://test/api/caf%C3%A9/x?a=1&a=2&empty=&b=%20sp", "client": ("203.0.113.7", 5555),
        "a": "1", "all_a": ["1", "2"], "empty": "", "missing": None,
        "ua": "test-agent", "ct": "Application/JSON; charset=utf-8", "has_x": True,
        "cookies": {"sid": "abc", "theme": "dark"}, "content_type": "application/json",
    }


async def test_url_follows_the_scheme_and_host_the_client_used():
    async def app(env):
        return text(Request(env).url)

    async with client(app) as c:
        assert (await c.get("https://example.org:8443/p")).text == "https://example.org:8443/p"
        assert (await c.get("http://example.org/")).text == "http://example.org/"
    # behind a trusted proxy the server sets rack.url_scheme; Request follows it
    env = {"rack.url_scheme": "https", "SERVER_NAME": "internal", "SERVER_PORT": "443", "PATH_INFO": "/x",
           "QUERY_STRING": ""}
    assert Request(env).url == "https://internal/x"


async def test_bad_query_strings_are_a_400():
    async def app(env):
        try:
            _ = Request(env).query
        except RequestError as exc:
            return exc.response()
        return 200, {}, []

    async with client(app) as c:
        r = await c.get("/?" + "&".join(["k"] * 1001))
    assert r.status_code == 400


async def test_body_and_json_with_limits():
    async def app(env):
        r = Request(env)
        try:
            if r.path == "/json":
                data = await r.json(limit=100)
                return json_response({"got": data, "again": await r.json()})
            return text(f"{len(await r.body(limit=10))}")
        except RequestError as exc:
            return exc.response()

    async def chunks():
        yield b"12345"
        yield b"67890X"

    async with client(app) as c:
        assert (await c.post("/", content=b"0123456789")).text == "10"
        r = await c.post("/", content=b"0123456789X")  # declared: refused before reading
        assert r.status_code == 413 and "exceeds the limit of 10" in r.text
        assert (await c.post("/", content=chunks())).status_code == 413  # chunked: counted
        r = await c.post("/json", json={"name": "trio ✓"})
        assert r.json() == {"got": {"name": "trio ✓"}, "again": {"name": "trio ✓"}}
        assert r.headers["content-type"] == "application/json"
        r = await c.post("/json", content=b"{not json")
        assert r.status_code == 400 and "invalid JSON" in r.text
        assert (await c.post("/json", content=b"[" * 200)).status_code == 413


async def test_urlencoded_form():
    async def app(env):
        form = await Request(env).form()
        return json_response({"name": form["name"], "tags": form.getall("tag"), "empty": form.get("e")})

    async with client(app) as c:
        r = await c.post("/", data={"name": "café au lait", "tag": ["a", "b"], "e": ""})
    assert r.json() == {"name": "café au lait", "tags": ["a", "b"], "empty": ""}


async def test_multipart_form_spools_big_files_to_disk_and_closes_them_after_the_response():
    uploads: list[UploadFile] = []

    async def app(env):
        form = await Request(env).form(spool_size=64 * 1024)
        small, big = form["small"], form["big"]
        uploads.extend([small, big])
        data = await big.read()
        await big.seek(0)
        head = await big.read(4)
        return json_response({
            "title": form["title"], "small": [small.filename, small.content_type, small.in_memory,
                                              (await small.read()).decode()],
            "big": [big.filename, big.size, big.in_memory, data == BIG, head == BIG[:4]],
        })

    async with client(app) as c:
        r = await c.post(
            "/",
            data={"title": "two files ✓"},
            files={
                "small": ("note.txt", b"hello", "text/plain"),
                "big": ("../../etc/big.bin", BIG, "application/x-big"),
            },
        )
    assert r.status_code == 200, r.text
    assert r.json() == {
        "title": "two files ✓",
        "small": ["note.txt", "text/plain", True, "hello"],
        "big": ["big.bin", len(BIG), False, True, True],  # the path part of a filename is dropped
    }
    assert all(upload.closed for upload in uploads)  # closed by rack.response_finished


BIG = os.urandom(300 * 1024)


async def test_a_large_upload_is_never_held_in_memory():
    """8 MiB streamed to the app: Python's allocations stay far below the upload's size."""
    size = 8 * 1024 * 1024
    boundary = "b0undary"

    async def content():
        yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"f\"; filename=\"x.bin\"\r\n"
               "Content-Type: application/octet-stream\r\n\r\n").encode()
        block = b"z" * 65536
        for _ in range(size // len(block)):
            yield block
        yield f"\r\n--{boundary}--\r\n".encode()

    async def app(env):
        tracemalloc.start()
        try:
            form = await Request(env).form()
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        return json_response({"size": form["f"].size, "in_memory": form["f"].in_memory, "peak": peak})

    async with client(app) as c:
        r = await c.post("/", content=content(), headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    got = r.json()
    assert got["size"] == size and got["in_memory"] is False
    assert got["peak"] < 3 * 1024 * 1024, got["peak"]


@pytest.mark.parametrize(
    ("body", "content_type", "kwargs", "status"),
    [
        (b"x", "text/plain", {}, 415),
        (b"x", None, {}, 415),
        (b"--b\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nunterminated", "multipart/form-data; boundary=b",
         {}, 400),
        (b"junk", "multipart/form-data", {}, 400),
        (b"--b\r\nContent-Type: text/plain\r\n\r\nv\r\n--b--\r\n", "multipart/form-data; boundary=b", {}, 400),
        (b"--b\r\nContent-Disposition: form-data; name=\"f\"; filename=\"a\"\r\n\r\n" + b"x" * 100 + b"\r\n--b--\r\n",
         "multipart/form-data; boundary=b", {"max_file_size": 50}, 413),
        (b"--b\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n" + b"x" * 100 + b"\r\n--b--\r\n",
         "multipart/form-data; boundary=b", {"limit": 50}, 413),
        (b"&".join(b"k=v" for _ in range(20)), "application/x-www-form-urlencoded", {"max_fields": 10}, 413),
    ],
    ids=["not-a-form", "no-type", "unterminated", "no-boundary", "no-disposition", "file-too-big",
         "fields-too-big", "too-many-fields"],
)
async def test_bad_forms_get_a_clear_status(body, content_type, kwargs, status):
    async def app(env):
        try:
            await Request(env).form(**kwargs)
        except RequestError as exc:
            return exc.response()
        return 200, {}, [b"accepted"]

    headers = {"content-type": content_type} if content_type else {}
    async with client(app) as c:
        r = await c.post("/", content=body, headers=headers)
    assert r.status_code == status, r.text


async def test_response_helpers():
    assert text("hé", status=201) == (201, {"content-type": "text/plain; charset=utf-8"}, ["hé".encode()])
    status, headers, body = json_response({"a": [1, "✓"]}, headers={"x-a": "1"})
    assert (status, headers["content-type"], headers["x-a"]) == (200, "application/json", "1")
    assert json.loads(body[0]) == {"a": [1, "✓"]}
    status, headers, _ = redirect("/a path/é?x=1")
    assert status == 303 and headers["location"] == "/a%20path/%C3%A9?x=1"
    assert redirect("/x", status=308)[0] == 308
    with pytest.raises(ValueError):
        redirect("/x", status=200)

    async def app(env):
        return redirect("/elsewhere")

    async with client(app) as c:
        r = await c.get("/")
    assert r.status_code == 303 and r.headers["location"] == "/elsewhere"
