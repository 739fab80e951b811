"""Verification after a real action: did the anomaly clear, stay, or get worse?

Within the action's window after it ran, the anomaly is observed again and compared with
the baseline taken just before the action. The outcome is appended to the audit trail and
sent to the feedback service as an automatic verdict (cleared = helpful), so it counts in
the ranking; a reversible action that made things worse is undone when auto-remediation is
on and the kill switch is released.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import replace

from services.kit import errors
from services.remediation import domain, metrics
from services.remediation import playbook as pb

log = logging.getLogger(__name__)

ACTOR = "verifier"


class Verifier:
    def __init__(
        self,
        store: domain.AuditStore,
        guard: domain.Guard,
        feedback: domain.FeedbackPort,
        anomalies: domain.AnomalyPort,
        executor: domain.Executor,
        actions: Callable[[], Mapping[str, pb.Action]],
        *,
        auto_enabled: bool,
        kube_context: str,
        maintenance_url: str,
        lock_ttl_seconds: float,
    ) -> None:
        self._store = store
        self._guard = guard
        self._feedback = feedback
        self._anomalies = anomalies
        self._executor = executor
        self._actions = actions
        self._auto = auto_enabled
        self._context = kube_context
        self._maintenance_url = maintenance_url
        self._lock_ttl = lock_ttl_seconds
        self._tasks: set[asyncio.Task[None]] = set()

    async def baseline(self, rem: domain.Remediation, window: float) -> dict[str, str]:
        """How bad the anomaly is before the action, for `verify` to compare with."""
        if not rem.anomaly or window <= 0:
            return {}
        try:
            obs = await self._anomalies.observe(rem.anomaly)
        except errors.AiopsError:
            return {}
        return {"_severity": str(int(obs.severity)), "_peak_score": repr(obs.peak_score)}

    def schedule(self, rem: domain.Remediation, window: float) -> None:
        async def later() -> None:
            await asyncio.sleep(window)
            try:
                await self.verify(rem.id)
            except errors.AiopsError as exc:
                log.warning(
                    "verification failed", extra={"remediation": rem.name, "reason": exc.reason}
                )

        task = asyncio.create_task(later(), name=f"verify-{rem.id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def verify(self, remediation_id: str) -> domain.Remediation:
        """Records the outcome, feeds it back, and undoes a reversible action that made
        things worse (when allowed)."""
        rem = await self._store.get(remediation_id)
        if rem is None:
            raise errors.NotFound("REMEDIATION_NOT_FOUND", "No remediation has this name.")
        obs = await self._anomalies.observe(rem.anomaly)
        outcome = judge(obs, rem.captures)
        checked = replace(rem, outcome=outcome, update_time=domain.now())
        await self._store.append(checked, f"verified_{outcome.value}", ACTOR)
        metrics.ACTIONS.labels(rem.action, f"verified_{outcome.value}").inc()
        log.info(
            "remediation verified",
            extra={"remediation": rem.name, "action": rem.action, "outcome": outcome.value},
        )
        try:
            await self._feedback.submit(
                checked,
                outcome is domain.Outcome.CLEARED,
                f"automatic verification: {outcome.value}",
            )
        except errors.AiopsError as exc:
            log.warning("verification feedback not sent", extra={"reason": exc.reason})
        action = self._actions().get(rem.action)
        if (
            outcome is domain.Outcome.WORSE
            and action is not None
            and action.reversible
            and self._auto
            and not await self._guard.kill_switch()
        ):
            checked = await self._undo(checked, action)
        return checked

    async def _undo(self, rem: domain.Remediation, action: pb.Action) -> domain.Remediation:
        target = rem.target.key()
        token = await self._guard.lock(target, self._lock_ttl)
        if token is None:
            await self._store.append(rem, "undo_skipped_locked", ACTOR)
            metrics.refused("target_locked")
            return rem
        try:
            values = {
                **rem.parameters,
                **rem.captures,
                "name": rem.target.name,
                "namespace": rem.target.namespace,
                "reason": rem.reason,
                "maintenance_url": self._maintenance_url,
            }
            steps = pb.render(action.steps_for(rem.target.kind, undo=True), values, self._context)
            result = await self._executor.run(steps, rem)
        finally:
            await self._guard.unlock(target, token)
        undone = replace(
            rem,
            rolled_back=result.ok,
            update_time=domain.now(),
            output=(rem.output + "\n--- undo ---\n" + result.output)[-domain.MAX_OUTPUT :],
        )
        event = "rolled_back" if result.ok else "undo_failed"
        await self._store.append(undone, event, ACTOR)
        metrics.ACTIONS.labels(action.id, event).inc()
        return undone

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task


def judge(obs: domain.Observation, baseline: Mapping[str, str]) -> domain.Outcome:
    """Cleared when the anomaly closed; worse when its severity or peak score rose above
    the baseline; otherwise no change."""
    if not obs.open:
        return domain.Outcome.CLEARED
    severity = int(baseline.get("_severity", int(obs.severity)))
    peak = float(baseline.get("_peak_score", obs.peak_score))
    if obs.severity > severity or obs.peak_score > peak:
        return domain.Outcome.WORSE
    return domain.Outcome.NO_CHANGE
