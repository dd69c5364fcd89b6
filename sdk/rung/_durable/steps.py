"""Steps: a function's call, checkpointed once and replayed ever after.

``start`` decides, before any user code runs, whether the step replays (its checkpoint
exists: ``Replayed``) or executes (``Execution``); the face then calls the function its
own way (a sync call, an await) inside ``Execution.running()`` and hands the value to
``succeeded`` or the exception to ``failed``, which record the outcome or ask for a
retry. Every rule lives here: ids, the determinism check, at-most-once markers, retry
decisions, result size and serialization.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import typing
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any, ParamSpec, TypeVar, overload

from rung._durable.signals import RetryStep
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


def start(
    scope: Scope,
    name: str,
    fn: Callable[..., Any],
    *,
    retry: RetryPolicy | None,
    at_most_once: bool,
) -> Replayed | Execution:
    """Take the step's position and decide: replay its checkpoint, or execute it."""
    scope.check_caller(f"ctx.step({name!r})")
    if not callable(fn):
        raise UsageError(f"ctx.step({name!r}, fn): fn must be callable, got {fn!r}")
    if inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn):
        raise UsageError(
            f"ctx.step({name!r}, fn): fn is an async def, and rung runs steps as plain "
            "functions for now (async steps are not built yet); pass a def that runs it, "
            f"e.g. ctx.step({name!r}, lambda: asyncio.run(fn(...)))"
        )
    if retry is not None and not isinstance(retry, RetryPolicy):
        raise InvalidConfig(f"ctx.step({name!r}): retry must be a rung.RetryPolicy")
    step_id, seq = scope.position(name, "step")
    revive = return_type(fn)
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
    info = StepInfo(run_id=run.run_id, step_id=step_id, name=name, attempt=attempt)
    return Execution(scope, info, seq, started, retry or run.default_retry, revive)


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
        except Exception as exc:
            return started.failed(exc)
    return started.succeeded(value)


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
        if inspect.iscoroutinefunction(func) or inspect.isasyncgenfunction(func):
            raise InvalidConfig(
                f"@rung.step {func.__qualname__} is an async def: steps are plain functions "
                "for now (async steps are not built yet); make it a def that runs the "
                "async code with asyncio.run(...)"
            )
        step_name = name or func.__qualname__

        @functools.wraps(func)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            scope = current_scope.get()
            if scope is None:
                return func(*args, **kwargs)
            return typing.cast(
                R,
                call(scope, step_name, func, args, kwargs, retry=retry, at_most_once=at_most_once),
            )

        return wrapper

    if fn is not None:
        return decorate(fn)
    return decorate
