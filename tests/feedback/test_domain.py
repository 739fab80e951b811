"""Pure logic of the feedback service: validation, ids, page sizes and tokens."""

from __future__ import annotations

import pytest

from services.feedback import domain
from services.kit import errors, ids, paging

K, V = domain.TargetKind, domain.Verdict


def draft(**overrides: object) -> domain.Draft:
    base: dict[str, object] = {
        "target_kind": K.ANOMALY,
        "target_id": "a-1",
        "verdict": V.CONFIRMED,
    }
    base.update(overrides)
    return domain.Draft(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"target_kind": None}, "feedback.target.kind"),
        ({"target_id": ""}, "feedback.target.id"),
        ({"target_id": "x" * 129}, "feedback.target.id"),
        ({"target_id": "a\nb"}, "feedback.target.id"),
        ({"verdict": None}, "feedback.verdict"),
        ({"verdict": V.HELPFUL}, "feedback.verdict"),
        ({"target_kind": K.REMEDIATION, "verdict": V.CONFIRMED}, "feedback.verdict"),
        ({"rating": 6}, "feedback.rating"),
        ({"rating": -1}, "feedback.rating"),
        ({"comment": "c" * 2001}, "feedback.comment"),
        ({"series": "s" * 201}, "feedback.series"),
        ({"detector": "d" * 101}, "feedback.detector"),
        ({"action": "a\x00"}, "feedback.action"),
        ({"signature": "g" * 201}, "feedback.signature"),
        ({"labels": {f"k{i}": "v" for i in range(17)}}, "feedback.labels"),
        ({"labels": {"9bad": "v"}}, "feedback.labels"),
        ({"labels": {"k" * 64: "v"}}, "feedback.labels"),
        ({"labels": {"ok": "v" * 257}}, "feedback.labels[ok]"),
    ],
)
def test_validate_names_the_field_at_fault(overrides: dict[str, object], field: str) -> None:
    fields = [v.field for v in domain.validate(draft(**overrides))]
    assert fields == [field]


def test_validate_accepts_a_complete_feedback() -> None:
    full = draft(
        rating=5,
        comment="c" * 2000,
        series="latency_p95",
        detector="zscore",
        action="",
        signature="latency_p95:up:spike",
        labels={"env": "prod", "team.name": "sre"},
    )
    assert domain.validate(full) == []


def test_ids_are_time_ordered_and_unique() -> None:
    made = [ids.new_id(1_700_000_000 + i / 1000) for i in range(1000)]
    assert made == sorted(made)
    assert len(set(made)) == 1000
    assert all(len(i) == 26 and ids.valid(i) for i in made)
    assert domain.parse_name(f"feedback/{made[0]}") == made[0]


@pytest.mark.parametrize(
    "name", ["", "feedback/", "feedback/short", "anomalies/01J0000000000000000000000A", "x/y/z"]
)
def test_parse_name_rejects_malformed_names(name: str) -> None:
    with pytest.raises(errors.InvalidArgument) as caught:
        domain.parse_name(name)
    assert caught.value.reason == "FEEDBACK_NAME_INVALID"


@pytest.mark.parametrize(("requested", "expected"), [(0, 50), (1, 1), (500, 500), (501, 500)])
def test_page_size_defaults_and_caps(requested: int, expected: int) -> None:
    assert paging.page_size(requested) == expected


def test_page_size_rejects_negative() -> None:
    with pytest.raises(errors.InvalidArgument) as caught:
        paging.page_size(-1)
    assert caught.value.violations[0].field == "page_size"


def test_page_token_round_trips_and_is_bound_to_its_filter() -> None:
    flt = domain.Filter(verdict=V.CONFIRMED)
    cursor = "1700000000000:01J00000000000000000000000"
    token = domain.encode_token(cursor, flt)
    assert domain.decode_token(token, flt) == cursor
    with pytest.raises(errors.InvalidArgument) as caught:
        domain.decode_token(token, domain.Filter())
    assert caught.value.reason == "PAGE_TOKEN_FILTER_MISMATCH"


@pytest.mark.parametrize("token", ["xyz", "!!!", "e30", "a" * 600, "eyJjIjogMX0"])
def test_page_token_rejects_garbage(token: str) -> None:
    with pytest.raises(errors.InvalidArgument) as caught:
        domain.decode_token(token, domain.Filter())
    assert caught.value.reason == "PAGE_TOKEN_INVALID"


def test_filter_matches_on_every_field() -> None:
    item = domain.Feedback(
        id=ids.new_id(100.0),
        target_kind=K.ANOMALY,
        target_id="a",
        verdict=V.CONFIRMED,
        rating=0,
        comment="",
        series="",
        detector="",
        action="",
        signature="",
        labels={},
        author="me",
        create_time=100.0,
        expire_time=200.0,
    )
    assert domain.Filter().matches(item)
    assert domain.Filter(target_kind=K.ANOMALY, target_id="a").matches(item)
    assert not domain.Filter(target_kind=K.ALERT).matches(item)
    assert not domain.Filter(target_kind=K.ANOMALY, target_id="b").matches(item)
    assert not domain.Filter(verdict=V.FALSE_POSITIVE).matches(item)
    assert domain.Filter(start_time=100.0, end_time=100.1).matches(item)
    assert not domain.Filter(end_time=100.0).matches(item)
    assert not domain.Filter(start_time=100.1).matches(item)
