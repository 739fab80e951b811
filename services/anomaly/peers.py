"""Calls to peer services: new anomalies handed to remediation's `Suggest` (best effort),
and feedback pulled from the feedback service for the learning loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import grpc
from aiops.feedback.v1 import feedback_pb2 as fb
from aiops.feedback.v1 import feedback_service_pb2 as fb_svc
from aiops.feedback.v1 import feedback_service_pb2_grpc as fb_grpc
from aiops.remediation.v1 import remediation_service_pb2 as rem_svc
from aiops.remediation.v1 import remediation_service_pb2_grpc as rem_grpc
from prometheus_client import Counter

from services.anomaly import domain, learning

log = logging.getLogger(__name__)

SUGGEST_TOTAL = Counter(
    "aiops_anomaly_suggest_total",
    "New anomalies handed to remediation's Suggest, by result (ok, failed, dropped).",
    ["result"],
)


class RemediationSuggester:
    """A bounded queue of new anomalies and one task that calls `Suggest` for each.

    Scoring only enqueues; a full queue drops (and counts) rather than waits.
    """

    def __init__(
        self, stub: rem_grpc.RemediationServiceStub, timeout_seconds: float, capacity: int = 1000
    ) -> None:
        self._stub = stub
        self._timeout = timeout_seconds
        self._queue: asyncio.Queue[domain.Anomaly] = asyncio.Queue(capacity)
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    def submit(self, anomaly: domain.Anomaly) -> None:
        try:
            self._queue.put_nowait(anomaly)
        except asyncio.QueueFull:
            SUGGEST_TOTAL.labels("dropped").inc()
            log.warning("suggestion queue full", extra={"anomaly": anomaly.name})

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="anomaly-suggester")

    async def _loop(self) -> None:
        while True:
            anomaly = await self._queue.get()
            try:
                await self._stub.Suggest(
                    rem_svc.SuggestRequest(anomaly=anomaly.name), timeout=self._timeout
                )  # type: ignore[misc]
            except grpc.aio.AioRpcError as exc:
                SUGGEST_TOTAL.labels("failed").inc()
                # One warning when calls start failing, not one per anomaly (the counter
                # has the rest).
                level = logging.DEBUG if self._failing else logging.WARNING
                self._failing = True
                log.log(
                    level,
                    "suggest failed",
                    extra={"anomaly": anomaly.name, "grpc_code": exc.code().name},
                )
            else:
                SUGGEST_TOTAL.labels("ok").inc()
                if self._failing:
                    self._failing = False
                    log.info("suggest recovered")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


_LESSON_VERDICTS = {
    fb.VERDICT_CONFIRMED: learning.Verdict.CONFIRMED,
    fb.VERDICT_FALSE_POSITIVE: learning.Verdict.FALSE_POSITIVE,
}


def lesson(item: fb.Feedback) -> learning.Lesson:
    """The learning loop's view of one stored feedback."""
    return learning.Lesson(
        name=item.name,
        verdict=_LESSON_VERDICTS.get(item.verdict, learning.Verdict.OTHER),
        about_anomaly=item.target.kind in (fb.TARGET_KIND_ANOMALY, fb.TARGET_KIND_ALERT),
        series=item.series,
        detector=item.detector,
        target_id=item.target.id,
        create_time=item.create_time.seconds + item.create_time.nanos * 1e-9,
        signature=learning.alarm_kind(item.signature),
    )


class FeedbackPuller:
    """Reads new anomaly and alert feedback from the feedback service and applies it.

    Each feedback is applied at most once (by name, in Postgres), so re-reading an overlap
    is harmless; what it taught stays in Postgres after the feedback itself expires.
    """

    def __init__(
        self,
        stub: fb_grpc.FeedbackServiceStub,
        thresholds: learning.Thresholds,
        timeout_seconds: float,
        clock: Callable[[], float],
        lookback_seconds: float = 8 * 86400.0,
    ) -> None:
        self._stub = stub
        self._thresholds = thresholds
        self._timeout = timeout_seconds
        self._since = clock() - lookback_seconds
        self._failing = False

    async def step(self) -> int:
        """One pull; returns how many feedback moved a threshold."""
        await self._thresholds.load()  # what other replicas learned
        items: list[learning.Lesson] = []
        newest = self._since
        try:
            for kind in (fb.TARGET_KIND_ANOMALY, fb.TARGET_KIND_ALERT):
                token = ""
                while True:
                    request = fb_svc.ListFeedbackRequest(page_size=500, page_token=token)
                    request.filter.target_kind = kind
                    request.filter.create_time_range.start_time.FromNanoseconds(
                        int((self._since - 60.0) * 1e9)
                    )
                    page = await self._stub.ListFeedback(request, timeout=self._timeout)  # type: ignore[misc]
                    for item in page.feedback:
                        items.append(lesson(item))
                        newest = max(newest, items[-1].create_time)
                    token = page.next_page_token
                    if not token:
                        break
        except grpc.aio.AioRpcError as exc:
            PULL_TOTAL.labels("failed").inc()
            level = logging.DEBUG if self._failing else logging.WARNING
            self._failing = True
            log.log(level, "feedback pull failed", extra={"grpc_code": exc.code().name})
            return 0
        self._failing = False
        PULL_TOTAL.labels("ok").inc()
        if not items:
            return 0
        applied = await self._thresholds.apply(items)
        self._since = newest
        if applied.applied:
            log.info("feedback applied", extra={"applied": applied.applied})
        return applied.applied


PULL_TOTAL = Counter(
    "aiops_anomaly_feedback_pulls_total",
    "Pulls of anomaly feedback from the feedback service, by result (ok, failed).",
    ["result"],
)
