"""An async task's code cannot lose what ends an attempt: retries, waits and cancels
swallowed by ``gather(return_exceptions=True)``, wrapped by a ``TaskGroup``, or raised
from a thread; and canceling a durable operation (``asyncio.timeout``) is misuse."""

from __future__ import annotations

import asyncio
import functools
import threading
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import rung
from rung._util.clock import VirtualClock
from rung.models import EventType
from rung.testing import LocalEngine

ONCE_MORE = rung.RetryPolicy(max_attempts=3, initial_interval=1)


def flaky_counter(calls: Counter[str], name: str) -> Callable[[], str]:
    def flaky() -> str:
        calls[name] += 1
        if calls[name] == 1:
            raise ConnectionError("reset")
        return name

    return flaky


def test_a_retry_swallowed_in_a_branch_or_a_group_still_retries_the_step() -> None:
    app = rung.App("swallow-inner")
    calls: Counter[str] = Counter()

    async def branch(ctx: rung.AsyncContext, name: str) -> list[str]:
        results = await asyncio.gather(
            ctx.step("flaky", flaky_counter(calls, name)), return_exceptions=True
        )
        return [str(r) for r in results]

    async def group(ctx: rung.AsyncContext) -> list[str]:
        return await branch(ctx, "group")

    @app.task(id="t", retry=ONCE_MORE)
    async def t(ctx: rung.AsyncContext, payload: None) -> dict[str, Any]:
        batch = await ctx.map(["branch"], branch)
        return {"map": batch.results(), "group": await ctx.checkpointed_group("g", group)}

    with LocalEngine(app) as engine:
        run = engine.wait(engine.trigger("t").run_id)
    assert run.status == rung.RunStatus.COMPLETED, run.error
    # neither recorded the swallowed retry as its result: both steps ran again
    assert run.output == {"map": [["branch"]], "group": ["group"]}
    assert calls == {"branch": 2, "group": 2}


def test_a_wait_swallowed_by_gather_still_suspends_the_run() -> None:
    app = rung.App("swallow-wait")
    calls: Counter[str] = Counter()

    async def branch(ctx: rung.AsyncContext, n: int) -> int:
        if n == 0:
            await ctx.wait(timedelta(hours=1))
        calls[f"after-{n}"] += 1
        return n

    @app.task(id="t")
    async def t(ctx: rung.AsyncContext, payload: None) -> list[Any]:
        results = await asyncio.gather(ctx.map([0, 1], branch), return_exceptions=True)
        return [r.results() if isinstance(r, rung.BatchResult) else repr(r) for r in results]

    with LocalEngine(app) as engine:
        run = engine.wait(engine.trigger("t").run_id)
        waits = [e for e in engine.history(run.run_id) if e.type == EventType.WAIT_STARTED]
    assert run.status == rung.RunStatus.COMPLETED, run.error
    assert run.output == [[0, 1]]  # after the hour, not a Suspend as a value
    assert len(waits) == 1 and calls == {"after-0": 1, "after-1": 1}


def test_a_cancel_swallowed_by_gather_stops_every_later_step() -> None:
    app = rung.App("swallow-cancel")
    calls: Counter[str] = Counter()
    inside, release = threading.Event(), threading.Event()

    def blocking() -> str:
        calls["b"] += 1
        inside.set()
        release.wait(10)
        return "b"

    @app.task(id="t")
    async def t(ctx: rung.AsyncContext, payload: None) -> str:
        await ctx.step("b", blocking)
        for name in ("c", "d", "e"):
            await asyncio.gather(
                ctx.step(name, lambda n=name: calls.update([n])), return_exceptions=True
            )
        return "finished"

    with LocalEngine(app) as engine:
        handle = engine.trigger("t")
        assert inside.wait(10)
        engine.client.cancel(handle.run_id, reason="stop")
        assert isinstance(engine.clock, VirtualClock)
        engine.clock.advance(timedelta(seconds=6))  # past the cancel-check interval
        release.set()
        run = engine.wait(handle.run_id)
        recorded = engine.store.load_steps(handle.run_id)
    assert run.status == rung.RunStatus.CANCELED and run.output is None
    assert calls == {"b": 1} and sorted(recorded) == ["/b#1"]


def test_a_plain_step_function_raising_stop_iteration_fails_the_step_instead_of_hanging() -> None:
    app = rung.App("stop-iteration")
    calls: Counter[str] = Counter()

    def first_match(items: list[int]) -> int:
        calls["first"] += 1
        return next(i for i in items if i > 10)  # none: StopIteration

    @app.task(id="t", retry=rung.RetryPolicy(max_attempts=2, initial_interval=1))
    async def t(ctx: rung.AsyncContext, payload: None) -> int:
        value: int = await ctx.step("first", first_match, [1, 2, 3])
        return value

    with LocalEngine(app) as engine:
        run = engine.wait(engine.trigger("t").run_id, timeout=20)
        failures = [e for e in engine.history(run.run_id) if e.type == EventType.STEP_FAILED]
    assert run.status == rung.RunStatus.FAILED
    assert len(failures) == 2  # one per attempt, each recorded once
    assert run.error is not None and run.error.type == "StopIteration"
    assert "step '/first#1' failed" in run.error.message
    assert calls["first"] == 2  # the policy's two attempts


def test_a_task_group_retries_a_failed_step_and_fails_on_a_step_failed_for_good() -> None:
    app = rung.App("task-group")
    calls: Counter[str] = Counter()

    def broken() -> str:
        calls["broken"] += 1
        raise ValueError("no such order")

    @app.task(id="retry", retry=ONCE_MORE)
    async def retry(ctx: rung.AsyncContext, payload: None) -> list[str]:
        async with asyncio.TaskGroup() as group:
            first = group.create_task(ctx.step("flaky", flaky_counter(calls, "flaky")))
            second = group.create_task(ctx.step("plain", lambda: "plain"))
        return [first.result(), second.result()]

    @app.task(id="fail", retry=rung.RetryPolicy(max_attempts=1))
    async def fail(ctx: rung.AsyncContext, payload: None) -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(ctx.step("broken", broken))

    with LocalEngine(app) as engine:
        retried = engine.wait(engine.trigger("retry").run_id)
        failed = engine.wait(engine.trigger("fail").run_id)
        kinds = [str(e.type) for e in engine.history(retried.run_id)]
    assert retried.status == rung.RunStatus.COMPLETED, retried.error
    assert retried.output == ["flaky", "plain"] and calls["flaky"] == 2
    assert kinds.count("RetryScheduled") == 1  # the step's retry, not a crash
    assert failed.status == rung.RunStatus.FAILED and failed.error is not None
    assert failed.error.message == "step '/broken#1' failed: no such order"
    assert calls["broken"] == 1


def test_a_timeout_around_a_durable_operation_fails_the_run_with_the_fix() -> None:
    app = rung.App("timeout")

    async def slow() -> str:
        await asyncio.sleep(5)
        return "late"

    @app.task(id="t")
    async def t(ctx: rung.AsyncContext, payload: None) -> str:
        try:
            async with asyncio.timeout(0.05):
                return await ctx.step("slow", slow)
        except TimeoutError:
            return await ctx.step("fallback", lambda: "fallback")

    with LocalEngine(app) as engine:
        run = engine.wait(engine.trigger("t").run_id)
    assert run.status == rung.RunStatus.FAILED and run.attempt == 1
    assert run.error is not None and run.error.type == "UsageError"
    assert "was canceled by the task's own code" in run.error.message
    assert "Put the timeout inside the step function" in run.error.message


def test_a_plain_rung_step_called_directly_in_an_async_task_is_refused() -> None:
    app = rung.App("plain-step")

    @rung.step
    def lookup(key: str) -> str:
        return key

    @app.task(id="t")
    async def t(ctx: rung.AsyncContext, payload: None) -> str:
        return lookup("k")

    with LocalEngine(app) as engine:
        run = engine.wait(engine.trigger("t").run_id)
    assert run.status == rung.RunStatus.FAILED and run.error is not None
    assert "would run on the event loop and block it" in run.error.message
    assert "await ctx.step('" in run.error.message


def test_an_async_task_hidden_by_a_plain_decorator_is_refused_with_what_to_do() -> None:
    app = rung.App("hidden")

    def logged(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        @functools.wraps(fn)
        def wrapper(*args: Any) -> Awaitable[Any]:
            return fn(*args)

        return wrapper

    @app.task(id="t")
    @logged
    async def t(ctx: Any, payload: None) -> str:
        return "never"

    with LocalEngine(app) as engine:
        run = engine.wait(engine.trigger("t").run_id)
    assert run.status == rung.RunStatus.FAILED and run.error is not None
    assert run.error.type == "InvalidConfig"
    assert "Make the wrapper an async def" in run.error.message


def test_a_body_error_while_a_gathered_map_runs_does_not_fail_its_branches() -> None:
    app = rung.App("body-error")
    calls: Counter[str] = Counter()

    async def branch(ctx: rung.AsyncContext, n: int) -> int:
        await asyncio.sleep(0.05)
        value: int = await ctx.step("double", lambda: n * 2)
        return value

    async def boom() -> None:
        calls["boom"] += 1
        if calls["boom"] == 1:
            raise ConnectionError("transient, outside any step")

    @app.task(id="t", retry=ONCE_MORE)
    async def t(ctx: rung.AsyncContext, payload: None) -> list[int]:
        batch, _ = await asyncio.gather(ctx.map([1, 2], branch), boom())
        results: list[int] = batch.results()
        return results

    with LocalEngine(app) as engine:
        run = engine.wait(engine.trigger("t").run_id)
    assert run.status == rung.RunStatus.COMPLETED, run.error
    assert run.output == [2, 4] and run.attempt == 2


def test_a_task_group_step_failed_for_good_fails_on_the_step_while_a_sibling_is_canceled() -> None:
    app = rung.App("group-fail")

    async def slow() -> str:
        await asyncio.sleep(5)
        return "slow"

    def broken() -> str:
        raise ValueError("no such order")

    @app.task(id="t", retry=rung.RetryPolicy(max_attempts=1))
    async def t(ctx: rung.AsyncContext, payload: None) -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(ctx.step("slow", slow))
            group.create_task(ctx.step("broken", broken))

    with LocalEngine(app) as engine:
        run = engine.wait(engine.trigger("t").run_id)
    assert run.status == rung.RunStatus.FAILED and run.error is not None
    assert run.error.message == "step '/broken#1' failed: no such order"


def test_an_at_most_once_step_gathered_with_a_failing_body_is_finished_not_interrupted() -> None:
    app = rung.App("amo")
    calls: Counter[str] = Counter()

    async def charge() -> str:
        calls["charge"] += 1
        await asyncio.sleep(0.1)
        return "charged"

    async def boom() -> None:
        calls["boom"] += 1
        if calls["boom"] == 1:
            raise ConnectionError("transient")

    @app.task(id="t", retry=ONCE_MORE)
    async def t(ctx: rung.AsyncContext, payload: None) -> str:
        charged, _ = await asyncio.gather(ctx.step("charge", charge, at_most_once=True), boom())
        return str(charged)

    with LocalEngine(app) as engine:
        run = engine.wait(engine.trigger("t").run_id)
    assert run.status == rung.RunStatus.COMPLETED, run.error
    assert run.output == "charged" and calls["charge"] == 1


def test_a_step_left_waiting_on_the_ended_body_is_canceled_after_a_bound(
    monkeypatch: Any, caplog: Any
) -> None:
    from rung._durable import aio

    monkeypatch.setattr(aio, "SETTLE_SECONDS", 0.5)
    app = rung.App("stuck")
    calls: Counter[str] = Counter()
    done = asyncio.Event

    @app.task(id="t", retry=ONCE_MORE)
    async def t(ctx: rung.AsyncContext, payload: None) -> str:
        finished = done()

        async def monitor() -> str:
            calls["monitor"] += 1
            await finished.wait()  # only the body sets it
            return "seen"

        watch = asyncio.ensure_future(ctx.step("monitor", monitor))
        await ctx.step("flaky", flaky_counter(calls, "flaky"))  # fails once: the body ends
        finished.set()
        return str(await watch)

    with caplog.at_level("WARNING", logger="rung.worker"), LocalEngine(app) as engine:
        run = engine.wait(engine.trigger("t").run_id)
    assert run.status == rung.RunStatus.COMPLETED, run.error
    assert run.output == "seen" and calls == {"monitor": 2, "flaky": 2}
    assert any("still running 0s after the body ended" in r.getMessage() for r in caplog.records)


def test_a_durable_operation_called_from_a_thread_is_refused() -> None:
    app = rung.App("thread")

    @app.task(id="t")
    async def t(ctx: rung.AsyncContext, payload: None) -> None:
        leaked = await asyncio.to_thread(lambda: ctx.step("x", lambda: 1))  # refused in there
        leaked.close()

    with LocalEngine(app) as engine:
        run = engine.wait(engine.trigger("t").run_id)
    assert run.status == rung.RunStatus.FAILED and run.error is not None
    assert "was called from a thread (asyncio.to_thread, an executor)" in run.error.message
