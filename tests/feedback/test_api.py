"""The feedback service over a real gRPC socket, entered through `server.running`."""

from __future__ import annotations

import grpc
import pytest
from aiops.common.v1 import common_pb2
from aiops.feedback.v1 import feedback_pb2 as fb
from aiops.feedback.v1 import feedback_service_pb2 as fb_svc
from aiops.feedback.v1 import feedback_service_pb2_grpc as fb_grpc
from google.rpc import status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.feedback import server as feedback_server
from services.feedback.settings import FeedbackSettings
from services.kit import local_servers, serve
from tests import helpers
from tests.conftest import feedback_env

TIMEOUT = 5.0


def anomaly_feedback(target: str = "a-1", verdict: int = fb.VERDICT_CONFIRMED) -> fb.Feedback:
    return fb.Feedback(
        target=fb.Target(kind=fb.TARGET_KIND_ANOMALY, id=target),
        verdict=verdict,
        series="latency_p95",
        labels={"env": "test"},
    )


async def submit(stub: fb_grpc.FeedbackServiceStub, **kwargs: object) -> fb.Feedback:
    reply = await stub.SubmitFeedback(
        fb_svc.SubmitFeedbackRequest(feedback=anomaly_feedback(**kwargs)),  # type: ignore[arg-type]
        timeout=TIMEOUT,
        metadata=[("x-aiops-subject", "alice")],
    )
    return reply.feedback


async def test_submit_get_list_delete_round_trip(
    feedback_stub: fb_grpc.FeedbackServiceStub,
) -> None:
    stored = await submit(feedback_stub)
    assert stored.name.startswith("feedback/") and stored.author == "alice"
    assert stored.expire_time.seconds - stored.create_time.seconds == 7 * 24 * 3600
    got = await feedback_stub.GetFeedback(
        fb_svc.GetFeedbackRequest(name=stored.name), timeout=TIMEOUT
    )
    assert got.feedback == stored
    listed = await feedback_stub.ListFeedback(fb_svc.ListFeedbackRequest(), timeout=TIMEOUT)
    assert list(listed.feedback) == [stored]
    deleted = await feedback_stub.DeleteFeedback(
        fb_svc.DeleteFeedbackRequest(name=stored.name), timeout=TIMEOUT
    )
    assert deleted.deleted_count == 1
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await feedback_stub.GetFeedback(
            fb_svc.GetFeedbackRequest(name=stored.name), timeout=TIMEOUT
        )
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND
    assert helpers.error_info(caught.value).reason == "FEEDBACK_NOT_FOUND"


@pytest.mark.parametrize(
    ("feedback", "field"),
    [
        (
            fb.Feedback(verdict=fb.VERDICT_CONFIRMED, target=fb.Target(id="x")),
            "feedback.target.kind",
        ),
        (fb.Feedback(verdict=99, target=fb.Target(kind=1, id="x")), "feedback.verdict"),
        (fb.Feedback(verdict=1, target=fb.Target(kind=42, id="x")), "feedback.target.kind"),
        (
            fb.Feedback(verdict=1, target=fb.Target(kind=1, id="x"), comment="c" * 2001),
            "feedback.comment",
        ),
        (fb.Feedback(verdict=1, target=fb.Target(kind=1)), "feedback.target.id"),
    ],
)
async def test_submit_rejects_bad_feedback_naming_the_field(
    feedback_stub: fb_grpc.FeedbackServiceStub, feedback: fb.Feedback, field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await feedback_stub.SubmitFeedback(
            fb_svc.SubmitFeedbackRequest(feedback=feedback), timeout=TIMEOUT
        )
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert field in helpers.field_violations(caught.value)
    assert helpers.error_info(caught.value).domain == "aiops.feedback.v1"


@pytest.mark.parametrize("page_size", [-1, -500])
async def test_list_feedback_rejects_negative_page_size(
    feedback_stub: fb_grpc.FeedbackServiceStub, page_size: int
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await feedback_stub.ListFeedback(
            fb_svc.ListFeedbackRequest(page_size=page_size), timeout=TIMEOUT
        )
    assert helpers.field_violations(caught.value) == ["page_size"]


async def test_list_feedback_rejects_a_token_made_for_another_filter(
    feedback_stub: fb_grpc.FeedbackServiceStub,
) -> None:
    for _ in range(3):
        await submit(feedback_stub)
    first = await feedback_stub.ListFeedback(
        fb_svc.ListFeedbackRequest(page_size=1), timeout=TIMEOUT
    )
    assert first.next_page_token
    other = fb_svc.FeedbackFilter(verdict=fb.VERDICT_CONFIRMED)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await feedback_stub.ListFeedback(
            fb_svc.ListFeedbackRequest(filter=other, page_token=first.next_page_token),
            timeout=TIMEOUT,
        )
    assert helpers.error_info(caught.value).reason == "PAGE_TOKEN_FILTER_MISMATCH"


async def test_list_filters_by_time_range(feedback_stub: fb_grpc.FeedbackServiceStub) -> None:
    stored = await submit(feedback_stub)
    after = common_pb2.TimeRange()
    after.start_time.FromSeconds(stored.create_time.seconds + 10)
    empty = await feedback_stub.ListFeedback(
        fb_svc.ListFeedbackRequest(filter=fb_svc.FeedbackFilter(create_time_range=after)),
        timeout=TIMEOUT,
    )
    assert list(empty.feedback) == []


async def test_batch_submit_answers_each_item_on_its_own(
    feedback_stub: fb_grpc.FeedbackServiceStub,
) -> None:
    good = fb_svc.SubmitFeedbackRequest(feedback=anomaly_feedback(), idempotency_key="b-1")
    bad = fb_svc.SubmitFeedbackRequest(feedback=fb.Feedback(verdict=1))
    reply = await feedback_stub.BatchSubmitFeedback(
        fb_svc.BatchSubmitFeedbackRequest(requests=[good, bad, good]), timeout=TIMEOUT
    )
    first, failed, replay = reply.results
    assert first.error_code == 0 and not first.response.replayed
    assert failed.error_code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert status_pb2.Status.FromString(failed.error_status).message == failed.error_message
    assert replay.response.replayed and replay.response.feedback == first.response.feedback


async def test_batch_submit_rejects_empty_batches(
    feedback_stub: fb_grpc.FeedbackServiceStub,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await feedback_stub.BatchSubmitFeedback(
            fb_svc.BatchSubmitFeedbackRequest(), timeout=TIMEOUT
        )
    assert helpers.error_info(caught.value).reason == "BATCH_SIZE_INVALID"


async def test_stats_group_verdicts(feedback_stub: fb_grpc.FeedbackServiceStub) -> None:
    await submit(feedback_stub, verdict=fb.VERDICT_FALSE_POSITIVE)
    await submit(feedback_stub, verdict=fb.VERDICT_FALSE_POSITIVE)
    await submit(feedback_stub, verdict=fb.VERDICT_CONFIRMED)
    reply = await feedback_stub.GetFeedbackStats(fb_svc.GetFeedbackStatsRequest(), timeout=TIMEOUT)
    (group,) = reply.groups
    assert group.series == "latency_p95"
    assert (group.confirmed_count, group.false_positive_count) == (1, 2)


async def test_health_follows_redis_and_submit_fails_fast_with_unavailable(
    restartable_redis: local_servers.LocalRedis,
) -> None:
    settings = FeedbackSettings.from_env(feedback_env(restartable_redis.url, "h:"))
    async with (
        feedback_server.running(settings) as running,
        grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel,
    ):
        stub = fb_grpc.FeedbackServiceStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        ready = health_pb2.HealthCheckRequest(service=feedback_server.SERVICE_NAME)
        kept = await submit(stub)

        async def status_is(expected: int) -> None:
            assert (await health.Check(ready, timeout=TIMEOUT)).status == expected

        await status_is(health_pb2.HealthCheckResponse.SERVING)
        restartable_redis.kill()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await submit(stub)
        assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
        assert helpers.error_info(caught.value).reason == "REDIS_UNAVAILABLE"
        await helpers.eventually(lambda: status_is(health_pb2.HealthCheckResponse.NOT_SERVING))
        live = health_pb2.HealthCheckRequest(service="")
        assert (
            await health.Check(live, timeout=TIMEOUT)
        ).status == health_pb2.HealthCheckResponse.SERVING
        restartable_redis.start()
        await submit(stub)
        await helpers.eventually(lambda: status_is(health_pb2.HealthCheckResponse.SERVING))
        got = await stub.GetFeedback(fb_svc.GetFeedbackRequest(name=kept.name), timeout=TIMEOUT)
        assert got.feedback == kept


async def test_drain_goes_not_serving_before_stopping(
    feedback_running: serve.Running,
) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{feedback_running.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        await feedback_running.health.enter_graceful_shutdown()
        reply = await health.Check(
            health_pb2.HealthCheckRequest(service=feedback_server.SERVICE_NAME), timeout=TIMEOUT
        )
        assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
