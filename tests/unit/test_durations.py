from __future__ import annotations

from datetime import timedelta

import pytest

from rung._durations import format_duration, parse_duration


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
