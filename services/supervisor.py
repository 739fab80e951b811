"""`aiops run`: the whole suite on one machine, as separate processes.

Starts real Redis and Postgres (unless `AIOPS_REDIS_URL` / `AIOPS_DATABASE_URL` point at
running ones), then the four services and the gateway; restarts whatever dies (at once the
first time, then backing off while it keeps dying young); on Ctrl-C or SIGTERM stops
everything it started, gateway first.

Rolling restart without a failed request (`aiops restart [NAME...]`, or SIGHUP for all):
for each process in turn, the supervisor starts a replacement on the same ports (gRPC
servers, metrics and gateway workers bind with SO_REUSEPORT), waits until it is ready (a
service writes `AIOPS_READY_FILE` once its readiness checks pass; the gateway once every
worker listens), and only then sends SIGTERM to the old one, which goes NOT_SERVING,
stops accepting, finishes its in-flight calls within its grace period and exits. A
replacement that does not become ready is killed and the old process keeps serving.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil  # type: ignore[import-untyped]

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
_RESTART_DELAY_SECONDS = 2.0  # local Redis/Postgres
# A crashed child comes back at once; one that keeps dying young backs off up to the cap.
_FIRST_RESTART_DELAY_SECONDS = 0.1
_MAX_RESTART_DELAY_SECONDS = 10.0
_YOUNG_SECONDS = 10.0
_TICK_SECONDS = 0.1
_STOP_TIMEOUT_SECONDS = 15.0
_READY_TIMEOUT_SECONDS = 60.0
# The old process of a rolling restart gets drain + grace + this before SIGKILL.
_ROLL_STOP_MARGIN_SECONDS = 10.0
CONTROL_DIR = "control"
PID_FILE = "supervisor.pid"


@dataclass(eq=False)
class Child:
    name: str
    module: str
    env: Mapping[str, str]
    process: subprocess.Popen[bytes] | None = None
    died_at: float | None = None
    started_at: float = 0.0
    restarts: int = 0
    young_deaths: int = 0
    argv: list[str] = field(default_factory=list)

    def spawn(self, extra_env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
        self.argv = [sys.executable, "-m", self.module]
        # Its own process group, so that whatever it started (worker processes) goes with
        # it when it dies: a worker orphaned by `kill -9` would live on, holding memory
        # (anomaly's detectors) or even the port (gateway workers).
        return subprocess.Popen(
            self.argv, env={**self.env, **(extra_env or {})}, start_new_session=True
        )

    def start(self) -> None:
        self.process = self.spawn()
        self.started_at = time.monotonic()
        self.died_at = None

    def poll(self) -> None:
        """Notices a death and restarts: at once, or later while it keeps dying young."""
        if self.process is None or self.process.poll() is None:
            return
        now = time.monotonic()
        if self.died_at is None:
            self.died_at = now
            _kill_group(self.process.pid)
            young = now - self.started_at < _YOUNG_SECONDS
            self.young_deaths = self.young_deaths + 1 if young else 0
            log.warning(
                "process exited; restarting",
                extra={
                    "child": self.name,
                    "returncode": self.process.returncode,
                    "delay_seconds": self.restart_delay,
                },
            )
        if now - self.died_at >= self.restart_delay:
            self.restarts += 1
            self.start()

    @property
    def restart_delay(self) -> float:
        delay = _FIRST_RESTART_DELAY_SECONDS * 2.0 ** min(self.young_deaths, 16)
        return min(delay, _MAX_RESTART_DELAY_SECONDS)

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
        _kill_group(self.process.pid)


def _kill_group(pgid: int) -> None:
    """SIGKILLs what is left of a dead child's process group (nothing, normally)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


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

    def on_hangup(signum: int, frame: object) -> None:
        # Handled in the main loop, like a restart request naming every process.
        _Request.write(state, [])

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
        (state / PID_FILE).write_text(str(os.getpid()))
        for stale in _pending_requests(state):  # left by a previous run: not for us
            stale.path.unlink(missing_ok=True)
        children = [Child(name, module, child_env) for name, module in PROCESSES]
        for child in children:
            child.start()
        gateway_port = _int(env, "AIOPS_GATEWAY_PORT") or 3000
        statuses = _wait_ready(gateway_port, timeout=60)
        if banner:
            _print_banner(gateway_port, statuses, child_env, redis, postgres)
        signal.signal(signal.SIGHUP, on_hangup)
        while True:
            time.sleep(_TICK_SECONDS)
            for child in children:
                child.poll()
            for request in _pending_requests(state):
                names = request.names or [c.name for c in children]
                results = {c.name: _roll(c, state, children) for c in children if c.name in names}
                for name in set(names) - set(results):
                    results[name] = "unknown process"
                request.answer(results)
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
        (state / PID_FILE).unlink(missing_ok=True)
    return 0


@dataclass(frozen=True)
class _Request:
    """A rolling-restart request: a file in `<state>/control/`, answered next to it."""

    path: Path
    names: list[str]

    @staticmethod
    def write(state: Path, names: Sequence[str]) -> Path:
        control = state / CONTROL_DIR
        control.mkdir(parents=True, exist_ok=True)
        path = control / f"restart-{time.time_ns()}-{uuid.uuid4().hex[:8]}.json"
        partial = path.with_suffix(".partial")
        partial.write_text(json.dumps({"names": list(names)}))
        partial.replace(path)
        return path

    def answer(self, results: Mapping[str, str]) -> None:
        done = self.path.with_suffix(".done")
        partial = self.path.with_suffix(".partial")
        partial.write_text(json.dumps(results))
        partial.replace(done)
        self.path.unlink(missing_ok=True)
        log.info("rolling restart done", extra={"results": dict(results)})


def _pending_requests(state: Path) -> list[_Request]:
    control = state / CONTROL_DIR
    if not control.is_dir():
        return []
    found = []
    for path in sorted(control.glob("restart-*.json")):
        try:
            names = [str(n) for n in json.loads(path.read_text()).get("names", [])]
        except (OSError, ValueError, AttributeError):
            names = []
        found.append(_Request(path, names))
    return found


def request_restart(
    state: Path, names: Sequence[str] = (), timeout: float = 600.0
) -> dict[str, str]:
    """Asks a running `aiops run` (whose state directory is `state`) for a rolling restart
    of `names` (every process when empty) and waits for the outcome of each:
    `restarted`, or why the old process was kept."""
    pid_file = state / PID_FILE
    try:
        pid = int(pid_file.read_text())
        os.kill(pid, 0)
    except (OSError, ValueError):
        raise RuntimeError(f"no `aiops run` is running with the state directory {state}") from None
    path = _Request.write(state, names)
    done = path.with_suffix(".done")
    deadline = time.monotonic() + timeout
    while not done.exists():
        if time.monotonic() > deadline or not psutil.pid_exists(pid):
            path.unlink(missing_ok=True)
            raise TimeoutError(f"no answer to the restart request within {timeout:g} s")
        time.sleep(_TICK_SECONDS)
    results: dict[str, str] = json.loads(done.read_text())
    done.unlink(missing_ok=True)
    return results


def _roll(child: Child, state: Path, children: Sequence[Child]) -> str:
    """Replaces `child`'s process by a new one without a gap; returns `restarted` or why
    the old one was kept."""
    old = child.process
    if old is None or old.poll() is not None:
        return "not running"
    others = [c for c in children if c is not child]
    log.info("rolling restart", extra={"child": child.name, "old_pid": old.pid})
    ready_file = state / "run" / f"{child.name}-{uuid.uuid4().hex}.ready"
    if child.name == "gateway":
        new = child.spawn()
        port = _int(child.env, "AIOPS_GATEWAY_PORT") or 3000
        workers = _int(child.env, "AIOPS_GATEWAY_WORKERS") or 1

        def ready() -> bool:
            return _listeners(new.pid, port) >= workers
    else:
        ready_file.parent.mkdir(parents=True, exist_ok=True)
        new = child.spawn({"AIOPS_READY_FILE": str(ready_file)})

        def ready() -> bool:
            return ready_file.exists()

    try:
        deadline = time.monotonic() + _READY_TIMEOUT_SECONDS
        while not ready():
            if new.poll() is not None:
                _kill_group(new.pid)
                return f"replacement exited with code {new.returncode}"
            if time.monotonic() > deadline:
                new.kill()
                new.wait()
                _kill_group(new.pid)
                return f"replacement not ready within {_READY_TIMEOUT_SECONDS:g} s"
            _tick(others)
    except BaseException:  # stopping the suite meanwhile: the replacement goes too
        new.kill()
        new.wait()
        _kill_group(new.pid)
        raise
    finally:
        ready_file.unlink(missing_ok=True)
    child.process, child.started_at, child.died_at = new, time.monotonic(), None
    old.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + _stop_timeout(child.env)
    while old.poll() is None:
        if time.monotonic() > deadline:
            log.warning("old process did not stop in time; killing", extra={"child": child.name})
            old.kill()
            old.wait()
            break
        _tick(others)
    _kill_group(old.pid)
    log.info(
        "rolled",
        extra={"child": child.name, "new_pid": new.pid, "old_returncode": old.returncode},
    )
    return "restarted"


def _tick(children: Sequence[Child]) -> None:
    time.sleep(_TICK_SECONDS)
    for c in children:
        c.poll()


def _listeners(pid: int, port: int) -> int:
    """Listening TCP sockets on `port` held by `pid` and its descendants."""
    count = 0
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            count += sum(
                1
                for c in proc.net_connections(kind="tcp")
                if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port
            )
    return count


def _stop_timeout(env: Mapping[str, str]) -> float:
    total = _ROLL_STOP_MARGIN_SECONDS
    for name, default in (
        ("AIOPS_SHUTDOWN_DRAIN_SECONDS", 2.0),
        ("AIOPS_SHUTDOWN_GRACE_SECONDS", 10.0),
    ):
        try:
            total += float(env.get(name, default))
        except ValueError:
            total += default
    return total


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
