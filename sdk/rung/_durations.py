"""Durations as people type them (``30s``, ``5m``, ``1h30m``, ``90``) and as the CLI prints them.

A duration is either a plain number of seconds or one or more ``<number><unit>``
parts with the units ``d``, ``h``, ``m``, ``s`` and ``ms``, largest first, each at
most once: ``1h30m`` and ``2m30s`` parse; ``30m1h``, ``1h1h`` and ``-5s`` do not.
"""

from __future__ import annotations

import re
from datetime import timedelta

_UNITS = {"d": 86_400.0, "h": 3_600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
_ORDER = list(_UNITS)
_NUMBER = r"\d+(?:\.\d+)?|\.\d+"
_PART = re.compile(rf"({_NUMBER})(ms|d|h|m|s)")
_PLAIN = re.compile(rf"(?:{_NUMBER})")
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
        return timedelta(seconds=float(cleaned))
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
