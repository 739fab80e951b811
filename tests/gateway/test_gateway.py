"""The gateway over real HTTP with real tokens, in front of real gRPC services and Redis."""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
import redis.asyncio as redis
from cryptography.hazmat.primitives import serialization

from gateway import errors as gateway_errors
from gateway import keyring
from services.feedback import server as feedback_server
from services.feedback.settings import FeedbackSettings
from services.kit import local_servers
from tests.conftest import (
    AUDIENCE,
    ISSUER,
    Deps,
    Gateway,
    feedback_env,
    other_services,
    serve_gateway,
)

FEEDBACK = "/api/v1/aiops/feedback"
ANOMALY = {"target": {"kind": "TARGET_KIND_ANOMALY", "id": "a-1"}, "verdict": "VERDICT_CONFIRMED"}


async def call(
    gw: Gateway, method: str, path: str, token: str | None = None, **kwargs: Any
) -> tuple[int, dict[str, Any], aiohttp.typedefs.LooseHeaders]:
    headers = dict(kwargs.pop("headers", {}))
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    async with gw.session.request(method, gw.url(path), headers=headers, **kwargs) as resp:
        body = await resp.json(content_type=None)
        return resp.status, body, resp.headers


def error(body: dict[str, Any]) -> dict[str, Any]:
    assert set(body) == {"error"}, body
    err: dict[str, Any] = body["error"]
    assert set(err) == {"code", "message", "details", "request_id"}
    return err


def violations(body: dict[str, Any]) -> list[str]:
    fields: list[str] = []
    for detail in error(body)["details"]:
        fields += [v["field"] for v in detail.get("fieldViolations", [])]
    return fields


async def test_post_then_get_then_admin_delete(
    gateway: Gateway, redis_url: str, redis_prefix: str
) -> None:
    op = gateway.token("operator")
    status, body, headers = await call(gateway, "POST", FEEDBACK, op, json=ANOMALY)
    assert status == 201, body
    name = body["feedback"]["name"]
    assert body["feedback"]["author"] == "tester"
    assert headers["X-Request-Id"]
    status, listed, _ = await call(gateway, "GET", FEEDBACK, op)
    assert status == 200 and [f["name"] for f in listed["feedback"]] == [name]
    status, one, _ = await call(gateway, "GET", f"/api/v1/aiops/{name}", op)
    assert status == 200 and one["feedback"]["name"] == name
    client = redis.Redis.from_url(redis_url)
    try:
        ttl = await client.ttl(f"{redis_prefix}item:{name.split('/')[1]}")
    finally:
        await client.aclose()
    assert 604_790 <= ttl <= 604_800
    status, body, _ = await call(gateway, "DELETE", f"{FEEDBACK}?all=true", op)
    assert status == 403 and error(body)["code"] == "PERMISSION_DENIED"
    status, body, _ = await call(gateway, "DELETE", f"{FEEDBACK}?all=true", gateway.token("admin"))
    assert status == 200 and body == {"deletedCount": "1"}


async def test_idempotency_key_header_replays_with_200(gateway: Gateway) -> None:
    op = gateway.token("operator")
    headers = {"Idempotency-Key": "retry-1"}
    first = await call(gateway, "POST", FEEDBACK, op, json=ANOMALY, headers=headers)
    second = await call(gateway, "POST", FEEDBACK, op, json=ANOMALY, headers=headers)
    assert (first[0], second[0]) == (201, 200)
    assert first[1]["feedback"] == second[1]["feedback"] and second[1]["replayed"] is True


async def test_viewer_reads_but_cannot_write(gateway: Gateway) -> None:
    viewer = gateway.token("viewer")
    assert (await call(gateway, "GET", FEEDBACK, viewer))[0] == 200
    status, body, _ = await call(gateway, "POST", FEEDBACK, viewer, json=ANOMALY)
    assert status == 403 and error(body)["details"][0]["reason"] == "ROLE_REQUIRED"
    agent = gateway.token("agent")
    assert (await call(gateway, "GET", FEEDBACK, agent))[0] == 403


async def test_missing_token_is_401_with_www_authenticate(gateway: Gateway) -> None:
    status, body, headers = await call(gateway, "GET", FEEDBACK)
    assert status == 401 and error(body)["code"] == "UNAUTHENTICATED"
    assert headers["WWW-Authenticate"].startswith("Bearer")


async def test_token_in_query_string_is_refused(gateway: Gateway) -> None:
    status, body, _ = await call(
        gateway, "GET", f"{FEEDBACK}?access_token={gateway.token('admin')}"
    )
    assert status == 401 and error(body)["details"][0]["reason"] == "TOKEN_IN_QUERY"


@pytest.mark.parametrize(("expired_ago", "expected"), [(59, 200), (61, 401)])
async def test_clock_skew_of_60_seconds_is_tolerated(
    gateway: Gateway, expired_ago: int, expected: int
) -> None:
    now = time.time()
    token = gateway.token("viewer", ttl=300, now=now - 300 - expired_ago)
    assert (await call(gateway, "GET", FEEDBACK, token))[0] == expected


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _forge(header: dict[str, Any], claims: dict[str, Any], key: bytes | None) -> str:
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    if key is None:
        return signing_input + "."
    digest = hashlib.sha512 if header["alg"] == "HS512" else hashlib.sha256
    return signing_input + "." + _b64(hmac.new(key, signing_input.encode(), digest).digest())


def _claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "mallory",
        "iat": now,
        "nbf": now,
        "exp": now + 300,
        "roles": ["admin"],
    }
    claims.update(overrides)
    return claims


@pytest.mark.parametrize(
    "case",
    [
        "none",
        "NoNe",
        "hs256_public_key",
        "hs512_public_key",
        "unknown_kid",
        "wrong_aud",
        "wrong_iss",
    ],
)
async def test_forged_tokens_are_401(gateway: Gateway, case: str, tmp_path: Path) -> None:
    kid = gateway.ring.active_kid
    public_pem = gateway.ring.public_key(kid).public_bytes(  # type: ignore[union-attr]
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if case in ("none", "NoNe"):
        token = _forge({"alg": case, "kid": kid, "typ": "JWT"}, _claims(), None)
    elif case.startswith("hs"):
        alg = case[:5].upper()
        token = _forge({"alg": alg, "kid": kid, "typ": "JWT"}, _claims(), public_pem)
    elif case == "unknown_kid":
        stranger = keyring.Keyring.load_or_create(tmp_path / "other", max_token_ttl_seconds=3600)
        token = keyring.mint_token(
            stranger,
            subject="m",
            roles=["admin"],
            issuer=ISSUER,
            audience=AUDIENCE,
            ttl_seconds=300,
        )
    else:
        token = keyring.mint_token(
            gateway.ring,
            subject="m",
            roles=["admin"],
            ttl_seconds=300,
            issuer="evil" if case == "wrong_iss" else ISSUER,
            audience="other-api" if case == "wrong_aud" else AUDIENCE,
        )
    status, body, _ = await call(gateway, "GET", FEEDBACK, token)
    assert status == 401, (case, body)


async def test_rotation_keeps_old_tokens_valid_and_publishes_both_keys(gateway: Gateway) -> None:
    old_kid = gateway.ring.active_kid
    old_token = gateway.token("viewer")
    other_process_view = keyring.Keyring.load(gateway.ring.path)
    new_kid = other_process_view.rotate()
    assert new_kid != old_kid
    status, jwks, headers = await call(gateway, "GET", "/.well-known/jwks.json")
    assert status == 200 and "max-age" in headers["Cache-Control"]
    assert {k["kid"] for k in jwks["keys"]} == {old_kid, new_kid}
    assert all(k["alg"] == "RS256" and "d" not in k for k in jwks["keys"])
    new_token = keyring.mint_token(
        other_process_view,
        subject="n",
        roles=["viewer"],
        issuer=ISSUER,
        audience=AUDIENCE,
        ttl_seconds=300,
    )
    header = json.loads(base64.urlsafe_b64decode(new_token.split(".")[0] + "=="))
    assert header["kid"] == new_kid
    assert (await call(gateway, "GET", FEEDBACK, old_token))[0] == 200
    assert (await call(gateway, "GET", FEEDBACK, new_token))[0] == 200


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"{not json", "body"),
        (b"[1, 2]", "body"),
        (b"", "body"),
        (json.dumps({**ANOMALY, "rating": "five"}).encode(), "rating"),
        (json.dumps({**ANOMALY, "verdict": "VERDICT_MAYBE"}).encode(), "verdict"),
        (json.dumps({**ANOMALY, "colour": "red"}).encode(), "colour"),
        (json.dumps({**ANOMALY, "comment": "c" * 2001}).encode(), "feedback.comment"),
        (json.dumps({**ANOMALY, "labels": {"k": 1}}).encode(), "labels"),
        (json.dumps({**ANOMALY, "comment": "x" * 70_000}).encode(), "body"),
        (b"[" * 5000 + b"]" * 5000, "body"),
    ],
)
async def test_bad_bodies_get_400_naming_the_field(
    gateway: Gateway, body: bytes, field: str
) -> None:
    status, reply, _ = await call(
        gateway,
        "POST",
        FEEDBACK,
        gateway.token("operator"),
        data=body,
        headers={"Content-Type": "application/json"},
    )
    assert status == 400, reply
    assert error(reply)["code"] == "INVALID_ARGUMENT"
    assert field in violations(reply), reply


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("pageSize=-1", "page_size"),
        ("pageSize=abc", "pageSize"),
        ("pageSize=99999999999", "pageSize"),
        ("pageToken=bogus", "page_token"),
        ("verdict=maybe", "verdict"),
        ("startTime=yesterday", "startTime"),
        ("colour=red", "colour"),
        ("targetId=a-1", "filter.target_kind"),
        ("targetKind=anomaly&targetId=a%00b", "targetId"),
    ],
)
async def test_bad_queries_get_400_naming_the_field(
    gateway: Gateway, query: str, field: str
) -> None:
    status, reply, _ = await call(gateway, "GET", f"{FEEDBACK}?{query}", gateway.token("viewer"))
    assert status == 400, reply
    assert field in violations(reply), reply


async def test_list_pages_with_short_enum_names_and_tokens(gateway: Gateway) -> None:
    op = gateway.token("operator")
    for verdict in ("VERDICT_CONFIRMED", "VERDICT_FALSE_POSITIVE", "VERDICT_CONFIRMED"):
        await call(gateway, "POST", FEEDBACK, op, json={**ANOMALY, "verdict": verdict})
    status, page, _ = await call(gateway, "GET", f"{FEEDBACK}?verdict=confirmed&pageSize=1", op)
    assert status == 200 and len(page["feedback"]) == 1 and page["nextPageToken"]
    status, rest, _ = await call(
        gateway, "GET", f"{FEEDBACK}?verdict=confirmed&pageToken={page['nextPageToken']}", op
    )
    assert status == 200 and len(rest["feedback"]) == 1 and "nextPageToken" not in rest


async def test_unknown_route_and_method_use_the_envelope(gateway: Gateway) -> None:
    status, body, _ = await call(gateway, "GET", "/api/v1/aiops/nothing-here")
    assert status == 404 and error(body)["code"] == "NOT_FOUND"
    status, body, headers = await call(gateway, "PUT", FEEDBACK)
    assert status == 405 and "POST" in headers["Allow"]


async def test_request_id_is_echoed_and_large_bodies_are_gzipped(gateway: Gateway) -> None:
    op = gateway.token("operator")
    for _ in range(5):
        await call(gateway, "POST", FEEDBACK, op, json={**ANOMALY, "comment": "c" * 500})
    async with gateway.session.get(
        gateway.url(FEEDBACK),
        headers={
            "Authorization": f"Bearer {op}",
            "Accept-Encoding": "gzip",
            "X-Request-Id": "abc-1",
        },
        auto_decompress=False,
    ) as resp:
        raw = await resp.read()
        assert resp.headers["Content-Encoding"] == "gzip"
        assert resp.headers["X-Request-Id"] == "abc-1"
    assert len(json.loads(gzip.decompress(raw))["feedback"]) == 5


async def test_health_metrics_and_openapi_are_public(gateway: Gateway) -> None:
    op = gateway.token("operator")
    assert (await call(gateway, "POST", FEEDBACK, op, json=ANOMALY))[0] == 201
    status, health, _ = await call(gateway, "GET", "/health")
    assert status == 200 and set(health["backends"].values()) == {"SERVING"}
    async with gateway.session.get(gateway.url("/metrics/aiops")) as resp:
        text = await resp.text()
    assert 'aiops_feedback_total{result="stored",verdict="confirmed"}' in text
    async with gateway.session.get(gateway.url("/metrics")) as resp:
        assert "aiops_gateway_requests_total" in await resp.text()
    status, doc, _ = await call(gateway, "GET", "/openapi.json")
    assert status == 200 and "/api/v1/aiops/feedback" in doc["paths"]
    status, ready, _ = await call(gateway, "GET", "/api/v1/aiops/health", op)
    assert status == 200 and ready["status"] == "ok"


@pytest.mark.parametrize(
    ("code", "http"),
    [
        (grpc.StatusCode.UNIMPLEMENTED, 501),
        (grpc.StatusCode.UNAVAILABLE, 503),
        (grpc.StatusCode.DEADLINE_EXCEEDED, 504),
        (grpc.StatusCode.CANCELLED, 499),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, 429),
        (grpc.StatusCode.INTERNAL, 500),
        (grpc.StatusCode.UNKNOWN, 500),
        (grpc.StatusCode.DATA_LOSS, 500),
    ],
)
def test_backend_failures_without_details_map_by_the_table_and_leak_nothing(
    code: grpc.StatusCode, http: int
) -> None:
    raw = grpc.aio.AioRpcError(
        code,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(),
        details="failed to connect to all addresses; last error: 10.1.2.3:50051 refused",
    )
    response = gateway_errors.response(gateway_errors.from_rpc_error(raw, "feedback"), "rid-1")
    body = json.loads(response.text or "")
    assert response.status == http
    assert "10.1.2.3" not in response.text and body["error"]["request_id"] == "rid-1"
    if http in (429, 503):
        assert response.headers["Retry-After"] == "1"


async def test_redis_outage_is_503_with_retry_after_and_recovers(
    restartable_redis: local_servers.LocalRedis, tmp_path: Path, deps: Deps
) -> None:
    settings = FeedbackSettings.from_env(feedback_env(restartable_redis.url, "gw:"))
    async with (
        feedback_server.running(settings) as fb,
        other_services(deps, fb) as others,
        serve_gateway({"feedback": fb, **others}, tmp_path / "keys", restartable_redis.url) as gw,
    ):
        op = gw.token("operator")
        acked = [
            (await call(gw, "POST", FEEDBACK, op, json=ANOMALY))[1]["feedback"]["name"]
            for _ in range(5)
        ]
        restartable_redis.kill()
        begin = time.monotonic()
        status, body, headers = await call(gw, "POST", FEEDBACK, op, json=ANOMALY)
        assert time.monotonic() - begin < 1.0
        assert status == 503 and error(body)["code"] == "UNAVAILABLE"
        assert int(headers["Retry-After"]) >= 1
        restartable_redis.start()
        assert (await call(gw, "POST", FEEDBACK, op, json=ANOMALY))[0] == 201
        status, listed, _ = await call(gw, "GET", FEEDBACK, op)
        assert set(acked) <= {f["name"] for f in listed["feedback"]}


async def test_concurrent_posts_are_coalesced_yet_answered_one_by_one(gateway: Gateway) -> None:
    from prometheus_client import REGISTRY

    def batches() -> tuple[float, float]:
        labels = {"rpc": "BatchSubmitFeedback"}
        count = REGISTRY.get_sample_value("aiops_gateway_batch_size_count", labels) or 0.0
        total = REGISTRY.get_sample_value("aiops_gateway_batch_size_sum", labels) or 0.0
        return count, total

    op = gateway.token("operator")
    bodies = [{**ANOMALY, "comment": f"n{i}"} for i in range(40)]
    bodies[7] = {**ANOMALY, "comment": "c" * 2001}  # one bad item in the crowd
    count0, total0 = batches()
    replies = await asyncio.gather(*(call(gateway, "POST", FEEDBACK, op, json=b) for b in bodies))
    count1, total1 = batches()
    assert total1 - total0 == 40
    assert count1 - count0 < 40, "no request was coalesced"
    statuses = [status for status, _, _ in replies]
    assert statuses[7] == 400 and "feedback.comment" in violations(replies[7][1])
    assert statuses[:7] + statuses[8:] == [201] * 39
    comments = [r[1]["feedback"]["comment"] for i, r in enumerate(replies) if i != 7]
    assert comments == [f"n{i}" for i in range(40) if i != 7]
