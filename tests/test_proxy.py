"""The trusted-proxy policy (:mod:`trio_rack.proxy`): pure tests on env dicts, plus one through
the real connection loop over a memory stream.

The theme: a header changes ``env`` only when the peer is a trusted proxy, and then only as far
as the chain of trusted hops reaches.  Every spoofing test states what the attacker sends and
what the proxy adds.
"""

from __future__ import annotations

import json
from typing import Any

import h11
import pytest

from trio_rack.app.env import ConnInfo, build_env
from trio_rack.app.proxy import ProxyHeaders, parse_forwarded
from trio_rack.config import ConfigError, Limits
from trio_rack.http1.strict import request_head
from trio_rack.testing import ServerState, memory_connection

CLIENT = "198.51.100.2"  # the real client (TEST-NET-2)
ATTACKER_CLAIM = "203.0.113.66"  # what a spoofing client claims to be (TEST-NET-3)


def make_env(*headers: tuple[str, str], peer: str = "127.0.0.1", scheme: str = "http") -> dict[str, Any]:
    """The env the connection builds for ``GET /`` with ``headers`` from ``peer``.

    The headers are added the way ``build_env`` adds them (repeats joined with ", ") but without
    h11's validation, so that values h11 would refuse still test the pure layer.
    """
    request = h11.Request(method="GET", target="/", headers=[("host", "app.example")])
    remote = (peer, 40000) if peer else None
    env = build_env(request_head(request), ConnInfo(scheme, ("127.0.0.1", 8000), remote))
    for name, value in headers:
        key = "HTTP_" + name.upper().replace("-", "_")
        env[key] = value if key not in env else env[key] + ", " + value
    return env


def applied(
    policy: ProxyHeaders, *headers: tuple[str, str], peer: str = "127.0.0.1", scheme: str = "http"
) -> dict[str, Any]:
    env = make_env(*headers, peer=peer, scheme=scheme)
    policy.apply(env)
    return env


def client_of(env: dict[str, Any]) -> tuple[str, str, str]:
    return env["REMOTE_ADDR"], env["REMOTE_PORT"], env["rack.url_scheme"]


LOOPBACK = ProxyHeaders()
INTERNAL = ProxyHeaders(["127.0.0.1", "::1", "10.0.0.0/8"])
FORWARDED = ProxyHeaders(["127.0.0.1", "10.0.0.0/8"], header="forwarded")


# ------------------------------------------------------------------------ untrusted peers


@pytest.mark.parametrize(
    "headers",
    [
        [("x-forwarded-for", ATTACKER_CLAIM), ("x-forwarded-proto", "https")],
        [("x-forwarded-for", f"{ATTACKER_CLAIM}, 127.0.0.1")],
        [("x-forwarded-host", "evil.example")],
    ],
)
def test_an_untrusted_peer_changes_nothing(headers: list[tuple[str, str]]) -> None:
    policy = ProxyHeaders(["127.0.0.1", "10.0.0.0/8"], forwarded_host=True)
    before = make_env(*headers, peer=CLIENT)
    after = applied(policy, *headers, peer=CLIENT)
    assert after == before
    assert client_of(after) == (CLIENT, "40000", "http")


def test_an_untrusted_peer_changes_nothing_in_forwarded_mode() -> None:
    headers = [("forwarded", f"for={ATTACKER_CLAIM};proto=https;host=evil.example")]
    assert applied(FORWARDED, *headers, peer=CLIENT) == make_env(*headers, peer=CLIENT)


def test_a_peer_that_is_only_in_the_chain_is_not_trusted() -> None:
    # 10.0.0.1 is trusted as a chain entry, but the connection itself comes from elsewhere
    env = applied(INTERNAL, ("x-forwarded-for", "10.0.0.1"), peer=CLIENT)
    assert env["REMOTE_ADDR"] == CLIENT


def test_no_proxy_headers_leaves_env_alone() -> None:
    assert applied(LOOPBACK) == make_env()


# -------------------------------------------------------------------------- trusted peers


def test_one_proxy_sets_address_and_scheme() -> None:
    env = applied(LOOPBACK, ("x-forwarded-for", CLIENT), ("x-forwarded-proto", "https"))
    assert client_of(env) == (CLIENT, "0", "https")  # the client's port is unknown: "0"
    assert env["SERVER_PORT"] == "443"  # Host had no port: the default of the new scheme
    assert env["HTTP_HOST"] == "app.example"


def test_an_explicit_host_port_survives_a_scheme_change() -> None:
    env = make_env(("x-forwarded-proto", "https"))
    env["HTTP_HOST"], env["SERVER_PORT"] = "app.example:8443", "8443"
    LOOPBACK.apply(env)
    assert env["SERVER_PORT"] == "8443"


def test_what_the_client_wrote_left_of_the_proxy_entry_is_ignored() -> None:
    # the client sends X-Forwarded-For: ATTACKER_CLAIM; nginx appends the real address
    env = applied(LOOPBACK, ("x-forwarded-for", f"{ATTACKER_CLAIM}, {CLIENT}"))
    assert env["REMOTE_ADDR"] == CLIENT


def test_repeated_x_forwarded_for_lines_form_one_chain() -> None:
    env = applied(LOOPBACK, ("x-forwarded-for", ATTACKER_CLAIM), ("x-forwarded-for", CLIENT))
    assert env["REMOTE_ADDR"] == CLIENT


def test_multi_hop_chain_skips_trusted_proxies() -> None:
    chain = f"{ATTACKER_CLAIM}, {CLIENT}, 10.1.2.3, 10.0.0.1"  # CDN-ish edge 10.1.2.3, then 10.0.0.1
    env = applied(INTERNAL, ("x-forwarded-for", chain), peer="10.9.9.9")
    assert env["REMOTE_ADDR"] == CLIENT


def test_untrusted_hop_in_the_middle_stops_the_walk() -> None:
    # an unknown proxy (192.0.2.9) forwarded for CLIENT: we can believe it only up to 192.0.2.9
    env = applied(INTERNAL, ("x-forwarded-for", f"{CLIENT}, 192.0.2.9, 10.0.0.1"))
    assert env["REMOTE_ADDR"] == "192.0.2.9"


def test_an_all_trusted_chain_gives_the_leftmost_entry() -> None:
    env = applied(INTERNAL, ("x-forwarded-for", "10.0.0.5, 10.0.0.1"))
    assert env["REMOTE_ADDR"] == "10.0.0.5"


def test_star_trusts_any_peer_but_not_the_chain() -> None:
    # Uvicorn's '*' would take the leftmost entry here: the attacker's claim
    star = ProxyHeaders(["*"])
    env = applied(star, ("x-forwarded-for", f"{ATTACKER_CLAIM}, {CLIENT}"), peer="172.17.0.1")
    assert env["REMOTE_ADDR"] == CLIENT
    with_net = ProxyHeaders(["*", "172.16.0.0/12"])
    env = applied(with_net, ("x-forwarded-for", f"{CLIENT}, 172.17.0.5"), peer="172.17.0.1")
    assert env["REMOTE_ADDR"] == CLIENT


def test_unix_socket_peers_are_trusted() -> None:
    env = applied(ProxyHeaders(["10.0.0.1"]), ("x-forwarded-for", CLIENT), ("x-forwarded-proto", "https"), peer="")
    assert client_of(env) == (CLIENT, "0", "https")


def test_ipv4_mapped_peer_matches_its_ipv4_entry() -> None:
    env = applied(LOOPBACK, ("x-forwarded-for", CLIENT), peer="::ffff:127.0.0.1")
    assert env["REMOTE_ADDR"] == CLIENT


@pytest.mark.parametrize(
    ("entry", "addr", "port"),
    [
        ("2001:db8::1", "2001:db8::1", "0"),
        ("[2001:db8::1]:4711", "2001:db8::1", "4711"),
        ("[2001:DB8:0::1]", "2001:db8::1", "0"),  # normalised
        ("192.0.2.43:8080", "192.0.2.43", "8080"),
    ],
)
def test_addresses_with_ports_and_ipv6(entry: str, addr: str, port: str) -> None:
    env = applied(LOOPBACK, ("x-forwarded-for", entry), peer="::1")
    assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == (addr, port)


# ---------------------------------------------------------------------- malformed values


@pytest.mark.parametrize(
    "value",
    [
        "not-an-ip",
        "",
        " , ",
        "1.2.3.4:99999",
        "1.2.3.4:0",
        "1.2.3.4:http",
        "[1.2.3.4]",
        "[2001:db8::1",
        "[2001:db8::1]x",
        "2001:db8::1:80:",
        "999.1.1.1",
        "1.2.3.4\x00",
        f"{CLIENT} 1.2.3.4",
    ],
)
def test_a_malformed_rightmost_entry_is_ignored(value: str) -> None:
    env = applied(LOOPBACK, ("x-forwarded-for", f"{ATTACKER_CLAIM}, {value}" if value else value))
    assert client_of(env) == ("127.0.0.1", "40000", "http")


def test_a_malformed_entry_stops_the_walk_at_the_last_readable_hop() -> None:
    env = applied(INTERNAL, ("x-forwarded-for", f"{ATTACKER_CLAIM}, garbage, 10.0.0.1"))
    assert env["REMOTE_ADDR"] == "10.0.0.1"


def test_unknown_client_keeps_the_nearest_known_address() -> None:
    env = applied(LOOPBACK, ("x-forwarded-for", "unknown"), ("x-forwarded-proto", "https"))
    assert client_of(env) == ("127.0.0.1", "40000", "https")


@pytest.mark.parametrize(
    ("proto", "scheme"),
    [
        ("https", "https"),
        ("HTTPS", "https"),
        (" https ", "https"),
        ("wss", "https"),
        ("ws", "http"),
        ("http", "http"),
        ("ftp", "http"),
        ("javascript", "http"),
        ("https://", "http"),
        ("", "http"),
    ],
)
def test_only_known_schemes_are_applied(proto: str, scheme: str) -> None:
    assert applied(LOOPBACK, ("x-forwarded-proto", proto))["rack.url_scheme"] == scheme


def test_a_downgrade_to_http_is_applied_too() -> None:
    env = applied(LOOPBACK, ("x-forwarded-proto", "http"), scheme="https")
    assert env["rack.url_scheme"] == "http"
    assert env["SERVER_PORT"] == "80"


def test_proto_list_aligned_with_the_chain_picks_the_clients_entry() -> None:
    headers = [("x-forwarded-for", f"{CLIENT}, 10.0.0.1"), ("x-forwarded-proto", "https, http")]
    assert applied(INTERNAL, *headers)["rack.url_scheme"] == "https"
    # not aligned: the value the nearest proxy wrote
    headers = [("x-forwarded-for", f"{CLIENT}, 10.0.0.1"), ("x-forwarded-proto", "https")]
    assert applied(INTERNAL, *headers)["rack.url_scheme"] == "https"


# ------------------------------------------------------------------------------ Forwarded


def test_forwarded_sets_address_port_and_scheme() -> None:
    env = applied(FORWARDED, ("forwarded", 'for="[2001:db8:cafe::17]:4711";proto=https;by=10.0.0.1'))
    assert client_of(env) == ("2001:db8:cafe::17", "4711", "https")


def test_forwarded_multi_hop() -> None:
    value = f"for={ATTACKER_CLAIM};proto=http, for={CLIENT};proto=https, for=10.1.2.3;proto=https"
    env = applied(FORWARDED, ("forwarded", value))
    assert client_of(env) == (CLIENT, "0", "https")


def test_forwarded_names_are_case_insensitive_and_quotes_may_hold_separators() -> None:
    env = applied(FORWARDED, ("forwarded", f'For="{CLIENT}";Proto="https";host="a,b;c"'))
    assert client_of(env) == (CLIENT, "0", "https")


@pytest.mark.parametrize("node", ["unknown", "_hidden", "_abc.def-1"])
def test_forwarded_unknown_or_obfuscated_node_keeps_the_address_but_applies_proto(node: str) -> None:
    env = applied(FORWARDED, ("forwarded", f"for={ATTACKER_CLAIM}, for={node};proto=https"))
    assert client_of(env) == ("127.0.0.1", "40000", "https")


def test_forwarded_obfuscated_port_is_dropped() -> None:
    env = applied(FORWARDED, ("forwarded", f'for="{CLIENT}:_port"'))
    assert client_of(env)[:2] == (CLIENT, "0")


@pytest.mark.parametrize(
    "value",
    [
        f"for={CLIENT};for=192.0.2.1",  # a parameter twice in one element
        f'for="{CLIENT}',  # unterminated quote
        f"for {CLIENT}",  # no "="
        f"for = {CLIENT}",  # no whitespace around "=" in RFC 7239
        "for=[2001:db8::1]:80 junk",
        f"for=<{CLIENT}>",
        "proto=https;for=",
    ],
)
def test_forwarded_malformed_rightmost_element_is_ignored(value: str) -> None:
    env = applied(FORWARDED, ("forwarded", f"for={ATTACKER_CLAIM};proto=https, {value}"))
    assert client_of(env) == ("127.0.0.1", "40000", "http")


def test_forwarded_unterminated_quote_swallows_what_follows() -> None:
    hops = parse_forwarded(f'for={CLIENT}, for="x, for=10.0.0.1')
    assert [h.addr if h else None for h in hops] == [CLIENT, None]
    assert hops[1] is None


def test_forwarded_empty_elements_are_skipped() -> None:
    hops = parse_forwarded(f" , ;, for={CLIENT} ,, ")
    assert [h.addr for h in hops if h] == [CLIENT] and len(hops) == 1


def test_forwarded_element_without_for_is_an_unknown_hop() -> None:
    env = applied(FORWARDED, ("forwarded", f"for={ATTACKER_CLAIM}, proto=https"))
    assert client_of(env) == ("127.0.0.1", "40000", "https")


# ------------------------------------------------- one header family: no pass-through spoofing


def test_x_forwarded_mode_ignores_a_client_forwarded_header() -> None:
    # nginx writes X-Forwarded-For and forwards the client's own Forwarded header untouched
    headers = [("forwarded", f"for={ATTACKER_CLAIM};proto=https"), ("x-forwarded-for", CLIENT)]
    assert client_of(applied(LOOPBACK, *headers)) == (CLIENT, "0", "http")


def test_forwarded_mode_ignores_x_forwarded_headers() -> None:
    headers = [("x-forwarded-for", ATTACKER_CLAIM), ("x-forwarded-proto", "https")]
    assert client_of(applied(FORWARDED, *headers)) == ("127.0.0.1", "40000", "http")


# ---------------------------------------------------------------------------------- host


def test_forwarded_host_is_off_by_default() -> None:
    env = applied(LOOPBACK, ("x-forwarded-host", "public.example"))
    assert (env["HTTP_HOST"], env["SERVER_NAME"]) == ("app.example", "app.example")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("public.example", ("public.example", "public.example", "443")),
        ("public.example:8443", ("public.example:8443", "public.example", "8443")),
        ("[2001:db8::1]:8443", ("[2001:db8::1]:8443", "[2001:db8::1]", "8443")),
        ("evil.example/path", ("app.example", "app.example", "443")),
        ("evil.example\r\nx: y", ("app.example", "app.example", "443")),
        ("a b", ("app.example", "app.example", "443")),
    ],
)
def test_forwarded_host_when_enabled(value: str, expected: tuple[str, str, str]) -> None:
    policy = ProxyHeaders(forwarded_host=True)
    env = applied(policy, ("x-forwarded-host", value), ("x-forwarded-proto", "https"))
    assert (env["HTTP_HOST"], env["SERVER_NAME"], env["SERVER_PORT"]) == expected


def test_forwarded_host_parameter() -> None:
    policy = ProxyHeaders(header="forwarded", forwarded_host=True)
    env = applied(policy, ("forwarded", f'for={CLIENT};host="public.example:8080"'))
    assert (env["SERVER_NAME"], env["SERVER_PORT"]) == ("public.example", "8080")


# ---------------------------------------------------------------------------- configuration


@pytest.mark.parametrize("entry", ["localhost", "10.0.0.0/33", "1.2.3", "unix", "::1/129"])
def test_bad_trusted_entries_are_config_errors(entry: str) -> None:
    with pytest.raises(ConfigError, match="forwarded-allow-ips"):
        ProxyHeaders(["127.0.0.1", entry])


def test_trusted_entries_as_a_comma_separated_string() -> None:
    policy = ProxyHeaders("127.0.0.1, 10.0.0.0/8 ,[::1],")
    assert policy.is_trusted_peer("10.2.3.4") and policy.is_trusted_peer("::1")
    assert not policy.is_trusted_peer("11.0.0.1")
    assert "10.0.0.0/8" in repr(policy)


def test_unknown_header_family_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        ProxyHeaders(header="x-real-ip")  # type: ignore[arg-type]


# ------------------------------------------------------------------ through the connection


async def test_the_connection_applies_the_policy() -> None:
    async def app(env: dict[str, Any]) -> Any:
        body = json.dumps([env["REMOTE_ADDR"], env["REMOTE_PORT"], env["rack.url_scheme"]])
        return 200, {"content-type": "application/json"}, [body.encode()]

    state = ServerState(app, Limits(), access_log=False, proxy=ProxyHeaders())
    async with memory_connection(app, state=state) as client:  # the peer is 127.0.0.1
        spoofed = await client.request(
            "GET", "/", headers=[("x-forwarded-for", f"{ATTACKER_CLAIM}, {CLIENT}"), ("x-forwarded-proto", "https")]
        )
        plain = await client.request("GET", "/")
    assert json.loads(spoofed.body) == [CLIENT, "0", "https"]
    assert json.loads(plain.body) == ["127.0.0.1", "12345", "http"]
