"""The run lifecycle on LocalEngine: cancel, replay and redrive."""

from __future__ import annotations

import threading
import time
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest

import rung
from rung._util.clock import VirtualClock
from rung.testing import LocalEngine
from tests.flavors import Flavor


def wait_for_status(engine: LocalEngine, run_id: str, status: rung.RunStatus) -> rung.Run:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        run = engine.get_run(run_id)
        if run.status == status:
            return run
        time.sleep(0.02)
    raise AssertionError(f"run {run_id} never reached {status}: {engine.get_run(run_id)}")


def in_flight(engine: LocalEngine) -> tuple[int, int]:
    """(visible, in flight) messages; delayed ones are not counted."""
    attrs = engine.sqs.get_queue_attributes(
        QueueUrl=engine.queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"]), int(
        attrs["ApproximateNumberOfMessagesNotVisible"]
    )


def wait_until_handled(engine: LocalEngine, parked: int = 0) -> None:
    """Until no message is visible and only ``parked`` ones (a waiting run's timer,
    kept invisible until it is due) are in flight: every other one was handled."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if in_flight(engine) == (0, parked):
            return
        time.sleep(0.02)
    raise AssertionError(f"the engine kept handling a message: {in_flight(engine)}")


def counting_app(calls: Counter[str], flavor: Flavor) -> rung.App:
    app = rung.App("life")

    @flavor.task(app, id="sleepy")
    async def sleepy(ctx: Any, payload: None) -> str:
        await ctx.step("before", lambda: calls.update(["before"]))
        await ctx.wait(timedelta(hours=1))
        await ctx.step("after", lambda: calls.update(["after"]))
        return "woke"

    return app


# -- cancel --------------------------------------------------------------------------------


def test_cancel_a_delayed_run_at_once_and_it_never_runs() -> None:
    calls: Counter[str] = Counter()
    # sync only: the run is canceled before its body ever runs
    with LocalEngine(counting_app(calls, Flavor("sync")), virtual_time=False) as engine:
        handle = engine.trigger("sleepy", delay=timedelta(hours=1))
        assert engine.get_run(handle.run_id).status == rung.RunStatus.DELAYED
        canceled = engine.client.cancel(handle.run_id, reason="not needed any more")
        # Its message comes (here: a duplicate now, rather than in an hour): nothing runs.
        engine.queue.send(handle.run_id)
        wait_until_handled(engine)
        run = engine.get_run(handle.run_id)
        history = engine.history(handle.run_id)
    assert canceled.status == run.status == rung.RunStatus.CANCELED
    assert run.error == rung.ErrorInfo("RunCanceled", "not needed any more")
    assert run.finished_at is not None and run.started_at is None
    assert calls == Counter()
    assert [str(e.type) for e in history] == ["RunTriggered", "RunCanceled"]


def test_cancel_a_waiting_run_at_once_and_it_never_resumes(flavor: Flavor) -> None:
    calls: Counter[str] = Counter()
    with LocalEngine(counting_app(calls, flavor), virtual_time=False) as engine:
        handle = engine.trigger("sleepy")
        wait_for_status(engine, handle.run_id, rung.RunStatus.WAITING)
        engine.client.cancel(handle.run_id)
        parked = in_flight(engine)[1]  # its timer: a message invisible for an hour
        engine.queue.send(handle.run_id)  # as if that timer fired now
        wait_until_handled(engine, parked)
        run = engine.get_run(handle.run_id)
        history = engine.history(handle.run_id)
    assert run.status == rung.RunStatus.CANCELED
    assert run.error == rung.ErrorInfo("RunCanceled", "canceled")
    assert calls == Counter({"before": 1})
    assert [str(e.type) for e in history][-1] == "RunCanceled"


def test_cancel_a_running_run_stops_it_at_the_next_step_boundary(flavor: Flavor) -> None:
    app = rung.App("stop")
    calls: Counter[str] = Counter()
    inside = threading.Event()
    release = threading.Event()

    def blocking() -> str:
        calls["b"] += 1
        inside.set()
        release.wait(10)
        return "b"

    @flavor.task(app, id="steps")
    async def steps(ctx: Any, payload: None) -> str:
        await ctx.step("a", lambda: calls.update(["a"]))
        await ctx.step("b", blocking)
        await ctx.step("c", lambda: calls.update(["c"]))
        await ctx.step("d", lambda: calls.update(["d"]))
        return "finished"

    with LocalEngine(app) as engine:
        handle = engine.trigger("steps")
        assert inside.wait(10)
        canceled = engine.client.cancel(handle.run_id, reason="stop")
        assert canceled.status == rung.RunStatus.CANCELED  # at once, while "b" still runs
        assert isinstance(engine.clock, VirtualClock)
        engine.clock.advance(timedelta(seconds=6))  # past the worker's cancel-check interval
        release.set()
        wait_until_handled(engine)
        run = engine.get_run(handle.run_id)
        recorded = engine.store.load_steps(handle.run_id)
    # The step that was executing finished; no later step started.
    assert calls == Counter({"a": 1, "b": 1})
    assert sorted(recorded) == ["/a#1", "/b#1"]
    assert run.status == rung.RunStatus.CANCELED and run.output is None
    assert run.error == rung.ErrorInfo("RunCanceled", "stop")
    assert engine.faults == []


def hold_app(flavor: Flavor) -> rung.App:
    """A tree of runs that each wait for a token (virtual time does not skip those)."""
    app = rung.App("tree")

    @flavor.task(app, id="hold")
    async def hold(ctx: Any, payload: dict[str, Any]) -> str:
        if payload.get("grandchild"):
            await ctx.trigger(hold, {"name": payload["name"] + "/grandchild"})
        token = await ctx.create_token("go")
        await ctx.wait_for_token(token)
        return f"{payload['name']} released"

    @flavor.task(app, id="parent")
    async def parent(ctx: Any, payload: None) -> Any:
        await ctx.trigger(hold, {"name": "attached", "grandchild": True})
        await ctx.trigger(hold, {"name": "detached"}, detached=True)
        return await ctx.trigger_and_wait(hold, {"name": "waited"})

    @flavor.task(app, id="forgiving")
    async def forgiving(ctx: Any, payload: None) -> dict[str, str]:
        try:
            return {"output": await ctx.trigger_and_wait(hold, {"name": "only"})}
        except rung.ChildRunFailed as exc:
            return {"status": exc.status, "type": exc.error_type, "message": exc.message}

    return app


def _by_name(engine: LocalEngine) -> dict[str, rung.Run]:
    return {r.payload["name"]: r for r in engine.list_runs(task="hold", limit=100)}


def test_cancel_cascades_to_children_and_grandchildren_but_not_detached_ones(
    flavor: Flavor,
) -> None:
    with LocalEngine(hold_app(flavor)) as engine:
        handle = engine.trigger("parent")
        wait_for_status(engine, handle.run_id, rung.RunStatus.WAITING)
        deadline = time.monotonic() + 30
        while len(_by_name(engine)) < 4 and time.monotonic() < deadline:
            time.sleep(0.02)
        tree = _by_name(engine)
        for run in tree.values():
            engine.wait_for_token(run.run_id, "go")
        detached_token = engine.wait_for_token(tree["detached"].run_id, "go")

        engine.client.cancel(handle.run_id, reason="order withdrawn")

        after = _by_name(engine)
        parent = engine.get_run(handle.run_id)
        engine.client.complete_token(detached_token.id, None)
        detached = engine.wait(tree["detached"].run_id)
        with pytest.raises(rung.TokenAlreadyResolved, match="has finished"):
            attached_token = engine.client.list_tokens(tree["attached"].run_id)[0]
            engine.client.complete_token(attached_token.id, None)
    assert parent.status == rung.RunStatus.CANCELED
    assert {name: run.status for name, run in after.items()} == {
        "attached": rung.RunStatus.CANCELED,
        "attached/grandchild": rung.RunStatus.CANCELED,
        "waited": rung.RunStatus.CANCELED,
        "detached": rung.RunStatus.WAITING,
    }
    assert after["waited"].error is not None
    assert after["waited"].error.message == (
        f"parent run {handle.run_id} was canceled: order withdrawn"
    )
    assert detached.status == rung.RunStatus.COMPLETED and detached.output == "detached released"


def test_canceling_a_child_raises_child_run_failed_in_its_waiting_parent(flavor: Flavor) -> None:
    with LocalEngine(hold_app(flavor)) as engine:
        handle = engine.trigger("forgiving")
        wait_for_status(engine, handle.run_id, rung.RunStatus.WAITING)
        [child] = engine.client.list_children(handle.run_id)
        engine.wait_for_token(child.run_id, "go")
        engine.client.cancel(child.run_id, reason="operator said so")
        run = engine.wait(handle.run_id)
    assert run.status == rung.RunStatus.COMPLETED
    assert run.output == {
        "status": "CANCELED",
        "type": "RunCanceled",
        "message": "operator said so",
    }


def test_cancel_of_a_finished_run_is_an_error_and_changes_nothing(flavor: Flavor) -> None:
    calls: Counter[str] = Counter()
    with LocalEngine(counting_app(calls, flavor)) as engine:
        handle = engine.trigger("sleepy")
        before = engine.wait(handle.run_id)
        with pytest.raises(rung.RunAlreadyFinished, match="already finished \\(COMPLETED") as info:
            engine.client.cancel(handle.run_id)
        after = engine.get_run(handle.run_id)
        with pytest.raises(rung.RunNotFound):
            engine.client.cancel("run_01NOSUCHRUN")
        canceled = engine.trigger("sleepy", delay=timedelta(days=1))
        engine.client.cancel(canceled.run_id)
        with pytest.raises(rung.RunAlreadyFinished, match="CANCELED"):
            engine.client.cancel(canceled.run_id)
    assert info.value.status == "COMPLETED" and info.value.run_id == handle.run_id
    assert after == before and after.output == "woke"


# -- replay --------------------------------------------------------------------------------


def test_replay_starts_a_new_run_with_the_same_payload(flavor: Flavor) -> None:
    app = rung.App("replay")
    calls: Counter[str] = Counter()

    @flavor.task(app, id="echo")
    async def echo(ctx: Any, payload: dict[str, Any]) -> dict[str, Any]:
        calls["echo"] += 1
        return {"got": payload}

    with LocalEngine(app) as engine:
        original = engine.wait(engine.trigger("echo", {"n": 7}, tags=["t1"]).run_id)
        handle = engine.client.replay(original.run_id)
        replayed = engine.wait(handle.run_id)
        untouched = engine.get_run(original.run_id)
        with pytest.raises(rung.RunNotFound):
            engine.client.replay("run_01NOSUCHRUN")
    assert handle.run_id != original.run_id and handle.task_id == "echo" and handle.created
    assert replayed.replay_of == original.run_id and original.replay_of is None
    assert replayed.payload == original.payload == {"n": 7}
    assert replayed.tags == ("t1",)
    assert replayed.status == rung.RunStatus.COMPLETED and replayed.output == {"got": {"n": 7}}
    assert untouched == original
    assert calls["echo"] == 2


# -- redrive -------------------------------------------------------------------------------


class Flags:
    bug = True
    fails_after_fix = 0


def redrive_app(calls: Counter[str], flags: type[Flags], flavor: Flavor) -> rung.App:
    app = rung.App("redrive")
    policy = rung.RetryPolicy(max_attempts=2, initial_interval=timedelta(seconds=1))

    def step3() -> str:
        calls["step3"] += 1
        if flags.bug:
            raise KeyError("the bug")
        if flags.fails_after_fix > 0:
            flags.fails_after_fix -= 1
            raise ConnectionError("flaky after the fix")
        return "fixed"

    @flavor.task(app, id="pipeline", retry=policy)
    async def pipeline(ctx: Any, payload: None) -> list[Any]:
        one = await ctx.step("one", lambda: calls.update(["step1"]) or 1)
        two = await ctx.step("two", lambda: calls.update(["step2"]) or 2)
        three = await ctx.step("three", step3)
        return [one, two, three, ctx.attempt]

    return app


def test_redrive_resumes_a_failed_run_from_its_failed_step_with_a_fresh_budget(
    flavor: Flavor,
) -> None:
    calls: Counter[str] = Counter()

    class flags(Flags):  # noqa: N801 - a namespace of switches
        pass

    with LocalEngine(redrive_app(calls, flags, flavor)) as engine:
        handle = engine.trigger("pipeline")
        failed = engine.wait(handle.run_id)
        assert failed.status == rung.RunStatus.FAILED and failed.attempt == 2
        assert failed.failed_step == "/three#1"
        flags.bug = False  # the fix is deployed ...
        flags.fails_after_fix = 1  # ... and step 3 fails once more (a fresh budget of 2)
        redriven = engine.client.redrive(handle.run_id)
        assert redriven.status == rung.RunStatus.QUEUED and redriven.error is None
        run = engine.wait(handle.run_id)
        history = engine.history(handle.run_id)
        with pytest.raises(rung.RunNotFailed, match="is COMPLETED, not FAILED"):
            engine.client.redrive(handle.run_id)
        unchanged = engine.get_run(handle.run_id)
    assert run.status == rung.RunStatus.COMPLETED
    assert run.output == [1, 2, "fixed", 4]  # attempts 1-2 failed, 3 retried, 4 completed
    assert calls == Counter({"step1": 1, "step2": 1, "step3": 4})
    assert unchanged == run
    assert len(run.redrives) == 1 and run.redrives[0].attempt == 2
    assert run.redrives[0].step_id == "/three#1"
    types = [(str(e.type), e.attempt, e.step) for e in history]
    # The failure before the fix stays in the history, then the redrive.
    assert types.index(("RunFailed", 2, None)) < types.index(("RunRedriven", 2, "/three#1"))
    assert ("StepFailed", 2, "/three#1") in types
    assert types[-1] == ("RunCompleted", 4, None)
    failed_error = next(e.error for e in history if str(e.type) == "RunFailed")
    assert failed_error is not None and "the bug" in failed_error.message


def test_redrive_of_a_run_failed_outside_steps_keeps_the_completed_steps(flavor: Flavor) -> None:
    app = rung.App("body")
    calls: Counter[str] = Counter()
    broken = {"yes": True}

    @flavor.task(app, id="t", retry=rung.RetryPolicy(max_attempts=1))
    async def t(ctx: Any, payload: None) -> str:
        value = await ctx.step("expensive", lambda: calls.update(["expensive"]) or "v")
        if broken["yes"]:
            raise RuntimeError("bug in the task body")
        return str(value)

    with LocalEngine(app) as engine:
        handle = engine.trigger("t")
        assert engine.wait(handle.run_id).status == rung.RunStatus.FAILED
        broken["yes"] = False
        engine.client.redrive(handle.run_id)
        run = engine.wait(handle.run_id)
        with pytest.raises(rung.RunNotFound):
            engine.client.redrive("run_01NOSUCHRUN")
    assert run.status == rung.RunStatus.COMPLETED and run.output == "v"
    assert calls == Counter({"expensive": 1})


def test_redrive_a_failed_child_then_its_parent(flavor: Flavor) -> None:
    app = rung.App("fam")
    broken = {"yes": True}

    @flavor.task(app, id="child", retry=rung.RetryPolicy(max_attempts=1))
    async def child(ctx: Any, payload: None) -> str:
        def work() -> str:
            if broken["yes"]:
                raise ValueError("child bug")
            return "child ok"

        result: str = await ctx.step("work", work)
        return result

    @flavor.task(app, id="parent", retry=rung.RetryPolicy(max_attempts=1))
    async def parent(ctx: Any, payload: None) -> str:
        return "parent got " + str(await ctx.trigger_and_wait(child, None))

    with LocalEngine(app) as engine:
        handle = engine.trigger("parent")
        assert engine.wait(handle.run_id).status == rung.RunStatus.FAILED
        [kid] = engine.client.list_children(handle.run_id)
        broken["yes"] = False
        engine.client.redrive(kid.run_id)
        assert engine.wait(kid.run_id).status == rung.RunStatus.COMPLETED
        engine.client.redrive(handle.run_id)  # its wait reads the child's new outcome
        run = engine.wait(handle.run_id)
        children = engine.client.list_children(handle.run_id)
    assert run.status == rung.RunStatus.COMPLETED and run.output == "parent got child ok"
    assert [c.run_id for c in children] == [kid.run_id]  # no second child


def test_redrive_of_a_failed_map_reruns_only_its_failed_branch(flavor: Flavor) -> None:
    app = rung.App("mapfix")
    calls: Counter[str] = Counter()
    broken = {"yes": True}

    @flavor.task(app, id="t", retry=rung.RetryPolicy(max_attempts=1))
    async def t(ctx: Any, payload: None) -> list[int]:
        async def branch(bctx: Any, item: int) -> int:
            def work() -> int:
                calls[f"work-{item}"] += 1
                if item == 1 and broken["yes"]:
                    raise ValueError("branch bug")
                return item * 10

            result: int = await bctx.step("work", work)
            return result

        batch = await ctx.map([0, 1, 2], branch, name="items")
        results: list[int] = batch.results()
        return results

    with LocalEngine(app) as engine:
        handle = engine.trigger("t")
        failed = engine.wait(handle.run_id)
        assert failed.status == rung.RunStatus.FAILED and failed.failed_step == "/items#1"
        broken["yes"] = False
        engine.client.redrive(handle.run_id)
        run = engine.wait(handle.run_id)
    assert run.status == rung.RunStatus.COMPLETED, run.error
    assert run.output == [0, 10, 20]
    # The failed branch ran again; the ones that had succeeded were replayed.
    assert calls == Counter({"work-0": 1, "work-1": 2, "work-2": 1})


def test_redrive_of_a_failed_nested_map_reruns_its_failed_inner_branch(flavor: Flavor) -> None:
    app = rung.App("nestfix")
    calls: Counter[str] = Counter()
    broken = {"yes": True}

    @flavor.task(app, id="t", retry=rung.RetryPolicy(max_attempts=1))
    async def t(ctx: Any, payload: None) -> list[list[int]]:
        async def inner(bctx: Any, item: int) -> int:
            def work() -> int:
                calls[f"work-{item}"] += 1
                if item == 3 and broken["yes"]:
                    raise ValueError("inner bug")
                return item

            result: int = await bctx.step("work", work)
            return result

        async def outer(bctx: Any, items: list[int]) -> list[int]:
            batch = await bctx.map(items, inner, name="inner")
            results: list[int] = batch.results()
            return results

        batch = await ctx.map([[0, 1], [2, 3]], outer, name="outer")
        results: list[list[int]] = batch.results()
        return results

    with LocalEngine(app) as engine:
        handle = engine.trigger("t")
        assert engine.wait(handle.run_id).status == rung.RunStatus.FAILED
        broken["yes"] = False
        engine.client.redrive(handle.run_id)
        run = engine.wait(handle.run_id)
    assert run.status == rung.RunStatus.COMPLETED, run.error
    assert run.output == [[0, 1], [2, 3]]
    assert calls == Counter({"work-0": 1, "work-1": 1, "work-2": 1, "work-3": 2})


def test_redrive_deletes_more_failed_checkpoints_than_one_transaction_holds(flavor: Flavor) -> None:
    # 60 failed branches and their 60 failed steps: 121 checkpoints to delete, past
    # DynamoDB's 100 items per transaction.
    app = rung.App("manyfix")
    calls: Counter[int] = Counter()
    broken = {"yes": True}

    @flavor.task(app, id="t", retry=rung.RetryPolicy(max_attempts=1))
    async def t(ctx: Any, payload: None) -> int:
        async def branch(bctx: Any, item: int) -> int:
            def work() -> int:
                calls[item] += 1
                if broken["yes"]:
                    raise ValueError("bug")
                return item

            result: int = await bctx.step("work", work)
            return result

        rule = rung.Completion(tolerated_failures=59)  # decided by the last failure
        batch = await ctx.map(list(range(60)), branch, name="items", completion=rule)
        return sum(batch.results())

    with LocalEngine(app) as engine:
        handle = engine.trigger("t")
        assert engine.wait(handle.run_id).status == rung.RunStatus.FAILED
        broken["yes"] = False
        engine.client.redrive(handle.run_id)
        run = engine.wait(handle.run_id)
    assert run.status == rung.RunStatus.COMPLETED, run.error
    assert run.output == sum(range(60))
    assert calls == Counter({item: 2 for item in range(60)})
