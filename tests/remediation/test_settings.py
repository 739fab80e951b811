"""Remediation settings: every problem reported at once."""

from __future__ import annotations

import pytest

from services.kit import settings as kit_settings
from services.remediation.settings import RemediationSettings


def test_defaults_are_safe() -> None:
    s = RemediationSettings.from_env({})
    assert s.executor == "dry-run" and not s.auto_enabled
    assert s.allowed_namespaces == frozenset({"aiops"}) and s.max_replicas == 10
    assert "postgresql" not in repr(s) and "redis://" not in repr(s)


def test_bad_settings_are_reported_together() -> None:
    with pytest.raises(kit_settings.SettingsError) as info:
        RemediationSettings.from_env(
            {
                "AIOPS_REMEDIATION_EXECUTOR": "webhook",
                "AIOPS_REMEDIATION_MAX_REPLICAS": "0",
                "AIOPS_REMEDIATION_AUTO_ENABLED": "maybe",
            }
        )
    text = str(info.value)
    for name in ("WEBHOOK_URL", "MAX_REPLICAS", "AUTO_ENABLED"):
        assert f"AIOPS_REMEDIATION_{name}" in text
