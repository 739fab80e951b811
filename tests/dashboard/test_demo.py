"""`make demo`'s traffic generator: its incident schedule, and the loop it drives."""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp
import pytest

from services import demo
from tests.dashboard.conftest import Suite
from tests.helpers import eventually


def test_incidents_cycle_through_every_kind() -> None:
    now = [1000.0]
    gen = demo.Generator(
        "http://x", lambda role: "", incident_every=60, first_incident=20, clock=lambda: now[0]
    )
    assert gen.incident_at(1010.0) is None
    seen = []
    for k in range(4):
        found = gen.incident_at(1000.0 + 20 + 60 * k + 5)
        assert found is not None and found[1] == pytest.approx(5.0)
        seen.append(found[0].name)
    assert seen == ["latency spike", "error burst", "redis outage", "slow drift"]
    assert gen.incident_at(1000.0 + 20 + 50) is None  # the spike lasts 45 s


def test_a_latency_spike_multiplies_only_latency() -> None:
    gen = demo.Generator("http://x", lambda role: "", seed=1, first_incident=0)
    latency, errors = demo.metrics("demo_")[:2]
    spike = (demo.INCIDENTS[0], 1.0)
    assert gen.sample(latency, 0.0, spike) > 3 * latency.base
    assert gen.sample(errors, 0.0, spike) < 1.0


async def test_the_generator_makes_an_anomaly_with_suggestions_within_a_minute(
    suite: Suite, http: aiohttp.ClientSession
) -> None:
    gen = demo.Generator(
        suite.base, suite.token, prefix="gen_", first_incident=3, incident_every=600, seed=3
    )
    task = asyncio.create_task(gen.run(duration=60))
    headers = {"Authorization": f"Bearer {suite.token('viewer')}"}
    key = 'gen_latency_p95_ms{service="checkout"}'

    async def spotted() -> str:
        assert not task.done() or task.exception() is None
        url = f"{suite.base}/api/v1/aiops/anomalies?series={key}"
        async with http.get(url, headers=headers) as resp:
            body = await resp.json()
        big = [a for a in body.get("anomalies", []) if a.get("peakValue", 0) > 200]
        assert big, body
        return str(big[0]["name"])

    try:
        name = await eventually(spotted, timeout=45)
        async with http.post(
            f"{suite.base}/api/v1/aiops/suggestions", json={"anomaly": name}, headers=headers
        ) as resp:
            reply = await resp.json()
            assert resp.status == 200 and reply["suggestions"][0]["action"], reply
        assert gen.incidents_started == 1
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
