"""The playbook file: loaded, validated with errors naming the bad entry, rendered."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from services.remediation import loader
from services.remediation import playbook as pb

RAW: dict[str, Any] = json.loads(pb.DEFAULT_PATH.read_text())


def test_shipped_playbook_loads_with_every_runbook_action() -> None:
    book = loader.load(pb.DEFAULT_PATH)
    assert set(book.actions) >= {
        "scale_up",
        "rollback",
        "restart",
        "scale_redis",
        "maintenance_on",
        "maintenance_off",
        "investigate_redis",
        "investigate_logs",
        "investigate_resources",
    }
    assert book.actions["rollback"].destructive
    assert not book.actions["scale_up"].destructive and book.actions["scale_up"].reversible
    assert book.actions["investigate_redis"].blast_radius is pb.BlastRadius.NONE
    assert all(a.cooldown_seconds >= 0 for a in book.actions.values())
    assert not any(a.destructive and a.auto for a in book.actions.values())


def _problems(data: Any) -> list[str]:
    with pytest.raises(pb.PlaybookError) as info:
        loader.parse(data)
    return info.value.problems


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: d["actions"]["scale_up"].pop("destructive"), "actions.scale_up.destructive"),
        (
            lambda d: d["actions"]["rollback"].update(blast_radius="galaxy"),
            "actions.rollback.blast_radius",
        ),
        (
            lambda d: d["actions"]["restart"]["steps"]["deployment"][0].update(
                argv=["rm", "-rf", "/"]
            ),
            "actions.restart.steps.deployment[0].argv",
        ),
        (
            lambda d: d["actions"]["restart"]["steps"]["deployment"][0]["argv"].append("{oops}"),
            "unknown placeholder {oops}",
        ),
        (
            lambda d: d["rules"][0]["candidates"][0].update(action="reboot_world"),
            "rules[0](regression-after-deploy).candidates[0].action",
        ),
        (lambda d: d["rules"][1]["candidates"][0].update(prior=1.5), "candidates[0].prior"),
        (lambda d: d["actions"]["rollback"].update(auto=True), "actions.rollback.auto"),
        (lambda d: d.update(version=2), "version"),
    ],
)
def test_invalid_playbook_names_the_bad_entry(mutate: Any, expected: str) -> None:
    data = copy.deepcopy(RAW)
    mutate(data)
    problems = _problems(data)
    assert any(expected in p for p in problems), problems


def test_every_problem_is_reported_at_once() -> None:
    data = copy.deepcopy(RAW)
    data["actions"]["scale_up"]["cooldown_seconds"] = -1
    data["actions"]["rollback"]["blast_radius"] = "x"
    assert len(_problems(data)) == 2


def test_unreadable_or_malformed_file_is_a_playbook_error(tmp_path: Path) -> None:
    with pytest.raises(pb.PlaybookError, match="cannot read"):
        loader.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(pb.PlaybookError, match="not valid JSON"):
        loader.load(bad)


def test_render_fills_values_and_adds_the_kube_context() -> None:
    book = loader.load(pb.DEFAULT_PATH)
    steps = book.actions["rollback"].steps_for(pb.TargetKind.ROLLOUT)
    out = pb.render(steps, {"name": "web", "namespace": "prod"}, kube_context="ctx")
    assert out[0].argv == (
        "kubectl",
        "--context",
        "ctx",
        "argo",
        "rollouts",
        "undo",
        "web",
        "-n",
        "prod",
    )
    assert out[0].text == "kubectl --context ctx argo rollouts undo web -n prod"
    scale = pb.render(
        book.actions["scale_up"].steps_for(pb.TargetKind.DEPLOYMENT),
        {"name": "web", "namespace": "prod", "replicas": "6"},
    )
    assert [s.text for s in scale] == [
        "kubectl get deployment/web -n prod -o 'jsonpath={.spec.replicas}'",
        "kubectl scale deployment/web -n prod --replicas=6",
    ]
    assert scale[0].capture == "previous_replicas"
