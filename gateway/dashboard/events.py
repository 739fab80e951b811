"""The live stream behind `/aiops`: one poller per gateway process, shared by every viewer.

While at least one browser is connected, the hub polls the backends every
`events_interval_seconds` and pushes to each subscriber only the topics whose JSON changed
since the last round, as Server-Sent Events. With nobody connected it polls nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
from aiops.anomaly.v1 import anomaly_service_pb2 as an_svc
from aiops.remediation.v1 import remediation_service_pb2 as rem_svc
from aiops.telemetry.v1 import telemetry_pb2 as tel
from aiops.telemetry.v1 import telemetry_service_pb2 as tel_svc
from google.protobuf import json_format
from google.protobuf.message import Message

from gateway.dashboard.settings import DashboardSettings

log = logging.getLogger(__name__)

# Suggestions are re-ranked by feedback, so they are refreshed now and then, not every round.
SUGGESTION_TTL_SECONDS = 20.0
SUGGESTED_ANOMALIES = 8
COLLECT_EVERY = 5
QUEUE_SIZE = 32
CHART_POINTS = 180
Stubs = Mapping[str, Any]


def to_json(message: Message) -> Any:
    return json_format.MessageToDict(message, preserving_proto_field_name=False)


def frame(event: str, data: Any, event_id: int) -> bytes:
    """One Server-Sent Events frame; `data` is a single JSON line."""
    payload = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    return f"id: {event_id}\nevent: {event}\ndata: {payload}\n\n".encode()


@dataclass(slots=True)
class _Cached:
    at: float
    value: Any


@dataclass(slots=True)
class Hub:
    """Polls the backends for its subscribers and fans the changes out to them."""

    settings: DashboardSettings
    stubs: Callable[[], Stubs]
    timeout_seconds: float
    subscribers: set[asyncio.Queue[tuple[str, Any]]] = field(default_factory=set)
    last: dict[str, Any] = field(default_factory=dict)
    _task: asyncio.Task[None] | None = None
    _round: int = 0
    _series_points: dict[str, _Cached] = field(default_factory=dict)
    _suggestions: dict[str, _Cached] = field(default_factory=dict)

    def subscribe(self) -> asyncio.Queue[tuple[str, Any]]:
        """A new subscriber's queue, primed with the latest value of every topic."""
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue(QUEUE_SIZE)
        for topic, value in self.last.items():
            queue.put_nowait((topic, value))
        self.subscribers.add(queue)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="dashboard-events")
        return queue

    async def unsubscribe(self, queue: asyncio.Queue[tuple[str, Any]]) -> None:
        self.subscribers.discard(queue)
        if not self.subscribers:
            await self.aclose()

    def disconnect_all(self) -> None:
        """Ends every stream (shutdown); browsers reconnect by themselves."""
        for queue in list(self.subscribers):
            self.subscribers.discard(queue)
            while not queue.empty():
                queue.get_nowait()
            queue.put_nowait(("overflow", None))

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        interval = self.settings.events_interval_seconds
        while self.subscribers:
            begin = time.monotonic()
            try:
                await self.poll_once()
            except Exception:  # a bad round must not end the stream; the next one retries
                log.exception("dashboard poll failed")
            await asyncio.sleep(max(0.05, interval - (time.monotonic() - begin)))

    def _publish(self, topic: str, value: Any) -> None:
        if self.last.get(topic) == value:
            return
        self.last[topic] = value
        for queue in list(self.subscribers):
            try:
                queue.put_nowait((topic, value))
            except asyncio.QueueFull:
                # A subscriber this far behind gets dropped; its browser reconnects.
                self.subscribers.discard(queue)
                while not queue.empty():
                    queue.get_nowait()
                queue.put_nowait(("overflow", None))
                log.info("dashboard subscriber dropped", extra={"reason": "queue full"})

    async def poll_once(self) -> None:
        """One round: every topic, concurrently; a failing backend marks only its topics."""
        self._round += 1
        jobs: dict[str, Awaitable[Any]] = {
            "anomalies": self._anomalies(),
            "drift": self._call(
                "anomaly", "GetDriftStatus", an_svc.GetDriftStatusRequest(page_size=200)
            ),
            "remediations": self._call(
                "remediation", "ListRemediations", rem_svc.ListRemediationsRequest(page_size=25)
            ),
            "series": self._series(),
        }
        if self._round % COLLECT_EVERY == 1 or "collect" not in self.last:
            jobs["collect"] = self._call("telemetry", "Collect", tel_svc.CollectRequest())
        results = await asyncio.gather(*jobs.values(), return_exceptions=True)
        problems: dict[str, str] = {}
        for topic, result in zip(jobs, results, strict=True):
            if isinstance(result, grpc.aio.AioRpcError):
                problems[topic] = result.code().name
            elif isinstance(result, BaseException):
                raise result
            else:
                self._publish(topic, result)
        self._publish("status", {"problems": problems})

    async def _call(self, backend: str, rpc: str, request: Message) -> Any:
        stub = self.stubs()[backend]
        reply = await getattr(stub, rpc)(
            request,
            timeout=self.timeout_seconds,
            metadata=(("x-aiops-subject", "dashboard"), ("x-aiops-roles", "viewer")),
        )
        return to_json(reply)

    async def _anomalies(self) -> Any:
        reply = await self._call(
            "anomaly", "ListAnomalies", an_svc.ListAnomaliesRequest(page_size=50)
        )
        anomalies = reply.get("anomalies", [])
        now = time.monotonic()
        suggestions: dict[str, Any] = {}
        for item in anomalies[:SUGGESTED_ANOMALIES]:
            name = item["name"]
            key = f"{name}|{item.get('state', '')}|{item.get('severity', '')}"
            cached = self._suggestions.get(key)
            if cached is None or now - cached.at > SUGGESTION_TTL_SECONDS:
                try:
                    value = await self._call(
                        "remediation",
                        "Suggest",
                        rem_svc.SuggestRequest(anomaly=name, max_suggestions=3),
                    )
                except grpc.aio.AioRpcError as err:
                    value = {"error": err.code().name}
                cached = self._suggestions[key] = _Cached(now, value)
            suggestions[name] = cached.value
        live = {f"{a['name']}|{a.get('state', '')}|{a.get('severity', '')}" for a in anomalies}
        for key in [k for k in self._suggestions if k not in live]:
            del self._suggestions[key]
        return {"anomalies": anomalies, "suggestions": suggestions}

    async def _series(self) -> Any:
        listed = await self._call(
            "telemetry", "ListSeries", tel_svc.ListSeriesRequest(page_size=200)
        )
        series = sorted(
            listed.get("series", []),
            key=lambda s: (s.get("kind") != "SERIES_KIND_CRITICAL", s.get("key", "")),
        )
        series = [s for s in series if s.get("lastPointTime")][: self.settings.max_series]
        window = self.settings.series_window_seconds
        step = max(1.0, window / CHART_POINTS)
        end_ns = time.time_ns()
        fresh = await asyncio.gather(*(self._points(s, window, step, end_ns) for s in series))
        out = [{"series": s, "points": points} for s, points in zip(series, fresh, strict=True)]
        keep = {s["name"] for s in series}
        for name in [n for n in self._series_points if n not in keep]:
            del self._series_points[name]
        return {"series": out, "windowSeconds": window}

    async def _points(
        self, series: dict[str, Any], window: float, step: float, end_ns: int
    ) -> list[list[Any]]:
        """A series' points over the window, per step; re-read only when it got new ones."""
        name, stamp = series["name"], series.get("lastPointTime", "")
        cached = self._series_points.get(name)
        if cached is not None and cached.value[0] == stamp and time.monotonic() - cached.at < step:
            return list(cached.value[1])
        request = tel_svc.QuerySeriesRequest(name=name, aggregation=tel.AGGREGATION_AVG)
        request.time_range.end_time.FromNanoseconds(end_ns)
        request.time_range.start_time.FromNanoseconds(end_ns - int(window * 1e9))
        request.step.FromNanoseconds(int(step * 1e9))
        reply = await self._call("telemetry", "QuerySeries", request)
        points = [
            [p.get("sampleTime", ""), p.get("value", 0.0)]
            for found in reply.get("series", [])
            for p in found.get("points", [])
        ]
        self._series_points[name] = _Cached(time.monotonic(), (stamp, points))
        return points
