"""Automatic remediation, the kill switch, verification after real actions, metrics."""

from __future__ import annotations

import uuid
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
from prometheus_client import REGISTRY

from tests import helpers
from tests.remediation.conftest import ADMIN, OPERATOR, FakeAnomalies, Kubectl

SIG = rem.AnomalySignature(
    series="http_latency_p95_ms",
    direction=rem.DIRECTION_UP,
    kind=rem.ANOMALY_KIND_SPIKE,
    severity=common_pb2.SEVERITY_CRITICAL,
)
KEY = "http_latency_p95_ms:up:spike"
DEPLOY = rem.Target(kind=rem.TARGET_KIND_DEPLOYMENT, namespace="aiops", name="api")


def _anomaly(name: str, *, open_: bool = True, peak: float = 0.7) -> an.Anomaly:
    return an.Anomaly(
        name=name,
        series="http_latency_p95_ms",
        signature=KEY,
        severity=common_pb2.SEVERITY_WARNING,
        peak_score=peak,
        state=an.ANOMALY_STATE_OPEN if open_ else an.ANOMALY_STATE_CLOSED,
    )


@pytest.fixture
def auto(start_remediation: Any, kubectl: Kubectl, anomalies: tuple[FakeAnomalies, int]) -> Any:
    def start(**extra: str) -> Any:
        return start_remediation(
            AIOPS_REMEDIATION_EXECUTOR="kubernetes",
            AIOPS_REMEDIATION_COMMAND_PATH=f"{kubectl.bin_dir}:/usr/bin:/bin",
            AIOPS_ANOMALY_ADDR=f"127.0.0.1:{anomalies[1]}",
            AIOPS_REMEDIATION_VERIFY_WINDOW_SECONDS="0.3",
            **extra,
        )

    return start


async def test_auto_remediation_is_off_unless_enabled(auto: Any, kubectl: Kubectl) -> None:
    async with auto() as (_, stub):
        reply = await stub.AutoRemediate(
            svc.AutoRemediateRequest(anomaly="anomalies/a1", signature=SIG, target=DEPLOY),
            metadata=OPERATOR,
        )
    assert not reply.HasField("remediation")
    assert reply.skipped_reason == "AUTO_REMEDIATION_DISABLED"
    assert kubectl.calls() == []


async def test_auto_runs_only_safe_actions_and_never_twice_in_a_cooldown(
    auto: Any, kubectl: Kubectl
) -> None:
    async with auto(AIOPS_REMEDIATION_AUTO_ENABLED="true") as (_, stub):
        # After a deploy, rollback ranks first but is destructive: automation skips it.
        deploy_sig = rem.AnomalySignature()
        deploy_sig.CopyFrom(SIG)
        deploy_sig.recent_deploy = True
        ranked = await stub.Suggest(svc.SuggestRequest(signature=deploy_sig, target=DEPLOY))
        assert ranked.suggestions[0].action == "rollback"
        first = await stub.AutoRemediate(
            svc.AutoRemediateRequest(anomaly="anomalies/a1", signature=deploy_sig, target=DEPLOY),
            metadata=OPERATOR,
        )
        r = first.remediation
        assert r.action == "scale_up" and r.automatic
        assert r.state == rem.REMEDIATION_STATE_SUCCEEDED and r.requester == "auto-remediation"
        again = await stub.AutoRemediate(
            svc.AutoRemediateRequest(anomaly="anomalies/a1", signature=deploy_sig, target=DEPLOY),
            metadata=OPERATOR,
        )
        assert again.skipped_reason == "ALREADY_REMEDIATED"
        other = await stub.AutoRemediate(
            svc.AutoRemediateRequest(anomaly="anomalies/a2", signature=deploy_sig, target=DEPLOY),
            metadata=OPERATOR,
        )
        assert other.skipped_reason == "COOLDOWN_ACTIVE"
    assert len(kubectl.calls()) == 2  # get + scale, once


async def test_kill_switch_stops_every_automatic_action(auto: Any, kubectl: Kubectl) -> None:
    async with auto(AIOPS_REMEDIATION_AUTO_ENABLED="true") as (_, stub):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.SetKillSwitch(svc.SetKillSwitchRequest(engaged=True), metadata=OPERATOR)
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        await stub.SetKillSwitch(svc.SetKillSwitchRequest(engaged=True), metadata=ADMIN)
        reply = await stub.AutoRemediate(
            svc.AutoRemediateRequest(anomaly="anomalies/a1", signature=SIG, target=DEPLOY),
            metadata=OPERATOR,
        )
        assert reply.skipped_reason == "KILL_SWITCH_ENGAGED" and kubectl.calls() == []
        # People can still act.
        await stub.Remediate(
            svc.RemediateRequest(
                action="investigate_logs", target=DEPLOY, execute=True, request_id=str(uuid.uuid4())
            ),
            metadata=OPERATOR,
        )
        await stub.SetKillSwitch(svc.SetKillSwitchRequest(engaged=False), metadata=ADMIN)
        reply = await stub.AutoRemediate(
            svc.AutoRemediateRequest(anomaly="anomalies/a1", signature=SIG, target=DEPLOY),
            metadata=OPERATOR,
        )
        assert reply.remediation.action == "scale_up"


async def _stats(feedback: fb_grpc.FeedbackServiceStub) -> dict[str, tuple[int, int]]:
    reply = await feedback.GetFeedbackStats(
        fb_svc.GetFeedbackStatsRequest(target_kind=fb.TARGET_KIND_REMEDIATION)
    )
    return {
        g.action: (g.helpful_count, g.not_helpful_count) for g in reply.groups if g.signature == KEY
    }


async def _scale(stub: Any, anomaly: str) -> Any:
    reply = await stub.Remediate(
        svc.RemediateRequest(
            action="scale_up",
            target=DEPLOY,
            execute=True,
            anomaly=anomaly,
            parameters={"replicas": "6"},
            request_id=str(uuid.uuid4()),
        ),
        metadata=OPERATOR,
    )
    assert reply.remediation.outcome == rem.VERIFICATION_OUTCOME_PENDING
    assert reply.remediation.signature == KEY
    return reply.remediation


async def test_verification_records_cleared_and_feeds_it_back(
    auto: Any, anomalies: tuple[FakeAnomalies, int], feedback_stub: fb_grpc.FeedbackServiceStub
) -> None:
    fake, _ = anomalies
    fake.items["anomalies/a1"] = _anomaly("anomalies/a1")
    async with auto() as (_, stub):
        r = await _scale(stub, "anomalies/a1")
        fake.items["anomalies/a1"] = _anomaly("anomalies/a1", open_=False)

        async def verified() -> None:
            got = await stub.GetRemediation(svc.GetRemediationRequest(name=r.name))
            assert got.remediation.outcome == rem.VERIFICATION_OUTCOME_CLEARED

        await helpers.eventually(verified)
        await helpers.eventually(_expect(feedback_stub, {"scale_up": (1, 0)}))


def _expect(feedback: fb_grpc.FeedbackServiceStub, want: dict[str, tuple[int, int]]) -> Any:
    async def check() -> None:
        assert await _stats(feedback) == want

    return check


async def test_worse_outcome_undoes_a_scale_up_when_auto_is_on(
    auto: Any,
    anomalies: tuple[FakeAnomalies, int],
    kubectl: Kubectl,
    feedback_stub: fb_grpc.FeedbackServiceStub,
) -> None:
    fake, _ = anomalies
    fake.items["anomalies/a1"] = _anomaly("anomalies/a1", peak=0.7)
    async with auto(AIOPS_REMEDIATION_AUTO_ENABLED="true") as (_, stub):
        r = await _scale(stub, "anomalies/a1")
        fake.items["anomalies/a1"] = _anomaly("anomalies/a1", peak=0.95)

        async def undone() -> None:
            got = await stub.GetRemediation(svc.GetRemediationRequest(name=r.name))
            assert got.remediation.outcome == rem.VERIFICATION_OUTCOME_WORSE
            assert got.remediation.rolled_back

        await helpers.eventually(undone)
        await helpers.eventually(_expect(feedback_stub, {"scale_up": (0, 1)}))
        # The automatic verdict now counts in the ranking.
        sugg = await stub.Suggest(svc.SuggestRequest(signature=SIG, max_suggestions=10))
        scale = next(s for s in sugg.suggestions if s.action == "scale_up")
        assert scale.not_helpful_count == 1
    assert kubectl.calls()[-1] == [
        "kubectl",
        "scale",
        "deployment/api",
        "-n",
        "aiops",
        "--replicas=3",
    ]


async def test_worse_outcome_is_only_recorded_when_auto_is_off(
    auto: Any, anomalies: tuple[FakeAnomalies, int], kubectl: Kubectl
) -> None:
    fake, _ = anomalies
    fake.items["anomalies/a1"] = _anomaly("anomalies/a1", peak=0.7)
    async with auto() as (_, stub):
        r = await _scale(stub, "anomalies/a1")
        fake.items["anomalies/a1"] = _anomaly("anomalies/a1", peak=0.99)

        async def worse() -> None:
            got = await stub.GetRemediation(svc.GetRemediationRequest(name=r.name))
            assert got.remediation.outcome == rem.VERIFICATION_OUTCOME_WORSE

        await helpers.eventually(worse)
        got = await stub.GetRemediation(svc.GetRemediationRequest(name=r.name))
        assert not got.remediation.rolled_back
    assert len(kubectl.calls()) == 2


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_metrics_count_actions_suggestions_and_refusals(
    auto: Any, anomalies: tuple[FakeAnomalies, int]
) -> None:
    before = (
        _sample("aiops_remediation_actions_total", action="scale_up", result="succeeded"),
        _sample("aiops_remediation_suggestions_total"),
        _sample("aiops_remediation_refusals_total", reason="cooldown_active"),
        _sample("aiops_remediation_refusals_total", reason="unapproved"),
    )

    def scale() -> svc.RemediateRequest:
        return svc.RemediateRequest(
            action="scale_up", target=DEPLOY, execute=True, request_id=str(uuid.uuid4())
        )

    async with auto() as (_, stub):
        sugg = await stub.Suggest(svc.SuggestRequest(signature=SIG))
        await stub.Remediate(scale(), metadata=OPERATOR)
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.Remediate(scale(), metadata=OPERATOR)
        rollback = scale()
        rollback.action = "rollback"
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.Remediate(rollback, metadata=OPERATOR)
    after = (
        _sample("aiops_remediation_actions_total", action="scale_up", result="succeeded"),
        _sample("aiops_remediation_suggestions_total"),
        _sample("aiops_remediation_refusals_total", reason="cooldown_active"),
        _sample("aiops_remediation_refusals_total", reason="unapproved"),
    )
    assert [a - b for a, b in zip(after, before, strict=True)] == [1, len(sugg.suggestions), 1, 1]


async def test_remediate_the_top_suggestion_of_an_anomaly(
    auto: Any, anomalies: tuple[FakeAnomalies, int]
) -> None:
    fake, _ = anomalies
    fake.items["anomalies/a1"] = _anomaly("anomalies/a1")
    async with auto() as (_, stub):
        reply = await stub.Remediate(
            svc.RemediateRequest(
                anomaly="anomalies/a1", use_top_suggestion=True, request_id=str(uuid.uuid4())
            ),
            metadata=OPERATOR,
        )
        r = reply.remediation
        assert (r.action, r.target.name, r.signature) == ("scale_up", "aiops-gateway", KEY)
        assert r.state == rem.REMEDIATION_STATE_DRY_RUN_COMPLETE
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Remediate(
                svc.RemediateRequest(
                    anomaly="anomalies/a1",
                    use_top_suggestion=True,
                    action="rollback",
                    request_id=str(uuid.uuid4()),
                ),
                metadata=OPERATOR,
            )
        assert "action" in helpers.field_violations(info.value)
