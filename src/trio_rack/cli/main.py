"""The command line, ``trio-rack serve`` and ``trio-rack certs``: a thin layer over ``serve()``.

Exit statuses: 0 after a clean shutdown (Ctrl-C or SIGTERM, once or twice); 2 for bad input,
whether argparse caught it (an unknown flag) or a :class:`~trio_rack.config.ConfigError` did
(no such app file, a port in use, an unreadable certificate...).  Both mean "fix the command
or the files it names", so both get the same status and exactly one line on stderr,
``trio-rack: error: ...``, never a traceback.  ``serve()`` raises its ConfigErrors inside trio,
which may wrap them in an ExceptionGroup; :func:`main` unwraps them.

The limit and timeout flags are generated from :class:`~trio_rack.config.Limits` (the flag is
the field name with dashes, the help text is the field's ``#:`` comment), so a new limit gets
its flag for free and no flag can drift from the field it sets.

Output: stdout carries only the start banner (the URLs, and for the development certificate
the CA path and a ready ``curl`` line), flushed, so scripts and tests can read the bound port;
logs go to stderr.  With ``-n COUNT`` above 1 the process becomes the supervisor of
:mod:`trio_rack.workers`; the workers it starts run this same command with ``--worker``.
``--max-requests`` always runs under the supervisor (even with ``-n 1``): a worker that served
its requests exits and the supervisor starts a fresh one.

Deployment flags: ``--proxy-headers`` / ``--forwarded-allow-ips`` / ``--forwarded-header``
(:mod:`trio_rack.proxy`), and systemd socket activation, which is used when no ``-b`` is given
or with ``-b systemd`` (:mod:`trio_rack.systemd`).  The supervisor hands all of these on to its
workers, with the sockets as ``fd://N`` binds.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import inspect
import logging
import os
import re
import shlex
import signal
import sys
import typing
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

import trio

from .. import __version__, logs
from ..app.proxy import DEFAULT_TRUSTED, ProxyHeaders
from ..config import (
    CLIENT_CERT_MODES,
    DEFAULT_BIND,
    HTTP1_PARSERS,
    TLS_VERSIONS,
    Bind,
    ConfigError,
    Limits,
    TLSConfig,
    parse_bind,
)
from ..http1.parsers import resolve_parser
from ..interface import INTERFACES, LIFESPAN_MODES, LifespanFailure, ServedApp, prepare
from ..net.tls import make_server_context
from ..server import ready_pipe, systemd, workers
from ..server.certs import DevCert, dev_certificate
from ..server.serve import serve, watch_signals
from . import config_sources, hints, reload
from .certs_command import add_certs_flags
from .loader import DEFAULT_APP, load_app

__all__ = ["main", "build_parser", "configure_logging"]

log = logging.getLogger("trio_rack.error")

PROG = "trio-rack"
#: Exit status for bad input of every kind (argparse's own choice for usage errors).
USAGE_EXIT = 2
LOG_LEVELS = ("debug", "info", "warning", "error")
#: Bound hosts that clients reach as "localhost", which the development certificate names.
_LOCAL_HOSTS = {"127.0.0.1", "::1", "0.0.0.0", "::"}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``trio-rack`` console script and ``python -m trio_rack``."""
    try:  # flags, then TRIO_RACK_* variables, then --config FILE, then defaults
        args = config_sources.parse_args(build_parser(), argv)
    except ConfigError as bad:
        _print_error(str(bad))
        return USAGE_EXIT
    try:
        return int(args.run(args))
    except BaseException as exc:
        error = _only(exc, ConfigError)
        if error is not None:
            _print_error(str(error))
            return USAGE_EXIT
        failure = _only(exc, LifespanFailure)
        if failure is not None:
            _print_error(str(failure))
            return workers.LIFESPAN_FAILURE_EXIT
        if _only(exc, KeyboardInterrupt) is not None:
            return 0  # Ctrl-C before the signal handlers were in place: nothing to clean up
        if _only(exc, BrokenPipeError) is not None:
            _silence_stdout()  # `trio-rack certs | head -1`: the reader had what it wanted
            return 0
        raise


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's final flush cannot raise EPIPE again
    (the recipe of the Python docs, "Note on SIGPIPE")."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    finally:
        os.close(devnull)


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one ``trio-rack: error:`` line like every other error."""

    def error(self, message: str) -> NoReturn:
        if message.startswith("unrecognized arguments: "):
            known = [o for action in self._actions for o in action.option_strings]
            for sub in self._subparsers._group_actions if self._subparsers else []:
                for choice in getattr(sub, "choices", {}).values():
                    known += [o for action in choice._actions for o in action.option_strings]
            hint = hints.flag_hint(message.split(": ", 1)[1].split(), known)
            message += f"; {hint}" if hint else ""
        _print_error(message)
        raise SystemExit(USAGE_EXIT)


def _print_error(message: str) -> None:
    print(f"{PROG}: error: {' '.join(message.split())}", file=sys.stderr, flush=True)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="An HTTP/1.1 server on Trio with Rack's app protocol.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_serve(
        commands.add_parser("serve", help="serve an app", description="Serve an app until Ctrl-C or SIGTERM.")
    )
    certs = commands.add_parser(
        "certs",
        help="print the development certificate's paths; trust or export it",
        description="Print the paths of the development CA certificate, the server certificate "
        "and its key, one a line, CA first; create them if missing.  With --install/--uninstall, "
        "add the CA to (remove it from) the browsers' NSS databases; with --out, copy the files.",
    )
    add_certs_flags(certs)
    return parser


def _add_serve(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "app",
        nargs="?",
        default=DEFAULT_APP,
        metavar="APP",
        help="path/to/file.py[:attr] or package.module[:attr]; attr defaults to app "
        f"(default: {DEFAULT_APP})",
    )
    parser.add_argument(
        "-b",
        "--bind",
        action="append",
        type=_bind_arg,
        metavar="URL",
        help="https://HOST:PORT, http://HOST:PORT, unix:PATH, fd://N or systemd (the sockets of "
        "systemd socket activation); repeatable (default: the activated sockets if systemd "
        f"passed any, else {DEFAULT_BIND})",
    )
    parser.add_argument(
        "-n",
        "--count",
        type=_positive(int),
        default=1,
        metavar="COUNT",
        help="worker processes sharing the sockets (default: 1, in this process)",
    )
    parser.add_argument("--cert", metavar="FILE", help="PEM certificate chain for https binds (with --key)")
    parser.add_argument("--key", metavar="FILE", help="PEM private key for --cert")
    parser.add_argument(
        "--log-level", choices=LOG_LEVELS, default="info", help="error log level (default: info)"
    )
    parser.add_argument(
        "--access-log",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="one Combined Log Format line per response on stderr (default: on)",
    )
    parser.add_argument(
        "--no-http2",
        dest="http2",
        action="store_false",
        help="serve HTTP/1.1 only: no ALPN h2 on https binds, no prior-knowledge HTTP/2 on http binds",
    )
    parser.add_argument(
        "--no-gc-tuning",
        dest="gc_tuning",
        action="store_false",
        help="leave Python's cyclic garbage collector as it is (default: the start-up heap is frozen and "
        "young collections are rarer while serving; see the README's Deployment section)",
    )
    parser.add_argument(
        "--http1-parser",
        choices=HTTP1_PARSERS,
        default="auto",
        help="the HTTP/1 parser: h11, or httptools (llhttp, pip install 'trio-rack[speedups]'), held to "
        "h11's verdicts; auto is httptools when installed (default: auto)",
    )
    parser.add_argument(
        "--log-format", choices=("text", "json"), default="text",
        help="text lines, or one JSON object a line (time, level, logger, message; access lines add "
        "remote_addr, method, path, query, protocol, status, bytes, duration_ms, referer, user_agent)",
    )  # fmt: skip
    parser.add_argument(
        "--access-log-format", metavar="FORMAT", default=logs.COMBINED,
        help="Apache LogFormat tokens for access lines: %%h %%l %%u %%t %%r %%m %%U %%q %%H %%s %%b %%B %%D %%T "
        "%%{Referer}i %%{User-agent}i (default: the Combined Log Format)",
    )  # fmt: skip
    parser.add_argument(
        "--log-config", metavar="FILE",
        help="configure logging from FILE instead: logging.config.dictConfig from .json or .toml, "
        "fileConfig from .ini",
    )  # fmt: skip
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)  # a worker's ready pipe
    _add_tls_flags(parser.add_argument_group("TLS and client certificates"))
    config_sources.add_config_flags(parser)
    reload.add_reload_flags(parser)
    _add_deployment_flags(parser.add_argument_group("behind a proxy, and worker recycling"))
    _interface_flags(parser.add_argument_group("ASGI and WSGI apps"))
    _add_limit_flags(parser.add_argument_group("limits and timeouts (seconds and bytes)"))
    parser.set_defaults(run=_serve_command)


def _add_deployment_flags(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--proxy-headers",
        action="store_true",
        help="take the client's address and scheme (REMOTE_ADDR, rack.url_scheme) from the "
        "proxy headers of requests whose peer is in --forwarded-allow-ips",
    )
    group.add_argument(
        "--forwarded-allow-ips",
        metavar="LIST",
        help="comma-separated IP addresses and CIDR networks of trusted proxies, or '*' for any "
        "peer; Unix socket peers are always trusted (default: $FORWARDED_ALLOW_IPS, else "
        f"{','.join(DEFAULT_TRUSTED)})",
    )
    group.add_argument(
        "--forwarded-header",
        choices=("x-forwarded-for", "forwarded"),
        default="x-forwarded-for",
        help="the headers the proxies set: X-Forwarded-For/-Proto, or RFC 7239 Forwarded; the "
        "other kind is ignored (default: x-forwarded-for)",
    )
    group.add_argument(
        "--max-requests",
        type=_positive(int),
        metavar="N",
        help="restart each worker after it served N requests, for apps that leak (default: never)",
    )
    group.add_argument(
        "--max-requests-jitter",
        type=_non_negative_int,
        default=0,
        metavar="N",
        help="add a random 0..N to each worker's --max-requests, so that workers do not restart "
        "together (default: 0)",
    )


def _add_tls_flags(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--key-password-file",
        metavar="FILE",
        help="file holding the password of an encrypted --key (a trailing newline is ignored; "
        "never give the password itself on the command line)",
    )
    group.add_argument("--ca-certs", metavar="FILE", help="PEM file of the CAs trusted for client certificates")
    group.add_argument(
        "--client-cert",
        choices=CLIENT_CERT_MODES,
        default="none",
        help="ask for a client certificate (optional) or refuse handshakes without a valid one "
        "(required); needs --ca-certs (default: none)",
    )
    group.add_argument("--ssl-ciphers", metavar="CIPHERS", help="OpenSSL cipher string for TLS 1.2")
    group.add_argument(
        "--ssl-min-version", choices=TLS_VERSIONS, default="TLSv1.2", help="lowest TLS version (default: TLSv1.2)"
    )


def _tls_options(args: argparse.Namespace, cert: Path | str | None, key: Path | str | None) -> TLSConfig:
    """The TLSConfig of the TLS flags; reads ``--key-password-file`` (one error line if it can't)."""
    password = None
    if args.key_password_file is not None:
        try:
            password = Path(args.key_password_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            raise ConfigError(f"cannot read --key-password-file {args.key_password_file!r}: {reason}") from None
        password = password.removesuffix("\n").removesuffix("\r")
    return TLSConfig(
        cert=cert,
        key=key,
        key_password=password,
        ca_certs=args.ca_certs,
        client_cert=args.client_cert,
        ciphers=args.ssl_ciphers,
        min_version=args.ssl_min_version,
    )


def _tls_worker_args(args: argparse.Namespace) -> list[str]:
    """The TLS flags again, for a worker (the password by file name only, never by value)."""
    argv = ["--client-cert", args.client_cert, "--ssl-min-version", args.ssl_min_version]
    for flag, value in (
        ("--key-password-file", args.key_password_file),
        ("--ca-certs", args.ca_certs),
        ("--ssl-ciphers", args.ssl_ciphers),
    ):
        if value is not None:
            argv.append(f"{flag}={os.path.abspath(value) if flag != '--ssl-ciphers' else value}")
    return argv


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {text!r}")
    return value


# -- flags generated from Limits ---------------------------------------------------------------


def _flag(field: dataclasses.Field[Any]) -> str:
    return "--" + field.name.replace("_", "-")


#: Limit flags whose value is neither seconds nor a count.
_LIMIT_METAVARS = {"min_body_rate": "BYTES_PER_SECOND"}


def _add_limit_flags(group: argparse._ArgumentGroup) -> None:
    hints = typing.get_type_hints(Limits)
    docs = _field_docs(Limits)
    for field in dataclasses.fields(Limits):
        kind: type = float if hints[field.name] in (float, float | None) else int
        default = ("off" if kind is float else "unlimited") if field.default is None else field.default
        doc = docs.get(field.name, field.name.replace("_", " ")).rstrip(".")
        convert = _positive(kind) if field.default is not None else _unlimited_or(_positive(kind))
        group.add_argument(
            _flag(field),
            dest=field.name,
            type=convert,
            default=None,
            metavar=_LIMIT_METAVARS.get(field.name, "SECONDS" if kind is float else "N"),
            help=f"{doc} (default: {default})".replace("%", "%%"),
        )


def _field_docs(cls: type) -> dict[str, str]:
    """Each field's ``#:`` comment (the Sphinx convention), read from the class's source."""
    try:
        lines = inspect.getsource(cls).splitlines()
    except (OSError, TypeError):
        return {}
    docs: dict[str, str] = {}
    pending: list[str] = []
    for line in lines:
        text = line.strip()
        if text.startswith("#:"):
            pending.append(text[2:].strip())
            continue
        match = re.match(r"(\w+)\s*:", text)
        if match and pending:
            docs[match.group(1)] = " ".join(pending)
        pending = []
    return docs


def _given_limits(args: argparse.Namespace) -> dict[str, Any]:
    return {
        f.name: getattr(args, f.name) for f in dataclasses.fields(Limits) if getattr(args, f.name) is not None
    }


def _positive(kind: type) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected a {'number' if kind is float else 'whole number'}, got {text!r}"
            ) from None
        if not value > 0 or value == float("inf"):
            raise argparse.ArgumentTypeError(f"must be positive, got {text!r}")
        return value

    convert.__name__ = kind.__name__
    return convert


#: What the help's "(default: unlimited)" invites for a limit whose default is None.
UNLIMITED_WORDS = ("unlimited", "none", "off")


def _unlimited_or(convert: Callable[[str], Any]) -> Callable[[str], Any]:
    """``--max-body-size unlimited`` (or ``None``) is the default spelled out: no limit."""

    def parse(text: str) -> Any:
        return None if text.strip().lower() in UNLIMITED_WORDS else convert(text)

    parse.__name__ = convert.__name__
    return parse


def _bind_arg(text: str) -> Bind | str:
    if text == systemd.SYSTEMD_BIND:
        return text  # expanded by _resolve_binds once the activated sockets are known
    try:
        return parse_bind(text)
    except ConfigError as exc:
        hint = hints.bind_hint(text)
        raise argparse.ArgumentTypeError(f"{exc}; {hint}" if hint else str(exc)) from None


# -- commands ------------------------------------------------------------------------------------


def _serve_command(args: argparse.Namespace) -> int:
    activated = systemd.listen_fds()  # first: the app must not see (or pass on) LISTEN_*
    notifier = systemd.Notifier.from_environ()  # likewise NOTIFY_SOCKET: the main process notifies
    configure_logging(
        args.log_level, access_log=args.access_log, log_format=args.log_format, access_log_format=args.access_log_format
    )
    if args.log_config:
        logs.load_log_config(args.log_config)
    app = _interface_flags(args, load_app(args.app, factory=args.factory))  # supervisor too: one error line
    binds = _resolve_binds(args.bind, activated)
    limits = Limits(**_given_limits(args))
    resolve_parser(args.http1_parser)  # "httptools" without it installed: one error line, here
    proxy = _proxy_policy(args)
    cert, key, dev = _tls_files(args, binds)
    announce = functools.partial(_announce, dev=dev, interface=app.chosen)
    if args.reload and not args.worker:  # the reloader holds the sockets and runs one worker at a time
        command = functools.partial(_worker_command, args, cert=cert, key=key)
        return reload.run_reloading(args, binds, worker_command=command, announce=announce)
    if (args.count > 1 or args.max_requests) and not args.worker:
        command = functools.partial(_worker_command, args, cert=cert, key=key)
        return workers.supervise(
            binds,
            count=args.count,
            worker_command=command,
            announce=announce,
            notifier=notifier,
            backlog=limits.backlog,
        )
    budget = None
    if args.max_requests:
        budget = workers.RequestBudget(app.target, max_requests=args.max_requests, jitter=args.max_requests_jitter)
        app.outer = functools.partial(_counted, budget)
        log.info("this worker will be replaced after %d requests", budget.limit)
    serving = functools.partial(
        serve,
        app,
        bind=binds,
        tls=_tls_options(args, cert, key),
        limits=limits,
        access_log=args.access_log,
        proxy_headers=proxy or False,
        http2=args.http2,
        http1_parser=args.http1_parser,
        tune_gc=args.gc_tuning,
    )
    trio.run(
        functools.partial(
            _serve_until_signalled,
            serving,
            announce=_worker_ready(args) if args.worker else announce,
            lifeline=args.worker,
            budget=budget,
            notifier=notifier,
        )
    )
    return workers.RECYCLE_EXIT if budget is not None and budget.exhausted.is_set() else 0


def _resolve_binds(given: Sequence[Bind | str] | None, activated: list[int]) -> list[Bind]:
    """The ``-b`` values with ``systemd`` expanded; with none, the activated sockets or the default."""
    if not given:
        if activated:
            log.info("systemd socket activation: serving %d inherited socket(s)", len(activated))
            return systemd.listen_binds(activated)
        return [parse_bind(DEFAULT_BIND)]
    binds: list[Bind] = []
    for item in given:
        if isinstance(item, Bind):
            binds.append(item)
        elif not activated:
            raise ConfigError(
                "-b systemd: systemd passed no sockets (LISTEN_FDS/LISTEN_PID are not set for this process)"
            )
        else:
            binds.extend(systemd.listen_binds(activated))
            activated = []  # "-b systemd" twice adopts them once
    return binds


def _forwarded_allow_ips(args: argparse.Namespace) -> str:
    if args.forwarded_allow_ips is not None:
        return str(args.forwarded_allow_ips)
    return os.environ.get("FORWARDED_ALLOW_IPS") or ",".join(DEFAULT_TRUSTED)


def _proxy_policy(args: argparse.Namespace) -> ProxyHeaders | None:
    """The trusted-proxy policy of ``--proxy-headers``, checked now (a bad IP is one error line)."""
    if not args.proxy_headers:
        if args.forwarded_allow_ips is not None:
            log.warning("--forwarded-allow-ips ignored: no --proxy-headers")
        return None
    return ProxyHeaders(_forwarded_allow_ips(args).split(","), header=args.forwarded_header)


def _tls_files(
    args: argparse.Namespace, binds: Sequence[Bind]
) -> tuple[Path | None, Path | None, DevCert | None]:
    """The certificate and key to serve, checked now so that a bad file is one error line."""
    if (args.cert is None) != (args.key is None):
        raise ConfigError("--cert and --key go together: give both or neither")
    if not any(b.tls for b in binds):
        if args.cert is not None:
            log.warning("--cert/--key ignored: no https:// bind")
        return None, None, None
    if args.cert is None:
        dev = dev_certificate()
        return dev.cert, dev.key, dev
    make_server_context(_tls_options(args, args.cert, args.key))
    return Path(args.cert), Path(args.key), None


def _worker_command(
    args: argparse.Namespace, fd_binds: Sequence[Bind], *, cert: Path | None, key: Path | None
) -> list[str]:
    """The argv of one worker: this command, on inherited sockets, without a banner."""
    argv = [sys.executable, "-m", "trio_rack", "serve", args.app, "--worker", "--log-level", args.log_level]
    if args.config:  # what the flags below do not carry; they win over it
        argv += ["--config", str(args.config)]
    argv.append("--access-log" if args.access_log else "--no-access-log")
    if not args.http2:
        argv.append("--no-http2")
    argv += ["--http1-parser", args.http1_parser]
    if not args.gc_tuning:
        argv.append("--no-gc-tuning")
    argv += ["--log-format", args.log_format, "--access-log-format", args.access_log_format]
    if args.log_config:
        argv += ["--log-config", str(args.log_config)]
    argv += _interface_flags(args)
    for bind in fd_binds:
        argv += ["-b", str(bind)]
    if args.proxy_headers:
        argv += ["--proxy-headers", f"--forwarded-allow-ips={_forwarded_allow_ips(args)}"]
        argv += ["--forwarded-header", args.forwarded_header]
    if args.max_requests:
        argv += ["--max-requests", str(args.max_requests)]
        argv += ["--max-requests-jitter", str(args.max_requests_jitter)]
    if cert is not None and key is not None:
        argv += ["--cert", str(cert), "--key", str(key)]
    argv += _tls_worker_args(args)
    for field in dataclasses.fields(Limits):
        value = getattr(args, field.name)
        if value is not None:
            argv += [_flag(field), str(value)]
    return argv


# -- ASGI and WSGI (trio_rack.interface) ------------------------------------------------------

_INTERFACE_NAMES = {"asgi": "an ASGI 3", "wsgi": "a WSGI"}


@typing.overload
def _interface_flags(target: argparse._ArgumentGroup) -> None: ...
@typing.overload
def _interface_flags(target: argparse.Namespace) -> list[str]: ...
@typing.overload
def _interface_flags(target: argparse.Namespace, app: Any) -> ServedApp: ...
def _interface_flags(target: Any, app: Any = None) -> Any:
    """The flags of :mod:`trio_rack.interface`, kept in one place: with an argument group, add
    them; with the parsed args, the worker's argv for them; with the args and the loaded app,
    the :class:`~trio_rack.interface.ServedApp` to serve (ConfigError for an unservable app)."""
    if isinstance(target, argparse._ArgumentGroup):
        target.add_argument(
            "--interface",
            choices=INTERFACES,
            default="auto",
            help="the app's protocol: trio-rack's own (rack), ASGI 3 or WSGI; auto tells them apart by the "
            "callable's signature (default: auto)",
        )
        target.add_argument(
            "--factory", action="store_true", help="APP is a factory: call it with no arguments to get the app"
        )
        target.add_argument(
            "--root-path", default="", metavar="PATH", help="ASGI root_path / WSGI SCRIPT_NAME (default: none)"
        )
        target.add_argument(
            "--lifespan",
            choices=LIFESPAN_MODES,
            default="auto",
            help="ASGI lifespan events: auto serves apps that refuse them without (default: auto)",
        )
        target.add_argument(
            "--threads",
            type=_positive(int),
            default=10,
            metavar="N",
            help="WSGI worker threads per worker process (default: 10)",
        )
        return None
    if app is None:
        argv = ["--interface", target.interface, "--root-path", target.root_path]
        argv += ["--lifespan", target.lifespan, "--threads", str(target.threads)]
        return argv + (["--factory"] if target.factory else [])
    return prepare(
        app,
        interface=target.interface,
        factory=target.factory,
        root_path=target.root_path,
        threads=target.threads,
        lifespan=target.lifespan,
    )


def _counted(budget: workers.RequestBudget, rack_app: Any) -> workers.RequestBudget:
    """``--max-requests`` counts calls of the served trio-rack app (ASGI/WSGI adapters included)."""
    budget.app = rack_app
    if getattr(rack_app, "trio_rack_request_nursery", False):
        budget.trio_rack_request_nursery = True  # type: ignore[attr-defined]
    return budget


# -- running -------------------------------------------------------------------------------------


async def _serve_until_signalled(
    serving: Callable[..., Any],
    *,
    announce: Callable[[list[Bind]], None] | None,
    lifeline: bool,
    budget: workers.RequestBudget | None = None,
    notifier: systemd.Notifier | None = None,
) -> None:
    """Run ``serving`` (serve() with its arguments bound) until SIGINT/SIGTERM.

    The first signal shuts down gracefully, a second cancels everything (as
    :func:`trio_rack.server.run` does); ``announce`` gets the bound addresses once listening.
    A ``budget`` (``--max-requests``) that runs out shuts down gracefully too.  ``notifier``
    (systemd) hears READY once listening and STOPPING at shutdown; SIGHUP is logged as
    unsupported (only the supervisor of ``-n`` restarts).
    """
    shutdown = trio.Event()
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch_signals, signals, shutdown, nursery.cancel_scope)
            if lifeline:
                nursery.start_soon(workers.watch_lifeline, shutdown)
            if budget is not None:
                nursery.start_soon(_recycle_when_spent, budget, shutdown)
            bound = await nursery.start(_serve_then_stop, serving, shutdown, nursery.cancel_scope)
            if announce is not None:
                announce(bound)
            if notifier is not None and notifier.enabled:
                nursery.start_soon(notifier.run, shutdown)


async def _serve_then_stop(
    serving: Callable[..., Any],
    shutdown: trio.Event,
    scope: trio.CancelScope,
    *,
    task_status: trio.TaskStatus[list[Bind]] = trio.TASK_STATUS_IGNORED,
) -> None:
    await serving(shutdown_trigger=shutdown, task_status=task_status)
    scope.cancel()  # served out gracefully: stop watching for signals


async def _recycle_when_spent(budget: workers.RequestBudget, shutdown: trio.Event) -> None:
    await budget.exhausted.wait()
    if not shutdown.is_set():
        log.info("served %d requests (--max-requests): shutting down gracefully", budget.limit)
        shutdown.set()


def _worker_ready(args: argparse.Namespace) -> Callable[[list[Bind]], None] | None:
    """A worker's "announce": tell its parent (the ``-n`` supervisor or the ``--reload``
    reloader), through ``--ready-fd``, that it serves."""
    fd = args.ready_fd
    if fd is None:
        return None
    os.set_inheritable(fd, False)  # not for the app's children
    return lambda _bound: ready_pipe.report_ready(fd)


def _announce(bound: list[Bind], *, dev: DevCert | None, interface: str = "rack") -> None:
    """The start banner on stdout: each URL, then how to trust the development certificate."""
    if interface != "rack":  # native apps keep the banner they always had
        print(f"{PROG}: serving {_INTERFACE_NAMES[interface]} app (--interface {interface})", flush=True)
    for bind in bound:
        print(f"{PROG}: listening on {bind}", flush=True)
    https = [b for b in bound if b.tls]
    if dev is not None and https:
        first = https[0]
        url = f"https://localhost:{first.port}/" if first.host in _LOCAL_HOSTS else f"{first}/"
        print(f"{PROG}: development CA certificate: {dev.ca}", flush=True)
        print(f"{PROG}: try: curl --cacert {shlex.quote(str(dev.ca))} {url}", flush=True)


def configure_logging(
    level: str,
    *,
    access_log: bool,
    stream: Any = None,
    log_format: str = "text",
    access_log_format: str = logs.COMBINED,
) -> None:
    """Send the ``trio_rack`` loggers to stderr: the error log at ``level``, and the access
    log (``trio_rack.access``) on or off regardless of level (:func:`trio_rack.logs.configure`)."""
    logs.configure(
        level, access_log=access_log, log_format=log_format, access_log_format=access_log_format, stream=stream
    )


def _only(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    """The first ``kind`` exception in ``exc`` if that is all it holds, through ExceptionGroups."""
    leaves = list(_leaves(exc))
    if leaves and all(isinstance(leaf, kind) for leaf in leaves):
        return leaves[0]
    return None


def _leaves(exc: BaseException) -> Iterator[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _leaves(inner)
    else:
        yield exc
