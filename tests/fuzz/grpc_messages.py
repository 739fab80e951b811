"""Hypothesis strategies for any protobuf message, built from its descriptor, with hostile
values everywhere: NUL bytes and control characters in text, huge and negative numbers,
NaN and infinities, unknown enum values, out-of-range timestamps, empty and oversized
repeated fields and maps."""

from __future__ import annotations

import time
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import strategies as st

F = FieldDescriptor
_NOW = int(time.time())
# One element repeated this many times makes a batch past every documented limit.
OVERSIZED = 10_001
# Collections stop growing at about this many bytes (the servers refuse past 4 MiB anyway).
_BUDGET = 2 * 1024 * 1024

_SPECIAL_TEXT = [
    "",
    "\x00",
    "a\x00b",
    "\x00" * 64,
    "\t\r\n",
    "\x1b[31mred",
    "\x7f\x01\x02",
    "../../../etc/passwd",
    "' OR 1=1 --",
    "%00",
    "\u202e\ufeff",
    "名前",
    "x" * 300,
    "y" * 70_000,
    "feedback/",
    "anomalies/",
    "remediations/",
    "thresholds/",
    "anomalies/../../x",
    "__name__",
    "le",
]
text = st.one_of(
    st.text(max_size=30),
    st.text(alphabet=st.characters(max_codepoint=0x20), max_size=12),
    st.sampled_from(_SPECIAL_TEXT),
)
_INT_LIMITS = {
    F.TYPE_INT32: (-(2**31), 2**31 - 1),
    F.TYPE_SINT32: (-(2**31), 2**31 - 1),
    F.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    F.TYPE_INT64: (-(2**63), 2**63 - 1),
    F.TYPE_SINT64: (-(2**63), 2**63 - 1),
    F.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    F.TYPE_UINT32: (0, 2**32 - 1),
    F.TYPE_FIXED32: (0, 2**32 - 1),
    F.TYPE_UINT64: (0, 2**64 - 1),
    F.TYPE_FIXED64: (0, 2**64 - 1),
}
_DOUBLES = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([float("nan"), float("inf"), float("-inf"), 1e308, -1e308, -0.0, 5e-324]),
)


def _integers(field_type: int) -> st.SearchStrategy[int]:
    lo, hi = _INT_LIMITS[field_type]
    edges = [v for v in (lo, hi, -1, 0, 1, 50, 500, 501, 10**6) if lo <= v <= hi]
    return st.one_of(st.integers(lo, hi), st.sampled_from(edges), st.integers(max(lo, -5), 600))


def _timestamp_seconds() -> st.SearchStrategy[int]:
    return st.one_of(
        st.integers(_NOW - 40 * 86400, _NOW + 3600),
        st.sampled_from([0, -1, -62135596800, -62135596801, 253402300799, 253402300800]),
        st.integers(-(2**63), 2**63 - 1),
    )


def _scalar(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    if field.type == F.TYPE_STRING:
        return text
    if field.type == F.TYPE_BYTES:
        return st.binary(max_size=64)
    if field.type == F.TYPE_BOOL:
        return st.booleans()
    if field.type == F.TYPE_DOUBLE:
        return _DOUBLES
    if field.type == F.TYPE_FLOAT:
        return st.floats(width=32, allow_nan=True, allow_infinity=True)
    if field.type == F.TYPE_ENUM:
        top = max(v.number for v in field.enum_type.values)
        return st.integers(-3, top + 3)  # proto3 enums are open: unknown numbers arrive
    return _integers(field.type)


def _value(field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    if field.type == F.TYPE_MESSAGE:
        return messages(field.message_type, depth + 1)
    return _scalar(field)


def _size(value: Any) -> int:
    if isinstance(value, Message):
        return value.ByteSize()
    return len(value) if isinstance(value, str | bytes) else 8


def _is_map(field: FieldDescriptor) -> bool:
    return (
        field.type == F.TYPE_MESSAGE
        and field.message_type.GetOptions().map_entry
        and field.is_repeated
    )


@st.composite
def _draw_message(draw: st.DrawFn, descriptor: Descriptor, depth: int) -> Message:
    from google.protobuf import message_factory

    msg: Message = message_factory.GetMessageClass(descriptor)()
    if descriptor.full_name == "google.protobuf.Timestamp":
        msg.seconds = draw(_timestamp_seconds())  # type: ignore[attr-defined]
        msg.nanos = draw(st.one_of(st.integers(0, 999_999_999), st.sampled_from([-1, 10**9])))  # type: ignore[attr-defined]
        return msg
    if depth > 4:
        return msg
    for field in descriptor.fields:
        if not draw(st.booleans()):
            continue
        target: Any = getattr(msg, field.name)
        if _is_map(field):
            key_field = field.message_type.fields_by_name["key"]
            value_field = field.message_type.fields_by_name["value"]
            size = draw(st.one_of(st.integers(0, 4), st.sampled_from([65, 300])))
            keys = draw(st.lists(_scalar(key_field), min_size=0, max_size=4))
            keys += [f"k{i}" for i in range(size)]
            for key in keys:
                value = draw(_value(value_field, depth))
                if _size(value) * len(keys) > _BUDGET:
                    continue
                if value_field.type == F.TYPE_MESSAGE:
                    target[key].CopyFrom(value)
                else:
                    target[key] = value
        elif field.is_repeated:
            one = draw(_value(field, depth))
            count = draw(st.one_of(st.integers(0, 3), st.just(OVERSIZED if depth == 0 else 40)))
            count = min(count, _BUDGET // max(1, _size(one)))
            if field.type == F.TYPE_MESSAGE:
                for _ in range(count):
                    target.add().CopyFrom(one)
            else:
                target.extend([one] * count + draw(st.lists(_value(field, depth), max_size=3)))
        elif field.type == F.TYPE_MESSAGE:
            target.CopyFrom(draw(messages(field.message_type, depth + 1)))
        else:
            setattr(msg, field.name, draw(_scalar(field)))
    return msg


def messages(descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
    """Any message of `descriptor`'s type (nested messages down to depth 4)."""
    return _draw_message(descriptor, depth)
