"""Logging: library use gets a stderr handler when the app configured none, --log-format json,
--access-log-format's Apache tokens, --log-config (JSON, TOML, ini), and the logger names."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import trio

from process_support import command, http_get, running
from trio_rack import logs
from trio_rack.config import ConfigError

APP = 'async def app(env):\n    env["rack.errors"].write("from the app\\n")\n    return 200, {}, [b"hello"]\n'

LIBRARY_SCRIPT = """
import functools, sys, trio, trio_rack
{setup}
async def app(env):
    env["rack.errors"].write("from the app\\n")
    return 200, {{}}, [b"hello"]

async def main():
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(functools.partial(trio_rack.serve, app, bind="http://127.0.0.1:0"))
        stream = await trio.open_tcp_stream("127.0.0.1", binds[0].port)
        head = b"GET /p?q=1 HTTP/1.1\\r\\nhost: x\\r\\nuser-agent: lib\\r\\nconnection: close\\r\\n\\r\\n"
        await stream.send_all(head)
        while await stream.receive_some():
            pass
        nursery.cancel_scope.cancel()

trio.run(main)
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    directory = tmp_path / "project"
    directory.mkdir()
    (directory / "app.py").write_text(APP)
    return directory


def run_script(tmp_path: Path, env: dict[str, str], setup: str = "") -> list[str]:
    script = tmp_path / "script.py"
    script.write_text(LIBRARY_SCRIPT.format(setup=setup))
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stderr.splitlines()


def test_library_without_logging_config_logs_to_stderr(tmp_path: Path, env: dict[str, str]) -> None:
    lines = run_script(tmp_path, env)
    assert any(line.endswith("INFO trio_rack.error: listening on http://127.0.0.1:" + line.rsplit(":", 1)[1])
               for line in lines if "listening on" in line)  # fmt: skip
    assert any("trio_rack.app: from the app" in line for line in lines)
    access = [line for line in lines if '"GET /p?q=1 HTTP/1.1"' in line]
    assert len(access) == 1 and access[0].startswith("127.0.0.1 - - [")
    assert access[0].endswith('" 200 5 "-" "lib"')


def test_library_with_logging_configured_keeps_control(tmp_path: Path, env: dict[str, str]) -> None:
    lines = run_script(tmp_path, env, setup="import logging\nlogging.basicConfig(level=logging.WARNING)")
    assert not any("listening on" in line or "GET /p" in line for line in lines), lines


async def test_json_log_format(project: Path, env: dict[str, str]) -> None:
    async with running(["-b", "http://127.0.0.1:0", "--log-format", "json"], cwd=project, env=env) as server:
        await http_get(server.port("http"), "/a%20b?x=1&y=2")
        await server.wait_for_log('"logger": "trio_rack.access"')
    records = [json.loads(line) for line in server.log().splitlines()]  # every line is one object
    listening = next(r for r in records if r["message"].startswith("listening on"))
    assert listening["logger"] == "trio_rack.error" and listening["level"] == "INFO"
    assert listening["time"].endswith("Z")
    app = next(r for r in records if r["logger"] == "trio_rack.app")
    assert app["message"] == "from the app"
    access = next(r for r in records if r["logger"] == "trio_rack.access")
    expected = {"remote_addr": "127.0.0.1", "method": "GET", "path": "/a%20b", "query": "x=1&y=2",
                "protocol": "HTTP/1.1", "status": 200, "bytes": 5, "referer": None, "user_agent": None}  # fmt: skip
    assert {k: access[k] for k in expected} == expected
    assert {"time", "level", "logger", "message", "duration_ms"} <= set(access)


async def test_access_log_format_tokens(project: Path, env: dict[str, str]) -> None:
    fmt = '%h %l %u %m %U %q %H %s %b %B "%{User-agent}i" "%{Referer}i" 100%%'
    async with running(["-b", "http://127.0.0.1:0", "--access-log-format", fmt], cwd=project, env=env) as server:
        await http_get(server.port("http"), "/path?k=v")
        await server.wait_for_log("100%")
    line = next(line for line in server.log().splitlines() if line.endswith("100%"))
    assert line == '127.0.0.1 - - GET /path ?k=v HTTP/1.1 200 5 5 "-" "-" 100%'


def test_access_log_format_unknown_token_is_one_error(project: Path, env: dict[str, str]) -> None:
    done = subprocess.run(
        command("serve", "-b", "http://127.0.0.1:0", "--access-log-format", "%h %Z"),
        cwd=project, env=env, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.splitlines() == ["trio-rack: error: --access-log-format: unknown token '%Z'"]


DICT_CONFIG = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "ACCESS %(message)s"}},
    "handlers": {"file": {"class": "logging.FileHandler", "filename": "FILENAME", "formatter": "plain"}},
    "loggers": {"trio_rack.access": {"handlers": ["file"], "level": "INFO", "propagate": False}},
}


def _dict_config(kind: str, target: Path, directory: Path) -> Path:
    config = json.loads(json.dumps(DICT_CONFIG).replace("FILENAME", str(target)))
    if kind == "json":
        path = directory / "logging.json"
        path.write_text(json.dumps(config))
    elif kind == "toml":
        path = directory / "logging.toml"
        path.write_text(textwrap.dedent(f"""\
            version = 1
            disable_existing_loggers = false
            [formatters.plain]
            format = "ACCESS %(message)s"
            [handlers.file]
            class = "logging.FileHandler"
            filename = "{target}"
            formatter = "plain"
            [loggers."trio_rack.access"]
            handlers = ["file"]
            level = "INFO"
            propagate = false
            """))
    else:
        path = directory / "logging.ini"
        path.write_text(textwrap.dedent(f"""\
            [loggers]
            keys = root,access
            [handlers]
            keys = file
            [formatters]
            keys = plain
            [logger_root]
            handlers =
            [logger_access]
            qualname = trio_rack.access
            handlers = file
            level = INFO
            propagate = 0
            [handler_file]
            class = FileHandler
            args = ({str(target)!r},)
            formatter = plain
            [formatter_plain]
            format = ACCESS %(message)s
            """))
    return path


@pytest.mark.parametrize("kind", ["json", "toml", "ini"])
async def test_log_config_file(kind: str, project: Path, env: dict[str, str], tmp_path: Path) -> None:
    target = tmp_path / f"access-{kind}.log"
    config = _dict_config(kind, target, tmp_path)
    async with running(["-b", "http://127.0.0.1:0", "--log-config", str(config)], cwd=project, env=env) as server:
        await http_get(server.port("http"), "/configured")
        await server.wait_for_log("from the app")  # the error log still goes to stderr
        for _ in range(200):
            if target.exists() and "/configured" in target.read_text():
                break
            await trio.sleep(0.02)  # another process writes the file: nothing to await but time
    lines = target.read_text().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ACCESS 127.0.0.1 - - [")
    assert '"GET /configured HTTP/1.1" 200 5' in lines[0]
    assert "/configured" not in server.log()  # the config took the access log off stderr


def test_log_config_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^--log-config .*missing.json: No such file or directory$"):
        logs.load_log_config(tmp_path / "missing.json")
    bad = tmp_path / "bad.yaml"
    bad.write_text("")
    with pytest.raises(ConfigError, match=r"use a \.json or \.toml file \(dictConfig\) or \.ini \(fileConfig\)"):
        logs.load_log_config(bad)
    broken = tmp_path / "broken.json"
    broken.write_text('{"version": 1, "handlers": {"h": {"class": "no.such.Handler"}}}')
    with pytest.raises(ConfigError, match=r"^--log-config "):
        logs.load_log_config(broken)


def test_access_fields_parse_the_escaped_line() -> None:
    record = logging.LogRecord("trio_rack.access", logging.INFO, __file__, 1, "%s", (
        '10.0.0.1 - - [01/Dec/2026:10:00:00 +0000] "POST /x?a=\\"b HTTP/1.0" 404 - "http://r/" "ua \\\\ \\"q\\""'
        " hijacked",
    ), None)  # fmt: skip
    fields = logs.access_fields(record)
    assert fields == {
        "remote_addr": "10.0.0.1", "time_local": "01/Dec/2026:10:00:00 +0000", "method": "POST", "path": "/x",
        "query": 'a="b', "protocol": "HTTP/1.0", "status": 404, "bytes": 0, "duration_ms": None,
        "referer": "http://r/", "user_agent": 'ua \\ "q"', "hijacked": True,
    }  # fmt: skip
    record.access = {**fields, "duration_ms": 12.5}  # what the server passes once it measures
    line = logs.AccessFormatter("%s %D %T").format(record)
    assert line == "404 12500 0"


async def test_workers_log_in_the_same_format(project: Path, env: dict[str, str], tmp_path: Path) -> None:
    """-n 2: the supervisor hands --log-format and the --config file on to its workers."""
    config = tmp_path / "settings.toml"
    config.write_text('access_log_format = "W %m %U %s"\n')
    args = ["-b", "http://127.0.0.1:0", "-n", "2", "--log-format", "json", "--config", str(config)]
    async with running(args, cwd=project, env=env) as server:
        await http_get(server.port("http"), "/from-a-worker")
        await server.wait_for_log('"logger": "trio_rack.access"')
    records = [json.loads(line) for line in server.log().splitlines()]
    assert any(r["message"].startswith("worker 1 started") for r in records)
    access = [r for r in records if r["logger"] == "trio_rack.access"]
    assert len(access) == 1 and access[0]["path"] == "/from-a-worker" and access[0]["status"] == 200


async def test_workers_use_the_access_log_format_of_the_config_file(
    project: Path, env: dict[str, str], tmp_path: Path
) -> None:
    config = tmp_path / "settings.toml"
    config.write_text('access_log_format = "W %m %U %s"\ncount = 2\n')
    async with running(["-b", "http://127.0.0.1:0", "--config", str(config)], cwd=project, env=env) as server:
        await http_get(server.port("http"), "/fmt")
        await server.wait_for_log("W GET /fmt 200")
    assert "supervisor" in server.log() and "started 2 workers" in server.log()
