"""A batch of child runs wakes its parent once, by its last child's end.

Each child's end counts on the parent item in the transaction that ends the child;
the parent suspends under the condition that fewer than the whole batch ended. The
tests hand messages over on the test's thread (workers=0), so the order of events is
the test's, and count how often the parent's body ran.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest

import rung
from rung._aws.dynamodb import ParentLink
from rung._aws.dynamodb._common import _run_key
from rung._util.clock import VirtualClock
from rung.errors import LeaseLost
from rung.testing import LocalEngine
from tests.functional.test_children import drain


def batch_app(size: int, entries: Counter[str]) -> rung.App:
    app = rung.App("batch-wake")
    lock = threading.Lock()

    @app.task(id="child", retry=rung.RetryPolicy(max_attempts=1))
    def child(ctx: rung.Context, n: int) -> int:
        if n < 0:
            raise rung.NonRetryable(f"negative: {n}")
        return n * 10

    @app.task(id="slow-child")
    def slow_child(ctx: rung.Context, n: int) -> int:
        ctx.wait(timedelta(minutes=5))
        return n * 10

    @app.task(id="staggered-child")
    def staggered_child(ctx: rung.Context, n: int) -> int:
        ctx.wait(timedelta(minutes=n + 1))  # the children end a minute apart
        return n * 10

    @app.task(id="parent")
    def parent(ctx: rung.Context, kind: str) -> list[Any]:
        with lock:
            entries["parent"] += 1  # the body's executions: the first, then each wake
        results = ctx.batch_trigger_and_wait(kind, list(range(size)))
        return [r.output if r.ok else r.status for r in results]

    return app


def test_a_batch_of_20_wakes_its_parent_once_not_once_per_child() -> None:
    # The children end a (virtual) minute apart, and the one worker runs whatever is
    # due before time moves on: a parent woken by each end would run 21 times.
    entries: Counter[str] = Counter()
    with LocalEngine(batch_app(20, entries), workers=1) as engine:
        handle = engine.trigger("parent", "staggered-child")
        run = engine.wait(handle.run_id, timeout=120)
        children = engine.client.list_children(handle.run_id)
    assert run.status == rung.RunStatus.COMPLETED, run.error
    assert run.output == [n * 10 for n in range(20)]
    assert [c.status for c in children] == [rung.RunStatus.COMPLETED] * 20
    ends = sorted(c.finished_at for c in children if c.finished_at is not None)
    assert ends[-1] - ends[0] >= timedelta(minutes=19)  # they did end a minute apart
    assert entries["parent"] == 2  # suspended once, woken once by the last end


def test_a_child_that_ends_between_the_parents_read_and_its_suspension_is_counted() -> None:
    entries: Counter[str] = Counter()
    with LocalEngine(batch_app(3, entries), workers=0) as engine:
        real_get_runs = engine.store.get_runs
        raced: list[str] = []

        def get_runs_then_a_child_ends(run_ids: list[str]) -> dict[str, rung.Run]:
            seen = real_get_runs(run_ids)  # the parent sees all three unfinished ...
            if not raced:
                raced.append(run_ids[0])
                drain(engine, only=run_ids[0])  # ... and the first ends before it suspends
            return seen

        engine.store.get_runs = get_runs_then_a_child_ends  # type: ignore[method-assign]
        handle = engine.trigger("parent", "child")
        drain(engine, only=handle.run_id)
        waiting = engine.get_run(handle.run_id)
        assert engine.get_run(raced[0]).status == rung.RunStatus.COMPLETED
        drain(engine)  # the other two end; the last wakes the parent
        run = engine.get_run(handle.run_id)
    assert waiting.status == rung.RunStatus.WAITING  # it suspended: two were unfinished
    assert run.status == rung.RunStatus.COMPLETED and run.output == [0, 10, 20]
    assert entries["parent"] == 2


def test_a_batch_that_all_ended_before_the_suspension_carries_on_at_once() -> None:
    entries: Counter[str] = Counter()
    with LocalEngine(batch_app(2, entries), workers=0) as engine:
        real_get_runs = engine.store.get_runs
        raced: list[str] = []

        def get_runs_then_all_end(run_ids: list[str]) -> dict[str, rung.Run]:
            seen = real_get_runs(run_ids)
            if not raced:
                raced.extend(run_ids)
                for run_id in run_ids:
                    drain(engine, only=run_id)
            return seen

        engine.store.get_runs = get_runs_then_all_end  # type: ignore[method-assign]
        real_suspend = engine.store.suspend_run
        suspensions: list[bool] = []

        def suspend_run(*args: Any, **kwargs: Any) -> bool:
            suspensions.append(real_suspend(*args, **kwargs))
            return suspensions[-1]

        engine.store.suspend_run = suspend_run  # type: ignore[method-assign]
        handle = engine.trigger("parent", "child")
        drain(engine)
        run = engine.get_run(handle.run_id)
    assert run.status == rung.RunStatus.COMPLETED and run.output == [0, 10]
    assert suspensions == [False]  # refused: both had ended
    assert entries["parent"] == 2  # it carried on in a fresh invocation instead


def test_a_canceled_child_counts_as_ended_and_the_parent_gets_every_outcome() -> None:
    entries: Counter[str] = Counter()
    with LocalEngine(batch_app(3, entries), workers=0) as engine:
        handle = engine.trigger("parent", "slow-child")
        drain(engine, only=handle.run_id)
        drain(engine)  # the three children wait
        children = engine.client.list_children(handle.run_id)
        engine.client.cancel(children[1].run_id, reason="not needed")
        assert engine.get_run(handle.run_id).status == rung.RunStatus.WAITING
        assert isinstance(engine.clock, VirtualClock)
        engine.clock.advance(timedelta(minutes=6))
        drain(engine)
        run = engine.get_run(handle.run_id)
    assert run.status == rung.RunStatus.COMPLETED
    assert run.output == [0, "CANCELED", 20]
    assert entries["parent"] == 2


def test_a_batch_inside_a_map_wakes_the_run_as_its_children_end() -> None:
    # In a ctx.map the run waits for several things at once and is woken by any of
    # them: here a batch (branch 0) and a token nobody answers yet (branch 1; virtual
    # time never jumps to a token's deadline), so only the children can wake it.
    app = rung.App("map-batch")
    finished: list[list[int]] = []

    @app.task(id="child")
    def child(ctx: rung.Context, n: int) -> int:
        ctx.wait(timedelta(minutes=n))
        return n

    def branch(ctx: rung.Context, item: int) -> list[int]:
        if item == 0:
            values = [r.unwrap() for r in ctx.batch_trigger_and_wait(child, [1, 2])]

            def note() -> list[int]:
                finished.append(values)
                return values

            return ctx.step("note", note)
        token = ctx.create_token("go", timeout=timedelta(days=1))
        return [ctx.wait_for_token(token)]

    @app.task(id="parent")
    def parent(ctx: rung.Context, payload: None) -> list[Any]:
        return ctx.map([0, 1], branch).results()

    with LocalEngine(app, workers=2) as engine:
        handle = engine.trigger("parent")
        token = engine.wait_for_token(handle.run_id, "go", timeout=60)
        deadline = time.monotonic() + 60
        while not finished and time.monotonic() < deadline:
            time.sleep(0.02)
        assert finished == [[1, 2]]  # the batch's ends woke the run; the token is open
        engine.client.complete_token(token.id, 7)
        run = engine.wait(handle.run_id, timeout=60)
    assert run.status == rung.RunStatus.COMPLETED, run.error
    assert run.output == [[1, 2], [7]]


def test_a_batch_inside_a_map_with_no_other_wait_completes() -> None:
    entries: Counter[str] = Counter()
    app = batch_app(4, entries)

    def branch(ctx: rung.Context, item: int) -> list[Any]:
        return [r.output for r in ctx.batch_trigger_and_wait("child", list(range(4)))]

    @app.task(id="mapped")
    def mapped(ctx: rung.Context, payload: None) -> list[Any]:
        return ctx.map([0], branch).results()

    with LocalEngine(app, workers=0) as engine:
        handle = engine.trigger("mapped")
        drain(engine)
        run = engine.get_run(handle.run_id)
    assert run.status == rung.RunStatus.COMPLETED, run
    assert run.output == [[0, 10, 20, 30]]


def test_a_batch_suspension_by_a_worker_that_lost_its_lease_is_refused() -> None:
    app = rung.App("lease")

    @app.task(id="t")
    def t(ctx: rung.Context, payload: None) -> None:
        return None

    with LocalEngine(app, workers=0) as engine:
        run_id = engine.trigger("t").run_id
        claim = engine.store.claim_run(run_id, engine.clock.now(), timedelta(minutes=1))
        token = claim.token  # type: ignore[union-attr]
        with pytest.raises(LeaseLost):
            engine.store.suspend_run(
                run_id,
                token + 1,
                wake_at=None,
                waiting_for="a batch",
                now=engine.clock.now(),
                spent=timedelta(0),
                batch=("k", 2),
            )
        assert engine.get_run(run_id).status == rung.RunStatus.RUNNING


def test_a_run_that_loops_over_batches_keeps_no_counter_per_batch() -> None:
    entries: Counter[str] = Counter()
    app = batch_app(3, entries)

    @app.task(id="loop")
    def loop(ctx: rung.Context, rounds: int) -> list[list[Any]]:
        return [
            [r.output for r in ctx.batch_trigger_and_wait("child", [i, i + 1], name=f"b{i}")]
            for i in range(rounds)
        ]

    with LocalEngine(app, workers=2) as engine:
        handle = engine.trigger("loop", 5)
        run = engine.wait(handle.run_id, timeout=60)
        item = engine.dynamodb.get_item(
            TableName=engine.store.table, Key=_run_key(handle.run_id), ConsistentRead=True
        )["Item"]
    assert run.status == rung.RunStatus.COMPLETED, run.error
    assert run.output == [[10 * i, 10 * (i + 1)] for i in range(5)]
    assert [name for name in item if name.startswith("bd_")] == []  # each one dropped


def test_a_redriven_child_that_ends_twice_does_not_make_the_parent_spin() -> None:
    # Child 0 fails, then is redriven and waits 10 minutes. Its two ends are counted
    # twice, so the last of the others wakes the parent early; the parent must then
    # wait for child 0 (woken by its end), not re-run in a loop until it ends.
    app = rung.App("redrive-batch")
    broken = {"yes": True}
    entries: Counter[str] = Counter()

    @app.task(id="part", retry=rung.RetryPolicy(max_attempts=1))
    def part(ctx: rung.Context, n: int) -> int:
        if n == 0:

            def check() -> None:
                if broken["yes"]:
                    raise rung.NonRetryable("broken until fixed")

            ctx.step("check", check)
        ctx.wait(timedelta(minutes=5 if n else 10))
        return n

    @app.task(id="parent")
    def parent(ctx: rung.Context, payload: None) -> list[Any]:
        entries["parent"] += 1
        return [r.output for r in ctx.batch_trigger_and_wait(part, [0, 1, 2])]

    with LocalEngine(app, workers=0) as engine:
        assert isinstance(engine.clock, VirtualClock)
        handle = engine.trigger("parent")
        drain(engine, only=handle.run_id)
        drain(engine)  # child 0 fails (counted); 1 and 2 wait
        children = engine.client.list_children(handle.run_id)
        assert [c.status for c in children] == ["FAILED", "WAITING", "WAITING"]
        broken["yes"] = False
        engine.client.redrive(children[0].run_id)
        drain(engine)  # child 0 runs again and waits its 10 minutes
        engine.clock.advance(timedelta(minutes=6))
        drain(engine)  # 1 and 2 end: the count reaches 3 with child 0 still waiting
        waiting = engine.get_run(handle.run_id)
        woken_so_far = entries["parent"]
        engine.clock.advance(timedelta(minutes=5))
        drain(engine)  # child 0 ends and wakes the parent
        run = engine.get_run(handle.run_id)
    assert waiting.status == rung.RunStatus.WAITING  # waiting for child 0, not spinning
    assert woken_so_far == 2  # started, woken early once, then suspended again
    assert run.status == rung.RunStatus.COMPLETED and run.output == [0, 1, 2]
    assert entries["parent"] == 3


def test_children_ended_by_code_that_predates_the_count_still_wake_the_parent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A rollback (or a rolling deploy) can leave a batch's children to a worker that
    # knows nothing of batches: it ends them the plain way, waking a parent that has
    # the child in ``awaits``. No emulator can run the old code, so the worker's view
    # of the child is patched to the old one (no ``parent_batch``).
    def old_waiter(run: rung.Run) -> ParentLink | None:
        return ParentLink(run.parent_run_id) if run.parent_run_id else None  # no batch

    entries: Counter[str] = Counter()
    with LocalEngine(batch_app(3, entries), workers=0) as engine:
        handle = engine.trigger("parent", "slow-child")
        drain(engine, only=handle.run_id)  # new code: suspends for the batch
        drain(engine)
        monkeypatch.setattr(ParentLink, "of", staticmethod(old_waiter))
        assert isinstance(engine.clock, VirtualClock)
        engine.clock.advance(timedelta(minutes=6))
        drain(engine)  # old code ends the children
        run = engine.get_run(handle.run_id)
    assert run.status == rung.RunStatus.COMPLETED, run
    assert run.output == [0, 10, 20]


def test_a_batch_whose_outcomes_do_not_fit_one_checkpoint_fails_its_wait_clearly() -> None:
    app = rung.App("big-batch")

    @app.task(id="wordy")
    def wordy(ctx: rung.Context, n: int) -> str:
        return "x" * 180_000  # 60 of these are ~10.8 MB of outcomes: over 10 MiB

    @app.task(id="parent")
    def parent(ctx: rung.Context, payload: None) -> dict[str, Any]:
        try:
            ctx.batch_trigger_and_wait(wordy, list(range(60)))
        except rung.StepFailed as exc:
            return {"type": exc.error_type, "message": exc.message, "step": exc.step_id}
        return {}

    with LocalEngine(app, workers=2) as engine:
        run = engine.wait(engine.trigger("parent").run_id, timeout=120)
        children = engine.client.list_children(run.run_id)
    assert run.status == rung.RunStatus.COMPLETED and run.attempt == 1
    assert run.output["type"] == "PayloadTooLarge" and run.output["step"] == "/wordy:wait#1"
    assert "the outcomes of the 60 children of batch '/wordy:wait#1' are" in run.output["message"]
    assert "Return smaller outputs from the children" in run.output["message"]
    assert [c.status for c in children] == [rung.RunStatus.COMPLETED] * 60


def test_a_batch_over_the_size_limit_is_refused_before_any_child_starts() -> None:
    app = rung.App("huge-batch")
    errors: list[str] = []

    @app.task(id="child")
    def child(ctx: rung.Context, n: int) -> int:
        return n

    @app.task(id="parent")
    def parent(ctx: rung.Context, payload: None) -> int:
        try:
            ctx.batch_trigger_and_wait(child, list(range(1001)))
        except rung.UsageError as exc:
            errors.append(str(exc))
        return len(ctx.batch_trigger_and_wait(child, list(range(3))))

    with LocalEngine(app) as engine:
        run = engine.wait(engine.trigger("parent").run_id, timeout=60)
        children = engine.client.list_children(run.run_id)
    assert run.status == rung.RunStatus.COMPLETED and run.output == 3
    assert errors[0].startswith("ctx.batch_trigger_and_wait got 1,001 payloads; one batch")
    assert "Split the work into several batches" in errors[0]
    assert len(children) == 3  # none of the refused batch's


def test_a_batch_ended_partly_by_older_code_and_partly_by_new_code_wakes_its_parent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # One child ends through code that predates the count (it wakes the parent through
    # ``awaits``, uncounted); the parent suspends again for the other two, which end
    # through the count: the last one must still wake it, though the count falls short.
    new_waiter = ParentLink.of

    def old_waiter(run: rung.Run) -> ParentLink | None:
        return ParentLink(run.parent_run_id) if run.parent_run_id else None  # no batch

    entries: Counter[str] = Counter()
    with LocalEngine(batch_app(3, entries), workers=0) as engine:
        handle = engine.trigger("parent", "slow-child")
        drain(engine, only=handle.run_id)
        drain(engine)
        children = engine.client.list_children(handle.run_id)
        assert isinstance(engine.clock, VirtualClock)
        engine.clock.advance(timedelta(minutes=6))
        monkeypatch.setattr(ParentLink, "of", staticmethod(old_waiter))
        drain(engine, only=children[0].run_id)  # older code ends the first child
        monkeypatch.setattr(ParentLink, "of", new_waiter)
        drain(engine, only=handle.run_id)  # woken: suspends again for the other two
        assert engine.get_run(handle.run_id).status == rung.RunStatus.WAITING
        drain(engine)  # new code ends the other two
        run = engine.get_run(handle.run_id)
    assert run.status == rung.RunStatus.COMPLETED, run
    assert run.output == [0, 10, 20]


def test_a_batch_started_under_a_higher_limit_goes_on_after_the_limit_drops(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A deploy that lowers the limit must not fail runs whose batch had started: the
    # limit applies before a batch's first child exists, not on its replays.
    import rung._durable.children

    entries: Counter[str] = Counter()
    with LocalEngine(batch_app(12, entries), workers=0) as engine:
        handle = engine.trigger("parent", "slow-child")
        drain(engine, only=handle.run_id)
        drain(engine)
        monkeypatch.setattr(rung._durable.children, "MAX_BATCH", 10)
        assert isinstance(engine.clock, VirtualClock)
        engine.clock.advance(timedelta(minutes=6))
        drain(engine)
        run = engine.get_run(handle.run_id)
    assert run.status == rung.RunStatus.COMPLETED, run.error
    assert run.output == [n * 10 for n in range(12)]


def test_a_batch_timeout_cancels_the_children_not_ended_and_keeps_the_others() -> None:
    app = rung.App("batch-timeout")
    entries: Counter[str] = Counter()

    @app.task(id="part")
    def part(ctx: rung.Context, n: int) -> int:
        if n == 2:  # waits for an answer nobody gives
            ctx.wait_for_token(ctx.create_token("never", timeout=timedelta(days=7)))
        ctx.wait(timedelta(minutes=10))
        return n

    @app.task(id="parent")
    def parent(ctx: rung.Context, payload: None) -> list[Any]:
        entries["parent"] += 1
        results = ctx.batch_trigger_and_wait(part, [0, 1, 2], timeout=timedelta(hours=1))
        return [r.output if r.ok else [r.status, r.error and r.error.message] for r in results]

    with LocalEngine(app, workers=2) as engine:
        handle = engine.trigger("parent")
        deadline = time.monotonic() + 60
        while [c.status for c in engine.client.list_children(handle.run_id)] != [
            rung.RunStatus.COMPLETED,
            rung.RunStatus.COMPLETED,
            rung.RunStatus.WAITING,
        ]:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        waiting = engine.get_run(handle.run_id)
        assert isinstance(engine.clock, VirtualClock)
        engine.clock.advance(timedelta(hours=1))  # the third child's token: never answered
        run = engine.wait(handle.run_id, timeout=60)
    assert waiting.status == rung.RunStatus.WAITING
    assert waiting.waiting_for is not None and "(timeout at " in waiting.waiting_for
    assert run.status == rung.RunStatus.COMPLETED, run.error
    assert run.output[:2] == [0, 1]
    status, message = run.output[2]
    assert status == "CANCELED" and "not ended within the timeout of 1h" in message
    assert entries["parent"] == 2  # started; woken by the deadline (not by the two ends)


def test_a_batch_timeout_inside_a_map_with_a_later_timer_does_not_stall_local_time() -> None:
    # The run's one wake-up is the batch's deadline (1 h), before the other branch's
    # 2-hour wait: LocalEngine must pass the deadline on its way to the timer.
    app = rung.App("map-deadline")

    @app.task(id="asks")
    def asks(ctx: rung.Context, n: int) -> int:
        return int(ctx.wait_for_token(ctx.create_token("never", timeout=timedelta(days=7))))

    def branch(ctx: rung.Context, item: int) -> list[str]:
        if item == 0:
            results = ctx.batch_trigger_and_wait(asks, [1, 2], timeout=timedelta(hours=1))
            return [str(r.status) for r in results]
        ctx.wait(timedelta(hours=2))
        return ["waited"]

    @app.task(id="parent")
    def parent(ctx: rung.Context, payload: None) -> list[Any]:
        return ctx.map([0, 1], branch).results()

    with LocalEngine(app, workers=2) as engine:
        run = engine.wait(engine.trigger("parent").run_id, timeout=60)
    assert run.status == rung.RunStatus.COMPLETED, run.error
    assert run.output == [["CANCELED", "CANCELED"], ["waited"]]
