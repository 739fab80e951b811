"""Settings of the remediation service."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from services.kit import settings as kit_settings
from services.remediation import playbook

EXECUTORS = ("dry-run", "kubernetes", "webhook")


@dataclass(frozen=True, slots=True)
class RemediationSettings:
    server: kit_settings.ServerSettings
    database_url: str = field(repr=False)
    redis_url: str = field(repr=False)
    key_prefix: str
    database_schema: str | None
    feedback_addr: str
    anomaly_addr: str
    peer_timeout_seconds: float
    storage_timeout_seconds: float
    playbook_path: Path
    executor: str
    kube_context: str
    kubectl_path: str
    command_timeout_seconds: float
    webhook_url: str
    webhook_secret_file: Path | None
    maintenance_url: str
    maintenance_token_file: Path | None = field(repr=False)
    allowed_namespaces: frozenset[str]
    default_namespace: str
    max_replicas: int
    rate_limit: int
    rate_window_seconds: float
    lock_ttl_seconds: float
    auto_enabled: bool
    verify_window_seconds: float | None
    prior_strength: float
    max_evidence: int

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> RemediationSettings:
        e = kit_settings.environ() if env is None else env
        r = kit_settings.Reader(e)
        executor = r.str("AIOPS_REMEDIATION_EXECUTOR", "dry-run", choices=EXECUTORS)
        webhook_url = r.str("AIOPS_REMEDIATION_WEBHOOK_URL", "")
        if executor == "webhook" and not webhook_url:
            r.problems.append("AIOPS_REMEDIATION_WEBHOOK_URL: required with the webhook executor")
        secret = r.optional_str("AIOPS_REMEDIATION_WEBHOOK_SECRET_FILE")
        namespaces = frozenset(
            n.strip()
            for n in r.str("AIOPS_REMEDIATION_ALLOWED_NAMESPACES", "aiops").split(",")
            if n.strip()
        )
        default_ns = r.str(
            "AIOPS_REMEDIATION_DEFAULT_NAMESPACE", sorted(namespaces)[0] if namespaces else "aiops"
        )
        verify = r.optional_str("AIOPS_REMEDIATION_VERIFY_WINDOW_SECONDS")
        token_file = r.optional_str("AIOPS_REMEDIATION_MAINTENANCE_TOKEN_FILE")
        return r.build(
            cls,
            server=kit_settings.read_server(r, "remediation", 50054, 9154),
            database_url=r.str("AIOPS_DATABASE_URL", "postgresql://127.0.0.1:5432/aiops"),
            redis_url=r.str("AIOPS_REDIS_URL", "redis://127.0.0.1:6379/0"),
            key_prefix=r.str("AIOPS_REMEDIATION_KEY_PREFIX", "aiops:remediation:"),
            database_schema=r.optional_str("AIOPS_REMEDIATION_DATABASE_SCHEMA"),
            feedback_addr=r.address("AIOPS_FEEDBACK_ADDR", "127.0.0.1:50051"),
            anomaly_addr=r.address("AIOPS_ANOMALY_ADDR", "127.0.0.1:50053"),
            peer_timeout_seconds=r.float("AIOPS_REMEDIATION_PEER_TIMEOUT_SECONDS", 2.0, min=0.05),
            storage_timeout_seconds=r.float(
                "AIOPS_REMEDIATION_STORAGE_TIMEOUT_SECONDS", 2.0, min=0.05, max=60
            ),
            playbook_path=r.path("AIOPS_REMEDIATION_PLAYBOOK", playbook.DEFAULT_PATH),
            executor=executor,
            kube_context=r.str("AIOPS_REMEDIATION_KUBE_CONTEXT", ""),
            kubectl_path=r.str("AIOPS_REMEDIATION_COMMAND_PATH", e.get("PATH", "/usr/bin:/bin")),
            command_timeout_seconds=r.float(
                "AIOPS_REMEDIATION_COMMAND_TIMEOUT_SECONDS", 60.0, min=0.1, max=3600
            ),
            webhook_url=webhook_url,
            webhook_secret_file=Path(secret) if secret else None,
            maintenance_url=r.str(
                "AIOPS_REMEDIATION_MAINTENANCE_URL",
                "http://127.0.0.1:3000/api/v1/aiops/maintenance",
            ),
            maintenance_token_file=Path(token_file) if token_file else None,
            allowed_namespaces=namespaces,
            default_namespace=default_ns,
            max_replicas=r.int("AIOPS_REMEDIATION_MAX_REPLICAS", 10, min=1, max=1000),
            rate_limit=r.int("AIOPS_REMEDIATION_RATE_LIMIT", 10, min=1),
            rate_window_seconds=r.float("AIOPS_REMEDIATION_RATE_WINDOW_SECONDS", 60.0, min=1),
            lock_ttl_seconds=r.float("AIOPS_REMEDIATION_LOCK_TTL_SECONDS", 300.0, min=1),
            auto_enabled=r.bool("AIOPS_REMEDIATION_AUTO_ENABLED", False),
            verify_window_seconds=(
                r.float("AIOPS_REMEDIATION_VERIFY_WINDOW_SECONDS", 0.0, min=0) if verify else None
            ),
            prior_strength=r.float("AIOPS_REMEDIATION_PRIOR_STRENGTH", 4.0, min=0.5, max=100),
            max_evidence=r.int("AIOPS_REMEDIATION_MAX_EVIDENCE", 20, min=1, max=10000),
        )
