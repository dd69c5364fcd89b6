"""The task bench/harness.py runs: ``n`` steps that do nothing."""

from __future__ import annotations

import rung

app = rung.App("harness")


def work(i: int) -> int:
    return i


@app.task(id="steps")
def steps(ctx: rung.Context, n: int) -> int:
    total = 0
    for i in range(n):
        total += ctx.step("work", work, i)
    return total
