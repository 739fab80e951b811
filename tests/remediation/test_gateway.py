"""The remediation API through the gateway, with real tokens over real HTTP."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiops.remediation.v1 import remediation_pb2 as rem
from aiops.remediation.v1 import remediation_service_pb2 as svc

from services.kit import serve
from tests.conftest import Gateway, serve_gateway
from tests.remediation.conftest import ADMIN, Kubectl

REMEDIATE = "/api/v1/aiops/remediate"


@pytest.fixture
async def gw(
    start_remediation: Any, feedback_running: serve.Running, kubectl: Kubectl, tmp_path: Path
) -> AsyncIterator[Gateway]:
    async with (
        start_remediation(
            AIOPS_REMEDIATION_EXECUTOR="kubernetes",
            AIOPS_REMEDIATION_COMMAND_PATH=f"{kubectl.bin_dir}:/usr/bin:/bin",
        ) as (running, _),
        serve_gateway(
            {"feedback": feedback_running, "remediation": running}, tmp_path / "keys"
        ) as gateway,
    ):
        yield gateway


def _body(action: str, kind: str = "TARGET_KIND_ROLLOUT", **extra: Any) -> dict[str, Any]:
    return {
        "action": action,
        "target": {"kind": kind, "namespace": "aiops", "name": "aiops-gateway"},
        "requestId": str(uuid.uuid4()),
        **extra,
    }


async def _post(gw: Gateway, path: str, role: str, body: Any) -> tuple[int, dict[str, Any]]:
    async with gw.session.post(gw.url(path), json=body, headers=gw.auth(role)) as resp:
        return resp.status, await resp.json()


def _reason(payload: dict[str, Any]) -> str:
    return next(
        d["reason"] for d in payload["error"]["details"] if d["@type"].endswith("ErrorInfo")
    )


def _fields(payload: dict[str, Any]) -> list[str]:
    return [
        v["field"]
        for d in payload["error"]["details"]
        if d["@type"].endswith("BadRequest")
        for v in d["fieldViolations"]
    ]


async def test_viewer_cannot_remediate(gw: Gateway, kubectl: Kubectl) -> None:
    status, payload = await _post(gw, REMEDIATE, "viewer", _body("scale_up", execute=True))
    assert status == 403 and payload["error"]["code"] == "PERMISSION_DENIED"
    assert kubectl.calls() == []


async def test_operator_destructive_without_approval_is_refused_naming_the_approval(
    gw: Gateway, kubectl: Kubectl
) -> None:
    status, payload = await _post(gw, REMEDIATE, "operator", _body("rollback", execute=True))
    assert status == 400 and payload["error"]["code"] == "FAILED_PRECONDITION"
    assert _reason(payload) == "APPROVAL_REQUIRED"
    assert "approve remediations/" in payload["error"]["message"]
    assert kubectl.calls() == []
    name = payload["error"]["message"].split("approve ")[1].split(" ")[0]
    rid = name.split("/")[1]
    async with gw.session.get(
        gw.url(f"/api/v1/aiops/remediations/{rid}"), headers=gw.auth("viewer")
    ) as resp:
        assert (await resp.json())["remediation"]["state"] == "REMEDIATION_STATE_PENDING_APPROVAL"
    approval = f"/api/v1/aiops/remediations/{rid}/approval"
    status, _ = await _post(gw, approval, "operator", {"decision": "APPROVAL_DECISION_APPROVE"})
    assert status == 403
    status, done = await _post(gw, approval, "admin", {"decision": "APPROVAL_DECISION_APPROVE"})
    assert status == 200 and done["remediation"]["state"] == "REMEDIATION_STATE_SUCCEEDED"
    assert kubectl.calls() == [
        ["kubectl", "argo", "rollouts", "undo", "aiops-gateway", "-n", "aiops"]
    ]


@pytest.mark.parametrize(
    ("action", "kind", "commands"),
    [
        ("rollback", "TARGET_KIND_ROLLOUT", ["kubectl argo rollouts undo aiops-gateway -n aiops"]),
        (
            "restart",
            "TARGET_KIND_DEPLOYMENT",
            ["kubectl rollout restart deployment/aiops-gateway -n aiops"],
        ),
        (
            "scale_up",
            "TARGET_KIND_ROLLOUT",
            [
                "kubectl get rollout/aiops-gateway -n aiops -o 'jsonpath={.spec.replicas}'",
                "kubectl scale rollout/aiops-gateway -n aiops --replicas=4",
            ],
        ),
    ],
)
async def test_admin_dry_run_returns_the_exact_kubectl_commands(
    gw: Gateway, kubectl: Kubectl, action: str, kind: str, commands: list[str]
) -> None:
    status, payload = await _post(gw, REMEDIATE, "admin", _body(action, kind))
    assert status == 200, payload
    r = payload["remediation"]
    assert r["state"] == "REMEDIATION_STATE_DRY_RUN_COMPLETE"
    assert r["commands"] == commands
    assert kubectl.calls() == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (_body("reboot_world"), "action"),
        (
            {
                **_body("scale_up"),
                "target": {"kind": "TARGET_KIND_ROLLOUT", "namespace": "kube-system", "name": "x"},
            },
            "target.namespace",
        ),
        (_body("scale_up", parameters={"replicas": "500"}), "parameters.replicas"),
        ({**_body("scale_up"), "requestId": "123"}, "request_id"),
        (_body("scale_up", anomaly="anomalies/../../etc"), "anomaly"),
    ],
)
async def test_bad_input_is_a_400_naming_the_field_and_nothing_runs(
    gw: Gateway, kubectl: Kubectl, body: dict[str, Any], field: str
) -> None:
    body["execute"] = True
    status, payload = await _post(gw, REMEDIATE, "admin", body)
    assert status == 400 and payload["error"]["code"] == "INVALID_ARGUMENT"
    assert field in _fields(payload)
    assert kubectl.calls() == []
    async with gw.session.get(
        gw.url("/api/v1/aiops/remediations"), headers=gw.auth("viewer")
    ) as resp:
        assert (await resp.json()).get("remediations", []) == []


async def test_malformed_remediation_id_is_a_400(gw: Gateway) -> None:
    async with gw.session.get(
        gw.url("/api/v1/aiops/remediations/not-an-id"), headers=gw.auth("viewer")
    ) as resp:
        payload = await resp.json()
    assert resp.status == 400 and "name" in _fields(payload)


async def test_list_suggestions_and_actions_routes(gw: Gateway) -> None:
    status, first = await _post(gw, REMEDIATE, "operator", _body("investigate_logs"))
    assert status == 200
    async with gw.session.get(
        gw.url("/api/v1/aiops/remediations?action=investigate_logs&state=dry_run_complete"),
        headers=gw.auth("viewer"),
    ) as resp:
        listed = await resp.json()
    assert [r["name"] for r in listed["remediations"]] == [first["remediation"]["name"]]
    status, sugg = await _post(
        gw,
        "/api/v1/aiops/suggestions",
        "viewer",
        {
            "signature": {
                "series": "http_latency_p95_ms",
                "direction": "DIRECTION_UP",
                "kind": "ANOMALY_KIND_SPIKE",
                "severity": "SEVERITY_CRITICAL",
            }
        },
    )
    assert status == 200 and sugg["suggestions"][0]["action"] == "scale_up"
    assert sugg["signatureKey"] == "http_latency_p95_ms:up:spike"
    async with gw.session.get(gw.url("/api/v1/aiops/actions"), headers=gw.auth("viewer")) as resp:
        actions = await resp.json()
    assert len(actions["actions"]) == 9
    status, _ = await _post(
        gw, "/api/v1/aiops/auto-remediation/kill-switch", "operator", {"engaged": True}
    )
    assert status == 403
    status, ks = await _post(
        gw, "/api/v1/aiops/auto-remediation/kill-switch", "admin", {"engaged": True}
    )
    assert status == 200 and ks == {"engaged": True}
    status, reloaded = await _post(gw, "/api/v1/aiops/playbook/reload", "admin", None)
    assert status == 200 and reloaded["actionCount"] == 9, reloaded


async def test_maintenance_actions_switch_the_real_gateway_maintenance_mode(
    gw: Gateway,
    start_remediation: Any,
    kubectl: Kubectl,
    redis_url: str,
    redis_prefix: str,
    tmp_path: Path,
    feedback_running: serve.Running,
) -> None:
    token = tmp_path / "maintenance.jwt"
    token.write_text(gw.token("admin", subject="svc-remediation"))
    async with (
        start_remediation() as (running, _),
        serve_gateway(
            {"feedback": feedback_running, "remediation": running},
            tmp_path / "keys",
            AIOPS_REDIS_URL=redis_url,
            AIOPS_GATEWAY_MAINTENANCE_KEY=f"{redis_prefix}maintenance",
            AIOPS_GATEWAY_MAINTENANCE_CACHE_SECONDS="0",
        ) as front,
        start_remediation(
            AIOPS_REMEDIATION_EXECUTOR="kubernetes",
            AIOPS_REMEDIATION_COMMAND_PATH=f"{kubectl.bin_dir}:/usr/bin:/bin",
            AIOPS_REMEDIATION_MAINTENANCE_URL=front.url("/api/v1/aiops/maintenance"),
            AIOPS_REMEDIATION_MAINTENANCE_TOKEN_FILE=str(token),
        ) as (_, stub),
    ):
        gateway = rem.Target(kind=rem.TARGET_KIND_GATEWAY)
        url = front.url("/api/v1/aiops/maintenance")
        dry = await stub.Remediate(
            svc.RemediateRequest(
                action="maintenance_on",
                target=gateway,
                reason="db upgrade",
                request_id=str(uuid.uuid4()),
            ),
            metadata=ADMIN,
        )
        assert list(dry.remediation.commands) == [
            f'POST {url} {{"enabled":true,"reason":"db upgrade"}}'
        ]
        on = await stub.Remediate(
            svc.RemediateRequest(
                action="maintenance_on",
                target=gateway,
                reason="db upgrade",
                request_id=str(uuid.uuid4()),
                execute=True,
            ),
            metadata=ADMIN,
        )
        assert on.remediation.state == rem.REMEDIATION_STATE_SUCCEEDED, on.remediation.output
        async with front.session.get(url, headers=front.auth("viewer")) as resp:
            state = await resp.json()
        assert state["enabled"] is True and state["reason"] == "db upgrade"
        off = await stub.Remediate(
            svc.RemediateRequest(
                action="maintenance_off",
                target=gateway,
                reason="done",
                request_id=str(uuid.uuid4()),
                execute=True,
            ),
            metadata=ADMIN,
        )
        assert off.remediation.state == rem.REMEDIATION_STATE_SUCCEEDED, off.remediation.output
        async with front.session.get(url, headers=front.auth("viewer")) as resp:
            assert (await resp.json())["enabled"] is False
