"""ctx.map and ctx.parallel end to end on LocalEngine, with skipped time."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, TypeVar

import pytest

import rung
import rung._engine.worker
from rung._util.clock import VirtualClock
from rung.models import EventType
from rung.testing import LocalEngine, SimulatedCrash
from tests.flavors import Flavor

ONCE = rung.RetryPolicy(max_attempts=1)
FAST = rung.RetryPolicy(max_attempts=3, initial_interval=1, backoff=2.0, max_interval=60)
FAILING = {7, 23, 61}
T = TypeVar("T")


class Calls:
    """A thread-safe tally of what ran (branches run on several threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: Counter[Any] = Counter()

    def add(self, key: Any) -> None:
        with self._lock:
            self.counts[key] += 1

    def __getitem__(self, key: Any) -> int:
        with self._lock:
            return self.counts[key]


def summary(batch: rung.BatchResult[Any]) -> dict[str, Any]:
    return {
        "statuses": [item.status for item in batch.items],
        "indexes": [item.index for item in batch.items],
        "results": batch.results(),
        "errors": {
            str(item.index): f"{item.error.type}: {item.error.message}"
            for item in batch.items
            if item.error is not None
        },
        "counts": [batch.succeeded, batch.failed, batch.skipped],
    }


def nap(seconds: float, value: T) -> T:
    time.sleep(seconds)
    return value


def step_ids(engine: LocalEngine, run_id: str, kind: EventType) -> list[str]:
    return [e.step for e in engine.history(run_id) if e.type == kind and e.step is not None]


def _hundred_items_app(
    flavor: Flavor, calls: Calls, completion: rung.Completion, cap: int | None
) -> rung.App:
    app = rung.App("par")

    async def work(ctx: Any, item: int) -> int:
        calls.add(item)
        if item in FAILING:
            raise ValueError(f"item {item} is broken")
        doubled: int = await ctx.step("double", lambda: item * 2)
        return doubled

    @flavor.task(app, id="hundred", retry=ONCE)
    async def hundred(ctx: Any, payload: None) -> dict[str, Any]:
        try:
            batch = await ctx.map(
                list(range(100)), work, max_concurrency=cap, completion=completion
            )
        except rung.BatchFailed as exc:  # a StepFailed: catchable in the task body
            return {"caught": exc.message, "step_id": exc.step_id, **summary(exc.result)}
        return summary(batch)

    return app


def test_a_map_of_100_items_where_3_fail_completes_under_a_tolerance_of_5(
    flavor: Flavor,
) -> None:
    calls = Calls()
    app = _hundred_items_app(flavor, calls, rung.Completion(tolerated_failures=5), None)
    with LocalEngine(app) as engine:
        run = engine.wait(engine.trigger("hundred").run_id, timeout=60)
        started = step_ids(engine, run.run_id, EventType.STEP_STARTED)
    assert run.status == rung.RunStatus.COMPLETED, run.error
    out = run.output
    assert out["indexes"] == list(range(100))  # input order
    assert [i for i, s in enumerate(out["statuses"]) if s == "failed"] == sorted(FAILING)
    assert out["results"] == [i * 2 for i in range(100) if i not in FAILING]
    assert out["errors"] == {str(i): f"ValueError: item {i} is broken" for i in FAILING}
    assert out["counts"] == [97, 3, 0]
    # Each item's function ran exactly once.
    assert calls.counts == Counter(range(100))
    # The batch, every branch and every branch's step show in the history.
    assert "/map#1" in started
    assert {f"/map#1[{i}]" for i in range(100)} <= set(started)
    assert {f"/map#1[{i}]/double#1" for i in range(100) if i not in FAILING} <= set(started)


def test_a_map_over_its_tolerance_raises_batch_failed_and_skips_unstarted_items(
    flavor: Flavor,
) -> None:
    calls = Calls()
    # One branch at a time: the third failure (item 61) decides; 62..99 never start.
    app = _hundred_items_app(flavor, calls, rung.Completion(tolerated_failures=2), 1)
    with LocalEngine(app) as engine:
        run = engine.wait(engine.trigger("hundred").run_id, timeout=60)
    assert run.status == rung.RunStatus.COMPLETED, run.error
    out = run.output
    assert out["step_id"] == "/map#1"
    assert "3 of 100 items failed, more than the 2 tolerated" in out["caught"]
    assert "first failure: item 7: ValueError: item 7 is broken" in out["caught"]
    assert out["counts"] == [59, 3, 38]
    assert out["statuses"][62:] == ["skipped"] * 38
    assert out["errors"] == {str(i): f"ValueError: item {i} is broken" for i in FAILING}
    assert calls.counts == Counter(range(62))


def test_an_uncaught_batch_failure_fails_the_run_and_names_the_first_failure(
    flavor: Flavor,
) -> None:
    app = rung.App("par")

    async def check(ctx: Any, item: str) -> str:
        if item == "b":
            raise KeyError("no such sku")
        return item

    @flavor.task(app, id="strict", retry=ONCE)
    async def strict(ctx: Any, payload: None) -> list[str]:
        batch: rung.BatchResult[str] = await ctx.map(
            ["a", "b", "c"], check, name="skus", max_concurrency=1
        )
        return batch.results()

    with LocalEngine(app) as engine:
        run = engine.wait(engine.trigger("strict").run_id)
    assert run.status == rung.RunStatus.FAILED
    assert run.error is not None and run.error.type == "BatchFailed"
    assert "step '/skus#1' failed" in run.error.message
    assert "1 of 3 items failed" in run.error.message
    assert "every item must succeed" in run.error.message
    assert "first failure: item 1: KeyError" in run.error.message
    assert "1 skipped" in run.error.message  # "c" never started


def test_min_successes_stops_the_map_after_that_many_successes(flavor: Flavor) -> None:
    app = rung.App("par")
    calls = Calls()

    async def probe(ctx: Any, item: int) -> str:
        calls.add(item)
        if item == 3:
            raise TimeoutError("mirror down")
        return f"mirror-{item}"

    @flavor.task(app, id="mirrors", retry=ONCE)
    async def mirrors(ctx: Any, payload: None) -> dict[str, Any]:
        completion = rung.Completion(min_successes=10)
        return summary(
            await ctx.map(list(range(30)), probe, max_concurrency=1, completion=completion)
        )

    with LocalEngine(app) as engine:
        run = engine.wait(engine.trigger("mirrors").run_id)
    assert run.status == rung.RunStatus.COMPLETED, run.error
    out = run.output
    assert out["counts"] == [10, 1, 19]  # the failure was tolerated: 10 were reachable
    assert out["results"] == [f"mirror-{i}" for i in range(11) if i != 3]
    assert out["statuses"][11:] == ["skipped"] * 19
    assert calls.counts == Counter(range(11))


def test_max_concurrency_caps_the_branches_running_at_once_and_is_reached(flavor: Flavor) -> None:
    # The barrier is in the plain step function: threads in both flavors (an async
    # task's loop runs plain step functions on its pool).
    app = rung.App("par")
    spans: dict[int, tuple[float, float]] = {}
    first_three = threading.Barrier(3, timeout=60)  # passes only if 3 run at once

    def work(item: int) -> int:
        if item < 3:
            first_three.wait()
        return nap(0.02, item)

    async def slow(ctx: Any, item: int) -> int:
        start = time.monotonic()
        value: int = await ctx.step("sleep", work, item)
        spans[item] = (start, time.monotonic())
        return value

    @flavor.task(app, id="capped")
    async def capped(ctx: Any, payload: None) -> list[int]:
        batch: rung.BatchResult[int] = await ctx.map(list(range(12)), slow, max_concurrency=3)
        return batch.results()

    with LocalEngine(app) as engine:
        run = engine.wait(engine.trigger("capped").run_id)
    assert run.output == list(range(12))
    assert len(spans) == 12
    # The most branches running at any moment: count the spans open at each start.
    overlap = max(
        sum(1 for s, e in spans.values() if s <= start < e) for start, _ in spans.values()
    )
    assert overlap <= 3  # the cap held (and the barrier shows it was reached)
    assert not first_three.broken


def test_a_branch_that_waits_suspends_the_run_and_finished_branches_are_not_rerun(
    flavor: Flavor,
) -> None:
    app = rung.App("par")
    calls = Calls()

    async def item_fn(ctx: Any, item: int) -> str:
        calls.add(("fn", item))
        await ctx.step("before", lambda: calls.add(("before", item)))
        if item == 2:
            await ctx.wait(timedelta(hours=1))
        await ctx.step("after", lambda: calls.add(("after", item)))
        return f"done-{item}"

    @flavor.task(app, id="waits")
    async def waits(ctx: Any, payload: None) -> list[str]:
        batch: rung.BatchResult[str] = await ctx.map(list(range(5)), item_fn, max_concurrency=2)
        return batch.results()

    with LocalEngine(app) as engine:
        run = engine.wait(engine.trigger("waits").run_id)
        history = engine.history(run.run_id)
    assert run.status == rung.RunStatus.COMPLETED, run.error
    assert run.output == [f"done-{i}" for i in range(5)]
    # The finished branches ran once; the waiting one ran again after the wait,
    # replaying its first step.
    assert [calls[("fn", i)] for i in range(5)] == [1, 1, 2, 1, 1]
    assert [calls[("before", i)] for i in range(5)] == [1] * 5
    assert [calls[("after", i)] for i in range(5)] == [1] * 5
    # The run suspended (no attempt spent, no compute while waiting) and resumed.
    assert run.attempt == 1
    assert run.finished_at is not None and run.started_at is not None
    assert run.finished_at - run.started_at >= timedelta(hours=1)
    assert run.compute_time < timedelta(minutes=1)
    waited = [
        (e.type, e.step)
        for e in history
        if e.type in (EventType.WAIT_STARTED, EventType.WAIT_ENDED)
    ]
    assert waited == [
        (EventType.WAIT_STARTED, "/map#1[2]/wait#1"),
        (EventType.WAIT_ENDED, "/map#1[2]/wait#1"),
    ]


def test_tokens_inside_branches_suspend_the_run_until_each_is_answered(flavor: Flavor) -> None:
    app = rung.App("par")
    calls = Calls()

    async def approve(ctx: Any, item: str) -> Any:
        calls.add(("fn", item))
        if item.startswith("big"):
            token = await ctx.create_token(f"approve-{item}", timeout=timedelta(days=2))
            await ctx.step("ask", lambda: calls.add(("ask", item)))
            return await ctx.wait_for_token(token)
        await ctx.step("auto", lambda: calls.add(("auto", item)))
        return "auto-approved"

    @flavor.task(app, id="approvals")
    async def approvals(ctx: Any, payload: None) -> list[Any]:
        batch: rung.BatchResult[Any] = await ctx.map(
            ["small-1", "big-1", "small-2", "big-2"], approve
        )
        return batch.results()

    with LocalEngine(app) as engine:
        handle = engine.trigger("approvals")
        first = engine.wait_for_token(handle.run_id, "approve-big-1")
        waiting = engine.get_run(handle.run_id)
        assert waiting.status == rung.RunStatus.WAITING
        assert waiting.waiting_for is not None and "1 more waiting branches" in waiting.waiting_for
        open_tokens = {t.name for t in engine.client.list_tokens(handle.run_id)}
        assert open_tokens == {"approve-big-1", "approve-big-2"}
        engine.client.complete_token(first.id, "yes from ana")
        second = engine.wait_for_token(handle.run_id, "approve-big-2")
        engine.client.complete_token(second.id, "yes from bo")
        run = engine.wait(handle.run_id)
    assert run.status == rung.RunStatus.COMPLETED, run.error
    assert run.output == ["auto-approved", "yes from ana", "auto-approved", "yes from bo"]
    # Finished branches were never called again; steps before the waits ran once.
    assert calls[("fn", "small-1")] == 1 and calls[("fn", "small-2")] == 1
    assert calls[("auto", "small-1")] == 1 and calls[("auto", "small-2")] == 1
    assert calls[("ask", "big-1")] == 1 and calls[("ask", "big-2")] == 1
    assert calls[("fn", "big-1")] >= 2 and calls[("fn", "big-2")] >= 2


@pytest.mark.parametrize("checked", [99, 0], ids=["in-the-transaction", "read-after"])
def test_a_token_answered_before_the_run_suspends_is_not_missed(
    checked: int, monkeypatch: pytest.MonkeyPatch, flavor: Flavor
) -> None:
    # A suspension checks at most SUSPEND_TOKEN_CHECKS tokens in its transaction and
    # reads the rest after it; both ways a completion that came first wakes the run.
    monkeypatch.setattr(rung._engine.worker, "SUSPEND_TOKEN_CHECKS", checked)
    app = rung.App("par")
    clients: list[rung.Client] = []
    tokens: list[str] = []

    async def waiter(ctx: Any) -> Any:
        token = await ctx.create_token("early", timeout=timedelta(days=1))
        tokens.append(token.id)
        return await ctx.wait_for_token(token)

    async def answerer(ctx: Any) -> str:
        # Runs after the waiter suspended (one branch at a time), before the run does.
        await ctx.step("answer", lambda: bool(clients[0].complete_token(tokens[0], "early bird")))
        return "answered"

    @flavor.task(app, id="race")
    async def race(ctx: Any, payload: None) -> list[Any]:
        batch: rung.BatchResult[Any] = await ctx.parallel([waiter, answerer], max_concurrency=1)
        return batch.results()

    with LocalEngine(app) as engine:
        clients.append(engine.client)
        run = engine.wait(engine.trigger("race").run_id, timeout=30)
    assert run.status == rung.RunStatus.COMPLETED, run.error
    assert run.output == ["early bird", "answered"]


def test_a_failing_branch_step_is_retried_and_other_branches_do_not_run_again(
    flavor: Flavor,
) -> None:
    app = rung.App("par")
    calls = Calls()

    async def work(ctx: Any, item: int) -> int:
        calls.add(("fn", item))

        def call() -> int:
            calls.add(item)
            if item == 4 and calls[item] == 1:
                raise ConnectionError("gateway timeout")
            return item + 100

        result: int = await ctx.step("work", call)
        return result

    @flavor.task(app, id="retry", retry=FAST)
    async def retry(ctx: Any, payload: None) -> list[int]:
        batch: rung.BatchResult[int] = await ctx.map(list(range(8)), work, max_concurrency=2)
        return batch.results()

    with LocalEngine(app) as engine:
        run = engine.wait(engine.trigger("retry").run_id)
        history = engine.history(run.run_id)
    assert run.status == rung.RunStatus.COMPLETED, run.error
    assert run.output == [i + 100 for i in range(8)]
    # The step ran twice; finished branches were not called again (only the retried
    # one replayed, and its step is the only one that ran again).
    assert [calls[i] for i in range(8)] == [1, 1, 1, 1, 2, 1, 1, 1]
    assert [calls[("fn", i)] for i in range(8)] == [1, 1, 1, 1, 2, 1, 1, 1]
    assert run.attempt == 2  # the run backed off as a whole, once
    failed = [e.step for e in history if e.type == EventType.STEP_FAILED]
    assert failed == ["/map#1[4]/work#1"]
    assert [e.delay for e in history if e.type == EventType.RETRY_SCHEDULED] == [
        timedelta(seconds=1)
    ]


def test_step_functions_called_in_branch_code_are_checkpointed_in_the_branch_scope(
    flavor: Flavor,
) -> None:
    app = rung.App("par")
    calls = Calls()

    async def fetch_price(sku: str) -> dict[str, str]:
        calls.add(sku)
        assert rung.current_step().step_id.startswith("/prices#1[")
        return {"sku": sku, "price": f"{len(sku)}.00"}

    fetch = flavor.step(fetch_price, name="fetch")

    async def price(ctx: Any, sku: str) -> str:
        first = await fetch(sku)
        again = await fetch(sku + "-x")
        return f"{first['price']}/{again['price']}"

    @flavor.task(app, id="prices")
    async def prices(ctx: Any, payload: None) -> list[str]:
        batch: rung.BatchResult[str] = await ctx.map(["ab", "abc"], price, name="prices")
        return batch.results()

    with LocalEngine(app) as engine:
        run = engine.wait(engine.trigger("prices").run_id)
        succeeded = step_ids(engine, run.run_id, EventType.STEP_SUCCEEDED)
    assert run.output == ["2.00/4.00", "3.00/5.00"]
    assert sorted(succeeded) == [
        "/prices#1",
        "/prices#1[0]",
        "/prices#1[0]/fetch#1",
        "/prices#1[0]/fetch#2",
        "/prices#1[1]",
        "/prices#1[1]/fetch#1",
        "/prices#1[1]/fetch#2",
    ]
    assert calls.counts == Counter({"ab": 1, "ab-x": 1, "abc": 1, "abc-x": 1})


def test_parallel_returns_results_in_input_order(flavor: Flavor) -> None:
    app = rung.App("par")

    async def slowest(ctx: Any) -> str:
        a: str = await ctx.step("a", lambda: nap(0.2, "a"))
        return a

    async def slower(ctx: Any) -> str:
        b: str = await ctx.step("b", lambda: nap(0.1, "b"))
        return b

    async def fast(ctx: Any) -> str:
        c: str = await ctx.step("c", lambda: "c")
        return c

    @flavor.task(app, id="fanout")
    async def fanout(ctx: Any, payload: None) -> dict[str, Any]:
        batch = await ctx.parallel([slowest, slower, fast])
        return {"results": batch.results(), "indexes": [i.index for i in batch.items]}

    with LocalEngine(app) as engine:
        run = engine.wait(engine.trigger("fanout").run_id)
        ended = step_ids(engine, run.run_id, EventType.STEP_SUCCEEDED)
    assert run.output == {"results": ["a", "b", "c"], "indexes": [0, 1, 2]}
    assert {"/parallel#1[0]/a#1", "/parallel#1[1]/b#1", "/parallel#1[2]/c#1"} <= set(ended)


def test_nested_batches_groups_and_repeated_names_never_collide(flavor: Flavor) -> None:
    app = rung.App("par")

    async def leaf(ctx: Any, item: int) -> int:
        value: int = await ctx.step("leaf", lambda: item)
        return value

    async def outer(ctx: Any, item: int) -> int:
        with ctx.group("g"):
            await ctx.step("leaf", lambda: -1)
        inner: rung.BatchResult[int] = await ctx.map([item * 10, item * 10 + 1], leaf, name="m")
        return sum(inner.results())

    @flavor.task(app, id="nested")
    async def nested(ctx: Any, payload: None) -> list[Any]:
        with ctx.group("g"):
            grouped = (await ctx.map([1, 2], leaf, name="m")).results()
        first = (await ctx.map([0, 1], outer, name="m")).results()
        second = (await ctx.map([5], leaf, name="m")).results()  # same name, same scope
        return [grouped, first, second]

    with LocalEngine(app) as engine:
        run = engine.wait(engine.trigger("nested").run_id)
        succeeded = step_ids(engine, run.run_id, EventType.STEP_SUCCEEDED)
    assert run.status == rung.RunStatus.COMPLETED, run.error
    assert run.output == [[1, 2], [1, 21], [5]]
    assert len(succeeded) == len(set(succeeded))  # every checkpoint id is unique
    assert {
        "g/m#1",
        "g/m#1[0]/leaf#1",
        "g/m#1[1]/leaf#1",
        "/m#1",  # the top-level "m" map (the grouped one is g/m#1)
        "/m#1[0]/g/leaf#1",
        "/m#1[0]/m#1",
        "/m#1[0]/m#1[0]/leaf#1",
        "/m#1[1]/m#1[1]/leaf#1",
        "/m#2",
        "/m#2[0]/leaf#1",
    } <= set(succeeded)


def test_a_crash_in_one_branch_replays_identically_and_completed_steps_do_not_rerun(
    flavor: Flavor,
) -> None:
    app = rung.App("par")
    calls = Calls()

    async def work(ctx: Any, item: int) -> str:
        calls.add(("fn", item))
        await ctx.step("prepare", lambda: calls.add(("prepare", item)))

        def risky() -> str:
            calls.add(("risky", item))
            if item == 2 and calls[("risky", item)] == 1:
                raise SimulatedCrash()  # the worker dies here, mid-step
            return f"ok-{item}"

        result: str = await ctx.step("risky", risky)
        return result

    @flavor.task(app, id="crashy", retry=FAST)
    async def crashy(ctx: Any, payload: None) -> list[str]:
        batch: rung.BatchResult[str] = await ctx.map(list(range(6)), work, max_concurrency=2)
        return batch.results()

    with LocalEngine(app, lease_duration=timedelta(seconds=5)) as engine:
        run = engine.wait(engine.trigger("crashy").run_id, timeout=60)
        history = engine.history(run.run_id)
        faults = list(engine.faults)
    assert run.status == rung.RunStatus.COMPLETED, run.error
    assert run.output == [f"ok-{i}" for i in range(6)]
    assert run.attempt == 2
    assert [type(f.error) for f in faults] == [SimulatedCrash]
    assert EventType.WORKER_LOST in [e.type for e in history]
    assert [calls[("prepare", i)] for i in range(6)] == [1] * 6
    assert [calls[("risky", i)] for i in range(6)] == [1, 1, 2, 1, 1, 1]
    # Branches that finished before the crash were not called again.
    assert [calls[("fn", i)] for i in range(6)] == [1, 1, 2, 1, 1, 1]


def test_batch_argument_errors_are_clear(flavor: Flavor) -> None:
    app = rung.App("par")
    errors: list[str] = []

    async def echo(ctx: Any, item: Any) -> Any:
        return item

    async def first_fn(ctx: Any) -> int:
        return 1

    @flavor.task(app, id="bad", retry=ONCE)
    async def bad(ctx: Any, payload: None) -> dict[str, Any]:
        attempts: list[Callable[[], Awaitable[object]]] = [
            lambda: ctx.map("abc", echo),
            lambda: ctx.map({"b", "a"}, echo),
            lambda: ctx.map([1], "echo"),
            lambda: ctx.map([1], echo, max_concurrency=0),
            lambda: ctx.map(range(10_001), echo),
            lambda: ctx.map([1], echo, completion=rung.Completion(min_successes=2)),
            lambda: ctx.parallel([first_fn, 3]),
            lambda: ctx.map([1], echo, name="a/b"),
        ]
        for call in attempts:
            try:
                await call()
            except rung.RungError as exc:
                errors.append(str(exc))

        async def nested_map() -> Any:
            return await ctx.map([1], echo)

        try:  # a batch in a step (an async step function in an async task)
            await flavor.step(nested_map, name="inner", retry=ONCE)()
        except rung.StepFailed as exc:
            errors.append(exc.message)

        async def uses_the_task_ctx(branch: Any, item: int) -> int:
            value: int = await ctx.step("wrong", lambda: item)
            return value

        branch = ""
        try:  # misuse in a branch is not a branch failure to tolerate: it ends the map
            await ctx.map([1], uses_the_task_ctx, completion=rung.Completion(tolerated_failures=1))
        except rung.UsageError as exc:
            branch = str(exc)
        leaked: list[Any] = []

        async def leak(branch: Any, item: int) -> None:
            leaked.append(branch)

        await ctx.map([1], leak, name="leak")
        try:
            await leaked[0].step("late", lambda: 1)
        except rung.UsageError as exc:
            errors.append(str(exc))
        return {
            "errors": errors,
            "branch": branch,
        }

    with LocalEngine(app) as engine:
        run = engine.wait(engine.trigger("bad").run_id)
    assert run.status == rung.RunStatus.COMPLETED, run.error
    out = run.output["errors"]
    assert len(out) == 10
    assert "needs a list of items, got str" in out[0]
    assert "got set; sort it first" in out[1]
    assert "fn must be callable" in out[2]
    assert "max_concurrency must be an int >= 1" in out[3]
    assert "got 10,001 items; one batch takes at most 10,000" in out[4]
    assert "needs min_successes=2 but has only 1 item" in out[5]
    assert "fns[1] must be callable" in out[6]
    assert "contains '/' or '#'" in out[7]
    assert "cannot be nested in a step" in out[8]
    assert "ctx of branch '/leak#1[0]' of run" in out[9] and "after that branch ended" in out[9]
    assert "must use the ctx its branch function receives" in run.output["branch"]


@pytest.mark.parametrize("kind", ["map", "parallel"])
def test_misuse_in_a_branch_fails_the_run_at_once_even_with_failures_tolerated(
    kind: str, flavor: Flavor
) -> None:
    app = rung.App("misuse")
    tries: list[int] = []

    async def branch(bctx: Any, item: int) -> int:
        if item == 1:
            await bctx.wait(-5)  # misuse: InvalidConfig, which no retry can fix
        return item

    @flavor.task(app, id="t", retry=FAST)
    async def t(ctx: Any, payload: None) -> Any:
        tries.append(ctx.attempt)
        rule = rung.Completion(tolerated_failures=2)
        if kind == "map":
            return (await ctx.map([0, 1, 2], branch, completion=rule)).results()
        fns = [lambda c, i=i: branch(c, i) for i in range(3)]
        return (await ctx.parallel(fns, completion=rule)).results()

    with LocalEngine(app) as engine:
        run = engine.wait(engine.trigger("t").run_id)
    assert run.status == rung.RunStatus.FAILED and tries == [1]
    assert run.error is not None and run.error.type == "InvalidConfig"
    assert "ctx.wait duration must not be negative" in run.error.message


def test_a_map_continues_in_a_fresh_invocation_when_time_runs_short(flavor: Flavor) -> None:
    app = rung.App("par")
    calls = Calls()
    clocks: list[VirtualClock] = []

    async def slow(ctx: Any, item: int) -> int:
        calls.add(("fn", item))

        def work() -> int:
            calls.add(item)
            clocks[0].advance(timedelta(seconds=12))  # a 12-second step
            return item

        result: int = await ctx.step("work", work)
        return result

    @flavor.task(app, id="long")
    async def long(ctx: Any, payload: None) -> list[int]:
        batch: rung.BatchResult[int] = await ctx.map(list(range(5)), slow, max_concurrency=1)
        return batch.results()

    with LocalEngine(
        app, invocation_timeout=timedelta(seconds=30), min_time_left=timedelta(seconds=10)
    ) as engine:
        assert isinstance(engine.clock, VirtualClock)
        clocks.append(engine.clock)
        run = engine.wait(engine.trigger("long").run_id)
    assert run.status == rung.RunStatus.COMPLETED, run.error
    assert run.output == [0, 1, 2, 3, 4]
    assert run.attempt == 1  # continuing is not a new attempt
    assert run.lease_token == 3  # branches 0-1, then 2-3, then 4
    assert [calls[i] for i in range(5)] == [1] * 5
    assert [calls[("fn", i)] for i in range(5)] == [1] * 5


def test_max_duration_ends_a_run_timed_out_in_the_middle_of_a_map(flavor: Flavor) -> None:
    app = rung.App("par")
    calls = Calls()
    clocks: list[VirtualClock] = []

    async def work(ctx: Any, item: int) -> None:
        def minute() -> None:
            calls.add(item)
            clocks[0].advance(timedelta(minutes=1))

        await ctx.step("minute", minute)

    @flavor.task(app, id="bounded", max_duration=timedelta(minutes=5))
    async def bounded(ctx: Any, payload: None) -> None:
        await ctx.map(list(range(10)), work, max_concurrency=1)

    with LocalEngine(app) as engine:
        assert isinstance(engine.clock, VirtualClock)
        clocks.append(engine.clock)
        run = engine.wait(engine.trigger("bounded").run_id)
    assert run.status == rung.RunStatus.TIMED_OUT
    assert run.error is not None and "max_duration of 300 s" in run.error.message
    assert calls.counts == Counter(range(5))


def test_a_replay_with_fewer_items_fails_with_a_determinism_error(flavor: Flavor) -> None:
    app = rung.App("par")

    async def echo(ctx: Any, item: int) -> int:
        return item

    @flavor.task(app, id="shrinks", retry=FAST)
    async def shrinks(ctx: Any, payload: None) -> list[int]:
        # Wrong on purpose: the items depend on the attempt, not on recorded values.
        batch: rung.BatchResult[int] = await ctx.map(
            list(range(3 if ctx.attempt == 1 else 2)), echo
        )
        results = batch.results()
        if ctx.attempt == 1:
            raise RuntimeError("fail the body once, so that the map replays")
        return results

    with LocalEngine(app) as engine:
        run = engine.wait(engine.trigger("shrinks").run_id)
    assert run.status == rung.RunStatus.FAILED
    assert run.error is not None and run.error.type == "NonDeterminismError"
    assert "ctx.map '/map#1' had more than 2 items" in run.error.message
    assert "branch '/map#1[2]' is recorded" in run.error.message


def test_branches_that_wait_for_child_runs_are_woken_by_the_children(flavor: Flavor) -> None:
    # Each branch starts a child and waits for it: the run suspends once, waiting for
    # every branch's child, and each child's end can wake it.
    app = rung.App("par-children")

    @flavor.task(app, id="child")
    async def child(ctx: Any, payload: int) -> int:
        await ctx.wait(timedelta(minutes=payload))  # the children end at different times
        return payload * 10

    async def branch(ctx: Any, n: int) -> int:
        return int(await ctx.trigger_and_wait("child", n))

    @flavor.task(app, id="parent")
    async def parent(ctx: Any, payload: None) -> list[int]:
        batch: rung.BatchResult[int] = await ctx.map([3, 1, 2], branch)
        return batch.results()

    with LocalEngine(app, workers=2) as engine:
        run = engine.wait(engine.trigger("parent").run_id, timeout=60)
        children = engine.client.list_children(run.run_id)
    assert run.status == rung.RunStatus.COMPLETED
    assert run.output == [30, 10, 20]
    assert len(children) == 3 and all(c.status == rung.RunStatus.COMPLETED for c in children)


def test_history_lists_parents_before_children_and_ends_them_after(flavor: Flavor) -> None:
    app = rung.App("order")

    async def item(ctx: Any, n: int) -> int:
        total: int = await ctx.step("s", lambda: n) + await ctx.step("t", lambda: n)
        return total

    @flavor.task(app, id="t")
    async def t(ctx: Any, payload: None) -> list[int]:
        await ctx.step("first", lambda: 0)
        batch: rung.BatchResult[int] = await ctx.map(list(range(8)), item, max_concurrency=4)
        return batch.results()

    with LocalEngine(app) as engine:
        runs = [engine.trigger("t").run_id for _ in range(5)]
        histories = [(engine.wait(r), engine.history(r)) for r in runs]

    for run, history in histories:
        assert run.status == rung.RunStatus.COMPLETED
        steps = [(e.type, e.step) for e in history if e.step]
        started = {step: i for i, (kind, step) in enumerate(steps) if kind == "StepStarted"}
        ended = {step: i for i, (kind, step) in enumerate(steps) if kind == "StepSucceeded"}
        assert len(started) == len(ended) == 1 + 1 + 8 * 3  # first, the map, branches, steps
        for step in started:
            parent = step.rsplit("/", 1)[0] if step.count("/") > 1 else step.split("[")[0]
            if parent != step and parent in started:
                assert started[parent] < started[step] < ended[step] < ended[parent], step
        stamps = [e.timestamp for e in history]
        assert stamps == sorted(stamps)


# -- named branches ------------------------------------------------------------------


def test_parallel_with_a_mapping_names_its_branches(flavor: Flavor) -> None:
    app = rung.App("named-parallel")

    @flavor.task(app, id="t")
    async def t(ctx: Any, payload: None) -> dict[str, Any]:
        batch: rung.BatchResult[Any] = await ctx.parallel(
            {
                "user": lambda c: c.step("load", lambda: {"id": 7}),
                "orders": lambda c: c.step("load", lambda: [1, 2]),
            }
        )
        assert [(item.index, item.name) for item in batch.items] == [(0, "user"), (1, "orders")]
        return batch.results_by_name()

    with LocalEngine(app) as engine:
        run = engine.wait(engine.trigger("t").run_id)
        steps = {e.step for e in engine.history(run.run_id) if e.step}
    assert run.output == {"user": {"id": 7}, "orders": [1, 2]}
    assert {"/parallel#1[user]", "/parallel#1[user]/load#1", "/parallel#1[orders]/load#1"} <= steps


def test_map_item_names_are_used_in_ids_and_finished_branches_are_not_run_again(
    flavor: Flavor,
) -> None:
    app = rung.App("named-map")
    calls = Calls()
    orders = [{"id": "o-1"}, {"id": "o-2"}, {"id": "o-3"}]

    async def charge(ctx: Any, order: dict[str, str]) -> str:
        def once() -> str:
            calls.add(order["id"])
            if order["id"] == "o-2" and calls[order["id"]] == 1:
                raise ConnectionError("gateway timeout")  # retried: the run backs off
            return f"ch-{order['id']}"

        result: str = await ctx.step("charge", once, retry=FAST)
        return result

    @flavor.task(app, id="t")
    async def t(ctx: Any, payload: None) -> list[str]:
        batch: rung.BatchResult[str] = await ctx.map(
            orders, charge, item_name=lambda order, i: order["id"]
        )
        return batch.results()

    with LocalEngine(app) as engine:
        run = engine.wait(engine.trigger("t").run_id)
        steps = [e.step for e in engine.history(run.run_id) if e.step]
    assert run.output == ["ch-o-1", "ch-o-2", "ch-o-3"]
    assert (calls["o-1"], calls["o-2"], calls["o-3"]) == (1, 2, 1)
    assert "/map#1[o-2]/charge#1" in steps and "/map#1[o-1]" in steps


@pytest.mark.parametrize(
    ("namer", "message"),
    [
        (lambda item, i: "same", "branches 0 and 1 are both named 'same'"),
        (lambda item, i: f"a/{i}", "branch name 'a/0' must be at most 100 characters without"),
        (lambda item, i: "", "branch 0's name must be a non-empty str"),
        (lambda item, i: i, "branch 0's name must be a non-empty str, got 0"),
        (lambda item, i: 1 / 0, "item_name raised ZeroDivisionError for item 0"),
    ],
)
def test_bad_branch_names_fail_the_run_at_once(namer: Any, message: str, flavor: Flavor) -> None:
    app = rung.App("bad-names")
    tries: list[int] = []

    async def echo(c: Any, n: int) -> int:
        return n

    @flavor.task(app, id="t", retry=FAST)
    async def t(ctx: Any, payload: None) -> Any:
        tries.append(ctx.attempt)
        return (await ctx.map([1, 2], echo, item_name=namer)).results()

    with LocalEngine(app) as engine:
        run = engine.wait(engine.trigger("t").run_id)
    assert run.status == rung.RunStatus.FAILED and tries == [1]
    assert run.error is not None and run.error.type == "UsageError"
    assert message in run.error.message


def test_branch_names_that_change_between_replays_are_a_determinism_error(
    flavor: Flavor,
) -> None:
    app = rung.App("shifting-names")

    @flavor.task(app, id="t", retry=FAST)
    async def t(ctx: Any, payload: None) -> Any:
        async def branch(c: Any, n: int) -> int:
            value: int = await c.step("v", lambda: n)
            if ctx.attempt == 1 and n == 2:
                await c.step("fail", _raise_once)
            return value

        batch = await ctx.map([1, 2], branch, item_name=lambda n, i: f"{n}-{ctx.attempt}")
        return batch.results()

    with LocalEngine(app) as engine:
        run = engine.wait(engine.trigger("t").run_id)
    assert run.status == rung.RunStatus.FAILED
    assert run.error is not None and run.error.type == "NonDeterminismError"
    assert "had a branch '1-1' when first executed, which the code no longer has" in (
        run.error.message
    )


def _raise_once() -> None:
    raise ConnectionError("flaky")


def test_results_by_name_needs_named_branches() -> None:
    batch = rung.BatchResult([rung.BatchItem(0, "succeeded", result=1)])
    with pytest.raises(rung.UsageError, match="results_by_name\\(\\) needs named branches"):
        batch.results_by_name()
