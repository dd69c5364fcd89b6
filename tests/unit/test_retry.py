"""Backoff math and policy validation (no network)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

import rung
from rung._util.durations import check_duration
from rung.errors import InvalidConfig
from rung.retry import RetryAfter


def delays(policy: rung.RetryPolicy, error: BaseException | None = None) -> list[float | None]:
    err = error or RuntimeError("boom")
    out = []
    for attempt in range(1, policy.max_attempts + 1):
        d = policy.next_delay(attempt, err, rand=lambda: 1.0)
        out.append(None if d is None else d.total_seconds())
    return out


def test_exponential_backoff_doubles_up_to_the_cap_and_stops_at_max_attempts() -> None:
    policy = rung.RetryPolicy(max_attempts=6, initial_interval=1, backoff=2.0, max_interval=10)
    assert delays(policy) == [1, 2, 4, 8, 10, None]


def test_linear_and_fixed_strategies() -> None:
    linear = rung.RetryPolicy(
        max_attempts=4, initial_interval=2, strategy="linear", max_interval=100
    )
    fixed = rung.RetryPolicy(max_attempts=3, initial_interval=5, strategy="fixed")
    assert delays(linear) == [2, 4, 6, None]
    assert delays(fixed) == [5, 5, None]


def test_custom_strategy_receives_attempt_and_error() -> None:
    seen: list[tuple[int, str]] = []

    def strategy(attempt: int, error: BaseException) -> timedelta:
        seen.append((attempt, str(error)))
        return timedelta(seconds=attempt * 7)

    policy = rung.RetryPolicy(max_attempts=3, strategy=strategy)
    assert delays(policy, ValueError("x")) == [7, 14, None]
    assert seen == [(1, "x"), (2, "x")]


def test_a_callable_strategy_is_capped_at_max_interval_and_gets_no_jitter() -> None:
    policy = rung.RetryPolicy(
        max_attempts=4,
        strategy=lambda attempt, error: timedelta(hours=attempt),
        max_interval=timedelta(minutes=90),
        jitter=1.0,  # (rand() is 1.0 in delays(): full jitter would make each delay 0)
    )
    assert delays(policy) == [3600, 5400, 5400, None]


def test_jitter_only_shortens_delays_within_the_fraction() -> None:
    policy = rung.RetryPolicy(max_attempts=2, initial_interval=10, jitter=0.5)
    shortest = policy.next_delay(1, RuntimeError(), rand=lambda: 1.0)
    longest = policy.next_delay(1, RuntimeError(), rand=lambda: 0.0)
    assert shortest == timedelta(seconds=5)
    assert longest == timedelta(seconds=10)


def test_retry_on_and_non_retryable_select_errors() -> None:
    policy = rung.RetryPolicy(retry_on=(ConnectionError,), non_retryable=(ConnectionResetError,))
    assert policy.next_delay(1, ConnectionError()) is not None
    assert policy.next_delay(1, ValueError()) is None
    assert policy.next_delay(1, ConnectionResetError()) is None
    assert policy.next_delay(1, rung.NonRetryable("no")) is None


def test_retry_after_overrides_the_computed_delay_but_not_max_attempts() -> None:
    policy = rung.RetryPolicy(max_attempts=2, initial_interval=1)
    assert policy.next_delay(1, rung.RetryAfter(42)) == timedelta(seconds=42)
    assert policy.next_delay(2, rung.RetryAfter(42)) is None


def test_huge_attempt_numbers_do_not_overflow() -> None:
    policy = rung.RetryPolicy(max_attempts=10_000, initial_interval=1, max_interval=60)
    assert policy.next_delay(5_000, RuntimeError()) == timedelta(seconds=60)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_attempts": 0}, "at least 1"),
        ({"max_attempts": 2.5}, "must be an int"),
        ({"initial_interval": -1}, "must not be negative"),
        ({"initial_interval": "1s"}, "timedelta or a number of seconds"),
        ({"initial_interval": 10, "max_interval": 5}, "shorter than"),
        ({"backoff": 0.5}, "backoff must be a number from 1 to 100, got 0.5"),
        ({"strategy": "random"}, "strategy must be one of"),
        ({"jitter": 2}, "jitter must be a number from 0 to 1, got 2"),
        ({"retry_on": (42,)}, "exception types"),
    ],
)
def test_invalid_policies_fail_at_construction_with_a_message(
    kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(InvalidConfig, match=message):
        rung.RetryPolicy(**kwargs)  # type: ignore[arg-type]


def test_numbers_are_accepted_as_seconds() -> None:
    policy = rung.RetryPolicy(initial_interval=1.5, max_interval=90)
    assert policy.initial_interval == timedelta(seconds=1.5)
    assert policy.max_interval == timedelta(seconds=90)


def test_retry_after_validates_its_delay() -> None:
    with pytest.raises(InvalidConfig, match="must not be negative"):
        rung.RetryAfter(-3)
    with pytest.raises(InvalidConfig, match="timedelta or a number of seconds"):
        rung.RetryAfter("soon")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda: check_duration(-5, "trigger delay"),
            "trigger delay must not be negative, got -5 seconds",
        ),
        (
            lambda: check_duration(timedelta(minutes=-90), "ctx.wait duration"),
            "ctx.wait duration must not be negative, got -1h30m",
        ),
        (lambda: RetryAfter(-5), "RetryAfter delay must not be negative, got -5 seconds"),
    ],
)
def test_a_negative_duration_is_named_as_a_duration(make: Any, message: str) -> None:
    with pytest.raises(InvalidConfig) as caught:
        make()

    assert str(caught.value) == message  # not "-1 day, 23:59:55"
