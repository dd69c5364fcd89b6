"""DynamoStore's timers section: runs waiting for a time too far off for a delayed message.

SQS delays a message by at most 15 minutes, and a message kept invisible is "in flight"
(about 120,000 per queue at most). So a run due later than that holds no message: the
worker arms a timer on the run item and acknowledges its message, and the timer sweep
(the reconciler's pass, every minute) sends a delayed message once the due time is
within reach:

    WAITING/DELAYED/QUEUED, available_at = T      --arm_timer-->   + due_shard, due_sk (T)
    armed, T within the look-ahead                --sweep-->       message sent (delay T - now)
                                                  --disarm-->      - due_shard, due_sk
    any claim                                                      - due_shard, due_sk

``due_shard``/``due_sk`` are the keys of the sparse ``runs_by_due`` index (32 shards, sort
key = the due time), so a sweep reads only the timers that are due: a wait costs the
same whether it lasts an hour or a month. The sweep sends before it disarms: a crash
between the two sends again on the next pass (a duplicate message, which the claim
absorbs), never loses a wake-up. Should the sweep not run at all, the reconciler still
finds the run once it is overdue (invariant 4).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from botocore.exceptions import ClientError

from rung._aws.dynamodb._common import (
    _N,
    _NAMES,
    _S,
    SHARDS,
    _is_conditional_failure,
    _run_key,
    due_shard,
    due_sk,
)
from rung._aws.dynamodb.listing import IndexQuery, _Listing, entry_run_id
from rung._util.clock import from_ms, to_ms
from rung.models import RunStatus

#: The index of armed timers.
DUE_INDEX = "runs_by_due"


@dataclass(frozen=True)
class Timer:
    """An armed timer, as the index lists it."""

    run_id: str
    due: datetime
    #: the sort key as stored: ``disarm_timer``'s "unchanged" condition
    key: str
    #: the run's trace context, stored form (for its message's trace header)
    trace: str | None = None


class _Timers(_Listing):
    def timers_enabled(self) -> bool:
        """Whether the table has the timer index (tables of earlier releases do not, until
        ``rung upgrade-table``): without it, long waits keep their message."""
        return self.sharded(DUE_INDEX)

    def arm_timer(self, run_id: str, due: datetime) -> bool:
        """Have the timer sweep send the run's message near ``due``.

        Only while the run is released and due then (QUEUED, DELAYED or WAITING with
        ``available_at`` = ``due``): a run claimed or woken meanwhile has its way forward
        already. Returns whether the timer was armed. One write; re-arming the same
        timer (a redelivered message) writes the same values.
        """
        due_ms = to_ms(due)
        try:
            self.client.update_item(
                TableName=self.table,
                Key=_run_key(run_id),
                UpdateExpression="SET due_shard = :shard, due_sk = :sk",
                # Within a millisecond: ``due`` may have made a float round trip.
                ConditionExpression=(
                    "#status IN (:queued, :delayed, :waiting) "
                    "AND available_at BETWEEN :early AND :late"
                ),
                ExpressionAttributeNames=_NAMES,
                ExpressionAttributeValues={
                    ":shard": _S(due_shard(run_id)),
                    ":sk": _S(due_sk(due_ms, run_id)),
                    ":queued": _S(RunStatus.QUEUED),
                    ":delayed": _S(RunStatus.DELAYED),
                    ":waiting": _S(RunStatus.WAITING),
                    ":early": _N(due_ms - 1),
                    ":late": _N(due_ms + 1),
                },
            )
        except ClientError as exc:
            if not _is_conditional_failure(exc):
                raise
            return False
        return True

    def due_timers(self, until: datetime, limit: int) -> list[Timer]:
        """Armed timers due at or before ``until``, soonest first, at most ``limit``."""
        query = IndexQuery(
            index=DUE_INDEX,
            attr="due_shard",
            values=tuple(f"DUE#{n:02d}" for n in range(SHARDS)),
            high=f"{to_ms(until):015d}#~",  # every run id sorts before "~"
            newest_first=False,
            sort="due_sk",
        )
        return [
            Timer(
                run_id=entry_run_id(entry),
                due=from_ms(int(entry["due_sk"]["S"].split("#", 1)[0])),
                key=entry["due_sk"]["S"],
                trace=entry["trace"]["S"] if "trace" in entry else None,
            )
            for entry in self.fan_out(query, limit)[:limit]
        ]

    def disarm_timer(self, timer: Timer) -> bool:
        """Take the run out of the timer index, if its timer is still the one listed."""
        try:
            self.client.update_item(
                TableName=self.table,
                Key=_run_key(timer.run_id),
                UpdateExpression="REMOVE due_shard, due_sk",
                ConditionExpression="due_sk = :sk",
                ExpressionAttributeValues={":sk": _S(timer.key)},
            )
        except ClientError as exc:
            if not _is_conditional_failure(exc):
                raise
            return False
        return True
