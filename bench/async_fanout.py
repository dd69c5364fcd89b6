"""An async map against the sync, thread-based one: wall time, threads and requests.

A task maps 100 I/O-bound steps with ``max_concurrency=20`` (and, to show how each
scales, with all 100 at once); each step waits 50 ms of
simulated I/O (``await asyncio.sleep`` in the async task, ``time.sleep`` in the sync
one, as a blocking HTTP call would). Both run on ``rung.testing.LocalEngine`` (one
worker, the embedded emulator, real time), each measured from inside the task body
around its first (and only executing) ``ctx.map``.

The floor: 100 items at 20 at a time is 5 rounds of 50 ms, 250 ms of I/O; what each
takes beyond it is rung's own work (100 step checkpoints and 100 branch records on
the emulator). The same map with 0 ms of I/O shows that cost alone, and its ratio to
the emulator's cost per write (a bare ``PutItem``) puts it against the emulator's
own floor. Threads: the most threads alive during the map, beyond those before it.

Run it: ``.venv/bin/python bench/async_fanout.py``. Results go to
bench/results/async_fanout.json.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from _counting import Counting  # bench/ is on the path when run as a script
from rich.console import Console
from rich.table import Table

import rung
import rung.testing

RESULTS = Path(__file__).parent / "results" / "async_fanout.json"
ITEMS = 100
CONCURRENCY = 20
IO_SECONDS = 0.05
ROUNDS = 3

app = rung.App("bench-async-fanout")
measured: dict[str, float] = {}


class ThreadPeak:
    """The most threads alive while it runs (sampled every millisecond)."""

    def __init__(self) -> None:
        self.peak = threading.active_count()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, threading.active_count())

    def __enter__(self) -> ThreadPeak:
        self.before = threading.active_count()
        self._thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self._stop.set()
        self._thread.join()


async def io_async(i: int, seconds: float) -> int:
    await asyncio.sleep(seconds)
    return i


def io_sync(i: int, seconds: float) -> int:
    time.sleep(seconds)
    return i


async def branch_async(ctx: rung.AsyncContext, item: tuple[int, float]) -> int:
    return await ctx.step("io", io_async, *item)


def branch_sync(ctx: rung.Context, item: tuple[int, float]) -> int:
    return ctx.step("io", io_sync, *item)


@app.task(id="async-map")
async def async_map(ctx: rung.AsyncContext, shape: list[float]) -> dict[str, float]:
    seconds, concurrency = shape[0], int(shape[1])
    items = [(i, seconds) for i in range(ITEMS)]
    with ThreadPeak() as threads:
        began = time.perf_counter()
        batch = await ctx.map(items, branch_async, max_concurrency=concurrency)
        took = time.perf_counter() - began
    assert batch.results() == list(range(ITEMS))
    return {"seconds": took, "threads": threads.peak - threads.before}


@app.task(id="sync-map")
def sync_map(ctx: rung.Context, shape: list[float]) -> dict[str, float]:
    seconds, concurrency = shape[0], int(shape[1])
    items = [(i, seconds) for i in range(ITEMS)]
    with ThreadPeak() as threads:
        began = time.perf_counter()
        batch = ctx.map(items, branch_sync, max_concurrency=concurrency)
        took = time.perf_counter() - began
    assert batch.results() == list(range(ITEMS))
    return {"seconds": took, "threads": threads.peak - threads.before}


def measure(
    task: str, seconds: float, concurrency: int
) -> tuple[dict[str, float], Counter[tuple[str, str]]]:
    with rung.testing.LocalEngine(app, workers=1, virtual_time=False) as engine:
        counting = Counting(engine)
        run = engine.wait(engine.trigger(task, [seconds, concurrency]).run_id, timeout=120)
        assert run.status == rung.RunStatus.COMPLETED, run.error
        return dict(run.output), counting.counts


def put_item_floor() -> float:
    """The emulator's own cost of one write, in seconds (median of 200 PutItems)."""
    with rung.testing.LocalEngine(app) as engine:
        table = engine.store.table
        times = []
        for i in range(200):
            began = time.perf_counter()
            engine.dynamodb.put_item(
                TableName=table, Item={"pk": {"S": f"floor#{i}"}, "sk": {"S": "x"}}
            )
            times.append(time.perf_counter() - began)
    return statistics.median(times)


def main() -> int:
    floor = put_item_floor()
    rows: dict[str, dict[str, Any]] = {}
    for label, task, seconds, concurrency in (
        ("async, 50 ms I/O", "async-map", IO_SECONDS, CONCURRENCY),
        ("sync (threads), 50 ms I/O", "sync-map", IO_SECONDS, CONCURRENCY),
        ("async, no I/O", "async-map", 0.0, CONCURRENCY),
        ("sync (threads), no I/O", "sync-map", 0.0, CONCURRENCY),
        ("async, 50 ms I/O, all 100 at once", "async-map", IO_SECONDS, ITEMS),
        ("sync (threads), 50 ms I/O, all 100 at once", "sync-map", IO_SECONDS, ITEMS),
    ):
        runs = [measure(task, seconds, concurrency) for _ in range(ROUNDS)]
        wall = statistics.median(r[0]["seconds"] for r in runs)
        threads = max(r[0]["threads"] for r in runs)
        requests = sum(runs[0][1].values())
        io_floor = (ITEMS / concurrency) * seconds
        rows[label] = {
            "max_concurrency": concurrency,
            "map_seconds_median": round(wall, 3),
            "peak_extra_threads": int(threads),
            "requests": requests,
            "rung_seconds_beyond_io": round(wall - io_floor, 3),
            "emulator_writes_worth": round((wall - io_floor) / floor, 1),
        }
    table = Table(
        title=f"ctx.map of {ITEMS} I/O-bound steps, max_concurrency={CONCURRENCY} unless "
        f"said (median of {ROUNDS}; I/O floor {ITEMS / CONCURRENCY * IO_SECONDS:.2f} s, "
        f"{IO_SECONDS:.2f} s all at once)"
    )
    for column in ("map", "wall s", "beyond I/O s", "as emulator writes", "threads", "requests"):
        table.add_column(column, justify="left" if column == "map" else "right")
    for label, row in rows.items():
        table.add_row(
            label,
            f"{row['map_seconds_median']:.3f}",
            f"{row['rung_seconds_beyond_io']:.3f}",
            f"{row['emulator_writes_worth']:.0f}",
            str(row["peak_extra_threads"]),
            str(row["requests"]),
        )
    console = Console(width=140)
    console.print(table)
    console.print(
        f"emulator floor: one PutItem {floor * 1000:.2f} ms (median); 'as emulator writes' "
        "is the time beyond the I/O divided by it"
    )
    RESULTS.write_text(
        json.dumps(
            {
                "items": ITEMS,
                "max_concurrency": CONCURRENCY,
                "io_seconds_per_step": IO_SECONDS,
                "emulator_put_item_seconds": round(floor, 5),
                "maps": rows,
            },
            indent=2,
        )
        + "\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
