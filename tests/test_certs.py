"""The development certificate: made once, reused, private, and good for a real handshake."""

from __future__ import annotations

import os
import ssl
import stat
import sys
from pathlib import Path

import pytest
import trio
import trio.testing

from trio_rack.config import ConfigError
from trio_rack.net.tls import make_server_context
from trio_rack.server.certs import CA_FILE, CERT_FILE, KEY_FILE, DevCert, dev_certificate, state_dir


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_creates_three_files_with_private_permissions(tmp_path: Path) -> None:
    directory = tmp_path / "deep" / "state"
    dev = dev_certificate(directory=directory)
    assert dev == DevCert(ca=directory / CA_FILE, cert=directory / CERT_FILE, key=directory / KEY_FILE)
    assert all(p.is_file() for p in (dev.ca, dev.cert, dev.key))
    assert _mode(directory) == 0o700
    assert _mode(dev.key) == 0o600
    assert b"PRIVATE KEY" in dev.key.read_bytes()


def test_the_ca_private_key_is_not_stored(tmp_path: Path) -> None:
    dev = dev_certificate(directory=tmp_path)
    holding_keys = [p.name for p in tmp_path.iterdir() if b"PRIVATE KEY" in p.read_bytes()]
    assert holding_keys == [KEY_FILE]
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == sorted(
        [CA_FILE, CERT_FILE, KEY_FILE]
    )
    assert b"BEGIN CERTIFICATE" in dev.ca.read_bytes()


def test_later_calls_reuse_the_same_files(tmp_path: Path) -> None:
    first = dev_certificate(directory=tmp_path)
    contents = {p: p.read_bytes() for p in (first.ca, first.cert, first.key)}
    inodes = {p: p.stat().st_ino for p in contents}
    second = dev_certificate(directory=tmp_path)
    assert second == first
    assert {p: p.read_bytes() for p in contents} == contents
    assert {p: p.stat().st_ino for p in contents} == inodes  # not even rewritten


def test_an_incomplete_set_is_replaced(tmp_path: Path) -> None:
    first = dev_certificate(directory=tmp_path)
    old_ca = first.ca.read_bytes()
    first.cert.unlink()
    second = dev_certificate(directory=tmp_path)
    assert second.cert.is_file()
    assert second.ca.read_bytes() != old_ca  # a new CA: the old one's key is gone
    make_server_context(second.cert, second.key)


def test_a_corrupt_file_is_replaced(tmp_path: Path) -> None:
    first = dev_certificate(directory=tmp_path)
    first.key.write_bytes(b"not a key\n")
    second = dev_certificate(directory=tmp_path)
    make_server_context(second.cert, second.key)


def test_state_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    monkeypatch.delenv("TRIO_RACK_STATE_DIR", raising=False)
    assert state_dir() == tmp_path / "home" / ".local" / "state" / "trio-rack"
    monkeypatch.setenv("XDG_STATE_HOME", "relative/ignored")
    assert state_dir() == tmp_path / "home" / ".local" / "state" / "trio-rack"
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert state_dir() == tmp_path / "xdg" / "trio-rack"
    monkeypatch.setenv("TRIO_RACK_STATE_DIR", str(tmp_path / "explicit"))
    assert state_dir() == tmp_path / "explicit"


def test_env_var_directs_where_files_go(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TRIO_RACK_STATE_DIR", str(tmp_path / "mine"))
    dev = dev_certificate()
    assert dev.ca.parent == tmp_path / "mine"
    assert dev.ca.is_file()


def test_unusable_directory_is_one_clear_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(ConfigError) as info:
        dev_certificate(directory=blocker / "state")
    message = str(info.value)
    assert "\n" not in message
    assert "cannot create the development certificate" in message
    assert str(blocker / "state") in message


async def test_processes_starting_at_once_share_one_certificate(tmp_path: Path) -> None:
    """Several processes race to create the files; the lock makes them agree on one CA."""
    script = "from trio_rack.server.certs import dev_certificate; print(dev_certificate().ca.read_text())"
    env = {**os.environ, "TRIO_RACK_STATE_DIR": str(tmp_path / "shared")}
    outputs: list[bytes] = []

    async def one() -> None:
        result = await trio.run_process([sys.executable, "-c", script], env=env, capture_stdout=True)
        outputs.append(result.stdout)

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            for _ in range(8):
                nursery.start_soon(one)
    assert len(outputs) == 8
    assert len(set(outputs)) == 1
    assert b"BEGIN CERTIFICATE" in outputs[0]


@pytest.mark.parametrize("hostname", ["localhost", "127.0.0.1", "::1"])
async def test_tls_handshake_trusting_the_ca(tmp_path: Path, hostname: str) -> None:
    dev = dev_certificate(directory=tmp_path)
    server_ctx = make_server_context(dev.cert, dev.key)
    client_ctx = ssl.create_default_context(cafile=str(dev.ca))
    client_ctx.set_alpn_protocols(["http/1.1"])
    client_raw, server_raw = trio.testing.memory_stream_pair()
    client = trio.SSLStream(client_raw, client_ctx, server_hostname=hostname)
    server = trio.SSLStream(server_raw, server_ctx, server_side=True)

    async def serve_one() -> None:
        await server.do_handshake()
        await server.send_all(await server.receive_some(100) + b" back")

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_one)
            await client.do_handshake()
            await client.send_all(b"ping")
            assert await client.receive_some(100) == b"ping back"
    assert client.selected_alpn_protocol() == "http/1.1"


async def test_a_different_name_is_refused(tmp_path: Path) -> None:
    dev = dev_certificate(directory=tmp_path)
    client_ctx = ssl.create_default_context(cafile=str(dev.ca))
    client_raw, server_raw = trio.testing.memory_stream_pair()
    client = trio.SSLStream(client_raw, client_ctx, server_hostname="example.com")
    server = trio.SSLStream(server_raw, make_server_context(dev.cert, dev.key), server_side=True)

    async def server_side() -> None:
        try:
            await server.do_handshake()
        except trio.BrokenResourceError:
            pass

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server_side)
            with pytest.raises(trio.BrokenResourceError) as info:
                await client.do_handshake()
            await trio.aclose_forcefully(client)
    assert isinstance(info.value.__cause__, ssl.SSLCertVerificationError)
