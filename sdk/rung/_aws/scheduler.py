"""EventBridge Scheduler: the only module that calls it. One schedule per rung schedule,
in the stack's schedule group, targeting the stack's work queue with a firing message
(docs/schedules.md):

    {"v": 1, "kind": "schedule", "id": ..., "task": ..., "tz": ..., "payload": ...,
     "external_id": ..., "declared": false, "at": "<aws.scheduler.scheduled-time>"}

EventBridge Scheduler fills in ``at`` with each firing's scheduled time (a context
attribute of templated targets), so a firing delivered twice names the same time.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from rung.errors import InvalidConfig

#: The context attribute EventBridge Scheduler replaces with a firing's scheduled time.
SCHEDULED_TIME = "<aws.scheduler.scheduled-time>"
#: The longest ``Input`` EventBridge Scheduler takes for a target.
MAX_INPUT_CHARS = 8192
#: The role schedules name on an emulator whose CloudFormation made none (moto's skips
#: the stack's ScheduleGroup and SchedulerRole; it checks no role either).
EMULATOR_ROLE = "arn:aws:iam::123456789012:role/rung-scheduler"


@dataclass(frozen=True)
class StoredSchedule:
    """A schedule as EventBridge Scheduler holds it."""

    name: str
    expression: str
    timezone: str
    enabled: bool
    #: the target's input, as JSON (the firing message, ``at`` not filled in)
    input: dict[str, Any]
    #: the role it sends as
    role_arn: str | None = None


class Scheduler:
    """The schedules of one schedule group, each sending to the queue ``queue_arn()``
    names as ``role_arn`` (the role EventBridge Scheduler assumes, which may only send
    to that queue); None where only existing schedules are changed."""

    def __init__(
        self, client: Any, group: str, queue_arn: Callable[[], str], role_arn: str | None
    ) -> None:
        self.client = client
        self.group = group
        self._queue_arn = queue_arn
        self._target: str | None = None
        self.role_arn = role_arn
        #: called with a schedule's name after each ``put`` or ``delete`` through this
        #: object (a local scheduler counts a new schedule's times from there)
        self.on_change: list[Callable[[str], None]] = []

    def target(self) -> str:
        if self._target is None:
            self._target = self._queue_arn()
        return self._target

    def ensure_group(self) -> None:
        """Create the group where there is none (the emulator; on AWS the stack has it)."""
        try:
            self.client.create_schedule_group(Name=self.group)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ConflictException":
                raise

    def put(
        self,
        name: str,
        expression: str,
        timezone: str,
        body: str,
        enabled: bool,
        role_arn: str | None = None,
    ) -> bool:
        """Create the schedule, or update it if it exists; True if it was created.
        ``role_arn``: the role it sends as (default: this group's)."""
        role = role_arn or self.role_arn
        if role is None:
            raise InvalidConfig(
                "creating a schedule needs the role EventBridge Scheduler sends as: pass "
                "scheduler_role_arn= (or set $RUNG_SCHEDULER_ROLE_ARN), or make the client "
                "with Client.from_stack (the stack's SchedulerRoleArn output)"
            )
        params = {
            "Name": name,
            "GroupName": self.group,
            "ScheduleExpression": expression,
            "ScheduleExpressionTimezone": timezone,
            "State": "ENABLED" if enabled else "DISABLED",
            "FlexibleTimeWindow": {"Mode": "OFF"},
            "Target": {"Arn": self.target(), "RoleArn": role, "Input": body},
        }
        try:
            self.client.create_schedule(**params)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if code == "ResourceNotFoundException":
                raise self._no_group(exc) from None
            if code != "ConflictException":
                raise
            self.client.update_schedule(**params)
            created = False
        else:
            created = True
        for listener in self.on_change:
            listener(name)
        return created

    def _no_group(self, exc: ClientError) -> InvalidConfig:
        return InvalidConfig(
            f"EventBridge Scheduler has no schedule group {self.group!r} ({exc}): deploy the "
            "stack from this rung's template.yaml (its ScheduleGroup), or pass the stack's "
            "ScheduleGroupName output as schedule_group="
        )

    def get(self, name: str) -> StoredSchedule | None:
        try:
            out = self.client.get_schedule(Name=name, GroupName=self.group)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ResourceNotFoundException":
                return None
            raise
        return StoredSchedule(
            name=out["Name"],
            expression=out["ScheduleExpression"],
            timezone=out.get("ScheduleExpressionTimezone") or "UTC",
            enabled=out.get("State", "ENABLED") == "ENABLED",
            input=json.loads(out["Target"].get("Input") or "{}"),
            role_arn=out["Target"].get("RoleArn"),
        )

    def names(self) -> Iterator[str]:
        """Every schedule's name in the group."""
        kwargs: dict[str, Any] = {"GroupName": self.group}
        while True:
            try:
                out = self.client.list_schedules(**kwargs)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") == "ResourceNotFoundException":
                    raise self._no_group(exc) from None
                raise
            for summary in out.get("Schedules", []):
                yield summary["Name"]
            token = out.get("NextToken")
            if not token:
                return
            kwargs["NextToken"] = token

    def delete(self, name: str) -> bool:
        """Delete the schedule; False if there was none."""
        try:
            self.client.delete_schedule(Name=name, GroupName=self.group)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ResourceNotFoundException":
                return False
            raise
        for listener in self.on_change:
            listener(name)
        return True
