"""What every section of the store shares: the key schema and key builders, DynamoDB's
type letters, condition helpers, the dataclasses several sections use, and ``_Base``: the
attributes every section mixin relies on and the item <-> domain converters."""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from botocore.exceptions import ClientError

from rung._aws.s3 import Blobs, ValueNotFound, no_bucket
from rung._util import serde
from rung._util.clock import from_ms, iso, parse_iso, to_ms
from rung.errors import ErrorInfo, LeaseLost, RunNotFound
from rung.models import Failure, Offloaded, Redrive, Run, RunStatus, StepRecord

#: The key schema and indexes; template.yaml declares the same (a test checks).
KEY_SCHEMA = {"pk": "HASH", "sk": "RANGE"}
#: Write-sharded indexes (docs/capacity.md): a run lands on one of ``SHARDS`` key values
#: per task and per status, chosen by its id, so no key value takes a growing share of
#: the writes however many runs there are. Readers fan out over the shards and merge by
#: ``created_sk`` (creation time, then run id).
INDEXES = {
    "runs_by_task": {"task_shard": "HASH", "created_sk": "RANGE"},
    "runs_by_status": {"status_shard": "HASH", "created_sk": "RANGE"},
    "runs_by_due": {"due_shard": "HASH", "due_sk": "RANGE"},
}
#: What each index holds beside its keys. ``runs_by_task`` holds keys only: its entry is
#: written once, at the run's creation, never again. ``runs_by_status`` holds what its
#: queries filter on; none of these changes without a status change except
#: ``nudged_at`` (the reconciler's rare mark), so lease renewals never write it.
PROJECTIONS: dict[str, dict[str, Any]] = {
    "runs_by_task": {"ProjectionType": "KEYS_ONLY"},
    "runs_by_status": {
        "ProjectionType": "INCLUDE",
        "NonKeyAttributes": ["task_id", "available_at", "nudged_at", "tags"],
    },
    # Sparse: only runs waiting for a timer too far off for a delayed message hold its
    # keys (``arm_timer``); the sort key is the due time, so a sweep reads only what is due.
    # The trace context (set at creation, never changed) goes on the sweep's message.
    "runs_by_due": {"ProjectionType": "INCLUDE", "NonKeyAttributes": ["trace"]},
}
#: The indexes of tables created before the sharded ones (``rung upgrade-table``
#: replaces them); projection ALL. Readers use them while the new ones are missing.
LEGACY_INDEXES = {
    "by_task": {"task_id": "HASH", "created_sk": "RANGE"},
    "by_status": {"status": "HASH", "created_sk": "RANGE"},
}
#: How many key values each task and each status is spread over (see docs/capacity.md
#: for the arithmetic: 32 keeps every key under 1,000 WCU/s up to 16,000 plain runs/s).
SHARDS = 32


def shard_of(run_id: str) -> int:
    """The shard of a run: a stable hash of its id, in ``range(SHARDS)``."""
    return zlib.crc32(run_id.encode()) % SHARDS


def task_shard(task_id: str, run_id: str) -> str:
    """``runs_by_task``'s key value for a run: ``<task id>#<shard>``."""
    return f"{task_id}#{shard_of(run_id):02d}"


def status_shard(status: str, run_id: str) -> str:
    """``runs_by_status``'s key value for a run in ``status``: ``<status>#<shard>``."""
    return f"{status}#{shard_of(run_id):02d}"


def due_shard(run_id: str) -> str:
    """``runs_by_due``'s key value for a run: ``DUE#<shard>``."""
    return f"DUE#{shard_of(run_id):02d}"


def due_sk(due_ms: int, run_id: str) -> str:
    """``runs_by_due``'s sort key: the due time (epoch ms, zero-padded), then the run."""
    return f"{due_ms:015d}#{run_id}"


TTL_ATTRIBUTE = "expires_at"

_RUN_SK = "#RUN"
_IDEM_SK = "#IDEM"
_STEP_PREFIX = "STEP#"
_NAMES = {"#status": "status"}  # a DynamoDB reserved word
#: Invariant 2's fence on the run item: RUNNING, under the writer's lease token. Every
#: write a worker makes to its run after the claim carries it (``_Base._fenced``).
FENCE = "#status = :running AND lease_token = :token"


def _fence_values(token: int) -> dict[str, Any]:
    return {":running": {"S": "RUNNING"}, ":token": {"N": str(token)}}


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


def batch_counter(key: str) -> str:
    """The parent run item's attribute that counts the ended children of batch ``key``."""
    return f"bd_{key}"


def _ms(delta: timedelta) -> int:
    return max(int(delta.total_seconds() * 1000), 0)


#: ``available_at`` of a run that waits with no timer (only a waker moves it).
NEVER_MS = 253402300799000  # 9999-12-31T23:59:59Z


def waits_without_timer(when: datetime) -> bool:
    """Whether ``when`` (a run's ``available_at``, a claim's ``retry_at``) is the
    ``NEVER_MS`` of a run that waits with no timer, rather than a due time."""
    return to_ms(when) >= NEVER_MS


_ADD_COMPUTE = "compute_ms = if_not_exists(compute_ms, :zero) + :spent"


def _released(
    run_id: str,
    status: RunStatus,
    due: int,
    now: datetime,
    spent: timedelta,
    waiting_for: str | None = None,
) -> tuple[str, dict[str, Any]]:
    """The SET clause (and its values) of every write that gives a RUNNING run's lease
    back without ending it: its new ``status`` (and ``runs_by_status`` key), due at
    ``due`` (epoch ms), the compute time ``spent`` added, and what it waits for.
    Callers add their own clauses."""
    values: dict[str, Any] = {
        ":status": _S(status),
        ":status_shard": _S(status_shard(status, run_id)),
        ":due": _N(due),
        ":zero": _N(0),
        ":now": _S(iso(now)),
        ":spent": _N(_ms(spent)),
    }
    sets = (
        "SET #status = :status, status_shard = :status_shard, available_at = :due, "
        "lease_until = :zero, updated_at = :now, " + _ADD_COMPUTE
    )
    if waiting_for is not None:
        sets += ", waiting_for = :for"
        values[":for"] = _S(waiting_for[:500])
    return sets, values


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
    #: one of a batch's children: the batch's key (see ``end_with_parent``)
    batch: str | None = None
    #: ``Client.replay``: the run this one replays
    replay_of: str | None = None
    #: its trace context, stored form (``rung._util.traces.TraceContext.stored``)
    trace: str | None = None
    #: a child run: its parent's trace id
    parent_trace_id: str | None = None
    #: a child pinned to its parent's code version (else the first attempt sets it)
    version: str | None = None
    #: ``trigger(ttl=)``: the run expires unless its body starts by then
    start_by: datetime | None = None
    #: ``trigger(metadata=)``, as JSON
    metadata_json: str | None = None


@dataclass(frozen=True)
class ParentLink:
    """The parent a child's terminal transition must wake (``end_with_parent``): it
    waits for the child (``trigger_and_wait``), and ``batch`` is the key of the batch
    the child belongs to, if any (its end is counted rather than waking each time)."""

    run_id: str
    batch: str | None = None

    @classmethod
    def of(cls, run: Run) -> ParentLink | None:
        """The waiter of ``run``'s end: None unless its parent waits for it."""
        if run.parent_run_id is None or not run.parent_waits:
            return None
        return cls(run.parent_run_id, run.parent_batch)


class _Base:
    """What every section mixin of ``DynamoStore`` relies on: its client and table, the
    methods that one section calls in another (declared for the type checker only; the
    composed ``DynamoStore`` has them), and the item <-> domain converters."""

    client: Any
    table: str
    #: how long finished runs are kept (docs/retention.md)
    retention: timedelta
    #: the payload bucket values over the inline limit go to (None: none; such values
    #: are refused)
    blobs: Blobs | None

    # -- values: inline, or offloaded to S3 (docs/payloads.md) --------------------------

    def _value(self, run_id: str, text: str, what: str) -> dict[str, Any]:
        """The attribute that holds ``text`` (a value's JSON) for ``run_id``: the string
        itself, or a pointer to its object when it is over the inline limit.

        Raises:
            PayloadTooLarge: over the inline limit and no bucket is configured.
        """
        size = serde.json_size(text)
        if size <= serde.INLINE_VALUE_BYTES:
            return _S(text)
        if self.blobs is None:
            raise no_bucket(what, size, serde.INLINE_VALUE_BYTES)
        return {"M": {"s3": _S(self.blobs.put(run_id, text)), "bytes": _N(size)}}

    def _text(self, attr: dict[str, Any]) -> str:
        """The JSON an attribute made by ``_value`` holds (read from S3 if offloaded)."""
        if "S" in attr:
            return str(attr["S"])
        return self._fetch(attr["M"]["s3"]["S"], int(attr["M"]["bytes"]["N"]))

    def _fetch(self, key: str, size: int) -> str:
        """An offloaded value's JSON, from the payload bucket."""
        if self.blobs is None:
            raise ValueNotFound(
                f"this value ({size:,} bytes of JSON) is kept in the stack's payload bucket "
                f"as {key}, and this client has none: pass bucket= (stack output "
                "PayloadBucketName) to rung.Client, set RUNG_PAYLOAD_BUCKET, or use "
                "rung.Client.from_stack"
            )
        return self.blobs.get(key)

    def _result_text(self, item: dict[str, Any], values: bool) -> str | None:
        """A checkpoint's or token's ``result`` JSON; ``values`` False: None for one
        offloaded (for readers of kinds, ids and statuses, which read no object)."""
        if "result" not in item or (not values and "S" not in item["result"]):
            return None
        return self._text(item["result"])

    @staticmethod
    def _json(attr: dict[str, Any]) -> Any:
        """The value an attribute made by ``_value`` holds, decoded; an offloaded one
        stays where it is, a ``rung.Offloaded`` (``resolved`` reads it)."""
        if "M" in attr:
            return Offloaded(size=int(attr["M"]["bytes"]["N"]), key=attr["M"]["s3"]["S"])
        return json.loads(attr["S"])

    def resolved(self, value: Any) -> Any:
        """``value``, read from the payload bucket if it is a ``rung.Offloaded``.

        Raises:
            ValueNotFound: its object is missing, or no bucket is configured.
        """
        if not isinstance(value, Offloaded):
            return value
        return json.loads(self._fetch(value.key, value.size))

    def with_values(self, run: Run) -> Run:
        """``run`` with its payload and output read from the bucket if offloaded (a run
        as read holds ``rung.Offloaded`` for them: a claim, a status check or a cancel
        reads no object)."""
        if not isinstance(run.payload, Offloaded) and not isinstance(run.output, Offloaded):
            return run
        return replace(run, payload=self.resolved(run.payload), output=self.resolved(run.output))

    # -- reads and fenced writes every section uses -------------------------------------

    def get_run(self, run_id: str) -> Run:
        item = self.client.get_item(
            TableName=self.table, Key=_run_key(run_id), ConsistentRead=True
        ).get("Item")
        if item is None:
            raise RunNotFound(f"no run with id {run_id!r} in table {self.table}")
        return self._run_from_item(item)

    def _fenced(
        self,
        run_id: str,
        token: int,
        update: str,
        values: dict[str, Any],
        names: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """An update of the run item under the lease fence (invariant 2): the arguments
        of ``update_item``, or a transaction's ``Update``. ``values`` and ``names`` are the
        update's own; the fence adds its ``:running``, ``:token`` and ``#status``."""
        return {
            "TableName": self.table,
            "Key": _run_key(run_id),
            "UpdateExpression": update,
            "ConditionExpression": FENCE,
            "ExpressionAttributeNames": {**_NAMES, **(names or {})},
            "ExpressionAttributeValues": {**values, **_fence_values(token)},
        }

    def _fence_check(self, run_id: str, token: int) -> dict[str, Any]:
        """A transaction's check that the run is still held under ``token``."""
        return {
            "ConditionCheck": {
                "TableName": self.table,
                "Key": _run_key(run_id),
                "ConditionExpression": FENCE,
                "ExpressionAttributeNames": _NAMES,
                "ExpressionAttributeValues": _fence_values(token),
            }
        }

    def _fenced_update(
        self,
        run_id: str,
        token: int,
        update: str,
        values: dict[str, Any],
        names: dict[str, str] | None = None,
    ) -> None:
        """One update of the run item under the lease fence (``_fenced``).

        Raises:
            LeaseLost: the worker's token is stale.
        """
        self._update_fenced(run_id, token, self._fenced(run_id, token, update, values, names))

    def _update_fenced(self, run_id: str, token: int, update: dict[str, Any]) -> None:
        """Send ``update``, built by ``_fenced``; a refused fence is ``LeaseLost``."""
        try:
            self.client.update_item(**update)
        except ClientError as exc:
            if not _is_conditional_failure(exc):
                raise
            raise _lease_lost(run_id, token) from None

    # -- items <-> domain --------------------------------------------------------------

    def _new_run_item(self, new: NewRun) -> dict[str, Any]:
        status = RunStatus.DELAYED if new.available_at > new.created_at else RunStatus.QUEUED
        payload = self._value(new.run_id, new.payload_json, f"the payload of run {new.run_id}")
        item: dict[str, Any] = {
            "payload": payload,
            **_run_key(new.run_id),
            "run_id": _S(new.run_id),
            "task_id": _S(new.task_id),
            "task_shard": _S(task_shard(new.task_id, new.run_id)),
            "status": _S(status),
            "status_shard": _S(status_shard(status, new.run_id)),
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
            if new.batch is not None:
                item["parent_batch"] = _S(new.batch)
        if new.replay_of is not None:
            item["replay_of"] = _S(new.replay_of)
        if new.trace is not None:
            item["trace"] = _S(new.trace)
        if new.parent_trace_id is not None:
            item["parent_trace_id"] = _S(new.parent_trace_id)
        if new.version is not None:
            item["code_version"] = _S(new.version)
        if new.start_by is not None:
            item["start_by_ms"] = _N(to_ms(new.start_by))
        if new.metadata_json is not None:
            item["meta0"] = _S(new.metadata_json)
        return item

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
            item["result"] = self._value(
                run_id, record.result_json, f"the result of step {record.step_id!r}"
            )
        if record.error is not None:
            item["error"] = _S(json.dumps(record.error.to_json()))
        if record.kind != "step":
            item["kind"] = _S(record.kind)
        if record.wake_at is not None:
            item["wake_at"] = _N(to_ms(record.wake_at))
        return item

    def _step_from_item(self, item: dict[str, Any], *, values: bool = True) -> StepRecord:
        """The checkpoint an item holds; ``values`` False: a result offloaded to S3 is
        not read (``result_json`` None), for readers of kinds, ids and outcomes."""
        return StepRecord(
            step_id=item["step_id"]["S"],
            seq=int(item["seq"]["N"]),
            outcome=item["outcome"]["S"],
            attempt=int(item["attempt"]["N"]),
            run_attempt=int(item["run_attempt"]["N"]),
            started_at=parse_iso(item["started_at"]["S"]),
            finished_at=parse_iso(item["finished_at"]["S"]) if "finished_at" in item else None,
            result_json=self._result_text(item, values),
            error=ErrorInfo.from_json(json.loads(item["error"]["S"])) if "error" in item else None,
            kind=item["kind"]["S"] if "kind" in item else "step",
            wake_at=from_ms(int(item["wake_at"]["N"])) if "wake_at" in item else None,
        )

    def _run_from_item(self, item: dict[str, Any]) -> Run:
        """The run an item holds; offloaded payload and output are left in S3 (a
        ``rung.Offloaded``: ``with_values`` reads them)."""

        def opt_time(name: str) -> datetime | None:
            return parse_iso(item[name]["S"]) if name in item else None

        def opt_ms(name: str) -> datetime | None:
            return from_ms(int(item[name]["N"])) if name in item else None

        lease_ms = int(item.get("lease_until", {"N": "0"})["N"])
        return Run(
            run_id=item["run_id"]["S"],
            task_id=item["task_id"]["S"],
            status=RunStatus(item["status"]["S"]),
            attempt=int(item["attempt"]["N"]),
            payload=self._json(item["payload"]),
            created_at=parse_iso(item["created_at"]["S"]),
            updated_at=parse_iso(item["updated_at"]["S"]),
            available_at=from_ms(int(item["available_at"]["N"])),
            started_at=opt_time("started_at"),
            attempt_started_at=opt_time("attempt_started_at"),
            finished_at=opt_time("finished_at"),
            output=self._json(item["output"]) if "output" in item else None,
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
            parked_queue=item["parked_queue"]["S"] if "parked_queue" in item else None,
            wake_kind=item["wake_kind"]["S"] if "wake_kind" in item else None,
            parent_run_id=item["parent_run_id"]["S"] if "parent_run_id" in item else None,
            replay_of=item["replay_of"]["S"] if "replay_of" in item else None,
            redrives=tuple(
                _redrive_from_json(r["S"]) for r in item.get("redrives", {"L": []})["L"]
            ),
            parent_waits=bool(item.get("parent_waits", {"BOOL": False})["BOOL"]),
            parent_batch=item["parent_batch"]["S"] if "parent_batch" in item else None,
            failed_step=item["failed_step"]["S"] if "failed_step" in item else None,
            trace=item["trace"]["S"] if "trace" in item else None,
            parent_trace_id=item["parent_trace_id"]["S"] if "parent_trace_id" in item else None,
            expires_at=opt_ms("expires_at_ms"),
            version=item["code_version"]["S"] if "code_version" in item else None,
            start_by=opt_ms("start_by_ms"),
            began_at=opt_time("began_at"),
            metadata=json.loads(_current_metadata(item) or "{}"),
            initial_metadata=item["meta0"]["S"] if "meta0" in item else None,
            metadata_json=_current_metadata(item),
            triggers=int(item.get("triggers", {"N": "1"})["N"]),
        )

    def _paginate(self, operation: str, kwargs: dict[str, Any]) -> Iterator[dict[str, Any]]:
        paginator = self.client.get_paginator(operation)
        for page in paginator.paginate(**kwargs):
            yield from page.get("Items", [])

    def _batch_get(
        self, keys: list[dict[str, Any]], projection: dict[str, str] | None = None
    ) -> Iterator[dict[str, Any]]:
        """The items at ``keys`` that exist, consistently read: 100 keys a request, the
        keys DynamoDB left unprocessed asked again (up to 20 times, then an error).
        ``projection``: only these attributes (names to their placeholders' values)."""
        read: dict[str, Any] = {"ConsistentRead": True}
        if projection is not None:
            read["ProjectionExpression"] = ", ".join(projection)
            read["ExpressionAttributeNames"] = projection
        for start in range(0, len(keys), 100):
            pending = keys[start : start + 100]
            for _ in range(20):
                out = self.client.batch_get_item(
                    RequestItems={self.table: {"Keys": pending, **read}}
                )
                yield from out.get("Responses", {}).get(self.table, [])
                pending = out.get("UnprocessedKeys", {}).get(self.table, {}).get("Keys", [])
                if not pending:
                    break
            else:
                raise RuntimeError(f"table {self.table}: DynamoDB kept throttling a batch read")


#: Failed attempts live on the run item (one write per retry, fenced with the rest);
#: their tracebacks are cut shorter than a final error's so that a run with many
#: retries stays far below DynamoDB's 400 KB item limit.
FAILURE_TRACEBACK_CHARS = 1500


def _failure_json(failure: Failure) -> str:
    error = failure.error.trimmed(FAILURE_TRACEBACK_CHARS).to_json()
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
    error = redrive.error.trimmed(FAILURE_TRACEBACK_CHARS).to_json()
    return json.dumps(
        {
            "attempt": redrive.attempt,
            "failed_at": iso(redrive.failed_at),
            "error": error,
            "at": iso(redrive.at),
            "step_id": redrive.step_id,
            "from_version": redrive.from_version,
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
        from_version=data.get("from_version"),
    )


def _current_metadata(item: dict[str, Any]) -> str | None:
    """A run item's metadata as last written (``metadata``), else as triggered."""
    for name in ("metadata", "meta0"):
        if name in item:
            return str(item[name]["S"])
    return None
