"""Run ids: time-ordered and unguessable (a ULID: 48 bits of milliseconds, 80 random bits)."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_run_id(now: datetime) -> str:
    value = (int(now.timestamp() * 1000) << 80) | secrets.randbits(80)
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "run_" + "".join(reversed(chars))


def created_at_of(run_id: str) -> datetime | None:
    """When the run ``run_id`` was created, read from its ULID; None if it is not one."""
    body = run_id.removeprefix("run_")
    if len(body) != 26 or not all(c in _CROCKFORD for c in body):
        return None
    value = 0
    for c in body:
        value = value * 32 + _CROCKFORD.index(c)
    return datetime.fromtimestamp((value >> 80) / 1000, UTC)
