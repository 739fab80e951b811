"""Anomaly events over real gRPC and Postgres: open, extend, close, list, get, acknowledge,
and the hand-off to remediation's Suggest."""

from __future__ import annotations

import grpc
import pytest
from aiops.anomaly.v1 import anomaly_pb2 as an
from aiops.anomaly.v1 import anomaly_service_pb2 as an_svc
from aiops.anomaly.v1 import anomaly_service_pb2_grpc as an_grpc
from aiops.common.v1 import common_pb2

from tests import helpers
from tests.anomaly.conftest import RecordingRemediation, StartAnomaly
from tests.anomaly.test_scoring import batch, noise, score_all

SPIKE_AT = 600


def with_spike(n: int, seed: int, at: int = SPIKE_AT, size: float = 60.0) -> list[float]:
    values = noise(n, seed)
    values[at] += size
    return values


async def test_spike_opens_one_event_that_closes_when_back_to_normal(
    anomaly_stub: an_grpc.AnomalyServiceStub,
    remediation: tuple[RecordingRemediation, int],
) -> None:
    values = with_spike(800, 5)
    (response,) = await score_all(anomaly_stub, [batch("latency_p95", values)])
    flagged = [i for i, s in enumerate(response.scores) if s.anomalous]
    assert SPIKE_AT in flagged
    assert len(response.opened_anomalies) >= 1
    name = response.scores[SPIKE_AT].anomaly
    assert name in response.opened_anomalies
    got = (await anomaly_stub.GetAnomaly(an_svc.GetAnomalyRequest(name=name))).anomaly
    assert got.series == "latency_p95"
    assert got.state == an.ANOMALY_STATE_CLOSED  # 200 normal points followed
    assert got.start_time.ToSeconds() <= got.peak_time.ToSeconds() <= got.end_time.ToSeconds()
    assert got.peak_score >= got.threshold
    assert got.peak_value == pytest.approx(values[SPIKE_AT])
    assert got.signature.startswith("latency_p95:up:")
    assert got.explanation and got.detector == "ensemble"
    assert got.severity != common_pb2.SEVERITY_UNSPECIFIED
    assert list(got.signals) == sorted(set(got.signals))

    async def suggested() -> None:
        assert name in remediation[0].asked

    await helpers.eventually(suggested)


async def test_event_stays_open_until_enough_normal_points_then_closes(
    anomaly_stub: an_grpc.AnomalyServiceStub,
) -> None:
    values = with_spike(SPIKE_AT + 2, 6, at=SPIKE_AT)
    (first,) = await score_all(anomaly_stub, [batch("s", values)])
    name = first.scores[SPIKE_AT].anomaly
    assert name
    got = (await anomaly_stub.GetAnomaly(an_svc.GetAnomalyRequest(name=name))).anomaly
    assert got.state == an.ANOMALY_STATE_OPEN and not got.HasField("end_time")
    acked = await anomaly_stub.AcknowledgeAnomaly(
        an_svc.AcknowledgeAnomalyRequest(name=name, comment="looking"),
        metadata=(("x-aiops-subject", "alice"),),
    )
    assert acked.anomaly.state == an.ANOMALY_STATE_ACKNOWLEDGED
    assert acked.anomaly.acknowledger == "alice" and acked.anomaly.acknowledge_comment == "looking"
    again = await anomaly_stub.AcknowledgeAnomaly(an_svc.AcknowledgeAnomalyRequest(name=name))
    assert again.anomaly == acked.anomaly
    tail = noise(50, 7)
    await score_all(anomaly_stub, [batch("s", tail, start=len(values))])
    got = (await anomaly_stub.GetAnomaly(an_svc.GetAnomalyRequest(name=name))).anomaly
    assert got.state == an.ANOMALY_STATE_CLOSED
    assert got.end_time.ToSeconds() == got.start_time.ToSeconds() or got.HasField("end_time")
    assert got.acknowledger == "alice"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await anomaly_stub.AcknowledgeAnomaly(an_svc.AcknowledgeAnomalyRequest(name=name))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert helpers.error_info(err.value).reason == "ANOMALY_CLOSED"


async def test_list_anomalies_pages_newest_first_with_filters(
    anomaly_stub: an_grpc.AnomalyServiceStub,
) -> None:
    for k in ("a", "b", "c"):
        await score_all(anomaly_stub, [batch(k, with_spike(700, ord(k)))])
    seen: list[an.Anomaly] = []
    token = ""
    while True:
        page = await anomaly_stub.ListAnomalies(
            an_svc.ListAnomaliesRequest(page_size=1, page_token=token)
        )
        seen += page.anomalies
        token = page.next_page_token
        if not token:
            break
    assert {a.series for a in seen} == {"a", "b", "c"}
    keys = [(a.start_time.ToNanoseconds(), a.name) for a in seen]
    assert keys == sorted(keys, reverse=True)
    only_b = await anomaly_stub.ListAnomalies(
        an_svc.ListAnomaliesRequest(filter=an_svc.AnomalyFilter(series="b"))
    )
    assert only_b.anomalies and {a.series for a in only_b.anomalies} == {"b"}
    closed = await anomaly_stub.ListAnomalies(
        an_svc.ListAnomaliesRequest(
            filter=an_svc.AnomalyFilter(state=an.ANOMALY_STATE_OPEN, series="a")
        )
    )
    assert all(a.state == an.ANOMALY_STATE_OPEN for a in closed.anomalies)


@pytest.mark.parametrize(
    ("request_", "reason"),
    [
        (an_svc.ListAnomaliesRequest(page_size=-1), "PAGE_SIZE_INVALID"),
        (an_svc.ListAnomaliesRequest(page_token="nope"), "PAGE_TOKEN_INVALID"),
    ],
)
async def test_list_anomalies_rejects_bad_paging(
    anomaly_stub: an_grpc.AnomalyServiceStub, request_: an_svc.ListAnomaliesRequest, reason: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await anomaly_stub.ListAnomalies(request_)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert helpers.error_info(err.value).reason == reason


async def test_page_token_of_another_filter_is_rejected(
    anomaly_stub: an_grpc.AnomalyServiceStub,
) -> None:
    for k in ("a", "b"):
        await score_all(anomaly_stub, [batch(k, with_spike(700, ord(k)))])
    page = await anomaly_stub.ListAnomalies(an_svc.ListAnomaliesRequest(page_size=1))
    assert page.next_page_token
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await anomaly_stub.ListAnomalies(
            an_svc.ListAnomaliesRequest(
                page_size=1,
                page_token=page.next_page_token,
                filter=an_svc.AnomalyFilter(series="a"),
            )
        )
    assert helpers.error_info(err.value).reason == "PAGE_TOKEN_FILTER_MISMATCH"


@pytest.mark.parametrize(
    ("name", "code", "reason"),
    [
        ("bogus", grpc.StatusCode.INVALID_ARGUMENT, "ANOMALY_NAME_INVALID"),
        ("anomalies/01ARZ3NDEKTSV4RRFFQ69G5FAV", grpc.StatusCode.NOT_FOUND, "ANOMALY_NOT_FOUND"),
    ],
)
async def test_get_anomaly_errors(
    anomaly_stub: an_grpc.AnomalyServiceStub, name: str, code: grpc.StatusCode, reason: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await anomaly_stub.GetAnomaly(an_svc.GetAnomalyRequest(name=name))
    assert err.value.code() == code
    assert helpers.error_info(err.value).reason == reason


async def test_scoring_goes_on_when_remediation_is_down(start_anomaly: StartAnomaly) -> None:
    async with (
        start_anomaly(AIOPS_REMEDIATION_ADDR="127.0.0.1:1") as running,
        grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel,
    ):
        stub = an_grpc.AnomalyServiceStub(channel)
        (response,) = await score_all(stub, [batch("s", with_spike(700, 9))])
        name = response.scores[SPIKE_AT].anomaly
        got = await stub.GetAnomaly(an_svc.GetAnomalyRequest(name=name))
        assert got.anomaly.name == name
