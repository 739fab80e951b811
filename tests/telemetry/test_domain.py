"""Pure logic: series identity, sample validation, queries, histogram quantiles and
reset-safe counter increases."""

from __future__ import annotations

import math

import pytest

from services.kit import errors
from services.telemetry import critical, domain, ingest

NOW = 1_800_000_000.0


def test_series_key_is_canonical_and_the_id_round_trips_through_the_name() -> None:
    key = domain.series_key("http_requests", {"b": "2", "a": 'say "hi"'})
    assert key == 'http_requests{a="say \\"hi\\"",b="2"}'
    assert domain.series_key("up", {}) == "up"
    sid = domain.series_id(key)
    assert domain.parse_series_name(domain.series_name(sid)) == sid


@pytest.mark.parametrize("name", ["series/xyz", "feedback/0123456789abcdef", "series/", ""])
def test_parse_series_name_rejects_malformed_names(name: str) -> None:
    with pytest.raises(errors.InvalidArgument) as exc:
        domain.parse_series_name(name)
    assert exc.value.reason == "SERIES_NAME_INVALID"


class _NoStore:
    async def resolve(self, specs: object, max_series: int) -> tuple[dict[str, object], int]:
        raise AssertionError("no valid sample should reach the store")

    async def write_points(self, rows: object) -> tuple[int, bool]:
        raise AssertionError("no valid sample should reach the store")


@pytest.mark.parametrize(
    ("sample", "reason"),
    [
        (domain.Incoming("", {}, NOW, 1.0), domain.Reject.INVALID_METRIC),
        (domain.Incoming("9bad", {}, NOW, 1.0), domain.Reject.INVALID_METRIC),
        (domain.Incoming("m" * 201, {}, NOW, 1.0), domain.Reject.INVALID_METRIC),
        (
            domain.Incoming("m", {f"k{i}": "v" for i in range(17)}, NOW, 1.0),
            domain.Reject.INVALID_LABELS,
        ),
        (domain.Incoming("m", {"__name__": "x"}, NOW, 1.0), domain.Reject.INVALID_LABELS),
        (domain.Incoming("m", {"k": "v" * 257}, NOW, 1.0), domain.Reject.INVALID_LABELS),
        (
            domain.Incoming("m", {f"k{i}": "v" * 250 for i in range(5)}, NOW, 1.0),
            domain.Reject.INVALID_LABELS,
        ),  # the key would exceed 1,024 characters
        (domain.Incoming("m", {}, None, 1.0), domain.Reject.MISSING_TIME),
        (domain.Incoming("m", {}, NOW - 31 * 86400, 1.0), domain.Reject.TIME_TOO_OLD),
        (domain.Incoming("m", {}, NOW + 301, 1.0), domain.Reject.TIME_IN_FUTURE),
        (domain.Incoming("m", {}, NOW, math.nan), domain.Reject.NON_FINITE_VALUE),
        (domain.Incoming("m", {}, NOW, math.inf), domain.Reject.NON_FINITE_VALUE),
        (domain.Incoming("m", {}, NOW, -math.inf), domain.Reject.NON_FINITE_VALUE),
        (domain.Incoming("m", {}, NOW, 1.0, "u" * 33), domain.Reject.INVALID_METRIC),
        (
            domain.Incoming("m", {}, NOW, 1.0, "", domain.SeriesKind.CRITICAL),
            domain.Reject.SERIES_MISMATCH,
        ),
    ],
)
async def test_invalid_samples_are_counted_under_their_reason(
    sample: domain.Incoming, reason: domain.Reject
) -> None:
    ing = ingest.Ingestor(_NoStore(), 30 * 86400, 100, clock=lambda: NOW)  # type: ignore[arg-type]
    result = await ing.write([sample])
    assert result.accepted == 0
    assert result.rejections == {reason: 1}


def _query(**overrides: object) -> domain.Query:
    base: dict[str, object] = {
        "name": "",
        "metric": "m",
        "labels": {},
        "start": NOW - 3600,
        "end": NOW,
        "step": None,
        "aggregation": None,
    }
    base.update(overrides)
    return domain.make_query(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"metric": ""}, "metric"),
        ({"start": None}, "time_range"),
        ({"end": NOW - 7200}, "time_range"),
        ({"start": NOW - 32 * 86400}, "time_range"),
        ({"step": 0.5, "aggregation": domain.Aggregation.AVG}, "step"),
        ({"step": 60.0}, "aggregation"),
        ({"start": NOW - 30 * 86400, "step": 60.0, "aggregation": domain.Aggregation.AVG}, "step"),
        ({"name": "series/0123456789abcdef"}, "name"),
    ],
)
def test_make_query_names_the_field_at_fault(overrides: dict[str, object], field: str) -> None:
    with pytest.raises(errors.InvalidArgument) as exc:
        _query(**overrides)
    assert field in [v.field for v in exc.value.violations]


def test_histogram_quantile_interpolates_inside_the_bucket() -> None:
    # 100 observations: 50 <= 0.1 s, 40 in (0.1, 0.2], 10 in (0.2, 0.4].
    buckets = {0.1: 50.0, 0.2: 90.0, 0.4: 100.0, math.inf: 100.0}
    # rank 95 falls in (0.2, 0.4]: 0.2 + 0.2 * (95 - 90) / 10 = 0.3
    assert critical.histogram_quantile(0.95, buckets) == pytest.approx(0.3)
    assert critical.histogram_quantile(0.5, buckets) == pytest.approx(0.1)
    assert critical.histogram_quantile(0.95, {0.1: 0.0, math.inf: 0.0}) is None
    # Everything above the last finite bound: the highest finite bound, as Prometheus does.
    assert critical.histogram_quantile(0.95, {0.1: 0.0, math.inf: 10.0}) == 0.1


def _scrape(t: float, value: float) -> critical.Scrape:
    return critical.Scrape(t, {("c_total", ()): value}, frozenset({"c"}))


def test_counter_increase_survives_a_reset_without_going_negative() -> None:
    scrapes = [_scrape(0, 100), _scrape(15, 130), _scrape(30, 5), _scrape(45, 25)]
    inc = critical.increases(scrapes, lambda k: True)
    # 30 before the reset, then 5 from zero, then 20.
    assert inc == {("c_total", ()): 55.0}
    assert all(v >= 0 for v in inc.values())


def test_dense_rounds_keep_a_bounded_history_and_exact_increases() -> None:
    history = critical.History(300.0)
    view = history
    # A caller asking for a round every 0.1 s for 100 s; the counter rises by 1 each time.
    for i in range(1000):
        view = history.add(i * 0.1, _scrape(i * 0.1, float(i)), min_spacing=7.5)
    assert len(history.scrapes) <= 100 / 7.5 + 1
    assert view.scrapes[-1].time == pytest.approx(99.9)  # the latest round still counts
    assert len(view.attempts) == 1000
    # The increase over the kept scrapes plus the latest is the same as over every one.
    assert critical.increases(list(view.scrapes), lambda k: True) == {("c_total", ()): 999.0}
    # Rounds as far apart as the spacing are all kept.
    spaced = critical.History(300.0)
    for i in range(10):
        assert spaced.add(i * 15.0, _scrape(i * 15.0, float(i)), min_spacing=7.5) is spaced
    assert len(spaced.scrapes) == 10
