"""Remediate, Approve, the audit trail and the safety rules, on real Postgres and Redis."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
from aiohttp import web
from aiops.remediation.v1 import remediation_pb2 as rem
from aiops.remediation.v1 import remediation_service_pb2 as svc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from services.kit import pg
from tests import helpers
from tests.remediation.conftest import ADMIN, OPERATOR, VIEWER, Kubectl

ROLLOUT = rem.Target(kind=rem.TARGET_KIND_ROLLOUT, namespace="aiops", name="web")
DEPLOY = rem.Target(kind=rem.TARGET_KIND_DEPLOYMENT, namespace="aiops", name="api")


def _req(action: str, target: rem.Target = ROLLOUT, **kw: Any) -> svc.RemediateRequest:
    return svc.RemediateRequest(action=action, target=target, request_id=str(uuid.uuid4()), **kw)


async def _fails(call: Any, code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == code, info.value.details()
    return info.value


def _retry_seconds(err: grpc.aio.AioRpcError) -> float:
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None
    for d in status.details:
        if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            d.Unpack(info)
            return info.retry_delay.ToNanoseconds() / 1e9
    raise AssertionError("no RetryInfo")


@pytest.fixture
async def audit(postgres_url: str, pg_schema: str) -> AsyncIterator[asyncpg.Pool]:
    async with pg.pool(postgres_url, schema=pg_schema) as db:
        yield db


async def _events(db: asyncpg.Pool, name: str) -> list[tuple[str, str]]:
    rows = await db.fetch(
        "SELECT event, state FROM remediation_audit WHERE id = $1 ORDER BY seq",
        name.split("/")[1],
    )
    return [(r["event"], r["state"]) for r in rows]


@pytest.fixture
async def kube(start_remediation: Any, kubectl: Kubectl) -> AsyncIterator[Any]:
    async with start_remediation(
        AIOPS_REMEDIATION_EXECUTOR="kubernetes",
        AIOPS_REMEDIATION_COMMAND_PATH=f"{kubectl.bin_dir}:/usr/bin:/bin",
        AIOPS_REMEDIATION_KUBE_CONTEXT="prod-eu",
    ) as (_, stub):
        yield stub


@dataclass
class Hook:
    url: str
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    entered: asyncio.Event = field(default_factory=asyncio.Event)


@pytest.fixture
async def hook() -> AsyncIterator[Hook]:
    state = Hook("")
    state.gate.set()

    async def handle(request: web.Request) -> web.Response:
        state.received.append((dict(request.headers), await request.read()))
        state.entered.set()
        await state.gate.wait()
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/hook", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    state.url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    try:
        yield state
    finally:
        state.gate.set()
        await runner.cleanup()


# --- dry run and the kubernetes executor ------------------------------------------------


async def test_dry_run_is_the_default_and_records_the_exact_commands(
    kube: Any, kubectl: Kubectl, audit: asyncpg.Pool
) -> None:
    reply = await kube.Remediate(_req("rollback", reason="p95 up after v5.7.1"), metadata=OPERATOR)
    r = reply.remediation
    assert r.state == rem.REMEDIATION_STATE_DRY_RUN_COMPLETE and not r.execute
    assert list(r.commands) == ["kubectl --context prod-eu argo rollouts undo web -n aiops"]
    assert r.requester == "olga" and r.reason == "p95 up after v5.7.1"
    assert kubectl.calls() == []
    assert await _events(audit, r.name) == [("dry_run", "dry_run_complete")]


async def test_kubernetes_executor_runs_the_exact_argument_lists(
    kube: Any, kubectl: Kubectl, audit: asyncpg.Pool
) -> None:
    reply = await kube.Remediate(
        _req("scale_up", DEPLOY, parameters={"replicas": "6"}, execute=True), metadata=OPERATOR
    )
    r = reply.remediation
    assert r.state == rem.REMEDIATION_STATE_SUCCEEDED, r.output
    assert kubectl.calls() == [
        [
            "kubectl",
            "--context",
            "prod-eu",
            "get",
            "deployment/api",
            "-n",
            "aiops",
            "-o",
            "jsonpath={.spec.replicas}",
        ],
        [
            "kubectl",
            "--context",
            "prod-eu",
            "scale",
            "deployment/api",
            "-n",
            "aiops",
            "--replicas=6",
        ],
    ]
    assert r.duration.ToNanoseconds() > 0
    assert await _events(audit, r.name) == [("running", "running"), ("succeeded", "succeeded")]
    row = await audit.fetchrow(
        "SELECT requester, reason, anomaly, execute, outcome, duration_ms FROM remediation_audit"
        " WHERE id = $1 AND event = 'succeeded'",
        r.name.split("/")[1],
    )
    assert row["requester"] == "olga" and row["execute"] and row["duration_ms"] > 0


async def test_a_failing_command_is_recorded_as_failed(
    start_remediation: Any, kubectl: Kubectl
) -> None:
    kubectl.bin_dir.joinpath("kubectl").write_text("#!/bin/sh\necho boom\nexit 3\n")
    async with start_remediation(
        AIOPS_REMEDIATION_EXECUTOR="kubernetes",
        AIOPS_REMEDIATION_COMMAND_PATH=f"{kubectl.bin_dir}:/usr/bin:/bin",
    ) as (_, stub):
        reply = await stub.Remediate(_req("investigate_logs", execute=True), metadata=OPERATOR)
    assert reply.remediation.state == rem.REMEDIATION_STATE_FAILED
    assert "exit status 3" in reply.remediation.output


# --- RBAC and approval ------------------------------------------------------------------


async def test_viewer_cannot_remediate(kube: Any) -> None:
    err = await _fails(
        kube.Remediate(_req("scale_up"), metadata=VIEWER), grpc.StatusCode.PERMISSION_DENIED
    )
    assert helpers.error_info(err).reason == "ROLE_REQUIRED"


async def test_destructive_action_needs_approval_then_runs(
    kube: Any, kubectl: Kubectl, audit: asyncpg.Pool
) -> None:
    err = await _fails(
        kube.Remediate(_req("rollback", execute=True), metadata=OPERATOR),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    info = helpers.error_info(err)
    assert info.reason == "APPROVAL_REQUIRED"
    name = info.metadata["remediation"]
    assert name in err.details() and kubectl.calls() == []
    got = await kube.GetRemediation(svc.GetRemediationRequest(name=name))
    assert got.remediation.state == rem.REMEDIATION_STATE_PENDING_APPROVAL

    await _fails(
        kube.Approve(
            svc.ApproveRequest(name=name, decision=rem.APPROVAL_DECISION_APPROVE), metadata=OPERATOR
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    done = await kube.Approve(
        svc.ApproveRequest(name=name, decision=rem.APPROVAL_DECISION_APPROVE, comment="go"),
        metadata=ADMIN,
    )
    assert done.remediation.state == rem.REMEDIATION_STATE_SUCCEEDED
    assert done.remediation.approver == "ada" and done.remediation.approval_comment == "go"
    assert kubectl.calls() == [
        ["kubectl", "--context", "prod-eu", "argo", "rollouts", "undo", "web", "-n", "aiops"]
    ]
    again = await _fails(
        kube.Approve(
            svc.ApproveRequest(name=name, decision=rem.APPROVAL_DECISION_APPROVE), metadata=ADMIN
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert helpers.error_info(again).reason == "NOT_PENDING_APPROVAL"
    assert [e for e, _ in await _events(audit, name)] == [
        "approval_requested",
        "approved",
        "running",
        "succeeded",
    ]


async def test_denied_remediation_never_runs(kube: Any, kubectl: Kubectl) -> None:
    err = await _fails(
        kube.Remediate(_req("restart", DEPLOY, execute=True), metadata=OPERATOR),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    name = helpers.error_info(err).metadata["remediation"]
    done = await kube.Approve(
        svc.ApproveRequest(name=name, decision=rem.APPROVAL_DECISION_DENY), metadata=ADMIN
    )
    assert done.remediation.state == rem.REMEDIATION_STATE_DENIED
    assert kubectl.calls() == []


async def test_admin_runs_a_destructive_action_directly(kube: Any, kubectl: Kubectl) -> None:
    reply = await kube.Remediate(_req("restart", DEPLOY, execute=True), metadata=ADMIN)
    assert reply.remediation.state == rem.REMEDIATION_STATE_SUCCEEDED
    assert kubectl.calls() == [
        ["kubectl", "--context", "prod-eu", "rollout", "restart", "deployment/api", "-n", "aiops"]
    ]


# --- cooldown, rate limit, lock, idempotency --------------------------------------------


async def test_cooldown_refuses_a_second_run_with_a_retry_delay(
    kube: Any, kubectl: Kubectl, audit: asyncpg.Pool
) -> None:
    await kube.Remediate(_req("scale_up", execute=True), metadata=OPERATOR)
    err = await _fails(
        kube.Remediate(_req("scale_up", execute=True), metadata=OPERATOR),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    )
    info = helpers.error_info(err)
    assert info.reason == "COOLDOWN_ACTIVE"
    assert 590 < _retry_seconds(err) <= 600
    assert await _events(audit, info.metadata["remediation"]) == [("refused", "refused")]
    assert len(kubectl.calls()) == 2  # the first run's get + scale only
    # Another target, or another action on the same target, is not cooling down.
    await kube.Remediate(_req("scale_up", DEPLOY, execute=True), metadata=OPERATOR)
    await kube.Remediate(_req("investigate_logs", execute=True), metadata=OPERATOR)


async def test_global_rate_limit(
    start_remediation: Any, kubectl: Kubectl, audit: asyncpg.Pool
) -> None:
    async with start_remediation(
        AIOPS_REMEDIATION_EXECUTOR="kubernetes",
        AIOPS_REMEDIATION_COMMAND_PATH=f"{kubectl.bin_dir}:/usr/bin:/bin",
        AIOPS_REMEDIATION_RATE_LIMIT="2",
        AIOPS_REMEDIATION_RATE_WINDOW_SECONDS="60",
    ) as (_, stub):
        for name in ("a", "b"):
            target = rem.Target(kind=rem.TARGET_KIND_DEPLOYMENT, namespace="aiops", name=name)
            await stub.Remediate(_req("investigate_logs", target, execute=True), metadata=OPERATOR)
        target = rem.Target(kind=rem.TARGET_KIND_DEPLOYMENT, namespace="aiops", name="c")
        err = await _fails(
            stub.Remediate(_req("investigate_logs", target, execute=True), metadata=OPERATOR),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
        )
        info = helpers.error_info(err)
        assert info.reason == "RATE_LIMITED"
        assert 0 < _retry_seconds(err) <= 60
        assert await _events(audit, info.metadata["remediation"]) == [("refused", "refused")]
        # Dry runs are never rate limited.
        await stub.Remediate(_req("investigate_logs", target), metadata=OPERATOR)


async def test_two_concurrent_runs_on_one_target_exactly_one_runs(
    start_remediation: Any, hook: Hook, audit: asyncpg.Pool
) -> None:
    hook.gate.clear()
    async with start_remediation(
        AIOPS_REMEDIATION_EXECUTOR="webhook", AIOPS_REMEDIATION_WEBHOOK_URL=hook.url
    ) as (_, stub):
        first = asyncio.ensure_future(
            stub.Remediate(_req("scale_up", execute=True), metadata=OPERATOR)
        )
        await asyncio.wait_for(hook.entered.wait(), 10)
        err = await _fails(
            stub.Remediate(_req("investigate_logs", execute=True), metadata=OPERATOR),
            grpc.StatusCode.ABORTED,
        )
        info = helpers.error_info(err)
        assert info.reason == "TARGET_LOCKED"
        hook.gate.set()
        done = await first
    assert done.remediation.state == rem.REMEDIATION_STATE_SUCCEEDED
    assert len(hook.received) == 1
    assert await _events(audit, info.metadata["remediation"]) == [("refused", "refused")]
    got = await audit.fetchval(
        "SELECT refusal_reason FROM remediation_audit WHERE id = $1",
        info.metadata["remediation"].split("/")[1],
    )
    assert got == "TARGET_LOCKED"


async def test_gathered_concurrent_runs_exactly_one_runs(
    start_remediation: Any, hook: Hook
) -> None:
    async with start_remediation(
        AIOPS_REMEDIATION_EXECUTOR="webhook", AIOPS_REMEDIATION_WEBHOOK_URL=hook.url
    ) as (_, stub):
        results = await asyncio.gather(
            *(stub.Remediate(_req("scale_up", execute=True), metadata=OPERATOR) for _ in range(2)),
            return_exceptions=True,
        )
    ok = [r for r in results if not isinstance(r, BaseException)]
    failed = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(ok) == 1 and len(failed) == 1 and len(hook.received) == 1
    # The loser either met the lock or, if the winner had finished, its cooldown.
    assert failed[0].code() in (grpc.StatusCode.ABORTED, grpc.StatusCode.RESOURCE_EXHAUSTED)


async def test_retry_with_the_same_request_id_returns_the_first_result(
    kube: Any, kubectl: Kubectl, audit: asyncpg.Pool
) -> None:
    request = _req("scale_up", execute=True)
    first = await kube.Remediate(request, metadata=OPERATOR)
    second = await kube.Remediate(request, metadata=OPERATOR)
    assert second.replayed and not first.replayed
    assert second.remediation.name == first.remediation.name
    assert second.remediation.state == rem.REMEDIATION_STATE_SUCCEEDED
    assert len(kubectl.calls()) == 2
    assert len(await _events(audit, first.remediation.name)) == 2


# --- bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (_req("reboot_world"), "action"),
        (
            _req(
                "scale_up",
                rem.Target(kind=rem.TARGET_KIND_ROLLOUT, namespace="kube-system", name="web"),
            ),
            "target.namespace",
        ),
        (_req("scale_up", parameters={"replicas": "11"}), "parameters.replicas"),
        (_req("scale_up", parameters={"replicas": "-1"}), "parameters.replicas"),
        (_req("scale_up", parameters={"force": "yes"}), "parameters.force"),
        (
            _req("scale_up", rem.Target(kind=rem.TARGET_KIND_ROLLOUT, name="Bad_Name")),
            "target.name",
        ),
        (_req("scale_redis", ROLLOUT), "target.kind"),
        (svc.RemediateRequest(action="scale_up", target=ROLLOUT, request_id="nope"), "request_id"),
        (_req("scale_up", anomaly="anomaly-1"), "anomaly"),
        (_req("scale_up", rem.Target(name="web")), "target.kind"),
    ],
)
async def test_bad_input_names_the_field_and_runs_nothing(
    kube: Any, kubectl: Kubectl, audit: asyncpg.Pool, request_: Any, field: str
) -> None:
    request_.execute = True
    err = await _fails(kube.Remediate(request_, metadata=ADMIN), grpc.StatusCode.INVALID_ARGUMENT)
    assert field in helpers.field_violations(err)
    assert kubectl.calls() == []
    assert await audit.fetchval("SELECT count(*) FROM remediation_audit") == 0


# --- audit trail reads ----------------------------------------------------------------


async def test_list_and_get_read_the_audit_trail(kube: Any, audit: asyncpg.Pool) -> None:
    names = []
    for _ in range(3):
        r = await kube.Remediate(_req("investigate_logs"), metadata=OPERATOR)
        names.append(r.remediation.name)
    await kube.Remediate(_req("scale_up", DEPLOY), metadata=OPERATOR)
    page = await kube.ListRemediations(
        svc.ListRemediationsRequest(
            filter=svc.RemediationFilter(action="investigate_logs"), page_size=2
        )
    )
    assert [r.name for r in page.remediations] == names[::-1][:2] and page.next_page_token
    rest = await kube.ListRemediations(
        svc.ListRemediationsRequest(
            filter=svc.RemediationFilter(action="investigate_logs"),
            page_size=2,
            page_token=page.next_page_token,
        )
    )
    assert [r.name for r in rest.remediations] == [names[0]] and not rest.next_page_token
    everything = await kube.ListRemediations(svc.ListRemediationsRequest())
    assert len(everything.remediations) == 4
    await _fails(
        kube.ListRemediations(svc.ListRemediationsRequest(page_token=page.next_page_token)),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    await _fails(
        kube.ListRemediations(svc.ListRemediationsRequest(page_size=-1)),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    await _fails(
        kube.GetRemediation(svc.GetRemediationRequest(name="remediations/x")),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    await _fails(
        kube.GetRemediation(svc.GetRemediationRequest(name="remediations/" + "0" * 26)),
        grpc.StatusCode.NOT_FOUND,
    )


async def test_audit_table_is_append_only(kube: Any, audit: asyncpg.Pool) -> None:
    await kube.Remediate(_req("investigate_logs"), metadata=OPERATOR)
    with pytest.raises(asyncpg.RaiseError, match="append-only"):
        await audit.execute("UPDATE remediation_audit SET actor = 'mallory'")
    with pytest.raises(asyncpg.RaiseError, match="append-only"):
        await audit.execute("DELETE FROM remediation_audit")


async def test_list_actions_describes_the_playbook(remediation: Any) -> None:
    page = await remediation.ListActions(svc.ListActionsRequest(page_size=4))
    assert [a.name for a in page.actions] == [
        "actions/investigate_logs",
        "actions/investigate_redis",
        "actions/investigate_resources",
        "actions/maintenance_off",
    ]
    rest = await remediation.ListActions(
        svc.ListActionsRequest(page_size=50, page_token=page.next_page_token)
    )
    rollback = next(a for a in rest.actions if a.name == "actions/rollback")
    assert rollback.destructive and rollback.blast_radius == rem.BLAST_RADIUS_WORKLOAD
    assert rollback.cooldown.seconds == 1800 and rollback.preconditions


# --- webhook executor and maintenance mode ----------------------------------------------


async def test_webhook_executor_posts_a_signed_payload(
    start_remediation: Any, hook: Hook, tmp_path: Path
) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    async with start_remediation(
        AIOPS_REMEDIATION_EXECUTOR="webhook",
        AIOPS_REMEDIATION_WEBHOOK_URL=hook.url,
        AIOPS_REMEDIATION_WEBHOOK_SECRET_FILE=str(secret),
    ) as (_, stub):
        reply = await stub.Remediate(
            _req("scale_up", parameters={"replicas": "5"}, execute=True), metadata=OPERATOR
        )
    assert reply.remediation.state == rem.REMEDIATION_STATE_SUCCEEDED
    headers, body = hook.received[0]
    expected = "sha256=" + hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers["X-Aiops-Signature"], expected)
    payload = json.loads(body)
    assert payload["action"] == "scale_up" and payload["parameters"] == {"replicas": "5"}
    assert payload["remediation"] == reply.remediation.name
    assert payload["argv"][-1] == ["kubectl", "scale", "rollout/web", "-n", "aiops", "--replicas=5"]


async def test_redis_down_is_unavailable_and_nothing_runs(
    start_remediation: Any, kubectl: Kubectl, restartable_redis: Any
) -> None:
    async with start_remediation(
        AIOPS_REDIS_URL=restartable_redis.url,
        AIOPS_REMEDIATION_EXECUTOR="kubernetes",
        AIOPS_REMEDIATION_COMMAND_PATH=f"{kubectl.bin_dir}:/usr/bin:/bin",
        AIOPS_REMEDIATION_STORAGE_TIMEOUT_SECONDS="0.5",
    ) as (_, stub):
        restartable_redis.kill()
        err = await _fails(
            stub.Remediate(_req("scale_up", execute=True), metadata=OPERATOR),
            grpc.StatusCode.UNAVAILABLE,
        )
        assert helpers.error_info(err).reason == "REDIS_UNAVAILABLE"
        assert kubectl.calls() == []
        restartable_redis.start()

        async def back() -> None:
            try:
                reply = await stub.Remediate(_req("scale_up", execute=True), metadata=OPERATOR)
            except grpc.aio.AioRpcError as exc:
                raise AssertionError(exc.code()) from exc
            assert reply.remediation.state == rem.REMEDIATION_STATE_SUCCEEDED

        await helpers.eventually(back, timeout=10)
