"""Cron schedules (docs/schedules.md): declared on a task or created at run time, stored
in EventBridge Scheduler (the emulator's, read back through its API), fired by
LocalEngine's local scheduler as AWS would, each firing one run however often it is
delivered, across daylight-saving changes."""

from __future__ import annotations

import itertools
import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import rung
from rung._util.clock import VirtualClock, iso
from rung.errors import InvalidConfig, ScheduleNotFound, UnknownTask
from rung.models import RunStatus
from rung.testing import LocalEngine


def _app(seen: list[rung.ScheduleEvent]) -> rung.App:
    app = rung.App("sched")

    @app.task(id="report", schedule=rung.Cron("0 9 * * MON-FRI", timezone="Europe/Paris"))
    def report(ctx: rung.Context, event: rung.ScheduleEvent) -> str:
        seen.append(event)
        return event.scheduled_at.isoformat()

    @app.task(id="sync")
    def sync(ctx: rung.Context, event: rung.ScheduleEvent) -> Any:
        seen.append(event)
        return event.payload

    @app.task(id="plain")
    def plain(ctx: rung.Context, n: int) -> int:
        return n

    return app


def _clock(engine: LocalEngine) -> VirtualClock:
    assert isinstance(engine.clock, VirtualClock)
    return engine.clock


@pytest.mark.slow  # a simulated week: ~2,000 runs, ~6,000 messages (`make test` runs it)
@pytest.mark.timeout(600)
def test_a_5_minute_cron_over_a_week_across_dst_fires_once_per_slot() -> None:
    """Paris springs forward on 2027-03-28 at 02:00: its wall clock skips 02:00-02:55,
    so that day has 23 hours of firings (the week's real time still holds 2,016 slots).
    One firing in four is delivered twice (EventBridge Scheduler and SQS deliver at
    least once: 504 duplicates); each slot is one run.

    The test plays the engine's part itself (``workers=0``: each message handed to the
    worker as a Lambda invocation would get it), to run the week in under a minute."""
    seen: list[rung.ScheduleEvent] = []
    app = rung.App("week")

    @app.task(id="tick")
    def tick(ctx: rung.Context, event: rung.ScheduleEvent) -> None:
        seen.append(event)

    with LocalEngine(app, workers=0) as engine:
        clock = _clock(engine)
        start = datetime(2027, 3, 25, tzinfo=UTC)
        clock.advance_to(start)
        send, sent = engine.queue.send_body, itertools.count()

        def twice_in_four(body: str) -> Any:  # every fourth firing is delivered twice
            if next(sent) % 4 == 0:
                send(body)
            return send(body)

        engine.queue.send_body = twice_in_four  # type: ignore[method-assign]
        engine.client.create_schedule("tick", "*/5 * * * *", timezone="Europe/Paris")
        local = engine.local_scheduler
        assert local is not None
        fired = 0
        while (due := local.next_due()) is not None and due <= start + timedelta(days=7):
            clock.advance_to(due)
            fired += local.tick()
            while messages := engine.queue.receive(max_messages=10):
                for message in messages:
                    assert engine.worker.handle(message).name == "ACK"
                    engine.queue.delete(message)
        runs = engine.store.changed_runs(start - timedelta(days=1))
    expected = 7 * 288
    assert fired == expected and next(sent) == expected  # (the duplicates were sent)
    slots = Counter(e.scheduled_at for e in seen)
    assert len(slots) == expected and max(slots.values()) == 1  # one run per slot
    assert len(runs) == expected
    assert all(r.status == RunStatus.COMPLETED for r in runs)
    paris = [e.scheduled_at.astimezone(_zone("Europe/Paris")) for e in seen]
    on_the_day = [t for t in paris if t.date().isoformat() == "2027-03-28"]
    assert len(on_the_day) == 23 * 12  # the day has 23 hours
    assert not [t for t in on_the_day if t.hour == 2]
    ordered = sorted(seen, key=lambda e: e.scheduled_at)
    assert ordered[0].last_scheduled_at is None
    assert all(
        b.last_scheduled_at == a.scheduled_at for a, b in zip(ordered, ordered[1:], strict=False)
    )


def _zone(name: str) -> Any:
    from zoneinfo import ZoneInfo

    return ZoneInfo(name)


def test_a_declared_schedule_is_in_the_scheduler_and_fires_on_weekdays_only() -> None:
    seen: list[rung.ScheduleEvent] = []
    paris = _zone("Europe/Paris")
    with LocalEngine(_app(seen)) as engine:
        [info] = engine.client.list_schedules()
        assert (info.id, info.task_id, info.declared) == ("report", "report", True)
        assert not info.paused and info.next_at is not None
        local = info.next_at.astimezone(paris)
        assert (local.hour, local.minute, local.weekday() < 5) == (9, 0, True)
        # Read back through the Scheduler API, as EventBridge Scheduler holds it.
        assert engine.scheduler is not None
        stored = engine.scheduler.client.get_schedule(
            Name="report", GroupName=engine.scheduler.group
        )
        assert stored["ScheduleExpression"] == "cron(0 9 ? * MON,TUE,WED,THU,FRI *)"
        assert stored["ScheduleExpressionTimezone"] == "Europe/Paris"
        assert stored["State"] == "ENABLED"
        assert stored["Target"]["Arn"].endswith(engine.queue_name)
        assert json.loads(stored["Target"]["Input"])["at"] == "<aws.scheduler.scheduled-time>"
        engine.run_schedules(timedelta(days=7))
    times = sorted(e.scheduled_at.astimezone(paris) for e in seen)
    assert len(times) == 5  # any seven days hold five weekdays
    assert {(t.hour, t.minute) for t in times} == {(9, 0)}
    assert all(t.weekday() < 5 for t in times)
    assert len({t.date() for t in times}) == 5


def test_a_per_tenant_schedule_is_created_paused_resumed_updated_and_deleted() -> None:
    seen: list[rung.ScheduleEvent] = []
    with LocalEngine(_app(seen)) as engine:
        client = engine.client
        info = client.create_schedule(
            "sync", "0 * * * *", payload={"tenant": "acme"}, external_id="acme", dedup_key="acme"
        )
        again = client.create_schedule("sync", "30 * * * *", external_id="acme", dedup_key="acme")
        assert again.id == info.id and info.id.startswith("sch_")
        assert again.cron.expression == "30 * * * *"  # the same schedule, updated
        assert [s.id for s in client.list_schedules(task="sync")] == [info.id]
        engine.run_schedules(timedelta(hours=3))
        assert len(seen) == 3 and {e.external_id for e in seen} == {"acme"}
        assert seen[0].schedule_id == info.id

        paused = client.pause_schedule(info.id)
        assert paused.paused and paused.next_at is None
        engine.run_schedules(timedelta(hours=5))
        assert len(seen) == 3  # nothing while paused
        client.resume_schedule(info.id)
        engine.run_schedules(timedelta(hours=2))
        assert len(seen) == 5  # the paused hours are not replayed

        updated = client.update_schedule(info.id, payload={"tenant": "acme", "v": 2})
        assert updated.payload == {"tenant": "acme", "v": 2} and updated.external_id == "acme"
        engine.run_schedules(timedelta(hours=1))
        assert seen[-1].payload == {"tenant": "acme", "v": 2}

        client.delete_schedule(info.id)
        engine.run_schedules(timedelta(hours=3))
        assert len(seen) == 6
        with pytest.raises(ScheduleNotFound):
            client.get_schedule(info.id)
        with pytest.raises(ScheduleNotFound):
            client.delete_schedule(info.id)
        assert engine.scheduler is not None
        assert list(engine.scheduler.names()) == ["report"]  # only the declared one left


def test_a_firing_delivered_again_later_is_the_same_run() -> None:
    seen: list[rung.ScheduleEvent] = []
    with LocalEngine(_app(seen)) as engine:
        info = engine.client.create_schedule("sync", "*/10 * * * *")
        engine.run_schedules(timedelta(minutes=10))
        assert engine.scheduler is not None
        body = json.loads(
            engine.scheduler.client.get_schedule(Name=info.id, GroupName=engine.scheduler.group)[
                "Target"
            ]["Input"]
        )
        at = seen[0].scheduled_at
        body["at"] = at.strftime("%Y-%m-%dT%H:%M:%SZ")  # EventBridge Scheduler's format
        engine.queue.send_body(json.dumps(body))  # a late duplicate
        engine.settle()
        runs = engine.list_runs(tags=[f"schedule:{info.id}"])
    assert len(seen) == 1 and len(runs) == 1


@pytest.mark.parametrize(
    ("args", "error", "says"),
    [
        (("plain", "* * * * *"), InvalidConfig, "does not take a rung.ScheduleEvent"),
        (("nope", "* * * * *"), UnknownTask, "nope"),
        (("sync", "* * *"), InvalidConfig, "five fields"),
        (("sync", "0 9 1 * MON"), InvalidConfig, "both the day of month and the day of week"),
        (("sync", 5), InvalidConfig, "rung.Cron or a string"),
    ],
)
def test_bad_schedules_are_refused_and_nothing_is_created(
    args: tuple[Any, ...], error: type[Exception], says: str
) -> None:
    with LocalEngine(_app([])) as engine:
        with pytest.raises(error, match=says):
            engine.client.create_schedule(*args)
        with pytest.raises(InvalidConfig, match="unknown timezone 'Mars/Base'"):
            engine.client.create_schedule("sync", "* * * * *", timezone="Mars/Base")
        with pytest.raises(rung.InvalidPayload, match="must be small"):
            engine.client.create_schedule("sync", "* * * * *", payload="x" * 9000)
        assert [s.id for s in engine.client.list_schedules()] == ["report"]


def test_a_declared_schedule_is_changed_in_code_not_by_the_client() -> None:
    with LocalEngine(_app([])) as engine:
        with pytest.raises(InvalidConfig, match="change it in the code"):
            engine.client.update_schedule("report", cron="0 10 * * *")
        # A new version without the schedule removes it (as a deploy does).
        bare = rung.App("sched")

        @bare.task(id="report")
        def report(ctx: rung.Context, event: rung.ScheduleEvent) -> None:
            return None

        engine.deploy(bare)
        assert engine.client.list_schedules() == []


def test_a_task_that_cannot_take_a_schedule_event_cannot_declare_a_schedule() -> None:
    app = rung.App("bad")
    with pytest.raises(InvalidConfig, match="cannot be scheduled"):

        @app.task(id="t", schedule=rung.Cron("* * * * *"))
        def t(ctx: rung.Context, n: int) -> int:
            return n

    with pytest.raises(InvalidConfig, match="must be a rung.Cron"):
        app.task(id="u", schedule="* * * * *")  # type: ignore[call-overload]


def test_a_firing_costs_one_write_of_its_own_beside_the_runs_trigger() -> None:
    """The firing's own cost: a read and a write of the schedule's firing times, then the
    run's usual trigger: its creation (a transaction, for the idempotency key) and one
    message. Counted on the worker's clients while it handles the firing message."""
    seen: list[rung.ScheduleEvent] = []
    with LocalEngine(_app(seen), workers=0) as engine:
        engine.client.create_schedule("sync", "*/5 * * * *")
        assert engine.local_scheduler is not None
        _clock(engine).advance(timedelta(minutes=5))
        assert engine.local_scheduler.tick() == 1
        [message] = engine.queue.receive(max_messages=1)
        calls: Counter[str] = Counter()

        def count(model: Any, **_: Any) -> None:
            calls[model.name] += 1

        for client in (engine.dynamodb, engine.sqs):
            client.meta.events.register("before-call", count)
        engine.worker.handle(message)
        for client in (engine.dynamodb, engine.sqs):
            client.meta.events.unregister("before-call", count)
    assert calls == {"GetItem": 1, "PutItem": 1, "TransactWriteItems": 1, "SendMessage": 1}


def test_firings_handled_out_of_order_name_the_latest_earlier_firing() -> None:
    """SQS does not keep order: the 10:10 firing handled before the 10:05 one (and that
    one delivered twice). Each names the latest earlier firing handled before it; the
    late one is not mistaken for a first firing."""
    seen: list[rung.ScheduleEvent] = []
    with LocalEngine(_app(seen), workers=0) as engine:
        info = engine.client.create_schedule("sync", "*/5 * * * *")
        assert engine.local_scheduler is not None and info.next_at is not None
        _clock(engine).advance_to(info.next_at + timedelta(minutes=10, seconds=1))
        assert engine.local_scheduler.tick() == 3
        messages = []
        while batch := engine.queue.receive(max_messages=10):
            messages += batch
        firings = sorted(messages, key=lambda m: json.loads(m.body)["at"])
        for message in [firings[0], firings[2], firings[1], firings[1]]:
            engine.worker.handle(message)
        events = {}
        for run in engine.store.changed_runs(info.next_at - timedelta(days=1)):
            event = rung.ScheduleEvent.model_validate(run.payload)
            events[event.scheduled_at] = event.last_scheduled_at
    first = info.next_at
    five, ten = first + timedelta(minutes=5), first + timedelta(minutes=10)
    assert events == {first: None, ten: first, five: first}


def test_time_passed_while_paused_or_deleted_is_not_replayed_even_without_a_tick() -> None:
    with LocalEngine(_app([]), workers=0) as engine:
        local = engine.local_scheduler
        assert local is not None
        info = engine.client.create_schedule("sync", "*/5 * * * *", dedup_key="t")
        local.tick()
        engine.client.pause_schedule(info.id)
        _clock(engine).advance(timedelta(hours=1))
        engine.client.resume_schedule(info.id)
        assert local.tick() == 0  # the paused hour is gone
        engine.client.delete_schedule(info.id)
        _clock(engine).advance(timedelta(hours=1))
        again = engine.client.create_schedule("sync", "*/5 * * * *", dedup_key="t")
        assert again.id == info.id
        assert local.tick() == 0  # nor the hour it did not exist
        _clock(engine).advance(timedelta(minutes=5))
        assert local.tick() == 1


def test_update_keeps_a_crons_own_zone_and_dedup_keeps_a_pause() -> None:
    with LocalEngine(_app([])) as engine:
        client = engine.client
        info = client.create_schedule("sync", "0 9 * * *", dedup_key="k")
        moved = client.update_schedule(info.id, cron=rung.Cron("0 9 * * *", "America/New_York"))
        assert moved.cron.timezone == "America/New_York"
        kept = client.update_schedule(info.id, cron="0 10 * * *")  # a string: zone kept
        assert (kept.cron.expression, kept.cron.timezone) == ("0 10 * * *", "America/New_York")
        client.pause_schedule(info.id)
        again = client.create_schedule("sync", "0 11 * * *", dedup_key="k")
        assert again.paused and again.cron.expression == "0 11 * * *"


class Tenant(rung.ScheduleEvent):
    """A scheduled task's own event model: its payload typed."""

    payload: dict[str, int]


def test_a_payload_the_tasks_event_model_refuses_is_refused_when_created() -> None:
    app = rung.App("typed")

    @app.task(id="typed")
    def typed(ctx: rung.Context, event: Tenant) -> int:
        return sum(event.payload.values())

    with LocalEngine(app) as engine:
        ok = engine.client.create_schedule("typed", "0 * * * *", payload={"a": 1})
        assert ok.payload == {"a": 1}
        with pytest.raises(rung.InvalidPayload, match="would refuse this schedule's runs"):
            engine.client.create_schedule("typed", "0 * * * *", payload={"a": "x"})
        with pytest.raises(rung.InvalidPayload, match="would refuse"):
            engine.client.update_schedule(ok.id, payload={"a": "x"})
        with pytest.raises(InvalidConfig, match="names no date that exists"):
            engine.client.create_schedule("typed", "0 0 30 2 *", payload={"a": 1})
        assert [s.id for s in engine.client.list_schedules()] == [ok.id]


def test_a_client_pointed_at_a_missing_schedule_group_says_which_and_what_to_do() -> None:
    from botocore.exceptions import ClientError

    from rung._aws.scheduler import Scheduler

    with LocalEngine(_app([])) as engine:
        assert engine.scheduler is not None

        # AWS answers a missing group with ResourceNotFoundException; moto lists it as
        # empty (and fails creating in it with a 500), so that answer is played here.
        def missing(**_: Any) -> Any:
            raise ClientError(
                {"Error": {"Code": "ResourceNotFoundException", "Message": "no group"}},
                "ListSchedules",
            )

        api: Any = engine.scheduler.client
        scheduler = Scheduler(api, "no-such-group", engine.queue.arn, None)
        real, api.list_schedules = api.list_schedules, missing
        try:
            with pytest.raises(InvalidConfig, match="no schedule group 'no-such-group'"):
                list(scheduler.names())
        finally:
            api.list_schedules = real
        unset = rung.Client(
            engine.app, table_name=engine.table_name, queue_url=engine.queue_url,
            endpoint_url=engine.endpoint_url,
        )  # fmt: skip
        with pytest.raises(InvalidConfig, match="knows no schedule group"):
            unset.list_schedules()


def test_a_resume_with_catch_up_fires_each_missed_time_once() -> None:
    """Paused for 5 hours of an hourly cron, resumed with catch_up: the 5 missed
    firings run now, each once, with its own scheduled time; a catch-up sent twice (a
    retried resume) makes no second run; then the schedule goes on as before."""
    seen: list[rung.ScheduleEvent] = []
    with LocalEngine(_app(seen)) as engine:
        client = engine.client
        info = client.create_schedule("sync", "0 * * * *", external_id="t")
        engine.run_schedules(timedelta(hours=2))
        assert len(seen) == 2
        paused = client.pause_schedule(info.id)
        assert paused.paused_at is not None
        assert timedelta(0) <= _clock(engine).now() - paused.paused_at < timedelta(seconds=5)
        again = client.pause_schedule(info.id)  # a second pause keeps the first time
        assert again.paused_at == paused.paused_at
        _clock(engine).advance(timedelta(hours=5))
        resumed = client.resume_schedule(info.id, catch_up=True)
        assert not resumed.paused and resumed.paused_at is None
        engine.settle()
        missed = sorted(e.scheduled_at for e in seen[2:])
        assert len(missed) == 5 and all(t.minute == 0 and t.second == 0 for t in missed)
        assert missed[0] > seen[1].scheduled_at and missed[-1] <= _clock(engine).now()
        assert all(e.external_id == "t" for e in seen)
        # the same missed firings sent again (a resume retried) are the same runs
        stored = engine.scheduler.get(info.id) if engine.scheduler is not None else None
        assert stored is not None and "paused_at" not in stored.input
        for at in missed:
            engine.queue.send_body(json.dumps({**stored.input, "at": iso(at)}))
        engine.settle()
        assert len(seen) == 7
        assert len(engine.list_runs(tags=[f"schedule:{info.id}"], limit=100)) == 7
        engine.run_schedules(timedelta(hours=1))
        assert len(seen) == 8
        # without catch_up the missed times stay missed
        client.pause_schedule(info.id)
        _clock(engine).advance(timedelta(hours=3))
        client.resume_schedule(info.id)
        engine.settle()
        assert len(seen) == 8
