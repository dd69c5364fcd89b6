"""How many AWS requests a run costs, counted at the botocore layer, and what they cost.

Runs tasks of 1, 5, 10 and 50 steps (and two 5-step variants: with an idempotency
key, and with one retried step) on ``rung.testing.LocalEngine``, one run at a time,
and counts every request the engine's boto3 clients make while the run is in flight.

What is counted, and what is not:

* Requests from the worker thread (claim, checkpoints, completion, SQS calls) and
  from the main thread *inside* ``trigger``: that is the run's cost.
* A ReceiveMessage that returned the run's message counts (on AWS the Lambda event
  source mapping makes it, and it is billed). A ReceiveMessage that returned nothing
  does not: LocalEngine's worker polls an idle queue every few milliseconds, while on
  AWS the event source mapping long-polls, so idle polling is a per-queue cost, not a
  per-run one. Empty polls are reported separately.
* Reads by the main thread outside ``trigger`` (``engine.wait`` polling GetItem,
  ``history``) are the caller's, not the run's; reported separately.

Billing units are metered per write, from the item sizes before and after it (read
back with a second, uncounted client): a write costs 1 WRU per started KB of the
larger of the two; a TransactWriteItems item costs twice that; every write that
changes an item's entry in a global secondary index also writes the index (1 WRU per KB
of the entry, 2 writes when the index key changes, e.g. a status change in
``runs_by_status``; none when no projected attribute changes, e.g. a lease renewal).

Run it: ``make bench`` or ``.venv/bin/python bench/api_calls.py``. Results go to
bench/results/api_calls.json.
"""

from __future__ import annotations

import contextlib
import json
import statistics
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import boto3
from _dynamo_units import (  # bench/ is on the path when run as a script
    Item,
    index_writes,
    item_size,
    read_units,
    write_units,
)
from rich.console import Console
from rich.table import Table

import rung
import rung._aws.dynamodb
import rung._aws.s3
import rung.testing

RESULTS = Path(__file__).parent / "results" / "api_calls.json"
REPEATS = 3
STEP_COUNTS = (1, 5, 10, 50)

# List prices, us-east-1, on-demand / standard, at the time of writing.
PRICE_WRU = 0.625  # $ per million DynamoDB write request units
PRICE_RRU = 0.125  # $ per million DynamoDB read request units
PRICE_SQS = 0.40  # $ per million SQS requests (64 KB chunks)
PRICE_SFN_TRANSITION = 25.0  # $ per million Step Functions Standard state transitions
PRICE_DURABLE_OPERATION = 8.0  # $ per million Lambda durable functions operations
SFN_TRANSITIONS_5_STEPS = 7  # 5 Task states + the start and the end of the execution
DURABLE_OPERATIONS_5_STEPS = 6  # 1 execution + 5 steps

WRITES = {"PutItem", "UpdateItem", "DeleteItem", "TransactWriteItems", "BatchWriteItem"}
READS = {"GetItem", "Query", "Scan", "BatchGetItem", "TransactGetItems"}

ItemKey = tuple[str, str]


# -- the tasks measured ------------------------------------------------------------------

app = rung.App("bench")
_failed_once: set[str] = set()


def work(i: int) -> int:
    return i


def flaky(i: int) -> int:
    """Fails the first time it runs in each run (a transient error), then succeeds."""
    key = rung.current_step().idempotency_key
    if key not in _failed_once:
        _failed_once.add(key)
        raise ConnectionError("transient failure (bench)")
    return i


def _define(steps: int, flaky_at: int | None = None) -> str:
    task_id = f"steps-{steps}" + ("-retry" if flaky_at is not None else "")

    def body(ctx: rung.Context, payload: dict[str, str]) -> int:
        total = 0
        for i in range(steps):
            total += ctx.step("work", flaky if i == flaky_at else work, i)
        return total

    app.task(
        id=task_id,
        retry=rung.RetryPolicy(max_attempts=3, initial_interval=timedelta(seconds=1)),
    )(body)
    return task_id


@dataclass(frozen=True)
class Variant:
    name: str
    label: str
    task_id: str
    steps: int
    idempotency_key: bool = False


VARIANTS = [
    Variant(f"{n} steps", f"{n} step{'s' * (n > 1)}", _define(n), n) for n in STEP_COUNTS
] + [
    Variant("5 steps, idempotency key", "5 + key", "steps-5", 5, idempotency_key=True),
    Variant("5 steps, one retry", "5 + retry", _define(5, flaky_at=2), 5),
]


# Offloaded values (docs/payloads.md): the same one-step task with a small value and
# with a 1 MB one, as payload, step result or output.
OFFLOAD_BYTES = 1_000_000
PRICE_S3_PUT = 5.0  # $ per million S3 Standard PUT requests
PRICE_S3_GET = 0.4  # $ per million S3 Standard GET requests


@app.task(id="offload")
def offload(ctx: rung.Context, payload: dict[str, Any]) -> Any:
    """A step whose result (``payload["step"]`` bytes) and an output (``payload["out"]``)."""
    result = ctx.step("make", lambda: "s" * payload["step"])
    ctx.wait(timedelta(seconds=1))  # a second attempt replays the step's checkpoint
    return {"step": len(result), "out": "o" * payload["out"]}


OFFLOAD_CASES = {
    "small values": ({"blob": ""}, {"step": 10, "out": 10}),
    "1 MB payload": ({"blob": "p" * OFFLOAD_BYTES}, {"step": 10, "out": 10}),
    "1 MB step result": ({"blob": ""}, {"step": OFFLOAD_BYTES, "out": 10}),
    "1 MB output": ({"blob": ""}, {"step": 10, "out": OFFLOAD_BYTES}),
}


def measure_offload(engine: rung.testing.LocalEngine, meter: Meter) -> dict[str, dict[str, int]]:
    """Per case: the run's DynamoDB/SQS requests and WRU, and its S3 requests; then the
    S3 GETs a fresh process (a new Lambda container) would make, its cache empty."""
    out: dict[str, dict[str, int]] = {}
    assert engine.blobs is not None
    for label, (extra, sizes) in OFFLOAD_CASES.items():
        meter.wait_done()
        meter.reset()
        before = dict(engine.blobs.requests)
        with meter.phase("trigger"):
            handle = engine.trigger("offload", {**extra, **sizes})
        run = engine.wait(handle.run_id, timeout=60)
        if run.status != rung.RunStatus.COMPLETED:
            raise SystemExit(f"{label}: run {run.run_id} ended {run.status}: {run.error}")
        meter.wait_done()
        tally = meter.reset()
        s3 = {k: v - before[k] for k, v in engine.blobs.requests.items()}
        cold = rung._aws.s3.Blobs(engine.blobs.client, engine.blobs.bucket)
        store = rung._aws.dynamodb.DynamoStore(engine.dynamodb, engine.table_name, blobs=cold)
        # what a new attempt reads (the payload, the checkpoints), its cache empty
        store.resolved(store.get_run(handle.run_id).payload)
        store.load_steps(handle.run_id)
        out[label] = {
            "dynamodb_sqs_requests": tally.total,
            "wru": tally.wru,
            "s3_put": s3["PutObject"],
            "s3_get_same_process": s3["GetObject"],
            "s3_get_per_attempt_cold": cold.requests["GetObject"],
        }
    return out


def report_offload(rows: dict[str, dict[str, int]], console: Console) -> dict[str, Any]:
    table = Table(title="Offloaded values: a 1-step run with one 1 MB value vs small values")
    for col in (
        "case",
        "DynamoDB+SQS req",
        "WRU",
        "S3 PUT",
        "S3 GET (warm)",
        "GET per cold attempt",
    ):
        table.add_column(col, justify="left" if col == "case" else "right")
    for label, r in rows.items():
        table.add_row(
            label,
            str(r["dynamodb_sqs_requests"]),
            str(r["wru"]),
            str(r["s3_put"]),
            str(r["s3_get_same_process"]),
            str(r["s3_get_per_attempt_cold"]),
        )
    console.print(table)
    base = rows["small values"]
    per_value = {
        label: {
            "extra_requests": r["dynamodb_sqs_requests"]
            - base["dynamodb_sqs_requests"]
            + r["s3_put"]
            + r["s3_get_same_process"],
            "s3_put": r["s3_put"],
            "s3_get_per_cold_attempt": r["s3_get_per_attempt_cold"],
            "usd_per_million_values": round(
                r["s3_put"] * PRICE_S3_PUT + r["s3_get_per_attempt_cold"] * PRICE_S3_GET, 3
            ),
        }
        for label, r in rows.items()
        if label != "small values"
    }
    console.print(
        "An offloaded value costs one S3 PUT when written (content-addressed: written once "
        "per run and process) and one GET per attempt of a process that has not read it "
        f"yet; S3 ${PRICE_S3_PUT:g}/M PUT, ${PRICE_S3_GET:g}/M GET. Inline, the same 1 MB "
        "could not be stored at all (DynamoDB items stop at 400 KB)."
    )
    return {"cases": rows, "per_offloaded_value": per_value}


# -- the meter -----------------------------------------------------------------------------


@dataclass
class Tally:
    """What one run cost."""

    requests: Counter[tuple[str, str]] = field(default_factory=Counter)  # (phase, operation)
    wru_by: Counter[str] = field(default_factory=Counter)  # "<item kind> <table|indexes>"
    rru: int = 0
    http_retries: int = 0  # botocore's own retries of counted requests (each one billed)
    idle_receives: int = 0
    client_reads: int = 0
    largest_item: int = 0
    last_activity: float = field(default_factory=time.monotonic)

    @property
    def wru(self) -> int:
        return sum(self.wru_by.values())

    def by_operation(self) -> Counter[str]:
        out: Counter[str] = Counter()
        for (_, op), n in self.requests.items():
            out[op] += n
        return out

    @property
    def total(self) -> int:
        return sum(self.requests.values())

    @property
    def sqs_requests(self) -> int:
        return sum(n for (_, op), n in self.requests.items() if op not in WRITES | READS)


class Meter:
    """Counts the requests of the engine's boto3 clients through botocore's event hooks."""

    def __init__(self, engine: rung.testing.LocalEngine) -> None:
        self._lock = threading.Lock()
        self._main_phase: str | None = None
        self._items: dict[ItemKey, Item | None] = {}
        self.tally = Tally()
        # A second, uncounted client reads items back to price each write by size.
        self._peek = boto3.client(
            "dynamodb",
            endpoint_url=engine.endpoint_url,
            region_name="us-east-1",
            aws_access_key_id="test",
            aws_secret_access_key="test",
        )
        self._queues = boto3.client(
            "sqs",
            endpoint_url=engine.endpoint_url,
            region_name="us-east-1",
            aws_access_key_id="test",
            aws_secret_access_key="test",
        )
        self._queue_url = engine.queue_url
        self._table = engine.table_name
        for client in (engine.dynamodb, engine.sqs):
            client.meta.events.register("before-parameter-build", self._remember_params)
            client.meta.events.register("after-call", self._count)

    def reset(self) -> Tally:
        with self._lock:
            done, self.tally = self.tally, Tally()
        return done

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Attribute the main thread's requests in this block to the run."""
        self._main_phase = name
        try:
            yield
        finally:
            self._main_phase = None

    def wait_done(self, quiet: float = 0.05, timeout: float = 10.0) -> None:
        """Wait until the run's message is gone and the worker has gone quiet.

        A run is terminal before its message is deleted; the delete is the run's too.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            attributes = self._queues.get_queue_attributes(
                QueueUrl=self._queue_url, AttributeNames=["All"]
            )["Attributes"]
            pending = sum(
                int(attributes.get(name, "0"))
                for name in (
                    "ApproximateNumberOfMessages",
                    "ApproximateNumberOfMessagesNotVisible",
                    "ApproximateNumberOfMessagesDelayed",
                )
            )
            if not pending and time.monotonic() - self.tally.last_activity > quiet:
                return
            time.sleep(quiet / 5)
        raise SystemExit(f"the worker did not finish within {timeout:g}s")

    # botocore handlers ------------------------------------------------------------------

    def _remember_params(self, params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        context["bench_params"] = params

    def _count(self, parsed: dict[str, Any], model: Any, context: dict[str, Any], **_: Any) -> None:
        op: str = model.name
        params: dict[str, Any] = context.get("bench_params", {})
        on_main = threading.current_thread() is threading.main_thread()
        with self._lock:
            tally = self.tally
            if op == "ReceiveMessage" and not parsed.get("Messages"):
                tally.idle_receives += 1
                return
            if on_main and self._main_phase is None:
                tally.client_reads += 1
                return
            phase = self._main_phase if on_main and self._main_phase else "worker"
            tally.requests[(phase, op)] += 1
            tally.http_retries += parsed.get("ResponseMetadata", {}).get("RetryAttempts", 0)
            tally.last_activity = time.monotonic()
            if op in WRITES:
                self._price_write(op, params)
            elif op == "GetItem":
                tally.rru += _rru(item_size(parsed.get("Item")))
            elif op == "Query":
                tally.rru += _rru(sum(item_size(i) for i in parsed.get("Items", [])))

    def _price_write(self, op: str, params: dict[str, Any]) -> None:
        if op == "TransactWriteItems":
            keys = [_key_of(next(iter(t.values()))) for t in params["TransactItems"]]
            factor = 2
        else:
            keys, factor = [_key_of(params)], 1
        for key in keys:
            before = self._items.get(key)
            after = self._peek.get_item(
                TableName=self._table,
                Key={"pk": {"S": key[0]}, "sk": {"S": key[1]}},
                ConsistentRead=True,
            ).get("Item")
            self._items[key] = after
            kind = _item_kind(key)
            self.tally.wru_by[f"{kind} table"] += factor * write_units(
                max(item_size(before), item_size(after))
            )
            self.tally.wru_by[f"{kind} indexes"] += index_writes(before, after)
            self.tally.largest_item = max(self.tally.largest_item, item_size(after))


def _rru(size: int) -> int:
    return int(read_units(size))  # strongly consistent: 1 RRU per 4 KB


def _item_kind(key: ItemKey) -> str:
    if key[1] == "#RUN":
        return "run item"
    if key[1].startswith("STEP#"):
        return "checkpoints"
    return "idempotency key"


def _key_of(params: dict[str, Any]) -> ItemKey:
    key = params.get("Key") or params["Item"]
    return key["pk"]["S"], key["sk"]["S"]


# -- running ---------------------------------------------------------------------------------


@dataclass
class Measured:
    variant: Variant
    tallies: list[Tally]

    @property
    def tally(self) -> Tally:
        return self.tallies[0]

    @property
    def stable(self) -> bool:
        first = self.tallies[0]
        return all(t.requests == first.requests and t.wru == first.wru for t in self.tallies)


def measure(engine: rung.testing.LocalEngine, meter: Meter, variant: Variant) -> Measured:
    tallies = []
    for n in range(REPEATS):
        meter.wait_done()
        meter.reset()
        key = f"{variant.name}-{n}" if variant.idempotency_key else None
        with meter.phase("trigger"):
            handle = engine.trigger(variant.task_id, {"order_id": "o-1"}, idempotency_key=key)
        run = engine.wait(handle.run_id, timeout=30)
        if run.status != rung.RunStatus.COMPLETED:
            raise SystemExit(f"{variant.name}: run {run.run_id} ended {run.status}: {run.error}")
        meter.wait_done()
        tallies.append(meter.reset())
    return Measured(variant, tallies)


# -- reporting ---------------------------------------------------------------------------


OPERATION_ORDER = [
    "PutItem",
    "TransactWriteItems",
    "UpdateItem",
    "Query",
    "GetItem",
    "SendMessage",
    "ReceiveMessage",
    "DeleteMessage",
    "ChangeMessageVisibility",
]

FIXED_LINES: list[tuple[str, str, str]] = [
    ("trigger", "PutItem", "record the run (conditional: attribute_not_exists)"),
    ("trigger", "SendMessage", "dispatch it: the message carries the run id, not the payload"),
    ("worker", "ReceiveMessage", "the delivery (on AWS: the event source mapping's receive)"),
    ("worker", "UpdateItem", "claim (QUEUED -> RUNNING, new fencing token) + complete (fenced)"),
    ("worker", "Query", "load checkpoints: skipped on a run's first claim, which has none"),
    ("worker", "DeleteMessage", "ack the message once the run is finished"),
]


def cost_per_million(tally: Tally) -> dict[str, float]:
    dynamodb = tally.wru * PRICE_WRU + tally.rru * PRICE_RRU
    sqs = tally.sqs_requests * PRICE_SQS
    return {"dynamodb": dynamodb, "sqs": sqs, "total": dynamodb + sqs}


def report(results: list[Measured], console: Console) -> dict[str, Any]:
    by_name = {m.variant.name: m for m in results}
    plain = [by_name[f"{n} steps"] for n in STEP_COUNTS]
    n10, n50 = by_name["10 steps"].tally, by_name["50 steps"].tally
    marginal = (n50.total - n10.total) / 40
    fixed = n10.total - 10 * marginal
    ops = [op for op in OPERATION_ORDER if any(m.tally.by_operation()[op] for m in results)]

    table = Table(title="AWS requests per run, by operation (counted at the botocore layer)")
    table.add_column("steps per run")
    for m in results:
        table.add_column(m.variant.label + ("" if m.stable else " (varied!)"), justify="right")
    for op in ops:
        table.add_row(op, *[str(m.tally.by_operation()[op] or "") for m in results])
    table.add_row(
        "[bold]requests per run[/]",
        *[f"[bold]{m.tally.total}[/]" for m in results],
        end_section=True,
    )
    table.add_row("DynamoDB WRU", *[f"{m.tally.wru:g}" for m in results])
    table.add_row("DynamoDB RRU", *[f"{m.tally.rru:g}" for m in results])
    table.add_row("largest item, bytes", *[str(m.tally.largest_item) for m in results])
    console.print(table)
    for m in results:
        if not m.stable:
            console.print(
                f"[red]{m.variant.name}: the repeats differ:[/] "
                + "; ".join(f"{dict(t.requests)} {t.wru} WRU" for t in m.tallies)
            )
    console.print(
        f"requests per marginal step (N50 - N10) / 40 = [bold]{marginal:g}[/]"
        f"    fixed per run N10 - 10 x marginal = [bold]{fixed:g}[/]"
    )

    # The fixed cost, line by line, from the measured per-operation counts.
    fixed_table = Table(title="the fixed per-run cost, line by line (measured)")
    for column in ("phase", "operation", "per run", "why"):
        fixed_table.add_column(column, justify="right" if column == "per run" else "left")
    explained = 0.0
    for phase, op, why in FIXED_LINES:
        c10, c50 = n10.requests[(phase, op)], n50.requests[(phase, op)]
        count = c10 - 10 * (c50 - c10) / 40
        explained += count
        fixed_table.add_row(phase, op, f"{count:g}", why)
    fixed_table.add_row("", "", f"[bold]{explained:g}[/]", "total (must equal the fixed cost)")
    console.print(fixed_table)
    step_ops = {
        op: (n50.by_operation()[op] - n10.by_operation()[op]) / 40
        for op in ops
        if n50.by_operation()[op] != n10.by_operation()[op]
    }
    console.print(
        "- per step: "
        + ", ".join(f"{op} x{n:g}" for op, n in step_ops.items())
        + " (the checkpoint: a put conditioned on attribute_not_exists; it needs no fencing token)"
    )

    base, keyed, retried = (
        by_name["5 steps"].tally,
        by_name["5 steps, idempotency key"].tally,
        by_name["5 steps, one retry"].tally,
    )
    notes: list[str] = []
    wru_parts = ", ".join(f"{k} {v:g}" for k, v in sorted(base.wru_by.items()) if v)
    notes.append(
        f"WRU of a 5-step run ({base.wru:g}): {wru_parts}. The run item is written 3 times"
        " (create, claim, complete): runs_by_task's entry (keys only) is written once, at"
        " the creation; runs_by_status's twice (delete + put) at each status change."
    )
    retry_delta = retried.by_operation()
    retry_delta.subtract(base.by_operation())
    notes.append(
        "one retry adds "
        + ", ".join(f"{op} +{n}" for op, n in retry_delta.items() if n)
        + f" = +{retried.total - base.total} requests, {retried.wru - base.wru:+g} WRU:"
        " the failed attempt's fenced write (error, backoff), a visibility change instead of"
        " a sleep, the redelivery, a second claim, and the checkpoint query that resumes at the"
        " failed step. The run item now also holds the failure with its traceback"
        f" ({retried.largest_item} bytes), so its later writes cost 2 WRU each (the"
        " indexes' entries do not hold it)."
    )
    key_delta = keyed.by_operation()
    key_delta.subtract(base.by_operation())
    notes.append(
        "an idempotency key: "
        + ", ".join(f"{op} {n:+d}" for op, n in key_delta.items() if n)
        + f", {keyed.wru - base.wru:+g} WRU: the run and the key are written in one"
        " transaction (2 WRU per item)."
    )
    idle = sum(t.idle_receives for m in results for t in m.tallies)
    reads = sum(t.client_reads for m in results for t in m.tallies)
    retries = sum(t.http_retries for m in results for t in m.tallies)
    notes.append(
        f"not counted: {idle} empty ReceiveMessage polls by LocalEngine's idle worker (on AWS the"
        " event source mapping long-polls: a per-queue cost, not per run) and"
        f" {reads} GetItem calls by engine.wait() (the caller's, not the run's)."
        f" botocore retries: {retries}."
    )
    for note in notes:
        console.print("- " + note)

    # What a million 5-step runs cost to orchestrate, at list price.
    cost = Table(title="orchestration cost per million 5-step runs, list price (compute excluded)")
    for column in ("", "units per run", "$ per million runs"):
        cost.add_column(column, justify="left" if not column else "right")
    rows: list[tuple[str, str, float]] = []
    for label, tally in (
        ("rung", base),
        ("rung, with an idempotency key", keyed),
        ("rung, every run retries once", retried),
    ):
        c = cost_per_million(tally)
        rows.append(
            (
                label,
                f"{tally.wru:g} WRU + {tally.rru:g} RRU + {tally.sqs_requests} SQS requests",
                c["total"],
            )
        )
    rows.append(
        (
            "Step Functions Standard",
            f"~{SFN_TRANSITIONS_5_STEPS} state transitions",
            SFN_TRANSITIONS_5_STEPS * PRICE_SFN_TRANSITION,
        )
    )
    rows.append(
        (
            "Lambda durable functions",
            f"~{DURABLE_OPERATIONS_5_STEPS} operations (1 execution + 5 steps)",
            DURABLE_OPERATIONS_5_STEPS * PRICE_DURABLE_OPERATION,
        )
    )
    for label, units, dollars in rows:
        cost.add_row(label, units, f"${dollars:,.2f}")
    console.print(cost)
    console.print(
        f"prices: DynamoDB ${PRICE_WRU}/M WRU and ${PRICE_RRU}/M RRU, on demand (a write costs 1"
        " WRU per KB, conditional or not; a failed condition is billed too; a transaction"
        f" item costs 2); SQS ${PRICE_SQS:.2f}/M requests; Step Functions Standard"
        f" ${PRICE_SFN_TRANSITION:g}/M transitions (5 Task states + start + end); Lambda"
        f" durable functions ${PRICE_DURABLE_OPERATION:g}/M operations (assumed: 1 for the"
        " execution + 1 per step; retries, data written and data retained are billed on top)."
        " Lambda compute is left out of every row: rung runs a whole attempt in 1 invocation,"
        " Step Functions invokes a Lambda per Task state."
    )

    return {
        "note": "AWS requests per run on rung.testing.LocalEngine, counted at the botocore layer",
        "repeats": REPEATS,
        "variants": [
            {
                "name": m.variant.label,
                "task_id": m.variant.task_id,
                "steps": m.variant.steps,
                "idempotency_key": m.variant.idempotency_key,
                "stable_across_repeats": m.stable,
                "requests": m.tally.total,
                "by_operation": dict(sorted(m.tally.by_operation().items())),
                "by_phase_and_operation": {
                    f"{phase}:{op}": n for (phase, op), n in sorted(m.tally.requests.items())
                },
                "wru": m.tally.wru,
                "wru_by_item": {k: v for k, v in sorted(m.tally.wru_by.items()) if v},
                "rru": m.tally.rru,
                "sqs_requests": m.tally.sqs_requests,
                "largest_item_bytes": max(t.largest_item for t in m.tallies),
                "requests_mean": statistics.mean(t.total for t in m.tallies),
            }
            for m in results
        ],
        "requests_per_marginal_step": marginal,
        "fixed_requests_per_run": fixed,
        "steps_vs_requests": {str(m.variant.steps): m.tally.total for m in plain},
        "retry_overhead_requests": retried.total - base.total,
        "prices_usd_per_million": {
            "dynamodb_wru": PRICE_WRU,
            "dynamodb_rru": PRICE_RRU,
            "sqs_request": PRICE_SQS,
            "step_functions_standard_transition": PRICE_SFN_TRANSITION,
            "lambda_durable_operation": PRICE_DURABLE_OPERATION,
        },
        "cost_per_million_5_step_runs_usd": {label: round(d, 4) for label, _, d in rows},
    }


def main() -> int:
    console = Console(width=max(Console().width, 120))
    began = time.monotonic()
    with rung.testing.LocalEngine(app) as engine:
        meter = Meter(engine)
        results = [measure(engine, meter, v) for v in VARIANTS]
        offloaded = measure_offload(engine, meter)
    data = report(results, console)
    data["offloaded_values"] = report_offload(offloaded, console)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(data, indent=2) + "\n")
    console.print(f"wrote {RESULTS} in {time.monotonic() - began:.1f}s")
    ok = all(m.stable for m in results)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
