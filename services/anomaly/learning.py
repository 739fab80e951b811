"""Thresholds that learn from feedback: per (series, detector), a learned offset moved by
operator verdicts in bounded, shrinking steps and decaying back to zero over time.

The offset is in decades of tail probability: the effective threshold is
`1 - (1 - base) * 10 ** -offset`, clamped, so +1 makes an alarm ten times rarer on that
series and -1 ten times more frequent, whatever the base. Offsets are kept per kind of
alarm (`{direction}:{signals}`): the same series often has a recurring harmless pattern and
rare real incidents that look different. A false positive moves the offset a fraction
`step` of the way to `+bound`, a confirmation a fraction `confirm_step` of the way to
`-bound`: steps shrink near the bounds and the offset can never leave them. Every change is
audited with its old and new value, so a reset can undo it.

Pure logic; storage is behind `ThresholdStore`.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from services.anomaly import domain
from services.kit import errors, paging


class Verdict(enum.Enum):
    CONFIRMED = "confirmed"
    FALSE_POSITIVE = "false_positive"
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class Lesson:
    """One feedback as the learning loop sees it."""

    name: str
    verdict: Verdict
    about_anomaly: bool  # an anomaly or an alert (others never move thresholds)
    series: str
    detector: str
    target_id: str
    create_time: float
    signature: str = ""  # `{direction}:{kind}`, empty when unknown


@dataclass(frozen=True, slots=True)
class Row:
    """A stored offset, as of `update_time` (decay is applied on read)."""

    series: str
    detector: str
    learned_offset: float
    confirmed_count: int
    false_positive_count: int
    update_time: float
    signature: str = ""

    @property
    def key(self) -> Key:
        return (self.series, self.detector, self.signature)


@dataclass(frozen=True, slots=True)
class Threshold:
    series: str
    detector: str
    base: float
    learned_offset: float
    effective: float
    confirmed_count: int
    false_positive_count: int
    update_time: float
    signature: str = ""

    @property
    def name(self) -> str:
        return f"thresholds/{threshold_id(self.series, self.detector, self.signature)}"


@dataclass(frozen=True, slots=True)
class Change:
    """One audited change of an offset."""

    series: str
    detector: str
    old_offset: float
    new_offset: float
    cause: str  # "false_positive", "confirmed" or "reset"
    feedback: str
    actor: str
    reason: str
    at: float
    signature: str = ""


@dataclass(frozen=True, slots=True)
class Applied:
    applied: int
    duplicates: int
    ignored: int
    thresholds: list[Threshold]


Key = tuple[str, str, str]  # series, detector, signature


def alarm_kind(signature: str) -> str:
    """The `{direction}:{kind}` tail of an anomaly signature `{metric}:{direction}:{kind}`."""
    parts = signature.rsplit(":", 2)
    return ":".join(parts[-2:]) if len(parts) == 3 else ""


def threshold_id(series: str, detector: str, signature: str = "") -> str:
    raw = f"{series}\x1f{detector}\x1f{signature}".encode()
    return hashlib.blake2b(raw, digest_size=12).hexdigest()


class ThresholdStore(Protocol):
    async def load(self) -> list[Row]: ...

    async def apply(
        self, lessons: Sequence[Lesson], update: Callable[[Row | None, Lesson], Row]
    ) -> tuple[list[Row], list[Change], int]:
        """In one transaction: skips lessons whose name was applied before (counted and
        returned third), updates each row with `update`, records every change."""
        ...

    async def reset(self, key: Key, row: Callable[[Row], Row], actor: str, reason: str,
                    now: float) -> Row | None: ...  # fmt: skip

    async def lookup_series(self, anomaly_ids: Sequence[str]) -> Mapping[str, tuple[str, str, str]]:
        """(series, detector, signature) of stored anomalies by id."""
        ...


@dataclass(frozen=True, slots=True)
class Policy:
    base: float
    low: float
    high: float
    bound: float
    step: float
    half_life_seconds: float
    confirm_step: float | None = None  # None: the same as `step`

    def decayed(self, row: Row, now: float) -> float:
        age = max(0.0, now - row.update_time)
        return float(row.learned_offset * 0.5 ** (age / self.half_life_seconds))

    def effective(self, offset: float) -> float:
        value = 1.0 - (1.0 - self.base) * float(10.0 ** (-offset))
        return min(self.high, max(self.low, value))

    def learn(self, row: Row | None, lesson: Lesson, now: float) -> Row:
        current = (
            row
            if row is not None
            else Row(
                lesson.series, lesson.detector or domain.DETECTOR, 0.0, 0, 0, now, lesson.signature
            )
        )
        off = self.decayed(current, now)
        if lesson.verdict is Verdict.FALSE_POSITIVE:
            off += self.step * (self.bound - off)
            current = replace(current, false_positive_count=current.false_positive_count + 1)
        else:
            down = self.step if self.confirm_step is None else self.confirm_step
            off += down * (-self.bound - off)
            current = replace(current, confirmed_count=current.confirmed_count + 1)
        off = min(self.bound, max(-self.bound, off))
        return replace(current, learned_offset=off, update_time=now)

    def view(self, row: Row, now: float) -> Threshold:
        off = self.decayed(row, now)
        return Threshold(
            row.series,
            row.detector,
            self.base,
            off,
            self.effective(off),
            row.confirmed_count,
            row.false_positive_count,
            row.update_time,
            row.signature,
        )


class Thresholds:
    """The learned thresholds of every series, cached in memory for scoring.

    Offsets are kept per (series, detector, alarm kind): a false positive of one kind of
    alarm (say `up:rare_value+spike`) makes that kind rarer on that series and leaves the
    others alone.

    Args:
        store: durable offsets, audit trail and applied-feedback names.
        policy: base, bounds, step and decay.
        clock: wall clock.
    """

    def __init__(self, store: ThresholdStore, policy: Policy, clock: Callable[[], float]) -> None:
        self._store = store
        self._policy = policy
        self._clock = clock
        self._rows: dict[Key, Row] = {}
        self._by_series: dict[str, dict[str, Row]] = {}  # series -> signature -> row
        self.loaded = False

    @property
    def base(self) -> float:
        return self._policy.base

    def _index(self) -> None:
        self._by_series = {}
        for (series, detector, signature), row in self._rows.items():
            if detector == domain.DETECTOR:
                self._by_series.setdefault(series, {})[signature] = row

    async def load(self) -> None:
        self._rows = {r.key: r for r in await self._store.load()}
        self._index()
        self.loaded = True

    def learned(self, series: str) -> bool:
        """Whether any offset applies to the series (else every point uses the base)."""
        return series in self._by_series

    def effective(self, series: str, signature: str = "") -> float:
        """The threshold a point of `series` whose alarm kind is `signature` is held to."""
        rows = self._by_series.get(series)
        if not rows:
            return self._policy.base
        row = rows.get(signature) or rows.get("")
        if row is None:
            return self._policy.base
        return self._policy.effective(self._policy.decayed(row, self._clock()))

    def lowest(self, series: str) -> float:
        """The lowest threshold any kind of alarm of the series is held to."""
        rows = self._by_series.get(series)
        if not rows:
            return self._policy.base
        now = self._clock()
        low = min(self._policy.effective(self._policy.decayed(r, now)) for r in rows.values())
        return min(low, self._policy.base)

    async def apply(self, lessons: Sequence[Lesson]) -> Applied:
        ignored = 0
        usable: list[Lesson] = []
        for lesson in lessons:
            if not lesson.about_anomaly or lesson.verdict is Verdict.OTHER:
                ignored += 1
            else:
                usable.append(lesson)
        wanted = [_anomaly_id(x.target_id) for x in usable if not (x.series and x.signature)]
        found = await self._store.lookup_series([w for w in wanted if w]) if wanted else {}
        ready: list[Lesson] = []
        for lesson in usable:
            hit = found.get(_anomaly_id(lesson.target_id))
            if hit is not None and (not lesson.series or lesson.series == hit[0]):
                lesson = replace(
                    lesson,
                    series=hit[0],
                    detector=lesson.detector or hit[1],
                    signature=lesson.signature or hit[2],
                )
            if not lesson.series:
                ignored += 1
                continue
            ready.append(replace(lesson, detector=lesson.detector or domain.DETECTOR))
        now = self._clock()
        rows, _changes, duplicates = await self._store.apply(
            ready, lambda row, lesson: self._policy.learn(row, lesson, now)
        )
        for row in rows:
            self._rows[row.key] = row
        self._index()
        return Applied(
            len(ready) - duplicates,
            duplicates,
            ignored,
            [self._policy.view(r, now) for r in rows],
        )

    def list(
        self, series: str, detector: str, adjusted_only: bool, requested: int, token: str
    ) -> domain.Page:
        size = paging.page_size(requested)
        fp = f"{series}\x1f{detector}\x1f{adjusted_only}"
        raw = domain.decode_token(token, fp)
        after: Key | None = None
        if raw is not None:
            if len(raw) != 3 or not all(isinstance(x, str) for x in raw):
                raise errors.invalid(
                    [errors.FieldViolation("page_token", "is not a token this listing returned")],
                    "PAGE_TOKEN_INVALID",
                )
            after = (raw[0], raw[1], raw[2])
        now = self._clock()
        keys = sorted(
            k
            for k, row in self._rows.items()
            if (not series or k[0] == series)
            and (not detector or k[1] == detector)
            and (not adjusted_only or abs(self._policy.decayed(row, now)) > 1e-9)
            and (after is None or k > after)
        )
        page = keys[:size]
        items = [self._policy.view(self._rows[k], now) for k in page]
        more = len(keys) > size
        return domain.Page(items, domain.encode_token(list(page[-1]), fp) if more else "")

    def _find(self, name: str) -> Key | None:
        prefix, _, tid = name.partition("/")
        if prefix != "thresholds":
            return None
        return next((k for k in self._rows if threshold_id(*k) == tid), None)

    async def reset(self, name: str, actor: str, reason: str) -> Threshold:
        if len(reason) > domain.MAX_REASON:
            raise errors.invalid(
                [errors.FieldViolation("reason", "must be at most 500 characters")],
                "REASON_INVALID",
            )
        key = self._find(name)
        if key is None:
            await self.load()  # another replica may have learned it
            key = self._find(name)
        not_found = errors.NotFound(
            "THRESHOLD_NOT_FOUND",
            "No learned threshold has that name; list thresholds to find it.",
            metadata={"name": name},
        )
        if key is None:
            raise not_found
        now = self._clock()
        row = await self._store.reset(
            key, lambda r: replace(r, learned_offset=0.0, update_time=now), actor, reason, now
        )
        if row is None:
            raise not_found
        self._rows[key] = row
        self._index()
        return self._policy.view(row, now)


def _anomaly_id(target: str) -> str:
    return target.partition("/")[2] if target.startswith("anomalies/") else target
