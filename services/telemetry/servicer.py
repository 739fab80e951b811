"""gRPC servicer of `aiops.telemetry.v1.TelemetryService`: shape checks and proto <-> domain."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import grpc
from aiops.telemetry.v1 import telemetry_pb2 as tel
from aiops.telemetry.v1 import telemetry_service_pb2 as tel_svc
from aiops.telemetry.v1 import telemetry_service_pb2_grpc as tel_grpc
from google.protobuf import duration_pb2

from services.kit import errors, protoconv
from services.telemetry import alerts, collector, critical, domain, ingest, sources

Context = grpc.aio.ServicerContext[Any, Any]

_KINDS = {
    tel.SERIES_KIND_GAUGE: domain.SeriesKind.GAUGE,
    tel.SERIES_KIND_COUNTER_RATE: domain.SeriesKind.COUNTER_RATE,
    tel.SERIES_KIND_CRITICAL: domain.SeriesKind.CRITICAL,
}
_KIND_PB = {v: k for k, v in _KINDS.items()}
_AGGREGATIONS = {
    tel.AGGREGATION_AVG: domain.Aggregation.AVG,
    tel.AGGREGATION_MIN: domain.Aggregation.MIN,
    tel.AGGREGATION_MAX: domain.Aggregation.MAX,
    tel.AGGREGATION_LAST: domain.Aggregation.LAST,
}
_REJECT_PB = {
    r: tel.PointRejectReason.Value(f"POINT_REJECT_REASON_{r.name}") for r in domain.Reject
}
_ALERT_STATES = {
    tel.ALERT_STATE_FIRING: alerts.AlertState.FIRING,
    tel.ALERT_STATE_RESOLVED: alerts.AlertState.RESOLVED,
}
_ALERT_STATE_PB = {v: k for k, v in _ALERT_STATES.items()}
_ALERT_REJECT_PB = {
    r: tel.AlertRejectReason.Value(f"ALERT_REJECT_REASON_{r.name}") for r in alerts.AlertReject
}
_COMPARISON_PB = {
    critical.Comparison.LESS_THAN: tel.COMPARISON_LESS_THAN,
    critical.Comparison.GREATER_THAN: tel.COMPARISON_GREATER_THAN,
}
_SOURCE_KIND_PB = {
    sources.SourceKind.EXPOSITION: tel.SOURCE_KIND_EXPOSITION,
    sources.SourceKind.PROMETHEUS_API: tel.SOURCE_KIND_PROMETHEUS_API,
}
_RESULT_PB = {r: tel.ScrapeResult.Value(f"SCRAPE_RESULT_{r.name}") for r in sources.Result}


class TelemetryServicer(tel_grpc.TelemetryServiceServicer):
    def __init__(
        self,
        ingestor: ingest.Ingestor,
        reader: domain.Reader,
        book: alerts.AlertBook,
        collect: collector.Collector,
        sink: collector.Sink | None,
    ) -> None:
        self._ingestor = ingestor
        self._reader = reader
        self._book = book
        self._collector = collect
        self._sink = sink

    async def Collect(
        self, request: tel_svc.CollectRequest, context: Context
    ) -> tel_svc.CollectResponse:
        # Sources get what is left of the caller's deadline, minus time to answer.
        remaining = context.time_remaining()
        limit = max(0.05, remaining - 0.25) if remaining is not None else None
        snapshot = await self._collector.collect(store=False, limit_seconds=limit)
        return _snapshot(snapshot)

    async def _write(self, samples: Sequence[tel.Sample], field_name: str) -> domain.WriteResult:
        if not 1 <= len(samples) <= domain.MAX_BATCH:
            raise errors.invalid(
                [errors.FieldViolation(field_name, f"must hold 1 to {domain.MAX_BATCH} samples")],
                "BATCH_SIZE_INVALID",
            )
        result = await self._ingestor.write(_incoming(samples))
        collector.count(result, "push")
        if self._sink is not None and result.rows:
            self._sink.offer(result.rows)
        return result

    async def PushPoints(
        self, request_iterator: AsyncIterator[tel_svc.PushPointsRequest], context: Context
    ) -> tel_svc.PushPointsResponse:
        accepted = created = total = 0
        rejections: dict[domain.Reject, int] = {}
        async for request in request_iterator:
            total += len(request.samples)
            if total > domain.MAX_STREAM:
                raise errors.invalid(
                    [
                        errors.FieldViolation(
                            "samples", f"a stream carries at most {domain.MAX_STREAM}"
                        )
                    ],
                    "STREAM_TOO_LARGE",
                )
            result = await self._write(request.samples, "samples")
            accepted += result.accepted
            created += result.created_series
            for reason, n in result.rejections.items():
                rejections[reason] = rejections.get(reason, 0) + n
        return tel_svc.PushPointsResponse(
            accepted_count=accepted,
            rejected_count=sum(rejections.values()),
            rejections=_rejections(rejections),
            created_series_count=created,
        )

    async def WritePoints(
        self, request: tel_svc.WritePointsRequest, context: Context
    ) -> tel_svc.WritePointsResponse:
        result = await self._write(request.samples, "samples")
        return tel_svc.WritePointsResponse(
            accepted_count=result.accepted,
            rejected_count=result.rejected,
            rejections=_rejections(result.rejections),
            created_series_count=result.created_series,
        )

    async def QuerySeries(
        self, request: tel_svc.QuerySeriesRequest, context: Context
    ) -> tel_svc.QuerySeriesResponse:
        tr = request.time_range
        step = protoconv.duration_seconds(request.step) if request.HasField("step") else 0.0
        agg = _AGGREGATIONS.get(request.aggregation)
        if request.aggregation and agg is None:
            raise errors.invalid(
                [errors.FieldViolation("aggregation", "unknown value")], "QUERY_INVALID"
            )
        query = domain.make_query(
            name=request.name,
            metric=request.metric,
            labels=dict(request.labels),
            start=protoconv.seconds(tr.start_time) if tr.HasField("start_time") else None,
            end=protoconv.seconds(tr.end_time) if tr.HasField("end_time") else None,
            step=step or None,
            aggregation=agg,
        )
        found = await self._reader.query(query)
        response = tel_svc.QuerySeriesResponse()
        for item in found:
            entry = response.series.add(series=_series(item.series))
            for p in item.points:
                entry.points.add(sample_time=protoconv.timestamp(p.time), value=p.value)
        return response

    async def ListSeries(
        self, request: tel_svc.ListSeriesRequest, context: Context
    ) -> tel_svc.ListSeriesResponse:
        f = request.filter
        kind = _KINDS.get(f.kind)
        if f.kind and kind is None:
            raise errors.invalid(
                [errors.FieldViolation("filter.kind", "unknown value")], "FILTER_INVALID"
            )
        flt = domain.SeriesFilter(f.metric, dict(f.labels), kind)
        page = await self._reader.list(flt, request.page_size, request.page_token)
        return tel_svc.ListSeriesResponse(
            series=[_series(s) for s in page.items], next_page_token=page.next_token
        )

    async def IngestAlerts(
        self, request: tel_svc.IngestAlertsRequest, context: Context
    ) -> tel_svc.IngestAlertsResponse:
        drafts = [_draft(a) for a in request.alerts]
        result = await self._book.ingest(drafts, request.receiver, request.group_key)
        if result.accepted:
            # Alerts also become points (1 firing, 0 resolved) of `aiops_alert_firing`, so
            # the anomaly service sees them like any other series.
            points = [
                domain.Incoming(
                    "aiops_alert_firing",
                    {"alertname": a.labels["alertname"][:256]},
                    a.end_time if a.end_time is not None else a.start_time,
                    1.0 if a.state is alerts.AlertState.FIRING else 0.0,
                )
                for a in result.accepted
            ]
            written = await self._ingestor.write(points, collector=True)
            collector.count(written, "alerts")
            if self._sink is not None and written.rows:
                self._sink.offer(written.rows)
        return tel_svc.IngestAlertsResponse(
            accepted_count=len(result.accepted),
            rejected_count=sum(result.rejections.values()),
            rejections=[
                tel.AlertRejectionCount(reason=_ALERT_REJECT_PB[r], count=n)
                for r, n in sorted(result.rejections.items(), key=lambda x: x[0].name)
            ],
            firing_count=result.firing,
            resolved_count=result.resolved,
        )

    async def ListAlerts(
        self, request: tel_svc.ListAlertsRequest, context: Context
    ) -> tel_svc.ListAlertsResponse:
        state = _ALERT_STATES.get(request.state)
        if request.state and state is None:
            raise errors.invalid(
                [errors.FieldViolation("state", "unknown value")], "FILTER_INVALID"
            )
        page = await self._book.list(state, request.page_size, request.page_token)
        return tel_svc.ListAlertsResponse(
            alerts=[_alert(a) for a in page.items], next_page_token=page.next_token
        )


def _incoming(samples: Sequence[tel.Sample]) -> list[domain.Incoming]:
    """The samples as domain tuples. This runs once per pushed point, so it is written for
    speed: tuple.__new__ builds the NamedTuple at C speed, and an unset time reads as the
    epoch, which counts as missing (no real sample is that old)."""
    new, kinds = tuple.__new__, _KINDS.get
    return [
        new(
            domain.Incoming,
            (
                s.metric,
                s.labels,
                ((ts := s.sample_time).seconds + ts.nanos * 1e-9) or None,
                s.value,
                s.unit,
                kinds(s.kind),
            ),
        )
        for s in samples
    ]


def _rejections(counts: Mapping[domain.Reject, int]) -> list[tel.PointRejectionCount]:
    return [
        tel.PointRejectionCount(reason=_REJECT_PB[r], count=n)
        for r, n in sorted(counts.items(), key=lambda x: _REJECT_PB[x[0]])
        if n
    ]


def _series(s: domain.Series) -> tel.Series:
    out = tel.Series(
        name=s.name,
        key=s.key,
        metric=s.metric,
        labels=dict(s.labels),
        unit=s.unit,
        kind=_KIND_PB[s.kind],
        description=s.description,
        create_time=protoconv.timestamp(s.create_time),
    )
    if s.last_point_time is not None:
        out.last_point_time.CopyFrom(protoconv.timestamp(s.last_point_time))
    return out


def _snapshot(snap: collector.Snapshot) -> tel_svc.CollectResponse:
    response = tel_svc.CollectResponse(
        within_slo=snap.within_slo, collect_time=protoconv.timestamp(snap.time)
    )
    window = duration_pb2.Duration()
    window.FromNanoseconds(round(snap.window * 1e9))
    for v in snap.values:
        response.metrics.add(
            metric=v.spec.metric,
            display_name=v.spec.display_name,
            series=v.spec.metric,
            value=v.value if v.value is not None else 0.0,
            unit=v.spec.unit,
            slo_target=v.spec.target,
            comparison=_COMPARISON_PB[v.spec.comparison],
            within_slo=v.within_slo,
            observed=v.observed,
            window=window,
            collect_time=protoconv.timestamp(snap.time),
        )
    for s in snap.sources:
        duration = duration_pb2.Duration()
        duration.FromNanoseconds(round(s.duration * 1e9))
        response.sources.add(
            url=s.url,
            kind=_SOURCE_KIND_PB[s.kind],
            result=_RESULT_PB[s.result],
            error_message=s.error,
            scrape_time=protoconv.timestamp(s.start),
            scrape_duration=duration,
            sample_count=s.samples,
        )
    return response


def _draft(a: tel.Alert) -> alerts.Draft:
    end = protoconv.seconds(a.end_time) if a.HasField("end_time") else None
    return alerts.Draft(
        fingerprint=a.fingerprint,
        state=_ALERT_STATES.get(a.state),
        labels=dict(a.labels),
        annotations=dict(a.annotations),
        start_time=protoconv.seconds(a.start_time) if a.HasField("start_time") else None,
        # Alertmanager's zero time (0001-01-01) means "not resolved".
        end_time=end if end is not None and end > 0 else None,
        generator_url=a.generator_url,
    )


def _alert(a: alerts.Alert) -> tel.Alert:
    out = tel.Alert(
        fingerprint=a.fingerprint,
        state=_ALERT_STATE_PB[a.state],
        labels=dict(a.labels),
        annotations=dict(a.annotations),
        start_time=protoconv.timestamp(a.start_time),
        generator_url=a.generator_url,
    )
    if a.end_time is not None:
        out.end_time.CopyFrom(protoconv.timestamp(a.end_time))
    return out
