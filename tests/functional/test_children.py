"""Child runs: trigger_and_wait, batch_trigger_and_wait and ctx.trigger on LocalEngine,
with skipped (virtual) time."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import pydantic
import pytest

import rung
from rung._engine.worker import Disposition
from rung._util.clock import VirtualClock
from rung.testing import LocalEngine, SimulatedCrash
from tests.flavors import Flavor

FAST = rung.RetryPolicy(max_attempts=3, initial_interval=timedelta(seconds=1))


class Strict(pydantic.BaseModel):
    n: int


class Quote(pydantic.BaseModel):
    sku: str
    price: int


def family_app(flavor: Flavor, calls: Counter[str]) -> rung.App:
    app = rung.App("family")

    @flavor.task(app, id="price", retry=rung.RetryPolicy(max_attempts=1))
    async def price(ctx: Any, payload: dict[str, Any]) -> Quote:
        calls[f"price:{payload['sku']}"] += 1
        if payload.get("fail"):
            await ctx.step("lookup", _raise, f"no price for {payload['sku']}")
        await ctx.wait(timedelta(minutes=5))  # children take a while: the parent must suspend
        return Quote(sku=payload["sku"], price=len(payload["sku"]) * 100)

    @flavor.task(app, id="parent")
    async def parent(ctx: Any, payload: dict[str, Any]) -> dict[str, Any]:
        quote = await ctx.trigger_and_wait(price, {"sku": payload["sku"]})
        calls["parent:after"] += 1
        return {"sku": quote.sku, "price": quote.price, "is_quote": isinstance(quote, Quote)}

    @flavor.task(app, id="careful")
    async def careful(ctx: Any, payload: None) -> dict[str, Any]:
        try:
            await ctx.trigger_and_wait("price", {"sku": "zz", "fail": True})
        except rung.ChildRunFailed as exc:
            return {
                "caught": type(exc).__name__,
                "child": exc.run_id,
                "status": exc.status,
                "type": exc.error_type,
                "message": exc.message,
                "is_step_failed": isinstance(exc, rung.StepFailed),
            }
        return {"caught": None}

    @flavor.task(app, id="careless")
    async def careless(ctx: Any, payload: None) -> None:
        await ctx.trigger_and_wait("price", {"sku": "zz", "fail": True})

    @flavor.task(app, id="batch")
    async def batch(ctx: Any, payload: list[dict[str, Any]]) -> list[dict[str, Any]]:
        results = await ctx.batch_trigger_and_wait(price, payload)
        return [
            {
                "run_id": r.run_id,
                "ok": r.ok,
                "status": str(r.status),
                "price": r.output.price if r.ok else None,
                "error": r.error.message if r.error else None,
            }
            for r in results
        ]

    return app


def _raise(message: str) -> None:
    raise ValueError(message)


def test_trigger_and_wait_returns_the_childs_output_and_links_both_ways(flavor: Flavor) -> None:
    calls: Counter[str] = Counter()
    with LocalEngine(family_app(flavor, calls)) as engine:
        handle = engine.trigger("parent", {"sku": "abc"})
        run = engine.wait(handle.run_id)
        children = engine.client.list_children(handle.run_id)
        steps = engine.store.load_steps(handle.run_id)
        history = engine.history(handle.run_id)
    assert run.status == rung.RunStatus.COMPLETED
    # Revived as the child task's return type (a pydantic model), through JSON.
    assert run.output == {"sku": "abc", "price": 300, "is_quote": True}
    [child] = children
    assert child.task_id == "price" and child.status == rung.RunStatus.COMPLETED
    assert child.parent_run_id == handle.run_id and run.parent_run_id is None
    assert child.payload == {"sku": "abc"}
    # The pinned checkpoints: the child, then its outcome.
    assert steps["/price#1"].kind == "child"
    link = json.loads(steps["/price#1"].result_json or "{}")
    assert link == {"run_id": child.run_id, "task_id": "price", "detached": False}
    assert steps["/price:wait#1"].kind == "child_wait"
    assert steps["/price:wait#1"].outcome == "succeeded"
    # The parent waited (no attempt spent) and ran its tail once; the child ran once
    # (each run's body replays once after its wait, so count the side effects).
    assert run.attempt == 1
    assert calls["parent:after"] == 1
    assert [(str(e.type), e.child_run_id) for e in history if e.child_run_id] == [
        ("ChildTriggered", child.run_id)
    ]
    assert run.finished_at is not None and run.started_at is not None
    assert run.finished_at - run.started_at >= timedelta(minutes=5)


def test_a_parent_whose_child_fails_catches_child_run_failed(flavor: Flavor) -> None:
    calls: Counter[str] = Counter()
    with LocalEngine(family_app(flavor, calls)) as engine:
        handle = engine.trigger("careful")
        run = engine.wait(handle.run_id)
        [child] = engine.client.list_children(handle.run_id)
    assert run.status == rung.RunStatus.COMPLETED
    assert child.status == rung.RunStatus.FAILED
    assert run.output == {
        "caught": "ChildRunFailed",
        "child": child.run_id,
        "status": "FAILED",
        "type": "ValueError",
        "message": "step '/lookup#1' failed: no price for zz",
        "is_step_failed": True,
    }


def test_an_uncaught_child_failure_fails_the_parent_with_the_childs_error(flavor: Flavor) -> None:
    with LocalEngine(family_app(flavor, Counter())) as engine:
        handle = engine.trigger("careless")
        run = engine.wait(handle.run_id)
    assert run.status == rung.RunStatus.FAILED
    assert run.error is not None and run.error.type == "ValueError"
    assert "no price for zz" in run.error.message
    assert run.failed_step == "/price:wait#1"


def test_batch_trigger_and_wait_returns_every_outcome_in_input_order(flavor: Flavor) -> None:
    calls: Counter[str] = Counter()
    payloads: list[dict[str, Any]] = [
        {"sku": "a"},
        {"sku": "bbb", "fail": True},
        {"sku": "cc"},
        {"sku": "dddd"},
    ]
    with LocalEngine(family_app(flavor, calls), workers=2) as engine:
        handle = engine.trigger("batch", payloads)
        run = engine.wait(handle.run_id, timeout=60)
        children = engine.client.list_children(handle.run_id)
    assert run.status == rung.RunStatus.COMPLETED, run.error
    assert [c.payload for c in children] == payloads
    assert [r["run_id"] for r in run.output] == [c.run_id for c in children]
    assert [(r["ok"], r["status"], r["price"]) for r in run.output] == [
        (True, "COMPLETED", 100),
        (False, "FAILED", None),
        (True, "COMPLETED", 200),
        (True, "COMPLETED", 400),
    ]
    assert "no price for bbb" in run.output[1]["error"]
    # Each child started once: its body ran once, plus once more to resume after its
    # wait (the failing one fails before waiting).
    assert calls == {"price:a": 2, "price:bbb": 1, "price:cc": 2, "price:dddd": 2}


def test_child_result_unwrap_raises_the_childs_failure(flavor: Flavor) -> None:
    app = rung.App("unwrap")

    @flavor.task(app, id="boom", retry=rung.RetryPolicy(max_attempts=1))
    async def boom(ctx: Any, payload: int) -> int:
        if payload < 0:
            raise rung.NonRetryable(f"negative: {payload}")
        return payload * 2

    @flavor.task(app, id="parent")
    async def parent(ctx: Any, payload: None) -> list[Any]:
        out: list[Any] = []
        for result in await ctx.batch_trigger_and_wait(boom, [1, -1]):
            try:
                out.append(result.unwrap())
            except rung.ChildRunFailed as exc:
                out.append([exc.status, exc.message])
        return out

    with LocalEngine(app) as engine:
        run = engine.wait(engine.trigger("parent").run_id)
    assert run.output == [2, ["FAILED", "negative: -1"]]


def test_the_child_starts_once_when_the_parent_crashes_after_triggering(flavor: Flavor) -> None:
    app = rung.App("crashy")
    calls: Counter[str] = Counter()

    @flavor.task(app, id="child")
    async def child(ctx: Any, payload: str) -> str:
        calls["child"] += 1
        return payload.upper()

    @flavor.task(app, id="parent", retry=FAST)
    async def parent(ctx: Any, payload: None) -> str:
        handle: rung.RunHandle = await ctx.trigger(child, "fire-and-forget")

        def after() -> str:
            calls["after"] += 1
            if calls["after"] == 1:
                raise SimulatedCrash()  # the worker dies after the child was started
            return handle.run_id

        await ctx.step("after", after)
        waited: str = await ctx.trigger_and_wait(child, "waited")
        return waited

    with LocalEngine(app, lease_duration=timedelta(seconds=5)) as engine:
        handle = engine.trigger("parent")
        run = engine.wait(handle.run_id)
        children = engine.client.list_children(handle.run_id)
        all_child_runs = engine.list_runs(task="child", limit=100)
    assert run.status == rung.RunStatus.COMPLETED and run.output == "WAITED"
    assert run.attempt == 2  # the crash was an attempt
    assert [f.kind for f in run.failures] == ["crash"]
    assert [c.payload for c in children] == ["fire-and-forget", "waited"]
    assert len(all_child_runs) == 2
    assert calls["child"] == 2


def test_ctx_trigger_is_idempotent_across_replays(flavor: Flavor) -> None:
    app = rung.App("idem")
    calls: Counter[str] = Counter()

    @flavor.task(app, id="notify")
    async def notify(ctx: Any, payload: str) -> None:
        calls[payload] += 1

    @flavor.task(app, id="parent", retry=rung.RetryPolicy(max_attempts=4, initial_interval=1.0))
    async def parent(ctx: Any, payload: None) -> list[bool]:
        first = await ctx.trigger(notify, "one")
        second = await ctx.trigger(notify, "two", detached=True)
        await ctx.wait(timedelta(hours=1))  # a replay after the wait ...

        def flaky() -> None:
            calls["flaky"] += 1
            if calls["flaky"] < 3:  # ... and two more after step retries
                raise ConnectionError("try again")

        await ctx.step("flaky", flaky)
        return [first.created, second.created]

    with LocalEngine(app) as engine:
        handle = engine.trigger("parent")
        run = engine.wait(handle.run_id)
        children = engine.list_runs(task="notify", limit=100)
        for child in children:
            engine.wait(child.run_id)
    assert run.status == rung.RunStatus.COMPLETED
    assert run.output == [False, False]  # the last replay found both children recorded
    assert sorted(c.payload for c in children) == ["one", "two"]
    assert {c.parent_run_id for c in children} == {handle.run_id}
    assert calls["one"] == 1 and calls["two"] == 1 and calls["flaky"] == 3


def test_grandchildren_wake_their_parents_up_the_chain(flavor: Flavor) -> None:
    app = rung.App("tree")

    @flavor.task(app, id="leaf")
    async def leaf(ctx: Any, payload: int) -> int:
        await ctx.wait(timedelta(days=2))
        return payload + 1

    @flavor.task(app, id="middle")
    async def middle(ctx: Any, payload: int) -> int:
        return int(await ctx.trigger_and_wait(leaf, payload)) * 10

    @flavor.task(app, id="root")
    async def root(ctx: Any, payload: None) -> list[int]:
        return [r.unwrap() for r in await ctx.batch_trigger_and_wait(middle, [1, 2])]

    with LocalEngine(app) as engine:
        run = engine.wait(engine.trigger("root").run_id)
    assert run.status == rung.RunStatus.COMPLETED and run.output == [20, 30]


def test_a_child_ending_between_the_parents_check_and_its_suspension_is_not_missed(
    flavor: Flavor,
) -> None:
    app = rung.App("race")

    @flavor.task(app, id="child")
    async def child(ctx: Any, payload: None) -> str:
        return "done"

    @flavor.task(app, id="parent")
    async def parent(ctx: Any, payload: None) -> str:
        return str(await ctx.trigger_and_wait(child, None))

    with LocalEngine(app, workers=0) as engine:
        real_get_runs = engine.store.get_runs
        raced: list[str] = []

        def get_runs_then_child_finishes(run_ids: list[str]) -> dict[str, rung.Run]:
            seen = real_get_runs(run_ids)  # the parent sees its child unfinished ...
            if not raced:
                raced.extend(run_ids)
                drain(engine, only=run_ids[0])  # ... which then completes at once
            return seen

        engine.store.get_runs = get_runs_then_child_finishes  # type: ignore[method-assign]
        handle = engine.trigger("parent")
        drain(engine)
        run = engine.get_run(handle.run_id)
        child_run = engine.get_run(raced[0])
    assert child_run.status == rung.RunStatus.COMPLETED
    # The suspension's check saw the child finished, so the parent went on instead of
    # waiting for a wake-up that had already happened.
    assert run.status == rung.RunStatus.COMPLETED and run.output == "done"


def drain(engine: LocalEngine, only: str | None = None, rounds: int = 50) -> None:
    """Handle queued messages on this thread (a LocalEngine with workers=0)."""
    for _ in range(rounds):
        messages = engine.queue.receive(max_messages=10, visibility_timeout=0 if only else None)
        if not messages:
            return
        handled = False
        for message in messages:
            if only is not None and only not in message.body:
                continue
            handled = True
            if engine.worker.handle(message) == Disposition.ACK:
                engine.queue.delete(message)
        if only is not None and handled:
            return


def test_child_arguments_are_checked_in_the_task_body(flavor: Flavor) -> None:
    app = rung.App("args")
    errors: list[str] = []

    @flavor.task(app, id="strict")
    async def strict(ctx: Any, payload: Strict) -> int:
        return payload.n

    @flavor.task(app, id="parent")
    async def parent(ctx: Any, payload: None) -> int:
        calls: list[Callable[[], Awaitable[object]]] = [
            lambda: ctx.trigger("nope"),
            lambda: ctx.trigger_and_wait(strict, {"n": "x"}),
            lambda: ctx.batch_trigger_and_wait(strict, [{"n": 1}, {"m": 2}]),
            lambda: ctx.trigger(strict, {"n": 1}, tags="a"),
        ]
        for call in calls:
            try:
                await call()
            except rung.RungError as exc:
                errors.append(type(exc).__name__)
        return len(await ctx.batch_trigger_and_wait(strict, []))

    with LocalEngine(app) as engine:
        handle = engine.trigger("parent")
        run = engine.wait(handle.run_id)
        children = engine.client.list_children(handle.run_id)
    assert run.status == rung.RunStatus.COMPLETED and run.output == 0
    assert errors == ["UnknownTask", "InvalidPayload", "InvalidPayload", "InvalidConfig"]
    assert children == []  # the batch validated every payload before starting any child


def keyed_app(flavor: Flavor) -> rung.App:
    """A child task whose runs are keyed by tenant, and parents that trigger it without one."""
    app = rung.App("keyed")

    @flavor.task(
        app,
        id="per-tenant",
        queue=rung.Queue("tenants", per_key_limit=1),
        concurrency_key=lambda payload: payload["tenant"],
    )
    async def per_tenant(ctx: Any, payload: dict[str, Any]) -> str:
        return str(payload["tenant"])

    calls: dict[str, Callable[[Any], Awaitable[Any]]] = {
        "trigger": lambda ctx: ctx.trigger(per_tenant, {"user": "u-1"}),
        "trigger_and_wait": lambda ctx: ctx.trigger_and_wait(per_tenant, {"user": "u-1"}),
        "batch": lambda ctx: ctx.batch_trigger_and_wait(
            per_tenant, [{"tenant": "t-1"}, {"user": "u-1"}]
        ),
    }

    def parent_that(call: Callable[[Any], Awaitable[Any]]) -> Callable[..., Any]:
        async def parent(ctx: Any, payload: Any) -> Any:
            return await call(ctx)

        return parent

    for how, call in calls.items():
        flavor.task(app, id=how, retry=FAST)(parent_that(call))
    return app


@pytest.mark.parametrize("how", ["trigger", "trigger_and_wait", "batch"])
def test_a_child_payload_without_its_concurrency_key_fails_the_parent_at_the_trigger(
    flavor: Flavor, how: str
) -> None:
    with LocalEngine(keyed_app(flavor)) as engine:
        handle = engine.trigger(how)
        run = engine.wait(handle.run_id)
        children = engine.client.list_children(handle.run_id)
        everything = engine.list_runs()
    # Misuse: the parent fails at once (no retry), and no child was created.
    assert run.status == rung.RunStatus.FAILED and run.attempt == 1
    assert run.error is not None and run.error.type == "InvalidPayload"
    assert "task 'per-tenant': concurrency_key raised KeyError: 'tenant'" in run.error.message
    assert children == [] and [r.run_id for r in everything] == [handle.run_id]


def test_child_tags_are_checked_as_a_trigger_checks_them(flavor: Flavor) -> None:
    app = rung.App("tags")
    errors: list[str] = []

    @flavor.task(app, id="child")
    async def child(ctx: Any, payload: None) -> None: ...

    @flavor.task(app, id="parent")
    async def parent(ctx: Any, payload: None) -> list[str]:
        for tags in ([f"t{i}" for i in range(11)], ["x" * 129], [""], 5, "vip"):
            try:
                await ctx.trigger(child, None, tags=tags)
            except rung.InvalidConfig as exc:
                errors.append(str(exc))
        return errors

    with LocalEngine(app) as engine:
        handle = engine.trigger("parent")
        run = engine.wait(handle.run_id)
        children = engine.client.list_children(handle.run_id)
        with pytest.raises(rung.InvalidConfig, match="tags must be a list of strings, got int 5"):
            engine.client.trigger("child", None, tags=5)  # type: ignore[arg-type]
    assert run.status == rung.RunStatus.COMPLETED, run.error
    assert run.output == [
        "ctx.trigger tags must be at most 10 non-empty strings of at most 128 characters "
        "each, got 11 tags",
        "ctx.trigger tags must be at most 10 non-empty strings of at most 128 characters "
        f"each, got {'x' * 129!r}",
        "ctx.trigger tags must be at most 10 non-empty strings of at most 128 characters "
        "each, got ''",
        "ctx.trigger tags must be a list of strings, got int 5",
        "ctx.trigger tags must be a list of strings, not a single string: tags=['vip']",
    ]
    assert children == []


def test_batch_trigger_and_wait_needs_a_list_of_payloads(flavor: Flavor) -> None:
    app = rung.App("batch-args")

    @flavor.task(app, id="child")
    async def child(ctx: Any, payload: None) -> None: ...

    @flavor.task(app, id="parent")
    async def parent(ctx: Any, payload: None) -> list[str]:
        errors = []
        for payloads in (None, 5, "abc", {"a": 1}):
            try:
                await ctx.batch_trigger_and_wait("child", payloads)
            except rung.UsageError as exc:
                errors.append(str(exc))
        return errors

    with LocalEngine(app) as engine:
        run = engine.wait(engine.trigger("parent").run_id)
    assert run.status == rung.RunStatus.COMPLETED, run.error
    hint = "(one child per payload), e.g. [payload1, payload2]"
    assert run.output == [
        f"ctx.batch_trigger_and_wait(task, payloads) needs a list of payloads {hint}, got NoneType",
        f"ctx.batch_trigger_and_wait(task, payloads) needs a list of payloads {hint}, got int",
        f"ctx.batch_trigger_and_wait(task, payloads) needs a list of payloads {hint}, got str",
        f"ctx.batch_trigger_and_wait(task, payloads) needs a list of payloads {hint}, got dict",
    ]


@pytest.mark.parametrize("how", ["trigger_and_wait", "batch_trigger_and_wait"])
def test_a_child_name_too_long_for_its_wait_is_refused_before_any_child_starts(
    flavor: Flavor, how: str
) -> None:
    app = rung.App("long-name")

    @flavor.task(app, id="child")
    async def child(ctx: Any, payload: None) -> None: ...

    @flavor.task(app, id="parent")
    async def parent(ctx: Any, payload: None) -> str:
        try:
            if how == "trigger_and_wait":
                await ctx.trigger_and_wait(child, None, name="x" * 198)
            else:
                await ctx.batch_trigger_and_wait(child, [None], name="x" * 198)
        except rung.UsageError as exc:
            return str(exc)
        return "no error"

    with LocalEngine(app) as engine:
        handle = engine.trigger("parent")
        run = engine.wait(handle.run_id)
        children = engine.client.list_children(handle.run_id)
    assert run.status == rung.RunStatus.COMPLETED, run.error
    assert run.output == (
        f"ctx.{how}(name='{'x' * 20}...', 198 characters): its wait is the step "
        "'<name>:wait', and a step name is at most 200 characters; use a name of at "
        "most 195 characters"
    )
    assert children == []


def test_a_child_is_not_started_by_a_worker_that_lost_its_lease(flavor: Flavor) -> None:
    app = rung.App("fenced")
    entered = threading.Event()
    release = threading.Event()

    @flavor.task(app, id="child")
    async def child(ctx: Any, payload: None) -> None: ...

    @flavor.task(app, id="parent")
    async def parent(ctx: Any, payload: None) -> None:
        def slow() -> bool:
            entered.set()
            return release.wait(10)

        await ctx.step("slow", slow)
        await ctx.trigger(child)

    with LocalEngine(app, workers=0) as engine:
        run_id = engine.trigger("parent").run_id
        [message] = engine.queue.receive(max_messages=1)
        results: list[Disposition] = []
        worker = threading.Thread(target=lambda: results.append(engine.worker.handle(message)))
        worker.start()
        assert entered.wait(10)
        engine.client.cancel(run_id)  # its lease is now worthless
        release.set()
        worker.join(10)
        children = engine.client.list_children(run_id)
    assert results == [Disposition.KEEP]  # LeaseLost: the worker stopped
    assert children == []


def test_trigger_and_wait_with_a_timeout_cancels_a_child_that_does_not_end_in_time(
    flavor: Flavor,
) -> None:
    app = rung.App("child-timeout")

    @flavor.task(app, id="grandchild")
    async def grandchild(ctx: Any, payload: None) -> None:
        await ctx.wait(timedelta(days=30))

    @flavor.task(app, id="stuck")
    async def stuck(ctx: Any, payload: None) -> str:
        await ctx.trigger(grandchild)
        token = await ctx.create_token("never", timeout=timedelta(days=7))
        return str(await ctx.wait_for_token(token))  # nobody answers

    @flavor.task(app, id="quick")
    async def quick(ctx: Any, payload: None) -> str:
        await ctx.wait(timedelta(minutes=10))
        return "done"

    @flavor.task(app, id="parent")
    async def parent(ctx: Any, payload: None) -> dict[str, Any]:
        fast = await ctx.trigger_and_wait(quick, timeout=timedelta(hours=1))
        try:
            await ctx.trigger_and_wait(stuck, timeout=timedelta(hours=1))
        except rung.ChildRunFailed as exc:
            return {"fast": fast, "status": exc.status, "type": exc.error_type, "why": exc.message}
        return {"fast": fast}

    with LocalEngine(app) as engine:
        handle = engine.trigger("parent")
        # The stuck child waits for a token: virtual time never jumps to a token's
        # deadline, but the parent's timeout is a timer, and it does.
        run = engine.wait(handle.run_id, timeout=60)
        children = engine.client.list_children(handle.run_id)
        grandchildren = engine.client.list_children(children[1].run_id)
    assert run.status == rung.RunStatus.COMPLETED, run.error
    assert run.output["fast"] == "done"  # ended in 10 minutes, before its timeout
    assert run.output["status"] == "CANCELED" and run.output["type"] == "RunCanceled"
    assert "not ended within the timeout of 1h" in run.output["why"]
    assert [c.status for c in children] == [rung.RunStatus.COMPLETED, rung.RunStatus.CANCELED]
    assert [g.status for g in grandchildren] == [rung.RunStatus.CANCELED]  # with it
    quick_run, stuck_run = children
    assert quick_run.finished_at is not None and stuck_run.finished_at is not None
    # The quick child woke its parent when it ended, not at the timeout.
    assert quick_run.finished_at - quick_run.created_at < timedelta(minutes=11)
    assert stuck_run.finished_at - stuck_run.created_at >= timedelta(hours=1)


def test_a_bad_trigger_and_wait_timeout_is_refused(flavor: Flavor) -> None:
    app = rung.App("child-timeout-bad")
    errors: list[str] = []

    @flavor.task(app, id="child")
    async def child(ctx: Any, payload: None) -> int:
        return 1

    @flavor.task(app, id="parent")
    async def parent(ctx: Any, payload: None) -> int:
        for bad in (0, -5, timedelta(days=400), "1h"):
            try:
                await ctx.trigger_and_wait(child, timeout=bad)
            except rung.RungError as exc:
                errors.append(str(exc))
        return len(errors)

    with LocalEngine(app) as engine:
        run = engine.wait(engine.trigger("parent").run_id)
        children = engine.client.list_children(run.run_id)
    assert run.output == 4 and children == []  # refused before any child started
    assert errors == [
        "trigger_and_wait timeout must be positive, got 0 seconds",
        "trigger_and_wait timeout must not be negative, got -5 seconds",
        "trigger_and_wait timeout must be at most 366d, got 400d",
        "trigger_and_wait timeout must be a timedelta or a number of seconds, got str '1h'",
    ]


def timeout_app(flavor: Flavor, timeout: timedelta, with_grandchild: bool = True) -> rung.App:
    app = rung.App("child-timeout-token")

    @flavor.task(app, id="grandchild")
    async def grandchild(ctx: Any, payload: None) -> None:
        # A token, not a timer: virtual time would jump to a 30-day timer (and past the
        # parent's timeout) as soon as every worker is idle, before the test looks.
        await ctx.wait_for_token(await ctx.create_token("never", timeout=timedelta(days=30)))

    @flavor.task(app, id="asks")
    async def asks(ctx: Any, payload: None) -> str:
        if with_grandchild:
            await ctx.trigger(grandchild)
        token = await ctx.create_token("answer", timeout=timedelta(days=7))
        return str(await ctx.wait_for_token(token))

    @flavor.task(app, id="parent")
    async def parent(ctx: Any, payload: None) -> str:
        try:
            return str(await ctx.trigger_and_wait(asks, timeout=timeout))
        except rung.ChildRunFailed as exc:
            return f"{exc.status}: {exc.message}"

    return app


def _child_of(engine: LocalEngine, parent_id: str) -> str:
    deadline = time.monotonic() + 30
    while not (children := engine.client.list_children(parent_id)):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    return children[0].run_id


def test_a_test_can_answer_a_childs_token_before_its_parents_timeout(flavor: Flavor) -> None:
    # LocalEngine does not jump to a trigger_and_wait timeout while nothing else is
    # due after it: answering the child's token is the test's move, as for any token.
    # (No grandchild: its 30-day timer would be a later due time, which the clock
    # would move to through the parent's deadline.)
    with LocalEngine(timeout_app(flavor, timedelta(days=3), with_grandchild=False)) as engine:
        handle = engine.trigger("parent")
        child = _child_of(engine, handle.run_id)
        token = engine.wait_for_token(child, "answer", timeout=30)
        engine.settle()  # a wrong jump of the clock to the parent's timeout happens here
        engine.client.complete_token(token.id, "yes")
        run = engine.wait(handle.run_id, timeout=60)
    assert run.status == rung.RunStatus.COMPLETED and run.output == "yes"


def test_a_parent_that_crashes_inside_the_timeout_cascade_finishes_it_on_its_retry(
    flavor: Flavor, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rung._engine.lifecycle import Lifecycle

    real = Lifecycle._cancel_children
    crashed: list[str] = []

    def crash_once(self: Lifecycle, run_id: str, reason: str) -> None:
        if not crashed:
            crashed.append(run_id)
            raise SimulatedCrash()  # the parent's worker dies mid-cascade
        real(self, run_id, reason)

    monkeypatch.setattr(Lifecycle, "_cancel_children", crash_once)
    with LocalEngine(timeout_app(flavor, timedelta(hours=1))) as engine:
        handle = engine.trigger("parent")
        child = _child_of(engine, handle.run_id)
        engine.wait_for_token(child, "answer", timeout=30)
        assert isinstance(engine.clock, VirtualClock)
        engine.clock.advance(timedelta(hours=2))  # past the timeout; nobody answers
        run = engine.wait(handle.run_id, timeout=60)
        grandchildren = engine.client.list_children(child)
    assert crashed == [child]
    assert run.status == rung.RunStatus.COMPLETED and run.attempt == 2
    assert run.output.startswith("CANCELED: not ended within the timeout of 1h")
    assert [g.status for g in grandchildren] == [rung.RunStatus.CANCELED]
