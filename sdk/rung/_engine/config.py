"""How a worker times its attempts (``WorkerConfig``): leases, the time-limit margin,
and how often a running attempt looks for a cancel."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from rung._util.durations import check_duration

#: The longest lease a worker takes (on Lambda: the function timeout + 60 s, at most 16 min).
MAX_LEASE = timedelta(days=1)


@dataclass(frozen=True, kw_only=True)
class WorkerConfig:
    """Worker timing.

    Attributes:
        lease_duration: how long a claim holds a run without renewal. A crashed
            worker's run is taken over after this; on Lambda set it above the
            function timeout so a live invocation never loses its lease.
        min_time_left: before each step, if the invocation has less than this left,
            the run continues in a fresh invocation (not counted as an attempt).
        cancel_check_interval: before a step, the worker reads the run's status if it
            has not for this long, so a canceled run stops at its next step boundary
            (one eventually consistent read per interval; see docs/lifecycle.md).
    """

    lease_duration: timedelta = timedelta(minutes=16)
    min_time_left: timedelta = timedelta(seconds=10)
    cancel_check_interval: timedelta = timedelta(seconds=5)

    def __post_init__(self) -> None:
        for name, maximum, positive in (
            ("lease_duration", MAX_LEASE, True),
            ("min_time_left", timedelta(minutes=15), False),  # Lambda's whole time limit
            ("cancel_check_interval", timedelta(hours=1), False),
        ):
            value = check_duration(
                getattr(self, name), f"worker {name}", positive=positive, maximum=maximum
            )
            object.__setattr__(self, name, value)
