"""The Prometheus scrape config, recording rules and alerts: checked and unit-tested with
promtool, and every alert carries a severity and a runbook link that resolves."""

from __future__ import annotations

import re
from typing import Any

import yaml

from tests.deploy import tools


def _rules(name: str) -> list[dict[str, Any]]:
    doc = yaml.safe_load((tools.PROMETHEUS / "rules" / name).read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def test_rule_files_pass_promtool_check() -> None:
    files = sorted(str(p) for p in (tools.PROMETHEUS / "rules").glob("*.yml"))
    assert files
    out = tools.run([tools.promtool(), "check", "rules", *files])
    assert "SUCCESS" in out


def test_promtool_unit_tests_of_the_rules_pass() -> None:
    tests = sorted(str(p.name) for p in (tools.PROMETHEUS / "tests").glob("*.yaml"))
    assert tests
    out = tools.run(
        [tools.promtool(), "test", "rules", *tests], cwd=tools.PROMETHEUS / "tests", timeout=110
    )
    assert "FAILED" not in out


def test_scrape_config_passes_promtool_check() -> None:
    tools.run([tools.promtool(), "check", "config", "prometheus.yml"], cwd=tools.PROMETHEUS)


def test_kubernetes_scrape_config_finds_annotated_pods() -> None:
    doc = yaml.safe_load((tools.PROMETHEUS / "prometheus-kubernetes.yml").read_text())
    (job,) = doc["scrape_configs"]
    assert job["kubernetes_sd_configs"][0]["role"] == "pod"
    keep = job["relabel_configs"][0]
    assert keep["action"] == "keep"
    assert keep["source_labels"] == ["__meta_kubernetes_pod_annotation_prometheus_io_scrape"]
    # The gateway Rollout's AnalysisTemplate filters the canary's series by this label.
    targets = {r.get("target_label") for r in job["relabel_configs"]}
    assert {"service", "rollouts_pod_template_hash"} <= targets


def test_runbook_alerts_exist_with_their_thresholds() -> None:
    alerts = {rule["alert"]: rule for rule in _rules("alerts.yml") if "alert" in rule}
    assert alerts["AIOpsLatencyHigh"]["for"] == "5m"
    assert "> 0.150" in alerts["AIOpsLatencyHigh"]["expr"]
    assert alerts["AIOpsErrorRateHigh"]["for"] == "10m"
    assert "> 0.005" in alerts["AIOpsErrorRateHigh"]["expr"]
    assert "> 5" in alerts["AIOpsRedisConnectionFailures"]["expr"]
    assert "> 0" in alerts["AIOpsFeedbackStorageFailure"]["expr"]
    assert {"AIOpsErrorBudgetBurnFast", "AIOpsErrorBudgetBurnSlow"} <= alerts.keys()


def test_every_alert_has_a_severity_and_a_runbook_section() -> None:
    anchors = tools.runbook_anchors()
    for rule in _rules("alerts.yml"):
        if "alert" not in rule:
            continue
        name = rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        url = rule["annotations"]["runbook_url"]
        assert url.startswith("docs/RUNBOOK.md#"), name
        assert url.partition("#")[2] in anchors, f"{name}: no runbook section for {url}"
        assert rule["annotations"]["summary"], name


def test_error_expressions_count_only_server_faults() -> None:
    for rule in _rules("alerts.yml") + _rules("recording.yml"):
        expr = rule["expr"]
        for codes in re.findall(r'grpc_code=~"([^"]+)"', expr):
            assert set(codes.split("|")) == tools.FAULT_CODES, expr
        assert 'grpc_code="' not in expr and "grpc_code!" not in expr, expr
        for status in re.findall(r'status=~"([^"]+)"', expr):
            assert status == "5..", expr
