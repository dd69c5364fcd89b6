"""DynamoStore's upgrade section: moving a table from the old indexes to the sharded ones.

Tables created before the write-sharded indexes have ``by_task`` and ``by_status``
(``LEGACY_INDEXES``, projection ALL), and their run items have neither ``task_shard``
nor ``status_shard``, the key attributes of ``runs_by_task`` and ``runs_by_status``.
``rung upgrade-table`` (rung.cli.upgrade) moves such a table to the new layout in two
parts, both here:

1. **The backfill** (``backfill_shards``): a parallel Scan of the run items (``sk =
   #RUN``) that sets ``task_shard`` and ``status_shard`` where they are missing or
   stale. Stale: ``status_shard`` must be ``status_shard(status, run_id)``, and a worker
   of the previous release, still running during a rollout, changes ``status``
   without it. Each write is conditioned on the status the Scan read, so it never
   writes the shard of a status the run has already left: a refused condition means
   the run moved meanwhile, and the item is read again (consistently) and fixed
   against what it holds now. Items already right cost no write, so a second pass
   (after an interruption, or to catch what old workers changed meanwhile) writes
   only what is left. The write touches neither the status nor the lease token:
   fenced writes (invariant 2) are unaffected.

2. **The index steps** (``INDEX_STEPS``): one index created or deleted at a time,
   as CloudFormation allows one GSI creation or deletion per stack update and
   DynamoDB one per ``UpdateTable``:

       step 0  by_task  by_status                                            (the old layout)
       step 1  by_task  by_status  runs_by_status
       step 2  by_task  by_status  runs_by_status  runs_by_task
       step 3  by_task  by_status  runs_by_status  runs_by_task  runs_by_due
       step 4  by_task             runs_by_status  runs_by_task  runs_by_due
       step 5                      runs_by_status  runs_by_task  runs_by_due  (every new table)

   ``runs_by_due`` (armed timers) needs no backfill: it is sparse, and workers arm
   timers once it is ACTIVE (until then, long waits keep their message, as before).

   template.yaml's ``IndexUpgradeStep`` parameter declares the same layouts; a stack
   walks them through CloudFormation (rung.cli.upgrade), a table of one's own through
   ``start_index_step`` here. Readers (``_Listing.sharded``) take a new index once it
   is ACTIVE, so the backfill must come first: an index built before it would be
   read while it misses the runs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

from botocore.exceptions import ClientError

from rung._aws.dynamodb._common import (
    _NAMES,
    _RUN_SK,
    _S,
    INDEXES,
    KEY_SCHEMA,
    LEGACY_INDEXES,
    PROJECTIONS,
    _Base,
    _is_conditional_failure,
    _run_key,
    status_shard,
    task_shard,
)
from rung.errors import RungError

#: The indexes rung's table has at each ``IndexUpgradeStep`` (template.yaml's parameter).
INDEX_STEPS: tuple[frozenset[str], ...] = (
    frozenset({"by_task", "by_status"}),
    frozenset({"by_task", "by_status", "runs_by_status"}),
    frozenset({"by_task", "by_status", "runs_by_status", "runs_by_task"}),
    frozenset({"by_task", "by_status", "runs_by_status", "runs_by_task", "runs_by_due"}),
    frozenset({"by_task", "runs_by_status", "runs_by_task", "runs_by_due"}),
    frozenset({"runs_by_status", "runs_by_task", "runs_by_due"}),
)
LAST_STEP = len(INDEX_STEPS) - 1
#: The old index each new one replaces (its provisioned throughput is copied to the new
#: one on a PROVISIONED table).
REPLACES = {"runs_by_status": "by_status", "runs_by_task": "by_task"}
_RUNG_INDEXES = frozenset(INDEXES) | frozenset(LEGACY_INDEXES)
#: DynamoDB's answers to "too fast": wait and ask again.
_THROTTLED = frozenset(
    {"ProvisionedThroughputExceededException", "ThrottlingException", "RequestLimitExceeded"}
)
#: Times a throttled request is sent again (after boto's own retries), backing off to 10 s.
_PATIENCE = 12
#: What the backfill reads of a run item.
_READ = "pk, run_id, task_id, #status, task_shard, status_shard"
#: Times one run's fix is tried when its status keeps changing under the backfill.
_TRIES = 10


class UpgradeError(RungError):
    """The table cannot be upgraded as it is; the message says why and what to do."""


@dataclass(frozen=True)
class IndexChange:
    """What one step does: ``action`` ("create" or "delete") ``index``."""

    step: int
    action: str
    index: str

    def describe(self) -> str:
        return f"{self.action} {self.index}"


def index_change(step: int) -> IndexChange:
    """The change that takes a table from step ``step - 1`` to ``step`` (1 to 5)."""
    if not 1 <= step <= LAST_STEP:
        raise ValueError(f"index steps are 1 to {LAST_STEP}, not {step}")
    before, after = INDEX_STEPS[step - 1], INDEX_STEPS[step]
    if after - before:
        return IndexChange(step, "create", min(after - before))
    return IndexChange(step, "delete", min(before - after))


@dataclass(frozen=True)
class BackfillProgress:
    """How far a backfill is: run items ``scanned``; of them ``updated`` (written),
    ``up_to_date`` (no write needed) and ``vanished`` (deleted meanwhile); ``retried``:
    writes refused because the run moved, then read and fixed again; ``unsettled``: runs
    whose status kept changing under every try (a next pass fixes them);
    ``segments_done`` of ``segments``."""

    segments: int
    scanned: int = 0
    updated: int = 0
    up_to_date: int = 0
    vanished: int = 0
    retried: int = 0
    segments_done: int = 0
    unsettled: tuple[str, ...] = ()

    @property
    def done(self) -> bool:
        return self.segments_done == self.segments


@dataclass
class _Tally:
    """A backfill's counts, shared by its segment threads."""

    progress: BackfillProgress
    report: Callable[[BackfillProgress], None] | None
    lock: threading.Lock = field(default_factory=threading.Lock)
    failed: threading.Event = field(default_factory=threading.Event)

    def add(self, **counts: int) -> None:
        with self.lock:  # reports in order: each sees at least what the one before saw
            now = self.progress
            self.progress = replace(
                now, **{name: getattr(now, name) + n for name, n in counts.items()}
            )
            if self.report is not None:
                self.report(self.progress)

    def unsettled(self, run_id: str) -> None:
        with self.lock:
            self.progress = replace(self.progress, unsettled=(*self.progress.unsettled, run_id))


@dataclass(frozen=True)
class TableIndexes:
    """The table's indexes as ``DescribeTable`` shows them now: name -> IndexStatus
    (CREATING, ACTIVE, DELETING, UPDATING); and the table's own status."""

    table_name: str
    table_status: str
    indexes: dict[str, str]
    billing_mode: str
    #: DynamoDB's estimate of the table's items (refreshed about every six hours)
    item_count: int
    #: each index's provisioned throughput, on a PROVISIONED table
    throughput: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def step(self) -> int | None:
        """The ``IndexUpgradeStep`` whose indexes rung's part of the table has (an index
        being created counts, one being deleted does not), or None for another layout."""
        present = frozenset(
            n for n, s in self.indexes.items() if n in _RUNG_INDEXES and s != "DELETING"
        )
        return INDEX_STEPS.index(present) if present in INDEX_STEPS else None

    def settled(self, step: int) -> bool:
        """Whether the table is ACTIVE with exactly step ``step``'s indexes, all ACTIVE."""
        ours = {n: s for n, s in self.indexes.items() if n in _RUNG_INDEXES}
        return (
            self.table_status == "ACTIVE"
            and set(ours) == INDEX_STEPS[step]
            and all(s == "ACTIVE" for s in ours.values())
        )

    def in_flux(self) -> str:
        """What is not ACTIVE yet, e.g. "runs_by_status is CREATING" (or "" if all is)."""
        parts = (
            [f"table {self.table_name} is {self.table_status}"]
            if self.table_status != "ACTIVE"
            else []
        )
        parts += [
            f"{n} is {s}"
            for n, s in sorted(self.indexes.items())
            if n in _RUNG_INDEXES and s != "ACTIVE"
        ]
        return ", ".join(parts)

    def names(self) -> str:
        ours = sorted(n for n in self.indexes if n in _RUNG_INDEXES)
        return ", ".join(ours) if ours else "none of rung's indexes"


class _Upgrade(_Base):
    # -- the table's layout --------------------------------------------------------------

    def table_indexes(self) -> TableIndexes:
        """The table's indexes now, read from ``DescribeTable`` (never cached)."""
        table = self.client.describe_table(TableName=self.table)["Table"]
        indexes = table.get("GlobalSecondaryIndexes", [])
        billing = table.get("BillingModeSummary", {}).get("BillingMode")
        if billing is None:  # absent on tables that were created PROVISIONED
            units = table.get("ProvisionedThroughput", {}).get("WriteCapacityUnits", 0)
            billing = "PROVISIONED" if units else "PAY_PER_REQUEST"
        return TableIndexes(
            table_name=self.table,
            table_status=table.get("TableStatus", "ACTIVE"),
            indexes={i["IndexName"]: i.get("IndexStatus", "ACTIVE") for i in indexes},
            billing_mode=billing,
            item_count=int(table.get("ItemCount", 0)),
            throughput={
                i["IndexName"]: {
                    "ReadCapacityUnits": int(i["ProvisionedThroughput"]["ReadCapacityUnits"]),
                    "WriteCapacityUnits": int(i["ProvisionedThroughput"]["WriteCapacityUnits"]),
                }
                for i in indexes
                if "ProvisionedThroughput" in i
            },
        )

    def index_step(self) -> int:
        """The table's ``IndexUpgradeStep`` (0 to 5), read from its indexes.

        Raises:
            UpgradeError: rung's indexes on the table are not one of the steps' layouts.
        """
        found = self.table_indexes()
        if found.step is None:
            raise UpgradeError(
                f"table {self.table} has {found.names()}: not a layout of rung's table "
                "(the old by_task/by_status, the new runs_by_task/runs_by_status, or a "
                "step between, see docs/deploying.md); is it rung's table?"
            )
        return found.step

    # -- the index steps -------------------------------------------------------------

    def start_index_step(self, step: int) -> IndexChange:
        """Ask DynamoDB for step ``step``'s change (``UpdateTable``: one index created or
        deleted), for a table that is at ``step - 1``; ``wait_for_index_step`` waits
        for it. Tables of a stack are changed through CloudFormation instead."""
        change = index_change(step)
        if change.action == "delete":
            update: dict[str, Any] = {"Delete": {"IndexName": change.index}}
            attributes: dict[str, Any] = {}
        else:
            keys = INDEXES[change.index]
            create: dict[str, Any] = {
                "IndexName": change.index,
                "KeySchema": [{"AttributeName": k, "KeyType": t} for k, t in keys.items()],
                "Projection": PROJECTIONS[change.index],
            }
            now = self.table_indexes()
            if now.billing_mode == "PROVISIONED":  # as much as the index it replaces
                create["ProvisionedThroughput"] = now.throughput.get(
                    REPLACES[change.index], {"ReadCapacityUnits": 5, "WriteCapacityUnits": 5}
                )
            update = {"Create": create}
            # Every key attribute of the table and of the indexes it will have (moto
            # replaces the table's definitions with these; DynamoDB needs the new ones).
            every = {**INDEXES, **LEGACY_INDEXES}
            names = set(KEY_SCHEMA) | {a for i in INDEX_STEPS[step] for a in every[i]}
            attributes = {
                "AttributeDefinitions": [
                    {"AttributeName": a, "AttributeType": "S"} for a in sorted(names)
                ]
            }
        self.client.update_table(
            TableName=self.table, GlobalSecondaryIndexUpdates=[update], **attributes
        )
        return change

    def wait_for_index_step(
        self,
        step: int,
        *,
        poll: float = 10.0,
        on_wait: Callable[[TableIndexes], None] | None = None,
    ) -> TableIndexes:
        """Wait until the table is at step ``step`` with every index ACTIVE (a new index
        is ACTIVE once DynamoDB has built it from the table's items: minutes for small
        tables, longer for large ones); ``on_wait`` sees each look that was not yet."""
        while True:
            found = self.table_indexes()
            if found.settled(step):
                return found
            if found.step not in (step, step - 1):
                raise UpgradeError(
                    f"table {self.table} has {found.names()} while it was moving to index "
                    f"step {step}: something else changed its indexes; run "
                    "`rung upgrade-table` again to continue from where it is"
                )
            if on_wait is not None:
                on_wait(found)
            time.sleep(poll)

    # -- the backfill ----------------------------------------------------------------

    def backfill_shards(
        self,
        *,
        segments: int = 4,
        progress: Callable[[BackfillProgress], None] | None = None,
    ) -> BackfillProgress:
        """Set ``task_shard`` and ``status_shard`` on every run item where they are
        missing or stale; a parallel Scan in ``segments`` segments, one thread each.

        Idempotent: an item already right is not written, so running it again writes
        only what is left. ``progress`` is called (from the segments' threads) with the
        counts so far after each item and when each segment ends.

        Costs (docs/deploying.md): the Scan reads the whole table (run and step items);
        each run item fixed is one UpdateItem, billed by the item's size (a write unit
        per KB), plus one write to each index it appears in whose projection holds the
        changed attributes (both old indexes project ALL).
        """
        if not 1 <= segments <= 1000:
            raise ValueError(f"segments must be 1 to 1000, got {segments}")
        tally = _Tally(BackfillProgress(segments=segments), progress)
        with ThreadPoolExecutor(segments, thread_name_prefix="rung-backfill") as pool:
            futures = [pool.submit(self._backfill_segment, n, tally) for n in range(segments)]
            errors = [f.exception() for f in futures]
        for error in errors:
            if error is not None:
                raise error
        return tally.progress

    def _backfill_segment(self, segment: int, tally: _Tally) -> None:
        kwargs: dict[str, Any] = {
            "TableName": self.table,
            "Segment": segment,
            "TotalSegments": tally.progress.segments,
            "FilterExpression": "sk = :run",
            "ProjectionExpression": _READ,
            "ExpressionAttributeNames": _NAMES,
            "ExpressionAttributeValues": {":run": _S(_RUN_SK)},
        }
        try:
            while not tally.failed.is_set():
                page = self._patiently(self.client.scan, kwargs)
                for item in page.get("Items", []):
                    self._fix_run_item(item, tally)
                if "LastEvaluatedKey" not in page:
                    break
                kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        except BaseException:
            tally.failed.set()  # the other segments stop at their next page
            raise
        tally.add(segments_done=1)

    def _fix_run_item(self, item: dict[str, Any], tally: _Tally) -> None:
        run_id = item["run_id"]["S"]
        retried = 0
        for _ in range(_TRIES):
            status = item["status"]["S"]
            wanted = {
                "task_shard": task_shard(item["task_id"]["S"], run_id),
                "status_shard": status_shard(status, run_id),
            }
            stale = {k: v for k, v in wanted.items() if item.get(k, {}).get("S") != v}
            if not stale:
                tally.add(scanned=1, up_to_date=1, retried=retried)
                return
            try:
                self._patiently(
                    self.client.update_item,
                    {
                        "TableName": self.table,
                        "Key": _run_key(run_id),
                        "UpdateExpression": "SET " + ", ".join(f"{k} = :{k}" for k in stale),
                        # The status read: if the run moved since, this would write the
                        # shard of a status it has left. (It also means the item exists.)
                        "ConditionExpression": "#status = :read",
                        "ExpressionAttributeNames": _NAMES,
                        "ExpressionAttributeValues": {
                            ":read": _S(status),
                            **{f":{k}": _S(v) for k, v in stale.items()},
                        },
                    },
                )
            except ClientError as exc:
                if not _is_conditional_failure(exc):
                    raise
                retried += 1
                found = self._patiently(
                    self.client.get_item,
                    {
                        "TableName": self.table,
                        "Key": _run_key(run_id),
                        "ConsistentRead": True,
                        "ProjectionExpression": _READ,
                        "ExpressionAttributeNames": _NAMES,
                    },
                ).get("Item")
                if found is None:
                    tally.add(scanned=1, vanished=1, retried=retried)
                    return
                item = found
                continue
            tally.add(scanned=1, updated=1, retried=retried)
            return
        tally.unsettled(run_id)
        tally.add(scanned=1, retried=retried)

    @staticmethod
    def _patiently(call: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
        """``call(**kwargs)``, sent again with backoff while DynamoDB throttles it (the
        backfill's writes land on the old indexes' hot keys: a status, a task)."""
        delay = 0.2
        for attempt in range(_PATIENCE):
            try:
                return call(**kwargs)
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code")
                if code not in _THROTTLED or attempt == _PATIENCE - 1:
                    raise
            time.sleep(delay)
            delay = min(delay * 2, 10.0)
        raise AssertionError("unreachable")
