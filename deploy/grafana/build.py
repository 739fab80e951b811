"""Builds the provisioned Grafana dashboards in deploy/grafana/dashboards/ from one place.

Run `python deploy/grafana/build.py` after editing; the JSON files are committed and are
what Grafana loads (deploy/grafana/provisioning). Every query uses the suite's real metric
names or the recording rules of deploy/prometheus/rules/recording.yml; tests/deploy checks
that each parses and names only known metrics.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

OUT = Path(__file__).parent / "dashboards"
DS = {"type": "prometheus", "uid": "${datasource}"}
FAULTS = "UNKNOWN|INTERNAL|UNAVAILABLE|DEADLINE_EXCEEDED|DATA_LOSS|UNIMPLEMENTED"


class Board:
    def __init__(self, uid: str, title: str, description: str, tags: list[str]) -> None:
        self.uid, self.title, self.description, self.tags = uid, title, description, tags
        self.panels: list[dict[str, Any]] = []
        self._x = 0
        self._y = 0
        self._row_h = 0

    def row(self, title: str) -> None:
        self._newline()
        self.panels.append(
            {"type": "row", "title": title, "collapsed": False, "id": len(self.panels) + 1,
             "gridPos": {"h": 1, "w": 24, "x": 0, "y": self._y}, "panels": []}
        )
        self._y += 1

    def _newline(self) -> None:
        if self._x:
            self._y += self._row_h
            self._x, self._row_h = 0, 0

    def panel(self, title: str, targets: list[tuple[str, str]], *, kind: str = "timeseries",
              unit: str = "short", w: int = 12, h: int = 8, description: str = "",
              thresholds: list[tuple[float | None, str]] | None = None,
              max_: float | None = None, min_: float | None = None) -> None:
        if self._x + w > 24:
            self._newline()
        steps = [{"color": c, "value": v} for v, c in (thresholds or [(None, "green")])]
        defaults: dict[str, Any] = {"unit": unit, "thresholds": {"mode": "absolute", "steps": steps}}
        if max_ is not None:
            defaults["max"] = max_
        if min_ is not None:
            defaults["min"] = min_
        if kind == "timeseries":
            defaults["custom"] = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10,
                                  "showPoints": "never",
                                  "thresholdsStyle": {"mode": "line" if thresholds else "off"}}
        panel = {
            "id": len(self.panels) + 1,
            "type": kind,
            "title": title,
            "description": description,
            "datasource": DS,
            "gridPos": {"h": h, "w": w, "x": self._x, "y": self._y},
            "fieldConfig": {"defaults": defaults, "overrides": []},
            "options": {"legend": {"displayMode": "list", "placement": "bottom"},
                        "tooltip": {"mode": "multi"}} if kind == "timeseries" else
                       {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                        "colorMode": "background", "graphMode": "area"},
            "targets": [
                {"refId": chr(ord("A") + i), "datasource": DS, "expr": expr,
                 "legendFormat": legend, "range": True}
                for i, (expr, legend) in enumerate(targets)
            ],
        }
        self.panels.append(panel)
        self._x += w
        self._row_h = max(self._row_h, h)

    def json(self) -> dict[str, Any]:
        return {
            "uid": self.uid,
            "title": self.title,
            "description": self.description,
            "tags": ["aiops", *self.tags],
            "editable": False,
            "schemaVersion": 39,
            "version": 1,
            "time": {"from": "now-6h", "to": "now"},
            "refresh": "30s",
            "timezone": "utc",
            "graphTooltip": 1,
            "links": [{"type": "dashboards", "tags": ["aiops"], "title": "AIOps dashboards",
                       "asDropdown": True}],
            "annotations": {"list": [{
                "name": "Alerts", "datasource": DS, "enable": True, "iconColor": "red",
                "expr": 'ALERTS{alertname=~"AIOps.*",alertstate="firing"}',
                "titleFormat": "{{alertname}}", "textFormat": "{{summary}}",
            }]},
            "templating": {"list": [{
                "name": "datasource", "label": "Prometheus", "type": "datasource",
                "query": "prometheus", "current": {"text": "Prometheus", "value": "Prometheus"},
            }]},
            "panels": self.panels,
        }


def grpc_panels(b: Board, service: str) -> None:
    sel = f'grpc_service="{service}"'
    b.row("gRPC")
    b.panel("RPC rate by method and code",
            [(f"sum by (grpc_method, grpc_code) (rate(grpc_server_handled_total{{{sel}}}[$__rate_interval]))",
              "{{grpc_method}} {{grpc_code}}")], unit="reqps", w=8)
    b.panel("Server-fault ratio",
            [(f"grpc_service:grpc_server_faults:ratio_rate5m{{{sel}}}", "server faults")],
            unit="percentunit", w=8, thresholds=[(None, "green"), (0.005, "red")],
            description="UNKNOWN, INTERNAL, UNAVAILABLE, DEADLINE_EXCEEDED, DATA_LOSS, UNIMPLEMENTED.")
    b.panel("Latency p50 / p95 / p99 by method",
            [(f"grpc_service_method:grpc_server_handling_seconds:p50_5m{{{sel}}}", "p50 {{grpc_method}}"),
             (f"grpc_service_method:grpc_server_handling_seconds:p95_5m{{{sel}}}", "p95 {{grpc_method}}"),
             (f"grpc_service_method:grpc_server_handling_seconds:p99_5m{{{sel}}}", "p99 {{grpc_method}}")],
            unit="s", w=8, thresholds=[(None, "green"), (0.15, "red")])
    b.panel("In-flight RPCs",
            [(f"sum(grpc_server_started_total{{{sel}}}) - sum(grpc_server_handled_total{{{sel}}})",
              "in flight")], w=8)
    b.panel("Outgoing calls without a deadline",
            [("sum(rate(grpc_client_calls_without_deadline_total[$__rate_interval])) or vector(0)", "calls/s")],
            unit="reqps", w=8, description="Should stay 0: every outgoing call gets a deadline.")


def process_panels(b: Board, service: str) -> None:
    sel = f'service="{service}"'
    b.row("Process")
    b.panel("CPU", [(f"sum by (instance) (rate(process_cpu_seconds_total{{{sel}}}[$__rate_interval]))",
                     "{{instance}}")], unit="percentunit", w=8)
    b.panel("Resident memory", [(f"process_resident_memory_bytes{{{sel}}}", "{{instance}}")],
            unit="bytes", w=8)
    b.panel("Scrape target up", [(f"up{{{sel}}}", "{{instance}}")], w=8, min_=0, max_=1)


def dependency_panel(b: Board, service: str, w: int = 8) -> None:
    b.panel("Dependencies up (readiness pings)",
            [(f'min by (dependency) (aiops_dependency_up{{service="{service}"}})', "{{dependency}}")],
            w=w, min_=0, max_=1, thresholds=[(None, "red"), (1, "green")])


def overview() -> Board:
    b = Board("aiops-overview", "AIOps Feedback & Stability",
              "The runbook's critical metrics: feedback, Redis, latency, errors, anomalies, "
              "drift and remediations.", ["overview"])
    b.row("Objectives")
    b.panel("Feedback success rate (> 99.5 %)", [("aiops:feedback_success:ratio_rate5m", "success")],
            kind="stat", unit="percentunit", w=4, h=5,
            thresholds=[(None, "red"), (0.995, "green")])
    b.panel("API p95 latency (< 150 ms)", [("aiops:gateway_api_request_duration_seconds:p95_5m", "p95")],
            kind="stat", unit="s", w=4, h=5, thresholds=[(None, "green"), (0.15, "red")])
    b.panel("API error rate (< 0.5 %)", [("slo:aiops_gateway_api_errors:ratio_rate5m", "5xx")],
            kind="stat", unit="percentunit", w=4, h=5,
            thresholds=[(None, "green"), (0.005, "red")])
    b.panel("Availability, 3 days (> 99.9 %)",
            [("1 - slo:aiops_gateway_api_errors:ratio_rate3d", "availability")],
            kind="stat", unit="percentunit", w=4, h=5,
            thresholds=[(None, "red"), (0.999, "green")])
    b.panel("Redis up", [("max(aiops_redis_up)", "redis")], kind="stat", w=4, h=5,
            thresholds=[(None, "red"), (1, "green")])
    b.panel("Error budget burn rate (1 h)",
            [("slo:aiops_gateway_api_errors:ratio_rate1h / 0.001", "burn rate")],
            kind="stat", w=4, h=5, thresholds=[(None, "green"), (6, "orange"), (14.4, "red")])
    b.row("Feedback")
    b.panel("Feedback rate by verdict and result",
            [("sum by (verdict, result) (rate(aiops_feedback_total[$__rate_interval]))",
              "{{verdict}} {{result}}")], unit="reqps")
    b.panel("Feedback success rate",
            [("aiops:feedback_success:ratio_rate5m", "success")], unit="percentunit",
            thresholds=[(None, "red"), (0.995, "green")])
    b.row("Redis health")
    b.panel("Redis up", [("aiops_redis_up", "{{instance}}"),
                         ('min by (service) (aiops_dependency_up{dependency="redis"})',
                          "readiness {{service}}")],
            w=8, min_=0, max_=1)
    b.panel("Redis connection failures (5 min)",
            [("aiops:redis_connection_failures:increase5m", "failures")], w=8,
            thresholds=[(None, "green"), (5, "red")])
    b.panel("Feedback storage failures (5 min)",
            [("reason:aiops_feedback_storage_failures:increase5m", "{{reason}}")], w=8,
            thresholds=[(None, "green"), (0.5, "red")])
    b.row("Latency and errors")
    b.panel("API latency p50 / p95 / p99",
            [("aiops:gateway_api_request_duration_seconds:p50_5m", "p50"),
             ("aiops:gateway_api_request_duration_seconds:p95_5m", "p95"),
             ("aiops:gateway_api_request_duration_seconds:p99_5m", "p99")],
            unit="s", thresholds=[(None, "green"), (0.15, "red")])
    b.panel("API error rate (5xx)",
            [("slo:aiops_gateway_api_errors:ratio_rate5m", "all /api/ routes"),
             ('route:aiops_gateway_request_errors:ratio_rate5m{route=~"/api/.*"}', "{{route}}")],
            unit="percentunit", thresholds=[(None, "green"), (0.005, "red")])
    b.panel("gRPC server-fault ratio by service",
            [("grpc_service:grpc_server_faults:ratio_rate5m", "{{grpc_service}}")],
            unit="percentunit", thresholds=[(None, "green"), (0.005, "red")])
    b.panel("gRPC p95 latency by method",
            [("grpc_service_method:grpc_server_handling_seconds:p95_5m",
              "{{grpc_service}}/{{grpc_method}}")], unit="s")
    b.row("Anomalies and drift")
    b.panel("Anomaly score per series (0..1)",
            [("max by (series) (aiops_anomaly_score)", "{{series}}")], min_=0, max_=1,
            thresholds=[(None, "green"), (0.9, "red")])
    b.panel("Drift p-value per series",
            [("min by (series) (aiops_anomaly_drift_p_value)", "{{series}}")], min_=0, max_=1,
            thresholds=[(None, "red"), (0.05, "green")],
            description="Below the line: the current window's distribution differs from the reference.")
    b.panel("Scored points by result",
            [("sum by (result) (rate(aiops_anomaly_points_total[$__rate_interval]))", "{{result}}")],
            unit="ops")
    b.row("Remediations")
    b.panel("Remediations by action and result (1 h)",
            [("action_result:aiops_remediation_actions:increase1h", "{{action}} {{result}}")])
    b.panel("Remediations refused by reason",
            [("sum by (reason) (increase(aiops_remediation_refusals_total[1h]))", "{{reason}}")])
    b.panel("Maintenance mode", [("max(aiops_gateway_maintenance_mode)", "maintenance")],
            kind="stat", w=6, h=5, thresholds=[(None, "green"), (1, "orange")])
    return b


def gateway() -> Board:
    b = Board("aiops-gateway", "AIOps gateway", "The REST gateway: requests, latency, errors.",
              ["gateway"])
    b.row("Requests")
    b.panel("Requests by route and status",
            [("sum by (route, status) (rate(aiops_gateway_requests_total[$__rate_interval]))",
              "{{route}} {{status}}")], unit="reqps")
    b.panel("5xx ratio by route",
            [("route:aiops_gateway_request_errors:ratio_rate5m", "{{route}}")], unit="percentunit",
            thresholds=[(None, "green"), (0.005, "red")])
    b.panel("p95 latency by route",
            [("route:aiops_gateway_request_duration_seconds:p95_5m", "{{route}}")], unit="s",
            thresholds=[(None, "green"), (0.15, "red")])
    b.panel("API latency p50 / p95 / p99",
            [("aiops:gateway_api_request_duration_seconds:p50_5m", "p50"),
             ("aiops:gateway_api_request_duration_seconds:p95_5m", "p95"),
             ("aiops:gateway_api_request_duration_seconds:p99_5m", "p99")], unit="s")
    b.panel("Error budget burn rate",
            [("slo:aiops_gateway_api_errors:ratio_rate5m / 0.001", "5 min"),
             ("slo:aiops_gateway_api_errors:ratio_rate1h / 0.001", "1 h"),
             ("slo:aiops_gateway_api_errors:ratio_rate6h / 0.001", "6 h")],
            thresholds=[(None, "green"), (6, "orange"), (14.4, "red")])
    b.panel("Maintenance mode", [("max(aiops_gateway_maintenance_mode)", "maintenance")], w=6,
            min_=0, max_=1)
    b.panel("Outgoing calls without a deadline",
            [("sum(rate(grpc_client_calls_without_deadline_total[$__rate_interval])) or vector(0)", "calls/s")],
            unit="reqps", w=6)
    process_panels(b, "gateway")
    return b


def feedback() -> Board:
    b = Board("aiops-feedback", "AIOps feedback", "Feedback on Redis (7-day TTL).", ["feedback"])
    b.row("Feedback")
    b.panel("Submissions by verdict and result",
            [("sum by (verdict, result) (rate(aiops_feedback_total[$__rate_interval]))",
              "{{verdict}} {{result}}")], unit="reqps", w=8)
    b.panel("Success rate", [("aiops:feedback_success:ratio_rate5m", "success")],
            unit="percentunit", w=8, thresholds=[(None, "red"), (0.995, "green")])
    b.panel("Storage failures by reason",
            [("sum by (reason) (increase(aiops_feedback_storage_failures_total[$__range]))", "{{reason}}")],
            kind="stat", w=8, thresholds=[(None, "green"), (1, "red")])
    b.row("Redis")
    b.panel("Redis up", [("aiops_redis_up", "{{instance}}")], w=8, min_=0, max_=1)
    b.panel("Redis connection failures",
            [("sum(increase(aiops_redis_connection_failures_total[5m]))", "per 5 min")], w=8,
            thresholds=[(None, "green"), (5, "red")])
    dependency_panel(b, "feedback")
    grpc_panels(b, "aiops.feedback.v1.FeedbackService")
    process_panels(b, "feedback")
    return b


def telemetry() -> Board:
    b = Board("aiops-telemetry", "AIOps telemetry", "Collection of the critical metrics.",
              ["telemetry"])
    b.row("Collector")
    b.panel("Points written by origin",
            [("sum by (origin) (rate(aiops_telemetry_points_written_total[$__rate_interval]))",
              "{{origin}}")], unit="ops", w=8)
    b.panel("Points rejected by reason",
            [("sum by (origin, reason) (rate(aiops_telemetry_points_rejected_total[$__rate_interval]))",
              "{{origin}} {{reason}}")], unit="ops", w=8)
    b.panel("Collection rounds by outcome",
            [("sum by (outcome) (increase(aiops_telemetry_collect_rounds_total[$__rate_interval]))",
              "{{outcome}}")], w=8)
    b.panel("Scrape p95 duration by source",
            [("histogram_quantile(0.95, sum by (source, le) "
              "(rate(aiops_telemetry_scrape_duration_seconds_bucket[$__rate_interval])))", "{{source}}")],
            unit="s", w=8)
    b.panel("Scrape errors",
            [("sum by (source, result) (increase(aiops_telemetry_scrape_errors_total[$__rate_interval]))",
              "{{source}} {{result}}")], w=8)
    b.panel("Lease holder", [("aiops_telemetry_lease_holder", "{{instance}}")], w=8, min_=0, max_=1,
            description="Exactly one replica should hold the collector lease.")
    b.row("Forwarding to anomaly")
    b.panel("Buffered points", [("sum(aiops_telemetry_forward_buffer_points)", "buffered")], w=8)
    b.panel("Sent, refused, dropped",
            [("sum(rate(aiops_telemetry_forward_sent_points_total[$__rate_interval]))", "sent"),
             ("sum(rate(aiops_telemetry_forward_refused_points_total[$__rate_interval]))", "refused"),
             ("sum(rate(aiops_telemetry_forward_dropped_points_total[$__rate_interval]))", "dropped")],
            unit="ops", w=8)
    b.panel("Stream to anomaly connected", [("min(aiops_telemetry_forward_connected)", "connected")],
            w=8, min_=0, max_=1)
    dependency_panel(b, "telemetry", w=24)
    grpc_panels(b, "aiops.telemetry.v1.TelemetryService")
    process_panels(b, "telemetry")
    return b


def anomaly() -> Board:
    b = Board("aiops-anomaly", "AIOps anomaly", "Scoring, drift and anomaly events.", ["anomaly"])
    b.row("Scores and drift")
    b.panel("Anomaly score per series (0..1)",
            [("max by (series) (aiops_anomaly_score)", "{{series}}")], min_=0, max_=1)
    b.panel("Drift p-value per series",
            [("min by (series) (aiops_anomaly_drift_p_value)", "{{series}}")], min_=0, max_=1,
            thresholds=[(None, "red"), (0.05, "green")])
    b.panel("Points by result",
            [("sum by (result) (rate(aiops_anomaly_points_total[$__rate_interval]))", "{{result}}")],
            unit="ops", w=8)
    b.panel("Batches rejected by reason",
            [("sum by (reason) (increase(aiops_anomaly_batches_rejected_total[$__rate_interval]))",
              "{{reason}}")], w=8)
    b.panel("Hand-offs to remediation",
            [("sum by (result) (increase(aiops_anomaly_suggest_total[$__rate_interval]))", "{{result}}")],
            w=8)
    dependency_panel(b, "anomaly", w=24)
    grpc_panels(b, "aiops.anomaly.v1.AnomalyService")
    process_panels(b, "anomaly")
    return b


def remediation() -> Board:
    b = Board("aiops-remediation", "AIOps remediation", "Suggestions, actions and their outcomes.",
              ["remediation"])
    b.row("Actions")
    b.panel("Actions by action and result",
            [("sum by (action, result) (increase(aiops_remediation_actions_total[$__rate_interval]))",
              "{{action}} {{result}}")], w=8)
    b.panel("Refusals by reason",
            [("sum by (reason) (increase(aiops_remediation_refusals_total[$__rate_interval]))",
              "{{reason}}")], w=8)
    b.panel("Suggestions served",
            [("sum(rate(aiops_remediation_suggestions_total[$__rate_interval]))", "suggestions")],
            unit="ops", w=8)
    dependency_panel(b, "remediation", w=24)
    grpc_panels(b, "aiops.remediation.v1.RemediationService")
    process_panels(b, "remediation")
    return b


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for build in (overview, gateway, feedback, telemetry, anomaly, remediation):
        board = build()
        path = OUT / f"{board.uid}.json"
        path.write_text(json.dumps(board.json(), indent=2) + "\n")


if __name__ == "__main__":
    main()
