"""`python -m gateway`: serves the REST API until SIGTERM."""

from __future__ import annotations

import sys

from aiohttp import web

from gateway import app
from gateway.settings import GatewaySettings
from services.kit import logging as kit_logging
from services.kit import serve, settings, tracing


def main() -> None:
    try:
        cfg = GatewaySettings.from_env()
    except settings.SettingsError as exc:
        print(f"aiops-gateway: {exc}", file=sys.stderr)  # logging is not configured yet
        raise SystemExit(2) from exc
    kit_logging.configure("gateway", cfg.log_level)
    tracing.configure("gateway", settings.environ())
    web.run_app(
        app.create_app(cfg),
        host=cfg.host,
        port=cfg.port,
        shutdown_timeout=cfg.shutdown_timeout_seconds,
        access_log=None,
        print=None,
        handler_args=app.HANDLER_ARGS,
        loop=serve.loop_factory()(),
    )


main()
