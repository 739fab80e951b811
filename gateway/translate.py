"""REST+JSON <-> protobuf: bodies through the proto3 JSON mapping, query strings by table."""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeVar, cast

from google.protobuf import json_format, timestamp_pb2
from google.protobuf.message import Message

from gateway import protojson
from services.kit import errors

if TYPE_CHECKING:
    from google.protobuf.internal.enum_type_wrapper import _EnumTypeWrapper

M = TypeVar("M", bound=Message)
EnumValue = TypeVar("EnumValue", bound=int)

_AT_PATH = re.compile(r" at (?:\"?)[A-Za-z0-9_]+\.([A-Za-z0-9_.\[\]]+?)\.?\"?(?:\.|$)")
_FIELD = re.compile(r"Failed to parse (\w+) field")
_NO_FIELD = re.compile(r'has no field named "([^"]+)"')


def _violation(
    field: str, description: str, reason: str = "BODY_INVALID"
) -> errors.InvalidArgument:
    return errors.invalid([errors.FieldViolation(field, description)], reason)


def parse_body(raw: bytes, message: M, root: str = "body") -> M:
    """Fills `message` from a JSON body; 400 naming the field when it does not fit."""
    if not raw.strip():
        raise _violation(root, "a JSON object is required", "BODY_MISSING")
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        raise _violation(root, "is not valid JSON", "BODY_MALFORMED") from None
    if not isinstance(data, dict):
        raise _violation(root, "must be a JSON object")
    try:
        protojson.parse(data, message)
    except (json_format.ParseError, RecursionError, TypeError, ValueError) as exc:
        field, description = _describe(str(exc))
        raise _violation(field, description) from None
    return message


def _describe(text: str) -> tuple[str, str]:
    first_line = text.splitlines()[0] if text else "invalid value"
    unknown = _NO_FIELD.search(first_line)
    if unknown:
        return unknown.group(1)[:100], "is not a known field"
    at = _AT_PATH.search(first_line)
    leaf = _FIELD.search(first_line)
    field = at.group(1) if at else leaf.group(1) if leaf else "body"
    description = re.sub(r"^Failed to parse \w+ field: ", "", first_line)
    description = re.sub(r" at [\w.\"]+\.?$", "", description).rstrip(".")
    return field[:100], description[:200] or "invalid value"


def to_json(message: Message) -> dict[str, Any]:
    """The proto3 JSON mapping: lowerCamelCase names, enum names, int64 as strings."""
    return protojson.to_dict(message)


def query_int(query: Mapping[str, str], name: str, default: int = 0) -> int:
    value = query.get(name)
    if value is None or value == "":
        return default
    try:
        parsed = int(value)
    except ValueError:
        raise _violation(name, "must be an integer", "QUERY_INVALID") from None
    if not -(2**31) <= parsed < 2**31:
        raise _violation(name, "is out of range", "QUERY_INVALID")
    return parsed


def query_bool(query: Mapping[str, str], name: str) -> bool:
    value = query.get(name, "").lower()
    if value in ("", "false", "0"):
        return False
    if value in ("true", "1"):
        return True
    raise _violation(name, "must be true or false", "QUERY_INVALID")


def query_enum(
    query: Mapping[str, str], name: str, enum: _EnumTypeWrapper[EnumValue], prefix: str
) -> EnumValue:
    """An enum by its full name (`VERDICT_HELPFUL`) or short name (`helpful`); 0 if absent."""
    value = query.get(name, "")
    if not value:
        return cast(EnumValue, 0)
    full = value.upper() if value.upper().startswith(prefix) else f"{prefix}{value.upper()}"
    try:
        number = enum.Value(full)
    except ValueError:
        # An enum type wrapper, not a dict: it has keys() but cannot be iterated.
        names = [n for n in enum.keys() if not n.endswith("_UNSPECIFIED")]  # noqa: SIM118
        raise _violation(name, f"must be one of {', '.join(names)}", "QUERY_INVALID") from None
    if number == 0:
        raise _violation(name, "must not be UNSPECIFIED", "QUERY_INVALID")
    return number


def query_time(query: Mapping[str, str], name: str, out: timestamp_pb2.Timestamp) -> bool:
    """Sets `out` from an RFC 3339 time; False when the parameter is absent."""
    value = query.get(name, "")
    if not value:
        return False
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise _violation(name, "must be an RFC 3339 time", "QUERY_INVALID") from None
    if parsed.tzinfo is None:
        raise _violation(name, "must include a time zone offset", "QUERY_INVALID")
    try:
        out.FromDatetime(parsed.astimezone(dt.UTC))
    except (OverflowError, ValueError):  # 0001-01-01T00:00+01:00 is before year 1 in UTC
        raise _violation(name, "must be a time from year 1 to 9999", "QUERY_INVALID") from None
    return True


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_known(query: Mapping[str, str], known: frozenset[str]) -> None:
    """Unknown query parameters are refused rather than silently ignored, and no value may
    carry control characters (a NUL would otherwise reach a database as text)."""
    unknown = sorted(set(query) - known)
    if unknown:
        raise _violation(unknown[0][:100], "is not a known query parameter", "QUERY_INVALID")
    for name, value in query.items():
        if _CONTROL.search(value):
            raise _violation(name, "must not contain control characters", "QUERY_INVALID")


def parse_maintenance(raw: bytes) -> tuple[bool, str, float | None]:
    """The body of `POST /api/v1/aiops/maintenance`: enabled, reason, optional endTime."""
    if not raw.strip():
        raise _violation("body", "a JSON object is required", "BODY_MISSING")
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        raise _violation("body", "is not valid JSON", "BODY_MALFORMED") from None
    if not isinstance(data, dict):
        raise _violation("body", "must be a JSON object")
    unknown = sorted(set(data) - {"enabled", "reason", "endTime"})
    if unknown:
        raise _violation(unknown[0][:100], "is not a known field")
    enabled, reason = data.get("enabled"), data.get("reason", "")
    if not isinstance(enabled, bool):
        raise _violation("enabled", "must be true or false")
    if not isinstance(reason, str):
        raise _violation("reason", "must be a string")
    end_time = None
    if data.get("endTime") is not None:
        out = timestamp_pb2.Timestamp()
        if not isinstance(data["endTime"], str):
            raise _violation("endTime", "must be an RFC 3339 time")
        query_time({"endTime": data["endTime"]}, "endTime", out)
        end_time = out.seconds + out.nanos / 1e9
    return enabled, reason, end_time
