"""ScorePoints over real gRPC: scores in order, counted rejections, isolation of series."""

from __future__ import annotations

import math
from collections.abc import Sequence

import grpc
import numpy as np
import pytest
from aiops.anomaly.v1 import anomaly_pb2 as an
from aiops.anomaly.v1 import anomaly_service_pb2 as an_svc
from aiops.anomaly.v1 import anomaly_service_pb2_grpc as an_grpc
from google.protobuf import timestamp_pb2

from services.anomaly import detectors
from tests import helpers
from tests.anomaly.conftest import StartAnomaly

T0 = 1_700_000_000.0
STEP = 60.0


def ts(seconds: float) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromNanoseconds(round(seconds * 1e9))
    return out


def obs(series: str, t: float | None, value: float, **labels: str) -> an.Observation:
    o = an.Observation(series=series, value=value, labels=labels)
    if t is not None:
        o.sample_time.CopyFrom(ts(t))
    return o


def batch(series: str, values: Sequence[float], start: int = 0) -> an_svc.ScorePointsRequest:
    return an_svc.ScorePointsRequest(
        observations=[obs(series, T0 + STEP * (start + i), v) for i, v in enumerate(values)]
    )


async def score_all(
    stub: an_grpc.AnomalyServiceStub, requests: Sequence[an_svc.ScorePointsRequest]
) -> list[an_svc.ScorePointsResponse]:
    call = stub.ScorePoints(iter(requests))
    return [r async for r in call]


def noise(n: int, seed: int) -> list[float]:
    return (100.0 + np.random.default_rng(seed).normal(0.0, 1.0, n)).tolist()


async def test_score_points_answers_each_batch_in_order(
    anomaly_stub: an_grpc.AnomalyServiceStub,
) -> None:
    values = noise(900, 1)
    requests = [batch("cpu", values[i : i + 300], i) for i in range(0, 900, 300)]
    for i, r in enumerate(requests):
        r.batch_id = f"b{i}"
    responses = await score_all(anomaly_stub, requests)
    assert [r.batch_id for r in responses] == ["b0", "b1", "b2"]
    got = [s.score for r in responses for s in r.scores]
    expected = detectors.SeriesDetector().score_batch(
        T0 + STEP * np.arange(900, dtype=np.float64), np.asarray(values)
    )
    np.testing.assert_array_equal(np.asarray(got), expected)
    assert all(r.rejected_count == 0 for r in responses)
    assert all(0.0 <= s.score <= 1.0 and s.threshold > 0.5 for r in responses for s in r.scores)


async def test_score_points_rejects_bad_points_with_counted_reasons(
    anomaly_stub: an_grpc.AnomalyServiceStub,
) -> None:
    request = an_svc.ScorePointsRequest(
        observations=[
            obs("s", T0, 1.0),
            obs("s", T0 + 60, math.nan),
            obs("s", T0 + 60, math.inf),
            obs("s", T0, 2.0),  # not after the previous point
            obs("s", None, 2.0),
            obs("", T0, 2.0),
            obs("x" * 1025, T0, 2.0),
            obs("s", T0 + 120, 3.0, **{"bad key": "v"}),
            obs("s", T0 + 120, 3.0),
        ]
    )
    (response,) = await score_all(anomaly_stub, [request])
    reasons = [s.reject_reason for s in response.scores]
    assert reasons == [
        an.SCORE_REJECT_REASON_UNSPECIFIED,
        an.SCORE_REJECT_REASON_NON_FINITE_VALUE,
        an.SCORE_REJECT_REASON_NON_FINITE_VALUE,
        an.SCORE_REJECT_REASON_NON_MONOTONIC_TIME,
        an.SCORE_REJECT_REASON_MISSING_TIME,
        an.SCORE_REJECT_REASON_INVALID_SERIES,
        an.SCORE_REJECT_REASON_INVALID_SERIES,
        an.SCORE_REJECT_REASON_INVALID_LABELS,
        an.SCORE_REJECT_REASON_UNSPECIFIED,
    ]
    assert response.rejected_count == 7
    counts = {c.reason: c.count for c in response.rejections}
    assert counts == {
        an.SCORE_REJECT_REASON_NON_FINITE_VALUE: 2,
        an.SCORE_REJECT_REASON_NON_MONOTONIC_TIME: 1,
        an.SCORE_REJECT_REASON_MISSING_TIME: 1,
        an.SCORE_REJECT_REASON_INVALID_SERIES: 2,
        an.SCORE_REJECT_REASON_INVALID_LABELS: 1,
    }


async def test_garbage_in_one_series_never_changes_another(
    anomaly_stub: an_grpc.AnomalyServiceStub,
) -> None:
    clean = noise(400, 2)
    alone = await score_all(anomaly_stub, [batch("alone", clean)])
    mixed = an_svc.ScorePointsRequest()
    for i, v in enumerate(clean):
        mixed.observations.append(obs("mixed", T0 + STEP * i, v))
        mixed.observations.append(obs("junk", T0 + STEP * (i % 7), [math.nan, 1e300, -5.0][i % 3]))
    (response,) = await score_all(anomaly_stub, [mixed])
    got = [s.score for s in response.scores if s.reject_reason == 0][::1]
    mixed_scores = [
        s.score
        for o, s in zip(mixed.observations, response.scores, strict=True)
        if o.series == "mixed"
    ]
    assert mixed_scores == [s.score for s in alone[0].scores]
    assert len(got) > len(mixed_scores)  # some junk points were valid and scored


@pytest.mark.parametrize("size", [0, 10_001])
async def test_score_points_rejects_empty_or_oversized_batches(
    anomaly_stub: an_grpc.AnomalyServiceStub, size: int
) -> None:
    request = batch("s", [1.0] * size)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await score_all(anomaly_stub, [request])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert helpers.error_info(err.value).reason == "BATCH_SIZE_INVALID"
    assert helpers.field_violations(err.value) == ["observations"]


async def test_series_limit_is_a_counted_rejection(start_anomaly: StartAnomaly) -> None:
    async with (
        start_anomaly(AIOPS_ANOMALY_MAX_SERIES="2") as running,
        grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel,
    ):
        stub = an_grpc.AnomalyServiceStub(channel)
        request = an_svc.ScorePointsRequest(
            observations=[obs(k, T0, 1.0) for k in ("a", "b", "c", "a")]
        )
        request.observations[3].sample_time.CopyFrom(ts(T0 + 1))
        (response,) = await score_all(stub, [request])
    assert [s.reject_reason for s in response.scores] == [
        0,
        0,
        an.SCORE_REJECT_REASON_SERIES_LIMIT,
        0,
    ]
