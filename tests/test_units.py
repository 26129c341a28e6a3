"""Unit tests of the pure layers: bind parsing, limits, response validation, env, access log."""

from __future__ import annotations

import h11
import pytest

from trio_rack.app.accesslog import escape
from trio_rack.app.env import ConnInfo, build_env
from trio_rack.app.response import AppError, BodyKind, prepare_response
from trio_rack.config import Bind, ConfigError, Limits, parse_bind
from trio_rack.http1.strict import request_head
from trio_rack.http1.wire import serialize_head


@pytest.mark.parametrize(
    "url, expected",
    [
        ("https://localhost:9292", Bind("https", host="localhost", port=9292)),
        ("http://0.0.0.0:8080", Bind("http", host="0.0.0.0", port=8080)),
        ("https://[::1]:9292", Bind("https", host="::1", port=9292)),
        ("http://127.0.0.1", Bind("http", host="127.0.0.1", port=80)),
        ("https://example.org/", Bind("https", host="example.org", port=443)),
        ("unix:/tmp/a.sock", Bind("http", kind="unix", path="/tmp/a.sock")),
        ("fd://3", Bind("http", kind="fd", fd=3)),
        ("fd://4?scheme=https", Bind("https", kind="fd", fd=4)),
    ],
)
def test_parse_bind(url, expected):
    assert parse_bind(url) == expected


@pytest.mark.parametrize(
    "url, needle",
    [
        ("ftp://x:1", "must start with"),
        ("localhost:9292", "must start with"),
        ("http://:80", "names no host"),
        ("http://x:99999", "malformed"),
        ("http://x:port", "malformed"),
        ("http://x:80/path", "nothing more"),
        ("unix:", "no socket path"),
        ("fd://x", "file descriptor"),
        ("", "non-empty"),
    ],
)
def test_parse_bind_errors_are_one_clear_line(url, needle):
    with pytest.raises(ConfigError) as info:
        parse_bind(url)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_bind_str_round_trips():
    for url in ("https://[::1]:9292", "http://127.0.0.1:80", "unix:/x.sock", "fd://3?scheme=https"):
        assert str(parse_bind(url)) == url


def test_limits_validate():
    assert Limits().max_body_size is None
    with pytest.raises(ConfigError, match="header_timeout"):
        Limits(header_timeout=0)
    with pytest.raises(ConfigError, match="max_connections"):
        Limits(max_connections=1.5)
    with pytest.raises(ConfigError):
        Limits(keepalive_timeout=float("nan"))


def test_prepare_buffered_response():
    p = prepare_response((200, {"content-type": "text/plain", "content-length": "999"}, [b"ab", bytearray(b"c")]))
    assert p.kind is BodyKind.BUFFERED and p.length == 3
    assert (b"content-length", b"3") in p.headers and (b"content-length", b"999") not in p.headers


def test_prepare_buffered_chunks_are_a_checked_copy():
    """The chunks sent are bytes (a bytearray or memoryview converted) in a list of their own: an
    app that changes its list after returning it changes nothing that is sent."""
    body = [b"ab", bytearray(b"c"), memoryview(b"de")]
    p = prepare_response((200, {}, body))
    assert p.chunks == [b"ab", b"c", b"de"] and all(type(c) is bytes for c in p.chunks)
    body.append(b"late")
    assert p.chunks == [b"ab", b"c", b"de"] and p.length == 5
    assert (b"content-length", b"5") in p.headers
    t = prepare_response((200, {}, (b"x", bytearray(b"yz"))))
    assert t.chunks == [b"x", b"yz"] and t.length == 3


def test_prepare_accepts_list_triple_and_strips_value_whitespace():
    p = prepare_response([200, {"x": "  v  "}, []])
    assert (b"x", b"v") in p.headers


@pytest.mark.parametrize(
    "result, needle",
    [
        ("nope", "must return (status, headers, body)"),
        ((True, {}, []), "status must be an int"),
        (("200", {}, []), "status must be an int"),
        ((99, {}, []), "status must be an int"),
        ((101, {}, []), "informational"),
        ((200, [("a", "b")], []), "headers must be a dict"),
        ((200, {"X": "1"}, []), "lower-case"),
        ((200, {"x": "a\nb"}, []), "'x'"),
        ((200, {"x": "é€"}, []), "Latin-1"),
        ((200, {"x": b"v"}, []), "must be a str"),
        ((200, {b"x": "v"}, []), "names must be str"),
        ((200, {}, [b"ok", "str"]), "chunks must be bytes"),
        ((200, {}, object()), "response body must be"),
        ((200, {"rack.hijack": "notcallable"}, []), "rack.hijack"),
        ((200, {"content-length": "abc"}, iter([])), "not a number"),
    ],
)
def test_prepare_rejects_contract_breaches(result, needle):
    with pytest.raises(AppError) as info:
        prepare_response(result)
    assert needle in str(info.value)


def test_partial_hijack_keeps_hop_by_hop_and_skips_length():
    async def hijack(stream):
        pass

    p = prepare_response((101, {"upgrade": "websocket", "connection": "Upgrade", "rack.hijack": hijack}, []))
    assert p.hijack is hijack
    assert (b"upgrade", b"websocket") in p.headers
    assert not any(name == b"content-length" for name, _ in p.headers)
    head = serialize_head(101, p.headers)
    assert head.startswith(b"HTTP/1.1 101 Switching Protocols\r\n") and head.endswith(b"\r\n\r\n")


def _request(target: bytes, headers=(("host", "h"),), method=b"GET", version=b"1.1"):
    return request_head(h11.Request(method=method, target=target, headers=list(headers), http_version=version))


def test_build_env_basics_and_ipv6_host():
    info = ConnInfo("https", ("::1", 9292), ("::1", 5555))
    env = build_env(_request(b"/a?b=c", headers=[("host", "[::1]:9292")]), info)
    assert env["SERVER_NAME"] == "[::1]" and env["SERVER_PORT"] == "9292"
    assert env["rack.url_scheme"] == "https" and env["REMOTE_ADDR"] == "::1"
    env = build_env(_request(b"/", headers=[("host", "example.org")]), info)
    assert env["SERVER_PORT"] == "443"


def test_build_env_without_host_uses_server_address():
    env = build_env(_request(b"/", headers=[], version=b"1.0"), ConnInfo("http", ("127.0.0.1", 8000), None))
    assert env["SERVER_NAME"] == "127.0.0.1" and env["SERVER_PORT"] == "8000"
    assert env["SERVER_PROTOCOL"] == "HTTP/1.0"


def test_build_env_absolute_form_without_path():
    env = build_env(_request(b"http://example.org?x=1"), ConnInfo("http", None, None))
    assert env["PATH_INFO"] == "/" and env["QUERY_STRING"] == "x=1"
    assert env["HTTP_HOST"] == "example.org"


def test_build_env_shares_repeated_header_text_between_requests():
    """Header values, the method and SERVER_NAME/SERVER_PORT repeat from request to request: env
    holds one shared str for each (an open stream's env lives as long as it does), equal to
    what decoding gives; long values are decoded each time."""
    info = ConnInfo("http", ("127.0.0.1", 8000), ("127.0.0.1", 5555))
    long_value = "v" * 300
    latin = "caf\xe9".encode("latin-1")
    headers = [("host", "example.org:8080"), ("accept", "*/*"), ("x-long", long_value), ("x-latin", latin)]
    first = build_env(_request(b"/", headers=headers), info)
    second = build_env(_request(b"/", headers=headers), info)
    for key in ("HTTP_HOST", "HTTP_ACCEPT", "HTTP_X_LATIN", "SERVER_NAME", "SERVER_PORT", "REQUEST_METHOD"):
        assert first[key] is second[key], key
    assert first["HTTP_X_LATIN"] == "caf\xe9" and first["REQUEST_METHOD"] == "GET"
    assert (first["SERVER_NAME"], first["SERVER_PORT"]) == ("example.org", "8080")
    assert first["HTTP_X_LONG"] == second["HTTP_X_LONG"] == long_value
    assert first["HTTP_X_LONG"] is not second["HTTP_X_LONG"]
    # an unusual method is decoded as before
    assert build_env(_request(b"/", method=b"PROPFIND"), info)["REQUEST_METHOD"] == "PROPFIND"


def test_build_env_host_cache_keeps_schemes_apart():
    """The same Host without a port is port 80 over http and 443 over https, cached or not."""
    plain = ConnInfo("http", ("h", 80), ("c", 1))
    tls = ConnInfo("https", ("h", 443), ("c", 1), tls={})
    for _ in range(2):
        assert build_env(_request(b"/", headers=[("host", "example.com")]), plain)["SERVER_PORT"] == "80"
        assert build_env(_request(b"/", headers=[("host", "example.com")]), tls)["SERVER_PORT"] == "443"


def test_build_env_host_cache_cannot_be_poisoned_across_schemes():
    """A Host text holding a space (HTTP/2's ``:authority`` is not checked against HOST_RE)
    cannot pass for another scheme's cache key: https for ``victim.example`` stays 443."""
    plain = ConnInfo("http", ("h", 80), ("c", 1))
    tls = ConnInfo("https", ("h", 443), ("c", 1), tls={})
    build_env(_request(b"/", headers=[("host", "victim.example 443")]), plain)
    env = build_env(_request(b"/", headers=[("host", "victim.example")]), tls)
    assert (env["SERVER_NAME"], env["SERVER_PORT"]) == ("victim.example", "443")


def test_build_env_text_caches_are_bounded(monkeypatch):
    """Values are client-chosen: a full cache starts afresh instead of growing."""
    from trio_rack.app import env as env_module

    monkeypatch.setattr(env_module, "_VALUE_CACHE_MAX", 8)
    monkeypatch.setattr(env_module, "_VALUE_CACHE", {})
    monkeypatch.setattr(env_module, "_HOST_CACHE", {})
    info = ConnInfo("http", ("h", 80), ("c", 1))
    for i in range(50):
        env = build_env(_request(b"/", headers=[("host", f"h{i}.example"), ("x-id", str(i))]), info)
        assert env["HTTP_X_ID"] == str(i) and env["SERVER_NAME"] == f"h{i}.example"
        assert len(env_module._VALUE_CACHE) <= 8 and len(env_module._HOST_CACHE) <= 8


def test_request_head_shares_repeated_names_and_values():
    """Two requests with the same fields get the same bytes objects in their heads (held as long
    as each request lives), equal to what was received; long values are each request's own."""
    long_value = "x" * 300
    fields = [("Host", "example.org"), ("X-Long", long_value), ("Empty", "")]
    first, second = (_request(b"/", headers=fields, method=b"PATCH") for _ in range(2))
    expected = [(b"host", b"example.org"), (b"x-long", long_value.encode()), (b"empty", b"")]
    assert first.headers == second.headers == expected
    assert first.method is second.method and first.method == b"PATCH"
    assert first.headers[0][0] is second.headers[0][0] and first.headers[0][1] is second.headers[0][1]
    assert first.headers[1][1] is not second.headers[1][1]


def test_request_head_sharing_is_bounded(monkeypatch):
    from trio_rack.http1 import strict

    monkeypatch.setattr(strict, "_SHARED_MAX", 8)
    monkeypatch.setattr(strict, "_SHARED", {})
    for i in range(50):
        head = _request(b"/", headers=[("host", "h"), (f"x-{i}", str(i))])
        assert head.headers == [(b"host", b"h"), (f"x-{i}".encode(), str(i).encode())]
        assert len(strict._SHARED) <= 8


def test_date_field_is_one_tuple_a_second(monkeypatch):
    """Every response's ``date`` header is the same pair within a second, and follows the clock."""
    from trio_rack import state

    clock = [1_800_000_000.2]
    monkeypatch.setattr(state.time, "time", lambda: clock[0])
    first = state.date_field()
    assert first == (b"date", state.date_header()) == (b"date", b"Fri, 15 Jan 2027 08:00:00 GMT")
    clock[0] += 0.5
    assert state.date_field() is first
    clock[0] += 1
    later = state.date_field()
    assert later == (b"date", b"Fri, 15 Jan 2027 08:00:01 GMT") and state.date_header() == later[1]


def test_access_log_escape_blocks_forged_lines():
    assert escape('a"b\\c\nd\x1b') == 'a\\"b\\\\c\\x0ad\\x1b'
    assert escape("plain text") == "plain text"


def test_validated_header_cache_never_lets_hop_by_hop_through():
    async def hijack(stream):
        pass

    prepare_response((101, {"upgrade": "websocket", "rack.hijack": hijack}, []))
    p = prepare_response((200, {"upgrade": "websocket"}, [b"x"]))
    assert not any(name == b"upgrade" for name, _ in p.headers)


def test_max_connections_is_fitted_to_the_open_file_limit(caplog, monkeypatch):
    import resource

    from trio_rack.server.serve import FD_RESERVE, _fit_connections_to_fd_limit

    limit = {"soft": 200, "hard": 1000}

    def setrlimit(which, value):
        if value[0] > limit["hard"]:
            raise ValueError("not allowed")
        limit["soft"] = value[0]

    monkeypatch.setattr(resource, "getrlimit", lambda which: (limit["soft"], limit["hard"]))
    monkeypatch.setattr(resource, "setrlimit", setrlimit)
    # room to grow: the soft limit is raised and nothing is capped
    assert _fit_connections_to_fd_limit(Limits(max_connections=500)).max_connections == 500
    assert limit["soft"] == 500 + FD_RESERVE
    # past the hard limit: capped, with a warning
    fitted = _fit_connections_to_fd_limit(Limits(max_connections=10_000))
    assert fitted.max_connections == 1000 - FD_RESERVE
    assert "exceeds the open-file limit" in caplog.text
