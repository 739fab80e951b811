"""Request builders of the telemetry routes (series, pushed points, Alertmanager webhooks).

The Alertmanager webhook body is Alertmanager's own JSON, not the proto3 JSON of
`IngestAlertsRequest`, so it is converted here field by field; anything that does not fit
is a 400 naming the field.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping, MutableMapping
from typing import Any

from aiops.telemetry.v1 import telemetry_pb2 as tel
from aiops.telemetry.v1 import telemetry_service_pb2 as tel_svc
from google.protobuf import timestamp_pb2
from google.protobuf.message import Message

from gateway import translate
from services.kit import errors

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)?")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_SERIES_ID = re.compile(r"[0-9a-f]{16}")
_STATES = {"firing": tel.ALERT_STATE_FIRING, "resolved": tel.ALERT_STATE_RESOLVED}
MAX_ALERTS = 1000


def _bad(field: str, description: str, reason: str = "QUERY_INVALID") -> errors.InvalidArgument:
    return errors.invalid([errors.FieldViolation(field[:100], description)], reason)


def _labels(query: Mapping[str, str], name: str, out: MutableMapping[str, str]) -> None:
    for part in filter(None, (p.strip() for p in query.get(name, "").split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise _bad(name, "must be comma-separated key=value pairs")
        out[key.strip()] = value.strip()


def list_series(
    query: Mapping[str, str], match: Mapping[str, str], body: bytes, headers: Mapping[str, str]
) -> Message:
    request = tel_svc.ListSeriesRequest(
        page_size=translate.query_int(query, "pageSize"), page_token=query.get("pageToken", "")
    )
    request.filter.metric = query.get("metric", "")
    request.filter.kind = translate.query_enum(query, "kind", tel.SeriesKind, "SERIES_KIND_")
    _labels(query, "labels", request.filter.labels)
    return request


def query_series(
    query: Mapping[str, str], match: Mapping[str, str], body: bytes, headers: Mapping[str, str]
) -> Message:
    """`{series}` is a series id (16 hex digits, from `name`) or a metric name such as
    `latency_p95`; the range defaults to the last hour."""
    series = match["series"]
    if _SERIES_ID.fullmatch(series):
        request = tel_svc.QuerySeriesRequest(name=f"series/{series}")
    else:
        request = tel_svc.QuerySeriesRequest(metric=series)
        _labels(query, "labels", request.labels)
    rng = request.time_range
    if not translate.query_time(query, "endTime", rng.end_time):
        rng.end_time.FromNanoseconds(time.time_ns())
    if not translate.query_time(query, "startTime", rng.start_time):
        rng.start_time.FromNanoseconds(rng.end_time.ToNanoseconds() - 3600 * 10**9)
    step = query.get("step", "")
    if step:
        found = _DURATION.fullmatch(step)
        if not found:
            raise _bad("step", "must be a duration such as 60s, 5m or 1h")
        request.step.FromNanoseconds(round(float(found[1]) * _UNIT_SECONDS[found[2]] * 1e9))
        request.aggregation = (
            translate.query_enum(query, "aggregation", tel.Aggregation, "AGGREGATION_")
            or tel.AGGREGATION_AVG
        )
    return request


def write_points(
    query: Mapping[str, str], match: Mapping[str, str], body: bytes, headers: Mapping[str, str]
) -> Message:
    return translate.parse_body(body, tel_svc.WritePointsRequest())


def list_alerts(
    query: Mapping[str, str], match: Mapping[str, str], body: bytes, headers: Mapping[str, str]
) -> Message:
    return tel_svc.ListAlertsRequest(
        state=translate.query_enum(query, "state", tel.AlertState, "ALERT_STATE_"),
        page_size=translate.query_int(query, "pageSize"),
        page_token=query.get("pageToken", ""),
    )


# -- Alertmanager webhook ----------------------------------------------------------------------
def _body(field: str, description: str) -> errors.InvalidArgument:
    return _bad(field, description, "ALERTMANAGER_PAYLOAD_INVALID")


def _text(data: Mapping[str, Any], key: str, path: str) -> str:
    value = data.get(key, "")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _body(path, "must be a string")
    return value


def _string_map(raw: Any, path: str, out: MutableMapping[str, str]) -> None:
    if raw is None:
        return
    if not isinstance(raw, dict):
        raise _body(path, "must be an object of strings")
    for key, value in raw.items():
        if not isinstance(value, str):
            raise _body(f"{path}.{key}", "must be a string")
        out[key] = value


def _time(raw: Any, path: str, out: timestamp_pb2.Timestamp) -> None:
    if raw is None or raw == "":
        return
    if not isinstance(raw, str):
        raise _body(path, "must be an RFC 3339 time")
    if raw.startswith("0001-01-01"):
        return  # Alertmanager's zero time: not set
    try:
        out.FromJsonString(raw)
    except ValueError:
        raise _body(path, "must be an RFC 3339 time") from None


def ingest_alerts(
    query: Mapping[str, str], match: Mapping[str, str], body: bytes, headers: Mapping[str, str]
) -> Message:
    """Converts Alertmanager's webhook payload (version 4) into an IngestAlertsRequest."""
    if not body.strip():
        raise _bad("body", "an Alertmanager webhook payload is required", "BODY_MISSING")
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise _bad("body", "is not valid JSON", "BODY_MALFORMED") from None
    if not isinstance(data, dict) or not isinstance(data.get("alerts"), list):
        raise _body("alerts", "an Alertmanager webhook payload with an alerts list is required")
    if not 1 <= len(data["alerts"]) <= MAX_ALERTS:
        raise _body("alerts", f"must hold 1 to {MAX_ALERTS} alerts")
    request = tel_svc.IngestAlertsRequest(
        receiver=_text(data, "receiver", "receiver"),
        group_key=_text(data, "groupKey", "groupKey"),
    )
    for i, raw in enumerate(data["alerts"]):
        path = f"alerts[{i}]"
        if not isinstance(raw, dict):
            raise _body(path, "must be an object")
        status = _text(raw, "status", f"{path}.status")
        alert = request.alerts.add(
            fingerprint=_text(raw, "fingerprint", f"{path}.fingerprint"),
            generator_url=_text(raw, "generatorURL", f"{path}.generatorURL"),
            # An unknown status stays unset; the service counts the alert as rejected.
            state=_STATES.get(status, tel.ALERT_STATE_UNSPECIFIED),
        )
        _string_map(raw.get("labels"), f"{path}.labels", alert.labels)
        _string_map(raw.get("annotations"), f"{path}.annotations", alert.annotations)
        _time(raw.get("startsAt"), f"{path}.startsAt", alert.start_time)
        if status == "resolved":
            _time(raw.get("endsAt"), f"{path}.endsAt", alert.end_time)
    return request
