"""trio_rack.deflate.Deflater: what is compressed, with which coding, and streaming flushes."""

from __future__ import annotations

import gzip
import zlib

import brotli
import httpx
import pytest
import trio
import zstandard

from trio_rack import sse
from trio_rack.deflate import Deflater, available_encodings
from trio_rack.testing import Transport

HTML = b"<p>" + b"hello trio-rack " * 200 + b"</p>"


def page(content_type="text/html; charset=utf-8", body=HTML, status=200, **extra):
    async def app(env):
        return status, {"content-type": content_type, **extra}, [body]

    return app


def client(app, accept="gzip") -> httpx.AsyncClient:
    c = httpx.AsyncClient(transport=Transport(app), base_url="http://test")
    if accept is None:
        c.headers.pop("accept-encoding")
    else:
        c.headers["accept-encoding"] = accept
    return c


async def raw_get(app, accept="gzip", method="GET", path="/"):
    async with client(app, accept) as c:
        async with c.stream(method, path) as r:
            raw = b"".join([chunk async for chunk in r.aiter_raw()])
    return r, raw


def test_all_three_codings_are_available_here():
    assert available_encodings() == ("br", "zstd", "gzip")


async def test_gzip_for_a_compressible_type_above_the_threshold():
    r, raw = await raw_get(Deflater(page()))
    assert r.status_code == 200
    assert r.headers["content-encoding"] == "gzip" and r.headers["vary"] == "accept-encoding"
    assert gzip.decompress(raw) == HTML
    assert int(r.headers["content-length"]) == len(raw) < len(HTML)


async def test_below_min_size_is_sent_as_is_but_still_varies():
    r, raw = await raw_get(Deflater(page(body=b"tiny")))
    assert "content-encoding" not in r.headers and raw == b"tiny"
    assert r.headers["vary"] == "accept-encoding"
    r, raw = await raw_get(Deflater(page(body=b"tiny"), min_size=0))
    assert r.headers["content-encoding"] == "gzip" and gzip.decompress(raw) == b"tiny"


@pytest.mark.parametrize(
    ("accept", "coding"),
    [
        ("gzip, deflate, br, zstd", "br"),
        ("gzip;q=1.0, br;q=0.5", "gzip"),
        ("br;q=0, gzip", "gzip"),
        ("zstd", "zstd"),
        ("*;q=0.1, gzip;q=0", "br"),
        ("identity", None),
        ("gzip;q=0", None),
        ("gzip;q=nonsense", None),
        (None, None),
    ],
)
async def test_accept_encoding_q_values(accept, coding):
    r, raw = await raw_get(Deflater(page()), accept)
    assert r.headers.get("content-encoding") == coding
    decode = {
        "gzip": gzip.decompress,
        "br": brotli.decompress,
        "zstd": lambda d: zstandard.ZstdDecompressor().decompressobj().decompress(d),
        None: lambda d: d,
    }[coding]
    assert decode(raw) == HTML


async def test_encodings_can_be_restricted():
    r, _ = await raw_get(Deflater(page(), encodings=["gzip"]), "br, gzip")
    assert r.headers["content-encoding"] == "gzip"
    with pytest.raises(ValueError, match="unknown encodings"):
        Deflater(page(), encodings=["deflate"])


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "text/event-stream", "application/json", "application/javascript",
     "application/xml", "image/svg+xml", "application/ld+json", "application/atom+xml"],
)
async def test_default_compressible_types(content_type):
    r, _ = await raw_get(Deflater(page(content_type)))
    assert r.headers["content-encoding"] == "gzip"


@pytest.mark.parametrize("content_type", ["image/png", "application/octet-stream", "video/mp4"])
async def test_other_types_are_untouched_and_do_not_vary(content_type):
    r, raw = await raw_get(Deflater(page(content_type)))
    assert "content-encoding" not in r.headers and "vary" not in r.headers and raw == HTML


async def test_content_types_are_configurable():
    app = Deflater(page("application/x-custom"), content_types=["application/x-*"])
    r, _ = await raw_get(app)
    assert r.headers["content-encoding"] == "gzip"
    r, _ = await raw_get(Deflater(page("text/html"), content_types=["application/json"]))
    assert "content-encoding" not in r.headers


@pytest.mark.parametrize(
    ("extra", "status"),
    [
        ({"cache-control": "public, no-transform"}, 200),
        ({"content-encoding": "br"}, 200),
        ({}, 206),
        ({}, 204),
        ({}, 304),
    ],
    ids=["no-transform", "already-encoded", "206", "204", "304"],
)
async def test_responses_that_must_not_be_compressed(extra, status):
    body = b"" if status in (204, 304) else HTML
    r, raw = await raw_get(Deflater(page(body=body, status=status, **extra)))
    assert r.headers.get("content-encoding") == extra.get("content-encoding")
    assert raw == body
    assert r.headers["vary"] == "accept-encoding"


async def test_existing_vary_is_kept_and_strong_etag_turns_weak():
    r, _ = await raw_get(Deflater(page(vary="origin", etag='"abc"')))
    assert r.headers["vary"] == "origin, accept-encoding"
    assert r.headers["etag"] == 'W/"abc"'


async def test_head_gets_gets_headers():
    app = Deflater(page())
    get, _ = await raw_get(app)
    head, raw = await raw_get(app, method="HEAD")
    assert raw == b""
    for name in ("content-encoding", "vary", "content-length", "content-type"):
        assert head.headers[name] == get.headers[name], name

    async def head_without_body(env):
        return 200, {"content-type": "text/html", "content-length": str(len(HTML))}, []

    head, raw = await raw_get(Deflater(head_without_body), method="HEAD")
    assert head.headers["content-encoding"] == "gzip" and "content-length" not in head.headers and raw == b""


async def test_large_buffered_bodies_are_compressed_off_the_event_loop():
    big = b"".join(b"line %d of a big json document\n" % i for i in range(40000))  # > 256 KiB
    r, raw = await raw_get(Deflater(page("application/json", big)))
    assert gzip.decompress(raw) == big


async def test_streaming_async_iterable_is_flushed_chunk_by_chunk():
    """The first chunk reaches the client, decodable, while the app still holds the second."""
    release = trio.Event()

    async def app(env):
        async def chunks():
            yield b"first chunk " * 10
            await release.wait()
            yield b"second chunk"

        return 200, {"content-type": "text/plain"}, chunks()

    inflate = zlib.decompressobj(31)
    got = b""
    with trio.fail_after(5):
        async with client(Deflater(app)) as c:
            async with c.stream("GET", "/") as r:
                assert r.headers["content-encoding"] == "gzip" and "content-length" not in r.headers
                raw = r.aiter_raw()
                while len(got) < 120:
                    got += inflate.decompress(await raw.__anext__())
                assert got == b"first chunk " * 10  # all of it, before the second exists
                release.set()
                async for piece in raw:
                    got += inflate.decompress(piece)
    assert got == b"first chunk " * 10 + b"second chunk" and inflate.eof


async def test_sync_iterable_bodies_are_compressed_and_closed():
    closed = []

    class Body:
        def __iter__(self):
            yield b"a" * 2000
            yield b"b" * 2000

        def close(self):
            closed.append(True)

    async def app(env):
        return 200, {"content-type": "text/csv"}, Body()

    r, raw = await raw_get(Deflater(app))
    assert gzip.decompress(raw) == b"a" * 2000 + b"b" * 2000 and closed == [True]


async def test_sse_events_are_not_held_back_in_the_compressor():
    sent_one = trio.Event()
    release = trio.Event()

    async def app(env):
        async def events(stream):
            await stream.send("one", id="1")
            sent_one.set()
            await release.wait()
            await stream.send("two", id="2")

        return sse.response(env, events, heartbeat=None)

    inflate = zlib.decompressobj(31)
    text = b""
    with trio.fail_after(5):
        async with client(Deflater(app)) as c:
            async with c.stream("GET", "/events") as r:
                assert r.headers["content-encoding"] == "gzip"
                assert r.headers["content-type"].startswith("text/event-stream")
                raw = r.aiter_raw()
                while b"\n\n" not in text:
                    text += inflate.decompress(await raw.__anext__())
                assert text == b"id: 1\ndata: one\n\n"
                release.set()
                async for piece in raw:
                    text += inflate.decompress(piece)
    assert text.endswith(b"id: 2\ndata: two\n\n") and inflate.eof


async def test_streaming_body_callable_with_brotli():
    async def app(env):
        async def body(stream):
            for n in range(3):
                await stream.send_all(b"part %d " % n * 100)

        return 200, {"content-type": "text/plain"}, body

    r, raw = await raw_get(Deflater(app), "br")
    assert r.headers["content-encoding"] == "br"
    assert brotli.decompress(raw) == b"".join(b"part %d " % n * 100 for n in range(3))


async def test_partial_hijack_is_passed_through_untouched():
    async def app(env):
        async def hijack(stream):
            await stream.send_all(b"raw bytes " * 200)

        return 200, {"content-type": "text/plain", "rack.hijack": hijack}, []

    r, raw = await raw_get(Deflater(app))
    assert "content-encoding" not in r.headers and "vary" not in r.headers
    assert raw == b"raw bytes " * 200


async def test_file_bodies_keep_sendfile_unless_asked(tmp_path):
    from trio_rack.static import Files

    (tmp_path / "big.css").write_bytes(HTML)
    r, raw = await raw_get(Deflater(Files(tmp_path)), path="/big.css")
    assert "content-encoding" not in r.headers and raw == HTML
    assert r.headers["vary"] == "accept-encoding"
    r, raw = await raw_get(Deflater(Files(tmp_path), compress_files=True), path="/big.css")
    assert r.headers["content-encoding"] == "gzip" and gzip.decompress(raw) == HTML
