"""Conversions between the anomaly service's protos and its domain values."""

from __future__ import annotations

from aiops.anomaly.v1 import anomaly_pb2 as an
from aiops.anomaly.v1 import anomaly_service_pb2 as an_svc
from aiops.common.v1 import common_pb2

from services.anomaly import domain, drift, learning
from services.kit import errors, protoconv

STATES = {
    an.ANOMALY_STATE_OPEN: domain.State.OPEN,
    an.ANOMALY_STATE_ACKNOWLEDGED: domain.State.ACKNOWLEDGED,
    an.ANOMALY_STATE_CLOSED: domain.State.CLOSED,
}
STATE_PB = {v: k for k, v in STATES.items()}
SEVERITIES = {
    common_pb2.SEVERITY_INFO: domain.Severity.INFO,
    common_pb2.SEVERITY_WARNING: domain.Severity.WARNING,
    common_pb2.SEVERITY_CRITICAL: domain.Severity.CRITICAL,
}
SEVERITY_PB = {v: k for k, v in SEVERITIES.items()}


def threshold_proto(t: learning.Threshold) -> an.Threshold:
    return an.Threshold(
        name=t.name,
        series=t.series,
        detector=t.detector,
        base_threshold=t.base,
        learned_offset=t.learned_offset,
        effective_threshold=t.effective,
        confirmed_count=t.confirmed_count,
        false_positive_count=t.false_positive_count,
        update_time=protoconv.timestamp(t.update_time),
        signature=t.signature,
    )


_TESTS = {
    an.DRIFT_TEST_KS: drift.Test.KS,
    an.DRIFT_TEST_ANDERSON_DARLING: drift.Test.ANDERSON_DARLING,
    an.DRIFT_TEST_MANN_WHITNEY: drift.Test.MANN_WHITNEY,
    an.DRIFT_TEST_PSI: drift.Test.PSI,
}
_TEST_PB = {v: k for k, v in _TESTS.items()}
_METHODS = {
    an.COMBINE_METHOD_HOLM: drift.Method.HOLM,
    an.COMBINE_METHOD_BONFERRONI: drift.Method.BONFERRONI,
    an.COMBINE_METHOD_FISHER: drift.Method.FISHER,
    an.COMBINE_METHOD_MAJORITY: drift.Method.MAJORITY,
}
_METHOD_PB = {v: k for k, v in _METHODS.items()}
DRIFT_STATES = {
    an.DRIFT_STATE_INSUFFICIENT_DATA: drift.DriftState.INSUFFICIENT_DATA,
    an.DRIFT_STATE_STABLE: drift.DriftState.STABLE,
    an.DRIFT_STATE_DRIFTING: drift.DriftState.DRIFTING,
}
_DRIFTSTATE_PB = {v: k for k, v in DRIFT_STATES.items()}


def drift_options(
    request: an_svc.DetectDriftRequest,
) -> tuple[list[drift.Test], float, drift.Method]:
    violations = []
    tests: list[drift.Test] = []
    for i, t in enumerate(request.tests):
        if t not in _TESTS:
            violations.append(errors.FieldViolation(f"tests[{i}]", "must be a known DriftTest"))
        elif _TESTS[t] in tests:
            violations.append(errors.FieldViolation(f"tests[{i}]", "is a duplicate"))
        else:
            tests.append(_TESTS[t])
    alpha = request.alpha or 0.05
    if not 0.0 < alpha <= 0.5:
        violations.append(errors.FieldViolation("alpha", "must be in (0, 0.5]"))
    method = drift.Method.HOLM
    if request.method:
        if request.method not in _METHODS:
            violations.append(errors.FieldViolation("method", "must be a known CombineMethod"))
        else:
            method = _METHODS[request.method]
    if violations:
        raise errors.invalid(violations, "DRIFT_OPTIONS_INVALID")
    return tests or list(drift.Test), alpha, method


def test_proto(r: drift.TestResult) -> an.DriftTestResult:
    msg = an.DriftTestResult(
        test=_TEST_PB[r.test],
        statistic=r.statistic,
        critical_value=r.critical_value,
        drifted=r.drifted,
    )
    if r.p_value is not None:
        msg.p_value = r.p_value
    return msg


def decision_proto(d: drift.Decision) -> an.DriftDecision:
    msg = an.DriftDecision(
        drifted=d.drifted,
        method=_METHOD_PB[d.method],
        alpha=d.alpha,
        drifted_test_count=d.drifted_test_count,
    )
    if d.combined_p_value is not None:
        msg.combined_p_value = d.combined_p_value
    return msg


def status_proto(s: drift.Status) -> an.DriftStatus:
    msg = an.DriftStatus(
        name=f"driftStatuses/{domain.series_id(s.series)}",
        series=s.series,
        state=_DRIFTSTATE_PB[s.state],
    )
    for rng, out in (
        (s.reference_range, msg.reference_range),
        (s.current_range, msg.current_range),
    ):
        if rng is not None:
            out.start_time.CopyFrom(protoconv.timestamp(rng[0]))
            out.end_time.CopyFrom(protoconv.timestamp(rng[1]))
    if s.outcome is not None:
        msg.reference_count = s.outcome.reference_count
        msg.current_count = s.outcome.current_count
        msg.results.extend(test_proto(r) for r in s.outcome.results)
        msg.decision.CopyFrom(decision_proto(s.outcome.decision))
    if s.evaluate_time is not None:
        msg.evaluate_time.CopyFrom(protoconv.timestamp(s.evaluate_time))
    if s.drift_start_time is not None:
        msg.drift_start_time.CopyFrom(protoconv.timestamp(s.drift_start_time))
    return msg


def anomaly_proto(a: domain.Anomaly) -> an.Anomaly:
    msg = an.Anomaly(
        name=a.name,
        series=a.series,
        labels=dict(a.labels),
        state=STATE_PB[a.state],
        severity=SEVERITY_PB[a.severity],
        start_time=protoconv.timestamp(a.start_time),
        peak_score=a.peak_score,
        peak_time=protoconv.timestamp(a.peak_time),
        peak_value=a.peak_value,
        signals=list(a.signals),
        explanation=a.explanation,
        signature=a.signature,
        detector=a.detector,
        threshold=a.threshold,
        acknowledger=a.acknowledger,
        acknowledge_comment=a.acknowledge_comment,
        create_time=protoconv.timestamp(a.create_time),
        update_time=protoconv.timestamp(a.update_time),
    )
    if a.end_time is not None:
        msg.end_time.CopyFrom(protoconv.timestamp(a.end_time))
    if a.acknowledge_time is not None:
        msg.acknowledge_time.CopyFrom(protoconv.timestamp(a.acknowledge_time))
    return msg
