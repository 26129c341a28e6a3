"""``rediss://``: the bus over TLS against a real ``redis-server`` speaking TLS only (the
contract itself runs over TLS in test_broadcast.py, parameter ``rediss``).  Here: how the CA
is given, what is checked (chain and host name), the one clear error when the handshake is
refused, a client certificate, TLS settings that are wrong, and an outage over TLS."""

from __future__ import annotations

import logging
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trustme

from broadcast_support import REDIS_SERVER, RedisServer
from e2e_support import wait_until
from trio_rack import broadcast

pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed (.ci/run installs it)")


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_server(tmp_path: Path, ca: trustme.CA) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path, tls=ca)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def base(server: RedisServer) -> str:
    """The server's URL without its query (no CA given)."""
    return server.url.partition("?")[0]


async def roundtrip(bus: broadcast.Bus) -> None:
    async with bus.subscribe("c") as sub:
        await bus.publish("c", "over TLS")
        with trio.fail_after(5):
            assert await sub.__anext__() == "over TLS"


async def test_the_server_speaks_only_tls(tls_server: RedisServer) -> None:
    """So the contract's ``rediss`` run is TLS: plain ``redis://`` to it never gets an answer."""
    assert tls_server.url.startswith("rediss://127.0.0.1:") and "?ssl_ca_certs=" in tls_server.url
    async with broadcast.connect(base(tls_server).replace("rediss:", "redis:"), command_timeout=1) as bus:
        with trio.fail_after(10), pytest.raises(broadcast.Unavailable):
            await bus.publish("c", "plain text")


async def test_ca_in_the_url_query(tls_server: RedisServer) -> None:
    async with broadcast.connect(tls_server.url) as bus:
        await roundtrip(bus)
        assert tls_server.client_count() >= 1  # connected to this server, over TLS


async def test_ca_as_an_ssl_context(tls_server: RedisServer, ca: trustme.CA) -> None:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    async with broadcast.connect(base(tls_server), ssl_context=context) as bus:
        await roundtrip(bus)


@pytest.mark.parametrize("given", ["another CA", "no CA (the system's trust store)"])
async def test_an_untrusted_certificate_is_one_unavailable_error(
    tls_server: RedisServer, tmp_path: Path, caplog: pytest.LogCaptureFixture, given: str
) -> None:
    caplog.set_level(logging.DEBUG, logger="trio_rack.broadcast")
    url = base(tls_server)
    if given == "another CA":
        other = tmp_path / "other-ca.pem"
        trustme.CA().cert_pem.write_to_path(str(other))
        url += f"?ssl_ca_certs={other}"
    baseline = tls_server.client_count()
    with trio.fail_after(10), pytest.raises(broadcast.Unavailable) as info:
        async with broadcast.connect(url, command_timeout=2):
            pytest.fail("the bus opened with an untrusted certificate")
    message = str(info.value)
    assert message.startswith(f"Redis at {url}: TLS handshake refused: ")
    assert "certificate" in message and "ssl_ca_certs=" in message, message  # says why, and the remedy
    assert isinstance(info.value.__cause__, ssl.SSLCertVerificationError)
    # configuration, not an outage: no "lost Redis" warning, no reconnection loop left behind
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], [r.getMessage() for r in caplog.records]
    with trio.fail_after(5):
        await wait_until(lambda: tls_server.client_count() == baseline)


async def test_the_host_name_is_checked(tls_server: RedisServer) -> None:
    """The certificate is for 127.0.0.1; ``localhost`` is another name (coredis' own default
    would not check it; ours does), unless the URL turns the check off."""
    wrong_name = tls_server.url.replace("127.0.0.1", "localhost")
    with trio.fail_after(10), pytest.raises(broadcast.Unavailable, match="mismatch") as info:
        async with broadcast.connect(wrong_name, command_timeout=2):
            pass
    assert "ssl_ca_certs" not in str(info.value).partition("refused:")[2]  # not a CA problem: no CA hint
    async with broadcast.connect(wrong_name + "&ssl_check_hostname=false") as bus:
        await roundtrip(bus)


async def test_verification_can_be_switched_off_explicitly(tls_server: RedisServer) -> None:
    async with broadcast.connect(base(tls_server) + "?ssl_cert_reqs=none") as bus:
        await roundtrip(bus)


async def test_rediss_to_a_plain_port_says_tls_failed(tmp_path: Path, ca: trustme.CA) -> None:
    plain = RedisServer(tmp_path)
    plain.start()
    try:
        with trio.fail_after(10), pytest.raises(broadcast.Unavailable, match="TLS handshake failed, is it a TLS port"):
            async with broadcast.connect(plain.url.replace("redis:", "rediss:"), command_timeout=2):
                pass
    finally:
        plain.stop()


async def test_a_client_certificate_for_a_server_that_asks(tmp_path: Path, ca: trustme.CA) -> None:
    server = RedisServer(tmp_path, tls=ca, auth_clients=True)
    server.start()
    try:
        with trio.fail_after(10), pytest.raises(broadcast.Unavailable, match="requires a client certificate"):
            async with broadcast.connect(server.url, command_timeout=2):  # no certificate: refused at connect
                pytest.fail("the bus opened without the client certificate the server asks for")
        client = ca.issue_cert("app@example.test")
        cert, key = tmp_path / "client.pem", tmp_path / "client.key"
        client.cert_chain_pems[0].write_to_path(str(cert))
        client.private_key_pem.write_to_path(str(key))
        async with broadcast.connect(f"{server.url}&ssl_certfile={cert}&ssl_keyfile={key}") as bus:
            await roundtrip(bus)
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("url", "error"),
    [
        ("redis://127.0.0.1:1/0?ssl_ca_certs=/etc/ssl/certs/ca-certificates.crt", "need a rediss:// URL"),
        ("rediss://127.0.0.1:1/0?ssl_ca_cert=/x.pem", "unknown TLS parameter.*ssl_ca_cert"),
        ("rediss://127.0.0.1:1/0?ssl_ca_certs=/nonexistent/ca.pem", "rediss:// TLS files"),
        ("rediss://127.0.0.1:1/0?ssl_cert_reqs=maybe", "ssl_cert_reqs must be"),
        ("rediss://127.0.0.1:1/0?ssl_check_hostname=perhaps", "ssl_check_hostname must be true or false"),
        ("rediss://127.0.0.1:1/0?ssl_keyfile=/x.key", "ssl_keyfile needs ssl_certfile"),
    ],
)
async def test_bad_tls_settings_are_refused_before_connecting(url: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        async with broadcast.connect(url):
            pass


async def test_ssl_context_and_query_are_exclusive_and_need_rediss() -> None:
    context = ssl.create_default_context()
    with pytest.raises(ValueError, match="not both"):
        async with broadcast.connect("rediss://127.0.0.1:1/0?ssl_ca_certs=/x.pem", ssl_context=context):
            pass
    with pytest.raises(ValueError, match="need a rediss:// URL"):
        async with broadcast.connect("redis://127.0.0.1:1/0", ssl_context=context):
            pass
    with pytest.raises(TypeError, match="ssl.SSLContext"):
        async with broadcast.connect("rediss://127.0.0.1:1/0", ssl_context="/x.pem"):  # type: ignore[arg-type]
            pass


async def test_an_outage_over_tls_and_a_certificate_changed_meanwhile(
    tmp_path: Path, ca: trustme.CA, caplog: pytest.LogCaptureFixture
) -> None:
    """After the bus is open, a refused handshake is an outage like any other (the server may
    be mid-rotation): publish says ``Unavailable`` naming the TLS reason; one warning; when the
    trusted certificate is back, subscribers carry on."""
    caplog.set_level(logging.INFO, logger="trio_rack.broadcast")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    good = RedisServer(tmp_path / "a", tls=ca)
    good.start()
    impostor = RedisServer(tmp_path / "b", tls=trustme.CA(), port=good.port)
    try:
        async with broadcast.connect(good.url, command_timeout=2, max_backoff=0.2) as bus:
            async with bus.subscribe("c") as sub:
                await bus.publish("c", "one")
                with trio.fail_after(5):
                    assert await sub.__anext__() == "one"
                good.stop()
                impostor.start()
                with trio.fail_after(10):
                    await wait_until(lambda: bus._down)  # type: ignore[attr-defined]
                    with pytest.raises(broadcast.Unavailable, match="TLS handshake refused: .*certificate"):
                        await bus.publish("c", "lost")
                impostor.stop()
                good.start()
                with trio.fail_after(10):
                    while True:
                        try:
                            await bus.publish("c", "two")
                        except broadcast.Unavailable:
                            pass
                        with trio.move_on_after(0.2):
                            if await sub.__anext__() == "two":
                                break
    finally:
        impostor.stop()
        good.stop()
    lost = [r.getMessage() for r in caplog.records if "lost Redis" in r.getMessage()]
    back = [r for r in caplog.records if "reconnected to Redis" in r.getMessage()]
    assert len(lost) == 1 and len(back) == 1, [r.getMessage() for r in caplog.records]
