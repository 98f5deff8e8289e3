"""`relay dlq`, `relay import` and `relay tail`: through the running relay's admin endpoint
when one serves the config's store, or on the store itself when none does (never both: a
store a relay holds is never opened behind its back)."""

from __future__ import annotations

import argparse
import asyncio
import datetime
import gzip
import hashlib
import itertools
import json
import os
import re
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from relay.admin.api import IMPORT_MAX_MESSAGES, filter_from_query, selects_something
from relay.admin.client import AdminClient, AdminError, address_file, running_relay
from relay.codec import decode, encode
from relay.config import Config
from relay.errors import ClientError, RelayError, StoreInUse
from relay.store.base import DeadLetterFilter
from relay.vocab import segment as seg

IMPORT_CHUNK = 500  # messages per call: a request of a few hundred KB
PROGRESS_EVERY = 5.0  # seconds between progress lines when not on a terminal


class CommandError(RelayError):
    """What a command prints (after its name) before it exits 1."""


# ------------------------------------------------------------------ reaching the relay


class Operator(Protocol):
    async def dead_letters(self, query: list[tuple[str, str]]) -> list[dict[str, Any]]: ...

    async def dead_letter(self, ref: str) -> dict[str, Any]: ...

    async def replay(self, query: list[tuple[str, str]]) -> int: ...

    async def discard(self, query: list[tuple[str, str]]) -> int: ...

    async def import_messages(self, source: str | None, messages: list[Any]) -> list[Any]: ...

    where: str


def _split(query: list[tuple[str, str]]) -> tuple[DeadLetterFilter, bool]:
    ids = [v for k, v in query if k == "id"]
    which = filter_from_query({k: v for k, v in query if k != "id"}, ids)
    return which, ("all", "1") in query


@dataclass
class Remote:
    client: AdminClient
    where: str = "the running relay"

    async def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            return await asyncio.to_thread(self.client.request, method, path, **kwargs)
        except AdminError as exc:
            raise CommandError(f"the relay answered {exc.status}: {exc.message}") from None
        except OSError as exc:
            raise CommandError(f"the relay at {self.client.url} did not answer: {exc}") from None

    async def dead_letters(self, query: list[tuple[str, str]]) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = (await self._call("GET", "/dead-letters", query=query))[
            "dead_letters"
        ]
        return found

    async def dead_letter(self, ref: str) -> dict[str, Any]:
        found: dict[str, Any] = await self._call("GET", f"/dead-letters/{ref}")
        return found

    async def replay(self, query: list[tuple[str, str]]) -> int:
        return int((await self._call("POST", "/dead-letters/replay", query=query))["replayed"])

    async def discard(self, query: list[tuple[str, str]]) -> int:
        return int((await self._call("POST", "/dead-letters/discard", query=query))["discarded"])

    async def import_messages(self, source: str | None, messages: list[Any]) -> list[Any]:
        query = [("source", source)] if source else None
        while True:
            try:
                answer = await asyncio.to_thread(
                    self.client.request, "POST", "/import", query, {"messages": messages}
                )
            except AdminError as exc:
                if exc.status == 503:  # the store is full or busy: wait, as a client would
                    await asyncio.sleep(5)
                    continue
                raise CommandError(f"the relay answered {exc.status}: {exc.message}") from None
            except OSError as exc:
                raise CommandError(f"the relay did not answer: {exc}") from None
            results: list[Any] = answer["results"]
            return results


@dataclass
class Local:
    """The store opened here, no relay serving it: replayed deliveries are sent when a
    relay starts."""

    relay: Any
    where: str = "the store (no relay serves it)"

    async def dead_letters(self, query: list[tuple[str, str]]) -> list[dict[str, Any]]:
        which, _ = _split(query)
        found: list[dict[str, Any]] = await self.relay.admin.dead_letters(which)
        return found

    async def dead_letter(self, ref: str) -> dict[str, Any]:
        found: dict[str, Any] = await self.relay.admin.dead_letter(ref)
        return found

    async def replay(self, query: list[tuple[str, str]]) -> int:
        which, _ = _split(query)
        return int(await self.relay.admin.replay(which))

    async def discard(self, query: list[tuple[str, str]]) -> int:
        which, _ = _split(query)
        return int(await self.relay.admin.discard(which))

    async def import_messages(self, source: str | None, messages: list[Any]) -> list[Any]:
        admin = self.relay.admin
        results: list[Any] = await admin.import_messages(admin.import_source(source), messages)
        return results


@asynccontextmanager
async def reach(config: Config) -> AsyncIterator[Operator]:
    client = running_relay(config)
    if client is not None:
        yield Remote(client)
        return
    from relay.app import RELAY, build_store, create_app

    if config.storage.redis is None and not os.path.exists(config.storage.sqlite.path):
        raise CommandError(
            f"there is no event store at {config.storage.sqlite.path} (storage.sqlite.path)"
        )
    # On Redis the store is shared: a command works on it beside the running instances.
    app = create_app(config, store=build_store(config, lock_wait=0, delivers=False))
    relay = app[RELAY]
    try:
        await relay.store.open()
    except StoreInUse:
        raise CommandError(
            f"a relay serves from {config.storage.sqlite.path}, but its admin endpoint does"
            f" not answer at the address in {address_file(config)}; check that relay's log"
            " for the admin address, or try again once it has started"
        ) from None
    try:
        yield Local(relay)
    finally:
        await relay.store.close()
        await relay.transport.close()


# ------------------------------------------------------------------ dlq


_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_time(text: str, now: float) -> float:
    """`2h` (that long ago), an ISO 8601 date or time (UTC unless it says), or unix seconds."""
    if m := _RELATIVE.match(text):
        return now - float(m.group(1)) * _UNITS[m.group(2)]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise CommandError(
            f"{text!r} is not a time: write 30m, 2h or 7d (that long ago), an ISO 8601 time"
            " such as 2026-12-01T08:00:00Z, or unix seconds"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()


def dlq_query(args: argparse.Namespace) -> list[tuple[str, str]]:
    now = time.time()
    query: list[tuple[str, str]] = [("id", i) for i in getattr(args, "ids", None) or []]
    if args.destination:
        query.append(("destination", args.destination))
    if args.reason:
        query.append(("reason", args.reason))
    if args.since:
        query.append(("since", repr(parse_time(args.since, now))))
    if args.until:
        query.append(("until", repr(parse_time(args.until, now))))
    if args.limit is not None:
        query.append(("limit", str(args.limit)))
    if getattr(args, "all", False):
        query.append(("all", "1"))
    try:
        _split(query)  # refuses a bad id here, with the same words as the relay
    except ClientError as exc:
        raise CommandError(exc.message) from None
    return query


def _line(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _cut(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def table(letters: list[dict[str, Any]]) -> str:
    head = ("ID", "DESTINATION", "DEAD AT (UTC)", "TRIES", "REASON")
    rows = [
        (
            d["id"],
            d["destination"] or f"(rejected from {d['source']})",
            d["dead_at"][:19].replace("T", " "),
            str(d["attempts"]),
            _cut(d["reason"], 70),
        )
        for d in letters
    ]
    widths = [max(len(r[i]) for r in (head, *rows)) for i in range(4)]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(r[:4], widths, strict=True)) + "  " + r[4]
        for r in (head, *rows)
    ]
    return "\n".join(lines)


def shown(letter: dict[str, Any]) -> str:
    lines = [
        f"dead letter {letter['id']}",
        f"  destination  {letter['destination'] or '(none: rejected at the door)'}",
        f"  source       {letter['kind']}.{letter['source']}",
        f"  queued at    {letter['queued_at']}",
        f"  dead at      {letter['dead_at']}",
        f"  reason       {letter['reason']}",
        f"  attempts     {letter['attempts']}",
    ]
    for n, attempt in enumerate(letter["history"], 1):
        lines.append(f"    {n}. {attempt['at']}  {attempt['error']}")
    lines.append("  message")
    text = json.dumps(letter["message"], indent=2, ensure_ascii=False)
    lines.extend("    " + line for line in text.splitlines())
    return "\n".join(lines).encode("utf-8", "backslashreplace").decode("utf-8")


async def dlq(config: Config, args: argparse.Namespace) -> int:
    command = args.dlq_command
    terminal = sys.stdout.isatty()
    if command == "show":
        async with reach(config) as operator:
            letter = await operator.dead_letter(args.id)
        print(shown(letter) if terminal else _line(letter))
        return 0
    query = dlq_query(args)
    if command == "list":
        async with reach(config) as operator:
            letters = await operator.dead_letters(query)
        if terminal:
            print(table(letters) if letters else "no dead letters")
        else:
            for letter in letters:
                print(_line(letter))
        return 0
    which, everything = _split(query)
    if not selects_something(which, everything):
        raise CommandError(
            f"name what to {command}: dead letter ids, --destination/--reason/--since/--until,"
            " or --all"
        )
    async with reach(config) as operator:
        if command == "replay":
            count = await operator.replay(query)
            print(f"{count} deliveries put back in the queue ({operator.where})")
            return 0
        if sys.stdin.isatty() and not args.yes:
            count = len(await operator.dead_letters(query))
            answer = input(f"delete {count} dead letters for good? [y/N] ")
            if answer.strip().lower() not in ("y", "yes"):
                print("nothing deleted")
                return 1
        count = await operator.discard(query)
        print(f"{count} dead letters deleted ({operator.where})")
        return 0


# ------------------------------------------------------------------ import


@dataclass(frozen=True)
class Line:
    """One message of an import file, and where it is."""

    file: str
    line: int  # the line of a JSON lines file, else the message's index in the array, from 1
    value: Any


def _open_text(path: str) -> Iterator[str]:
    with open(path, "rb") as raw:
        gzipped = raw.read(2) == b"\x1f\x8b"
    opener: Any = gzip.open if gzipped else open
    with opener(path, "rt", encoding="utf-8") as fh:
        yield from fh


def messages_of(path: str, problems: list[str]) -> Iterator[Line]:
    """The messages of one file, in order: JSON lines, a JSON array, or a Segment batch body
    ({"batch": [...]}), gzip-compressed or not. What cannot be read is added to `problems`
    (with its file and line) and the rest goes on."""
    try:
        numbered = enumerate(_open_text(path), 1)
        first = next(((n, t) for n, t in numbered if t.strip()), None)
        if first is None:
            return
        number, text = first
        if text.lstrip()[:1] in ("[", "{") and not _is_one_line_json(text):
            # A document over several lines: an array or a batch body, read whole.
            whole = text + "".join(t for _, t in numbered)
            try:
                document = decode(whole)
            except ValueError as exc:
                problems.append(f"{path}: not valid JSON (nor JSON lines): {exc}")
                return
            for n, item in enumerate(_items_of(document), 1):
                yield Line(path, n, item)
            return
        for number, text in itertools.chain([first], numbered):
            if not text.strip():
                continue
            try:
                value = decode(text)
            except ValueError as exc:
                problems.append(f"{path}:{number}: not valid JSON: {exc}")
                continue
            for item in _items_of(value):
                yield Line(path, number, item)
    except OSError as exc:
        problems.append(f"{path}: cannot read it: {exc.strerror or exc}")
    except (UnicodeDecodeError, EOFError, gzip.BadGzipFile) as exc:
        problems.append(f"{path}: not UTF-8 text (or a broken gzip file): {exc}")


def _is_one_line_json(line: str) -> bool:
    try:
        decode(line)
    except ValueError:
        return False
    return True


def _items_of(document: Any) -> list[Any]:
    if isinstance(document, dict) and isinstance(document.get("batch"), list):
        return [
            seg.merge_batch_defaults(item, document) if isinstance(item, dict) else item
            for item in document["batch"]
        ]
    return document if isinstance(document, list) else [document]


def stable_message_id(message: dict[str, Any]) -> str:
    """For a message without a messageId: one derived from its content, so that importing
    the same file again is recognised as the same messages (dedup by messageId)."""
    digest = hashlib.sha256(encode(message)).hexdigest()[:32]
    return f"import-{digest}"


def prepare(item: Line, identify_timestamp: str) -> Any:
    message = item.value
    if not isinstance(message, dict):
        return message
    message = dict(message)
    if not isinstance(message.get("messageId"), str) or not message.get("messageId"):
        message["messageId"] = stable_message_id(message)
    if identify_timestamp == "now" and message.get("type") in ("identify", "group"):
        # Without a timestamp Customer.io applies the update as of its arrival, instead of
        # ignoring it for being older than the person's last change.
        message.pop("timestamp", None)
    return message


class Progress:
    """A bar with rate and ETA on a terminal; a plain line every few seconds otherwise."""

    def __init__(self, total: int, terminal: bool) -> None:
        self.total = total
        self.done = 0
        self.started = self.last = time.monotonic()
        self.bar: Any = None
        if terminal:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="msg", file=sys.stderr, dynamic_ncols=True)

    def advance(self, count: int) -> None:
        self.done += count
        if self.bar is not None:
            self.bar.update(count)
            return
        now = time.monotonic()
        if now - self.last >= PROGRESS_EVERY:
            self.last = now
            print(self.line(now), file=sys.stderr, flush=True)

    def line(self, now: float) -> str:
        rate = self.done / max(now - self.started, 1e-9)
        left = (self.total - self.done) / rate if rate > 0 else float("inf")
        eta = "" if left == float("inf") else f", about {left:.0f} s left"
        return f"import: {self.done} of {self.total} messages, {rate:.0f}/s{eta}"

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


async def import_files(config: Config, args: argparse.Namespace) -> int:
    problems: list[str] = []
    items = [item for path in args.files for item in messages_of(path, problems)]
    tally = {"queued": 0, "duplicate": 0, "refused": 0}
    terminal = sys.stderr.isatty() and not args.no_progress
    progress = Progress(len(items), terminal)
    try:
        async with reach(config) as operator:
            for start in range(0, len(items), min(IMPORT_CHUNK, IMPORT_MAX_MESSAGES)):
                chunk = items[start : start + IMPORT_CHUNK]
                messages = [prepare(item, args.identify_timestamp) for item in chunk]
                results = await operator.import_messages(args.source, messages)
                for item, result in zip(chunk, results, strict=True):
                    outcome = result["outcome"]
                    if outcome == "refused":
                        problems.append(f"{item.file}:{item.line}: {result['reason']}")
                    tally[outcome if outcome in tally else "refused"] += 1
                progress.advance(len(chunk))
            where = operator.where
    finally:
        progress.close()
    for problem in problems:
        print(problem, file=sys.stderr)
    print(
        f"imported {len(items)} messages through {where}: {tally['queued']} queued,"
        f" {tally['duplicate']} already imported (same messageId), {tally['refused']} refused"
        + (f"; {len(problems)} problems above" if problems else "")
    )
    return 1 if problems else 0


# ------------------------------------------------------------------ tail


def tail_line(event: dict[str, Any]) -> str:
    when = datetime.datetime.fromtimestamp(event["at"], datetime.UTC).strftime("%H:%M:%S.%f")
    when = when[:-3]
    if event["what"] == "in":
        routes = ", ".join(event["routes"]) or "no route"
        said = _cut(json.dumps(event["message"], ensure_ascii=False), 100)
        text = (
            f"{when} in   {event['kind']}.{event['source']} {said} -> {routes} ({event['outcome']})"
        )
        if event.get("reason"):
            text += f": {event['reason']}"
    else:
        answer = event["status"] if event["status"] is not None else event.get("error")
        text = f"{when} out  {event['destination']} {event['method']} {event['url']} -> {answer}"
    if event.get("lost_before"):
        text = f"({event['lost_before']} events not shown: the tail was read too slowly)\n" + text
    return text


def tail(config: Config, args: argparse.Namespace) -> int:
    client = running_relay(config)
    if client is None:
        raise CommandError(
            f"no relay serves {config.path} (nothing answers at the address in"
            f" {address_file(config)}): start it with relay serve, then tail it"
        )
    query = [("route", args.route)] if args.route else None
    terminal = sys.stdout.isatty()
    try:
        with client.stream("/tail", query) as resp:
            for raw in resp:
                if not raw.strip():
                    continue
                event = json.loads(raw)
                print(tail_line(event) if terminal else _line(event), flush=True)
    except AdminError as exc:
        raise CommandError(exc.message) from None
    except OSError as exc:
        status = getattr(exc, "code", None)
        if status is not None:
            try:
                message = json.load(exc).get("message")  # type: ignore[arg-type]
            except (ValueError, AttributeError):
                message = str(exc)
            raise CommandError(str(message)) from None
        raise CommandError(f"the relay stopped answering: {exc}") from None
    except KeyboardInterrupt:
        return 0
    return 0
