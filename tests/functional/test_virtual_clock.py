"""LocalEngine's virtual clock: what it jumps to, and what it leaves to the test.

The clock jumps to the next moment a message would move a run forward (a timer, a
backoff, an expired lease), never to a token's deadline: answering or timing out a
token is the test's move. A message left behind by an earlier wait (its run was woken
by a fresh message and went on) moves nothing when it becomes visible, so it is no
reason to jump either.
"""

from __future__ import annotations

import time
from datetime import timedelta

import pytest

import rung
from rung._util.clock import VirtualClock
from rung.testing import LocalEngine


def _approval_app() -> rung.App:
    app = rung.App("clock")

    @app.task(id="approve")
    def approve(ctx: rung.Context, minutes: int) -> str:
        token = ctx.create_token("approval", timeout=timedelta(minutes=minutes))
        try:
            return str(ctx.wait_for_token(token))
        except rung.TokenTimedOut:
            return "timed out"

    @app.task(id="parent")
    def parent(ctx: rung.Context, payload: None) -> str:
        token = ctx.create_token("first", timeout=timedelta(hours=1))
        first = ctx.wait_for_token(token)
        # No timeout on the child: the parent waits with no timer of its own.
        child = ctx.trigger_and_wait(approve, 30)
        return f"{first} then {child}"

    return app


def _child_of(engine: LocalEngine, parent_id: str) -> str:
    deadline = time.monotonic() + 30
    while not (children := engine.client.list_children(parent_id)):
        assert time.monotonic() < deadline, f"run {parent_id} started no child"
        time.sleep(0.01)
    return children[0].run_id


def _assert_still_waits_for_its_token(engine: LocalEngine, run_id: str, token_id: str) -> None:
    # Whatever the engine would do on its own (a wrong jump of the clock included) is
    # done once it has settled: the run must still wait, however slow the machine.
    engine.settle()
    with pytest.raises(TimeoutError, match=r"waiting for token 'approval'") as caught:
        engine.wait(run_id, timeout=2)
    assert "complete the token or advance engine.clock" in str(caught.value)
    assert engine.client.get_token(token_id).status == "WAITING"


def test_a_finished_runs_leftover_message_does_not_time_out_another_runs_token() -> None:
    with LocalEngine(_approval_app()) as engine:
        assert isinstance(engine.clock, VirtualClock)
        second = engine.trigger("approve", 30).run_id
        waiting = engine.wait_for_token(second, "approval")
        engine.clock.advance(timedelta(minutes=10))
        first = engine.trigger("approve", 30).run_id
        token = engine.wait_for_token(first, "approval")
        # The answer wakes the run with a fresh message; the message that waited for
        # its token's deadline stays in the queue, invisible until 10 minutes after
        # the other token's deadline.
        engine.client.complete_token(token.id, "yes")
        assert engine.wait(first).output == "yes"
        _assert_still_waits_for_its_token(engine, second, waiting.id)

        # The token is still the test's to answer.
        engine.client.complete_token(waiting.id, "later")
        assert engine.wait(second).output == "later"


def test_a_leftover_message_of_a_run_waiting_with_no_timer_is_no_reason_to_jump() -> None:
    with LocalEngine(_approval_app()) as engine:
        parent = engine.trigger("parent").run_id
        token = engine.wait_for_token(parent, "first")
        engine.client.complete_token(token.id, "yes")
        # The parent now waits for its child (no timer), and the child for its token;
        # the parent's message that waited for the first token's hour is still there.
        child = _child_of(engine, parent)
        waiting = engine.wait_for_token(child, "approval")
        _assert_still_waits_for_its_token(engine, child, waiting.id)
        assert engine.get_run(parent).status == rung.RunStatus.WAITING

        engine.client.complete_token(waiting.id, "later")
        assert engine.wait(parent).output == "yes then later"


def test_a_second_engine_that_could_not_start_leaves_the_first_ones_clock_alone() -> None:
    app = rung.App("second")

    @app.task(id="later")
    def later(ctx: rung.Context, payload: None) -> str:
        ctx.wait(timedelta(hours=1))
        return "done"

    with LocalEngine(app) as engine:
        second = LocalEngine(app)
        with pytest.raises(rung.UsageError, match="another LocalEngine with virtual time"):
            second.start()
        second.stop()  # as a fixture's teardown would: the first engine's clock stays
        run = engine.wait(engine.trigger(later).run_id, timeout=10)
    assert run.status == rung.RunStatus.COMPLETED
    assert run.finished_at is not None and run.started_at is not None
    assert run.finished_at - run.started_at >= timedelta(hours=1)
