"""Telemetry settings: defaults that watch the suite itself, and every problem at once."""

from __future__ import annotations

import pytest

from services.kit import settings as kit_settings
from services.telemetry.settings import TelemetrySettings


def test_default_targets_are_the_suites_own_metrics_endpoints() -> None:
    s = TelemetrySettings.from_env({})
    assert s.scrape_targets == (
        "http://127.0.0.1:3000/metrics",
        "http://127.0.0.1:9151/metrics",
        "http://127.0.0.1:9152/metrics",
        "http://127.0.0.1:9153/metrics",
        "http://127.0.0.1:9154/metrics",
    )
    assert s.anomaly_addr == "127.0.0.1:50053"
    assert s.anomaly_replicas == ()
    assert s.retention_seconds == 30 * 86400
    moved = TelemetrySettings.from_env(
        {
            "AIOPS_GATEWAY_PORT": "3100",
            "AIOPS_FEEDBACK_METRICS_ADDR": "10.0.0.5:9999",
            "AIOPS_ANOMALY_METRICS_PORT": "0",
        }
    )
    assert moved.scrape_targets == (
        "http://127.0.0.1:3100/metrics",
        "http://10.0.0.5:9999/metrics",
        "http://127.0.0.1:9152/metrics",
        "http://127.0.0.1:9154/metrics",
    )


def test_bad_values_are_reported_together() -> None:
    with pytest.raises(kit_settings.SettingsError) as exc:
        TelemetrySettings.from_env(
            {
                "AIOPS_TELEMETRY_SCRAPE_TARGETS": "localhost:9100",
                "AIOPS_TELEMETRY_PROMETHEUS_QUERIES": "[1, 2]",
                "AIOPS_TELEMETRY_COLLECT_INTERVAL_SECONDS": "1",
                "AIOPS_TELEMETRY_SCRAPE_TIMEOUT_SECONDS": "2",
                "AIOPS_ANOMALY_ADDR": "nohost",
                "AIOPS_ANOMALY_REPLICAS": "a:1, b ,c:70000",
            }
        )
    assert len(exc.value.problems) == 6
    assert any("'b' is not host:port" in p for p in exc.value.problems)


def test_anomaly_replicas_are_a_list_of_addresses() -> None:
    s = TelemetrySettings.from_env(
        {"AIOPS_ANOMALY_REPLICAS": " anomaly-0.anomaly-replicas:50053, anomaly-1.x:50053 ,"}
    )
    assert s.anomaly_replicas == ("anomaly-0.anomaly-replicas:50053", "anomaly-1.x:50053")
