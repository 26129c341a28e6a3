"""Find the app the command line names: trio-rack's ``config.ru``.

A spec is ``path/to/file.py[:attr]`` or ``package.module[:attr]``; the attribute defaults to
``app`` and may be dotted (``module:factory.app``).  A spec whose module part ends in ``.py``
or contains a slash is a file; anything else is a module name.

A file is executed as a module of its own under a unique name (``_trio_rack_app_1_clock``), so
two apps both called ``app.py`` never collide and neither shadows a real module; its directory
goes first on ``sys.path`` so it can import its siblings, as ``python file.py`` would allow.
A module spec is imported with the working directory first on ``sys.path``, which the console
script (unlike ``python -m``) would otherwise leave out.

Every failure is a :class:`~trio_rack.config.ConfigError` whose message is one line: the user
mistyped a path or an attribute, or their module raised on import.  For the last case the
exception's type and message are in the line, with the file and line it came from (for a
``SyntaxError`` the offending line, otherwise the innermost frame outside the import machinery),
and the traceback is logged at debug level (``--log-level debug``), because a traceback on a
typo buries the one line that matters.

A plain ``def app(env)`` is refused here, at start-up, with one line: the server would await
its result and answer every request with a 500.  (An object whose ``__call__`` is a plain
``def`` returning an awaitable is accepted: that is how some wrappers are written.)
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import itertools
import logging
import os
import re
import sys
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any

from ..config import ConfigError

__all__ = ["load_app", "DEFAULT_APP"]

log = logging.getLogger("trio_rack.error")

#: The default spec: ``app.py`` in the working directory, as Rack's default is ``config.ru``.
DEFAULT_APP = "app.py"

_module_numbers = itertools.count(1)


def load_app(spec: str, *, cwd: str | os.PathLike[str] | None = None, factory: bool = False) -> Any:
    """Import the app named by ``spec`` (relative to ``cwd``, default the working directory).

    ``factory`` (``--factory``): the attribute is a factory, which may well be a plain def.
    """
    base = Path(cwd) if cwd is not None else Path.cwd()
    target, attr = _split(spec)
    if _is_file_spec(target):
        module = _load_file(base / target, spec=spec)
    else:
        module = _load_module(target, base=base, spec=spec)
    return _resolve(module, attr, spec=spec, factory=factory)


def _split(spec: str) -> tuple[str, str]:
    target, sep, attr = spec.rpartition(":")
    if not sep:
        target, attr = spec, "app"
    if not target:
        raise ConfigError(f"app {spec!r} names no file or module")
    if not all(part.isidentifier() for part in attr.split(".")):
        raise ConfigError(f"app {spec!r}: {attr!r} is not an attribute name")
    return target, attr


def _is_file_spec(target: str) -> bool:
    return target.endswith(".py") or "/" in target or os.sep in target


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, SyntaxError) and exc.msg:
        text = " ".join(exc.msg.split())
    else:
        text = " ".join(str(exc).split())
    line = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    where = _origin(exc)
    return f"{line} ({where})" if where else line


def _origin(exc: BaseException) -> str | None:
    """``FILE, line N`` where ``exc`` arose: a SyntaxError's own location, else the innermost
    traceback frame that is not import machinery (``<frozen importlib._bootstrap>``)."""
    if isinstance(exc, SyntaxError) and exc.filename and exc.lineno:
        return f"{exc.filename}, line {exc.lineno}"
    found = None
    for frame in traceback.extract_tb(exc.__traceback__):
        if not frame.filename.startswith("<") and frame.filename != __file__:
            found = frame
    return f"{found.filename}, line {found.lineno}" if found is not None else None


def _load_file(path: Path, *, spec: str) -> ModuleType:
    path = path.absolute()
    if not path.exists():
        raise ConfigError(f"app file {str(path)!r} does not exist")
    if not path.is_file():
        raise ConfigError(f"app file {str(path)!r} is not a file")
    stem = re.sub(r"\W", "_", path.stem)
    name = f"_trio_rack_app_{next(_module_numbers)}_{stem}"
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise ConfigError(f"app file {str(path)!r} cannot be imported as Python")
    module = importlib.util.module_from_spec(module_spec)
    directory = str(path.parent)
    if directory not in sys.path:
        sys.path.insert(0, directory)
    sys.modules[name] = module  # before running it: dataclasses and pickle look it up
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        log.debug("importing %s failed", path, exc_info=True)
        raise ConfigError(f"importing app {spec!r} failed: {_one_line(exc)}") from None
    return module


def _load_module(name: str, *, base: Path, spec: str) -> ModuleType:
    if not all(part.isidentifier() for part in name.split(".")):
        raise ConfigError(f"app {spec!r}: {name!r} is neither a .py file nor a module name")
    directory = str(base.absolute())
    if directory not in sys.path:
        sys.path.insert(0, directory)
    try:
        return importlib.import_module(name)
    except Exception as exc:
        log.debug("importing %s failed", name, exc_info=True)
        missing = exc.name if isinstance(exc, ModuleNotFoundError) else None
        if missing and (name == missing or name.startswith(missing + ".")):
            raise ConfigError(f"app module {missing!r} not found (a file needs its .py suffix)") from None
        raise ConfigError(f"importing app {spec!r} failed: {_one_line(exc)}") from None


def _resolve(module: ModuleType, attr: str, *, spec: str, factory: bool = False) -> Any:
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigError(f"app {spec!r}: no attribute {attr!r} in {_where(module)}") from None
    if not callable(obj):
        raise ConfigError(
            f"app {spec!r}: {attr!r} is not callable (its type is {type(obj).__name__}); "
            "an app is async def app(env)"
        )
    plain = (inspect.isfunction(obj) or inspect.ismethod(obj)) and not inspect.iscoroutinefunction(obj)
    if plain and not factory and not _wsgi_shaped(obj):  # WSGI apps are plain defs of two
        raise ConfigError(
            f"app {spec!r}: {attr!r} is a plain def function (every request would get a 500); "
            "an app is async def app(env)"
        )
    return obj


def _wsgi_shaped(fn: Any) -> bool:
    """A plain function of two positional parameters: ``app(environ, start_response)``."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params) == 2


def _where(module: ModuleType) -> str:
    file = getattr(module, "__file__", None)
    return repr(file) if module.__name__.startswith("_trio_rack_app_") and file else repr(module.__name__)
