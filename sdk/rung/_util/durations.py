"""Durations: the one place that checks every duration and factor rung accepts, how
people type them (``30s``, ``5m``, ``1h30m``, ``90``) and how the CLI prints them.

Checking. Every duration a user hands rung (a trigger delay, a wait, a timeout, a
retry interval, a rate period, a lease...) goes through ``check_duration`` and every
factor (a backoff, a jitter) through ``check_factor``: a ``timedelta`` or a finite
number of seconds, not negative (or positive, where zero means nothing), at most a
documented maximum (``MAX_DURATION`` unless the parameter says less). Anything else
is ``InvalidConfig`` naming the parameter, before anything is stored, so that no run
is ever stored with a due time in the year 4700 and no ``OverflowError`` escapes.
The limits are listed in docs/retries.md ("Limits").

Typing. A duration is either a plain number of seconds or one or more
``<number><unit>`` parts with the units ``d``, ``h``, ``m``, ``s`` and ``ms``, largest
first, each at most once: ``1h30m`` and ``2m30s`` parse; ``30m1h``, ``1h1h`` and
``-5s`` do not.
"""

from __future__ import annotations

import math
import re
from datetime import timedelta

from rung.errors import InvalidConfig

#: The longest duration rung accepts anywhere (a wait, a delay, a timeout, a retry
#: interval, a token's life): a year and a day. Longer waits are loops of waits.
MAX_DURATION = timedelta(days=366)


def check_duration(
    value: object,
    name: str,
    *,
    positive: bool = False,
    maximum: timedelta = MAX_DURATION,
    hint: str = "",
) -> timedelta:
    """``value`` (a ``timedelta`` or seconds) as a ``timedelta``, checked.

    Args:
        name: the parameter, as the user wrote it (``"trigger delay"``); every error
            names it.
        positive: zero is refused too (a timeout of 0 means nothing).
        maximum: the largest value accepted (default ``MAX_DURATION``).
        hint: appended to the error for a value above ``maximum`` (what to do instead).

    Raises:
        InvalidConfig: not a ``timedelta`` or a number; NaN or infinite; negative (or
            zero with ``positive``); above ``maximum``.

    Example:
        >>> check_duration(90, "ctx.wait duration")
        datetime.timedelta(seconds=90)
    """
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
        if not math.isfinite(seconds):
            raise InvalidConfig(f"{name} must be a finite number of seconds, got {value!r}")
    else:
        raise InvalidConfig(
            f"{name} must be a timedelta or a number of seconds, got {type(value).__name__} "
            f"{value!r:.80}"
        )
    shown = _shown(value, seconds)
    if seconds < 0:
        raise InvalidConfig(f"{name} must not be negative, got {shown}")
    if positive and seconds == 0:
        raise InvalidConfig(f"{name} must be positive, got {shown}")
    if seconds > maximum.total_seconds():
        raise InvalidConfig(
            f"{name} must be at most {format_duration(maximum)}, got {shown}"
            + (f"; {hint}" if hint else "")
        )
    return value if isinstance(value, timedelta) else timedelta(seconds=seconds)


def check_factor(value: object, name: str, *, minimum: float, maximum: float) -> float:
    """``value`` as a float in ``[minimum, maximum]``, or ``InvalidConfig`` naming ``name``.

    Example:
        >>> check_factor(2, "RetryPolicy.backoff", minimum=1.0, maximum=100.0)
        2.0
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidConfig(
            f"{name} must be a number from {minimum:g} to {maximum:g}, got "
            f"{type(value).__name__} {value!r:.80}"
        )
    number = float(value)
    if not math.isfinite(number) or not minimum <= number <= maximum:
        raise InvalidConfig(
            f"{name} must be a number from {minimum:g} to {maximum:g}, got {value!r}"
        )
    return number


def _shown(value: object, seconds: float) -> str:
    """A value in an error message: readable, and never an overflow itself."""
    if abs(seconds) >= 86_400 * 1000:  # beyond what a person reads as a duration
        return f"{seconds / 86_400:,.0f} days"
    if isinstance(value, timedelta):
        return format_duration(value)
    return f"{value!r} seconds"


_UNITS = {"d": 86_400.0, "h": 3_600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
_ORDER = list(_UNITS)
_NUMBER = r"\d+(?:\.\d+)?|\.\d+"
_PART = re.compile(rf"({_NUMBER})(ms|d|h|m|s)")
_PLAIN = re.compile(rf"(?:{_NUMBER})")
_LONGEST = timedelta.max.total_seconds()
HELP = "a duration: 30s, 5m, 2h, 3d, 1h30m, 250ms, or plain seconds"


def parse_duration(text: str) -> timedelta:
    """The duration ``text`` names.

    Raises:
        ValueError: ``text`` is not a duration; the message says what one looks like.

    Example:
        >>> parse_duration("1h30m")
        datetime.timedelta(seconds=5400)
    """
    cleaned = text.strip().lower()
    if _PLAIN.fullmatch(cleaned):
        return _as_timedelta(text, float(cleaned))
    seconds = 0.0
    position = 0
    last = -1
    for match in _PART.finditer(cleaned):
        if match.start() != position:
            break
        rank = _ORDER.index(match.group(2))
        if rank <= last:
            raise ValueError(
                f"{text!r} is not a duration: put each unit once, largest first (like 1h30m)"
            )
        last = rank
        seconds += float(match.group(1)) * _UNITS[match.group(2)]
        position = match.end()
    if not cleaned or position != len(cleaned):
        raise ValueError(f"{text!r} is not a duration (use {HELP.removeprefix('a duration: ')})")
    return _as_timedelta(text, seconds)


def _as_timedelta(text: str, seconds: float) -> timedelta:
    # What a timedelta cannot hold (the caller's limit is less). ``>=``: as a float,
    # timedelta.max's seconds round up to 86,400,000,000,000, which overflows.
    if seconds >= _LONGEST:
        raise ValueError(f"{text!r} is far too long a duration ({seconds / 86_400:,.0f} days)")
    return timedelta(seconds=seconds)


def format_duration(delta: timedelta) -> str:
    """A short, readable form: ``350ms``, ``1.25s``, ``42s``, ``2m05s``, ``1h30m``, ``3d4h``."""
    total = delta.total_seconds()
    sign = "-" if total < 0 else ""
    total = abs(total)
    if total < 1:
        ms = total * 1000
        return f"{sign}{ms:.1f}ms" if 0 < ms < 10 and ms != int(ms) else f"{sign}{ms:.0f}ms"
    if total < 10:
        return f"{sign}{total:.2f}".rstrip("0").rstrip(".") + "s"
    if total < 60:
        return f"{sign}{total:.1f}".rstrip("0").rstrip(".") + "s"
    whole = round(total)
    days, rest = divmod(whole, 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{sign}{days}d{hours}h" if hours else f"{sign}{days}d"
    if hours:
        return f"{sign}{hours}h{minutes:02d}m" if minutes else f"{sign}{hours}h"
    return f"{sign}{minutes}m{secs:02d}s" if secs else f"{sign}{minutes}m"
