"""The app that bench/latency.py runs on ``rung dev``'s stack: one task of one step.

The step appends ``<run id> <time.time()>`` to the file named by RUNG_BENCH_STARTS the
moment it begins, so the benchmark knows when each run's first step started, across
worker processes (one clock: the same machine).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import rung

app = rung.App("latbench")


def mark() -> float:
    began = time.time()
    run_id = rung.current_step().run_id
    with Path(os.environ["RUNG_BENCH_STARTS"]).open("a") as out:
        out.write(f"{run_id} {began:.6f}\n")  # one small append: atomic across processes
    return began


@app.task(id="one-step")
def one_step(ctx: rung.Context, payload: int) -> float:
    return ctx.step("mark", mark)
