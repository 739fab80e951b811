"""RS256 signing keyring stored in a directory, its JWKS, and token minting.

Layout of the keyring directory (``AIOPS_GATEWAY_JWT_KEYRING_DIR``; locally
``<state dir>/keys``; in a cluster a mounted Secret, possibly read-only)::

    manifest.json    {"version": 1, "active_kid": ..., "max_token_ttl_seconds": ...,
                      "keys": [{"kid": ..., "created_at": ..., "retired_at": ... | null}]}
    <kid>.pem        RSA 2048 private key, PKCS#8 PEM, mode 0600

Every file is written to a temporary file in the same directory and moved into place with
``os.replace``, and ``manifest.json`` is written last: it is the commit point, so a gateway
reading concurrently sees either the old keyring or the new one, never half of either.
A retired key stays published until ``retired_at + max_token_ttl + 60 s`` so every token it
signed has expired (with the verifier's leeway) before it disappears from the JWKS.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import logging
import math
import os
import re
import secrets
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jwt
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
_LOCK_NAME = ".keyring.lock"
_MANIFEST_VERSION = 1
KEY_SIZE_BITS = 2048
#: Must match the verifier's leeway: a token may be accepted up to this long after its exp.
PUBLISH_LEEWAY_SECONDS = 60.0
DEFAULT_MAX_TOKEN_TTL_SECONDS = 3600.0
# kids become file names: only this alphabet, so no kid can name a path outside the directory.
_KID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

Clock = Callable[[], float]
RSAPublicKey = rsa.RSAPublicKey


class KeyringError(Exception):
    """The keyring directory is missing, empty, unreadable, inconsistent or not writable."""


@dataclass(frozen=True, slots=True)
class KeyMeta:
    """One key's entry in the manifest (times are Unix seconds)."""

    kid: str
    created_at: float
    retired_at: float | None


@dataclass(frozen=True, slots=True)
class _Entry:
    meta: KeyMeta
    private_key: rsa.RSAPrivateKey
    public_key: rsa.RSAPublicKey
    jwk: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class _State:
    """An immutable snapshot; reloads build a new one and swap it in with one assignment."""

    active_kid: str
    max_token_ttl_seconds: float
    entries: Mapping[str, _Entry]
    signature: tuple[int, int, int, int] | None


class Keyring:
    """RS256 private keys kept in a directory, one of them active for signing.

    Create with :meth:`load_or_create` (gateway startup, local development) or :meth:`load`
    (read-only use). Thread-safe for readers: state is an immutable snapshot, so
    :meth:`reload_if_changed` may run in a worker thread while the event loop verifies.
    """

    def __init__(
        self, path: Path, state: _State, *, ttl_override: float | None, clock: Clock
    ) -> None:
        self._path = path
        self._state = state
        self._ttl_override = ttl_override
        self._clock = clock

    # -- construction ------------------------------------------------------------------

    @classmethod
    def load_or_create(
        cls, path: Path, *, max_token_ttl_seconds: float, clock: Clock = time.time
    ) -> Keyring:
        """Load the keyring at ``path``, creating the directory and a first key if empty.

        Args:
            path: The keyring directory.
            max_token_ttl_seconds: Longest lifetime of a token signed by this keyring; decides
                how long a retired key stays published.
            clock: Wall clock in Unix seconds (injectable for tests).

        Raises:
            KeyringError: The directory is empty and cannot be written, or is inconsistent.
        """
        _check_ttl(max_token_ttl_seconds)
        if not (path / MANIFEST_NAME).exists():
            try:
                path.mkdir(mode=0o700, parents=True, exist_ok=True)
                with _locked(path):
                    # Another gateway worker may have created it while we waited for the lock.
                    if not (path / MANIFEST_NAME).exists():
                        kid = _new_kid(clock())
                        _write_private_key(path, kid, _generate_key())
                        metas = [KeyMeta(kid=kid, created_at=clock(), retired_at=None)]
                        _write_manifest(path, kid, max_token_ttl_seconds, metas)
                        log.info("keyring created", extra={"keyring_dir": str(path), "kid": kid})
            except OSError as exc:
                raise KeyringError(
                    f"keyring directory {path} is empty and cannot be written ({exc.strerror}); "
                    "mount a keyring or make the directory writable"
                ) from exc
        return cls(
            path,
            _read_state(path, max_token_ttl_seconds),
            ttl_override=max_token_ttl_seconds,
            clock=clock,
        )

    @classmethod
    def load(
        cls, path: Path, *, max_token_ttl_seconds: float | None = None, clock: Clock = time.time
    ) -> Keyring:
        """Load an existing keyring without writing anything.

        Args:
            path: The keyring directory.
            max_token_ttl_seconds: Overrides the value recorded in the manifest.
            clock: Wall clock in Unix seconds (injectable for tests).

        Raises:
            KeyringError: The directory has no manifest or is inconsistent.
        """
        if max_token_ttl_seconds is not None:
            _check_ttl(max_token_ttl_seconds)
        if not (path / MANIFEST_NAME).exists():
            raise KeyringError(
                f"keyring directory {path} has no {MANIFEST_NAME}; "
                "create one with Keyring.load_or_create or mount the keyring secret"
            )
        return cls(
            path,
            _read_state(path, max_token_ttl_seconds),
            ttl_override=max_token_ttl_seconds,
            clock=clock,
        )

    # -- reading -----------------------------------------------------------------------

    @property
    def path(self) -> Path:
        """The keyring directory."""
        return self._path

    @property
    def active_kid(self) -> str:
        """The kid new tokens are signed with."""
        return self._state.active_kid

    @property
    def max_token_ttl_seconds(self) -> float:
        """Longest token lifetime this keyring accepts for minting."""
        return self._state.max_token_ttl_seconds

    def keys(self) -> list[KeyMeta]:
        """Every key in the manifest, published or not, oldest first."""
        return sorted((e.meta for e in self._state.entries.values()), key=lambda m: m.created_at)

    def public_key(self, kid: str) -> RSAPublicKey | None:
        """The public key for ``kid`` if it is known and still published, else None."""
        state = self._state
        entry = state.entries.get(kid)
        if entry is None or not _published(entry.meta, state.max_token_ttl_seconds, self._clock()):
            return None
        return entry.public_key

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        """The RFC 7517 JWK Set of every key still published (active one first)."""
        state = self._state
        now = self._clock()
        entries = sorted(
            state.entries.values(),
            key=lambda e: (e.meta.kid != state.active_kid, -e.meta.created_at),
        )
        return {
            "keys": [
                dict(e.jwk) for e in entries if _published(e.meta, state.max_token_ttl_seconds, now)
            ]
        }

    def sign(self, claims: Mapping[str, object]) -> str:
        """Sign ``claims`` with the active key (RS256, header ``kid`` and ``typ: JWT``)."""
        state = self._state
        entry = state.entries[state.active_kid]
        return jwt.encode(
            dict(claims),
            entry.private_key,
            algorithm="RS256",
            headers={"kid": state.active_kid, "typ": "JWT"},
        )

    def reload_if_changed(self) -> bool:
        """Reload from disk if the manifest changed (cheap: one ``stat``).

        Another process (the CLI, or a Secret update) may have rotated the keys. A failed
        reload keeps the current keys, logs a warning and is retried on the next call.

        Returns:
            True if a new keyring state was loaded.
        """
        try:
            signature = _stat_signature(self._path)
        except OSError:
            log.warning("keyring manifest unreadable", extra={"keyring_dir": str(self._path)})
            return False
        if signature == self._state.signature:
            return False
        try:
            self._state = _read_state(self._path, self._ttl_override)
        except KeyringError as exc:
            log.warning(
                "keyring reload failed", extra={"keyring_dir": str(self._path), "error": str(exc)}
            )
            return False
        log.info(
            "keyring reloaded",
            extra={"keyring_dir": str(self._path), "active_kid": self._state.active_kid},
        )
        return True

    # -- writing -----------------------------------------------------------------------

    def rotate(self) -> str:
        """Make a new key active; retire the old one and delete keys past their window.

        Runs under an exclusive lock and starts from the manifest on disk, so rotations by
        several processes never lose a key.

        Returns:
            The new active kid.

        Raises:
            KeyringError: The directory is read-only or inconsistent.
        """
        try:
            with _locked(self._path):
                current = _read_state(self._path, self._ttl_override)
                ttl = current.max_token_ttl_seconds
                now = self._clock()
                kid = _new_kid(now)
                _write_private_key(self._path, kid, _generate_key())
                metas: list[KeyMeta] = []
                pruned: list[str] = []
                for entry in current.entries.values():
                    meta = entry.meta
                    if meta.kid == current.active_kid:
                        meta = KeyMeta(kid=meta.kid, created_at=meta.created_at, retired_at=now)
                    if _published(meta, ttl, now):
                        metas.append(meta)
                    else:
                        pruned.append(meta.kid)
                metas.append(KeyMeta(kid=kid, created_at=now, retired_at=None))
                _write_manifest(self._path, kid, ttl, metas)
                # Only after the manifest no longer names them: readers never miss a live key.
                for old in pruned:
                    with contextlib.suppress(FileNotFoundError):
                        (self._path / f"{old}.pem").unlink()
                self._state = _read_state(self._path, self._ttl_override)
        except OSError as exc:
            raise KeyringError(
                f"cannot rotate keyring in {self._path} ({exc.strerror}); "
                "rotate where the keyring is writable and redeploy the secret"
            ) from exc
        log.info(
            "keyring rotated",
            extra={
                "keyring_dir": str(self._path),
                "kid": kid,
                "retired_kid": current.active_kid,
                "pruned_kids": pruned,
            },
        )
        return kid


def mint_token(
    keyring: Keyring,
    *,
    subject: str,
    roles: Sequence[str],
    issuer: str,
    audience: str,
    ttl_seconds: float,
    now: float | None = None,
) -> str:
    """Mint an RS256 access token signed by the keyring's active key.

    Args:
        keyring: Signs the token.
        subject: ``sub``, who the token speaks for.
        roles: ``roles`` claim (checked by the verifier, not here).
        issuer: ``iss``.
        audience: ``aud``.
        ttl_seconds: Lifetime; at most the keyring's ``max_token_ttl_seconds`` so the key stays
            published for as long as the token lives.
        now: Issue time in Unix seconds (default: the current time).

    Raises:
        ValueError: Empty subject, or a TTL outside (0, max_token_ttl_seconds].
    """
    if not subject:
        raise ValueError("subject must not be empty")
    if not (0 < ttl_seconds <= keyring.max_token_ttl_seconds):
        raise ValueError(
            f"ttl_seconds must be in (0, {keyring.max_token_ttl_seconds}] "
            "so the signing key outlives the token"
        )
    issued = time.time() if now is None else now
    iat = int(issued)
    claims: dict[str, object] = {
        "iss": issuer,
        "aud": audience,
        "sub": subject,
        "iat": iat,
        "nbf": iat,
        "exp": int(issued + ttl_seconds),
        "jti": uuid.uuid4().hex,
        "roles": list(roles),
    }
    return keyring.sign(claims)


# -- helpers -----------------------------------------------------------------------------


def _check_ttl(ttl: float) -> None:
    if not (math.isfinite(ttl) and ttl > 0):
        raise ValueError("max_token_ttl_seconds must be a positive number")


def _published(meta: KeyMeta, max_ttl: float, now: float) -> bool:
    if meta.retired_at is None:
        return True
    return now <= meta.retired_at + max_ttl + PUBLISH_LEEWAY_SECONDS


def _new_kid(now: float) -> str:
    stamp = datetime.fromtimestamp(now, tz=UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{secrets.token_hex(4)}"


def _generate_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=KEY_SIZE_BITS)


def _b64url_uint(value: int) -> str:
    raw = value.to_bytes((value.bit_length() + 7) // 8 or 1, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _jwk(kid: str, public_key: rsa.RSAPublicKey) -> dict[str, str]:
    numbers = public_key.public_numbers()
    return {
        "kty": "RSA",
        "use": "sig",
        "alg": "RS256",
        "kid": kid,
        "n": _b64url_uint(numbers.n),
        "e": _b64url_uint(numbers.e),
    }


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    fd = os.open(path / _LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the flock


def _atomic_write(path: Path, name: str, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=path)  # mode 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path / name)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def _write_private_key(path: Path, kid: str, key: rsa.RSAPrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _atomic_write(path, f"{kid}.pem", pem)


def _write_manifest(path: Path, active_kid: str, max_ttl: float, metas: list[KeyMeta]) -> None:
    doc = {
        "version": _MANIFEST_VERSION,
        "active_kid": active_kid,
        "max_token_ttl_seconds": max_ttl,
        "keys": [
            {"kid": m.kid, "created_at": m.created_at, "retired_at": m.retired_at} for m in metas
        ],
    }
    _atomic_write(path, MANIFEST_NAME, (json.dumps(doc, indent=2) + "\n").encode("utf-8"))


def _stat_signature(path: Path) -> tuple[int, int, int, int]:
    # os.replace gives the manifest a new inode, and a Kubernetes Secret update swaps a
    # symlink (stat follows it), so inode + mtime + size catches every rewrite.
    st = os.stat(path / MANIFEST_NAME)
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise KeyringError(f"manifest field {what} must be a number")
    return float(value)


def _parse_manifest(raw: bytes) -> tuple[str, float | None, list[KeyMeta]]:
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise KeyringError(f"{MANIFEST_NAME} is not valid JSON") from exc
    if not isinstance(doc, dict) or doc.get("version") != _MANIFEST_VERSION:
        raise KeyringError(f"{MANIFEST_NAME} must be an object with version {_MANIFEST_VERSION}")
    active = doc.get("active_kid")
    keys = doc.get("keys")
    if not isinstance(active, str) or not isinstance(keys, list):
        raise KeyringError(f"{MANIFEST_NAME} needs active_kid and keys")
    ttl_raw = doc.get("max_token_ttl_seconds")
    ttl = None if ttl_raw is None else _number(ttl_raw, "max_token_ttl_seconds")
    metas: list[KeyMeta] = []
    for item in keys:
        if not isinstance(item, dict):
            raise KeyringError(f"{MANIFEST_NAME} keys must be objects")
        kid = item.get("kid")
        if not isinstance(kid, str) or not _KID_RE.match(kid):
            raise KeyringError(f"{MANIFEST_NAME} has a kid outside [A-Za-z0-9_-]{{1,64}}")
        retired = item.get("retired_at")
        metas.append(
            KeyMeta(
                kid=kid,
                created_at=_number(item.get("created_at"), "created_at"),
                retired_at=None if retired is None else _number(retired, "retired_at"),
            )
        )
    if active not in {m.kid for m in metas}:
        raise KeyringError(f"{MANIFEST_NAME} active_kid is not among its keys")
    return active, ttl, metas


def _load_private_key(path: Path, kid: str) -> rsa.RSAPrivateKey:
    file = path / f"{kid}.pem"
    st = os.stat(file)
    if st.st_mode & 0o077:
        log.warning(
            "keyring private key readable by group or others",
            extra={"file": str(file), "mode": oct(st.st_mode & 0o777)},
        )
    key = serialization.load_pem_private_key(file.read_bytes(), password=None)
    if not isinstance(key, rsa.RSAPrivateKey) or key.key_size < KEY_SIZE_BITS:
        raise KeyringError(f"key {kid} is not an RSA key of at least {KEY_SIZE_BITS} bits")
    return key


def _read_state(path: Path, ttl_override: float | None) -> _State:
    try:
        signature = _stat_signature(path)
        active, manifest_ttl, metas = _parse_manifest((path / MANIFEST_NAME).read_bytes())
    except OSError as exc:
        raise KeyringError(f"cannot read {path / MANIFEST_NAME} ({exc.strerror})") from exc
    if ttl_override is not None:
        ttl = ttl_override
    else:
        ttl = manifest_ttl if manifest_ttl is not None else DEFAULT_MAX_TOKEN_TTL_SECONDS
    entries: dict[str, _Entry] = {}
    for meta in metas:
        try:
            private = _load_private_key(path, meta.kid)
        except (OSError, ValueError, TypeError, UnsupportedAlgorithm) as exc:
            if meta.kid == active:
                raise KeyringError(f"cannot load active key {meta.kid}: {exc}") from exc
            # A retired key deleted by a concurrent rotate is past its window anyway.
            log.warning("keyring retired key unreadable", extra={"kid": meta.kid})
            continue
        public = private.public_key()
        entries[meta.kid] = _Entry(
            meta=meta, private_key=private, public_key=public, jwk=_jwk(meta.kid, public)
        )
    return _State(
        active_kid=active, max_token_ttl_seconds=ttl, entries=entries, signature=signature
    )
