"""The `relay` command: serve · check · config show · routes test · dlq · import · tail ·
demo."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import yaml
from aiohttp import web

from relay import __version__, logs
from relay.admin.commands import CommandError, import_files, messages_of, tail
from relay.admin.commands import dlq as dlq_command
from relay.app import (
    RELAY,
    AdminListenError,
    create_app,
    describe_missing,
    start_admin,
    stop_admin,
)
from relay.config import Config, check_config, load_config, shown_config
from relay.errors import (
    ClientError,
    ConfigError,
    ConfigProblem,
    StoreCannotOpen,
    StoreInUse,
)
from relay.reload import Reloader
from relay.runtime import event_loop_name, tune_garbage_collector
from relay.runtime import run as run_loop

log = logging.getLogger("relay")


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _not_valid(path: str, problems: Sequence[ConfigProblem]) -> int:
    """Print every problem and the summary line to stderr; the exit code of a bad config."""
    for problem in problems:
        print(problem, file=sys.stderr)
    print(f"{path}: {_plural(len(problems), 'problem')}; the config is not valid", file=sys.stderr)
    return 1


def cmd_check(args: argparse.Namespace) -> int:
    result = check_config(args.config, read_env=not args.no_env)
    if result.config is None or result.problems:
        return _not_valid(args.config, result.problems)
    config = result.config
    print(
        f"{args.config}: valid ({_plural(len(config.destinations), 'destination')},"
        f" {_plural(len(config.routes), 'route')})"
        + ("; environment variables not checked" if args.no_env else "")
    )
    return 0


def cmd_config_show(args: argparse.Namespace) -> int:
    # As `relay serve` reads it: an unset variable is shown as unset, not a problem.
    result = check_config(args.config, require_env=False, read_env=not args.no_env)
    if result.config is None or result.problems:
        return _not_valid(args.config, result.problems)
    shown = shown_config(result.config)
    if args.format == "json":
        _print_json_line(json.dumps(shown, indent=2, ensure_ascii=False, default=str))
    else:
        # One line a value, however long.
        text = yaml.safe_dump(shown, sort_keys=False, allow_unicode=True, width=float("inf"))
        print(text, end="")
    return 0


def store_name(config: Config) -> str:
    redis = config.storage.redis
    if redis is None:
        return config.storage.sqlite.path
    from relay.store.redis.client import where

    return f"Redis at {where(redis.url)}, keys {redis.key_prefix}*"


async def _serve(config: Config) -> None:
    app = create_app(config)
    tune_garbage_collector()
    loop = asyncio.get_running_loop()
    reloader = Reloader(app[RELAY], config.path)
    # Installed before start-up, so that an early SIGHUP waits instead of ending the process.
    loop.add_signal_handler(signal.SIGHUP, reloader.request, "SIGHUP")
    runner = web.AppRunner(
        app, handle_signals=False, access_log=None, shutdown_timeout=config.server.shutdown_timeout
    )
    await runner.setup()
    site = web.TCPSite(runner, config.server.host, config.server.port)
    await site.start()
    log.info(
        "relay %s listening on http://%s:%d (store %s, event loop %s)",
        __version__,
        config.server.host,
        config.server.port,
        store_name(config),
        event_loop_name(loop),
    )
    try:
        admin_runner = await start_admin(app[RELAY])
    except AdminListenError:
        await runner.cleanup()
        raise
    for line in describe_missing(config):
        log.warning(line)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reloader.start()
    log.info("the config is reloaded on SIGHUP or when %s changes", config.path)
    await stop.wait()
    log.info("shutting down: no new requests; finishing deliveries in flight")
    loop.remove_signal_handler(signal.SIGHUP)
    await reloader.close()
    app[RELAY].accepting = False
    await stop_admin(app[RELAY], admin_runner)
    await runner.cleanup()
    log.info("stopped")


def cmd_serve(args: argparse.Namespace) -> int:
    result = check_config(args.config, require_env=False)
    if result.config is None:
        for problem in result.problems:
            log.error("%s", problem)
        log.error("not starting: fix the config (relay check --config %s)", args.config)
        return 2
    config = result.config
    if args.log_format is None:  # the flag wins over the file
        _log_to_stderr(args, config.server.log_format)
    try:
        run_loop(_serve(config))
    except StoreInUse as exc:
        log.error(
            "not starting: %s; stop it first, or give each relay a storage.sqlite.path of its own",
            exc.message,
        )
        return 1
    except StoreCannotOpen as exc:  # a read-only or full disk, a folder that cannot be made
        log.error("not starting: %s", exc.message)
        return 1
    except AdminListenError as exc:
        log.error("not starting: %s", exc)
        return 1
    except OSError as exc:
        log.error(
            "cannot listen on %s:%d: %s",
            config.server.host,
            config.server.port,
            exc.strerror or exc,
        )
        return 1
    return 0


def _print_json_line(line: str) -> None:
    # JSON text may hold a lone surrogate (from a `\ud800` escape), which stdout cannot
    # write; written back as that escape, the line is still the same JSON.
    print(line.encode("utf-8", "backslashreplace").decode("utf-8"))


def cmd_routes_test(args: argparse.Namespace) -> int:
    from relay.dryrun import choose_sources, dry_run

    result = check_config(args.config, require_env=False)
    if result.config is None or result.routes is None:
        return _not_valid(args.config, result.problems)
    try:
        choose_sources(result.config, args.source)
    except ValueError as exc:
        print(f"relay routes test: {exc}", file=sys.stderr)
        return 2
    problems: list[str] = []
    messages = [line.value for line in messages_of(args.file, problems)]
    if problems:
        for problem in problems:
            print(f"relay routes test: {problem}", file=sys.stderr)
        return 1
    now = time.time() if args.now is None else args.now
    out = dry_run(result.config, result.routes, messages, now, source=args.source)
    _print_json_line(json.dumps(out, indent=2, ensure_ascii=False))
    return 0


def _operator_command(run: Callable[[Config, argparse.Namespace], Any]) -> Any:
    """`relay dlq …`, `relay import`, `relay tail`: load the config, run, and turn what can
    go wrong into one line and exit 1."""

    def command(args: argparse.Namespace) -> int:
        name = " ".join(
            part for part in ("relay", args.command, getattr(args, "dlq_command", None)) if part
        )
        try:
            config = load_config(args.config)
        except ConfigError as exc:
            for problem in exc.problems:
                print(problem, file=sys.stderr)
            return 1
        try:
            result = run(config, args)
            code: int = run_loop(result) if asyncio.iscoroutine(result) else result
        except (CommandError, ClientError) as exc:
            print(
                f"{name}: {exc.message if isinstance(exc, ClientError) else exc}", file=sys.stderr
            )
            return 1
        except StoreCannotOpen as exc:
            print(f"{name}: {exc.message}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 130
        return code

    return command


def cmd_demo(args: argparse.Namespace) -> int:
    from relay.demo import run_demo

    if not hasattr(args, "log_level"):
        # The demo prints what happens; relay's own warnings about it (the dead letter it
        # makes on purpose) would only repeat it. Errors still show.
        logging.getLogger("relay").setLevel(logging.ERROR)
    return run_demo(keep_running=args.keep_running, timeout=args.timeout)


def _choice(what: str, choices: Sequence[str], case: Callable[[str], str]) -> Any:
    """An argparse type that takes one of `choices` (after `case`), or says what to write."""
    words = ", ".join(choices[:-1]) + " or " + choices[-1]

    def parse(value: str) -> str:
        if case(value) not in choices:
            raise argparse.ArgumentTypeError(f"{value!r} is not a {what}: write {words}")
        return case(value)

    return parse


def _log_to_stderr(args: argparse.Namespace, log_format: str) -> None:
    logs.configure(getattr(args, "log_level", "INFO"), log_format)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--log-level",
        type=_choice("log level", logs.LEVELS, str.upper),
        default=argparse.SUPPRESS,
        metavar="LEVEL",
        help="DEBUG, INFO (the default), WARNING or ERROR, in any case",
    )
    parser = argparse.ArgumentParser(prog="relay", description=__doc__, parents=[common])
    parser.add_argument("--version", action="version", version=f"relay {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", parents=[common], help="run the relay until SIGTERM or SIGINT")
    serve.add_argument("--config", required=True, help="path to the YAML config")
    serve.add_argument(
        "--log-format",
        type=_choice("log format", logs.FORMATS, str.lower),
        default=None,
        metavar="FORMAT",
        help="json (one object a line) or text; default: server.log_format, whose default"
        " is text when stderr is a terminal and JSON otherwise",
    )
    serve.set_defaults(func=cmd_serve)

    check = sub.add_parser(
        "check",
        parents=[common],
        help="validate a config; exit 0 only when it is valid",
        description="Print every problem of a config file (file:line:column: field: message"
        " (hint)) and exit 1, or print a one-line summary and exit 0. Unset environment"
        " variables are problems, unless --no-env leaves the environment unread; their"
        " values are never printed.",
    )
    check.add_argument("--config", required=True, metavar="PATH", help="path to the YAML config")
    check.add_argument(
        "--no-env",
        action="store_true",
        help="do not read the environment (for CI, where the secrets are not set): every"
        " variable counts as unset, which is no problem, and what its value would decide is"
        " not checked",
    )
    check.set_defaults(func=cmd_check)

    config = sub.add_parser("config", parents=[common], help="config tools")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    show = config_sub.add_parser(
        "show",
        parents=[common],
        help="print the config with every default filled in, secrets described",
        description="Print the config as relay reads it: every section with its defaults"
        " filled in and the values of variables resolved, except that each secret is"
        " described (where it comes from, how long it is), never shown. Durations are in"
        " seconds. A config with problems prints them, as relay check does, and exits 1.",
    )
    show.add_argument("--config", required=True, metavar="PATH", help="path to the YAML config")
    show.add_argument(
        "--no-env",
        action="store_true",
        help="do not read the environment: every variable is shown as unset",
    )
    show.add_argument("--format", choices=("yaml", "json"), default="yaml", help="default: yaml")
    show.set_defaults(func=cmd_config_show)

    routes = sub.add_parser("routes", parents=[common], help="route tools")
    routes_sub = routes.add_subparsers(dest="routes_command", required=True)
    test = routes_sub.add_parser(
        "test",
        parents=[common],
        help="show where messages in FILE would go, offline",
        description="For each message in FILE (Segment messages or Customer.io webhooks),"
        " print as JSON the routes it matches and the exact requests each destination would"
        " get. Nothing is sent and nothing is stored.",
    )
    test.add_argument("--config", required=True, metavar="PATH", help="path to the YAML config")
    test.add_argument(
        "file",
        metavar="FILE",
        help='a JSON object, an array, JSON lines, or a Segment batch ({"batch": [...]})',
    )
    test.add_argument(
        "--source",
        metavar="NAME",
        help="the source the messages come from (default: the first configured source of"
        " each message's direction)",
    )
    test.add_argument(
        "--now",
        type=float,
        metavar="SECONDS",
        help="the send time to use, in unix seconds (default: now); fixes sentAt and the"
        " like, so that the output can be compared",
    )
    test.set_defaults(func=cmd_routes_test)

    dlq = sub.add_parser(
        "dlq",
        parents=[common],
        help="dead letters: list, show, replay, purge",
        description="Dead letters (deliveries given up on, and messages rejected at the door),"
        " through the running relay's admin endpoint, or on the store when no relay serves"
        " it. JSON lines when piped, a table on a terminal.",
    )
    dlq_sub = dlq.add_subparsers(dest="dlq_command", required=True)
    run_dlq = _operator_command(dlq_command)

    def chooser(name: str, help_text: str, ids: bool) -> argparse.ArgumentParser:
        parser = dlq_sub.add_parser(name, parents=[common], help=help_text)
        parser.add_argument("--config", required=True, metavar="PATH")
        if ids:
            parser.add_argument(
                "ids",
                nargs="*",
                metavar="ID",
                help="dead letters by id (17, or r3 for a rejected one)",
            )
        parser.add_argument("--destination", metavar="KEY", help="e.g. customerio.main")
        parser.add_argument("--reason", metavar="TEXT", help="a part of the reason, any case")
        parser.add_argument("--since", metavar="WHEN", help="dead since: 2h, 7d, an ISO time")
        parser.add_argument("--until", metavar="WHEN", help="dead before: 2h, 7d, an ISO time")
        parser.add_argument("--limit", type=int, metavar="N", default=None)
        parser.set_defaults(func=run_dlq)
        return parser

    chooser("list", "dead letters, oldest first", ids=False).set_defaults(limit=100)
    show = dlq_sub.add_parser(
        "show", parents=[common], help="one dead letter: its message, attempts and reason"
    )
    show.add_argument("--config", required=True, metavar="PATH")
    show.add_argument("id", metavar="ID")
    show.set_defaults(func=run_dlq)
    replay = chooser("replay", "queue dead letters again (sent at the rate limit)", ids=True)
    replay.add_argument("--all", action="store_true", help="every dead letter")
    purge = chooser("purge", "delete dead letters for good", ids=True)
    purge.add_argument("--all", action="store_true", help="every dead letter")
    purge.add_argument("--yes", action="store_true", help="do not ask on a terminal")

    imp = sub.add_parser(
        "import",
        parents=[common],
        help="queue Segment messages from files (a backfill), as live traffic",
        description="Queue the Segment messages of FILEs (JSON lines, a JSON array, a"
        ' {"batch": [...]} body; gzip too) through the same checks, routes, de-duplication and'
        " throttled delivery as live traffic: through the running relay, or into the store"
        " when none serves it (delivered when relay starts). Safe to run again: messages are"
        " recognised by messageId (one is derived from a message's content when it has"
        " none).",
    )
    imp.add_argument("--config", required=True, metavar="PATH")
    imp.add_argument("files", nargs="+", metavar="FILE")
    imp.add_argument(
        "--source", metavar="NAME", help="the Segment source they come from (default: the first)"
    )
    imp.add_argument(
        "--identify-timestamp",
        choices=("keep", "now"),
        default="keep",
        help="now: send identify and group calls without their old timestamp, so that"
        " Customer.io does not ignore them as older than the person's last change",
    )
    imp.add_argument("--no-progress", action="store_true", help="no progress bar")
    imp.set_defaults(func=_operator_command(import_files))

    tail_parser = sub.add_parser(
        "tail",
        parents=[common],
        help="watch what comes in, which routes take it, and what goes out, live",
    )
    tail_parser.add_argument("--config", required=True, metavar="PATH")
    tail_parser.add_argument("--route", metavar="NAME", help="only this route's events")
    tail_parser.set_defaults(func=_operator_command(tail))

    demo = sub.add_parser(
        "demo",
        parents=[common],
        help="a first look: relay with stand-ins for Customer.io and Segment, sample traffic",
        description="Start relay with local stand-ins for Customer.io and Segment on"
        " 127.0.0.1, send sample traffic both ways, print what each side received and where"
        " to look, and exit 0 when everything arrived. Nothing to configure: the config and"
        " the store are in a temporary directory, removed at the end.",
    )
    demo.add_argument(
        "--keep-running",
        action="store_true",
        help="keep relay and the stand-ins up until Ctrl-C, to look around",
    )
    demo.add_argument(
        "--timeout",
        type=float,
        default=15.0,
        metavar="SECONDS",
        help="how long to wait for the deliveries (default: 15)",
    )
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Until serve has read its config, its lines are as its flag says, else as on `auto`;
    # the other commands print what they have to say, and their few log lines stay text.
    _log_to_stderr(args, (args.log_format or "auto") if args.command == "serve" else "text")
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
