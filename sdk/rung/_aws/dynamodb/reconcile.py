"""DynamoStore's reconciler section: finding stranded runs and nudging them.

The reconciler (rung._engine.reconciler) writes one attribute of its own, ``nudged_at``
(epoch ms), and only while the run item is exactly as it listed it (status, token,
``available_at``, ``lease_until``); it never touches the token, so fenced writes
and claims are unaffected:

    QUEUED/DELAYED, available_at < now - grace, unchanged  --nudge-->  nudged_at = now
    RUNNING, lease_until < now - grace, unchanged           --nudge-->  nudged_at = now
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from botocore.exceptions import ClientError

from rung._aws.dynamodb._common import (
    _N,
    _NAMES,
    _S,
    _is_conditional_failure,
    _run_key,
)
from rung._aws.dynamodb.listing import IndexQuery, _Listing, entry_run_id
from rung._util.clock import from_ms, iso, to_ms
from rung.models import Run, RunStatus


@dataclass(frozen=True)
class StrandedRun:
    """A non-terminal run that should have moved by now, as ``find_stranded`` listed it."""

    run: Run
    #: When it should have moved: ``available_at`` (QUEUED/DELAYED) or ``lease_until``
    #: (RUNNING).
    due: datetime
    #: When a reconciler last re-drove it, if ever.
    nudged_at: datetime | None
    #: ``(lease_token, available_at, lease_until)`` exactly as stored (epoch ms), for
    #: ``mark_nudged``'s "unchanged" condition: a datetime round trip may be 1 ms off.
    state: tuple[int, int, int] = field(repr=False, compare=False)


#: At most this many RUNNING runs are looked at per sweep (more run at once only past
#: ``MaximumConcurrency``'s ceiling of 1,000 per event source).
_RUNNING_SCAN = 10_000

#: The statuses whose way forward is a message: a reconciler re-drives these.
STRANDABLE = (RunStatus.QUEUED, RunStatus.DELAYED, RunStatus.WAITING, RunStatus.RUNNING)


class _Reconcile(_Listing):
    # -- the reconciler ----------------------------------------------------------------

    def find_stranded(
        self, *, due_before: datetime, not_nudged_since: datetime, limit: int
    ) -> list[StrandedRun]:
        """Runs that should have moved before ``due_before`` and have not, oldest first.

        QUEUED/DELAYED runs still unclaimed and WAITING runs whose wake time passed,
        with ``available_at < due_before``, and RUNNING runs whose lease expired
        before ``due_before``; leaving out those
        nudged at or after ``not_nudged_since``. At most ``limit`` runs.

        Reads the status index (eventually consistent), fanned out over its shards:
        both due times are at or after the run's creation, so the key condition
        ``created_sk < due_before`` skips every younger run without reading it, and
        ``available_at`` and ``nudged_at`` (projected) filter in the index. The
        candidates are then read consistently from the table, and only those still
        stranded are listed (``lease_until`` is not projected, so that lease renewals
        never write the index: RUNNING candidates are checked on the item).
        ``mark_nudged`` checks again that a listed run has not moved since.
        """
        due_ms = to_ms(due_before)
        not_since_ms = to_ms(not_nudged_since)
        found: list[StrandedRun] = []
        for status in STRANDABLE:
            due_attr = "lease_until" if status == RunStatus.RUNNING else "available_at"
            not_nudged = "(attribute_not_exists(nudged_at) OR nudged_at < :not_since)"
            index, attr, keys = self._status_keys([status])
            query = IndexQuery(
                index=index,
                attr=attr,
                values=keys,
                high=iso(due_before),
                filter=(
                    not_nudged
                    if due_attr == "lease_until"
                    else f"available_at < :due AND {not_nudged}"
                ),
                filter_values=((":not_since", _N(not_since_ms)),)
                + (((":due", _N(due_ms)),) if due_attr == "available_at" else ()),
                newest_first=False,  # oldest first: the longest stranded go first
            )
            # RUNNING runs are filtered on the item (their lease is not projected): look
            # at all of them, as many as run at once; the others are filtered in the index.
            want = limit - len(found) if due_attr == "available_at" else _RUNNING_SCAN
            entries = self.fan_out(query, want)
            items = self._run_items(map(entry_run_id, entries))
            for entry in entries:
                item = items.get(entry_run_id(entry))
                if item is None or item["status"]["S"] != status:
                    continue  # moved since the index saw it
                nudged = int(item.get("nudged_at", {"N": "0"})["N"])
                if int(item.get(due_attr, {"N": "0"})["N"]) >= due_ms or (
                    "nudged_at" in item and nudged >= not_since_ms
                ):
                    continue
                found.append(self._stranded_from_item(item, due_attr))
                if len(found) >= limit:
                    return found
        return found

    def mark_nudged(self, stranded: StrandedRun, now: datetime, not_nudged_since: datetime) -> bool:
        """Take the right to re-drive a stranded run: set ``nudged_at = now``.

        One conditional write. It succeeds only if the run item is still exactly as
        listed (same status, token, ``available_at`` and ``lease_until``: no worker
        has moved it) and no reconciler has nudged it since ``not_nudged_since``. So of
        several reconcilers racing on one run, one wins and sends; and the stale
        entries of an eventually consistent index never lead to a send. Touches
        neither the lease token nor the status, so fenced writes are unaffected.
        """
        token, available_ms, lease_ms = stranded.state
        try:
            self.client.update_item(
                TableName=self.table,
                Key=_run_key(stranded.run.run_id),
                UpdateExpression="SET nudged_at = :now",
                ConditionExpression=(
                    "#status = :status AND lease_token = :token AND available_at = :available "
                    "AND lease_until = :lease "
                    "AND (attribute_not_exists(nudged_at) OR nudged_at < :not_since)"
                ),
                ExpressionAttributeNames=_NAMES,
                ExpressionAttributeValues={
                    ":status": _S(stranded.run.status),
                    ":token": _N(token),
                    ":available": _N(available_ms),
                    ":lease": _N(lease_ms),
                    ":not_since": _N(to_ms(not_nudged_since)),
                    ":now": _N(to_ms(now)),
                },
            )
        except ClientError as exc:
            if not _is_conditional_failure(exc):
                raise
            return False
        return True

    def _stranded_from_item(self, item: dict[str, Any], due_attr: str) -> StrandedRun:
        nudged = item.get("nudged_at")
        return StrandedRun(
            run=self._run_from_item(item),
            due=from_ms(int(item[due_attr]["N"])),
            nudged_at=from_ms(int(nudged["N"])) if nudged is not None else None,
            state=(
                int(item["lease_token"]["N"]),
                int(item["available_at"]["N"]),
                int(item.get("lease_until", {"N": "0"})["N"]),
            ),
        )
