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
    FAILED --redrive_run (+ delete the failed checkpoints)--> QUEUED, attempt + 1
"""

from __future__ import annotations

import json
from collections.abc import Sequence
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
    _cancellation_reasons,
    _failure_json,
    _is_conditional_failure,
    _lease_lost,
    _redrive_json,
    _run_key,
    status_shard,
)
from rung._aws.dynamodb.parents import _Parents
from rung._aws.dynamodb.retention import EXPIRY_NAMES, check_live, expiry_update
from rung._util.clock import iso, to_ms
from rung.errors import (
    ErrorInfo,
    RunAlreadyFinished,
    RunNotFailed,
    RunNotFound,
)
from rung.models import Failure, Redrive, Run, RunStatus, StepRecord

#: The most items one TransactWriteItems takes.
_MAX_TRANSACTION = 100


class _Children(_Parents):
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
            self._fence_check(parent_run_id, token),
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
        expiry, expiry_values = expiry_update(now, self.retention)
        own = {
            "TableName": self.table,
            "Key": _run_key(run_id),
            "UpdateExpression": (
                "SET #status = :canceled, status_shard = :canceled_shard, #error = :error, "
                f"finished_at = :now, updated_at = :now, lease_until = :zero, {expiry} "
                "REMOVE awaits, due_shard, due_sk"
            ),
            "ConditionExpression": "#status IN (:queued, :delayed, :running, :waiting)",
            "ExpressionAttributeNames": {**_NAMES, **EXPIRY_NAMES, "#error": "error"},
            "ExpressionAttributeValues": {
                **expiry_values,
                ":canceled": _S(RunStatus.CANCELED),
                ":canceled_shard": _S(status_shard(RunStatus.CANCELED, run_id)),
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
        also: Sequence[StepRecord] = (),
    ) -> Run:
        """FAILED -> QUEUED, due now, with the next attempt: one transaction.

        It removes the failed checkpoint ``failed`` (so that step runs again) and the
        failed checkpoints ``also`` (a failed ``ctx.map``'s failed branches and what
        failed in them), appends ``preserved`` (that failure, kept for history) and
        ``redrive`` to the run, and clears the error. Conditioned on the run being
        FAILED at the attempt it was read at, so that of racing redrives one wins;
        being one transaction, a crash leaves either all of it or none (and the
        reconciler sends a redriven run whose message was lost).

        A transaction holds at most 100 items: the run's update and 99 deletes. More
        deletes go first, in transactions of their own, each conditioned on the run
        being FAILED at that attempt. A crash between them leaves the run FAILED with
        some of those failed checkpoints gone (harmless: a FAILED run does not replay,
        and they would be deleted anyway); the next redrive deletes the rest.

        Raises:
            RunNotFailed: the run is not (or no longer) FAILED at that attempt.
        """
        values: dict[str, Any] = {
            ":queued": _S(RunStatus.QUEUED),
            ":queued_shard": _S(status_shard(RunStatus.QUEUED, run.run_id)),
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
            "SET #status = :queued, status_shard = :queued_shard, available_at = :due, "
            "attempt = attempt + :one, "
            "lease_until = :zero, updated_at = :now, "
            "redrives = list_append(if_not_exists(redrives, :empty), :redrive)"
        )
        if preserved is not None:
            update += ", failures = list_append(failures, :failure)"
            values[":failure"] = {"L": [_S(_failure_json(preserved))]}
        update += (
            " REMOVE finished_at, #error, failed_step, attempt_started_at, overran_step, "
            "waiting_for, awaits, expires_at_ms, #ttl, code_version, start_by_ms"
        )  # (a redriven run has no TTL: it was asked for, so it must not expire at once)
        values[":now_ms"] = _N(to_ms(now))
        items: list[dict[str, Any]] = [
            {
                "Update": {
                    "TableName": self.table,
                    "Key": _run_key(run.run_id),
                    "UpdateExpression": update,
                    # Not once it expired (docs/retention.md): the sweep may be deleting it.
                    "ConditionExpression": (
                        "#status = :failed AND attempt = :attempt AND "
                        "(attribute_not_exists(expires_at_ms) OR expires_at_ms > :now_ms)"
                    ),
                    "ExpressionAttributeNames": {**_NAMES, **EXPIRY_NAMES, "#error": "error"},
                    "ExpressionAttributeValues": values,
                }
            }
        ]
        deletes = [r.step_id for r in ([failed] if failed is not None else []) + list(also)]
        first, rest = deletes[: _MAX_TRANSACTION - 1], deletes[_MAX_TRANSACTION - 1 :]
        items += [self._delete_failed(run.run_id, step_id, gone_ok=False) for step_id in first]
        try:
            for start in range(0, len(rest), _MAX_TRANSACTION - 1):
                # The run still FAILED at this attempt; a checkpoint a racing redrive
                # deleted already is fine.
                check = {
                    "ConditionCheck": {
                        "TableName": self.table,
                        "Key": _run_key(run.run_id),
                        "ConditionExpression": "#status = :failed AND attempt = :attempt",
                        "ExpressionAttributeNames": _NAMES,
                        "ExpressionAttributeValues": {
                            ":failed": _S(RunStatus.FAILED),
                            ":attempt": _N(run.attempt),
                        },
                    }
                }
                chunk = rest[start : start + _MAX_TRANSACTION - 1]
                self.client.transact_write_items(
                    TransactItems=[
                        check,
                        *(self._delete_failed(run.run_id, s, gone_ok=True) for s in chunk),
                    ]
                )
            self.client.transact_write_items(TransactItems=items)
        except ClientError as exc:
            if _cancellation_reasons(exc) is None:
                raise
            now_run = self.get_run(run.run_id)
            check_live(now_run, now, self.retention)  # it expired meanwhile: RunExpired
            raise RunNotFailed(
                f"run {run.run_id} is {now_run.status} (attempt {now_run.attempt}), no longer "
                f"FAILED at attempt {run.attempt}: another redrive (or nothing) got there first",
                run_id=run.run_id,
                status=now_run.status,
            ) from None
        return self.get_run(run.run_id)

    def _delete_failed(self, run_id: str, step_id: str, *, gone_ok: bool) -> dict[str, Any]:
        """A transaction item deleting the failed checkpoint ``step_id`` (only if it
        is failed; ``gone_ok``: or already gone)."""
        condition = "outcome = :failed_outcome"
        return {
            "Delete": {
                "TableName": self.table,
                "Key": {"pk": _S(f"RUN#{run_id}"), "sk": _S(_STEP_PREFIX + step_id)},
                "ConditionExpression": (
                    f"attribute_not_exists(pk) OR {condition}" if gone_ok else condition
                ),
                "ExpressionAttributeValues": {":failed_outcome": _S("failed")},
            }
        }
