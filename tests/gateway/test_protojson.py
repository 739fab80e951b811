"""gateway.protojson gives exactly json_format's result: the same message (or the same error
text) when parsing, and the same dict when printing, for every message of the API."""

from __future__ import annotations

import random
from typing import Any

import pytest
from aiops.anomaly.v1 import anomaly_service_pb2 as an_svc
from aiops.feedback.v1 import feedback_pb2 as fb
from aiops.feedback.v1 import feedback_service_pb2 as fb_svc
from aiops.remediation.v1 import remediation_service_pb2 as rem_svc
from aiops.telemetry.v1 import telemetry_service_pb2 as tel_svc
from google.protobuf import descriptor, json_format
from google.protobuf.message import Message

from gateway import protojson

_FD = descriptor.FieldDescriptor
MODULES = (fb_svc, an_svc, rem_svc, tel_svc)


def _message_types() -> list[type[Message]]:
    out = []
    for module in MODULES:
        for name in module.DESCRIPTOR.message_types_by_name:
            out.append(getattr(module, name))
    return out


def _scalar(field: Any, rng: random.Random) -> Any:
    """A JSON value for `field`: mostly valid, sometimes of the wrong kind."""
    pick = rng.random()
    if field.cpp_type == _FD.CPPTYPE_ENUM:
        names = [v.name for v in field.enum_type.values]
        options: list[Any] = [rng.choice(names), "NOPE", 1, "1", 2.0, True]
        return options[0] if pick < 0.7 else rng.choice(options)
    if field.type == _FD.TYPE_STRING:
        options = ["abc", "", "ünï", "\ud800", 5, None, ["x"]]
        return "plain-text" if pick < 0.7 else rng.choice(options)
    if field.cpp_type in (_FD.CPPTYPE_INT32, _FD.CPPTYPE_UINT32, _FD.CPPTYPE_INT64):
        options = [7, -1, 2**40, "12", 3.0, 3.5, True, "x"]
        return rng.randint(0, 5) if pick < 0.7 else rng.choice(options)
    if field.cpp_type == _FD.CPPTYPE_BOOL:
        return rng.choice([True, False, "true", 1])
    if field.cpp_type in (_FD.CPPTYPE_FLOAT, _FD.CPPTYPE_DOUBLE):
        return rng.choice([1.5, 2, "NaN", "x"])
    return rng.choice(["AAAA", 1])


def _json_for(desc: Any, rng: random.Random, depth: int = 0) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for field in desc.fields:
        if rng.random() < 0.4:
            continue
        key = field.json_name if rng.random() < 0.8 else field.name
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            out[key] = {"k": "v", "k2": "w"} if rng.random() < 0.8 else {"k": 3}
        elif field.cpp_type == _FD.CPPTYPE_MESSAGE:
            if field.message_type.full_name == "google.protobuf.Timestamp":
                value: Any = rng.choice(["2026-01-01T00:00:00Z", "bad", 5])
            elif field.message_type.full_name.startswith("google.protobuf.") or depth > 3:
                continue
            else:
                value = _json_for(field.message_type, rng, depth + 1)
            out[key] = [value] if field.is_repeated else value
        elif field.is_repeated:
            out[key] = [_scalar(field, rng)]
        else:
            out[key] = _scalar(field, rng)
    if rng.random() < 0.05:
        out["unknownField"] = 1
    return out


def _outcome(parse: Any, data: dict[str, Any], cls: type[Message]) -> tuple[str, Any]:
    message = cls()
    try:
        parse(data, message)
    except Exception as exc:  # compared below: same type, same text
        return type(exc).__name__, str(exc)
    return "ok", message.SerializeToString(deterministic=True)


def _reference(data: dict[str, Any], message: Message) -> None:
    json_format.ParseDict(
        data, message, ignore_unknown_fields=False, max_recursion_depth=protojson.MAX_DEPTH
    )


@pytest.mark.parametrize("cls", _message_types(), ids=lambda c: c.DESCRIPTOR.full_name)
def test_parse_matches_json_format(cls: type[Message]) -> None:
    rng = random.Random(cls.DESCRIPTOR.full_name)
    for _ in range(60):
        data = _json_for(cls.DESCRIPTOR, rng)
        assert _outcome(protojson.parse, data, cls) == _outcome(_reference, data, cls), data


@pytest.mark.parametrize("cls", _message_types(), ids=lambda c: c.DESCRIPTOR.full_name)
def test_to_dict_matches_message_to_dict(cls: type[Message]) -> None:
    rng = random.Random(cls.DESCRIPTOR.full_name + "print")
    for _ in range(60):
        message = cls()
        try:
            _reference(_json_for(cls.DESCRIPTOR, rng), message)
        except Exception:
            continue
        expected = json_format.MessageToDict(message, always_print_fields_with_no_presence=False)
        assert protojson.to_dict(message) == expected
        assert list(protojson.to_dict(message)) == list(expected)  # same key order


def test_submit_response_with_labels_and_times_prints_like_json_format() -> None:
    response = fb_svc.SubmitFeedbackResponse(
        feedback=fb.Feedback(
            name="feedback/x",
            target=fb.Target(kind=fb.TARGET_KIND_ANOMALY, id="a"),
            verdict=fb.VERDICT_CONFIRMED,
            labels={"b": "2", "a": "1"},
            author="op",
        ),
        replayed=True,
    )
    response.feedback.create_time.FromSeconds(1_800_000_000)
    response.feedback.expire_time.FromNanoseconds(1_800_000_000_123_456_789)
    assert protojson.to_dict(response) == json_format.MessageToDict(response)


def test_unknown_enum_number_in_an_open_enum_prints_as_its_number() -> None:
    message = fb.Feedback(verdict=fb.Verdict.ValueType(99))
    assert protojson.to_dict(message) == json_format.MessageToDict(message) == {"verdict": 99}


def test_a_plain_feedback_body_and_its_response_need_no_json_format(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("json_format was used")

    monkeypatch.setattr(json_format, "ParseDict", refuse)
    monkeypatch.setattr(json_format, "MessageToDict", refuse)
    message = fb.Feedback()
    body = {
        "target": {"kind": "TARGET_KIND_ANOMALY", "id": "a-1"},
        "verdict": "VERDICT_CONFIRMED",
        "rating": 4,
        "series": "latency_p95",
        "labels": {"env": "prod"},
    }
    protojson.parse(body, message)
    assert message.target.id == "a-1" and message.rating == 4
    response = fb_svc.SubmitFeedbackResponse(feedback=message)
    response.feedback.create_time.FromSeconds(1_800_000_000)
    assert protojson.to_dict(response)["feedback"]["createTime"] == "2027-01-15T08:00:00Z"


@pytest.mark.parametrize(
    ("seconds", "nanos"),
    [
        (0, 0),
        (1_800_000_000, 0),
        (1_800_000_000, 120_000_000),
        (1_800_000_000, 123_456_000),
        (1_800_000_000, 123_456_789),
        (-1, 999_999_999),
        (-62_135_596_800, 0),
        (253_402_300_799, 1),
    ],
)
def test_timestamps_print_like_json_format(seconds: int, nanos: int) -> None:
    message = fb.Feedback()
    message.create_time.seconds, message.create_time.nanos = seconds, nanos
    assert protojson.to_dict(message) == json_format.MessageToDict(message)
