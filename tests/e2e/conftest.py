"""The whole suite started the way `make run` starts it (`aiops run`: separate processes,
its own Redis and Postgres, two gateway workers), once per test module."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services.kit import local_servers

ROOT = Path(__file__).resolve().parents[2]
GRPCURL = Path(sys.executable).parent / "grpcurl"
NAMES = ("feedback", "telemetry", "anomaly", "remediation")


class Suite:
    def __init__(self, env: dict[str, str], process: subprocess.Popen[bytes]) -> None:
        self.env = env
        self.process = process
        self.base = f"http://127.0.0.1:{env['AIOPS_GATEWAY_PORT']}"

    def cli(self, *args: str) -> str:
        out = subprocess.run(
            [sys.executable, "-m", "services.cli", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return out.stdout.strip()

    def http(
        self, method: str, path: str, token: str | None = None, body: Any = None
    ) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base + path, data=data, method=method)
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=10) as resp:
                raw = resp.read()
                status = resp.status
        except urllib.error.HTTPError as err:
            raw, status = err.read(), err.code
        text = raw.decode()
        try:
            return status, json.loads(text)
        except ValueError:
            return status, text

    def grpcurl(self, *args: str) -> str:
        port = self.env["AIOPS_FEEDBACK_GRPC_PORT"]
        out = subprocess.run(
            [str(GRPCURL), "-plaintext", *args[:-1], f"127.0.0.1:{port}", args[-1]]
            if args
            else [str(GRPCURL), "-plaintext", f"127.0.0.1:{port}", "list"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        return out.stdout


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Suite]:
    with start_suite(tmp_path_factory) as s:
        yield s


@contextlib.contextmanager
def start_suite(tmp_path_factory: pytest.TempPathFactory, **extra_env: str) -> Iterator[Suite]:
    """`aiops run` on free ports with its own state; `extra_env` adds AIOPS_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIOPS_")}
    env["AIOPS_STATE_DIR"] = str(tmp_path_factory.mktemp("state"))
    env["AIOPS_GATEWAY_PORT"] = str(local_servers.free_port())
    env["AIOPS_SHUTDOWN_DRAIN_SECONDS"] = "0.2"
    env["AIOPS_GATEWAY_WORKERS"] = "2"  # SO_REUSEPORT workers, as in production
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{ROOT / 'gen'}"
    for name in NAMES:
        grpc_port, metrics_port = local_servers.free_port(), local_servers.free_port()
        env[f"AIOPS_{name.upper()}_GRPC_PORT"] = str(grpc_port)
        env[f"AIOPS_{name.upper()}_METRICS_PORT"] = str(metrics_port)
        env[f"AIOPS_{name.upper()}_ADDR"] = f"127.0.0.1:{grpc_port}"
        env[f"AIOPS_{name.upper()}_METRICS_ADDR"] = f"127.0.0.1:{metrics_port}"
    env.update(extra_env)
    log = open(Path(env["AIOPS_STATE_DIR"]) / "suite.log", "wb")  # noqa: SIM115
    process = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "run"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
    s = Suite(env, process)
    try:
        deadline = time.monotonic() + 90
        while True:
            assert process.poll() is None, "aiops run exited early; see suite.log"
            try:
                status, body = s.http("GET", "/health")
                if status == 200 and set(body["backends"].values()) == {"SERVING"}:
                    break
            except (OSError, KeyError, TypeError):
                pass
            assert time.monotonic() < deadline, "suite not ready in 90 s"
            time.sleep(0.3)
        yield s
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        log.close()
