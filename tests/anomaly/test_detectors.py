"""Synchronous tests of the streaming detector and the drift test (fixed seeds)."""

from __future__ import annotations

import json
import math
import pathlib
from collections.abc import Callable

import numpy as np
import pytest

from services.anomaly import detectors, kernel, offline

STEP = 300.0
T0 = 1_372_896_000.0  # 2013-07-04 00:00:00 UTC
# Scores at or above this are alarms; one threshold for every series (a tail probability
# of 1e-3; the NAB-optimal threshold is about 0.996).
THRESHOLD = 0.999


def _times(n: int) -> np.ndarray:
    return T0 + STEP * np.arange(n, dtype=np.float64)


def _noise(n: int, seed: int) -> np.ndarray:
    return 50.0 + np.random.default_rng(seed).normal(0.0, 1.0, n)


def _daily(n: int, seed: int) -> np.ndarray:
    t = _times(n)
    rng = np.random.default_rng(seed)
    return 50.0 + 10.0 * np.sin(2 * math.pi * t / 86400.0) + rng.normal(0.0, 1.0, n)


def _daily_job(n: int, seed: int) -> tuple[np.ndarray, list[int]]:
    # Noise with a spike from a daily job at about 03:00 (+-15 minutes); returns the rows.
    x = _noise(n, seed)
    day = int(86400 / STEP)
    jitter = np.random.default_rng(seed + 1).integers(-3, 4, n // day + 1)
    rows = [d * day + 36 + int(jitter[d]) for d in range(n // day) if d * day + 39 < n]
    x[rows] += 15.0
    return x, rows


def _streamed(x: np.ndarray, t: np.ndarray | None = None) -> list[detectors.Score]:
    det = detectors.SeriesDetector()
    tt = _times(x.size) if t is None else t
    return [det.score(a, b) for a, b in zip(tt.tolist(), x.tolist(), strict=True)]


@pytest.mark.parametrize("make", [_noise, _daily])
@pytest.mark.parametrize("seed", [1, 2])
def test_score_batch_equals_streaming(make: Callable[[int, int], np.ndarray], seed: int) -> None:
    x = make(3000, seed)
    x[1500] += 30.0
    x[2000:] += 8.0
    streamed = np.array([s.value for s in _streamed(x)])
    batched = detectors.SeriesDetector().score_batch(_times(x.size), x)
    np.testing.assert_array_equal(batched, streamed)


def test_score_batch_in_chunks_equals_one_batch() -> None:
    x = _daily(2500, 3)
    t = _times(x.size)
    whole = detectors.SeriesDetector().score_batch(t, x)
    det = detectors.SeriesDetector()
    parts = [det.score_batch(t[a : a + 333], x[a : a + 333]) for a in range(0, x.size, 333)]
    np.testing.assert_array_equal(np.concatenate(parts), whole)


def test_compiled_loop_equals_plain_python() -> None:
    # numba must not change the arithmetic: the same loop run as Python gives the same bits.
    x = _daily(1500, 7)
    x[700] += 40.0
    x[1000:] -= 9.0
    t = _times(x.size)
    compiled = detectors.SeriesDetector()
    plain = detectors.SeriesDetector()
    out_c, flags_c = compiled.score_arrays(t, x)
    out_p, flags_p = np.empty(x.size), np.empty(x.size, dtype=np.int64)
    kernel.run.py_func(plain._consts, plain._st, t, x, out_p, flags_p)
    np.testing.assert_array_equal(out_p, out_c)
    np.testing.assert_array_equal(flags_p, flags_c)
    assert (flags_c != 0).any()


def test_checkpoint_round_trip_continues_identically() -> None:
    x = _daily(3000, 4)
    x[2200] -= 25.0
    t = _times(x.size)
    reference = detectors.SeriesDetector().score_batch(t, x)
    det = detectors.SeriesDetector()
    first = det.score_batch(t[:1700], x[:1700])
    state = json.loads(json.dumps(det.to_state()))
    restored = detectors.SeriesDetector.from_state(state)
    rest = restored.score_batch(t[1700:], x[1700:])
    np.testing.assert_array_equal(np.concatenate([first, rest]), reference)


def test_pattern_memory_is_compiled_as_plain_python_and_checkpointed() -> None:
    x, _ = _daily_job(3000, 40)
    t = _times(x.size)
    reference = detectors.SeriesDetector().score_batch(t, x)
    out_p, flags_p = np.empty(x.size), np.empty(x.size, dtype=np.int64)
    plain = detectors.SeriesDetector()
    kernel.run.py_func(plain._consts, plain._st, t, x, out_p, flags_p)
    np.testing.assert_array_equal(out_p, reference)
    det = detectors.SeriesDetector()
    first = det.score_batch(t[:2000], x[:2000])
    state = json.loads(json.dumps(det.to_state()))
    assert any(v > 0.0 for v in state["pattern"][kernel.PM_REC_UP])
    rest = detectors.SeriesDetector.from_state(state).score_batch(t[2000:], x[2000:])
    np.testing.assert_array_equal(np.concatenate([first, rest]), reference)


def test_checkpoint_without_pattern_memory_still_loads() -> None:
    # States saved before the pattern memory existed continue with an empty one.
    x = _daily(600, 41)
    det = detectors.SeriesDetector()
    det.score_batch(_times(600), x)
    state = det.to_state()
    del state["pattern"]
    restored = detectors.SeriesDetector.from_state(state)
    assert restored.count == 600
    assert restored.score(T0 + 600 * STEP, 50.0).value >= 0.0


def test_checkpoint_of_fresh_detector_round_trips() -> None:
    state = json.loads(json.dumps(detectors.SeriesDetector().to_state()))
    det = detectors.SeriesDetector.from_state(state)
    assert det.score(T0, 1.0).value == detectors.SeriesDetector().score(T0, 1.0).value


def test_from_state_rejects_unknown_version() -> None:
    state = detectors.SeriesDetector().to_state()
    state["version"] = 999
    with pytest.raises(ValueError):
        detectors.SeriesDetector.from_state(state)


def test_scores_are_causal() -> None:
    x = _daily(3000, 5)
    x[2500:] += 20.0
    t = _times(x.size)
    full = detectors.SeriesDetector().score_batch(t, x)
    prefix = detectors.SeriesDetector().score_batch(t[:1800], x[:1800])
    np.testing.assert_array_equal(prefix, full[:1800])


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_score_rejects_non_finite_value_without_changing_state(bad: float) -> None:
    det = detectors.SeriesDetector()
    det.score_batch(_times(100), _noise(100, 6))
    before = det.to_state()
    with pytest.raises(ValueError):
        det.score(T0 + 100 * STEP, bad)
    with pytest.raises(ValueError):
        det.score(bad, 1.0)
    assert det.to_state() == before


def test_score_batch_rejects_non_finite_without_changing_state() -> None:
    det = detectors.SeriesDetector()
    x = _noise(50, 7)
    x[20] = math.nan
    before = det.to_state()
    with pytest.raises(ValueError):
        det.score_batch(_times(50), x)
    assert det.to_state() == before


def test_score_rejects_timestamp_going_back() -> None:
    det = detectors.SeriesDetector()
    det.score(T0 + 10.0, 1.0)
    before = det.to_state()
    with pytest.raises(ValueError):
        det.score(T0, 1.0)
    assert det.to_state() == before
    t = _times(10)
    t[5] = t[2]
    with pytest.raises(ValueError):
        detectors.SeriesDetector().score_batch(t, _noise(10, 8))


def test_scores_are_in_unit_interval() -> None:
    x = _noise(2000, 9)
    x[::97] *= 40.0
    s = detectors.SeriesDetector().score_batch(_times(x.size), x)
    assert np.all((s >= 0.0) & (s <= 1.0))


@pytest.mark.parametrize("seed", [10, 11, 12])
def test_spike_scores_high_on_its_point(seed: int) -> None:
    x = _noise(2000, seed)
    x[1500] += 15.0
    scores = _streamed(x)
    assert scores[1500].value >= THRESHOLD
    assert "spike" in scores[1500].signals
    assert max(s.value for s in scores[1400:1500]) < THRESHOLD


@pytest.mark.parametrize("seed", [13, 14, 15])
def test_level_shift_fires_at_start_then_quiets(seed: int) -> None:
    x = _noise(3000, seed)
    x[2000:] += 10.0
    s = detectors.SeriesDetector().score_batch(_times(x.size), x)
    assert s[2000] >= THRESHOLD
    # A few more alarms while the new level sets new records, then quiet: not one per row.
    assert int(np.sum(s[2000:2010] >= THRESHOLD)) <= 4
    assert int(np.sum(s[2010:] >= THRESHOLD)) <= 2


@pytest.mark.parametrize("seed", [30, 31, 32])
def test_small_sustained_shift_is_named_level_shift(seed: int) -> None:
    x = _noise(3000, seed)
    x[2000:] += 2.5  # too small for any single point to stand out
    scores = _streamed(x)
    assert any("level_shift" in s.signals for s in scores[2000:2050])
    assert max(s.value for s in scores[2000:2050]) >= THRESHOLD


def test_recurring_daily_spike_becomes_ordinary_at_its_phase() -> None:
    x, rows = _daily_job(4000, 42)
    other = rows[-2] + 144  # the same spike at 15:00
    x[other] += 15.0
    big = rows[-1]  # the daily job's spike, three times its usual size
    x[big] += 30.0
    s = detectors.SeriesDetector().score_batch(_times(x.size), x)
    assert s[rows[1]] >= THRESHOLD  # new on the second day
    # From the fourth day (after three in a row) the job's spike is no evidence ...
    assert all(s[r] < THRESHOLD for r in rows[3:-1])
    # ... but the same spike at another time of day is, and so is a far larger one.
    assert s[other] >= THRESHOLD
    assert s[big] >= THRESHOLD


def test_new_extreme_is_named() -> None:
    x = _noise(2000, 33)
    x[1800] = x[:1800].max() + 5.0
    assert "new_extreme" in _streamed(x)[1800].signals


@pytest.mark.parametrize(
    "bad",
    [
        {"alpha_level": 0.0},
        {"alpha_slow": 1.5},
        {"refractory": 1.0},
        {"memory": 10.0},
        {"alarm_p": 0.0},
        {"season_bins": 0},
        {"warmup": 0},
        {"extreme_k": 1},
        {"extreme_factor": 0.5},
        {"pattern_jitter": -1.0},
        {"pattern_decay": 1.0},
        {"pattern_factor": -0.5},
    ],
)
def test_config_rejects_invalid_values(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        detectors.DetectorConfig(**bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("make", [_noise, _daily])
@pytest.mark.parametrize("seed", [16, 17, 18])
def test_stationary_series_stays_below_threshold(
    make: Callable[[int, int], np.ndarray], seed: int
) -> None:
    x = make(4000, seed)
    s = detectors.SeriesDetector().score_batch(_times(x.size), x)
    # Past warm-up at most a handful of alarm rows in 3000+ points of pure noise.
    assert int(np.sum(s[500:] >= THRESHOLD)) <= 3


def test_seasonal_pattern_break_is_detected() -> None:
    x = _daily(4000, 19)
    t = _times(x.size)
    # One afternoon the daily swing does not happen.
    day = int(86400 / STEP)
    start = 12 * day + day // 4
    x[start : start + day // 4] = 50.0 + np.random.default_rng(20).normal(0, 1, day // 4)
    s = detectors.SeriesDetector().score_batch(t, x)
    assert s[start : start + day // 4].max() >= THRESHOLD


def test_offline_writes_one_score_per_row(tmp_path: pathlib.Path) -> None:
    d = tmp_path
    x = _noise(300, 21)
    rows = ["timestamp,value"]
    for i, v in enumerate(x.tolist()):
        hh, mm = divmod(i * 5, 60)
        rows.append(f"2013-07-{4 + hh // 24:02d} {hh % 24:02d}:{mm:02d}:00,{v!r}")
    (d / "in.csv").write_text("\n".join(rows) + "\n")
    assert offline.main(["detect", str(d / "in.csv"), str(d / "out.csv")]) == 0
    lines = (d / "out.csv").read_text().splitlines()
    assert lines[0] == "anomaly_score"
    got = np.array([float(v) for v in lines[1:]])
    want = detectors.SeriesDetector().score_batch(_times(x.size), x)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("shift", [0.5, 1.0])
def test_drift_found_on_shifted_distribution(shift: float) -> None:
    rng = np.random.default_rng(22)
    res = detectors.drift_test(rng.normal(0, 1, 500), rng.normal(shift, 1, 500))
    assert res.drifted
    assert res.pvalue <= 0.01
    assert res.ks_pvalue < 0.01


def test_drift_found_on_variance_change() -> None:
    rng = np.random.default_rng(23)
    assert detectors.drift_test(rng.normal(0, 1, 1000), rng.normal(0, 2.5, 1000)).drifted


def test_drift_false_positive_rate_is_controlled() -> None:
    alarms = 0
    for seed in range(200):
        rng = np.random.default_rng(1000 + seed)
        res = detectors.drift_test(rng.normal(0, 1, 300), rng.normal(0, 1, 300))
        alarms += res.drifted
        assert 0.0 <= res.pvalue <= 1.0
    # alpha = 0.01 family-wise: expect about 2 of 200; 6 or more has probability < 2 %.
    assert alarms <= 5


def test_drift_test_handles_constant_samples() -> None:
    res = detectors.drift_test(np.ones(50), np.ones(60))
    assert not res.drifted


@pytest.mark.parametrize(
    ("reference", "current"),
    [(np.array([1.0]), np.ones(10)), (np.ones(10), np.array([1.0, math.nan]))],
)
def test_drift_test_rejects_bad_input(reference: np.ndarray, current: np.ndarray) -> None:
    with pytest.raises(ValueError):
        detectors.drift_test(reference, current)
