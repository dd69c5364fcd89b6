"""What a wait costs: AWS requests per run for waits from an hour to 40 days.

A run of two steps with ``ctx.wait(length)`` between them runs on
``rung.testing.LocalEngine`` (virtual time: the 40 days pass in well under a second
of wall time, with the same SQS hops as on AWS: visibility changes of just under 12
hours and a fresh message when a message's 12 hours or its receive count run out).
The same run without the wait is the baseline; the difference is the wait's cost.

Counted: every request the engine's worker thread makes, and the trigger's; not the
test's own polling of the run, and not a ReceiveMessage that returned nothing (on AWS
the event source mapping long-polls an idle queue: a per-queue cost, not a per-run
one).

Run it: ``.venv/bin/python bench/waits.py``. Results go to bench/results/waits.json.
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

RESULTS = Path(__file__).parent / "results" / "waits.json"
LENGTHS = {
    "none (baseline)": None,
    "1 hour": timedelta(hours=1),
    "1 day": timedelta(days=1),
    "7 days": timedelta(days=7),
    "40 days": timedelta(days=40),
}
# $ per million, us-east-1 list prices: a DynamoDB write (a refused conditional write is
# billed too) or read of an item under 1 KB, and an SQS request.
PRICE_WRITE, PRICE_READ, PRICE_SQS = 0.625, 0.125, 0.40

app = rung.App("bench-waits")


@app.task(id="wait")
def wait_task(ctx: rung.Context, payload: dict[str, Any]) -> str:
    ctx.step("before", lambda: "b")
    if payload["seconds"] is not None:
        ctx.wait(payload["seconds"])
    ctx.step("after", lambda: "a")
    return "done"


def measure(length: timedelta | None) -> Counter[tuple[str, str]]:
    with rung.testing.LocalEngine(app) as engine:
        meter = Counting(engine)
        meter.trigger_phase = True
        handle = engine.trigger(
            "wait", {"seconds": length.total_seconds() if length is not None else None}
        )
        meter.trigger_phase = False
        run = engine.wait(handle.run_id, timeout=120)
        assert run.status == rung.RunStatus.COMPLETED, run
        return meter.counts


def main() -> None:
    results: dict[str, Any] = {}
    baseline: Counter[tuple[str, str]] = Counter()
    for label, length in LENGTHS.items():
        counts = measure(length)
        if length is None:
            baseline = counts
        extra = counts.copy()
        extra.subtract(baseline)
        added = sum(max(n, 0) for n in extra.values())
        days = length.total_seconds() / 86400 if length is not None else 0.0
        cost = sum(max(n, 0) * price(service, op) / 1e6 for (service, op), n in extra.items())
        results[label] = {
            "requests": sum(counts.values()),
            "added_by_wait": added,
            "per_day": round(added / days, 1) if days >= 1 else None,
            "added_cost_usd_per_million_runs": round(cost * 1e6, 2),
            "by_operation": {f"{s}:{op}": n for (s, op), n in sorted(extra.items()) if n},
        }
    table = Table(title="What a wait costs (one run: step, wait, step)")
    for column in ("wait", "requests", "added by the wait", "per day of waiting", "$ / 1M runs"):
        table.add_column(column, justify="right" if column != "wait" else "left")
    for label, row in results.items():
        table.add_row(
            label,
            str(row["requests"]),
            str(row["added_by_wait"]),
            "-" if row["per_day"] is None else f"{row['per_day']:g}",
            f"{row['added_cost_usd_per_million_runs']:.2f}",
        )
    Console().print(table)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"results: {RESULTS}")


def price(service: str, operation: str) -> float:
    if service == "sqs":
        return PRICE_SQS
    writes = {"PutItem", "UpdateItem", "DeleteItem", "TransactWriteItems"}
    return PRICE_WRITE if operation in writes else PRICE_READ


if __name__ == "__main__":
    main()
