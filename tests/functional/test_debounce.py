"""``trigger(debounce=rung.Debounce(key, window))``: triggers of a key within its window
collapse into one run, started a window after the last, with the last payload
(docs/lifecycle.md, "Debounce")."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pydantic
import pytest
from click.testing import CliRunner

import rung
from rung._util.clock import VirtualClock
from rung.cli.runs import show_run
from rung.errors import InvalidConfig
from rung.models import EventType, RunStatus
from rung.testing import LocalEngine


class Edit(pydantic.BaseModel):
    doc: str
    text: str


def _app(saved: list[tuple[str, str]]) -> rung.App:
    app = rung.App("debounce")

    @app.task(id="save")
    def save(ctx: rung.Context, edit: Edit) -> str:
        saved.append((edit.doc, edit.text))
        return edit.text

    return app


def _clock(engine: LocalEngine) -> VirtualClock:
    assert isinstance(engine.clock, VirtualClock)
    return engine.clock


def test_a_burst_of_triggers_becomes_one_run_with_the_last_payload() -> None:
    saved: list[tuple[str, str]] = []
    window = timedelta(seconds=30)
    with LocalEngine(_app(saved), workers=0) as engine:  # the test moves time itself
        clock = _clock(engine)
        first = clock.now()
        handles = []
        for n in range(5):
            handles.append(
                engine.trigger(
                    "save",
                    {"doc": "d1", "text": f"v{n}"},
                    debounce=rung.Debounce("d1", window),
                    tags=[f"t{n}"],
                )
            )
            clock.advance(timedelta(seconds=10))  # each within the window of the last
        other = engine.trigger(
            "save", {"doc": "d2", "text": "x"}, debounce=rung.Debounce("d2", window)
        )
        run = engine.get_run(handles[0].run_id)
        assert [h.run_id for h in handles] == [run.run_id] * 5
        assert [h.created for h in handles] == [True, False, False, False, False]
        assert other.run_id != run.run_id and other.created
        assert run.status == RunStatus.DELAYED
        assert run.payload == {"doc": "d1", "text": "v4"}
        assert run.tags == ("t4",)
        assert run.triggers == 5
        # Due a window after the last trigger, made 40 s after the first (the virtual
        # clock also moves with the wall clock: a second of slack).
        assert run.available_at is not None
        assert timedelta(0) <= run.available_at - (first + timedelta(seconds=40) + window)
        assert run.available_at - (first + timedelta(seconds=40) + window) < timedelta(seconds=1)
    # Workers run this one, on the wall clock (virtual time would jump to the run's due
    # time as soon as the workers idle, between two triggers).
    with LocalEngine(_app(saved), virtual_time=False) as engine:
        spec = rung.Debounce("d1", timedelta(seconds=5))  # the triggers take milliseconds
        handles = [
            engine.trigger("save", {"doc": "d1", "text": f"w{n}"}, debounce=spec) for n in range(3)
        ]
        run = engine.wait(handles[0].run_id, timeout=60)
        assert run.output == "w2"
        kinds = [e.type for e in engine.history(run.run_id)]
        assert kinds.count(EventType.RUN_TRIGGERED) == 1
        assert kinds.count(EventType.ATTEMPT_STARTED) == 1
        assert len(engine.list_runs()) == 1
    assert saved == [("d1", "w2")]


def test_a_trigger_after_the_run_started_starts_a_new_run() -> None:
    saved: list[tuple[str, str]] = []
    with LocalEngine(_app(saved)) as engine:
        spec = rung.Debounce("d1", timedelta(seconds=5))
        first = engine.trigger("save", {"doc": "d1", "text": "a"}, debounce=spec)
        assert engine.wait(first.run_id, timeout=60).output == "a"
        second = engine.trigger("save", {"doc": "d1", "text": "b"}, debounce=spec)
        assert second.created and second.run_id != first.run_id
        assert engine.wait(second.run_id, timeout=60).output == "b"
    assert saved == [("d1", "a"), ("d1", "b")]


def test_max_wait_caps_how_long_a_steady_stream_holds_the_run_back() -> None:
    saved: list[tuple[str, str]] = []
    with LocalEngine(_app(saved), workers=0) as engine:
        clock = _clock(engine)
        first = clock.now()
        spec = rung.Debounce("d1", timedelta(seconds=30), max_wait=timedelta(minutes=1))
        for n in range(10):
            handle = engine.trigger("save", {"doc": "d1", "text": f"v{n}"}, debounce=spec)
            clock.advance(timedelta(seconds=5))
        run = engine.get_run(handle.run_id)
        assert run.triggers == 10
        assert run.available_at is not None  # the first trigger's time plus max_wait
        assert abs(run.available_at - (first + timedelta(minutes=1))) < timedelta(seconds=1)


def test_concurrent_triggers_of_one_key_make_one_run_and_lose_no_payload() -> None:
    """Twenty threads trigger the same key at once: one run holds the burst, and its
    payload is one of theirs; every trigger got that run."""
    saved: list[tuple[str, str]] = []
    with LocalEngine(_app(saved), workers=0) as engine:
        spec = rung.Debounce("hot", timedelta(minutes=1))
        start = threading.Barrier(20)

        def fire(n: int) -> rung.RunHandle:
            start.wait()
            return engine.trigger("save", {"doc": "hot", "text": f"v{n}"}, debounce=spec)

        with ThreadPoolExecutor(20) as pool:
            handles = list(pool.map(fire, range(20)))
        run_ids = {h.run_id for h in handles}
        assert len(run_ids) == 1
        assert sum(h.created for h in handles) == 1
        run = engine.get_run(run_ids.pop())
        assert run.triggers == 20
        assert run.payload["text"] in {f"v{n}" for n in range(20)}
        assert len(engine.list_runs()) == 1


def test_a_trigger_after_its_run_was_claimed_starts_another_and_leaves_it_alone() -> None:
    """The key still names a run a worker has claimed (its push's condition fails): the
    late trigger's payload goes to a new run, not into a run that already started."""
    saved: list[tuple[str, str]] = []
    with LocalEngine(_app(saved), workers=0) as engine:
        clock = _clock(engine)
        spec = rung.Debounce("d1", timedelta(seconds=10))
        first = engine.trigger("save", {"doc": "d1", "text": "a"}, debounce=spec)
        clock.advance(timedelta(seconds=11))
        claimed = engine.store.claim_run(first.run_id, clock.now(), timedelta(minutes=5))
        assert not isinstance(claimed, rung._aws.dynamodb.NotClaimed)
        late = engine.trigger("save", {"doc": "d1", "text": "b"}, debounce=spec)
        assert late.created and late.run_id != first.run_id
        assert engine.get_run(first.run_id).payload["text"] == "a"
        assert engine.get_run(late.run_id).payload["text"] == "b"


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"debounce": ("k", 5)}, "must be a rung.Debounce"),
        ({"debounce": rung.Debounce("", 5)}, "debounce key must be a non-empty string"),
        ({"debounce": rung.Debounce("k", 0)}, "debounce window"),
        ({"debounce": rung.Debounce("k", 60, max_wait=30)}, "shorter than its window"),
        ({"debounce": rung.Debounce("k", 5), "idempotency_key": "i"}, "do not combine"),
        ({"debounce": rung.Debounce("k", 5), "delay": 10}, "do not combine"),
    ],
)
def test_bad_debounce_options_are_refused_and_nothing_is_stored(
    options: dict[str, object], says: str
) -> None:
    with LocalEngine(_app([])) as engine:
        with pytest.raises(InvalidConfig, match=says):
            engine.client.trigger("save", {"doc": "d", "text": "t"}, **options)  # type: ignore[arg-type]
        assert list(engine.list_runs()) == []


def test_runs_show_counts_the_triggers_a_run_collapsed() -> None:
    with LocalEngine(_app([]), workers=0) as engine:
        spec = rung.Debounce("d1", timedelta(minutes=1))
        handle = engine.trigger("save", {"doc": "d1", "text": "a"}, debounce=spec)
        engine.trigger("save", {"doc": "d1", "text": "b"}, debounce=spec)

        class Target:  # what `rung runs show` reads through: the engine's own client
            def client(self) -> rung.Client:
                return engine.client

        shown = CliRunner().invoke(show_run, [handle.run_id], obj=Target()).output
    assert "2 triggers collapsed into this run" in shown


def test_a_push_refused_by_a_transaction_conflict_reads_again_and_stays_one_run() -> None:
    """DynamoDB cancels a transaction that conflicts with another on the same item
    (``TransactionConflict``), which moto never does: injected here, once. The trigger
    reads the key again and pushes; it does not start a second run."""
    from botocore.exceptions import ClientError

    saved: list[tuple[str, str]] = []
    with LocalEngine(_app(saved), workers=0) as engine:
        client = engine.store.client
        real = client.transact_write_items
        armed = [True]

        def conflicting(**kwargs: Any) -> Any:
            first = kwargs["TransactItems"][0].get("Update", {})
            if armed[0] and "lease_token = :zero" in first.get("ConditionExpression", ""):
                armed[0] = False
                raise ClientError(
                    {
                        "Error": {"Code": "TransactionCanceledException", "Message": "conflict"},
                        "CancellationReasons": [{"Code": "TransactionConflict"}, {"Code": "None"}],
                    },
                    "TransactWriteItems",
                )
            return real(**kwargs)

        client.transact_write_items = conflicting
        spec = rung.Debounce("d1", timedelta(minutes=1))
        first = engine.trigger("save", {"doc": "d1", "text": "a"}, debounce=spec)
        second = engine.trigger("save", {"doc": "d1", "text": "b"}, debounce=spec)
        assert not armed[0]  # the conflict happened
        assert second.run_id == first.run_id and not second.created
        assert engine.get_run(first.run_id).payload["text"] == "b"
        assert len(engine.list_runs()) == 1
