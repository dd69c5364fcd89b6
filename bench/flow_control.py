"""What a concurrency limit costs: AWS requests added per run, and slot hand-off latency.

Three scenarios on ``rung.testing.LocalEngine`` (4 worker threads), each a one-step
task, RUNS runs:

* **no queue**: the baseline.
* **queue, no contention** (limit above the number of runs): admission and release
  only (take a slot, give it back, find nobody parked).
* **queue, contended** (limit 2): most runs park and are handed a slot when one
  frees (park transaction, hand-off transaction, one send, one more claim).

Requests are counted at the botocore layer from the worker threads and the trigger
(not the test's polling; not empty receives), as in bench/waits.py. Hand-off latency
is measured in the contended scenario from the tasks' own timestamps: for each run
that waited, the time from the end of the run whose slot it took (the latest end
before its start) to its start. It is reported next to the emulator's floor (the
median time of one GetItem), since absolute times on this shared machine are noisy.

Run it: ``.venv/bin/python bench/flow_control.py``. Results: bench/results/flow_control.json.
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from pathlib import Path
from typing import Any

from _counting import Counting  # bench/ is on the path when run as a script
from rich.console import Console
from rich.table import Table

import rung
import rung.testing

RESULTS = Path(__file__).parent / "results" / "flow_control.json"
RUNS = 30
WORK_SECONDS = 0.05

app = rung.App("bench-flow")
_marks: list[tuple[float, float]] = []
_lock = threading.Lock()


def _work(n: int) -> int:
    start = time.monotonic()
    time.sleep(WORK_SECONDS)
    with _lock:
        _marks.append((start, time.monotonic()))
    return n


@app.task(id="plain")
def plain(ctx: rung.Context, n: int) -> int:
    return ctx.step("work", _work, n)


@app.task(id="roomy", queue=rung.Queue("roomy", concurrency_limit=1000))
def roomy(ctx: rung.Context, n: int) -> int:
    return ctx.step("work", _work, n)


@app.task(id="tight", queue=rung.Queue("tight", concurrency_limit=2))
def tight(ctx: rung.Context, n: int) -> int:
    return ctx.step("work", _work, n)


def scenario(task: str) -> dict[str, Any]:
    _marks.clear()
    with rung.testing.LocalEngine(app, workers=4) as engine:
        meter = Counting(engine)
        meter.trigger_phase = True
        handles = [engine.trigger(task, n) for n in range(RUNS)]
        meter.trigger_phase = False
        runs = [engine.wait(h.run_id, timeout=300) for h in handles]
        assert all(r.status == rung.RunStatus.COMPLETED for r in runs)
        floor = _floor(engine)
    marks = sorted(_marks)
    handoffs = []
    for start, _ in marks[2:]:
        ends = [end for _, end in marks if end <= start]
        if ends:
            handoffs.append(start - max(ends))
    return {
        "requests": sum(meter.counts.values()),
        "by_operation": {f"{s}:{op}": n for (s, op), n in sorted(meter.counts.items())},
        "handoff_seconds": handoffs,
        "floor_seconds": floor,
    }


def _floor(engine: rung.testing.LocalEngine) -> float:
    """The emulator's floor: median seconds of one GetItem."""
    times = []
    for _ in range(20):
        start = time.perf_counter()
        engine.store.get_run_or_none("run_floor_probe")
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


def main() -> None:
    results = {
        name: scenario(task)
        for name, task in (
            ("no queue", "plain"),
            ("queue, no contention", "roomy"),
            ("queue, limit 2 (contended)", "tight"),
        )
    }
    base = results["no queue"]["requests"] / RUNS
    table = Table(title=f"What a concurrency limit costs ({RUNS} one-step runs, 4 workers)")
    for column in ("scenario", "requests / run", "added / run", "hand-off p50", "p99", "floor"):
        table.add_column(column, justify="left" if column == "scenario" else "right")
    summary: dict[str, Any] = {}
    for name, row in results.items():
        per_run = row["requests"] / RUNS
        handoffs = row["handoff_seconds"] if name.endswith("(contended)") else []
        p50 = _pct(handoffs, 0.5) if handoffs else None
        p99 = _pct(handoffs, 0.99) if handoffs else None
        floor = row["floor_seconds"]
        table.add_row(
            name,
            f"{per_run:.1f}",
            f"{per_run - base:+.1f}",
            "-" if p50 is None else f"{p50 * 1000:.0f} ms ({p50 / floor:.0f}x floor)",
            "-" if p99 is None else f"{p99 * 1000:.0f} ms ({p99 / floor:.0f}x floor)",
            f"{floor * 1000:.1f} ms",
        )
        summary[name] = {
            "requests_per_run": round(per_run, 2),
            "added_per_run": round(per_run - base, 2),
            "handoff_p50_ms": None if p50 is None else round(p50 * 1000, 1),
            "handoff_p99_ms": None if p99 is None else round(p99 * 1000, 1),
            "floor_ms": round(floor * 1000, 2),
            "by_operation": row["by_operation"],
        }
    Console().print(table)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"results: {RESULTS}")


if __name__ == "__main__":
    main()
