"""DynamoStore's schedules section: when each schedule fired (docs/schedules.md).

    SCHEDULE#<id>  #FIRED   recent (the scheduled times of its latest firings), v

A firing reads the item and adds its time (a conditional write on ``v``, read again
on a race), and its previous firing is the latest recorded time before its own: right
when a firing is delivered again (its time is there already) and when firings are
handled out of order (SQS does not keep order). The item is the schedule's own
partition: two requests per firing. It expires with the firings' idempotency keys.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta

from botocore.exceptions import ClientError

from rung._aws.dynamodb._common import _N, _S, TTL_ATTRIBUTE, _Base, _is_conditional_failure
from rung._util.clock import from_ms, to_ms
from rung.errors import Contended

#: How many firing times an item keeps (enough for any reordering SQS makes).
_KEEP = 16
_TRIES = 8
_LIFETIME = timedelta(days=30)  # an item a deleted schedule leaves expires this long after


class _Fired(_Base):
    def note_firing(self, schedule_id: str, at: datetime) -> datetime | None:
        """Record that ``schedule_id`` fired for ``at``; returns the scheduled time of the
        firing before it (None for its first).

        Raises:
            Contended: other firings of the schedule kept changing it (rare)."""
        key = {"pk": _S(f"SCHEDULE#{schedule_id}"), "sk": _S("#FIRED")}
        at_ms = to_ms(at)
        for attempt in range(_TRIES):
            item = self.client.get_item(TableName=self.table, Key=key, ConsistentRead=True)
            found = item.get("Item")
            recent = sorted(int(t["N"]) for t in found["recent"]["L"]) if found else []
            before = [t for t in recent if t < at_ms]
            previous = from_ms(max(before)) if before else None
            if at_ms in recent:
                return previous  # this firing again
            version = int(found["v"]["N"]) if found else 0
            kept = sorted({*recent, at_ms})[-_KEEP:]
            try:
                self.client.put_item(
                    TableName=self.table,
                    Item={
                        **key,
                        "recent": {"L": [_N(t) for t in kept]},
                        "v": _N(version + 1),
                        TTL_ATTRIBUTE: _N(int((from_ms(max(kept)) + _LIFETIME).timestamp())),
                    },
                    ConditionExpression="attribute_not_exists(pk) OR v = :v",
                    ExpressionAttributeValues={":v": _N(version)},
                )
            except ClientError as exc:
                if not _is_conditional_failure(exc):
                    raise
                time.sleep(0.01 * (attempt + 1))
                continue
            return previous
        raise Contended(f"schedule {schedule_id}: its firings kept racing; the firing comes again")
