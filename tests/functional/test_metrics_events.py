"""Metrics (EMF, read back through CloudWatch's GetMetricStatistics) and lifecycle
events (EventBridge, read back through a rule's queue) of runs on LocalEngine."""

from __future__ import annotations

import secrets
import threading
import time
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest

import rung
from rung.testing import LocalEngine, SimulatedCrash
from tests.functional.telemetry_apps import crash_once_app

FAST = rung.RetryPolicy(max_attempts=2, initial_interval=1)


def _fresh(name: str) -> str:
    """An app name of this test alone: metrics stay in the process's one emulator after
    an engine stops, and a count by app and task must not include another test's."""
    return f"{name}-{secrets.token_hex(3)}"


def test_a_run_counts_its_start_retry_steps_and_end_and_sends_one_completed_event() -> None:
    app = rung.App(_fresh("metrics"))
    calls: Counter[str] = Counter()

    def flaky() -> str:
        calls["flaky"] += 1
        if calls["flaky"] == 1:
            raise ConnectionError("upstream hiccup")
        return "ok"

    @app.task(id="order", retry=FAST)
    def order(ctx: rung.Context, payload: None) -> str:
        ctx.step("reserve", lambda: 1)
        ctx.step("charge", flaky)
        ctx.wait(timedelta(hours=2))
        return "done"

    with LocalEngine(app) as engine:
        handle = engine.trigger("order")
        run = engine.wait(handle.run_id)
        counts = {
            name: engine.metric(name, "order")
            for name in (
                "RunsStarted",
                "RunsCompleted",
                "RunsFailed",
                "RetriesScheduled",
                "WorkerLost",
            )
        }
        charge_failures = engine.metric("StepFailures", "order", step="charge")
        reserve_failures = engine.metric("StepFailures", "order", step="reserve")
        duration = engine.metric("RunDuration", "order")
        events = engine.events()

    assert run.status == rung.RunStatus.COMPLETED
    assert counts == {
        "RunsStarted": 1,
        "RunsCompleted": 1,
        "RunsFailed": 0,
        "RetriesScheduled": 1,
        "WorkerLost": 0,
    }
    assert (charge_failures, reserve_failures) == (1, 0)
    assert duration >= 7_200_000  # trigger to end, the 2-hour wait included
    assert [e["detail-type"] for e in events] == ["Run Completed"]
    [event] = events
    assert event["source"] == "rung"
    assert event["detail"]["run_id"] == run.run_id and event["detail"]["status"] == "COMPLETED"
    assert event["detail"]["trace_id"] == run.trace_id and event["detail"]["error"] is None
    assert event["detail"]["duration_ms"] >= 7_200_000


def test_a_failed_run_and_a_lost_worker_are_counted_and_the_failure_is_an_event() -> None:
    app = rung.App(_fresh("failing"))
    calls: Counter[str] = Counter()

    def dies_then_fails() -> str:
        calls["step"] += 1
        if calls["step"] == 1:
            raise SimulatedCrash()  # the process dies mid-step
        raise ValueError("card declined")

    @app.task(id="pay", retry=FAST)
    def pay(ctx: rung.Context, payload: None) -> str:
        return ctx.step("charge", dies_then_fails, retry=rung.RetryPolicy(max_attempts=1))

    with LocalEngine(app) as engine:
        handle = engine.trigger("pay")
        run = engine.wait(handle.run_id)
        counts = {n: engine.metric(n, "pay") for n in ("RunsFailed", "WorkerLost", "RunsCompleted")}
        events = engine.events()

    assert run.status == rung.RunStatus.FAILED
    assert counts == {"RunsFailed": 1, "WorkerLost": 1, "RunsCompleted": 0}
    [event] = events
    assert event["detail-type"] == "Run Failed"
    assert event["detail"]["error"]["type"] == "ValueError"
    assert "card declined" in event["detail"]["error"]["message"]


def test_telemetry_off_sends_nothing() -> None:
    app = rung.App(_fresh("quiet"))

    @app.task(id="t")
    def t(ctx: rung.Context, payload: None) -> int:
        return ctx.step("s", lambda: 1)

    with LocalEngine(app, telemetry=False) as engine:
        run = engine.wait(engine.trigger("t").run_id)
        assert (engine.trace(run.run_id), engine.logs(run.run_id), engine.events()) == ([], [], [])
        assert engine.metric("RunsCompleted", "t") == 0
    assert run.status == rung.RunStatus.COMPLETED


def test_cancel_and_redrive_by_the_client_are_events_too() -> None:
    app = rung.App(_fresh("operated"))
    broken = {"yes": True}

    @app.task(id="waits")
    def waits(ctx: rung.Context, payload: None) -> None:
        ctx.wait(timedelta(days=1))

    @app.task(id="breaks", retry=rung.RetryPolicy(max_attempts=1))
    def breaks(ctx: rung.Context, payload: None) -> str:
        def step() -> str:
            if broken["yes"]:
                raise ValueError("bug")
            return "fixed"

        return ctx.step("s", step)

    with LocalEngine(app) as engine:
        waiting = engine.trigger("waits")
        engine.client.cancel(waiting.run_id, reason="not needed")
        failed = engine.wait(engine.trigger("breaks").run_id)
        broken["yes"] = False
        engine.client.redrive(failed.run_id)
        fixed = engine.wait(failed.run_id)
        events = engine.events()

    engine_events = list(events)
    by_run: dict[str, list[str]] = {}
    for event in events:
        by_run.setdefault(event["detail"]["run_id"], []).append(event["detail-type"])
    assert by_run == {
        waiting.run_id: ["Run Canceled"],  # once, whether or not an attempt saw it
        failed.run_id: ["Run Failed", "Run Redriven", "Run Completed"],
    }
    events = [e for e in events if e["detail"]["run_id"] == failed.run_id]
    canceled = next(e for e in engine_events if e["detail"]["run_id"] == waiting.run_id)
    assert fixed.output == "fixed"
    assert canceled["detail"]["status"] == "CANCELED"
    [redriven] = [e for e in events if e["detail-type"] == "Run Redriven"]
    assert redriven["detail"]["error"]["type"] == "ValueError"  # the failure it resumes from


def test_a_flow_control_queue_reports_its_running_and_parked_runs() -> None:
    app = rung.App(_fresh("gauges"))
    queue = rung.Queue("one-at-a-time", concurrency_limit=1)
    gate = threading.Event()

    def hold(n: int) -> int:
        gate.wait(60)  # the first run holds the slot until the others are parked
        return n

    @app.task(id="t", queue=queue)
    def t(ctx: rung.Context, n: int) -> int:
        return ctx.step("s", hold, n)

    with LocalEngine(app, workers=3) as engine:
        handles = [engine.trigger("t", n) for n in range(3)]
        deadline = time.monotonic() + 60
        while engine.store.queue_state("one-at-a-time").waiting < 2:
            assert time.monotonic() < deadline, "the other two runs never parked"
            time.sleep(0.02)
        gate.set()
        runs = [engine.wait(h.run_id) for h in handles]
        running = engine.metric("RunningRuns", queue="one-at-a-time", statistic="Maximum")
        parked = engine.metric("ParkedRuns", queue="one-at-a-time", statistic="Maximum")

    assert all(r.status == rung.RunStatus.COMPLETED for r in runs)
    assert running == 1  # the limit: never more than one holding a slot
    assert parked == 2  # the other two waited for it


def test_a_map_of_many_steps_in_one_invocation_reports_every_step_duration() -> None:
    # EMF allows 100 values of a metric per document: 250 steps need three documents.
    app = rung.App(_fresh("wide-metrics"))

    @app.task(id="t")
    def t(ctx: rung.Context, payload: None) -> int:
        done = ctx.map(list(range(250)), lambda c, n: c.step("work", lambda: n))
        return len(done.results())

    with LocalEngine(app) as engine:
        run = engine.wait(engine.trigger("t").run_id, timeout=120)
        samples = engine.metric("StepDuration", "t", step="work", statistic="SampleCount")

    assert run.output == 250
    assert samples == 250


def test_a_takeover_after_a_crash_is_not_counted_as_start_delay() -> None:
    # The run's due time stays the dead attempt's; counting from it would report the
    # dead attempt and its lease as backlog and page someone for one crash.
    app = crash_once_app(_fresh("no-false-backlog"))

    with LocalEngine(app, lease_duration=timedelta(minutes=15)) as engine:
        run = engine.wait(engine.trigger("t").run_id)
        worst = engine.metric("StartDelay", "t", statistic="Maximum")
        samples = engine.metric("StartDelay", "t", statistic="SampleCount")
        lost = engine.metric("WorkerLost", "t")

    assert run.status == rung.RunStatus.COMPLETED and lost == 1
    # The first start's sample died with its process (metrics go out at the end of an
    # invocation); the takeover's is not a start delay.
    assert samples == 0
    assert worst < 60_000  # not the 15-minute lease of the dead attempt


def test_a_service_name_in_the_environment_adds_no_dimension(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Powertools adds a "service" dimension when POWERTOOLS_SERVICE_NAME is set; the
    # stack's alarms read metrics by table alone and the docs by app and task. (moto
    # matches a query's dimensions loosely, so the EMF document itself is checked.)
    monkeypatch.setenv("POWERTOOLS_SERVICE_NAME", "shop-worker")
    app = rung.App(_fresh("service-named"))
    documents: list[dict[str, Any]] = []

    @app.task(id="t")
    def t(ctx: rung.Context, payload: None) -> int:
        return 1

    with LocalEngine(app) as engine:
        record = engine.worker.sinks.metrics
        assert record is not None

        def keep(document: dict[str, Any]) -> None:
            documents.append(document)
            record(document)

        engine.worker.sinks.metrics = keep
        run = engine.wait(engine.trigger("t").run_id)

    assert run.status == rung.RunStatus.COMPLETED
    assert [d["_aws"]["CloudWatchMetrics"][0]["Dimensions"] for d in documents] == [
        [["app", "task"], ["table"]]
    ]
    assert "service" not in documents[0]
