"""``trio-rack certs --install/--uninstall/--system/--out``: real certutil, real NSS databases,
and a real headless Chromium that must trust the development CA once it is installed.

Every test gets its own ``$HOME`` (so its own ``~/.pki/nssdb`` and ``~/.mozilla``) and its own
state directory; nothing outside ``tmp_path`` is touched (the ``--system`` test runs as
``nobody`` and must be refused before it writes anything).
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from cdp import chromium_available, launch_chromium
from e2e_support import EXAMPLES
from process_support import command, curl_text, running
from trio_rack.cli import trust
from trio_rack.cli.main import main

needs_certutil = pytest.mark.skipif(
    shutil.which("certutil") is None, reason="certutil is not installed (apt-get install libnss3-tools)"
)
needs_chromium = pytest.mark.skipif(not chromium_available(), reason="chromium is not installed")

APP = 'async def app(env):\n    return 200, {"content-type": "text/html"}, [b"<title>trusted</title>trusted page"]\n'


@pytest.fixture
def home(tmp_path: Path) -> Path:
    directory = tmp_path / "home"
    directory.mkdir()
    return directory


@pytest.fixture
def env(tmp_path: Path, home: Path) -> dict[str, str]:
    scrubbed = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    return {**scrubbed, "HOME": str(home), "TRIO_RACK_STATE_DIR": str(tmp_path / "state")}


def certs(*args: str, env: dict[str, str], user: int | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command("certs", *args), env=env, capture_output=True, text=True, timeout=60, user=user, cwd="/"
    )


def nicknames(db: Path) -> str:
    return subprocess.run(
        ["certutil", "-L", "-d", f"sql:{db}"], capture_output=True, text=True, check=True, timeout=30
    ).stdout


@needs_certutil
def test_install_and_uninstall_chromium_and_firefox_databases(home: Path, env: dict[str, str]) -> None:
    profile = home / ".mozilla" / "firefox" / "abcd.default-release"
    profile.mkdir(parents=True)
    subprocess.run(["certutil", "-N", "--empty-password", "-d", f"sql:{profile}"], check=True, timeout=30)

    done = certs("--install", env=env)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 2 and all(line.startswith("trio-rack: trusted the development CA") for line in lines)
    assert "(Chromium/Chrome)" in lines[0] and "Firefox profile abcd.default-release" in lines[1]
    for db in (home / ".pki" / "nssdb", profile):
        assert "trio-rack development CA" in nicknames(db)
        assert "C,," in nicknames(db)

    again = certs("--install", env=env)  # idempotent: replaced, not added twice
    assert again.returncode == 0, again.stderr
    assert nicknames(profile).count("trio-rack development CA") == 1

    gone = certs("--uninstall", env=env)
    assert gone.returncode == 0, gone.stderr
    assert gone.stdout.count("removed the development CA") == 2
    for db in (home / ".pki" / "nssdb", profile):
        assert "trio-rack development CA" not in nicknames(db)


def test_install_without_certutil_names_the_package(env: dict[str, str], tmp_path: Path) -> None:
    bare = tmp_path / "bin"
    bare.mkdir()
    done = certs("--install", env={**env, "PATH": str(bare)})
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "trio-rack: error: certutil not found: install Debian's libnss3-tools (apt-get install libnss3-tools)"
    ]


def test_system_needs_root(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(trust.os, "geteuid", lambda: 1000)
    assert main(["certs", "--install", "--system"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "trio-rack: error: --system edits the system trust store: run as root (sudo trio-rack certs ...)"
    ]


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("update-ca-certificates") is None, reason="needs root")
@needs_certutil
def test_system_store_install_and_uninstall(env: dict[str, str], tmp_path: Path) -> None:
    """As root: the system bundle (what curl and OpenSSL read) trusts the CA, then no longer."""
    installed = Path("/usr/local/share/ca-certificates/trio-rack-development-ca.crt")
    if installed.exists():
        pytest.skip(f"{installed} exists already: not ours to replace")
    leaf = tmp_path / "state" / "localhost.pem"

    def verify() -> bool:
        result = subprocess.run(
            ["openssl", "verify", "-CAfile", "/etc/ssl/certs/ca-certificates.crt", str(leaf)],
            capture_output=True, timeout=30,
        )  # fmt: skip
        return result.returncode == 0

    try:
        done = certs("--install", "--system", env=env)
        assert done.returncode == 0, done.stderr
        assert "trusted the development CA in the system store" in done.stdout.splitlines()[0]
        assert installed.exists() and verify()
    finally:
        gone = certs("--uninstall", "--system", env=env)
    assert gone.returncode == 0, gone.stderr
    assert "removed the development CA from the system store" in gone.stdout
    assert not installed.exists() and not verify()


def test_out_writes_three_files_key_private(env: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "project" / "certs"
    done = certs("--out", str(out), env=env)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["ca.pem", "localhost-key.pem", "localhost.pem"]
    assert stat.S_IMODE(os.stat(out / "localhost-key.pem").st_mode) == 0o600
    state = tmp_path / "state"
    for name in ("ca.pem", "localhost.pem", "localhost-key.pem"):
        assert (out / name).read_bytes() == (state / name).read_bytes()
    assert b"PRIVATE KEY" not in (out / "ca.pem").read_bytes()
    assert b"PRIVATE KEY" not in (out / "localhost.pem").read_bytes()
    assert done.stdout.splitlines()[0] == f"trio-rack: wrote {out / 'ca.pem'}"


def test_certs_piped_into_head_has_no_broken_pipe(env: dict[str, str]) -> None:
    """The README's ``"$(trio-rack certs | head -1)"`` idiom, unbuffered: no traceback, ever."""
    shell_env = {**env, "PYTHONUNBUFFERED": "1"}
    line = " ".join(command("certs"))
    for _ in range(20):
        done = subprocess.run(
            ["sh", "-c", f"{line} | head -c 1 >/dev/null"], env=shell_env, capture_output=True, text=True, timeout=30
        )
        assert done.stderr == "", done.stderr


@needs_certutil
@needs_chromium
async def test_chromium_trusts_the_installed_ca(tmp_path: Path, home: Path, env: dict[str, str]) -> None:
    """No --ignore-certificate-errors: the page loads only because the CA is in ~/.pki/nssdb."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "app.py").write_text(APP)
    with trio.fail_after(60):
        async with running(["app.py", "-b", "https://localhost:0"], cwd=project, env=env) as server:
            url = f"https://localhost:{server.port('https')}/"

            # before the install the browser refuses the certificate
            async with launch_chromium(tmp_path / "profile-before", home=home) as browser:
                page = await browser.new_page(url)
                assert await page.evaluate("document.title") != "trusted"

            done = await trio.to_thread.run_sync(lambda: certs("--install", env=env))
            assert done.returncode == 0, done.stderr

            async with launch_chromium(tmp_path / "profile-after", home=home) as browser:
                page = await browser.new_page(url)
                assert await page.evaluate("document.title") == "trusted"
                assert await page.evaluate("document.body.innerText") == "trusted page"
                assert await page.evaluate("location.protocol") == "https:"




async def test_tls_demo_serves_the_certificate_from_a_certs_folder(tmp_path: Path, env: dict[str, str]) -> None:
    """``trio-rack certs --out DIR`` then ``examples/tls_demo.py --certs DIR``: curl trusts DIR/ca.pem."""
    folder = tmp_path / "certs"
    assert certs("--out", str(folder), env=env).returncode == 0
    demo = [sys.executable, str(EXAMPLES / "tls_demo.py"), "-b", "https://127.0.0.1:0", "--certs", str(folder)]
    proc = await trio.lowlevel.open_process(demo, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        output = b""
        with trio.fail_after(15):
            while b"serving https://" not in output:
                chunk = await proc.stdout.receive_some(4096)
                assert chunk, output
                output += chunk
        lines = output.decode().splitlines()
        assert lines[0] == f"certificate: {folder / 'localhost.pem'} (from {folder})"
        port = int(next(line for line in lines if line.startswith("serving")).rsplit(":", 1)[1])
        got = await curl_text("--cacert", str(folder / "ca.pem"), f"https://localhost:{port}/")
        assert got.startswith("Hello over https!")
    finally:
        proc.kill()
        with trio.move_on_after(5):
            await proc.wait()
        if proc.stdout is not None:
            await proc.stdout.aclose()
