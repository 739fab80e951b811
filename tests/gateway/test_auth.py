"""Keyring, JWKS, token verification and RBAC for the gateway."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import stat
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from gateway import auth, keyring

ISS = "https://aiops.test/issuer"
AUD = "aiops-gateway"
TTL = 900.0
MAX_TTL = 3600.0
LEEWAY = 60.0
REPO_ROOT = Path(__file__).resolve().parents[2]


class FakeClock:
    """Wall and monotonic time in one; tests move it by hand."""

    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_json(obj: object) -> str:
    return b64url(json.dumps(obj, separators=(",", ":")).encode())


def craft(
    header: dict[str, Any], payload: dict[str, Any], sign: Callable[[bytes], bytes] | None
) -> str:
    """A compact JWS built by hand, so tests can make tokens PyJWT refuses to make."""
    signing_input = f"{b64url_json(header)}.{b64url_json(payload)}"
    sig = b"" if sign is None else sign(signing_input.encode("ascii"))
    return f"{signing_input}.{b64url(sig)}"


def rs256_signer(key: rsa.RSAPrivateKey) -> Callable[[bytes], bytes]:
    return lambda data: key.sign(data, padding.PKCS1v15(), hashes.SHA256())


def jwk_of(kid: str, key: rsa.RSAPublicKey) -> dict[str, str]:
    nums = key.public_numbers()

    def enc(v: int) -> str:
        return b64url(v.to_bytes((v.bit_length() + 7) // 8, "big"))

    return {
        "kty": "RSA",
        "use": "sig",
        "alg": "RS256",
        "kid": kid,
        "n": enc(nums.n),
        "e": enc(nums.e),
    }


def bearer(token: str) -> str:
    return f"Bearer {token}"


@pytest.fixture(scope="module")
def attacker_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(float(int(time.time())))


@pytest.fixture
def ring(tmp_path: Path, clock: FakeClock) -> keyring.Keyring:
    return keyring.Keyring.load_or_create(
        tmp_path / "keys", max_token_ttl_seconds=MAX_TTL, clock=clock
    )


@pytest.fixture
async def key_source(
    ring: keyring.Keyring, clock: FakeClock
) -> AsyncIterator[auth.KeyringKeySource]:
    source = auth.KeyringKeySource(ring, clock=clock)
    yield source
    await source.aclose()


@pytest.fixture
def verifier(key_source: auth.KeyringKeySource, clock: FakeClock) -> auth.Verifier:
    return auth.Verifier(key_source, issuer=ISS, audience=AUD, clock=clock)


def claims(clock: FakeClock, **overrides: Any) -> dict[str, Any]:
    now = int(clock())
    base: dict[str, Any] = {
        "iss": ISS,
        "aud": AUD,
        "sub": "alice",
        "iat": now,
        "nbf": now,
        "exp": now + int(TTL),
        "jti": "j1",
        "roles": ["operator"],
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not _DROP}


_DROP = object()


def mint(
    ring: keyring.Keyring,
    clock: FakeClock,
    *,
    roles: tuple[str, ...] = ("operator",),
    now: float | None = None,
) -> str:
    return keyring.mint_token(
        ring,
        subject="alice",
        roles=roles,
        issuer=ISS,
        audience=AUD,
        ttl_seconds=TTL,
        now=clock() if now is None else now,
    )


async def reason_of(verifier: auth.Verifier, header: str | None) -> str:
    with pytest.raises(auth.AuthError) as info:
        await verifier.verify(header)
    assert header is None or len(header) < 20 or header[7:] not in str(info.value)
    return info.value.reason


# -- round trip, time ------------------------------------------------------------------


async def test_round_trip_returns_principal(
    ring: keyring.Keyring, verifier: auth.Verifier, clock: FakeClock
) -> None:
    token = mint(ring, clock, roles=("operator", "agent"))
    principal = await verifier.verify(bearer(token))
    assert principal == auth.Principal(
        subject="alice", roles=frozenset({"operator", "agent"}), expires_at=clock() + TTL
    )
    header = jwt.get_unverified_header(token)
    assert header == {"alg": "RS256", "kid": ring.active_kid, "typ": "JWT"}
    payload = jwt.decode(token, options={"verify_signature": False})
    assert set(payload) == {"iss", "aud", "sub", "iat", "nbf", "exp", "jti", "roles"}


async def test_scheme_is_case_insensitive(
    ring: keyring.Keyring, verifier: auth.Verifier, clock: FakeClock
) -> None:
    token = mint(ring, clock)
    assert (await verifier.verify(f"bearer  {token}")).subject == "alice"


@pytest.mark.parametrize(("seconds_past_exp", "reason"), [(59, None), (61, "TOKEN_EXPIRED")])
async def test_expiry_has_60s_leeway(
    ring: keyring.Keyring,
    verifier: auth.Verifier,
    clock: FakeClock,
    seconds_past_exp: int,
    reason: str | None,
) -> None:
    token = mint(ring, clock, now=clock() - TTL - seconds_past_exp)
    if reason is None:
        assert (await verifier.verify(bearer(token))).subject == "alice"
    else:
        assert await reason_of(verifier, bearer(token)) == reason


@pytest.mark.parametrize(("seconds_early", "reason"), [(59, None), (61, "TOKEN_NOT_YET_VALID")])
async def test_not_yet_valid_has_60s_leeway(
    ring: keyring.Keyring,
    verifier: auth.Verifier,
    clock: FakeClock,
    seconds_early: int,
    reason: str | None,
) -> None:
    token = mint(ring, clock, now=clock() + seconds_early)  # iat = nbf = the future
    if reason is None:
        assert (await verifier.verify(bearer(token))).subject == "alice"
    else:
        assert await reason_of(verifier, bearer(token)) == reason


async def test_nbf_alone_in_the_future_is_refused(
    ring: keyring.Keyring, verifier: auth.Verifier, clock: FakeClock
) -> None:
    token = ring.sign(claims(clock, nbf=int(clock()) + 61))
    assert await reason_of(verifier, bearer(token)) == "TOKEN_NOT_YET_VALID"


async def test_cached_token_is_refused_after_it_expires(
    ring: keyring.Keyring, verifier: auth.Verifier, clock: FakeClock
) -> None:
    token = mint(ring, clock)
    await verifier.verify(bearer(token))
    clock.advance(TTL + LEEWAY)
    assert (await verifier.verify(bearer(token))).subject == "alice"  # edge: still inside
    clock.advance(1)
    assert await reason_of(verifier, bearer(token)) == "TOKEN_EXPIRED"
    assert await reason_of(verifier, bearer(token)) == "TOKEN_EXPIRED"  # and not re-cached


@dataclass
class CountingSource:
    inner: auth.KeySource
    calls: list[str] = field(default_factory=list)

    async def get_key(self, kid: str) -> rsa.RSAPublicKey | None:
        self.calls.append(kid)
        return await self.inner.get_key(kid)


async def test_cache_skips_key_lookup_and_is_bounded(
    ring: keyring.Keyring, key_source: auth.KeyringKeySource, clock: FakeClock
) -> None:
    counting = CountingSource(key_source)
    verifier = auth.Verifier(counting, issuer=ISS, audience=AUD, cache_size=2, clock=clock)
    tokens = [mint(ring, clock) for _ in range(3)]
    for token in tokens:
        await verifier.verify(bearer(token))
    await verifier.verify(bearer(tokens[2]))
    await verifier.verify(bearer(tokens[1]))
    assert len(counting.calls) == 3
    await verifier.verify(bearer(tokens[0]))  # evicted (least recently used)
    assert len(counting.calls) == 4


# -- header and signature attacks -------------------------------------------------------


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
@pytest.mark.parametrize("signature", [b"", b"x"])
async def test_alg_none_is_refused(
    ring: keyring.Keyring, verifier: auth.Verifier, clock: FakeClock, alg: str, signature: bytes
) -> None:
    token = craft(
        {"alg": alg, "typ": "JWT", "kid": ring.active_kid},
        claims(clock),
        (lambda _: signature) if signature else None,
    )
    assert await reason_of(verifier, bearer(token)) == "ALGORITHM_NOT_ALLOWED"


@pytest.mark.parametrize(("alg", "digest"), [("HS256", hashlib.sha256), ("HS512", hashlib.sha512)])
async def test_hmac_keyed_with_public_key_is_refused(
    ring: keyring.Keyring, verifier: auth.Verifier, clock: FakeClock, alg: str, digest: Any
) -> None:
    public = ring.public_key(ring.active_kid)
    assert public is not None
    pem = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    # Also the served JWKS form: some libraries key HMAC with whatever the JWK holds.
    for secret in (pem, json.dumps(ring.jwks()["keys"][0]).encode()):
        token = craft(
            {"alg": alg, "typ": "JWT", "kid": ring.active_kid},
            claims(clock, roles=["admin"]),
            lambda data, s=secret: hmac.new(s, data, digest).digest(),
        )
        assert await reason_of(verifier, bearer(token)) == "ALGORITHM_NOT_ALLOWED"


@pytest.mark.parametrize("alg", ["RS512", "PS256", "ES256", "EdDSA", "rs256", ""])
async def test_other_algorithms_are_refused_even_with_a_valid_signature(
    ring: keyring.Keyring, verifier: auth.Verifier, clock: FakeClock, alg: str
) -> None:
    private = serialization.load_pem_private_key(
        (ring.path / f"{ring.active_kid}.pem").read_bytes(), password=None
    )
    assert isinstance(private, rsa.RSAPrivateKey)
    token = craft(
        {"alg": alg, "kid": ring.active_kid},
        claims(clock),
        lambda data: private.sign(data, padding.PKCS1v15(), hashes.SHA512()),
    )
    assert await reason_of(verifier, bearer(token)) == "ALGORITHM_NOT_ALLOWED"


async def test_tampered_payload_is_refused(
    ring: keyring.Keyring, verifier: auth.Verifier, clock: FakeClock
) -> None:
    header, _, signature = mint(ring, clock, roles=("viewer",)).split(".")
    forged = f"{header}.{b64url_json(claims(clock, roles=['admin']))}.{signature}"
    assert await reason_of(verifier, bearer(forged)) == "TOKEN_INVALID"


async def test_tampered_signature_is_refused(
    ring: keyring.Keyring, verifier: auth.Verifier, clock: FakeClock
) -> None:
    header, payload, signature = mint(ring, clock).split(".")
    raw = bytearray(base64.urlsafe_b64decode(signature + "=="))
    raw[10] ^= 0x01
    assert await reason_of(verifier, bearer(f"{header}.{payload}.{b64url(bytes(raw))}")) == (
        "TOKEN_INVALID"
    )


@pytest.mark.parametrize(
    "cut",
    [
        lambda t: t[:-10],
        lambda t: t.rsplit(".", 1)[0],
        lambda t: t.split(".")[0],
        lambda t: t[: len(t) // 2],
        lambda t: t + ".extra",
        lambda t: t.replace(".", "!", 1),
        lambda t: t[:40] + "\u00e9" + t[40:],
    ],
)
async def test_truncated_or_garbled_token_is_refused(
    ring: keyring.Keyring, verifier: auth.Verifier, clock: FakeClock, cut: Callable[[str], str]
) -> None:
    assert await reason_of(verifier, bearer(cut(mint(ring, clock)))) == "TOKEN_INVALID"


@pytest.mark.parametrize(
    "header", [None, "", "   ", "Bearer", "Bearer   ", "Basic YWxpY2U6cHc=", "Token abc.def.ghi"]
)
async def test_missing_or_non_bearer_header_is_refused(
    verifier: auth.Verifier, header: str | None
) -> None:
    assert await reason_of(verifier, header) == "TOKEN_MISSING"


@pytest.mark.parametrize("claim", ["iss", "aud", "exp", "sub", "iat", "roles"])
async def test_missing_required_claim_is_refused(
    ring: keyring.Keyring, verifier: auth.Verifier, clock: FakeClock, claim: str
) -> None:
    token = ring.sign(claims(clock, **{claim: _DROP}))
    assert await reason_of(verifier, bearer(token)) == "CLAIM_MISSING"


@pytest.mark.parametrize(
    ("override", "reason"),
    [
        ({"iss": "https://evil.test"}, "ISSUER_INVALID"),
        ({"iss": ["https://aiops.test/issuer"]}, "ISSUER_INVALID"),
        ({"aud": "other-service"}, "AUDIENCE_INVALID"),
        ({"aud": ["a", "b"]}, "AUDIENCE_INVALID"),
        ({"sub": ""}, "TOKEN_INVALID"),
        ({"sub": 42}, "TOKEN_INVALID"),
        ({"exp": "never"}, "TOKEN_INVALID"),
        ({"exp": True}, "TOKEN_INVALID"),
        ({"roles": ["root"]}, "ROLE_UNKNOWN"),
        ({"roles": ["viewer", "superuser"]}, "ROLE_UNKNOWN"),
        ({"roles": "admin"}, "ROLE_UNKNOWN"),
        ({"roles": [["admin"]]}, "ROLE_UNKNOWN"),
    ],
)
async def test_bad_claim_is_refused(
    ring: keyring.Keyring,
    verifier: auth.Verifier,
    clock: FakeClock,
    override: dict[str, Any],
    reason: str,
) -> None:
    # By hand: PyJWT refuses to encode some of these (a non-string iss).
    token = craft(
        {"alg": "RS256", "kid": ring.active_kid},
        claims(clock, **override),
        rs256_signer(_active_private(ring)),
    )
    assert await reason_of(verifier, bearer(token)) == reason


async def test_audience_list_containing_ours_is_accepted(
    ring: keyring.Keyring, verifier: auth.Verifier, clock: FakeClock
) -> None:
    token = ring.sign(claims(clock, aud=["other", AUD]))
    assert (await verifier.verify(bearer(token))).roles == {"operator"}


async def test_infinite_exp_is_refused(
    ring: keyring.Keyring, verifier: auth.Verifier, clock: FakeClock
) -> None:
    private = serialization.load_pem_private_key(
        (ring.path / f"{ring.active_kid}.pem").read_bytes(), password=None
    )
    assert isinstance(private, rsa.RSAPrivateKey)
    payload = claims(clock)
    payload["exp"] = float("inf")  # json.dumps writes Infinity, which json.loads accepts
    token = craft({"alg": "RS256", "kid": ring.active_kid}, payload, rs256_signer(private))
    assert await reason_of(verifier, bearer(token)) == "TOKEN_INVALID"


async def test_unknown_kid_is_refused(
    verifier: auth.Verifier, clock: FakeClock, attacker_key: rsa.RSAPrivateKey
) -> None:
    token = craft({"alg": "RS256", "kid": "not-a-key"}, claims(clock), rs256_signer(attacker_key))
    assert await reason_of(verifier, bearer(token)) == "KEY_UNKNOWN"


async def test_missing_kid_is_refused(
    ring: keyring.Keyring, verifier: auth.Verifier, clock: FakeClock
) -> None:
    token = jwt.encode(claims(clock), _active_private(ring), algorithm="RS256")
    assert await reason_of(verifier, bearer(token)) == "TOKEN_INVALID"


def _active_private(ring: keyring.Keyring) -> rsa.RSAPrivateKey:
    private = serialization.load_pem_private_key(
        (ring.path / f"{ring.active_kid}.pem").read_bytes(), password=None
    )
    assert isinstance(private, rsa.RSAPrivateKey)
    return private


@pytest.mark.parametrize(
    "kid",
    ["../../etc/passwd", "' OR 1=1 --", "/dev/zero", "k" * 300, "..", "manifest", ".keyring.lock"],
)
async def test_odd_kid_is_simply_unknown(
    ring: keyring.Keyring, verifier: auth.Verifier, clock: FakeClock, kid: str
) -> None:
    # Signed with the REAL private key: only the kid is wrong.
    token = craft({"alg": "RS256", "kid": kid}, claims(clock), rs256_signer(_active_private(ring)))
    assert await reason_of(verifier, bearer(token)) == "KEY_UNKNOWN"


@pytest.fixture
async def jwks_server() -> AsyncIterator[JwksServer]:
    server = JwksServer()
    app = web.Application()
    app.router.add_get("/jwks.json", server.handle)
    app.router.add_get("/x5u.pem", server.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    server.base = f"http://{host}:{port}"
    try:
        yield server
    finally:
        await runner.cleanup()


@dataclass
class JwksServer:
    """A real local JWKS endpoint that counts its requests."""

    keys: list[dict[str, str]] = field(default_factory=list)
    requests: int = 0
    base: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        return web.json_response({"keys": self.keys})

    @property
    def url(self) -> str:
        return f"{self.base}/jwks.json"


@pytest.mark.parametrize("use_our_kid", [True, False])
async def test_key_embedded_in_header_is_never_used_or_fetched(
    ring: keyring.Keyring,
    verifier: auth.Verifier,
    clock: FakeClock,
    attacker_key: rsa.RSAPrivateKey,
    jwks_server: JwksServer,
    use_our_kid: bool,
) -> None:
    kid = ring.active_kid if use_our_kid else "attacker"
    jwks_server.keys = [jwk_of(kid, attacker_key.public_key())]
    header = {
        "alg": "RS256",
        "kid": kid,
        "jwk": jwk_of(kid, attacker_key.public_key()),
        "jku": jwks_server.url,
        "x5u": f"{jwks_server.base}/x5u.pem",
    }
    token = craft(header, claims(clock, roles=["admin"]), rs256_signer(attacker_key))
    expected = "TOKEN_INVALID" if use_our_kid else "KEY_UNKNOWN"
    assert await reason_of(verifier, bearer(token)) == expected
    assert jwks_server.requests == 0


async def test_jku_header_on_a_genuine_token_is_ignored(
    ring: keyring.Keyring, verifier: auth.Verifier, clock: FakeClock, jwks_server: JwksServer
) -> None:
    header = {"alg": "RS256", "kid": ring.active_kid, "jku": jwks_server.url}
    token = craft(header, claims(clock), rs256_signer(_active_private(ring)))
    assert (await verifier.verify(bearer(token))).subject == "alice"
    assert jwks_server.requests == 0


async def test_oversized_token_is_refused_before_parsing(
    ring: keyring.Keyring, clock: FakeClock
) -> None:
    counting = CountingSource(auth.KeyringKeySource(ring, clock=clock))
    verifier = auth.Verifier(counting, issuer=ISS, audience=AUD, clock=clock)
    header = {"alg": "RS256", "kid": ring.active_kid, "pad": "A" * 9000}
    token = craft(header, claims(clock), rs256_signer(_active_private(ring)))
    assert await reason_of(verifier, bearer(token)) == "TOKEN_TOO_LARGE"
    assert await reason_of(verifier, "Bearer " + "A" * 100_000) == "TOKEN_TOO_LARGE"
    assert counting.calls == []


# -- roles -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("roles", "required", "allowed"),
    [
        ({"viewer"}, "viewer", True),
        ({"viewer"}, "operator", False),
        ({"operator"}, "viewer", True),
        ({"operator"}, "operator", True),
        ({"operator"}, "admin", False),
        ({"admin"}, "viewer", True),
        ({"admin"}, "operator", True),
        ({"admin"}, "admin", True),
        ({"admin"}, "agent", False),
        ({"agent"}, "agent", True),
        ({"agent"}, "viewer", False),
        ({"viewer", "agent"}, "agent", True),
        (set(), "viewer", False),
        ({"root"}, "viewer", False),
    ],
)
def test_allows_follows_role_hierarchy(roles: set[str], required: str, allowed: bool) -> None:
    assert auth.allows(frozenset(roles), required) is allowed


def test_allows_rejects_unknown_required_role() -> None:
    with pytest.raises(ValueError):
        auth.allows({"admin"}, "superuser")


# -- keyring -----------------------------------------------------------------------------


def test_keyring_files_are_private_and_manifest_is_complete(ring: keyring.Keyring) -> None:
    pem = ring.path / f"{ring.active_kid}.pem"
    assert stat.S_IMODE(pem.stat().st_mode) == 0o600
    manifest = json.loads((ring.path / keyring.MANIFEST_NAME).read_text())
    assert manifest["active_kid"] == ring.active_kid
    assert manifest["keys"][0]["retired_at"] is None
    assert not [p for p in ring.path.iterdir() if p.name.endswith(".tmp")]


def test_load_refuses_an_empty_directory(tmp_path: Path) -> None:
    with pytest.raises(keyring.KeyringError):
        keyring.Keyring.load(tmp_path)


def test_load_or_create_reuses_existing_keys(ring: keyring.Keyring, clock: FakeClock) -> None:
    again = keyring.Keyring.load_or_create(ring.path, max_token_ttl_seconds=MAX_TTL, clock=clock)
    assert again.active_kid == ring.active_kid
    assert keyring.Keyring.load(ring.path).jwks() == ring.jwks()


def test_mint_refuses_ttl_longer_than_key_publication(ring: keyring.Keyring) -> None:
    with pytest.raises(ValueError):
        keyring.mint_token(
            ring, subject="a", roles=["viewer"], issuer=ISS, audience=AUD, ttl_seconds=MAX_TTL + 1
        )


def test_jwks_is_rfc7517_and_matches_signing_key(ring: keyring.Keyring, clock: FakeClock) -> None:
    (entry,) = ring.jwks()["keys"]
    assert set(entry) == {"kty", "use", "alg", "kid", "n", "e"}
    assert (entry["kty"], entry["use"], entry["alg"]) == ("RSA", "sig", "RS256")
    token = mint(ring, clock)
    decoded = jwt.decode(
        token, jwt.PyJWK(entry).key, algorithms=["RS256"], audience=AUD, issuer=ISS
    )
    assert decoded["sub"] == "alice"


async def test_rotation_keeps_old_tokens_valid_until_pruned(
    ring: keyring.Keyring, verifier: auth.Verifier, clock: FakeClock
) -> None:
    old_kid = ring.active_kid
    old_token = mint(ring, clock)
    clock.advance(10)
    new_kid = ring.rotate()
    assert new_kid != old_kid
    assert ring.active_kid == new_kid
    new_token = mint(ring, clock)
    assert jwt.get_unverified_header(new_token)["kid"] == new_kid
    assert (await verifier.verify(bearer(old_token))).subject == "alice"
    assert (await verifier.verify(bearer(new_token))).subject == "alice"
    assert [k["kid"] for k in ring.jwks()["keys"]] == [new_kid, old_kid]

    # The old key stays published until retired_at + max TTL + 60 s ...
    clock.advance(MAX_TTL + LEEWAY)
    assert ring.public_key(old_kid) is not None
    # ... and not a second longer.
    clock.advance(1)
    assert [k["kid"] for k in ring.jwks()["keys"]] == [new_kid]
    assert ring.public_key(old_kid) is None
    fresh = auth.Verifier(
        auth.KeyringKeySource(ring, clock=clock), issuer=ISS, audience=AUD, clock=clock
    )
    forged_late = craft(
        {"alg": "RS256", "kid": old_kid}, claims(clock), rs256_signer(_old_private(ring, old_kid))
    )
    assert await reason_of(fresh, bearer(forged_late)) == "KEY_UNKNOWN"

    # The next rotation deletes the pruned key from disk.
    assert (ring.path / f"{old_kid}.pem").exists()
    third = ring.rotate()
    assert not (ring.path / f"{old_kid}.pem").exists()
    assert [k["kid"] for k in ring.jwks()["keys"]] == [third, new_kid]


def _old_private(ring: keyring.Keyring, kid: str) -> rsa.RSAPrivateKey:
    private = serialization.load_pem_private_key(
        (ring.path / f"{kid}.pem").read_bytes(), password=None
    )
    assert isinstance(private, rsa.RSAPrivateKey)
    return private


async def test_rotation_by_another_process_is_picked_up(
    ring: keyring.Keyring, verifier: auth.Verifier, clock: FakeClock
) -> None:
    old_kid = ring.active_kid
    assert ring.reload_if_changed() is False
    script = (
        "import sys; from pathlib import Path; from gateway import keyring; "
        "print(keyring.Keyring.load(Path(sys.argv[1])).rotate())"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        script,
        str(ring.path),
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    new_kid = out.decode().strip()

    cli_view = keyring.Keyring.load(ring.path, clock=clock)
    token = mint(cli_view, clock)
    assert jwt.get_unverified_header(token)["kid"] == new_kid
    # The running gateway has not seen the new key, but an unknown kid makes it look.
    assert ring.active_kid == old_kid
    assert (await verifier.verify(bearer(token))).subject == "alice"
    assert ring.active_kid == new_kid
    assert {k["kid"] for k in ring.jwks()["keys"]} == {old_kid, new_kid}
    assert ring.reload_if_changed() is False


async def test_keyring_reload_is_rate_limited(
    ring: keyring.Keyring, clock: FakeClock, attacker_key: rsa.RSAPrivateKey
) -> None:
    source = auth.KeyringKeySource(ring, clock=clock)
    verifier = auth.Verifier(source, issuer=ISS, audience=AUD, clock=clock)
    unknown = craft({"alg": "RS256", "kid": "nope"}, claims(clock), rs256_signer(attacker_key))
    assert await reason_of(verifier, bearer(unknown)) == "KEY_UNKNOWN"  # reloads (nothing new)
    cli_view = keyring.Keyring.load(ring.path, clock=clock)
    cli_view.rotate()
    token = mint(cli_view, clock)
    assert await reason_of(verifier, bearer(token)) == "KEY_UNKNOWN"  # within the second
    clock.advance(1.0)
    assert (await verifier.verify(bearer(token))).subject == "alice"
    await source.aclose()


# -- remote JWKS -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def idp_keys() -> dict[str, rsa.RSAPrivateKey]:
    return {
        kid: rsa.generate_private_key(public_exponent=65537, key_size=2048)
        for kid in ("idp-1", "idp-2")
    }


def idp_token(clock: FakeClock, kid: str, key: rsa.RSAPrivateKey) -> str:
    return craft({"alg": "RS256", "kid": kid, "typ": "JWT"}, claims(clock), rs256_signer(key))


async def test_remote_jwks_flood_fetches_at_most_once_per_window(
    jwks_server: JwksServer, clock: FakeClock, idp_keys: dict[str, rsa.RSAPrivateKey]
) -> None:
    jwks_server.keys = [jwk_of("idp-1", idp_keys["idp-1"].public_key())]
    mono = FakeClock(1000.0)
    source = auth.RemoteJwksKeySource(jwks_server.url, aiohttp.ClientSession, clock=mono)
    verifier = auth.Verifier(source, issuer=ISS, audience=AUD, clock=clock)
    try:
        good = idp_token(clock, "idp-1", idp_keys["idp-1"])
        assert (await verifier.verify(bearer(good))).subject == "alice"
        assert jwks_server.requests == 1

        unknown = [bearer(idp_token(clock, "idp-2", idp_keys["idp-2"])) for _ in range(200)]

        async def reason(header: str) -> str:
            try:
                await verifier.verify(header)
            except auth.AuthError as exc:
                return exc.reason
            return "OK"

        mono.advance(29)
        assert set(await asyncio.gather(*map(reason, unknown))) == {"KEY_UNKNOWN"}
        assert jwks_server.requests == 1  # still inside the first 30 s window

        mono.advance(1)  # window over: the flood shares ONE fetch
        assert set(await asyncio.gather(*map(reason, unknown))) == {"KEY_UNKNOWN"}
        assert jwks_server.requests == 2

        jwks_server.keys.append(jwk_of("idp-2", idp_keys["idp-2"].public_key()))
        mono.advance(29)
        assert set(await asyncio.gather(*map(reason, unknown))) == {"KEY_UNKNOWN"}
        assert jwks_server.requests == 2

        mono.advance(1)  # the newly published kid is accepted after the window
        assert set(await asyncio.gather(*map(reason, unknown))) == {"OK"}
        assert jwks_server.requests == 3
        assert (await verifier.verify(bearer(good))).subject == "alice"
        assert jwks_server.requests == 3
    finally:
        await source.aclose()


async def test_remote_jwks_first_flood_shares_one_fetch(
    jwks_server: JwksServer, clock: FakeClock, idp_keys: dict[str, rsa.RSAPrivateKey]
) -> None:
    jwks_server.keys = [jwk_of("idp-1", idp_keys["idp-1"].public_key())]
    source = auth.RemoteJwksKeySource(jwks_server.url, aiohttp.ClientSession, clock=FakeClock(0.0))
    verifier = auth.Verifier(source, issuer=ISS, audience=AUD, clock=clock)
    tokens = [bearer(idp_token(clock, "idp-1", idp_keys["idp-1"])) for _ in range(200)]
    principals = await asyncio.gather(*map(verifier.verify, tokens))
    assert {p.subject for p in principals} == {"alice"}
    assert jwks_server.requests == 1
    await source.aclose()


async def test_remote_jwks_unreachable_keeps_refusing_cleanly(
    clock: FakeClock, idp_keys: dict[str, rsa.RSAPrivateKey]
) -> None:
    source = auth.RemoteJwksKeySource(
        "http://127.0.0.1:9/jwks.json", aiohttp.ClientSession, timeout_seconds=2.0
    )
    verifier = auth.Verifier(source, issuer=ISS, audience=AUD, clock=clock)
    token = idp_token(clock, "idp-1", idp_keys["idp-1"])
    assert await reason_of(verifier, bearer(token)) == "KEY_UNKNOWN"
    await source.aclose()


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("https://idp.example.com/.well-known/jwks.json", True),
        ("http://127.0.0.1:8080/jwks", True),
        ("http://[::1]/jwks", True),
        ("http://localhost/jwks", True),
        ("http://idp.example.com/jwks", False),
        ("http://10.0.0.1/jwks", False),
        ("ftp://idp.example.com/jwks", False),
        ("file:///etc/passwd", False),
    ],
)
def test_remote_jwks_requires_https_or_loopback(url: str, ok: bool) -> None:
    if ok:
        auth.RemoteJwksKeySource(url, aiohttp.ClientSession)
    else:
        with pytest.raises(ValueError):
            auth.RemoteJwksKeySource(url, aiohttp.ClientSession)


@pytest.mark.parametrize(("padding_entries", "accepted"), [(2_000, True), (40_000, False)])
async def test_remote_jwks_large_documents_are_read_whole_but_capped(
    jwks_server: JwksServer,
    clock: FakeClock,
    idp_keys: dict[str, rsa.RSAPrivateKey],
    padding_entries: int,
    accepted: bool,
) -> None:
    # ~0.1 MB (several network chunks) is read whole; ~2 MB is over the 1 MiB cap.
    filler = [{"kty": "EC", "kid": f"ec-{i}", "crv": "P-256"} for i in range(padding_entries)]
    jwks_server.keys = [*filler, jwk_of("idp-1", idp_keys["idp-1"].public_key())]
    source = auth.RemoteJwksKeySource(jwks_server.url, aiohttp.ClientSession)
    verifier = auth.Verifier(source, issuer=ISS, audience=AUD, clock=clock)
    header = bearer(idp_token(clock, "idp-1", idp_keys["idp-1"]))
    try:
        if accepted:
            assert (await verifier.verify(header)).subject == "alice"
        else:
            assert await reason_of(verifier, header) == "KEY_UNKNOWN"
    finally:
        await source.aclose()


async def test_non_canonical_base64_is_refused(
    ring: keyring.Keyring, verifier: auth.Verifier, clock: FakeClock
) -> None:
    header, payload, signature = mint(ring, clock).split(".")
    # 256-byte signature -> 342 chars, the last carrying 4 unused bits: set one of them.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet[alphabet.index(signature[-1]) | 1]
    assert last != signature[-1]
    forged = f"{header}.{payload}.{signature[:-1]}{last}"
    assert await reason_of(verifier, bearer(forged)) == "TOKEN_INVALID"


@pytest.mark.parametrize(
    ("header_extra", "payload"),
    [({"crit": ["exp"]}, None), ({}, ["not", "an", "object"]), ({}, "a string")],
)
async def test_crit_header_or_non_object_payload_is_refused(
    ring: keyring.Keyring,
    verifier: auth.Verifier,
    clock: FakeClock,
    header_extra: dict[str, Any],
    payload: Any,
) -> None:
    private = _active_private(ring)
    header = {"alg": "RS256", "kid": ring.active_kid, **header_extra}
    body = b64url_json(claims(clock) if payload is None else payload)
    signing_input = f"{b64url_json(header)}.{body}"
    token = f"{signing_input}.{b64url(rs256_signer(private)(signing_input.encode()))}"
    assert await reason_of(verifier, bearer(token)) == "TOKEN_INVALID"
