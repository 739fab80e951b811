"""`python -m services.remediation`: runs the remediation service until SIGTERM."""

from services.kit import bootstrap
from services.remediation import server
from services.remediation.settings import RemediationSettings

bootstrap.main("remediation", RemediationSettings.from_env, lambda s: s.server, server.running)
