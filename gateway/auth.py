"""Bearer JWT verification (RS256 pinned), key sources, and role checks.

The verifier never trusts the token to say how it should be verified: the algorithm is
pinned to RS256, the key is looked up by ``kid`` in a key source we configured, and the
``jku``/``x5u``/``jwk`` headers are ignored (never fetched, never used).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import json
import logging
import math
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol
from urllib.parse import urlsplit

import aiohttp
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from gateway import keyring as keyring_mod

log = logging.getLogger(__name__)

MAX_TOKEN_BYTES = 8 * 1024
ALGORITHM = "RS256"
_MAX_KID_CHARS = 256
_MAX_SUBJECT_CHARS = 256
_MAX_JWKS_BYTES = 1024 * 1024
_MIN_RSA_BITS = 2048
_MAX_RSA_BITS = 8192  # bigger keys only make each verification slower
# header.payload.signature; the signature may be empty so `alg: none` is reported as such.
_COMPACT_JWS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")

Clock = Callable[[], float]


class Role(StrEnum):
    """Roles a token may carry (least privilege, see DESIGN.md "Security model")."""

    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"
    AGENT = "agent"


KNOWN_ROLES: frozenset[str] = frozenset(r.value for r in Role)
# Each role and the roles it implies; agent is a service account and implies nothing else.
_IMPLIED: dict[str, frozenset[str]] = {
    Role.VIEWER: frozenset({Role.VIEWER}),
    Role.OPERATOR: frozenset({Role.OPERATOR, Role.VIEWER}),
    Role.ADMIN: frozenset({Role.ADMIN, Role.OPERATOR, Role.VIEWER}),
    Role.AGENT: frozenset({Role.AGENT}),
}


def allows(principal_roles: Iterable[str], required_role: str) -> bool:
    """Whether any of ``principal_roles`` grants ``required_role``.

    Raises:
        ValueError: ``required_role`` is not a known role (a mistake in the route table).
    """
    if required_role not in KNOWN_ROLES:
        raise ValueError(f"unknown required role {required_role!r}")
    return any(required_role in _IMPLIED.get(role, frozenset()) for role in principal_roles)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a verified token speaks for."""

    subject: str
    roles: frozenset[str]
    expires_at: float


class Reason(StrEnum):
    """Stable ``AuthError.reason`` values (they become ``ErrorInfo.reason``)."""

    TOKEN_MISSING = "TOKEN_MISSING"
    TOKEN_TOO_LARGE = "TOKEN_TOO_LARGE"
    TOKEN_INVALID = "TOKEN_INVALID"
    TOKEN_EXPIRED = "TOKEN_EXPIRED"
    TOKEN_NOT_YET_VALID = "TOKEN_NOT_YET_VALID"
    ALGORITHM_NOT_ALLOWED = "ALGORITHM_NOT_ALLOWED"
    KEY_UNKNOWN = "KEY_UNKNOWN"
    ISSUER_INVALID = "ISSUER_INVALID"
    AUDIENCE_INVALID = "AUDIENCE_INVALID"
    CLAIM_MISSING = "CLAIM_MISSING"
    ROLE_UNKNOWN = "ROLE_UNKNOWN"


class AuthError(Exception):
    """The request is not authenticated (HTTP 401 / UNAUTHENTICATED).

    Attributes:
        reason: One of :class:`Reason`, stable for clients and tests.
        message: One sentence saying what to do; never contains the token.
    """

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason: str = reason.value
        self.message = message


class KeySource(Protocol):
    """Where the verifier finds the public key for a token's ``kid``."""

    async def get_key(self, kid: str) -> rsa.RSAPublicKey | None:
        """The key for ``kid``, or None if it is unknown."""
        ...


class _RateLimitedRefresh:
    """Runs ``refresh`` at most once per ``min_interval``; concurrent callers share one run."""

    def __init__(
        self, refresh: Callable[[], Awaitable[None]], min_interval: float, clock: Clock
    ) -> None:
        self._refresh = refresh
        self._min_interval = min_interval
        self._clock = clock
        self._last: float | None = None
        self._task: asyncio.Task[None] | None = None

    def due(self) -> bool:
        return self._last is None or self._clock() - self._last >= self._min_interval

    async def maybe_run(self) -> None:
        task = self._task
        if task is None:
            if not self.due():
                return
            self._last = self._clock()
            task = self._task = asyncio.create_task(self._run())
        # shield: a caller whose request is cancelled must not cancel everyone's refresh.
        await asyncio.shield(task)

    async def _run(self) -> None:
        try:
            await self._refresh()
        finally:
            self._task = None

    async def aclose(self) -> None:
        task = self._task
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                if (current := asyncio.current_task()) is not None and current.cancelling():
                    raise


class KeyringKeySource:
    """Keys from our own :class:`keyring.Keyring`, picking up rotations done by the CLI."""

    def __init__(
        self,
        keyring: keyring_mod.Keyring,
        *,
        reload_interval: float = 1.0,
        clock: Clock = time.monotonic,
    ) -> None:
        self._keyring = keyring
        self._reloader = _RateLimitedRefresh(self._reload, reload_interval, clock)

    async def _reload(self) -> None:
        # A stat, and on change a few small file reads: off the loop (STYLE.md section 7).
        await asyncio.to_thread(self._keyring.reload_if_changed)

    async def get_key(self, kid: str) -> rsa.RSAPublicKey | None:
        """The published key for ``kid``; on a miss re-reads the keyring at most once a second."""
        key = self._keyring.public_key(kid)
        if key is None:
            await self._reloader.maybe_run()
            key = self._keyring.public_key(kid)
        return key

    async def aclose(self) -> None:
        """Cancel an in-flight reload."""
        await self._reloader.aclose()


class RemoteJwksKeySource:
    """Keys from an external identity provider's JWKS URL.

    The key set is cached. An unknown ``kid`` (or a cache older than ``max_age_seconds``)
    triggers a refresh, at most once per ``min_refresh_interval`` whatever the number of
    requests; concurrent callers await the same in-flight fetch. A failed fetch keeps the
    previous keys.
    """

    def __init__(
        self,
        url: str,
        session_factory: Callable[[], aiohttp.ClientSession],
        min_refresh_interval: float = 30.0,
        *,
        max_age_seconds: float = 3600.0,
        timeout_seconds: float = 5.0,
        clock: Clock = time.monotonic,
    ) -> None:
        """Create the source; nothing is fetched until the first ``get_key``.

        Args:
            url: The JWKS URL; ``https``, or ``http`` only to a loopback host.
            session_factory: Returns a new ``aiohttp.ClientSession`` for one fetch (it is
                closed afterwards); ``aiohttp.ClientSession`` itself will do.
            min_refresh_interval: Minimum seconds between two fetches.
            max_age_seconds: Refetch (rate-limited) when the cached set is older, so keys the
                provider withdrew stop being trusted.
            timeout_seconds: Total time allowed for one fetch.
            clock: Monotonic clock (injectable for tests).

        Raises:
            ValueError: The URL is neither https nor loopback http.
        """
        _check_jwks_url(url)
        self._url = url
        self._session_factory = session_factory
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._max_age = max_age_seconds
        self._clock = clock
        self._keys: dict[str, rsa.RSAPublicKey] = {}
        self._fetched_at: float | None = None
        self._refresher = _RateLimitedRefresh(self._refresh, min_refresh_interval, clock)

    async def get_key(self, kid: str) -> rsa.RSAPublicKey | None:
        """The provider's key for ``kid``, refreshing the cached set when needed."""
        key = self._keys.get(kid)
        stale = self._fetched_at is None or self._clock() - self._fetched_at >= self._max_age
        if key is None or stale:
            await self._refresher.maybe_run()
            key = self._keys.get(kid)
        return key

    async def aclose(self) -> None:
        """Cancel an in-flight fetch."""
        await self._refresher.aclose()

    async def _refresh(self) -> None:
        try:
            async with (
                self._session_factory() as session,
                session.get(
                    self._url,
                    timeout=self._timeout,
                    allow_redirects=False,
                    headers={"Accept": "application/json"},
                ) as resp,
            ):
                if resp.status != 200:
                    log.warning(
                        "jwks fetch failed", extra={"url": self._url, "status": resp.status}
                    )
                    return
                body = bytearray()
                async for chunk in resp.content.iter_chunked(64 * 1024):
                    body += chunk
                    if len(body) > _MAX_JWKS_BYTES:
                        log.warning("jwks too large", extra={"url": self._url})
                        return
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("jwks fetch failed", extra={"url": self._url, "error": repr(exc)})
            return
        keys = _parse_jwks(bytes(body))
        if not keys:
            log.warning("jwks has no usable RS256 keys", extra={"url": self._url})
            return
        self._keys = keys
        self._fetched_at = self._clock()
        log.info("jwks refreshed", extra={"url": self._url, "kids": sorted(keys)})


def _check_jwks_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return
    if parts.scheme == "http" and parts.hostname:
        if parts.hostname == "localhost":
            return
        try:
            if ipaddress.ip_address(parts.hostname).is_loopback:
                return
        except ValueError:
            pass
    raise ValueError("JWKS URL must use https (plain http only to a loopback host)")


def _b64url_int(value: Any) -> int | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        return None
    return int.from_bytes(raw, "big")


def _parse_jwks(body: bytes) -> dict[str, rsa.RSAPublicKey]:
    try:
        doc = json.loads(body)
    except ValueError:
        return {}
    items = doc.get("keys") if isinstance(doc, dict) else None
    if not isinstance(items, list):
        return {}
    keys: dict[str, rsa.RSAPublicKey] = {}
    for item in items:
        if not isinstance(item, dict) or item.get("kty") != "RSA":
            continue
        if item.get("use", "sig") != "sig" or item.get("alg", ALGORITHM) != ALGORITHM:
            continue
        kid, n, e = item.get("kid"), _b64url_int(item.get("n")), _b64url_int(item.get("e"))
        if not isinstance(kid, str) or not kid or n is None or e is None:
            continue
        try:
            key = rsa.RSAPublicNumbers(e, n).public_key()
        except ValueError:
            continue
        if not _MIN_RSA_BITS <= key.key_size <= _MAX_RSA_BITS:
            log.warning("jwks key size refused", extra={"kid": kid, "bits": key.key_size})
            continue
        keys[kid] = key
    return keys


def _b64url_decode(segment: str) -> bytes | None:
    """Strict base64url (RFC 7515): alphabet already checked; canonical encoding only."""
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        return None
    # Reject non-zero padding bits, so one token has exactly one spelling.
    if base64.urlsafe_b64encode(raw).rstrip(b"=") != segment.encode("ascii"):
        return None
    return raw


def _b64url_json(segment: str) -> Any:
    raw = _b64url_decode(segment)
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _invalid(message: str) -> AuthError:
    return AuthError(Reason.TOKEN_INVALID, message)


# PyJWT's RS256 primitive, used directly: the algorithm is pinned here, never taken from the
# token, and PyJWS's per-character segment check would triple the cost of a verification.
_RS256 = RSAAlgorithm(RSAAlgorithm.SHA256)


class Verifier:
    """Verifies ``Authorization: Bearer <jwt>`` headers into :class:`Principal`s."""

    def __init__(
        self,
        keys: KeySource,
        *,
        issuer: str,
        audience: str,
        leeway_seconds: float = 60,
        cache_size: int = 10000,
        clock: Clock = time.time,
    ) -> None:
        """Create a verifier.

        Args:
            keys: Where public keys come from (our keyring or an identity provider's JWKS).
            issuer: Required ``iss``.
            audience: Required member of ``aud``.
            leeway_seconds: Clock skew allowed on ``exp``, ``nbf`` and ``iat``.
            cache_size: Verified tokens remembered (LRU), each until its ``exp`` + leeway.
            clock: Wall clock in Unix seconds (injectable for tests).
        """
        self._keys = keys
        self._issuer = issuer
        self._audience = audience
        self._leeway = float(leeway_seconds)
        self._cache_size = cache_size
        self._clock = clock
        self._cache: OrderedDict[str, tuple[Principal, float]] = OrderedDict()

    async def verify(self, authorization_header: str | None) -> Principal:
        """Verify a request's ``Authorization`` header.

        Raises:
            AuthError: The header is missing or the token is not acceptable.
        """
        token = _bearer_token(authorization_header)
        now = self._clock()
        cached = self._cache.get(token)
        if cached is not None:
            principal, valid_until = cached
            if now <= valid_until:
                self._cache.move_to_end(token)
                return principal
            del self._cache[token]
            raise AuthError(Reason.TOKEN_EXPIRED, "The token has expired; obtain a new one.")
        principal = await self._verify_uncached(token, now)
        if self._cache_size > 0:
            self._cache[token] = (principal, principal.expires_at + self._leeway)
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return principal

    async def _verify_uncached(self, token: str, now: float) -> Principal:
        # Strict alphabet: Python's base64 decoder silently skips stray characters.
        if _COMPACT_JWS.fullmatch(token) is None:
            raise _invalid("The token is not a well-formed JWT; send the complete token as issued.")
        header_b64, payload_b64, signature_b64 = token.split(".")
        header = _b64url_json(header_b64)
        if not isinstance(header, dict):
            raise _invalid("The token header is not valid; send a complete token.")
        if header.get("alg") != ALGORITHM:
            raise AuthError(
                Reason.ALGORITHM_NOT_ALLOWED,
                "Only RS256-signed tokens are accepted; obtain a token from a supported issuer.",
            )
        if "crit" in header:  # RFC 7515 4.1.11: we implement no critical extensions
            raise _invalid(
                "The token uses critical header extensions this service does not "
                "support; obtain a new token."
            )
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise _invalid("The token header must name its signing key (kid); obtain a new token.")
        # jku / x5u / jwk headers are deliberately never read: the key comes only from us.
        key = await self._keys.get_key(kid) if len(kid) <= _MAX_KID_CHARS else None
        if key is None:
            raise AuthError(
                Reason.KEY_UNKNOWN,
                "The token was signed with a key this service does not know; obtain a new token.",
            )
        signature = _b64url_decode(signature_b64)
        signing_input = token[: len(header_b64) + 1 + len(payload_b64)].encode("ascii")
        if signature is None or not _RS256.verify(signing_input, key, signature):
            raise _invalid("The token signature is not valid; obtain a new token.")
        claims = _b64url_json(payload_b64)
        if not isinstance(claims, dict):
            raise _invalid("The token payload is not a JSON object; obtain a new token.")
        return self._check_claims(claims, now)

    def _check_claims(self, claims: dict[str, Any], now: float) -> Principal:
        for name in ("iss", "aud", "sub", "exp", "iat", "roles"):
            if name not in claims:
                raise AuthError(
                    Reason.CLAIM_MISSING,
                    f"The token lacks the required {name} claim; obtain a new token.",
                )
        if claims["iss"] != self._issuer:
            raise AuthError(
                Reason.ISSUER_INVALID,
                "The token comes from an issuer this service does not trust; "
                "obtain a token from the configured issuer.",
            )
        aud = claims["aud"]
        audiences = aud if isinstance(aud, list) else [aud]
        if self._audience not in audiences:
            raise AuthError(
                Reason.AUDIENCE_INVALID,
                "The token is not meant for this service; request a token for this audience.",
            )
        sub = claims["sub"]
        if not isinstance(sub, str) or not sub or len(sub) > _MAX_SUBJECT_CHARS:
            raise _invalid("The token subject is not a valid string; obtain a new token.")
        exp, iat, nbf = claims["exp"], claims["iat"], claims.get("nbf", claims["iat"])
        if not (_is_number(exp) and _is_number(iat) and _is_number(nbf)):
            raise _invalid("The token's exp, iat and nbf must be numbers; obtain a new token.")
        if now > exp + self._leeway:
            raise AuthError(Reason.TOKEN_EXPIRED, "The token has expired; obtain a new one.")
        if now < nbf - self._leeway or now < iat - self._leeway:
            raise AuthError(
                Reason.TOKEN_NOT_YET_VALID,
                "The token is not valid yet; check the clocks of the issuer and this client.",
            )
        roles = claims["roles"]
        if not isinstance(roles, list) or not all(
            isinstance(r, str) and r in KNOWN_ROLES for r in roles
        ):
            raise AuthError(
                Reason.ROLE_UNKNOWN,
                "The token's roles must be a list of known roles (viewer, "
                "operator, admin, agent); obtain a corrected token.",
            )
        return Principal(subject=sub, roles=frozenset(roles), expires_at=float(exp))


def _bearer_token(header: str | None) -> str:
    if header is None or not header.strip():
        raise AuthError(Reason.TOKEN_MISSING, "Send an Authorization: Bearer <token> header.")
    # Cheap size check before any parsing: the scheme adds a few bytes at most.
    if len(header) > MAX_TOKEN_BYTES + 64:
        raise AuthError(
            Reason.TOKEN_TOO_LARGE, "The token is larger than 8 KiB; use a token with fewer claims."
        )
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer":
        raise AuthError(
            Reason.TOKEN_MISSING,
            "Send the token with the Bearer scheme: Authorization: Bearer <token>.",
        )
    if not token:
        raise AuthError(Reason.TOKEN_MISSING, "Send a token after 'Bearer'.")
    if len(token) > MAX_TOKEN_BYTES:
        raise AuthError(
            Reason.TOKEN_TOO_LARGE, "The token is larger than 8 KiB; use a token with fewer claims."
        )
    return token
