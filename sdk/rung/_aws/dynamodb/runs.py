"""DynamoStore's runs section: claiming, fencing and ending a run (created.py records them).

Timeline of a claim (times are epoch ms compared inside DynamoDB, from the
injected clock; DynamoDB TTL deletion can lag by days, so expiry is always
checked in the condition, never assumed):

    QUEUED/DELAYED, available_at <= now  --claim-->  RUNNING, token+1, lease_until
    RUNNING, lease_until < now (holder died) --reclaim--> RUNNING, token+1, attempt+1
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from botocore.exceptions import ClientError

from rung._aws.dynamodb._common import (
    _N,
    _NAMES,
    _S,
    NEVER_MS,
    TOKEN_OPEN,
    ParentLink,
    _cancellation_reasons,
    _failure_json,
    _is_conditional_failure,
    _lease_lost,
    _released,
    _run_key,
    _token_key,
    batch_counter,
    status_shard,
)
from rung._aws.dynamodb.created import _Created
from rung._aws.dynamodb.retention import EXPIRY_NAMES, expiry_update
from rung._aws.dynamodb.ttl import NOT_EXPIRED, expired
from rung._util.clock import iso, to_ms
from rung.errors import (
    ErrorInfo,
)
from rung.models import Failure, Run, RunStatus

#: The most tokens ``suspend_run`` checks: a transaction holds at most 100 items;
#: one is the run's update and one may check an awaited child run.
SUSPEND_TOKEN_CHECKS = 98


@dataclass(frozen=True)
class Claimed:
    run: Run
    token: int
    recovered_from_crash: bool = False


@dataclass(frozen=True)
class NotClaimed:
    """Why a claim was refused, with when to look again (if ever)."""

    #: "missing", "terminal", "not_due", "busy", "crashed", "other_version", "unpinned",
    #: "expired" (not started within its TTL: ``expire_run`` it)
    reason: str
    run: Run | None
    retry_at: datetime | None


class _Runs(_Created):
    def claim_run(
        self,
        run_id: str,
        now: datetime,
        lease_for: timedelta,
        version: str | None = None,
        *,
        pinned: bool = False,
    ) -> Claimed | NotClaimed:
        """Take the run for one worker: QUEUED/DELAYED/WAITING and due -> RUNNING, new token.

        ``version``: the code version of the claiming worker (docs/versioning.md). The
        claim then also requires the run to be on that version or on none yet, and pins
        a run on none to it, in the same write. A run due (or crashed) on another
        version is refused as ``"other_version"``: its own version's worker must take it.
        ``pinned``: only a run already on ``version`` (a message handed over to it); one
        on none (redriven since) is refused as ``"unpinned"``: the latest takes it.
        """
        sets = (
            "SET #status = :running, status_shard = :running_shard, "
            "lease_token = lease_token + :one, "
            "lease_until = :lease, updated_at = :now, "
            "started_at = if_not_exists(started_at, :now), "
            "attempt_started_at = if_not_exists(attempt_started_at, :now)"
        )
        condition = (
            "#status IN (:queued, :delayed, :waiting) AND available_at <= :now_ms AND "
            f"({NOT_EXPIRED})"
        )
        values = {
            ":running": _S(RunStatus.RUNNING),
            ":running_shard": _S(status_shard(RunStatus.RUNNING, run_id)),
            ":queued": _S(RunStatus.QUEUED),
            ":delayed": _S(RunStatus.DELAYED),
            ":waiting": _S(RunStatus.WAITING),
            ":one": _N(1),
            ":lease": _N(to_ms(now + lease_for)),
            ":now": _S(iso(now)),
            ":now_ms": _N(to_ms(now)),
        }
        if version is not None:
            sets += ", code_version = if_not_exists(code_version, :version)"
            condition += (
                " AND code_version = :version"
                if pinned
                else " AND (attribute_not_exists(code_version) OR code_version = :version)"
            )
            values[":version"] = _S(version)
        try:
            out = self.client.update_item(
                TableName=self.table,
                Key=_run_key(run_id),
                UpdateExpression=(
                    f"{sets} REMOVE waiting_for, overran_step, awaits, wake_kind, wake_batch, "
                    "wake_threshold, due_shard, due_sk"
                ),
                ConditionExpression=condition,
                ExpressionAttributeNames=_NAMES,
                ExpressionAttributeValues=values,
                ReturnValues="ALL_NEW",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as exc:
            if not _is_conditional_failure(exc):
                raise
            old = exc.response.get("Item")
            if old is None:
                return NotClaimed("missing", None, None)
            run = self._run_from_item(old)  # type: ignore[arg-type]
            if run.status.is_terminal:
                return NotClaimed("terminal", run, None)
            if expired(run, now) and (run.lease_until is None or run.lease_until < now):
                return NotClaimed("expired", run, None)  # (unless a live worker holds it)
            other: str | None = None  # why this worker may not take it, if due
            if version is not None and run.version not in (None, version):
                other = "other_version"
            elif pinned and run.version is None:
                other = "unpinned"
            if run.status == RunStatus.RUNNING:
                assert run.lease_until is not None
                if run.lease_until < now:
                    return NotClaimed(other or "crashed", run, now)
                return NotClaimed("busy", run, run.lease_until)
            if other and run.available_at is not None and run.available_at <= now:
                return NotClaimed(other, run, now)
            return NotClaimed("not_due", run, run.available_at)
        run = self._run_from_item(out["Attributes"])
        return Claimed(run, run.lease_token)

    def reclaim_crashed(
        self,
        run: Run,
        now: datetime,
        lease_for: timedelta,
        failure: Failure,
        version: str | None = None,
    ) -> Claimed | NotClaimed:
        """Take over a RUNNING run whose holder's lease expired; the crash is an attempt.
        ``version``: the taker's, pinned on a run that has none (as ``claim_run``)."""
        pin = ", code_version = if_not_exists(code_version, :version)" if version else ""
        try:
            out = self.client.update_item(
                TableName=self.table,
                Key=_run_key(run.run_id),
                UpdateExpression=(
                    "SET lease_token = lease_token + :one, lease_until = :lease, "
                    "attempt = attempt + :one, failures = list_append(failures, :failure), "
                    f"attempt_started_at = :now, updated_at = :now{pin} REMOVE overran_step"
                ),
                ConditionExpression=(
                    "#status = :running AND lease_token = :token AND lease_until < :now_ms"
                ),
                ExpressionAttributeNames=_NAMES,
                ExpressionAttributeValues={
                    ":running": _S(RunStatus.RUNNING),
                    ":one": _N(1),
                    ":token": _N(run.lease_token),
                    ":lease": _N(to_ms(now + lease_for)),
                    ":now": _S(iso(now)),
                    ":now_ms": _N(to_ms(now)),
                    ":failure": {"L": [_S(_failure_json(failure))]},
                    **({":version": _S(version)} if version else {}),
                },
                ReturnValues="ALL_NEW",
            )
        except ClientError as exc:
            if not _is_conditional_failure(exc):
                raise
            return NotClaimed("busy", run, now + lease_for)  # another worker took it over
        new = self._run_from_item(out["Attributes"])
        return Claimed(new, new.lease_token, recovered_from_crash=True)

    def mark_overrun(self, run_id: str, token: int, step_id: str) -> None:
        """Note that ``step_id`` was still running as the invocation hit its time limit."""
        self._fenced_update(run_id, token, "SET overran_step = :step", {":step": _S(step_id)})

    def renew_lease(
        self, run_id: str, token: int, until: datetime, metadata: str | None = None
    ) -> None:
        """Extend the lease; with ``metadata`` (JSON), write the run's current metadata
        in the same write (``ctx.metadata`` rides on the heartbeat)."""
        values = {":lease": _N(to_ms(until))}
        if metadata is None:
            self._fenced_update(run_id, token, "SET lease_until = :lease", values)
            return
        update = "SET lease_until = :lease, metadata = :metadata"
        self._fenced_update(run_id, token, update, {**values, ":metadata": _S(metadata)})

    def write_metadata(self, run_id: str, token: int, metadata: str) -> None:
        """Write the run's current ``ctx.metadata`` (JSON), fenced."""
        self._fenced_update(run_id, token, "SET metadata = :metadata", {":metadata": _S(metadata)})

    def schedule_retry(
        self,
        run_id: str,
        token: int,
        failure: Failure,
        available_at: datetime,
        now: datetime,
        spent: timedelta = timedelta(0),
    ) -> None:
        """End this attempt: record its failure, release the lease, due again later.

        ``spent``: compute time this invocation used, added to the run's total.
        """
        status = RunStatus.DELAYED if available_at > now else RunStatus.QUEUED
        sets, values = _released(run_id, status, to_ms(available_at), now, spent)
        self._fenced_update(
            run_id,
            token,
            f"{sets}, attempt = attempt + :one, failures = list_append(failures, :failure) "
            "REMOVE attempt_started_at",
            {**values, ":one": _N(1), ":failure": {"L": [_S(_failure_json(failure))]}},
        )

    def release_to_continue(
        self, run_id: str, token: int, now: datetime, spent: timedelta = timedelta(0)
    ) -> None:
        """Give the run back without ending the attempt (the invocation ran short of time)."""
        self._fenced_update(
            run_id, token, *_released(run_id, RunStatus.QUEUED, to_ms(now), now, spent)
        )

    def suspend_run(
        self,
        run_id: str,
        token: int,
        *,
        wake_at: datetime | None,
        waiting_for: str,
        now: datetime,
        spent: timedelta,
        tokens: tuple[str, ...] = (),
        children: tuple[str, ...] = (),
        wake_kind: str | None = None,
        batch: tuple[str, int] | None = None,
    ) -> bool:
        """The run waits: WAITING, lease released, due at ``wake_at`` (None: when woken).

        ``wake_kind`` records what ``wake_at`` is ("timer", "token"; see Suspend) on the
        run item as data, for readers that must not parse ``waiting_for``.

        With ``tokens``, one transaction also checks that each is still unresolved;
        returns False (and changes nothing) if one was resolved meanwhile, so a
        completion racing the suspension is never missed: either the completion sees
        the run WAITING and wakes it, or the suspension sees the token resolved.
        At most ``SUSPEND_TOKEN_CHECKS`` tokens (a transaction's limit).

        With ``children`` (the unfinished child runs it waits for), the run item
        records them as ``awaits`` and the transaction checks that the first is still
        unfinished; see ``end_with_parent`` for why one check suffices.

        With ``batch`` (key, size) too: the run waits for every child of one batch
        (``children`` are its unfinished ones) and is woken by the last to end, not by
        each. The batch's children count their ends on the run item (``bd_<key>``);
        the suspension records the count that means "all but one ended"
        (``wake_threshold``) under the condition that not all have, so an end before
        the suspension is counted and never missed. ``awaits`` is recorded as well,
        for children ended by code that predates the count. If the count says all
        ended, the plain suspension follows (it returns False when the first child
        did end; else a count was off and the run is woken by any end). See
        ``end_with_parent``.

        Raises:
            LeaseLost: the worker's token is stale.
        """
        due = to_ms(wake_at) if wake_at is not None else NEVER_MS
        sets, values = _released(run_id, RunStatus.WAITING, due, now, spent, waiting_for)
        awaits = ""
        if children:
            awaits = ", awaits = :awaits"
            values[":awaits"] = {"SS": list(dict.fromkeys(children))}
        if wake_kind is not None:
            awaits += ", wake_kind = :wake_kind"
            values[":wake_kind"] = _S(wake_kind)
        update = self._fenced(run_id, token, sets + awaits, values)
        if len(tokens) > SUSPEND_TOKEN_CHECKS:
            raise ValueError(f"suspend_run checks at most {SUSPEND_TOKEN_CHECKS} tokens")
        # When the count says the whole batch ended although this attempt read
        # unfinished children, a count is off (a redriven child ends twice): the run
        # waits for them the plain way below, checking the first, woken by any end.
        if (
            batch is not None
            and not tokens
            and self._suspend_for_batch(run_id, token, update, batch)
        ):
            return True
        if not tokens and not children:
            self._update_fenced(run_id, token, update)
            return True
        return self._suspend_checked(run_id, token, update, tokens, children)

    def _suspend_checked(
        self,
        run_id: str,
        token: int,
        update: dict[str, Any],
        tokens: tuple[str, ...],
        children: tuple[str, ...],
    ) -> bool:
        """The suspension ``update``, in one transaction with the checks that every token
        is open and the first child unfinished. False: one was not (nothing changed)."""
        checks = [
            {
                "ConditionCheck": {
                    "TableName": self.table,
                    "Key": _token_key(token_id),
                    "ConditionExpression": "token_status = :open",
                    "ExpressionAttributeValues": {":open": _S(TOKEN_OPEN)},
                }
            }
            for token_id in tokens
        ]
        if children:
            checks.append(self._unfinished_check(children[0]))
        try:
            self.client.transact_write_items(TransactItems=[{"Update": update}, *checks])
        except ClientError as exc:
            reasons = _cancellation_reasons(exc)
            if reasons is None:
                raise
            if reasons[0] == "ConditionalCheckFailed":
                raise _lease_lost(run_id, token) from None
            return False
        return True

    def _suspend_for_batch(
        self, run_id: str, token: int, plain: dict[str, Any], batch: tuple[str, int]
    ) -> bool:
        key, size = batch
        values = {
            **plain["ExpressionAttributeValues"],
            ":batch": _S(key),
            ":threshold": _N(size - 1),
            ":size": _N(size),
            ":zero": _N(0),
        }
        update = {
            **plain,
            "UpdateExpression": plain["UpdateExpression"]
            + ", wake_batch = :batch, wake_threshold = :threshold, #bd = if_not_exists(#bd, :zero)",
            "ConditionExpression": plain["ConditionExpression"]
            + " AND (attribute_not_exists(#bd) OR #bd < :size)",
            "ExpressionAttributeNames": {**_NAMES, "#bd": batch_counter(key)},
            "ExpressionAttributeValues": values,
        }
        try:
            self.client.update_item(**update)
        except ClientError as exc:
            if not _is_conditional_failure(exc):
                raise
            run = self.get_run(run_id)
            if run.status == RunStatus.RUNNING and run.lease_token == token:
                return False  # the count says every child of the batch ended
            raise _lease_lost(run_id, token) from None
        return True

    def forget_batch(self, run_id: str, batch: str) -> None:
        """Drop the count of batch ``batch``'s ended children from the run item, once
        the batch's outcome is recorded (a run that loops over batches would otherwise
        carry one counter per batch, and pay for it in every write to its item)."""
        try:
            self.client.update_item(
                TableName=self.table,
                Key=_run_key(run_id),
                UpdateExpression="REMOVE #bd",
                ConditionExpression="attribute_exists(#bd)",
                ExpressionAttributeNames={"#bd": batch_counter(batch)},
            )
        except ClientError as exc:
            if not _is_conditional_failure(exc):
                raise

    def wake_run(self, run_id: str, now: datetime) -> bool:
        """Make a WAITING run due now (its waker then sends a message). False: not waiting."""
        try:
            self.client.update_item(
                TableName=self.table,
                Key=_run_key(run_id),
                UpdateExpression="SET available_at = :now_ms, updated_at = :now",
                ConditionExpression="#status = :waiting AND available_at > :now_ms",
                ExpressionAttributeNames=_NAMES,
                ExpressionAttributeValues={
                    ":waiting": _S(RunStatus.WAITING),
                    ":now_ms": _N(to_ms(now)),
                    ":now": _S(iso(now)),
                },
            )
        except ClientError as exc:
            if not _is_conditional_failure(exc):
                raise
            return False
        return True

    def time_out_run(
        self,
        run_id: str,
        token: int,
        error: ErrorInfo,
        now: datetime,
        *,
        wake_parent: ParentLink | None = None,
    ) -> bool:
        """The terminal transition for a run past its ``max_duration``.

        ``wake_parent``: the parent that waits for this run (``ParentLink.of``; see
        ``end_with_parent``); returns whether it was woken (its message must then be
        sent).
        """
        return self._end(
            run_id,
            token,
            now,
            wake_parent,
            RunStatus.TIMED_OUT,
            "#error = :error",
            {":error": _S(json.dumps(error.to_json()))},
            names={"#error": "error"},
        )

    def complete_run(
        self,
        run_id: str,
        token: int,
        output_json: str,
        now: datetime,
        *,
        wake_parent: ParentLink | None = None,
    ) -> bool:
        """The terminal transition for success; ``wake_parent`` as for ``time_out_run``."""
        return self._end(
            run_id,
            token,
            now,
            wake_parent,
            RunStatus.COMPLETED,
            "#output = :output",
            {":output": self._value(run_id, output_json, f"the output of run {run_id}")},
            names={"#output": "output"},
        )

    def fail_run(
        self,
        run_id: str,
        token: int,
        error: ErrorInfo,
        failure: Failure | None,
        now: datetime,
        *,
        wake_parent: ParentLink | None = None,
        failed_step: str | None = None,
    ) -> bool:
        """The one terminal transition for failure; records the last failed attempt too.

        ``failed_step``: the step whose failure (uncaught in the task) failed the run;
        ``redrive_run`` removes its checkpoint. ``wake_parent`` as for ``time_out_run``.
        """
        sets = "#error = :error"
        values: dict[str, Any] = {":error": _S(json.dumps(error.to_json()))}
        if failure is not None:
            sets += ", failures = list_append(failures, :failure)"
            values[":failure"] = {"L": [_S(_failure_json(failure))]}
        if failed_step is not None:
            sets += ", failed_step = :failed_step"
            values[":failed_step"] = _S(failed_step)
        return self._end(
            run_id, token, now, wake_parent, RunStatus.FAILED, sets, values, {"#error": "error"}
        )

    def _end(
        self,
        run_id: str,
        token: int,
        now: datetime,
        wake_parent: ParentLink | None,
        status: RunStatus,
        sets: str,
        values: dict[str, Any],
        names: dict[str, str],
    ) -> bool:
        """A fenced terminal transition to ``status`` (with the status's own ``sets``;
        the finish time and the released lease are common to all); with
        ``wake_parent``, in one transaction with the parent's wake-up
        (``end_with_parent``). Returns whether the parent was woken. The run's expiry
        is stamped too (``retention.expiry_update``)."""
        expiry, expiry_values = expiry_update(now, self.retention)
        update = (
            f"SET #status = :end, status_shard = :end_shard, {sets}, finished_at = :now, "
            f"updated_at = :now, lease_until = :zero, {expiry}"
        )
        names = {**names, **EXPIRY_NAMES}
        values = {
            **values,
            **expiry_values,
            ":end": _S(status),
            ":end_shard": _S(status_shard(status, run_id)),
            ":now": _S(iso(now)),
            ":zero": _N(0),
        }
        if wake_parent is None:
            self._fenced_update(run_id, token, update, values, names)
            return False
        own = {"Update": self._fenced(run_id, token, update, values, names)}
        woke = self.end_with_parent(own, run_id, wake_parent, now)
        if woke is None:
            raise _lease_lost(run_id, token)
        return woke
