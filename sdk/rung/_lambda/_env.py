"""Configuration from the environment, worded alike for every handler."""

from __future__ import annotations

import os

from rung.errors import InvalidConfig


def require(name: str, what: str) -> str:
    """The variable's value, or an error naming it and what to set it to."""
    value = os.environ.get(name, "").strip()
    if not value:
        raise InvalidConfig(f"environment variable {name} is not set: set it to {what}")
    return value


def positive_int(name: str, default: int) -> int:
    """A positive integer variable, ``default`` when unset, else a clear error."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise InvalidConfig(
            f"environment variable {name} is {text!r}: set it to a positive integer "
            f"(default {default})"
        )
    return value
