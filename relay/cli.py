"""The `relay` command: serve · check · routes test · dlq."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
import time
from collections.abc import Sequence
from typing import Any

from aiohttp import web

from relay import __version__
from relay.app import RELAY, build_store, create_app, describe_missing
from relay.config import Config, check_config, load_config
from relay.errors import ConfigError, ConfigProblem, RelayError, StoreCannotOpen, StoreInUse
from relay.reload import Reloader
from relay.runtime import tune_garbage_collector
from relay.store.sqlite import read_dead_letters
from relay.vocab import segment as seg

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
    result = check_config(args.config)
    if result.config is None or result.problems:
        return _not_valid(args.config, result.problems)
    config = result.config
    print(
        f"{args.config}: valid ({_plural(len(config.destinations), 'destination')},"
        f" {_plural(len(config.routes), 'route')})"
    )
    return 0


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
        "relay %s listening on http://%s:%d (store %s)",
        __version__,
        config.server.host,
        config.server.port,
        config.storage.sqlite.path,
    )
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
    try:
        asyncio.run(_serve(config))
    except StoreInUse as exc:
        log.error(
            "not starting: %s; stop it first, or give each relay a storage.sqlite.path of its own",
            exc.message,
        )
        return 1
    except StoreCannotOpen as exc:  # a read-only or full disk, a folder that cannot be made
        log.error("not starting: %s", exc.message)
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


def _read_messages(path: str) -> list[Any]:
    """A JSON object, an array, JSON lines, or a Segment batch body ({"batch": [...]})."""
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    stripped = text.strip()
    if not stripped:
        return []
    try:
        value = json.loads(stripped)
    except ValueError:
        out = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    out.append(json.loads(line))
                except ValueError as exc:
                    raise RelayError(f"{path}:{n}: not valid JSON: {exc}") from None
        return out
    if isinstance(value, dict) and isinstance(value.get("batch"), list) and "type" not in value:
        return [
            seg.merge_batch_defaults(item, value) if isinstance(item, dict) else item
            for item in value["batch"]
        ]
    return value if isinstance(value, list) else [value]


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
    try:
        messages = _read_messages(args.file)
    except OSError as exc:
        print(f"relay routes test: cannot read {args.file}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except (RelayError, UnicodeDecodeError) as exc:
        print(f"relay routes test: {exc}", file=sys.stderr)
        return 1
    now = time.time() if args.now is None else args.now
    out = dry_run(result.config, result.routes, messages, now, source=args.source)
    _print_json_line(json.dumps(out, indent=2, ensure_ascii=False))
    return 0


def _dlq_list(config: Config, args: argparse.Namespace) -> int:
    # Read only: safe while a relay serves from the same store.
    for item in read_dead_letters(config.storage.sqlite.path, args.limit, args.destination):
        _print_json_line(
            json.dumps(
                {
                    "id": item.id,
                    "destination": item.destination,
                    "source": item.source,
                    "kind": item.kind,
                    "reason": item.reason,
                    "attempts": item.attempts,
                    "message": item.message,
                },
                ensure_ascii=False,
            )
        )
    return 0


async def _dlq_replay(config: Config, args: argparse.Namespace) -> int:
    ids = None if args.all else [int(i) for i in args.ids]
    if not args.all and not ids:
        print("relay dlq replay: give delivery ids, or --all", file=sys.stderr)
        return 2
    # Refused (StoreInUse) while a relay serves from the store: opening it takes back what
    # that relay has in flight.
    store = build_store(config, lock_wait=0)
    await store.open()
    try:
        count = await store.replay(ids, time.time())
    finally:
        await store.close()
    print(f"{count} deliveries put back in the queue")
    return 0


def cmd_dlq(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 1
    try:
        if args.dlq_command == "list":
            return _dlq_list(config, args)
        return asyncio.run(_dlq_replay(config, args))
    except StoreInUse as exc:
        print(
            f"relay dlq {args.dlq_command}: {exc.message}; stop it, replay, and start it"
            " again (replaying beside it would send what it has in flight a second time)",
            file=sys.stderr,
        )
        return 1
    except StoreCannotOpen as exc:
        print(f"relay dlq {args.dlq_command}: {exc.message}", file=sys.stderr)
        return 1


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--log-level", default=argparse.SUPPRESS, help="DEBUG, INFO, WARNING or ERROR"
    )
    parser = argparse.ArgumentParser(prog="relay", description=__doc__, parents=[common])
    parser.add_argument("--version", action="version", version=f"relay {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", parents=[common], help="run the relay until SIGTERM or SIGINT")
    serve.add_argument("--config", required=True, help="path to the YAML config")
    serve.set_defaults(func=cmd_serve)

    check = sub.add_parser(
        "check",
        parents=[common],
        help="validate a config; exit 0 only when it is valid",
        description="Print every problem of a config file (file:line:column: field: message"
        " (hint)) and exit 1, or print a one-line summary and exit 0. Unset environment"
        " variables are problems; their values are never printed.",
    )
    check.add_argument("--config", required=True, metavar="PATH", help="path to the YAML config")
    check.set_defaults(func=cmd_check)

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

    dlq = sub.add_parser("dlq", parents=[common], help="inspect and replay dead letters")
    dlq_sub = dlq.add_subparsers(dest="dlq_command", required=True)
    dlq_list = dlq_sub.add_parser("list", parents=[common], help="print dead letters as JSON lines")
    dlq_list.add_argument("--config", required=True)
    dlq_list.add_argument("--destination")
    dlq_list.add_argument("--limit", type=int, default=100)
    dlq_list.set_defaults(func=cmd_dlq)
    replay = dlq_sub.add_parser("replay", parents=[common], help="queue dead letters again")
    replay.add_argument("--config", required=True)
    replay.add_argument("ids", nargs="*")
    replay.add_argument("--all", action="store_true")
    replay.set_defaults(func=cmd_dlq)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(getattr(args, "log_level", "INFO")).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
