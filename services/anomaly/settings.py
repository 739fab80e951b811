"""Settings of the anomaly service."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from services.kit import settings as kit_settings


@dataclass(frozen=True, slots=True)
class AnomalySettings:
    """Everything the anomaly service reads from `AIOPS_*` variables.

    Attributes:
        server: shared gRPC server settings.
        database_url: PostgreSQL for events, thresholds, drift and checkpoints.
        database_schema: optional schema (search_path) for the tables; tests use their own.
        feedback_addr: `host:port` of the feedback service (learning loop).
        remediation_addr: `host:port` of the remediation service (suggestions).
        peer_timeout_seconds: deadline of every call to a peer.
        threshold: base score threshold of every series, in (0.5, 1).
        threshold_min, threshold_max: clamp of the learned threshold. The minimum defaults
            to the base: confirmations then cancel earlier raises (and bank credit against
            later ones) but never make a series noisier than the base; set it lower to let
            confirmed kinds of alarm fire more easily.
        offset_bound: largest learned offset, either sign, in decades of tail probability
            (+1 makes alarms on that series ten times rarer).
        offset_step: fraction of the remaining distance to +bound a false positive moves.
        offset_confirm_step: fraction of the remaining distance to -bound a confirmation
            moves.
        alarm_kind_signals: how many (sorted) signal names make the alarm kind that offsets
            are learned for; 0 means all of them (the most specific kind). 2 shares each
            lesson among closely related kinds; on the NAB DEV replay it cut false alarms
            by 33 % (all names: 27 %) with a slightly higher standard score.
        offset_half_life_seconds: time for a learned offset to decay halfway back to zero.
        max_batch: most observations per ScorePoints request.
        max_series: most series tracked in memory by one replica.
        close_after_points: consecutive normal points that close an event.
        scoring_workers: detector worker processes (series sharded over them); 0 (the
            default) scores on the event loop, yielding every few milliseconds. With the
            compiled detector, shipping points to workers and back costs more than scoring
            them: `make bench` measured half the points/s and twice the CPU per point with 2
            workers than inline (1,000-point batches).
        drift_interval_seconds: period of the scheduled drift evaluation.
        drift_window: points per reference and per current window.
        drift_alpha: family-wise significance level of scheduled drift tests.
        drift_workers: processes for drift tests; 0 runs them in a thread.
        checkpoint_interval_seconds: period of detector checkpoints to Postgres.
        feedback_poll_seconds: period of the feedback pull; 0 disables it.
        replicas: every replica's address, for sharding; empty means this one owns all.
        replica_self: this replica's own entry in `replicas`.
    """

    server: kit_settings.ServerSettings
    database_url: str = field(repr=False)
    database_schema: str | None
    feedback_addr: str
    remediation_addr: str
    peer_timeout_seconds: float
    threshold: float
    threshold_min: float
    threshold_max: float
    offset_bound: float
    offset_step: float
    offset_confirm_step: float
    alarm_kind_signals: int
    offset_half_life_seconds: float
    max_batch: int
    max_series: int
    close_after_points: int
    scoring_workers: int
    drift_interval_seconds: float
    drift_window: int
    drift_alpha: float
    drift_workers: int
    checkpoint_interval_seconds: float
    feedback_poll_seconds: float
    replicas: tuple[str, ...]
    replica_self: str

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> AnomalySettings:
        r = kit_settings.Reader(kit_settings.environ() if env is None else env)
        replicas = tuple(
            p.strip() for p in r.str("AIOPS_ANOMALY_REPLICAS", "").split(",") if p.strip()
        )
        replica_self = r.str("AIOPS_ANOMALY_REPLICA_SELF", "")
        if replicas and replica_self not in replicas:
            r.problems.append(
                "AIOPS_ANOMALY_REPLICA_SELF: must be one of AIOPS_ANOMALY_REPLICAS when set"
            )
        threshold = r.float("AIOPS_ANOMALY_THRESHOLD", 0.99, min=0.5, max=1.0 - 1e-15)
        threshold_min = r.float("AIOPS_ANOMALY_THRESHOLD_MIN", threshold, min=0.0, max=1.0)
        threshold_max = r.float("AIOPS_ANOMALY_THRESHOLD_MAX", 0.9999, min=0.0, max=1.0)
        if threshold_min > threshold_max:
            r.problems.append("AIOPS_ANOMALY_THRESHOLD_MIN: must not exceed THRESHOLD_MAX")
        return r.build(
            cls,
            server=kit_settings.read_server(r, "anomaly", 50053, 9153),
            database_url=r.str("AIOPS_DATABASE_URL", "postgresql://127.0.0.1:5432/aiops"),
            database_schema=r.optional_str("AIOPS_ANOMALY_DATABASE_SCHEMA"),
            feedback_addr=r.address("AIOPS_FEEDBACK_ADDR", "127.0.0.1:50051"),
            remediation_addr=r.address("AIOPS_REMEDIATION_ADDR", "127.0.0.1:50054"),
            peer_timeout_seconds=r.float(
                "AIOPS_ANOMALY_PEER_TIMEOUT_SECONDS", 2.0, min=0.01, max=60
            ),
            threshold=threshold,
            threshold_min=threshold_min,
            threshold_max=threshold_max,
            offset_bound=r.float("AIOPS_ANOMALY_OFFSET_BOUND", 3.0, min=0.0, max=6.0),
            offset_step=r.float("AIOPS_ANOMALY_OFFSET_STEP", 0.5, min=0.0, max=1.0),
            alarm_kind_signals=r.int("AIOPS_ANOMALY_ALARM_KIND_SIGNALS", 2, min=0, max=16),
            offset_confirm_step=r.float("AIOPS_ANOMALY_OFFSET_CONFIRM_STEP", 1.0, min=0.0, max=1.0),
            offset_half_life_seconds=r.float(
                "AIOPS_ANOMALY_OFFSET_HALF_LIFE_SECONDS", 30 * 86400.0, min=1.0
            ),
            max_batch=r.int("AIOPS_ANOMALY_MAX_BATCH", 10_000, min=1, max=100_000),
            max_series=r.int("AIOPS_ANOMALY_MAX_SERIES", 100_000, min=1),
            close_after_points=r.int("AIOPS_ANOMALY_CLOSE_AFTER_POINTS", 5, min=1, max=10_000),
            scoring_workers=r.int("AIOPS_ANOMALY_SCORING_WORKERS", 0, min=0, max=64),
            drift_interval_seconds=r.float(
                "AIOPS_ANOMALY_DRIFT_INTERVAL_SECONDS", 60.0, min=0.05, max=86400
            ),
            drift_window=r.int("AIOPS_ANOMALY_DRIFT_WINDOW", 500, min=8, max=100_000),
            drift_alpha=r.float("AIOPS_ANOMALY_DRIFT_ALPHA", 0.01, min=1e-9, max=0.5),
            drift_workers=r.int("AIOPS_ANOMALY_DRIFT_WORKERS", 1, min=0, max=64),
            checkpoint_interval_seconds=r.float(
                "AIOPS_ANOMALY_CHECKPOINT_INTERVAL_SECONDS", 10.0, min=0.05, max=3600
            ),
            feedback_poll_seconds=r.float(
                "AIOPS_ANOMALY_FEEDBACK_POLL_SECONDS", 60.0, min=0.0, max=86400
            ),
            replicas=replicas,
            replica_self=replica_self,
        )
