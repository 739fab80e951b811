"""`aiops run`: the whole suite on one machine, as separate processes.

Starts real Redis and Postgres (unless `AIOPS_REDIS_URL` / `AIOPS_DATABASE_URL` point at
running ones), then the four services and the gateway; restarts whatever dies; on
Ctrl-C or SIGTERM stops everything it started, gateway first.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from services.kit import local_servers
from services.kit import settings as kit_settings

log = logging.getLogger(__name__)

PROCESSES = (
    ("feedback", "services.feedback"),
    ("telemetry", "services.telemetry"),
    ("anomaly", "services.anomaly"),
    ("remediation", "services.remediation"),
    ("gateway", "gateway"),
)
GRPC_PORTS = (("feedback", 50051), ("telemetry", 50052), ("anomaly", 50053), ("remediation", 50054))
_RESTART_DELAY_SECONDS = 2.0
_STOP_TIMEOUT_SECONDS = 15.0


@dataclass(eq=False)
class Child:
    name: str
    module: str
    env: Mapping[str, str]
    process: subprocess.Popen[bytes] | None = None
    died_at: float | None = None
    restarts: int = 0
    argv: list[str] = field(default_factory=list)

    def start(self) -> None:
        self.argv = [sys.executable, "-m", self.module]
        self.process = subprocess.Popen(self.argv, env=dict(self.env))
        self.died_at = None

    def poll(self) -> None:
        """Notices a death and restarts after a short delay."""
        if self.process is None or self.process.poll() is None:
            return
        now = time.monotonic()
        if self.died_at is None:
            self.died_at = now
            log.warning(
                "process exited; restarting",
                extra={"child": self.name, "returncode": self.process.returncode},
            )
        elif now - self.died_at >= _RESTART_DELAY_SECONDS:
            self.restarts += 1
            self.start()

    def terminate(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def wait(self, deadline: float) -> None:
        if self.process is None:
            return
        try:
            self.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("process did not stop in time; killing", extra={"child": self.name})
            self.process.kill()
            self.process.wait()


class _Stop(Exception):
    pass


def _gen_path() -> Path:
    return Path(__file__).resolve().parent.parent / "gen"


def _wait_ready(port: int, timeout: float) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    last: dict[str, str] = {}
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as resp:
                last = json.load(resp).get("backends", {})
            if last and all(v == "SERVING" for v in last.values()):
                return last
        except (urllib.error.URLError, OSError, ValueError):
            pass
        time.sleep(0.3)
    return last


def run(env: Mapping[str, str], banner: bool = True) -> int:
    """Runs the suite until a signal; returns the exit code."""
    state = kit_settings.default_state_dir(env)
    state.mkdir(parents=True, exist_ok=True)
    child_env = dict(env)
    child_env["AIOPS_STATE_DIR"] = str(state)
    child_env.setdefault("AIOPS_GATEWAY_DEV_SIGNIN", "true")  # local only: /aiops dev sign-in
    child_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(_gen_path()), str(_gen_path().parent), env.get("PYTHONPATH", "")) if p
    )
    redis: local_servers.LocalRedis | None = None
    postgres: local_servers.LocalPostgres | None = None
    children: list[Child] = []

    def on_signal(signum: int, frame: object) -> None:
        raise _Stop

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        if not env.get("AIOPS_REDIS_URL"):
            redis = local_servers.LocalRedis(
                state / "redis", port=_int(env, "AIOPS_LOCAL_REDIS_PORT")
            )
            redis.start()
            child_env["AIOPS_REDIS_URL"] = redis.url
        if not env.get("AIOPS_DATABASE_URL"):
            postgres = local_servers.LocalPostgres(
                state / "postgres", port=_int(env, "AIOPS_LOCAL_POSTGRES_PORT")
            )
            postgres.start()
            child_env["AIOPS_DATABASE_URL"] = postgres.url
        # `aiops backup` finds the local servers through this file.
        (state / "endpoints.json").write_text(
            json.dumps(
                {
                    "redis_url": child_env["AIOPS_REDIS_URL"],
                    "database_url": child_env["AIOPS_DATABASE_URL"],
                }
            )
        )
        children = [Child(name, module, child_env) for name, module in PROCESSES]
        for child in children:
            child.start()
        gateway_port = _int(env, "AIOPS_GATEWAY_PORT") or 3000
        statuses = _wait_ready(gateway_port, timeout=60)
        if banner:
            _print_banner(gateway_port, statuses, child_env, redis, postgres)
        while True:
            time.sleep(0.5)
            for child in children:
                child.poll()
            if redis is not None and not redis.running:
                log.warning("local redis exited; restarting")
                time.sleep(_RESTART_DELAY_SECONDS)
                redis.start()
            if postgres is not None and not postgres.running:
                log.warning("local postgres exited; restarting")
                time.sleep(_RESTART_DELAY_SECONDS)
                postgres.start()
    except _Stop:
        log.info("stopping the suite")
    except local_servers.LocalServerError as exc:
        print(f"aiops run: {exc}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        deadline = time.monotonic() + _STOP_TIMEOUT_SECONDS
        for child in reversed(children):  # gateway first, so nothing new reaches a service
            child.terminate()
            if child.name == "gateway":
                child.wait(deadline)
        for child in children:
            child.wait(deadline)
        for server in (redis, postgres):
            if server is not None:
                server.stop()
    return 0


def _int(env: Mapping[str, str], name: str) -> int:
    value = env.get(name, "")
    return int(value) if value.isdigit() else 0


def _print_banner(
    port: int,
    statuses: Mapping[str, str],
    env: Mapping[str, str],
    redis: local_servers.LocalRedis | None,
    postgres: local_servers.LocalPostgres | None,
) -> None:
    from services import cli

    token = cli.mint(env, role="operator", subject="local-operator", ttl=12 * 3600)
    base = f"http://localhost:{port}"
    lines = [
        "",
        "AIOps suite is running. Ctrl-C stops everything.",
        f"  gateway      {base}   (dashboard {base}/aiops, API {base}/openapi.json)",
        "  gRPC         "
        + "  ".join(
            f"{name} :{env.get(f'AIOPS_{name.upper()}_GRPC_PORT') or default}"
            for name, default in GRPC_PORTS
        ),
        f"  redis        {redis.url if redis else 'external (AIOPS_REDIS_URL)'}",
        f"  postgres     {postgres.url if postgres else 'external (AIOPS_DATABASE_URL)'}",
        f"  backends     {', '.join(f'{k}={v}' for k, v in statuses.items()) or 'not ready yet'}",
        "",
        "An operator token (12 h):",
        f"  export TOKEN={token}",
        "",
        "Try:",
        f"  curl -s {base}/health",
        f'  curl -s -X POST {base}/api/v1/aiops/feedback -H "Authorization: Bearer $TOKEN" \\',
        "       -H 'Content-Type: application/json' \\",
        '       -d \'{"target":{"kind":"TARGET_KIND_ANOMALY","id":"a-1"},'
        '"verdict":"VERDICT_FALSE_POSITIVE"}\'',
        f'  curl -s {base}/api/v1/aiops/feedback -H "Authorization: Bearer $TOKEN"',
        f"  curl -s {base}/metrics/aiops | grep aiops_feedback_total",
        f"  grpcurl -plaintext localhost:{env.get('AIOPS_FEEDBACK_GRPC_PORT') or 50051} list",
        "",
    ]
    print("\n".join(lines), flush=True)
