"""Triggering: validation, idempotency, delays, statuses and history."""

from __future__ import annotations

import dataclasses
import threading
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pydantic
import pytest
from typing_extensions import TypedDict  # pydantic needs it before Python 3.12

import rung
from rung.testing import LocalEngine, SimulatedCrash


class OrderIn(pydantic.BaseModel):
    order_id: str
    qty: int = 1


@dataclasses.dataclass(frozen=True)
class Refund:
    order_id: str
    cents: int


class Line(TypedDict):
    sku: str
    qty: int


def make_app() -> tuple[rung.App, Counter[str]]:
    app = rung.App("trig")
    calls: Counter[str] = Counter()

    @app.task(id="order")
    def order(ctx: rung.Context, payload: OrderIn) -> dict[str, Any]:
        def charge() -> str:
            calls[payload.order_id] += 1
            return f"ch-{payload.order_id}"

        return {"charge": ctx.step("charge", charge), "qty": payload.qty}

    @app.task(id="anything")
    def anything(ctx: rung.Context, payload: Any) -> Any:
        return payload

    @app.task(id="refund")
    def refund(ctx: rung.Context, payload: Refund) -> str:
        assert isinstance(payload, Refund)  # revived as the annotation says
        return f"{payload.order_id}:{payload.cents}"

    @app.task(id="lines")
    def lines(ctx: rung.Context, payload: list[Line]) -> int:
        return sum(line["qty"] for line in payload)

    @app.task(id="count")
    def count(ctx: rung.Context, payload: int) -> int:
        return payload + 1

    return app, calls


def queue_depth(engine: LocalEngine) -> int:
    attrs = engine.sqs.get_queue_attributes(
        QueueUrl=engine.queue_url,
        AttributeNames=[
            "ApproximateNumberOfMessages",
            "ApproximateNumberOfMessagesNotVisible",
            "ApproximateNumberOfMessagesDelayed",
        ],
    )["Attributes"]
    return sum(int(v) for v in attrs.values())


def test_get_run_reports_status_attempts_timestamps_and_output() -> None:
    app, _ = make_app()
    with LocalEngine(app) as engine:
        handle = engine.trigger("order", OrderIn(order_id="o-1", qty=3), tags=["vip"])
        run = engine.wait(handle.run_id)
    assert handle.created and handle.task_id == "order"
    assert run.status == rung.RunStatus.COMPLETED
    assert run.output == {"charge": "ch-o-1", "qty": 3}
    assert run.payload == {"order_id": "o-1", "qty": 3}
    assert run.attempt == 1 and run.error is None and run.tags == ("vip",)
    assert run.started_at is not None and run.finished_at is not None
    assert run.created_at <= run.started_at <= run.finished_at


def test_history_lists_the_events_in_order_with_attempts_and_steps() -> None:
    app, _ = make_app()
    with LocalEngine(app) as engine:
        run = engine.wait(engine.trigger("order", {"order_id": "o-2"}).run_id)
        history = engine.history(run.run_id)
    assert [(str(e.type), e.attempt, e.step) for e in history] == [
        ("RunTriggered", None, None),
        ("AttemptStarted", 1, None),
        ("StepStarted", 1, "/charge#1"),
        ("StepSucceeded", 1, "/charge#1"),
        ("RunCompleted", 1, None),
    ]
    stamps = [e.timestamp for e in history]
    assert stamps == sorted(stamps)
    assert "StepSucceeded" in str(history[3]) and "step=/charge#1" in str(history[3])


def test_the_same_idempotency_key_yields_the_same_run() -> None:
    app, calls = make_app()
    with LocalEngine(app) as engine:
        first = engine.trigger("order", {"order_id": "o-3"}, idempotency_key="k-3")
        engine.wait(first.run_id)
        again = engine.trigger("order", {"order_id": "o-3"}, idempotency_key="k-3")
        other = engine.trigger("order", {"order_id": "o-3"}, idempotency_key="k-4")
        engine.wait(other.run_id)
        runs = engine.list_runs(task="order")
    assert (first.created, again.created) == (True, False)
    assert again.run_id == first.run_id and other.run_id != first.run_id
    assert calls["o-3"] == 2
    assert len(runs) == 2


def test_twenty_concurrent_triggers_with_one_key_make_one_run() -> None:
    app, calls = make_app()
    handles: list[rung.RunHandle] = []
    barrier = threading.Barrier(20)

    with LocalEngine(app, workers=2) as engine:

        def fire() -> None:
            barrier.wait()
            handles.append(engine.trigger("order", {"order_id": "o-5"}, idempotency_key="same"))

        threads = [threading.Thread(target=fire) for _ in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        run = engine.wait(handles[0].run_id)
        runs = engine.list_runs(task="order")
        faults = list(engine.faults)
    assert len(handles) == 20
    assert {h.run_id for h in handles} == {run.run_id}
    assert sum(h.created for h in handles) == 1
    assert [r.run_id for r in runs] == [run.run_id]
    assert calls["o-5"] == 1 and run.status == "COMPLETED"
    assert faults == []


def test_a_trigger_that_crashed_before_sending_is_dispatched_by_a_repeated_trigger() -> None:
    app, calls = make_app()
    with LocalEngine(app) as engine:
        real_send = engine.queue.send

        # The emulator cannot kill a client between its two requests; make the send die
        # once as a crashed process would: the run is recorded, nothing is enqueued.
        def crash_once(
            run_id: str, delay: timedelta = timedelta(0), trace_header: str | None = None
        ) -> None:
            engine.queue.send = real_send  # type: ignore[method-assign]
            raise SimulatedCrash()

        engine.queue.send = crash_once  # type: ignore[method-assign]
        with pytest.raises(SimulatedCrash):
            engine.trigger("order", {"order_id": "o-6"}, idempotency_key="k-6")
        [stuck] = engine.list_runs(task="order")
        assert stuck.status == "QUEUED" and queue_depth(engine) == 0
        again = engine.trigger("order", {"order_id": "o-6"}, idempotency_key="k-6")
        run = engine.wait(again.run_id)
    assert again.run_id == stuck.run_id and not again.created
    assert run.status == "COMPLETED" and calls["o-6"] == 1


@pytest.mark.parametrize(
    ("task", "payload", "error", "message"),
    [
        ("order", {"order_id": 5}, rung.InvalidPayload, "order_id: Input should be a valid string"),
        ("order", {"qty": 1}, rung.InvalidPayload, "order_id: Field required"),
        ("order", "not an object", rung.InvalidPayload, "does not match OrderIn"),
        (
            "nope",
            {},
            rung.UnknownTask,
            "has no task 'nope' (known tasks: anything, count, lines, order, refund)",
        ),
        ("refund", {"order_id": "o-1"}, rung.InvalidPayload, "Refund: cents: Field required"),
        ("refund", {"order_id": 7, "cents": 1}, rung.InvalidPayload, "order_id: Input should"),
        ("refund", [1, 2], rung.InvalidPayload, "does not match Refund"),
        ("lines", [{"sku": "a", "qty": "many"}], rung.InvalidPayload, "0.qty: Input should be"),
        ("lines", {"sku": "a"}, rung.InvalidPayload, "Input should be a valid array"),
        ("count", "seven", rung.InvalidPayload, "does not match int"),
        ("count", None, rung.InvalidPayload, "does not match int"),
        ("anything", {"when": object()}, rung.InvalidPayload, "not JSON-serializable"),
        ("anything", float("inf"), rung.InvalidPayload, "not JSON-serializable"),
        ("anything", "x" * 11_000_000, rung.PayloadTooLarge, "at most 10,485,760 bytes"),
    ],
)
def test_bad_triggers_are_refused_clearly_and_nothing_is_stored_or_enqueued(
    task: str, payload: Any, error: type[Exception], message: str
) -> None:
    app, _ = make_app()
    with LocalEngine(app, workers=0) as engine:
        with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
            engine.trigger(task, payload)
        assert engine.list_runs() == []
        assert queue_depth(engine) == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"idempotency_key": ""}, "idempotency_key must be a non-empty string"),
        ({"idempotency_key": "k" * 300}, "at most 256"),
        ({"tags": "vip"}, "not a single string"),
        ({"delay": -5}, "must not be negative"),
        ({"delay": "5m"}, "timedelta or a number of seconds"),
        ({"delay": timedelta(days=1_000_000)}, "trigger delay must be at most 366d"),
        ({"delay": 1e12}, "trigger delay must be at most 366d"),
        ({"delay": float("inf")}, "trigger delay must be a finite number of seconds"),
        ({"delay": float("nan")}, "trigger delay must be a finite number of seconds"),
        ({"delay": True}, "trigger delay must be a timedelta or a number of seconds"),
        ({"idempotency_key": "k", "idempotency_ttl": 0}, "idempotency_ttl must be positive"),
        ({"idempotency_key": "k", "idempotency_ttl": float("nan")}, "idempotency_ttl must be"),
        ({"idempotency_key": "k", "idempotency_ttl": 1e300}, "idempotency_ttl must be at most"),
    ],
)
def test_bad_trigger_options_are_refused(kwargs: dict[str, Any], message: str) -> None:
    app, _ = make_app()
    with LocalEngine(app, workers=0) as engine:
        with pytest.raises(rung.InvalidConfig, match=message):
            engine.client.trigger("anything", 1, **kwargs)
        assert engine.list_runs() == []
        assert queue_depth(engine) == 0


def test_typed_payloads_are_validated_at_trigger_and_revived_in_the_run() -> None:
    app, _ = make_app()
    with LocalEngine(app) as engine:
        refund = engine.wait(engine.trigger("refund", {"order_id": "o-1", "cents": "250"}).run_id)
        as_object = engine.wait(engine.trigger("refund", Refund("o-2", 5)).run_id)
        lines = engine.wait(engine.trigger("lines", [{"sku": "a", "qty": 2}] * 3).run_id)
        count = engine.wait(engine.trigger("count", 41).run_id)
    assert (refund.status, refund.output) == ("COMPLETED", "o-1:250")
    assert refund.payload == {"order_id": "o-1", "cents": 250}  # stored as validated
    assert as_object.output == "o-2:5"
    assert lines.output == 6 and count.output == 42


def test_values_that_are_not_json_are_stored_in_their_documented_json_form() -> None:
    app, _ = make_app()
    when = datetime(2026, 12, 5, 9, 30, tzinfo=UTC)
    payload = {"tags": ("a", "b"), "at": when, "id": uuid.UUID(int=7), "ids": {3}}
    with LocalEngine(app) as engine:
        run = engine.wait(engine.trigger("anything", payload).run_id)
    assert run.output == {
        "tags": ["a", "b"],
        "at": "2026-12-05T09:30:00Z",
        "id": "00000000-0000-0000-0000-000000000007",
        "ids": [3],
    }


class Opaque:
    """No JSON form: pydantic cannot validate it."""


class Priced(pydantic.BaseModel):
    """A model whose JSON form does not validate again as it is: its computed field is
    an extra field, and extra fields are forbidden."""

    model_config = pydantic.ConfigDict(extra="forbid")
    cents: int

    @pydantic.computed_field  # type: ignore[prop-decorator]
    @property
    def euros(self) -> float:
        return self.cents / 100


def test_a_payload_accepted_at_trigger_always_revives_in_the_run() -> None:
    app = rung.App("revives")

    @app.task(id="t")
    def t(ctx: rung.Context, payload: Priced) -> float:
        return payload.euros

    with LocalEngine(app) as engine:
        run = engine.wait(engine.trigger("t", {"cents": 250}).run_id)
    assert (run.status, run.output) == ("COMPLETED", 2.5)


class Stamped(pydantic.BaseModel):
    """Strict: in Python a datetime field takes only a datetime, a UUID only a UUID."""

    model_config = pydantic.ConfigDict(strict=True)
    at: datetime
    id: uuid.UUID


def test_a_strict_model_instance_is_accepted_and_revived_as_the_model() -> None:
    app = rung.App("strict")
    seen: list[Stamped] = []

    @app.task(id="t")
    def t(ctx: rung.Context, payload: Stamped) -> str:
        seen.append(payload)
        return f"{payload.id}@{payload.at.isoformat()}"

    stamp = Stamped(at=datetime(2026, 12, 5, 9, 30, tzinfo=UTC), id=uuid.UUID(int=7))
    with LocalEngine(app) as engine:
        run = engine.wait(engine.trigger("t", stamp).run_id)
    assert run.status == "COMPLETED", run.error
    assert run.output == "00000000-0000-0000-0000-000000000007@2026-12-05T09:30:00+00:00"
    assert seen == [stamp]


def test_a_model_instance_with_a_computed_field_and_extra_forbidden_is_accepted() -> None:
    app = rung.App("priced")
    seen: list[Priced] = []

    @app.task(id="t")
    def t(ctx: rung.Context, payload: Priced) -> float:
        seen.append(payload)
        return payload.euros

    with LocalEngine(app) as engine:
        run = engine.wait(engine.trigger("t", Priced(cents=250)).run_id)
    assert (run.status, run.output) == ("COMPLETED", 2.5)
    assert run.payload == {"cents": 250}  # stored without the computed field
    assert seen == [Priced(cents=250)]


def test_an_untyped_payload_keeps_a_models_computed_fields() -> None:
    app = rung.App("untyped")

    @app.task(id="t")
    def t(ctx: rung.Context, payload: Any) -> Any:
        return payload

    with LocalEngine(app) as engine:
        run = engine.wait(engine.trigger("t", Priced(cents=250)).run_id)
    assert run.output == run.payload == {"cents": 250, "euros": 2.5}


def test_a_payload_annotation_rung_cannot_revive_is_refused_when_the_task_is_declared() -> None:
    app = rung.App("opaque")
    with pytest.raises(rung.InvalidConfig, match="payload annotation Opaque is not a type"):

        @app.task(id="t")
        def t(ctx: rung.Context, payload: Opaque) -> None: ...


def test_unknown_run_ids_raise_run_not_found() -> None:
    app, _ = make_app()
    with LocalEngine(app, workers=0) as engine:
        with pytest.raises(rung.RunNotFound, match="no run with id 'run_nope'"):
            engine.get_run("run_nope")
        with pytest.raises(rung.RunNotFound):
            engine.history("run_nope")
        with pytest.raises(rung.RunNotFound, match="is not a run id"):
            engine.get_run(42)  # type: ignore[arg-type]


def test_a_delayed_run_waits_past_the_sqs_delay_cap_before_starting() -> None:
    app, _ = make_app()
    with LocalEngine(app) as engine:
        handle = engine.trigger("anything", {"x": 1}, delay=timedelta(hours=2))
        run = engine.wait(handle.run_id)
    assert run.status == "COMPLETED" and run.output == {"x": 1}
    assert run.started_at is not None
    assert run.started_at - run.created_at >= timedelta(hours=2)


def test_any_json_payload_including_none_is_accepted_without_a_model() -> None:
    app, _ = make_app()
    with LocalEngine(app) as engine:
        outputs = [
            engine.wait(engine.trigger("anything", p).run_id).output
            for p in (None, [1, "two"], 3.5)
        ]
    assert outputs == [None, [1, "two"], 3.5]


def test_list_runs_filters_by_status_and_task() -> None:
    app, _ = make_app()
    with LocalEngine(app) as engine:
        a = engine.wait(engine.trigger("anything", 1).run_id)
        b = engine.wait(engine.trigger("order", {"order_id": "o-9"}).run_id)
        assert {r.run_id for r in engine.list_runs(status="COMPLETED")} == {a.run_id, b.run_id}
        assert [r.run_id for r in engine.list_runs(task="order")] == [b.run_id]
        assert len(engine.list_runs(limit=1)) == 1
        with pytest.raises(rung.InvalidConfig, match="unknown status 'DONE'"):
            engine.list_runs(status="DONE")


def test_a_delayed_run_is_listed_as_delayed_until_it_is_due() -> None:
    app, _ = make_app()
    with LocalEngine(app, workers=0) as engine:  # no workers: nothing moves it on
        delayed = engine.trigger("anything", 2, delay=timedelta(days=1))
        queued = engine.trigger("anything", 3)
        assert [r.run_id for r in engine.list_runs(status="DELAYED")] == [delayed.run_id]
        assert [r.run_id for r in engine.list_runs(status="QUEUED")] == [queued.run_id]
        run = engine.get_run(delayed.run_id)
        assert run.available_at is not None
        assert run.available_at - run.created_at == timedelta(days=1)
