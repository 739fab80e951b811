"""Drift: ad hoc DetectDrift, the scheduled per-series evaluation and GetDriftStatus, over
real gRPC and Postgres, and GET /api/v1/aiops/drift through the gateway."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from aiops.anomaly.v1 import anomaly_pb2 as an
from aiops.anomaly.v1 import anomaly_service_pb2 as an_svc
from aiops.anomaly.v1 import anomaly_service_pb2_grpc as an_grpc

from services.kit import serve
from tests import helpers
from tests.anomaly.conftest import StartAnomaly
from tests.anomaly.test_scoring import STEP, T0, batch, score_all, ts
from tests.conftest import Gateway, serve_gateway

ALPHA = 0.05


def samples(seed: int, shift: float, n: int = 400) -> an_svc.DetectDriftRequest:
    rng = np.random.default_rng(seed)
    return an_svc.DetectDriftRequest(
        samples=an_svc.InlineSamples(
            reference=rng.normal(0.0, 1.0, n).tolist(),
            current=rng.normal(shift, 1.0, n).tolist(),
        ),
        alpha=ALPHA,
    )


async def test_detect_drift_false_positive_rate_is_bounded_and_shift_is_found(
    anomaly_stub: an_grpc.AnomalyServiceStub,
) -> None:
    seeds = range(150)
    false_alarms = 0
    for seed in seeds:
        r = await anomaly_stub.DetectDrift(samples(seed, 0.0))
        false_alarms += r.decision.drifted
    # Holm keeps the family-wise rate at most alpha (7.5 expected of 150); 16 or more has
    # probability below 0.3 % under a rate of 0.05.
    assert false_alarms <= 15, false_alarms
    found = 0
    for seed in range(1000, 1030):
        r = await anomaly_stub.DetectDrift(samples(seed, 0.5))
        found += r.decision.drifted
    assert found >= 29


async def test_detect_drift_reports_each_test_and_combines(
    anomaly_stub: an_grpc.AnomalyServiceStub,
) -> None:
    r = await anomaly_stub.DetectDrift(samples(1, 1.0))
    assert [t.test for t in r.results] == [
        an.DRIFT_TEST_KS,
        an.DRIFT_TEST_ANDERSON_DARLING,
        an.DRIFT_TEST_MANN_WHITNEY,
        an.DRIFT_TEST_PSI,
    ]
    assert all(t.drifted for t in r.results)
    assert not r.results[3].HasField("p_value") and r.results[3].critical_value == 0.2
    assert r.decision.drifted and r.decision.method == an.COMBINE_METHOD_HOLM
    assert r.decision.combined_p_value < ALPHA and r.decision.drifted_test_count == 4
    assert (r.reference_count, r.current_count) == (400, 400)
    for method in (an.COMBINE_METHOD_FISHER, an.COMBINE_METHOD_MAJORITY):
        req = samples(1, 1.0)
        req.method = method
        req.tests[:] = [an.DRIFT_TEST_KS, an.DRIFT_TEST_MANN_WHITNEY]
        got = await anomaly_stub.DetectDrift(req)
        assert got.decision.drifted and len(got.results) == 2


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda r: setattr(r, "alpha", 0.7), "alpha"),
        (lambda r: r.tests.extend([an.DRIFT_TEST_KS, an.DRIFT_TEST_KS]), "tests[1]"),
        (lambda r: r.samples.reference.__delitem__(slice(3, None)), "samples.reference"),
        (lambda r: r.samples.current.append(float("nan")), "samples.current"),
        (lambda r: r.ClearField("samples"), "input"),
    ],
)
async def test_detect_drift_rejects_bad_requests(
    anomaly_stub: an_grpc.AnomalyServiceStub, mutate: object, field: str
) -> None:
    req = samples(2, 0.0)
    mutate(req)  # type: ignore[operator]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await anomaly_stub.DetectDrift(req)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in helpers.field_violations(err.value)


async def test_detect_drift_on_windows_of_an_unknown_series_is_not_found(
    anomaly_stub: an_grpc.AnomalyServiceStub,
) -> None:
    req = an_svc.DetectDriftRequest(windows=an_svc.SeriesWindows(series="nope"))
    for rng, (a, b) in (
        (req.windows.reference_range, (0, 10)),
        (req.windows.current_range, (10, 20)),
    ):
        rng.start_time.CopyFrom(ts(T0 + a))
        rng.end_time.CopyFrom(ts(T0 + b))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await anomaly_stub.DetectDrift(req)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert helpers.error_info(err.value).reason == "SERIES_NOT_FOUND"


async def test_detect_drift_on_windows_of_a_scored_series(
    anomaly_stub: an_grpc.AnomalyServiceStub,
) -> None:
    rng = np.random.default_rng(3)
    values = np.concatenate([rng.normal(10, 1, 300), rng.normal(14, 1, 300)]).tolist()
    await score_all(anomaly_stub, [batch("w", values)])
    req = an_svc.DetectDriftRequest(windows=an_svc.SeriesWindows(series="w"))
    for r, (a, b) in (
        (req.windows.reference_range, (0, 300)),
        (req.windows.current_range, (300, 600)),
    ):
        r.start_time.CopyFrom(ts(T0 + STEP * a))
        r.end_time.CopyFrom(ts(T0 + STEP * b))
    got = await anomaly_stub.DetectDrift(req)
    assert got.decision.drifted and got.reference_count == 300 and got.current_count == 300


async def test_scheduled_drift_finds_the_shifted_series_not_the_stationary_one(
    start_anomaly: StartAnomaly,
) -> None:
    async with (
        start_anomaly(
            AIOPS_ANOMALY_DRIFT_WINDOW="200", AIOPS_ANOMALY_DRIFT_INTERVAL_SECONDS="0.05"
        ) as running,
        grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel,
    ):
        stub = an_grpc.AnomalyServiceStub(channel)
        rng = np.random.default_rng(4)
        stationary = rng.normal(50, 2, 400).tolist()
        shifted = np.concatenate([rng.normal(50, 2, 200), rng.normal(53, 2, 200)]).tolist()
        short = rng.normal(50, 2, 50).tolist()
        await score_all(
            stub, [batch("flat", stationary), batch("moved", shifted), batch("young", short)]
        )

        async def evaluated() -> an_svc.GetDriftStatusResponse:
            got = await stub.GetDriftStatus(an_svc.GetDriftStatusRequest())
            assert [s.series for s in got.drift_statuses] == ["flat", "moved", "young"]
            return got

        got = await helpers.eventually(evaluated)
        by = {s.series: s for s in got.drift_statuses}
        assert by["flat"].state == an.DRIFT_STATE_STABLE
        assert by["moved"].state == an.DRIFT_STATE_DRIFTING
        assert by["moved"].HasField("drift_start_time")
        assert by["young"].state == an.DRIFT_STATE_INSUFFICIENT_DATA
        assert by["moved"].reference_count == 200 and len(by["moved"].results) == 4
        ref, cur = by["moved"].reference_range, by["moved"].current_range
        assert ref.end_time.ToSeconds() < cur.start_time.ToSeconds()
        only = await stub.GetDriftStatus(
            an_svc.GetDriftStatusRequest(state=an.DRIFT_STATE_DRIFTING)
        )
        assert [s.series for s in only.drift_statuses] == ["moved"]
        first = await stub.GetDriftStatus(an_svc.GetDriftStatusRequest(page_size=2))
        assert len(first.drift_statuses) == 2 and first.next_page_token
        rest = await stub.GetDriftStatus(
            an_svc.GetDriftStatusRequest(page_size=2, page_token=first.next_page_token)
        )
        assert [s.series for s in rest.drift_statuses] == ["young"]
        assert not rest.next_page_token


@pytest.fixture
async def gw(
    feedback_running: serve.Running, anomaly_running: serve.Running, tmp_path: Path
) -> AsyncIterator[Gateway]:
    async with serve_gateway(
        {"feedback": feedback_running, "anomaly": anomaly_running}, tmp_path / "keys"
    ) as g:
        yield g


async def test_get_drift_over_rest(gw: Gateway) -> None:
    async with gw.session.get(
        gw.url("/api/v1/aiops/drift?state=drifting&pageSize=5"), headers=gw.auth("viewer")
    ) as r:
        assert r.status == 200
        assert await r.json() == {}
    async with gw.session.get(gw.url("/api/v1/aiops/drift")) as r:
        assert r.status == 401
    async with gw.session.get(
        gw.url("/api/v1/aiops/drift?pageToken=zzz"), headers=gw.auth("viewer")
    ) as r:
        assert r.status == 400
