"""DynamoStore's children and lifecycle section.

Children and the lifecycle (docs/children.md, docs/lifecycle.md). A child run item
names ``parent_run_id`` (and ``parent_waits`` when the parent waits for it); it is
created in one transaction with the parent's ``child`` checkpoint, under a check of
the parent's lease (``start_child``). A parent waiting for children records them in
``awaits``; a waited-for child's terminal transition wakes it in the same transaction
(``end_with_parent``):

    parent RUNNING --suspend (check: an awaited child unfinished)--> WAITING, awaits
    child  RUNNING --end + (parent WAITING, awaits child) --> terminal; parent due now

A batch (``batch_trigger_and_wait``) wakes its parent once, not once per child: each
child's end adds one to a counter on the parent item, and the last one wakes it:

    parent RUNNING --suspend (check: counter < size)--> WAITING, wake_threshold = size-1
    child  RUNNING --end + counter += 1 (+ parent due now if counter was >= threshold)
    any non-terminal --cancel_run--> CANCELED       (no lease needed; fenced writes then fail)
    FAILED --redrive_run (+ delete the failed checkpoint)--> QUEUED, attempt + 1
"""

from __future__ import annotations

import json
import random
import time
from datetime import datetime
from typing import Any

from botocore.exceptions import ClientError

from rung._aws.dynamodb._common import (
    _N,
    _NAMES,
    _S,
    _STEP_PREFIX,
    NewRun,
    ParentLink,
    _Base,
    _cancellation_reasons,
    _failure_json,
    _is_conditional_failure,
    _lease_lost,
    _redrive_json,
    _run_key,
    batch_counter,
)
from rung._util.clock import iso, to_ms
from rung.errors import (
    Contended,
    ErrorInfo,
    RunAlreadyFinished,
    RunNotFailed,
    RunNotFound,
)
from rung.models import Failure, Redrive, Run, RunStatus, StepRecord


class _Children(_Base):
    # -- children and the lifecycle ---------------------------------------------------

    def start_child(
        self, parent_run_id: str, token: int, record: StepRecord, child: NewRun
    ) -> tuple[StepRecord, bool]:
        """Create a child run together with the parent's checkpoint naming it.

        One transaction: the checkpoint (write-once, keyed by the parent's run id and
        the step id: the child's idempotency key), the child's run item, and a check
        that the parent is still RUNNING under this worker's lease (a canceled parent,
        or a worker that lost its lease, starts no child). So a child exists exactly
        when its checkpoint does: a replay, a retry or a crash anywhere never starts a
        second one, and canceling the parent finds every child in its checkpoints.

        Returns the stored checkpoint and whether the child was created now (False:
        the checkpoint was there already; it names the child that was created then).

        Raises:
            LeaseLost: the parent is no longer RUNNING under ``token``.
        """
        items = [
            {
                "Put": {
                    "TableName": self.table,
                    "Item": self._step_item(parent_run_id, record),
                    "ConditionExpression": "attribute_not_exists(pk)",
                }
            },
            {
                "Put": {
                    "TableName": self.table,
                    "Item": self._new_run_item(child),
                    "ConditionExpression": "attribute_not_exists(pk)",
                }
            },
            {
                "ConditionCheck": {
                    "TableName": self.table,
                    "Key": _run_key(parent_run_id),
                    "ConditionExpression": "#status = :running AND lease_token = :token",
                    "ExpressionAttributeNames": _NAMES,
                    "ExpressionAttributeValues": {
                        ":running": _S(RunStatus.RUNNING),
                        ":token": _N(token),
                    },
                }
            },
        ]
        try:
            self.client.transact_write_items(TransactItems=items)
        except ClientError as exc:
            reasons = _cancellation_reasons(exc)
            if reasons is None:
                raise
            if len(reasons) > 2 and reasons[2] == "ConditionalCheckFailed":
                raise _lease_lost(parent_run_id, token) from None
            if reasons[0] == "ConditionalCheckFailed":
                return self._get_step(parent_run_id, record.step_id), False
            raise
        return record, True

    def _get_step(self, run_id: str, step_id: str) -> StepRecord:
        item = self.client.get_item(
            TableName=self.table,
            Key={"pk": _S(f"RUN#{run_id}"), "sk": _S(_STEP_PREFIX + step_id)},
            ConsistentRead=True,
        )["Item"]
        return self._step_from_item(item)

    def get_runs(self, run_ids: list[str]) -> dict[str, Run]:
        """Several runs by id, consistently read (100 per request); missing ones are absent."""
        found: dict[str, Run] = {}
        unique = list(dict.fromkeys(run_ids))
        for start in range(0, len(unique), 100):
            keys: list[dict[str, Any]] = [_run_key(r) for r in unique[start : start + 100]]
            for _ in range(20):
                out = self.client.batch_get_item(
                    RequestItems={self.table: {"Keys": keys, "ConsistentRead": True}}
                )
                for item in out.get("Responses", {}).get(self.table, []):
                    run = self._run_from_item(item)
                    found[run.run_id] = run
                keys = out.get("UnprocessedKeys", {}).get(self.table, {}).get("Keys", [])
                if not keys:
                    break
            else:
                raise RuntimeError(f"table {self.table}: DynamoDB kept throttling a batch read")
        return found

    def run_status(self, run_id: str) -> tuple[RunStatus, int]:
        """A run's status and lease token: the cheap read behind the cancel check.

        Eventually consistent (half the price of a consistent read): a cancel is seen
        at most about a second later than it was written.
        """
        item = self.client.get_item(
            TableName=self.table,
            Key=_run_key(run_id),
            ProjectionExpression="#status, lease_token",
            ExpressionAttributeNames=_NAMES,
        ).get("Item")
        if item is None:
            raise RunNotFound(f"no run with id {run_id!r} in table {self.table}")
        return RunStatus(item["status"]["S"]), int(item["lease_token"]["N"])

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

    def cancel_run(
        self,
        run_id: str,
        error: ErrorInfo,
        now: datetime,
        *,
        wake_parent: ParentLink | None = None,
    ) -> bool:
        """QUEUED/DELAYED/WAITING/RUNNING -> CANCELED: conditional and final (invariant 3).

        A RUNNING run's worker is not asked: its next fenced write fails (LeaseLost)
        and its cancel check stops it at the next step boundary. ``wake_parent``: the
        parent that waits for this one (``ParentLink.of``, ``end_with_parent``);
        returns whether it was woken.

        Raises:
            RunNotFound: no such run.
            RunAlreadyFinished: it had finished; nothing was written.
        """
        own = {
            "TableName": self.table,
            "Key": _run_key(run_id),
            "UpdateExpression": (
                "SET #status = :canceled, #error = :error, finished_at = :now, "
                "updated_at = :now, lease_until = :zero REMOVE awaits"
            ),
            "ConditionExpression": "#status IN (:queued, :delayed, :running, :waiting)",
            "ExpressionAttributeNames": {**_NAMES, "#error": "error"},
            "ExpressionAttributeValues": {
                ":canceled": _S(RunStatus.CANCELED),
                ":error": _S(json.dumps(error.to_json())),
                ":now": _S(iso(now)),
                ":zero": _N(0),
                ":queued": _S(RunStatus.QUEUED),
                ":delayed": _S(RunStatus.DELAYED),
                ":running": _S(RunStatus.RUNNING),
                ":waiting": _S(RunStatus.WAITING),
            },
        }
        if wake_parent is None:
            try:
                self.client.update_item(**own)
            except ClientError as exc:
                if not _is_conditional_failure(exc):
                    raise
                raise self._already_finished(run_id) from None
            return False
        woke = self.end_with_parent({"Update": own}, run_id, wake_parent, now)
        if woke is None:
            raise self._already_finished(run_id)
        return woke

    def _already_finished(self, run_id: str) -> RunAlreadyFinished:
        run = self.get_run(run_id)  # RunNotFound when it does not exist
        when = f" at {iso(run.finished_at)}" if run.finished_at else ""
        return RunAlreadyFinished(
            f"run {run_id} already finished ({run.status}{when}); there is nothing to cancel",
            run_id=run_id,
            status=run.status,
        )

    def redrive_run(
        self,
        run: Run,
        *,
        failed: StepRecord | None,
        preserved: Failure | None,
        redrive: Redrive,
        now: datetime,
    ) -> Run:
        """FAILED -> QUEUED, due now, with the next attempt: one transaction.

        It removes the failed checkpoint ``failed`` (so that step runs again), appends
        ``preserved`` (that failure, kept for history) and ``redrive`` to the run, and
        clears the error. Conditioned on the run being FAILED at the attempt it was
        read at, so that of racing redrives one wins; being one transaction, a crash
        leaves either all of it or none (and the reconciler sends a redriven run whose
        message was lost).

        Raises:
            RunNotFailed: the run is not (or no longer) FAILED at that attempt.
        """
        values: dict[str, Any] = {
            ":queued": _S(RunStatus.QUEUED),
            ":failed": _S(RunStatus.FAILED),
            ":attempt": _N(run.attempt),
            ":one": _N(1),
            ":zero": _N(0),
            ":due": _N(to_ms(now)),
            ":now": _S(iso(now)),
            ":empty": {"L": []},
            ":redrive": {"L": [_S(_redrive_json(redrive))]},
        }
        update = (
            "SET #status = :queued, available_at = :due, attempt = attempt + :one, "
            "lease_until = :zero, updated_at = :now, "
            "redrives = list_append(if_not_exists(redrives, :empty), :redrive)"
        )
        if preserved is not None:
            update += ", failures = list_append(failures, :failure)"
            values[":failure"] = {"L": [_S(_failure_json(preserved))]}
        update += (
            " REMOVE finished_at, #error, failed_step, attempt_started_at, overran_step, "
            "waiting_for, awaits"
        )
        items: list[dict[str, Any]] = [
            {
                "Update": {
                    "TableName": self.table,
                    "Key": _run_key(run.run_id),
                    "UpdateExpression": update,
                    "ConditionExpression": "#status = :failed AND attempt = :attempt",
                    "ExpressionAttributeNames": {**_NAMES, "#error": "error"},
                    "ExpressionAttributeValues": values,
                }
            }
        ]
        if failed is not None:
            items.append(
                {
                    "Delete": {
                        "TableName": self.table,
                        "Key": {
                            "pk": _S(f"RUN#{run.run_id}"),
                            "sk": _S(_STEP_PREFIX + failed.step_id),
                        },
                        "ConditionExpression": "outcome = :failed_outcome",
                        "ExpressionAttributeValues": {":failed_outcome": _S("failed")},
                    }
                }
            )
        try:
            self.client.transact_write_items(TransactItems=items)
        except ClientError as exc:
            if _cancellation_reasons(exc) is None:
                raise
            now_run = self.get_run(run.run_id)
            raise RunNotFailed(
                f"run {run.run_id} is {now_run.status} (attempt {now_run.attempt}), no longer "
                f"FAILED at attempt {run.attempt}: another redrive (or nothing) got there first",
                run_id=run.run_id,
                status=now_run.status,
            ) from None
        return self.get_run(run.run_id)
