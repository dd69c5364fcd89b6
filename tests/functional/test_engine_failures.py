"""Failure cases, tested rather than assumed: duplicate delivery, lost leases, crashes
around checkpoints, poison messages, and invocations that run out of time."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import pytest

import rung
from rung._aws.dynamodb import FAILURE_TRACEBACK_CHARS, Claimed
from rung._aws.sqs import QueueMessage
from rung._engine.worker import Disposition
from rung._util.clock import VirtualClock
from rung.models import EventType
from rung.testing import LocalEngine, SimulatedCrash
from tests.flavors import Flavor

FAST = rung.RetryPolicy(max_attempts=3, initial_interval=1)


def virtual(engine: LocalEngine) -> VirtualClock:
    assert isinstance(engine.clock, VirtualClock)
    return engine.clock


def receive_one(engine: LocalEngine) -> QueueMessage:
    for _ in range(50):
        messages = engine.queue.receive(max_messages=1)
        if messages:
            return messages[0]
        time.sleep(0.01)
    raise AssertionError("no message arrived")


def test_one_message_delivered_to_two_workers_at_once_runs_each_step_once(flavor: Flavor) -> None:
    app = rung.App("dup")
    calls: Counter[str] = Counter()
    entered = threading.Event()
    other_done = threading.Event()

    def charge() -> str:
        calls["charge"] += 1
        entered.set()
        other_done.wait(timeout=10)  # hold the lease while the duplicate is handled
        return "ch_1"

    @flavor.task(app, id="t")
    async def t(ctx: Any, payload: None) -> str:
        result: str = await ctx.step("charge", charge)
        return result

    with LocalEngine(app, workers=0) as engine:
        handle = engine.trigger("t")
        message = receive_one(engine)
        results: list[Disposition] = []
        barrier = threading.Barrier(2)

        def work() -> None:
            barrier.wait()
            results.append(engine.worker.handle(message))
            other_done.set()

        threads = [threading.Thread(target=work) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=20)
        run = engine.get_run(handle.run_id)
        delayed = engine.sqs.get_queue_attributes(
            QueueUrl=engine.queue_url, AttributeNames=["ApproximateNumberOfMessagesDelayed"]
        )["Attributes"]["ApproximateNumberOfMessagesDelayed"]
    assert calls["charge"] == 1
    # The loser found the run busy and deferred it to the lease's end (a minute): a fresh
    # delayed message, so that nothing stays in flight that long; the received one is done.
    assert results == [Disposition.ACK, Disposition.ACK] and delayed == "1"
    assert run.status == "COMPLETED" and run.output == "ch_1" and run.attempt == 1


def test_a_worker_that_lost_its_lease_cannot_change_the_run() -> None:
    app = rung.App("lease")

    @app.task(id="t")
    def t(ctx: rung.Context, payload: None) -> None: ...

    lease = timedelta(minutes=1)
    with LocalEngine(app, workers=0, lease_duration=lease) as engine:
        run_id = engine.trigger("t").run_id
        clock = virtual(engine)
        first = engine.store.claim_run(run_id, clock.now(), lease)
        assert isinstance(first, Claimed) and first.token == 1
        clock.advance(timedelta(minutes=2))  # the first worker stalls past its lease
        stale = engine.get_run(run_id)
        failure = rung.models.Failure(
            attempt=1,
            kind="crash",
            step_id=None,
            error=rung.ErrorInfo("WorkerLost", "lease expired"),
            started_at=None,
            failed_at=clock.now(),
            step_started_at=None,
            delay=None,
        )
        second = engine.store.reclaim_crashed(stale, clock.now(), lease, failure)
        assert isinstance(second, Claimed) and second.token == 2
        with pytest.raises(rung.LeaseLost, match=r"lease \(token 1\) is no longer valid"):
            engine.store.complete_run(run_id, first.token, '"zombie"', clock.now())
        with pytest.raises(rung.LeaseLost):
            engine.store.schedule_retry(run_id, first.token, failure, clock.now(), clock.now())
        after = engine.get_run(run_id)
    assert after.status == "RUNNING" and after.output is None and after.attempt == 2


def test_a_stalled_worker_stops_when_another_took_over_its_run(flavor: Flavor) -> None:
    app = rung.App("stall")
    calls: Counter[str] = Counter()
    engine_ref: list[LocalEngine] = []
    takeover: list[Disposition] = []

    def slow_step() -> int:
        calls["step"] += 1
        if calls["step"] == 1:  # worker A stalls past its lease; worker B takes over
            engine = engine_ref[0]
            virtual(engine).advance(timedelta(minutes=5))
            message = QueueMessage("dup", f'{{"v":1,"run_id":"{run_ids[0]}"}}', "rh", 2)
            thread = threading.Thread(target=lambda: takeover.append(engine.worker.handle(message)))
            thread.start()
            thread.join(timeout=20)
        return calls["step"]

    @flavor.task(app, id="t", retry=FAST)
    async def t(ctx: Any, payload: None) -> int:
        result: int = await ctx.step("s", slow_step)
        return result

    run_ids: list[str] = []
    with LocalEngine(app, workers=0, lease_duration=timedelta(minutes=1)) as engine:
        engine_ref.append(engine)
        run_ids.append(engine.trigger("t").run_id)
        stalled = engine.worker.handle(receive_one(engine))
        run = engine.get_run(run_ids[0])
        history = engine.history(run_ids[0])
    assert takeover == [Disposition.ACK]
    assert stalled == Disposition.KEEP  # A's fenced write was refused; it stopped
    assert run.status == "COMPLETED" and run.output == 2  # B's result; A wrote nothing
    assert calls["step"] == 2
    assert [e.type for e in history].count(EventType.WORKER_LOST) == 1


def test_a_crash_after_the_side_effect_but_before_the_checkpoint_repeats_the_step(
    flavor: Flavor,
) -> None:
    app = rung.App("crash1")
    effects: list[str] = []

    def charge() -> str:
        effects.append(rung.current_step().idempotency_key)  # the side effect happened
        if len(effects) == 1:
            raise SimulatedCrash()  # ... and the worker died before recording it
        return "ch_1"

    @flavor.task(app, id="t", retry=FAST)
    async def t(ctx: Any, payload: None) -> str:
        result: str = await ctx.step("charge", charge)
        return result

    with LocalEngine(app) as engine:
        handle = engine.trigger("t")
        run = engine.wait(handle.run_id)
        history = engine.history(handle.run_id)
    assert run.status == "COMPLETED" and run.attempt == 2
    assert effects == [f"{handle.run_id}:/charge#1"] * 2  # repeated, with the same key
    lost = [e for e in history if e.type == EventType.WORKER_LOST]
    assert len(lost) == 1 and lost[0].error is not None and "lease expired" in lost[0].error.message


def test_a_crash_after_the_checkpoint_does_not_repeat_the_step(flavor: Flavor) -> None:
    app = rung.App("crash2")
    calls: Counter[str] = Counter()

    def charge() -> str:
        calls["charge"] += 1
        return "ch_1"

    def email() -> None:
        calls["email"] += 1

    @flavor.task(app, id="t", retry=FAST)
    async def t(ctx: Any, payload: None) -> str:
        charge_id: str = await ctx.step("charge", charge)
        await ctx.step("email", email)
        return charge_id

    with LocalEngine(app) as engine:
        real_record = engine.store.record_step
        crashed: list[str] = []

        def record_then_crash(run_id: str, record: Any) -> Any:
            stored = real_record(run_id, record)
            if not crashed:  # the checkpoint is written, then the process dies
                crashed.append(record.step_id)
                raise SimulatedCrash()
            return stored

        engine.store.record_step = record_then_crash  # type: ignore[method-assign]
        run = engine.wait(engine.trigger("t").run_id)
    assert crashed == ["/charge#1"]
    assert run.status == "COMPLETED" and run.output == "ch_1" and run.attempt == 2
    assert calls == {"charge": 1, "email": 1}


def test_repeated_crashes_exhaust_the_task_policy_and_fail_the_run(flavor: Flavor) -> None:
    app = rung.App("crash3")
    calls: Counter[str] = Counter()

    def doomed() -> None:
        calls["n"] += 1
        raise SimulatedCrash()

    @flavor.task(app, id="t", retry=rung.RetryPolicy(max_attempts=2))
    async def t(ctx: Any, payload: None) -> None:
        await ctx.step("doomed", doomed)

    with LocalEngine(app) as engine:
        run = engine.wait(engine.trigger("t").run_id)
        types = [str(e.type) for e in engine.history(run.run_id)]
    assert calls["n"] == 2
    assert run.status == "FAILED" and run.error is not None and run.error.type == "WorkerLost"
    assert types.count("WorkerLost") == 2 and types[-1] == "RunFailed"


def test_malformed_oversize_and_unknown_messages_reach_the_dlq_and_harm_no_run(
    flavor: Flavor,
) -> None:
    app = rung.App("poison")

    @flavor.task(app, id="t")
    async def t(ctx: Any, payload: int) -> int:
        result: int = await ctx.step("double", lambda: payload * 2)
        return result

    garbage = [
        "not json at all",
        "[1, 2, 3]",
        '{"v": 1, "run_id": "run_does_not_exist"}',
        '{"v": 99, "run_id": "run_x"}',
        '{"v": 1, "run_id": 7}',
        '{"v": 1, "run_id": "' + "r" * 200_000 + '"}',
    ]
    with LocalEngine(app, max_receive_count=3) as engine:
        for body in garbage:
            engine.sqs.send_message(QueueUrl=engine.queue_url, MessageBody=body)
        handles = [engine.trigger("t", n) for n in range(5)]
        runs = [engine.wait(h.run_id) for h in handles]
        deadline = time.monotonic() + 30
        dead: list[str] = []
        while time.monotonic() < deadline and len(dead) < len(garbage):
            dead = engine.dead_letters()
            time.sleep(0.05)
        faults = list(engine.faults)
    assert [r.output for r in runs] == [0, 2, 4, 6, 8]
    assert sorted(dead) == sorted(garbage)
    assert faults == []


def test_a_run_continues_in_a_fresh_invocation_when_time_runs_short(flavor: Flavor) -> None:
    app = rung.App("long")
    calls: Counter[str] = Counter()
    engine_ref: list[LocalEngine] = []

    def slow(n: int) -> int:
        calls[f"s{n}"] += 1
        virtual(engine_ref[0]).advance(timedelta(seconds=12))  # a 12-second step
        return n

    @flavor.task(app, id="t")
    async def t(ctx: Any, payload: None) -> int:
        return sum([await ctx.step(f"s{n}", slow, n) for n in range(5)])

    with LocalEngine(
        app, invocation_timeout=timedelta(seconds=30), min_time_left=timedelta(seconds=10)
    ) as engine:
        engine_ref.append(engine)
        run = engine.wait(engine.trigger("t").run_id)
        types = [str(e.type) for e in engine.history(run.run_id)]
    assert run.status == "COMPLETED" and run.output == 10
    assert run.attempt == 1  # continuing is not a new attempt
    assert calls == {f"s{n}": 1 for n in range(5)}
    assert run.lease_token >= 3  # it took several invocations
    # exactly three: steps 0-1, then 2-3, then 4 (12 s steps, 30 s per invocation, and a
    # step starts only with 10 s left)
    assert run.lease_token == 3
    assert types.count("AttemptStarted") == 1
    assert "RetryScheduled" not in types and "WorkerLost" not in types


def test_crashes_beyond_the_dlq_receive_count_do_not_strand_the_run(flavor: Flavor) -> None:
    app = rung.App("crash4")
    calls: Counter[str] = Counter()

    def crashes_four_times() -> str:
        calls["n"] += 1
        if calls["n"] <= 4:
            raise SimulatedCrash()
        return "finally"

    @flavor.task(app, id="t", retry=rung.RetryPolicy(max_attempts=6))
    async def t(ctx: Any, payload: None) -> str:
        result: str = await ctx.step("s", crashes_four_times)
        return result

    with LocalEngine(app, max_receive_count=3) as engine:
        run = engine.wait(engine.trigger("t").run_id)
        dead = engine.dead_letters()
    assert run.status == "COMPLETED" and run.output == "finally" and run.attempt == 5
    assert dead == []


def test_a_huge_error_message_is_stored_capped_and_the_run_goes_on(flavor: Flavor) -> None:
    app = rung.App("hugeerr")
    calls: Counter[str] = Counter()

    def fails_loudly() -> str:
        calls["n"] += 1
        if calls["n"] == 1:
            raise ValueError("x" * 500_000)
        return "ok"

    @flavor.task(app, id="t", retry=FAST)
    async def t(ctx: Any, payload: None) -> str:
        result: str = await ctx.step("s", fails_loudly)
        return result

    with LocalEngine(app) as engine:
        run = engine.wait(engine.trigger("t").run_id)
        [failed] = [e for e in engine.history(run.run_id) if e.type == EventType.STEP_FAILED]
        faults = list(engine.faults)
    assert run.status == "COMPLETED" and run.output == "ok"
    assert failed.error is not None and failed.error.message.endswith("(500,000 characters in all)")
    assert len(failed.error.message) < 2100
    assert faults == []


def test_a_retried_failures_long_traceback_is_stored_cut_to_its_innermost_end(
    flavor: Flavor,
) -> None:
    app = rung.App("deeperr")
    calls: Counter[str] = Counter()

    # Two functions calling each other: Python folds a run of identical frames into
    # one line, so plain recursion would make a short traceback.
    def deep(depth: int) -> str:
        if depth == 0:
            raise ValueError("at the bottom")
        return deeper(depth - 1)

    def deeper(depth: int) -> str:
        return deep(depth)

    def fails_deep_once() -> str:
        calls["n"] += 1
        return deep(100) if calls["n"] == 1 else "ok"

    @flavor.task(app, id="t", retry=FAST)
    async def t(ctx: Any, payload: None) -> str:
        result: str = await ctx.step("s", fails_deep_once)
        return result

    with LocalEngine(app) as engine:
        run = engine.wait(engine.trigger("t").run_id)
        [failed] = [e for e in engine.history(run.run_id) if e.type == EventType.STEP_FAILED]
    assert run.status == "COMPLETED" and run.output == "ok"
    assert failed.error is not None
    # A retried failure keeps the last FAILURE_TRACEBACK_CHARS of its traceback: the
    # frames nearest the error, and the error itself.
    traceback = failed.error.traceback
    assert traceback.startswith("...\n") and len(traceback) == 4 + FAILURE_TRACEBACK_CHARS
    assert traceback.rstrip().endswith("ValueError: at the bottom")


@pytest.mark.slow  # ~30 s of wall time: the queue's visibility timeout after the "kill"
@pytest.mark.timeout(180)
def test_a_step_that_outlives_its_invocation_fails_with_an_error_that_says_so(
    flavor: Flavor,
) -> None:
    # Wall-clock time: the watchdog is a real timer. The invocation has 3 s (the claim
    # and the quick step take well under the 2 s before the watchdog fires); the step
    # takes 3.5 s, and then the "Lambda" kills it (SimulatedCrash, as at a timeout).
    app = rung.App("overrun")
    calls: Counter[str] = Counter()

    def too_slow() -> str:
        calls["slow"] += 1
        time.sleep(3.5)
        raise SimulatedCrash()  # the invocation's time is up: the process is stopped

    @flavor.task(app, id="t", retry=rung.RetryPolicy(max_attempts=1))
    async def t(ctx: Any, payload: None) -> str:
        await ctx.step("quick", lambda: calls.update(["quick"]))
        result: str = await ctx.step("export", too_slow)
        return result

    with LocalEngine(
        app,
        virtual_time=False,
        invocation_timeout=timedelta(seconds=3),
        min_time_left=timedelta(milliseconds=100),
        lease_duration=timedelta(seconds=4),
    ) as engine:
        run = engine.wait(engine.trigger("t").run_id, timeout=120)
        history = engine.history(run.run_id)
    assert run.status == "FAILED"
    assert run.error is not None and run.error.type == "StepTimedOut"
    assert "step '/export#1'" in run.error.message
    assert "still running when its invocation reached the function's time limit" in (
        run.error.message
    )
    assert "split the step, or raise the FunctionTimeout parameter" in run.error.message
    assert calls == {"quick": 1, "slow": 1}
    lost = [e for e in history if str(e.type) == "WorkerLost"]
    assert len(lost) == 1 and lost[0].error is not None and lost[0].error.type == "StepTimedOut"


# -- misuse of rung's API inside a run fails at once --------------------------------------


async def _negative_wait(ctx: Any) -> None:
    await ctx.wait(-5)


async def _token_without_time(ctx: Any) -> None:
    await ctx.create_token("t", timeout=0)


async def _one(ctx: Any) -> int:
    return 1


async def _parallel_of_none_at_a_time(ctx: Any) -> None:
    await ctx.parallel([_one], max_concurrency=0)


async def _bad_policy(ctx: Any) -> None:
    rung.RetryPolicy(backoff=float("nan"))


async def _unknown_child(ctx: Any) -> None:
    await ctx.trigger("no-such-task")


MISUSES: dict[str, tuple[Callable[[Any], Awaitable[None]], str]] = {
    "wait": (_negative_wait, "ctx.wait duration must not be negative"),
    "token": (_token_without_time, "create_token timeout must be positive"),
    "parallel": (_parallel_of_none_at_a_time, "max_concurrency must be an int >= 1"),
    "policy": (_bad_policy, "RetryPolicy.backoff"),
    "child": (_unknown_child, "has no task 'no-such-task'"),
}


@pytest.mark.parametrize("misuse", sorted(MISUSES))
def test_misuse_of_rungs_api_in_the_task_body_fails_the_run_at_once(
    misuse: str, flavor: Flavor
) -> None:
    app = rung.App("misuse")
    call, message = MISUSES[misuse]
    tries: list[int] = []

    @flavor.task(app, id="t", retry=rung.RetryPolicy(max_attempts=5, initial_interval=1))
    async def t(ctx: Any, payload: None) -> None:
        tries.append(ctx.attempt)
        await call(ctx)

    with LocalEngine(app) as engine:
        run = engine.wait(engine.trigger("t").run_id)
        events = [e.type for e in engine.history(run.run_id)]

    assert run.status == rung.RunStatus.FAILED
    assert tries == [1]  # not retried: another attempt would only repeat it
    assert run.error is not None and message in run.error.message
    assert EventType.RETRY_SCHEDULED not in events


def test_misuse_inside_a_step_fails_the_step_for_good_without_retries(flavor: Flavor) -> None:
    app = rung.App("misuse-step")
    tries: list[int] = []

    async def nested(ctx: Any) -> None:
        tries.append(1)
        await ctx.wait(5)  # a wait inside a step: UsageError

    nested_step = flavor.step(nested, name="nested")

    @flavor.task(app, id="t", retry=rung.RetryPolicy(max_attempts=5, initial_interval=1))
    async def t(ctx: Any, payload: None) -> str:
        try:
            await nested_step(ctx)
        except rung.StepFailed as exc:
            return f"{exc.error_type}: {exc.message}"
        return "no error"

    with LocalEngine(app) as engine:
        run = engine.wait(engine.trigger("t").run_id)

    assert run.status == rung.RunStatus.COMPLETED
    assert tries == [1]
    assert run.output.startswith("UsageError: ctx.wait() was called inside step '/nested#1'")


def test_a_users_own_exceptions_keep_their_retry_policy(flavor: Flavor) -> None:
    app = rung.App("user-errors")
    tries: list[int] = []

    @flavor.task(app, id="t", retry=rung.RetryPolicy(max_attempts=3, initial_interval=1))
    async def t(ctx: Any, payload: None) -> None:
        tries.append(ctx.attempt)
        raise ValueError("not yet")  # a ValueError, as InvalidConfig is, but the user's

    with LocalEngine(app) as engine:
        run = engine.wait(engine.trigger("t").run_id)

    assert run.status == rung.RunStatus.FAILED
    assert tries == [1, 2, 3]
