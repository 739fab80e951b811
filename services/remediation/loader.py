"""Loading and validating a playbook file (format v1, JSON).

Every problem is collected and reported at once, each naming the entry at fault
(`actions.scale_up.steps.deployment[0].argv: ...`), so a bad playbook stops the service at
start and a bad reload keeps the previous one.
"""

from __future__ import annotations

import hashlib
import json
import re
import string
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from services.remediation import playbook as pb

_ACTION_ID = re.compile(r"[a-z][a-z0-9_]{0,62}")


def load(path: Path) -> pb.Playbook:
    """Reads and validates a playbook file; raises pb.PlaybookError naming each bad entry."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise pb.PlaybookError(str(path), [f"cannot read the file: {exc.strerror}"]) from exc
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise pb.PlaybookError(str(path), [f"not valid JSON: {exc}"]) from exc
    return parse(data, str(path), hashlib.sha256(raw).hexdigest()[:12])


class _Checker:
    def __init__(self) -> None:
        self.problems: list[str] = []

    def fail(self, where: str, what: str) -> None:
        self.problems.append(f"{where}: {what}")

    def obj(self, value: Any, where: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            self.fail(where, "must be an object")
            return {}
        return value

    def text(self, value: Any, where: str, *, required: bool = True) -> str:
        if value is None and not required:
            return ""
        if not isinstance(value, str) or (required and not value):
            self.fail(where, "must be a non-empty string" if required else "must be a string")
            return ""
        return value

    def number(self, value: Any, where: str, low: float, high: float) -> float:
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not low <= value <= high
        ):
            self.fail(where, f"must be a number from {low:g} to {high:g}")
            return low
        return float(value)

    def flag(self, value: Any, where: str) -> bool:
        if not isinstance(value, bool):
            self.fail(where, "must be true or false")
            return False
        return value

    def enum(self, cls: type[Any], value: Any, where: str) -> Any:
        try:
            return cls(value)
        except ValueError:
            choices = ", ".join(str(m.value) for m in cls)
            self.fail(where, f"unknown value {value!r}; expected one of {choices}")
            return None

    def severity(self, value: Any, where: str) -> pb.Severity:
        if value is None:
            return pb.Severity.INFO
        if not isinstance(value, str) or value.upper() not in pb.Severity.__members__:
            self.fail(where, "must be one of info, warning, critical")
            return pb.Severity.INFO
        return pb.Severity[value.upper()]

    def target(self, value: Any, where: str) -> pb.Target | None:
        d = self.obj(value, where)
        kind = self.enum(pb.TargetKind, d.get("kind"), f"{where}.kind")
        ns = self.text(d.get("namespace", ""), f"{where}.namespace", required=False)
        name = self.text(d.get("name", ""), f"{where}.name", required=False)
        return pb.Target(kind, ns, name) if kind is not None else None


def _fields(template: str) -> set[str]:
    return {f for _, f, _, _ in string.Formatter().parse(template) if f}


def _templates(step: pb.Step) -> list[str]:
    out = list(step.argv)
    if step.http:
        out.append(step.http)
    out += [v for v in step.body.values() if isinstance(v, str)]
    return out


def _steps(
    c: _Checker, value: Any, where: str, known: frozenset[str] | set[str]
) -> dict[str, tuple[pb.Step, ...]]:
    out: dict[str, tuple[pb.Step, ...]] = {}
    for kind, steps in c.obj(value, where).items():
        kwhere = f"{where}.{kind}"
        if kind != pb.ALL_KINDS and kind not in {k.value for k in pb.TargetKind}:
            c.fail(kwhere, "unknown target kind")
        if not isinstance(steps, list) or not steps:
            c.fail(kwhere, "must be a non-empty list of steps")
            continue
        available = set(known)
        parsed: list[pb.Step] = []
        for i, raw in enumerate(steps):
            swhere = f"{kwhere}[{i}]"
            d = c.obj(raw, swhere)
            argv = d.get("argv", [])
            http = d.get("http", "")
            if bool(argv) == bool(http):
                c.fail(swhere, "needs exactly one of argv or http")
                continue
            if argv and (
                not isinstance(argv, list)
                or not all(isinstance(a, str) and a for a in argv)
                or argv[0] not in ("kubectl", "redis-cli")
            ):
                c.fail(f"{swhere}.argv", "must be a list of strings running kubectl or redis-cli")
                continue
            body = c.obj(d.get("json", {}), f"{swhere}.json")
            step = pb.Step(tuple(argv), str(http), body, str(d.get("capture", "")))
            for template in _templates(step):
                try:
                    unknown = _fields(template) - available
                except ValueError:
                    c.fail(swhere, f"malformed template {template!r}")
                    continue
                if unknown:
                    c.fail(swhere, f"unknown placeholder {{{sorted(unknown)[0]}}}")
            if step.capture:
                available.add(step.capture)
            parsed.append(step)
        out[kind] = tuple(parsed)
    return out


def _action(c: _Checker, aid: str, value: Any) -> pb.Action | None:
    where = f"actions.{aid}"
    if not _ACTION_ID.fullmatch(aid):
        c.fail(where, "action ids are lower_snake_case, at most 63 characters")
    d = c.obj(value, where)
    params: dict[str, pb.Parameter] = {}
    for key, raw in c.obj(d.get("parameters", {}), f"{where}.parameters").items():
        p = c.obj(raw, f"{where}.parameters.{key}")
        ptype = c.enum(pb.ParameterType, p.get("type", "text"), f"{where}.parameters.{key}.type")
        params[key] = pb.Parameter(
            key,
            c.text(p.get("description"), f"{where}.parameters.{key}.description"),
            c.text(p.get("default", ""), f"{where}.parameters.{key}.default", required=False),
            ptype or pb.ParameterType.TEXT,
        )
    kinds = d.get("target_kinds")
    if not isinstance(kinds, list) or not kinds:
        c.fail(f"{where}.target_kinds", "must be a non-empty list")
        kinds = []
    target_kinds = tuple(
        k
        for i, v in enumerate(kinds)
        if (k := c.enum(pb.TargetKind, v, f"{where}.target_kinds[{i}]"))
    )
    known = pb.BUILTIN_VALUES | set(params)
    steps = _steps(c, d.get("steps"), f"{where}.steps", known)
    captures = {s.capture for ss in steps.values() for s in ss if s.capture}
    undo = _steps(c, d.get("undo", {}), f"{where}.undo", known | captures)
    for kind in target_kinds:
        if kind.value not in steps and pb.ALL_KINDS not in steps:
            c.fail(f"{where}.steps", f"no steps for target kind {kind.value}")
    preconditions = d.get("preconditions", [])
    if not isinstance(preconditions, list) or not all(isinstance(p, str) for p in preconditions):
        c.fail(f"{where}.preconditions", "must be a list of sentences")
        preconditions = []
    destructive = c.flag(d.get("destructive"), f"{where}.destructive")
    auto = c.flag(d.get("auto", False), f"{where}.auto")
    if destructive and auto:
        c.fail(f"{where}.auto", "a destructive action can never run automatically")
    radius = c.enum(pb.BlastRadius, d.get("blast_radius"), f"{where}.blast_radius")
    return pb.Action(
        id=aid,
        description=c.text(d.get("description"), f"{where}.description"),
        destructive=destructive,
        auto=auto,
        blast_radius=radius or pb.BlastRadius.NONE,
        cooldown_seconds=c.number(d.get("cooldown_seconds"), f"{where}.cooldown_seconds", 0, 86400),
        verify_seconds=c.number(d.get("verify_seconds", 0), f"{where}.verify_seconds", 0, 86400),
        preconditions=tuple(preconditions),
        target_kinds=target_kinds,
        parameters=params,
        steps=steps,
        undo=undo,
    )


def _rule(c: _Checker, i: int, value: Any, actions: Mapping[str, pb.Action]) -> pb.Rule:
    d = c.obj(value, f"rules[{i}]")
    name = c.text(d.get("name"), f"rules[{i}].name")
    where = f"rules[{i}]({name})"
    m = c.obj(d.get("match", {}), f"{where}.match")
    direction = m.get("direction")
    kinds = m.get("kinds", [])
    recent = m.get("recent_deploy")
    if recent is not None and not isinstance(recent, bool):
        c.fail(f"{where}.match.recent_deploy", "must be true, false or absent")
        recent = None
    candidates: list[pb.Candidate] = []
    raw_candidates = d.get("candidates")
    if not isinstance(raw_candidates, list) or not raw_candidates:
        c.fail(f"{where}.candidates", "must be a non-empty list")
        raw_candidates = []
    for j, raw in enumerate(raw_candidates):
        cw = f"{where}.candidates[{j}]"
        cd = c.obj(raw, cw)
        aid = str(cd.get("action"))
        if aid not in actions:
            c.fail(f"{cw}.action", f"unknown action {aid!r}")
            continue
        target = c.target(cd["target"], f"{cw}.target") if "target" in cd else None
        if target is not None and target.kind not in actions[aid].target_kinds:
            c.fail(f"{cw}.target.kind", f"action {aid} does not apply to {target.kind.value}")
        candidates.append(
            pb.Candidate(
                aid,
                c.number(cd.get("prior"), f"{cw}.prior", 0.01, 0.99),
                target,
                c.severity(cd.get("min_severity"), f"{cw}.min_severity"),
            )
        )
    return pb.Rule(
        name=name,
        description=c.text(d.get("description"), f"{where}.description"),
        series=c.text(m.get("series", "*"), f"{where}.match.series"),
        direction=c.enum(pb.Direction, direction, f"{where}.match.direction")
        if direction
        else None,
        kinds=frozenset(
            k
            for n, v in enumerate(kinds if isinstance(kinds, list) else [])
            if (k := c.enum(pb.AnomalyKind, v, f"{where}.match.kinds[{n}]"))
        ),
        recent_deploy=recent,
        min_severity=c.severity(m.get("min_severity"), f"{where}.match.min_severity"),
        candidates=tuple(candidates),
    )


def parse(data: Any, source: str = "<playbook>", digest: str = "") -> pb.Playbook:
    """Validates decoded playbook data; raises pb.PlaybookError with every problem."""
    c = _Checker()
    d = c.obj(data, "playbook")
    version = d.get("version")
    if version != 1:
        c.fail("version", "must be 1 (this service reads playbook format v1)")
    max_replicas = int(c.number(d.get("max_replicas"), "max_replicas", 1, 1000))
    actions: dict[str, pb.Action] = {}
    raw_actions = c.obj(d.get("actions"), "actions")
    if not raw_actions:
        c.fail("actions", "must define at least one action")
    for aid, value in raw_actions.items():
        action = _action(c, aid, value)
        if action is not None:
            actions[aid] = action
    targets: list[tuple[str, pb.Target]] = []
    raw_targets = d.get("targets", [])
    for i, raw in enumerate(raw_targets if isinstance(raw_targets, list) else []):
        td = c.obj(raw, f"targets[{i}]")
        target = c.target(td.get("target"), f"targets[{i}].target")
        if target is not None:
            targets.append((c.text(td.get("series"), f"targets[{i}].series"), target))
    raw_rules = d.get("rules")
    if not isinstance(raw_rules, list) or not raw_rules:
        c.fail("rules", "must be a non-empty list")
        raw_rules = []
    rules = tuple(_rule(c, i, v, actions) for i, v in enumerate(raw_rules))
    if c.problems:
        raise pb.PlaybookError(source, c.problems)
    return pb.Playbook(
        version=1,
        digest=digest or hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12],
        max_replicas=max_replicas,
        targets=tuple(targets),
        actions=dict(sorted(actions.items())),
        rules=rules,
    )
