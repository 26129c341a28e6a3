"""Packaging: ``python -m build`` makes an sdist and a wheel; the wheel, installed into a fresh
virtualenv (no editable install, no PYTHONPATH), serves an example.

The source tree is copied first, so the build writes nothing into the checkout.  The venv's
pip installs the wheel's dependencies from the configured index.  Slow (a minute): marked
``slow``, run by CI.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import venv
import zipfile
from pathlib import Path

import pytest

from e2e_support import ROOT
from process_support import http_get, running

pytest.importorskip("build")

pytestmark = pytest.mark.slow

_IGNORE = shutil.ignore_patterns(
    ".git", "build", "dist", "site", "*.egg-info", "__pycache__", ".pytest_cache", ".hypothesis", "bench", ".venv"
)


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and "proxy" not in k.lower()}


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("packaging")
    source = work / "source"
    shutil.copytree(ROOT, source, ignore=_IGNORE)
    out = work / "dist"
    subprocess.run(
        [sys.executable, "-m", "build", "--sdist", "--wheel", "--outdir", str(out), str(source)],
        check=True, capture_output=True, timeout=300, env=_clean_env(),
    )  # fmt: skip
    return out


def test_sdist_and_wheel_carry_license_and_metadata(dist: Path) -> None:
    (sdist,) = dist.glob("trio_rack-*.tar.gz")
    (wheel,) = dist.glob("trio_rack-*-py3-none-any.whl")
    with tarfile.open(sdist) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    assert {"LICENSE", "README.md", "pyproject.toml", "src/trio_rack/__init__.py"} <= names
    with zipfile.ZipFile(wheel) as whl:
        files = whl.namelist()
        (metadata,) = [n for n in files if n.endswith(".dist-info/METADATA")]
        text = whl.read(metadata).decode()
    assert "trio_rack/cli/main.py" in files and "trio_rack/logs.py" in files
    assert any(n.endswith(".dist-info/licenses/LICENSE") or n.endswith(".dist-info/LICENSE") for n in files)
    assert "License-Expression: MIT" in text
    assert "Project-URL: Documentation" in text
    assert "Provides-Extra: reload" in text and "Provides-Extra: docs" in text


@pytest.fixture(scope="module")
def installed(dist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv (no system site-packages) with the wheel installed; its directory."""
    (wheel,) = dist.glob("trio_rack-*-py3-none-any.whl")
    env_dir = tmp_path_factory.mktemp("venv")
    venv.create(env_dir, with_pip=True, system_site_packages=False, clear=True)
    python = str(env_dir / "bin" / "python")
    subprocess.run([python, "-m", "pip", "install", "-q", str(wheel)], check=True, timeout=600, env=_clean_env())
    where = subprocess.run(
        [python, "-c", "import trio_rack; print(trio_rack.__file__)"],
        check=True, capture_output=True, text=True, timeout=60, env=_clean_env(), cwd=env_dir,
    ).stdout.strip()  # fmt: skip
    assert where.startswith(str(env_dir)), where  # the wheel's copy, not the checkout
    return env_dir


async def test_wheel_in_a_fresh_venv_serves_an_example(installed: Path, tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "hello.py").write_bytes((ROOT / "examples" / "hello.py").read_bytes())
    env = {**_clean_env(), "TRIO_RACK_STATE_DIR": str(tmp_path / "state")}
    script = [str(installed / "bin" / "trio-rack")]  # the venv's console script
    async with running(["hello.py", "-b", "http://127.0.0.1:0"], cwd=project, env=env, program=script) as server:
        _, body = await http_get(server.port("http"))
    assert body == b"Hello, world!\n"
