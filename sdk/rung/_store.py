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

Children and the lifecycle (docs/children.md, docs/lifecycle.md). A child run item
names ``parent_run_id`` (and ``parent_waits`` when the parent waits for it); it is
created in one transaction with the parent's ``child`` checkpoint, under a check of
the parent's lease (``start_child``). A parent waiting for children records them in
``awaits``; a waited-for child's terminal transition wakes it in the same transaction
(``end_with_parent``):

    parent RUNNING --suspend (check: an awaited child unfinished)--> WAITING, awaits
    child  RUNNING --end + (parent WAITING, awaits child) --> terminal; parent due now
    any non-terminal --cancel_run--> CANCELED       (no lease needed; fenced writes then fail)
    FAILED --redrive_run (+ delete the failed checkpoint)--> QUEUED, attempt + 1
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from botocore.exceptions import ClientError

from rung._clock import from_ms, iso, parse_iso, to_ms
from rung.errors import (
    Contended,
    ErrorInfo,
    LeaseLost,
    RunAlreadyFinished,
    RunNotFailed,
    RunNotFound,
    TokenAlreadyResolved,
    TokenNotFound,
)
from rung.models import Failure, Redrive, Run, RunStatus, StepRecord, TokenState

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


def _cancellation_reasons(exc: ClientError) -> list[str] | None:
    """Per-item codes of a canceled transaction ("None" where an item was fine), or None
    when the error is not a transaction cancellation."""
    if exc.response.get("Error", {}).get("Code") != "TransactionCanceledException":
        return None
    reasons = exc.response.get("CancellationReasons")
    if reasons is None:  # some emulators only put them in the message
        message = exc.response.get("Error", {}).get("Message", "")
        inside = message[message.find("[") + 1 : message.rfind("]")]
        return [part.strip() for part in inside.split(",")] if "[" in message else None
    return [str(r.get("Code", "None")) for r in reasons]


def _map_key(key: str) -> str:
    """A concurrency key as a DynamoDB map key: prefixed, since a name may not be empty
    and runs without a key have the key ""."""
    return "k:" + key


def _queue_key(name: str) -> dict[str, Any]:
    return {"pk": {"S": f"QUEUE#{name}"}, "sk": {"S": "#QUEUE"}}


@dataclass(frozen=True)
class Holder:
    key: str
    until_ms: int
    start_ms: int  # a reserved start (rate limit); 0 when none was needed or made
    token: int = 0  # the lease token of the attempt holding it (0: handed off, not taken)


@dataclass(frozen=True)
class Waiter:
    sk: str
    run_id: str
    key: str
    seq: int


@dataclass(frozen=True)
class QueueState:
    """A queue's live state as stored (see DynamoStore's queue section)."""

    name: str
    version: int = 0
    holders: dict[str, Holder] = field(default_factory=dict)
    waiting: int = 0
    keyseq: dict[str, int] = field(default_factory=dict)
    served: int = 0
    starts: list[int] = field(default_factory=list)
    kstarts: dict[str, list[int]] = field(default_factory=dict)
    has_kstarts: bool = False
    paused: bool = False
    limit_set: int | None = None
    per_key_set: int | None = None
    stored: bool = False  # the queue item exists (it has run, or was set by an operator)


def _queue_state_from_item(name: str, item: dict[str, Any] | None) -> QueueState:
    if item is None:
        return QueueState(name)

    def num(attr: str) -> int:
        return int(item[attr]["N"]) if attr in item else 0

    return QueueState(
        name=name,
        version=num("version"),
        holders={
            run_id: Holder(
                key=h["M"]["k"]["S"],
                until_ms=int(h["M"]["u"]["N"]),
                start_ms=int(h["M"]["s"]["N"]),
                token=int(h["M"].get("t", {"N": "0"})["N"]),
            )
            for run_id, h in item.get("holders", {"M": {}})["M"].items()
        },
        waiting=num("waiting"),
        keyseq={k[2:]: int(v["N"]) for k, v in item.get("keyseq", {"M": {}})["M"].items()},
        served=num("served"),
        starts=[int(v["N"]) for v in item.get("starts", {"L": []})["L"]],
        kstarts={
            k[2:]: [int(x["N"]) for x in v["L"]]
            for k, v in item.get("kstarts", {"M": {}})["M"].items()
        },
        has_kstarts="kstarts" in item,
        paused=bool(item.get("paused", {"BOOL": False})["BOOL"]),
        limit_set=num("limit_set") if "limit_set" in item else None,
        per_key_set=num("per_key_set") if "per_key_set" in item else None,
        stored=True,
    )


def _token_key(token_id: str) -> dict[str, Any]:
    return {"pk": {"S": f"TOKEN#{token_id}"}, "sk": {"S": "#TOKEN"}}


#: A token's status while nobody has answered it.
TOKEN_OPEN = "WAITING"
#: Token items are kept this long after their timeout (DynamoDB TTL), then deleted.
TOKEN_RETENTION = timedelta(days=30)


def _lease_lost(run_id: str, token: int) -> LeaseLost:
    return LeaseLost(
        f"run {run_id}: this worker's lease (token {token}) is no longer valid; another "
        "worker owns the run or it has finished, so this worker stops"
    )


def _ms(delta: timedelta) -> int:
    return max(int(delta.total_seconds() * 1000), 0)


#: ``available_at`` of a run that waits with no timer (only a waker moves it).
NEVER_MS = 253402300799000  # 9999-12-31T23:59:59Z
_ADD_COMPUTE = "compute_ms = if_not_exists(compute_ms, :zero) + :spent"
#: The most tokens ``suspend_run`` checks: a transaction holds at most 100 items;
#: one is the run's update and one may check an awaited child run.
SUSPEND_TOKEN_CHECKS = 98


@dataclass(frozen=True)
class NewRun:
    run_id: str
    task_id: str
    payload_json: str
    created_at: datetime
    available_at: datetime
    idempotency_key: str | None
    tags: tuple[str, ...]
    #: a child run: its parent, and whether the parent waits for it (its end wakes it)
    parent_run_id: str | None = None
    parent_waits: bool = False
    detached: bool = False
    #: ``Client.replay``: the run this one replays
    replay_of: str | None = None


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
STRANDABLE = (RunStatus.QUEUED, RunStatus.DELAYED, RunStatus.WAITING, RunStatus.RUNNING)


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
        item = self._new_run_item(new)
        if new.idempotency_key is None:
            self.client.put_item(
                TableName=self.table, Item=item, ConditionExpression="attribute_not_exists(pk)"
            )
            return self._run_from_item(item), True
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

    @staticmethod
    def _new_run_item(new: NewRun) -> dict[str, Any]:
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
        if new.idempotency_key is not None:
            item["idempotency_key"] = _S(new.idempotency_key)
        if new.parent_run_id is not None:
            item["parent_run_id"] = _S(new.parent_run_id)
            item["parent_waits"] = {"BOOL": new.parent_waits}
            item["detached"] = {"BOOL": new.detached}
        if new.replay_of is not None:
            item["replay_of"] = _S(new.replay_of)
        return item

    def get_run(self, run_id: str) -> Run:
        item = self.client.get_item(
            TableName=self.table, Key=_run_key(run_id), ConsistentRead=True
        ).get("Item")
        if item is None:
            raise RunNotFound(f"no run with id {run_id!r} in table {self.table}")
        return self._run_from_item(item)

    def claim_run(self, run_id: str, now: datetime, lease_for: timedelta) -> Claimed | NotClaimed:
        """Take the run for one worker: QUEUED/DELAYED/WAITING and due -> RUNNING, new token."""
        try:
            out = self.client.update_item(
                TableName=self.table,
                Key=_run_key(run_id),
                UpdateExpression=(
                    "SET #status = :running, lease_token = lease_token + :one, "
                    "lease_until = :lease, updated_at = :now, "
                    "started_at = if_not_exists(started_at, :now), "
                    "attempt_started_at = if_not_exists(attempt_started_at, :now) "
                    "REMOVE waiting_for, overran_step, awaits, wake_kind"
                ),
                ConditionExpression=(
                    "#status IN (:queued, :delayed, :waiting) AND available_at <= :now_ms"
                ),
                ExpressionAttributeNames=_NAMES,
                ExpressionAttributeValues={
                    ":running": _S(RunStatus.RUNNING),
                    ":queued": _S(RunStatus.QUEUED),
                    ":delayed": _S(RunStatus.DELAYED),
                    ":waiting": _S(RunStatus.WAITING),
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
                    "attempt_started_at = :now, updated_at = :now REMOVE overran_step"
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

    def mark_overrun(self, run_id: str, token: int, step_id: str) -> None:
        """Note that ``step_id`` was still running as the invocation hit its time limit."""
        self._fenced_update(run_id, token, "SET overran_step = :step", {":step": _S(step_id)})

    def renew_lease(self, run_id: str, token: int, until: datetime) -> None:
        self._fenced_update(run_id, token, "SET lease_until = :lease", {":lease": _N(to_ms(until))})

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
        self._fenced_update(
            run_id,
            token,
            "SET #status = :status, available_at = :due, attempt = attempt + :one, "
            "failures = list_append(failures, :failure), lease_until = :zero, updated_at = :now, "
            f"{_ADD_COMPUTE} REMOVE attempt_started_at",
            {
                ":status": _S(status),
                ":due": _N(to_ms(available_at)),
                ":one": _N(1),
                ":zero": _N(0),
                ":now": _S(iso(now)),
                ":failure": {"L": [_S(_failure_json(failure))]},
                ":spent": _N(_ms(spent)),
            },
        )

    def release_to_continue(
        self, run_id: str, token: int, now: datetime, spent: timedelta = timedelta(0)
    ) -> None:
        """Give the run back without ending the attempt (the invocation ran short of time)."""
        self._fenced_update(
            run_id,
            token,
            "SET #status = :queued, available_at = :due, lease_until = :zero, updated_at = :now, "
            + _ADD_COMPUTE,
            {
                ":queued": _S(RunStatus.QUEUED),
                ":due": _N(to_ms(now)),
                ":zero": _N(0),
                ":now": _S(iso(now)),
                ":spent": _N(_ms(spent)),
            },
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

        Raises:
            LeaseLost: the worker's token is stale.
        """
        values: dict[str, Any] = {
            ":waiting": _S(RunStatus.WAITING),
            ":due": _N(to_ms(wake_at) if wake_at is not None else NEVER_MS),
            ":zero": _N(0),
            ":now": _S(iso(now)),
            ":for": _S(waiting_for[:500]),
            ":spent": _N(_ms(spent)),
            ":running": _S(RunStatus.RUNNING),
            ":token": _N(token),
        }
        awaits = ""
        if children:
            awaits = ", awaits = :awaits"
            values[":awaits"] = {"SS": list(dict.fromkeys(children))}
        if wake_kind is not None:
            awaits += ", wake_kind = :wake_kind"
            values[":wake_kind"] = _S(wake_kind)
        update = {
            "TableName": self.table,
            "Key": _run_key(run_id),
            "UpdateExpression": (
                "SET #status = :waiting, available_at = :due, lease_until = :zero, "
                f"updated_at = :now, waiting_for = :for, {_ADD_COMPUTE}{awaits}"
            ),
            "ConditionExpression": "#status = :running AND lease_token = :token",
            "ExpressionAttributeNames": _NAMES,
            "ExpressionAttributeValues": values,
        }
        if len(tokens) > SUSPEND_TOKEN_CHECKS:
            raise ValueError(f"suspend_run checks at most {SUSPEND_TOKEN_CHECKS} tokens")
        if not tokens and not children:
            try:
                self.client.update_item(**update)
            except ClientError as exc:
                if not _is_conditional_failure(exc):
                    raise
                raise _lease_lost(run_id, token) from None
            return True
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
        wake_parent: str | None = None,
    ) -> bool:
        """The terminal transition for a run past its ``max_duration``.

        ``wake_parent``: the run that waits for this one (see ``end_with_parent``);
        returns whether it was woken (its message must then be sent).
        """
        return self._end(
            run_id,
            token,
            now,
            wake_parent,
            "SET #status = :timed_out, #error = :error, finished_at = :now, "
            "updated_at = :now, lease_until = :zero",
            {
                ":timed_out": _S(RunStatus.TIMED_OUT),
                ":error": _S(json.dumps(error.to_json())),
                ":now": _S(iso(now)),
                ":zero": _N(0),
            },
            names={"#error": "error"},
        )

    def complete_run(
        self,
        run_id: str,
        token: int,
        output_json: str,
        now: datetime,
        *,
        wake_parent: str | None = None,
    ) -> bool:
        """The terminal transition for success; ``wake_parent`` as for ``time_out_run``."""
        return self._end(
            run_id,
            token,
            now,
            wake_parent,
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
        self,
        run_id: str,
        token: int,
        error: ErrorInfo,
        failure: Failure | None,
        now: datetime,
        *,
        wake_parent: str | None = None,
        failed_step: str | None = None,
    ) -> bool:
        """The one terminal transition for failure; records the last failed attempt too.

        ``failed_step``: the step whose failure (uncaught in the task) failed the run;
        ``redrive_run`` removes its checkpoint. ``wake_parent`` as for ``time_out_run``.
        """
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
        if failed_step is not None:
            update += ", failed_step = :failed_step"
            values[":failed_step"] = _S(failed_step)
        return self._end(run_id, token, now, wake_parent, update, values, names={"#error": "error"})

    def _end(
        self,
        run_id: str,
        token: int,
        now: datetime,
        wake_parent: str | None,
        update: str,
        values: dict[str, Any],
        names: dict[str, str] | None = None,
    ) -> bool:
        """A fenced terminal transition; with ``wake_parent``, in one transaction with
        the parent's wake-up (``end_with_parent``). Returns whether the parent was woken."""
        if wake_parent is None:
            self._fenced_update(run_id, token, update, values, names)
            return False
        own = {
            "Update": {
                "TableName": self.table,
                "Key": _run_key(run_id),
                "UpdateExpression": update,
                "ConditionExpression": "#status = :running AND lease_token = :token",
                "ExpressionAttributeNames": {**_NAMES, **(names or {})},
                "ExpressionAttributeValues": {
                    **values,
                    ":running": _S(RunStatus.RUNNING),
                    ":token": _N(token),
                },
            }
        }
        woke = self.end_with_parent(own, run_id, wake_parent, now)
        if woke is None:
            raise _lease_lost(run_id, token)
        return woke

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
            raise _lease_lost(run_id, token) from None

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
        self, own: dict[str, Any], run_id: str, parent_run_id: str, now: datetime
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

        Returns whether the parent was woken (the caller sends its message), or None
        when ``own``'s condition failed (nothing was written).
        """
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
                try:
                    self.client.transact_write_items(TransactItems=[own, second])
                except ClientError as exc:
                    reasons = _cancellation_reasons(exc)
                    if reasons is None:
                        raise
                    if reasons[0] == "ConditionalCheckFailed":
                        return None
                    continue  # the parent was not as assumed: try the other form
                return woke
            # The parent changed between the two forms (it suspended or resumed): again.
        raise Contended(
            f"run {run_id}: its parent {parent_run_id} kept suspending and resuming while "
            "the child's end was recorded; nothing was half-written, the parent's own "
            "recheck reads the child's outcome"
        )

    def cancel_run(
        self, run_id: str, error: ErrorInfo, now: datetime, *, wake_parent: str | None = None
    ) -> bool:
        """QUEUED/DELAYED/WAITING/RUNNING -> CANCELED: conditional and final (invariant 3).

        A RUNNING run's worker is not asked: its next fenced write fails (LeaseLost)
        and its cancel check stops it at the next step boundary. ``wake_parent``: the
        run that waits for this one (``end_with_parent``); returns whether it was woken.

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

    # -- queues (flow control) -------------------------------------------------------------
    #
    # QUEUE#<name> / #QUEUE holds a queue's live state, changed by optimistic writes
    # conditioned on its ``version``: ``holders`` (run id -> {k: key, u: lease until ms,
    # s: reserved start ms}), ``waiting`` (parked runs), ``keyseq`` (key -> the sequence
    # number of its last parked run) and ``served`` (the last handed-off sequence
    # number), the rate window ``starts`` (ms, past and reserved), ``kstarts`` per key,
    # and operator settings ``paused``, ``limit_set``, ``per_key_set``. Parked runs are
    # QUEUE#<name> / WAIT#<1000-priority>#<seq>#<run_id> items: a query reads them in
    # priority order, and within one priority round-robin across keys (see park).

    def queue_state(self, name: str) -> QueueState:
        item = self.client.get_item(
            TableName=self.table, Key=_queue_key(name), ConsistentRead=True
        ).get("Item")
        return _queue_state_from_item(name, item)

    def _queue_update(
        self,
        name: str,
        version: int,
        sets: list[str],
        removes: list[str],
        names: dict[str, str],
        values: dict[str, Any],
    ) -> dict[str, Any]:
        """An ``Update`` on the queue item conditioned on ``version`` (raising it)."""
        sets = [*sets, "version = :next_version"]
        expression = "SET " + ", ".join(sets)
        if removes:
            expression += " REMOVE " + ", ".join(removes)
        update: dict[str, Any] = {
            "TableName": self.table,
            "Key": _queue_key(name),
            "UpdateExpression": expression,
            "ConditionExpression": "attribute_not_exists(pk) OR version = :version",
            "ExpressionAttributeValues": {
                **values,
                ":next_version": _N(version + 1),
                ":version": _N(version),
            },
        }
        if names:
            update["ExpressionAttributeNames"] = names
        return update

    def take_slot(
        self,
        state: QueueState,
        run_id: str,
        key: str,
        until: datetime,
        start_ms: int,
        prune: list[str],
        starts: list[int] | None = None,
        key_starts: list[int] | None = None,
        token: int = 0,
    ) -> bool:
        """Record ``run_id`` as a holder (new or renewed) for the attempt with lease
        ``token``; False if the queue changed."""
        names: dict[str, str] = {"#r": run_id}
        holder = {"k": _S(key), "u": _N(to_ms(until)), "s": _N(start_ms), "t": _N(token)}
        values: dict[str, Any] = {":holder": {"M": holder}}
        sets = ["holders.#r = :holder"] if state.version else ["holders = :holders"]
        if not state.version:
            values[":holders"] = {"M": {run_id: values.pop(":holder")}}
            names.pop("#r")
        removes = []
        for n, other in enumerate(prune):
            if other != run_id:
                names[f"#p{n}"] = other
                removes.append(f"holders.#p{n}")
        if starts is not None:
            sets.append("starts = :starts")
            values[":starts"] = {"L": [_N(v) for v in starts]}
        if key_starts is not None:
            if state.version and state.has_kstarts:
                sets.append("kstarts.#k = :kstarts")
                names["#k"] = _map_key(key)
                values[":kstarts"] = {"L": [_N(v) for v in key_starts]}
            else:
                sets.append("kstarts = :kstarts")
                values[":kstarts"] = {"M": {_map_key(key): {"L": [_N(v) for v in key_starts]}}}
        if not state.version:
            sets += ["waiting = :zero", "served = :zero", "keyseq = :empty"]
            values[":zero"] = _N(0)
            values[":empty"] = {"M": {}}
        update = self._queue_update(state.name, state.version, sets, removes, names, values)
        try:
            self.client.update_item(**update)
        except ClientError as exc:
            if not _is_conditional_failure(exc):
                raise
            return False
        return True

    def renew_slot(
        self,
        name: str,
        run_id: str,
        until: datetime,
        now: datetime,
        token: int,
        *,
        take: bool = False,
    ) -> bool:
        """Extend a held slot's lease for the attempt with lease ``token``; False if the
        run holds no live slot there any more (or, unless ``take``, another attempt of
        the run holds it). ``take``: the attempt takes over the run's live entry (a
        hand-off, or its own reservation from before a deferral).

        An entry whose lease has run out is not renewed even if nobody pruned it yet:
        every other writer already counts it as free, and may have filled it."""
        condition = "holders.#r.u > :now"
        values = {":until": _N(to_ms(until)), ":now": _N(to_ms(now)), ":token": _N(token)}
        if not take:
            condition += " AND holders.#r.t = :token"
        try:
            self.client.update_item(
                TableName=self.table,
                Key=_queue_key(name),
                UpdateExpression="SET holders.#r.u = :until, holders.#r.t = :token",
                ConditionExpression=condition,
                ExpressionAttributeNames={"#r": run_id},
                ExpressionAttributeValues=values,
            )
        except ClientError as exc:
            if not _is_conditional_failure(exc):
                raise
            return False
        return True

    def release_slot(self, name: str, run_id: str, token: int) -> QueueState | None:
        """Give back the slot the attempt with lease ``token`` holds (idempotent) and
        return the queue as it is after; None if the queue has no state or the run's
        entry belongs to a later attempt (the run was claimed again before this one
        let go: that attempt holds the slot now). No version condition: fewer holders
        can only make another writer's decision, based on the count before, more
        conservative."""
        try:
            out = self.client.update_item(
                TableName=self.table,
                Key=_queue_key(name),
                UpdateExpression="REMOVE holders.#r",
                ConditionExpression=(
                    "attribute_exists(pk) AND (attribute_not_exists(holders.#r.t) "
                    "OR holders.#r.t = :token)"
                ),
                ExpressionAttributeNames={"#r": run_id},
                ExpressionAttributeValues={":token": _N(token)},
                ReturnValues="ALL_NEW",
            )
        except ClientError as exc:
            if not _is_conditional_failure(exc):
                raise
            return None
        return _queue_state_from_item(name, out.get("Attributes"))

    def park(
        self,
        state: QueueState,
        run_id: str,
        token: int,
        key: str,
        priority: int,
        recheck_at: datetime,
        waiting_for: str,
        now: datetime,
        spent: timedelta,
        parked_sk: str | None,
    ) -> bool | None:
        """Park a claimed run to wait for a slot: one transaction writes its waiter item,
        counts it in the queue (its place: the key's next sequence number, never
        behind the last one served, so a key with many parked runs interleaves with
        the others instead of going first), and releases the run: QUEUED, due only at
        ``recheck_at`` (the safety net) unless a hand-off wakes it first.

        Returns True when parked, False if the queue changed (read it and try again),
        None if the run was parked already (``parked_sk``, as the claim read it: only
        a hand-off changes it, and not while the run is claimed; only the run is
        released then).

        Raises:
            LeaseLost: the worker's token is stale.
        """
        run_update: dict[str, Any] = {
            "TableName": self.table,
            "Key": _run_key(run_id),
            "UpdateExpression": (
                "SET #status = :queued, available_at = :due, lease_until = :zero, "
                f"updated_at = :now, waiting_for = :for, parked_sk = :sk, {_ADD_COMPUTE}"
            ),
            "ConditionExpression": "#status = :running AND lease_token = :token",
            "ExpressionAttributeNames": _NAMES,
            "ExpressionAttributeValues": {
                ":queued": _S(RunStatus.QUEUED),
                ":due": _N(to_ms(recheck_at)),
                ":zero": _N(0),
                ":now": _S(iso(now)),
                ":for": _S(waiting_for[:500]),
                ":spent": _N(_ms(spent)),
                ":running": _S(RunStatus.RUNNING),
                ":token": _N(token),
            },
        }
        if parked_sk is not None:
            # Parked already (the safety net re-sent it): keep its place, if it still
            # has one. A hand-off that found the run claimed meanwhile dropped its
            # waiter item; then it parks afresh below.
            run_update["ExpressionAttributeValues"][":sk"] = _S(parked_sk)
            place = {
                "TableName": self.table,
                "Key": {"pk": _S(f"QUEUE#{state.name}"), "sk": _S(parked_sk)},
                "ConditionExpression": "attribute_exists(pk)",
            }
            try:
                self.client.transact_write_items(
                    TransactItems=[{"Update": run_update}, {"ConditionCheck": place}]
                )
            except ClientError as exc:
                reasons = _cancellation_reasons(exc)
                if reasons is None:
                    raise
                if reasons[0] == "ConditionalCheckFailed":
                    raise _lease_lost(run_id, token) from None
                if reasons[1] != "ConditionalCheckFailed":
                    return False  # a conflict: read the queue and try again
            else:
                return None
        seq = max(state.keyseq.get(key, 0), state.served) + 1  # keyseq: by concurrency key
        sk = f"WAIT#{1000 - priority:04d}#{seq:012d}#{run_id}"
        run_update["ExpressionAttributeValues"][":sk"] = _S(sk)
        if state.version:
            sets = ["waiting = waiting + :one", "keyseq.#k = :seq"]
            names = {"#k": _map_key(key)}
            values: dict[str, Any] = {":one": _N(1), ":seq": _N(seq)}
        else:
            sets = ["waiting = :one", "keyseq = :keyseq", "served = :zero", "holders = :empty"]
            names = {}
            values = {
                ":one": _N(1),
                ":keyseq": {"M": {_map_key(key): _N(seq)}},
                ":zero": _N(0),
                ":empty": {"M": {}},
            }
        queue_update = self._queue_update(state.name, state.version, sets, [], names, values)
        waiter = {
            "TableName": self.table,
            "Item": {
                "pk": _S(f"QUEUE#{state.name}"),
                "sk": _S(sk),
                "run_id": _S(run_id),
                "key": _S(key),
                "seq": _N(seq),
            },
            "ConditionExpression": "attribute_not_exists(pk)",
        }
        try:
            self.client.transact_write_items(
                TransactItems=[{"Update": queue_update}, {"Put": waiter}, {"Update": run_update}]
            )
        except ClientError as exc:
            reasons = _cancellation_reasons(exc)
            if reasons is None:
                raise
            if len(reasons) > 2 and reasons[2] == "ConditionalCheckFailed":
                raise _lease_lost(run_id, token) from None
            return False
        return True

    def waiters(self, name: str, page: int = 25, after: str | None = None) -> Iterator[Waiter]:
        """Parked runs in the order they get slots: priority, then round-robin by key.

        Read lazily, ``page`` items per request: a hand-off with no per-key limit
        needs only the first waiter, however many are parked. ``after``: start after
        this sort key (it need not exist: ``WAIT#<band>#~`` skips a priority band)."""
        start: dict[str, Any] | None = None
        while True:
            query: dict[str, Any] = {
                "TableName": self.table,
                "ConsistentRead": True,
                "KeyConditionExpression": "pk = :pk AND sk BETWEEN :low AND :high",
                "ExpressionAttributeValues": {
                    ":pk": _S(f"QUEUE#{name}"),
                    ":low": _S(after if after is not None else "WAIT#"),
                    ":high": _S("WAIT#~"),  # '~' sorts after the digits and '#' of a key
                },
                "Limit": page,
            }
            if start is not None:
                query["ExclusiveStartKey"] = start
            out = self.client.query(**query)
            for i in out.get("Items", []):
                yield Waiter(
                    sk=i["sk"]["S"],
                    run_id=i["run_id"]["S"],
                    key=i["key"]["S"],
                    seq=int(i["seq"]["N"]),
                )
            start = out.get("LastEvaluatedKey")
            if start is None:
                return

    def hand_off(
        self, state: QueueState, waiter: Waiter, until: datetime, now: datetime
    ) -> bool | None:
        """Give a free slot to a parked run: one transaction makes it a holder, removes
        its waiter item and makes the run due now (the caller then sends its message).

        Returns True on success, False if the queue changed, None if the run is no
        longer parked (canceled meanwhile): its waiter item is then dropped.
        """
        queue_update = self._queue_update(
            state.name,
            state.version,
            ["holders.#r = :holder", "waiting = waiting - :one", "served = :served"],
            [],
            {"#r": waiter.run_id},
            {
                ":holder": {"M": {"k": _S(waiter.key), "u": _N(to_ms(until)), "s": _N(0)}},
                ":one": _N(1),
                ":served": _N(max(state.served, waiter.seq)),
            },
        )
        delete = {
            "TableName": self.table,
            "Key": {"pk": _S(f"QUEUE#{state.name}"), "sk": _S(waiter.sk)},
        }
        wake = {
            "TableName": self.table,
            "Key": _run_key(waiter.run_id),
            "UpdateExpression": "SET available_at = :now_ms, updated_at = :now REMOVE parked_sk",
            "ConditionExpression": "#status = :queued AND parked_sk = :sk",
            "ExpressionAttributeNames": _NAMES,
            "ExpressionAttributeValues": {
                ":queued": _S(RunStatus.QUEUED),
                ":sk": _S(waiter.sk),
                ":now_ms": _N(to_ms(now)),
                ":now": _S(iso(now)),
            },
        }
        try:
            self.client.transact_write_items(
                TransactItems=[{"Update": queue_update}, {"Delete": delete}, {"Update": wake}]
            )
        except ClientError as exc:
            reasons = _cancellation_reasons(exc)
            if reasons is None:
                raise
            if (
                len(reasons) > 2
                and reasons[2] == "ConditionalCheckFailed"
                and (reasons[0] != "ConditionalCheckFailed")
            ):
                self._drop_waiter(state, waiter)
                return None
            return False
        return True

    def _drop_waiter(self, state: QueueState, waiter: Waiter) -> None:
        update = self._queue_update(
            state.name, state.version, ["waiting = waiting - :one"], [], {}, {":one": _N(1)}
        )
        delete = {
            "TableName": self.table,
            "Key": {"pk": _S(f"QUEUE#{state.name}"), "sk": _S(waiter.sk)},
            "ConditionExpression": "attribute_exists(pk)",
        }
        try:
            self.client.transact_write_items(TransactItems=[{"Update": update}, {"Delete": delete}])
        except ClientError as exc:
            if _cancellation_reasons(exc) is None:
                raise

    def defer_run(
        self,
        run_id: str,
        token: int,
        until: datetime,
        waiting_for: str,
        now: datetime,
        spent: timedelta,
    ) -> None:
        """Release the run until ``until`` without ending its attempt (a rate-limit delay)."""
        self._fenced_update(
            run_id,
            token,
            "SET #status = :delayed, available_at = :due, lease_until = :zero, "
            f"updated_at = :now, waiting_for = :for, {_ADD_COMPUTE}",
            {
                ":delayed": _S(RunStatus.DELAYED),
                ":due": _N(to_ms(until)),
                ":zero": _N(0),
                ":now": _S(iso(now)),
                ":for": _S(waiting_for[:500]),
                ":spent": _N(_ms(spent)),
            },
        )

    def set_queue(
        self,
        name: str,
        *,
        paused: bool | None = None,
        limit: int | None = None,
        per_key_limit: int | None = None,
        clear_limits: bool = False,
    ) -> QueueState:
        """Operator settings that override the code's (``rung queues``)."""
        sets: list[str] = []
        removes: list[str] = []
        values: dict[str, Any] = {}
        if paused is not None:
            sets.append("paused = :paused")
            values[":paused"] = {"BOOL": paused}
        if limit is not None:
            sets.append("limit_set = :limit")
            values[":limit"] = _N(limit)
        if per_key_limit is not None:
            sets.append("per_key_set = :per_key")
            values[":per_key"] = _N(per_key_limit)
        if clear_limits:
            removes += ["limit_set", "per_key_set"]
        for attr, empty in (
            ("holders", {"M": {}}),
            ("keyseq", {"M": {}}),
            ("waiting", _N(0)),
            ("served", _N(0)),
        ):
            sets.append(f"{attr} = if_not_exists({attr}, :init_{attr})")
            values[f":init_{attr}"] = empty
        # Raising the version makes a worker that read the queue before this change
        # retry its (version-conditioned) admission with the new settings: after a
        # pause or a lower limit returns, no admission decided on the old ones lands.
        values[":one"] = _N(1)
        expression = "SET " + ", ".join(sets) + " ADD version :one"
        if removes:
            expression += " REMOVE " + ", ".join(removes)
        out = self.client.update_item(
            TableName=self.table,
            Key=_queue_key(name),
            UpdateExpression=expression,
            ExpressionAttributeValues=values,
            ReturnValues="ALL_NEW",
        )
        return _queue_state_from_item(name, out["Attributes"])

    def list_queue_states(self) -> list[QueueState]:
        """Every queue that has state (a scan of queue items; operators' use only)."""
        items = self._paginate(
            "scan",
            {
                "TableName": self.table,
                "FilterExpression": "begins_with(pk, :prefix) AND sk = :sk",
                "ExpressionAttributeValues": {":prefix": _S("QUEUE#"), ":sk": _S("#QUEUE")},
            },
        )
        return sorted(
            (_queue_state_from_item(i["pk"]["S"][len("QUEUE#") :], i) for i in items),
            key=lambda q: q.name,
        )

    # -- tokens --------------------------------------------------------------------------

    def create_token(self, state: TokenState) -> None:
        """Store a new token (its id is random: the write cannot collide)."""
        item: dict[str, Any] = {
            **_token_key(state.id),
            "token_id": _S(state.id),
            "run_id": _S(state.run_id),
            "step_id": _S(state.step_id),
            "name": _S(state.name),
            "token_status": _S(TOKEN_OPEN),
            "created_at": _S(iso(state.created_at)),
            "timeout_ms": _N(to_ms(state.timeout_at)),
            "hb_ms": _N(_ms(state.heartbeat_timeout) if state.heartbeat_timeout else 0),
            "deadline_ms": _N(to_ms(state.deadline)),
            TTL_ATTRIBUTE: _N(int((state.timeout_at + TOKEN_RETENTION).timestamp())),
        }
        self.client.put_item(
            TableName=self.table, Item=item, ConditionExpression="attribute_not_exists(pk)"
        )

    def get_token(self, token_id: str) -> TokenState:
        item = self.client.get_item(
            TableName=self.table, Key=_token_key(token_id), ConsistentRead=True
        ).get("Item")
        if item is None:
            raise TokenNotFound(
                f"no token with id {token_id!r} in table {self.table}: check the id (tokens "
                "come from ctx.create_token) and that the client uses the run's table"
            )
        return self._token_from_item(item)

    def resolve_token(
        self,
        token_id: str,
        *,
        status: str,
        result_json: str | None,
        error: ErrorInfo | None,
        now: datetime,
    ) -> tuple[TokenState, bool]:
        """Complete or fail an open token; returns it and whether its run must be woken.

        One transaction writes the token and, when the run is WAITING, makes it due
        now (the caller then sends its message). When the run is not waiting (it is
        still running towards ``wait_for_token``), the token is written under a check
        that the run is still not waiting. Either way the completion and a racing
        suspension (``suspend_run``, which checks the token) cannot miss each other.

        Raises:
            TokenNotFound: no such token.
            TokenAlreadyResolved: it was completed, failed or timed out already, or its
                run has finished.
        """
        values: dict[str, Any] = {
            ":status": _S(status),
            ":open": _S(TOKEN_OPEN),
            ":now_ms": _N(to_ms(now)),
            ":now": _S(iso(now)),
        }
        update = "SET token_status = :status, resolved_at = :now"
        if result_json is not None:
            update += ", #result = :result"
            values[":result"] = _S(result_json)
        if error is not None:
            update += ", #error = :error"
            values[":error"] = _S(json.dumps(error.to_json()))
        for _ in range(10):
            state = self.get_token(token_id)
            self._check_open(state, now)
            token_update = {
                "TableName": self.table,
                "Key": _token_key(token_id),
                "UpdateExpression": update,
                "ConditionExpression": "token_status = :open AND deadline_ms > :now_ms",
                "ExpressionAttributeNames": {"#result": "result", "#error": "error"}
                if result_json is not None and error is not None
                else ({"#result": "result"} if result_json is not None else {"#error": "error"}),
                "ExpressionAttributeValues": values,
            }
            wake = {
                "Update": {
                    "TableName": self.table,
                    "Key": _run_key(state.run_id),
                    "UpdateExpression": "SET available_at = :now_ms, updated_at = :now",
                    "ConditionExpression": "#status = :waiting",
                    "ExpressionAttributeNames": _NAMES,
                    "ExpressionAttributeValues": {
                        ":waiting": _S(RunStatus.WAITING),
                        ":now_ms": _N(to_ms(now)),
                        ":now": _S(iso(now)),
                    },
                }
            }
            not_waiting = {
                "ConditionCheck": {
                    "TableName": self.table,
                    "Key": _run_key(state.run_id),
                    "ConditionExpression": "#status IN (:queued, :delayed, :running)",
                    "ExpressionAttributeNames": _NAMES,
                    "ExpressionAttributeValues": {
                        ":queued": _S(RunStatus.QUEUED),
                        ":delayed": _S(RunStatus.DELAYED),
                        ":running": _S(RunStatus.RUNNING),
                    },
                }
            }
            for second, woke in ((wake, True), (not_waiting, False)):
                try:
                    self.client.transact_write_items(
                        TransactItems=[{"Update": token_update}, second]
                    )
                except ClientError as exc:
                    reasons = _cancellation_reasons(exc)
                    if reasons is None:
                        raise
                    if reasons[0] == "ConditionalCheckFailed":
                        self._check_open(self.get_token(token_id), now)
                        raise  # open and in time, yet refused: not ours to explain
                    continue  # the run's state was not as assumed: try the other form
                return self.get_token(token_id), woke
            run = self.get_run_or_none(state.run_id)
            if run is None or run.status.is_terminal:
                raise TokenAlreadyResolved(
                    f"token {token_id!r} belongs to run {state.run_id}, which "
                    + ("no longer exists" if run is None else f"has finished ({run.status})")
                    + "; nothing waits for it",
                    status=run.status if run is not None else "MISSING",
                )
            # The run moved between the two forms (it suspended, or resumed): again.
        raise Contended(
            f"token {token_id}: its run kept changing state while the answer was written; "
            "nothing was recorded, answering again is safe"
        )

    def _check_open(self, state: TokenState, now: datetime) -> None:
        if state.status != TOKEN_OPEN:
            raise TokenAlreadyResolved(
                f"token {state.id!r} ({state.name!r} of run {state.run_id}) was already "
                f"{state.status.lower().replace('_', ' ')}"
                + (f" at {iso(state.resolved_at)}" if state.resolved_at else "")
                + "; a token is answered once",
                status=state.status,
            )
        if state.deadline <= now:
            raise TokenAlreadyResolved(
                f"token {state.id!r} ({state.name!r} of run {state.run_id}) timed out at "
                f"{iso(state.deadline)}"
                + (" (no heartbeat in time)" if state.deadline < state.timeout_at else "")
                + "; it can no longer be completed",
                status="TIMED_OUT",
            )

    def heartbeat_token(self, token_id: str, now: datetime) -> TokenState:
        """Push an open token's heartbeat deadline to ``now + heartbeat_timeout``."""
        state = self.get_token(token_id)
        self._check_open(state, now)
        if state.heartbeat_timeout is None:
            return state  # nothing to extend; it stays open until its timeout
        deadline = min(now + state.heartbeat_timeout, state.timeout_at)
        try:
            out = self.client.update_item(
                TableName=self.table,
                Key=_token_key(token_id),
                UpdateExpression="SET deadline_ms = :deadline",
                ConditionExpression="token_status = :open AND deadline_ms > :now_ms",
                ExpressionAttributeValues={
                    ":deadline": _N(to_ms(deadline)),
                    ":open": _S(TOKEN_OPEN),
                    ":now_ms": _N(to_ms(now)),
                },
                ReturnValues="ALL_NEW",
            )
        except ClientError as exc:
            if not _is_conditional_failure(exc):
                raise
            self._check_open(self.get_token(token_id), now)
            raise
        return self._token_from_item(out["Attributes"])

    def time_out_token(self, token_id: str, now: datetime) -> TokenState:
        """Mark an open token past its deadline TIMED_OUT; returns its state either way."""
        try:
            out = self.client.update_item(
                TableName=self.table,
                Key=_token_key(token_id),
                UpdateExpression="SET token_status = :timed_out, resolved_at = :now",
                ConditionExpression="token_status = :open AND deadline_ms <= :now_ms",
                ExpressionAttributeValues={
                    ":timed_out": _S("TIMED_OUT"),
                    ":open": _S(TOKEN_OPEN),
                    ":now_ms": _N(to_ms(now)),
                    ":now": _S(iso(now)),
                },
                ReturnValues="ALL_NEW",
            )
        except ClientError as exc:
            if not _is_conditional_failure(exc):
                raise
            return self.get_token(token_id)  # answered meanwhile, or its deadline moved
        return self._token_from_item(out["Attributes"])

    def get_run_or_none(self, run_id: str) -> Run | None:
        try:
            return self.get_run(run_id)
        except RunNotFound:
            return None

    @staticmethod
    def _token_from_item(item: dict[str, Any]) -> TokenState:
        hb = int(item["hb_ms"]["N"])
        return TokenState(
            id=item["token_id"]["S"],
            name=item["name"]["S"],
            run_id=item["run_id"]["S"],
            step_id=item["step_id"]["S"],
            status=item["token_status"]["S"],
            created_at=parse_iso(item["created_at"]["S"]),
            timeout_at=from_ms(int(item["timeout_ms"]["N"])),
            heartbeat_timeout=timedelta(milliseconds=hb) if hb else None,
            deadline=from_ms(int(item["deadline_ms"]["N"])),
            result_json=item["result"]["S"] if "result" in item else None,
            error=ErrorInfo.from_json(json.loads(item["error"]["S"])) if "error" in item else None,
            resolved_at=parse_iso(item["resolved_at"]["S"]) if "resolved_at" in item else None,
        )

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
        steps.sort(key=lambda s: (s.started_at, s.seq))
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
                ConditionExpression="attribute_not_exists(pk) OR outcome IN (:started, :waiting)",
                ExpressionAttributeValues={":started": _S("started"), ":waiting": _S("waiting")},
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
        if record.kind != "step":
            item["kind"] = _S(record.kind)
        if record.wake_at is not None:
            item["wake_at"] = _N(to_ms(record.wake_at))
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
            kind=item["kind"]["S"] if "kind" in item else "step",
            wake_at=from_ms(int(item["wake_at"]["N"])) if "wake_at" in item else None,
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
            waiting_for=item["waiting_for"]["S"] if "waiting_for" in item else None,
            compute_time=timedelta(milliseconds=int(item.get("compute_ms", {"N": "0"})["N"])),
            overran_step=item["overran_step"]["S"] if "overran_step" in item else None,
            parked_sk=item["parked_sk"]["S"] if "parked_sk" in item else None,
            wake_kind=item["wake_kind"]["S"] if "wake_kind" in item else None,
            parent_run_id=item["parent_run_id"]["S"] if "parent_run_id" in item else None,
            replay_of=item["replay_of"]["S"] if "replay_of" in item else None,
            redrives=tuple(
                _redrive_from_json(r["S"]) for r in item.get("redrives", {"L": []})["L"]
            ),
            parent_waits=bool(item.get("parent_waits", {"BOOL": False})["BOOL"]),
            failed_step=item["failed_step"]["S"] if "failed_step" in item else None,
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


def _redrive_json(redrive: Redrive) -> str:
    error = redrive.error.to_json()
    if len(error["traceback"]) > FAILURE_TRACEBACK_CHARS:
        error["traceback"] = "...\n" + error["traceback"][-FAILURE_TRACEBACK_CHARS:]
    return json.dumps(
        {
            "attempt": redrive.attempt,
            "failed_at": iso(redrive.failed_at),
            "error": error,
            "at": iso(redrive.at),
            "step_id": redrive.step_id,
        }
    )


def _redrive_from_json(text: str) -> Redrive:
    data = json.loads(text)
    return Redrive(
        attempt=int(data["attempt"]),
        failed_at=parse_iso(data["failed_at"]),
        error=ErrorInfo.from_json(data["error"]),
        at=parse_iso(data["at"]),
        step_id=data.get("step_id"),
    )
