"""Durable waits, tokens, callbacks and polling on LocalEngine, with skipped time."""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pydantic
import pytest

import rung
from rung._engine.worker import Disposition
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


@pytest.mark.parametrize(
    "length",
    [
        timedelta(seconds=3),
        timedelta(minutes=20),  # past SQS's 15-minute delay cap
        timedelta(hours=30),  # past the 12-hour visibility cap
        timedelta(days=40),  # past the 14-day message retention
    ],
    ids=["3s", "20m", "30h", "40d"],
)
def test_a_wait_of_any_length_suspends_and_resumes_past_it(
    flavor: Flavor, length: timedelta
) -> None:
    app = rung.App("w")
    calls: Counter[str] = Counter()

    @flavor.task(app, id="sleepy")
    async def sleepy(ctx: Any, payload: None) -> str:
        await ctx.step("before", lambda: calls.update(["before"]))
        await ctx.wait(length)
        await ctx.step("after", lambda: calls.update(["after"]))
        return "done"

    with LocalEngine(app) as engine:
        handle = engine.trigger("sleepy")
        run = engine.wait(handle.run_id, timeout=60)
        history = engine.history(handle.run_id)
    assert run.status == rung.RunStatus.COMPLETED
    assert run.output == "done"
    # Each side of the wait ran once: the replay after the wait skipped "before".
    assert calls == Counter({"before": 1, "after": 1})
    assert run.finished_at is not None and run.started_at is not None
    assert run.finished_at - run.started_at >= length
    # Waiting is not an attempt, and it cost no compute.
    assert run.attempt == 1
    assert run.compute_time < timedelta(seconds=30)
    waits = [e for e in history if e.type == rung.EventType.WAIT_STARTED]
    assert [e.step for e in waits] == ["/wait#1"]


def test_a_waiting_run_is_waiting_and_holds_no_worker(flavor: Flavor) -> None:
    app = rung.App("w")
    release = threading.Event()

    @flavor.task(app, id="slow-wait")
    async def slow_wait(ctx: Any, payload: None) -> str:
        await ctx.wait(timedelta(hours=2))
        return "ok"

    @flavor.task(app, id="quick")
    async def quick(ctx: Any, payload: None) -> str:
        release.set()
        return "quick"

    # One worker, virtual time off: if the waiting run held it, "quick" could not run.
    with LocalEngine(app, workers=1, virtual_time=False) as engine:
        waiting = engine.trigger("slow-wait")
        run = wait_for_status(engine, waiting.run_id, rung.RunStatus.WAITING)
        assert run.waiting_for is not None and "/wait#1 until" in run.waiting_for
        assert run.wake_kind == "timer"
        assert run.available_at is not None and run.available_at > run.updated_at
        other = engine.trigger("quick")
        assert engine.wait(other.run_id, timeout=30).status == rung.RunStatus.COMPLETED
        assert engine.get_run(waiting.run_id).status == rung.RunStatus.WAITING


def test_wait_until_a_time_and_a_past_time_does_not_wait(flavor: Flavor) -> None:
    app = rung.App("w")
    target = datetime.now(UTC) + timedelta(days=3)

    @flavor.task(app, id="until")
    async def until(ctx: Any, payload: None) -> list[str]:
        await ctx.wait_until(datetime(2000, 1, 1, tzinfo=UTC), name="past")
        await ctx.wait_until(target, name="future")
        return [await ctx.step("now", lambda: "after")]

    with LocalEngine(app) as engine:
        handle = engine.trigger("until")
        run = engine.wait(handle.run_id)
    assert run.status == rung.RunStatus.COMPLETED
    assert run.finished_at is not None and run.finished_at >= target


def test_wait_argument_errors_are_clear(flavor: Flavor) -> None:
    app = rung.App("w")
    errors: list[str] = []

    @flavor.task(app, id="bad")
    async def bad(ctx: Any, payload: None) -> None:
        calls: list[Callable[[], Awaitable[object]]] = [
            lambda: ctx.wait("1h"),
            lambda: ctx.wait(-5),
            lambda: ctx.wait(timedelta(days=400)),
            lambda: ctx.wait_until(datetime(2030, 1, 1)),  # naive
            lambda: ctx.create_token("t", timeout=0),
            lambda: ctx.create_token("t", timeout=60, heartbeat_timeout=120),
            lambda: ctx.wait_for_token("tok_abc"),
            lambda: ctx.wait(1, name="a/b"),
            lambda: ctx.wait_until(datetime.now(UTC) + timedelta(days=400)),
        ]
        for call in calls:
            try:
                await call()
            except rung.RungError as exc:
                errors.append(str(exc))

    with LocalEngine(app) as engine:
        run = engine.wait(engine.trigger("bad").run_id)
    assert run.status == rung.RunStatus.COMPLETED
    assert len(errors) == 9
    assert "timedelta or a number of seconds" in errors[0]
    assert "must not be negative" in errors[1]
    assert "must be at most 366d, got 400d" in errors[2]
    assert "wait in a loop of shorter waits" in errors[2]
    assert "timezone-aware" in errors[3]
    assert "create_token timeout must be positive, got 0 seconds" in errors[4]
    assert "heartbeat_timeout must be at most 1m, got 120 seconds" in errors[5]
    assert "needs the Token from ctx.create_token" in errors[6]
    assert "contains '/' or '#'" in errors[7]
    assert "more than 366d away; wait in a loop" in errors[8]


class Decision(pydantic.BaseModel):
    approved: bool
    by: str


def _approval_app(flavor: Flavor, calls: Counter[str], **token_options: Any) -> rung.App:
    app = rung.App("approvals")

    @flavor.task(app, id="approve")
    async def approve(ctx: Any, payload: dict[str, str]) -> dict[str, Any]:
        token = await ctx.create_token("approval", **token_options)
        await ctx.step("ask", lambda tid: calls.update(["ask"]) or tid, token.id)
        try:
            decision = await ctx.wait_for_token(token, result_type=Decision)
        except rung.TokenTimedOut as exc:
            return {"outcome": "timed out", "error": exc.message}
        except rung.TokenFailed as exc:
            return {"outcome": "rejected", "type": exc.error_type, "error": exc.message}
        calls.update(["after"])
        return {"outcome": "approved" if decision.approved else "denied", "by": decision.by}

    return app


def _token_of(engine: LocalEngine, run_id: str) -> str:
    token = engine.wait_for_token(run_id, "approval")
    run = engine.get_run(run_id)
    assert run.status == rung.RunStatus.WAITING
    assert run.waiting_for is not None and f"token 'approval' ({token.id})" in run.waiting_for
    assert run.wake_kind == "token"
    assert token.id.startswith("tok_") and token.status == "WAITING"
    return token.id


def test_a_token_completed_from_outside_resumes_the_run_with_its_value(flavor: Flavor) -> None:
    calls: Counter[str] = Counter()
    app = _approval_app(flavor, calls, timeout=timedelta(days=3))
    with LocalEngine(app) as engine:
        handle = engine.trigger("approve", {})
        token_id = _token_of(engine, handle.run_id)
        state = engine.client.get_token(token_id)
        assert state.status == "WAITING" and state.run_id == handle.run_id
        engine.client.complete_token(token_id, Decision(approved=True, by="ana"))
        run = engine.wait(handle.run_id)
        # Completing twice: a clear error, and the finished run is not disturbed.
        with pytest.raises(rung.TokenAlreadyResolved, match="already completed"):
            engine.client.complete_token(token_id, {"approved": False, "by": "eve"})
        with pytest.raises(rung.TokenAlreadyResolved):
            engine.client.fail_token(token_id, "too late")
        assert engine.get_run(handle.run_id).output == run.output
    assert run.status == rung.RunStatus.COMPLETED
    assert run.output == {"outcome": "approved", "by": "ana"}
    assert calls == Counter({"ask": 1, "after": 1})
    assert len(token_id) > 30  # 192 random bits, url-safe


def test_a_failed_token_raises_in_the_task_body(flavor: Flavor) -> None:
    calls: Counter[str] = Counter()
    app = _approval_app(flavor, calls)
    with LocalEngine(app) as engine:
        handle = engine.trigger("approve", {})
        token_id = _token_of(engine, handle.run_id)
        engine.client.fail_token(token_id, PermissionError("manager said no"))
        run = engine.wait(handle.run_id)
    assert run.output == {
        "outcome": "rejected",
        "type": "PermissionError",
        "error": "manager said no",
    }


def test_a_token_times_out_and_the_timeout_is_catchable(flavor: Flavor) -> None:
    calls: Counter[str] = Counter()
    app = _approval_app(flavor, calls, timeout=timedelta(hours=5))
    with LocalEngine(app) as engine:
        handle = engine.trigger("approve", {})
        token_id = _token_of(engine, handle.run_id)
        # Virtual time does not skip a token's deadline by itself: the test moves it.
        # (wait_for_token returned after the suspending invocation had finished.)
        assert engine.get_run(handle.run_id).status == rung.RunStatus.WAITING
        assert isinstance(engine.clock, VirtualClock)
        engine.clock.advance(timedelta(hours=5))
        run = engine.wait(handle.run_id)
        with pytest.raises(rung.TokenAlreadyResolved, match="timed out"):
            engine.client.complete_token(token_id, {"approved": True, "by": "late"})
    assert run.status == rung.RunStatus.COMPLETED
    assert run.output["outcome"] == "timed out"
    assert "not completed within its timeout of 5h" in run.output["error"]
    assert run.finished_at is not None and run.started_at is not None
    assert run.finished_at - run.started_at >= timedelta(hours=5)


def test_heartbeats_keep_a_token_open_and_a_missed_heartbeat_times_it_out(
    flavor: Flavor,
) -> None:
    # The "outside" party heartbeats from steps of the run itself, so that the virtual
    # clock (which jumps whenever the engine is idle) cannot overtake the test.
    app = rung.App("hb")
    clocks: list[VirtualClock] = []
    clients: list[rung.Client] = []

    def work_then_heartbeat(token_id: str, minutes: int, beat: bool) -> str:
        clocks[0].advance(timedelta(minutes=minutes))
        if beat:
            return str(clients[0].heartbeat_token(token_id).deadline)
        return ""

    @flavor.task(app, id="hb")
    async def hb(ctx: Any, payload: None) -> dict[str, str]:
        token = await ctx.create_token("job", timeout=timedelta(days=1), heartbeat_timeout=3600)
        await ctx.step("work1", work_then_heartbeat, token.id, 30, True)
        await ctx.step("work2", work_then_heartbeat, token.id, 50, False)  # 80 min > 1 h
        try:
            await ctx.wait_for_token(token)
        except rung.TokenTimedOut as exc:
            return {"error": exc.message}
        return {"error": ""}

    with LocalEngine(app) as engine:
        assert isinstance(engine.clock, VirtualClock)
        clocks.append(engine.clock)
        clients.append(engine.client)
        handle = engine.trigger("hb")
        token = engine.wait_for_token(handle.run_id, "job")
        # 80 minutes in, past the first hour: the heartbeat at 30 min kept it open.
        assert token.status == "WAITING"
        assert timedelta(minutes=90) <= token.deadline - token.created_at < timedelta(minutes=91)
        engine.clock.advance(timedelta(minutes=20))
        run = engine.wait(handle.run_id)
        final = engine.client.get_token(token.id)
    assert run.status == rung.RunStatus.COMPLETED
    assert "no heartbeat arrived within 1h" in run.output["error"]
    assert final.status == "TIMED_OUT"


def test_token_errors_for_unknown_ids_and_bad_values(flavor: Flavor) -> None:
    calls: Counter[str] = Counter()
    app = _approval_app(flavor, calls)
    with LocalEngine(app) as engine:
        with pytest.raises(rung.TokenNotFound, match="not a token id"):
            engine.client.complete_token("run_123", 1)
        with pytest.raises(rung.TokenNotFound, match="no token with id"):
            engine.client.complete_token("tok_doesnotexist", 1)
        handle = engine.trigger("approve", {})
        token_id = _token_of(engine, handle.run_id)
        with pytest.raises(rung.InvalidPayload, match="not JSON-serializable"):
            engine.client.complete_token(token_id, object())
        with pytest.raises(rung.PayloadTooLarge):
            engine.client.complete_token(token_id, "x" * 11_000_000)
        with pytest.raises(rung.UsageError, match="error message or an exception"):
            engine.client.fail_token(token_id, "")
        # None of that disturbed the token or the run.
        assert engine.client.get_token(token_id).status == "WAITING"
        assert engine.get_run(handle.run_id).status == rung.RunStatus.WAITING
        engine.client.complete_token(token_id, {"approved": False, "by": "bo"})
        assert engine.wait(handle.run_id).output == {"outcome": "denied", "by": "bo"}


def test_a_token_completed_before_the_run_waits_for_it_needs_no_suspension(
    flavor: Flavor,
) -> None:
    app = rung.App("early")
    box: dict[str, str] = {}
    completed = threading.Event()

    @flavor.task(app, id="early")
    async def early(ctx: Any, payload: None) -> Any:
        token = await ctx.create_token("t")
        box["id"] = token.id
        await ctx.step("slow", lambda: completed.wait(10))
        return await ctx.wait_for_token(token)

    with LocalEngine(app) as engine:
        handle = engine.trigger("early")
        deadline = time.monotonic() + 10
        while "id" not in box and time.monotonic() < deadline:
            time.sleep(0.01)
        engine.client.complete_token(box["id"], [1, 2, 3])
        completed.set()
        run = engine.wait(handle.run_id)
    assert run.output == [1, 2, 3]
    assert run.waiting_for is None and run.wake_kind is None


def test_wait_for_callback_submits_the_token_and_returns_the_answer(flavor: Flavor) -> None:
    app = rung.App("cb")
    submitted: list[str] = []

    @flavor.task(app, id="cb")
    async def cb(ctx: Any, payload: None) -> Any:
        return await ctx.wait_for_callback("webhook", submitted.append, timeout=timedelta(hours=1))

    with LocalEngine(app) as engine:
        handle = engine.trigger("cb")
        wait_for_status(engine, handle.run_id, rung.RunStatus.WAITING)
        assert len(submitted) == 1
        engine.client.complete_token(submitted[0], {"status": "paid"})
        run = engine.wait(handle.run_id)
        steps = [e.step for e in engine.history(handle.run_id) if e.step]
    assert run.output == {"status": "paid"}
    assert len(submitted) == 1  # the submit step ran once, across the suspension
    assert "webhook/token#1" in steps and "webhook/submit#1" in steps


def test_wait_for_callback_needs_no_name(flavor: Flavor) -> None:
    app = rung.App("cb-unnamed")
    submitted: list[str] = []

    @flavor.task(app, id="cb")
    async def cb(ctx: Any, payload: None) -> Any:
        first = await ctx.wait_for_callback(submitted.append, timeout=timedelta(hours=1))
        second = await ctx.wait_for_callback(submitted.append, timeout=timedelta(hours=1))
        named = await ctx.wait_for_callback(submitted.append, name="review")
        return [first, second, named]

    with LocalEngine(app) as engine:
        handle = engine.trigger("cb")
        for n in range(3):
            engine.wait_for_token(handle.run_id)
            assert len(submitted) == n + 1
            engine.client.complete_token(submitted[n], n)
        run = engine.wait(handle.run_id)
        steps = [e.step for e in engine.history(handle.run_id) if e.step]
    assert run.output == [0, 1, 2]
    assert "callback/submit#1" in steps and "callback/submit#2" in steps
    assert "review/token:wait#1" in steps


def test_wait_for_callback_takes_its_name_and_submit_by_keyword_too(flavor: Flavor) -> None:
    app = rung.App("cb-keywords")
    submitted: list[str] = []

    @flavor.task(app, id="cb")
    async def cb(ctx: Any, payload: None) -> Any:
        return [
            await ctx.wait_for_callback("a", submit=submitted.append),
            await ctx.wait_for_callback(name="b", submit=submitted.append),
            await ctx.wait_for_callback(submit=submitted.append),
        ]

    with LocalEngine(app) as engine:
        handle = engine.trigger("cb")
        for n in range(3):
            engine.wait_for_token(handle.run_id)
            engine.client.complete_token(submitted[n], n)
        run = engine.wait(handle.run_id)
        steps = {e.step for e in engine.history(handle.run_id) if e.step}
    assert run.output == [0, 1, 2]
    assert {"a/submit#1", "b/submit#1", "callback/submit#1"} <= steps


def test_wait_for_callback_refuses_two_names_and_a_name_after_submit(flavor: Flavor) -> None:
    app = rung.App("cb-bad")
    errors: list[str] = []

    @flavor.task(app, id="cb")
    async def cb(ctx: Any, payload: None) -> None:
        calls: list[Callable[[], Awaitable[object]]] = [
            lambda: ctx.wait_for_callback("a", print, name="b"),
            lambda: ctx.wait_for_callback(print, "a"),
            lambda: ctx.wait_for_callback("a", "not callable"),
            lambda: ctx.wait_for_callback(print, submit=print),
            lambda: ctx.wait_for_callback("a"),
        ]
        for call in calls:
            try:
                await call()
            except rung.UsageError as exc:
                errors.append(str(exc))

    with LocalEngine(app) as engine:
        engine.wait(engine.trigger("cb").run_id)
    assert [e.split(":")[0] for e in errors] == [
        "ctx.wait_for_callback('a', submit, name='b') names the callback twice",
        "ctx.wait_for_callback(submit, ...) takes the name first when both are positional",
        "ctx.wait_for_callback('a', submit)",
        "ctx.wait_for_callback got submit twice (positionally and as submit=)",
        "ctx.wait_for_callback('a', submit)",
    ]


def test_wait_for_condition_polls_durably_until_done(flavor: Flavor) -> None:
    app = rung.App("poll")
    polls: list[int] = []

    def check(state: dict[str, int]) -> dict[str, int]:
        polls.append(state["n"])
        return {"n": state["n"] + 1}

    @flavor.task(app, id="poll")
    async def poll(ctx: Any, payload: None) -> dict[str, int]:
        state: dict[str, int] = await ctx.wait_for_condition(
            check,
            {"n": 0},
            rung.Poll(until=lambda s: s["n"] >= 4, interval=timedelta(minutes=10), backoff=2),
        )
        return state

    with LocalEngine(app) as engine:
        handle = engine.trigger("poll")
        run = engine.wait(handle.run_id)
    assert run.output == {"n": 4}
    assert polls == [0, 1, 2, 3]  # each poll ran once, across three suspensions
    assert run.finished_at is not None and run.started_at is not None
    # 10 + 20 + 40 minutes of waiting between the four polls.
    assert run.finished_at - run.started_at >= timedelta(minutes=70)


def test_wait_for_condition_stops_at_its_cap_with_a_clear_error(flavor: Flavor) -> None:
    app = rung.App("poll")

    @flavor.task(app, id="never", retry=rung.RetryPolicy(max_attempts=1))
    async def never(ctx: Any, payload: None) -> Any:
        return await ctx.wait_for_condition(
            lambda s: s + 1, 0, rung.Poll(until=lambda s: False, interval=60, max_polls=3)
        )

    with LocalEngine(app) as engine:
        run = engine.wait(engine.trigger("never").run_id)
    assert run.status == rung.RunStatus.FAILED
    assert run.error is not None and run.error.type == "ConditionNotMet"
    assert "did not hold after 3 polls (last state: 3)" in run.error.message


def test_groups_scope_step_ids_and_reentry_continues_numbering(flavor: Flavor) -> None:
    app = rung.App("groups")

    @flavor.task(app, id="g")
    async def g(ctx: Any, payload: None) -> list[str]:
        out = []
        with ctx.group("billing"):
            out.append(await ctx.step("charge", lambda: rung.current_step().step_id))
            with ctx.group("refund"):
                out.append(await ctx.step("charge", lambda: rung.current_step().step_id))
        with ctx.group("billing"):
            out.append(await ctx.step("charge", lambda: rung.current_step().step_id))
        out.append(await ctx.step("charge", lambda: rung.current_step().step_id))
        return out

    with LocalEngine(app) as engine:
        run = engine.wait(engine.trigger("g").run_id)
    assert run.output == [
        "billing/charge#1",
        "billing/refund/charge#1",
        "billing/charge#2",
        "/charge#1",
    ]


def test_a_wait_replaced_by_a_step_is_a_determinism_error(flavor: Flavor) -> None:
    app = rung.App("nd")
    version = {"v": 1}

    @flavor.task(app, id="nd", retry=rung.RetryPolicy(max_attempts=1))
    async def nd(ctx: Any, payload: None) -> None:
        if version["v"] == 1:
            await ctx.wait(2, name="pause")
        else:
            await ctx.step("pause", lambda: None)

    # No worker threads: the test hands each message over itself, so the code changes
    # while the run waits, however slow the machine.
    with LocalEngine(app, workers=0) as engine:
        handle = engine.trigger("nd")
        _deliver(engine)
        assert engine.get_run(handle.run_id).status == rung.RunStatus.WAITING
        version["v"] = 2
        assert isinstance(engine.clock, VirtualClock)
        engine.clock.advance(timedelta(seconds=3))
        _deliver(engine)
        run = engine.get_run(handle.run_id)
    assert run.status == rung.RunStatus.FAILED
    assert run.error is not None and run.error.type == "NonDeterminismError"
    assert "wait #1 was '/pause#1'" in run.error.message
    assert "calls step '/pause#1'" in run.error.message


def test_max_duration_ends_a_run_timed_out_and_waits_do_not_count(flavor: Flavor) -> None:
    app = rung.App("limits")
    done: list[int] = []
    clocks: list[VirtualClock] = []

    def work(n: int) -> None:
        clocks[0].advance(timedelta(minutes=1))  # the step takes a (virtual) minute
        done.append(n)

    @flavor.task(app, id="bounded", max_duration=timedelta(minutes=5))
    async def bounded(ctx: Any, payload: None) -> None:
        await ctx.wait(timedelta(hours=10))  # waiting is free: does not use the budget
        for i in range(10):
            await ctx.step("work", work, i)

    with LocalEngine(app) as engine:
        assert isinstance(engine.clock, VirtualClock)
        clocks.append(engine.clock)
        handle = engine.trigger("bounded")
        run = engine.wait(handle.run_id)
        history = engine.history(handle.run_id)
    assert run.status == rung.RunStatus.TIMED_OUT
    assert run.error is not None and run.error.type == "MaxDurationExceeded"
    assert "max_duration of 300 s" in run.error.message
    assert done == [0, 1, 2, 3, 4]
    assert history[-1].type == rung.EventType.RUN_TIMED_OUT


def test_tokens_answered_while_their_runs_suspend_are_never_missed(flavor: Flavor) -> None:
    # The answer races the suspension: each token is completed the moment its id is
    # known, while the run is on its way into wait_for_token. A missed wake-up would
    # leave the run WAITING (virtual time never skips a token's deadline) and fail here.
    app = rung.App("race")
    announced: list[tuple[str, int]] = []
    lock = threading.Lock()

    def announce(token_id: str, n: int) -> None:
        with lock:
            announced.append((token_id, n))

    @flavor.task(app, id="race")
    async def race(ctx: Any, payload: int) -> Any:
        token = await ctx.create_token("t")
        await ctx.step("announce", announce, token.id, payload)
        return await ctx.wait_for_token(token)

    with LocalEngine(app, workers=3) as engine:
        handles = [engine.trigger("race", n) for n in range(20)]
        answered = 0
        deadline = time.monotonic() + 60
        while answered < 20 and time.monotonic() < deadline:
            with lock:
                todo = announced[answered:]
            for token_id, n in todo:
                engine.client.complete_token(token_id, n * 10)
                answered += 1
            time.sleep(0.001)
        runs = [engine.wait(h.run_id, timeout=60) for h in handles]
    assert answered == 20
    assert [r.output for r in runs] == [n * 10 for n in range(20)]
    assert all(r.status == rung.RunStatus.COMPLETED for r in runs)


def test_the_trace_shows_waits_tokens_and_their_durations(flavor: Flavor) -> None:
    from rung.cli import build_trace

    app = rung.App("trace")

    @flavor.task(app, id="t")
    async def t(ctx: Any, payload: None) -> int:
        await ctx.step("a", lambda: 1)
        await ctx.wait(timedelta(hours=2))
        token = await ctx.create_token("ok", timeout=60)
        with contextlib.suppress(rung.TokenTimedOut):
            await ctx.wait_for_token(token)
        b: int = await ctx.step("b", lambda: 2)
        return b

    with LocalEngine(app) as engine:
        handle = engine.trigger("t")
        token = engine.wait_for_token(handle.run_id, "ok")
        waiting = build_trace(engine.get_run(handle.run_id), engine.history(handle.run_id))
        assert isinstance(engine.clock, VirtualClock)
        engine.clock.advance(timedelta(minutes=2))
        run = engine.wait(handle.run_id)
        lines = build_trace(run, engine.history(handle.run_id))
    assert waiting[-1].kind == "waiting" and token.id in waiting[-1].what
    assert [line.kind for line in lines] == [
        "triggered", "attempt", "step", "wait", "token", "wait", "step", "end",
    ]  # fmt: skip
    wait, token_wait = lines[3], lines[5]
    assert wait.what == "⏸ /wait#1" and wait.took is not None
    assert timedelta(hours=2) <= wait.took < timedelta(hours=2, seconds=5)
    assert token_wait.error is not None and token_wait.error.type == "TokenTimedOut"


def _deliver(engine: LocalEngine) -> None:
    """Play the event source on this thread (a LocalEngine with workers=0)."""
    while messages := engine.queue.receive(max_messages=10):
        for message in messages:
            if engine.worker.handle(message) == Disposition.ACK:
                engine.queue.delete(message)


def test_a_token_wait_comes_back_at_its_deadline_when_the_clock_moves_during_suspension(
    flavor: Flavor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The message of a run that waits for a token is due at the token's deadline,
    counted when the message is deferred, not when the wait was decided. (A test that
    moved the virtual clock past the deadline while the worker was between its store
    write and its queue call once left the run waiting for good.)"""
    app = rung.App("moved-clock")

    @flavor.task(app, id="t")
    async def t(ctx: Any, payload: None) -> str:
        token = await ctx.create_token("ok", timeout=60)
        try:
            return str(await ctx.wait_for_token(token))
        except rung.TokenTimedOut:
            return "timed out"

    with LocalEngine(app, workers=0) as engine:
        clock = engine.clock
        assert isinstance(clock, VirtualClock)
        suspend = engine.store.suspend_run

        # The interleaving needs another thread's move between two calls of one
        # handle(); wrapping the store call puts the clock move exactly there.
        def suspend_then_clock_moves(*args: Any, **kwargs: Any) -> Any:
            done = suspend(*args, **kwargs)
            clock.advance(timedelta(minutes=2))  # past the 60 s deadline
            return done

        monkeypatch.setattr(engine.store, "suspend_run", suspend_then_clock_moves)
        handle = engine.trigger("t")
        _deliver(engine)  # suspends, then finds its message due again: it times out
        run = engine.get_run(handle.run_id)

    assert (run.status, run.output) == (rung.RunStatus.COMPLETED, "timed out")


def test_a_token_times_out_at_its_deadline_even_when_its_run_looks_later(
    flavor: Flavor,
) -> None:
    app = rung.App("late-look")

    @flavor.task(app, id="t")
    async def t(ctx: Any, payload: None) -> str:
        token = await ctx.create_token("answer", timeout=3)
        await ctx.wait(6)  # the run looks at the token only after this
        try:
            await ctx.wait_for_token(token)
        except rung.TokenTimedOut as exc:
            return exc.message
        return "answered"

    with LocalEngine(app) as engine:
        run = engine.wait(engine.trigger("t").run_id)
        [token] = engine.client.list_tokens(run.run_id)
        history = engine.history(run.run_id)

    assert run.status == rung.RunStatus.COMPLETED
    assert "not completed within its timeout" in run.output
    assert token.status == "TIMED_OUT"
    assert token.resolved_at == token.timeout_at  # at its deadline, not 3 s later
    ended = [e for e in history if e.type == rung.EventType.WAIT_ENDED]
    assert [e.step for e in ended] == ["/answer:wait#1", "/wait#1"]  # the token's end first
    assert ended[0].timestamp == token.timeout_at
    stamps = [e.timestamp for e in history]
    assert stamps == sorted(stamps)


def test_a_token_past_its_deadline_reads_timed_out_before_its_run_looks(
    flavor: Flavor,
) -> None:
    app = rung.App("unlooked")

    @flavor.task(app, id="t")
    async def t(ctx: Any, payload: None) -> str:
        # (a minute: the virtual clock lets wall time through, and a loaded machine must
        # not run it out before the test looks)
        first = await ctx.create_token("first", timeout=60)
        second = await ctx.create_token("second", timeout=timedelta(hours=1))
        await ctx.wait_for_token(second)
        try:
            return str(await ctx.wait_for_token(first))
        except rung.TokenTimedOut:
            return "first timed out"

    with LocalEngine(app) as engine:
        handle = engine.trigger("t")
        second = engine.wait_for_token(handle.run_id, "second")
        first = next(s for s in engine.client.list_tokens(handle.run_id) if s.name == "first")
        assert first.status == "WAITING"
        assert isinstance(engine.clock, VirtualClock)
        engine.clock.advance(timedelta(minutes=2))  # past the first token's deadline only

        read = engine.client.get_token(first.id)
        listed = {s.name: s.status for s in engine.client.list_tokens(handle.run_id)}
        with pytest.raises(rung.TokenAlreadyResolved, match="timed out"):
            engine.client.complete_token(first.id, "too late")
        engine.client.complete_token(second.id, "ok")
        run = engine.wait(handle.run_id)

    assert (read.status, read.resolved_at) == ("TIMED_OUT", read.timeout_at)
    assert listed == {"first": "TIMED_OUT", "second": "WAITING"}
    assert run.output == "first timed out"


def test_history_keeps_program_order_for_past_waits_and_callbacks(flavor: Flavor) -> None:
    app = rung.App("history-order")

    @flavor.task(app, id="t")
    async def t(ctx: Any, payload: None) -> Any:
        await ctx.step("a", lambda: 1)
        await ctx.wait_until(datetime(2020, 1, 1, tzinfo=UTC))  # a past time: no wait
        return await ctx.wait_for_callback(lambda token_id: None, timeout=60)

    with LocalEngine(app) as engine:
        handle = engine.trigger("t")
        token = engine.wait_for_token(handle.run_id)
        engine.client.complete_token(token.id, "ok")
        run = engine.wait(handle.run_id)
        history = engine.history(handle.run_id)

    assert run.output == "ok"
    stamps = [e.timestamp for e in history]
    assert stamps == sorted(stamps)
    steps = [(str(e.type), e.step) for e in history if e.step]
    assert steps.index(("WaitStarted", "/wait#1")) < steps.index(("WaitEnded", "/wait#1"))
    assert steps.index(("StepSucceeded", "/a#1")) < steps.index(("WaitEnded", "/wait#1"))
    submit = steps.index(("StepStarted", "callback/submit#1"))
    assert submit < steps.index(("WaitStarted", "callback/token:wait#1"))
    wait = next(e for e in history if e.type == rung.EventType.WAIT_STARTED and e.step == "/wait#1")
    assert wait.delay == timedelta(0)


def test_a_token_name_too_long_for_its_wait_is_refused_before_the_token_exists(
    flavor: Flavor,
) -> None:
    app = rung.App("long-token")

    @flavor.task(app, id="t")
    async def t(ctx: Any, payload: None) -> str:
        try:
            await ctx.create_token("y" * 198)
        except rung.UsageError as exc:
            return str(exc)
        return "no error"

    with LocalEngine(app) as engine:
        handle = engine.trigger("t")
        run = engine.wait(handle.run_id)
        tokens = engine.client.list_tokens(handle.run_id)
    assert run.status == rung.RunStatus.COMPLETED, run.error
    assert run.output == (
        f"ctx.create_token(name='{'y' * 20}...', 198 characters): its wait is the step "
        "'<name>:wait', and a step name is at most 200 characters; use a name of at "
        "most 195 characters"
    )
    assert tokens == []
