"""Retention (docs/retention.md): a finished run and its checkpoints expire after the
retention period; a running or waiting run never does. Items are read back with boto3,
time passes on the engine's virtual clock, and the sweep is the reconciler's pass."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import pytest

import rung
from rung._aws.dynamodb import DynamoStore
from rung._util.clock import VirtualClock, from_ms, iso, to_ms
from rung.testing import LocalEngine

RETENTION = timedelta(days=30)


def _app(broken: dict[str, bool]) -> rung.App:
    app = rung.App("keep")

    @app.task(id="done")
    def done(ctx: rung.Context, n: int) -> int:
        return ctx.step("one", lambda: n) + ctx.step("two", lambda: 1)

    @app.task(id="flaky", retry=rung.RetryPolicy(max_attempts=1))
    def flaky(ctx: rung.Context, n: int) -> int:
        ctx.step("fine", lambda: n)

        def check() -> int:
            if broken["yes"]:
                raise RuntimeError("bug")
            return n

        return ctx.step("check", check)

    @app.task(id="approve")
    def approve(ctx: rung.Context, n: int) -> Any:
        token = ctx.create_token("approval", timeout=timedelta(days=366))
        return ctx.wait_for_token(token)

    @app.task(id="batch")
    def batch(ctx: rung.Context, n: int) -> list[Any]:
        return [r.output for r in ctx.batch_trigger_and_wait("mixed", [0, 1])]

    @app.task(id="mixed")
    def mixed(ctx: rung.Context, n: int) -> Any:
        if n:
            return ctx.wait_for_token(ctx.create_token("late", timeout=timedelta(days=366)))
        return n

    return app


def items_of(engine: LocalEngine, run_id: str) -> dict[str, dict[str, Any]]:
    """Every item under the run's partition key, by sort key."""
    out = engine.dynamodb.query(
        TableName=engine.table_name,
        KeyConditionExpression="pk = :pk",
        ExpressionAttributeValues={":pk": {"S": f"RUN#{run_id}"}},
        ConsistentRead=True,
    )
    return {item["sk"]["S"]: item for item in out["Items"]}


def advance(engine: LocalEngine, delta: timedelta) -> None:
    assert isinstance(engine.clock, VirtualClock)
    engine.clock.advance(delta)


def item(engine: LocalEngine, pk: str, sk: str) -> dict[str, Any] | None:
    key = {"pk": {"S": pk}, "sk": {"S": sk}}
    found = engine.dynamodb.get_item(TableName=engine.table_name, Key=key, ConsistentRead=True)
    return found.get("Item")  # type: ignore[no-any-return]


def run_item(engine: LocalEngine, run_id: str) -> dict[str, Any]:
    return items_of(engine, run_id)["#RUN"]


def test_a_finished_run_expires_and_its_items_are_swept_but_a_waiting_run_never() -> None:
    with LocalEngine(_app({"yes": False}), retention=RETENTION) as engine:
        finished = engine.wait(engine.trigger("done", 1, idempotency_key="k1").run_id)
        waiting = engine.trigger("approve", 2).run_id
        engine.wait_for_token(waiting, "approval")
        # The finished run's item carries the TTL attribute; its expiry is on the run.
        assert finished.finished_at is not None
        assert finished.expires_at == finished.finished_at + RETENTION
        ttl = int(run_item(engine, finished.run_id)["expires_at"]["N"])
        assert finished.finished_at + RETENTION < from_ms(ttl * 1000)  # a grace after it
        assert len(items_of(engine, finished.run_id)) == 3  # the run and its two steps
        # A waiting run carries none, however long it waits: a year later, after sweeps.
        for days in (31, 334):
            advance(engine, timedelta(days=days))
            assert engine.reconcile().expired.runs == (1 if days == 31 else 0)
        still = engine.get_run(waiting)
        assert still.status == rung.RunStatus.WAITING and still.expires_at is None
        assert all("expires_at" not in item for item in items_of(engine, waiting).values())
        # The finished run's items are gone (the sweep deleted them), and reading it
        # says that it expired, when it finished and for how long runs are kept.
        assert items_of(engine, finished.run_id) == {}
        assert item(engine, "IDEM#done#k1", "#IDEM") is None  # its idempotency key too
        with pytest.raises(rung.RunExpired) as expired:
            engine.get_run(finished.run_id)
        assert isinstance(expired.value, rung.RunNotFound)
        message = str(expired.value)
        assert finished.run_id in message and "30 days" in message
        assert iso(finished.created_at)[:10] in message
        with pytest.raises(rung.RunExpired):
            engine.history(finished.run_id)
        # The waiting run, answered at last, finishes and starts its own retention.
        token = engine.wait_for_token(waiting, "approval")
        engine.client.complete_token(token.id, "ok")
        answered = engine.wait(waiting)
        assert answered.status == rung.RunStatus.COMPLETED
        assert answered.expires_at == answered.finished_at + RETENTION  # type: ignore[operator]
        advance(engine, RETENTION + timedelta(minutes=10))
        assert engine.reconcile().expired.runs == 1
        assert items_of(engine, waiting) == {}
        assert item(engine, f"TOKEN#{token.id}", "#TOKEN") is None  # and its token


def test_a_run_past_its_retention_is_expired_before_the_sweep_and_not_listed() -> None:
    with LocalEngine(_app({"yes": False}), retention=RETENTION) as engine:
        old = engine.wait(engine.trigger("done", 1).run_id)
        advance(engine, timedelta(days=20))
        young = engine.wait(engine.trigger("done", 2).run_id)
        advance(engine, timedelta(days=10, minutes=1))
        # No sweep yet: the item is still stored (as after DynamoDB's TTL lag).
        assert "#RUN" in items_of(engine, old.run_id)
        with pytest.raises(
            rung.RunExpired, match=r"finished \(COMPLETED\) at .* kept for .*30 days"
        ):
            engine.get_run(old.run_id)
        with pytest.raises(rung.RunExpired):
            engine.client.replay(old.run_id)
        listed = [r.run_id for r in engine.list_runs()]
        assert listed == [young.run_id]
        assert engine.get_run(young.run_id).status == rung.RunStatus.COMPLETED


def test_redrive_clears_the_expiry_and_an_expired_run_cannot_be_redriven() -> None:
    broken = {"yes": True}
    with LocalEngine(_app(broken), retention=RETENTION) as engine:
        first = engine.wait(engine.trigger("flaky", 1).run_id)
        second = engine.wait(engine.trigger("flaky", 2).run_id)
        assert first.status == rung.RunStatus.FAILED and first.expires_at is not None
        assert "expires_at" in run_item(engine, first.run_id)
        broken["yes"] = False
        redriven = engine.client.redrive(first.run_id)
        assert redriven.expires_at is None
        assert "expires_at" not in run_item(engine, first.run_id)
        done = engine.wait(first.run_id)
        assert done.expires_at == done.finished_at + RETENTION  # type: ignore[operator]
        advance(engine, RETENTION + timedelta(minutes=1))
        with pytest.raises(rung.RunExpired, match="expired"):
            engine.client.redrive(second.run_id)


def test_runs_stored_before_retention_stay_readable_after_the_upgrade() -> None:
    with LocalEngine(_app({"yes": False}), retention=RETENTION) as engine:
        run = engine.wait(engine.trigger("done", 1).run_id)
        # The item as a rung without retention stored it: no expiry, due when claimed.
        engine.dynamodb.update_item(
            TableName=engine.table_name,
            Key={"pk": {"S": f"RUN#{run.run_id}"}, "sk": {"S": "#RUN"}},
            UpdateExpression="SET available_at = :created REMOVE expires_at, expires_at_ms",
            ExpressionAttributeValues={":created": {"N": str(int(run.created_at.timestamp()))}},
        )
        advance(engine, timedelta(days=90))
        assert engine.get_run(run.run_id).output == 2
        before = engine.clock.now()
        engine.reconcile()  # the first sweep after the upgrade: it is kept a retention more
        after = engine.clock.now()
        adopted = engine.get_run(run.run_id)
        assert adopted.output == 2 and adopted.expires_at is not None
        ms = timedelta(milliseconds=1)  # stored in epoch ms
        assert before + RETENTION - ms <= adopted.expires_at <= after + RETENTION
        assert len(items_of(engine, run.run_id)) == 3
        advance(engine, RETENTION + timedelta(minutes=10))
        engine.reconcile()
        assert items_of(engine, run.run_id) == {}
        with pytest.raises(rung.RunExpired):
            engine.get_run(run.run_id)


def test_retention_outside_one_day_to_ten_years_is_refused() -> None:
    app = _app({"yes": False})
    with pytest.raises(rung.InvalidConfig, match="retention"):
        LocalEngine(app, retention=timedelta(hours=1))
    with pytest.raises(rung.InvalidConfig, match="retention"):
        LocalEngine(app, retention=timedelta(days=3651))


def until(check: Any, what: str) -> Any:
    """Poll ``check()`` until it returns something truthy (at most 30 s)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.02)
    raise AssertionError(f"never: {what}")


def test_a_child_is_kept_while_its_parent_still_waits_to_read_it() -> None:
    with LocalEngine(_app({"yes": False}), retention=RETENTION, workers=2) as engine:
        parent = engine.trigger("batch", 0).run_id
        first, second = until(
            lambda: len(c := engine.client.list_children(parent)) == 2 and c, "two children"
        )
        token = engine.wait_for_token(second.run_id, "late")
        assert engine.wait(first.run_id).output == 0
        until(lambda: engine.get_run(parent).status == rung.RunStatus.WAITING, "parent waits")
        advance(engine, RETENTION + timedelta(days=1))
        # The first child is past its retention, but its parent reads its outcome when
        # the batch ends: the sweep keeps it a retention more.
        assert engine.reconcile().expired.kept == 1
        kept = engine.get_run(first.run_id)
        assert kept.expires_at is not None and kept.expires_at > engine.clock.now()
        engine.client.complete_token(token.id, "late answer")
        done = engine.wait(parent)
    assert done.status == rung.RunStatus.COMPLETED
    assert done.output == [0, "late answer"]


def test_a_table_with_the_old_indexes_is_swept_through_them() -> None:
    with LocalEngine(_app({"yes": False}), retention=RETENTION) as engine:
        run = engine.wait(engine.trigger("done", 1).run_id)
        # A table as rungs before the sharded indexes created it, holding this run's items
        # as a rung without retention stored them (no expiry).
        old = DynamoStore(engine.dynamodb, engine.table_name + "-old", RETENTION)
        old.create_table(legacy=True)
        for stored in items_of(engine, run.run_id).values():
            for name in ("expires_at", "expires_at_ms", "status_shard", "task_shard"):
                stored.pop(name, None)
            engine.dynamodb.put_item(TableName=old.table, Item=stored)
        later = from_ms(to_ms(engine.clock.now() + timedelta(days=90)))  # (stored in ms)
        assert old.live_run(run.run_id, later).output == 2
        assert old.sweep_expired(later, 100).kept == 1  # kept a retention from now on
        assert old.live_run(run.run_id, later).expires_at == later + RETENTION
        assert old.sweep_expired(later + RETENTION, 100).runs == 0  # (the 5-minute margin)
        assert old.sweep_expired(later + RETENTION + timedelta(minutes=6), 100).runs == 1
        with pytest.raises(rung.RunExpired):
            old.live_run(run.run_id, later + RETENTION)
        left = engine.dynamodb.scan(TableName=old.table, Select="COUNT")["Count"]
    assert left == 0
