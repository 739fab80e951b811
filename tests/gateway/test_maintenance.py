"""Maintenance mode through the gateway: writes refused with 503 and the reason, reads and
health unaffected, obeyed by a second replica, ends by itself."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from services.kit import serve
from tests import helpers
from tests.conftest import Deps, Gateway, other_services, serve_gateway

FEEDBACK = "/api/v1/aiops/feedback"
ANOMALY = {"target": {"kind": "TARGET_KIND_ANOMALY", "id": "a-1"}, "verdict": "VERDICT_CONFIRMED"}


async def call(
    gw: Gateway, method: str, path: str, role: str | None = None, **kwargs: Any
) -> tuple[int, Any, Any]:
    headers = gw.auth(role) if role else {}
    async with gw.session.request(method, gw.url(path), headers=headers, **kwargs) as resp:
        return resp.status, await resp.json(content_type=None), resp.headers


def _in(seconds: float) -> str:
    when = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds)
    return when.isoformat().replace("+00:00", "Z")


async def test_maintenance_refuses_writes_on_every_replica_and_ends_by_itself(
    feedback_running: serve.Running, tmp_path: Path, redis_url: str, deps: Deps
) -> None:
    async with (
        other_services(deps, feedback_running) as others,
        serve_gateway(
            {"feedback": feedback_running, **others},
            tmp_path / "k",
            redis_url,
            AIOPS_GATEWAY_MAINTENANCE_CACHE_SECONDS="0.1",
        ) as first,
        serve_gateway(
            {"feedback": feedback_running, **others},
            tmp_path / "k",
            redis_url,
            AIOPS_GATEWAY_MAINTENANCE_CACHE_SECONDS="0.1",
        ) as second,
    ):
        body = {"enabled": True, "reason": "redis upgrade", "endTime": _in(2.5)}
        status, state, _ = await call(
            first, "POST", "/api/v1/aiops/maintenance", "operator", json=body
        )
        assert status == 403
        status, state, _ = await call(
            first, "POST", "/api/v1/aiops/maintenance", "admin", json=body
        )
        assert status == 200 and state["enabled"] and state["reason"] == "redis upgrade"

        async def refused(gw: Gateway) -> None:
            status, reply, headers = await call(gw, "POST", FEEDBACK, "operator", json=ANOMALY)
            assert status == 503, reply
            assert reply["error"]["details"][0]["reason"] == "MAINTENANCE"
            assert "redis upgrade" in reply["error"]["message"]
            assert 1 <= int(headers["Retry-After"]) <= 3

        await refused(first)
        await helpers.eventually(lambda: refused(second))
        assert (await call(second, "DELETE", f"{FEEDBACK}?all=true", "admin"))[0] == 503
        assert (await call(second, "GET", FEEDBACK, "viewer"))[0] == 200
        assert (await call(second, "GET", "/health"))[0] == 200
        assert (await call(second, "GET", "/.well-known/jwks.json"))[0] == 200
        status, health, _ = await call(second, "GET", "/api/v1/aiops/health", "viewer")
        assert health["maintenance"]["enabled"] is True
        async with second.session.get(second.url("/metrics")) as resp:
            assert "aiops_gateway_maintenance_mode 1.0" in await resp.text()

        async def accepted(gw: Gateway) -> None:
            status, reply, _ = await call(gw, "POST", FEEDBACK, "operator", json=ANOMALY)
            assert status == 201, reply

        await helpers.eventually(lambda: accepted(second), timeout=6)
        await accepted(first)


async def test_maintenance_can_be_switched_off(gateway: Gateway) -> None:
    on = {"enabled": True, "reason": "db failover"}
    assert (await call(gateway, "POST", "/api/v1/aiops/maintenance", "admin", json=on))[0] == 200
    assert (await call(gateway, "POST", FEEDBACK, "operator", json=ANOMALY))[0] == 503
    off = {"enabled": False}
    status, state, _ = await call(gateway, "POST", "/api/v1/aiops/maintenance", "admin", json=off)
    assert status == 200 and state == {"enabled": False}
    assert (await call(gateway, "POST", FEEDBACK, "operator", json=ANOMALY))[0] == 201


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"enabled": "yes"}, "enabled"),
        ({"enabled": True}, "reason"),
        ({"enabled": True, "reason": "x", "endTime": "tomorrow"}, "endTime"),
        ({"enabled": True, "reason": "x", "endTime": "2000-01-01T00:00:00Z"}, "endTime"),
        ({"enabled": True, "reason": "x" * 501}, "reason"),
        ({"enabled": True, "reason": "x", "colour": 1}, "colour"),
    ],
)
async def test_bad_maintenance_requests_name_the_field(
    gateway: Gateway, body: dict[str, Any], field: str
) -> None:
    status, reply, _ = await call(gateway, "POST", "/api/v1/aiops/maintenance", "admin", json=body)
    assert status == 400
    fields = [v["field"] for d in reply["error"]["details"] for v in d.get("fieldViolations", [])]
    assert field in fields
