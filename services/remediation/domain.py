"""Remediation domain: values, the ports it needs, and request validation.

Pure logic; the storage, peer and executor adapters implement the Protocols below. The
workflow (suggest, remediate, approve, verify) lives in `remediator.py`.
"""

from __future__ import annotations

import enum
import re
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from services.kit import errors, ids
from services.remediation import playbook as pb

MAX_PARAMETERS = 16
MAX_PARAMETER_VALUE = 256
MAX_REASON = 500
MAX_COMMENT = 2000
MAX_OUTPUT = 64 * 1024
MAX_PAGE_SIZE = 500
MAX_SUGGESTIONS = 20

_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
_ANOMALY = re.compile(r"anomalies/[A-Za-z0-9_-]{1,128}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class State(enum.Enum):
    PENDING_APPROVAL = "pending_approval"
    APPROVED = "approved"
    DENIED = "denied"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    DRY_RUN_COMPLETE = "dry_run_complete"
    REFUSED = "refused"


class Outcome(enum.Enum):
    UNSPECIFIED = "unspecified"
    PENDING = "pending"
    CLEARED = "cleared"
    NO_CHANGE = "no_change"
    WORSE = "worse"


# Refusal reasons (stable codes, also the `reason` label of the refusals metric).
COOLDOWN_ACTIVE = "COOLDOWN_ACTIVE"
RATE_LIMITED = "RATE_LIMITED"
TARGET_LOCKED = "TARGET_LOCKED"
APPROVAL_REQUIRED = "APPROVAL_REQUIRED"
ACTION_NOT_ALLOWED = "ACTION_NOT_ALLOWED"
KILL_SWITCH = "KILL_SWITCH_ENGAGED"
AUTO_DISABLED = "AUTO_REMEDIATION_DISABLED"
ALREADY_REMEDIATED = "ALREADY_REMEDIATED"


@dataclass(frozen=True, slots=True)
class Caller:
    subject: str
    roles: frozenset[str]

    @property
    def admin(self) -> bool:
        return "admin" in self.roles

    @property
    def operator(self) -> bool:
        return bool(self.roles & {"operator", "admin"})


AUTOMATION = Caller("auto-remediation", frozenset({"operator"}))


@dataclass(frozen=True, slots=True)
class Remediation:
    """One remediation, as recorded in the audit trail (its latest row)."""

    id: str
    action: str
    target: pb.Target
    parameters: Mapping[str, str]
    state: State
    execute: bool
    anomaly: str
    signature: str
    series: str
    reason: str
    requester: str
    request_id: str
    create_time: float
    update_time: float
    automatic: bool = False
    approver: str = ""
    approval_comment: str = ""
    commands: tuple[str, ...] = ()
    output: str = ""
    outcome: Outcome = Outcome.UNSPECIFIED
    rolled_back: bool = False
    refusal_reason: str = ""
    duration_seconds: float = 0.0
    captures: Mapping[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"remediations/{self.id}"


@dataclass(frozen=True, slots=True)
class Request:
    """A Remediate request after shape checks; `target_kind` None means unset."""

    action: str
    target_kind: pb.TargetKind | None
    target_namespace: str
    target_name: str
    parameters: Mapping[str, str]
    execute: bool
    request_id: str
    anomaly: str = ""
    use_top_suggestion: bool = False
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Filter:
    state: State | None = None
    action: str = ""
    target_kind: pb.TargetKind | None = None
    target_namespace: str = ""
    target_name: str = ""
    anomaly: str = ""
    start_time: float | None = None
    end_time: float | None = None


@dataclass(frozen=True, slots=True)
class Observation:
    """What the anomaly looks like now: open or not, and how bad."""

    open: bool
    severity: pb.Severity
    peak_score: float


@dataclass(frozen=True, slots=True)
class ExecResult:
    ran: bool
    ok: bool
    output: str
    captures: Mapping[str, str] = field(default_factory=dict)


class AuditStore(Protocol):
    """Append-only audit trail (Postgres in production)."""

    async def append(self, rem: Remediation, event: str, actor: str) -> None: ...

    async def get(self, remediation_id: str) -> Remediation | None: ...

    async def list(
        self, flt: Filter, limit: int, after: tuple[float, str] | None
    ) -> list[Remediation]: ...


class Guard(Protocol):
    """Shared safety state (Redis in production): locks, cooldowns, rate, idempotency."""

    async def claim_request(
        self, request_id: str, remediation_id: str, ttl_seconds: float
    ) -> str | None:
        """Records the first remediation of a request_id for `ttl_seconds`, or returns the
        one recorded before."""
        ...

    async def confirm_request(self, request_id: str) -> None:
        """Keeps a claim for the idempotency period once its remediation is recorded."""
        ...

    async def release_request(self, request_id: str) -> None: ...

    async def lock(self, target: str, ttl_seconds: float) -> str | None: ...

    async def unlock(self, target: str, token: str) -> None: ...

    async def cooldown_remaining(self, target: str, action: str) -> float: ...

    async def start_cooldown(self, target: str, action: str, seconds: float) -> None: ...

    async def take_rate(self, limit: int, window_seconds: float) -> float: ...

    async def kill_switch(self) -> bool: ...

    async def set_kill_switch(self, engaged: bool) -> None: ...


class FeedbackPort(Protocol):
    async def evidence(self, signature_key: str) -> list[tuple[str, int, int]]:
        """(action, helpful, not_helpful) rows of live feedback for a signature."""
        ...

    async def submit(self, rem: Remediation, helpful: bool, comment: str) -> None: ...


class AnomalyPort(Protocol):
    async def signature(self, name: str) -> pb.Signature: ...

    async def observe(self, name: str) -> Observation: ...


class Executor(Protocol):
    name: str

    async def run(self, steps: Sequence[pb.Rendered], rem: Remediation) -> ExecResult: ...


def parse_name(name: str, field_name: str = "name") -> str:
    prefix, _, rid = name.partition("/")
    if prefix != "remediations" or not ids.valid(rid):
        raise errors.invalid(
            [errors.FieldViolation(field_name, "must look like remediations/{26-character id}")],
            "REMEDIATION_NAME_INVALID",
        )
    return rid


def check_anomaly_name(name: str, field_name: str = "anomaly") -> list[errors.FieldViolation]:
    if name and not _ANOMALY.fullmatch(name):
        return [errors.FieldViolation(field_name, "must look like anomalies/{anomaly}")]
    return []


@dataclass(frozen=True, slots=True)
class Policy:
    """What validation needs from the settings."""

    allowed_namespaces: frozenset[str]
    default_namespace: str
    max_replicas: int


def validate(
    req: Request, book: pb.Playbook, policy: Policy
) -> tuple[pb.Action, pb.Target, dict[str, str]]:
    """The action, target and full parameters of a request, or INVALID_ARGUMENT naming
    every field at fault. Nothing has run when this raises."""
    out: list[errors.FieldViolation] = []
    action = book.actions.get(req.action)
    if not req.action:
        out.append(errors.FieldViolation("action", "is required"))
    elif action is None:
        out.append(
            errors.FieldViolation(
                "action", f"unknown action; expected one of {', '.join(book.actions)}"
            )
        )
    target = _target(req, book, policy, action, out)
    params = _parameters(req.parameters, action, book, policy, out)
    try:
        if uuid.UUID(req.request_id).version is None or len(req.request_id) != 36:
            raise ValueError
    except ValueError:
        out.append(errors.FieldViolation("request_id", "must be a UUID"))
    out += check_anomaly_name(req.anomaly)
    if len(req.reason) > MAX_REASON or _CONTROL.search(req.reason):
        out.append(
            errors.FieldViolation("reason", f"must be at most {MAX_REASON} printable characters")
        )
    if out or action is None or target is None:
        raise errors.invalid(out, "REMEDIATION_INVALID")
    return action, target, params


def _target(
    req: Request,
    book: pb.Playbook,
    policy: Policy,
    action: pb.Action | None,
    out: list[errors.FieldViolation],
) -> pb.Target | None:
    kind = req.target_kind
    if kind is None:
        out.append(errors.FieldViolation("target.kind", "is required"))
    elif action is not None and kind not in action.target_kinds:
        kinds = ", ".join(k.value for k in action.target_kinds)
        out.append(errors.FieldViolation("target.kind", f"{req.action} applies only to {kinds}"))
    namespace = req.target_namespace or policy.default_namespace
    if not _LABEL.fullmatch(namespace) or len(namespace) > 63:
        out.append(errors.FieldViolation("target.namespace", "must be a DNS-1123 label"))
    elif namespace not in policy.allowed_namespaces:
        allowed = ", ".join(sorted(policy.allowed_namespaces))
        out.append(errors.FieldViolation("target.namespace", f"is not allowed; allowed: {allowed}"))
    name = req.target_name
    if not name and kind in (pb.TargetKind.REDIS, pb.TargetKind.GATEWAY):
        name = "redis" if kind is pb.TargetKind.REDIS else "aiops-gateway"
    if not name:
        out.append(errors.FieldViolation("target.name", "is required"))
    elif len(name) > 253 or not _SUBDOMAIN.fullmatch(name):
        out.append(errors.FieldViolation("target.name", "must be a DNS-1123 subdomain"))
    return pb.Target(kind, namespace, name) if kind is not None else None


def _parameters(
    given: Mapping[str, str],
    action: pb.Action | None,
    book: pb.Playbook,
    policy: Policy,
    out: list[errors.FieldViolation],
) -> dict[str, str]:
    if len(given) > MAX_PARAMETERS:
        out.append(errors.FieldViolation("parameters", f"at most {MAX_PARAMETERS} entries"))
        return {}
    if action is None:
        return dict(given)
    params = {k: p.default for k, p in action.parameters.items()}
    bound = min(book.max_replicas, policy.max_replicas)
    for key, value in given.items():
        where = f"parameters.{key}"
        spec = action.parameters.get(key)
        if spec is None:
            known = ", ".join(action.parameters) or "none"
            out.append(
                errors.FieldViolation(where, f"unknown parameter; {action.id} takes {known}")
            )
            continue
        if len(value) > MAX_PARAMETER_VALUE or _CONTROL.search(value):
            out.append(errors.FieldViolation(where, "must be at most 256 printable characters"))
            continue
        if spec.type is pb.ParameterType.REPLICAS:
            if not value.isdigit() or not 1 <= int(value) <= bound:
                out.append(errors.FieldViolation(where, f"must be an integer from 1 to {bound}"))
                continue
            value = str(int(value))
        elif spec.type is pb.ParameterType.SECONDS and (
            not value.isdigit() or not 1 <= int(value) <= 86400
        ):
            out.append(errors.FieldViolation(where, "must be an integer from 1 to 86400"))
            continue
        params[key] = value
    for key, value in params.items():
        if not value:
            out.append(errors.FieldViolation(f"parameters.{key}", "is required"))
    return params


def now() -> float:
    return time.time()
