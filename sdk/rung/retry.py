"""Retry policies: how often a failing step or task is tried, and how long between tries.

The delay is never slept: the engine turns it into an SQS visibility timeout or
message delay, so no worker is held while a run backs off.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Literal

from rung._util.durations import check_duration, check_factor
from rung.errors import InvalidConfig, NonRetryable, RungError, is_misuse

Strategy = Literal["exponential", "linear", "fixed"] | Callable[[int, BaseException], object]
_NAMED = ("exponential", "linear", "fixed")


#: The largest ``RetryPolicy.backoff``: a factor beyond it reaches ``max_interval`` by
#: the second retry anyway.
MAX_BACKOFF = 100.0


class RetryAfter(RungError):
    """Raise from a step or task to ask for the next attempt after ``delay``.

    Args:
        delay: a ``timedelta`` or a number of seconds (at most 366 days).
        message: why; stored with the failed attempt.

    Raises:
        InvalidConfig: ``delay`` is not a duration rung accepts.

    Example:
        >>> raise rung.RetryAfter(30, "rate limited: the API said Retry-After: 30")
    """

    def __init__(self, delay: timedelta | float, message: str = "") -> None:
        self.delay = check_duration(delay, "RetryAfter delay")
        self.message = message
        super().__init__(message or f"retry after {self.delay}")


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """When and how a failing step (or task body) is tried again.

    Args:
        max_attempts: total tries including the first (default 3; 1 means no retry).
        initial_interval: delay after the first failure (default 1 s); a timedelta or
            seconds (stored as a timedelta).
        backoff: factor between consecutive delays for "exponential" (default 2.0).
        max_interval: upper bound of any computed delay (default 10 minutes), also of
            what a ``strategy`` callable returns.
        strategy: "exponential" (initial * backoff**(n-1)), "linear" (initial * n),
            "fixed" (initial), or a callable ``(attempt, error) -> timedelta | seconds``
            where ``attempt`` is the 1-based number of the attempt that just failed.
        jitter: fraction in [0, 1]; each delay of a named strategy is shortened by a
            random share of up to this fraction, so clients that failed together do
            not retry together. A ``strategy`` callable's delay gets no jitter (add
            randomness there if it should have some).
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
        initial = check_duration(self.initial_interval, "RetryPolicy.initial_interval")
        maximum = check_duration(self.max_interval, "RetryPolicy.max_interval")
        if maximum < initial:
            raise InvalidConfig(
                f"RetryPolicy.max_interval ({maximum}) is shorter than initial_interval ({initial})"
            )
        object.__setattr__(self, "initial_interval", initial)
        object.__setattr__(self, "max_interval", maximum)
        object.__setattr__(
            self,
            "backoff",
            check_factor(self.backoff, "RetryPolicy.backoff", minimum=1.0, maximum=MAX_BACKOFF),
        )
        if not callable(self.strategy) and self.strategy not in _NAMED:
            raise InvalidConfig(
                f"RetryPolicy.strategy must be one of {', '.join(_NAMED)} or a callable "
                f"(attempt, error) -> timedelta, got {self.strategy!r}"
            )
        object.__setattr__(
            self,
            "jitter",
            check_factor(self.jitter, "RetryPolicy.jitter", minimum=0.0, maximum=1.0),
        )
        for name in ("retry_on", "non_retryable"):
            value = getattr(self, name)
            if isinstance(value, type):
                value = (value,)
                object.__setattr__(self, name, value)
            if not all(isinstance(t, type) and issubclass(t, BaseException) for t in value):
                raise InvalidConfig(f"RetryPolicy.{name} must be a tuple of exception types")

    @property
    def _initial(self) -> timedelta:
        assert isinstance(self.initial_interval, timedelta)  # (made one in __post_init__)
        return self.initial_interval

    @property
    def _maximum(self) -> timedelta:
        assert isinstance(self.max_interval, timedelta)
        return self.max_interval

    def is_retryable(self, error: BaseException) -> bool:
        """Whether this kind of error may be retried at all (attempts aside)."""
        if isinstance(error, NonRetryable) or is_misuse(error):  # retrying cannot fix misuse
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
            # Capped like every computed delay; no jitter: the function decides it.
            chosen = check_duration(
                self.strategy(attempt, error), "the delay returned by RetryPolicy.strategy"
            )
            return min(chosen, self._maximum)
        initial = self._initial.total_seconds()
        cap = self._maximum.total_seconds()
        if self.strategy == "fixed":
            seconds = initial
        elif self.strategy == "linear":
            seconds = initial * attempt
        elif initial == 0 or (attempt - 1) * math.log(self.backoff) >= math.log(cap / initial):
            seconds = cap if initial else 0.0  # (in logarithms: the power could overflow)
        else:
            seconds = initial * self.backoff ** (attempt - 1)
        delay = timedelta(seconds=min(seconds, cap))
        if self.jitter:
            delay = delay * (1.0 - self.jitter * rand())
        return delay


DEFAULT_RETRY = RetryPolicy()
