"""Thresholds that learn from feedback: the pure policy, ApplyFeedback / ListThresholds /
ResetThreshold over gRPC, the audit trail, and offsets that outlive a restart and the
feedback they came from."""

from __future__ import annotations

import grpc
import pytest
from aiops.anomaly.v1 import anomaly_service_pb2 as an_svc
from aiops.anomaly.v1 import anomaly_service_pb2_grpc as an_grpc
from aiops.feedback.v1 import feedback_pb2 as fb
from aiops.feedback.v1 import feedback_service_pb2 as fb_svc
from aiops.feedback.v1 import feedback_service_pb2_grpc as fb_grpc

from services.anomaly import domain, learning, threshold_storage
from services.feedback import server as feedback_server
from services.feedback.settings import FeedbackSettings
from services.kit import pg
from tests import helpers
from tests.anomaly.conftest import StartAnomaly
from tests.anomaly.test_scoring import batch, noise, score_all
from tests.conftest import feedback_env

POLICY = learning.Policy(
    base=0.99, low=0.5, high=0.9999, bound=2.0, step=0.25, half_life_seconds=1000.0
)
FP = learning.Verdict.FALSE_POSITIVE
OK = learning.Verdict.CONFIRMED


def lesson_of(verdict: learning.Verdict, n: int = 0) -> learning.Lesson:
    return learning.Lesson(f"feedback/{n}", verdict, True, "s", "ensemble", "", 0.0)


def test_false_positives_raise_in_shrinking_steps_that_never_pass_the_bound() -> None:
    row = None
    offsets = []
    for i in range(40):
        row = POLICY.learn(row, lesson_of(FP, i), now=0.0)
        offsets.append(row.learned_offset)
    steps = [b - a for a, b in zip([0.0, *offsets], offsets, strict=False)]
    assert all(s > 0 for s in steps) and steps == sorted(steps, reverse=True)
    assert offsets[-1] <= POLICY.bound and offsets[0] == pytest.approx(0.5)
    assert POLICY.effective(offsets[0]) == pytest.approx(1 - 0.01 * 10**-0.5)
    assert row is not None and row.false_positive_count == 40


def test_confirmations_lower_and_offsets_decay_with_half_life() -> None:
    row = POLICY.learn(None, lesson_of(OK), now=0.0)
    assert row.learned_offset == pytest.approx(-0.5) and row.confirmed_count == 1
    assert POLICY.effective(row.learned_offset) < 0.99
    assert POLICY.decayed(row, 1000.0) == pytest.approx(-0.25)
    assert POLICY.decayed(row, 1e9) == pytest.approx(0.0, abs=1e-9)
    assert POLICY.effective(10.0) == 0.9999 and POLICY.effective(-100.0) == 0.5


def feedback(
    name: str, verdict: int, series: str = "s", kind: int = fb.TARGET_KIND_ANOMALY
) -> fb.Feedback:
    item = fb.Feedback(
        name=name,
        target=fb.Target(kind=kind, id="anomalies/01ARZ3NDEKTSV4RRFFQ69G5FAV"),
        verdict=verdict,
        series=series,
    )
    item.create_time.GetCurrentTime()
    return item


async def test_apply_feedback_moves_thresholds_once_and_reset_undoes_it(
    anomaly_stub: an_grpc.AnomalyServiceStub, postgres_url: str, pg_schema: str
) -> None:
    items = [
        feedback("feedback/a", fb.VERDICT_FALSE_POSITIVE),
        feedback("feedback/b", fb.VERDICT_FALSE_POSITIVE),
        feedback("feedback/c", fb.VERDICT_CONFIRMED, series="other"),
        feedback("feedback/d", fb.VERDICT_HELPFUL, kind=fb.TARGET_KIND_REMEDIATION),
        feedback("feedback/e", fb.VERDICT_FALSE_POSITIVE, series=""),  # unknown anomaly
    ]
    got = await anomaly_stub.ApplyFeedback(an_svc.ApplyFeedbackRequest(feedback=items))
    assert (got.applied_count, got.duplicate_count, got.ignored_count) == (3, 0, 2)
    by = {t.series: t for t in got.thresholds}
    assert by["s"].learned_offset > 0.5 and by["s"].false_positive_count == 2
    assert by["s"].effective_threshold > by["s"].base_threshold
    # A confirmation lowers the offset; by default the threshold never drops below the base.
    assert by["other"].learned_offset < 0
    assert by["other"].effective_threshold == pytest.approx(0.99)
    again = await anomaly_stub.ApplyFeedback(an_svc.ApplyFeedbackRequest(feedback=items[:2]))
    assert (again.applied_count, again.duplicate_count) == (0, 2)

    (scored,) = await score_all(anomaly_stub, [batch("s", noise(50, 1))])
    assert scored.scores[0].threshold == pytest.approx(by["s"].effective_threshold)

    listed = await anomaly_stub.ListThresholds(
        an_svc.ListThresholdsRequest(filter=an_svc.ThresholdFilter(adjusted_only=True))
    )
    assert [t.series for t in listed.thresholds] == ["other", "s"]
    reset = await anomaly_stub.ResetThreshold(
        an_svc.ResetThresholdRequest(name=by["s"].name, reason="too noisy a lesson"),
        metadata=(("x-aiops-subject", "alice"),),
    )
    assert reset.threshold.learned_offset == 0.0
    assert reset.threshold.effective_threshold == pytest.approx(0.99)
    async with pg.pool(postgres_url, schema=pg_schema) as db:
        trail = await threshold_storage.PostgresThresholdStore(db).audit("s")
    assert [c.cause for c in trail] == ["false_positive", "false_positive", "reset"]
    assert trail[1].old_offset == trail[0].new_offset
    assert trail[2].old_offset == pytest.approx(trail[1].new_offset) and trail[2].actor == "alice"
    assert trail[2].reason == "too noisy a lesson"


@pytest.mark.parametrize(
    ("request_", "code", "reason"),
    [
        (an_svc.ApplyFeedbackRequest(), grpc.StatusCode.INVALID_ARGUMENT, "FEEDBACK_BATCH_INVALID"),
        (
            an_svc.ApplyFeedbackRequest(feedback=[fb.Feedback()]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "FEEDBACK_NAME_MISSING",
        ),
    ],
)
async def test_apply_feedback_rejects_bad_batches(
    anomaly_stub: an_grpc.AnomalyServiceStub,
    request_: an_svc.ApplyFeedbackRequest,
    code: grpc.StatusCode,
    reason: str,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await anomaly_stub.ApplyFeedback(request_)
    assert err.value.code() == code and helpers.error_info(err.value).reason == reason


async def test_reset_unknown_threshold_is_not_found(
    anomaly_stub: an_grpc.AnomalyServiceStub,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await anomaly_stub.ResetThreshold(an_svc.ResetThresholdRequest(name="thresholds/nope"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_learned_offsets_survive_restart_and_feedback_expiry(
    start_anomaly: StartAnomaly, redis_url: str, redis_prefix: str
) -> None:
    fb_settings = FeedbackSettings.from_env(
        feedback_env(
            redis_url,
            redis_prefix,
            AIOPS_FEEDBACK_TTL_SECONDS="1",
            AIOPS_FEEDBACK_SWEEP_INTERVAL_SECONDS="0.1",
        )
    )
    async with feedback_server.running(fb_settings) as fb_running:
        env = {
            "AIOPS_FEEDBACK_ADDR": f"127.0.0.1:{fb_running.port}",
            "AIOPS_ANOMALY_FEEDBACK_POLL_SECONDS": "0.1",
        }
        async with (
            grpc.aio.insecure_channel(f"127.0.0.1:{fb_running.port}") as fch,
        ):
            feedback_stub = fb_grpc.FeedbackServiceStub(fch)
            for verdict in (fb.VERDICT_FALSE_POSITIVE, fb.VERDICT_FALSE_POSITIVE):
                await feedback_stub.SubmitFeedback(
                    fb_svc.SubmitFeedbackRequest(
                        feedback=fb.Feedback(
                            target=fb.Target(kind=fb.TARGET_KIND_ANOMALY, id="x1"),
                            verdict=verdict,
                            series="noisy",
                            detector="ensemble",
                        )
                    )
                )
            async with (
                start_anomaly(**env) as running,
                grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as ch,
            ):
                stub = an_grpc.AnomalyServiceStub(ch)

                async def learned() -> float:
                    got = await stub.ListThresholds(an_svc.ListThresholdsRequest())
                    assert [t.false_positive_count for t in got.thresholds] == [2]
                    return got.thresholds[0].learned_offset

                offset = await helpers.eventually(learned)
                assert offset > 0

            async def expired() -> None:
                got = await feedback_stub.ListFeedback(fb_svc.ListFeedbackRequest())
                assert not got.feedback

            await helpers.eventually(expired)
            async with (
                start_anomaly(**env) as running,
                grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as ch,
            ):
                stub = an_grpc.AnomalyServiceStub(ch)
                got = await stub.ListThresholds(an_svc.ListThresholdsRequest())
                assert [t.series for t in got.thresholds] == ["noisy"]
                assert got.thresholds[0].learned_offset == pytest.approx(offset, rel=1e-3)
                (scored,) = await score_all(stub, [batch("noisy", noise(20, 2))])
                assert scored.scores[0].threshold == pytest.approx(
                    got.thresholds[0].effective_threshold
                )


async def test_feedback_moves_only_the_threshold_of_that_kind_of_alarm(
    anomaly_stub: an_grpc.AnomalyServiceStub,
) -> None:
    item = feedback("feedback/k1", fb.VERDICT_FALSE_POSITIVE, series="k")
    item.signature = "latency:up:rare_value+spike"
    got = await anomaly_stub.ApplyFeedback(an_svc.ApplyFeedbackRequest(feedback=[item]))
    (t,) = got.thresholds
    assert (t.series, t.detector, t.signature) == ("k", "ensemble", "up:rare_value+spike")
    # Points of other kinds on the same series keep the base threshold.
    (scored,) = await score_all(anomaly_stub, [batch("k", noise(40, 3))])
    assert {round(s.threshold, 12) for s in scored.scores} == {round(t.base_threshold, 12)}


def test_alarm_kind_of_a_signature() -> None:
    assert learning.alarm_kind("cpu:up:spike") == "up:spike"
    assert learning.alarm_kind("a:b:down:score") == "down:score"
    assert learning.alarm_kind("") == ""


@pytest.mark.parametrize(
    ("value", "before", "signals", "depth", "kind"),
    [
        (2.0, 1.0, ("rare_value", "spike"), 0, "up:rare_value+spike"),
        (0.0, 1.0, ("rare_value", "spike", "variance_change"), 2, "down:rare_value+spike"),
        (1.0, 1.0, (), 0, "up:score"),
    ],
)
def test_alarm_kind_names_direction_and_signals(
    value: float, before: float, signals: tuple[str, ...], depth: int, kind: str
) -> None:
    assert domain.alarm_kind(value, before, signals, depth) == kind
