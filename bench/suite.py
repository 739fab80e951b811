"""Starts the whole suite for a benchmark (as `aiops run` does, on free ports) and reads the
CPU time its processes have used."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from types import TracebackType

import psutil

from services.kit import local_servers

ROOT = Path(__file__).resolve().parents[1]
NAMES = ("feedback", "telemetry", "anomaly", "remediation")


class Suite:
    def __init__(self, **extra_env: str) -> None:
        self.state = Path(tempfile.mkdtemp(prefix="aiops-bench-"))
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIOPS_")}
        env.update(
            AIOPS_STATE_DIR=str(self.state),
            AIOPS_GATEWAY_PORT=str(local_servers.free_port()),
            AIOPS_LOG_LEVEL="WARNING",
            PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'gen'}",
        )
        for name in NAMES:
            grpc_port, metrics_port = local_servers.free_port(), local_servers.free_port()
            env[f"AIOPS_{name.upper()}_GRPC_PORT"] = str(grpc_port)
            env[f"AIOPS_{name.upper()}_METRICS_PORT"] = str(metrics_port)
            env[f"AIOPS_{name.upper()}_ADDR"] = f"127.0.0.1:{grpc_port}"
            env[f"AIOPS_{name.upper()}_METRICS_ADDR"] = f"127.0.0.1:{metrics_port}"
        env.update(extra_env)
        self.env = env
        self.base = f"http://127.0.0.1:{env['AIOPS_GATEWAY_PORT']}"
        self.feedback_addr = env["AIOPS_FEEDBACK_ADDR"]
        self._log = open(self.state / "suite.log", "wb")  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "run", "--quiet"],
            env=env,
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def __enter__(self) -> Suite:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"suite exited; see {self.state / 'suite.log'}")
            try:
                with urllib.request.urlopen(self.base + "/health", timeout=1) as resp:
                    if set(json.load(resp)["backends"].values()) == {"SERVING"}:
                        return self
            except OSError:
                pass
            time.sleep(0.3)
        raise RuntimeError("suite not ready in 120 s")

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self._log.close()

    @staticmethod
    def scratch(name: str) -> str:
        """A fresh temporary directory for a server a scenario owns."""
        return tempfile.mkdtemp(prefix=f"aiops-{name}-")

    def token(self, role: str) -> str:
        out = subprocess.run(
            [sys.executable, "-m", "services.cli", "token", "--role", role, "--ttl", "3600"],
            env=self.env,
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout.strip()

    def processes(self, *names: str) -> list[psutil.Process]:
        """The suite's processes whose command line mentions one of `names`
        (e.g. "gateway", "services.feedback", "redis-server")."""
        found = []
        for proc in psutil.Process(self.process.pid).children(recursive=True):
            try:
                cmd = " ".join(proc.cmdline())
            except psutil.Error:
                continue
            if any(n in cmd for n in names):
                found.append(proc)
                # Gateway workers are spawned children whose command line names no module.
                found += proc.children(recursive=True)
        return found

    @staticmethod
    def cpu_seconds(procs: list[psutil.Process]) -> float:
        total = 0.0
        for proc in procs:
            try:
                t = proc.cpu_times()
                total += t.user + t.system
            except psutil.Error:
                continue
        return total
