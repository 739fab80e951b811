"""gRPC servicer of `aiops.remediation.v1.RemediationService`: shape checks, proto <-> domain.

The caller is who the gateway says (`x-aiops-subject`, `x-aiops-roles` metadata); a call
without roles has none and may only read.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

import grpc
from aiops.common.v1 import common_pb2
from aiops.remediation.v1 import remediation_pb2 as rem
from aiops.remediation.v1 import remediation_service_pb2 as svc
from aiops.remediation.v1 import remediation_service_pb2_grpc as rem_grpc

from services.kit import errors, paging, protoconv
from services.remediation import automation, domain, remediator
from services.remediation import playbook as pb

Context = grpc.aio.ServicerContext[Any, Any]

_TARGET_KINDS = {
    rem.TARGET_KIND_DEPLOYMENT: pb.TargetKind.DEPLOYMENT,
    rem.TARGET_KIND_ROLLOUT: pb.TargetKind.ROLLOUT,
    rem.TARGET_KIND_STATEFULSET: pb.TargetKind.STATEFULSET,
    rem.TARGET_KIND_REDIS: pb.TargetKind.REDIS,
    rem.TARGET_KIND_GATEWAY: pb.TargetKind.GATEWAY,
}
_TARGET_KIND_PB = {v: k for k, v in _TARGET_KINDS.items()}
_DIRECTIONS = {rem.DIRECTION_UP: pb.Direction.UP, rem.DIRECTION_DOWN: pb.Direction.DOWN}
_DIRECTION_PB = {v: k for k, v in _DIRECTIONS.items()}
_KINDS = {
    rem.ANOMALY_KIND_SPIKE: pb.AnomalyKind.SPIKE,
    rem.ANOMALY_KIND_LEVEL_SHIFT: pb.AnomalyKind.LEVEL_SHIFT,
    rem.ANOMALY_KIND_DRIFT: pb.AnomalyKind.DRIFT,
    rem.ANOMALY_KIND_ALERT: pb.AnomalyKind.ALERT,
}
_KIND_PB = {v: k for k, v in _KINDS.items()}
_SEVERITIES = {
    common_pb2.SEVERITY_INFO: pb.Severity.INFO,
    common_pb2.SEVERITY_WARNING: pb.Severity.WARNING,
    common_pb2.SEVERITY_CRITICAL: pb.Severity.CRITICAL,
}
_SEVERITY_PB = {v: k for k, v in _SEVERITIES.items()}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_STATE_PB = {s: getattr(rem, f"REMEDIATION_STATE_{s.name}") for s in domain.State}
_STATES = {v: k for k, v in _STATE_PB.items()}
_OUTCOME_PB = {o: getattr(rem, f"VERIFICATION_OUTCOME_{o.name}") for o in domain.Outcome}
_RADIUS_PB = {b: getattr(rem, f"BLAST_RADIUS_{b.name}") for b in pb.BlastRadius}


def caller(context: Context) -> domain.Caller:
    subject, roles = "anonymous", frozenset[str]()
    for key, value in context.invocation_metadata() or ():
        if key == "x-aiops-subject" and isinstance(value, str) and value:
            subject = value[:256]
        elif key == "x-aiops-roles" and isinstance(value, str):
            roles = frozenset(r.strip() for r in value.split(",") if r.strip())
    return domain.Caller(subject, roles)


def _enum(table: dict[Any, Any], value: int, name: str, out: list[errors.FieldViolation]) -> Any:
    if value == 0:
        out.append(errors.FieldViolation(name, "is required"))
        return None
    if value not in table:
        out.append(errors.FieldViolation(name, f"unknown value {value}"))
        return None
    return table[value]


def signature(msg: rem.AnomalySignature, prefix: str = "signature") -> pb.Signature:
    out: list[errors.FieldViolation] = []
    if not msg.series or len(msg.series) > 1024:
        out.append(errors.FieldViolation(f"{prefix}.series", "must be 1 to 1,024 characters"))
    direction = _enum(_DIRECTIONS, msg.direction, f"{prefix}.direction", out)
    kind = _enum(_KINDS, msg.kind, f"{prefix}.kind", out)
    severity = _enum(_SEVERITIES, msg.severity, f"{prefix}.severity", out)
    if out:
        raise errors.invalid(out, "SIGNATURE_INVALID")
    return pb.Signature(msg.series, direction, kind, severity, msg.recent_deploy)


def _optional_target(msg: rem.Target, present: bool) -> pb.Target | None:
    if not present:
        return None
    out: list[errors.FieldViolation] = []
    kind = _enum(_TARGET_KINDS, msg.kind, "target.kind", out)
    if out:
        raise errors.invalid(out, "TARGET_INVALID")
    return pb.Target(kind, msg.namespace, msg.name)


def _target_pb(t: pb.Target) -> rem.Target:
    return rem.Target(kind=_TARGET_KIND_PB[t.kind], namespace=t.namespace, name=t.name)


def to_proto(r: domain.Remediation) -> rem.Remediation:
    return rem.Remediation(
        name=r.name,
        action=r.action,
        target=_target_pb(r.target),
        parameters=dict(r.parameters),
        state=_STATE_PB[r.state],
        execute=r.execute,
        anomaly=r.anomaly,
        reason=r.reason,
        requester=r.requester,
        approver=r.approver,
        approval_comment=r.approval_comment,
        commands=list(r.commands),
        output=r.output,
        outcome=_OUTCOME_PB[r.outcome],
        rolled_back=r.rolled_back,
        refusal_reason=r.refusal_reason,
        request_id=r.request_id,
        create_time=protoconv.timestamp(r.create_time),
        update_time=protoconv.timestamp(r.update_time),
        duration=protoconv.duration(r.duration_seconds),
        signature=r.signature,
        automatic=r.automatic,
    )


def _action_pb(a: pb.Action) -> rem.Action:
    return rem.Action(
        name=f"actions/{a.id}",
        description=a.description,
        destructive=a.destructive,
        blast_radius=_RADIUS_PB[a.blast_radius],
        cooldown=protoconv.duration(a.cooldown_seconds),
        preconditions=list(a.preconditions),
        reversible=a.reversible,
        target_kinds=[_TARGET_KIND_PB[k] for k in a.target_kinds],
        parameters=[
            rem.ActionParameter(
                key=p.key,
                description=p.description,
                required=not p.default,
                default_value=p.default,
            )
            for p in a.parameters.values()
        ],
    )


def _token(cursor: str, fingerprint: str) -> str:
    raw = json.dumps({"c": cursor, "f": fingerprint}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _untoken(token: str, fingerprint: str) -> str | None:
    if not token:
        return None
    bad = errors.invalid(
        [errors.FieldViolation("page_token", "is not a token this listing returned")],
        "PAGE_TOKEN_INVALID",
    )
    try:
        raw = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise bad from exc
    if not isinstance(raw, dict) or not isinstance(raw.get("c"), str):
        raise bad
    if raw.get("f") != fingerprint:
        raise errors.invalid(
            [errors.FieldViolation("page_token", "was made for a different filter")],
            "PAGE_TOKEN_FILTER_MISMATCH",
        )
    cursor: str = raw["c"]
    return cursor


class RemediationServicer(rem_grpc.RemediationServiceServicer):
    def __init__(self, engine: remediator.Remediator, auto: automation.Automation) -> None:
        self._engine = engine
        self._auto = auto

    async def Suggest(self, request: svc.SuggestRequest, context: Context) -> svc.SuggestResponse:
        if not 0 <= request.max_suggestions <= domain.MAX_SUGGESTIONS:
            raise errors.invalid(
                [errors.FieldViolation("max_suggestions", "must be from 0 to 20")],
                "SUGGEST_INVALID",
            )
        which = request.WhichOneof("subject")
        if which is None:
            raise errors.invalid(
                [errors.FieldViolation("anomaly", "one of anomaly or signature is required")],
                "SUGGEST_INVALID",
            )
        target = _optional_target(request.target, request.HasField("target"))
        sig = (
            signature(request.signature)
            if which == "signature"
            else await self._engine.resolve(request.anomaly)
        )
        result = await self._engine.suggest(sig, target, request.max_suggestions or 5)
        return svc.SuggestResponse(
            suggestions=[_suggestion(i + 1, s) for i, s in enumerate(result.suggestions)],
            signature=rem.AnomalySignature(
                series=sig.series,
                direction=_DIRECTION_PB[sig.direction],
                kind=_KIND_PB[sig.kind],
                severity=_SEVERITY_PB[sig.severity],
                recent_deploy=sig.recent_deploy,
            ),
            signature_key=sig.key(),
        )

    async def Remediate(
        self, request: svc.RemediateRequest, context: Context
    ) -> svc.RemediateResponse:
        out: list[errors.FieldViolation] = []
        kind = None
        if request.target.kind:
            kind = _enum(_TARGET_KINDS, request.target.kind, "target.kind", out)
        if out:
            raise errors.invalid(out, "REMEDIATION_INVALID")
        req = domain.Request(
            action=request.action,
            target_kind=kind,
            target_namespace=request.target.namespace,
            target_name=request.target.name,
            parameters=dict(request.parameters),
            execute=request.execute,
            request_id=request.request_id,
            anomaly=request.anomaly,
            use_top_suggestion=request.use_top_suggestion,
            reason=request.reason,
        )
        result = await self._engine.remediate(req, caller(context))
        return svc.RemediateResponse(
            remediation=to_proto(result.remediation), replayed=result.replayed
        )

    async def Approve(self, request: svc.ApproveRequest, context: Context) -> svc.ApproveResponse:
        out: list[errors.FieldViolation] = []
        decision = _enum(
            {rem.APPROVAL_DECISION_APPROVE: True, rem.APPROVAL_DECISION_DENY: False},
            request.decision,
            "decision",
            out,
        )
        if out:
            raise errors.invalid(out, "APPROVAL_INVALID")
        done = await self._engine.approve(
            request.name, bool(decision), request.comment, caller(context)
        )
        return svc.ApproveResponse(remediation=to_proto(done))

    async def ListRemediations(
        self, request: svc.ListRemediationsRequest, context: Context
    ) -> svc.ListRemediationsResponse:
        size = paging.page_size(request.page_size)
        f = request.filter
        out: list[errors.FieldViolation] = []
        state = _STATES.get(f.state) if f.state else None
        if f.state and state is None:
            out.append(errors.FieldViolation("filter.state", f"unknown value {f.state}"))
        tkind = (
            _enum(_TARGET_KINDS, f.target_kind, "filter.target_kind", out)
            if (f.target_kind)
            else None
        )
        out += domain.check_anomaly_name(f.anomaly, "filter.anomaly")
        for name, value in (
            ("filter.action", f.action),
            ("filter.target_namespace", f.target_namespace),
            ("filter.target_name", f.target_name),
        ):
            if len(value) > 253 or _CONTROL.search(value):
                out.append(errors.FieldViolation(name, "must be at most 253 printable characters"))
        tr = f.create_time_range
        start = _seconds(tr, "start_time", out)
        end = _seconds(tr, "end_time", out)
        if out:
            raise errors.invalid(out, "FILTER_INVALID")
        flt = domain.Filter(
            state=state,
            action=f.action,
            target_kind=tkind,
            target_namespace=f.target_namespace,
            target_name=f.target_name,
            anomaly=f.anomaly,
            start_time=start,
            end_time=end,
        )
        fingerprint = f.SerializeToString(deterministic=True).hex()[:64]
        cursor = _untoken(request.page_token, fingerprint)
        after = None
        if cursor is not None:
            ms, _, rid = cursor.partition(":")
            if not ms.isdigit() or not rid:
                raise errors.invalid(
                    [errors.FieldViolation("page_token", "is not a token this listing returned")],
                    "PAGE_TOKEN_INVALID",
                )
            after = (int(ms) / 1e6, rid)
        items = list(await self._engine.list(flt, size + 1, after))
        token = ""
        if len(items) > size:
            items = items[:size]
            last = items[-1]
            token = _token(f"{round(last.create_time * 1e6)}:{last.id}", fingerprint)
        return svc.ListRemediationsResponse(
            remediations=[to_proto(i) for i in items], next_page_token=token
        )

    async def GetRemediation(
        self, request: svc.GetRemediationRequest, context: Context
    ) -> svc.GetRemediationResponse:
        return svc.GetRemediationResponse(
            remediation=to_proto(await self._engine.get(request.name))
        )

    async def ListActions(
        self, request: svc.ListActionsRequest, context: Context
    ) -> svc.ListActionsResponse:
        size = paging.page_size(request.page_size)
        actions = list(self._engine.book.current.actions.values())
        start = _untoken(request.page_token, "actions") or ""
        rest = [a for a in actions if a.id > start]
        page = rest[:size]
        token = _token(page[-1].id, "actions") if len(rest) > size else ""
        return svc.ListActionsResponse(actions=[_action_pb(a) for a in page], next_page_token=token)

    async def AutoRemediate(
        self, request: svc.AutoRemediateRequest, context: Context
    ) -> svc.AutoRemediateResponse:
        who = caller(context)
        if not who.operator:
            raise errors.PermissionDenied(
                "ROLE_REQUIRED",
                "Auto-remediation needs the operator role.",
                metadata={"required_role": "operator"},
            )
        sig = (
            signature(request.signature)
            if request.HasField("signature")
            else await self._engine.resolve(request.anomaly)
        )
        target = _optional_target(request.target, request.HasField("target"))
        done, skipped = await self._auto.auto_remediate(sig, request.anomaly, target)
        reply = svc.AutoRemediateResponse(skipped_reason=skipped)
        if done is not None:
            reply.remediation.CopyFrom(to_proto(done))
        return reply

    async def SetKillSwitch(
        self, request: svc.SetKillSwitchRequest, context: Context
    ) -> svc.SetKillSwitchResponse:
        await self._auto.set_kill_switch(request.engaged, caller(context))
        return svc.SetKillSwitchResponse(engaged=request.engaged)

    async def ReloadPlaybook(
        self, request: svc.ReloadPlaybookRequest, context: Context
    ) -> svc.ReloadPlaybookResponse:
        if not caller(context).admin:
            raise errors.PermissionDenied(
                "ROLE_REQUIRED",
                "Only an admin may reload the playbook.",
                metadata={"required_role": "admin"},
            )
        try:
            book = self._engine.book.reload()
        except pb.PlaybookError as exc:
            raise errors.invalid(
                [errors.FieldViolation("playbook", p) for p in exc.problems[:20]],
                "PLAYBOOK_INVALID",
            ) from exc
        return svc.ReloadPlaybookResponse(
            version=book.version,
            digest=book.digest,
            action_count=len(book.actions),
            rule_count=len(book.rules),
        )


def _suggestion(rank: int, s: remediator.Suggestion) -> rem.Suggestion:
    r = s.ranked
    return rem.Suggestion(
        action=r.action.id,
        target=_target_pb(r.target),
        rank=rank,
        confidence=r.posterior_mean,
        prior=r.prior,
        posterior_mean=r.posterior_mean,
        helpful_count=r.evidence.helpful,
        not_helpful_count=r.evidence.not_helpful,
        rationale=r.rationale,
        destructive=r.action.destructive,
        commands=list(s.commands),
        parameters=s.parameters,
        cooldown_remaining=protoconv.duration(s.cooldown_remaining),
    )


def _seconds(time_range: Any, name: str, out: list[errors.FieldViolation]) -> float | None:
    """A bound of the filter's time range in Unix seconds; an invalid Timestamp (nanos out
    of range, before year 1 or after 9999) is a field violation, not an internal error."""
    if not time_range.HasField(name):
        return None
    try:
        return float(getattr(time_range, name).ToNanoseconds() / 1e9)
    except ValueError:
        out.append(errors.FieldViolation(f"filter.create_time_range.{name}", "is not a valid time"))
        return None
