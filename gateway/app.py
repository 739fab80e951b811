"""The gateway application: the only place its parts are wired."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import random
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import grpc
import redis.asyncio as redis
from aiohttp import web
from aiops.anomaly.v1 import anomaly_service_pb2_grpc as anomaly_grpc
from aiops.feedback.v1 import feedback_service_pb2_grpc as fb_grpc
from aiops.remediation.v1 import remediation_service_pb2_grpc as rem_grpc
from aiops.telemetry.v1 import telemetry_service_pb2_grpc as tel_grpc
from google.rpc import status_pb2

from gateway import (
    auth,
    batching,
    dashboard,
    errors,
    keyring,
    maintenance,
    metrics,
    openapi,
    routes,
    translate,
)
from gateway.health import BackendHealth
from gateway.settings import GatewaySettings
from services.kit import channels, tracing
from services.kit import errors as kit_errors

log = logging.getLogger(__name__)
access_log = logging.getLogger("aiops.access")

SETTINGS = web.AppKey("settings", GatewaySettings)
STUBS = web.AppKey("stubs", dict)
VERIFIER = web.AppKey("verifier", auth.Verifier)
KEYRING = web.AppKey("keyring", keyring.Keyring)
HEALTH = web.AppKey("health", BackendHealth)
HTTP = web.AppKey("http", aiohttp.ClientSession)
MAINTENANCE = web.AppKey("maintenance", maintenance.Maintenance)
COALESCERS = web.AppKey("coalescers", dict)
_MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})

_STUB_TYPES: dict[str, Callable[[grpc.aio.Channel], Any]] = {
    "feedback": fb_grpc.FeedbackServiceStub,
    "telemetry": tel_grpc.TelemetryServiceStub,
    "anomaly": anomaly_grpc.AnomalyServiceStub,
    "remediation": rem_grpc.RemediationServiceStub,
}
# Reads are safe to retry when a backend replica goes away mid-call.
_IDEMPOTENT = {
    "feedback": ("GetFeedback", "ListFeedback", "GetFeedbackStats"),
    "telemetry": ("QuerySeries", "ListSeries"),
    "anomaly": ("GetAnomaly", "ListAnomalies", "GetDriftStatus", "ListThresholds"),
    "remediation": ("GetRemediation", "ListRemediations", "ListActions"),
}
# aiohttp's own limit on a header line is 8 KiB: a bigger line never reaches our code and gets
# aiohttp's plain-text 400. Raising it lets oversized tokens reach the verifier, which refuses
# them with the JSON envelope (401 TOKEN_TOO_LARGE) without echoing them.
MAX_HEADER_BYTES = 16 * 1024
HANDLER_ARGS = {"max_field_size": MAX_HEADER_BYTES, "max_line_size": MAX_HEADER_BYTES}
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_TOKEN_QUERY = ("access_token", "token", "jwt")
REQUEST_ID_KEY = web.RequestKey("request_id", str)
ROUTE_KEY = web.RequestKey("route_template", str)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _request_id(request: web.Request) -> str:
    given = request.headers.get("X-Request-Id", "")
    # 32 hex digits like uuid4().hex, without a UUID object and a getrandom call per
    # request: the id only correlates lines, it guards nothing.
    return given if _REQUEST_ID.fullmatch(given) else f"{random.getrandbits(128):032x}"


# Probes and scrapes: no span and no access line.
_QUIET_PATHS = frozenset({"/health", "/metrics", "/metrics/aiops"})


@web.middleware
async def envelope(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The one middleware: the request's SERVER span, request id, access log, metrics, gzip,
    and the error envelope for everything (one layer instead of one per concern: each
    aiohttp middleware costs a wrapper call per request)."""
    request_id = _request_id(request)
    request[REQUEST_ID_KEY] = request_id
    begin = time.perf_counter()
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    quiet = route in _QUIET_PATHS
    span = None if quiet else tracing.HttpSpan(request, route)
    try:
        try:
            response = await handler(request)
        except kit_errors.AiopsError as exc:
            response = errors.from_error(exc, request_id)
        except web.HTTPException as exc:
            response = _http_exception(exc, request_id)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("unhandled error in request", extra={"request_id": request_id})
            response = errors.from_error(
                kit_errors.AiopsError("INTERNAL", "internal error"), request_id
            )
        response.headers["X-Request-Id"] = request_id
        if (
            isinstance(response, web.Response)
            and response.body is not None
            and len(response.body) > 1024  # type: ignore[arg-type]
            and "gzip" in request.headers.get("Accept-Encoding", "")
        ):
            response.enable_compression(web.ContentCoding.gzip)
        elapsed = time.perf_counter() - begin
        template = request.get(ROUTE_KEY) or route
        metrics.observe(template, request.method, response.status, elapsed)
        level = logging.ERROR if response.status >= 500 else logging.INFO
        if not quiet and access_log.isEnabledFor(level):
            access_log.log(
                level,
                "http",
                extra={
                    "method": request.method,
                    "route": template,
                    "status": response.status,
                    "duration_ms": round(elapsed * 1000, 3),
                    "request_id": request_id,
                    "remote": request.remote,
                },
            )
    except asyncio.CancelledError:
        if span is not None:
            span.end(499)  # the client went away
        raise
    except BaseException as exc:
        if span is not None:
            span.end(500, exc)
        raise
    if span is not None:
        span.end(response.status)
    return response


envelope.aiops_tracing = True  # type: ignore[attr-defined]


def _http_exception(exc: web.HTTPException, request_id: str) -> web.Response:
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        error: kit_errors.AiopsError = kit_errors.invalid(
            [kit_errors.FieldViolation("body", "is larger than the limit")], "BODY_TOO_LARGE"
        )
    elif isinstance(exc, web.HTTPMethodNotAllowed):
        error = kit_errors.AiopsError(
            "METHOD_NOT_ALLOWED", "This path does not accept that method."
        )
        status = kit_errors.to_status(error, errors.DOMAIN)
        status.code = grpc.StatusCode.UNIMPLEMENTED.value[0]
        # 405, not the table's 501: the path exists and the caller chose the method; the
        # request never reached a backend, and no server is at fault.
        resp = errors.response(status, request_id, http_status=405)
        resp.headers["Allow"] = ", ".join(sorted(exc.allowed_methods))
        return resp
    elif isinstance(exc, web.HTTPNotFound):
        error = kit_errors.NotFound("ROUTE_NOT_FOUND", "No such path; see /openapi.json.")
    elif exc.status < 400:
        return web.Response(status=exc.status, headers=exc.headers)
    else:
        error = kit_errors.InvalidArgument("BAD_REQUEST", "The request could not be read.")
    return errors.from_error(error, request_id)


async def _authorize(request: web.Request, role: str) -> auth.Principal:
    if request.query_string and any(name in request.query for name in _TOKEN_QUERY):
        raise kit_errors.Unauthenticated(
            "TOKEN_IN_QUERY", "Send the token in the Authorization header, never in the URL."
        )
    try:
        principal = await request.app[VERIFIER].verify(request.headers.get("Authorization"))
    except auth.AuthError as exc:
        raise kit_errors.Unauthenticated(exc.reason, exc.message) from None
    if not auth.allows(principal.roles, role):
        raise kit_errors.PermissionDenied(
            "ROLE_REQUIRED",
            f"This request needs the {role} role.",
            metadata={"required_role": role},
        )
    return principal


@functools.lru_cache(maxsize=4096)
def _identity(principal: auth.Principal) -> tuple[tuple[str, str], ...]:
    """The call metadata naming a caller (verified principals are cached objects, so this
    is computed once per token, not per request)."""
    return (
        ("x-aiops-subject", principal.subject),
        ("x-aiops-roles", ",".join(sorted(principal.roles))),
    )


def _rpc_handler(route: routes.Route) -> Handler:
    known = route.known_query()
    mutating = route.method in _MUTATING

    async def handle(request: web.Request) -> web.StreamResponse:
        request[ROUTE_KEY] = route.path
        principal = await _authorize(request, route.role) if route.role else None
        app = request.app
        if mutating:
            state = await app[MAINTENANCE].current()
            if state.enabled:
                raise app[MAINTENANCE].refusal(state)
        query = request.query
        if request.query_string:
            translate.check_known(query, known)
        body = await request.read() if route.body is not None else b""
        message = route.build(query, request.match_info, body, request.headers)
        identity = _identity(principal) if principal is not None else ()
        coalescer = app[COALESCERS].get((route.method, route.path))
        try:
            if coalescer is not None:
                # Same caller, same batch: the request id stays in our access log only.
                outcome = await coalescer.submit(message, identity)
                if isinstance(outcome, status_pb2.Status):
                    return errors.response(outcome, request[REQUEST_ID_KEY])
                reply = outcome
            else:
                reply = await getattr(app[STUBS][route.backend], route.rpc)(
                    message,
                    timeout=app[SETTINGS].request_timeout_seconds,
                    metadata=(("x-request-id", request[REQUEST_ID_KEY]), *identity),
                )
        except grpc.aio.AioRpcError as err:
            return errors.response(
                errors.from_rpc_error(err, route.backend), request[REQUEST_ID_KEY]
            )
        status = route.created_status
        if getattr(reply, "replayed", False):
            status = 200
        return web.json_response(translate.to_json(reply), status=status, dumps=_dumps)

    return handle


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


async def jwks(request: web.Request) -> web.Response:
    ring = request.app[KEYRING]
    await asyncio.to_thread(ring.reload_if_changed)
    return web.json_response(ring.jwks(), headers={"Cache-Control": "public, max-age=60"})


async def health(request: web.Request) -> web.Response:
    """Liveness of the gateway itself, with each backend's gRPC health for information."""
    statuses = await request.app[HEALTH].statuses()
    ok = all(s == "SERVING" for s in statuses.values())
    return web.json_response({"status": "ok" if ok else "degraded", "backends": statuses})


async def api_health(request: web.Request) -> web.Response:
    """Readiness of the suite: 200 only when every backend is SERVING."""
    request[ROUTE_KEY] = "/api/v1/aiops/health"
    await _authorize(request, "viewer")
    statuses = await request.app[HEALTH].statuses()
    ok = all(s == "SERVING" for s in statuses.values())
    state = await request.app[MAINTENANCE].current()
    body = {
        "status": "ok" if ok else "degraded",
        "backends": statuses,
        "maintenance": maintenance.to_json(state),
    }
    return web.json_response(body, status=200 if ok else 503)


async def get_maintenance(request: web.Request) -> web.Response:
    request[ROUTE_KEY] = "/api/v1/aiops/maintenance"
    await _authorize(request, "viewer")
    return web.json_response(maintenance.to_json(await request.app[MAINTENANCE].current()))


async def set_maintenance(request: web.Request) -> web.Response:
    """Admin switch: `{"enabled": true, "reason": "...", "endTime": "<RFC 3339>"}`."""
    request[ROUTE_KEY] = "/api/v1/aiops/maintenance"
    principal = await _authorize(request, "admin")
    enabled, reason, end_time = translate.parse_maintenance(await request.read())
    state = await request.app[MAINTENANCE].set(enabled, reason, end_time, principal.subject)
    return web.json_response(maintenance.to_json(state))


async def metrics_local(request: web.Request) -> web.Response:
    text = await asyncio.to_thread(metrics.local_text)
    return web.Response(text=text, content_type="text/plain", charset="utf-8")


async def metrics_aiops(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    texts = await metrics.gather(
        request.app[HTTP], [b.metrics_address for b in settings.backends], timeout_seconds=1.0
    )
    text = await asyncio.to_thread(metrics.render, [metrics.local_text(), *texts])
    return web.Response(text=text, content_type="text/plain", charset="utf-8")


async def openapi_doc(request: web.Request) -> web.Response:
    return web.json_response(openapi.document(routes.ROUTES))


def create_app(settings: GatewaySettings, ring: keyring.Keyring | None = None) -> web.Application:
    """Builds the application; channels, keys and the HTTP client open in `cleanup_ctx`."""
    app = web.Application(
        middlewares=[envelope],
        client_max_size=settings.max_body_bytes,
    )
    app[SETTINGS] = settings

    async def resources(app: web.Application) -> AsyncIterator[None]:
        opened = {
            b.name: channels.open_channel(
                b.address,
                service=b.service,
                idempotent_methods=_IDEMPOTENT[b.name],
                default_timeout_seconds=settings.request_timeout_seconds,
                tls_settings=settings.tls,
            )
            for b in settings.backends
        }
        app[STUBS] = {name: _STUB_TYPES[name](ch) for name, ch in opened.items()}
        app[COALESCERS] = {
            (r.method, r.path): batching.Coalescer(
                app[STUBS][r.backend], r.batch, settings.request_timeout_seconds
            )
            for r in routes.ROUTES
            if r.batch is not None and settings.coalesce
        }
        app[HEALTH] = BackendHealth(
            settings.backends,
            opened,
            settings.health_timeout_seconds,
            settings.health_cache_seconds,
        )
        if ring is not None:
            app[KEYRING] = ring
        else:
            app[KEYRING] = await asyncio.to_thread(
                keyring.Keyring.load_or_create,
                settings.keyring_dir,
                max_token_ttl_seconds=settings.max_token_ttl_seconds,
            )
        app[HTTP] = aiohttp.ClientSession()
        redis_client = tracing.instrument_redis(
            redis.Redis.from_url(settings.redis_url, socket_connect_timeout=0.5, socket_timeout=0.5)
        )
        app[MAINTENANCE] = maintenance.Maintenance(
            redis_client, settings.maintenance_key, settings.maintenance_cache_seconds
        )
        source: Any
        if settings.jwks_url:
            # A session per fetch: the source closes it afterwards, so never app[HTTP].
            source = auth.RemoteJwksKeySource(settings.jwks_url, aiohttp.ClientSession)
        else:
            source = auth.KeyringKeySource(app[KEYRING])
        app[VERIFIER] = auth.Verifier(
            source,
            issuer=settings.issuer,
            audience=settings.audience,
            leeway_seconds=settings.leeway_seconds,
        )
        try:
            yield
        finally:
            for coalescer in app[COALESCERS].values():
                await coalescer.aclose()
            await source.aclose()
            await app[HTTP].close()
            await redis_client.aclose()
            for ch in opened.values():
                await ch.close(grace=None)

    app.cleanup_ctx.append(resources)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics_local)
    app.router.add_get("/metrics/aiops", metrics_aiops)
    app.router.add_get("/.well-known/jwks.json", jwks)
    app.router.add_get("/openapi.json", openapi_doc)
    app.router.add_get("/api/v1/aiops/health", api_health)
    app.router.add_get("/api/v1/aiops/maintenance", get_maintenance)
    app.router.add_post("/api/v1/aiops/maintenance", set_maintenance)
    for route in routes.ROUTES:
        app.router.add_route(route.method, route.path, _rpc_handler(route))
    dashboard.register(app)  # GET /aiops, its assets, the live event stream, dev sign-in
    return app
