"""``trigger(ttl=)``: a run whose body has not started within its TTL ends EXPIRED, with
its event, metric and history; a run that started never expires (docs/lifecycle.md,
"Time to live"). On LocalEngine with its virtual clock, so minutes pass at once."""

from __future__ import annotations

import json
import threading
import time
from datetime import timedelta

import pydantic
import pytest
from click.testing import CliRunner

import rung
from rung._aws.dynamodb import NotClaimed
from rung._engine.worker import Disposition
from rung._util.clock import VirtualClock
from rung.cli.runs import show_run
from rung.errors import InvalidConfig
from rung.models import EventType, RunStatus
from rung.testing import LocalEngine


class Job(pydantic.BaseModel):
    n: int = 0


def _app(ran: list[int]) -> rung.App:
    app = rung.App("ttl")

    @app.task(id="limited", queue=rung.Queue("one", concurrency_limit=1))
    def limited(ctx: rung.Context, job: Job) -> int:
        ran.append(job.n)
        return job.n

    @app.task(id="free")
    def free(ctx: rung.Context, job: Job) -> int:
        ran.append(job.n)
        ctx.wait(timedelta(hours=2))  # far longer than its ttl, once started
        return ctx.step("after", lambda: job.n + 100)

    return app


def test_a_run_parked_past_its_ttl_expires_without_running_and_leaves_the_queue() -> None:
    ran: list[int] = []
    with LocalEngine(_app(ran)) as engine:
        engine.store.set_queue("one", paused=True)  # nothing on the queue starts
        handle = engine.trigger("limited", {"n": 1}, ttl=timedelta(minutes=5))
        run = engine.wait(handle.run_id, timeout=60)
        assert run.status == RunStatus.EXPIRED
        assert run.error is not None and run.error.type == "TtlExpired"
        assert "was not started by" in run.error.message
        assert "Trigger it again" in run.error.message
        assert run.start_by is not None and run.finished_at is not None
        assert run.finished_at >= run.start_by
        # The TTL is applied on time, not at the next hand-off: 5 minutes after trigger.
        assert run.finished_at - run.created_at < timedelta(minutes=6)
        assert engine.store.queue_state("one").waiting == 0  # its place was given up
        kinds = [e.type for e in engine.history(handle.run_id)]
        assert kinds[-1] == EventType.RUN_EXPIRED
        assert EventType.STEP_STARTED not in kinds
        events = [e for e in engine.events() if e["detail-type"] == "Run Expired"]
        assert [e["detail"]["run_id"] for e in events] == [handle.run_id]
        assert events[0]["detail"]["status"] == "EXPIRED"
        assert events[0]["detail"]["error"]["type"] == "TtlExpired"
        assert engine.metric("RunsExpired", "limited") == 1
        # The queue still works: resumed, a run without a ttl starts and completes.
        engine.store.set_queue("one", paused=False)
        later = engine.trigger("limited", {"n": 2})
        assert engine.wait(later.run_id, timeout=60).output == 2
    assert ran == [2]


def test_a_run_that_started_does_not_expire_however_long_it_waits() -> None:
    ran: list[int] = []
    with LocalEngine(_app(ran)) as engine:
        handle = engine.trigger("free", {"n": 7}, ttl=timedelta(minutes=1))
        run = engine.wait(handle.run_id, timeout=60)
        assert run.status == RunStatus.COMPLETED
        assert run.output == 107
        assert run.began_at is not None and run.start_by is not None
        assert run.began_at <= run.start_by
    assert ran == [7, 7]  # the body ran, and replayed after its wait


def test_the_ttl_counts_from_when_a_delayed_run_is_due() -> None:
    ran: list[int] = []
    with LocalEngine(_app(ran)) as engine:
        handle = engine.trigger("limited", {"n": 3}, delay=timedelta(hours=1), ttl=30)
        run = engine.wait(handle.run_id, timeout=60)
        assert run.status == RunStatus.COMPLETED
        assert run.start_by is not None
        assert run.start_by - run.created_at == timedelta(hours=1, seconds=30)
    assert ran == [3]


def test_a_run_in_a_backlog_past_its_ttl_expires_when_its_message_is_read() -> None:
    ran: list[int] = []
    release = threading.Event()
    app = _app(ran)

    @app.task(id="hog")
    def hog(ctx: rung.Context, job: Job) -> int:
        release.wait(30)  # holds the only worker: the next message waits in the queue
        return job.n

    with LocalEngine(app, workers=1) as engine:
        first = engine.trigger("hog", {"n": 0})
        deadline = time.monotonic() + 30
        while engine.get_run(first.run_id).status != RunStatus.RUNNING:
            assert time.monotonic() < deadline, "the hog never started"
            time.sleep(0.01)
        stale = engine.trigger("limited", {"n": 4}, ttl=timedelta(seconds=1))
        fresh = engine.trigger("limited", {"n": 5}, ttl=timedelta(hours=1))
        assert isinstance(engine.clock, VirtualClock)
        engine.clock.advance(timedelta(seconds=5))  # the backlog outlives stale's ttl
        release.set()
        assert engine.wait(first.run_id, timeout=60).status == RunStatus.COMPLETED
        assert engine.wait(stale.run_id, timeout=60).status == RunStatus.EXPIRED
        assert engine.wait(fresh.run_id, timeout=60).status == RunStatus.COMPLETED
    assert ran == [5]


@pytest.mark.parametrize("ttl", [0, -5, "soon", timedelta(0), float("nan")])
def test_a_bad_ttl_is_refused_and_nothing_is_stored(ttl: object) -> None:
    with LocalEngine(_app([])) as engine:
        with pytest.raises(InvalidConfig, match="ttl"):
            engine.trigger("limited", {"n": 1}, ttl=ttl)  # type: ignore[arg-type]
        assert list(engine.list_runs()) == []


def test_batch_trigger_items_carry_their_own_ttl() -> None:
    ran: list[int] = []
    with LocalEngine(_app(ran)) as engine:
        engine.store.set_queue("one", paused=True)
        results = engine.client.batch_trigger(
            "limited",
            [rung.TriggerItem({"n": 1}, ttl=60), {"n": 2}, rung.TriggerItem({"n": 3}, ttl=-1)],
        )
        assert results[2].error is not None and "ttl" in results[2].error.message
        expired = engine.wait(results[0].handle.run_id, timeout=60)  # type: ignore[union-attr]
        assert expired.status == RunStatus.EXPIRED
        assert engine.get_run(results[1].handle.run_id).status == RunStatus.QUEUED  # type: ignore[union-attr]
    assert ran == []


def test_a_run_whose_worker_died_before_its_body_started_expires_after_its_ttl() -> None:
    ran: list[int] = []
    with LocalEngine(_app(ran)) as engine:
        handle = engine.trigger("limited", {"n": 6}, delay=timedelta(minutes=10), ttl=60)
        # A worker claims the run as it falls due and dies before its body starts (the
        # claim is the store's own call; its lease outlives the ttl).
        due = engine.clock.now() + timedelta(minutes=10)
        claim = engine.store.claim_run(handle.run_id, due, timedelta(minutes=5))
        assert not isinstance(claim, NotClaimed)
        run = engine.wait(handle.run_id, timeout=60)
        assert run.status == RunStatus.EXPIRED
        assert run.finished_at is not None and run.finished_at >= due + timedelta(minutes=5)
        assert engine.history(handle.run_id)[-1].type == EventType.RUN_EXPIRED
    assert ran == []


def test_runs_show_says_how_an_expired_run_ended() -> None:
    with LocalEngine(_app([])) as engine:
        engine.store.set_queue("one", paused=True)
        handle = engine.trigger("limited", {"n": 1}, ttl=timedelta(minutes=5))
        run = engine.wait(handle.run_id, timeout=60)

        class Target:  # what `rung runs show` reads through: the engine's own client
            def client(self) -> rung.Client:
                return engine.client

        shown = CliRunner().invoke(show_run, [handle.run_id], obj=Target()).output
        as_json = json.loads(
            CliRunner().invoke(show_run, [handle.run_id, "--json"], obj=Target()).output
        )
    assert "EXPIRED" in shown
    assert "TtlExpired" in shown
    assert "start by" in shown
    rows = shown.splitlines()
    assert not [row for row in rows if row.startswith("started")]  # its claim ran no body
    assert [row for row in rows if row.startswith("attempt")][0].endswith("body started")
    assert as_json["start_by"] == run.start_by.isoformat()  # type: ignore[union-attr]
    assert as_json["began_at"] is None


def test_a_run_deferred_by_a_rate_limit_that_expires_gives_its_slot_back() -> None:
    app = rung.App("ttl-rate")
    ran: list[int] = []

    @app.task(
        id="limited",
        queue=rung.Queue(
            "q", concurrency_limit=1, rate_limit=rung.Rate(1, per=timedelta(minutes=1))
        ),
    )
    def limited(ctx: rung.Context, job: Job) -> int:
        ran.append(job.n)
        return job.n

    with LocalEngine(app) as engine:
        first = engine.trigger("limited", {"n": 1})
        assert engine.wait(first.run_id, timeout=60).status == RunStatus.COMPLETED
        # Its reservation is a minute away: deferred, holding the slot, past its ttl.
        stale = engine.trigger("limited", {"n": 2}, ttl=timedelta(seconds=10))
        expired = engine.wait(stale.run_id, timeout=60)
        assert expired.status == RunStatus.EXPIRED
        assert stale.run_id not in engine.store.queue_state("q").holders
        later = engine.trigger("limited", {"n": 3})
        assert engine.wait(later.run_id, timeout=60).status == RunStatus.COMPLETED
    assert ran == [1, 3]


def test_a_parked_run_with_a_long_ttl_holds_no_message_in_flight_while_it_waits() -> None:
    """A ttl of two hours: the parked run comes back at its recheck (a delayed message,
    at most 10 minutes ahead), never as a message kept invisible for the whole ttl."""
    with LocalEngine(_app([]), workers=0) as engine:  # the test hands the message over
        engine.store.set_queue("one", paused=True)
        handle = engine.trigger("limited", {"n": 1}, ttl=timedelta(hours=2))
        [message] = engine.queue.receive(max_messages=1)
        assert engine.worker.handle(message) == Disposition.ACK  # parked; a fresh message
        engine.queue.delete(message)
        counts = engine.sqs.get_queue_attributes(
            QueueUrl=engine.queue_url,
            AttributeNames=[
                "ApproximateNumberOfMessagesNotVisible",
                "ApproximateNumberOfMessagesDelayed",
            ],
        )["Attributes"]
        assert counts["ApproximateNumberOfMessagesNotVisible"] == "0"
        assert counts["ApproximateNumberOfMessagesDelayed"] == "1"
        run = engine.get_run(handle.run_id)
        assert run.status == RunStatus.QUEUED and engine.store.queue_state("one").waiting == 1


def test_a_redriven_run_that_failed_before_it_started_does_not_expire() -> None:
    """Its concurrency key failed before its body began (a deploy broke the key
    function); fixed and redriven long after its ttl, it runs: a redrive drops the ttl."""
    app = rung.App("ttl-redrive")
    broken = threading.Event()

    def key(job: Job) -> str:
        if broken.is_set():
            raise ValueError("no tenant")
        return "t"

    @app.task(id="keyed", queue=rung.Queue("k", per_key_limit=1), concurrency_key=key)
    def keyed(ctx: rung.Context, job: Job) -> int:
        return job.n

    with LocalEngine(app) as engine:
        handle = engine.trigger(
            "keyed", {"n": 4}, delay=timedelta(minutes=1), ttl=timedelta(minutes=5)
        )
        broken.set()
        failed = engine.wait(handle.run_id, timeout=60)
        assert failed.status == RunStatus.FAILED and failed.began_at is None
        assert isinstance(engine.clock, VirtualClock)
        engine.clock.advance(timedelta(minutes=30))
        broken.clear()
        engine.client.redrive(handle.run_id)
        run = engine.wait(handle.run_id, timeout=60)
    assert (run.status, run.output, run.start_by) == (RunStatus.COMPLETED, 4, None)
