"""One gateway process: settings, logging, tracing, then the aiohttp app until a signal."""

from __future__ import annotations

import sys

from gateway.settings import GatewaySettings
from services.kit import settings


def settings_or_exit() -> GatewaySettings:
    try:
        return GatewaySettings.from_env()
    except settings.SettingsError as exc:
        print(f"aiops-gateway: {exc}", file=sys.stderr)  # logging is not configured yet
        raise SystemExit(2) from exc


def serve(reuse_port: bool) -> None:
    """Runs one gateway process until SIGTERM or SIGINT."""
    # Imported here so that a worker sees PROMETHEUS_MULTIPROC_DIR before prometheus-client
    # is first imported.
    from gateway import app, slowclient
    from services.kit import logging as kit_logging
    from services.kit import serve as kit_serve
    from services.kit import tls, tracing

    cfg = settings_or_exit()
    kit_logging.configure("gateway", cfg.log_level)
    tracing.configure("gateway", settings.environ())
    # web.run_app with a deadline on every request head and body (slow clients).
    slowclient.run_app(
        app.create_app(cfg),
        slowclient.Limits(cfg.header_timeout_seconds, cfg.body_timeout_seconds),
        host=cfg.host,
        port=cfg.port,
        shutdown_timeout=cfg.shutdown_timeout_seconds,
        access_log=None,
        ssl_context=tls.server_ssl_context(cfg.https) if cfg.https.server_enabled else None,
        max_field_size=app.MAX_HEADER_BYTES,
        max_line_size=app.MAX_HEADER_BYTES,
        loop=kit_serve.loop_factory()(),
        reuse_port=reuse_port,
    )
