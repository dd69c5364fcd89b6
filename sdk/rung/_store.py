"""DynamoDB: the only module that knows rung's table layout and builds conditions.

One table, string keys ``pk``/``sk``:

    RUN#<run_id>   #RUN             the run: status, payload, lease, attempts, failures
    RUN#<run_id>   STEP#<step_id>   a step checkpoint, written once
    IDEM#<task>#<key>  #IDEM        an idempotency key -> run id, with its expiry

Fencing (invariant 2). The run item carries ``lease_token``, a counter raised by
every claim. Every later write to the run item by that worker is conditioned on
``lease_token = :token AND status = RUNNING``; a worker whose lease was taken over
(its token is stale) gets ``LeaseLost`` and must stop. Step checkpoints carry no
token: they are write-once (``attribute_not_exists``), the first write wins, and a
loser reads and continues from the winner's value (invariant 1).

Timeline of a claim (times are epoch ms compared inside DynamoDB, from the
injected clock; DynamoDB TTL deletion can lag by days, so expiry is always
checked in the condition, never assumed):

    QUEUED/DELAYED, available_at <= now  --claim-->  RUNNING, token+1, lease_until
    RUNNING, lease_until < now (holder died) --reclaim--> RUNNING, token+1, attempt+1

The reconciler (rung._reconcile) writes one attribute of its own, ``nudged_at``
(epoch ms), and only while the run item is exactly as it listed it (status, token,
``available_at``, ``lease_until``); it never touches the token, so fenced writes
and claims are unaffected:

    QUEUED/DELAYED, available_at < now - grace, unchanged  --nudge-->  nudged_at = now
    RUNNING, lease_until < now - grace, unchanged           --nudge-->  nudged_at = now
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from botocore.exceptions import ClientError

from rung._clock import from_ms, iso, parse_iso, to_ms
from rung.errors import ErrorInfo, LeaseLost, RunNotFound
from rung.models import Failure, Run, RunStatus, StepRecord

#: The key schema and indexes; template.yaml declares the same (a test checks).
KEY_SCHEMA = {"pk": "HASH", "sk": "RANGE"}
INDEXES = {
    "by_task": {"task_id": "HASH", "created_sk": "RANGE"},
    "by_status": {"status": "HASH", "created_sk": "RANGE"},
}
TTL_ATTRIBUTE = "expires_at"

_RUN_SK = "#RUN"
_IDEM_SK = "#IDEM"
_STEP_PREFIX = "STEP#"
_NAMES = {"#status": "status"}  # a DynamoDB reserved word


def _run_key(run_id: str) -> dict[str, Any]:
    return {"pk": {"S": f"RUN#{run_id}"}, "sk": {"S": _RUN_SK}}


def _S(value: str) -> dict[str, Any]:  # noqa: N802 - mirrors DynamoDB's type letters
    return {"S": value}


def _N(value: int) -> dict[str, Any]:  # noqa: N802
    return {"N": str(int(value))}


def _is_conditional_failure(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException"


@dataclass(frozen=True)
class NewRun:
    run_id: str
    task_id: str
    payload_json: str
    created_at: datetime
    available_at: datetime
    idempotency_key: str | None
    tags: tuple[str, ...]


@dataclass(frozen=True)
class Claimed:
    run: Run
    token: int
    recovered_from_crash: bool = False


@dataclass(frozen=True)
class NotClaimed:
    """Why a claim was refused, with when to look again (if ever)."""

    reason: str  # "missing", "terminal", "not_due", "busy"
    run: Run | None
    retry_at: datetime | None


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


#: The statuses whose way forward is a message: a reconciler re-drives these.
STRANDABLE = (RunStatus.QUEUED, RunStatus.DELAYED, RunStatus.RUNNING)


class DynamoStore:
    """rung's storage port on DynamoDB. Every racing state change is one conditional write."""

    def __init__(self, client: Any, table_name: str) -> None:
        self.client = client
        self.table = table_name

    # -- schema ----------------------------------------------------------------------

    def create_table(self) -> None:
        """Create the table as template.yaml declares it (for emulators and tests)."""
        attrs = {"pk", "sk", "task_id", "status", "created_sk"}
        self.client.create_table(
            TableName=self.table,
            BillingMode="PAY_PER_REQUEST",
            AttributeDefinitions=[
                {"AttributeName": a, "AttributeType": "S"} for a in sorted(attrs)
            ],
            KeySchema=[{"AttributeName": k, "KeyType": t} for k, t in KEY_SCHEMA.items()],
            GlobalSecondaryIndexes=[
                {
                    "IndexName": name,
                    "KeySchema": [{"AttributeName": k, "KeyType": t} for k, t in keys.items()],
                    "Projection": {"ProjectionType": "ALL"},
                }
                for name, keys in INDEXES.items()
            ],
        )
        self.client.get_waiter("table_exists").wait(TableName=self.table)

    # -- runs ------------------------------------------------------------------------

    def create_run(
        self, new: NewRun, idempotency_ttl: timedelta | None, now: datetime
    ) -> tuple[Run, bool]:
        """Record a run; with an idempotency key, at most one run per key within its TTL.

        Returns the run and whether it was created now (False: the key matched).
        """
        item: dict[str, Any] = {
            **_run_key(new.run_id),
            "run_id": _S(new.run_id),
            "task_id": _S(new.task_id),
            "status": _S(
                RunStatus.DELAYED if new.available_at > new.created_at else RunStatus.QUEUED
            ),
            "payload": _S(new.payload_json),
            "created_at": _S(iso(new.created_at)),
            "updated_at": _S(iso(new.created_at)),
            "created_sk": _S(f"{iso(new.created_at)}#{new.run_id}"),
            "available_at": _N(to_ms(new.available_at)),
            "attempt": _N(1),
            "lease_token": _N(0),
            "lease_until": _N(0),
            "failures": {"L": []},
        }
        if new.tags:
            item["tags"] = {"L": [_S(t) for t in new.tags]}
        if new.idempotency_key is None:
            self.client.put_item(
                TableName=self.table, Item=item, ConditionExpression="attribute_not_exists(pk)"
            )
            return self._run_from_item(item), True
        item["idempotency_key"] = _S(new.idempotency_key)
        ttl = idempotency_ttl or timedelta(days=30)
        expires = now + ttl
        idem_key = {"pk": _S(f"IDEM#{new.task_id}#{new.idempotency_key}"), "sk": _S(_IDEM_SK)}
        try:
            self.client.transact_write_items(
                TransactItems=[
                    {
                        "Put": {
                            "TableName": self.table,
                            "Item": {
                                **idem_key,
                                "run_id": _S(new.run_id),
                                "expires_at_ms": _N(to_ms(expires)),
                                TTL_ATTRIBUTE: _N(int(expires.timestamp())),
                            },
                            # key_not_exists OR expiry_expired: a key past its TTL may be reused
                            # even if DynamoDB's TTL sweeper has not deleted it yet.
                            "ConditionExpression": (
                                "attribute_not_exists(pk) OR expires_at_ms < :now"
                            ),
                            "ExpressionAttributeValues": {":now": _N(to_ms(now))},
                        }
                    },
                    {
                        "Put": {
                            "TableName": self.table,
                            "Item": item,
                            "ConditionExpression": "attribute_not_exists(pk)",
                        }
                    },
                ]
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "TransactionCanceledException":
                raise
            existing = self.client.get_item(
                TableName=self.table, Key=idem_key, ConsistentRead=True
            ).get("Item")
            if existing is None:  # the winner's key expired and vanished meanwhile
                return self.create_run(new, idempotency_ttl, now)
            return self.get_run(existing["run_id"]["S"]), False
        return self._run_from_item(item), True

    def get_run(self, run_id: str) -> Run:
        item = self.client.get_item(
            TableName=self.table, Key=_run_key(run_id), ConsistentRead=True
        ).get("Item")
        if item is None:
            raise RunNotFound(f"no run with id {run_id!r} in table {self.table}")
        return self._run_from_item(item)

    def claim_run(self, run_id: str, now: datetime, lease_for: timedelta) -> Claimed | NotClaimed:
        """Take the run for one worker: QUEUED/DELAYED and due -> RUNNING with a new token."""
        try:
            out = self.client.update_item(
                TableName=self.table,
                Key=_run_key(run_id),
                UpdateExpression=(
                    "SET #status = :running, lease_token = lease_token + :one, "
                    "lease_until = :lease, updated_at = :now, "
                    "started_at = if_not_exists(started_at, :now), "
                    "attempt_started_at = if_not_exists(attempt_started_at, :now)"
                ),
                ConditionExpression=("#status IN (:queued, :delayed) AND available_at <= :now_ms"),
                ExpressionAttributeNames=_NAMES,
                ExpressionAttributeValues={
                    ":running": _S(RunStatus.RUNNING),
                    ":queued": _S(RunStatus.QUEUED),
                    ":delayed": _S(RunStatus.DELAYED),
                    ":one": _N(1),
                    ":lease": _N(to_ms(now + lease_for)),
                    ":now": _S(iso(now)),
                    ":now_ms": _N(to_ms(now)),
                },
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
            if run.status == RunStatus.RUNNING:
                assert run.lease_until is not None
                if run.lease_until < now:
                    return NotClaimed("crashed", run, now)
                return NotClaimed("busy", run, run.lease_until)
            return NotClaimed("not_due", run, run.available_at)
        run = self._run_from_item(out["Attributes"])
        return Claimed(run, run.lease_token)

    def reclaim_crashed(
        self, run: Run, now: datetime, lease_for: timedelta, failure: Failure
    ) -> Claimed | NotClaimed:
        """Take over a RUNNING run whose holder's lease expired; the crash is an attempt."""
        try:
            out = self.client.update_item(
                TableName=self.table,
                Key=_run_key(run.run_id),
                UpdateExpression=(
                    "SET lease_token = lease_token + :one, lease_until = :lease, "
                    "attempt = attempt + :one, failures = list_append(failures, :failure), "
                    "attempt_started_at = :now, updated_at = :now"
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
                },
                ReturnValues="ALL_NEW",
            )
        except ClientError as exc:
            if not _is_conditional_failure(exc):
                raise
            return NotClaimed("busy", run, now + lease_for)  # another worker took it over
        new = self._run_from_item(out["Attributes"])
        return Claimed(new, new.lease_token, recovered_from_crash=True)

    def renew_lease(self, run_id: str, token: int, until: datetime) -> None:
        self._fenced_update(run_id, token, "SET lease_until = :lease", {":lease": _N(to_ms(until))})

    def schedule_retry(
        self, run_id: str, token: int, failure: Failure, available_at: datetime, now: datetime
    ) -> None:
        """End this attempt: record its failure, release the lease, due again later."""
        status = RunStatus.DELAYED if available_at > now else RunStatus.QUEUED
        self._fenced_update(
            run_id,
            token,
            "SET #status = :status, available_at = :due, attempt = attempt + :one, "
            "failures = list_append(failures, :failure), lease_until = :zero, updated_at = :now "
            "REMOVE attempt_started_at",
            {
                ":status": _S(status),
                ":due": _N(to_ms(available_at)),
                ":one": _N(1),
                ":zero": _N(0),
                ":now": _S(iso(now)),
                ":failure": {"L": [_S(_failure_json(failure))]},
            },
        )

    def release_to_continue(self, run_id: str, token: int, now: datetime) -> None:
        """Give the run back without ending the attempt (the invocation ran short of time)."""
        self._fenced_update(
            run_id,
            token,
            "SET #status = :queued, available_at = :due, lease_until = :zero, updated_at = :now",
            {
                ":queued": _S(RunStatus.QUEUED),
                ":due": _N(to_ms(now)),
                ":zero": _N(0),
                ":now": _S(iso(now)),
            },
        )

    def complete_run(self, run_id: str, token: int, output_json: str, now: datetime) -> None:
        self._fenced_update(
            run_id,
            token,
            "SET #status = :done, #output = :output, finished_at = :now, updated_at = :now, "
            "lease_until = :zero",
            {
                ":done": _S(RunStatus.COMPLETED),
                ":output": _S(output_json),
                ":now": _S(iso(now)),
                ":zero": _N(0),
            },
            names={"#output": "output"},
        )

    def fail_run(
        self, run_id: str, token: int, error: ErrorInfo, failure: Failure | None, now: datetime
    ) -> None:
        """The one terminal transition for failure; records the last failed attempt too."""
        update = (
            "SET #status = :failed, #error = :error, finished_at = :now, "
            "updated_at = :now, lease_until = :zero"
        )
        values: dict[str, Any] = {
            ":failed": _S(RunStatus.FAILED),
            ":error": _S(json.dumps(error.to_json())),
            ":now": _S(iso(now)),
            ":zero": _N(0),
        }
        if failure is not None:
            update += ", failures = list_append(failures, :failure)"
            values[":failure"] = {"L": [_S(_failure_json(failure))]}
        self._fenced_update(run_id, token, update, values, names={"#error": "error"})

    def _fenced_update(
        self,
        run_id: str,
        token: int,
        update: str,
        values: dict[str, Any],
        names: dict[str, str] | None = None,
    ) -> None:
        try:
            self.client.update_item(
                TableName=self.table,
                Key=_run_key(run_id),
                UpdateExpression=update,
                ConditionExpression="#status = :running AND lease_token = :token",
                ExpressionAttributeNames={**_NAMES, **(names or {})},
                ExpressionAttributeValues={
                    **values,
                    ":running": _S(RunStatus.RUNNING),
                    ":token": _N(token),
                },
            )
        except ClientError as exc:
            if not _is_conditional_failure(exc):
                raise
            raise LeaseLost(
                f"run {run_id}: this worker's lease (token {token}) is no longer valid; another "
                "worker owns the run or it has finished, so this worker stops"
            ) from None

    def list_runs(
        self, *, status: RunStatus | None = None, task_id: str | None = None, limit: int = 50
    ) -> list[Run]:
        """Newest first, by task and/or status, through the indexes."""
        if task_id is not None:
            runs = self._query_index("by_task", "task_id", task_id, limit, status)
        elif status is not None:
            runs = self._query_index("by_status", "status", status, limit, None)
        else:
            runs = [
                r
                for s in RunStatus
                for r in self._query_index("by_status", "status", s, limit, None)
            ]
        runs.sort(key=lambda r: (r.created_at, r.run_id), reverse=True)
        return runs[:limit]

    def _query_index(
        self, index: str, attr: str, value: str, limit: int, status: RunStatus | None
    ) -> list[Run]:
        kwargs: dict[str, Any] = {
            "TableName": self.table,
            "IndexName": index,
            "KeyConditionExpression": "#k = :v",
            "ExpressionAttributeNames": {"#k": attr},
            "ExpressionAttributeValues": {":v": _S(value)},
            "ScanIndexForward": False,
        }
        if status is not None:
            kwargs["FilterExpression"] = "#status = :status"
            kwargs["ExpressionAttributeNames"]["#status"] = "status"
            kwargs["ExpressionAttributeValues"][":status"] = _S(status)
        runs: list[Run] = []
        for item in self._paginate("query", kwargs):
            runs.append(self._run_from_item(item))
            if len(runs) >= limit:
                break
        return runs

    # -- the reconciler ----------------------------------------------------------------

    def find_stranded(
        self, *, due_before: datetime, not_nudged_since: datetime, limit: int
    ) -> list[StrandedRun]:
        """Runs that should have moved before ``due_before`` and have not, oldest first.

        QUEUED/DELAYED runs still unclaimed with ``available_at < due_before``, and
        RUNNING runs whose lease expired before ``due_before``; leaving out those
        nudged at or after ``not_nudged_since``. At most ``limit`` runs.

        Reads the ``by_status`` index (eventually consistent): a listed run may have
        moved since, which ``mark_nudged`` checks. Both due times are at or after the
        run's creation, so the key condition ``created_sk < due_before`` skips every
        younger run without reading it.
        """
        due_ms = _N(to_ms(due_before))
        found: list[StrandedRun] = []
        for status in STRANDABLE:
            due_attr = "lease_until" if status == RunStatus.RUNNING else "available_at"
            kwargs: dict[str, Any] = {
                "TableName": self.table,
                "IndexName": "by_status",
                "KeyConditionExpression": "#status = :status AND created_sk < :created_before",
                "FilterExpression": (
                    f"{due_attr} < :due AND "
                    "(attribute_not_exists(nudged_at) OR nudged_at < :not_since)"
                ),
                "ExpressionAttributeNames": dict(_NAMES),
                "ExpressionAttributeValues": {
                    ":status": _S(status),
                    ":created_before": _S(iso(due_before)),
                    ":due": due_ms,
                    ":not_since": _N(to_ms(not_nudged_since)),
                },
                "ScanIndexForward": True,  # oldest first: the longest stranded go first
            }
            for item in self._paginate("query", kwargs):
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

    # -- steps -----------------------------------------------------------------------

    def load_steps(self, run_id: str) -> dict[str, StepRecord]:
        items = self._paginate(
            "query",
            {
                "TableName": self.table,
                "ConsistentRead": True,
                "KeyConditionExpression": "pk = :pk AND begins_with(sk, :prefix)",
                "ExpressionAttributeValues": {
                    ":pk": _S(f"RUN#{run_id}"),
                    ":prefix": _S(_STEP_PREFIX),
                },
            },
        )
        records = (self._step_from_item(i) for i in items)
        return {r.step_id: r for r in records}

    def load_run_and_steps(self, run_id: str) -> tuple[Run, list[StepRecord]]:
        """The run and its checkpoints in one consistent query (for history)."""
        run: Run | None = None
        steps: list[StepRecord] = []
        for item in self._paginate(
            "query",
            {
                "TableName": self.table,
                "ConsistentRead": True,
                "KeyConditionExpression": "pk = :pk",
                "ExpressionAttributeValues": {":pk": _S(f"RUN#{run_id}")},
            },
        ):
            if item["sk"]["S"] == _RUN_SK:
                run = self._run_from_item(item)
            else:
                steps.append(self._step_from_item(item))
        if run is None:
            raise RunNotFound(f"no run with id {run_id!r} in table {self.table}")
        steps.sort(key=lambda s: s.seq)
        return run, steps

    def record_step(self, run_id: str, record: StepRecord) -> StepRecord:
        """Write a checkpoint once. A loser of a race gets the winner's record.

        An at-most-once start marker ("started") may be replaced by the outcome.
        """
        item = self._step_item(run_id, record)
        try:
            self.client.put_item(
                TableName=self.table,
                Item=item,
                ConditionExpression="attribute_not_exists(pk) OR outcome = :started",
                ExpressionAttributeValues={":started": _S("started")},
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as exc:
            if not _is_conditional_failure(exc) or "Item" not in exc.response:
                raise
            return self._step_from_item(exc.response["Item"])  # type: ignore[typeddict-item]
        return record

    def mark_step_started(
        self, run_id: str, record: StepRecord, replace_attempt: int | None
    ) -> StepRecord:
        """Write an at-most-once marker; replace only the marker of ``replace_attempt``."""
        item = self._step_item(run_id, record)
        if replace_attempt is None:
            condition, values = "attribute_not_exists(pk)", None
        else:
            condition = "outcome = :started AND attempt = :previous"
            values = {":started": _S("started"), ":previous": _N(replace_attempt)}
        try:
            kwargs: dict[str, Any] = {
                "TableName": self.table,
                "Item": item,
                "ConditionExpression": condition,
                "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
            }
            if values:
                kwargs["ExpressionAttributeValues"] = values
            self.client.put_item(**kwargs)
        except ClientError as exc:
            if not _is_conditional_failure(exc) or "Item" not in exc.response:
                raise
            return self._step_from_item(exc.response["Item"])  # type: ignore[typeddict-item]
        return record

    # -- items <-> domain --------------------------------------------------------------

    def _step_item(self, run_id: str, record: StepRecord) -> dict[str, Any]:
        item: dict[str, Any] = {
            "pk": _S(f"RUN#{run_id}"),
            "sk": _S(_STEP_PREFIX + record.step_id),
            "step_id": _S(record.step_id),
            "seq": _N(record.seq),
            "outcome": _S(record.outcome),
            "attempt": _N(record.attempt),
            "run_attempt": _N(record.run_attempt),
            "started_at": _S(iso(record.started_at)),
        }
        if record.finished_at is not None:
            item["finished_at"] = _S(iso(record.finished_at))
        if record.result_json is not None:
            item["result"] = _S(record.result_json)
        if record.error is not None:
            item["error"] = _S(json.dumps(record.error.to_json()))
        return item

    @staticmethod
    def _step_from_item(item: dict[str, Any]) -> StepRecord:
        return StepRecord(
            step_id=item["step_id"]["S"],
            seq=int(item["seq"]["N"]),
            outcome=item["outcome"]["S"],
            attempt=int(item["attempt"]["N"]),
            run_attempt=int(item["run_attempt"]["N"]),
            started_at=parse_iso(item["started_at"]["S"]),
            finished_at=parse_iso(item["finished_at"]["S"]) if "finished_at" in item else None,
            result_json=item["result"]["S"] if "result" in item else None,
            error=ErrorInfo.from_json(json.loads(item["error"]["S"])) if "error" in item else None,
        )

    @staticmethod
    def _run_from_item(item: dict[str, Any]) -> Run:
        def opt_time(name: str) -> datetime | None:
            return parse_iso(item[name]["S"]) if name in item else None

        lease_ms = int(item.get("lease_until", {"N": "0"})["N"])
        return Run(
            run_id=item["run_id"]["S"],
            task_id=item["task_id"]["S"],
            status=RunStatus(item["status"]["S"]),
            attempt=int(item["attempt"]["N"]),
            payload=json.loads(item["payload"]["S"]),
            created_at=parse_iso(item["created_at"]["S"]),
            updated_at=parse_iso(item["updated_at"]["S"]),
            available_at=from_ms(int(item["available_at"]["N"])),
            started_at=opt_time("started_at"),
            attempt_started_at=opt_time("attempt_started_at"),
            finished_at=opt_time("finished_at"),
            output=json.loads(item["output"]["S"]) if "output" in item else None,
            error=ErrorInfo.from_json(json.loads(item["error"]["S"])) if "error" in item else None,
            idempotency_key=item["idempotency_key"]["S"] if "idempotency_key" in item else None,
            tags=tuple(t["S"] for t in item.get("tags", {"L": []})["L"]),
            failures=tuple(
                _failure_from_json(f["S"]) for f in item.get("failures", {"L": []})["L"]
            ),
            lease_token=int(item["lease_token"]["N"]),
            lease_until=from_ms(lease_ms),
        )

    def _paginate(self, operation: str, kwargs: dict[str, Any]) -> Iterator[dict[str, Any]]:
        paginator = self.client.get_paginator(operation)
        for page in paginator.paginate(**kwargs):
            yield from page.get("Items", [])


#: Failed attempts live on the run item (one write per retry, fenced with the rest);
#: their tracebacks are cut shorter than a final error's so that a run with many
#: retries stays far below DynamoDB's 400 KB item limit.
FAILURE_TRACEBACK_CHARS = 1500


def _failure_json(failure: Failure) -> str:
    error = failure.error.to_json()
    if len(error["traceback"]) > FAILURE_TRACEBACK_CHARS:
        error["traceback"] = "...\n" + error["traceback"][-FAILURE_TRACEBACK_CHARS:]
    return json.dumps(
        {
            "attempt": failure.attempt,
            "kind": failure.kind,
            "step_id": failure.step_id,
            "error": error,
            "started_at": iso(failure.started_at) if failure.started_at else None,
            "step_started_at": iso(failure.step_started_at) if failure.step_started_at else None,
            "failed_at": iso(failure.failed_at),
            "delay_ms": int(failure.delay.total_seconds() * 1000)
            if failure.delay is not None
            else None,
        }
    )


def _failure_from_json(text: str) -> Failure:
    data = json.loads(text)
    return Failure(
        attempt=int(data["attempt"]),
        kind=data["kind"],
        step_id=data.get("step_id"),
        error=ErrorInfo.from_json(data["error"]),
        started_at=parse_iso(data["started_at"]) if data.get("started_at") else None,
        failed_at=parse_iso(data["failed_at"]),
        step_started_at=parse_iso(data["step_started_at"]) if data.get("step_started_at") else None,
        delay=timedelta(milliseconds=data["delay_ms"])
        if data.get("delay_ms") is not None
        else None,
    )
