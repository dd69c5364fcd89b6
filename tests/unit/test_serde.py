"""Values round-trip through JSON; what cannot is refused with a clear message."""

from __future__ import annotations

import dataclasses
import enum
import json
import uuid
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pydantic
import pytest

import rung
from rung._util import serde
from rung.errors import PayloadTooLarge


class Item(pydantic.BaseModel):
    sku: str
    qty: int


@dataclasses.dataclass
class Point:
    x: float
    y: float


def test_models_and_dataclasses_revive_through_the_declared_type() -> None:
    text = serde.dumps([Item(sku="a", qty=2)], "value")
    assert serde.loads(text, list[Item]) == [Item(sku="a", qty=2)]
    assert serde.loads(serde.dumps(Point(1.5, 2.0), "p"), Point) == Point(1.5, 2.0)


def test_plain_json_values_round_trip_without_a_type() -> None:
    value = {"a": [1, 2.5, None, True, "x"], "nested": {"k": "ü"}}
    assert serde.loads(serde.dumps(value, "v")) == value


@pytest.mark.parametrize("bad", [object(), float("nan"), {"k": lambda: 0}])
def test_unserializable_values_are_refused_with_the_reason(bad: object) -> None:
    with pytest.raises(serde.NotSerializable, match="is not JSON-serializable"):
        serde.dumps(bad, "the thing")


def test_oversize_values_are_refused_with_the_limit() -> None:
    with pytest.raises(PayloadTooLarge, match="rung stores values of at most 10,485,760 bytes"):
        serde.dumps("x" * (serde.MAX_VALUE_BYTES + 1), "big")


class Color(enum.Enum):
    RED = "red"


# The table in docs/determinism.md ("Which conversions are guaranteed"): the JSON form,
# and what the declared type revives.
CONVERSIONS = [
    ((1, "a"), [1, "a"], tuple[int, str], (1, "a")),
    ({"b"}, ["b"], set[str], {"b"}),
    (frozenset({2}), [2], frozenset[int], frozenset({2})),
    ({1: "a"}, {"1": "a"}, dict[int, str], {1: "a"}),
    (
        datetime(2026, 12, 5, 9, 30, tzinfo=UTC),
        "2026-12-05T09:30:00Z",
        datetime,
        datetime(2026, 12, 5, 9, 30, tzinfo=UTC),
    ),
    (date(2026, 1, 2), "2026-01-02", date, date(2026, 1, 2)),
    (timedelta(hours=1), "PT1H", timedelta, timedelta(hours=1)),
    (uuid.UUID(int=1), "00000000-0000-0000-0000-000000000001", uuid.UUID, uuid.UUID(int=1)),
    (Decimal("1.50"), "1.50", Decimal, Decimal("1.50")),
    (Path("/tmp/x"), "/tmp/x", Path, Path("/tmp/x")),
    (Color.RED, "red", Color, Color.RED),
    (b"ok", "ok", bytes, b"ok"),
    (Point(1.0, 2.0), {"x": 1.0, "y": 2.0}, Point, Point(1.0, 2.0)),
]


@pytest.mark.parametrize(("value", "stored", "declared", "revived"), CONVERSIONS)
def test_the_documented_json_conversions_hold(
    value: object, stored: object, declared: object, revived: object
) -> None:
    text = serde.dumps(value, "value")
    assert json.loads(text) == stored
    assert serde.loads(text) == stored  # no declared type: the JSON value
    assert serde.loads(text, declared) == revived


@pytest.mark.parametrize("value", [b"\xff", float("nan"), object(), open])
def test_values_with_no_json_form_are_refused(value: object) -> None:
    with pytest.raises(serde.NotSerializable, match="the value is not JSON-serializable"):
        serde.dumps(value, "the value")


def test_an_error_trimmed_keeps_the_end_of_its_traceback_and_the_rest_as_it_was() -> None:
    error = rung.ErrorInfo("ValueError", "bad", "".join(f"frame {n}\n" for n in range(100)))

    cut = error.trimmed(30)

    assert (cut.type, cut.message) == ("ValueError", "bad")
    assert cut.traceback == "...\n" + error.traceback[-30:]
    assert cut.traceback.endswith("frame 98\nframe 99\n")
    assert error.trimmed(len(error.traceback)) == error  # short enough: unchanged
