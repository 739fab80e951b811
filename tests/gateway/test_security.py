"""The security suite at the HTTP edge: every route x every role, and a matrix of bad tokens.
Forged tokens are built by hand, the way an attacker would; a local HTTP server records
every request, to prove that no header of a token makes the gateway fetch anything."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from gateway import app as gateway_app
from gateway import auth, routes
from gateway.settings import GatewaySettings
from services.kit import serve
from tests.conftest import AUDIENCE, ISSUER, Gateway, serve_gateway
from tests.helpers import eventually

ROLES = ("viewer", "operator", "admin", "agent")
# Routes the gateway serves itself, beside the table: (method, path, role or None). A route
# added anywhere without a row here (or in routes.ROUTES) fails
# test_the_table_covers_every_route_the_gateway_serves.
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
    ("GET", "/aiops/", None),
    ("GET", "/aiops/config", None),
    ("GET", "/aiops/static/app.js", None),
    # Dev sign-in is off unless configured: then the path answers 404 to everyone.
    ("POST", "/aiops/dev-token", None),
)
# aiohttp answers HEAD on the GET routes the gateway adds with add_get: the same roles apply.
TABLE = (
    [(r.method, r.path, r.role) for r in routes.ROUTES]
    + list(OWN_ROUTES)
    + [("HEAD", p, role) for m, p, role in OWN_ROUTES if m == "GET"]
)
PUBLIC_STATUS = {"/aiops/dev-token": 404}


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
            expected = PUBLIC_STATUS.get(path, 200)
            assert resp.status == expected, f"public {method} {path}: {resp.status}"
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


def _registered_routes(application: web.Application) -> set[tuple[str, str]]:
    out = set()
    for route in application.router.routes():
        resource = route.resource
        assert resource is not None
        out.add((route.method, resource.canonical))
    return out


def test_the_table_covers_every_route_the_gateway_serves(tmp_path: Path) -> None:
    application = gateway_app.create_app(
        GatewaySettings.from_env({"AIOPS_GATEWAY_JWT_KEYRING_DIR": str(tmp_path)})
    )
    covered = set()
    for method, path, _ in TABLE:
        request = make_mocked_request(method, _concrete(path), app=application)
        match = asyncio.run(application.router.resolve(request))
        assert match.route.resource is not None, (method, path)
        assert match.http_exception is None, (method, path, match.http_exception)
        covered.add((method, match.route.resource.canonical))
    missing = _registered_routes(application) - covered
    assert not missing, f"routes without a row in the role table: {sorted(missing)}"


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


def _signed_by_us(gw: Gateway, header: dict[str, Any], claims: dict[str, Any]) -> str:
    """Signed with the gateway's REAL private key, so only what the test changed is wrong."""
    private = serialization.load_pem_private_key(
        (gw.ring.path / f"{gw.ring.active_kid}.pem").read_bytes(), password=None
    )
    assert isinstance(private, rsa.RSAPrivateKey)
    signing_input = _unsigned(header, claims)
    signature = private.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{_b64(signature)}"


def _bad_token(gw: Gateway, case: str, recorder: str) -> str:
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
    if case in ("wrong_exp_string", "wrong_exp_bool", "wrong_exp_null"):
        exp = {"wrong_exp_string": "never", "wrong_exp_bool": True, "wrong_exp_null": None}[case]
        claims = _claims()
        claims["exp"] = exp
        return _signed_by_us(gw, {"alg": "RS256", "kid": kid, "typ": "JWT"}, claims)
    if case in ("unknown_kid", "kid_traversal", "kid_sql", "kid_traversal_attacker"):
        bad_kid = {
            "unknown_kid": "nope-1",
            "kid_traversal": "../../../../etc/passwd",
            "kid_traversal_attacker": f"../{kid}",
            "kid_sql": "' OR 1=1 --",
        }[case]
        if case == "kid_traversal_attacker":
            return jwt.encode(
                _claims(), _attacker_key(), algorithm="RS256", headers={"kid": bad_kid}
            )
        return _signed_by_us(gw, {"alg": "RS256", "kid": bad_kid}, _claims())
    if case in (
        "jku_header",
        "jku_header_known_kid",
        "x5u_header",
        "x5u_header_known_kid",
        "embedded_jwk",
        "embedded_jwk_known_kid",
    ):
        # The attacker signs with their own key and points the gateway at it (a JWKS URL,
        # a certificate URL, or the key itself); the recorder would serve that key.
        key = _attacker_key()
        header_kid = kid if case.endswith("_known_kid") else "attacker"
        headers: dict[str, Any] = {"kid": header_kid}
        if case.startswith("jku"):
            headers["jku"] = f"{recorder}/jwks.json"
        elif case.startswith("x5u"):
            headers["x5u"] = f"{recorder}/cert.pem"
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
    "missing_roles",
    "wrong_iss",
    "wrong_aud",
    "wrong_exp_string",
    "wrong_exp_bool",
    "wrong_exp_null",
    "unknown_kid",
    "kid_traversal",
    "kid_traversal_attacker",
    "kid_sql",
    "jku_header",
    "jku_header_known_kid",
    "x5u_header",
    "x5u_header_known_kid",
    "embedded_jwk",
    "embedded_jwk_known_kid",
    "oversized_header",
]


@dataclass
class Recorder:
    """A real local HTTP server that serves anything and records every request it gets."""

    base: str = ""
    hits: list[str] = field(default_factory=list)
    jwks: dict[str, Any] = field(default_factory=lambda: {"keys": []})
    gate: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        self.hits.append(request.path)
        await self.gate.wait()
        return web.json_response(self.jwks)


@pytest.fixture
async def recorder() -> AsyncIterator[Recorder]:
    rec = Recorder()
    rec.gate.set()
    application = web.Application()
    application.router.add_route("*", "/{tail:.*}", rec.handle)
    runner = web.AppRunner(application, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    rec.base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield rec
    finally:
        rec.gate.set()
        await runner.cleanup()


@pytest.mark.parametrize("case", REFUSED)
async def test_bad_tokens_are_refused_with_401(
    gateway: Gateway, recorder: Recorder, case: str
) -> None:
    token = _bad_token(gateway, case, recorder.base)
    recorder.jwks = {"keys": []}
    async with gateway.session.get(
        gateway.url("/api/v1/aiops/feedback"), headers={"Authorization": f"Bearer {token}"}
    ) as resp:
        body = await resp.json()
        assert resp.status == 401, (case, body)
        assert body["error"]["code"] == "UNAUTHENTICATED"
        assert token not in json.dumps(body)
    # jku / x5u / jwk: never fetched, never trusted.
    assert recorder.hits == []


async def test_a_genuine_token_with_jku_and_x5u_is_accepted_without_any_fetch(
    gateway: Gateway, recorder: Recorder
) -> None:
    header = {
        "alg": "RS256",
        "kid": gateway.ring.active_kid,
        "jku": f"{recorder.base}/jwks.json",
        "x5u": f"{recorder.base}/cert.pem",
    }
    token = _signed_by_us(gateway, header, _claims())
    async with gateway.session.get(
        gateway.url("/api/v1/aiops/feedback"), headers={"Authorization": f"Bearer {token}"}
    ) as resp:
        assert resp.status == 200
    assert recorder.hits == []


@pytest.mark.parametrize("param", ["access_token", "token", "jwt"])
@pytest.mark.parametrize("with_header", [False, True])
async def test_a_token_in_the_query_string_is_refused(
    gateway: Gateway, param: str, with_header: bool
) -> None:
    token = gateway.token("admin")
    headers = {"Authorization": f"Bearer {token}"} if with_header else {}
    async with gateway.session.get(
        gateway.url(f"/api/v1/aiops/feedback?{param}={token}"), headers=headers
    ) as resp:
        body = await resp.json()
        assert resp.status == 401, body
        assert body["error"]["details"][0]["reason"] == "TOKEN_IN_QUERY"
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


async def _status(gw: Gateway, path: str, token: str | None = None) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with gw.session.get(gw.url(path), headers=headers) as resp:
        body = await resp.json(content_type=None) if path.startswith("/api") else {}
        reason = body["error"]["details"][0]["reason"] if "error" in body else ""
        return resp.status, reason


async def test_external_jwks_flood_refreshes_once_without_blocking_the_loop(
    feedback_running: serve.Running, recorder: Recorder, tmp_path: Path
) -> None:
    idp_1, idp_2 = _attacker_key(), _attacker_key()
    recorder.jwks = {"keys": [_jwk(idp_1, "idp-1")]}
    recorder.gate.clear()  # the identity provider holds its answer until we let it go
    async with serve_gateway(
        {"feedback": feedback_running},
        tmp_path / "keys",
        AIOPS_GATEWAY_JWKS_URL=f"{recorder.base}/jwks.json",
    ) as gw:
        good = jwt.encode(_claims(), idp_1, algorithm="RS256", headers={"kid": "idp-1"})
        unknown = jwt.encode(_claims(), idp_2, algorithm="RS256", headers={"kid": "idp-2"})
        first = asyncio.create_task(_status(gw, "/api/v1/aiops/feedback", good))

        async def fetch_started() -> None:
            assert recorder.hits

        await eventually(fetch_started)
        flood = [
            asyncio.create_task(_status(gw, "/api/v1/aiops/feedback", unknown)) for _ in range(100)
        ]
        # While the key set is being fetched, the gateway serves other requests.
        assert (await _status(gw, "/.well-known/jwks.json"))[0] == 200
        assert (await _status(gw, "/openapi.json"))[0] == 200
        assert not first.done()
        recorder.gate.set()
        assert await first == (200, "")
        assert set(await asyncio.gather(*flood)) == {(401, "KEY_UNKNOWN")}
        assert recorder.hits == ["/jwks.json"]
        # Inside the 30 s window a second flood of unknown kids fetches nothing.
        again = await asyncio.gather(
            *(_status(gw, "/api/v1/aiops/feedback", unknown) for _ in range(200))
        )
        assert set(again) == {(401, "KEY_UNKNOWN")}
        assert recorder.hits == ["/jwks.json"]
        assert await _status(gw, "/api/v1/aiops/feedback", good) == (200, "")
        # The fetch must not have closed the HTTP client the gateway shares with other routes.
        assert (await _status(gw, "/metrics/aiops"))[0] == 200
