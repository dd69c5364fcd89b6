"""Run ids: time-ordered and unguessable (a ULID: 48 bits of milliseconds, 80 random bits)."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

from rung.errors import RunNotFound, TokenNotFound

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


def check_run_id(run_id: object) -> str:
    if not isinstance(run_id, str) or not run_id or len(run_id) > 128:
        raise RunNotFound(f"{run_id!r} is not a run id (run ids look like 'run_01J...')")
    return run_id


def check_token_id(token_id: object) -> str:
    if not isinstance(token_id, str) or not token_id.startswith("tok_") or len(token_id) > 128:
        raise TokenNotFound(
            f"{token_id!r} is not a token id (token ids look like 'tok_...', from ctx.create_token)"
        )
    return token_id
