"""The remediation playbook: actions and ranking rules from a versioned data file.

The file (`playbooks/v1.json` by default) is read and validated by `loader`; this module
holds what it describes (actions, their steps, ranking rules) and renders steps into the
exact commands. Pure logic.
"""

from __future__ import annotations

import enum
import fnmatch
import json
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_PATH = Path(__file__).parent / "playbooks" / "v1.json"
# Values every step may use besides the action's own parameters.
BUILTIN_VALUES = frozenset({"name", "namespace", "reason", "maintenance_url"})
ALL_KINDS = "*"


class TargetKind(enum.Enum):
    DEPLOYMENT = "deployment"
    ROLLOUT = "rollout"
    STATEFULSET = "statefulset"
    REDIS = "redis"
    GATEWAY = "gateway"


class Direction(enum.Enum):
    UP = "up"
    DOWN = "down"


class AnomalyKind(enum.Enum):
    SPIKE = "spike"
    LEVEL_SHIFT = "level_shift"
    DRIFT = "drift"
    ALERT = "alert"


class Severity(enum.IntEnum):
    INFO = 1
    WARNING = 2
    CRITICAL = 3


class BlastRadius(enum.Enum):
    NONE = "none"
    POD = "pod"
    WORKLOAD = "workload"
    SERVICE = "service"


class ParameterType(enum.Enum):
    REPLICAS = "replicas"
    SECONDS = "seconds"
    TEXT = "text"


@dataclass(frozen=True, slots=True)
class Target:
    kind: TargetKind
    namespace: str
    name: str

    def key(self) -> str:
        return f"{self.kind.value}/{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class Signature:
    """What ranking matches on: an anomaly described by its series and shape."""

    series: str
    direction: Direction
    kind: AnomalyKind
    severity: Severity
    recent_deploy: bool = False
    metric_name: str = ""  # the anomaly's own metric name, when it gave one

    @property
    def metric(self) -> str:
        return self.metric_name or self.series.split("{", 1)[0]

    def key(self) -> str:
        """`{metric}:{direction}:{kind}`, the key feedback on suggestions carries."""
        return f"{self.metric}:{self.direction.value}:{self.kind.value}"


@dataclass(frozen=True, slots=True)
class Step:
    """One command: a program's argument list, or an HTTP POST of a JSON body."""

    argv: tuple[str, ...] = ()
    http: str = ""
    body: Mapping[str, Any] = field(default_factory=dict)
    capture: str = ""


@dataclass(frozen=True, slots=True)
class Parameter:
    key: str
    description: str
    default: str
    type: ParameterType


@dataclass(frozen=True, slots=True)
class Action:
    id: str
    description: str
    destructive: bool
    auto: bool
    blast_radius: BlastRadius
    cooldown_seconds: float
    verify_seconds: float
    preconditions: tuple[str, ...]
    target_kinds: tuple[TargetKind, ...]
    parameters: Mapping[str, Parameter]
    steps: Mapping[str, tuple[Step, ...]]
    undo: Mapping[str, tuple[Step, ...]]

    @property
    def reversible(self) -> bool:
        return bool(self.undo)

    def steps_for(self, kind: TargetKind, undo: bool = False) -> tuple[Step, ...]:
        table = self.undo if undo else self.steps
        return table.get(kind.value) or table.get(ALL_KINDS) or ()


@dataclass(frozen=True, slots=True)
class Candidate:
    action: str
    prior: float
    target: Target | None
    min_severity: Severity


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    description: str
    series: str
    direction: Direction | None
    kinds: frozenset[AnomalyKind]
    recent_deploy: bool | None
    min_severity: Severity
    candidates: tuple[Candidate, ...]

    def matches(self, sig: Signature) -> bool:
        return (
            fnmatch.fnmatchcase(sig.metric, self.series)
            and (self.direction is None or self.direction is sig.direction)
            and (not self.kinds or sig.kind in self.kinds)
            and (self.recent_deploy is None or self.recent_deploy == sig.recent_deploy)
            and sig.severity >= self.min_severity
        )


@dataclass(frozen=True, slots=True)
class Playbook:
    version: int
    digest: str
    max_replicas: int
    targets: tuple[tuple[str, Target], ...]
    actions: Mapping[str, Action]
    rules: tuple[Rule, ...]

    def target_for(self, series: str) -> Target | None:
        metric = series.split("{", 1)[0]
        for pattern, target in self.targets:
            if fnmatch.fnmatchcase(metric, pattern):
                return target
        return None


class PlaybookError(Exception):
    """A playbook that cannot be used, with every problem, each naming its entry."""

    def __init__(self, source: str, problems: Sequence[str]) -> None:
        super().__init__(f"invalid playbook {source}:\n  " + "\n  ".join(problems))
        self.problems = list(problems)


@dataclass(frozen=True, slots=True)
class Rendered:
    """A step with its values filled in, and the text an operator would type."""

    argv: tuple[str, ...]
    http: str
    body: Mapping[str, Any]
    capture: str
    text: str


def render(
    steps: Sequence[Step], values: Mapping[str, str], kube_context: str = ""
) -> list[Rendered]:
    """Fills the steps' placeholders; `kubectl` gets `--context` when one is configured.

    A captured value that is not known yet (a dry run) renders as `<capture>`.
    """
    filled: dict[str, str] = dict(values)
    out: list[Rendered] = []
    for step in steps:
        if step.argv:
            argv = [a.format_map(_Missing(filled)) for a in step.argv]
            if argv[0] == "kubectl" and kube_context:
                argv[1:1] = ["--context", kube_context]
            out.append(Rendered(tuple(argv), "", {}, step.capture, shlex.join(argv)))
        else:
            url = step.http.format_map(_Missing(filled))
            body = {
                k: v.format_map(_Missing(filled)) if isinstance(v, str) else v
                for k, v in step.body.items()
            }
            text = f"POST {url} {json.dumps(body, separators=(',', ':'), sort_keys=True)}"
            out.append(Rendered((), url, body, step.capture, text))
        if step.capture:
            filled.setdefault(step.capture, f"<{step.capture}>")
    return out


class _Missing(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return f"<{key}>"
