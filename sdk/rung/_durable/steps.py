"""Steps: a function's call, checkpointed once and replayed ever after.

``start`` decides, before any user code runs, whether the step replays (its checkpoint
exists: ``Replayed``) or executes (``Execution``); the face then calls the function its
own way (a sync call, an await) inside ``Execution.running()`` and hands the value to
``succeeded`` or the exception to ``failed``, which record the outcome or ask for a
retry. Every rule lives here: ids, the determinism check, at-most-once markers, retry
decisions, result size and serialization.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import typing
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ParamSpec, TypeVar, overload

from rung._durable.offload import io
from rung._durable.signals import RetryStep, Suspend, Unwind
from rung._durable.state import (
    Replayed,
    Scope,
    StepInfo,
    check_step_name,
    current_scope,
    current_step_info,
    encoded,
    error_info,
    return_type,
)
from rung.errors import InvalidConfig, UsageError
from rung.models import StepRecord
from rung.retry import RetryPolicy

P = ParamSpec("P")
R = TypeVar("R")


class Execution:
    """One execution of a step that has no checkpoint yet (see the module docstring)."""

    def __init__(
        self,
        scope: Scope,
        info: StepInfo,
        seq: int,
        started: datetime,
        retry: RetryPolicy,
        revive: Any,
    ) -> None:
        self.scope = scope
        self.info = info
        self.seq = seq
        self.started = started
        self.retry = retry
        self.revive = revive

    @contextlib.contextmanager
    def running(self) -> Iterator[StepInfo]:
        """While the step's function runs: ``rung.current_step()`` and the watchdog's
        view of the step. ``succeeded`` or ``failed`` are called inside it."""
        token = current_step_info.set(self.info)
        self.scope.session.step_running(self.info.step_id)
        try:
            yield self.info
        finally:
            self.scope.session.step_running(None)
            current_step_info.reset(token)

    def succeeded(self, value: Any) -> Any:
        """Record the value once; returns what every replay returns (through JSON)."""
        scope, step_id = self.scope, self.info.step_id
        text, error = encoded(value, f"the result of step {step_id!r} in run {scope.run_id}")
        if error is not None:
            return scope.record_failure(step_id, self.seq, self.info.attempt, self.started, error)
        stored = scope.session.record_step(
            StepRecord.ended(
                step_id,
                self.seq,
                attempt=self.info.attempt,
                run_attempt=scope.run.attempt,
                started_at=self.started,
                finished_at=scope.session.now(),
                result_json=text,
            )
        )
        return scope.replay(stored, self.revive)

    def failed(self, exc: Exception) -> Any:
        """The function raised: ask for a retry (``RetryStep`` unwinds the attempt), or
        record the failure for good and raise ``StepFailed``."""
        error = error_info(exc)
        delay = self.retry.next_delay(self.info.attempt, exc)
        if delay is not None:
            raise RetryStep(self.info.step_id, error, delay, self.started) from None
        return self.scope.record_failure(
            self.info.step_id, self.seq, self.info.attempt, self.started, error
        )


@dataclass(frozen=True)
class Slot:
    """A step's place in its scope, taken when the step is called (``take``)."""

    name: str
    step_id: str
    seq: int
    revive: Any


def take(scope: Scope, name: str, fn: Callable[..., Any], retry: RetryPolicy | None) -> Slot:
    """Check the call and take the step's position (no I/O): an async step takes it
    when called, before it is awaited, so steps passed to ``asyncio.gather`` number in
    the order of the calls."""
    scope.check_caller(f"ctx.step({name!r})")
    if not callable(fn):
        raise UsageError(f"ctx.step({name!r}, fn): fn must be callable, got {fn!r}")
    if retry is not None and not isinstance(retry, RetryPolicy):
        raise InvalidConfig(f"ctx.step({name!r}): retry must be a rung.RetryPolicy")
    step_id, seq = scope.position(name, "step")
    return Slot(name, step_id, seq, return_type(fn))


def begin(
    scope: Scope, slot: Slot, *, retry: RetryPolicy | None, at_most_once: bool
) -> Replayed | Execution:
    """Decide a taken step: replay its checkpoint, or execute it (may write: the
    session's checks before a step, an at-most-once marker)."""
    step_id, seq, revive = slot.step_id, slot.seq, slot.revive
    run = scope.run
    record = run.records.get(step_id)
    rerun_of: int | None = None
    if record is not None:
        # An at-most-once marker whose run attempt failed this step cleanly (a
        # recorded failure of that attempt) is retried; one whose attempt did not
        # (a crash mid-step) is not. Failures carry run attempts, markers both.
        if record.outcome == "started" and record.run_attempt in run.failed_attempts(step_id):
            rerun_of = record.attempt
        else:
            return Replayed(scope.replay(record, revive))
    scope.session.before_step()
    attempt = len(run.failed_attempts(step_id)) + 1
    started = scope.session.now()
    if at_most_once:
        marker = StepRecord(
            step_id=step_id,
            seq=seq,
            outcome="started",
            attempt=attempt,
            run_attempt=run.attempt,
            started_at=started,
            finished_at=None,
        )
        stored = scope.session.mark_started(marker, rerun_of)
        if stored != marker:  # another worker got there first
            return Replayed(scope.replay(stored, revive))
    info = StepInfo(run_id=run.run_id, step_id=step_id, name=slot.name, attempt=attempt)
    return Execution(scope, info, seq, started, retry or run.default_retry, revive)


def replayed(scope: Scope, slot: Slot) -> bool:
    """Whether ``begin`` would only replay (no I/O): the step has a checkpoint that is
    not an at-most-once marker."""
    record = scope.run.records.get(slot.step_id)
    return record is not None and record.outcome != "started"


def start(
    scope: Scope,
    name: str,
    fn: Callable[..., Any],
    *,
    retry: RetryPolicy | None,
    at_most_once: bool,
) -> Replayed | Execution:
    """Take the step's position and decide: replay its checkpoint, or execute it."""
    slot = take(scope, name, fn, retry)
    return begin(scope, slot, retry=retry, at_most_once=at_most_once)


def check_own_keywords(name: str, fn: Callable[..., Any], kwargs: dict[str, Any]) -> None:
    """``ctx.step`` takes ``retry=`` and ``at_most_once=`` for itself: a function with a
    parameter of that name would silently not get it."""
    try:
        parameters = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # (a builtin without a signature)
        return
    for keyword in ("retry", "at_most_once"):
        if keyword in kwargs and keyword in parameters:
            raise UsageError(
                f"ctx.step({name!r}, fn, ..., {keyword}=...): {keyword}= is the step's own "
                f"option, and fn also has a parameter {keyword!r}; pass fn's through a "
                f"wrapper, e.g. ctx.step({name!r}, lambda: fn(..., {keyword}=value))"
            )


def call(
    scope: Scope,
    name: str,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    retry: RetryPolicy | None = None,
    at_most_once: bool = False,
) -> Any:
    """A step whose function is called here, synchronously (the sync face's step)."""
    started = start(scope, name, fn, retry=retry, at_most_once=at_most_once)
    if isinstance(started, Replayed):
        return started.value
    with started.running():
        try:
            value = fn(*args, **kwargs)
            if inspect.isawaitable(value):
                # An async function as a step of a sync task: its own event loop, made
                # and closed inside the step (docs/async.md).
                value = asyncio.run(_awaited(value))
        except Exception as exc:
            return started.failed(exc)
    return started.succeeded(value)


async def _awaited(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


@overload
def step(fn: Callable[P, R], /) -> Callable[P, R]: ...


@overload
def step(
    *, name: str | None = None, retry: RetryPolicy | None = None, at_most_once: bool = False
) -> Callable[[Callable[P, R]], Callable[P, R]]: ...


def step(
    fn: Callable[P, R] | None = None,
    /,
    *,
    name: str | None = None,
    retry: RetryPolicy | None = None,
    at_most_once: bool = False,
) -> Callable[P, R] | Callable[[Callable[P, R]], Callable[P, R]]:
    """Make a function a step: called inside a run, it is checkpointed.

    Outside a run the function executes plainly, so it stays unit-testable.

    Args:
        name: the step name (default: the function's ``__qualname__``).
        retry: a policy overriding the task's for this step.
        at_most_once: see ``Context.step``.

    Example:
        >>> @rung.step
        ... def fetch_order(order_id: str) -> dict: ...
        >>> @rung.step(name="charge", retry=rung.RetryPolicy(max_attempts=5))
        ... def charge_card(order: dict) -> dict: ...
    """
    if name is not None:
        check_step_name(name)
    if retry is not None and not isinstance(retry, RetryPolicy):
        raise InvalidConfig("@rung.step(retry=...) must be a rung.RetryPolicy")

    def decorate(func: Callable[P, R]) -> Callable[P, R]:
        if inspect.isasyncgenfunction(func):
            raise InvalidConfig(
                f"@rung.step {func.__qualname__} is an async generator: a step returns one "
                "value; collect the items into a list and return that"
            )
        step_name = name or func.__qualname__
        if inspect.iscoroutinefunction(func):
            return typing.cast(Callable[P, R], _async_step(func, step_name, retry, at_most_once))

        @functools.wraps(func)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            scope = current_scope.get()
            if scope is None:
                return func(*args, **kwargs)
            if scope.owner is not None and current_step_info.get() is None:
                raise UsageError(
                    f"@rung.step {func.__qualname__} is a plain function, called directly in "
                    f"the async task {scope.run.task_id!r} (run {scope.run_id}): it would run "
                    "on the event loop and block it. Await it as a step, "
                    f"await ctx.step({step_name!r}, {func.__name__}, ...) (it runs on a "
                    "thread), or make it an async def"
                )
            return typing.cast(
                R,
                call(scope, step_name, func, args, kwargs, retry=retry, at_most_once=at_most_once),
            )

        return wrapper

    if fn is not None:
        return decorate(fn)
    return decorate


def _async_step(
    func: Callable[..., Any], name: str, retry: RetryPolicy | None, at_most_once: bool
) -> Callable[..., Any]:
    """``@rung.step`` on an ``async def``: called in an async task, it takes its position
    at once (so calls passed to ``asyncio.gather`` number in call order) and returns
    the step to await; outside a run, the plain coroutine."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        scope = current_scope.get()
        if scope is None:
            return func(*args, **kwargs)
        if scope.owner is None:
            raise UsageError(
                f"@rung.step {func.__qualname__} is an async def, called in the sync task "
                f"{scope.run.task_id!r} (run {scope.run_id}), which cannot await it: make the "
                f"task an async def, or run it as a step of this one with "
                f"ctx.step({name!r}, {func.__name__}, ...) (on an event loop of its own)"
            )
        check_unwinding(scope)
        slot = take(scope, name, func, retry)
        return run_step(scope, slot, func, args, kwargs, retry=retry, at_most_once=at_most_once)

    return wrapper


async def run_step(
    scope: Scope,
    slot: Slot,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    retry: RetryPolicy | None,
    at_most_once: bool,
) -> Any:
    """A taken step (``take``), awaited: its checkpoint replayed, or ``fn`` run (awaited
    if it is async, else on a thread) and its outcome recorded."""
    return await guarded(scope, _run_step(scope, slot, fn, args, kwargs, retry, at_most_once))


async def _run_step(
    scope: Scope,
    slot: Slot,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    retry: RetryPolicy | None,
    at_most_once: bool,
) -> Any:
    check_unwinding(scope)
    if replayed(scope, slot):
        started = begin(scope, slot, retry=retry, at_most_once=at_most_once)
        assert isinstance(started, Replayed)
        return started.value
    task = asyncio.current_task()
    assert task is not None  # (awaited: on a loop, in a task)
    # From here on, the attempt's end waits for it (aio.run_body): its marker, its
    # function and its checkpoint are not cut off.
    scope.run.steps_running.add(task)
    try:
        started = await io(begin, scope, slot, retry=retry, at_most_once=at_most_once)
        if isinstance(started, Replayed):
            return started.value
        with started.running():
            failure: BaseException | None = None
            try:
                if inspect.iscoroutinefunction(fn):
                    value = await fn(*args, **kwargs)
                else:
                    returned, value = await _on_thread(fn, args, kwargs)
                    if not returned:  # (a StopIteration: raised here it would change)
                        failure = value
            except Exception as exc:
                failure = exc
            if failure is not None:
                return await io(started.failed, failure)
        return await io(started.succeeded, value)
    finally:
        scope.run.steps_running.discard(task)


async def _on_thread(
    fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[bool, Any]:
    """A plain step function on a thread of the loop (an awaitable it returns is
    awaited): (True, its value), or (False, the StopIteration it raised), which cannot
    cross into an asyncio future (the future would never complete) nor out of a
    coroutine (it would become a RuntimeError)."""

    def call() -> tuple[bool, Any]:
        try:
            return True, fn(*args, **kwargs)
        except StopIteration as exc:
            return False, exc

    returned, value = await asyncio.to_thread(call)
    if returned and inspect.isawaitable(value):  # (a lambda that returns a coroutine)
        value = await value
    return returned, value


CANCELED_OPERATION = (
    "a durable operation of run {run} ({what}) was canceled by the task's own code "
    "(asyncio.timeout, asyncio.wait_for, Task.cancel) before it ended: the run cannot go "
    "on deterministically from there, as a replay would find it done. Put the timeout "
    "inside the step function (async with asyncio.timeout(...) around the call it makes) "
    "or use the operation's own timeout (create_token, trigger_and_wait). See docs/async.md."
)


async def guarded(scope: Scope, operation: Awaitable[R], what: str = "a step") -> R:
    """Await a durable operation of an async task, keeping what unwinds it.

    A signal it raises (a retry, a wait, a cancel) is kept on the scope, so that one
    swallowed by user code still ends the scope at its next operation or its end; the
    body's waits are kept for the attempt's end to combine. Canceled by user code while
    the scope's own task awaits it (``asyncio.timeout`` around ``await ctx.step(...)``),
    it is misuse: the body saw an outcome no checkpoint holds, so the attempt fails at
    its next operation. (Tasks a TaskGroup cancels, because a sibling raised, are not
    the scope's own: their steps simply run again on a retry.)"""
    try:
        return await operation
    except Unwind as signal:
        if isinstance(signal, Suspend) and scope.branch is None:
            scope.run.suspends.append(signal)
        scope.unwinding = scope.unwinding or signal
        raise
    except asyncio.CancelledError:
        run = scope.run
        if (
            run.ending is None
            and run.canceled_operation is None
            and asyncio.current_task() is scope.owner
        ):
            run.canceled_operation = UsageError(
                CANCELED_OPERATION.format(run=run.run_id, what=what)
            )
        raise


def check_unwinding(scope: Scope) -> None:
    """Before an async task's operation (and at a scope's end): raise what ends the
    attempt, a signal the scope's code swallowed, or the misuse of a canceled
    operation."""
    run = scope.run
    for reason in (run.ending, scope.unwinding, run.canceled_operation):
        if reason is not None:
            raise reason
