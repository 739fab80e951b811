"""Ranking: playbook prior updated by a bounded Beta posterior."""

from __future__ import annotations

import pytest

from services.remediation import loader, ranking
from services.remediation import playbook as pb

BOOK = loader.load(pb.DEFAULT_PATH)
CFG = ranking.Prior(strength=4.0, max_evidence=20)
LATENCY = pb.Signature(
    "http_latency_p95_ms", pb.Direction.UP, pb.AnomalyKind.SPIKE, pb.Severity.CRITICAL
)


def test_without_feedback_the_prior_decides() -> None:
    ranked = ranking.rank(BOOK, LATENCY, None, {}, CFG, 5)
    assert [r.action.id for r in ranked][:2] == ["scale_up", "investigate_resources"]
    assert ranked[0].posterior_mean == pytest.approx(ranked[0].prior)
    assert "no feedback yet" in ranked[0].rationale


def test_recent_deploy_favours_rollback() -> None:
    sig = pb.Signature(
        "http_latency_p95_ms",
        pb.Direction.UP,
        pb.AnomalyKind.LEVEL_SHIFT,
        pb.Severity.WARNING,
        recent_deploy=True,
    )
    assert ranking.rank(BOOK, sig, None, {}, CFG, 5)[0].action.id == "rollback"


def test_not_helpful_feedback_pushes_an_action_down_and_helpful_pulls_it_up() -> None:
    down = ranking.rank(BOOK, LATENCY, None, {"scale_up": ranking.Evidence(0, 5)}, CFG, 5)
    assert down[0].action.id != "scale_up"
    scale = next(r for r in down if r.action.id == "scale_up")
    assert scale.posterior_mean < scale.prior
    assert "5 not helpful" in scale.rationale
    up = ranking.rank(BOOK, LATENCY, None, {"restart": ranking.Evidence(6, 0)}, CFG, 5)
    assert up[0].action.id == "restart"


@pytest.mark.parametrize("n", [20, 200, 20000])
def test_the_effect_of_feedback_is_bounded(n: int) -> None:
    low = ranking.posterior_mean(0.6, ranking.Evidence(0, n), CFG)
    high = ranking.posterior_mean(0.6, ranking.Evidence(n, 0), CFG)
    assert low == pytest.approx(0.6 * 4 / 24)
    assert high == pytest.approx((0.6 * 4 + 20) / 24)


def test_explicit_target_filters_actions_that_do_not_apply() -> None:
    target = pb.Target(pb.TargetKind.REDIS, "aiops", "redis")
    ids = {r.action.id for r in ranking.rank(BOOK, LATENCY, target, {}, CFG, 20)}
    assert ids == {"investigate_resources"}


def test_signature_key_is_metric_direction_kind() -> None:
    sig = pb.Signature(
        'latency_p95{route="/x"}', pb.Direction.UP, pb.AnomalyKind.SPIKE, pb.Severity.INFO
    )
    assert sig.key() == "latency_p95:up:spike"
