"""trio_rack.static: Files and Static — types, validators, ranges, precompressed siblings, traversal.

Requests go through the real connection loop: traversal vectors over ``memory_connection`` with
the target bytes exactly as written (no client normalises them away), the rest through
``testing.Transport`` with httpx.  The large-file and TLS cases run over real sockets.
"""

from __future__ import annotations

import gzip
import os
from email.utils import formatdate
from pathlib import Path

import brotli
import httpx
import pytest
import trio

import trio_rack
from e2e_support import make_tls_files, start_server
from trio_rack.builder import Builder
from trio_rack.files import FileBody
from trio_rack.static import Files, Static
from trio_rack.testing import Transport, memory_connection

CSS = b"body { color: #333; }\n" * 50


@pytest.fixture
def site(tmp_path: Path) -> Path:
    root = tmp_path / "public"
    (root / "assets").mkdir(parents=True)
    (root / "assets" / "app.css").write_bytes(CSS)
    (root / "assets" / "app.css.gz").write_bytes(gzip.compress(CSS))
    (root / "assets" / "app.css.br").write_bytes(brotli.compress(CSS))
    (root / "hello.txt").write_bytes(b"0123456789")
    (root / "data.bin").write_bytes(bytes(range(256)))
    (root / "docs").mkdir()
    (root / "docs" / "index.html").write_bytes(b"<h1>docs</h1>")
    (root / "empty").mkdir()
    (tmp_path / "secret.txt").write_bytes(b"TOP SECRET")
    (tmp_path / "public-secret").mkdir()
    (tmp_path / "public-secret" / "key.txt").write_bytes(b"TOP SECRET KEY")
    os.symlink(tmp_path / "secret.txt", root / "escape.txt")
    os.symlink(tmp_path / "public-secret", root / "sibling")
    os.symlink(root / "hello.txt", root / "inside-link.txt")
    return root


def client(app) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=Transport(app), base_url="http://test")


async def test_get_serves_the_file_with_type_length_etag_and_last_modified(site):
    async with client(Files(site)) as c:
        r = await c.get("/hello.txt")
    st = os.stat(site / "hello.txt")
    assert r.status_code == 200 and r.content == b"0123456789"
    assert r.headers["content-type"] == "text/plain; charset=utf-8"
    assert r.headers["content-length"] == "10"
    assert r.headers["etag"] == f'"{int(st.st_mtime):x}-a"'
    assert r.headers["last-modified"] == formatdate(st.st_mtime, usegmt=True)
    assert r.headers["accept-ranges"] == "bytes"
    assert "cache-control" not in r.headers


async def test_body_is_a_file_body_naming_the_file(site):
    status, headers, body = await Files(site)({"REQUEST_METHOD": "GET", "PATH_INFO": "/data.bin"})
    assert isinstance(body, FileBody) and body.path == str(site / "data.bin")
    assert (body.offset, body.length) == (0, 256) and headers["content-length"] == "256"
    await body.aclose()


async def test_head_has_gets_headers_and_no_body(site):
    async with client(Files(site)) as c:
        get = await c.get("/data.bin")
        head = await c.head("/data.bin")
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == "256"
    assert head.headers["content-type"] == get.headers["content-type"] == "application/octet-stream"
    assert head.headers["etag"] == get.headers["etag"]


async def test_other_methods_get_405_with_allow(site):
    async with client(Files(site)) as c:
        r = await c.post("/hello.txt", content=b"x")
    assert r.status_code == 405 and r.headers["allow"] == "GET, HEAD"


async def test_cache_control_is_configurable(site):
    async with client(Files(site, cache_control="public, max-age=3600")) as c:
        r = await c.get("/hello.txt")
    assert r.headers["cache-control"] == "public, max-age=3600"


async def test_if_none_match_and_if_modified_since_give_304(site):
    async with client(Files(site, cache_control="no-cache")) as c:
        first = await c.get("/hello.txt")
        etag, modified = first.headers["etag"], first.headers["last-modified"]
        r = await c.get("/hello.txt", headers={"if-none-match": f'"other", W/{etag}'})
        assert r.status_code == 304 and r.content == b""
        assert r.headers["etag"] == etag and r.headers["cache-control"] == "no-cache"
        assert (await c.get("/hello.txt", headers={"if-none-match": '"other"'})).status_code == 200
        assert (await c.get("/hello.txt", headers={"if-modified-since": modified})).status_code == 304
        old = formatdate(os.stat(site / "hello.txt").st_mtime - 60, usegmt=True)
        assert (await c.get("/hello.txt", headers={"if-modified-since": old})).status_code == 200
        # If-None-Match wins over If-Modified-Since (RFC 9110 §13.2.2)
        r = await c.get("/hello.txt", headers={"if-none-match": '"other"', "if-modified-since": modified})
        assert r.status_code == 200
        assert (await c.get("/hello.txt", headers={"if-modified-since": "garbage"})).status_code == 200


@pytest.mark.parametrize(
    ("spec", "status", "content", "content_range"),
    [
        ("bytes=2-5", 206, b"2345", "bytes 2-5/10"),
        ("bytes=7-", 206, b"789", "bytes 7-9/10"),
        ("bytes=-3", 206, b"789", "bytes 7-9/10"),
        ("bytes=5-100", 206, b"56789", "bytes 5-9/10"),
        ("bytes=-100", 206, b"0123456789", "bytes 0-9/10"),
        ("bytes=10-", 416, None, "bytes */10"),
        ("bytes=-0", 416, None, "bytes */10"),
        ("bytes=0-1,4-5", 200, b"0123456789", None),  # multi-range: the whole file
        ("bytes=5-2", 200, b"0123456789", None),  # invalid: ignored
        ("lines=1-2", 200, b"0123456789", None),  # unknown unit: ignored
    ],
)
async def test_range_requests(site, spec, status, content, content_range):
    async with client(Files(site)) as c:
        r = await c.get("/hello.txt", headers={"range": spec})
    assert r.status_code == status
    if content is not None:
        assert r.content == content and r.headers["content-length"] == str(len(content))
    assert r.headers.get("content-range") == content_range


async def test_if_range_that_does_not_match_turns_the_range_off(site):
    async with client(Files(site)) as c:
        etag = (await c.get("/hello.txt")).headers["etag"]
        hit = await c.get("/hello.txt", headers={"range": "bytes=0-1", "if-range": etag})
        miss = await c.get("/hello.txt", headers={"range": "bytes=0-1", "if-range": '"stale"'})
    assert hit.status_code == 206 and hit.content == b"01"
    assert miss.status_code == 200 and miss.content == b"0123456789"


@pytest.mark.parametrize(
    ("accept", "encoding"),
    [
        ("gzip, deflate, br", "br"),
        ("gzip", "gzip"),
        ("br;q=0.5, gzip;q=0.8", "gzip"),
        ("br;q=0, gzip;q=0", None),
        ("*", "br"),
        ("identity", None),
        (None, None),
    ],
)
async def test_precompressed_siblings_follow_accept_encoding(site, accept, encoding):
    headers = {"accept-encoding": accept} if accept is not None else {}
    async with httpx.AsyncClient(transport=Transport(Files(site)), base_url="http://test") as c:
        c.headers.pop("accept-encoding", None)
        r = await c.get("/assets/app.css", headers=headers)
    assert r.status_code == 200
    assert r.headers.get("content-encoding") == encoding
    assert r.headers["vary"] == "accept-encoding"
    assert r.headers["content-type"] == "text/css; charset=utf-8"
    assert r.content == CSS  # httpx decodes br and gzip
    expected = {"br": "app.css.br", "gzip": "app.css.gz", None: "app.css"}[encoding]
    assert r.headers["content-length"] == str((site / "assets" / expected).stat().st_size)


async def test_files_without_siblings_have_no_vary(site):
    async with client(Files(site)) as c:
        r = await c.get("/hello.txt")
    assert "vary" not in r.headers


async def test_directory_index_after_a_trailing_slash_redirect(site):
    app = Builder().mount("/static", Files(site))
    async with client(app) as c:
        r = await c.get("/static/docs?x=1", follow_redirects=False)
        assert r.status_code == 301 and r.headers["location"] == "/static/docs/?x=1"
        r = await c.get("/static/docs/")
        assert r.status_code == 200 and r.content == b"<h1>docs</h1>"
        assert r.headers["content-type"] == "text/html; charset=utf-8"
        assert (await c.get("/static/empty/")).status_code == 404
        assert (await c.get("/static/nope.txt")).status_code == 404
    async with client(Files(site, index=None)) as c:
        assert (await c.get("/docs/")).status_code == 404


# Traversal: each vector by name, with the expected status.  Every one would reach
# secret.txt (one directory above the root) or public-secret/ if it were followed.
TRAVERSAL = {
    "dot-dot": ("/../secret.txt", 404),
    "dot-dot-deep": ("/assets/../../secret.txt", 404),
    "encoded-dot-dot": ("/%2e%2e/secret.txt", 404),
    "mixed-case-encoded-dot-dot": ("/.%2E/secret.txt", 404),
    "encoded-slash": ("/..%2fsecret.txt", 404),
    "encoded-slash-upper": ("/assets%2F..%2F..%2Fsecret.txt", 404),
    "backslash": ("/..\\secret.txt", 404),
    "encoded-backslash": ("/..%5csecret.txt", 404),
    "nul": ("/hello.txt%00.css", 400),
    "nul-alone": ("/%00", 400),
    "symlink-out-of-root": ("/escape.txt", 404),
    "symlink-to-sibling-with-root-prefix": ("/sibling/key.txt", 404),
    "double-encoded-stays-literal": ("/%252e%252e/secret.txt", 404),
    "overlong-utf8-dot": ("/%c0%ae%c0%ae/secret.txt", 404),
}


@pytest.mark.parametrize("vector", sorted(TRAVERSAL))
async def test_traversal_is_refused(site, vector):
    target, status = TRAVERSAL[vector]
    async with memory_connection(Files(site)) as conn:
        r = await conn.request("GET", target)
    assert r.status == status, (vector, r.status, r.body)
    assert b"SECRET" not in r.body


async def test_a_symlink_inside_the_root_is_served(site):
    async with client(Files(site)) as c:
        r = await c.get("/inside-link.txt")
    assert r.status_code == 200 and r.content == b"0123456789"


async def test_static_serves_listed_prefixes_and_passes_the_rest(site):
    async def app(env):
        return 200, {"content-type": "text/plain"}, [b"app " + env["PATH_INFO"].encode()]

    static = Static(app, urls=["/assets", "/hello.txt"], root=site, cache_control="max-age=60")
    async with client(static) as c:
        r = await c.get("/assets/app.css")  # root/assets/app.css: the prefix is kept
        assert r.status_code == 200 and r.content == CSS and r.headers["cache-control"] == "max-age=60"
        assert (await c.get("/hello.txt")).content == b"0123456789"
        assert (await c.get("/assetsx/app.css")).text == "app /assetsx/app.css"
        assert (await c.get("/data.bin")).text == "app /data.bin"
        assert (await c.get("/assets/missing.css")).status_code == 404
    cascading = Static(app, urls=["/assets"], root=site, cascade=True)
    async with client(cascading) as c:
        assert (await c.get("/assets/missing.css")).text == "app /assets/missing.css"


def test_root_must_be_a_directory(tmp_path):
    with pytest.raises(ValueError, match="not a directory"):
        Files(tmp_path / "missing")


async def test_file_body_reads_its_slice_and_closes_its_file(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    body = FileBody(path, offset=1000, length=2 * 1024 * 1024 + 5)
    before = len(os.listdir("/proc/self/fd"))
    chunks = [chunk async for chunk in body]
    await body.aclose()
    assert b"".join(chunks) == path.read_bytes()[1000 : 1000 + 2 * 1024 * 1024 + 5]
    assert len(os.listdir("/proc/self/fd")) == before
    with pytest.raises(RuntimeError, match="only once"):
        body.__aiter__()
    with pytest.raises(ValueError):
        FileBody(path, offset=-1)
    # abandoned mid-way: aclose still closes the file
    partial = FileBody(path)
    async for _ in partial:
        break
    await partial.aclose()
    assert len(os.listdir("/proc/self/fd")) == before


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
async def test_large_file_over_real_sockets_with_curl_range(site, tmp_path, tls):
    """A 5 MiB file over TCP and over TLS, whole and by range, byte for byte (curl)."""
    from e2e_support import curl

    data = os.urandom(5 * 1024 * 1024 + 3)
    (site / "big.bin").write_bytes(data)
    files = make_tls_files(tmp_path) if tls else None
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            bind = await start_server(nursery, Files(site), tls=files)
            scheme = "https" if tls else "http"
            url = f"{scheme}://127.0.0.1:{bind.port}/big.bin"
            extra = ["--cacert", str(files.ca_pem)] if files else []
            whole = await curl(*extra, "-o", tmp_path / "out.bin", "-w", "%{http_code}", url)
            part = await curl(*extra, "-r", "1000-2999999", "-o", tmp_path / "part.bin", "-w", "%{http_code}", url)
            nursery.cancel_scope.cancel()
    assert whole.stdout == b"200" and (tmp_path / "out.bin").read_bytes() == data
    assert part.stdout == b"206" and (tmp_path / "part.bin").read_bytes() == data[1000:3000000]


def test_file_body_is_exported():
    assert trio_rack.FileBody is FileBody


async def test_plain_tcp_file_bodies_go_through_os_sendfile(site, tmp_path):
    """Evidence of zero copy without patching anything: the driver's own sendfile counter.

    ``trio_rack.http1.sendfile_bytes()`` is the process-wide total of bytes ``os.sendfile``
    reported sent.  Over plain TCP a whole file and a range must add exactly their lengths;
    over TLS (sliced reads) nothing.  (This test is the only one in this process sending files
    while it runs, so the deltas are its own.)
    """
    from e2e_support import curl
    from trio_rack import http1

    data = os.urandom(3 * 1024 * 1024 + 11)
    (site / "big.bin").write_bytes(data)
    files = make_tls_files(tmp_path)
    counter = http1.sendfile_bytes
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            plain = await start_server(nursery, Files(site))
            secure = await start_server(nursery, Files(site), tls=files)
            before = counter()
            await curl("-o", tmp_path / "a.bin", f"http://127.0.0.1:{plain.port}/big.bin")
            whole = counter() - before
            await curl("-r", "100-1099", "-o", tmp_path / "b.bin", f"http://127.0.0.1:{plain.port}/big.bin")
            ranged = counter() - before - whole
            await curl("--cacert", files.ca_pem, "-o", tmp_path / "c.bin", f"https://127.0.0.1:{secure.port}/big.bin")
            over_tls = counter() - before - whole - ranged
            nursery.cancel_scope.cancel()
    assert (tmp_path / "a.bin").read_bytes() == data == (tmp_path / "c.bin").read_bytes()
    assert (whole, ranged, over_tls) == (len(data), 1000, 0)
