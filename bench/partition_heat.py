"""Partition heat: where a workload's DynamoDB units land, and the runs per second AWS
would sustain before one partition key value (or a quota) says no.

Runs a mix of workloads on ``rung.testing.LocalEngine`` (4 worker threads, telemetry
off; each workload on its own table): 5-step runs of one task; 5-step runs spread over
20 tasks; 5-step runs with one retried step; runs with a 2-hour ``ctx.wait``; parents
with two children each; a one-step task behind a queue with a concurrency limit of 2
(most runs park and are handed a slot); a one-step task behind a per-tenant queue
(limit 100, per-key limit 1, a tenant per run: no run parks); and the same two
uncontended queues at the largest limit (1,000) split over 32 items (``shards=32``),
whose keys fold into one item's expected share (``QUEUE#wide~*``).

Every DynamoDB request of the engine's clients is recorded at the botocore layer (as
bench/api_calls.py does), with the partition key value it lands on:

* in the table: the item's ``pk``;
* in each global secondary index: the index's partition key attribute of the item as it
  was before and as it is after the write (read back with a second, uncounted client;
  writes are serialized while the recorder reads, so each sees its own after-image). An
  item is in an index only if it has all the index's key attributes; a write that moves
  the index key writes the index twice (delete the old entry, put the new). Units follow
  bench/_dynamo_units.py (1 WRU per KB, 2 per item in a transaction, 1 RRU per 4 KB
  strongly consistent, half that eventually consistent; every index read is eventual).

Not counted: ReceiveMessage calls that returned nothing (on AWS the event source mapping
long-polls), the test's own polling, and LocalEngine's virtual-time bookkeeping (the
GetItem it makes to find the next due time; AWS has no such read).

The projection, per workload: a partition key value that receives ``u`` WCU per run
(table or index) caps the workload at ``1000 / u`` runs per second (``3000 / r`` for
reads). Keys that belong to one run (``RUN#``, ``TOKEN#``, ``IDEM#``: its item, its
checkpoints, its tokens and keys) receive one run's load whatever the throughput, so
they bound nothing; every other key (the indexes' status and task values, a queue's
item and its parked waiters) is shared by all runs and binds. Beside those: the table's
on-demand quota (40,000 WRU/s and RRU/s per table by default, adjustable; each index
counted against the same figure), SQS's ~120,000 in-flight messages per standard queue
(a run holds its message while a worker has it, and through a wait or backoff:
Little's law, ``120,000 / seconds held per run``, with the messages a waiting run holds
measured on a real-time engine), and Lambda: ``concurrency / worker seconds per run``,
with the worker time ASSUMED to be ``worker requests per run x REQUEST_SECONDS`` (AWS
in-region latency, no user code: the orchestration's own ceiling).

Run it: ``make bench`` or ``.venv/bin/python bench/partition_heat.py``. Results go to
bench/results/partition_heat.json.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import boto3
from _dynamo_units import (  # bench/ is on the path when run as a script
    Item,
    _value_size,
    index_writes_by_key,
    item_size,
    read_units,
    write_units,
)
from rich.console import Console
from rich.table import Table

import rung
import rung.testing
from rung._aws.dynamodb import INDEXES, SHARDS

RESULTS = Path(__file__).parent / "results" / "partition_heat.json"

# DynamoDB per partition key value (table and each index), and per table on demand.
PARTITION_WCU = 1000
PARTITION_RCU = 3000
TABLE_WRU_QUOTA = 40_000  # default on-demand maximum per table (Service Quotas, adjustable)
TABLE_RRU_QUOTA = 40_000
SQS_IN_FLIGHT = 120_000  # standard queue
LAMBDA_ACCOUNT_CONCURRENCY = 1000  # default account quota (adjustable)
ESM_MAX_CONCURRENCY = 1000  # ScalingConfig.MaximumConcurrency's upper bound
TEMPLATE_MAX_CONCURRENCY = 10  # template.yaml's default MaximumConcurrency
#: ASSUMED: the mean latency of one DynamoDB or SQS request from a Lambda in the same
#: region. A worker's time per run is its sequential requests times this (no user code).
REQUEST_SECONDS = 0.008
QUEUE_LIMIT_MAX = 1000  # Queue.concurrency_limit's upper bound

TARGET_SINGLE_TASK = 10_000  # runs/s of one task (issue 11)
TARGET_QUEUE_STARTS = 1_000  # starts/s through one concurrency-limited queue (issue 11)

WAIT_SECONDS = 2 * 3600.0
BACKOFF_SECONDS = 1.0
PER_RUN_PREFIXES = ("RUN#", "TOKEN#", "IDEM#")
WRITES = {"PutItem", "UpdateItem", "DeleteItem", "TransactWriteItems", "BatchWriteItem"}
READS = {"GetItem", "Query", "Scan", "BatchGetItem", "TransactGetItems"}

ItemKey = tuple[str, str]
Where = tuple[str, str]  # ("table" or an index name, partition key value)

# -- the tasks -----------------------------------------------------------------------------

app = rung.App("heat")
_failed_once: set[str] = set()
_failed_lock = threading.Lock()
RETRY = rung.RetryPolicy(max_attempts=3, initial_interval=timedelta(seconds=BACKOFF_SECONDS))


def work(i: int) -> int:
    return i


def flaky(i: int) -> int:
    """Fails the first time it runs in each run (a transient error), then succeeds."""
    key = rung.current_step().idempotency_key
    with _failed_lock:
        first = key not in _failed_once
        _failed_once.add(key)
    if first:
        raise ConnectionError("transient failure (bench)")
    return i


def five_steps(ctx: rung.Context, payload: dict[str, Any]) -> int:
    return sum(ctx.step("work", work, i) for i in range(5))


TASKS = 20
app.task(id="single", retry=RETRY)(five_steps)
for _n in range(TASKS):
    app.task(id=f"task-{_n:02d}", retry=RETRY)(five_steps)


@app.task(id="retry", retry=RETRY)
def retried(ctx: rung.Context, payload: dict[str, Any]) -> int:
    return sum(ctx.step("work", flaky if i == 2 else work, i) for i in range(5))


@app.task(id="wait")
def waits(ctx: rung.Context, payload: dict[str, Any]) -> str:
    ctx.step("before", work, 0)
    ctx.wait(WAIT_SECONDS)
    ctx.step("after", work, 1)
    return "done"


@app.task(id="child")
def child(ctx: rung.Context, payload: dict[str, Any]) -> int:
    return ctx.step("work", work, int(payload["i"]))


@app.task(id="parent")
def parent(ctx: rung.Context, payload: dict[str, Any]) -> int:
    results = ctx.batch_trigger_and_wait("child", [{"i": 0}, {"i": 1}])
    return len(results)


LIMITED = rung.Queue("limited", concurrency_limit=2)
TENANTS = rung.Queue("tenants", concurrency_limit=100, per_key_limit=1)
#: The largest limit split over 32 items (issue 11's 1,000 starts/s through one queue).
WIDE = rung.Queue("wide", concurrency_limit=QUEUE_LIMIT_MAX, shards=32)
WIDE_ROW = "queue, limit 1,000, 32 shards"
WIDE_TENANTS = rung.Queue(
    "wide-tenants", concurrency_limit=QUEUE_LIMIT_MAX, per_key_limit=1, shards=32
)


@app.task(id="limited", queue=LIMITED)
def limited(ctx: rung.Context, payload: dict[str, Any]) -> int:
    return ctx.step("work", work, 0)


@app.task(id="tenant", queue=TENANTS, concurrency_key=lambda p: str(p["tenant"]))
def tenant(ctx: rung.Context, payload: dict[str, Any]) -> int:
    return ctx.step("work", work, 0)


@app.task(id="wide", queue=WIDE)
def wide(ctx: rung.Context, payload: dict[str, Any]) -> int:
    return ctx.step("work", work, 0)


@app.task(id="wide-tenant", queue=WIDE_TENANTS, concurrency_key=lambda p: str(p["tenant"]))
def wide_tenant(ctx: rung.Context, payload: dict[str, Any]) -> int:
    return ctx.step("work", work, 0)


@dataclass(frozen=True)
class Workload:
    name: str
    starts: int
    start: Callable[[int], tuple[str, dict[str, Any]]]  # the n-th start: task id, payload
    unit: str = "run"
    #: seconds a run keeps a message in flight beyond its worker time (waits, backoffs):
    #: a wait's length times the messages a waiting run holds (measured), or a backoff
    held_seconds: Callable[[float], float] = lambda per_wait: 0.0
    queue: rung.Queue | None = None


WORKLOADS = [
    Workload("one task, 5 steps", 300, lambda n: ("single", {"n": n})),
    Workload(f"{TASKS} tasks, 5 steps", 300, lambda n: (f"task-{n % TASKS:02d}", {"n": n})),
    Workload(
        "5 steps, one retry",
        200,
        lambda n: ("retry", {"n": n}),
        held_seconds=lambda _: BACKOFF_SECONDS,
    ),
    Workload(
        "ctx.wait(2 h)",
        200,
        lambda n: ("wait", {"n": n}),
        held_seconds=lambda per_wait: WAIT_SECONDS * per_wait,
    ),
    Workload("parent + 2 children", 100, lambda n: ("parent", {"n": n}), unit="parent (3 runs)"),
    Workload("queue, limit 2 (contended)", 200, lambda n: ("limited", {"n": n}), queue=LIMITED),
    # A tenant per run: the per-key limit never makes a run park, so the traffic is the
    # queue's uncontended path, the same on every run of the bench (with fewer tenants
    # than runs, how many park depends on the threads' timing). Parking is measured by
    # the limit-2 queue above.
    Workload(
        "per-tenant keys (200 tenants)",
        200,
        lambda n: ("tenant", {"tenant": f"t{n:03d}"}),
        queue=TENANTS,
    ),
    Workload(WIDE_ROW, 320, lambda n: ("wide", {"n": n}), queue=WIDE),
    Workload(
        "per-tenant keys, 32 shards",
        320,
        lambda n: ("wide-tenant", {"tenant": f"t{n:03d}"}),
        queue=WIDE_TENANTS,
    ),
]


# -- the recorder --------------------------------------------------------------------------


@dataclass
class Recorded:
    wcu: Counter[Where] = field(default_factory=Counter)
    rcu: defaultdict[Where, float] = field(default_factory=lambda: defaultdict(float))
    writes: Counter[Where] = field(default_factory=Counter)  # requests, not units
    reads: Counter[Where] = field(default_factory=Counter)
    dynamodb: Counter[str] = field(default_factory=Counter)
    sqs: Counter[str] = field(default_factory=Counter)
    worker_requests: int = 0
    versioned_queue_writes: int = 0  # successful writes conditioned on a queue's version
    queue_items: dict[str, Item] = field(default_factory=dict)  # the largest seen, per queue
    scans: int = 0
    # The queue item itself (sk #QUEUE), apart from the parked waiters under the same pk:
    # write units' factor (2 in a transaction) and read units' factor (1 consistent), summed.
    queue_item_writes: Counter[str] = field(default_factory=Counter)
    queue_item_wcu: Counter[str] = field(default_factory=Counter)
    queue_item_reads: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))
    queue_item_rcu: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))


_HASH_ATTRS = {
    name: next(a for a, kind in keys.items() if kind == "HASH") for name, keys in INDEXES.items()
}


class HeatMeter:
    """Records the engine's DynamoDB units by partition key value, through botocore's hooks."""

    def __init__(self, engine: rung.testing.LocalEngine) -> None:
        self.data = Recorded()
        self._lock = threading.Lock()
        # Writes are serialized from just before they are sent until the recorder has read
        # their item back, so each write's before/after images are its own.
        self._write_lock = threading.Lock()
        self._items: dict[ItemKey, Item | None] = {}
        self._count_main = False
        self._table = engine.table_name
        self._peek = boto3.client(
            "dynamodb",
            endpoint_url=engine.endpoint_url,
            region_name="us-east-1",
            aws_access_key_id="test",
            aws_secret_access_key="test",
        )
        for client in (engine.dynamodb, engine.sqs):
            client.meta.events.register("before-parameter-build", self._remember_params)
            client.meta.events.register("after-call", self._count)
        engine.dynamodb.meta.events.register("before-call", self._before_write)
        engine.dynamodb.meta.events.register("after-call-error", self._after_error)

    @contextmanager
    def counting_main(self) -> Iterator[None]:
        """Count the main thread's requests in this block (the triggers) as the runs'."""
        self._count_main = True
        try:
            yield
        finally:
            self._count_main = False

    # botocore handlers --------------------------------------------------------------------

    def _remember_params(self, params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        context["heat_params"] = params

    def _counted(self) -> bool:
        if threading.current_thread() is threading.main_thread():
            return self._count_main
        # LocalEngine's virtual clock reads runs to find the next due time: not on AWS.
        frame = sys._getframe()
        while frame is not None:
            if frame.f_code.co_name in ("_next_due", "next_due"):
                return False
            frame = frame.f_back  # type: ignore[assignment]
        return True

    def _before_write(self, model: Any, context: dict[str, Any], **_: Any) -> None:
        if model.name not in WRITES:
            return
        self._write_lock.acquire()
        context["heat_locked"] = True
        params: dict[str, Any] = context.get("heat_params", {})
        for key, _factor, _kind in _written_keys(model.name, params):
            if key not in self._items:
                self._items[key] = self._get(key)

    def _after_error(self, context: dict[str, Any], **_: Any) -> None:
        if context.pop("heat_locked", False):
            self._write_lock.release()

    def _count(self, parsed: dict[str, Any], model: Any, context: dict[str, Any], **_: Any) -> None:
        op: str = model.name
        params: dict[str, Any] = context.get("heat_params", {})
        try:
            if op == "ReceiveMessage" and not parsed.get("Messages"):
                return
            if not self._counted():
                return
            ok = parsed.get("ResponseMetadata", {}).get("HTTPStatusCode", 200) < 300
            with self._lock:
                if threading.current_thread() is not threading.main_thread():
                    self.data.worker_requests += 1
                if op in WRITES:
                    self.data.dynamodb[op] += 1
                    self._record_write(op, params, ok)
                elif op in READS:
                    self.data.dynamodb[op] += 1
                    self._record_read(op, params, parsed)
                else:
                    self.data.sqs[op] += 1
        finally:
            if context.pop("heat_locked", False):
                self._write_lock.release()

    # the arithmetic -----------------------------------------------------------------------

    def _get(self, key: ItemKey) -> Item | None:
        item: Item | None = self._peek.get_item(
            TableName=self._table,
            Key={"pk": {"S": key[0]}, "sk": {"S": key[1]}},
            ConsistentRead=True,
        ).get("Item")
        return item

    def _record_write(self, op: str, params: dict[str, Any], ok: bool) -> None:
        data = self.data
        for key, factor, kind in _written_keys(op, params):
            before = self._items.get(key)
            after = self._get(key) if ok and kind != "ConditionCheck" else before
            self._items[key] = after
            where: Where = ("table", key[0])
            data.writes[where] += 1
            units = factor * write_units(max(item_size(before), item_size(after)))
            data.wcu[where] += units
            for w in index_writes_by_key(before, after):
                data.wcu[(w.index, w.key)] += w.wru
                data.writes[(w.index, w.key)] += 1
            if key[0].startswith("QUEUE#") and key[1] == "#QUEUE" and after is not None:
                name = _queue_of(key[0])
                data.queue_item_writes[name] += factor
                data.queue_item_wcu[name] += units
                if item_size(after) > item_size(data.queue_items.get(name)):
                    data.queue_items[name] = after
            if ok and "version = :version" in _condition(op, params, key):
                data.versioned_queue_writes += 1

    def _record_read(self, op: str, params: dict[str, Any], parsed: dict[str, Any]) -> None:
        data = self.data
        consistent = bool(params.get("ConsistentRead", False))
        if op == "GetItem":
            where: Where = ("table", params["Key"]["pk"]["S"])
            units = read_units(item_size(parsed.get("Item")), consistent=consistent)
            data.rcu[where] += units
            data.reads[where] += 1
            if where[1].startswith("QUEUE#") and params["Key"]["sk"]["S"] == "#QUEUE":
                name = _queue_of(where[1])
                data.queue_item_reads[name] += 1.0 if consistent else 0.5
                data.queue_item_rcu[name] += units
        elif op == "Query":
            size = sum(item_size(i) for i in parsed.get("Items", []))
            index = params.get("IndexName")
            if index is None:
                where = ("table", _hash_from_query(params, "pk"))
            else:
                where = (index, _hash_from_query(params, _HASH_ATTRS[index]))
                consistent = False
            data.rcu[where] += read_units(size, consistent=consistent)
            data.reads[where] += 1
        elif op == "Scan":  # every partition: no single key
            data.scans += 1
        elif op == "BatchGetItem":
            for items in parsed.get("Responses", {}).values():
                for item in items:
                    data.rcu[("table", item["pk"]["S"])] += read_units(item_size(item))
        elif op == "TransactGetItems":
            for response in parsed.get("Responses", []):
                item = response.get("Item")
                if item is not None:
                    data.rcu[("table", item["pk"]["S"])] += 2 * read_units(item_size(item))


def _written_keys(op: str, params: dict[str, Any]) -> list[tuple[ItemKey, int, str]]:
    """(item key, unit factor, action) of every item a write request touches."""
    if op == "TransactWriteItems":
        out = []
        for t in params["TransactItems"]:
            ((action, body),) = t.items()
            out.append((_key_of(body), 2, action))
        return out
    if op == "BatchWriteItem":
        return [
            (_key_of(next(iter(r.values()))), 1, "batch")
            for requests in params["RequestItems"].values()
            for r in requests
        ]
    return [(_key_of(params), 1, op)]


def _condition(op: str, params: dict[str, Any], key: ItemKey) -> str:
    if op != "TransactWriteItems":
        return str(params.get("ConditionExpression", ""))
    for t in params["TransactItems"]:
        body = next(iter(t.values()))
        if _key_of(body) == key:
            return str(body.get("ConditionExpression", ""))
    return ""


def _key_of(params: dict[str, Any]) -> ItemKey:
    key = params.get("Key") or params["Item"]
    return key["pk"]["S"], key["sk"]["S"]


def _hash_from_query(params: dict[str, Any], attr: str) -> str:
    """The partition key value of a Query, from its key condition."""
    names = {v: k for k, v in params.get("ExpressionAttributeNames", {}).items()}
    expression = str(params.get("KeyConditionExpression", ""))
    for name, placeholder in re.findall(r"([#\w]+)\s*=\s*(:\w+)", expression):
        if names.get(attr) == name or name == attr:
            value = params["ExpressionAttributeValues"][placeholder]
            return str(next(iter(value.values())))
    return "?"


# -- running ---------------------------------------------------------------------------------


def run_workload(workload: Workload) -> Recorded:
    with rung.testing.LocalEngine(app, workers=4, telemetry=False) as engine:
        meter = HeatMeter(engine)
        with meter.counting_main():
            handles = [engine.trigger(*workload.start(n)) for n in range(workload.starts)]
        for handle in handles:
            run = engine.wait(handle.run_id, timeout=120)
            if run.status != rung.RunStatus.COMPLETED:
                raise SystemExit(f"{workload.name}: run {run.run_id} ended {run.status}")
        engine.settle(timeout=60)
        return meter.data


def probe_waiting_in_flight(runs: int = 40) -> dict[str, float]:
    """Messages a run in ``ctx.wait(2 h)`` holds: on a real-time engine (the virtual clock
    would jump past the wait), ``runs`` runs are left waiting and the queue is sampled."""
    with rung.testing.LocalEngine(app, workers=2, virtual_time=False, telemetry=False) as engine:
        handles = [engine.trigger("wait", {"n": n}) for n in range(runs)]
        deadline = time.monotonic() + 120
        waiting: set[str] = set()
        while len(waiting) < runs:
            if time.monotonic() > deadline:
                raise SystemExit(f"only {len(waiting)} of {runs} runs reached their wait")
            for h in handles:
                if h.run_id not in waiting and engine.get_run(h.run_id).status == "WAITING":
                    waiting.add(h.run_id)
            time.sleep(0.05)
        engine.settle(timeout=60)
        attributes = engine.sqs.get_queue_attributes(
            QueueUrl=engine.queue_url, AttributeNames=["All"]
        )["Attributes"]
    in_flight = int(attributes["ApproximateNumberOfMessagesNotVisible"])
    delayed = int(attributes["ApproximateNumberOfMessagesDelayed"])
    return {
        "waiting_runs": runs,
        "not_visible": in_flight,
        "delayed": delayed,
        "in_flight_per_waiting_run": in_flight / runs,
    }


# -- the projection ------------------------------------------------------------------------


def _per_run_key(where: Where) -> bool:
    return where[0] == "table" and where[1].startswith(PER_RUN_PREFIXES)


def _label(where: Where) -> str:
    space, key = where
    return f"table, pk {key}" if space == "table" else f"{space} index, key {key}"


def _holder_bytes(item: Item) -> tuple[int, int]:
    """(holders, bytes one holder entry adds to the queue item, mean)."""
    holders = item.get("holders", {}).get("M", {})
    if not holders:
        return 0, 0
    sizes = [1 + len(k.encode()) + _value_size(v) for k, v in holders.items()]
    return len(holders), round(sum(sizes) / len(sizes))


@dataclass(frozen=True)
class QueueTraffic:
    """What a run puts on its queue's partition key, per run; the queue item grows by
    ``per_holder`` bytes per run holding a slot."""

    base: int
    per_holder: int
    item_writes: float
    item_reads: float
    other_wcu: float
    other_rcu: float
    slot_seconds: float

    def ceiling(self, limit: int) -> float:
        """Runs/s the queue's key sustains when ``min(limit, rate x slot_seconds)`` runs
        hold slots (Little's law): every write and read of the item grows with them."""

        def fits(rate: float) -> bool:
            size = self.base + round(min(limit, rate * self.slot_seconds) * self.per_holder)
            wcu = self.item_writes * write_units(size) + self.other_wcu
            rcu = self.item_reads * read_units(size) + self.other_rcu
            return rate * wcu <= PARTITION_WCU and rate * rcu <= PARTITION_RCU

        low, high = 0.0, 1e6
        for _ in range(60):
            middle = (low + high) / 2
            low, high = (middle, high) if fits(middle) else (low, middle)
        return low


def _queue_of(pk: str) -> str:
    """The queue a queue item's key belongs to (``QUEUE#wide~05``: ``wide``)."""
    return pk[len("QUEUE#") :].split("~", 1)[0]


def spread(counts: Mapping[Where, float], queue: rung.Queue | None = None) -> dict[Where, float]:
    """``counts`` with each sharded index key family (``RUNNING#00`` .. ``RUNNING#31``)
    folded into one entry, ``RUNNING#*``, holding one shard's expected share: the
    family's total / ``SHARDS``; the same for a sharded queue's items (``QUEUE#wide~*``,
    the total / its ``shards``). A shard is a stable hash, so over many runs (or keys)
    each receives that share; a sample of a few hundred runs is uneven (a few runs more
    on one shard), which is sampling noise, not load AWS would see."""
    folded: defaultdict[Where, float] = defaultdict(float)
    for (space, key), value in counts.items():
        if space in INDEXES:
            folded[(space, key.rsplit("#", 1)[0] + "#*")] += value / SHARDS
        elif queue is not None and queue.shards > 1 and key.startswith("QUEUE#"):
            folded[(space, f"QUEUE#{queue.name}~*")] += value / queue.shards
        else:
            folded[(space, key)] += value
    return folded


def project(workload: Workload, data: Recorded, per_wait: float) -> dict[str, Any]:
    starts = workload.starts
    ceilings: list[tuple[float, str, str]] = []  # (runs/s, limit, what)
    heaviest: list[dict[str, Any]] = []
    q = workload.queue
    wcus, rcus, writes = spread(data.wcu, q), spread(data.rcu, q), spread(data.writes, q)
    for where in sorted(set(wcus) | set(rcus), key=lambda w: -wcus.get(w, 0.0)):
        wcu, rcu = wcus.get(where, 0.0) / starts, rcus.get(where, 0.0) / starts
        per_run = _per_run_key(where)
        by_w = PARTITION_WCU / wcu if wcu else float("inf")
        by_r = PARTITION_RCU / rcu if rcu else float("inf")
        if not per_run:
            ceilings.append((by_w, f"{PARTITION_WCU} WCU/s per key", _label(where)))
            ceilings.append((by_r, f"{PARTITION_RCU} RCU/s per key", _label(where)))
        heaviest.append(
            {
                "where": _label(where),
                "shared": not per_run,
                "writes_per_run": round(writes.get(where, 0.0) / starts, 3),
                "wcu_per_run": round(wcu, 3),
                "rcu_per_run": round(rcu, 3),
                "ceiling_runs_per_s": None if per_run else round(min(by_w, by_r), 1),
            }
        )
    table_wcu = sum(v for w, v in data.wcu.items() if w[0] == "table") / starts
    table_rcu = sum(v for w, v in data.rcu.items() if w[0] == "table") / starts
    ceilings.append((TABLE_WRU_QUOTA / table_wcu, "table quota 40,000 WRU/s", "table writes"))
    if table_rcu:
        ceilings.append((TABLE_RRU_QUOTA / table_rcu, "table quota 40,000 RRU/s", "table reads"))
    for index in INDEXES:
        wcu = sum(v for w, v in data.wcu.items() if w[0] == index) / starts
        if wcu:
            ceilings.append((TABLE_WRU_QUOTA / wcu, "table quota 40,000 WRU/s", f"{index} index"))

    worker_seconds = data.worker_requests / starts * REQUEST_SECONDS
    held = worker_seconds + workload.held_seconds(per_wait)
    ceilings.append((SQS_IN_FLIGHT / held, "SQS 120,000 in flight", f"{held:g} s held per run"))
    lambda_max = min(LAMBDA_ACCOUNT_CONCURRENCY, ESM_MAX_CONCURRENCY) / worker_seconds
    ceilings.append((lambda_max, "Lambda concurrency 1,000", f"{worker_seconds:.3f} s per run"))

    queue: dict[str, Any] | None = None
    if workload.queue is not None:
        spec = workload.queue
        name, shards = spec.name, spec.shards
        label = f"QUEUE#{name}" + ("~*" if shards > 1 else "")
        item = data.queue_items.get(name, {})  # the largest of its items
        holders, per_holder = _holder_bytes(item)
        base = item_size(item) - holders * per_holder
        # One versioned write (read, then write conditioned on the version) lands per
        # round trip at best on each item, whatever the capacity: an item serializes
        # its admissions; a sharded queue's items share the runs.
        versioned = data.versioned_queue_writes / starts
        serial = shards / (2 * REQUEST_SECONDS) / versioned if versioned else float("inf")
        ceilings.append((serial, "one versioned write per round trip per item", label))
        mine = [w for w in data.wcu if w[0] == "table" and w[1].startswith(f"QUEUE#{name}")]
        mine = [w for w in mine if _queue_of(w[1]) == name]
        slot_seconds = worker_seconds  # a run holds its slot for its attempt
        limit = spec.concurrency_limit or QUEUE_LIMIT_MAX
        traffic = QueueTraffic(
            base=base,
            per_holder=per_holder,
            item_writes=data.queue_item_writes[name] / starts,
            item_reads=data.queue_item_reads[name] / starts,
            other_wcu=(sum(data.wcu[w] for w in mine) - data.queue_item_wcu[name]) / starts,
            other_rcu=(sum(data.rcu[w] for w in mine) - data.queue_item_rcu[name]) / starts,
            slot_seconds=slot_seconds,
        )
        # Each item gets 1/shards of the runs and holds its share of the limit.
        at_limit = shards * traffic.ceiling(-(-limit // shards))
        at_max = shards * traffic.ceiling(-(-QUEUE_LIMIT_MAX // shards))
        full = base + -(-QUEUE_LIMIT_MAX // shards) * per_holder
        ceilings.append((at_limit, f"{label} keys, limit {limit}", label))
        by_design = limit / slot_seconds
        queue = {
            "shards": shards,
            "largest_item_bytes": item_size(item),
            "holders_in_it": holders,
            "bytes_per_holder": per_holder,
            "versioned_writes_per_run": round(versioned, 2),
            "writes_per_run_to_queue_key": round(sum(data.writes[w] for w in mine) / starts, 2),
            "writes_per_run_to_queue_item": round(traffic.item_writes, 2),
            "consistent_reads_per_run_of_queue_item": round(traffic.item_reads, 2),
            "item_bytes_at_1000_holders": full,
            "wcu_per_write_at_1000_holders": write_units(full),
            "concurrency_limit": limit,
            "ceiling_of_the_limit_itself_runs_per_s": round(by_design, 1),
            "ceiling_by_queue_key_at_its_limit_runs_per_s": round(at_limit, 1),
            "ceiling_by_queue_key_at_limit_1000_runs_per_s": round(at_max, 1),
            "ceiling_serialized_runs_per_s": round(serial, 1),
        }
    ceilings.sort(key=lambda c: c[0])
    binds, binding_limit, what = ceilings[0]
    return {
        "workload": workload.name,
        "unit": workload.unit,
        "starts": starts,
        "dynamodb_requests_per_run": round(sum(data.dynamodb.values()) / starts, 2),
        "sqs_requests_per_run": round(sum(data.sqs.values()) / starts, 2),
        "sqs_by_operation_per_run": {k: round(v / starts, 2) for k, v in sorted(data.sqs.items())},
        "wcu_per_run": round(sum(data.wcu.values()) / starts, 2),
        "index_wcu_per_run": round(
            sum(v for w, v in data.wcu.items() if w[0] != "table") / starts, 2
        ),
        "rcu_per_run": round(sum(data.rcu.values()) / starts, 2),
        "worker_requests_per_run": round(data.worker_requests / starts, 2),
        "assumed_worker_seconds_per_run": round(worker_seconds, 4),
        "seconds_message_held_per_run": round(held, 3),
        "scans": data.scans,
        "binding": {"runs_per_s": round(binds, 1), "limit": binding_limit, "where": what},
        "ceilings": [
            {"runs_per_s": round(c, 1), "limit": lim, "where": w}
            for c, lim, w in ceilings
            if c != float("inf")
        ],
        "keys": heaviest[:10],
        "queue": queue,
    }


# -- reporting ---------------------------------------------------------------------------


def _fmt(x: float) -> str:
    return f"{x:,.0f}" if x >= 10 else f"{x:,.1f}"


def keys_ceiling(row: dict[str, Any]) -> float:
    """Runs/s of a workload by its shared partition key values alone: what no quota
    increase raises (quotas, SQS and Lambda aside)."""
    return min(
        (c["runs_per_s"] for c in row["ceilings"] if "per key" in c["limit"]),
        default=float("inf"),
    )


def queue_target(rows: list[dict[str, Any]], workload: str = WIDE_ROW) -> tuple[float, str]:
    """Starts/s through one queue with the largest limit (1,000), from ``workload``'s
    traffic (uncontended: no run parks): the lower of its queue items' ceiling at 1,000
    holders, the serialized versioned writes, and its other shared keys (the indexes)."""
    row = next(r for r in rows if r["workload"] == workload)
    q = row["queue"]
    others = [c for c in row["ceilings"] if not c["where"].startswith("QUEUE#")]
    candidates = [
        (q["ceiling_by_queue_key_at_limit_1000_runs_per_s"], "queue items at 1,000 holders"),
        (q["ceiling_serialized_runs_per_s"], "versioned writes to the queue items"),
        (others[0]["runs_per_s"], f"{others[0]['where']}: {others[0]['limit']}"),
    ]
    return min(candidates)


def report(rows: list[dict[str, Any]], probe: dict[str, float], console: Console) -> None:
    table = Table(title="Projected sustainable runs per second on AWS (default quotas)")
    for column in (
        "workload",
        "WCU/run (index)",
        "SQS req/run",
        "binds first",
        "runs/s",
        "next limit",
    ):
        table.add_column(column, justify="right" if "/" in column else "left")
    for row in rows:
        first, second = row["ceilings"][0], row["ceilings"][1]
        table.add_row(
            f"{row['workload']}" + (f" [dim]({row['unit']})[/]" if row["unit"] != "run" else ""),
            f"{row['wcu_per_run']:g} ({row['index_wcu_per_run']:g})",
            f"{row['sqs_requests_per_run']:g}",
            f"{first['where']}: {first['limit']}",
            f"[bold]{_fmt(first['runs_per_s'])}[/]",
            f"{_fmt(second['runs_per_s'])} ({second['where']}: {second['limit']})",
        )
    console.print(table)

    keys = Table(title="Heaviest shared partition key values (units per run)")
    for column in ("workload", "where", "writes", "WCU", "RCU", "ceiling runs/s"):
        keys.add_column(column, justify="left" if column in ("workload", "where") else "right")
    for row in rows:
        shared = [k for k in row["keys"] if k["shared"]][:3]
        for n, k in enumerate(shared):
            keys.add_row(
                row["workload"] if n == 0 else "",
                k["where"],
                f"{k['writes_per_run']:g}",
                f"{k['wcu_per_run']:g}",
                f"{k['rcu_per_run']:g}",
                _fmt(k["ceiling_runs_per_s"]),
                end_section=n == len(shared) - 1,
            )
    console.print(keys)

    for row in rows:
        q = row["queue"]
        if q is not None:
            console.print(
                f"- {row['workload']}: {q['writes_per_run_to_queue_key']:g} writes per run on"
                f" the queue's key{'s' if q['shards'] > 1 else ''}"
                + (f" ({q['shards']} items, a run on one)" if q["shards"] > 1 else "")
                + f" ({q['writes_per_run_to_queue_item']:g} WCU-weighted writes"
                f" and {q['consistent_reads_per_run_of_queue_item']:g} consistent reads of the"
                f" queue item itself, {q['versioned_writes_per_run']:g} versioned). The item"
                f" was {q['largest_item_bytes']} bytes with {q['holders_in_it']} holders"
                f" ({q['bytes_per_holder']} bytes each; {q['item_bytes_at_1000_holders']:,}"
                f" bytes, {q['wcu_per_write_at_1000_holders']} WCU a write, at 1,000)."
                f" Ceilings: the limit itself {_fmt(q['ceiling_of_the_limit_itself_runs_per_s'])}"
                f" runs/s (limit {q['concurrency_limit']} / slot time); the queue key at this"
                f" limit {_fmt(q['ceiling_by_queue_key_at_its_limit_runs_per_s'])}, at limit"
                f" 1,000 {_fmt(q['ceiling_by_queue_key_at_limit_1000_runs_per_s'])};"
                f" serialized versioned writes {_fmt(q['ceiling_serialized_runs_per_s'])}."
            )
    per_run = probe["in_flight_per_waiting_run"]
    bound = (
        f"so at most {SQS_IN_FLIGHT / per_run:,.0f} runs can wait at once on one queue"
        if per_run
        else "so the in-flight limit does not bound how many runs wait"
    )
    console.print(
        f"- ctx.wait(2 h): {probe['not_visible']:g} messages in flight for"
        f" {probe['waiting_runs']:g} waiting runs ({probe['delayed']:g} delayed):"
        f" {per_run:g} per waiting run, {bound}."
    )
    single = next(r for r in rows if r["workload"] == "one task, 5 steps")
    q_best, q_where = queue_target(rows)
    by_keys = keys_ceiling(single)
    console.print(
        f"- targets (issue 11): one task {_fmt(by_keys)} runs/s by its partition keys"
        f" against {TARGET_SINGLE_TASK:,} ({'met' if by_keys >= TARGET_SINGLE_TASK else 'short'});"
        f" at the default quotas {_fmt(single['binding']['runs_per_s'])}"
        f" ({single['binding']['where']}: {single['binding']['limit']}, adjustable);"
        f" one concurrency-limited queue (limit 1,000, 32 shards) {_fmt(q_best)} starts/s"
        f" against {TARGET_QUEUE_STARTS:,} ({q_where}; per-tenant keys over 32 shards"
        f" {_fmt(queue_target(rows, 'per-tenant keys, 32 shards')[0])}; one item"
        f" {_fmt(queue_target(rows, 'per-tenant keys (200 tenants)')[0])})."
    )
    console.print(
        f"- assumed: {REQUEST_SECONDS * 1000:g} ms per AWS request from the worker, no user"
        " code (Lambda rows are the orchestration's own ceiling: divide by your code's"
        f" seconds per run); at template.yaml's default MaximumConcurrency"
        f" ({TEMPLATE_MAX_CONCURRENCY}) the Lambda ceiling is 1/100 of the row."
    )


def main() -> int:
    logging.getLogger("rung").setLevel(logging.ERROR)  # the retried step's warnings
    console = Console(width=max(Console().width, 160))
    began = time.monotonic()
    probe = probe_waiting_in_flight()
    rows = []
    for workload in WORKLOADS:
        t = time.monotonic()
        data = run_workload(workload)
        rows.append(project(workload, data, probe["in_flight_per_waiting_run"]))
        console.print(
            f"[dim]{workload.name}: {workload.starts} starts in {time.monotonic() - t:.1f}s[/]"
        )
    report(rows, probe, console)
    single = next(r for r in rows if r["workload"] == "one task, 5 steps")
    q_best, q_where = queue_target(rows)
    out = {
        "note": (
            "DynamoDB units by partition key value (table and each index), recorded at the"
            " botocore layer on rung.testing.LocalEngine, projected to AWS's per-key limits"
            " and quotas; the write-sharded indexes (issue 11), one shard's expected share"
            " per sharded key family"
        ),
        "limits": {
            "partition_wcu_per_s": PARTITION_WCU,
            "partition_rcu_per_s": PARTITION_RCU,
            "table_wru_quota_per_s": TABLE_WRU_QUOTA,
            "table_rru_quota_per_s": TABLE_RRU_QUOTA,
            "sqs_in_flight": SQS_IN_FLIGHT,
            "lambda_account_concurrency": LAMBDA_ACCOUNT_CONCURRENCY,
            "esm_maximum_concurrency": ESM_MAX_CONCURRENCY,
            "template_default_maximum_concurrency": TEMPLATE_MAX_CONCURRENCY,
        },
        "assumptions": {
            "seconds_per_aws_request": REQUEST_SECONDS,
            "user_code_seconds_per_run": 0,
            "wait_seconds": WAIT_SECONDS,
            "backoff_seconds": BACKOFF_SECONDS,
        },
        "waiting_in_flight_probe": probe,
        "targets": {
            "single_task_runs_per_s": TARGET_SINGLE_TASK,
            "single_task_projected": single["binding"]["runs_per_s"],
            "single_task_by_partition_keys": keys_ceiling(single),
            "queue_starts_per_s": TARGET_QUEUE_STARTS,
            "queue_projected": q_best,
            "queue_binds": q_where,
        },
        "workloads": rows,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")
    console.print(f"wrote {RESULTS} in {time.monotonic() - began:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
