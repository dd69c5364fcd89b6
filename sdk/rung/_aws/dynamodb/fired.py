"""DynamoStore's schedules section: when each schedule last fired (docs/schedules.md).

    SCHEDULE#<id>  #FIRED   last_ms (its latest firing's scheduled time), prev_ms (the one before)

A firing moves ``last_ms`` forward and keeps the one it replaced in ``prev_ms``, so a
firing delivered again (same scheduled time) still finds its predecessor. The item is
the schedule's own partition: one write per firing.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from botocore.exceptions import ClientError

from rung._aws.dynamodb._common import _N, _S, _Base, _is_conditional_failure
from rung._util.clock import from_ms, to_ms


class _Fired(_Base):
    def note_firing(self, schedule_id: str, at: datetime) -> datetime | None:
        """Record that ``schedule_id`` fired for ``at``; returns the scheduled time of
        its firing before that one (None for its first, or when ``at`` comes after a
        later firing already noted)."""
        key = {"pk": _S(f"SCHEDULE#{schedule_id}"), "sk": _S("#FIRED")}
        at_ms = to_ms(at)
        try:
            out = self.client.update_item(
                TableName=self.table,
                Key=key,
                UpdateExpression="SET prev_ms = if_not_exists(last_ms, :none), last_ms = :at",
                ConditionExpression="attribute_not_exists(last_ms) OR last_ms < :at",
                ExpressionAttributeValues={":at": _N(at_ms), ":none": _N(0)},
                ReturnValues="ALL_OLD",
            )
            return _time(out.get("Attributes", {}).get("last_ms"))
        except ClientError as exc:
            if not _is_conditional_failure(exc):
                raise
        item = self.client.get_item(TableName=self.table, Key=key, ConsistentRead=True)["Item"]
        if int(item["last_ms"]["N"]) == at_ms:  # this firing again: its predecessor stays
            return _time(item.get("prev_ms"))
        return None


def _time(value: dict[str, Any] | None) -> datetime | None:
    if value is None or int(value["N"]) == 0:
        return None
    return from_ms(int(value["N"]))
