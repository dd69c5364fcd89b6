"""Racing writers against the store: every racing state change is one conditional write."""

from __future__ import annotations

import threading
from datetime import timedelta

import rung
from rung._aws.dynamodb import Claimed
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


def _open_token(engine: LocalEngine, run_id: str, token_id: str) -> None:
    from rung.models import TokenState

    now = engine.clock.now()
    engine.store.create_token(
        TokenState(
            id=token_id,
            name="t",
            run_id=run_id,
            step_id="/t#1",
            status="WAITING",
            created_at=now,
            timeout_at=now + timedelta(days=1),
            heartbeat_timeout=None,
            deadline=now + timedelta(days=1),
        )
    )


def test_an_answer_before_the_suspension_makes_the_suspension_refuse() -> None:
    # The interleaving the engine guards against: the worker saw the token open, the
    # answer lands, then the worker suspends. The suspension must see the answer.
    app = rung.App("race3")

    @app.task(id="t")
    def t(ctx: rung.Context, payload: None) -> None: ...

    with LocalEngine(app, workers=0) as engine:
        run_id = engine.trigger("t").run_id
        claim = engine.store.claim_run(run_id, engine.clock.now(), timedelta(minutes=1))
        assert isinstance(claim, Claimed)
        _open_token(engine, run_id, "tok_early")
        state, woke = engine.store.resolve_token(
            "tok_early", status="COMPLETED", result_json="1", error=None, now=engine.clock.now()
        )
        suspended = engine.store.suspend_run(
            run_id,
            claim.token,
            wake_at=None,
            waiting_for="token t",
            now=engine.clock.now(),
            spent=timedelta(0),
            tokens=("tok_early",),
        )
        run = engine.get_run(run_id)
    assert state.status == "COMPLETED" and woke is False  # the run was RUNNING: no wake
    assert suspended is False and run.status == rung.RunStatus.RUNNING


def test_an_answer_after_the_suspension_wakes_the_run() -> None:
    app = rung.App("race4")

    @app.task(id="t")
    def t(ctx: rung.Context, payload: None) -> None: ...

    with LocalEngine(app, workers=0) as engine:
        run_id = engine.trigger("t").run_id
        claim = engine.store.claim_run(run_id, engine.clock.now(), timedelta(minutes=1))
        assert isinstance(claim, Claimed)
        _open_token(engine, run_id, "tok_late")
        suspended = engine.store.suspend_run(
            run_id,
            claim.token,
            wake_at=None,
            waiting_for="token t",
            now=engine.clock.now(),
            spent=timedelta(0),
            tokens=("tok_late",),
        )
        asleep = engine.get_run(run_id)
        state, woke = engine.store.resolve_token(
            "tok_late", status="COMPLETED", result_json="2", error=None, now=engine.clock.now()
        )
        awake = engine.get_run(run_id)
    assert suspended is True and asleep.status == rung.RunStatus.WAITING
    assert asleep.available_at is not None and asleep.available_at.year == 9999  # no timer
    assert state.status == "COMPLETED" and woke is True
    assert awake.available_at is not None and awake.available_at <= engine.clock.now()


def test_twenty_racing_answers_to_one_token_one_wins() -> None:
    app = rung.App("race5")

    @app.task(id="t")
    def t(ctx: rung.Context, payload: None) -> None: ...

    with LocalEngine(app, workers=0) as engine:
        run_id = engine.trigger("t").run_id
        _open_token(engine, run_id, "tok_contested")
        counter = iter(range(100))

        def answer() -> object:
            n = next(counter)
            try:
                return engine.client.complete_token("tok_contested", n).result_json
            except rung.TokenAlreadyResolved as exc:
                return exc

        results = race(20, answer)
        final = engine.client.get_token("tok_contested")
    winners = [r for r in results if isinstance(r, str)]
    assert len(winners) == 1 and final.result_json == winners[0]
    assert all(isinstance(r, rung.TokenAlreadyResolved) for r in results if r not in winners)
