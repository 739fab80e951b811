"""The proto3 JSON mapping on the hot path, without `json_format`'s per-field generality.

`parse` fills a message from decoded JSON and `to_dict` prints one, each compiled once per
message type into a table of plain converters. They cover what request and response bodies
mostly hold (strings, enums by name, integers, booleans, nested messages, `Timestamp`s in
responses, string maps) and give exactly `json_format`'s result there. Anything else (a
float, bytes, a repeated field, a oneof, a `null`, a non-ASCII string, an unknown field, any
error) makes them hand the whole message to `json_format`, so results, and every validation
message a client sees, stay `json_format`'s own.
"""

from __future__ import annotations

import datetime
import functools
from collections.abc import Callable
from typing import Any

from google.protobuf import descriptor, json_format
from google.protobuf.message import Message

_FD = descriptor.FieldDescriptor
_INT_TYPES = frozenset(
    {_FD.CPPTYPE_INT32, _FD.CPPTYPE_INT64, _FD.CPPTYPE_UINT32, _FD.CPPTYPE_UINT64}
)
_INT64_TYPES = frozenset({_FD.CPPTYPE_INT64, _FD.CPPTYPE_UINT64})
_EPOCH = datetime.datetime(1970, 1, 1)
# Timestamp's valid range, 0001-01-01 to 9999-12-31.
_MIN_SECONDS, _MAX_SECONDS = -62_135_596_800, 253_402_300_799
# Same limit as the gateway passes to json_format.ParseDict.
MAX_DEPTH = 32


class _Unsupported(Exception):
    """The fast path does not cover this input; json_format decides."""


# ------------------------------------------------------------------------------ parsing

# A setter takes (message, json value, depth) and fills one field or raises _Unsupported.
_Setter = Callable[[Message, Any, int], None]
_parsers: dict[str, dict[str, tuple[int, _Setter]]] = {}


def _is_special(desc: Any) -> bool:
    """Well-known types and wrappers have their own JSON forms."""
    return bool(desc.full_name.startswith("google.protobuf."))


def _parser(desc: Any) -> dict[str, tuple[int, _Setter]]:
    table = _parsers.get(desc.full_name)
    if table is None:
        table = {}
        for field in desc.fields:
            setter = _setter(field)
            if setter is not None:
                table[field.json_name] = (field.number, setter)
                table[field.name] = (field.number, setter)
        _parsers[desc.full_name] = table
    return table


def _setter(field: Any) -> _Setter | None:
    name = field.name
    if field.containing_oneof is not None or field.is_extension:
        return None
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        entry = field.message_type.fields_by_name
        key, value = entry["key"], entry["value"]
        if key.cpp_type != _FD.CPPTYPE_STRING or value.type != _FD.TYPE_STRING:
            return None

        def set_map(message: Message, value: Any, depth: int) -> None:
            if type(value) is not dict:
                raise _Unsupported
            target = getattr(message, name)
            target.clear()
            for k, v in value.items():
                if type(v) is not str or not k.isascii() or not v.isascii():
                    raise _Unsupported
                target[k] = v

        return set_map
    if field.is_repeated:
        return None
    if field.cpp_type == _FD.CPPTYPE_MESSAGE:
        sub = field.message_type
        if _is_special(sub):
            return None

        def set_message(message: Message, value: Any, depth: int) -> None:
            if type(value) is not dict or depth + 1 >= MAX_DEPTH:
                raise _Unsupported
            child = getattr(message, name)
            child.SetInParent()
            _fill(child, value, depth + 1)

        return set_message
    if field.cpp_type == _FD.CPPTYPE_ENUM:
        by_name = {v.name: v.number for v in field.enum_type.values}

        def set_enum(message: Message, value: Any, depth: int) -> None:
            number = by_name.get(value) if type(value) is str else None
            if number is None:
                raise _Unsupported
            setattr(message, name, number)

        return set_enum
    if field.type == _FD.TYPE_STRING:

        def set_string(message: Message, value: Any, depth: int) -> None:
            # Non-ASCII text goes to json_format, which rejects unpaired surrogates.
            if type(value) is not str or not value.isascii():
                raise _Unsupported
            setattr(message, name, value)

        return set_string
    if field.cpp_type in _INT_TYPES:

        def set_int(message: Message, value: Any, depth: int) -> None:
            if type(value) is not int:  # bools, floats and numeric strings: json_format
                raise _Unsupported
            setattr(message, name, value)  # out of range: ValueError, json_format decides

        return set_int
    if field.cpp_type == _FD.CPPTYPE_BOOL:

        def set_bool(message: Message, value: Any, depth: int) -> None:
            if type(value) is not bool:
                raise _Unsupported
            setattr(message, name, value)

        return set_bool
    return None


def _fill(message: Message, data: dict[str, Any], depth: int) -> None:
    table = _parser(message.DESCRIPTOR)
    seen: set[int] = set()
    for key, value in data.items():
        entry = table.get(key)
        if entry is None or value is None or entry[0] in seen:
            raise _Unsupported
        seen.add(entry[0])
        entry[1](message, value, depth)


def parse(data: dict[str, Any], message: Message) -> None:
    """`json_format.ParseDict(data, message, ignore_unknown_fields=False,
    max_recursion_depth=MAX_DEPTH)` into an empty `message`, faster where it can be.

    Raises:
        json_format.ParseError and the other errors ParseDict raises, from ParseDict itself.
    """
    if not _is_special(message.DESCRIPTOR):
        try:
            _fill(message, data, 0)
            return
        except Exception:  # any surprise: json_format has the last word
            message.Clear()
    json_format.ParseDict(data, message, ignore_unknown_fields=False, max_recursion_depth=MAX_DEPTH)


# ----------------------------------------------------------------------------- printing

_Printer = Callable[[Any], Any]
_printers: dict[str, dict[str, tuple[str, _Printer]]] = {}


@functools.lru_cache(maxsize=1024)
def _second(seconds: int) -> str:
    return (_EPOCH + datetime.timedelta(seconds=seconds)).isoformat()


def _print_timestamp(value: Any) -> Any:
    """`Timestamp.ToJsonString` with the whole-second part cached (responses carry times
    of the current second over and over)."""
    seconds, nanos = value.seconds, value.nanos
    if not (_MIN_SECONDS <= seconds <= _MAX_SECONDS and 0 <= nanos < 1_000_000_000):
        return value.ToJsonString()  # raises as json_format would
    text = _second(seconds)
    if nanos == 0:
        return text + "Z"
    if nanos % 1_000_000 == 0:
        return f"{text}.{nanos // 1_000_000:03d}Z"
    if nanos % 1000 == 0:
        return f"{text}.{nanos // 1000:06d}Z"
    return f"{text}.{nanos:09d}Z"


def _printer(desc: Any) -> dict[str, tuple[str, _Printer]]:
    table = _printers.get(desc.full_name)
    if table is None:
        table = {}
        for field in desc.fields:
            printer = _field_printer(field)
            if printer is not None:
                table[field.name] = (field.json_name, printer)
        _printers[desc.full_name] = table
    return table


def _value_printer(field: Any) -> _Printer | None:
    if field.cpp_type == _FD.CPPTYPE_MESSAGE:
        sub = field.message_type
        if sub.full_name == "google.protobuf.Timestamp":
            return _print_timestamp
        if _is_special(sub):
            return None
        return _regular
    if field.cpp_type == _FD.CPPTYPE_ENUM:
        enum = field.enum_type
        if enum.full_name == "google.protobuf.NullValue" or any(v.has_options for v in enum.values):
            return None  # null, or custom JSON names
        names = {v.number: v.name for v in enum.values}
        closed = enum.is_closed

        def print_enum(value: Any) -> Any:
            name = names.get(value)
            if name is None:
                if closed:
                    raise _Unsupported
                return value
            return name

        return print_enum
    if field.type == _FD.TYPE_STRING:
        return str
    if field.cpp_type == _FD.CPPTYPE_BOOL:
        return bool
    if field.cpp_type in _INT64_TYPES:
        return str
    if field.cpp_type in _INT_TYPES:
        return int
    return None  # floats (NaN, shortest form) and bytes (base64): json_format


def _field_printer(field: Any) -> _Printer | None:
    if field.is_extension:
        return None
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        key = field.message_type.fields_by_name["key"]
        value = _value_printer(field.message_type.fields_by_name["value"])
        if value is None or key.cpp_type == _FD.CPPTYPE_BOOL:
            return None
        convert_value = value

        def print_map(entries: Any) -> Any:
            return {str(k): convert_value(entries[k]) for k in entries}

        return print_map
    single = _value_printer(field)
    if single is None:
        return None
    if field.is_repeated:
        convert = single

        def print_list(items: Any) -> Any:
            return [convert(item) for item in items]

        return print_list
    return single


def _regular(message: Message) -> dict[str, Any]:
    table = _printer(message.DESCRIPTOR)
    out: dict[str, Any] = {}
    for field, value in message.ListFields():
        entry = table.get(field.name)
        if entry is None or field.is_extension:
            raise _Unsupported
        out[entry[0]] = entry[1](value)
    return out


def to_dict(message: Message) -> dict[str, Any]:
    """`json_format.MessageToDict(message)` (proto3 JSON: lowerCamelCase, enum names, int64
    as strings, unset fields left out), faster where it can be."""
    if not _is_special(message.DESCRIPTOR):
        try:
            return _regular(message)
        except Exception:  # any surprise: json_format has the last word
            pass
    return json_format.MessageToDict(message, always_print_fields_with_no_presence=False)
