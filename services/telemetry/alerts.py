"""Alertmanager alerts: validation, deduplication by fingerprint, listing.

Pure logic; the store is behind `AlertStore`.
"""

from __future__ import annotations

import collections
import enum
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from services.kit import errors
from services.telemetry import domain

MAX_ALERTS = 1000
MAX_FINGERPRINT = 64
MAX_LABELS = 64
MAX_LABEL_KEY = 63
MAX_LABEL_VALUE = 1024
MAX_ANNOTATIONS = 32
MAX_ANNOTATION_VALUE = 4096
MAX_URL = 2048
MAX_RECEIVER = 200
MAX_GROUP_KEY = 1024


class AlertState(enum.Enum):
    FIRING = "firing"
    RESOLVED = "resolved"


class AlertReject(enum.Enum):
    INVALID_FINGERPRINT = "invalid_fingerprint"
    MISSING_STATE = "missing_state"
    INVALID_LABELS = "invalid_labels"
    INVALID_ANNOTATIONS = "invalid_annotations"
    INVALID_TIMES = "invalid_times"


@dataclass(frozen=True, slots=True)
class Draft:
    """An alert as received; `state`/`start_time` None mean unset."""

    fingerprint: str
    state: AlertState | None
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    start_time: float | None
    end_time: float | None
    generator_url: str = ""


@dataclass(frozen=True, slots=True)
class Alert:
    fingerprint: str
    state: AlertState
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    start_time: float
    end_time: float | None
    generator_url: str


@dataclass(frozen=True, slots=True)
class IngestResult:
    accepted: Sequence[Alert]
    rejections: Mapping[AlertReject, int]

    @property
    def firing(self) -> int:
        return sum(1 for a in self.accepted if a.state is AlertState.FIRING)

    @property
    def resolved(self) -> int:
        return sum(1 for a in self.accepted if a.state is AlertState.RESOLVED)


@dataclass(frozen=True, slots=True)
class AlertPage:
    items: Sequence[Alert]
    next_token: str


class AlertStore(Protocol):
    async def upsert_alerts(self, items: Sequence[Alert], receiver: str) -> None: ...

    async def list_alerts(
        self, state: AlertState | None, limit: int, after: str | None
    ) -> list[Alert]: ...


def check(draft: Draft) -> AlertReject | None:
    """Why an alert cannot be stored, or None."""
    if not 0 < len(draft.fingerprint) <= MAX_FINGERPRINT:
        return AlertReject.INVALID_FINGERPRINT
    if draft.state is None:
        return AlertReject.MISSING_STATE
    if not draft.labels.get("alertname") or len(draft.labels) > MAX_LABELS:
        return AlertReject.INVALID_LABELS
    for key, value in draft.labels.items():
        if not key or len(key) > MAX_LABEL_KEY or len(value) > MAX_LABEL_VALUE:
            return AlertReject.INVALID_LABELS
    if len(draft.annotations) > MAX_ANNOTATIONS or len(draft.generator_url) > MAX_URL:
        return AlertReject.INVALID_ANNOTATIONS
    for key, value in draft.annotations.items():
        if not key or len(key) > MAX_LABEL_KEY or len(value) > MAX_ANNOTATION_VALUE:
            return AlertReject.INVALID_ANNOTATIONS
    if draft.start_time is None:
        return AlertReject.INVALID_TIMES
    if draft.end_time is not None and draft.end_time < draft.start_time:
        return AlertReject.INVALID_TIMES
    return None


class AlertBook:
    """Ingests Alertmanager notifications and lists what is stored."""

    def __init__(self, store: AlertStore) -> None:
        self._store = store

    async def ingest(self, drafts: Sequence[Draft], receiver: str, group_key: str) -> IngestResult:
        out: list[errors.FieldViolation] = []
        if not 1 <= len(drafts) <= MAX_ALERTS:
            out.append(errors.FieldViolation("alerts", f"must hold 1 to {MAX_ALERTS} alerts"))
        if len(receiver) > MAX_RECEIVER:
            out.append(errors.FieldViolation("receiver", f"at most {MAX_RECEIVER} characters"))
        if len(group_key) > MAX_GROUP_KEY:
            out.append(errors.FieldViolation("group_key", f"at most {MAX_GROUP_KEY} characters"))
        if out:
            raise errors.invalid(out, "ALERTS_INVALID")
        rejections: collections.Counter[AlertReject] = collections.Counter()
        accepted: list[Alert] = []
        for d in drafts:
            reason = check(d)
            if reason is not None:
                rejections[reason] += 1
                continue
            assert d.state is not None and d.start_time is not None
            # Alertmanager keeps sending an end time in the future while an alert fires.
            end = d.end_time if d.state is AlertState.RESOLVED else None
            accepted.append(
                Alert(
                    d.fingerprint,
                    d.state,
                    dict(d.labels),
                    dict(d.annotations),
                    d.start_time,
                    end,
                    d.generator_url,
                )
            )
        if accepted:
            await self._store.upsert_alerts(accepted, receiver)
        return IngestResult(accepted, dict(rejections))

    async def list(self, state: AlertState | None, requested: int, token: str) -> AlertPage:
        if requested < 0:
            raise errors.invalid(
                [errors.FieldViolation("page_size", "must not be negative")], "PAGE_SIZE_INVALID"
            )
        size = min(requested or 50, 500)
        fingerprint = hashlib.blake2b(
            json.dumps(state.value if state else None).encode(), digest_size=8
        ).hexdigest()
        cursor = domain.decode_token(token, fingerprint)
        items = await self._store.list_alerts(state, size + 1, cursor)
        if len(items) > size:
            items = items[:size]
            return AlertPage(items, domain.encode_token(items[-1].fingerprint, fingerprint))
        return AlertPage(items, "")
