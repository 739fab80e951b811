"""Anomaly events, thresholds and drift states: values, validation, page tokens and what
the service needs from storage (`AnomalyStore`) and its peers.

Pure logic; no grpc, asyncpg or generated code.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from services.kit import errors, ids, paging

MAX_SERIES_KEY = 1024
MAX_LABELS = 16
MAX_LABEL_KEY = 63
MAX_LABEL_VALUE = 256
MAX_COMMENT = 2000
MAX_REASON = 500
MAX_PAGE_SIZE = 500
DETECTOR = "ensemble"

_LABEL_KEY = re.compile(r"[a-zA-Z_][a-zA-Z0-9_.\-]*")
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")


def check_text_filter(field_name: str, text: str) -> None:
    """Refuses a text filter that cannot match a stored key: longer than MAX_SERIES_KEY or
    with a control character (a NUL cannot even be sent to Postgres as text)."""
    if len(text) > MAX_SERIES_KEY:
        raise errors.invalid(
            [errors.FieldViolation(field_name, "must be at most 1024 characters")],
            "FILTER_INVALID",
        )
    if _CONTROL_CHARS.search(text):
        raise errors.invalid(
            [errors.FieldViolation(field_name, "must be printable text")], "FILTER_INVALID"
        )


def series_key_ok(key: str) -> bool:
    """A series key that can be stored: 1 to MAX_SERIES_KEY characters, none a control
    character (a NUL cannot be stored as Postgres text; found by tests/fuzz)."""
    return 0 < len(key) <= MAX_SERIES_KEY and _CONTROL_CHARS.search(key) is None


class State(enum.Enum):
    OPEN = "open"
    ACKNOWLEDGED = "acknowledged"
    CLOSED = "closed"


class Severity(enum.IntEnum):
    INFO = 1
    WARNING = 2
    CRITICAL = 3


class Reject(enum.Enum):
    """Why an observation was not scored (mirrors ScoreRejectReason)."""

    INVALID_SERIES = "invalid_series"
    MISSING_TIME = "missing_time"
    NON_FINITE_VALUE = "non_finite_value"
    NON_MONOTONIC_TIME = "non_monotonic_time"
    SERIES_LIMIT = "series_limit"
    INVALID_LABELS = "invalid_labels"
    NOT_OWNER = "not_owner"


@dataclass(frozen=True, slots=True)
class Anomaly:
    """One anomaly event. Times are epoch seconds; `end_time` is None while it lasts."""

    id: str
    series: str
    labels: Mapping[str, str]
    state: State
    severity: Severity
    start_time: float
    end_time: float | None
    peak_score: float
    peak_time: float
    peak_value: float
    signals: tuple[str, ...]
    explanation: str
    signature: str
    detector: str
    threshold: float
    create_time: float
    update_time: float
    acknowledger: str = ""
    acknowledge_comment: str = ""
    acknowledge_time: float | None = None

    @property
    def name(self) -> str:
        return f"anomalies/{self.id}"


@dataclass(frozen=True, slots=True)
class AnomalyFilter:
    """Selects anomalies; empty values match everything. Times are epoch seconds."""

    series: str = ""
    state: State | None = None
    min_severity: Severity | None = None
    start_after: float | None = None
    start_before: float | None = None
    detector: str = ""

    def fingerprint(self) -> str:
        raw = json.dumps(
            [
                self.series,
                self.state.value if self.state else None,
                int(self.min_severity) if self.min_severity else None,
                self.start_after,
                self.start_before,
                self.detector,
            ]
        )
        return hashlib.blake2b(raw.encode(), digest_size=8).hexdigest()


@dataclass(frozen=True, slots=True)
class Page:
    items: Sequence[Any]
    next_token: str


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """What a replica needs to resume a series: its detector state and event tracking."""

    series: str
    detector_state: Mapping[str, Any]
    last_time: float
    last_value: float
    labels: Mapping[str, str]
    open_anomaly: str  # id of the open event, or ""
    normal_run: int
    last_anomalous_time: float
    recent: Sequence[float] = field(default_factory=tuple)
    recent_times: Sequence[float] = field(default_factory=tuple)


class AnomalyStore(Protocol):
    """Durable anomaly events and detector checkpoints (PostgreSQL)."""

    async def upsert_anomalies(self, items: Sequence[Anomaly]) -> None:
        """Inserts or updates events; keeps acknowledgement fields and ACKNOWLEDGED state
        unless the update closes the event."""
        ...

    async def get_anomaly(self, anomaly_id: str) -> Anomaly | None: ...

    async def list_anomalies(
        self, flt: AnomalyFilter, limit: int, after: tuple[float, str] | None
    ) -> tuple[list[Anomaly], tuple[float, str] | None]: ...

    async def acknowledge(
        self, anomaly_id: str, who: str, comment: str, now: float
    ) -> Anomaly | None: ...

    async def save_checkpoints(self, items: Sequence[Checkpoint]) -> None: ...

    async def load_checkpoints(self, series: Sequence[str]) -> list[Checkpoint]: ...


class Suggester(Protocol):
    """Hands a new anomaly to the remediation service; never blocks, never raises."""

    def submit(self, anomaly: Anomaly) -> None: ...


def series_id(series: str) -> str:
    """An opaque, URL-safe id derived from a series key (and optionally more parts)."""
    return base64.urlsafe_b64encode(series.encode()).decode().rstrip("=")


def parse_anomaly_name(name: str, field_name: str = "name") -> str:
    prefix, _, aid = name.partition("/")
    if prefix != "anomalies" or not ids.valid(aid):
        raise errors.invalid(
            [errors.FieldViolation(field_name, "must look like anomalies/{26-character id}")],
            "ANOMALY_NAME_INVALID",
        )
    return aid


def anomaly_not_found(name: str) -> errors.NotFound:
    return errors.NotFound(
        "ANOMALY_NOT_FOUND",
        "No anomaly has that name; list anomalies to find it.",
        metadata={"name": name},
    )


def labels_valid(labels: Mapping[str, str]) -> bool:
    if len(labels) > MAX_LABELS:
        return False
    return all(
        len(k) <= MAX_LABEL_KEY and _LABEL_KEY.fullmatch(k) and len(v) <= MAX_LABEL_VALUE
        for k, v in labels.items()
    )


def encode_token(cursor: Sequence[Any], fingerprint: str) -> str:
    return paging.encode_token(list(cursor), fingerprint)


def decode_token(token: str, fingerprint: str, field_name: str = "page_token") -> list[Any] | None:
    """The keyset cursor (a JSON list) inside a page token."""
    cursor = paging.decode_token(token, fingerprint, field_name)
    if cursor is not None and not isinstance(cursor, list):
        raise paging.invalid_token(field_name)
    return cursor


def severity_for(score: float, threshold: float) -> Severity:
    """CRITICAL when the tail probability is 100 times below the threshold's, WARNING at 10."""
    p, p_thr = 1.0 - score, max(1.0 - threshold, 1e-15)
    if p <= p_thr / 100.0:
        return Severity.CRITICAL
    if p <= p_thr / 10.0:
        return Severity.WARNING
    return Severity.INFO


def metric_of(series: str) -> str:
    """The metric part of a series key (`latency_p95{route="/x"}` -> `latency_p95`)."""
    head = series.split("{", 1)[0].strip()
    return re.sub(r"[^a-zA-Z0-9_.\-]", "_", head)[:100] or "series"


def alarm_kind(value: float, before: float, signals: Sequence[str], depth: int = 0) -> str:
    """`{direction}:{kind}`: which way the value moved and which signals fired (`score`
    when none did on its own), e.g. `up:rare_value+spike`; with `depth` > 0 only the first
    `depth` signal names (sorted) count, a coarser kind that shares lessons more widely."""
    direction = "up" if value >= before else "down"
    names = signals[:depth] if depth > 0 else signals
    return f"{direction}:{'+'.join(names) if names else 'score'}"


def explain(
    series: str, value: float, before: float, signals: Sequence[str], score: float, thr: float
) -> str:
    direction = "rose" if value >= before else "fell"
    fired = ", ".join(signals) if signals else "combined tail probability"
    return (
        f"{metric_of(series)} {direction} to {value:.6g} (previous {before:.6g}); "
        f"signals: {fired}. Score {score:.6f} crossed threshold {thr:.4f}."
    )


class AnomalyBook:
    """Reads and acknowledgement of stored anomalies."""

    def __init__(self, store: AnomalyStore, clock: Callable[[], float]) -> None:
        self._store = store
        self._clock = clock

    async def get(self, name: str) -> Anomaly:
        item = await self._store.get_anomaly(parse_anomaly_name(name))
        if item is None:
            raise anomaly_not_found(name)
        return item

    async def list(self, flt: AnomalyFilter, requested: int, token: str) -> Page:
        check_text_filter("filter.series", flt.series)
        check_text_filter("filter.detector", flt.detector)
        if (
            flt.start_after is not None
            and flt.start_before is not None
            and flt.start_before <= flt.start_after
        ):
            raise errors.invalid(
                [errors.FieldViolation("filter.start_time_range", "end must be after start")],
                "FILTER_INVALID",
            )
        size = paging.page_size(requested)
        fp = flt.fingerprint()
        raw = decode_token(token, fp)
        after: tuple[float, str] | None = None
        if raw is not None:
            if len(raw) != 2 or not isinstance(raw[0], (int, float)) or not isinstance(raw[1], str):
                raise errors.invalid(
                    [errors.FieldViolation("page_token", "is not a token this listing returned")],
                    "PAGE_TOKEN_INVALID",
                )
            after = (float(raw[0]), raw[1])
        items, cursor = await self._store.list_anomalies(flt, size, after)
        return Page(items, encode_token(cursor, fp) if cursor else "")

    async def acknowledge(self, name: str, who: str, comment: str) -> Anomaly:
        aid = parse_anomaly_name(name)
        if len(comment) > MAX_COMMENT:
            raise errors.invalid(
                [errors.FieldViolation("comment", f"must be at most {MAX_COMMENT} characters")],
                "COMMENT_INVALID",
            )
        current = await self._store.get_anomaly(aid)
        if current is None:
            raise anomaly_not_found(name)
        if current.state is State.ACKNOWLEDGED:
            return current
        if current.state is State.CLOSED:
            raise errors.FailedPrecondition(
                "ANOMALY_CLOSED",
                "The anomaly is already closed; only open anomalies can be acknowledged.",
                metadata={"name": name},
            )
        updated = await self._store.acknowledge(aid, who, comment, self._clock())
        if updated is None:
            raise anomaly_not_found(name)
        if updated.state is State.CLOSED:
            raise errors.FailedPrecondition(
                "ANOMALY_CLOSED",
                "The anomaly is already closed; only open anomalies can be acknowledged.",
                metadata={"name": name},
            )
        return updated
