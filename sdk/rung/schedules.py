"""Cron schedules: ``rung.Cron``, what a scheduled run receives (``rung.ScheduleEvent``)
and how a schedule reads back (``rung.ScheduleInfo``); docs/schedules.md.

A schedule fires at the wall-clock times its cron expression names in its time zone,
as EventBridge Scheduler evaluates it on AWS (and rung's local scheduler on ``rung
dev`` and LocalEngine): a time that a daylight-saving change skips does not fire, and a
time that it repeats fires once, at its first occurrence.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pydantic
from croniter import CroniterBadDateError, croniter

from rung.errors import InvalidConfig

_DAYS = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"]
_MONTHS = ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"]
_FIELD = re.compile(r"^[0-9A-Za-z*,/\-]+$")


@dataclass(frozen=True)
class Cron:
    """A cron schedule: five fields (minute, hour, day of month, month, day of week) in
    ``timezone`` (an IANA name, default UTC). Names (``MON-FRI``, ``JAN``) and numbers
    (0 or 7 is Sunday) both work; a day of month and a day of week cannot both be
    restricted (EventBridge Scheduler refuses it). Checked when made.

    Example:
        >>> rung.Cron("0 9 * * MON-FRI", timezone="Europe/Paris")  # 09:00 on weekdays
        >>> rung.Cron("*/5 * * * *")  # every five minutes, UTC
    """

    expression: str
    timezone: str = "UTC"
    #: the expression as EventBridge Scheduler takes it: ``cron(0 9 ? * MON,TUE,... *)``
    aws_expression: str = field(init=False, repr=False, compare=False)
    #: the same times for croniter (days of week as a plain list: one reading of them)
    _local: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        aws, local = _normalised(self.expression)
        object.__setattr__(self, "aws_expression", aws)
        object.__setattr__(self, "_local", local)
        zone(self.timezone)
        try:
            self.next_after(datetime(2000, 1, 1, tzinfo=UTC))
        except CroniterBadDateError:
            raise InvalidConfig(
                f"cron expression {self.expression!r} names no date that exists (like the "
                "30th of February): it would never fire"
            ) from None

    def times(self, after: datetime, until: datetime) -> Iterator[datetime]:
        """The firing times (UTC) after ``after`` up to ``until`` inclusive, in order."""
        tz = zone(self.timezone)
        start = after.astimezone(tz).replace(tzinfo=None)
        cron = croniter(self._local, start)
        while True:
            wall: datetime = cron.get_next(datetime)
            local = wall.replace(tzinfo=tz)  # fold 0: a repeated time's first occurrence
            if local.astimezone(UTC).astimezone(tz).replace(tzinfo=None) != wall:
                continue  # skipped by a change to daylight-saving time: no firing
            at = local.astimezone(UTC)
            if at <= after:
                continue  # a repeated hour's second pass (``after`` was in it)
            if at > until:
                return
            yield at

    def next_after(self, after: datetime) -> datetime:
        """The first firing time after ``after`` (UTC)."""
        return next(self.times(after, datetime.max.replace(tzinfo=UTC)))


def zone(name: object) -> ZoneInfo:
    """An IANA time zone, or ``InvalidConfig`` naming the bad one."""
    if not isinstance(name, str) or not name:
        raise InvalidConfig(f"a schedule's timezone must be an IANA name, got {name!r}")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidConfig(
            f"unknown timezone {name!r}: use an IANA name such as 'UTC', 'Europe/Paris' or "
            "'America/New_York'"
        ) from None


def _normalised(expression: object) -> tuple[str, str]:
    """``expression`` checked: as EventBridge Scheduler takes it, and for croniter."""
    if not isinstance(expression, str):
        raise InvalidConfig(f"a cron expression is a string, got {type(expression).__name__}")
    fields = expression.split()
    hint = "five fields: minute hour day-of-month month day-of-week, like '0 9 * * MON-FRI'"
    if len(fields) != 5 or not all(_FIELD.match(f) for f in fields):
        raise InvalidConfig(f"cron expression {expression!r} is not {hint}")
    if not croniter.is_valid(expression):
        raise InvalidConfig(f"cron expression {expression!r} does not parse as {hint}")
    minute, hour, dom, month, dow = fields
    if dom != "*" and dow != "*":
        raise InvalidConfig(
            f"cron expression {expression!r} restricts both the day of month and the day of "
            "week; EventBridge Scheduler takes one of them. Use two schedules"
        )
    days = _days(dow, expression)
    if days is None:
        return f"cron({minute} {hour} {dom} {month.upper()} ? *)", expression
    aws_days = ",".join(_DAYS[d] for d in days)
    local = f"{minute} {hour} {dom} {month} {','.join(str(d) for d in days)}"
    return f"cron({minute} {hour} ? {month.upper()} {aws_days} *)", local


def _days(dow: str, expression: str) -> list[int] | None:
    """The days of week a field names (0 = Sunday), in order; None for every day.

    Read here, not by croniter, so that EventBridge Scheduler (which numbers days 1-7
    from Sunday and reads no wrapping range) and the local scheduler agree."""
    if dow == "*":
        return None
    found: set[int] = set()
    for part in dow.split(","):
        ends = part.split("-")
        if "/" in part or len(ends) > 2 or not all(ends):
            raise InvalidConfig(
                f"cron expression {expression!r}: the day of week takes days, ranges and "
                "lists (MON-FRI, SAT,SUN, 1-5), not steps or other forms"
            )
        first, last = (_day(end, expression) for end in (ends[0], ends[-1]))
        if len(ends) == 2 and ends[-1] == "7":
            last = 7  # "5-7": Friday to Sunday
            first = 7 if ends[0] == "7" else first
        if last < first:
            raise InvalidConfig(
                f"cron expression {expression!r}: the range {part!r} runs backwards; list "
                "the days instead (FRI,SAT,SUN)"
            )
        found.update(d % 7 for d in range(first, last + 1))
    return None if len(found) == 7 else sorted(found)


def _day(token: str, expression: str) -> int:
    if token.isdigit() and int(token) <= 7:
        return int(token) % 7
    if token.upper() in _DAYS:
        return _DAYS.index(token.upper())
    raise InvalidConfig(f"cron expression {expression!r}: {token!r} is not a day of week")


class ScheduleEvent(pydantic.BaseModel):
    """The payload of a scheduled run: a scheduled task takes this model (or a subclass,
    or ``Any``) as its payload.

    Attributes:
        schedule_id: the schedule that fired (a declared schedule's is its task's id).
        scheduled_at: the firing time the schedule named (UTC), not when it ran.
        last_scheduled_at: the firing time of the schedule's previous run (UTC); None
            for its first.
        timezone: the schedule's time zone.
        external_id: what ``create_schedule(external_id=)`` was given (a tenant id).
        payload: what ``create_schedule(payload=)`` was given (None for none).
    """

    schedule_id: str
    scheduled_at: datetime
    last_scheduled_at: datetime | None = None
    timezone: str = "UTC"
    external_id: str | None = None
    payload: Any = None


@dataclass(frozen=True)
class ScheduleInfo:
    """A schedule as stored (``Client.get_schedule`` / ``list_schedules``).

    Attributes:
        id: the schedule's id (a declared schedule's is its task's id).
        task_id: the task it starts.
        cron: its expression and time zone.
        paused: True while paused (it does not fire; the times it misses are replayed
            only when it is resumed with ``catch_up=True``).
        payload: ``ScheduleEvent.payload`` of its runs.
        external_id: ``ScheduleEvent.external_id`` of its runs.
        declared: True for a schedule declared on its task (``@app.task(schedule=)``),
            which deploys with the app.
        next_at: its next firing time (UTC); None while paused.
        paused_at: when it was paused (UTC); None while it is not.
    """

    id: str
    task_id: str
    cron: Cron
    paused: bool
    payload: Any = None
    external_id: str | None = None
    declared: bool = False
    next_at: datetime | None = None
    paused_at: datetime | None = None
