"""The ten lines every service's `__main__` would otherwise repeat."""

from __future__ import annotations

import sys
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import TypeVar

from services.kit import logging as kit_logging
from services.kit import serve, settings, tracing

S = TypeVar("S")


def main(
    service: str,
    from_env: Callable[[], S],
    server_settings: Callable[[S], settings.ServerSettings],
    running: Callable[[S], AbstractAsyncContextManager[serve.Running]],
) -> None:
    """Reads settings (exiting with every problem on bad configuration), configures logs
    and tracing, and serves until a signal."""
    try:
        cfg = from_env()
    except settings.SettingsError as exc:
        print(f"aiops-{service}: {exc}", file=sys.stderr)  # logging is not configured yet
        raise SystemExit(2) from exc
    kit_logging.configure(service, server_settings(cfg).log_level)
    tracing.configure(service, settings.environ())
    serve.main(lambda: running(cfg))
