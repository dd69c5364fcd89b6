"""Steps checkpoint, retries resume, errors are data: end to end on LocalEngine."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from typing import Any

import pydantic
import pytest

import rung
from rung.models import EventType
from rung.testing import LocalEngine, SimulatedCrash
from tests.flavors import Flavor


class Order(pydantic.BaseModel):
    id: str
    total: int


class OrderIn(pydantic.BaseModel):
    order_id: str


FAST = rung.RetryPolicy(max_attempts=5, initial_interval=1, backoff=2.0, max_interval=60)


def event_types(engine: LocalEngine, run_id: str) -> list[str]:
    return [str(e.type) for e in engine.history(run_id)]


def test_a_completed_step_is_never_executed_again_and_replays_return_its_model(
    flavor: Flavor,
) -> None:
    app = rung.App("shop")
    calls: Counter[str] = Counter()
    seen: list[Any] = []

    @flavor.step
    async def fetch_order(order_id: str) -> Order:
        calls["fetch"] += 1
        return Order(id=order_id, total=42)

    def charge(order: Order) -> dict[str, Any]:
        calls["charge"] += 1
        if calls["charge"] < 3:
            raise ConnectionError("gateway timeout")
        return {"charged": order.total, "nested": [1, 2.5, None]}

    @flavor.task(app, id="process-order", retry=FAST)
    async def process_order(ctx: Any, payload: OrderIn) -> dict[str, Any]:
        order = await fetch_order(payload.order_id)
        seen.append(order)
        result = await ctx.step("charge", charge, order)
        return {"order": order.id, "charge": result}

    with LocalEngine(app) as engine:
        handle = engine.trigger("process-order", {"order_id": "o-1"})
        run = engine.wait(handle.run_id)
        history = engine.history(handle.run_id)
    assert run.status == rung.RunStatus.COMPLETED
    assert run.output == {"order": "o-1", "charge": {"charged": 42, "nested": [1, 2.5, None]}}
    assert calls == {"fetch": 1, "charge": 3}
    assert run.attempt == 3
    assert seen == [Order(id="o-1", total=42)] * 3  # first run and both replays: the model
    starts = [e.step for e in history if e.type == EventType.STEP_STARTED]
    # a @rung.step's default name is its __qualname__
    assert starts == [f"/{fetch_order.__qualname__}#1", "/charge#1", "/charge#1", "/charge#1"]
    delays = [e.delay for e in history if e.type == EventType.RETRY_SCHEDULED]
    assert delays == [timedelta(seconds=1), timedelta(seconds=2)]


def test_five_retries_record_the_real_backoff_delays_in_history(flavor: Flavor) -> None:
    app = rung.App("retry")
    attempts: list[int] = []

    @flavor.task(
        app,
        id="flaky",
        retry=rung.RetryPolicy(max_attempts=6, initial_interval=1, backoff=2.0, max_interval=60),
    )
    async def flaky(ctx: Any, payload: None) -> int:
        def call() -> int:
            attempts.append(rung.current_step().attempt)
            if len(attempts) <= 5:
                raise TimeoutError("upstream slow")
            return len(attempts)

        result: int = await ctx.step("call", call)
        return result

    with LocalEngine(app) as engine:
        run = engine.wait(engine.trigger("flaky").run_id)
        history = engine.history(run.run_id)
    assert run.status == "COMPLETED" and run.output == 6
    assert attempts == [1, 2, 3, 4, 5, 6]
    delays = [e.delay.total_seconds() for e in history if e.delay is not None]
    assert delays == [1, 2, 4, 8, 16]
    # the run's timestamps span the virtual backoff, not the wall time it took
    assert run.finished_at is not None
    assert (run.finished_at - run.created_at) >= timedelta(seconds=31)


def test_step_policy_overrides_the_task_policy(flavor: Flavor) -> None:
    app = rung.App("override")
    calls: Counter[str] = Counter()

    def always_fails() -> None:
        calls["x"] += 1
        raise ValueError("nope")

    @flavor.task(app, id="t", retry=rung.RetryPolicy(max_attempts=2))
    async def t(ctx: Any, payload: None) -> str:
        try:
            await ctx.step(
                "x", always_fails, retry=rung.RetryPolicy(max_attempts=4, initial_interval=0)
            )
        except rung.StepFailed as exc:
            return f"{exc.error_type}: {exc.message}"
        return "unreachable"

    with LocalEngine(app) as engine:
        run = engine.wait(engine.trigger("t").run_id)
    assert run.output == "ValueError: nope"
    assert calls["x"] == 4


def test_step_failed_is_catchable_and_raised_identically_on_every_replay(flavor: Flavor) -> None:
    app = rung.App("catch")
    caught: list[tuple[str, str, str, str]] = []
    later: Counter[str] = Counter()

    def declined() -> None:
        raise rung.NonRetryable("card declined")

    def flaky_later() -> str:
        later["n"] += 1
        if later["n"] < 3:
            raise ConnectionError("try again")
        return "ok"

    @flavor.task(app, id="t", retry=rung.RetryPolicy(max_attempts=5, initial_interval=1))
    async def t(ctx: Any, payload: None) -> str:
        try:
            await ctx.step("charge", declined)
        except rung.StepFailed as exc:
            caught.append((exc.step_id, exc.error_type, exc.message, exc.traceback))
        result: str = await ctx.step("after", flaky_later)
        return result

    with LocalEngine(app) as engine:
        run = engine.wait(engine.trigger("t").run_id)
    assert run.status == "COMPLETED" and run.output == "ok"
    assert len(caught) == 3  # first execution + two replays
    assert len(set(caught)) == 1
    step_id, error_type, message, traceback = caught[0]
    assert (step_id, error_type, message) == ("/charge#1", "NonRetryable", "card declined")
    assert "raise rung.NonRetryable" in traceback


def test_non_retryable_aborts_at_once_and_an_uncaught_step_failure_fails_the_run(
    flavor: Flavor,
) -> None:
    app = rung.App("abort")
    calls: Counter[str] = Counter()

    def refund() -> None:
        calls["refund"] += 1
        raise rung.NonRetryable("order already refunded")

    @flavor.task(app, id="t", retry=FAST)
    async def t(ctx: Any, payload: None) -> None:
        await ctx.step("refund", refund)

    with LocalEngine(app) as engine:
        run = engine.wait(engine.trigger("t").run_id)
        types = event_types(engine, run.run_id)
    assert calls["refund"] == 1
    assert run.status == "FAILED"
    assert run.error is not None
    assert run.error.type == "NonRetryable"
    assert "step '/refund#1' failed: order already refunded" in run.error.message
    assert "order already refunded" in run.error.traceback
    assert types[-2:] == ["StepFailed", "RunFailed"]
    assert "RetryScheduled" not in types


def test_retry_on_limits_which_errors_are_retried(flavor: Flavor) -> None:
    app = rung.App("retry-on")
    calls: Counter[str] = Counter()

    def parse() -> None:
        calls["parse"] += 1
        raise KeyError("missing field")

    @flavor.task(app, id="t", retry=rung.RetryPolicy(max_attempts=5, retry_on=(ConnectionError,)))
    async def t(ctx: Any, payload: None) -> None:
        await ctx.step("parse", parse)

    with LocalEngine(app) as engine:
        run = engine.wait(engine.trigger("t").run_id)
    assert calls["parse"] == 1
    assert run.status == "FAILED" and run.error is not None and run.error.type == "KeyError"


def test_retry_after_sets_the_next_delay(flavor: Flavor) -> None:
    app = rung.App("retry-after")
    calls: Counter[str] = Counter()

    def rate_limited() -> str:
        calls["n"] += 1
        if calls["n"] == 1:
            raise rung.RetryAfter(timedelta(seconds=37), "429 from the API")
        return "done"

    @flavor.task(app, id="t")
    async def t(ctx: Any, payload: None) -> str:
        result: str = await ctx.step("call", rate_limited)
        return result

    with LocalEngine(app) as engine:
        run = engine.wait(engine.trigger("t").run_id)
        history = engine.history(run.run_id)
    assert run.output == "done"
    assert [e.delay for e in history if e.delay] == [timedelta(seconds=37)]
    failed = [e for e in history if e.type == EventType.STEP_FAILED]
    assert failed[0].error is not None and failed[0].error.message == "429 from the API"


def test_custom_strategy_delays_are_used(flavor: Flavor) -> None:
    app = rung.App("custom")
    calls: Counter[str] = Counter()

    def fails_twice() -> str:
        calls["n"] += 1
        if calls["n"] <= 2:
            raise RuntimeError(f"fail {calls['n']}")
        return "ok"

    policy = rung.RetryPolicy(
        max_attempts=3, strategy=lambda attempt, error: timedelta(minutes=attempt * 3)
    )

    @flavor.task(app, id="t", retry=policy)
    async def t(ctx: Any, payload: None) -> str:
        result: str = await ctx.step("s", fails_twice)
        return result

    with LocalEngine(app) as engine:
        run = engine.wait(engine.trigger("t").run_id)
        history = engine.history(run.run_id)
    assert run.output == "ok"
    assert [e.delay for e in history if e.delay] == [timedelta(minutes=3), timedelta(minutes=6)]


def test_errors_outside_steps_retry_the_run_then_fail_with_a_stored_error(flavor: Flavor) -> None:
    app = rung.App("body")
    calls: Counter[str] = Counter()

    def once() -> str:
        calls["step"] += 1
        return "v"

    @flavor.task(app, id="t", retry=rung.RetryPolicy(max_attempts=3, initial_interval=2, backoff=3))
    async def t(ctx: Any, payload: None) -> None:
        await ctx.step("once", once)
        calls["body"] += 1
        raise LookupError(f"config missing (attempt {ctx.attempt})")

    with LocalEngine(app) as engine:
        run = engine.wait(engine.trigger("t").run_id)
        history = engine.history(run.run_id)
    assert calls == {"step": 1, "body": 3}
    assert run.status == "FAILED" and run.attempt == 3
    assert run.error is not None
    assert (run.error.type, run.error.message) == ("LookupError", "config missing (attempt 3)")
    assert 'raise LookupError(f"config missing' in run.error.traceback
    assert [e.delay for e in history if e.delay] == [timedelta(seconds=2), timedelta(seconds=6)]
    assert [str(e.type) for e in history].count("AttemptFailed") == 3


def test_the_idempotency_key_is_stable_across_attempts(flavor: Flavor) -> None:
    app = rung.App("keys")
    keys: list[str] = []

    def charge() -> str:
        keys.append(rung.current_step().idempotency_key)
        if len(keys) < 3:
            raise ConnectionError("flaky")
        return "ch_1"

    @flavor.task(app, id="t", retry=FAST)
    async def t(ctx: Any, payload: None) -> str:
        await ctx.step("charge", charge)
        result: str = await ctx.step("charge", charge)  # second occurrence: its own key
        return result

    with LocalEngine(app) as engine:
        handle = engine.trigger("t")
        engine.wait(handle.run_id)
    first = f"{handle.run_id}:/charge#1"
    assert keys == [first, first, first, f"{handle.run_id}:/charge#2"]


def test_a_replay_that_meets_a_different_step_fails_with_non_determinism(flavor: Flavor) -> None:
    app = rung.App("nondet")

    def ok() -> int:
        return 1

    def flaky() -> None:
        raise ConnectionError("retry me")

    @flavor.task(app, id="t", retry=FAST)
    async def t(ctx: Any, payload: None) -> None:
        await ctx.step("charge" if ctx.attempt == 1 else "refund", ok)  # changes between attempts
        await ctx.step("later", flaky)

    with LocalEngine(app) as engine:
        handle = engine.trigger("t")
        run = engine.wait(handle.run_id)
    assert run.status == "FAILED" and run.attempt == 2
    assert run.error is not None and run.error.type == "NonDeterminismError"
    message = run.error.message
    assert handle.run_id in message
    assert "'/charge#1'" in message and "'/refund#1'" in message
    assert "docs/determinism.md" in message and "must not change" in message


def test_a_step_inside_a_step_is_an_error_that_says_so(flavor: Flavor) -> None:
    app = rung.App("nested")

    @flavor.step
    async def inner() -> int:
        return 1

    @flavor.step
    async def outer() -> int:
        one: int = await inner()
        return one + 1

    @flavor.task(app, id="t")
    async def t(ctx: Any, payload: None) -> int:
        result: int = await outer()
        return result

    with LocalEngine(app) as engine:
        run = engine.wait(engine.trigger("t").run_id)
    assert run.status == "FAILED" and run.error is not None
    assert "cannot be nested" in run.error.message
    assert f"'/{outer.__qualname__}#1'" in run.error.message
    assert run.attempt == 1  # misuse is not retried


def test_unserializable_step_result_fails_the_step_with_a_clear_error(flavor: Flavor) -> None:
    app = rung.App("badresult")

    @flavor.task(app, id="t")
    async def t(ctx: Any, payload: None) -> str:
        try:
            await ctx.step("s", lambda: object())
        except rung.StepFailed as exc:
            return exc.message
        return "unreachable"

    with LocalEngine(app) as engine:
        run = engine.wait(engine.trigger("t").run_id)
    assert run.status == "COMPLETED"
    assert "is not JSON-serializable" in run.output


def test_at_most_once_step_is_not_rerun_after_a_crash_mid_step(flavor: Flavor) -> None:
    app = rung.App("amo")
    calls: Counter[str] = Counter()

    def send_wire() -> str:
        calls["wire"] += 1
        raise SimulatedCrash()  # the worker dies after the money left

    @flavor.task(app, id="t", retry=FAST)
    async def t(ctx: Any, payload: None) -> str:
        try:
            await ctx.step("wire", send_wire, at_most_once=True)
        except rung.StepFailed as exc:
            return f"{exc.error_type}: {exc.message}"
        return "unreachable"

    with LocalEngine(app) as engine:
        run = engine.wait(engine.trigger("t").run_id)
        types = event_types(engine, run.run_id)
    assert calls["wire"] == 1
    assert run.status == "COMPLETED"
    assert run.output.startswith("StepInterrupted: step '/wire#1'")
    assert "was not run again" in run.output
    assert "WorkerLost" in types


def test_at_most_once_step_that_fails_cleanly_is_retried(flavor: Flavor) -> None:
    app = rung.App("amo2")
    calls: Counter[str] = Counter()

    def send() -> str:
        calls["n"] += 1
        if calls["n"] == 1:
            raise ConnectionError("refused before sending")
        return "sent"

    @flavor.task(app, id="t", retry=FAST)
    async def t(ctx: Any, payload: None) -> str:
        result: str = await ctx.step("send", send, at_most_once=True)
        return result

    with LocalEngine(app) as engine:
        run = engine.wait(engine.trigger("t").run_id)
    assert run.status == "COMPLETED" and run.output == "sent"
    assert calls["n"] == 2


def test_at_most_once_step_that_fails_cleanly_after_an_earlier_crash_is_retried(
    flavor: Flavor,
) -> None:
    # The step's own attempt (1) and the run's attempt (2, after a crash elsewhere)
    # differ here: a clean failure must still be told apart from an interruption.
    app = rung.App("amo3")
    calls: Counter[str] = Counter()

    def crash_once() -> str:
        calls["before"] += 1
        if calls["before"] == 1:
            raise SimulatedCrash()
        return "ok"

    def send() -> str:
        calls["send"] += 1
        if calls["send"] == 1:
            raise ConnectionError("refused before sending")
        return "sent"

    @flavor.task(app, id="t", retry=FAST)
    async def t(ctx: Any, payload: None) -> str:
        await ctx.step("before", crash_once)
        result: str = await ctx.step("send", send, at_most_once=True)
        return result

    with LocalEngine(app, lease_duration=timedelta(seconds=5)) as engine:
        run = engine.wait(engine.trigger("t").run_id)
    assert run.status == "COMPLETED" and run.output == "sent"
    assert calls == {"before": 2, "send": 2}


@pytest.mark.parametrize("bad", ["", "a/b", "x#1", 42])
def test_bad_step_names_fail_the_run_with_a_clear_error(bad: object, flavor: Flavor) -> None:
    app = rung.App("names")

    @flavor.task(app, id="t")
    async def t(ctx: Any, payload: None) -> None:
        await ctx.step(bad, lambda: None)

    with LocalEngine(app) as engine:
        run = engine.wait(engine.trigger("t").run_id)
    assert run.status == "FAILED" and run.error is not None and run.error.type == "UsageError"
    assert "step name" in run.error.message


def test_a_step_function_with_a_retry_parameter_of_its_own_is_refused(flavor: Flavor) -> None:
    app = rung.App("clash")

    def fetch(url: str, retry: int = 0) -> str:
        return f"{url}:{retry}"

    @flavor.task(app, id="t", retry=rung.RetryPolicy(max_attempts=1))
    async def t(ctx: Any, payload: None) -> str:
        result: str = await ctx.step("fetch", fetch, "u", retry=rung.RetryPolicy(max_attempts=2))
        return result

    with LocalEngine(app) as engine:
        run = engine.wait(engine.trigger("t").run_id)
    assert run.status == "FAILED" and run.error is not None
    assert run.error.type == "UsageError"
    assert "retry= is the step's own option, and fn also has a parameter 'retry'" in (
        run.error.message
    )
