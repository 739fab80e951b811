"""A real Prometheus server (the Debian package's binary) scrapes the running suite with the
suite's own recording and alert rules loaded, and every dashboard, recording-rule and alert
query is evaluated against it: each must parse, and each must return data unless every
metric it reads belongs to a part of the suite this test does not drive (listed below).

Alert expressions are evaluated without their threshold (a healthy suite fires nothing):
what is checked is that the series they compare exist under the names they use.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
import yaml
from aiops.feedback.v1 import feedback_pb2 as fb
from aiops.feedback.v1 import feedback_service_pb2 as fb_svc
from aiops.feedback.v1 import feedback_service_pb2_grpc as fb_grpc

from services.anomaly import server as anomaly_server
from services.anomaly.settings import AnomalySettings
from services.feedback import server as feedback_server
from services.feedback.settings import FeedbackSettings
from services.kit import serve
from services.remediation import server as remediation_server
from services.remediation.settings import RemediationSettings
from services.telemetry import server as telemetry_server
from services.telemetry.settings import TelemetrySettings
from tests import helpers
from tests.conftest import Gateway, feedback_env, serve_gateway
from tests.deploy import test_grafana, tools

# Labelled series that appear only after events this test does not cause (each service's
# own tests do): rejected batches and points, failed scrapes, hand-offs to remediation,
# refused remediations; the firing ALERTS of a healthy suite; the per-series anomaly score
# and drift p-value, which appear once points are scored and a drift test has run.
NOT_DRIVEN = {
    "aiops_anomaly_score",
    "aiops_anomaly_drift_p_value",
    "aiops_anomaly_batches_rejected_total",
    "aiops_anomaly_suggest_total",
    "aiops_remediation_refusals_total",
    "aiops_telemetry_points_rejected_total",
    "aiops_telemetry_scrape_errors_total",
    "ALERTS",
}
# Alerts whose series exist only once the failure they report happened, and which this test
# does not cause (a remediation that failed or made things worse).
FAILURE_ONLY = {"rule AIOpsRemediationFailed"}
_THRESHOLD = re.compile(r"\s*(?:>=|<=|==|!=|>|<)\s*(?:\([^()]*\)|\d+(?:\.\d+)?)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.asynccontextmanager
async def prometheus(tmp_path: Path, targets: dict[str, str]) -> AsyncIterator[str]:
    """A Prometheus scraping `targets` ({service: host:port}) every second, with the rules."""
    binary = tools.tool("prometheus", "install it with `apt-get install -y prometheus`")
    rules = sorted(str(p) for p in (tools.PROMETHEUS / "rules").glob("*.yml"))
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": rules,
        "scrape_configs": [
            {
                "job_name": "aiops-gateway" if name == "gateway" else "aiops-services",
                "static_configs": [{"targets": [target], "labels": {"service": name}}],
            }
            for name, target in targets.items()
        ],
    }
    # One job per name: Prometheus refuses duplicate job names, so number the services.
    for i, job in enumerate(config["scrape_configs"]):
        if job["job_name"] == "aiops-services":
            job["job_name"] = f"aiops-services-{i}"
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = _free_port()
    proc = await asyncio.create_subprocess_exec(
        binary,
        f"--config.file={tmp_path / 'prometheus.yml'}",
        f"--storage.tsdb.path={tmp_path / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        if proc.returncode is None:
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()
        assert proc.stderr is not None
        await proc.stderr.read()


async def _query(session: aiohttp.ClientSession, base: str, expr: str) -> list[Any]:
    async with session.get(f"{base}/api/v1/query", params={"query": expr}) as resp:
        body = await resp.json()
    assert body["status"] == "success", (expr, body)
    result: list[Any] = body["data"]["result"]
    return result


def _queries() -> dict[str, str]:
    out: dict[str, str] = {}
    for name, expr in test_grafana._rule_exprs().items():
        out[f"rule {name}"] = _THRESHOLD.sub("", expr) if name.startswith("AIOps") else expr
    for file, board in test_grafana._dashboards().items():
        for i, expr in enumerate(test_grafana._targets(board)):
            out[f"{file} #{i}"] = re.sub(r"\$__(rate_interval|range|interval)", "1m", expr)
    return out


def _env(service: str, **extra: str) -> dict[str, str]:
    return {
        f"AIOPS_{service.upper()}_GRPC_PORT": "0",
        f"AIOPS_{service.upper()}_METRICS_PORT": "0",
        "AIOPS_BIND_HOST": "127.0.0.1",
        "AIOPS_SHUTDOWN_GRACE_SECONDS": "0.2",
        "AIOPS_HEALTH_PROBE_INTERVAL_SECONDS": "0.2",
        **extra,
    }


@contextlib.asynccontextmanager
async def suite(
    redis_url: str, redis_prefix: str, postgres_url: str, schema: str, keys: Path
) -> AsyncIterator[tuple[Gateway, dict[str, serve.Running]]]:
    """Every service and the gateway, in-process and wired to each other (plus a feedback
    replica whose Redis is gone); telemetry collects every half second and forwards to
    anomaly."""
    async with contextlib.AsyncExitStack() as stack:
        enter = stack.enter_async_context
        run: dict[str, serve.Running] = {}
        run["feedback"] = await enter(
            feedback_server.running(
                FeedbackSettings.from_env(feedback_env(redis_url, redis_prefix))
            )
        )
        # Nothing listens on port 1: every Redis command of this replica fails at once.
        broken = feedback_env(
            "redis://127.0.0.1:1/0", redis_prefix, AIOPS_FEEDBACK_REDIS_TIMEOUT_SECONDS="0.2"
        )
        run["broken"] = await enter(feedback_server.running(FeedbackSettings.from_env(broken)))
        feedback_addr = f"127.0.0.1:{run['feedback'].port}"
        run["remediation"] = await enter(
            remediation_server.running(
                RemediationSettings.from_env(
                    _env(
                        "remediation",
                        AIOPS_DATABASE_URL=postgres_url,
                        AIOPS_REMEDIATION_DATABASE_SCHEMA=schema,
                        AIOPS_REDIS_URL=redis_url,
                        AIOPS_REMEDIATION_KEY_PREFIX=f"{redis_prefix}rem:",
                        AIOPS_FEEDBACK_ADDR=feedback_addr,
                        AIOPS_ANOMALY_ADDR="127.0.0.1:9",
                    )
                )
            )
        )
        run["anomaly"] = await enter(
            anomaly_server.running(
                AnomalySettings.from_env(
                    _env(
                        "anomaly",
                        AIOPS_DATABASE_URL=postgres_url,
                        AIOPS_ANOMALY_DATABASE_SCHEMA=schema,
                        AIOPS_FEEDBACK_ADDR=feedback_addr,
                        AIOPS_REMEDIATION_ADDR=f"127.0.0.1:{run['remediation'].port}",
                    )
                )
            )
        )
        run["telemetry"] = await enter(
            telemetry_server.running(
                TelemetrySettings.from_env(
                    _env(
                        "telemetry",
                        AIOPS_DATABASE_URL=postgres_url,
                        AIOPS_TELEMETRY_DATABASE_SCHEMA=schema,
                        AIOPS_ANOMALY_ADDR=f"127.0.0.1:{run['anomaly'].port}",
                        AIOPS_TELEMETRY_COLLECT_INTERVAL_SECONDS="0.5",
                        AIOPS_TELEMETRY_SCRAPE_TARGETS=(
                            f"http://127.0.0.1:{run['feedback'].metrics_port}/metrics"
                        ),
                    )
                )
            )
        )
        backends = {k: v for k, v in run.items() if k != "broken"}
        gw = await enter(serve_gateway(backends, keys, redis_url))
        yield gw, run


async def _drive(gw: Gateway, broken: serve.Running) -> None:
    """Traffic that produces the gateway's and every service's metrics: stored, replayed,
    invalid and unavailable feedback, Redis connection failures, reads of every service."""
    key = {"Idempotency-Key": "6f1c1c9e-0d2e-4b57-9f1e-6f0d7c1f7a10"}
    body = {"target": {"kind": "TARGET_KIND_ALERT", "id": "al-1"}, "verdict": "VERDICT_CONFIRMED"}
    for headers in ({}, key, key):
        async with gw.session.post(
            gw.url("/api/v1/aiops/feedback"), json=body, headers={**gw.auth("operator"), **headers}
        ) as resp:
            assert resp.status in (200, 201)
    async with gw.session.post(
        gw.url("/api/v1/aiops/feedback"), json={"verdict": 1}, headers=gw.auth("operator")
    ) as resp:
        assert resp.status == 400
    for path in (
        "/api/v1/aiops/feedback",
        "/api/v1/aiops/feedback/stats",
        "/api/v1/aiops/series",
        "/api/v1/aiops/anomalies",
        "/api/v1/aiops/remediations",
        "/api/v1/aiops/health",
        "/api/v1/aiops/nothing-here",
    ):
        async with gw.session.get(gw.url(path), headers=gw.auth("viewer")) as resp:
            await resp.read()
    # A dry run (the default): counted by action and result, nothing executed.
    remediate = {
        "action": "scale_up",
        "target": {"kind": "TARGET_KIND_DEPLOYMENT", "namespace": "aiops", "name": "feedback"},
        "requestId": "0d9a3c52-8a53-4d7e-9a55-3f1f2b6f5c11",
    }
    async with gw.session.post(
        gw.url("/api/v1/aiops/remediate"), json=remediate, headers=gw.auth("operator")
    ) as resp:
        assert resp.status == 200, await resp.text()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{broken.port}") as channel:
        stub = fb_grpc.FeedbackServiceStub(channel)
        request = fb_svc.SubmitFeedbackRequest(
            feedback=fb.Feedback(
                target=fb.Target(kind=fb.TARGET_KIND_ALERT, id="al-2"), verdict=fb.VERDICT_CONFIRMED
            )
        )
        for _ in range(7):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.SubmitFeedback(request, timeout=5)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_every_dashboard_and_rule_query_returns_data_from_the_running_suite(
    redis_url: str, redis_prefix: str, postgres_url: str, pg_schema: str, tmp_path: Path
) -> None:
    async with (
        suite(redis_url, redis_prefix, postgres_url, pg_schema, tmp_path / "keys") as (gw, run),
        prometheus(
            tmp_path,
            {
                "gateway": gw.base_url.removeprefix("http://"),
                **{
                    name: f"127.0.0.1:{running.metrics_port}"
                    for name, running in run.items()
                    if name != "broken"
                },
            },
        ) as base,
        aiohttp.ClientSession() as session,
    ):

        async def scraping() -> None:
            try:
                async with session.get(f"{base}/-/ready") as resp:
                    assert resp.status == 200, "prometheus is starting"
            except aiohttp.ClientConnectionError as exc:
                raise AssertionError(f"prometheus not listening yet: {exc}") from exc
            assert len(await _query(session, base, "up == 1")) == 5

        await helpers.eventually(scraping, timeout=30)
        await _drive(gw, run["broken"])
        queries = _queries()
        assert len(queries) > 60

        async def answered() -> None:
            missing = []
            for name, expr in queries.items():
                result = await _query(session, base, expr)
                expected = name not in FAILURE_ONLY and not (
                    test_grafana._metric_names(expr) <= NOT_DRIVEN
                )
                if expected and not result:
                    missing.append(f"{name}: {expr}")
            assert not missing, "no data for:\n" + "\n".join(missing)

        await helpers.eventually(answered, timeout=45)

        # The runbook's failure alerts really fire on the failures driven above.
        async def firing() -> None:
            alerts = await _query(session, base, 'ALERTS{alertstate=~"pending|firing"}')
            names = {a["metric"]["alertname"] for a in alerts}
            assert {"AIOpsFeedbackStorageFailure", "AIOpsRedisConnectionFailures"} <= names

        await helpers.eventually(firing, timeout=30)
