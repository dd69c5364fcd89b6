"""``rung.Cron``: five-field expressions checked and turned into EventBridge Scheduler's
form, and firing times computed as EventBridge Scheduler computes them across
daylight-saving changes (a skipped time does not fire, a repeated one fires once)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

import rung
from rung.errors import InvalidConfig


@pytest.mark.parametrize(
    ("expression", "aws"),
    [
        ("0 9 * * MON-FRI", "cron(0 9 ? * MON,TUE,WED,THU,FRI *)"),
        ("0 9 * * 1-5", "cron(0 9 ? * MON,TUE,WED,THU,FRI *)"),
        ("0 0 * * 0,7", "cron(0 0 ? * SUN *)"),
        ("0 0 * * 5-7", "cron(0 0 ? * SUN,FRI,SAT *)"),  # Friday to Sunday
        ("0 0 * * 7-7", "cron(0 0 ? * SUN *)"),
        ("0 0 * * 0-6", "cron(0 0 * * ? *)"),  # every day
        ("*/5 * * * *", "cron(*/5 * * * ? *)"),
        ("15 2 1 jan *", "cron(15 2 1 JAN ? *)"),
    ],
)
def test_expressions_become_eventbridge_scheduler_expressions(expression: str, aws: str) -> None:
    assert rung.Cron(expression).aws_expression == aws


@pytest.mark.parametrize(
    ("expression", "says"),
    [
        ("* * * *", "five fields"),
        ("* * * * * *", "five fields"),
        ("61 * * * *", "does not parse"),
        ("0 9 1 * MON", "both the day of month and the day of week"),
        ("0 9 * * */2", "not steps"),
        ("0 9 * * 8", "does not parse"),
        ("0 0 * * 5-0", "runs backwards"),
        ("0 0 * * L5", "not a day of week"),
        ("0 0 30 2 *", "names no date that exists"),
        ("0 9 * * MON; rm", "five fields"),
    ],
)
def test_bad_expressions_are_refused_when_made(expression: str, says: str) -> None:
    with pytest.raises(InvalidConfig, match=says):
        rung.Cron(expression)


def test_an_unknown_timezone_is_refused() -> None:
    with pytest.raises(InvalidConfig, match="unknown timezone 'Europe/Atlantis'"):
        rung.Cron("* * * * *", timezone="Europe/Atlantis")


def _times(cron: rung.Cron, after: datetime, hours: int) -> list[str]:
    return [t.strftime("%H:%M") for t in cron.times(after, after + timedelta(hours=hours))]


def test_a_time_skipped_by_spring_forward_does_not_fire() -> None:
    # Paris, 2027-03-28: 02:00 CET becomes 03:00 CEST (01:00 UTC).
    cron = rung.Cron("30 * * * *", timezone="Europe/Paris")
    utc = _times(cron, datetime(2027, 3, 27, 23, 0, tzinfo=UTC), 4)
    assert utc == ["23:30", "00:30", "01:30", "02:30"]  # local 00:30, 01:30, 03:30, 04:30
    daily = rung.Cron("30 2 * * *", timezone="Europe/Paris")
    days = [
        t.date().isoformat()
        for t in daily.times(datetime(2027, 3, 26, tzinfo=UTC), datetime(2027, 3, 31, tzinfo=UTC))
    ]
    assert days == ["2027-03-26", "2027-03-27", "2027-03-29", "2027-03-30"]  # not the 28th


def test_a_time_repeated_by_fall_back_fires_once() -> None:
    # Paris, 2027-10-31: 03:00 CEST becomes 02:00 CET (01:00 UTC); 02:xx happens twice.
    cron = rung.Cron("30 2 * * *", timezone="Europe/Paris")
    fired = list(
        cron.times(datetime(2027, 10, 30, 12, tzinfo=UTC), datetime(2027, 11, 1, tzinfo=UTC))
    )
    assert fired == [
        datetime(2027, 10, 31, 0, 30, tzinfo=UTC),  # the first 02:30 (CEST) only
    ]
    # Asked from inside the repeated hour, the second 02:30 is not a new firing.
    inside = datetime(2027, 10, 31, 1, 10, tzinfo=UTC)  # 02:10 CET, the second pass
    assert cron.next_after(inside) == datetime(2027, 11, 1, 1, 30, tzinfo=UTC)


def test_new_york_weekday_mornings_follow_its_own_dst() -> None:
    cron = rung.Cron("0 9 * * MON-FRI", timezone="America/New_York")
    march = list(cron.times(datetime(2027, 3, 12, tzinfo=UTC), datetime(2027, 3, 17, tzinfo=UTC)))
    # Friday 9:00 EST = 14:00 UTC; after 2027-03-14 (DST), Monday 9:00 EDT = 13:00 UTC.
    assert [t.strftime("%a %H:%M") for t in march] == ["Fri 14:00", "Mon 13:00", "Tue 13:00"]


def test_local_times_read_days_of_week_as_eventbridge_scheduler_does() -> None:
    """``7-7`` is Sundays only (croniter alone would read every day) and ``5-7`` Friday
    to Sunday: the local scheduler fires on the days AWS does."""
    after = datetime(2027, 1, 4, tzinfo=UTC)  # a Monday
    until = after + timedelta(days=7)
    sundays = [t.strftime("%a") for t in rung.Cron("0 12 * * 7-7").times(after, until)]
    weekend = [t.strftime("%a") for t in rung.Cron("0 12 * * 5-7").times(after, until)]
    assert sundays == ["Sun"]
    assert weekend == ["Fri", "Sat", "Sun"]
