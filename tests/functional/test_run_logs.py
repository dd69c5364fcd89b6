"""Log lines by run id, read back through the emulator's CloudWatch Logs API
(``LocalEngine.logs``: FilterLogEvents on the engine's worker log group)."""

from __future__ import annotations

import logging
from collections import Counter
from datetime import timedelta
from typing import Any

import rung
from rung.testing import LocalEngine
from tests.functional.telemetry_apps import crash_once_app

FAST = rung.RetryPolicy(max_attempts=3, initial_interval=1)
shop = logging.getLogger("shop.orders")


def _fields(engine: LocalEngine, run_id: str) -> list[dict[str, Any]]:
    return [event.fields for event in engine.logs(run_id)]


def test_a_run_leaves_one_line_per_lifecycle_event_each_with_its_keys() -> None:
    app = rung.App("lifecycle")
    calls: Counter[str] = Counter()

    def flaky() -> str:
        calls["flaky"] += 1
        if calls["flaky"] == 1:
            raise ConnectionError("upstream hiccup")
        return "ok"

    @app.task(id="order", retry=FAST)
    def order(ctx: rung.Context, payload: None) -> str:
        ctx.step("charge", flaky)
        ctx.wait(timedelta(hours=2))
        return "done"

    with LocalEngine(app) as engine:
        handle = engine.trigger("order")
        run = engine.wait(handle.run_id)
        lines = _fields(engine, handle.run_id)

    events = [(line["rung_event"], line["attempt"]) for line in lines if "rung_event" in line]
    assert events == [
        ("AttemptStarted", 1),
        ("RetryScheduled", 1),
        ("AttemptStarted", 2),
        ("Suspended", 2),
        ("AttemptResumed", 2),
        ("Completed", 2),
    ]
    assert all(
        (line["run_id"], line["task"], line["trace_id"]) == (run.run_id, "order", run.trace_id)
        for line in lines
    )
    [retry] = [line for line in lines if line.get("rung_event") == "RetryScheduled"]
    assert retry["level"] == "WARNING" and retry["delay_seconds"] == 1.0
    assert retry["error_type"] == "ConnectionError"
    assert (
        "step /charge#1 failed (ConnectionError: upstream hiccup); retry in 1s" in retry["message"]
    )
    [suspended] = [line for line in lines if line.get("rung_event") == "Suspended"]
    assert suspended["waiting_for"].startswith("/wait#1 until ")
    assert lines[-1]["level"] == "INFO" and lines[-1]["duration_ms"] >= 7_200_000


def test_the_tasks_own_lines_carry_the_run_and_the_step_they_were_written_in() -> None:
    app = rung.App("own-lines")

    def charge(amount: int) -> str:
        shop.warning("charging %d", amount)
        return "ch_1"

    @app.task(id="order")
    def order(ctx: rung.Context, payload: None) -> list[str]:
        shop.warning("order received")
        first = ctx.step("charge", charge, 42)
        branches = ctx.map([1, 2], lambda c, n: c.step("pack", charge, n))
        return [first, *branches.results()]

    with LocalEngine(app) as engine:
        handle = engine.trigger("order")
        run = engine.wait(handle.run_id)
        lines = [line for line in _fields(engine, handle.run_id) if line["name"] == "shop.orders"]

    assert run.status == rung.RunStatus.COMPLETED
    by_message = {line["message"]: line for line in lines}
    assert "step_id" not in by_message["order received"]
    assert by_message["charging 42"]["step_id"] == "/charge#1"
    assert {by_message[f"charging {n}"]["step_id"] for n in (1, 2)} == {
        "/map#1[0]/pack#1",
        "/map#1[1]/pack#1",
    }
    assert all(line["run_id"] == run.run_id and line["attempt"] == 1 for line in lines)


def test_ctx_logger_writes_a_line_once_however_often_the_body_replays() -> None:
    app = rung.App("replay-logs")

    @app.task(id="t", retry=FAST)
    def t(ctx: rung.Context, payload: None) -> str:
        ctx.logger.info("starting")
        shop.warning("plain logging: starting")
        ctx.step("a", lambda: 1)
        ctx.logger.info("between a and the wait")
        ctx.wait(timedelta(minutes=30))
        ctx.logger.info("after the wait")
        ctx.wait(timedelta(minutes=30))
        ctx.logger.warning("done waiting")
        return "ok"

    with LocalEngine(app) as engine:
        handle = engine.trigger("t")
        engine.wait(handle.run_id)
        lines = _fields(engine, handle.run_id)

    mine = Counter(line["message"] for line in lines if line["name"] == "rung.tasks.t")
    assert mine == {
        "starting": 1,
        "between a and the wait": 1,
        "after the wait": 1,
        "done waiting": 1,
    }
    # The body ran three times (two resumes); plain logging wrote its line each time.
    assert sum(line["message"] == "plain logging: starting" for line in lines) == 3
    ctx_lines = [line for line in lines if line["name"] == "rung.tasks.t"]
    assert all(line["run_id"] == handle.run_id and line["task"] == "t" for line in ctx_lines)


def test_a_crashed_invocation_is_reported_as_worker_lost_by_the_one_taking_over() -> None:
    app = crash_once_app("lost-lines")

    with LocalEngine(app) as engine:
        handle = engine.trigger("t")
        engine.wait(handle.run_id)
        lines = _fields(engine, handle.run_id)

    events = [(line["rung_event"], line["attempt"]) for line in lines if "rung_event" in line]
    assert events == [
        ("AttemptStarted", 1),
        ("WorkerLost", 1),
        ("AttemptStarted", 2),
        ("Completed", 2),
    ]
    [lost] = [line for line in lines if line.get("rung_event") == "WorkerLost"]
    assert lost["level"] == "WARNING" and lost["error_type"] == "WorkerLost"


def test_lines_of_another_engines_runs_stay_out() -> None:
    app = rung.App("apart")

    @app.task(id="t")
    def t(ctx: rung.Context, payload: None) -> int:
        shop.warning("hello from %s", ctx.run_id)
        return 1

    with LocalEngine(app) as first, LocalEngine(app, virtual_time=False) as second:
        one = first.trigger("t")
        two = second.trigger("t")
        first.wait(one.run_id)
        second.wait(two.run_id)
        assert _fields(first, two.run_id) == []
        assert [
            f["message"] for f in _fields(second, two.run_id) if f["name"] == "shop.orders"
        ] == [f"hello from {two.run_id}"]
