"""The remediation workflow: suggest, remediate (dry run or real), approve, verify, undo.

Safety, in the order a real run meets it: RBAC (operator; admin or an approval for a
destructive action), idempotency (a request_id seen before replays the first result), a
per-target lock (ABORTED when another run holds it), a cooldown per target and action and
a global rate limit (RESOURCE_EXHAUSTED with a retry delay). Automatic runs also need
auto-remediation enabled, the kill switch released and an action marked `auto`. Every
request, decision and result is appended to the audit trail.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from services.kit import errors, ids
from services.remediation import domain, loader, metrics, ranking, verification
from services.remediation import playbook as pb

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Config:
    policy: domain.Policy
    prior: ranking.Prior
    kube_context: str
    maintenance_url: str
    rate_limit: int
    rate_window_seconds: float
    lock_ttl_seconds: float
    auto_enabled: bool
    verify_window_seconds: float | None  # overrides every action's window when set
    idempotency_ttl_seconds: float = 86400.0
    command_grace_seconds: float = 60.0


@dataclass(frozen=True, slots=True)
class Suggestion:
    ranked: ranking.Ranked
    commands: tuple[str, ...]
    parameters: dict[str, str]
    cooldown_remaining: float


@dataclass(frozen=True, slots=True)
class Suggested:
    signature: pb.Signature
    suggestions: list[Suggestion]


@dataclass(frozen=True, slots=True)
class Result:
    remediation: domain.Remediation
    replayed: bool


class PlaybookHolder:
    """The current playbook; `reload()` swaps it only when the new file is valid."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.current = loader.load(path)

    def reload(self) -> pb.Playbook:
        self.current = loader.load(self.path)
        log.info("playbook loaded", extra={"digest": self.current.digest})
        return self.current


class Remediator:
    def __init__(
        self,
        book: PlaybookHolder,
        store: domain.AuditStore,
        guard: domain.Guard,
        feedback: domain.FeedbackPort,
        anomalies: domain.AnomalyPort,
        executor: domain.Executor,
        cfg: Config,
    ) -> None:
        self.book = book
        self._store = store
        self._guard = guard
        self._feedback = feedback
        self._anomalies = anomalies
        self._executor = executor
        self._cfg = cfg
        self._verifier = verification.Verifier(
            store,
            guard,
            feedback,
            anomalies,
            executor,
            lambda: self.book.current.actions,
            auto_enabled=cfg.auto_enabled,
            kube_context=cfg.kube_context,
            maintenance_url=cfg.maintenance_url,
            lock_ttl_seconds=cfg.lock_ttl_seconds,
        )

    # --- suggest ---------------------------------------------------------------------

    async def resolve(self, anomaly: str) -> pb.Signature:
        violations = domain.check_anomaly_name(anomaly)
        if violations or not anomaly:
            raise errors.invalid(
                violations or [errors.FieldViolation("anomaly", "is required")], "ANOMALY_INVALID"
            )
        return await self._anomalies.signature(anomaly)

    async def suggest(self, sig: pb.Signature, target: pb.Target | None, limit: int) -> Suggested:
        book = self.book.current
        try:
            rows = await self._feedback.evidence(sig.key())
        except errors.AiopsError as exc:
            # Ranking still works from the priors alone; say so in the log, not as a failure.
            log.warning("feedback unavailable for ranking", extra={"reason": exc.reason})
            rows = []
        ranked = ranking.rank(book, sig, target, ranking.sum_evidence(rows), self._cfg.prior, limit)
        out = []
        for r in ranked:
            if not r.target.namespace:
                ns = self._cfg.policy.default_namespace
                r = replace(r, target=replace(r.target, namespace=ns))
            params = {k: p.default for k, p in r.action.parameters.items()}
            steps = self._render(r.action, r.target, params, "")
            remaining = await self._guard.cooldown_remaining(r.target.key(), r.action.id)
            out.append(Suggestion(r, tuple(s.text for s in steps), params, remaining))
        metrics.SUGGESTIONS.inc(len(out))
        return Suggested(sig, out)

    # --- remediate -------------------------------------------------------------------

    async def remediate(self, req: domain.Request, caller: domain.Caller) -> Result:
        if not caller.operator:
            metrics.refused("forbidden")
            raise errors.PermissionDenied(
                "ROLE_REQUIRED",
                "Remediation needs the operator role.",
                metadata={"required_role": "operator"},
            )
        sig: pb.Signature | None = None
        if req.use_top_suggestion:
            req, sig = await self._top_suggestion(req)
        action, target, params = domain.validate(req, self.book.current, self._cfg.policy)
        now = domain.now()
        rid = ids.new_id(now)
        # A short claim first: if this process dies before recording anything, the
        # request_id frees itself; once recorded, it is kept for the idempotency period.
        claim_ttl = self._cfg.lock_ttl_seconds + self._cfg.command_grace_seconds
        first = await self._guard.claim_request(req.request_id, rid, claim_ttl)
        if first is not None:
            return await self._replay(first)
        try:
            result = await self._new(req, caller, action, target, params, sig, rid, now)
        except BaseException:
            await self._settle_claim(req.request_id, rid)
            raise
        await self._guard.confirm_request(req.request_id)
        return result

    async def _settle_claim(self, request_id: str, rid: str) -> None:
        """After a failure: keep the claim if something was recorded (a retry must replay
        it), release it if nothing was, leave it to expire if the database cannot say."""
        try:
            recorded = await self._store.get(rid) is not None
            if recorded:
                await self._guard.confirm_request(request_id)
            else:
                await self._guard.release_request(request_id)
        except errors.AiopsError:
            log.warning("request claim left to expire", extra={"remediation": rid})

    async def _new(
        self,
        req: domain.Request,
        caller: domain.Caller,
        action: pb.Action,
        target: pb.Target,
        params: dict[str, str],
        sig: pb.Signature | None,
        rid: str,
        now: float,
    ) -> Result:
        if sig is None and req.anomaly:
            with contextlib.suppress(errors.AiopsError):
                sig = await self._anomalies.signature(req.anomaly)
        steps = self._render(action, target, params, req.reason)
        rem = domain.Remediation(
            id=rid,
            action=action.id,
            target=target,
            parameters=params,
            state=domain.State.DRY_RUN_COMPLETE,
            execute=req.execute,
            anomaly=req.anomaly,
            signature=sig.key() if sig else "",
            series=sig.series if sig else "",
            reason=req.reason,
            requester=caller.subject,
            request_id=req.request_id,
            create_time=now,
            update_time=now,
            commands=tuple(s.text for s in steps),
            automatic=caller is domain.AUTOMATION,
        )
        if not req.execute:
            await self._store.append(rem, "dry_run", caller.subject)
            metrics.ACTIONS.labels(action.id, "dry_run").inc()
            return Result(rem, False)
        if action.destructive and not caller.admin:
            pending = replace(rem, state=domain.State.PENDING_APPROVAL)
            await self._store.append(pending, "approval_requested", caller.subject)
            metrics.refused("unapproved")
            raise _approval_error(pending)
        return Result(await self._run(rem, action, caller.subject), False)

    async def _top_suggestion(self, req: domain.Request) -> tuple[domain.Request, pb.Signature]:
        extra = [
            errors.FieldViolation(f, "must be empty with use_top_suggestion")
            for f, v in (
                ("action", req.action),
                ("target", req.target_kind or req.target_name),
                ("parameters", req.parameters),
            )
            if v
        ]
        if extra:
            raise errors.invalid(extra, "REMEDIATION_INVALID")
        sig = await self.resolve(req.anomaly)
        top = (await self.suggest(sig, None, 1)).suggestions
        if not top:
            raise errors.FailedPrecondition(
                "NO_SUGGESTION", "No playbook action applies to this anomaly; name one instead."
            )
        r = top[0].ranked
        return replace(
            req,
            action=r.action.id,
            target_kind=r.target.kind,
            target_namespace=r.target.namespace,
            target_name=r.target.name,
        ), sig

    async def _replay(self, remediation_id: str) -> Result:
        rem = await self._store.get(remediation_id)
        if rem is None:
            raise errors.Aborted(
                "REQUEST_IN_PROGRESS", "A request with this request_id is still running; retry."
            )
        if rem.state is domain.State.PENDING_APPROVAL:
            raise _approval_error(rem)
        if rem.state is domain.State.REFUSED:
            raise _refusal_error(rem, 1.0)
        return Result(rem, True)

    async def approve(
        self, name: str, approve: bool, comment: str, caller: domain.Caller
    ) -> domain.Remediation:
        rid = domain.parse_name(name)
        if not caller.admin:
            metrics.refused("forbidden")
            raise errors.PermissionDenied(
                "ROLE_REQUIRED",
                "Only an admin may approve or deny a remediation.",
                metadata={"required_role": "admin"},
            )
        if len(comment) > domain.MAX_COMMENT:
            raise errors.invalid(
                [errors.FieldViolation("comment", "must be at most 2000 characters")],
                "REMEDIATION_INVALID",
            )
        rem = await self.get(name)
        if (
            rem.state is not domain.State.PENDING_APPROVAL
            or (
                await self._guard.claim_request(
                    f"decision:{rid}", rid, self._cfg.idempotency_ttl_seconds
                )
            )
            is not None
        ):
            raise errors.FailedPrecondition(
                "NOT_PENDING_APPROVAL",
                "Only a remediation pending approval can be approved or denied.",
                metadata={"state": rem.state.name},
            )
        decided = replace(
            rem,
            state=domain.State.APPROVED if approve else domain.State.DENIED,
            approver=caller.subject,
            approval_comment=comment,
            update_time=domain.now(),
        )
        await self._store.append(decided, "approved" if approve else "denied", caller.subject)
        if not approve:
            return decided
        action = self.book.current.actions.get(rem.action)
        if action is None:
            raise errors.FailedPrecondition(
                "ACTION_REMOVED", "The playbook no longer has this action; request it again."
            )
        return await self._run(decided, action, caller.subject)

    async def _run(
        self, rem: domain.Remediation, action: pb.Action, actor: str
    ) -> domain.Remediation:
        target = rem.target.key()
        token = await self._guard.lock(target, self._cfg.lock_ttl_seconds)
        if token is None:
            await self._refuse(rem, domain.TARGET_LOCKED, actor)
            raise _refusal_error(rem, 1.0, domain.TARGET_LOCKED)
        try:
            remaining = await self._guard.cooldown_remaining(target, action.id)
            if remaining > 0:
                await self._refuse(rem, domain.COOLDOWN_ACTIVE, actor)
                raise _refusal_error(rem, remaining, domain.COOLDOWN_ACTIVE)
            retry = await self._guard.take_rate(self._cfg.rate_limit, self._cfg.rate_window_seconds)
            if retry > 0:
                await self._refuse(rem, domain.RATE_LIMITED, actor)
                raise _refusal_error(rem, retry, domain.RATE_LIMITED)
            window = self._window(action)
            baseline = await self._verifier.baseline(rem, window)
            running = replace(
                rem, state=domain.State.RUNNING, update_time=domain.now(), captures=baseline
            )
            await self._store.append(running, "running", actor)
            steps = self._render(action, rem.target, rem.parameters, rem.reason)
            started = time.monotonic()
            result = await self._executor.run(steps, running)
            duration = time.monotonic() - started
            if result.ran:
                await self._guard.start_cooldown(target, action.id, action.cooldown_seconds)
        finally:
            await self._guard.unlock(target, token)
        state = (
            domain.State.DRY_RUN_COMPLETE
            if not result.ran
            else domain.State.SUCCEEDED
            if result.ok
            else domain.State.FAILED
        )
        verify = state is domain.State.SUCCEEDED and window > 0 and bool(rem.anomaly)
        done = replace(
            running,
            state=state,
            output=result.output[-domain.MAX_OUTPUT :],
            duration_seconds=duration if result.ran else 0.0,
            captures={**baseline, **result.captures},
            outcome=domain.Outcome.PENDING if verify else domain.Outcome.UNSPECIFIED,
            update_time=domain.now(),
        )
        await self._store.append(done, state.value, actor)
        metrics.ACTIONS.labels(action.id, state.value).inc()
        log.info(
            "remediation finished",
            extra={
                "remediation": done.name,
                "action": action.id,
                "state": state.value,
                "target": target,
                "executor": self._executor.name,
                "duration_ms": duration * 1000,
            },
        )
        if verify:
            self._verifier.schedule(done, window)
        return done

    async def _refuse(self, rem: domain.Remediation, reason: str, actor: str) -> None:
        refused = replace(
            rem, state=domain.State.REFUSED, refusal_reason=reason, update_time=domain.now()
        )
        await self._store.append(refused, "refused", actor)
        metrics.refused(reason.lower())
        metrics.ACTIONS.labels(rem.action, "refused").inc()

    def _render(
        self, action: pb.Action, target: pb.Target, params: Mapping[str, str], reason: str
    ) -> list[pb.Rendered]:
        values = dict(params)
        values.update(
            name=target.name,
            namespace=target.namespace or self._cfg.policy.default_namespace,
            reason=reason,
            maintenance_url=self._cfg.maintenance_url,
        )
        return pb.render(action.steps_for(target.kind), values, self._cfg.kube_context)

    def _window(self, action: pb.Action) -> float:
        if self._cfg.verify_window_seconds is not None and action.verify_seconds > 0:
            return self._cfg.verify_window_seconds
        return action.verify_seconds

    async def verify(self, remediation_id: str) -> domain.Remediation:
        return await self._verifier.verify(remediation_id)

    async def stop(self) -> None:
        await self._verifier.stop()

    # --- reads -----------------------------------------------------------------------

    async def get(self, name: str) -> domain.Remediation:
        rem = await self._store.get(domain.parse_name(name))
        if rem is None:
            raise errors.NotFound("REMEDIATION_NOT_FOUND", "No remediation has this name.")
        return rem

    async def list(
        self, flt: domain.Filter, limit: int, after: tuple[float, str] | None
    ) -> Sequence[domain.Remediation]:
        return await self._store.list(flt, limit, after)


def _approval_error(rem: domain.Remediation) -> errors.FailedPrecondition:
    return errors.FailedPrecondition(
        domain.APPROVAL_REQUIRED,
        f"Action {rem.action} is destructive: an admin must approve {rem.name} (Approve) "
        "before it runs.",
        metadata={"remediation": rem.name, "action": rem.action, "approval": "admin"},
    )


def _refusal_error(
    rem: domain.Remediation, retry: float, reason: str | None = None
) -> errors.AiopsError:
    reason = reason or rem.refusal_reason
    meta = {"remediation": rem.name, "action": rem.action, "target": rem.target.key()}
    if reason == domain.TARGET_LOCKED:
        return errors.Aborted(
            reason,
            "Another remediation is acting on this target; retry when it is done.",
            metadata=meta,
        )
    message = (
        "This action ran on this target recently; wait for its cooldown."
        if reason == domain.COOLDOWN_ACTIVE
        else "Too many remediations ran recently; retry later."
    )
    return errors.ResourceExhausted(reason, message, metadata=meta, retry_after_seconds=retry)
