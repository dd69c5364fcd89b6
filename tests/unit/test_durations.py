from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

import rung
from rung._engine.config import WorkerConfig
from rung._util.durations import check_duration, check_factor, format_duration, parse_duration
from rung.errors import InvalidConfig


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30s", timedelta(seconds=30)),
        ("5m", timedelta(minutes=5)),
        ("2h", timedelta(hours=2)),
        ("3d", timedelta(days=3)),
        ("250ms", timedelta(milliseconds=250)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("2m30s", timedelta(minutes=2, seconds=30)),
        ("1d2h3m4s", timedelta(days=1, hours=2, minutes=3, seconds=4)),
        ("1.5h", timedelta(minutes=90)),
        ("90", timedelta(seconds=90)),
        ("2.5", timedelta(seconds=2.5)),
        ("0", timedelta(0)),
        (" 10S ", timedelta(seconds=10)),
    ],
)
def test_parses_units_combinations_and_plain_seconds(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "s", "5x", "-5s", "5 m", "1h30", "abc", "1e3", "5mm"])
def test_refuses_what_is_not_a_duration_and_says_what_is(text: str) -> None:
    with pytest.raises(ValueError, match="is not a duration") as caught:
        parse_duration(text)

    assert "30s" in str(caught.value) or "largest first" in str(caught.value)


@pytest.mark.parametrize("text", ["30m1h", "1h1h", "5s2m"])
def test_refuses_units_out_of_order_or_repeated(text: str) -> None:
    with pytest.raises(ValueError, match="each unit once, largest first"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("delta", "expected"),
    [
        (timedelta(0), "0ms"),
        (timedelta(microseconds=400), "0.4ms"),
        (timedelta(milliseconds=350), "350ms"),
        (timedelta(seconds=1), "1s"),
        (timedelta(seconds=1.25), "1.25s"),
        (timedelta(seconds=42), "42s"),
        (timedelta(seconds=12.34), "12.3s"),
        (timedelta(seconds=125), "2m05s"),
        (timedelta(minutes=5), "5m"),
        (timedelta(hours=1, minutes=30), "1h30m"),
        (timedelta(hours=2), "2h"),
        (timedelta(days=3, hours=4), "3d4h"),
        (timedelta(seconds=-2), "-2s"),
    ],
)
def test_formats_short_readable_durations(delta: timedelta, expected: str) -> None:
    assert format_duration(delta) == expected


@pytest.mark.parametrize("text", ["30s", "5m", "2h", "3d", "1h30m", "2m05s"])
def test_formatted_durations_parse_back(text: str) -> None:
    assert format_duration(parse_duration(text)) == text


# -- check_duration / check_factor: every duration rung accepts, checked in one place ----

BAD_DURATIONS = [
    (float("nan"), "must be a finite number of seconds, got nan"),
    (float("inf"), "must be a finite number of seconds, got inf"),
    (-float("inf"), "must be a finite number of seconds, got -inf"),
    (1e12, "must be at most 366d, got 11,574,074 days"),
    (timedelta(days=1_000_000), "must be at most 366d, got 1,000,000 days"),
    (-5, "must not be negative, got -5 seconds"),
    (timedelta(seconds=-5), "must not be negative, got -5s"),
    ("5m", "must be a timedelta or a number of seconds, got str '5m'"),
    (True, "must be a timedelta or a number of seconds, got bool"),
    (None, "must be a timedelta or a number of seconds, got NoneType"),
]


@pytest.mark.parametrize(("value", "message"), BAD_DURATIONS)
def test_check_duration_refuses_what_is_not_a_usable_duration(value: object, message: str) -> None:
    with pytest.raises(InvalidConfig) as caught:
        check_duration(value, "the thing")
    assert str(caught.value).startswith("the thing ")
    assert message in str(caught.value)


def test_check_duration_accepts_numbers_and_timedeltas_up_to_the_maximum() -> None:
    assert check_duration(0, "x") == timedelta(0)
    assert check_duration(1.5, "x") == timedelta(seconds=1.5)
    assert check_duration(timedelta(days=366), "x") == timedelta(days=366)
    assert check_duration(10, "x", maximum=timedelta(seconds=10)) == timedelta(seconds=10)
    with pytest.raises(InvalidConfig, match="x must be positive, got 0 seconds"):
        check_duration(0, "x", positive=True)
    with pytest.raises(InvalidConfig, match=r"x must be at most 10s, got 11 seconds; do less"):
        check_duration(11, "x", maximum=timedelta(seconds=10), hint="do less")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (float("nan"), "got nan"),
        (float("inf"), "got inf"),
        (0.5, "got 0.5"),
        (101, "got 101"),
        ("2", "got str '2'"),
        (False, "got bool"),
    ],
)
def test_check_factor_refuses_what_is_out_of_range(value: object, message: str) -> None:
    with pytest.raises(InvalidConfig, match=f"backoff must be a number from 1 to 100, {message}"):
        check_factor(value, "backoff", minimum=1, maximum=100)


def _retry(**kwargs: Any) -> object:
    return rung.RetryPolicy(**kwargs)


def _task_with_max_duration(value: object) -> object:
    app = rung.App("d")
    return app.task(id="t", max_duration=value)(lambda ctx, payload: None)  # type: ignore[call-overload]


# Each public place that takes a duration or a factor, and the name its error must carry.
PLACES: list[tuple[str, Callable[[object], object]]] = [
    ("RetryPolicy.initial_interval", lambda v: _retry(initial_interval=v, max_interval=10**9)),
    ("RetryPolicy.max_interval", lambda v: _retry(max_interval=v)),
    ("RetryAfter delay", lambda v: rung.RetryAfter(v)),  # type: ignore[arg-type]
    ("Poll interval", lambda v: rung.Poll(until=bool, interval=v)),  # type: ignore[arg-type]
    ("Poll max_interval", lambda v: rung.Poll(until=bool, max_interval=v)),  # type: ignore[arg-type]
    ("Rate per", lambda v: rung.Rate(5, per=v)),  # type: ignore[arg-type]
    ("app.task max_duration", _task_with_max_duration),
    ("worker lease_duration", lambda v: WorkerConfig(lease_duration=v)),  # type: ignore[arg-type]
    ("worker slot_lease", lambda v: WorkerConfig(slot_lease=v)),  # type: ignore[arg-type]
    ("worker min_time_left", lambda v: WorkerConfig(min_time_left=v)),  # type: ignore[arg-type]
]


@pytest.mark.parametrize(("name", "make"), PLACES, ids=[name for name, _ in PLACES])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), 1e12, -1, "1s"])
def test_every_duration_parameter_refuses_bad_values_naming_itself(
    name: str, make: Callable[[object], object], value: object
) -> None:
    with pytest.raises(InvalidConfig) as caught:
        make(value)
    assert str(caught.value).startswith(name)


@pytest.mark.parametrize(
    ("name", "make"),
    [
        ("RetryPolicy.backoff", lambda v: rung.RetryPolicy(backoff=v)),
        ("RetryPolicy.jitter", lambda v: rung.RetryPolicy(jitter=v)),
        ("Poll backoff", lambda v: rung.Poll(until=bool, backoff=v)),
    ],
)
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -1, 1e6, "2"])
def test_every_factor_refuses_bad_values_naming_itself(
    name: str, make: Callable[[object], object], value: object
) -> None:
    with pytest.raises(InvalidConfig) as caught:
        make(value)
    assert str(caught.value).startswith(name)


def test_a_large_backoff_reaches_the_cap_instead_of_overflowing() -> None:
    policy = rung.RetryPolicy(max_attempts=1000, backoff=100, initial_interval=1, max_interval=60)
    assert policy.next_delay(400, RuntimeError()) == timedelta(seconds=60)
    poll = rung.Poll(until=bool, interval=1, backoff=100, max_interval=3600)
    assert poll.delay_after(500) == timedelta(hours=1)


def test_a_strategy_that_returns_a_bad_delay_is_named_in_the_error() -> None:
    policy = rung.RetryPolicy(strategy=lambda attempt, error: float("nan"))
    with pytest.raises(InvalidConfig, match="the delay returned by RetryPolicy.strategy"):
        policy.next_delay(1, RuntimeError())


@pytest.mark.parametrize(
    "text", ["3000000d", "1e3", "99999999999d", "86400000000000", "1000000000d", "86400000000000s"]
)
def test_parse_duration_never_overflows(text: str) -> None:
    try:
        parsed = parse_duration(text)
    except ValueError as exc:
        assert "duration" in str(exc)
    else:
        with pytest.raises(InvalidConfig, match="must be at most 366d"):
            check_duration(parsed, "trigger delay")
