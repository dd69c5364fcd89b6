"""Waits and backoffs hold no in-flight SQS message: a short backoff keeps its message
invisible, a wait up to 15 minutes is a fresh delayed message, a longer one a timer on
the run item that the reconciler's pass (its timer sweep) turns into a message when it
is near. A wait's requests do not grow with its length, and a crash between any two of
its writes leaves a way forward (invariant 4).

The event source is played by hand (``deliver``: every visible message to the worker,
the acknowledged ones deleted), so that each test decides when time passes and when the
sweep runs."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest

import rung
from rung._engine.worker import Disposition
from rung.models import RunStatus
from rung.testing import LocalEngine, SimulatedCrash
from tests.functional.event_source import deliver, virtual

MINUTE = timedelta(minutes=1)
LEAD = timedelta(minutes=15)  # the sweep sends a timer's message this long before it is due


def _app(calls: Counter[str]) -> rung.App:
    app = rung.App("timers")

    @app.task(id="nap")
    def nap(ctx: rung.Context, seconds: float) -> str:
        ctx.step("before", lambda: calls.update(["before"]))
        ctx.wait(timedelta(seconds=seconds))
        ctx.step("after", lambda: calls.update(["after"]))
        return "rested"

    return app


def queue_counts(engine: LocalEngine) -> dict[str, int]:
    attributes = engine.sqs.get_queue_attributes(QueueUrl=engine.queue_url, AttributeNames=["All"])
    return {
        name: int(attributes["Attributes"][f"ApproximateNumberOfMessages{name}"])
        for name in ("", "NotVisible", "Delayed")
    }


def armed(engine: LocalEngine) -> set[str]:
    pages = engine.dynamodb.get_paginator("scan").paginate(  # (a Scan page holds 1 MB)
        TableName=engine.table_name, FilterExpression="attribute_exists(due_sk)"
    )
    return {item["run_id"]["S"] for page in pages for item in page["Items"]}


#: Runs in the crowd test (issue 11's 1,000; bench/waits.py records the same).
CROWD = 1000


@pytest.mark.slow  # about 100 s on the emulator: `make test` runs it, `make check` not
@pytest.mark.timeout(600)
def test_a_crowd_of_runs_waiting_two_hours_hold_no_message_and_all_resume() -> None:
    calls: Counter[str] = Counter()
    # Telemetry off: a thousand runs' metrics and events are not what this measures.
    with LocalEngine(_app(calls), workers=0, telemetry=False) as engine:
        ids = [engine.trigger("nap", 7200).run_id for _ in range(CROWD)]
        deliver(engine)
        waiting = {engine.get_run(i).status for i in ids[::30]}
        while_waiting = queue_counts(engine)
        timers = armed(engine)

        virtual(engine).advance(timedelta(hours=2) - LEAD + MINUTE)
        swept = engine.reconcile()
        at_sweep = queue_counts(engine)
        virtual(engine).advance(LEAD)
        deliver(engine)
        runs = [engine.get_run(i) for i in ids]
        after = queue_counts(engine)

    assert waiting == {RunStatus.WAITING}
    assert while_waiting == {"": 0, "NotVisible": 0, "Delayed": 0}  # nothing held at all
    assert timers == set(ids)
    assert sorted(swept.timers_sent) == sorted(ids) and swept.redriven == ()
    assert at_sweep["NotVisible"] == 0 and at_sweep["Delayed"] == CROWD  # not in flight
    assert {r.status for r in runs} == {RunStatus.COMPLETED}
    assert calls == {"before": CROWD, "after": CROWD}
    assert after == {"": 0, "NotVisible": 0, "Delayed": 0}


@contextmanager
def counted(engine: LocalEngine) -> Iterator[Counter[str]]:
    """Every AWS request of the engine's clients in the block, by operation."""
    tally: Counter[str] = Counter()

    def count(model: Any, **_: Any) -> None:
        tally[model.name] += 1

    for client in (engine.dynamodb, engine.sqs):
        client.meta.events.register("before-call", count)
    try:
        yield tally
    finally:
        for client in (engine.dynamodb, engine.sqs):
            client.meta.events.unregister("before-call", count)


def _requests_for_a_wait(length: timedelta) -> Counter[str]:
    calls: Counter[str] = Counter()
    with LocalEngine(_app(calls), workers=0) as engine:
        with counted(engine) as tally:
            run_id = engine.trigger("nap", length.total_seconds()).run_id
            deliver(engine)
            engine.store.refresh_indexes()  # a DescribeTable a minute: not the wait's
            virtual(engine).advance(length - LEAD + MINUTE)
            engine.reconcile()
            virtual(engine).advance(LEAD)
            deliver(engine)
            assert engine.get_run(run_id).status == RunStatus.COMPLETED
        # One reconciler pass in each: its queries (status shards, timer shards) are per
        # pass and the same whatever the wait's length, so they compare equal too.
        tally.pop("DescribeTable", None)
    assert calls == {"before": 1, "after": 1}
    return tally


def test_a_waits_requests_do_not_grow_with_its_length() -> None:
    hour = _requests_for_a_wait(timedelta(hours=1))
    month = _requests_for_a_wait(timedelta(days=30))

    assert hour == month
    assert "ChangeMessageVisibility" not in month  # no hops through the wait
    assert month["SendMessage"] == 2  # the trigger's, and the sweep's when it is near


def test_a_wait_up_to_fifteen_minutes_is_a_delayed_message_not_an_invisible_one() -> None:
    calls: Counter[str] = Counter()
    with LocalEngine(_app(calls), workers=0) as engine:
        run_id = engine.trigger("nap", 600).run_id
        deliver(engine)
        counts = queue_counts(engine)
        virtual(engine).advance(timedelta(minutes=10, seconds=1))
        deliver(engine)
        run = engine.get_run(run_id)

    assert counts == {"": 0, "NotVisible": 0, "Delayed": 1}
    assert run.status == RunStatus.COMPLETED and calls == {"before": 1, "after": 1}


# -- crash points ------------------------------------------------------------------------


def test_a_worker_that_dies_before_arming_the_timer_arms_it_on_redelivery() -> None:
    calls: Counter[str] = Counter()
    with LocalEngine(_app(calls), workers=0) as engine:
        run_id = engine.trigger("nap", 7200).run_id
        real_arm = engine.store.arm_timer
        crashes: list[str] = []

        def arm_or_die(rid: str, due: Any) -> bool:
            if not crashes:
                crashes.append(rid)
                raise SimulatedCrash()  # the suspension is written; the worker dies here
            return real_arm(rid, due)

        engine.store.arm_timer = arm_or_die  # type: ignore[method-assign,assignment]
        with pytest.raises(SimulatedCrash):
            deliver(engine)
        suspended = engine.get_run(run_id)
        not_armed = armed(engine)
        virtual(engine).advance(timedelta(minutes=5))  # the unacknowledged message returns
        deliver(engine)
        re_armed = armed(engine)
        virtual(engine).advance(timedelta(hours=2))
        engine.reconcile()
        deliver(engine)
        run = engine.get_run(run_id)

    assert suspended.status == RunStatus.WAITING and not_armed == set()
    assert re_armed == {run_id}
    assert run.status == RunStatus.COMPLETED and calls == {"before": 1, "after": 1}


def test_a_worker_that_dies_after_arming_before_its_ack_leaves_one_timer() -> None:
    calls: Counter[str] = Counter()
    with LocalEngine(_app(calls), workers=0) as engine:
        run_id = engine.trigger("nap", 7200).run_id
        [message] = engine.queue.receive(max_messages=1)
        first = engine.worker.handle(message)  # armed; the process dies before the ack
        virtual(engine).advance(timedelta(minutes=5))
        again = deliver(engine)
        timers = armed(engine)
        virtual(engine).advance(timedelta(hours=2))
        engine.reconcile()
        deliver(engine)
        run = engine.get_run(run_id)

    assert first == Disposition.ACK and again == [Disposition.ACK]
    assert timers == {run_id}
    assert run.status == RunStatus.COMPLETED and calls == {"before": 1, "after": 1}


def test_a_sweep_that_dies_between_its_send_and_the_disarm_sends_again_harmlessly() -> None:
    calls: Counter[str] = Counter()
    with LocalEngine(_app(calls), workers=0) as engine:
        run_id = engine.trigger("nap", 7200).run_id
        deliver(engine)
        virtual(engine).advance(timedelta(hours=2) - LEAD + MINUTE)
        real_disarm = engine.store.disarm_timer

        def die(timer: Any) -> bool:
            raise SimulatedCrash()  # the message was accepted; the sweep dies here

        engine.store.disarm_timer = die  # type: ignore[method-assign]
        with pytest.raises(SimulatedCrash):
            engine.reconcile()
        engine.store.disarm_timer = real_disarm  # type: ignore[method-assign]
        still_armed = armed(engine)
        again = engine.reconcile()
        virtual(engine).advance(LEAD)
        deliveries = deliver(engine)
        run = engine.get_run(run_id)
        left = armed(engine)

    assert still_armed == {run_id} and again.timers_sent == (run_id,)
    assert len(deliveries) == 2  # two messages: one runs the rest, one finds it done
    assert run.status == RunStatus.COMPLETED and calls == {"before": 1, "after": 1}
    assert left == set()


def test_a_run_woken_early_is_not_woken_again_by_its_timer() -> None:
    app = rung.App("timers-token")
    calls: Counter[str] = Counter()

    @app.task(id="approve")
    def approve(ctx: rung.Context, payload: None) -> Any:
        token = ctx.create_token("ok", timeout=timedelta(days=3))
        answer = ctx.wait_for_token(token)
        calls["after"] += 1
        return answer

    with LocalEngine(app, workers=0) as engine:
        run_id = engine.trigger("approve").run_id
        deliver(engine)
        timers = armed(engine)
        [token] = engine.client.list_tokens(run_id)
        engine.client.complete_token(token.id, "yes")
        deliver(engine)
        done = engine.get_run(run_id)
        left = armed(engine)
        virtual(engine).advance(timedelta(days=3))
        swept = engine.reconcile()

    assert timers == {run_id}  # the token's deadline, 3 days off
    assert done.status == RunStatus.COMPLETED and done.output == "yes"
    assert left == set() and swept.timers_sent == ()  # the claim disarmed it
    assert calls == {"after": 1}
