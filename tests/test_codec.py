"""The one JSON codec of Ekka's records (`ekka.codec`): exact round trips, checked fields,
errors that name the record, the field and what is wrong."""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest

from ekka import codec
from ekka.codec import JsonRecord, absent
from ekka.errors import ReportFormatError


class Colour(str, enum.Enum):
    RED = "red"
    BLUE = "blue"


@dataclass(frozen=True, slots=True)
class Inner(JsonRecord):
    name: str
    ratio: float
    line: int | None = None


@dataclass(frozen=True)
class Outer(JsonRecord):
    JSON_ERROR = ReportFormatError

    label: str = field(metadata=absent("unnamed"))
    inners: tuple[Inner, ...] = ()
    best: Inner | None = None
    pairs: tuple[tuple[str, int], ...] = ()
    timings: Mapping[str, float] = field(default_factory=dict)
    anything: Mapping[str, Any] = field(default_factory=dict)
    colour: Colour = Colour.RED


FULL = Outer(
    "x",
    (Inner("a", math.inf, 3), Inner("b", -math.inf)),
    Inner("c", 0.5),
    (("p", 1),),
    {"phase": 1.5},
    {"nested": [1, {"k": None}]},
    Colour.BLUE,
)


def test_a_record_round_trips_through_json_text() -> None:
    data = json.loads(json.dumps(FULL.to_json(), allow_nan=False))  # JSON without inf
    assert data["inners"][0]["ratio"] == "inf" and data["colour"] == "blue"
    assert Outer.from_json(data) == FULL


def test_nan_round_trips_as_a_string() -> None:
    back = Inner.from_json(json.loads(json.dumps(Inner("n", math.nan).to_json())))
    assert math.isnan(back.ratio)


def test_absent_keys_read_as_their_defaults() -> None:
    assert Outer.from_json({}) == Outer("unnamed")


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (
            {"inners": [{"name": "a", "ratio": "lots"}]},
            "at inners[0] (Inner): field 'ratio' is 'lots', not a number",
        ),
        ({"inners": [{"ratio": 1.0}]}, "at inners[0] (Inner): missing field 'name'"),
        ({"best": {"name": "a", "ratio": 1, "line": 2.5}}, "at best (Inner): field 'line' is 2.5"),
        ({"best": 7}, "field 'best' is 7, not an object (Inner)"),
        ({"pairs": [["p", "1"]]}, "field 'pairs' at [0] at [1] is '1', not int"),
        ({"pairs": [["p"]]}, "field 'pairs' at [0] is ['p'], not a list of 2"),
        ({"label": True}, "field 'label' is True, not str"),
        ({"timings": {"phase": None}}, "field 'timings' at ['phase'] is None, not a number"),
        ({"colour": "green"}, "field 'colour' is 'green', not one of 'red', 'blue'"),
        ({"extra": 1}, "unknown field(s) extra"),
        ([], "not an object (list: [])"),
    ],
)
def test_a_bad_field_is_an_error_naming_the_record_and_the_field(data: Any, says: str) -> None:
    with pytest.raises(ReportFormatError) as caught:
        Outer.from_json(data)
    assert str(caught.value).startswith("malformed Outer: ")
    assert says in str(caught.value)


def test_unknown_keys_may_be_skipped_and_the_error_and_quote_are_the_callers() -> None:
    data = {"name": "a", "ratio": 1.0, "more": "kept elsewhere"}
    assert codec.decode(Inner, data, unknown="ignore") == Inner("a", 1.0)
    with pytest.raises(KeyError, match="malformed the inner: unknown field.s. more: 'line 1'"):
        codec.decode(Inner, data, error=KeyError, what="the inner", quote="'line 1'")


def test_an_integer_is_never_read_from_a_bool_or_a_float() -> None:
    for bad in (True, 1.0):
        with pytest.raises(ReportFormatError, match="field 'line'"):
            codec.decode(Inner, {"name": "a", "ratio": 1, "line": bad}, error=ReportFormatError)


def test_the_codec_is_a_leaf() -> None:
    """The tracer's in-process side, the tracer and the report all import it: it imports
    nothing of Ekka but the errors."""
    import ast
    from pathlib import Path

    source = Path(codec.__file__).read_text()
    imported = {
        node.module
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.ImportFrom) and node.module
    } | {
        alias.name
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    assert {m for m in imported if m.split(".")[0] == "ekka"} == {"ekka.errors"}
