"""DynamoDB's billing arithmetic, shared by the benchmarks (api_calls.py, partition_heat.py).

Item sizes as DynamoDB counts them (attribute names plus values), write units (1 per
started KB of the larger of the item before and after a write), read units (1 per
started 4 KB, strongly consistent; half that eventually consistent), and which global
secondary index entries a write touches: an item is in an index only if it has all of
the index's key attributes; its entry holds the table's and the index's keys and the
index's projected attributes (``PROJECTIONS``: all, keys only, or a list). A write that
moves the index key deletes the old entry and puts the new one (2 index writes), one
that changes a projected attribute rewrites the entry in place (1), one that changes
nothing projected does not write the index.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from rung._aws.dynamodb import INDEXES, KEY_SCHEMA, PROJECTIONS

Item = dict[str, Any]

#: An index entry carries the table's and the index's keys besides the item: about 100
#: bytes of overhead per entry (DynamoDB's documented figure).
INDEX_ENTRY_OVERHEAD = 100


def _value_size(value: dict[str, Any]) -> int:
    (kind, v), *_ = value.items()
    if kind == "S":
        return len(v.encode())
    if kind == "N":
        digits = v.lstrip("-").replace(".", "").strip("0") or "0"
        return math.ceil(len(digits) / 2) + 1
    if kind == "B":
        return len(v)
    if kind in ("BOOL", "NULL"):
        return 1
    if kind == "L":
        return 3 + sum(1 + _value_size(e) for e in v)
    if kind == "M":
        return 3 + sum(1 + len(k.encode()) + _value_size(e) for k, e in v.items())
    if kind in ("SS", "NS", "BS"):
        return sum(_value_size({kind[0]: e}) for e in v)
    raise ValueError(f"unknown DynamoDB type {kind}")


def item_size(item: Item | None) -> int:
    """DynamoDB's size of an item: attribute names plus values, in bytes."""
    if item is None:
        return 0
    return sum(len(name.encode()) + _value_size(value) for name, value in item.items())


def write_units(size: int) -> int:
    """WRUs of one standard write of an item of ``size`` bytes: 1 per started KB."""
    return max(1, math.ceil(size / 1024))


def read_units(size: int, *, consistent: bool = True) -> float:
    """RRUs of reading ``size`` bytes: 1 per started 4 KB strongly consistent, half that
    eventually consistent (a Query sums its items' sizes before rounding)."""
    units = max(1, math.ceil(size / 4096))
    return float(units) if consistent else units / 2


@dataclass(frozen=True)
class IndexWrite:
    """One write to a global secondary index: which index, the partition key value it
    lands on, and its WRUs."""

    index: str
    key: str
    wru: int


def _index_entry(name: str, item: Item | None, attrs: list[str]) -> Item | None:
    """The entry ``item`` has in index ``name`` (None: it is not in the index)."""
    if item is None or not all(a in item for a in attrs):
        return None
    projection = PROJECTIONS.get(name, {"ProjectionType": "ALL"})
    if projection["ProjectionType"] == "ALL":
        return item
    kept = {*KEY_SCHEMA, *attrs, *projection.get("NonKeyAttributes", [])}
    return {k: v for k, v in item.items() if k in kept}


def _hash_value(item: Item, attr: str) -> str:
    return str(next(iter(item[attr].values())))


def index_writes_by_key(before: Item | None, after: Item | None) -> list[IndexWrite]:
    """The index writes one table write causes, each with the index partition key value
    it lands on (computed from INDEXES, PROJECTIONS and the item before and after)."""
    out: list[IndexWrite] = []
    for name, keys in INDEXES.items():
        attrs = list(keys)
        (hash_attr,) = [a for a, kind in keys.items() if kind == "HASH"]
        old, new = _index_entry(name, before, attrs), _index_entry(name, after, attrs)
        if old is None and new is None:
            continue

        def units(entry: Item) -> int:
            return write_units(item_size(entry) + INDEX_ENTRY_OVERHEAD)

        if old is None and new is not None:
            out.append(IndexWrite(name, _hash_value(new, hash_attr), units(new)))
        elif new is None and old is not None:
            out.append(IndexWrite(name, _hash_value(old, hash_attr), units(old)))
        elif old is not None and new is not None:
            if any(old[a] != new[a] for a in attrs):  # the index key moved: delete + put
                out.append(IndexWrite(name, _hash_value(old, hash_attr), units(old)))
                out.append(IndexWrite(name, _hash_value(new, hash_attr), units(new)))
            elif old != new:  # a projected attribute changed: rewritten in place
                size = max(item_size(old), item_size(new)) + INDEX_ENTRY_OVERHEAD
                out.append(IndexWrite(name, _hash_value(new, hash_attr), write_units(size)))
    return out


def index_writes(before: Item | None, after: Item | None) -> int:
    """WRUs that the global secondary indexes consume for one write."""
    return sum(w.wru for w in index_writes_by_key(before, after))
