"""`python -m services.feedback`: runs the feedback service until SIGTERM."""

from services.feedback import server
from services.feedback.settings import FeedbackSettings
from services.kit import bootstrap

bootstrap.main("feedback", FeedbackSettings.from_env, lambda s: s.server, server.running)
