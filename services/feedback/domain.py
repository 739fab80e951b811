"""Feedback: what an operator says about an anomaly, an alert or a remediation.

Pure logic: validation, ids, TTLs, page tokens. Storage is behind `FeedbackStore`.
"""

from __future__ import annotations

import builtins
import enum
import hashlib
import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from services.kit import errors, ids, paging

MAX_TARGET_ID = 128
MAX_COMMENT = 2000
MAX_SERIES = 200
MAX_SIGNATURE = 200
MAX_NAME = 100
MAX_LABELS = 16
MAX_LABEL_KEY = 63
MAX_LABEL_VALUE = 256
MAX_IDEMPOTENCY_KEY = 128
MAX_BATCH = 500
MAX_PAGE_SIZE = paging.MAX_PAGE_SIZE

_LABEL_KEY = re.compile(r"[a-zA-Z_][a-zA-Z0-9_.\-]*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_CURSOR = re.compile(r"\d{13}:[0-9A-Z]{26}")


class TargetKind(enum.Enum):
    ANOMALY = "anomaly"
    REMEDIATION = "remediation"
    ALERT = "alert"
    SUGGESTION = "suggestion"


class Verdict(enum.Enum):
    CONFIRMED = "confirmed"
    FALSE_POSITIVE = "false_positive"
    HELPFUL = "helpful"
    NOT_HELPFUL = "not_helpful"


# Which verdicts make sense for which kind of target.
_VERDICTS_FOR: Mapping[TargetKind, frozenset[Verdict]] = {
    TargetKind.ANOMALY: frozenset({Verdict.CONFIRMED, Verdict.FALSE_POSITIVE}),
    TargetKind.ALERT: frozenset({Verdict.CONFIRMED, Verdict.FALSE_POSITIVE}),
    TargetKind.REMEDIATION: frozenset({Verdict.HELPFUL, Verdict.NOT_HELPFUL}),
    TargetKind.SUGGESTION: frozenset({Verdict.HELPFUL, Verdict.NOT_HELPFUL}),
}


@dataclass(frozen=True, slots=True)
class Draft:
    """A feedback as submitted, before it gets an id and times. `None` enums mean unset."""

    target_kind: TargetKind | None
    target_id: str
    verdict: Verdict | None
    rating: int = 0
    comment: str = ""
    series: str = ""
    detector: str = ""
    action: str = ""
    signature: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Feedback:
    """A stored feedback."""

    id: str
    target_kind: TargetKind
    target_id: str
    verdict: Verdict
    rating: int
    comment: str
    series: str
    detector: str
    action: str
    signature: str
    labels: Mapping[str, str]
    author: str
    create_time: float
    expire_time: float

    @property
    def create_ms(self) -> int:
        return int(self.create_time * 1000)

    def group(self) -> Group:
        return Group(self.target_kind, self.series, self.detector, self.action, self.signature)


@dataclass(frozen=True, slots=True)
class Group:
    """What the learning loop aggregates by."""

    target_kind: TargetKind
    series: str
    detector: str
    action: str
    signature: str

    def key(self) -> str:
        """A short stable hash naming the group in storage."""
        raw = "\x1f".join(
            (self.target_kind.value, self.series, self.detector, self.action, self.signature)
        )
        return hashlib.blake2b(raw.encode(), digest_size=10).hexdigest()


@dataclass(frozen=True, slots=True)
class GroupCounts:
    group: Group
    counts: Mapping[Verdict, int]


@dataclass(frozen=True, slots=True)
class Filter:
    """Selects feedback; `None` matches everything. Times are epoch seconds, end exclusive."""

    target_kind: TargetKind | None = None
    target_id: str = ""
    verdict: Verdict | None = None
    start_time: float | None = None
    end_time: float | None = None

    def empty(self) -> bool:
        return self == Filter()

    def matches(self, item: Feedback) -> bool:
        if self.target_kind is not None and item.target_kind is not self.target_kind:
            return False
        if self.target_id and item.target_id != self.target_id:
            return False
        if self.verdict is not None and item.verdict is not self.verdict:
            return False
        if self.start_time is not None and item.create_time < self.start_time:
            return False
        return not (self.end_time is not None and item.create_time >= self.end_time)

    def fingerprint(self) -> str:
        raw = json.dumps(
            [
                self.target_kind.value if self.target_kind else None,
                self.target_id,
                self.verdict.value if self.verdict else None,
                self.start_time,
                self.end_time,
            ]
        )
        return hashlib.blake2b(raw.encode(), digest_size=8).hexdigest()


@dataclass(frozen=True, slots=True)
class Stored:
    """The result of one write: the feedback and whether an idempotency key replayed it."""

    feedback: Feedback
    replayed: bool


@dataclass(frozen=True, slots=True)
class Page:
    items: Sequence[Feedback]
    next_token: str


class FeedbackStore(Protocol):
    """Where feedback lives (Redis in production)."""

    async def put_many(
        self, items: Sequence[tuple[Feedback, str]], ttl_seconds: float
    ) -> list[Stored | errors.AiopsError]: ...

    async def get(self, feedback_id: str) -> Feedback | None: ...

    async def scan(
        self, flt: Filter, limit: int, after: str | None
    ) -> tuple[list[Feedback], str | None]:
        """Up to `limit` matching items, newest first, strictly older than cursor `after`;
        also returns the cursor to continue from, or None when nothing is left."""
        ...

    async def delete(self, feedback_ids: Sequence[str]) -> int: ...

    async def delete_all(self) -> int: ...

    async def stats(self, target_kind: TargetKind | None, now: float) -> list[GroupCounts]: ...


def parse_name(name: str, field_name: str = "name") -> str:
    """The id in a resource name `feedback/{id}`."""
    prefix, _, fid = name.partition("/")
    if prefix != "feedback" or not ids.valid(fid):
        raise errors.invalid(
            [errors.FieldViolation(field_name, "must look like feedback/{26-character id}")],
            "FEEDBACK_NAME_INVALID",
        )
    return fid


def _text(
    out: list[errors.FieldViolation], name: str, value: str, limit: int, *, required: bool = False
) -> None:
    if required and not value:
        out.append(errors.FieldViolation(name, "is required"))
    elif len(value) > limit:
        out.append(errors.FieldViolation(name, f"must be at most {limit} characters"))
    elif _CONTROL.search(value):
        out.append(errors.FieldViolation(name, "must not contain control characters"))


def validate(draft: Draft, prefix: str = "feedback") -> list[errors.FieldViolation]:
    """Every problem of a draft, with field paths under `prefix`."""
    out: list[errors.FieldViolation] = []
    if draft.target_kind is None:
        out.append(errors.FieldViolation(f"{prefix}.target.kind", "is required"))
    _text(out, f"{prefix}.target.id", draft.target_id, MAX_TARGET_ID, required=True)
    if draft.verdict is None:
        out.append(errors.FieldViolation(f"{prefix}.verdict", "is required"))
    elif draft.target_kind is not None and draft.verdict not in _VERDICTS_FOR[draft.target_kind]:
        allowed = sorted(v.name for v in _VERDICTS_FOR[draft.target_kind])
        out.append(
            errors.FieldViolation(
                f"{prefix}.verdict",
                f"{draft.verdict.name} does not apply to a {draft.target_kind.value}; "
                f"use one of {', '.join(allowed)}",
            )
        )
    if not 0 <= draft.rating <= 5:
        out.append(errors.FieldViolation(f"{prefix}.rating", "must be between 1 and 5, or 0"))
    if len(draft.comment) > MAX_COMMENT:
        out.append(
            errors.FieldViolation(f"{prefix}.comment", f"must be at most {MAX_COMMENT} characters")
        )
    _text(out, f"{prefix}.series", draft.series, MAX_SERIES)
    _text(out, f"{prefix}.detector", draft.detector, MAX_NAME)
    _text(out, f"{prefix}.action", draft.action, MAX_NAME)
    _text(out, f"{prefix}.signature", draft.signature, MAX_SIGNATURE)
    if len(draft.labels) > MAX_LABELS:
        out.append(errors.FieldViolation(f"{prefix}.labels", f"at most {MAX_LABELS} labels"))
    else:
        for key, value in draft.labels.items():
            if len(key) > MAX_LABEL_KEY or not _LABEL_KEY.fullmatch(key):
                out.append(
                    errors.FieldViolation(
                        f"{prefix}.labels",
                        f"key {key[:MAX_LABEL_KEY]!r} must match [a-zA-Z_][a-zA-Z0-9_.-]* "
                        f"and be at most {MAX_LABEL_KEY} characters",
                    )
                )
            _text(out, f"{prefix}.labels[{key[:MAX_LABEL_KEY]}]", value, MAX_LABEL_VALUE)
    return out


def validate_idempotency_key(key: str, name: str) -> list[errors.FieldViolation]:
    out: list[errors.FieldViolation] = []
    _text(out, name, key, MAX_IDEMPOTENCY_KEY)
    return out


class FeedbackBook:
    """The feedback service's logic: validation, ids, TTLs, listing and stats."""

    def __init__(
        self,
        store: FeedbackStore,
        ttl_seconds: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._ttl = ttl_seconds
        self._clock = clock

    @property
    def ttl_seconds(self) -> float:
        return self._ttl

    def prepare(self, draft: Draft, author: str, prefix: str = "feedback") -> Feedback:
        """Validates a draft and gives it its id and times; raises InvalidArgument."""
        violations = validate(draft, prefix)
        if violations:
            raise errors.invalid(violations, "FEEDBACK_INVALID")
        assert draft.target_kind is not None and draft.verdict is not None
        now = self._clock()
        return Feedback(
            id=ids.new_id(now),
            target_kind=draft.target_kind,
            target_id=draft.target_id,
            verdict=draft.verdict,
            rating=draft.rating,
            comment=draft.comment,
            series=draft.series,
            detector=draft.detector,
            action=draft.action,
            signature=draft.signature,
            labels=dict(draft.labels),
            author=author,
            create_time=now,
            expire_time=now + self._ttl,
        )

    async def submit_many(
        self, items: Sequence[tuple[Feedback, str]]
    ) -> list[Stored | errors.AiopsError]:
        """Stores prepared feedback; each item gets its own result, in order."""
        return await self._store.put_many(items, self._ttl)

    async def submit(self, draft: Draft, author: str, idempotency_key: str = "") -> Stored:
        violations = validate_idempotency_key(idempotency_key, "idempotency_key")
        if violations:
            raise errors.invalid(violations, "IDEMPOTENCY_KEY_INVALID")
        (result,) = await self.submit_many([(self.prepare(draft, author), idempotency_key)])
        if isinstance(result, errors.AiopsError):
            raise result
        return result

    async def get(self, name: str) -> Feedback:
        item = await self._store.get(parse_name(name))
        if item is None:
            raise errors.NotFound(
                "FEEDBACK_NOT_FOUND",
                "No live feedback has that name; it may have expired or been deleted.",
                metadata={"name": name},
            )
        return item

    async def list(self, flt: Filter, requested_page_size: int, token: str) -> Page:
        check_filter(flt)
        size = paging.page_size(requested_page_size)
        cursor = decode_token(token, flt)
        items, next_cursor = await self._store.scan(flt, size, cursor)
        return Page(items, encode_token(next_cursor, flt) if next_cursor else "")

    async def delete(self, name: str, flt: Filter | None, everything: bool) -> int:
        chosen = sum((bool(name), flt is not None and not flt.empty(), everything))
        if chosen != 1:
            raise errors.invalid(
                [errors.FieldViolation("name", "set exactly one of name, filter or all=true")],
                "DELETE_SCOPE_INVALID",
            )
        if name:
            return await self._store.delete([parse_name(name)])
        if everything:
            return await self._store.delete_all()
        assert flt is not None
        check_filter(flt)
        deleted = 0
        cursor: str | None = None
        while True:
            items, cursor = await self._store.scan(flt, MAX_PAGE_SIZE, cursor)
            deleted += await self._store.delete([i.id for i in items])
            if cursor is None:
                return deleted

    async def stats(self, target_kind: TargetKind | None) -> builtins.list[GroupCounts]:
        return await self._store.stats(target_kind, self._clock())


def encode_token(cursor: str, flt: Filter) -> str:
    return paging.encode_token(cursor, flt.fingerprint())


def decode_token(token: str, flt: Filter, field_name: str = "page_token") -> str | None:
    """The keyset cursor (`{create_ms:013d}:{id}`) inside a page token."""
    cursor = paging.decode_token(token, flt.fingerprint(), field_name)
    if cursor is None:
        return None
    if not isinstance(cursor, str) or not _CURSOR.fullmatch(cursor):
        raise paging.invalid_token(field_name)
    return cursor


def check_filter(flt: Filter) -> None:
    out: list[errors.FieldViolation] = []
    if flt.target_id and flt.target_kind is None:
        out.append(errors.FieldViolation("filter.target_kind", "is required with target_id"))
    _text(out, "filter.target_id", flt.target_id, MAX_TARGET_ID)
    if flt.start_time is not None and flt.end_time is not None and flt.end_time <= flt.start_time:
        out.append(errors.FieldViolation("filter.create_time_range", "end must be after start"))
    if out:
        raise errors.invalid(out, "FILTER_INVALID")
