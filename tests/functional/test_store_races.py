"""Racing writers against the store: every racing state change is one conditional write."""

from __future__ import annotations

import threading
from datetime import timedelta

import rung
from rung._store import Claimed
from rung.models import StepRecord
from rung.testing import LocalEngine


def race(n: int, fn: object) -> list[object]:
    results: list[object] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(n, timeout=30)

    def go() -> None:
        try:
            barrier.wait()
            results.append(fn())  # type: ignore[operator]
        except BaseException as exc:  # a racer that raised must fail the test
            errors.append(exc)

    threads = [threading.Thread(target=go) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [], errors
    assert len(results) == n
    return results


def test_twenty_racing_claims_give_the_run_to_exactly_one_worker() -> None:
    app = rung.App("race")

    @app.task(id="t")
    def t(ctx: rung.Context, payload: None) -> None: ...

    with LocalEngine(app, workers=0) as engine:
        run_id = engine.trigger("t").run_id
        results = race(
            20, lambda: engine.store.claim_run(run_id, engine.clock.now(), timedelta(minutes=1))
        )
    winners = [r for r in results if isinstance(r, Claimed)]
    assert len(winners) == 1 and winners[0].token == 1
    assert all(getattr(r, "reason", None) == "busy" for r in results if r is not winners[0])


def test_racing_checkpoints_keep_the_first_value_and_losers_read_it() -> None:
    app = rung.App("race2")

    @app.task(id="t")
    def t(ctx: rung.Context, payload: None) -> None: ...

    with LocalEngine(app, workers=0) as engine:
        run_id = engine.trigger("t").run_id
        now = engine.clock.now()
        counter = iter(range(1000))

        def write() -> StepRecord:
            value = next(counter)
            record = StepRecord(
                step_id="/s#1",
                seq=1,
                outcome="succeeded",
                attempt=1,
                run_attempt=1,
                started_at=now,
                finished_at=now,
                result_json=str(value),
            )
            return engine.store.record_step(run_id, record)

        results = race(20, write)
        stored = engine.store.load_steps(run_id)["/s#1"]
    assert {r.result_json for r in results} == {stored.result_json}  # type: ignore[attr-defined]
