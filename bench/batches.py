"""What a batch of child runs costs its parent: wake-ups and AWS requests.

A parent ``batch_trigger_and_wait``s N children, on ``rung.testing.LocalEngine`` with
one worker and virtual time. Child n waits n+1 minutes and then runs one step, so
the children end a minute apart, and the worker runs whatever is due (a woken
parent) before time moves on: the order of events is the same on every run.

Two ways to wait for the same batch:

* **batch**: ``ctx.batch_trigger_and_wait`` in the task body. Each child's end adds
  one to a count on the parent's item; the last one wakes the parent.
* **inside ctx.map**: the same call in the one branch of a ``ctx.map``. A map's run
  waits for several things at once and is woken by any of them, so every child's end
  wakes the parent, which re-reads the unfinished children and suspends again. This
  is how every batch behaved before the count.

Counted: every request the worker makes (DynamoDB and SQS), including the
children's own (their wait and step: about 11 per child), and the trigger's; the
parent's executions are counted by the task.

Run it: ``.venv/bin/python bench/batches.py``. Results go to bench/results/batches.json.
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

from _counting import Counting  # bench/ is on the path when run as a script
from rich.console import Console
from rich.table import Table

import rung
import rung.testing

RESULTS = Path(__file__).parent / "results" / "batches.json"
SIZES = (10, 100, 300)

app = rung.App("bench-batches")
executions: Counter[str] = Counter()


@app.task(id="child")
def child(ctx: rung.Context, n: int) -> int:
    ctx.wait(timedelta(minutes=n + 1))
    return ctx.step("work", lambda: n * 2)


@app.task(id="batch")
def batch(ctx: rung.Context, size: int) -> int:
    executions["batch"] += 1
    return sum(r.unwrap() for r in ctx.batch_trigger_and_wait(child, list(range(size))))


@app.task(id="in-map")
def in_map(ctx: rung.Context, size: int) -> int:
    executions["in-map"] += 1

    def branch(ctx: rung.Context, item: int) -> int:
        return sum(r.unwrap() for r in ctx.batch_trigger_and_wait(child, list(range(size))))

    return sum(ctx.map([0], branch).results())


def measure(task: str, size: int) -> dict[str, Any]:
    executions.clear()
    with rung.testing.LocalEngine(app, workers=1) as engine:
        meter = Counting(engine)
        items = _ItemsRead(engine)
        meter.trigger_phase = True
        handle = engine.trigger(task, size)
        meter.trigger_phase = False
        run = engine.wait(handle.run_id, timeout=600)
        assert run.status == rung.RunStatus.COMPLETED, run
        assert run.output == sum(n * 2 for n in range(size)), run.output
        counts = meter.counts
    reads = sum(n for (s, op), n in counts.items() if op in {"BatchGetItem", "Query", "GetItem"})
    return {
        "parent_executions": executions[task],
        "items_read": items.count,
        "requests": sum(counts.values()),
        "requests_per_child": round(sum(counts.values()) / size, 1),
        "read_requests": reads,
        "by_operation": {f"{s}:{op}": n for (s, op), n in sorted(counts.items())},
    }


class _ItemsRead:
    """DynamoDB items returned by reads (a BatchGetItem of 100 reads 100 items)."""

    def __init__(self, engine: rung.testing.LocalEngine) -> None:
        self.count = 0
        engine.dynamodb.meta.events.register("after-call.dynamodb", self._count)

    def _count(self, parsed: dict[str, Any], model: Any, **_: Any) -> None:
        if model.name == "BatchGetItem":
            self.count += sum(len(v) for v in parsed.get("Responses", {}).values())
        elif model.name == "Query":
            self.count += int(parsed.get("Count", 0))
        elif model.name == "GetItem" and "Item" in parsed:
            self.count += 1


def main() -> None:
    results: dict[str, dict[str, Any]] = {}
    for size in SIZES:
        for task, label in (("batch", "batch"), ("in-map", "inside ctx.map")):
            results[f"{label}, N={size}"] = {"size": size, "mode": label, **measure(task, size)}
    table = Table(title="A parent waiting for N children (all requests, both sides)")
    columns = ("N", "waits as", "parent executions", "requests", "per child", "items read")
    for column in columns:
        table.add_column(column, justify="left" if column == "waits as" else "right")
    for row in results.values():
        table.add_row(
            str(row["size"]),
            row["mode"],
            str(row["parent_executions"]),
            str(row["requests"]),
            f"{row['requests_per_child']:g}",
            str(row["items_read"]),
        )
    Console().print(table)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"results: {RESULTS}")


if __name__ == "__main__":
    main()
