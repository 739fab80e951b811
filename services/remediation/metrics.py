"""Business metrics of the remediation service (labels never carry ids)."""

from __future__ import annotations

from prometheus_client import Counter

ACTIONS = Counter(
    "aiops_remediation_actions_total",
    "Remediation requests by action and result (dry_run, succeeded, failed, refused, "
    "verified_*, rolled_back).",
    ["action", "result"],
)
SUGGESTIONS = Counter(
    "aiops_remediation_suggestions_total", "Suggestions served (one per ranked action)."
)
REFUSALS = Counter(
    "aiops_remediation_refusals_total",
    "Remediations refused, by reason (cooldown_active, rate_limited, target_locked, "
    "unapproved, forbidden, kill_switch, auto_disabled).",
    ["reason"],
)


def refused(reason: str) -> None:
    REFUSALS.labels(reason).inc()
