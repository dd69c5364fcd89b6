"""DynamoDB: the only package that knows rung's table layout and builds conditions.

One table, string keys ``pk``/``sk``:

    RUN#<run_id>   #RUN             the run: status, payload, lease, attempts, failures
    RUN#<run_id>   STEP#<step_id>   a step checkpoint, written once
    IDEM#<task>#<key>  #IDEM        an idempotency key -> run id, with its expiry
    DEBOUNCE#<task>#<key>  #DEBOUNCE  a debounce key -> its pending run (debounce.py)
    SCHEDULE#<id>  #FIRED           a cron schedule's last firing times (fired.py)

Values (payloads, outputs, step results, token values) are JSON strings; one over 128
KiB is an object of the payload bucket (``rung._aws.s3``) and its attribute a pointer,
``{"M": {"s3": key, "bytes": n}}`` (``_Base._value``, ``_Base._text``).

Fencing (invariant 2). The run item carries ``lease_token``, a counter raised by
every claim. Every later write to the run item by that worker is conditioned on
``lease_token = :token AND status = RUNNING``; a worker whose lease was taken over
(its token is stale) gets ``LeaseLost`` and must stop. Step checkpoints carry no
token: they are write-once (``attribute_not_exists``), the first write wins, and a
loser reads and continues from the winner's value (invariant 1).

The store is one class, ``DynamoStore``, composed from one mixin per section (each
mixin's module says more about its part of the table):

    rung._aws.dynamodb._common    keys, type letters, condition helpers, item <-> domain
    rung._aws.dynamodb.created    recording new runs: one (idempotency keys) or a batch
    rung._aws.dynamodb.runs       claiming, fencing and ending a run
    rung._aws.dynamodb.children   child runs and the lifecycle (cancel, redrive)
    rung._aws.dynamodb.parents    a child's end together with its parent's wake-up
    rung._aws.dynamodb.ttl        runs that expire unless started in time (trigger ttl=)
    rung._aws.dynamodb.debounce   triggers that collapse into one pending run (debounce=)
    rung._aws.dynamodb.fired      when each cron schedule last fired
    rung._aws.dynamodb.queues     queues (flow control): state, slots, operator settings
    rung._aws.dynamodb.parked     parked runs and hand-offs (on the queues section)
    rung._aws.dynamodb.tokens     tokens a run waits for
    rung._aws.dynamodb.listing    reading runs back through the write-sharded indexes
    rung._aws.dynamodb.reconcile  finding and nudging stranded runs (the reconciler)
    rung._aws.dynamodb.timers     timers of runs due too late for a delayed message
    rung._aws.dynamodb.retention  finished runs expire: their expiry, the sweep, RunExpired
    rung._aws.dynamodb.steps      step checkpoints
    rung._aws.dynamodb.upgrade    moving an old table to the sharded indexes (backfill, steps)
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from rung._aws.dynamodb._common import (
    FAILURE_TRACEBACK_CHARS,
    INDEXES,
    KEY_SCHEMA,
    LEGACY_INDEXES,
    NEVER_MS,
    PROJECTIONS,
    SHARDS,
    TOKEN_OPEN,
    TOKEN_RETENTION,
    TTL_ATTRIBUTE,
    NewRun,
    ParentLink,
    waits_without_timer,
)
from rung._aws.dynamodb.children import _Children
from rung._aws.dynamodb.fired import _Fired
from rung._aws.dynamodb.parked import _Parked
from rung._aws.dynamodb.queues import Holder, QueueState, Waiter
from rung._aws.dynamodb.reconcile import STRANDABLE, StrandedRun, _Reconcile
from rung._aws.dynamodb.retention import (
    DEFAULT_RETENTION,
    MAX_RETENTION,
    RETENTION_GRACE,
    SweepResult,
    _Retention,
    check_retention,
    whole_days,
)
from rung._aws.dynamodb.runs import SUSPEND_TOKEN_CHECKS, Claimed, NotClaimed, _Runs
from rung._aws.dynamodb.steps import _Steps
from rung._aws.dynamodb.timers import DUE_INDEX, Timer, _Timers
from rung._aws.dynamodb.tokens import _Tokens
from rung._aws.dynamodb.upgrade import (
    INDEX_STEPS,
    LAST_STEP,
    REPLACES,
    BackfillProgress,
    IndexChange,
    TableIndexes,
    UpgradeError,
    _Upgrade,
    index_change,
)
from rung._aws.s3 import Blobs

__all__ = [
    "BackfillProgress",
    "Claimed",
    "DEFAULT_RETENTION",
    "DUE_INDEX",
    "DynamoStore",
    "MAX_RETENTION",
    "RETENTION_GRACE",
    "SweepResult",
    "check_retention",
    "whole_days",
    "FAILURE_TRACEBACK_CHARS",
    "Holder",
    "INDEXES",
    "INDEX_STEPS",
    "IndexChange",
    "KEY_SCHEMA",
    "LAST_STEP",
    "LEGACY_INDEXES",
    "PROJECTIONS",
    "SHARDS",
    "NEVER_MS",
    "NewRun",
    "ParentLink",
    "NotClaimed",
    "QueueState",
    "REPLACES",
    "STRANDABLE",
    "SUSPEND_TOKEN_CHECKS",
    "StrandedRun",
    "TOKEN_OPEN",
    "TOKEN_RETENTION",
    "TTL_ATTRIBUTE",
    "TableIndexes",
    "Timer",
    "UpgradeError",
    "Waiter",
    "index_change",
    "waits_without_timer",
]


class DynamoStore(
    _Runs, _Children, _Parked, _Tokens, _Reconcile, _Timers, _Retention, _Steps, _Upgrade, _Fired
):
    """rung's storage port on DynamoDB. Every racing state change is one conditional write.

    (The listing section, ``_Listing``, comes in through ``_Reconcile``, which uses it.)
    ``retention``: how long finished runs are kept (docs/retention.md).
    """

    def __init__(
        self,
        client: Any,
        table_name: str,
        retention: timedelta = DEFAULT_RETENTION,
        blobs: Blobs | None = None,
    ) -> None:
        self.client = client
        self.table = table_name
        self.retention = check_retention(retention)
        self.blobs = blobs

    # -- schema ----------------------------------------------------------------------

    def create_table(self, *, legacy: bool = False) -> None:
        """Create the table as template.yaml declares it (for emulators and tests);
        ``legacy``: with the indexes of tables created before the sharded ones
        (``LEGACY_INDEXES``), as an upgrade finds them."""
        indexes = LEGACY_INDEXES if legacy else INDEXES
        attrs = set(KEY_SCHEMA) | {a for keys in indexes.values() for a in keys}
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
                    "Projection": PROJECTIONS.get(name, {"ProjectionType": "ALL"}),
                }
                for name, keys in indexes.items()
            ],
        )
        self.client.get_waiter("table_exists").wait(TableName=self.table)
