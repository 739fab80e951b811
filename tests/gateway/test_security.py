"""The security suite at the HTTP edge: every route x every role, and a matrix of bad tokens.
Forged tokens are built by hand, the way an attacker would."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway import auth, routes
from tests.conftest import AUDIENCE, ISSUER, Gateway

ROLES = ("viewer", "operator", "admin", "agent")
# Routes the gateway serves itself, beside the table: (method, path, role or None).
OWN_ROUTES = (
    ("GET", "/health", None),
    ("GET", "/metrics", None),
    ("GET", "/metrics/aiops", None),
    ("GET", "/.well-known/jwks.json", None),
    ("GET", "/openapi.json", None),
    ("GET", "/api/v1/aiops/health", "viewer"),
    ("GET", "/api/v1/aiops/maintenance", "viewer"),
    ("POST", "/api/v1/aiops/maintenance", "admin"),
    ("GET", "/api/v1/aiops/events", "viewer"),
    ("GET", "/aiops", None),
)
TABLE = [(r.method, r.path, r.role) for r in routes.ROUTES] + list(OWN_ROUTES)


def _concrete(path: str) -> str:
    return "/".join(
        "01J00000000000000000000000" if p.startswith("{") else p for p in path.split("/")
    )


@pytest.mark.parametrize(("method", "path", "role"), TABLE, ids=[f"{m} {p}" for m, p, _ in TABLE])
async def test_every_route_against_every_role(
    gateway: Gateway, method: str, path: str, role: str | None
) -> None:
    url = gateway.url(_concrete(path))
    body = b'{"enabled": false}' if path.endswith("/maintenance") else b"{}"
    data = body if method in ("POST", "PUT", "PATCH") else None
    async with gateway.session.request(method, url, data=data) as resp:
        if role:
            assert resp.status == 401, f"{method} {path} without a token: {resp.status}"
        else:
            assert resp.status == 200, f"public {method} {path}: {resp.status}"
    for caller in ROLES:
        async with gateway.session.request(
            method, url, data=data, headers=gateway.auth(caller)
        ) as resp:
            expected_denied = role is not None and not auth.allows([caller], role)
            if expected_denied:
                assert resp.status == 403, f"{caller} on {method} {path}: {resp.status}"
            else:
                assert resp.status not in (401, 403), f"{caller} on {method} {path}: {resp.status}"
            assert resp.status < 500 or resp.status in (501, 503), (
                f"{caller} on {method} {path}: {resp.status}"
            )


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "mallory",
        "iat": now,
        "nbf": now,
        "exp": now + 300,
        "roles": ["viewer"],
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def _unsigned(header: dict[str, Any], claims: dict[str, Any]) -> str:
    return f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"


def _attacker_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _jwk(key: rsa.RSAPrivateKey, kid: str) -> dict[str, str]:
    numbers = key.public_key().public_numbers()

    def enc(n: int) -> str:
        return _b64(n.to_bytes((n.bit_length() + 7) // 8, "big"))

    return {"kty": "RSA", "kid": kid, "alg": "RS256", "n": enc(numbers.n), "e": enc(numbers.e)}


def _bad_token(gw: Gateway, case: str) -> str:
    ring, kid = gw.ring, gw.ring.active_kid
    now = int(time.time())
    public_pem = ring.public_key(kid).public_bytes(  # type: ignore[union-attr]
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if case.startswith("alg_"):
        alg = case.removeprefix("alg_")
        return _unsigned({"alg": alg, "kid": kid, "typ": "JWT"}, _claims()) + "."
    if case in ("hs256_public_key", "hs512_public_key"):
        alg = case[:5].upper()
        signing_input = _unsigned({"alg": alg, "kid": kid, "typ": "JWT"}, _claims())
        digest = hashlib.sha256 if alg == "HS256" else hashlib.sha512
        return (
            signing_input
            + "."
            + _b64(hmac.new(public_pem, signing_input.encode(), digest).digest())
        )
    good = ring.sign(_claims())
    head, payload, sig = good.split(".")
    if case == "tampered_payload":
        return f"{head}.{_b64(json.dumps(_claims(roles=['admin'])).encode())}.{sig}"
    if case == "tampered_signature":
        return f"{head}.{payload}.{sig[:-4]}{'AAAA' if sig[-4:] != 'AAAA' else 'BBBB'}"
    if case == "truncated":
        return good[:-12]
    if case == "expired_61s":
        return ring.sign(_claims(iat=now - 400, nbf=now - 400, exp=now - 61))
    if case == "not_yet_valid_61s":
        return ring.sign(_claims(nbf=now + 61))
    if case.startswith("missing_"):
        return ring.sign(_claims(**{case.removeprefix("missing_"): None}))
    if case == "wrong_iss":
        return ring.sign(_claims(iss="https://evil.example"))
    if case == "wrong_aud":
        return ring.sign(_claims(aud="another-api"))
    if case in ("unknown_kid", "kid_traversal", "kid_sql"):
        bad_kid = {
            "unknown_kid": "nope-1",
            "kid_traversal": "../../../../etc/passwd",
            "kid_sql": "' OR 1=1 --",
        }[case]
        return jwt.encode(_claims(), _attacker_key(), algorithm="RS256", headers={"kid": bad_kid})
    if case in ("jku_header", "x5u_header", "embedded_jwk", "embedded_jwk_known_kid"):
        key = _attacker_key()
        header_kid = kid if case == "embedded_jwk_known_kid" else "attacker"
        headers: dict[str, Any] = {"kid": header_kid}
        if case == "jku_header":
            headers["jku"] = "http://127.0.0.1:1/jwks.json"
        elif case == "x5u_header":
            headers["x5u"] = "http://127.0.0.1:1/cert.pem"
        else:
            headers["jwk"] = _jwk(key, header_kid)
        return jwt.encode(_claims(), key, algorithm="RS256", headers=headers)
    if case == "oversized_header":
        return jwt.encode(
            _claims(), _attacker_key(), algorithm="RS256", headers={"kid": kid, "pad": "x" * 9000}
        )
    raise AssertionError(case)


REFUSED = [
    "alg_none",
    "alg_None",
    "alg_NONE",
    "alg_nOnE",
    "hs256_public_key",
    "hs512_public_key",
    "tampered_payload",
    "tampered_signature",
    "truncated",
    "expired_61s",
    "not_yet_valid_61s",
    "missing_iss",
    "missing_aud",
    "missing_exp",
    "missing_sub",
    "missing_iat",
    "wrong_iss",
    "wrong_aud",
    "unknown_kid",
    "kid_traversal",
    "kid_sql",
    "jku_header",
    "x5u_header",
    "embedded_jwk",
    "embedded_jwk_known_kid",
    "oversized_header",
]


@pytest.mark.parametrize("case", REFUSED)
async def test_bad_tokens_are_refused_with_401(gateway: Gateway, case: str) -> None:
    token = _bad_token(gateway, case)
    async with gateway.session.get(
        gateway.url("/api/v1/aiops/feedback"), headers={"Authorization": f"Bearer {token}"}
    ) as resp:
        body = await resp.json()
        assert resp.status == 401, (case, body)
        assert body["error"]["code"] == "UNAUTHENTICATED"
        assert token not in json.dumps(body)


@pytest.mark.parametrize(("exp_delta", "nbf_delta"), [(-59, 0), (300, 59)])
async def test_skew_within_59_seconds_is_accepted(
    gateway: Gateway, exp_delta: int, nbf_delta: int
) -> None:
    now = int(time.time())
    token = gateway.ring.sign(_claims(iat=now - 400, nbf=now + nbf_delta, exp=now + exp_delta))
    async with gateway.session.get(
        gateway.url("/api/v1/aiops/feedback"), headers={"Authorization": f"Bearer {token}"}
    ) as resp:
        assert resp.status == 200


@pytest.mark.parametrize("scheme", ["Basic", "bearer-ish", "Token", ""])
async def test_only_the_bearer_scheme_is_accepted(gateway: Gateway, scheme: str) -> None:
    token = gateway.token("admin")
    async with gateway.session.get(
        gateway.url("/api/v1/aiops/feedback"), headers={"Authorization": f"{scheme} {token}"}
    ) as resp:
        assert resp.status == 401
