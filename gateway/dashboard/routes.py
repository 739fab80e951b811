"""HTTP handlers of the `/aiops` dashboard: the page, its assets, the live stream, dev sign-in.

The page itself is static (plain ES modules, no build step, no CDN). Data comes from the
public REST API and from `GET /api/v1/aiops/events`, a Server-Sent Events stream that needs
the same Bearer token as the API (sent in the `Authorization` header, never in the URL).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from gateway import keyring
from gateway.dashboard import events as dash_events
from gateway.dashboard.settings import DashboardSettings
from services.kit import errors

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
PAGE = "/aiops"
EVENTS = "/api/v1/aiops/events"
DEV_TOKEN = "/aiops/dev-token"
CONFIG = "/aiops/config"
DEV_ROLES = ("viewer", "operator")
DASHBOARD = web.AppKey("dashboard", DashboardSettings)
HUB = web.AppKey("dashboard_hub", dash_events.Hub)

# The page loads nothing from elsewhere and runs no inline script or style.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}


def _gw() -> Any:
    # gateway.app imports this package to register it; import it back lazily.
    from gateway import app as gateway_app

    return gateway_app


async def page(request: web.Request) -> web.StreamResponse:
    request[_gw().ROUTE_KEY] = PAGE
    return web.FileResponse(
        STATIC_DIR / "index.html", headers={**SECURITY_HEADERS, "Cache-Control": "no-cache"}
    )


async def config(request: web.Request) -> web.Response:
    """What the page needs to know before sign-in (public, holds no secret)."""
    request[_gw().ROUTE_KEY] = CONFIG
    settings = request.app[DASHBOARD]
    return web.json_response(
        {
            "devSignin": settings.dev_signin,
            "devRoles": list(DEV_ROLES) if settings.dev_signin else [],
        },
        headers={"Cache-Control": "no-store"},
    )


def _loopback(remote: str | None) -> bool:
    try:
        return remote is not None and ipaddress.ip_address(remote).is_loopback
    except ValueError:
        return False


def _bad(field: str, description: str, reason: str) -> errors.InvalidArgument:
    return errors.invalid([errors.FieldViolation(field, description)], reason)


async def dev_token(request: web.Request) -> web.Response:
    """Local mode only: a short-lived viewer or operator token, `{"role": "viewer"}`."""
    gw = _gw()
    request[gw.ROUTE_KEY] = DEV_TOKEN
    settings = request.app[DASHBOARD]
    # Local mode only, and only from this machine: a token minted here needs no credential.
    if not settings.dev_signin or not _loopback(request.remote):
        raise errors.NotFound("ROUTE_NOT_FOUND", "No such path; see /openapi.json.")
    try:
        body = json.loads(await request.read() or b"{}")
    except (ValueError, RecursionError):
        raise _bad("body", "is not valid JSON", "BODY_MALFORMED") from None
    role = body.get("role") if isinstance(body, dict) else None
    if role not in DEV_ROLES:
        raise _bad("role", "must be viewer or operator", "ROLE_INVALID")
    gateway_settings = request.app[gw.SETTINGS]
    ttl = min(settings.dev_token_ttl_seconds, gateway_settings.max_token_ttl_seconds)
    token = await asyncio.to_thread(
        keyring.mint_token,
        request.app[gw.KEYRING],
        subject=f"dev-{role}",
        roles=[role],
        issuer=gateway_settings.issuer,
        audience=gateway_settings.audience,
        ttl_seconds=ttl,
    )
    log.info("dev token minted", extra={"role": role, "ttl_seconds": ttl})
    return web.json_response(
        {"token": token, "tokenType": "Bearer", "expiresIn": ttl, "role": role},
        headers={"Cache-Control": "no-store"},
    )


async def stream(request: web.Request) -> web.StreamResponse:
    """Server-Sent Events: `hello`, then one event per changed topic, keepalive comments."""
    gw = _gw()
    request[gw.ROUTE_KEY] = EVENTS
    principal = await gw._authorize(request, "viewer")
    settings = request.app[DASHBOARD]
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream; charset=utf-8",
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",
            "X-Request-Id": request[gw.REQUEST_ID_KEY],
        }
    )
    await response.prepare(request)
    if request.method == "HEAD":  # headers only: a HEAD response never carries a body
        return response
    hub = request.app[HUB]
    queue = hub.subscribe()
    hello = {
        "subject": principal.subject,
        "roles": sorted(principal.roles),
        "expiresAt": principal.expires_at,
        "intervalSeconds": settings.events_interval_seconds,
    }
    event_id = 0
    try:
        await response.write(dash_events.frame("hello", hello, event_id))
        while True:
            remaining = principal.expires_at - time.time()
            if remaining <= 0:
                await response.write(dash_events.frame("expired", {}, event_id))
                break
            try:
                topic, value = await asyncio.wait_for(
                    queue.get(), timeout=min(settings.events_keepalive_seconds, remaining)
                )
            except TimeoutError:
                await response.write(b": keepalive\n\n")
                continue
            if topic == "overflow":
                break
            event_id += 1
            await response.write(dash_events.frame(topic, value, event_id))
    except (ConnectionResetError, ConnectionError):
        pass  # the browser went away; it reconnects by itself if it wants more
    finally:
        await hub.unsubscribe(queue)
    with contextlib.suppress(ConnectionError):
        await response.write_eof()
    return response


def register(app: web.Application, settings: DashboardSettings | None = None) -> None:
    """Adds `GET /aiops`, `/aiops/static/`, the live stream and (local mode) dev sign-in.

    Call it from `create_app` after the gateway's own routes; calling it twice is harmless.
    """
    if DASHBOARD in app:
        return
    gw = _gw()
    settings = settings if settings is not None else DashboardSettings.from_env()
    app[DASHBOARD] = settings
    app[HUB] = dash_events.Hub(
        settings,
        lambda: app[gw.STUBS],
        app[gw.SETTINGS].request_timeout_seconds,
    )
    if settings.dev_signin:
        log.warning("dashboard dev sign-in is enabled; use it only on a local machine")

    async def stop_streams(app: web.Application) -> None:
        app[HUB].disconnect_all()
        await app[HUB].aclose()

    app.on_shutdown.append(stop_streams)
    app.router.add_get(PAGE, page)
    app.router.add_get(PAGE + "/", page)
    app.router.add_get(CONFIG, config)
    app.router.add_post(DEV_TOKEN, dev_token)
    app.router.add_get(EVENTS, stream)
    app.router.add_static(PAGE + "/static/", STATIC_DIR, append_version=False)
