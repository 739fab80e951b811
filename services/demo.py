"""`make demo`: the suite plus a traffic generator, so the whole loop shows on `/aiops`.

`python -m services.demo` starts the suite the way `make run` does (`aiops run`, with the
dashboard's dev sign-in on), then drives the gateway: it pushes a few service metrics every
second through the agent route `POST /api/v1/aiops/points`, reads the API like a browser
would, and injects an incident every few minutes, cycling through a latency spike, an error
burst, a Redis outage and a slow drift. The first incident starts `--first-incident`
seconds in (20 by default), after a backfilled baseline, so anomalies, suggestions and
drift are on the page within a minute.

The incidents are simulated in the pushed metrics; nothing real is broken (a real Redis
outage is what `make chaos` is for). With `--url` it drives a suite that is already running
and mints its tokens from the local keyring.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from services.kit import logging as kit_logging
from services.kit import settings as kit_settings

log = logging.getLogger(__name__)

POINTS = "/api/v1/aiops/points"
LABELS = {"service": "checkout"}
BACKFILL_SECONDS = 180
BACKFILL_SLICE = 30
# Tuned so that the suite's loop is quick to see locally; the user's own variables win.
SUITE_DEFAULTS = {
    "AIOPS_GATEWAY_DEV_SIGNIN": "true",
    "AIOPS_TELEMETRY_COLLECT_INTERVAL_SECONDS": "5",
    "AIOPS_ANOMALY_DRIFT_INTERVAL_SECONDS": "10",
    "AIOPS_ANOMALY_DRIFT_WINDOW": "60",
}


@dataclass(frozen=True, slots=True)
class Metric:
    """One pushed series: its name, unit and steady-state value and noise."""

    role: str
    name: str
    unit: str
    base: float
    noise: float
    floor: float = 0.0


@dataclass(frozen=True, slots=True)
class Incident:
    """A named disturbance: `effect(role, seconds_in, value) -> value` for `seconds`."""

    name: str
    seconds: float
    effect: Callable[[str, float, float], float]


def _latency_spike(role: str, t: float, value: float) -> float:
    return value * 4.0 if role == "latency" else value


def _error_burst(role: str, t: float, value: float) -> float:
    return value + 4.0 if role == "errors" else value


def _redis_outage(role: str, t: float, value: float) -> float:
    if role == "redis_failures":
        return value + 12.0
    if role == "redis_latency":
        return 250.0
    if role == "latency":
        return value * 1.6
    return value


def _slow_drift(role: str, t: float, value: float) -> float:
    return value + 0.35 * t if role == "queue" else value


INCIDENTS = (
    Incident("latency spike", 45.0, _latency_spike),
    Incident("error burst", 40.0, _error_burst),
    Incident("redis outage", 45.0, _redis_outage),
    Incident("slow drift", 180.0, _slow_drift),
)


def metrics(prefix: str) -> tuple[Metric, ...]:
    # Redis series start with `redis` so that the playbook's redis rule matches them.
    return (
        Metric("latency", f"{prefix}latency_p95_ms", "ms", 80.0, 4.0),
        Metric("errors", f"{prefix}error_rate_percent", "%", 0.2, 0.05),
        Metric("redis_latency", f"redis_{prefix}latency_ms", "ms", 1.2, 0.2),
        Metric("redis_failures", f"redis_{prefix}connection_failures", "1", 2.0, 0.3),
        Metric("queue", f"{prefix}queue_depth", "1", 40.0, 3.0),
    )


def _rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


class Generator:
    """Pushes the demo series and injects incidents on a schedule."""

    def __init__(
        self,
        base_url: str,
        token: Callable[[str], str],
        *,
        prefix: str = "demo_",
        incident_every: float = 180.0,
        first_incident: float = 20.0,
        seed: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._base = base_url.rstrip("/")
        self._token = token
        self._metrics = metrics(prefix)
        self._every = incident_every
        self._first = first_incident
        self._rng = random.Random(seed)
        self._clock = clock
        self._start = clock()
        self.incidents_started = 0

    def incident_at(self, now: float) -> tuple[Incident, float] | None:
        """The incident under way at `now`, with how long it has been running."""
        elapsed = now - self._start - self._first
        if elapsed < 0:
            return None
        index, into = divmod(elapsed, self._every)
        incident = INCIDENTS[int(index) % len(INCIDENTS)]
        return (incident, into) if into < incident.seconds else None

    def sample(self, metric: Metric, at: float, incident: tuple[Incident, float] | None) -> float:
        # A gentle daily-ish wave plus noise, so the series look alive between incidents.
        value = metric.base * (1 + 0.02 * math.sin(at / 60.0)) + self._rng.gauss(0, metric.noise)
        if incident is not None:
            value = incident[0].effect(metric.role, incident[1], value)
        return max(metric.floor, value)

    def body(self, times: Sequence[float], live: bool) -> dict[str, Any]:
        samples = []
        for at in times:
            incident = self.incident_at(at) if live else None
            for metric in self._metrics:
                samples.append(
                    {
                        "metric": metric.name,
                        "labels": LABELS,
                        "sampleTime": _rfc3339(at),
                        "value": self.sample(metric, at, incident),
                        "unit": metric.unit,
                        "kind": "SERIES_KIND_GAUGE",
                    }
                )
        return {"samples": samples}

    async def _post(self, http: aiohttp.ClientSession, body: Mapping[str, Any]) -> None:
        headers = {"Authorization": f"Bearer {self._token('agent')}"}
        async with http.post(self._base + POINTS, json=body, headers=headers) as resp:
            if resp.status != 200:
                log.warning(
                    "demo points refused",
                    extra={"status": resp.status, "body": (await resp.text())[:300]},
                )

    async def _browse(self, http: aiohttp.ClientSession) -> None:
        """A little read traffic, so the gateway's own critical metrics move too."""
        headers = {"Authorization": f"Bearer {self._token('viewer')}"}
        for path in ("/api/v1/aiops/anomalies?pageSize=5", "/api/v1/aiops/feedback?pageSize=5"):
            async with http.get(self._base + path, headers=headers) as resp:
                await resp.read()

    async def run(self, duration: float | None = None) -> None:
        """Backfills a baseline, then pushes one point per series a second until cancelled."""
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            now = self._clock()
            # In slices: the gateway caps a request body at 64 KiB by default.
            for first in range(0, BACKFILL_SECONDS, BACKFILL_SLICE):
                ticks = range(first, min(first + BACKFILL_SLICE, BACKFILL_SECONDS))
                await self._post(
                    http, self.body([now - BACKFILL_SECONDS + i for i in ticks], False)
                )
            log.info(
                "demo traffic started",
                extra={"first_incident_seconds": self._first, "every_seconds": self._every},
            )
            current: str | None = None
            while duration is None or self._clock() - self._start < duration:
                tick = self._clock()
                incident = self.incident_at(tick)
                name = incident[0].name if incident else None
                if name != current:
                    if name is not None:
                        self.incidents_started += 1
                        log.info("demo incident started", extra={"incident": name})
                    else:
                        log.info("demo incident over", extra={"incident": current})
                    current = name
                try:
                    await self._post(http, self.body([tick], True))
                    await self._browse(http)
                except (aiohttp.ClientError, TimeoutError) as exc:
                    log.warning("demo request failed", extra={"error": type(exc).__name__})
                await asyncio.sleep(max(0.0, 1.0 - (self._clock() - tick)))


class TokenCache:
    """Tokens minted from the local keyring, renewed well before they expire."""

    def __init__(self, env: Mapping[str, str], ttl: float = 900.0) -> None:
        self._env = env
        self._ttl = ttl
        self._tokens: dict[str, tuple[float, str]] = {}

    def __call__(self, role: str) -> str:
        from services import cli

        at, token = self._tokens.get(role, (0.0, ""))
        if time.monotonic() - at > self._ttl / 2:
            token = cli.mint(self._env, role=role, subject=f"demo-{role}", ttl=self._ttl)
            self._tokens[role] = (time.monotonic(), token)
        return token


def _wait_healthy(base: str, process: subprocess.Popen[bytes], timeout: float) -> None:
    import json
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit("demo: the suite exited while starting; see its log")
        try:
            with urllib.request.urlopen(base + "/health", timeout=2) as resp:
                body = json.loads(resp.read())
                if set(body.get("backends", {}).values()) == {"SERVING"}:
                    return
        except (urllib.error.URLError, OSError, ValueError):
            pass
        time.sleep(0.5)
    raise SystemExit("demo: the suite did not become healthy in time; see its log")


async def _drive(generator: Generator, stop: asyncio.Event) -> None:
    task = asyncio.create_task(generator.run())
    await stop.wait()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.demo", description=__doc__)
    parser.add_argument("--url", help="drive a suite already running at this gateway URL")
    parser.add_argument("--incident-every", type=float, default=180.0, help="seconds")
    parser.add_argument("--first-incident", type=float, default=20.0, help="seconds")
    args = parser.parse_args(argv)
    env = dict(kit_settings.environ())
    for key, value in SUITE_DEFAULTS.items():
        env.setdefault(key, value)
    kit_logging.configure("demo", env.get("AIOPS_LOG_LEVEL", "INFO"))
    process: subprocess.Popen[bytes] | None = None
    state = kit_settings.default_state_dir(env)
    state.mkdir(parents=True, exist_ok=True)
    port = env.get("AIOPS_GATEWAY_PORT", "3000")
    base = args.url or f"http://127.0.0.1:{port}"
    suite_log: Path = state / "demo-suite.log"
    with open(suite_log, "ab") as out:
        if not args.url:
            process = subprocess.Popen(
                [sys.executable, "-m", "services.cli", "run"], env=env, stdout=out, stderr=out
            )
        try:
            if process is not None:
                _wait_healthy(base, process, timeout=120)
            sys.stdout.write(
                f"\nAIOps demo running. Open http://localhost:{port}/aiops and choose "
                f'"Dev sign-in as operator".\nIncidents every {args.incident_every:.0f} s, '
                f"the first in {args.first_incident:.0f} s. Suite log: {suite_log}\n"
                "Ctrl-C stops the demo and the suite.\n\n"
            )
            sys.stdout.flush()
            generator = Generator(
                base,
                TokenCache(env),
                incident_every=args.incident_every,
                first_incident=args.first_incident,
            )
            asyncio.run(_run_until_signal(generator))
        finally:
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
    return 0


async def _run_until_signal(generator: Generator) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await _drive(generator, stop)


if __name__ == "__main__":
    raise SystemExit(main())
