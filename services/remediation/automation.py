"""Automatic remediation: the best action marked `auto` for an anomaly, run without a
person only when enabled in configuration, with the kill switch released, and never twice
inside the action's cooldown (the same anomaly replays its first run; another anomaly on
the same target meets the cooldown)."""

from __future__ import annotations

import logging
import uuid

from services.kit import errors
from services.remediation import domain, metrics, remediator
from services.remediation import playbook as pb

log = logging.getLogger(__name__)


class Automation:
    def __init__(self, engine: remediator.Remediator, guard: domain.Guard, enabled: bool) -> None:
        self._engine = engine
        self._guard = guard
        self._enabled = enabled

    async def auto_remediate(
        self, sig: pb.Signature, anomaly: str, target: pb.Target | None
    ) -> tuple[domain.Remediation | None, str]:
        """Runs the best `auto` action for an anomaly when policy allows; returns the
        remediation (or None) and why nothing ran."""
        if not self._enabled:
            metrics.refused("auto_disabled")
            return None, domain.AUTO_DISABLED
        if await self._guard.kill_switch():
            metrics.refused("kill_switch")
            return None, domain.KILL_SWITCH
        suggested = await self._engine.suggest(sig, target, domain.MAX_SUGGESTIONS)
        safe = [
            s
            for s in suggested.suggestions
            if s.ranked.action.auto and not s.ranked.action.destructive
        ]
        if not safe:
            return None, domain.ACTION_NOT_ALLOWED
        top = safe[0].ranked
        req = domain.Request(
            action=top.action.id,
            target_kind=top.target.kind,
            target_namespace=top.target.namespace,
            target_name=top.target.name,
            parameters={},
            execute=True,
            request_id=str(
                uuid.uuid5(
                    uuid.NAMESPACE_URL, f"{anomaly}|{sig.key()}|{top.action.id}|{top.target.key()}"
                )
            ),
            anomaly=anomaly,
            reason=f"automatic: {top.rationale}"[: domain.MAX_REASON],
        )
        try:
            result = await self._engine.remediate(req, domain.AUTOMATION)
        except (errors.ResourceExhausted, errors.Aborted) as exc:
            return None, exc.reason
        if result.replayed:
            return None, domain.ALREADY_REMEDIATED
        return result.remediation, ""

    async def set_kill_switch(self, engaged: bool, caller: domain.Caller) -> None:
        if not caller.admin:
            raise errors.PermissionDenied(
                "ROLE_REQUIRED",
                "Only an admin may change the kill switch.",
                metadata={"required_role": "admin"},
            )
        await self._guard.set_kill_switch(engaged)
        log.warning("kill switch changed", extra={"engaged": engaged, "by": caller.subject})
