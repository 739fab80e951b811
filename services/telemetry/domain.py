"""Telemetry: series identity, validation of pushed samples and queries, page tokens.

Pure logic. Storage is behind `TelemetryStore`; the collector's arithmetic lives in
`critical.py`.
"""

from __future__ import annotations

import enum
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from services.kit import errors, paging

MAX_METRIC = 200
MAX_LABELS = 16
MAX_LABEL_KEY = 63
MAX_LABEL_VALUE = 256
MAX_KEY = 1024
MAX_UNIT = 32
MAX_BATCH = 10_000
MAX_STREAM = 1_000_000
FUTURE_SECONDS = 300.0
MAX_RANGE_SECONDS = 31 * 86400.0
MAX_STEPS = 11_000
MAX_POINTS = 11_000
MAX_QUERY_SERIES = 100
MAX_PAGE_SIZE = 500

METRIC_RE = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
LABEL_KEY_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_SERIES_ID = re.compile(r"[0-9a-f]{16}")


class SeriesKind(enum.Enum):
    GAUGE = "gauge"
    COUNTER_RATE = "counter_rate"
    CRITICAL = "critical"


class Aggregation(enum.Enum):
    AVG = "avg"
    MIN = "min"
    MAX = "max"
    LAST = "last"


class Reject(enum.Enum):
    """Why a pushed sample was not stored (the proto's PointRejectReason)."""

    INVALID_METRIC = "invalid_metric"
    INVALID_LABELS = "invalid_labels"
    MISSING_TIME = "missing_time"
    TIME_TOO_OLD = "time_too_old"
    TIME_IN_FUTURE = "time_in_future"
    NON_FINITE_VALUE = "non_finite_value"
    DUPLICATE = "duplicate"
    SERIES_LIMIT = "series_limit"
    SERIES_MISMATCH = "series_mismatch"


Ident = tuple[str, tuple[tuple[str, str], ...]]


class Incoming(NamedTuple):
    """One pushed or collected sample; `kind` None means "not set" (a gauge)."""

    metric: str
    labels: Mapping[str, str]
    time: float | None
    value: float
    unit: str = ""
    kind: SeriesKind | None = None


@dataclass(frozen=True, slots=True)
class SeriesSpec:
    """What creating a series needs."""

    id: int
    key: str
    metric: str
    labels: Mapping[str, str]
    unit: str
    kind: SeriesKind
    description: str = ""


@dataclass(frozen=True, slots=True)
class Series:
    id: int
    key: str
    metric: str
    labels: Mapping[str, str]
    unit: str
    kind: SeriesKind
    description: str
    create_time: float
    last_point_time: float | None

    @property
    def name(self) -> str:
        return series_name(self.id)


@dataclass(frozen=True, slots=True)
class Point:
    time: float
    value: float


class Row(NamedTuple):
    """One point ready to store, with what forwarding to anomaly needs (a tuple: there is
    one per ingested point, and tuples are the cheapest immutable record)."""

    series_id: int
    key: str
    labels: Mapping[str, str]
    time: float
    value: float


@dataclass(frozen=True, slots=True)
class WriteResult:
    accepted: int
    rejections: Mapping[Reject, int]
    created_series: int
    rows: Sequence[Row] = ()

    @property
    def rejected(self) -> int:
        return sum(self.rejections.values())


@dataclass(frozen=True, slots=True)
class SeriesFilter:
    metric: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    kind: SeriesKind | None = None

    def fingerprint(self) -> str:
        raw = json.dumps(
            [self.metric, sorted(self.labels.items()), self.kind.value if self.kind else None]
        )
        return hashlib.blake2b(raw.encode(), digest_size=8).hexdigest()


@dataclass(frozen=True, slots=True)
class Query:
    """A validated QuerySeries: series by id or by metric+labels, a range and a step."""

    series_id: int | None
    metric: str
    labels: Mapping[str, str]
    start: float
    end: float
    step: float | None
    aggregation: Aggregation | None


@dataclass(frozen=True, slots=True)
class SeriesPoints:
    series: Series
    points: Sequence[Point]


@dataclass(frozen=True, slots=True)
class SeriesPage:
    items: Sequence[Series]
    next_token: str


class TelemetryStore(Protocol):
    """Where series and points live (PostgreSQL in production)."""

    async def resolve(
        self, specs: Sequence[SeriesSpec], max_series: int
    ) -> tuple[dict[str, Series], int]:
        """The stored series for each spec's key, creating missing ones while the number of
        series stays within `max_series`; also returns how many were created."""
        ...

    async def write_points(self, rows: Sequence[Row]) -> tuple[int, bool]:
        """Stores points, skipping (series, time) pairs already stored; returns how many
        were new, and whether a series of the rows no longer exists (retention removed it
        meanwhile, so cached series must be resolved again)."""
        ...

    async def find_series(self, query: Query, limit: int) -> list[Series]: ...

    async def read_points(self, series: Series, query: Query, limit: int) -> list[Point]: ...

    async def list_series(
        self, flt: SeriesFilter, limit: int, after: str | None
    ) -> list[Series]: ...


# -- identity -------------------------------------------------------------------------------
def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def series_key(metric: str, labels: Mapping[str, str]) -> str:
    """The canonical `metric{k1="v1",k2="v2"}` form, labels sorted by key."""
    if not labels:
        return metric
    inner = ",".join(f'{k}="{_escape(labels[k])}"' for k in sorted(labels))
    return f"{metric}{{{inner}}}"


def series_id(key: str) -> int:
    """A stable signed 64-bit id derived from the key."""
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def series_name(sid: int) -> str:
    return f"series/{sid & 0xFFFFFFFFFFFFFFFF:016x}"


def parse_series_name(name: str, field_name: str = "name") -> int:
    prefix, _, raw = name.partition("/")
    if prefix != "series" or not _SERIES_ID.fullmatch(raw):
        raise errors.invalid(
            [errors.FieldViolation(field_name, "must look like series/{16 hex digits}")],
            "SERIES_NAME_INVALID",
        )
    value = int(raw, 16)
    return value - (1 << 64) if value >= 1 << 63 else value


def check_labels(labels: Mapping[str, str]) -> str | None:
    """Why a label set is invalid, or None."""
    if len(labels) > MAX_LABELS:
        return f"at most {MAX_LABELS} labels"
    for key, value in labels.items():
        if len(key) > MAX_LABEL_KEY or not LABEL_KEY_RE.fullmatch(key) or key.startswith("__"):
            return (
                f"key {key[:MAX_LABEL_KEY]!r} must match [a-zA-Z_][a-zA-Z0-9_]*, not start "
                f"with __ and be at most {MAX_LABEL_KEY} characters"
            )
        if len(value) > MAX_LABEL_VALUE:
            return f"value of {key!r} must be at most {MAX_LABEL_VALUE} characters"
    return None


def metric_ok(metric: str) -> bool:
    return 0 < len(metric) <= MAX_METRIC and METRIC_RE.fullmatch(metric) is not None


# -- queries --------------------------------------------------------------------------------
def _violation(field_name: str, description: str, reason: str) -> errors.InvalidArgument:
    return errors.invalid([errors.FieldViolation(field_name, description)], reason)


def make_query(
    *,
    name: str,
    metric: str,
    labels: Mapping[str, str],
    start: float | None,
    end: float | None,
    step: float | None,
    aggregation: Aggregation | None,
) -> Query:
    """Validates a QuerySeries request; raises InvalidArgument naming every bad field."""
    out: list[errors.FieldViolation] = []
    sid: int | None = None
    if name:
        if metric or labels:
            out.append(errors.FieldViolation("name", "set either name or metric and labels"))
        else:
            sid = parse_series_name(name)
    elif not metric:
        out.append(errors.FieldViolation("metric", "is required (or set name)"))
    elif not metric_ok(metric):
        out.append(errors.FieldViolation("metric", "must match [a-zA-Z_:][a-zA-Z0-9_:]*"))
    problem = check_labels(labels)
    if problem is not None:
        out.append(errors.FieldViolation("labels", problem))
    if start is None or end is None:
        out.append(errors.FieldViolation("time_range", "both start_time and end_time are set"))
    elif end <= start:
        out.append(errors.FieldViolation("time_range", "end_time must be after start_time"))
    elif end - start > MAX_RANGE_SECONDS:
        out.append(errors.FieldViolation("time_range", "must be at most 31 days long"))
    if step is not None:
        if not 1.0 <= step <= 86400.0:
            out.append(errors.FieldViolation("step", "must be from 1 second to 1 day"))
        elif start is not None and end is not None and (end - start) / step > MAX_STEPS:
            out.append(errors.FieldViolation("step", f"at most {MAX_STEPS} steps in the range"))
        if aggregation is None:
            out.append(errors.FieldViolation("aggregation", "is required when step is set"))
    if out:
        raise errors.invalid(out, "QUERY_INVALID")
    assert start is not None and end is not None
    return Query(sid, metric, dict(labels), start, end, step, aggregation if step else None)


class Reader:
    """QuerySeries and ListSeries."""

    def __init__(self, store: TelemetryStore) -> None:
        self._store = store

    async def query(self, query: Query) -> list[SeriesPoints]:
        found = await self._store.find_series(query, MAX_QUERY_SERIES + 1)
        if not found:
            raise errors.NotFound(
                "SERIES_NOT_FOUND",
                "No stored series matches; list series to see the names and labels kept.",
                metadata={"metric": query.metric} if query.metric else {},
            )
        if len(found) > MAX_QUERY_SERIES:
            raise _violation(
                "labels",
                f"the selector matches more than {MAX_QUERY_SERIES} series; add labels",
                "QUERY_TOO_MANY_SERIES",
            )
        out: list[SeriesPoints] = []
        for series in found:
            points = await self._store.read_points(series, query, MAX_POINTS + 1)
            if len(points) > MAX_POINTS:
                raise _violation(
                    "step",
                    f"the range holds more than {MAX_POINTS} points; set a step or narrow it",
                    "QUERY_TOO_MANY_POINTS",
                )
            out.append(SeriesPoints(series, points))
        return out

    async def list(self, flt: SeriesFilter, requested: int, token: str) -> SeriesPage:
        if flt.metric and not metric_ok(flt.metric):
            raise _violation(
                "filter.metric", "must match [a-zA-Z_:][a-zA-Z0-9_:]*", "FILTER_INVALID"
            )
        problem = check_labels(flt.labels)
        if problem is not None:
            raise _violation("filter.labels", problem, "FILTER_INVALID")
        size = page_size(requested)
        cursor = decode_token(token, flt.fingerprint())
        items = await self._store.list_series(flt, size + 1, cursor)
        if len(items) > size:
            items = items[:size]
            return SeriesPage(items, encode_token(items[-1].key, flt.fingerprint()))
        return SeriesPage(items, "")


page_size = paging.page_size


def encode_token(cursor: str, fingerprint: str) -> str:
    return paging.encode_token(cursor, fingerprint)


def decode_token(token: str, fingerprint: str) -> str | None:
    cursor = paging.decode_token(token, fingerprint)
    if cursor is not None and not isinstance(cursor, str):
        raise paging.invalid_token()
    return cursor
