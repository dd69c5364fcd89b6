"""The reconciler re-drives runs whose way forward was lost, once, and leaves healthy runs alone.

Most tests use ``LocalEngine(app, workers=0)``: the test loses messages, moves the
virtual clock and delivers messages itself (``deliver``), so each crash point is hit
exactly. The last tests race reconcilers against each other and against workers.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from aws_lambda_powertools.utilities.typing import LambdaContext

import rung
from handler import reconciler as reconciler_module
from rung._engine.reconciler import ReconcileReport
from rung._engine.worker import Disposition
from rung.errors import InvalidConfig
from rung.models import EventType, RunStatus
from rung.testing import LocalEngine, SimulatedCrash
from tests.functional.event_source import deliver, virtual

GRACE = timedelta(minutes=5)  # LocalEngine's default reconcile_grace
LEASE = timedelta(minutes=1)  # LocalEngine's default lease_duration
SECOND = timedelta(seconds=1)
#: How far short of (or past) the grace a "within" (or "after") check stands: the virtual
#: clock lets wall time through, and a pass on a loaded machine takes seconds of it.
MARGIN = timedelta(seconds=30)
FAST = rung.RetryPolicy(max_attempts=3, initial_interval=1)


def crash_first_send(engine: LocalEngine) -> list[str]:
    """Make the next ``send`` die as the sending process would; returns the run ids it ate.

    The emulator cannot kill a client between its two calls (the DynamoDB write and the
    SQS send), so the send raises ``SimulatedCrash``, which nothing in rung catches.
    """
    real_send = engine.queue.send
    eaten: list[str] = []

    def send(run_id: str, delay: timedelta = timedelta(0), trace_header: str | None = None) -> None:
        if not eaten:
            eaten.append(run_id)
            raise SimulatedCrash()
        real_send(run_id, delay, trace_header)

    engine.queue.send = send  # type: ignore[method-assign]
    return eaten


def count_sends(engine: LocalEngine) -> list[str]:
    """Every run id sent from now on (the test's tally of messages)."""
    real_send = engine.queue.send
    sent: list[str] = []

    def send(run_id: str, delay: timedelta = timedelta(0), trace_header: str | None = None) -> None:
        sent.append(run_id)
        real_send(run_id, delay, trace_header)

    engine.queue.send = send  # type: ignore[method-assign]
    return sent


def lose_all_messages(engine: LocalEngine) -> None:
    engine.sqs.purge_queue(QueueUrl=engine.queue_url)


def doubling_app(name: str, calls: Counter[str]) -> rung.App:
    app = rung.App(name)

    def double(n: int) -> int:
        calls[f"double:{n}"] += 1
        return n * 2

    @app.task(id="t")
    def t(ctx: rung.Context, payload: int) -> int:
        return ctx.step("double", double, payload)

    return app


def test_a_trigger_whose_send_crashed_is_redriven_after_the_grace_period() -> None:
    calls: Counter[str] = Counter()
    with LocalEngine(doubling_app("rec-send", calls), workers=0) as engine:
        eaten = crash_first_send(engine)
        with pytest.raises(SimulatedCrash):
            engine.trigger("t", 21)  # no idempotency key: a repeat would make a new run
        [run_id] = eaten
        recorded = engine.get_run(run_id)
        nothing_queued = engine.queue.receive()
        at_once = engine.reconcile()
        virtual(engine).advance(GRACE - MARGIN)
        within_grace = engine.reconcile()
        virtual(engine).advance(2 * MARGIN)
        report = engine.reconcile()
        deliver(engine)
        run = engine.get_run(run_id)
    assert recorded.status == RunStatus.QUEUED and nothing_queued == []
    assert at_once.redriven == () and within_grace.redriven == ()
    assert report.run_ids == [run_id]
    assert report.redriven[0].reason == "undispatched"
    assert run.status == RunStatus.COMPLETED and run.output == 42 and run.attempt == 1
    assert calls == {"double:21": 1}


def test_a_crashed_worker_whose_message_was_lost_is_taken_over() -> None:
    app = rung.App("rec-lease")
    calls: Counter[str] = Counter()

    def reserve() -> str:
        calls["reserve"] += 1
        return "r_1"

    def charge() -> str:
        calls["charge"] += 1
        if calls["charge"] == 1:
            raise SimulatedCrash()  # the worker dies in the middle of this step
        return "ch_1"

    @app.task(id="t", retry=FAST)
    def t(ctx: rung.Context, payload: None) -> list[str]:
        return [ctx.step("reserve", reserve), ctx.step("charge", charge)]

    with LocalEngine(app, workers=0) as engine:
        run_id = engine.trigger("t").run_id
        [message] = engine.queue.receive()
        with pytest.raises(SimulatedCrash):
            engine.worker.handle(message)
        engine.queue.delete(message)  # ... and its message is gone (deleted, or in the DLQ)
        virtual(engine).advance(LEASE + GRACE - MARGIN)
        nothing_queued = engine.queue.receive()
        stuck = engine.get_run(run_id)
        within_grace = engine.reconcile()
        virtual(engine).advance(2 * MARGIN)
        report = engine.reconcile()
        deliver(engine)
        run = engine.get_run(run_id)
        history = [e.type for e in engine.history(run_id)]
    assert nothing_queued == [] and stuck.status == RunStatus.RUNNING
    assert within_grace.redriven == ()
    assert report.run_ids == [run_id] and report.redriven[0].reason == "lease_expired"
    assert run.status == RunStatus.COMPLETED and run.output == ["r_1", "ch_1"]
    assert run.attempt == 2 and history.count(EventType.WORKER_LOST) == 1
    assert calls == {"reserve": 1, "charge": 2}  # completed before the crash: once


def test_a_delayed_run_whose_timer_message_was_lost_runs_after_its_due_time() -> None:
    calls: Counter[str] = Counter()
    with LocalEngine(doubling_app("rec-delay", calls), workers=0) as engine:
        run_id = engine.trigger("t", 5, delay=timedelta(minutes=30)).run_id
        lose_all_messages(engine)
        virtual(engine).advance(timedelta(minutes=30) + GRACE - MARGIN)
        waiting = engine.get_run(run_id)
        before = engine.reconcile()
        virtual(engine).advance(2 * MARGIN)
        report = engine.reconcile()
        deliver(engine)
        run = engine.get_run(run_id)
    assert waiting.status == RunStatus.DELAYED and before.redriven == ()
    assert report.run_ids == [run_id] and report.redriven[0].reason == "timer_lost"
    assert run.status == RunStatus.COMPLETED and run.output == 10
    assert calls == {"double:5": 1}


def waiting_app(calls: Counter[str]) -> rung.App:
    app = rung.App("rec-wait")

    @app.task(id="sleep")
    def sleep(ctx: rung.Context, payload: None) -> str:
        ctx.wait(timedelta(hours=3))
        calls["after-wait"] += 1
        return "woke"

    @app.task(id="approve")
    def approve(ctx: rung.Context, payload: None) -> Any:
        token = ctx.create_token("ok", timeout=timedelta(days=2))
        return ctx.wait_for_token(token)

    return app


def test_a_waiting_run_whose_timer_message_was_lost_resumes_after_its_wake_time() -> None:
    calls: Counter[str] = Counter()
    with LocalEngine(waiting_app(calls), workers=0) as engine:
        run_id = engine.trigger("sleep").run_id
        deliver(engine)
        suspended = engine.get_run(run_id)
        lose_all_messages(engine)
        virtual(engine).advance(timedelta(hours=3) + GRACE - MARGIN)
        before = engine.reconcile()
        virtual(engine).advance(2 * MARGIN)
        report = engine.reconcile()
        deliver(engine)
        run = engine.get_run(run_id)
    assert suspended.status == RunStatus.WAITING and before.redriven == ()
    assert report.run_ids == [run_id] and report.redriven[0].reason == "wake_lost"
    assert run.status == RunStatus.COMPLETED and run.output == "woke"
    assert calls == {"after-wait": 1}


def test_a_token_answerer_that_died_before_sending_still_wakes_the_run() -> None:
    calls: Counter[str] = Counter()
    with LocalEngine(waiting_app(calls), workers=0) as engine:
        run_id = engine.trigger("approve").run_id
        deliver(engine)
        [token] = engine.client.list_tokens(run_id)
        eaten = crash_first_send(engine)
        with pytest.raises(SimulatedCrash):  # recorded the answer, died before the send
            engine.client.complete_token(token.id, {"ok": True})
        assert eaten == [run_id]
        lose_all_messages(engine)  # the run's own timer (the token's timeout, 2 days) too
        still = engine.get_run(run_id)
        virtual(engine).advance(GRACE + SECOND)
        report = engine.reconcile()
        deliver(engine)
        run = engine.get_run(run_id)
        with pytest.raises(rung.TokenAlreadyResolved):  # no second answer
            engine.client.complete_token(token.id, {"ok": False})
    assert still.status == RunStatus.WAITING
    assert report.run_ids == [run_id] and report.redriven[0].reason == "wake_lost"
    assert run.status == RunStatus.COMPLETED and run.output == {"ok": True}


def test_healthy_runs_are_left_alone() -> None:
    app = rung.App("rec-healthy")
    inside = threading.Event()
    release = threading.Event()

    @app.task(id="ok")
    def ok(ctx: rung.Context, payload: None) -> str:
        return ctx.step("s", lambda: "done")

    @app.task(id="bad", retry=rung.RetryPolicy(max_attempts=1))
    def bad(ctx: rung.Context, payload: None) -> None:
        raise ValueError("no")

    def hold() -> None:
        inside.set()
        release.wait(timeout=10)

    @app.task(id="busy")
    def busy(ctx: rung.Context, payload: None) -> None:
        ctx.step("hold", hold)

    with LocalEngine(app, workers=0, lease_duration=timedelta(minutes=20)) as engine:
        sent = count_sends(engine)
        completed = engine.trigger("ok").run_id
        failed = engine.trigger("bad").run_id
        deliver(engine)
        running = engine.trigger("busy").run_id
        [message] = engine.queue.receive()
        worker = threading.Thread(target=engine.worker.handle, args=(message,))
        worker.start()
        assert inside.wait(timeout=10)
        delayed = engine.trigger("ok", delay=timedelta(hours=1)).run_id
        virtual(engine).advance(timedelta(minutes=10))  # past the grace, inside the lease
        queued = engine.trigger("ok").run_id  # its message waits in the queue
        sends_before = len(sent)
        report = engine.reconcile()
        sends_after = len(sent)
        release.set()
        worker.join(timeout=10)
        statuses = {r: engine.get_run(r).status for r in (completed, failed, delayed, queued)}
        statuses[running] = engine.get_run(running).status
    assert report.redriven == () and report.examined == 0
    assert sends_after == sends_before
    assert statuses == {
        completed: RunStatus.COMPLETED,
        failed: RunStatus.FAILED,
        running: RunStatus.COMPLETED,  # finished by its worker once released
        delayed: RunStatus.DELAYED,
        queued: RunStatus.QUEUED,
    }


#: The backoff test's passes: one every 4 minutes (under a grace period, so a re-send
#: at every pass would show) for 3.5 hours; each pass reads about 320 keys on the
#: emulator, so fewer passes keep the test's time down.
EVERY, PASSES = timedelta(minutes=4), 52


def test_a_run_that_stays_stranded_is_resent_at_most_once_per_grace_period() -> None:
    calls: Counter[str] = Counter()
    with LocalEngine(doubling_app("rec-backoff", calls), workers=0) as engine:
        run_id = engine.trigger("t", 1).run_id
        lose_all_messages(engine)
        sent = count_sends(engine)
        times: list[float] = []
        for _pass in range(PASSES):  # a pass every 4 minutes for 3.5 hours ...
            report = engine.reconcile()
            if report.redriven:
                # the pass's own time: the clock also lets wall time through, which varies
                times.append(report.started_at.timestamp())
                lose_all_messages(engine)  # ... and every message is lost: workers are down
            virtual(engine).advance(EVERY)
        run = engine.get_run(run_id)
    gaps = [later - earlier for earlier, later in zip(times, times[1:], strict=False)]
    assert sent == [run_id] * len(times)
    assert all(gap >= GRACE.total_seconds() for gap in gaps)
    # non-decreasing, give or take the wall time the passes between took
    tolerance = MARGIN.total_seconds()
    assert all(later > earlier - tolerance for earlier, later in zip(gaps, gaps[1:], strict=False))
    assert max(gaps) <= 3600 + EVERY.total_seconds()  # backed off, but at least hourly
    assert 5 <= len(times) <= 9  # not 26 (every other pass: a grace) nor 51 (every pass)
    assert run.status == RunStatus.QUEUED and calls == {}


def test_two_reconcilers_racing_redrive_each_run_once() -> None:
    calls: Counter[str] = Counter()
    with LocalEngine(doubling_app("rec-race", calls), workers=0) as engine:
        run_ids = [engine.trigger("t", n).run_id for n in range(10)]
        lose_all_messages(engine)
        virtual(engine).advance(GRACE + SECOND)
        sent = count_sends(engine)
        barrier = threading.Barrier(2)
        reports: list[ReconcileReport] = []

        def reconcile() -> None:
            barrier.wait(timeout=10)
            reports.append(engine.reconcile())

        threads = [threading.Thread(target=reconcile) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=20)
        dispositions = deliver(engine)
        runs = [engine.get_run(r) for r in run_ids]
    redriven = [r for report in reports for r in report.run_ids]
    assert len(reports) == 2
    assert sorted(redriven) == sorted(run_ids)  # each once, by one or the other
    assert sorted(sent) == sorted(run_ids)
    assert dispositions == [Disposition.ACK] * 10
    assert [r.output for r in runs] == [2 * n for n in range(10)]
    assert calls == {f"double:{n}": 1 for n in range(10)}


@pytest.mark.timeout(300)
def test_reconciling_while_workers_process_runs_duplicates_no_step() -> None:
    app = rung.App("rec-busy")
    calls: Counter[str] = Counter()
    lock = threading.Lock()
    gate = threading.Event()

    def step(run: int, name: str) -> int:
        with lock:
            calls[f"{run}:{name}"] += 1
        gate.wait(timeout=10)  # the first runs hold their workers until the race is on
        return run

    @app.task(id="t")
    def t(ctx: rung.Context, payload: int) -> int:
        return ctx.step("a", step, payload, "a") + ctx.step("b", step, payload, "b")

    # A grace of 1 ms makes every run waiting in the queue look stranded: the
    # reconciler sends duplicates while workers claim, run and finish the same runs.
    with LocalEngine(app, workers=4, reconcile_grace=timedelta(milliseconds=1)) as engine:
        handles = [engine.trigger("t", n) for n in range(30)]
        stop = threading.Event()
        reports: list[ReconcileReport] = []

        def keep_reconciling() -> None:
            while not stop.is_set():
                reports.append(engine.reconcile())
                if reports[-1].redriven:
                    gate.set()  # duplicates are queued: let the workers go
                stop.wait(0.01)  # do not starve the workers of the emulator

        reconciler = threading.Thread(target=keep_reconciling)
        reconciler.start()
        try:
            runs = [engine.wait(h.run_id, timeout=90) for h in handles]
        finally:
            gate.set()
            stop.set()
            reconciler.join(timeout=20)
        faults = list(engine.faults)
    assert [r.status for r in runs] == [RunStatus.COMPLETED] * 30
    assert [r.output for r in runs] == [2 * n for n in range(30)]
    assert calls == {f"{n}:{s}": 1 for n in range(30) for s in "ab"}
    assert sum(len(r.redriven) for r in reports) >= 20  # the race did happen
    assert faults == []


def test_a_grace_that_is_not_positive_is_refused() -> None:
    app = rung.App("rec-config")

    with pytest.raises(InvalidConfig, match="reconcile_grace must be positive"):
        LocalEngine(app, reconcile_grace=timedelta(0))


# -- the Lambda entry point -----------------------------------------------------------


class FakeLambdaContext(LambdaContext):
    def __init__(self) -> None:
        self._function_name = "rung-reconciler"
        self._function_version = "$LATEST"
        self._invoked_function_arn = (
            "arn:aws:lambda:us-east-1:123456789012:function:rung-reconciler"
        )
        self._memory_limit_in_mb = 256
        self._aws_request_id = secrets.token_hex(16)
        self._log_group_name = "/aws/lambda/rung-reconciler"
        self._log_stream_name = "2024/01/01/[$LATEST]0123456789abcdef"

    def get_remaining_time_in_millis(self) -> int:  # type: ignore[override]
        return 300_000


SCHEDULED_EVENT: dict[str, Any] = {
    "version": "0",
    "id": "53dc4d37-cffa-4f76-80c9-8b7d4a4d2eaa",
    "detail-type": "Scheduled Event",
    "source": "aws.events",
    "account": "123456789012",
    "time": "2024-01-01T00:00:00Z",
    "region": "us-east-1",
    "resources": ["arn:aws:events:us-east-1:123456789012:rule/rung-reconcile"],
    "detail": {},
}


@pytest.fixture
def fresh_handler(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in (
        "RUNG_TABLE_NAME",
        "RUNG_QUEUE_URL",
        "RUNG_RECONCILE_GRACE_SECONDS",
        "RUNG_RETENTION_DAYS",
    ):
        monkeypatch.delenv(name, raising=False)
    reconciler_module.reconciler.cache_clear()
    yield
    reconciler_module.reconciler.cache_clear()


@pytest.mark.usefixtures("fresh_handler")
@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"RUNG_QUEUE_URL": "http://q"}, "RUNG_TABLE_NAME"),
        ({"RUNG_TABLE_NAME": "t"}, "RUNG_QUEUE_URL"),
        (
            {
                "RUNG_TABLE_NAME": "t",
                "RUNG_QUEUE_URL": "http://q",
                "RUNG_RECONCILE_GRACE_SECONDS": "soon",
            },
            "RUNG_RECONCILE_GRACE_SECONDS is 'soon'",
        ),
        (
            {"RUNG_TABLE_NAME": "t", "RUNG_QUEUE_URL": "http://q", "RUNG_RETENTION_DAYS": "5000"},
            "RUNG_RETENTION_DAYS is 5000: set it to a whole number of days from 1 to 3650",
        ),
        (
            {"RUNG_TABLE_NAME": "t", "RUNG_QUEUE_URL": "http://q", "RUNG_RETENTION_DAYS": "30d"},
            "RUNG_RETENTION_DAYS is '30d': set it to a positive integer",
        ),
    ],
)
def test_the_handler_names_a_missing_or_bad_environment_variable(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], named: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    with pytest.raises(InvalidConfig, match=named):
        reconciler_module.lambda_handler(SCHEDULED_EVENT, FakeLambdaContext())


@pytest.mark.usefixtures("fresh_handler")
def test_the_handler_redrives_a_stranded_run_and_returns_its_report(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: Counter[str] = Counter()
    # Wall-clock time: the handler reads the system clock, as on Lambda.
    with LocalEngine(doubling_app("rec-lambda", calls), virtual_time=False) as engine:
        eaten = crash_first_send(engine)
        with pytest.raises(SimulatedCrash):
            engine.trigger("t", 4)
        monkeypatch.setenv("RUNG_TABLE_NAME", engine.table_name)
        monkeypatch.setenv("RUNG_QUEUE_URL", engine.queue_url)
        monkeypatch.setenv("AWS_ENDPOINT_URL", engine.endpoint_url)
        monkeypatch.setenv("RUNG_RECONCILE_GRACE_SECONDS", "1")
        time.sleep(1.05)
        result = reconciler_module.lambda_handler(SCHEDULED_EVENT, FakeLambdaContext())
        run = engine.wait(eaten[0], timeout=10)
    assert [r["run_id"] for r in result["redriven"]] == eaten
    assert result["redriven"][0]["reason"] == "undispatched"
    assert result["grace_seconds"] == 1 and result["truncated"] is False
    assert run.status == RunStatus.COMPLETED and run.output == 8
    assert calls == {"double:4": 1}
