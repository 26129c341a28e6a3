"""Mutual TLS and the TLS options, end to end: real certificates (minted with trustme), a real
server on 127.0.0.1, and real clients (curl ``--cert/--key``, ``openssl s_client``).

Two CAs: the *server* CA signs the server's certificate (clients trust it with ``--cacert``),
the *client* CA signs the client certificates the server accepts (``ca_certs``).  A third,
unrelated CA signs a certificate the server must refuse.  Every server runs in process; the
CLI tests run ``python -m trio_rack serve`` as a subprocess, killed by PID in a ``finally``.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization

import trio_rack
from e2e_support import TLSFiles, curl, make_tls_files
from trio_rack import ConfigError, TLSConfig

OPENSSL = "/usr/bin/openssl"
TIMEOUT = 20


@dataclass(frozen=True)
class ClientCert:
    cert: Path  # the leaf, PEM
    key: Path
    subject: str  # RFC 4514, as cryptography writes it


def mint_client_cert(ca: trustme.CA, directory: Path, name: str) -> ClientCert:
    leaf = ca.issue_cert(f"{name}@example.com", common_name=name, organization_name="trio-rack tests")
    cert = directory / f"{name}.pem"
    key = directory / f"{name}-key.pem"
    cert.write_bytes(leaf.cert_chain_pems[0].bytes())
    leaf.private_key_pem.write_to_path(str(key))
    subject = x509.load_pem_x509_certificate(cert.read_bytes()).subject.rfc4514_string()
    return ClientCert(cert, key, subject)


@dataclass(frozen=True)
class PKI:
    server: TLSFiles
    client_ca_pem: Path
    alice: ClientCert  # signed by the client CA
    mallory: ClientCert  # signed by another CA


@pytest.fixture
def pki(tmp_path: Path) -> PKI:
    server = make_tls_files(tmp_path)
    client_ca = trustme.CA(organization_name="client CA")
    client_ca_pem = tmp_path / "client-ca.pem"
    client_ca.cert_pem.write_to_path(str(client_ca_pem))
    other_ca = trustme.CA(organization_name="someone else's CA")
    return PKI(
        server,
        client_ca_pem,
        mint_client_cert(client_ca, tmp_path, "alice"),
        mint_client_cert(other_ca, tmp_path, "mallory"),
    )


async def tls_app(env: dict[str, Any]) -> Any:
    body = json.dumps(dict(env["trio_rack.tls"])).encode()
    return 200, {"content-type": "application/json"}, [body]


async def start(nursery: trio.Nursery, pki: PKI, **options: Any) -> int:
    """Serve ``tls_app`` over https on 127.0.0.1; return the port."""
    tls = TLSConfig(cert=pki.server.cert_pem, key=pki.server.key_pem, **options)
    binds = await nursery.start(
        functools.partial(trio_rack.serve, tls_app, bind="https://127.0.0.1:0", tls=tls, access_log=False)
    )
    return int(binds[0].port)


def url(port: int) -> str:
    return f"https://localhost:{port}/"


def curl_args(pki: PKI, port: int, *extra: str) -> list[str]:
    # --resolve: connect to 127.0.0.1 but send SNI "localhost" (which the certificate names)
    return ["--cacert", str(pki.server.ca_pem), "--resolve", f"localhost:{port}:127.0.0.1", *extra, url(port)]


async def get_tls_info(pki: PKI, port: int, *extra: str) -> dict[str, Any]:
    result = await curl(*curl_args(pki, port, *extra))
    info: dict[str, Any] = json.loads(result.stdout)
    return info


# ------------------------------------------------------------------------ client certificates


async def test_required_serves_a_valid_client_certificate(pki: PKI, nursery: trio.Nursery) -> None:
    port = await start(nursery, pki, ca_certs=pki.client_ca_pem, client_cert="required")
    with trio.fail_after(TIMEOUT):
        info = await get_tls_info(pki, port, "--cert", str(pki.alice.cert), "--key", str(pki.alice.key))
    assert info["client_verified"] is True
    assert info["client_subject"] == pki.alice.subject
    assert "CN=alice" in info["client_subject"]
    assert info["client_cert"] == pki.alice.cert.read_text()
    assert info["client_cert_chain"][0] == pki.alice.cert.read_text()
    assert info["server_name"] == "localhost"
    assert info["alpn"] == "h2"  # curl offers h2 first, and HTTP/2 is on by default
    assert info["version"] in ("TLSv1.2", "TLSv1.3")
    assert isinstance(info["cipher"], str) and info["cipher"]
    assert set(info) == {
        "version", "cipher", "alpn", "server_name", "client_cert", "client_cert_chain", "client_subject",
        "client_verified",
    }  # fmt: skip


async def test_required_refuses_no_certificate_and_another_cas(
    pki: PKI, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trio_rack")
    port = await start(nursery, pki, ca_certs=pki.client_ca_pem, client_cert="required")
    with trio.fail_after(TIMEOUT):
        bare = await curl(*curl_args(pki, port), check=False)
        assert bare.returncode != 0 and bare.stdout == b""
        other = await curl(
            *curl_args(pki, port, "--cert", str(pki.mallory.cert), "--key", str(pki.mallory.key)), check=False
        )
        assert other.returncode != 0 and other.stdout == b""
        # and the server still serves a good client afterwards
        good = await get_tls_info(pki, port, "--cert", str(pki.alice.cert), "--key", str(pki.alice.key))
    assert good["client_verified"] is True
    refusals = [r.getMessage() for r in caplog.records if "no valid client certificate" in r.getMessage()]
    assert len(refusals) == 2, caplog.text


async def test_optional_serves_with_and_without_a_certificate(pki: PKI, nursery: trio.Nursery) -> None:
    port = await start(nursery, pki, ca_certs=pki.client_ca_pem, client_cert="optional")
    with trio.fail_after(TIMEOUT):
        anonymous = await get_tls_info(pki, port)
        alice = await get_tls_info(pki, port, "--cert", str(pki.alice.cert), "--key", str(pki.alice.key))
        other = await curl(
            *curl_args(pki, port, "--cert", str(pki.mallory.cert), "--key", str(pki.mallory.key)), check=False
        )
    assert anonymous["client_cert"] is None
    assert anonymous["client_cert_chain"] == []
    assert anonymous["client_subject"] is None
    assert anonymous["client_verified"] is False
    assert alice["client_verified"] is True and alice["client_subject"] == pki.alice.subject
    assert other.returncode != 0  # a certificate that does not verify is refused even when optional


async def test_none_does_not_ask_for_a_certificate(pki: PKI, nursery: trio.Nursery) -> None:
    port = await start(nursery, pki)
    with trio.fail_after(TIMEOUT):
        info = await get_tls_info(pki, port, "--cert", str(pki.alice.cert), "--key", str(pki.alice.key))
    assert info["client_cert"] is None and info["client_verified"] is False


async def test_plain_http_has_no_tls_key(nursery: trio.Nursery) -> None:
    seen: list[bool] = []

    async def app(env: dict[str, Any]) -> Any:
        seen.append("trio_rack.tls" in env)
        return 200, {}, [b"ok"]

    binds = await nursery.start(functools.partial(trio_rack.serve, app, bind="http://127.0.0.1:0", access_log=False))
    with trio.fail_after(TIMEOUT):
        await curl(f"http://127.0.0.1:{binds[0].port}/")
    assert seen == [False]


async def s_client(port: int, *args: str) -> bytes:
    """``openssl s_client``: send one request, return what came back."""
    request = b"GET / HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n"
    with trio.fail_after(TIMEOUT):
        result = await trio.run_process(
            [OPENSSL, "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "localhost", "-quiet",
             "-verify_return_error", *args],
            stdin=request,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )  # fmt: skip
    return bytes(result.stdout)


async def test_openssl_s_client(pki: PKI, nursery: trio.Nursery) -> None:
    port = await start(nursery, pki, ca_certs=pki.client_ca_pem, client_cert="required")
    trust = ["-CAfile", str(pki.server.ca_pem)]
    good = await s_client(port, *trust, "-cert", str(pki.alice.cert), "-key", str(pki.alice.key))
    assert good.startswith(b"HTTP/1.1 200 "), good
    body = json.loads(good.partition(b"\r\n\r\n")[2])
    assert body["client_subject"] == pki.alice.subject
    assert body["server_name"] == "localhost"
    refused = await s_client(port, *trust, "-cert", str(pki.mallory.cert), "-key", str(pki.mallory.key))
    assert b"HTTP/1.1" not in refused
    bare = await s_client(port, *trust)
    assert b"HTTP/1.1" not in bare


# ------------------------------------------------------------------------- versions and ciphers


async def test_min_version_tls13_refuses_tls12(pki: PKI, nursery: trio.Nursery) -> None:
    port = await start(nursery, pki, min_version="TLSv1.3")
    with trio.fail_after(TIMEOUT):
        old = await curl(*curl_args(pki, port, "--tls-max", "1.2"), check=False)
        new = await get_tls_info(pki, port)
    assert old.returncode != 0
    assert new["version"] == "TLSv1.3"


async def test_default_min_version_serves_tls12(pki: PKI, nursery: trio.Nursery) -> None:
    port = await start(nursery, pki)
    with trio.fail_after(TIMEOUT):
        info = await get_tls_info(pki, port, "--tls-max", "1.2")
        tls11 = await curl(*curl_args(pki, port, "--tlsv1.1", "--tls-max", "1.1"), check=False)
    assert info["version"] == "TLSv1.2"
    assert tls11.returncode != 0


CHOSEN = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256"


async def test_ciphers_limit_tls12_suites(pki: PKI, nursery: trio.Nursery) -> None:
    port = await start(nursery, pki, ciphers=CHOSEN)
    with trio.fail_after(TIMEOUT):
        info = await get_tls_info(pki, port, "--tls-max", "1.2")
        refused = await curl(
            *curl_args(
                pki, port, "--tls-max", "1.2", "--ciphers", "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384"
            ),
            check=False,
        )
    assert info["cipher"] in CHOSEN.split(":")
    assert refused.returncode != 0


# ------------------------------------------------------------------------- configuration errors


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"client_cert": "maybe"}, "client_cert must be one of none, optional, required"),
        ({"client_cert": "required"}, "needs --ca-certs"),
        ({"min_version": "TLSv1.1"}, "min_version must be one of TLSv1.2, TLSv1.3"),
        ({"ciphers": " "}, "ciphers must be"),
        ({"alpn": "http/1.1"}, "alpn must be a sequence"),
        ({"cert": "c.pem"}, "--cert and --key go together"),
    ],
)
def test_tls_config_validates(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        TLSConfig(**options)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


async def test_serve_refuses_cert_and_tls_together(pki: PKI) -> None:
    with pytest.raises(ConfigError, match="not both"):
        await trio_rack.serve(
            tls_app, bind="https://127.0.0.1:0", cert=pki.server.cert_pem, key=pki.server.key_pem, tls=TLSConfig()
        )


# ----------------------------------------------------------------------------- the command line


def encrypted_key(pki: PKI, directory: Path, password: bytes) -> Path:
    key = serialization.load_pem_private_key(pki.server.key_pem.read_bytes(), password=None)
    path = directory / "encrypted-key.pem"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(password),
        )
    )
    return path


def serve_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "trio_rack", "serve", *args]


async def run_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    (tmp_path / "app.py").write_text("async def app(env):\n    return 200, {}, [b'ok']\n")
    with trio.fail_after(TIMEOUT):
        return await trio.run_process(
            serve_argv(*args), cwd=tmp_path, capture_stdout=True, capture_stderr=True, check=False
        )


GOOD_PASSWORD = ["--key-password-file", "password.txt"]


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--client-cert", "required", *GOOD_PASSWORD], "--client-cert required needs --ca-certs"),
        (["--ssl-ciphers", "NO-SUCH-CIPHER", *GOOD_PASSWORD], "--ssl-ciphers 'NO-SUCH-CIPHER' selects no cipher"),
        (["--ca-certs", "missing.pem", "--client-cert", "optional", *GOOD_PASSWORD], "missing.pem' does not exist"),
        (["--ssl-min-version", "TLSv1.0"], "invalid choice"),
        (["--key-password-file", "nope.txt"], "cannot read --key-password-file"),
        (["--key-password-file", "wrong.txt"], "wrong --key-password-file"),
        ([], "is encrypted: give its password with --key-password-file"),  # and no prompt on the terminal
    ],
)
async def test_bad_tls_flags_are_one_error_line(pki: PKI, tmp_path: Path, flags: list[str], expected: str) -> None:
    key = encrypted_key(pki, tmp_path, b"s3cret")
    (tmp_path / "wrong.txt").write_text("not it\n")
    (tmp_path / "password.txt").write_text("s3cret\n")
    result = await run_cli(
        tmp_path, "-b", "https://127.0.0.1:0", "--cert", str(pki.server.cert_pem), "--key", str(key), *flags
    )
    stderr = result.stderr.decode()
    assert result.returncode == 2, stderr
    assert len(stderr.splitlines()) == 1 and stderr.startswith("trio-rack: error: "), stderr
    assert expected in stderr


@pytest.mark.parametrize("count", ["1", "2"])
async def test_cli_key_password_file_and_client_certs(pki: PKI, tmp_path: Path, count: str) -> None:
    """An encrypted key opened with ``--key-password-file`` (its trailing newline ignored) and
    ``--client-cert required``, in one process and under the supervisor (the workers get the
    password file's name, never the password)."""
    key = encrypted_key(pki, tmp_path, b"s3cret")
    password_file = tmp_path / "password.txt"
    password_file.write_text("s3cret\n")
    (tmp_path / "app.py").write_text(
        "import json\n"
        "async def app(env):\n"
        "    return 200, {}, [json.dumps(dict(env['trio_rack.tls'])).encode()]\n"
    )
    argv = serve_argv(
        "-n", count, "-b", "https://127.0.0.1:0", "--cert", str(pki.server.cert_pem), "--key", str(key),
        "--key-password-file", str(password_file), "--ca-certs", str(pki.client_ca_pem),
        "--client-cert", "required", "--no-access-log",
    )  # fmt: skip
    proc = await trio.lowlevel.open_process(argv, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        with trio.fail_after(TIMEOUT):
            banner = b""
            while b"listening on" not in banner or not banner.endswith(b"\n"):
                chunk = await proc.stdout.receive_some(4096)
                assert chunk, banner
                banner += chunk
            port = int(banner.split(b"listening on ", 1)[1].split(b"\n")[0].rsplit(b":", 1)[1])
            info = await get_tls_info(pki, port, "--cert", str(pki.alice.cert), "--key", str(pki.alice.key))
            bare = await curl(*curl_args(pki, port), check=False)
        assert info["client_subject"] == pki.alice.subject
        assert bare.returncode != 0
        assert not any(b"s3cret" in argv for argv in _command_lines(proc.pid))
    finally:
        try:
            os.kill(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        with trio.move_on_after(TIMEOUT):
            await proc.wait()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await proc.stdout.aclose()  # type: ignore[union-attr]


def _command_lines(pid: int) -> list[bytes]:
    """The argv (NUL-separated) of ``pid`` and its children: where a password must never be."""
    try:
        children = [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        children = []
    return [Path(f"/proc/{p}/cmdline").read_bytes() for p in [pid, *children]]
