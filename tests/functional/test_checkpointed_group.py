"""ctx.checkpointed_group: a block whose result is checkpointed, so its body does not run
again on replay once it returned (unlike ctx.group, a naming scope)."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from typing import Any

import pydantic
import pytest

import rung
from rung.models import EventType
from rung.testing import LocalEngine
from tests.flavors import Flavor

FAST = rung.RetryPolicy(max_attempts=3, initial_interval=1)


class Profile(pydantic.BaseModel):
    user: str
    score: int


def _flaky_once(calls: Counter[str]) -> str:
    calls["flaky"] += 1
    if calls["flaky"] == 1:
        raise ConnectionError("timeout")  # the run backs off and replays from the top
    return "ok"


def test_a_returned_group_is_not_run_again_on_replay_a_plain_group_is(flavor: Flavor) -> None:
    app = rung.App("cgroup")
    calls: Counter[str] = Counter()

    async def enrich(ctx: Any, user: str) -> Profile:
        calls["checkpointed body"] += 1
        return Profile(
            user=await ctx.step("load", lambda: user), score=await ctx.step("score", lambda: 7)
        )

    @flavor.task(app, id="t", retry=FAST)
    async def t(ctx: Any, payload: None) -> str:
        profile = await ctx.checkpointed_group("enrich", enrich, "u-7")
        with ctx.group("plain"):
            calls["plain body"] += 1
            await ctx.step("load", lambda: 1)
        flaky = await ctx.step("flaky", _flaky_once, calls)
        assert isinstance(profile, Profile)  # revived as the annotation says, on replay too
        return f"{profile.user}:{profile.score}:{flaky}"

    with LocalEngine(app) as engine:
        run = engine.wait(engine.trigger("t").run_id)
        history = [(str(e.type), e.step) for e in engine.history(run.run_id) if e.step]

    assert run.output == "u-7:7:ok"
    assert calls["checkpointed body"] == 1  # attempt 2 returned its checkpoint
    assert calls["plain body"] == 2
    assert history[:6] == [
        ("StepStarted", "/enrich#1"),
        ("StepStarted", "/enrich#1/load#1"),
        ("StepSucceeded", "/enrich#1/load#1"),
        ("StepStarted", "/enrich#1/score#1"),
        ("StepSucceeded", "/enrich#1/score#1"),
        ("StepSucceeded", "/enrich#1"),
    ]


def test_a_group_that_waits_runs_its_body_until_it_returns_then_never_again(
    flavor: Flavor,
) -> None:
    app = rung.App("cgroup-wait")
    calls: Counter[str] = Counter()

    async def slow(ctx: Any) -> int:
        calls["body"] += 1
        first: int = await ctx.step("first", lambda: 1)
        await ctx.wait(timedelta(hours=1))  # suspends the run inside the group
        second: int = await ctx.step("second", lambda: 2)
        return first + second

    @flavor.task(app, id="t")
    async def t(ctx: Any, payload: None) -> int:
        total: int = await ctx.checkpointed_group("slow", slow)
        await ctx.wait(timedelta(hours=1))  # a resume after the group: its body is not entered
        return total

    with LocalEngine(app) as engine:
        run = engine.wait(engine.trigger("t").run_id)
        events = [(e.type, e.step) for e in engine.history(run.run_id)]

    assert run.output == 3
    assert calls["body"] == 2  # before its wait, and after it to the return
    assert (EventType.WAIT_ENDED, "/slow#1/wait#1") in events
    assert (EventType.STEP_SUCCEEDED, "/slow#1") in events


def test_an_error_inside_passes_through_as_from_the_task_body(flavor: Flavor) -> None:
    app = rung.App("cgroup-error")

    async def failing(ctx: Any) -> None:
        await ctx.step("pay", _declined, retry=rung.RetryPolicy(max_attempts=1))

    @flavor.task(app, id="t")
    async def t(ctx: Any, payload: None) -> str:
        try:
            await ctx.checkpointed_group("billing", failing)
        except rung.StepFailed as exc:
            return f"{exc.step_id}: {exc.error_type}: {exc.message}"
        return "no error"

    with LocalEngine(app) as engine:
        run = engine.wait(engine.trigger("t").run_id)
        steps = {e.step for e in engine.history(run.run_id) if e.step}
    assert run.output == "/billing#1/pay#1: ValueError: card declined"
    assert "/billing#1" not in steps  # only a return ends (and records) the group


def _declined() -> None:
    raise ValueError("card declined")


def test_a_result_that_cannot_be_stored_fails_the_group_for_good(flavor: Flavor) -> None:
    app = rung.App("cgroup-result")
    calls: Counter[str] = Counter()

    async def opaque(ctx: Any) -> object:
        calls["body"] += 1
        return object()

    @flavor.task(app, id="t", retry=FAST)
    async def t(ctx: Any, payload: None) -> str:
        try:
            await ctx.checkpointed_group("opaque", opaque)
        except rung.StepFailed as exc:
            return f"{exc.step_id}: {exc.error_type}"
        return "stored"

    with LocalEngine(app) as engine:
        run = engine.wait(engine.trigger("t").run_id)
    assert run.output == "/opaque#1: NotSerializable"
    assert calls["body"] == 1


def test_a_group_replaced_by_a_step_is_a_determinism_error(flavor: Flavor) -> None:
    app = rung.App("cgroup-determinism")

    @flavor.task(app, id="t", retry=FAST)
    async def t(ctx: Any, payload: None) -> None:
        if ctx.attempt == 1:
            await ctx.checkpointed_group("enrich", lambda c: c.step("load", lambda: 1))
            await ctx.step("flaky", _declined)
        else:
            await ctx.step("enrich", lambda: 1)

    with LocalEngine(app) as engine:
        run = engine.wait(engine.trigger("t").run_id)
    assert run.status == rung.RunStatus.FAILED
    assert run.error is not None and run.error.type == "NonDeterminismError"
    assert "ctx.checkpointed_group #1 was '/enrich#1'" in run.error.message


@pytest.mark.parametrize("bad", ["a/b", "", 5])
def test_bad_group_names_and_functions_are_refused(bad: object, flavor: Flavor) -> None:
    app = rung.App("cgroup-bad")

    async def one(c: Any) -> int:
        return 1

    @flavor.task(app, id="t")
    async def t(ctx: Any, payload: None) -> None:
        await ctx.checkpointed_group(bad, one)

    with LocalEngine(app) as engine:
        run = engine.wait(engine.trigger("t").run_id)
    assert run.status == rung.RunStatus.FAILED and run.attempt == 1
    assert run.error is not None and run.error.type == "UsageError"


def test_a_group_recorded_by_a_later_attempt_shows_in_time_order(flavor: Flavor) -> None:
    app = rung.App("cgroup-history")
    calls: Counter[str] = Counter()

    async def body(ctx: Any) -> str:
        await ctx.step("first", lambda: 1)
        flaky: str = await ctx.step("flaky", _flaky_once, calls)  # attempt 1 fails, 2 ends it
        return flaky

    @flavor.task(app, id="t", retry=FAST)
    async def t(ctx: Any, payload: None) -> str:
        result: str = await ctx.checkpointed_group("g", body)
        return result

    with LocalEngine(app) as engine:
        run = engine.wait(engine.trigger("t").run_id)
        history = engine.history(run.run_id)

    assert run.output == "ok" and run.attempt == 2
    stamps = [e.timestamp for e in history]
    assert stamps == sorted(stamps)
    second = next(e for e in history if e.type == EventType.ATTEMPT_STARTED and e.attempt == 2)
    group = next(e for e in history if e.type == EventType.STEP_STARTED and e.step == "/g#1")
    assert group.attempt == 2 and group.timestamp >= second.timestamp
