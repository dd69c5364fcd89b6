"""Retry policies: how often a failing step or task is tried, and how long between tries.

The delay is never slept: the engine turns it into an SQS visibility timeout or
message delay, so no worker is held while a run backs off.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Literal

from rung._durations import format_duration
from rung.errors import InvalidConfig, NonRetryable, RetryAfter, UsageError

Strategy = Literal["exponential", "linear", "fixed"] | Callable[[int, BaseException], object]
_NAMED = ("exponential", "linear", "fixed")


def as_timedelta(value: object, what: str) -> timedelta:
    """Accept a ``timedelta`` or a number of seconds; refuse anything else clearly."""
    if isinstance(value, timedelta):
        result = value
    elif isinstance(value, int | float) and not isinstance(value, bool):
        result = timedelta(seconds=value)
    else:
        raise InvalidConfig(
            f"{what} must be a timedelta or a number of seconds, got {type(value).__name__}"
        )
    if result < timedelta(0):
        raise InvalidConfig(f"{what} must not be negative, got {format_duration(result)}")
    return result


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """When and how a failing step (or task body) is tried again.

    Args:
        max_attempts: total tries including the first (default 3; 1 means no retry).
        initial_interval: delay after the first failure (default 1 s); a timedelta or
            seconds (stored as a timedelta).
        backoff: factor between consecutive delays for "exponential" (default 2.0).
        max_interval: upper bound of any computed delay (default 10 minutes).
        strategy: "exponential" (initial * backoff**(n-1)), "linear" (initial * n),
            "fixed" (initial), or a callable ``(attempt, error) -> timedelta | seconds``
            where ``attempt`` is the 1-based number of the attempt that just failed.
        jitter: fraction in [0, 1]; each delay is shortened by a random share of up
            to this fraction, so clients that failed together do not retry together.
        retry_on: exception types that are retried (default: every ``Exception``).
        non_retryable: exception types that are never retried.

    ``rung.NonRetryable`` always fails at once; ``rung.RetryAfter(delay)`` asks for
    a specific delay (still counting as an attempt).

    Example:
        >>> RetryPolicy(max_attempts=5, initial_interval=timedelta(seconds=1),
        ...             backoff=2.0, max_interval=timedelta(minutes=1))
    """

    max_attempts: int = 3
    initial_interval: timedelta | float = field(default=timedelta(seconds=1))
    backoff: float = 2.0
    max_interval: timedelta | float = field(default=timedelta(minutes=10))
    strategy: Strategy = "exponential"
    jitter: float = 0.0
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    non_retryable: tuple[type[BaseException], ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int):
            raise InvalidConfig(
                f"RetryPolicy.max_attempts must be an int, got {type(self.max_attempts).__name__}"
            )
        if self.max_attempts < 1:
            raise InvalidConfig(
                f"RetryPolicy.max_attempts must be at least 1 (it counts the first try), "
                f"got {self.max_attempts}"
            )
        initial = as_timedelta(self.initial_interval, "RetryPolicy.initial_interval")
        maximum = as_timedelta(self.max_interval, "RetryPolicy.max_interval")
        if maximum < initial:
            raise InvalidConfig(
                f"RetryPolicy.max_interval ({maximum}) is shorter than initial_interval ({initial})"
            )
        object.__setattr__(self, "initial_interval", initial)
        object.__setattr__(self, "max_interval", maximum)
        if isinstance(self.backoff, bool) or not isinstance(self.backoff, int | float):
            raise InvalidConfig("RetryPolicy.backoff must be a number >= 1.0")
        if self.backoff < 1.0:
            raise InvalidConfig(f"RetryPolicy.backoff must be >= 1.0, got {self.backoff}")
        if not callable(self.strategy) and self.strategy not in _NAMED:
            raise InvalidConfig(
                f"RetryPolicy.strategy must be one of {', '.join(_NAMED)} or a callable "
                f"(attempt, error) -> timedelta, got {self.strategy!r}"
            )
        if isinstance(self.jitter, bool) or not isinstance(self.jitter, int | float):
            raise InvalidConfig("RetryPolicy.jitter must be a number between 0 and 1")
        if not 0.0 <= self.jitter <= 1.0:
            raise InvalidConfig(f"RetryPolicy.jitter must be between 0 and 1, got {self.jitter}")
        for name in ("retry_on", "non_retryable"):
            value = getattr(self, name)
            if isinstance(value, type):
                value = (value,)
                object.__setattr__(self, name, value)
            if not all(isinstance(t, type) and issubclass(t, BaseException) for t in value):
                raise InvalidConfig(f"RetryPolicy.{name} must be a tuple of exception types")

    def is_retryable(self, error: BaseException) -> bool:
        """Whether this kind of error may be retried at all (attempts aside)."""
        if isinstance(error, NonRetryable | UsageError):  # retrying cannot fix misuse
            return False
        if self.non_retryable and isinstance(error, self.non_retryable):
            return False
        if isinstance(error, RetryAfter):
            return True
        return isinstance(error, self.retry_on)

    def next_delay(
        self, attempt: int, error: BaseException, rand: Callable[[], float] = random.random
    ) -> timedelta | None:
        """The delay before the next attempt, or None when there is none.

        ``attempt`` is the 1-based number of the attempt that just failed.
        """
        if attempt >= self.max_attempts or not self.is_retryable(error):
            return None
        if isinstance(error, RetryAfter):
            return error.delay
        if callable(self.strategy):
            delay = as_timedelta(
                self.strategy(attempt, error), "the delay returned by RetryPolicy.strategy"
            )
            return delay
        initial = as_timedelta(self.initial_interval, "initial_interval").total_seconds()
        cap = as_timedelta(self.max_interval, "max_interval").total_seconds()
        if self.strategy == "fixed":
            seconds = initial
        elif self.strategy == "linear":
            seconds = initial * attempt
        else:  # capped before it can overflow a float or a timedelta
            seconds = initial * (self.backoff ** min(attempt - 1, 200))
        delay = timedelta(seconds=min(seconds, cap))
        if self.jitter:
            delay = delay * (1.0 - self.jitter * rand())
        return delay


DEFAULT_RETRY = RetryPolicy()
