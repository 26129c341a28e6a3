"""Configuration sources of ``trio-rack serve``: flag > TRIO_RACK_* environment > --config TOML >
default, ``WEB_CONCURRENCY``, ``--print-config``, and the "did you mean" hints."""

from __future__ import annotations

import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest

from process_support import command, http_get, running
from trio_rack.cli import config_sources
from trio_rack.cli.main import build_parser
from trio_rack.config import Bind, ConfigError


def resolve(argv: list[str], environ: dict[str, str] | None = None) -> tuple[Any, dict[str, str]]:
    parser = build_parser()
    args, resolved = config_sources.parse_with_sources(
        parser, config_sources.subcommand(parser, "serve"), ["serve", *argv], environ=environ or {}
    )
    assert resolved is not None
    return args, resolved.sources


@pytest.fixture
def toml(tmp_path: Path) -> Path:
    path = tmp_path / "trio-rack.toml"
    path.write_text('max_body_size = 1048576\nbind = ["http://127.0.0.1:8000", "http://127.0.0.1:8001"]\ncount = 2\n')
    return path


def test_defaults_and_their_source() -> None:
    args, sources = resolve([])
    assert (args.app, args.count, args.bind, args.access_log, args.proxy_headers) == ("app.py", 1, None, True, False)
    assert set(sources.values()) == {"default"}


def test_file_sets_keys(toml: Path) -> None:
    args, sources = resolve(["--config", str(toml)])
    assert args.max_body_size == 1048576 and args.count == 2
    assert [str(b) for b in args.bind] == ["http://127.0.0.1:8000", "http://127.0.0.1:8001"]
    assert sources["max_body_size"] == sources["bind"] == f"file {toml}"


def test_environment_beats_file_and_replaces_the_whole_list(toml: Path) -> None:
    environ = {"TRIO_RACK_BIND": "http://127.0.0.1:9001 unix:/tmp/x.sock", "TRIO_RACK_MAX_BODY_SIZE": "10"}
    args, sources = resolve(["--config", str(toml)], environ)
    assert [str(b) for b in args.bind] == ["http://127.0.0.1:9001", "unix:/tmp/x.sock"]
    assert args.max_body_size == 10
    assert sources["bind"] == "environment TRIO_RACK_BIND"
    assert args.count == 2 and sources["count"] == f"file {toml}"


def test_flag_beats_environment_and_file(toml: Path) -> None:
    environ = {"TRIO_RACK_BIND": "http://127.0.0.1:9001", "TRIO_RACK_COUNT": "3"}
    args, sources = resolve(["--config", str(toml), "-b", "https://127.0.0.1:9443", "-n", "4"], environ)
    assert args.bind == [Bind(scheme="https", host="127.0.0.1", port=9443)] and args.count == 4
    assert sources["bind"] == "flag --bind" and sources["count"] == "flag --count"


def test_web_concurrency_only_without_trio_rack_count() -> None:
    args, sources = resolve([], {"WEB_CONCURRENCY": "3"})
    assert args.count == 3 and sources["count"] == "environment WEB_CONCURRENCY"
    args, sources = resolve([], {"WEB_CONCURRENCY": "3", "TRIO_RACK_COUNT": "5"})
    assert args.count == 5 and sources["count"] == "environment TRIO_RACK_COUNT"
    args, _ = resolve(["-n", "2"], {"WEB_CONCURRENCY": "3"})
    assert args.count == 2


@pytest.mark.parametrize(("text", "value"), [("1", True), ("yes", True), ("TRUE", True), ("0", False), ("no", False)])
def test_environment_booleans(text: str, value: bool) -> None:
    args, _ = resolve([], {"TRIO_RACK_PROXY_HEADERS": text, "TRIO_RACK_ACCESS_LOG": text})
    assert args.proxy_headers is value and args.access_log is value


def test_bad_values_are_refused_like_flags(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^environment variable TRIO_RACK_COUNT='0': must be positive"):
        resolve([], {"TRIO_RACK_COUNT": "0"})
    with pytest.raises(ConfigError, match=r"expected 1/0/true/false/yes/no"):
        resolve([], {"TRIO_RACK_PROXY_HEADERS": "maybe"})
    with pytest.raises(ConfigError, match=r"choose from debug, info, warning, error"):
        resolve([], {"TRIO_RACK_LOG_LEVEL": "loud"})
    bad = tmp_path / "bad.toml"
    bad.write_text("max_bdy_size = 3\n")
    with pytest.raises(ConfigError, match=r"unknown key 'max_bdy_size' \(did you mean max_body_size\?\)$"):
        resolve(["--config", str(bad)])
    bad.write_text("proxy_headers = 'yes'\n")
    with pytest.raises(ConfigError, match=r"proxy_headers must be true or false"):
        resolve(["--config", str(bad)])
    bad.write_text("count = \n")
    with pytest.raises(ConfigError, match=r"not valid TOML"):
        resolve(["--config", str(bad)])
    with pytest.raises(ConfigError, match=r"No such file"):
        resolve(["--config", str(tmp_path / "missing.toml")])


def test_print_config_is_toml_with_sources(tmp_path: Path, toml: Path, env: dict[str, str]) -> None:
    done = subprocess.run(
        command("serve", "--config", str(toml), "--print-config", "--graceful-timeout", "3"),
        env={**env, "TRIO_RACK_BIND": "http://127.0.0.1:9001", "WEB_CONCURRENCY": "3"},
        capture_output=True, text=True, timeout=30, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    parsed = tomllib.loads(done.stdout)  # the output is TOML: it could be a --config file
    assert parsed["bind"] == ["http://127.0.0.1:9001"] and parsed["count"] == 3
    assert parsed["max_body_size"] == 1048576 and parsed["graceful_timeout"] == 3.0
    assert parsed["keepalive_timeout"] == 5.0  # the Limits default, spelled out
    lines = done.stdout.splitlines()
    assert 'bind = ["http://127.0.0.1:9001"]  # environment TRIO_RACK_BIND' in lines
    assert "count = 3  # environment WEB_CONCURRENCY" in lines
    assert f"max_body_size = 1048576  # file {toml}" in lines
    assert "graceful_timeout = 3.0  # flag --graceful-timeout" in lines
    assert 'log_level = "info"  # default' in lines
    assert "# cert = (not set)  # default" in lines


async def test_environment_bind_serves(tmp_path: Path, env: dict[str, str]) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "app.py").write_text('async def app(env):\n    return 200, {}, [b"from env"]\n')
    (project / "trio-rack.toml").write_text('bind = ["https://127.0.0.1:0"]\naccess_log = false\n')
    environ = {**env, "TRIO_RACK_BIND": "http://127.0.0.1:0", "TRIO_RACK_CONFIG": "trio-rack.toml"}
    async with running([], cwd=project, env=environ) as server:
        assert [u.split(":")[0] for u in server.urls] == ["http"]  # the env list replaced the file's
        _, body = await http_get(server.port("http"))
        assert body == b"from env"
    assert "GET / HTTP/1.1" not in server.log()  # access_log = false from the file


@pytest.mark.parametrize(
    ("argv", "hint"),
    [
        (["--port", "8000"], "did you mean -b https://HOST:PORT? (host and port are one URL; http:// for plain HTTP)"),
        (["--host", "0.0.0.0"], "did you mean -b https://HOST:PORT?"),
        (["--workers", "4"], "did you mean -n/--count COUNT? (or WEB_CONCURRENCY)"),
        (["--uds", "/tmp/s"], "did you mean -b unix:PATH?"),
        (["--fd", "3"], "did you mean -b fd://N?"),
        (["-b", "127.0.0.1:8000"], "did you mean -b https://127.0.0.1:8000 (or -b http://127.0.0.1:8000)?"),
        (["--max-body-sise", "3"], "did you mean --max-body-size?"),
    ],
)
def test_other_servers_spellings_get_a_hint(argv: list[str], hint: str, env: dict[str, str], tmp_path: Path) -> None:
    done = subprocess.run(command("serve", *argv), env=env, capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("trio-rack: error: ")
    assert hint in lines[0]
