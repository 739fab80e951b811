"""Property-based fuzzing of the feedback service over a real gRPC socket: any request the
protobuf schema allows gets OK or a client-error status, never INTERNAL, UNKNOWN or a hang."""

from __future__ import annotations

import asyncio

import grpc
from aiops.feedback.v1 import feedback_pb2 as fb
from aiops.feedback.v1 import feedback_service_pb2 as fb_svc
from aiops.feedback.v1 import feedback_service_pb2_grpc as fb_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.kit import serve

CLIENT_ERRORS = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}

text = st.text(max_size=300)
feedback = st.builds(
    fb.Feedback,
    name=text,
    target=st.builds(fb.Target, kind=st.integers(-5, 10), id=text),
    verdict=st.integers(-5, 10),
    rating=st.integers(-(2**31), 2**31 - 1),
    comment=st.text(max_size=2500),
    series=text,
    detector=text,
    action=text,
    signature=text,
    labels=st.dictionaries(st.text(max_size=70), text, max_size=20),
)
flt = st.builds(
    fb_svc.FeedbackFilter,
    target_kind=st.integers(-3, 9),
    target_id=text,
    verdict=st.integers(-3, 9),
)
requests = st.one_of(
    st.builds(
        fb_svc.SubmitFeedbackRequest, feedback=feedback, idempotency_key=st.text(max_size=200)
    ),
    st.builds(fb_svc.GetFeedbackRequest, name=text),
    st.builds(
        fb_svc.ListFeedbackRequest,
        filter=flt,
        page_size=st.integers(-(2**31), 2**31 - 1),
        page_token=text,
    ),
    st.builds(fb_svc.DeleteFeedbackRequest, name=text, all=st.just(False)),
    st.builds(fb_svc.GetFeedbackStatsRequest, target_kind=st.integers(-3, 9)),
    st.builds(
        fb_svc.BatchSubmitFeedbackRequest,
        requests=st.lists(st.builds(fb_svc.SubmitFeedbackRequest, feedback=feedback), max_size=4),
    ),
)
METHODS = {
    fb_svc.SubmitFeedbackRequest: "SubmitFeedback",
    fb_svc.GetFeedbackRequest: "GetFeedback",
    fb_svc.ListFeedbackRequest: "ListFeedback",
    fb_svc.DeleteFeedbackRequest: "DeleteFeedback",
    fb_svc.GetFeedbackStatsRequest: "GetFeedbackStats",
    fb_svc.BatchSubmitFeedbackRequest: "BatchSubmitFeedback",
}


async def test_any_request_gets_ok_or_a_client_error(feedback_running: serve.Running) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{feedback_running.port}") as channel:
        stub = fb_grpc.FeedbackServiceStub(channel)
        loop = asyncio.get_running_loop()
        seen: list[str] = []

        @settings(
            max_examples=300,
            deadline=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        )
        @given(request=requests)
        def check(request: object) -> None:
            method = getattr(stub, METHODS[type(request)])

            async def invoke() -> object:
                return await method(request, timeout=5)

            future = asyncio.run_coroutine_threadsafe(invoke(), loop)
            try:
                future.result(timeout=10)
                seen.append("OK")
            except grpc.aio.AioRpcError as err:
                assert err.code() in CLIENT_ERRORS, (err.code(), err.details(), request)
                seen.append(err.code().name)

        await asyncio.to_thread(check)
        assert "OK" in seen and "INVALID_ARGUMENT" in seen
