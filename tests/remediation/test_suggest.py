"""Suggest: ranked actions whose order follows feedback from the real feedback service."""

from __future__ import annotations

import contextlib
from typing import Any

import grpc
import pytest
from aiops.anomaly.v1 import anomaly_pb2 as an
from aiops.common.v1 import common_pb2
from aiops.feedback.v1 import feedback_pb2 as fb
from aiops.feedback.v1 import feedback_service_pb2 as fb_svc
from aiops.feedback.v1 import feedback_service_pb2_grpc as fb_grpc
from aiops.remediation.v1 import remediation_pb2 as rem
from aiops.remediation.v1 import remediation_service_pb2 as svc

from services.feedback import server as feedback_server
from services.feedback.settings import FeedbackSettings
from services.remediation import playbook as pb
from tests import helpers
from tests.conftest import feedback_env
from tests.remediation.conftest import ADMIN, OPERATOR, FakeAnomalies

SIG = rem.AnomalySignature(
    series='http_latency_p95_ms{service="gateway"}',
    direction=rem.DIRECTION_UP,
    kind=rem.ANOMALY_KIND_SPIKE,
    severity=common_pb2.SEVERITY_CRITICAL,
)
KEY = "http_latency_p95_ms:up:spike"


async def _ranking(stub: Any) -> list[str]:
    reply = await stub.Suggest(svc.SuggestRequest(signature=SIG, max_suggestions=5))
    assert reply.signature_key == KEY
    return [s.action for s in reply.suggestions]


async def _vote(feedback: fb_grpc.FeedbackServiceStub, action: str, helpful: bool) -> None:
    await feedback.SubmitFeedback(
        fb_svc.SubmitFeedbackRequest(
            feedback=fb.Feedback(
                target=fb.Target(kind=fb.TARGET_KIND_SUGGESTION, id=f"{KEY}/{action}"),
                verdict=fb.VERDICT_HELPFUL if helpful else fb.VERDICT_NOT_HELPFUL,
                action=action,
                signature=KEY,
            )
        )
    )


async def test_suggest_ranks_by_prior_with_rationale_commands_and_confidence(
    remediation: Any,
) -> None:
    reply = await remediation.Suggest(svc.SuggestRequest(signature=SIG))
    top = reply.suggestions[0]
    assert (top.action, top.rank) == ("scale_up", 1)
    assert top.confidence == pytest.approx(top.prior)
    assert "latency-or-errors-up" in top.rationale
    assert top.commands[-1] == "kubectl scale rollout/aiops-gateway -n aiops --replicas=4"
    assert top.parameters["replicas"] == "4"
    assert [s.rank for s in reply.suggestions] == list(range(1, len(reply.suggestions) + 1))
    confidences = [s.confidence for s in reply.suggestions]
    assert confidences == sorted(confidences, reverse=True)


async def test_not_helpful_feedback_pushes_an_action_down_and_helpful_pulls_it_up(
    remediation: Any, feedback_stub: fb_grpc.FeedbackServiceStub
) -> None:
    assert (await _ranking(remediation))[0] == "scale_up"
    for _ in range(4):
        await _vote(feedback_stub, "scale_up", helpful=False)
    ranking = await _ranking(remediation)
    assert ranking[0] != "scale_up"
    reply = await remediation.Suggest(svc.SuggestRequest(signature=SIG, max_suggestions=5))
    scale = next(s for s in reply.suggestions if s.action == "scale_up")
    assert scale.not_helpful_count == 4 and scale.posterior_mean < scale.prior
    for _ in range(8):
        await _vote(feedback_stub, "investigate_logs", helpful=True)
    assert (await _ranking(remediation))[0] == "investigate_logs"


async def test_feedback_effect_is_bounded(
    remediation: Any, feedback_stub: fb_grpc.FeedbackServiceStub
) -> None:
    batch = fb_svc.BatchSubmitFeedbackRequest(
        requests=[
            fb_svc.SubmitFeedbackRequest(
                feedback=fb.Feedback(
                    target=fb.Target(kind=fb.TARGET_KIND_SUGGESTION, id=f"s{i}"),
                    verdict=fb.VERDICT_NOT_HELPFUL,
                    action="scale_up",
                    signature=KEY,
                )
            )
            for i in range(200)
        ]
    )
    await feedback_stub.BatchSubmitFeedback(batch)
    reply = await remediation.Suggest(svc.SuggestRequest(signature=SIG, max_suggestions=10))
    scale = next(s for s in reply.suggestions if s.action == "scale_up")
    # prior 0.6, strength 4, at most 20 verdicts count: the floor is 0.6*4/24 = 0.1.
    assert scale.not_helpful_count == 200
    assert scale.posterior_mean == pytest.approx(0.1)


async def test_feedback_effect_decays_as_feedback_expires(
    start_remediation: Any, redis_url: str, redis_prefix: str
) -> None:
    env = feedback_env(redis_url, f"{redis_prefix}short:", AIOPS_FEEDBACK_TTL_SECONDS="1.5")
    async with contextlib.AsyncExitStack() as stack:
        fb_running = await stack.enter_async_context(
            feedback_server.running(FeedbackSettings.from_env(env))
        )
        channel = await stack.enter_async_context(
            grpc.aio.insecure_channel(f"127.0.0.1:{fb_running.port}")
        )
        _, stub = await stack.enter_async_context(
            start_remediation(AIOPS_FEEDBACK_ADDR=f"127.0.0.1:{fb_running.port}")
        )
        feedback = fb_grpc.FeedbackServiceStub(channel)
        for _ in range(4):
            await _vote(feedback, "scale_up", helpful=False)
        assert (await _ranking(stub))[0] != "scale_up"

        async def recovered() -> None:
            assert (await _ranking(stub))[0] == "scale_up"

        await helpers.eventually(recovered, timeout=10)


async def test_suggest_by_anomaly_name_uses_the_anomaly_signature(
    start_remediation: Any, anomalies: tuple[FakeAnomalies, int]
) -> None:
    fake, port = anomalies
    fake.items["anomalies/a1"] = an.Anomaly(
        name="anomalies/a1",
        series="redis_connection_failures",
        signature="redis_connection_failures:up:level_shift",
        severity=common_pb2.SEVERITY_WARNING,
        state=an.ANOMALY_STATE_OPEN,
    )
    async with start_remediation(AIOPS_ANOMALY_ADDR=f"127.0.0.1:{port}") as (_, stub):
        reply = await stub.Suggest(svc.SuggestRequest(anomaly="anomalies/a1"))
        assert reply.signature_key == "redis_connection_failures:up:level_shift"
        assert reply.suggestions[0].action == "investigate_redis"
        assert reply.suggestions[0].commands == ["redis-cli -h redis ping"]
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Suggest(svc.SuggestRequest(anomaly="anomalies/missing"))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_suggest_rejects_bad_input_naming_the_field(remediation: Any) -> None:
    cases = [
        (svc.SuggestRequest(), "anomaly"),
        (svc.SuggestRequest(anomaly="not-a-name"), "anomaly"),
        (svc.SuggestRequest(signature=rem.AnomalySignature(series="x")), "signature.direction"),
        (svc.SuggestRequest(signature=SIG, max_suggestions=21), "max_suggestions"),
    ]
    for request, field in cases:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await remediation.Suggest(request)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in helpers.field_violations(info.value)


async def test_suggest_degrades_to_priors_when_feedback_is_down(
    start_remediation: Any,
) -> None:
    async with start_remediation(AIOPS_FEEDBACK_ADDR="127.0.0.1:9") as (_, stub):
        reply = await stub.Suggest(svc.SuggestRequest(signature=SIG))
        assert reply.suggestions[0].action == "scale_up"


async def test_playbook_reload_keeps_the_old_one_when_the_new_is_bad(
    start_remediation: Any, tmp_path: Any
) -> None:
    path = tmp_path / "book.json"
    path.write_text(pb.DEFAULT_PATH.read_text())
    async with start_remediation(AIOPS_REMEDIATION_PLAYBOOK=str(path)) as (_, stub):
        ok = await stub.ReloadPlaybook(svc.ReloadPlaybookRequest(), metadata=ADMIN)
        assert ok.action_count == 9
        path.write_text(
            path.read_text().replace('"blast_radius": "workload"', '"blast_radius": 7', 1)
        )
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.ReloadPlaybook(svc.ReloadPlaybookRequest(), metadata=ADMIN)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert helpers.error_info(info.value).reason == "PLAYBOOK_INVALID"
        assert any("actions.rollback.blast_radius" in d for d in _descriptions(info.value))
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await stub.ReloadPlaybook(svc.ReloadPlaybookRequest(), metadata=OPERATOR)
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert (await stub.Suggest(svc.SuggestRequest(signature=SIG))).suggestions


async def test_a_bad_playbook_stops_the_service_before_it_serves(
    start_remediation: Any, tmp_path: Any
) -> None:
    path = tmp_path / "book.json"
    path.write_text(
        pb.DEFAULT_PATH.read_text().replace('"cooldown_seconds": 600', '"cooldown_seconds": "x"')
    )
    with pytest.raises(pb.PlaybookError, match=r"actions\.scale_up\.cooldown_seconds"):
        async with start_remediation(AIOPS_REMEDIATION_PLAYBOOK=str(path)):
            pass


def _descriptions(err: grpc.aio.AioRpcError) -> list[str]:
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    out: list[str] = []
    for d in status.details if status else []:
        if d.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            d.Unpack(bad)
            out += [v.description for v in bad.field_violations]
    return out
