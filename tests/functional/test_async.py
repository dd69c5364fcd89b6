"""What only async tasks have: steps on the event loop, asyncio.gather, tasks left running,
and async steps in sync tasks. (The durable semantics shared with sync tasks are the
``flavor``-parametrized suites: test_engine_steps, test_waits, test_parallel ...)"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest

import rung
from rung.models import EventType
from rung.testing import LocalEngine


def succeeded_steps(engine: LocalEngine, run_id: str) -> list[str | None]:
    return [e.step for e in engine.history(run_id) if e.type == EventType.STEP_SUCCEEDED]


def test_gathered_steps_run_at_once_and_keep_their_ids_and_values_on_replay() -> None:
    app = rung.App("gather")
    finished: list[str] = []
    calls: Counter[str] = Counter()
    engines: list[LocalEngine] = []

    async def fetch(name: str, fast_done: asyncio.Event, run_id: str) -> str:
        calls[name] += 1
        if name == "slow":
            # Ends only once the fast one has: were they not run at once, it never would.
            await asyncio.wait_for(fast_done.wait(), timeout=20)
            # ... and after the fast one's checkpoint is stored, in a later millisecond
            # (checkpoint times are stored to the ms, and the history orders a tie by
            # position, not by the order they ended in): waited on, not timed.
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                ended = [
                    r.finished_at
                    for r in engines[0].store.load_steps(run_id).values()
                    if r.finished_at is not None
                ]
                if ended and engines[0].clock.now() > max(ended) + timedelta(milliseconds=1):
                    break
                await asyncio.sleep(0.005)
        finished.append(name)
        fast_done.set()
        return f"page {name}"

    @app.task(id="gather")
    async def gather(ctx: rung.AsyncContext, payload: None) -> list[str]:
        fast_done = asyncio.Event()
        pages = await asyncio.gather(
            ctx.step("fetch", fetch, "slow", fast_done, ctx.run_id),
            ctx.step("fetch", fetch, "fast", fast_done, ctx.run_id),
        )
        await ctx.wait(timedelta(hours=1))  # the run replays both after the wait
        return list(pages)

    with LocalEngine(app) as engine:
        engines.append(engine)
        run = engine.wait(engine.trigger("gather").run_id)
        steps = succeeded_steps(engine, run.run_id)
    assert run.status == rung.RunStatus.COMPLETED, run.error
    assert run.output == ["page slow", "page fast"]
    assert finished == ["fast", "slow"]  # they ran at once: the fast one ended first
    assert calls == {"slow": 1, "fast": 1}  # the replay after the wait ran neither again
    # ids follow the calls' order, not the order they finished in
    assert steps == ["/fetch#2", "/fetch#1"]


def test_a_coroutine_that_calls_ctx_from_another_asyncio_task_is_refused_with_the_fix() -> None:
    app = rung.App("refuse")

    async def both(ctx: rung.AsyncContext, n: int) -> int:
        first = await ctx.step("a", lambda: n)
        return int(await ctx.step("b", lambda: first + 1))

    @app.task(id="refuse")
    async def refuse(ctx: rung.AsyncContext, payload: None) -> list[int]:
        return list(await asyncio.gather(both(ctx, 1), both(ctx, 10)))

    with LocalEngine(app) as engine:
        run = engine.wait(engine.trigger("refuse").run_id)
    assert run.status == rung.RunStatus.FAILED
    assert run.error is not None and run.error.type == "UsageError"
    assert "another asyncio task" in run.error.message
    assert "ctx.parallel or ctx.map" in run.error.message
    assert run.attempt == 1  # misuse: no retry


def test_a_wait_awaited_in_a_gathered_task_is_refused() -> None:
    app = rung.App("refuse-wait")

    @app.task(id="w")
    async def w(ctx: rung.AsyncContext, payload: None) -> None:
        await asyncio.gather(ctx.wait(timedelta(seconds=5)), ctx.wait(timedelta(seconds=9)))

    with LocalEngine(app) as engine:
        run = engine.wait(engine.trigger("w").run_id)
    assert run.status == rung.RunStatus.FAILED
    assert run.error is not None and "ctx.wait() was called from another asyncio task" in (
        run.error.message
    )


def test_steps_of_an_async_task_run_on_its_loop_and_plain_functions_on_threads() -> None:
    app = rung.App("threads")
    seen: dict[str, int] = {}

    async def on_loop() -> None:
        seen["async"] = threading.get_ident()

    def on_thread() -> None:
        seen["sync"] = threading.get_ident()

    @app.task(id="t")
    async def t(ctx: rung.AsyncContext, payload: None) -> None:
        seen["body"] = threading.get_ident()
        await ctx.step("a", on_loop)
        await ctx.step("s", on_thread)

    with LocalEngine(app) as engine:
        run = engine.wait(engine.trigger("t").run_id)
    assert run.status == rung.RunStatus.COMPLETED, run.error
    assert seen["async"] == seen["body"]
    assert seen["sync"] != seen["body"]  # a plain function does not block the loop


def test_map_runs_async_branches_concurrently_up_to_max_concurrency_on_one_thread() -> None:
    app = rung.App("fanout")
    running = 0
    peak = 0
    threads: set[int] = set()

    full: list[asyncio.Event] = []  # (made on the run's loop)

    async def io(i: int) -> int:
        nonlocal running, peak
        if not full:
            full.append(asyncio.Event())
        running += 1
        peak = max(peak, running)
        threads.add(threading.get_ident())
        if running == 20:
            full[0].set()
        # The first 20 hold until all 20 run (a condition, not a timing): the cap is
        # reached; a 21st at once would show in the peak.
        await asyncio.wait_for(full[0].wait(), timeout=20)
        await asyncio.sleep(0)
        running -= 1
        return i * 2

    async def branch(ctx: rung.AsyncContext, i: int) -> int:
        return await ctx.step("io", io, i)

    @app.task(id="fan")
    async def fan(ctx: rung.AsyncContext, payload: None) -> list[int]:
        batch = await ctx.map(list(range(60)), branch, max_concurrency=20)
        return batch.results()

    with LocalEngine(app) as engine:
        run = engine.wait(engine.trigger("fan").run_id)
    assert run.status == rung.RunStatus.COMPLETED, run.error
    assert run.output == [i * 2 for i in range(60)]
    assert peak == 20
    assert len(threads) == 1  # every async step on the run's loop thread


def test_a_retry_swallowed_by_gather_return_exceptions_still_retries_the_step() -> None:
    app = rung.App("swallow")
    calls: Counter[str] = Counter()

    def flaky() -> str:
        calls["flaky"] += 1
        if calls["flaky"] < 2:
            raise ConnectionError("reset")
        return "ok"

    @app.task(id="s", retry=rung.RetryPolicy(max_attempts=3, initial_interval=1))
    async def s(ctx: rung.AsyncContext, payload: None) -> list[str]:
        results = await asyncio.gather(ctx.step("flaky", flaky), return_exceptions=True)
        return [str(r) for r in results]

    with LocalEngine(app) as engine:
        run = engine.wait(engine.trigger("s").run_id)
    assert run.status == rung.RunStatus.COMPLETED, run.error
    assert run.output == ["ok"]
    assert calls["flaky"] == 2
    assert run.attempt == 2


def test_tasks_left_running_at_return_are_canceled_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = rung.App("left")
    ended: list[str] = []

    async def forever() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            ended.append("canceled")

    @app.task(id="left")
    async def left(ctx: rung.AsyncContext, payload: None) -> str:
        asyncio.get_running_loop().create_task(forever())
        await ctx.step("one", lambda: 1)
        return "done"

    with caplog.at_level(logging.WARNING, logger="rung.worker"), LocalEngine(app) as engine:
        run = engine.wait(engine.trigger("left").run_id)
    assert run.status == rung.RunStatus.COMPLETED and run.output == "done"
    assert ended == ["canceled"]
    warning = next(r.getMessage() for r in caplog.records if "still running" in r.getMessage())
    assert "returned with 1 asyncio task(s) still running (" in warning
    assert "<locals>.forever)" in warning  # the coroutine, by name
    assert "waited for the 0 step(s) or batch(es) among them" in warning
    assert "Await every task" in warning


def test_a_gathered_step_still_running_when_its_sibling_fails_is_recorded_not_repeated() -> None:
    app = rung.App("siblings")
    calls: Counter[str] = Counter()

    async def slow() -> str:
        calls["slow"] += 1
        await asyncio.sleep(0.2)  # still running when flaky fails
        return "slow"

    def flaky() -> str:
        calls["flaky"] += 1
        if calls["flaky"] == 1:
            raise ConnectionError("reset")
        return "flaky"

    async def left_behind() -> str:
        calls["left"] += 1
        await asyncio.sleep(0.1)
        return "left"

    @app.task(id="s", retry=rung.RetryPolicy(max_attempts=3, initial_interval=1))
    async def s(ctx: rung.AsyncContext, payload: None) -> list[str]:
        asyncio.get_running_loop().create_task(ctx.step("left", left_behind))  # not awaited
        return list(await asyncio.gather(ctx.step("slow", slow), ctx.step("flaky", flaky)))

    with LocalEngine(app) as engine:
        run = engine.wait(engine.trigger("s").run_id)
        history = engine.history(run.run_id)
    assert run.status == rung.RunStatus.COMPLETED, run.error
    assert run.output == ["slow", "flaky"] and run.attempt == 2
    # the slow step finished and was recorded before the attempt unwound, and so was
    # the one in a task never awaited: the retry replays them
    assert calls == {"slow": 1, "flaky": 2, "left": 1}
    succeeded = [str(e.step) for e in history if e.type == EventType.STEP_SUCCEEDED]
    assert sorted(succeeded) == ["/flaky#1", "/left#1", "/slow#1"]


def test_an_async_function_is_a_step_of_a_sync_task_on_a_loop_of_its_own() -> None:
    app = rung.App("sync-parent")
    calls: Counter[str] = Counter()

    async def summarize(text: str) -> str:
        calls["summarize"] += 1
        await asyncio.sleep(0)
        return text.upper()

    @app.task(id="s")
    def s(ctx: rung.Context, payload: str) -> str:
        value = ctx.step("summarize", summarize, payload)
        ctx.wait(timedelta(minutes=5))
        return str(value)

    with LocalEngine(app) as engine:
        run = engine.wait(engine.trigger("s", "hello").run_id)
    assert run.status == rung.RunStatus.COMPLETED, run.error
    assert run.output == "HELLO"
    assert calls["summarize"] == 1


def test_an_async_rung_step_called_in_a_sync_task_fails_with_what_to_do() -> None:
    app = rung.App("misplaced")

    @rung.step
    async def summarize(text: str) -> str:
        return text

    @app.task(id="s")
    def s(ctx: rung.Context, payload: str) -> Any:
        return summarize(payload)

    with LocalEngine(app) as engine:
        run = engine.wait(engine.trigger("s", "x").run_id)
    assert run.status == rung.RunStatus.FAILED
    assert run.error is not None and run.error.type == "UsageError"
    assert "make the task an async def" in run.error.message
    assert "ctx.step('" in run.error.message


def test_an_async_rung_step_outside_a_run_is_a_plain_coroutine() -> None:
    @rung.step
    async def double(n: int) -> int:
        await asyncio.sleep(0)
        return n * 2

    assert asyncio.run(double(21)) == 42


def test_async_generators_are_refused_as_tasks_and_steps() -> None:
    app = rung.App("gen")

    async def items(ctx: rung.AsyncContext, payload: None) -> Any:
        yield 1

    with pytest.raises(rung.InvalidConfig, match="async generator"):
        app.task(id="gen")(items)
    with pytest.raises(rung.InvalidConfig, match="async generator"):
        rung.step(items)
