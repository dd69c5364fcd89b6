"""Apps the telemetry tests share (traces, OTLP, logs, metrics): each builds a fresh
``rung.App`` whose counters start at zero."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

import rung
from rung.testing import SimulatedCrash

FAST = rung.RetryPolicy(max_attempts=3, initial_interval=1)


def retried_and_waiting_app(name: str) -> rung.App:
    """Task "order": step reserve; step charge, which fails once ("the API said 503",
    a ValueError) and is retried; a 2-hour wait; step ship. Returns "shipped"."""
    app = rung.App(name)
    calls: Counter[str] = Counter()

    def flaky() -> str:
        calls["flaky"] += 1
        if calls["flaky"] == 1:
            raise ValueError("the API said 503")
        return "ok"

    @app.task(id="order", retry=FAST)
    def order(ctx: rung.Context, payload: None) -> str:
        ctx.step("reserve", lambda: "r-1")
        ctx.step("charge", flaky)
        ctx.wait(timedelta(hours=2))
        return ctx.step("ship", lambda: "shipped")

    return app


def crash_once_app(name: str) -> rung.App:
    """Task "t": step charge, whose first execution kills its worker mid-step (the
    attempt is taken over); it returns "ch_1" the second time."""
    app = rung.App(name)
    calls: Counter[str] = Counter()

    def charge() -> str:
        calls["charge"] += 1
        if calls["charge"] == 1:
            raise SimulatedCrash()  # the process dies mid-step
        return "ch_1"

    @app.task(id="t", retry=FAST)
    def t(ctx: rung.Context, payload: None) -> str:
        return ctx.step("charge", charge)

    return app
