"""The deployment files: the Dockerfile's health check against a real relay, the container's
config, and stop timeouts that outlast the longest drain relay can take."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from relay.config.schemas import ServerSchema
from relay.settings import Duration
from relay.store.process import _CLOSE_TIMEOUT
from tests.conftest import free_port
from tests.helpers import ROOT, run_relay, wait_ready

DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "deploy" / "compose.yaml"
UNIT = ROOT / "deploy" / "relay.service"
DOCKER_CONFIG = ROOT / "config" / "examples" / "docker.yaml"


def instructions() -> list[tuple[str, str]]:
    """The Dockerfile's instructions (name, arguments), continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, args = line.strip().partition(" ")
            out.append((name.upper(), args.strip()))
    return out


def last(name: str) -> str:
    return [args for n, args in instructions() if n == name][-1]


def healthcheck() -> tuple[dict[str, str], list[str]]:
    """The HEALTHCHECK's options and its command."""
    options, _, command = last("HEALTHCHECK").partition("CMD ")
    opts = dict(o.removeprefix("--").split("=", 1) for o in options.split())
    return opts, json.loads(command)


def seconds(text: str | int) -> float:
    value: float = Duration().deserialize(text)
    return value


def worst_drain() -> float:
    """The longest `relay serve` takes to exit after SIGTERM, at the default
    shutdown_timeout T (relay/cli.py `_serve`, `Relay.stop`): a reload in progress finishes
    (T, for the destinations it changed), aiohttp gives requests in progress T, then T
    more once cancelled (each rounded up to a whole second), the destinations' deliveries
    in flight get T, and the store's process takes up to _CLOSE_TIMEOUT to finish its
    writes and as long again to exit."""
    t = ServerSchema().fields["shutdown_timeout"].load_default
    assert isinstance(t, float)
    return t + (2 * t + 2) + t + 2 * _CLOSE_TIMEOUT


def health_command(port: int) -> tuple[list[str], dict[str, str]]:
    _, command = healthcheck()
    base = {k: os.environ[k] for k in ("PATH", "HOME", "LANG") if k in os.environ}
    # The image's python is this one here.
    return [sys.executable if arg == "python" else arg for arg in command], {
        **base,
        "RELAY_PORT": str(port),
    }


async def test_the_healthcheck_passes_against_a_running_relay(tmp_path: Path) -> None:
    port = free_port()
    base = {k: os.environ[k] for k in ("PATH", "HOME", "LANG") if k in os.environ}
    # The container's own config, as the image runs it (no secrets set: relay starts and
    # holds what it cannot deliver).
    proc = subprocess.Popen(
        [sys.executable, "-m", "relay", "serve", "--config", str(DOCKER_CONFIG)],
        cwd=tmp_path,
        env={
            **base,
            "PYTHONPATH": str(ROOT),
            "RELAY_HOST": "127.0.0.1",
            "RELAY_PORT": str(port),
            "RELAY_DB": str(tmp_path / "relay.db"),
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        await wait_ready(f"http://127.0.0.1:{port}", proc)
        command, env = health_command(port)
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=30)
        assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0


def test_the_healthcheck_fails_when_nothing_listens() -> None:
    command, env = health_command(free_port())
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    assert "Connection refused" in result.stderr


def test_the_healthcheck_gives_up_before_docker_does() -> None:
    options, command = healthcheck()
    [own] = re.findall(r"timeout=(\d+(?:\.\d+)?)", command[-1])
    assert float(own) < seconds(options["timeout"])
    # compose writes out the same check, with the same timings.
    compose = yaml.safe_load(COMPOSE.read_text())["services"]["relay"]["healthcheck"]
    assert compose["test"] == ["CMD", *command]
    for key in ("interval", "timeout", "start-period", "retries"):
        assert str(compose[key.replace("-", "_")]) == options[key], key


def test_the_image_runs_the_container_config_as_a_user_on_its_volume() -> None:
    copied = [args.split() for name, args in instructions() if name == "COPY"]
    assert ["config/examples/docker.yaml", "/etc/relay/relay.yaml"] in copied
    assert json.loads(last("CMD")) == ["relay", "serve", "--config", "/etc/relay/relay.yaml"]
    assert last("USER") not in ("root", "0")
    assert last("STOPSIGNAL") == "SIGTERM"
    # The store's default path is on the volume, and the default port is the one exposed.
    config = yaml.safe_load(DOCKER_CONFIG.read_text())
    default = re.fullmatch(r"\$\{RELAY_DB:-(.+)\}", config["storage"]["sqlite"]["path"])
    assert default is not None
    assert Path(default.group(1)).parent == Path(last("VOLUME"))
    assert config["server"]["port"] == f"${{RELAY_PORT:-{last('EXPOSE')}}}"
    assert config["server"]["host"] == "${RELAY_HOST:-0.0.0.0}"
    # No test extras in the image.
    assert not [args for name, args in instructions() if name == "RUN" and "[test]" in args]


def test_the_container_config_passes_check_without_the_environment() -> None:
    result = run_relay(["check", "--config", "config/examples/docker.yaml", "--no-env"], ROOT, {})
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == (
        "config/examples/docker.yaml: valid (2 destinations, 2 routes); environment"
        " variables not checked\n"
    )


def unit_settings() -> dict[str, str]:
    out = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def test_every_stop_timeout_outlasts_the_longest_drain() -> None:
    worst = worst_drain()
    assert worst == 102.0  # the figure deploy/relay.service explains
    assert f"= 4T + {2 + 2 * _CLOSE_TIMEOUT:g} = {worst:g} s" in UNIT.read_text()
    unit = unit_settings()
    assert seconds(unit["TimeoutStopSec"]) > worst
    assert unit["KillSignal"] == "SIGTERM"
    compose = yaml.safe_load(COMPOSE.read_text())["services"]["relay"]
    assert seconds(compose["stop_grace_period"]) > worst
    # The README's docker stop and Kubernetes figures too.
    readme = (ROOT / "README.md").read_text()
    [grace] = re.findall(r"terminationGracePeriodSeconds: (\d+)", readme)
    assert float(grace) > worst
    stops = re.findall(r"docker stop --time (\d+)", readme + DOCKERFILE.read_text())
    assert stops
    assert all(float(s) > worst for s in stops)


def test_the_unit_reloads_with_sighup_and_is_hardened() -> None:
    unit = unit_settings()
    assert unit["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert shlex.split(unit["ExecStart"])[1:] == [
        "serve",
        "--config",
        "/etc/relay/relay.yaml",
    ]
    assert unit["Restart"] == "on-failure"
    assert unit["StateDirectory"] == "relay"
    assert unit["Environment"] == "RELAY_DB=/var/lib/relay/relay.db"
    assert (unit["NoNewPrivileges"], unit["ProtectSystem"], unit["PrivateTmp"]) == (
        "yes",
        "strict",
        "yes",
    )
    assert unit["User"] not in ("root", "0")


def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (systemd's own tools)")
    # Installed, relay is /opt/relay/bin/relay; here it is this Python's relay.
    text = UNIT.read_text().replace("/opt/relay/bin/relay", f"{sys.executable} -m relay")
    unit = tmp_path / "relay.service"
    unit.write_text(text)
    result = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    # verify exits 0 even for settings it ignores; anything it prints is a mistake.
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def docker_answers() -> str | None:
    """Why the image cannot be built here, or None."""
    docker = shutil.which("docker")
    if docker is None:
        return "docker is not installed"
    info = subprocess.run([docker, "info"], capture_output=True, text=True, timeout=60)
    if info.returncode != 0:
        return f"docker does not answer: {(info.stderr or info.stdout).strip().splitlines()[-1]}"
    return None


def test_the_image_builds() -> None:
    reason = docker_answers()
    if reason is not None:
        pytest.skip(reason)
    tag = f"relay-test:{os.getpid()}"
    build = subprocess.run(
        ["docker", "build", "-t", tag, str(ROOT)], capture_output=True, text=True, timeout=1200
    )
    assert build.returncode == 0, build.stderr[-4000:]
    try:
        run: Any = subprocess.run(
            [
                "docker",
                "run",
                "--rm",
                tag,
                "relay",
                "check",
                "--no-env",
                "--config",
                "/etc/relay/relay.yaml",
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert run.returncode == 0, run.stderr
        assert run.stdout.endswith("environment variables not checked\n")
    finally:
        subprocess.run(["docker", "rmi", "-f", tag], capture_output=True, timeout=120)
