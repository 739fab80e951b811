"""Property-based fuzzing of the REST <-> protobuf translation: whatever arrives, the
gateway's parsers either produce a message or raise InvalidArgument naming a field; they
never raise anything else (which would be a 500)."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import routes, translate
from services.kit import errors

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=50),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=20), children, max_size=5)
    ),
    max_leaves=30,
)
# Bodies shaped like a feedback, with hostile values in every place.
feedback_like = st.fixed_dictionaries(
    {},
    optional={
        "target": st.one_of(
            json_values,
            st.fixed_dictionaries({}, optional={"kind": json_values, "id": json_values}),
        ),
        "verdict": st.one_of(
            json_values,
            st.sampled_from(
                ["VERDICT_CONFIRMED", "VERDICT_HELPFUL", "VERDICT_UNSPECIFIED", "verdict_confirmed"]
            ),
        ),
        "rating": json_values,
        "comment": json_values,
        "labels": st.one_of(json_values, st.dictionaries(st.text(max_size=70), json_values)),
        "createTime": json_values,
        "name": json_values,
    },
)
queries = st.dictionaries(
    st.sampled_from(
        [
            "pageSize",
            "pageToken",
            "verdict",
            "targetKind",
            "targetId",
            "startTime",
            "endTime",
            "all",
            "name",
            "bogus",
        ]
    ),
    st.text(max_size=40),
    max_size=6,
)


def _only_invalid_argument(call: Any) -> None:
    try:
        call()
    except errors.InvalidArgument as exc:
        assert exc.violations, "an InvalidArgument must name the field at fault"


@settings(max_examples=400, deadline=None)
@given(body=st.one_of(feedback_like.map(lambda d: json.dumps(d).encode()), st.binary(max_size=200)))
def test_feedback_bodies_parse_or_name_the_field(body: bytes) -> None:
    route = next(r for r in routes.ROUTES if r.method == "POST" and r.rpc == "SubmitFeedback")
    _only_invalid_argument(lambda: route.build({}, {}, body, {}))


@settings(max_examples=300, deadline=None)
@given(query=queries)
def test_query_strings_parse_or_name_the_field(query: dict[str, str]) -> None:
    for route in routes.ROUTES:
        if route.method in ("GET", "DELETE") and route.backend == "feedback":
            _only_invalid_argument(
                lambda r=route: (
                    translate.check_known(query, r.known_query()),
                    r.build(query, {"feedback": "x"}, b"", {}),
                )
            )


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=300) | json_values.map(lambda v: json.dumps(v).encode()))
def test_maintenance_bodies_parse_or_name_the_field(body: bytes) -> None:
    _only_invalid_argument(lambda: translate.parse_maintenance(body))
