"""Values round-trip through JSON; what cannot is refused with a clear message."""

from __future__ import annotations

import dataclasses

import pydantic
import pytest

from rung import _serde
from rung.errors import PayloadTooLarge


class Item(pydantic.BaseModel):
    sku: str
    qty: int


@dataclasses.dataclass
class Point:
    x: float
    y: float


def test_models_and_dataclasses_revive_through_the_declared_type() -> None:
    text = _serde.dumps([Item(sku="a", qty=2)], "value")
    assert _serde.loads(text, list[Item]) == [Item(sku="a", qty=2)]
    assert _serde.loads(_serde.dumps(Point(1.5, 2.0), "p"), Point) == Point(1.5, 2.0)


def test_plain_json_values_round_trip_without_a_type() -> None:
    value = {"a": [1, 2.5, None, True, "x"], "nested": {"k": "ü"}}
    assert _serde.loads(_serde.dumps(value, "v")) == value


@pytest.mark.parametrize("bad", [object(), float("nan"), {"k": lambda: 0}])
def test_unserializable_values_are_refused_with_the_reason(bad: object) -> None:
    with pytest.raises(_serde.NotSerializable, match="is not JSON-serializable"):
        _serde.dumps(bad, "the thing")


def test_oversize_values_are_refused_with_the_limit() -> None:
    with pytest.raises(PayloadTooLarge, match="rung stores at most 131,072 bytes"):
        _serde.dumps("x" * (_serde.MAX_VALUE_BYTES + 1), "big")
