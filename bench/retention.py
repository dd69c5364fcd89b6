"""What retention costs: the DynamoDB requests and units the sweep spends per expired run.

For each variant (a 1-, 5-, 10- and 50-step run; a 5-step run with an idempotency key;
a run that waited for a token), ``RUNS`` runs finish on ``rung.testing.LocalEngine``;
then the virtual clock moves past the retention and one reconciler pass sweeps them.
Every DynamoDB request of that pass is counted at the botocore layer and priced from
the items it deletes (read back before the pass, with an uncounted client): a delete
costs 1 WRU per started KB of the item, plus one write per index entry it removes; a
Query or BatchGetItem costs 1 RRU per started 4 KB (half that, eventually consistent).

The fan-out over ``runs_by_status``'s 5 terminal statuses x 32 shards is a fixed cost
per sweep (160 queries, 0.5 RRU each at least), whatever the number of runs: shown apart.
Stamping the expiry at a run's end adds no write (the terminal transition writes the
run item and, its status changing, the index entry anyway).

For comparison, per run: stamping a TTL on every item at the run's end (then TTL
deletes everything free) costs one extra write per checkpoint, token and key; a DynamoDB
Streams consumer of the run item's TTL deletion pays the same deletes as the sweep
minus the run item's (free) but cannot run on the emulators (moto never deletes by TTL).

Run it: ``.venv/bin/python bench/retention.py``. Results go to bench/results/retention.json.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

from _dynamo_units import Item, index_writes, item_size, read_units, write_units
from rich.console import Console
from rich.table import Table

import rung
import rung.testing
from rung._util.clock import VirtualClock

RESULTS = Path(__file__).parent / "results" / "retention.json"
RUNS = 20
PRICE_WRU = 0.625  # $ per million DynamoDB write request units (on demand)
PRICE_RRU = 0.125  # $ per million DynamoDB read request units
RETENTION = timedelta(days=30)
#: What a sweep sends (it reads no item singly).
SWEEP_OPERATIONS = {"Query", "BatchGetItem", "BatchWriteItem", "DeleteItem", "UpdateItem"}

app = rung.App("retention-bench")


def _task(steps: int) -> None:
    @app.task(id=f"steps-{steps}")
    def body(ctx: rung.Context, n: int) -> int:
        return sum(ctx.step(f"s{i}", lambda i: i, i) for i in range(steps))


for _n in (1, 5, 10, 50):
    _task(_n)


@app.task(id="token")
def token_task(ctx: rung.Context, n: int) -> Any:
    return ctx.wait_for_token(ctx.create_token("approval"))


#: (label, task, steps + other items the run leaves, idempotency key)
VARIANTS = [
    ("1 step", "steps-1", False),
    ("5 steps", "steps-5", False),
    ("10 steps", "steps-10", False),
    ("50 steps", "steps-50", False),
    ("5 steps + idempotency key", "steps-5", True),
    ("token wait (1 token)", "token", False),
]


class Meter:
    """Counts the engine's DynamoDB requests and prices them from the items they touch."""

    def __init__(self, engine: rung.testing.LocalEngine) -> None:
        self.engine = engine
        self.items: dict[tuple[str, str], Item] = {}
        self.requests: Counter[str] = Counter()
        self.wru = 0
        self.rru = 0.0
        self.deleted = 0
        self.lock = threading.Lock()
        events = engine.dynamodb.meta.events
        events.register("provide-client-params.dynamodb.*", self._remember)
        events.register("after-call.dynamodb", self._count)
        self.on = False

    def snapshot(self) -> None:
        """Every item of the table as it is now (the sweep's deletes are priced from it)."""
        pages = self.engine.dynamodb.get_paginator("scan").paginate(
            TableName=self.engine.table_name
        )
        self.items = {(i["pk"]["S"], i["sk"]["S"]): i for p in pages for i in p["Items"]}

    def _remember(self, params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        context["bench_params"] = params

    def _count(self, parsed: dict[str, Any], model: Any, context: dict[str, Any], **_: Any) -> None:
        op: str = model.name
        if not self.on or op not in SWEEP_OPERATIONS:
            return  # (an idle LocalEngine worker reads runs with GetItem; the sweep never)
        params = context.get("bench_params", {})
        with self.lock:
            self.requests[op] += 1
            if op == "DeleteItem":
                self._delete(params["Key"])
            elif op == "BatchWriteItem":
                for requests in params["RequestItems"].values():
                    for request in requests:
                        self._delete(request["DeleteRequest"]["Key"])
            elif op == "UpdateItem":
                self.wru += 2  # an expiry re-stamped: the item and its index entry
            elif op == "Query":
                size = sum(item_size(i) for i in parsed.get("Items", []))
                self.rru += read_units(size, consistent=bool(params.get("ConsistentRead")))
            elif op == "BatchGetItem":
                for found in parsed.get("Responses", {}).values():
                    self.rru += sum(read_units(item_size(i)) for i in found)

    def _delete(self, key: dict[str, Any]) -> None:
        item = self.items.get((key["pk"]["S"], key["sk"]["S"]))
        self.wru += write_units(item_size(item)) + index_writes(item, None)
        self.deleted += 1 if item is not None else 0


def measure(label: str, task: str, keyed: bool) -> dict[str, Any]:
    with rung.testing.LocalEngine(app, retention=RETENTION) as engine:
        meter = Meter(engine)
        ids = []
        for n in range(RUNS):
            key = f"k{n}" if keyed else None
            run_id = engine.trigger(task, n, idempotency_key=key).run_id
            if task == "token":
                token = engine.wait_for_token(run_id)
                engine.client.complete_token(token.id, "ok")
            ids.append(run_id)
        for run_id in ids:
            assert engine.wait(run_id).status == rung.RunStatus.COMPLETED
        meter.snapshot()
        items = len(meter.items)
        assert isinstance(engine.clock, VirtualClock)
        engine.clock.advance(RETENTION + timedelta(minutes=10))
        # The sweep of the reconciler's pass (the rest of the pass is the reconciler's).
        meter.on = True
        first = engine.store.sweep_expired(engine.clock.now(), 20_000)
        meter.on = False
        assert first.runs == RUNS and not first.truncated, first
        swept = dict(meter.requests)
        wru, rru = meter.wru, meter.rru
        meter.requests.clear()
        meter.wru, meter.rru = 0, 0.0
        meter.on = True
        engine.store.sweep_expired(engine.clock.now(), 20_000)  # nothing left: fixed cost
        meter.on = False
        fixed_rru = meter.rru
        fixed_requests = sum(meter.requests.values())
        left = engine.dynamodb.scan(TableName=engine.table_name, Select="COUNT")["Count"]
    # Everything under the runs' keys (and their keys, tokens) is gone; only the table's
    # own items (queue state, none here) may remain.
    assert left == 0, f"{left} items left after the sweep"
    per_run_items = items / RUNS
    sweep_requests = sum(swept.values()) - fixed_requests
    return {
        "variant": label,
        "items_per_run": per_run_items,
        "requests_per_run": round(sweep_requests / RUNS, 2),
        "requests_by_operation": swept,
        "wru_per_run": round(wru / RUNS, 2),
        "rru_per_run": round((rru - fixed_rru) / RUNS, 2),
        "fixed_per_pass": {"requests": fixed_requests, "rru": fixed_rru},
        # the alternative: a TTL written on every item but the run at its end
        "stamp_every_item_extra_wru_per_run": per_run_items - 1,
        "streams_consumer_wru_per_run": round(wru / RUNS - 3, 2),
        "usd_per_million_runs": round(
            (wru / RUNS) * PRICE_WRU + ((rru - fixed_rru) / RUNS) * PRICE_RRU, 3
        ),
    }


def main() -> int:
    console = Console(width=max(Console().width, 120))
    began = time.monotonic()
    rows = [measure(*v) for v in VARIANTS]
    table = Table(title=f"retention: the sweep's cost per expired run ({RUNS} runs per variant)")
    for column in (
        "variant",
        "items/run",
        "requests/run",
        "WRU/run",
        "RRU/run",
        "$/M runs",
        "stamp-all: +WRU/run",
        "streams: WRU/run",
    ):
        table.add_column(column, justify="left" if column == "variant" else "right")
    for row in rows:
        table.add_row(
            row["variant"],
            f"{row['items_per_run']:g}",
            f"{row['requests_per_run']:g}",
            f"{row['wru_per_run']:g}",
            f"{row['rru_per_run']:g}",
            f"{row['usd_per_million_runs']:.3f}",
            f"{row['stamp_every_item_extra_wru_per_run']:g}",
            f"{row['streams_consumer_wru_per_run']:g}",
        )
    console.print(table)
    fixed = rows[0]["fixed_per_pass"]
    console.print(
        f"fixed per sweep (the index fan-out, found or not): {fixed['requests']} "
        f"requests, {fixed['rru']:g} RRU; at one pass per 5 minutes: "
        f"{fixed['rru'] * 12 * 24 * 30 / 1e6 * PRICE_RRU:.4f} $/month"
    )
    console.print(
        "WRU: deletes (1 per started KB of the item, plus 1 per index entry removed: the run "
        "item has two). streams: the same deletes minus the run item's 3 (TTL deletes free)."
    )
    data = {
        "runs_per_variant": RUNS,
        "retention_days": RETENTION.days,
        "prices_usd_per_million": {"dynamodb_wru": PRICE_WRU, "dynamodb_rru": PRICE_RRU},
        "variants": rows,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(data, indent=2) + "\n")
    console.print(f"wrote {RESULTS} in {time.monotonic() - began:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
