"""``ctx.metadata`` and ``trigger(metadata=)``: small JSON values a run shows about
itself, durable with the run, replayed like the rest of the body, and written with
writes the run makes anyway (docs/metadata.md)."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from datetime import timedelta
from typing import Any

import pydantic
import pytest
from click.testing import CliRunner

import rung
from rung.cli.runs import show_run, trace_run
from rung.errors import InvalidMetadata
from rung.models import RunStatus
from rung.testing import LocalEngine


class Job(pydantic.BaseModel):
    items: int = 4


def _app(seen: list[Any]) -> rung.App:
    app = rung.App("meta")

    @app.task(id="import")
    def import_items(ctx: rung.Context, job: Job) -> dict[str, Any]:
        # What the body reads is what it read the first time, on every replay.
        seen.append(("start", dict(ctx.metadata)))
        ctx.metadata.update(phase="importing", total=job.items)
        for n in range(job.items):
            ctx.step("item", lambda i: i, n)
            ctx.metadata.set("done", ctx.metadata.get("done", 0) + 1)
        seen.append(("before approval", dict(ctx.metadata)))
        token = ctx.create_token("approval")
        ctx.metadata.set("phase", "waiting for approval")
        ctx.wait_for_token(token)
        ctx.metadata.delete("total")
        ctx.metadata.set("phase", "done")
        return dict(ctx.metadata)

    return app


def test_metadata_is_seen_while_the_run_waits_and_replays_deterministically() -> None:
    seen: list[Any] = []
    with LocalEngine(_app(seen)) as engine:
        handle = engine.trigger("import", {"items": 3}, metadata={"source": "api", "done": 0})
        token = engine.wait_for_token(handle.run_id, "approval")
        waiting = engine.get_run(handle.run_id)
        assert waiting.status == RunStatus.WAITING
        assert waiting.metadata == {
            "source": "api",
            "done": 3,
            "total": 3,
            "phase": "waiting for approval",
        }
        engine.client.complete_token(token.id)
        run = engine.wait(handle.run_id, timeout=60)
    assert run.status == RunStatus.COMPLETED
    final = {"source": "api", "done": 3, "phase": "done"}
    assert run.output == final and run.metadata == final
    # Two executions of the body (before and after the wait), each from the trigger's
    # values: the counter was not incremented twice over.
    assert seen == [
        ("start", {"source": "api", "done": 0}),
        ("before approval", {"source": "api", "done": 3, "total": 3, "phase": "importing"}),
        ("start", {"source": "api", "done": 0}),
        ("before approval", {"source": "api", "done": 3, "total": 3, "phase": "importing"}),
    ]


def test_changes_cost_no_write_of_their_own() -> None:
    """Eleven changes in one attempt and none in the replay after its wait: two metadata
    writes in all, each the attempt's last before its final write (none in the replay,
    whose values equal the stored ones)."""
    app = rung.App("meta-cost")

    @app.task(id="count")
    def count(ctx: rung.Context, n: int) -> int:
        for i in range(10):
            ctx.metadata.set("i", i)
        ctx.wait(timedelta(minutes=1))
        ctx.metadata.set("after", True)
        return n

    with LocalEngine(app) as engine:
        writes: Counter[str] = Counter()

        def watch(params: dict[str, Any], **_: Any) -> None:
            if "metadata" in params.get("UpdateExpression", ""):
                writes[params["UpdateExpression"]] += 1

        engine.dynamodb.meta.events.register("provide-client-params.dynamodb.UpdateItem", watch)
        handle = engine.trigger("count", 1)
        run = engine.wait(handle.run_id, timeout=60)
    assert run.metadata == {"i": 9, "after": True}
    assert sum(writes.values()) == 2, writes


def test_the_heartbeat_shows_metadata_while_a_long_step_runs() -> None:
    app = rung.App("meta-live")
    release = threading.Event()

    @app.task(id="long")
    def long(ctx: rung.Context, n: int) -> int:
        ctx.metadata.set("phase", "crunching")
        ctx.step("crunch", lambda: release.wait(30))
        return n

    lease = timedelta(seconds=1.5)  # a beat every half second
    with LocalEngine(app, virtual_time=False, lease_duration=lease) as engine:
        handle = engine.trigger("long", 5)
        deadline = time.monotonic() + 20
        try:
            while engine.get_run(handle.run_id).metadata != {"phase": "crunching"}:
                assert time.monotonic() < deadline, "the heartbeat never wrote the metadata"
                time.sleep(0.05)
            assert engine.get_run(handle.run_id).status == RunStatus.RUNNING
        finally:
            release.set()
        assert engine.wait(handle.run_id, timeout=60).output == 5


def test_an_async_task_sets_metadata_from_gathered_steps() -> None:
    import asyncio

    app = rung.App("meta-async")

    @app.task(id="fan")
    async def fan(ctx: rung.AsyncContext, n: int) -> int:
        async def one(i: int) -> int:
            await asyncio.sleep(0)
            return i

        results = await asyncio.gather(*(ctx.step("one", one, i) for i in range(n)))
        ctx.metadata.update({"sum": sum(results)}, phase="summed")
        return sum(results)

    with LocalEngine(app) as engine:
        run = engine.wait(engine.trigger("fan", 4).run_id, timeout=60)
    assert run.output == 6
    assert run.metadata == {"sum": 6, "phase": "summed"}


@pytest.mark.parametrize(
    ("metadata", "says"),
    [
        (["not", "a", "mapping"], "must be a mapping"),
        ({"": 1}, "is not a name"),
        ({"k" * 129: 1}, "is not a name"),
        ({"when": object()}, "not JSON-serializable"),
        ({"big": "x" * 20_000}, "at most 16,384 bytes of metadata"),
    ],
)
def test_bad_metadata_at_trigger_is_refused_and_nothing_is_stored(metadata: Any, says: str) -> None:
    with LocalEngine(_app([])) as engine:
        with pytest.raises(InvalidMetadata, match=says):
            engine.trigger("import", {"items": 1}, metadata=metadata)
        assert list(engine.list_runs()) == []


def test_a_change_past_the_limit_raises_in_the_body_and_changes_nothing() -> None:
    app = rung.App("meta-limit")

    @app.task(id="big")
    def big(ctx: rung.Context, n: int) -> str:
        ctx.metadata.set("small", n)
        try:
            ctx.metadata.update(a="x" * 10_000, b="y" * 10_000)
        except InvalidMetadata as exc:
            return str(exc)
        return "accepted"

    with LocalEngine(app) as engine:
        run = engine.wait(engine.trigger("big", 1).run_id, timeout=60)
    assert run.status == RunStatus.COMPLETED
    assert "at most 16,384 bytes" in run.output
    assert run.metadata == {"small": 1}


def test_batch_items_carry_metadata_and_runs_show_displays_it() -> None:
    with LocalEngine(_app([])) as engine:
        results = engine.client.batch_trigger(
            "import",
            [
                rung.TriggerItem({"items": 1}, metadata={"tenant": "acme"}),
                rung.TriggerItem({"items": 1}, metadata={"bad": object()}),
            ],
        )
        assert results[1].error is not None and results[1].error.type == "InvalidMetadata"
        assert results[0].handle is not None
        run_id = results[0].handle.run_id
        engine.wait_for_token(run_id, "approval")

        class Target:  # what `rung runs show` reads through: the engine's own client
            def client(self) -> rung.Client:
                return engine.client

        shown = CliRunner().invoke(show_run, [run_id], obj=Target()).output
        traced = CliRunner().invoke(trace_run, [run_id], obj=Target()).output
        as_json = json.loads(CliRunner().invoke(show_run, [run_id, "--json"], obj=Target()).output)
    assert "metadata" in shown and '"tenant": "acme"' in shown
    assert '"tenant": "acme"' in traced and "metadata: " in traced
    assert as_json["metadata"]["tenant"] == "acme"
    assert as_json["metadata"]["phase"] == "waiting for approval"


@pytest.mark.parametrize(
    ("where", "says"),
    [
        ("step", "cannot be changed inside a step"),
        ("map", "inside a ctx.map/ctx.parallel branch"),
        ("group", "inside a ctx.map/ctx.parallel branch or a ctx.checkpointed_group"),
    ],
)
def test_changes_from_code_a_replay_skips_are_refused_with_the_fix_named(
    where: str, says: str
) -> None:
    """A step's code, a map branch and a checkpointed group do not run again when the
    body replays: a change made there would be lost by every later attempt. The run
    fails with the fix named; a plain ``ctx.group`` (which replays) may change it."""
    app = rung.App("meta-where")

    @app.task(id="where", retry=rung.RetryPolicy(max_attempts=1))
    def task(ctx: rung.Context, place: str) -> str:
        with ctx.group("named"):
            ctx.metadata.set("named", True)
        if place == "step":
            ctx.step("work", lambda: ctx.metadata.set("progress", 0.5))
        elif place == "map":
            ctx.map([1], lambda c, i: c.metadata.set("item", i), name="items")
        else:
            ctx.checkpointed_group("grouped", lambda c: c.metadata.set("g", 1))
        return "changed"

    with LocalEngine(app) as engine:
        run = engine.wait(engine.trigger("where", where).run_id, timeout=60)
    assert run.status == RunStatus.FAILED
    assert run.error is not None and says in run.error.message
    assert "Change metadata in the task body" in run.error.message
    assert run.metadata == {"named": True}


def test_a_store_error_writing_metadata_does_not_change_how_the_run_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Metadata is best effort: a throttled write of it (injected: the emulator does not
    throttle) is logged, and the run completes as its body did."""
    from botocore.exceptions import ClientError

    app = rung.App("meta-flush")

    @app.task(id="t", retry=rung.RetryPolicy(max_attempts=1))
    def t(ctx: rung.Context, n: int) -> str:
        ctx.metadata.set("phase", "done")
        return "ok"

    with LocalEngine(app) as engine:
        real = engine.store.write_metadata

        def throttled(*args: Any, **kwargs: Any) -> None:
            raise ClientError(
                {"Error": {"Code": "ProvisionedThroughputExceededException", "Message": "slow"}},
                "UpdateItem",
            )

        engine.worker.store.write_metadata = throttled  # type: ignore[method-assign]
        run = engine.wait(engine.trigger("t", 1).run_id, timeout=60)
        engine.worker.store.write_metadata = real  # type: ignore[method-assign]
    assert (run.status, run.output) == (RunStatus.COMPLETED, "ok")
    assert run.metadata == {}  # not written; the run's outcome unchanged
    assert "metadata not written" in caplog.text
