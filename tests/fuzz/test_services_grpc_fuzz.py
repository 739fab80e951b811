"""Property-based fuzzing of every method of the telemetry, anomaly and remediation services
over real gRPC sockets against the real servers (real Postgres and Redis): whatever the
protobuf schema lets a client send, the answer is OK or a status naming the caller's
mistake, never INTERNAL, UNKNOWN or DATA_LOSS, and never a hang (every call has a deadline
and running out of it fails the test).

The method list comes from the service descriptors, so a new RPC is fuzzed without edits.
`AIOPS_FUZZ_EXAMPLES` sets the requests per method (default 25)."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from aiops.anomaly.v1 import anomaly_pb2 as an
from aiops.anomaly.v1 import anomaly_service_pb2 as an_svc
from aiops.anomaly.v1 import anomaly_service_pb2_grpc as an_grpc
from aiops.remediation.v1 import remediation_service_pb2 as rem_svc
from aiops.remediation.v1 import remediation_service_pb2_grpc as rem_grpc
from aiops.telemetry.v1 import telemetry_service_pb2 as tel_svc
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.kit import serve
from tests.conftest import Deps, other_services
from tests.fuzz import grpc_messages

EXAMPLES = int(os.environ.get("AIOPS_FUZZ_EXAMPLES", "25"))
DEADLINE_SECONDS = 15.0
# What a server may answer to a hostile request. DEADLINE_EXCEEDED means it hung.
NEVER = {
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.DATA_LOSS,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.UNAVAILABLE,
}
SERVICES: dict[str, ServiceDescriptor] = {
    "telemetry": tel_svc.DESCRIPTOR.services_by_name["TelemetryService"],
    "anomaly": an_svc.DESCRIPTOR.services_by_name["AnomalyService"],
    "remediation": rem_svc.DESCRIPTOR.services_by_name["RemediationService"],
}
METHODS = [(name, m.name) for name, svc in SERVICES.items() for m in svc.methods]
# The gateway forwards who called; a direct client may send anything or nothing.
CALLERS = st.sampled_from(
    [
        (),
        (("x-aiops-subject", "fuzz"), ("x-aiops-roles", "admin")),
        (("x-aiops-subject", "fuzz"), ("x-aiops-roles", "viewer")),
        (("x-aiops-subject", "fuzz"), ("x-aiops-roles", "operator,agent")),
        (("x-aiops-roles", "root, ,admin,,"),),
    ]
)


@pytest.fixture
async def services(deps: Deps, feedback_running: serve.Running) -> AsyncIterator[dict[str, int]]:
    async with other_services(deps, feedback_running) as running:
        yield {name: r.port for name, r in running.items()}


def _multicallable(channel: grpc.aio.Channel, method: MethodDescriptor) -> Any:
    path = f"/{method.containing_service.full_name}/{method.name}"
    request_cls = message_factory.GetMessageClass(method.input_type)
    response_cls = message_factory.GetMessageClass(method.output_type)
    kind = (method.client_streaming, method.server_streaming)
    factory = {
        (False, False): channel.unary_unary,
        (True, False): channel.stream_unary,
        (False, True): channel.unary_stream,
        (True, True): channel.stream_stream,
    }[kind]
    return factory(
        path,
        request_serializer=request_cls.SerializeToString,
        response_deserializer=response_cls.FromString,
    )


async def _invoke(call: Any, method: MethodDescriptor, requests: list[Any], metadata: Any) -> int:
    """Makes the call with a deadline; returns how many responses arrived."""
    if not method.client_streaming:
        result = call(requests[0], timeout=DEADLINE_SECONDS, metadata=metadata)
        if method.server_streaming:
            return len([r async for r in result])
        await result
        return 1
    # Written one by one: a server may refuse the first message and end the call while
    # more are queued, and a request iterator would then report the client's own failed
    # send (INTERNAL) instead of the server's status.
    stream = call(timeout=DEADLINE_SECONDS, metadata=metadata)
    for sent, request in enumerate(requests):
        try:
            await stream.write(request)
        except asyncio.InvalidStateError:  # the server has already finished the call
            break
        except grpc.aio.AioRpcError as err:
            if not _lost_send(err):
                raise
            # The server ended the call while this message was on its way; the client then
            # reports its failed send, not the server's status. Ask again with only what
            # the server had received, to see its real answer.
            return await _invoke(call, method, requests[:sent], metadata)
    with contextlib.suppress(asyncio.InvalidStateError):
        await stream.done_writing()
    if method.server_streaming:
        return len([r async for r in stream])
    await stream
    return 1


def _lost_send(err: grpc.aio.AioRpcError) -> bool:
    return err.code() == grpc.StatusCode.INTERNAL and "SendMessageOperation" in (
        err.debug_error_string() or ""
    )


def _fuzz(loop: asyncio.AbstractEventLoop, channel: grpc.aio.Channel, method: Any) -> set[str]:
    """Runs Hypothesis on one method (in a worker thread); the calls run on `loop`."""
    call = _multicallable(channel, method)
    requests = grpc_messages.messages(method.input_type)
    batches = st.lists(requests, min_size=0 if method.client_streaming else 1, max_size=3)
    seen: set[str] = set()

    @settings(
        max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(batch=batches, metadata=CALLERS)
    def check(batch: list[Any], metadata: Any) -> None:
        future = asyncio.run_coroutine_threadsafe(_invoke(call, method, batch, metadata), loop)
        try:
            future.result(timeout=DEADLINE_SECONDS + 10)
            seen.add("OK")
        except grpc.aio.AioRpcError as err:
            assert err.code() not in NEVER, (
                f"{method.full_name}: {err.code().name} {err.details()!r}",
                [str(m)[:500] for m in batch],
            )
            seen.add(err.code().name)

    check()
    return seen


@pytest.mark.timeout(900)
# Oversized batches make Hypothesis warn about the size of a failing example's repr; the
# assertion message carries a truncated one.
@pytest.mark.filterwarnings("ignore:Generating overly large repr")
@pytest.mark.parametrize("service", list(SERVICES))
async def test_every_method_gets_ok_or_a_client_error(
    services: dict[str, int], service: str
) -> None:
    loop = asyncio.get_running_loop()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{services[service]}") as channel:
        for method in SERVICES[service].methods:
            seen = await asyncio.to_thread(_fuzz, loop, channel, method)
            assert seen, method.full_name


def test_every_method_of_every_service_is_fuzzed() -> None:
    # The feedback service has its own fuzz test (test_feedback_grpc_fuzz.py).
    assert {m for _, m in METHODS} >= {"ScorePoints", "PushPoints", "Remediate", "ApplyFeedback"}
    assert len(METHODS) == sum(len(s.methods) for s in SERVICES.values())


async def test_inputs_the_fuzzer_found_are_client_errors(services: dict[str, int]) -> None:
    """Regressions: each of these was an INTERNAL before (see the helper's report)."""
    bad_time = rem_svc.ListRemediationsRequest()
    bad_time.filter.create_time_range.start_time.seconds = 1_792_265_116
    bad_time.filter.create_time_range.start_time.nanos = -1
    async with grpc.aio.insecure_channel(f"127.0.0.1:{services['remediation']}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await rem_grpc.RemediationServiceStub(channel).ListRemediations(bad_time, timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    async with grpc.aio.insecure_channel(f"127.0.0.1:{services['anomaly']}") as channel:
        stub = an_grpc.AnomalyServiceStub(channel)
        for flt in (an_svc.AnomalyFilter(series="\x00"), an_svc.AnomalyFilter(detector="a\x00")):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.ListAnomalies(an_svc.ListAnomaliesRequest(filter=flt), timeout=10)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        batch = an_svc.ScorePointsRequest()
        batch.series_batches.add(series="\x00", sample_time_micros=[0], values=[0.0])
        replies = [r async for r in stub.ScorePoints(iter([batch]), timeout=10)]
        assert [s.reject_reason for s in replies[0].series_scores] == [
            an.SCORE_REJECT_REASON_INVALID_SERIES
        ]
