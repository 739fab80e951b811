"""Settings of the remediation service."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from services.kit import settings as kit_settings


@dataclass(frozen=True, slots=True)
class RemediationSettings:
    server: kit_settings.ServerSettings

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> RemediationSettings:
        r = kit_settings.Reader(kit_settings.environ() if env is None else env)
        return r.build(cls, server=kit_settings.read_server(r, "remediation", 50054, 9154))
