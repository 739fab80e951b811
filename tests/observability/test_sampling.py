"""Trace sampling: parent-based with AIOPS_TRACE_SAMPLE_RATIO, the operator's
OTEL_TRACES_SAMPLER wins, and a bad ratio is refused."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace import sampling

from services.kit import settings, tracing


def test_default_is_parent_based_ratio_sampling() -> None:
    chosen = tracing.sampler({})
    assert isinstance(chosen, sampling.ParentBased)
    description = chosen.get_description()  # type: ignore[no-untyped-call]
    assert str(tracing.DEFAULT_SAMPLE_RATIO) in description


def test_ratio_one_records_every_trace() -> None:
    chosen = tracing.sampler({"AIOPS_TRACE_SAMPLE_RATIO": "1"})
    assert chosen is not None
    assert "AlwaysOnSampler" in chosen.get_description()


def test_the_operators_otel_sampler_wins() -> None:
    assert tracing.sampler({"OTEL_TRACES_SAMPLER": "always_off"}) is None


@pytest.mark.parametrize("bad", ["2", "-0.1", "often"])
def test_a_bad_ratio_is_refused(bad: str) -> None:
    with pytest.raises(settings.SettingsError):
        tracing.sampler({"AIOPS_TRACE_SAMPLE_RATIO": bad})
