"""The one place that reads the wall clock.

Everything else receives a ``Clock`` so that replays, leases and backoff can be
driven by ``rung.testing``'s virtual clock; ruff bans ``datetime.now`` elsewhere.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware UTC."""
        ...


class SystemClock:
    """Wall-clock time."""

    def now(self) -> datetime:
        return datetime.now(UTC)


class VirtualClock:
    """A clock that only moves when told to.

    It starts at the wall-clock time and lets elapsed wall time through (so a slow
    step still shows a real duration), but ``advance_to`` jumps it forward when the
    engine has nothing runnable until a later due time.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._offset = 0.0  # seconds added to the wall clock

    def now(self) -> datetime:
        with self._lock:
            return datetime.fromtimestamp(time.time() + self._offset, UTC)

    def epoch(self) -> float:
        with self._lock:
            return time.time() + self._offset

    def advance_to(self, when: datetime) -> None:
        with self._lock:
            target = when.timestamp() - time.time()
            self._offset = max(self._offset, target)

    def advance(self, delta: timedelta) -> None:
        with self._lock:
            self._offset += max(delta.total_seconds(), 0.0)


def to_ms(when: datetime) -> int:
    """Epoch milliseconds, the form stored where DynamoDB compares times."""
    return int(when.timestamp() * 1000)


def from_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_iso(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))
