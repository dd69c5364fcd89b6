"""DynamoStore's time-to-live section: a run triggered with ``ttl=`` ends EXPIRED unless
its body starts by ``start_by_ms`` (docs/lifecycle.md, "Time to live").

"Started" means the body began, not that a worker claimed the run: a run parked by
flow control is claimed (and released) without starting, and can still expire. So a
run with a TTL records ``began_at``, once, when its first attempt is admitted, in a
write fenced by its lease (one write per run with a TTL; none for the others):

    QUEUED/DELAYED, start_by_ms >= now  --claim-->  RUNNING  --begin_run-->  began_at set
    QUEUED/DELAYED, start_by_ms < now, no began_at          --expire_run-->  EXPIRED
    RUNNING, lease expired (its worker died before began_at) --expire_run--> EXPIRED

The claim refuses a run past its TTL that has not begun (``NOT_EXPIRED`` is part of its
condition), so an expired run's body never starts; ``expire_run`` and ``begin_run``
exclude each other through the run item's conditions.
"""

from __future__ import annotations

import json
from datetime import datetime

from botocore.exceptions import ClientError

from rung._aws.dynamodb._common import (
    _N,
    _NAMES,
    _S,
    ParentLink,
    _is_conditional_failure,
    _run_key,
    status_shard,
)
from rung._aws.dynamodb.parents import _Parents
from rung._aws.dynamodb.retention import EXPIRY_NAMES, expiry_update
from rung._util.clock import iso, to_ms
from rung.errors import ErrorInfo
from rung.models import Run, RunStatus

#: The claim's condition that a run is not past its TTL unstarted (``:now_ms``).
NOT_EXPIRED = (
    "attribute_not_exists(start_by_ms) OR attribute_exists(began_at) OR start_by_ms >= :now_ms"
)


def expired(run: Run, now: datetime) -> bool:
    """Whether ``run`` is past its TTL without having started (it must expire)."""
    return run.start_by is not None and run.began_at is None and run.start_by < now


class _Ttl(_Parents):
    def begin_run(self, run_id: str, token: int, now: datetime) -> None:
        """Record that the run's body starts now (a run with a TTL, once): it can no
        longer expire.

        Raises:
            LeaseLost: the worker's token is stale (or the run expired meanwhile).
        """
        self._fenced_update(
            run_id, token, "SET began_at = if_not_exists(began_at, :now)", {":now": _S(iso(now))}
        )

    def expire_run(
        self, run_id: str, error: ErrorInfo, now: datetime, *, wake_parent: ParentLink | None
    ) -> bool | None:
        """QUEUED/DELAYED (or RUNNING under a dead worker's lease) and past its TTL
        without having begun -> EXPIRED, conditional and final (invariant 3).
        ``wake_parent`` as for ``cancel_run``.

        Returns whether the parent was woken, or None if the run was not expired
        (it began, ended, or a live worker holds it: nothing was written).
        """
        expiry, expiry_values = expiry_update(now, self.retention)
        own = {
            "TableName": self.table,
            "Key": _run_key(run_id),
            "UpdateExpression": (
                "SET #status = :expired, status_shard = :expired_shard, #error = :error, "
                f"finished_at = :now, updated_at = :now, lease_until = :zero, {expiry} "
                "REMOVE awaits, due_shard, due_sk"
            ),
            "ConditionExpression": (
                "attribute_not_exists(began_at) AND start_by_ms < :now_ms AND "
                "(#status IN (:queued, :delayed) OR (#status = :running AND lease_until < :now_ms))"
            ),
            "ExpressionAttributeNames": {**_NAMES, **EXPIRY_NAMES, "#error": "error"},
            "ExpressionAttributeValues": {
                **expiry_values,
                ":expired": _S(RunStatus.EXPIRED),
                ":expired_shard": _S(status_shard(RunStatus.EXPIRED, run_id)),
                ":error": _S(json.dumps(error.to_json())),
                ":now": _S(iso(now)),
                ":now_ms": _N(to_ms(now)),
                ":zero": _N(0),
                ":queued": _S(RunStatus.QUEUED),
                ":delayed": _S(RunStatus.DELAYED),
                ":running": _S(RunStatus.RUNNING),
            },
        }
        if wake_parent is not None:
            return self.end_with_parent({"Update": own}, run_id, wake_parent, now)
        try:
            self.client.update_item(**own)
        except ClientError as exc:
            if not _is_conditional_failure(exc):
                raise
            return None
        return False
