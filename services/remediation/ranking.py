"""Ranking of candidate actions: the playbook's prior updated by feedback (Beta posterior).

The prior p of an action for a signature becomes a Beta(p*s, (1-p)*s) with strength s
pseudo-verdicts. Helpful verdicts add to alpha, not-helpful ones to beta. The evidence is
capped (scaled down to at most `max_evidence` verdicts), so however much feedback piles up
the posterior mean stays inside [p*s/(s+m), (p*s+m)/(s+m)]; and because feedback expires
(the feedback service keeps it 7 days), the posterior returns to the prior when it does.
Pure logic.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from services.remediation import playbook as pb


@dataclass(frozen=True, slots=True)
class Evidence:
    helpful: int = 0
    not_helpful: int = 0


@dataclass(frozen=True, slots=True)
class Ranked:
    action: pb.Action
    target: pb.Target
    rule: pb.Rule
    prior: float
    posterior_mean: float
    evidence: Evidence
    rationale: str


@dataclass(frozen=True, slots=True)
class Prior:
    strength: float = 4.0
    max_evidence: int = 20


def posterior_mean(prior: float, evidence: Evidence, cfg: Prior) -> float:
    """Mean of Beta(prior*s + h', (1-prior)*s + n'), with (h', n') the capped evidence."""
    h, n = float(evidence.helpful), float(evidence.not_helpful)
    total = h + n
    if total > cfg.max_evidence:
        h, n = h * cfg.max_evidence / total, n * cfg.max_evidence / total
    alpha = prior * cfg.strength + h
    beta = (1.0 - prior) * cfg.strength + n
    return alpha / (alpha + beta)


def candidates(
    book: pb.Playbook, sig: pb.Signature, target: pb.Target | None
) -> list[tuple[pb.Candidate, pb.Rule, pb.Target]]:
    """The candidates of every matching rule, one per action (the highest prior wins)."""
    best: dict[str, tuple[pb.Candidate, pb.Rule, pb.Target]] = {}
    default = book.target_for(sig.series)
    for rule in book.rules:
        if not rule.matches(sig):
            continue
        for cand in rule.candidates:
            if sig.severity < cand.min_severity:
                continue
            action = book.actions[cand.action]
            chosen = target or cand.target or default
            if chosen is None or chosen.kind not in action.target_kinds:
                continue
            if cand.action not in best or best[cand.action][0].prior < cand.prior:
                best[cand.action] = (cand, rule, chosen)
    return list(best.values())


def rank(
    book: pb.Playbook,
    sig: pb.Signature,
    target: pb.Target | None,
    evidence: Mapping[str, Evidence],
    cfg: Prior,
    limit: int,
) -> list[Ranked]:
    """Ranked suggestions, best first (ties broken by prior, then action id)."""
    out: list[Ranked] = []
    for cand, rule, chosen in candidates(book, sig, target):
        ev = evidence.get(cand.action, Evidence())
        mean = posterior_mean(cand.prior, ev, cfg)
        out.append(
            Ranked(
                book.actions[cand.action],
                chosen,
                rule,
                cand.prior,
                mean,
                ev,
                _rationale(rule, sig, cand.prior, mean, ev),
            )
        )
    out.sort(key=lambda r: (-r.posterior_mean, -r.prior, r.action.id))
    return out[:limit]


def _rationale(rule: pb.Rule, sig: pb.Signature, prior: float, mean: float, ev: Evidence) -> str:
    why = f"Playbook rule {rule.name} matched {sig.key()}: {rule.description}"
    if ev.helpful or ev.not_helpful:
        return (
            f"{why} Prior {prior:.2f}; feedback ({ev.helpful} helpful, {ev.not_helpful} not "
            f"helpful) moves it to {mean:.2f}."
        )
    return f"{why} Prior {prior:.2f}; no feedback yet."


def sum_evidence(rows: Sequence[tuple[str, int, int]]) -> dict[str, Evidence]:
    """Adds up (action, helpful, not_helpful) rows per action."""
    out: dict[str, Evidence] = {}
    for action, helpful, not_helpful in rows:
        ev = out.get(action, Evidence())
        out[action] = Evidence(ev.helpful + helpful, ev.not_helpful + not_helpful)
    return out
