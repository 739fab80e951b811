"""ScorePoints in the columnar form (`series_batches`) over real gRPC: the same scores as
the observation form, counted rejections of bad points, whole-batch errors for bad
shapes, events, sharding and the worker pool; one series' garbage never touches another."""

from __future__ import annotations

import math
from collections.abc import Sequence

import grpc
import numpy as np
import pytest
from aiops.anomaly.v1 import anomaly_pb2 as an
from aiops.anomaly.v1 import anomaly_service_pb2 as an_svc
from aiops.anomaly.v1 import anomaly_service_pb2_grpc as an_grpc

from services.anomaly import columns, detectors
from services.kit import sharding
from tests import helpers
from tests.anomaly.conftest import StartAnomaly
from tests.anomaly.test_scoring import STEP, T0, batch, noise, score_all

MICROS = 1_000_000


def micros(i: int) -> int:
    return int(T0 + STEP * i) * MICROS


def entry(series: str, values: Sequence[float], start: int = 0, **labels: str) -> an.SeriesBatch:
    return an.SeriesBatch(
        series=series,
        labels=labels,
        sample_time_micros=[micros(start + i) for i in range(len(values))],
        values=list(values),
    )


def request(*entries: an.SeriesBatch, batch_id: str = "") -> an_svc.ScorePointsRequest:
    return an_svc.ScorePointsRequest(series_batches=entries, batch_id=batch_id)


def reference(values: Sequence[float], start: int = 0) -> np.ndarray:
    """Scores a fresh detector gives the points `start, start + 1, ...` of a series."""
    return detectors.SeriesDetector().score_batch(
        T0 + STEP * np.arange(start, start + len(values), dtype=np.float64), np.asarray(values)
    )


async def test_columns_score_like_the_detector_and_the_observation_form(
    anomaly_stub: an_grpc.AnomalyServiceStub,
) -> None:
    values = noise(900, 1)
    requests = [
        request(entry("col", values[i : i + 300], i), batch_id=f"b{i}") for i in (0, 300, 600)
    ]
    responses = await score_all(anomaly_stub, requests)
    assert [r.batch_id for r in responses] == ["b0", "b300", "b600"]
    assert all(not r.scores and r.rejected_count == 0 for r in responses)
    got = np.concatenate([np.asarray(r.series_scores[0].scores) for r in responses])
    np.testing.assert_array_equal(got, reference(values))
    legacy = await score_all(anomaly_stub, [batch("obs", values)])
    np.testing.assert_array_equal(got, [s.score for s in legacy[0].scores])
    first = responses[0].series_scores[0]
    assert first.series == "col" and first.threshold > 0.5
    flagged = [i + start for r, start in zip(responses, (0, 300, 600), strict=True)
               for i in r.series_scores[0].anomalous_indexes]  # fmt: skip
    assert flagged == [i for i, s in enumerate(legacy[0].scores) if s.anomalous]
    details = [p for r in responses for p in r.series_scores[0].points]
    assert [p.anomalous for p in details] == [True] * len(flagged)


async def test_columns_reject_bad_points_with_counted_reasons_and_score_the_rest(
    anomaly_stub: an_grpc.AnomalyServiceStub,
) -> None:
    values = noise(200, 3)
    bad = entry("bad", values)
    bad.values[10] = math.nan
    bad.values[11] = math.inf
    bad.values[12] = -math.inf
    bad.sample_time_micros[20] = 0  # not set
    bad.sample_time_micros[30] = bad.sample_time_micros[29]  # not after the previous
    bad.sample_time_micros[40] = micros(-5)  # earlier than everything before
    clean = entry("clean", values)
    (response,) = await score_all(anomaly_stub, [request(bad, clean)])
    out_bad, out_clean = response.series_scores
    rejected = {p.index: p.reject_reason for p in out_bad.points if p.reject_reason}
    assert rejected == {
        10: an.SCORE_REJECT_REASON_NON_FINITE_VALUE,
        11: an.SCORE_REJECT_REASON_NON_FINITE_VALUE,
        12: an.SCORE_REJECT_REASON_NON_FINITE_VALUE,
        20: an.SCORE_REJECT_REASON_MISSING_TIME,
        30: an.SCORE_REJECT_REASON_NON_MONOTONIC_TIME,
        40: an.SCORE_REJECT_REASON_NON_MONOTONIC_TIME,
    }
    assert response.rejected_count == 6
    assert {c.reason: c.count for c in response.rejections} == {
        an.SCORE_REJECT_REASON_NON_FINITE_VALUE: 3,
        an.SCORE_REJECT_REASON_MISSING_TIME: 1,
        an.SCORE_REJECT_REASON_NON_MONOTONIC_TIME: 2,
    }
    kept = [i for i in range(200) if i not in rejected]
    expected = detectors.SeriesDetector().score_batch(
        T0 + STEP * np.asarray(kept, dtype=np.float64), np.asarray(values)[kept]
    )
    got = np.asarray(out_bad.scores)
    np.testing.assert_array_equal(got[kept], expected)
    assert not got[list(rejected)].any()
    np.testing.assert_array_equal(out_clean.scores, reference(values))
    # The bad series goes on from its latest accepted point.
    (more,) = await score_all(anomaly_stub, [request(entry("bad", [1.0], 199))])
    assert more.series_scores[0].points[0].reject_reason == (
        an.SCORE_REJECT_REASON_NON_MONOTONIC_TIME
    )


async def test_garbage_series_in_columns_never_changes_another(
    anomaly_stub: an_grpc.AnomalyServiceStub,
) -> None:
    clean = noise(400, 2)
    rng = np.random.default_rng(9)
    junk_values = rng.choice([math.nan, 1e300, -5.0, math.inf], 400).tolist()
    junk = an.SeriesBatch(
        series="junk",
        sample_time_micros=rng.integers(-3, 3, 400).tolist(),
        values=junk_values,
    )
    entries = [
        entry("mixed", clean[:200]),
        junk,
        entry("", [1.0]),
        entry("labelled", [1.0], **{"bad key": "v"}),
        entry("mixed", clean[200:], 200),  # the same series again, scored in order
    ]
    (response,) = await score_all(anomaly_stub, [request(*entries)])
    out = response.series_scores
    np.testing.assert_array_equal(np.concatenate([out[0].scores, out[4].scores]), reference(clean))
    assert out[2].reject_reason == an.SCORE_REJECT_REASON_INVALID_SERIES
    assert out[3].reject_reason == an.SCORE_REJECT_REASON_INVALID_LABELS
    assert list(out[2].scores) == [0.0] and not out[2].points
    assert response.rejected_count >= 2


async def test_columns_reject_bad_shapes_whole_and_change_no_state(
    start_anomaly: StartAnomaly,
) -> None:
    async with (
        start_anomaly(AIOPS_ANOMALY_MAX_BATCH="100") as running,
        grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel,
    ):
        stub = an_grpc.AnomalyServiceStub(channel)
        values = noise(100, 4)
        short = entry("s", values[:10])
        del short.sample_time_micros[-1]
        mixed = request(entry("s", values[:10]))
        mixed.observations.add(series="s", value=1.0)
        cases = [
            (request(entry("s", values[:60]), entry("t", values[:41])), "BATCH_SIZE_INVALID",
             ["series_batches"]),
            (request(entry("s", values[:10]), short), "SERIES_BATCH_INVALID",
             ["series_batches[1].sample_time_micros"]),
            (request(entry("s", values[:10]), an.SeriesBatch(series="s")),
             "SERIES_BATCH_INVALID", ["series_batches[1].values"]),
            (mixed, "BATCH_FORM_INVALID", ["observations"]),
            (request(entry("s", values[:10]), batch_id="x" * 65), "BATCH_ID_INVALID",
             ["batch_id"]),
        ]  # fmt: skip
        for req, reason, fields in cases:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await score_all(stub, [req])
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert helpers.error_info(err.value).reason == reason
            assert helpers.field_violations(err.value) == fields
        # None of them scored a point: series `s` starts fresh.
        (response,) = await score_all(stub, [request(entry("s", values))])
        np.testing.assert_array_equal(response.series_scores[0].scores, reference(values))


async def test_columns_report_anomalous_points_and_the_event_they_open(
    anomaly_stub: an_grpc.AnomalyServiceStub,
) -> None:
    values = noise(800, 5)
    values[600] += 60.0
    (response,) = await score_all(
        anomaly_stub, [request(entry("latency_p95", values, region="eu"))]
    )
    out = response.series_scores[0]
    scores = np.asarray(out.scores)
    details = {p.index: p for p in out.points}
    assert 600 in out.anomalous_indexes
    assert list(out.anomalous_indexes) == sorted(details)
    assert all(details[i].anomalous and scores[i] >= details[i].threshold for i in details)
    assert not (scores[np.setdiff1d(np.arange(800), out.anomalous_indexes)] >= out.threshold).any()
    name = details[600].anomaly
    assert name in response.opened_anomalies
    assert list(details[600].signals) == sorted(details[600].signals)
    got = (await anomaly_stub.GetAnomaly(an_svc.GetAnomalyRequest(name=name))).anomaly
    assert got.state == an.ANOMALY_STATE_CLOSED
    assert got.peak_value == pytest.approx(values[600])
    assert dict(got.labels) == {"region": "eu"}


async def test_columns_turn_away_series_another_replica_owns(start_anomaly: StartAnomaly) -> None:
    keys = [f"svc_{i}" for i in range(12)]
    ring = sharding.Ring(["a", "b"])
    async with (
        start_anomaly(AIOPS_ANOMALY_REPLICAS="a,b", AIOPS_ANOMALY_REPLICA_SELF="a") as running,
        grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel,
    ):
        stub = an_grpc.AnomalyServiceStub(channel)
        (response,) = await score_all(stub, [request(*(entry(k, noise(5, 1)) for k in keys))])
    for k, out in zip(keys, response.series_scores, strict=True):
        mine = ring.owner(k) == "a"
        assert out.reject_reason == (0 if mine else an.SCORE_REJECT_REASON_NOT_OWNER), k
    assert response.rejected_count == 5 * sum(ring.owner(k) == "b" for k in keys)


async def test_columns_score_the_same_in_worker_processes(start_anomaly: StartAnomaly) -> None:
    values = {k: noise(300, i) for i, k in enumerate(("p", "q", "r"))}
    async with (
        start_anomaly(AIOPS_ANOMALY_SCORING_WORKERS="2") as running,
        grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel,
    ):
        stub = an_grpc.AnomalyServiceStub(channel)
        responses = await score_all(
            stub,
            [request(*(entry(k, v[i : i + 150], i) for k, v in values.items())) for i in (0, 150)],
        )
    for j, (k, v) in enumerate(values.items()):
        got = np.concatenate([r.series_scores[j].scores for r in responses])
        np.testing.assert_array_equal(got, reference(v), err_msg=k)


def _one_by_one(times: list[int], values: list[float], last: float) -> list[int]:
    out = []
    for t, x in zip(times, values, strict=True):
        if t == 0:
            out.append(columns.MISSING_TIME)
        elif not math.isfinite(x):
            out.append(columns.NON_FINITE_VALUE)
        elif t / MICROS <= last:
            out.append(columns.NON_MONOTONIC_TIME)
        else:
            out.append(columns.ACCEPTED)
            last = t / MICROS
    return out


@pytest.mark.parametrize("seed", range(40))
def test_compiled_point_checks_match_checking_one_by_one(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 30))
    times = np.cumsum(rng.integers(-2, 4, n)) * MICROS + (0 if seed % 2 else 5 * MICROS)
    values = rng.choice([1.0, 2.0, math.nan, math.inf], n, p=[0.5, 0.3, 0.1, 0.1])
    last = float(rng.choice([-math.inf, 3.0]))
    reasons, _ = columns.point_reasons(times.astype(np.int64), values, last)
    got = [0] * n if reasons is None else reasons.tolist()
    assert got == _one_by_one(times.tolist(), values.tolist(), last)
