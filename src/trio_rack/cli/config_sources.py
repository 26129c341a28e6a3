"""Where ``trio-rack serve``'s settings come from: flags, environment, a TOML file, defaults.

Precedence, per key, highest first; each source replaces a key's *whole* value (an environment
bind list replaces the file's, it is not merged with it):

1. a **flag** on the command line;
2. an **environment variable** ``TRIO_RACK_<FLAG>``: the long flag upper-cased with ``_`` for
   ``-`` (``TRIO_RACK_BIND``, ``TRIO_RACK_MAX_BODY_SIZE``, ``TRIO_RACK_APP`` for the APP
   argument); repeatable flags take space-separated values; on/off flags take
   ``1/0/true/false/yes/no/on/off``.  ``WEB_CONCURRENCY`` (as Gunicorn and Uvicorn read it)
   sets ``--count`` when ``TRIO_RACK_COUNT`` is unset;
3. the **file** of ``--config FILE`` (or ``TRIO_RACK_CONFIG``): TOML whose keys are the long
   flags with ``_`` for ``-`` (``max_body_size = 1048576``, ``bind = ["http://127.0.0.1:8000"]``);
   an unknown key is an error with a "did you mean";
4. the flag's **default**.

How: the serve parser is the single source of truth.  Before parsing, every serve action's
default is swapped for a sentinel, so after parsing a sentinel means "not on the command
line"; each such key is then looked up in the environment, the file and the original default,
in that order, and every value from the environment or the file goes through the very same
``type=`` converter and ``choices`` as the flag (so ``TRIO_RACK_COUNT=0`` is refused exactly as
``-n 0`` is).  New flags get their variable and their key for free.

``--print-config`` prints the result as TOML, each key followed by a comment naming its source,
and exits without serving.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import Bind, ConfigError, Limits
from .hints import unknown_name_hint

__all__ = ["ENV_PREFIX", "Resolved", "add_config_flags", "env_name", "file_key", "parse_args", "render_toml"]

ENV_PREFIX = "TRIO_RACK_"
#: Environment variables with that prefix that are not flags.
NOT_FLAGS = {"TRIO_RACK_STATE_DIR", "TRIO_RACK_CONFIG"}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
#: Keys of the serve parser that are not settings.
_SKIP = {"help", "config", "print_config", "worker", "ready_fd"}


class _Unset:
    """The sentinel default: the flag was not given."""

    def __repr__(self) -> str:
        return "<not given>"


UNSET: Any = _Unset()


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=os.environ.get("TRIO_RACK_CONFIG"),
        help="a TOML file of settings: keys are the long flags with _ for - (max_body_size = 1048576); "
        "flags and TRIO_RACK_* environment variables win over it (default: $TRIO_RACK_CONFIG)",
    )
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="print the effective configuration as TOML, each key with where it came from, and exit",
    )


@dataclass(frozen=True)
class Setting:
    """One serve argument as the sources see it."""

    action: argparse.Action
    key: str  # the TOML key and the namespace attribute
    env: str  # TRIO_RACK_...
    flag: str  # how the user would spell it: --max-body-size, or APP

    @property
    def is_bool(self) -> bool:
        return self.action.nargs == 0

    @property
    def is_list(self) -> bool:
        return isinstance(self.action, argparse._AppendAction)


def file_key(action: argparse.Action) -> str:
    longs = [o for o in action.option_strings if o.startswith("--") and not o.startswith("--no-")]
    return longs[0][2:].replace("-", "_") if longs else action.dest


def env_name(action: argparse.Action) -> str:
    return ENV_PREFIX + file_key(action).upper()


def settings(parser: argparse.ArgumentParser) -> list[Setting]:
    found = []
    for action in parser._actions:
        if action.dest in _SKIP or action.help == argparse.SUPPRESS or action.dest == argparse.SUPPRESS:
            continue
        longs = [o for o in action.option_strings if o.startswith("--")]
        flag = longs[0] if longs else action.dest.upper()
        found.append(Setting(action, file_key(action), env_name(action), flag))
    return found


@dataclass
class Resolved:
    """The namespace's values, and each key's source: ``flag --count``, ``environment
    TRIO_RACK_COUNT``, ``file app.toml``, ``default``."""

    sources: dict[str, str]
    settings: list[Setting]


def parse_with_sources(
    parser: argparse.ArgumentParser,
    serve: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    *,
    environ: Mapping[str, str] | None = None,
) -> tuple[argparse.Namespace, Resolved | None]:
    """Parse ``argv``; for the serve command, fill every key not on the command line from the
    environment, the file and the default (see the module docstring)."""
    environ = os.environ if environ is None else environ
    known = settings(serve)
    defaults = {s.key: s.action.default for s in known}
    for s in known:
        if not s.is_list:  # append copies its default: a list flag stays None when not given
            s.action.default = UNSET
    try:
        args = parser.parse_args(argv)
    finally:
        for s in known:
            s.action.default = defaults[s.key]
    if getattr(args, "command", None) != "serve":
        return args, None
    resolved = resolve(args, known, defaults, environ=environ, parser=serve)
    return args, resolved


def resolve(
    args: argparse.Namespace,
    known: list[Setting],
    defaults: Mapping[str, Any],
    *,
    environ: Mapping[str, str],
    parser: argparse.ArgumentParser,
) -> Resolved:
    file_values, file_label = _read_file(args.config, known) if args.config else ({}, "")
    _check_environment(environ, known)
    sources: dict[str, str] = {}
    for s in known:
        given = getattr(args, s.key, UNSET)
        if given is not UNSET and not (s.is_list and given is None):
            sources[s.key] = f"flag {s.flag}"
            continue
        env_var = s.env
        if s.key == "count" and s.env not in environ and "WEB_CONCURRENCY" in environ:
            env_var = "WEB_CONCURRENCY"
        if env_var in environ:
            setattr(args, s.key, _from_text(s, environ[env_var], f"environment variable {env_var}", parser))
            sources[s.key] = f"environment {env_var}"
        elif s.key in file_values:
            setattr(args, s.key, _from_file(s, file_values[s.key], file_label, parser))
            sources[s.key] = f"file {file_label}"
        else:
            default = defaults[s.key]
            if isinstance(default, str) and s.action.type is not None and not s.is_list:
                default = _convert(s, default, "default", parser)
            setattr(args, s.key, default)
            sources[s.key] = "default"
    return Resolved(sources, known)


def _read_file(path: str, known: list[Setting]) -> tuple[dict[str, Any], str]:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"--config {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"--config {path}: not valid TOML: {exc}") from None
    if isinstance(data.get("serve"), dict):  # a [serve] table is allowed too
        data = {**{k: v for k, v in data.items() if k != "serve"}, **data["serve"]}
    keys = {s.key for s in known}
    for key in data:
        if key not in keys:
            raise ConfigError(f"--config {path}: unknown key {key!r}{unknown_name_hint(key, keys)}")
    return data, path


def _check_environment(environ: Mapping[str, str], known: list[Setting]) -> None:
    """A mistyped ``TRIO_RACK_*`` variable would be silently ignored: warn when it is close to a
    real one.  (Not an error, and nothing for unrelated names: tools and test suites use the
    prefix for their own variables.)"""
    names = {s.env for s in known}
    for name in environ:
        if name.startswith(ENV_PREFIX) and name not in names and name not in NOT_FLAGS:
            hint = unknown_name_hint(name, names | NOT_FLAGS)
            if hint:
                print(f"trio-rack: warning: ignoring environment variable {name}{hint}", file=sys.stderr, flush=True)


def _from_text(s: Setting, text: str, where: str, parser: argparse.ArgumentParser) -> Any:
    if s.is_bool:
        word = text.strip().lower()
        if word not in _TRUE | _FALSE:
            raise ConfigError(f"{where}={text!r}: expected 1/0/true/false/yes/no")
        return _bool_value(s, word in _TRUE)
    if s.is_list:
        return [_convert(s, item, where, parser) for item in text.split()]
    return _convert(s, text, where, parser)


def _from_file(s: Setting, value: Any, label: str, parser: argparse.ArgumentParser) -> Any:
    where = f"--config {label}: {s.key}"
    if s.is_bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return _bool_value(s, value)
    if isinstance(value, bool) or isinstance(value, (dict, list)) and not s.is_list:
        raise ConfigError(f"{where}: expected a single value, got {value!r}")
    if s.is_list:
        items = value if isinstance(value, list) else [value]
        return [_convert(s, str(item), where, parser) for item in items]
    return _convert(s, str(value), where, parser)


def _bool_value(s: Setting, on: bool) -> bool:
    if isinstance(s.action, argparse._StoreConstAction) and s.action.const is False:
        return not on  # a store_false flag: the variable still means "the setting is on"
    return on


def _convert(s: Setting, text: str, where: str, parser: argparse.ArgumentParser) -> Any:
    convert: Callable[[str], Any] = s.action.type or str  # type: ignore[assignment]
    try:
        value = convert(text)
    except (argparse.ArgumentTypeError, ValueError, TypeError) as exc:
        raise ConfigError(f"{where}={text!r}: {exc}") from None
    if s.action.choices is not None and value not in s.action.choices:
        choices = ", ".join(map(str, s.action.choices))
        raise ConfigError(f"{where}={text!r}: choose from {choices}")
    return value


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """``parser.parse_args`` with the serve settings resolved; ``--print-config`` replaces the
    command with printing them."""
    args, resolved = parse_with_sources(parser, subcommand(parser, "serve"), argv)
    if resolved is not None and args.print_config:

        def print_config(args: argparse.Namespace) -> int:
            print(render_toml(args, resolved), end="", flush=True)
            return 0

        args.run = print_config
    return args


def subcommand(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[name]  # type: ignore[no-any-return]
    raise LookupError(name)


# -- --print-config ------------------------------------------------------------------------------


def render_toml(args: argparse.Namespace, resolved: Resolved) -> str:
    """The effective settings as TOML, each followed by ``# <source>``; unset ones commented out."""
    lines = ["# trio-rack serve: the effective configuration (flag > environment > file > default)"]
    limits = {f.name: f.default for f in dataclasses.fields(Limits)}
    for s in resolved.settings:
        value = getattr(args, s.key)
        source = resolved.sources[s.key]
        if value is None and limits.get(s.key) is not None:
            value = limits[s.key]  # the parser's None means "the Limits default"
        if value is None:
            unset = "unlimited" if s.key in limits else "not set"
            lines.append(f"# {s.key} = ({unset})  # {source}")
        else:
            lines.append(f"{s.key} = {_toml_value(value)}  # {source}")
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, (Bind, Path)):
        value = str(value)
    text = str(value)
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
