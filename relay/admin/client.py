"""How the `relay` commands reach the relay that serves a config: the address its admin
endpoint got is written beside the store (on Redis, beside the config file) when it starts
listening (its port may be any free one), and removed when it stops."""

from __future__ import annotations

import contextlib
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from relay.config import Config


def address_file(config: Config) -> str:
    if config.storage.redis is not None:
        return config.path + ".admin"
    return config.storage.sqlite.path + ".admin"


def write_address(config: Config, url: str) -> None:
    path = address_file(config)
    temporary = f"{path}.{os.getpid()}"
    with open(temporary, "w", encoding="utf-8") as fh:
        json.dump({"url": url, "pid": os.getpid()}, fh)
    os.replace(temporary, path)


def remove_address(config: Config) -> None:
    """Removed only while it is still this process's (a newer relay may have replaced it)."""
    path = address_file(config)
    try:
        with open(path, encoding="utf-8") as fh:
            mine = json.load(fh).get("pid") == os.getpid()
    except (OSError, ValueError, AttributeError):
        return
    if mine:
        # On a disk turned read-only it stays; the next relay replaces it, and a command
        # finds nothing answering there meanwhile.
        with contextlib.suppress(OSError):
            os.unlink(path)


class AdminError(Exception):
    """The admin endpoint answered with an error; `message` is its explanation."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message
        super().__init__(message)


@dataclass(frozen=True)
class AdminClient:
    url: str
    token: str | None

    def request(
        self,
        method: str,
        path: str,
        query: list[tuple[str, str]] | None = None,
        body: Any = None,
        timeout: float = 60.0,
    ) -> Any:
        target = self.url + path + ("?" + urllib.parse.urlencode(query) if query else "")
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(target, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return json.load(resp)
        except urllib.error.HTTPError as exc:
            try:
                message = json.load(exc).get("message") or exc.reason
            except (ValueError, AttributeError):
                message = str(exc.reason)
            raise AdminError(exc.code, str(message)) from None

    def stream(self, path: str, query: list[tuple[str, str]] | None = None) -> Any:
        """The open response of a streaming call (JSON lines), to be read line by line."""
        target = self.url + path + ("?" + urllib.parse.urlencode(query) if query else "")
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        return urllib.request.urlopen(urllib.request.Request(target, headers=headers))


def running_relay(config: Config) -> AdminClient | None:
    """The admin endpoint of the relay serving this config's store, or None when none
    answers there (none started, or one that was killed left its address behind)."""
    try:
        with open(address_file(config), encoding="utf-8") as fh:
            url = json.load(fh)["url"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    client = AdminClient(str(url), config.admin.token)
    try:
        client.request("GET", "/status.json", timeout=5.0)
    except AdminError:
        return client  # it answers (an error is still an answer: a wrong token, say)
    except (OSError, ValueError):
        return None
    return client
