"""The durable operations, awaited: what an async task's ``rung.AsyncContext`` runs.

The rules are the sync ones (they live in ``steps``, ``waits``, ``children``, ``groups``
and ``parallel``); here the user's code is awaited and the core's writes run on the
event loop's threads, so that the loop never blocks on DynamoDB.

Positions. A task body's operations take their positions in the order its code calls
them. In an async task that order is deterministic only within one asyncio task: code
in two tasks interleaves by timing. So a scope belongs to the asyncio task that runs
it (``Scope.owner``: the body's, a branch's), and an operation called from another
task is refused (``state._check_owner``). ``ctx.step``, ``ctx.map`` and
``ctx.parallel`` take their position when they are *called*, in the owner, and return
an awaitable: ``asyncio.gather(ctx.step(...), ctx.step(...))`` numbers its steps in
argument order on every replay. The other operations take theirs when awaited, so
they must be awaited by the owner itself.

One event loop per invocation (``run_body``): it is made for the attempt and closed
after it, with a thread pool for sync step functions and the core's writes.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import typing
from collections.abc import Callable, Coroutine, Generator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from rung._durable import steps
from rung._durable.offload import IO_THREADS, io, io_pool
from rung._durable.signals import Ending, resolve
from rung._durable.state import Scope
from rung._durable.waits import StepCall
from rung.errors import InvalidConfig

log = logging.getLogger("rung.worker")

R = TypeVar("R")

#: Threads of an async attempt's loop for its plain step functions (made when first
#: needed: a body of async steps uses none). The core's writes have their own
#: (``offload.IO_THREADS``).
LOOP_THREADS = 64


async def follow(plan: Generator[StepCall, Any, R], step: Callable[..., Any]) -> R:
    """Run a core plan (``waits.wait_for_callback``/``wait_for_condition``): its own
    writes on a thread, each step it asks for as ``step(name, fn, *args)`` (a step of
    the owner's ctx, awaited)."""
    try:
        done, request = await io(_advance, plan, None)
        while not done:
            value = await step(request.name, request.fn, *request.args)
            done, request = await io(_advance, plan, value)
        return typing.cast(R, request)
    finally:
        if not getattr(plan, "gi_running", False):  # (canceled mid-send: left to its thread)
            plan.close()


def _advance(plan: Generator[StepCall, Any, Any], value: Any) -> tuple[bool, Any]:
    """The plan's next request (False, request), or its result (True, result): a
    StopIteration cannot cross into an asyncio future."""
    try:
        return False, plan.send(value)
    except StopIteration as finished:
        return True, finished.value


async def offload(scope: Scope, operation: Callable[..., R], *args: Any, **kwargs: Any) -> R:
    """A core operation that takes its position when awaited (a wait, a token, a child):
    checked to be awaited by the scope's owner, then run on a thread."""
    steps.check_unwinding(scope)
    what = f"ctx.{operation.__name__}()"
    scope.check_caller(what)
    return await steps.guarded(scope, io(operation, scope, *args, **kwargs), what)


def run_body(
    body: Callable[[Any, Any], Coroutine[Any, Any, Any]],
    scope: Scope,
    face: Callable[[Scope], Any],
    payload: Any,
) -> Any:
    """Run an async task body to its end on a loop of its own (this thread's), and
    return its value; a signal (a wait, a retry) or error it raises comes out as it is.

    Steps still running when the body ends (gathered ones, when another raised; one
    in a task never awaited) are waited for, so that what they did is recorded, as
    the running branches of a sync ``ctx.map`` are; other tasks the body left are
    canceled, with a warning if it returned."""

    async def main() -> Any:
        scope.owner = asyncio.current_task()
        io_pool.set(writes)
        run = scope.run
        try:
            with scope.entered():
                value = await body(face(scope), payload)
            steps.check_unwinding(scope)
        except BaseException as raised:
            first = resolve(raised, scope.unwinding, run.suspends, run.canceled_operation, WHAT)
            run.ending = Ending(first)  # operations running elsewhere stop at their next
            _, settled = await _settle(scope)
            # What the operations it waited for raised can decide too (a retry of a
            # step that was still running beats a wait, as in a batch).
            ending = resolve(
                raised,
                scope.unwinding,
                run.suspends,
                run.canceled_operation,
                WHAT,
                settled,
            )
            raise ending from None if ending is raised else raised
        left = _others()
        run.ending = Ending(None)
        waited, _ = await _settle(scope)
        if left:
            log.warning(
                "run %s: task %r returned with %d asyncio task(s) still running (%s); "
                "rung waited for the %d step(s) or batch(es) among them to be recorded and "
                "cancels the rest now. Await every task the body starts (asyncio.gather, "
                "a TaskGroup).",
                scope.run_id,
                run.task_id,
                len(left),
                ", ".join(sorted({_describe(t) for t in left})),
                waited,
                extra={"run_id": scope.run_id, "task": run.task_id},
            )
        return value

    with (
        ThreadPoolExecutor(LOOP_THREADS, thread_name_prefix="rung-async") as threads,
        ThreadPoolExecutor(IO_THREADS, thread_name_prefix="rung-io") as writes,
        asyncio.Runner() as runner,  # (closed first: it cancels what the body left)
    ):
        runner.get_loop().set_default_executor(threads)
        return runner.run(main())


def _others() -> list[asyncio.Task[Any]]:
    current = asyncio.current_task()
    return [t for t in asyncio.all_tasks() if t is not current and not t.done()]


async def _settle(scope: Scope) -> tuple[int, list[BaseException]]:
    """Wait for the steps and batches still running in other asyncio tasks (each stops
    at its next operation: ``run.ending`` is set), so that what they did is recorded:
    how many there were, and the signals they raised. At most ``SETTLE_SECONDS``: one
    that outlasts it waits for something only the ended body would have done, and is
    canceled (its step runs again on the next attempt)."""
    run = scope.run
    current = asyncio.current_task()
    waited: set[asyncio.Task[Any]] = set()
    deadline = asyncio.get_running_loop().time() + SETTLE_SECONDS
    while True:
        running = [
            t
            for t in (*run.steps_running, *run.batches_running)
            if t is not current and not t.done()
        ]
        left = deadline - asyncio.get_running_loop().time()
        if not running or left <= 0:
            break
        waited.update(running)
        await asyncio.wait(running, timeout=left)
    stuck = [t for t in waited if not t.done()]
    if stuck:
        log.warning(
            "run %s: %d step(s) or batch(es) still running %ds after the body ended (%s) "
            "are canceled; they are not recorded and run again on the next attempt",
            scope.run_id,
            len(stuck),
            SETTLE_SECONDS,
            ", ".join(sorted({_describe(t) for t in stuck})),
            extra={"run_id": scope.run_id, "task": run.task_id},
        )
        for task in stuck:
            task.cancel()
        await asyncio.wait(stuck)
    raised = [
        exc
        for task in waited
        if not task.cancelled() and (exc := task.exception()) is not None  # (retrieved)
    ]
    return len(waited), raised


#: The longest the end of an async attempt waits for operations still running.
SETTLE_SECONDS = 30

#: How a combined suspension names the body's other waits.
WHAT = "waits of the body's concurrent operations"


def _describe(task: asyncio.Task[Any]) -> str:
    coroutine = task.get_coro()
    name = getattr(coroutine, "__qualname__", None)
    return str(name) if name else task.get_name()


def run_sync_body(task_id: str, body: Callable[[Any, Any], Any], ctx: Any, payload: Any) -> Any:
    """Run a sync task body; one that returns an awaitable is an ``async def`` hidden by
    a plain-def decorator (so it was not run as one): refused."""
    value = body(ctx, payload)
    if inspect.isawaitable(value):
        close = getattr(value, "close", None)
        if callable(close):
            close()  # (no "never awaited" warning on top)
        raise InvalidConfig(
            f"task {task_id!r} returned an awaitable: its function looks like a plain def "
            "wrapping an async def, so it ran as a sync task (with a rung.Context). Make "
            "the wrapper an async def that awaits the function, or apply @app.task to the "
            "async def itself"
        )
    return value
