"""JSON for everything rung stores: payloads, step results, outputs.

Values are stored as JSON strings (boto3 refuses floats and returns Decimal).
A value with a declared type (a pydantic model, ``list[Model]``, a dataclass ...)
is revived through pydantic's ``TypeAdapter`` on the way back, so a step returns
the same kind of value on its first execution and on every replay.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

import pydantic
from pydantic_core import PydanticSerializationError, to_jsonable_python

from rung.errors import PayloadTooLarge

#: Largest payload, step result, token value or output rung stores (bytes of JSON):
#: 10 MiB. Anything over ``INLINE_VALUE_BYTES`` goes to the stack's S3 bucket.
MAX_VALUE_BYTES = 10 * 1024 * 1024
#: Largest value stored inline in its DynamoDB item (bytes of JSON). Items stop at
#: 400 KB and the run item holds payload, output and error history.
INLINE_VALUE_BYTES = 128 * 1024


def json_size(text: str) -> int:
    """``text``'s size in bytes of UTF-8 (counted only when it may be over the inline
    limit: a char is at most 4 bytes)."""
    return len(text) if len(text) * 4 <= INLINE_VALUE_BYTES else len(text.encode("utf-8"))


class NotSerializable(TypeError):
    """A value cannot be represented as JSON."""


def jsonable(value: Any, what: str, *, as_input: bool = False) -> Any:
    """``value`` in its JSON form (dicts, lists, strings, numbers, booleans, None), as
    pydantic's JSON mode converts it (the table in docs/determinism.md).

    ``as_input``: the form that validates back into the value (pydantic's round trip:
    a model's computed fields are left out), for what is revived from it.

    Raises:
        NotSerializable: the value (or something inside it) has no JSON form.
    """
    try:
        return to_jsonable_python(value, round_trip=as_input)
    except (PydanticSerializationError, TypeError, ValueError) as exc:
        raise NotSerializable(_not_json(value, what, exc)) from None


def dumps(value: Any, what: str, *, as_input: bool = False) -> str:
    """Encode ``value`` as compact JSON, refusing what cannot round-trip.

    ``as_input``: as for ``jsonable``.

    Raises:
        NotSerializable: the value (or something inside it) is not JSON-representable.
        PayloadTooLarge: the encoded value is larger than ``MAX_VALUE_BYTES``.
    """
    plain = jsonable(value, what, as_input=as_input)
    try:
        text = json.dumps(plain, separators=(",", ":"), allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise NotSerializable(_not_json(value, what, exc)) from None
    size = len(text.encode("utf-8"))
    if size > MAX_VALUE_BYTES:
        raise PayloadTooLarge(
            f"{what} is {size:,} bytes of JSON; rung stores values of at most "
            f"{MAX_VALUE_BYTES:,} bytes (10 MiB). Put larger data in S3 yourself and pass "
            "its key."
        )
    return text


def _not_json(value: Any, what: str, exc: Exception) -> str:
    return (
        f"{what} is not JSON-serializable ({type(value).__name__}): {exc}. "
        "Use JSON values (dict, list, str, int, float, bool, None), pydantic models "
        "or dataclasses (docs/determinism.md lists the conversions rung makes)."
    )


def loads(text: str | None, type_: Any = None) -> Any:
    """Decode JSON, reviving it as ``type_`` when a concrete type is declared.

    Values are validated from the JSON text (pydantic's JSON mode), as they are
    stored: a strict model's datetime or UUID field takes its JSON string there.
    """
    if text is None:
        return None
    validator = adapter(type_)
    return json.loads(text) if validator is None else validator.validate_json(text)


def problems(exc: pydantic.ValidationError) -> str:
    """A validation error's problems on one line: ``field.sub: message; ...``."""
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or '(payload)'}: {e['msg']}" for e in exc.errors()
    )


def adapter(type_: Any) -> pydantic.TypeAdapter[Any] | None:
    """The validator that revives values declared as ``type_``; None for no type (or
    ``Any``/``object``), or for a type pydantic cannot build a validator for."""
    return _built(type_)[0]


def unrevivable(type_: Any) -> str | None:
    """Why values declared as ``type_`` cannot be validated and revived (pydantic's
    reason, on one line), or None when they can (or no type is declared)."""
    return _built(type_)[1]


def _built(type_: Any) -> tuple[pydantic.TypeAdapter[Any] | None, str | None]:
    try:
        return _build_cached(type_)
    except TypeError:  # an unhashable annotation: built each time
        return _build(type_)


def _build(type_: Any) -> tuple[pydantic.TypeAdapter[Any] | None, str | None]:
    """``type_``'s validator, or why pydantic cannot build one; (None, None) for no type."""
    if type_ is None or type_ is Any or type_ is object:
        return None, None
    try:
        return pydantic.TypeAdapter(type_), None
    except Exception as exc:  # an annotation pydantic cannot handle
        return None, " ".join(str(exc).split("\n\n")[0].split())


_build_cached = lru_cache(maxsize=512)(_build)
