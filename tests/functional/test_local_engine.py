"""LocalEngine's own API: ``wait`` and ``wait_for_token`` see every way a run moves."""

from __future__ import annotations

import threading
from datetime import timedelta

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
