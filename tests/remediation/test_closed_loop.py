"""The closed loop with the real anomaly and feedback services: an anomaly opens from pushed
points, Suggest ranks actions for it, "not helpful" feedback pushes the first one down."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from typing import Any

import grpc
from aiops.anomaly.v1 import anomaly_pb2 as an
from aiops.anomaly.v1 import anomaly_service_pb2 as an_svc
from aiops.anomaly.v1 import anomaly_service_pb2_grpc as an_grpc
from aiops.feedback.v1 import feedback_pb2 as fb
from aiops.feedback.v1 import feedback_service_pb2 as fb_svc
from aiops.feedback.v1 import feedback_service_pb2_grpc as fb_grpc
from aiops.remediation.v1 import remediation_service_pb2 as svc
from google.protobuf import timestamp_pb2

from services.anomaly import server as anomaly_server
from services.anomaly.settings import AnomalySettings
from services.kit import serve


async def _push(stub: an_grpc.AnomalyServiceStub, values: list[float]) -> list[str]:
    rng_start = 1_700_000_000

    async def requests() -> AsyncIterator[an_svc.ScorePointsRequest]:
        for i in range(0, len(values), 50):
            obs = []
            for j, v in enumerate(values[i : i + 50]):
                ts = timestamp_pb2.Timestamp(seconds=rng_start + (i + j) * 10)
                obs.append(an.Observation(series="http_latency_p95_ms", sample_time=ts, value=v))
            yield an_svc.ScorePointsRequest(observations=obs, batch_id=f"b{i}")

    opened: list[str] = []
    async for reply in stub.ScorePoints(requests()):
        opened += list(reply.opened_anomalies)
    return opened


async def test_feedback_on_an_anomaly_suggestion_reranks_it(
    start_remediation: Any,
    feedback_running: serve.Running,
    feedback_stub: fb_grpc.FeedbackServiceStub,
    postgres_url: str,
    pg_schema: str,
) -> None:
    env = {
        "AIOPS_DATABASE_URL": postgres_url,
        "AIOPS_ANOMALY_DATABASE_SCHEMA": pg_schema,
        "AIOPS_FEEDBACK_ADDR": f"127.0.0.1:{feedback_running.port}",
        "AIOPS_REMEDIATION_ADDR": "127.0.0.1:9",
        "AIOPS_ANOMALY_GRPC_PORT": "0",
        "AIOPS_ANOMALY_METRICS_PORT": "0",
        "AIOPS_BIND_HOST": "127.0.0.1",
        "AIOPS_SHUTDOWN_GRACE_SECONDS": "0.2",
    }
    rng = random.Random(7)
    values = [100 + rng.gauss(0, 2) for _ in range(300)] + [400.0] * 5
    async with anomaly_server.running(AnomalySettings.from_env(env)) as an_running:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{an_running.port}")
        try:
            opened = await _push(an_grpc.AnomalyServiceStub(channel), values)
        finally:
            await channel.close()
        assert opened, "the spike should open an anomaly"
        async with start_remediation(AIOPS_ANOMALY_ADDR=f"127.0.0.1:{an_running.port}") as (
            _,
            stub,
        ):
            # Warm-up noise may open an early anomaly; the spike opens the last one.
            name = opened[-1]
            first = await stub.Suggest(svc.SuggestRequest(anomaly=name))
            assert first.suggestions, first
            top = first.suggestions[0].action
            key = first.signature_key
            assert key.startswith("http_latency_p95_ms:"), key
            for i in range(4):
                await feedback_stub.SubmitFeedback(
                    fb_svc.SubmitFeedbackRequest(
                        feedback=fb.Feedback(
                            target=fb.Target(kind=fb.TARGET_KIND_SUGGESTION, id=name),
                            verdict=fb.VERDICT_NOT_HELPFUL,
                            action=top,
                            signature=key,
                            comment=f"vote {i}",
                        )
                    )
                )
            after = await stub.Suggest(svc.SuggestRequest(anomaly=name))
            ranks = {s.action: s.rank for s in after.suggestions}
            assert ranks[top] > 1
            assert after.suggestions[0].action != top
