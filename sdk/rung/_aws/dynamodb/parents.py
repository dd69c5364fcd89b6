"""Ending a run together with its parent's wake-up: the terminal write of a child (in
``runs``: complete, fail, time out; in ``children``: cancel) and the parent item, in one
transaction, so that a parent that suspends for its children and a child that ends can
never miss each other (invariant 4). Shared by the runs and children sections.

    parent RUNNING --suspend (check: an awaited child unfinished)--> WAITING, awaits
    child  RUNNING --end + (parent WAITING, awaits child) --> terminal; parent due now

A batch (``batch_trigger_and_wait``) wakes its parent once, not once per child: each
child's end adds one to a counter on the parent item, and the last one wakes it:

    parent RUNNING --suspend (check: counter < size)--> WAITING, wake_threshold = size-1
    child  RUNNING --end + counter += 1 (+ parent due now if counter was >= threshold)
"""

from __future__ import annotations

import random
import time
from datetime import datetime
from typing import Any

from botocore.exceptions import ClientError

from rung._aws.dynamodb._common import (
    _N,
    _NAMES,
    _S,
    ParentLink,
    _Base,
    _cancellation_reasons,
    _run_key,
    batch_counter,
)
from rung._util.clock import iso, to_ms
from rung.errors import Contended
from rung.models import RunStatus


class _Parents(_Base):
    def _unfinished_check(self, run_id: str) -> dict[str, Any]:
        return {
            "ConditionCheck": {
                "TableName": self.table,
                "Key": _run_key(run_id),
                "ConditionExpression": "#status IN (:queued, :delayed, :running, :waiting)",
                "ExpressionAttributeNames": _NAMES,
                "ExpressionAttributeValues": {
                    ":queued": _S(RunStatus.QUEUED),
                    ":delayed": _S(RunStatus.DELAYED),
                    ":running": _S(RunStatus.RUNNING),
                    ":waiting": _S(RunStatus.WAITING),
                },
            }
        }

    def end_with_parent(
        self, own: dict[str, Any], run_id: str, parent: ParentLink, now: datetime
    ) -> bool | None:
        """Apply a child's terminal transition ``own`` and wake its parent if it waits.

        Mirrors ``resolve_token``. Either one transaction writes ``own`` and makes the
        parent due now (when the parent is WAITING with this child in ``awaits`` and
        not due yet), or one writes ``own`` under a check that the parent is not so
        waiting. A parent suspends (``suspend_run``) only under a check that a child
        it awaits is unfinished, so the two cannot miss each other:

        * the child ends first: the parent's suspension check fails and it carries on;
        * the parent suspends first: the child's end finds it waiting and wakes it.

        Checking one awaited child suffices: if it is unfinished when the parent
        suspends, it ends later and wakes the parent, which then reads every child
        afresh. A crash after the wake and before the caller's send leaves the parent
        WAITING and due: the reconciler re-sends it.

        A child of a batch (``parent.batch``: its key) counts its end on the parent
        instead (``_end_in_batch``).

        Returns whether the parent was woken (the caller sends its message), or None
        when ``own``'s condition failed (nothing was written).
        """
        parent_run_id = parent.run_id
        if parent.batch is not None:
            return self._end_in_batch(own, run_id, parent_run_id, now, parent.batch)
        values = {
            ":waiting": _S(RunStatus.WAITING),
            ":child": _S(run_id),
            ":now_ms": _N(to_ms(now)),
        }
        waiting = "#status = :waiting AND contains(awaits, :child) AND available_at > :now_ms"
        wake = {
            "Update": {
                "TableName": self.table,
                "Key": _run_key(parent_run_id),
                "UpdateExpression": "SET available_at = :now_ms, updated_at = :now",
                "ConditionExpression": waiting,
                "ExpressionAttributeNames": _NAMES,
                "ExpressionAttributeValues": {**values, ":now": _S(iso(now))},
            }
        }
        not_waiting = {
            "ConditionCheck": {
                "TableName": self.table,
                "Key": _run_key(parent_run_id),
                "ConditionExpression": f"NOT ({waiting})",
                "ExpressionAttributeNames": _NAMES,
                "ExpressionAttributeValues": values,
            }
        }
        for _ in range(10):
            for second, woke in ((wake, True), (not_waiting, False)):
                outcome = self._with_parent(own, second)
                if outcome == "own failed":
                    return None
                if outcome == "done":
                    return woke
                # the parent was not as assumed (or a conflict): try the other form
            # The parent changed between the two forms (it suspended or resumed): again.
        raise Contended(
            f"run {run_id}: its parent {parent_run_id} kept suspending and resuming while "
            "the child's end was recorded; nothing was half-written, the parent's own "
            "recheck reads the child's outcome"
        )

    def _end_in_batch(
        self, own: dict[str, Any], run_id: str, parent_run_id: str, now: datetime, batch: str
    ) -> bool | None:
        """A batch child's end: ``own`` and one more ended child on the parent's count.

        Three forms, exclusive and together exhaustive, tried until one applies:

        * count: the parent does not wait to be woken by this end (it runs, it waits
          for more of the batch, or it finished): add one, nothing else;
        * last: the parent waits for this batch and all but this child had ended
          (count >= threshold, or this child is the only one left in ``awaits``): add
          one and make it due now;
        * any: the parent waits for this child among other things (a batch inside a
          ``ctx.map`` suspends as "wake on any": ``awaits``, no ``wake_batch``): add
          one, make it due.

        The count comes first: all but the last child of a batch take one transaction.
        A parent that suspends counts the ends before its suspension (its condition
        is "fewer than the batch ended"), so the last end always finds it waiting.
        A batch suspension also records ``awaits``, so a child ended by code that
        predates the count (a rollback, a rolling deploy) still wakes the parent
        through the plain form of ``end_with_parent``.

        A transaction conflict (another child's end on the same parent at the same
        moment) retries the same form after a short jittered pause.
        """
        names = {**_NAMES, "#bd": batch_counter(batch)}
        # "All but this one ended": by the count, or by ``awaits`` (this child is the
        # only one left in it), which also holds when some ended through code that
        # predates the count (and so were not counted but did leave a fresh ``awaits``).
        last = (
            "#status = :waiting AND wake_batch = :batch AND available_at > :now_ms AND "
            "(wake_threshold <= #bd OR (contains(awaits, :child) AND size(awaits) = :one))"
        )
        any_ = (
            "#status = :waiting AND contains(awaits, :child) AND available_at > :now_ms "
            "AND attribute_not_exists(wake_batch)"
        )
        # Every form reads the same values, but for the batch (not in *any*) and the
        # time written (only where it wakes).
        common = {
            ":waiting": _S(RunStatus.WAITING),
            ":now_ms": _N(to_ms(now)),
            ":child": _S(run_id),
            ":me": {"SS": [run_id]},
            ":one": _N(1),
        }
        counted = {**common, ":batch": _S(batch)}
        # Each form also takes the child out of ``awaits``: the set shrinks as the
        # batch ends, and so does the size every write to the parent's item is billed by.
        count = "ADD #bd :one DELETE awaits :me"
        wake = "SET available_at = :now_ms, updated_at = :now ADD #bd :one DELETE awaits :me"
        at = {":now": _S(iso(now))}
        forms = [
            (count, f"NOT ({last}) AND NOT ({any_})", False, counted),
            (wake, last, True, {**counted, **at}),
            (wake, any_, True, {**common, **at}),
        ]
        form = 0
        for _ in range(40):
            update, condition, woke, values = forms[form]
            parent = {
                "Update": {
                    "TableName": self.table,
                    "Key": _run_key(parent_run_id),
                    "UpdateExpression": update,
                    "ConditionExpression": f"attribute_exists(pk) AND ({condition})",
                    "ExpressionAttributeNames": names,
                    "ExpressionAttributeValues": values,
                }
            }
            outcome = self._with_parent(own, parent)
            if outcome == "done":
                return woke
            if outcome == "own failed":
                return None
            if outcome == "conflict":  # another writer of the parent: the same form again
                time.sleep(random.uniform(0.005, 0.05))  # noqa: S311
                continue
            form = (form + 1) % len(forms)  # the parent was not as assumed: the next
            if form == 0 and not self._run_exists(parent_run_id):
                return self._end_alone(own)  # the parent is gone (expired)
        raise Contended(
            f"run {run_id}: the end of this child of batch {batch} could not be recorded "
            f"on its parent {parent_run_id}, which kept changing (many children ending at "
            "once); nothing was half-written, and the child's message comes back to try again"
        )

    def _with_parent(self, own: dict[str, Any], parent: dict[str, Any]) -> str:
        """One transaction of a child's terminal write ``own`` and an item on its
        parent: "done", "own failed" (the child's condition: nothing was written),
        "parent failed" (the parent's condition) or "conflict" (a concurrent writer)."""
        try:
            self.client.transact_write_items(TransactItems=[own, parent])
        except ClientError as exc:
            reasons = _cancellation_reasons(exc)
            if reasons is None:
                raise
            if reasons[0] == "ConditionalCheckFailed":
                return "own failed"
            if len(reasons) > 1 and reasons[1] == "ConditionalCheckFailed":
                return "parent failed"
            return "conflict"
        return "done"

    def _run_exists(self, run_id: str) -> bool:
        item = self.client.get_item(
            TableName=self.table, Key=_run_key(run_id), ProjectionExpression="pk"
        ).get("Item")
        return item is not None

    def _end_alone(self, own: dict[str, Any]) -> bool | None:
        try:
            self.client.transact_write_items(TransactItems=[own])
        except ClientError as exc:
            if _cancellation_reasons(exc) is None:
                raise
            return None
        return False
