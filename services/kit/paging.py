"""List pagination as STYLE.md fixes it: a page size of 0 means 50, more than 500 is capped,
negative is INVALID_ARGUMENT; page tokens are opaque base64url JSON holding a keyset cursor
and a fingerprint of the filter they were made for."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from services.kit import errors

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
_MAX_TOKEN = 4096


def page_size(requested: int, field_name: str = "page_size") -> int:
    if requested < 0:
        raise errors.invalid(
            [errors.FieldViolation(field_name, "must not be negative")], "PAGE_SIZE_INVALID"
        )
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def encode_token(cursor: Any, fingerprint: str) -> str:
    """A token for `cursor` (any JSON value) under the filter `fingerprint`."""
    raw = json.dumps({"c": cursor, "f": fingerprint}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def invalid_token(field_name: str = "page_token") -> errors.InvalidArgument:
    return errors.invalid(
        [errors.FieldViolation(field_name, "is not a token this listing returned")],
        "PAGE_TOKEN_INVALID",
    )


def decode_token(token: str, fingerprint: str, field_name: str = "page_token") -> Any:
    """The cursor inside a token (None for no token). INVALID_ARGUMENT when the token is
    malformed or was made for another filter; callers check the cursor's own shape and
    raise `invalid_token()` when it is wrong."""
    if not token:
        return None
    if len(token) > _MAX_TOKEN:
        raise invalid_token(field_name)
    try:
        raw = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise invalid_token(field_name) from exc
    if not isinstance(raw, dict) or "c" not in raw or not isinstance(raw.get("f"), str):
        raise invalid_token(field_name)
    if raw.get("f") != fingerprint:
        raise errors.invalid(
            [errors.FieldViolation(field_name, "was made for a different filter")],
            "PAGE_TOKEN_FILTER_MISMATCH",
        )
    return raw["c"]
