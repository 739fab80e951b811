"""Fault scenario: `kill -9` each service in turn, then Postgres, under steady load.

While a service is down the gateway answers its routes 503 with a reason and Retry-After,
and every other route keeps answering 2xx; the supervisor restarts the service and the
gateway's channel reconnects without the gateway restarting. While anomaly is down,
telemetry buffers the points it forwards and sends them once anomaly is back, and anomaly
resumes each series from its checkpoint (a point older than the last one checkpointed is
refused as out of order instead of starting the series afresh).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from typing import Any

import aiohttp
import asyncpg
import grpc
from aiops.anomaly.v1 import anomaly_pb2, anomaly_service_pb2
from aiops.anomaly.v1 import anomaly_service_pb2_grpc as anomaly_grpc

from chaos import load, scenario
from chaos.harness import SERVICES, Harness
from chaos.report import Report

_BUFFER = "aiops_telemetry_forward_buffer_points"
_SENT = "aiops_telemetry_forward_sent_points_total"
_DROPPED = "aiops_telemetry_forward_dropped_points_total"
_NON_MONOTONIC = anomaly_pb2.SCORE_REJECT_REASON_NON_MONOTONIC_TIME
# A killed service is restarted at once, but starting anomaly (worker processes importing
# numpy, scipy and the compiled detector) takes 5-25 s on a busy 2-core machine. The limit
# only catches a service that does not come back; the summary gives the measured time.
_RESTART_LIMIT_SECONDS = 60.0


async def run(
    h: Harness,
    targets: Sequence[str] = (*SERVICES, "postgres"),
    rate: float = 200.0,
    up_seconds: float = 2.0,
    postgres_down_seconds: float = 2.0,
    name: str = "service kill -9",
) -> Report:
    report = Report(name)
    series = f"chaos.resume.{uuid.uuid4().hex[:8]}"
    outages: list[tuple[str, float]] = []
    async with h.session() as session:
        driver = load.Load(session, h.base, h.tokens, load.mixed(uuid.uuid4().hex[:8]), rate)
        async with driver:
            await driver.run_for(up_seconds)
            for target in targets:
                driver.set_stage(target)
                if target == "anomaly":
                    await _score(h, series, range(0, 20))
                    await _checkpointed(h, series)
                    sent_before = await h.metric(session, "telemetry", _SENT)
                began = time.monotonic()
                if target == "postgres":
                    await asyncio.to_thread(h.postgres.kill)
                    await driver.run_for(postgres_down_seconds)
                    await asyncio.to_thread(h.postgres.start)
                    await h.wait_serving(session, ("telemetry", "anomaly", "remediation"))
                else:
                    await asyncio.to_thread(h.kill9, target)
                    if target == "anomaly":
                        await _buffering(h, session, report)
                    await h.wait_serving(session, (target,))
                if target == "anomaly":
                    await _resumed(h, series, report)
                    await _drained(h, session, sent_before, report)
                await driver.run_for(up_seconds)
                outages.append((target, began))
            driver.set_stage("after")
            await driver.run_for(1.0)
        # Judged once the load has stopped: every request has its answer by then.
        for target, began in outages:
            limit = postgres_down_seconds + _RESTART_LIMIT_SECONDS
            report.judge_outage(target, driver.since(target), began, limit)
        report.judge_no_failure("warm-up", driver.since("warm-up"))
        report.judge_no_failure("after", driver.since("after"))
        await scenario.finish(report, h, session, driver)
    return report


async def _score(
    h: Harness, series: str, seconds: range
) -> anomaly_service_pb2.ScorePointsResponse:
    """Sends points at `seconds` (epoch seconds) of `series` straight to anomaly."""
    request = anomaly_service_pb2.ScorePointsRequest(batch_id="chaos")
    for s in seconds:
        obs = request.observations.add(series=series, value=float(s % 5))
        obs.sample_time.FromSeconds(1_700_000_000 + s)
    async with grpc.aio.insecure_channel(h.suite.env["AIOPS_ANOMALY_ADDR"]) as channel:
        # grpc-stubs types the aio stream call as the sync one; it is a StreamStreamCall.
        stub = anomaly_grpc.AnomalyServiceStub(channel)
        call: Any = stub.ScorePoints(timeout=10, wait_for_ready=True)  # type: ignore[call-arg]
        await call.write(request)
        reply: anomaly_service_pb2.ScorePointsResponse = await call.read()
        await call.done_writing()
    return reply


async def _checkpointed(h: Harness, series: str, within: float = 20.0) -> None:
    """Polls Postgres until anomaly has checkpointed `series`."""
    conn = await asyncpg.connect(h.postgres.url)
    try:
        deadline = time.monotonic() + within
        while not await conn.fetchval(
            "SELECT count(*) FROM anomaly_checkpoints WHERE series = $1", series
        ):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{series} not checkpointed within {within:g} s")
            await asyncio.sleep(0.1)
    finally:
        await conn.close()


async def _buffering(h: Harness, session: aiohttp.ClientSession, report: Report) -> None:
    """While anomaly is down, telemetry's forward buffer must hold points."""
    deadline = time.monotonic() + 10.0
    while (depth := await h.metric(session, "telemetry", _BUFFER)) <= 0:
        if time.monotonic() > deadline:
            report.problem("telemetry buffered nothing while anomaly was down")
            return
        await asyncio.sleep(0.1)
    report.notes.append(f"telemetry buffered {depth:.0f}+ points")


async def _drained(
    h: Harness, session: aiohttp.ClientSession, sent_before: float, report: Report
) -> None:
    """After anomaly is back, telemetry sends what it buffered and drops nothing."""
    deadline = time.monotonic() + 20.0
    while await h.metric(session, "telemetry", _SENT) <= sent_before or (
        await h.metric(session, "telemetry", _BUFFER) > 100
    ):
        if time.monotonic() > deadline:
            report.problem("telemetry did not resume forwarding to anomaly")
            return
        await asyncio.sleep(0.1)
    dropped = await h.metric(session, "telemetry", _DROPPED)
    if dropped:
        report.problem(f"telemetry dropped {dropped:.0f} points")
    report.notes.append("forwarding resumed, 0 dropped")


async def _resumed(h: Harness, series: str, report: Report) -> None:
    """A point older than the checkpointed last one is refused as out of order."""
    reply = await _score(h, series, range(10, 11))
    reasons = [s.reject_reason for s in reply.scores]
    if reasons != [_NON_MONOTONIC]:
        report.problem(f"anomaly did not resume {series} from its checkpoint: {reasons}")
        return
    reply = await _score(h, series, range(20, 21))
    if reply.rejected_count:
        report.problem("anomaly refused the next point after resuming")
        return
    report.notes.append("anomaly resumed from checkpoint")
