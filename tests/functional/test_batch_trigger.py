"""``Client.batch_trigger``: up to 1,000 runs in bulk, each with its own options, results
in order, refused items reported alone and nothing half-stored."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import timedelta
from typing import Any

import pydantic
import pytest

import rung
from rung.testing import LocalEngine


class Image(pydantic.BaseModel):
    name: str
    width: int


def resize_app(calls: Counter[str]) -> rung.App:
    app = rung.App("images")

    @app.task(id="resize")
    def resize(ctx: rung.Context, image: Image) -> str:
        calls[image.name] += 1
        return str(ctx.step("resize", lambda: f"{image.name}@{image.width // 2}"))

    return app


def requests_of(engine: LocalEngine) -> Counter[str]:
    """Every request the engine's clients make from now on, by operation."""
    seen: Counter[str] = Counter()

    def count(model: Any, **_: Any) -> None:
        seen[model.name] += 1

    for client in (engine.dynamodb, engine.sqs):
        client.meta.events.register("before-call", count)
    return seen


def test_items_with_their_own_options_become_runs_in_order() -> None:
    calls: Counter[str] = Counter()
    with LocalEngine(resize_app(calls)) as engine:
        results = engine.client.batch_trigger(
            "resize",
            [
                {"name": "a", "width": 100},
                rung.TriggerItem({"name": "b", "width": 200}, idempotency_key="img-b"),
                rung.TriggerItem(Image(name="c", width=300), delay=timedelta(minutes=5)),
                rung.TriggerItem({"name": "d", "width": 400}, tags=["tenant:acme"]),
            ],
        )
        assert [r.index for r in results] == [0, 1, 2, 3] and all(r.ok for r in results)
        handles = [r.handle for r in results if r.handle is not None]
        assert engine.get_run(handles[2].run_id).status == rung.RunStatus.DELAYED
        runs = [engine.wait(h.run_id) for h in handles]
        tagged = engine.list_runs(tag="tenant:acme")
    assert [r.output for r in runs] == ["a@50", "b@100", "c@150", "d@200"]
    assert all(h.created and h.task_id == "resize" for h in handles)
    assert [r.run_id for r in tagged] == [handles[3].run_id]
    assert runs[2].started_at is not None and runs[2].created_at is not None
    assert runs[2].started_at - runs[2].created_at >= timedelta(minutes=5)
    assert calls == {"a": 1, "b": 1, "c": 1, "d": 1}


def test_a_refused_item_is_reported_alone_and_nothing_is_stored_for_it() -> None:
    calls: Counter[str] = Counter()
    with LocalEngine(resize_app(calls)) as engine:
        results = engine.client.batch_trigger(
            "resize",
            [
                {"name": "ok", "width": 10},
                {"name": "no width"},
                rung.TriggerItem({"name": "bad key", "width": 1}, idempotency_key=""),
                rung.TriggerItem({"name": "bad delay", "width": 1}, delay=-3),
                rung.TriggerItem({"name": "bad tags", "width": 1}, tags="one"),
                {"name": "also ok", "width": 20},
            ],
        )
        ok = [r for r in results if r.ok]
        for result in ok:
            assert result.handle is not None
            engine.wait(result.handle.run_id)
        stored = engine.list_runs(limit=50)
    assert [r.index for r in ok] == [0, 5]
    errors = {r.index: r.error for r in results if r.error is not None}
    assert errors[1] is not None and errors[1].type == "InvalidPayload"
    assert "width" in errors[1].message
    assert {i: e.type for i, e in errors.items() if e is not None} == {
        1: "InvalidPayload",
        2: "InvalidConfig",
        3: "InvalidConfig",
        4: "InvalidConfig",
    }
    assert len(stored) == 2 and calls == {"ok": 1, "also ok": 1}


def test_idempotency_keys_match_earlier_runs_and_each_other() -> None:
    calls: Counter[str] = Counter()
    with LocalEngine(resize_app(calls)) as engine:
        first = engine.client.trigger("resize", {"name": "x", "width": 2}, idempotency_key="k")
        results = engine.client.batch_trigger(
            "resize",
            [
                rung.TriggerItem({"name": "x", "width": 2}, idempotency_key="k"),
                rung.TriggerItem({"name": "y", "width": 4}, idempotency_key="k2"),
                rung.TriggerItem({"name": "y", "width": 4}, idempotency_key="k2"),
            ],
        )
        handles = [r.handle for r in results]
        assert all(h is not None for h in handles)
        for handle in handles:
            assert handle is not None
            engine.wait(handle.run_id)
        stored = engine.list_runs(limit=50)
    assert handles[0] is not None and handles[0].run_id == first.run_id
    assert not handles[0].created
    assert handles[1] is not None and handles[2] is not None
    assert handles[1].run_id == handles[2].run_id
    assert [handles[1].created, handles[2].created] == [True, False]
    assert len(stored) == 2 and calls == {"x": 1, "y": 1}


def test_items_sharing_a_key_take_one_transaction_and_send_one_message() -> None:
    calls: Counter[str] = Counter()
    with LocalEngine(resize_app(calls), workers=0) as engine:
        seen = requests_of(engine)
        results = engine.client.batch_trigger(
            "resize",
            [rung.TriggerItem({"name": "k", "width": 2}, idempotency_key="same")] * 5,
        )
        requests = Counter(seen)
    run_ids = {r.handle.run_id for r in results if r.handle is not None}
    assert len(run_ids) == 1 and [r.handle.created for r in results if r.handle] == [
        True,
        False,
        False,
        False,
        False,
    ]
    assert requests == {"TransactWriteItems": 1, "SendMessageBatch": 1}
    assert all(r.enqueued for r in results)


@pytest.mark.parametrize(
    "items", [{"name": "a", "width": 1}, Image(name="a", width=1), {1, 2}, "abc", None]
)
def test_items_that_are_not_a_list_are_refused_whole(items: Any) -> None:
    with LocalEngine(resize_app(Counter())) as engine:
        with pytest.raises(rung.UsageError, match="needs a list of items"):
            engine.client.batch_trigger("resize", items)
        assert engine.list_runs(limit=5) == []


def test_a_bulk_write_with_an_unknown_outcome_reports_only_the_runs_really_missing() -> None:
    # A timeout after DynamoDB wrote the chunk: botocore's read timeout cannot be made to
    # happen on the emulator, so the write goes through and its answer is replaced by
    # the error a lost response raises (at the botocore layer, the request was real).
    from botocore.exceptions import ReadTimeoutError

    calls: Counter[str] = Counter()
    with LocalEngine(resize_app(calls)) as engine:
        lost = {"answers": 1}

        def lose_the_answer(model: Any, **_: Any) -> None:
            if model.name == "BatchWriteItem" and lost["answers"]:
                lost["answers"] -= 1
                raise ReadTimeoutError(endpoint_url=engine.endpoint_url)

        engine.dynamodb.meta.events.register("after-call", lose_the_answer)
        results = engine.client.batch_trigger(
            "resize", [{"name": f"t{n}", "width": n} for n in range(3)]
        )
        runs = [engine.wait(r.handle.run_id) for r in results if r.handle is not None]
    assert all(r.ok for r in results)  # read back: all three were stored
    assert [r.output for r in runs] == ["t0@0", "t1@0", "t2@1"]
    assert calls == {"t0": 1, "t1": 1, "t2": 1}


def test_a_thousand_runs_take_bulk_requests_and_a_thousand_and_one_none() -> None:
    calls: Counter[str] = Counter()
    with LocalEngine(resize_app(calls), workers=0) as engine:
        seen = requests_of(engine)
        results = engine.client.batch_trigger(
            "resize", [{"name": f"i{n}", "width": n} for n in range(1000)]
        )
        bulk = Counter(seen)
        with pytest.raises(rung.InvalidConfig, match="at most 1,000 runs"):
            engine.client.batch_trigger("resize", [{"name": "z", "width": 1}] * 1001)
        with pytest.raises(rung.UsageError, match="needs a list of items"):
            engine.client.batch_trigger("resize", {"name": "z", "width": 1})  # type: ignore[arg-type]
        with pytest.raises(rung.UnknownTask):
            engine.client.batch_trigger("nope", [{}])
        queued = engine.client.runs_in_flight()
    assert len(results) == 1000 and all(r.ok for r in results)
    assert len({r.handle.run_id for r in results if r.handle}) == 1000
    # 25 runs per BatchWriteItem, 10 messages per SendMessageBatch: 140 requests, not 2,000
    assert bulk == {"BatchWriteItem": 40, "SendMessageBatch": 100}
    assert sum(counts[rung.RunStatus.QUEUED] for counts in queued.values()) == 1000


def test_the_async_client_batch_triggers_too() -> None:
    calls: Counter[str] = Counter()
    with LocalEngine(resize_app(calls)) as engine:

        async def main() -> list[rung.TriggerResult]:
            async with rung.AsyncClient.of(engine.client) as client:
                return await client.batch_trigger("resize", [{"name": "q", "width": 8}])

        [result] = asyncio.run(main())
        assert result.handle is not None
        run = engine.wait(result.handle.run_id)
    assert run.output == "q@4"
