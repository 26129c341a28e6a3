"""load_app: file and module specs work; every mistake is one clear ConfigError line."""

from __future__ import annotations

import itertools
import logging
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from trio_rack.cli.loader import load_app
from trio_rack.config import ConfigError

_package_numbers = itertools.count()

APP = """
async def app(env):
    return 200, {}, [b"default"]

async def other(env):
    return 200, {}, [b"other"]

class Holder:
    async def inner(env):
        return 200, {}, [b"inner"]

not_callable = {"a": 1}
"""


@pytest.fixture(autouse=True)
def restore_sys_path(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """load_app puts directories on sys.path; keep that from leaking into other tests."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield


def write(path: Path, source: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(source))
    return path


def config_error(spec: str, **kwargs: object) -> str:
    with pytest.raises(ConfigError) as info:
        load_app(spec, **kwargs)  # type: ignore[arg-type]
    message = str(info.value)
    assert "\n" not in message
    assert "Traceback" not in message
    return message


async def _run(app: object) -> bytes:
    status, headers, body = await app({})  # type: ignore[operator]
    assert status == 200
    return b"".join(body)


async def test_file_spec_defaults_to_app(tmp_path: Path) -> None:
    write(tmp_path / "app.py", APP)
    assert await _run(load_app("app.py", cwd=tmp_path)) == b"default"


async def test_file_spec_with_attribute_and_dotted_attribute(tmp_path: Path) -> None:
    write(tmp_path / "sub" / "server.py", APP)
    assert await _run(load_app("sub/server.py:other", cwd=tmp_path)) == b"other"
    assert await _run(load_app("sub/server.py:Holder.inner", cwd=tmp_path)) == b"inner"


async def test_absolute_file_path(tmp_path: Path) -> None:
    path = write(tmp_path / "abs_app.py", APP)
    assert await _run(load_app(f"{path}:other")) == b"other"


async def test_a_file_can_import_its_siblings(tmp_path: Path) -> None:
    write(tmp_path / "proj" / "helper_for_loader_test.py", "BODY = b'from a sibling'\n")
    write(
        tmp_path / "proj" / "main.py",
        """
        from helper_for_loader_test import BODY

        async def app(env):
            return 200, {}, [BODY]
        """,
    )
    try:
        assert await _run(load_app("proj/main.py", cwd=tmp_path)) == b"from a sibling"
    finally:
        sys.modules.pop("helper_for_loader_test", None)


async def test_two_files_of_the_same_name_stay_distinct(tmp_path: Path) -> None:
    for name in ("one", "two"):
        write(tmp_path / name / "app.py", f"async def app(env):\n    return 200, {{}}, [b{name!r}]\n")
    first = load_app("one/app.py", cwd=tmp_path)
    second = load_app("two/app.py", cwd=tmp_path)
    assert first.__module__ != second.__module__
    assert first.__module__ in sys.modules
    assert (await _run(first), await _run(second)) == (b"one", b"two")


async def test_module_spec_is_found_from_cwd(tmp_path: Path) -> None:
    package = f"loaderpkg{next(_package_numbers)}"
    write(tmp_path / package / "__init__.py", "")
    write(tmp_path / package / "web.py", APP)
    try:
        assert await _run(load_app(f"{package}.web:other", cwd=tmp_path)) == b"other"
        assert await _run(load_app(f"{package}.web", cwd=tmp_path)) == b"default"
    finally:
        for name in (package, f"{package}.web"):
            sys.modules.pop(name, None)


def test_missing_file(tmp_path: Path) -> None:
    message = config_error("nope.py", cwd=tmp_path)
    assert "does not exist" in message
    assert str(tmp_path / "nope.py") in message


def test_directory_is_not_a_file(tmp_path: Path) -> None:
    (tmp_path / "dir.py").mkdir()
    assert "is not a file" in config_error("dir.py", cwd=tmp_path)


def test_missing_attribute(tmp_path: Path) -> None:
    write(tmp_path / "app.py", APP)
    message = config_error("app.py:application", cwd=tmp_path)
    assert "no attribute 'application'" in message
    assert "app.py" in message


def test_missing_default_attribute(tmp_path: Path) -> None:
    write(tmp_path / "empty.py", "x = 1\n")
    assert "no attribute 'app'" in config_error("empty.py", cwd=tmp_path)


def test_attribute_not_callable(tmp_path: Path) -> None:
    write(tmp_path / "app.py", APP)
    message = config_error("app.py:not_callable", cwd=tmp_path)
    assert "'not_callable' is not callable" in message
    assert "dict" in message


def test_import_raises(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write(tmp_path / "broken.py", "x = 1\nraise RuntimeError('database\\nunreachable')\n")
    with caplog.at_level(logging.DEBUG, logger="trio_rack"):
        message = config_error("broken.py", cwd=tmp_path)
    # issue 11: the line names the file and line the exception came from
    where = f"{tmp_path / 'broken.py'}, line 2"
    assert message == f"importing app 'broken.py' failed: RuntimeError: database unreachable ({where})"
    assert not any(name.startswith("_trio_rack_app_") and "broken" in name for name in sys.modules)
    records = [r for r in caplog.records if r.levelno == logging.DEBUG and r.exc_info]
    assert records, "the traceback is logged at debug level"


def test_syntax_error(tmp_path: Path) -> None:
    write(tmp_path / "syntax.py", "def (:\n")
    message = config_error("syntax.py", cwd=tmp_path)
    assert message.startswith("importing app 'syntax.py' failed: SyntaxError:")
    assert "line 1" in message


def test_missing_import_inside_the_app(tmp_path: Path) -> None:
    write(tmp_path / "needs.py", "import surely_not_installed_xyz\n")
    message = config_error("needs.py", cwd=tmp_path)
    assert "ModuleNotFoundError" in message
    assert "surely_not_installed_xyz" in message


def test_missing_module(tmp_path: Path) -> None:
    message = config_error("no_such_pkg_xyz.web:app", cwd=tmp_path)
    assert "app module 'no_such_pkg_xyz' not found" in message


@pytest.mark.parametrize("spec", [":app", "app.py:", "app.py:1x", "app.py:a-b"])
def test_malformed_spec(tmp_path: Path, spec: str) -> None:
    write(tmp_path / "app.py", APP)
    assert spec in config_error(spec, cwd=tmp_path)
