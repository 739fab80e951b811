"""`python -m services.anomaly`: runs the anomaly service until SIGTERM."""

from services.anomaly import server
from services.anomaly.settings import AnomalySettings
from services.kit import bootstrap

# The guard matters: spawned detector workers import this module as `__mp_main__`.
if __name__ == "__main__":
    bootstrap.main("anomaly", AnomalySettings.from_env, lambda s: s.server, server.running)
