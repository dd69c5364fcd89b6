"""LocalEngine's own API: ``wait`` and ``wait_for_token`` see every way a run moves."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest

import rung
from rung.testing import LocalEngine


def _token_app() -> rung.App:
    app = rung.App("engine-api")

    @app.task(id="approve")
    def approve(ctx: rung.Context, payload: None) -> str:
        token = ctx.create_token("approval", timeout=timedelta(days=1))
        return str(ctx.wait_for_token(token))

    return app


def test_wait_returns_a_run_that_another_thread_cancels_while_it_waits() -> None:
    # The end is written by the test's thread, not while a worker handles one of the
    # run's messages (what wait() wakes on): wait() reads the run again by itself.
    with LocalEngine(_token_app()) as engine:
        run_id = engine.trigger("approve").run_id
        errors: list[BaseException] = []

        def cancel_once_it_waits() -> None:
            try:
                engine.wait_for_token(run_id, "approval")
                engine.client.cancel(run_id, reason="not needed")
            except BaseException as exc:  # reported by the test below
                errors.append(exc)

        canceller = threading.Thread(target=cancel_once_it_waits)
        canceller.start()
        run = engine.wait(run_id, timeout=30)
        canceller.join(timeout=30)

    assert errors == []
    assert run.status == rung.RunStatus.CANCELED


def test_wait_returns_each_run_of_a_burst_as_it_ends() -> None:
    app = rung.App("burst")

    @app.task(id="double")
    def double(ctx: rung.Context, n: int) -> int:
        return ctx.step("double", lambda: n * 2)

    with LocalEngine(app) as engine:
        handles = [engine.trigger("double", n) for n in range(20)]
        runs = [engine.wait(h.run_id, timeout=60) for h in reversed(handles)]

    assert [r.output for r in runs] == [n * 2 for n in reversed(range(20))]


def test_settle_returns_once_the_engine_has_done_all_it_would_do_on_its_own() -> None:
    app = rung.App("settle")

    @app.task(id="nap")
    def nap(ctx: rung.Context, n: int) -> int:
        ctx.wait(timedelta(hours=n))  # virtual time jumps there by itself
        return ctx.step("double", lambda: 2 * n)

    with LocalEngine(app, workers=2) as engine:
        handles = [engine.trigger(nap, n) for n in (1, 2, 3)]
        engine.settle()
        runs = [engine.get_run(h.run_id) for h in handles]  # read, not waited for
    assert [(r.status, r.output) for r in runs] == [
        (rung.RunStatus.COMPLETED, 2 * n) for n in (1, 2, 3)
    ]


def test_settle_counts_the_workers_a_test_blocks_and_times_out_on_others() -> None:
    app = rung.App("settleblock")
    entered, hold = threading.Event(), threading.Event()

    def wait_for_the_test() -> bool:
        entered.set()
        return hold.wait(60)

    @app.task(id="held")
    def held(ctx: rung.Context, payload: None) -> bool:
        return ctx.step("hold", wait_for_the_test)

    with LocalEngine(app, workers=2) as engine:
        handle = engine.trigger(held)
        assert entered.wait(30)
        try:
            with pytest.raises(TimeoutError, match=r"still busy after 0.5s of waiting"):
                engine.settle(timeout=0.5)  # the held run keeps a worker busy
            engine.settle(blocked=1)
        finally:
            hold.set()
        run = engine.wait(handle.run_id)
    assert run.status == rung.RunStatus.COMPLETED and run.output is True


def stuck_app() -> rung.App:
    app = rung.App("stuck")

    @app.task(id="approval")
    def approval(ctx: rung.Context, _: None) -> str:
        return str(ctx.wait_for_token(ctx.create_token("approve")))

    @app.task(id="parent")
    def parent(ctx: rung.Context, _: None) -> str:
        return str(ctx.trigger_and_wait("approval", None))

    @app.task(id="nap")
    def nap(ctx: rung.Context, _: None) -> str:
        ctx.wait(timedelta(hours=1))
        return "rested"

    return app


@pytest.mark.timeout(120)  # a wait that does not give up at once would take an hour
@pytest.mark.parametrize("task", ["approval", "parent"])
def test_wait_gives_up_at_once_when_only_the_test_can_move_the_run(task: str) -> None:
    with LocalEngine(stuck_app()) as engine:
        run_id = engine.trigger(task).run_id
        with pytest.raises(TimeoutError) as caught:
            engine.wait(run_id, timeout=3600)
        message = str(caught.value)
        assert f"run {run_id} is still WAITING" in message
        assert "nothing this engine would do by itself can move it" in message
        if task == "approval":
            assert "waiting for token 'approve'" in message
            assert "complete the token or advance engine.clock" in message
        else:
            assert "engine.client.complete_token(...), or advance engine.clock" in message
        # Answering the token moves it, and wait then returns it.
        approval = run_id if task == "approval" else engine.client.list_children(run_id)[0]
        approval_id = approval if isinstance(approval, str) else approval.run_id
        token = engine.wait_for_token(approval_id, "approve")
        engine.client.complete_token(token.id, "yes")
        assert engine.wait(run_id, timeout=3600).output == "yes"


def test_wait_still_sees_a_timer_through() -> None:
    with LocalEngine(stuck_app()) as engine:
        assert engine.wait(engine.trigger("nap").run_id).output == "rested"


def test_the_engine_and_a_client_use_a_boto3_session_of_your_own() -> None:
    import boto3

    seen: list[str] = []
    mine = boto3.session.Session(
        aws_access_key_id="test", aws_secret_access_key="test", region_name="us-east-1"
    )
    mine.events.register("before-call", lambda model, **_: seen.append(model.name))
    with LocalEngine(stuck_app(), session=mine) as engine:
        assert engine.wait(engine.trigger("nap").run_id).output == "rested"
        assert {"PutItem", "SendMessage", "ReceiveMessage", "UpdateItem"} <= set(seen)
        seen.clear()
        client = rung.Client(
            None,
            table_name=engine.table_name,
            queue_url=engine.queue_url,
            endpoint_url=engine.endpoint_url,
            session=mine,
        )
        assert len(client.list_runs()) == 1
        assert "Query" in seen or "BatchGetItem" in seen


def test_wait_can_wait_for_a_run_another_thread_moves_later() -> None:
    with LocalEngine(stuck_app()) as engine:
        run_id = engine.trigger("approval").run_id
        token = engine.wait_for_token(run_id, "approve")
        later = threading.Timer(1.5, engine.client.complete_token, args=(token.id, "late"))
        later.start()
        try:
            assert engine.wait(run_id, timeout=60, fail_fast=False).output == "late"
        finally:
            later.join()
