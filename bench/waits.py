"""What a wait costs: AWS requests per run for waits from 10 seconds to 30 days, and
what 1,000 runs waiting 2 hours hold in flight.

A run of two steps with ``ctx.wait(length)`` between them runs on
``rung.testing.LocalEngine`` (virtual time: the 30 days pass in well under a second of
wall time, with the same requests as on AWS). The same run without the wait is the
baseline; the difference is the wait's cost. How a wait is held depends on its length
(docs/waits.md): up to 30 s its message stays invisible (one visibility change), up to
15 minutes a fresh delayed message replaces it, beyond that a timer on the run item
(one write), which the reconciler's timer sweep turns into a delayed message 15 minutes
before it is due (one send, one write). So a wait's cost does not grow with its length.

Counted: every request the engine's worker thread makes, and the trigger's; not the
test's own polling of the run, not a ReceiveMessage that returned nothing (on AWS the
event source mapping long-polls an idle queue: a per-queue cost, not a per-run one), and
not the timer sweep's queries of the ``runs_by_due`` index (32 per pass, a pass a minute
on AWS, shared by every timer due in it: a per-deployment cost, printed apart).

The crowd: 1,000 runs suspend in a 2-hour wait (the event source played by hand), and
the queue's ApproximateNumberOfMessagesNotVisible and ...Delayed are read while they
wait, after the sweep, and after they all complete.

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
from rung._util.clock import VirtualClock

RESULTS = Path(__file__).parent / "results" / "waits.json"
LENGTHS = {
    "none (baseline)": None,
    "10 seconds": timedelta(seconds=10),
    "1 minute": timedelta(minutes=1),
    "1 hour": timedelta(hours=1),
    "1 day": timedelta(days=1),
    "30 days": timedelta(days=30),
}
CROWD = 1000
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


#: The timer sweep's per-pass requests (its index queries, run in the fan-out threads,
#: and the DescribeTable that says the index exists): not a wait's.
PER_PASS = {("dynamodb", "Query"), ("dynamodb", "DescribeTable")}


def measure(length: timedelta | None) -> tuple[Counter[tuple[str, str]], int]:
    """The run's requests, and the sweep passes' (left out of the first)."""
    with rung.testing.LocalEngine(app) as engine:
        meter = Counting(engine)
        meter.trigger_phase = True
        handle = engine.trigger(
            "wait", {"seconds": length.total_seconds() if length is not None else None}
        )
        meter.trigger_phase = False
        run = engine.wait(handle.run_id, timeout=120)
        assert run.status == rung.RunStatus.COMPLETED, run
        counts = meter.counts.copy()
    per_pass = 0
    for key in PER_PASS:
        # The checkpoint query of the run's resume is the run's: the baseline has none
        # (a first claim skips it), a resumed run one.
        keep = 1 if key == ("dynamodb", "Query") and length is not None else 0
        per_pass += max(counts[key] - keep, 0)
        counts[key] = min(counts[key], keep)
    return +counts, per_pass


def crowd(runs: int = CROWD, wait: timedelta = timedelta(hours=2)) -> dict[str, Any]:
    """``runs`` runs in ``ctx.wait(wait)``: the queue's counts while they wait, after
    the timer sweep, and after they complete (the event source played by hand)."""

    def deliver(engine: rung.testing.LocalEngine) -> None:
        while messages := engine.queue.receive(max_messages=10):
            for message in messages:
                if engine.worker.handle(message).value == "ack":
                    engine.queue.delete(message)

    def counts(engine: rung.testing.LocalEngine) -> dict[str, int]:
        attributes = engine.sqs.get_queue_attributes(
            QueueUrl=engine.queue_url, AttributeNames=["All"]
        )["Attributes"]
        return {
            "visible": int(attributes["ApproximateNumberOfMessages"]),
            "not_visible": int(attributes["ApproximateNumberOfMessagesNotVisible"]),
            "delayed": int(attributes["ApproximateNumberOfMessagesDelayed"]),
        }

    with rung.testing.LocalEngine(app, workers=0) as engine:
        clock = engine.clock
        assert isinstance(clock, VirtualClock)
        ids = [
            engine.trigger("wait", {"seconds": wait.total_seconds()}).run_id for _ in range(runs)
        ]
        deliver(engine)
        waiting = counts(engine)
        clock.advance(wait - timedelta(minutes=14))
        swept = engine.reconcile()
        at_sweep = counts(engine)
        clock.advance(timedelta(minutes=15))
        deliver(engine)
        done = sum(engine.get_run(i).status == rung.RunStatus.COMPLETED for i in ids)
        return {
            "runs": runs,
            "wait_seconds": wait.total_seconds(),
            "while_waiting": waiting,
            "after_the_sweep": at_sweep,
            "timers_sent_by_the_sweep": len(swept.timers_sent),
            "completed": done,
            "after": counts(engine),
        }


def main() -> None:
    results: dict[str, Any] = {}
    baseline: Counter[tuple[str, str]] = Counter()
    passes: dict[str, int] = {}
    for label, length in LENGTHS.items():
        counts, passes[label] = measure(length)
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
    console = Console()
    console.print(table)
    console.print(
        "- not in the rows: the timer sweep's requests, "
        f"{max(passes.values())} per pass (a query per shard of the runs_by_due index, and"
        " the DescribeTable each process makes once a minute; a pass a minute on AWS: about"
        " 1.4 million small queries a month, $0.09, shared by all timers whatever their"
        " number)"
    )
    many = crowd()
    console.print(
        f"- {many['runs']:,} runs in ctx.wait(2 h): while they wait, {many['while_waiting']}; "
        f"after the sweep sent {many['timers_sent_by_the_sweep']:,} messages, "
        f"{many['after_the_sweep']}; {many['completed']:,} completed, then {many['after']}"
    )
    RESULTS.parent.mkdir(exist_ok=True)
    out = {"waits": results, "sweep_queries_per_pass": max(passes.values()), "crowd": many}
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")
    print(f"results: {RESULTS}")


def price(service: str, operation: str) -> float:
    if service == "sqs":
        return PRICE_SQS
    writes = {"PutItem", "UpdateItem", "DeleteItem", "TransactWriteItems"}
    return PRICE_WRITE if operation in writes else PRICE_READ


if __name__ == "__main__":
    main()
