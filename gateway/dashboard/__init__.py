"""The `/aiops` dashboard: live drift and anomalies, suggestions, feedback, remediation."""

from __future__ import annotations

from gateway.dashboard.routes import register
from gateway.dashboard.settings import DashboardSettings

__all__ = ["DashboardSettings", "register"]
