"""The whole suite started like `make run` (`aiops run`), a gateway with the dashboard on top
of it, and real headless Chromium (Debian package `chromium`) driven by Playwright."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from playwright.async_api import Browser, async_playwright

from gateway import app as gateway_app
from gateway import dashboard as gateway_dashboard
from gateway.settings import GatewaySettings
from services import cli
from services.kit import local_servers

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
NAMES = ("feedback", "telemetry", "anomaly", "remediation")
DASHBOARD_ENV = {
    "AIOPS_GATEWAY_DEV_SIGNIN": "true",
    "AIOPS_GATEWAY_EVENTS_INTERVAL_SECONDS": "0.5",
}


@dataclass
class Suite:
    env: dict[str, str]
    base: str

    def token(self, role: str, subject: str = "dashboard-test") -> str:
        return cli.mint(self.env, role=role, subject=subject, ttl=900)


@dataclass
class Dashboard:
    url: str
    app: web.Application


def _get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, None


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Suite]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIOPS_")}
    state = tmp_path_factory.mktemp("state")
    env.update(DASHBOARD_ENV)
    env["AIOPS_STATE_DIR"] = str(state)
    env["AIOPS_GATEWAY_PORT"] = str(local_servers.free_port())
    env["AIOPS_SHUTDOWN_DRAIN_SECONDS"] = "0.2"
    env["AIOPS_GATEWAY_WORKERS"] = "1"
    env["AIOPS_ANOMALY_DRIFT_INTERVAL_SECONDS"] = "2"
    env["AIOPS_ANOMALY_DRIFT_WINDOW"] = "30"
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{ROOT / 'gen'}"
    for name in NAMES:
        grpc_port, metrics_port = local_servers.free_port(), local_servers.free_port()
        env[f"AIOPS_{name.upper()}_GRPC_PORT"] = str(grpc_port)
        env[f"AIOPS_{name.upper()}_METRICS_PORT"] = str(metrics_port)
        env[f"AIOPS_{name.upper()}_ADDR"] = f"127.0.0.1:{grpc_port}"
        env[f"AIOPS_{name.upper()}_METRICS_ADDR"] = f"127.0.0.1:{metrics_port}"
    base = f"http://127.0.0.1:{env['AIOPS_GATEWAY_PORT']}"
    with open(state / "suite.log", "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "run"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        try:
            deadline = time.monotonic() + 90
            while True:
                assert process.poll() is None, f"aiops run exited early; see {state}/suite.log"
                try:
                    status, body = _get(base + "/health")
                    if status == 200 and set(body["backends"].values()) == {"SERVING"}:
                        break
                except (OSError, KeyError, TypeError, ValueError):
                    pass
                assert time.monotonic() < deadline, "suite not ready in 90 s"
                time.sleep(0.3)
            yield Suite(env, base)
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


@pytest.fixture
async def dashboard(suite: Suite, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Dashboard]:
    """A gateway in this process, talking to the suite's backends, with the dashboard
    registered (whether or not `create_app` already does it)."""
    for key, value in DASHBOARD_ENV.items():
        monkeypatch.setenv(key, value)
    settings = GatewaySettings.from_env({**suite.env, "AIOPS_GATEWAY_PORT": "0"})
    app = gateway_app.create_app(settings)
    gateway_dashboard.register(app, gateway_dashboard.DashboardSettings.from_env(DASHBOARD_ENV))
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1, **gateway_app.HANDLER_ARGS)
    await runner.setup()
    port = local_servers.free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield Dashboard(f"http://127.0.0.1:{port}", app)
    finally:
        await runner.cleanup()


@pytest.fixture
def dashboard_url(dashboard: Dashboard) -> str:
    return dashboard.url


@pytest.fixture(scope="session")
def chromium() -> str:
    assert Path(CHROMIUM).exists(), "needs Chromium: apt-get install chromium (.ci/run does)"
    return CHROMIUM


@pytest.fixture
async def browser(chromium: str) -> AsyncIterator[Browser]:
    async with async_playwright() as pw:
        launched = await pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session
