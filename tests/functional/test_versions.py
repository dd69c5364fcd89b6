"""Code versions on LocalEngine (docs/versioning.md): every run finishes on the code it
started on, new runs take the latest, a redrive moves a failed run to the latest, and
a version is retired only when no run needs it."""

from __future__ import annotations

from collections import Counter

import pytest

import rung
from rung._engine.worker import Disposition
from rung.models import EventType
from rung.testing import LocalEngine


def review_app(calls: Counter[str], *, v2: bool) -> rung.App:
    """Version 1 of a flow, or version 2 with a step added before the wait and the
    step after it renamed: a v1 run that waits would fail v2's determinism check."""
    app = rung.App("shop")

    @app.task(id="review")
    def review(ctx: rung.Context, order: str) -> str:
        if v2:
            ctx.step("score", lambda: calls.update(["v2:score"]))
        ctx.step("draft", lambda: calls.update([f"{'v2' if v2 else 'v1'}:draft"]))
        answer = ctx.wait_for_token(ctx.create_token("approve"))
        name = "ship_it" if v2 else "ship"
        ctx.step(name, lambda: calls.update([f"{'v2' if v2 else 'v1'}:{name}"]))
        return f"{order}:{answer}:{'v2' if v2 else 'v1'}"

    return app


def approve(engine: LocalEngine, run_id: str) -> None:
    token = engine.wait_for_token(run_id, "approve")
    engine.client.complete_token(token.id, "yes")


def test_a_waiting_run_finishes_on_its_own_version_and_new_runs_take_the_latest() -> None:
    calls: Counter[str] = Counter()
    with LocalEngine(review_app(calls, v2=False)) as engine:
        old = engine.trigger("review", "o-1").run_id
        engine.wait_for_token(old, "approve")
        assert engine.deploy(review_app(calls, v2=True)) == "2"
        new = engine.trigger("review", "o-2").run_id
        approve(engine, old)
        approve(engine, new)
        done_old, done_new = engine.wait(old), engine.wait(new)

        assert (done_old.status, done_old.output, done_old.version) == (
            "COMPLETED",
            "o-1:yes:v1",
            "1",
        )
        assert (done_new.status, done_new.output, done_new.version) == (
            "COMPLETED",
            "o-2:yes:v2",
            "2",
        )
        assert calls == Counter(
            {"v1:draft": 1, "v1:ship": 1, "v2:score": 1, "v2:draft": 1, "v2:ship_it": 1}
        )
        started = [e for e in engine.history(old) if e.type == EventType.ATTEMPT_STARTED]
        assert [e.version for e in started] == ["1"]  # one attempt, resumed after the wait
        triggered = engine.history(new)[0]
        assert (triggered.type, triggered.version) == (EventType.RUN_TRIGGERED, "2")
        # The run's own log lines carry its version.
        assert {line.fields.get("version") for line in engine.logs(old)} == {"1"}


def test_the_versions_list_counts_runs_in_flight_and_prune_retires_only_unused_ones() -> None:
    calls: Counter[str] = Counter()
    with LocalEngine(review_app(calls, v2=False)) as engine:
        old = engine.trigger("review", "o-1").run_id
        engine.wait_for_token(old, "approve")
        engine.deploy(review_app(calls, v2=True), version="green")
        new = engine.trigger("review", "o-2").run_id
        engine.wait_for_token(new, "approve")

        listed = {v.version: v for v in engine.versions()}
        assert list(listed) == ["1", "green"]
        assert (listed["1"].waiting, listed["1"].in_flight, listed["1"].latest) == (1, 1, False)
        assert (listed["green"].waiting, listed["green"].latest) == (1, True)
        assert engine.prune() == []  # version 1 still has a run waiting
        assert [v.version for v in engine.versions()] == ["1", "green"]

        approve(engine, old)
        assert engine.wait(old).status == "COMPLETED"
        assert engine.prune() == ["1"]
        assert [(v.version, v.exists) for v in engine.versions()] == [("green", True)]
        assert engine.prune() == []  # the latest is never retired
        approve(engine, new)
        assert engine.wait(new).version == "green"


def test_a_redrive_moves_a_failed_run_to_the_latest_version() -> None:
    app1, app2 = rung.App("pay"), rung.App("pay")
    charged: list[str] = []

    @app1.task(id="charge", retry=rung.RetryPolicy(max_attempts=1))
    def charge_v1(ctx: rung.Context, amount: int) -> str:
        ctx.step("reserve", lambda: charged.append("v1:reserve"))
        ctx.step("charge", lambda: 1 // 0)  # the bug
        return "unreachable"

    @app2.task(id="charge", retry=rung.RetryPolicy(max_attempts=1))
    def charge_v2(ctx: rung.Context, amount: int) -> str:
        ctx.step("reserve", lambda: charged.append("v2:reserve"))
        ctx.step("charge", lambda: charged.append("v2:charge"))  # the fix
        return f"charged {amount}"

    with LocalEngine(app1) as engine:
        run_id = engine.trigger("charge", 5).run_id
        failed = engine.wait(run_id)
        assert (failed.status, failed.version) == ("FAILED", "1")
        engine.deploy(app2)
        engine.client.redrive(run_id)
        done = engine.wait(run_id)

        assert (done.status, done.output, done.version) == ("COMPLETED", "charged 5", "2")
        assert charged == ["v1:reserve", "v2:charge"]  # the checkpoint replays, the fix runs
        history = engine.history(run_id)
        redriven = next(e for e in history if e.type == EventType.RUN_REDRIVEN)
        assert redriven.version == "2"  # the version it moved to
        started = [e.version for e in history if e.type == EventType.ATTEMPT_STARTED]
        assert started == ["1", "2"]
        assert done.redrives[0].from_version == "1"


def test_a_replay_starts_on_the_latest_version() -> None:
    app1, app2 = rung.App("echo"), rung.App("echo")

    @app1.task(id="echo")
    def echo_v1(ctx: rung.Context, text: str) -> str:
        return f"v1:{text}"

    @app2.task(id="echo")
    def echo_v2(ctx: rung.Context, text: str) -> str:
        return f"v2:{text}"

    with LocalEngine(app1) as engine:
        first = engine.trigger("echo", "hi").run_id
        assert engine.wait(first).output == "v1:hi"
        engine.deploy(app2)
        again = engine.client.replay(first).run_id
        replayed = engine.wait(again)
        assert (replayed.output, replayed.version, replayed.replay_of) == ("v2:hi", "2", first)


def test_a_run_pinned_to_a_version_that_no_longer_exists_fails_with_what_to_do() -> None:
    calls: Counter[str] = Counter()
    with LocalEngine(review_app(calls, v2=False)) as engine:
        run_id = engine.trigger("review", "o-1").run_id
        engine.wait_for_token(run_id, "approve")
        engine.deploy(review_app(calls, v2=True))
        # As deleting a Lambda version by hand would (``prune`` refuses a version in use).
        engine._versions.remove("1")
        approve(engine, run_id)
        failed = engine.wait(run_id)

        assert failed.status == "FAILED"
        assert failed.error is not None and failed.error.type == "VersionNotFound"
        assert "code version '1', which no longer exists" in failed.error.message
        assert f"rung runs redrive {run_id}" in failed.error.message
        assert calls["v1:ship"] == calls["v2:ship_it"] == 0  # never ran on other code
        assert [(v.version, v.exists) for v in engine.versions()] == [("2", True)]


def family_app(version: str) -> rung.App:
    app = rung.App("family")

    @app.task(id="child")
    def child(ctx: rung.Context, _: None) -> str:
        return version

    @app.task(id="parent")
    def parent(ctx: rung.Context, _: None) -> list[str]:
        token = ctx.create_token("go")
        ctx.wait_for_token(token)
        latest = ctx.trigger_and_wait("child", None)
        own = ctx.trigger_and_wait("child", None, name="own", version="parent")
        return [latest, own]

    return app


def test_children_start_on_the_latest_version_unless_pinned_to_their_parents() -> None:
    with LocalEngine(family_app("v1")) as engine:
        run_id = engine.trigger("parent").run_id
        token = engine.wait_for_token(run_id, "go")
        engine.deploy(family_app("v2"))
        engine.client.complete_token(token.id, None)
        done = engine.wait(run_id)
        assert (done.status, done.output, done.version) == ("COMPLETED", ["v2", "v1"], "1")
        children = {c.output: c.version for c in engine.client.list_children(run_id)}
        assert children == {"v2": "2", "v1": "1"}


def test_bad_version_labels_and_child_versions_are_refused() -> None:
    app = rung.App("labels")

    @app.task(id="t")
    def t(ctx: rung.Context, _: None) -> None:
        ctx.trigger("t", None, version="oldest")  # type: ignore[arg-type]

    with pytest.raises(rung.InvalidConfig, match="non-empty printable string"):
        LocalEngine(app, version=" v1")
    with LocalEngine(app, version="blue") as engine:
        with pytest.raises(rung.UsageError, match="deployed already"):
            engine.deploy(app, version="blue")
        with pytest.raises(rung.UsageError, match="needs a rung.App"):
            engine.deploy("app")  # type: ignore[arg-type]
        failed = engine.wait(engine.trigger("t").run_id)
        assert failed.status == "FAILED"
        assert failed.error is not None
        assert 'version=...) is "latest"' in failed.error.message
        assert [v.version for v in engine.versions()] == ["blue"]


def test_a_late_hand_over_of_a_run_on_no_version_leaves_it_to_the_latest() -> None:
    # As when a redrive moved the run to the latest while a hand-over to its old
    # version was still queued (Lambda keeps asynchronous events for hours).
    app1, app2 = rung.App("late"), rung.App("late")
    for app, label in ((app1, "v1"), (app2, "v2")):
        app.task(id="echo")(lambda ctx, text, label=label: f"{label}:{text}")
    with LocalEngine(app1, workers=0) as engine:
        old_worker = engine.worker
        engine.deploy(app2)
        run_id = engine.trigger("echo", "hi").run_id
        [message] = engine.queue.receive(max_messages=1)

        assert old_worker.handle(message, handed_over=True) == Disposition.KEEP
        run = engine.get_run(run_id)
        assert (run.status, run.version) == ("QUEUED", None)  # not taken by version 1
        [again] = engine.queue.receive(max_messages=1)  # visible again at once
        assert engine.worker.handle(again) == Disposition.ACK
        done = engine.get_run(run_id)
        assert (done.output, done.version) == ("v2:hi", "2")
