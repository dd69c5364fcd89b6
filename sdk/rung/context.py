"""The run context and steps: checkpointing, replay and the determinism check.

Replay rules (the contract users rely on, see docs/determinism.md):

* A step is identified by ``"<scope>/<name>#<n>"``: ``n`` counts that name's
  occurrences in the scope. Its checkpoint is written once; a replay that reaches
  a checkpointed step returns the recorded value and never calls the function.
* Steps also have a position (``seq``) in the run. If a replay reaches a position
  whose checkpoint belongs to a different step, the code changed shape between
  attempts and the run fails with ``NonDeterminismError``.
* A value is returned through JSON even on the first execution, so the first run
  and every replay see the same kind of value (the declared return type, when
  annotated, revives pydantic models and dataclasses).
"""

from __future__ import annotations

import functools
import traceback
import typing
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ParamSpec, Protocol, TypeVar, overload

from rung import _serde
from rung._signals import RetryStep
from rung.errors import (
    ErrorInfo,
    InvalidConfig,
    NonDeterminismError,
    PayloadTooLarge,
    StepFailed,
    UsageError,
)
from rung.models import StepRecord
from rung.retry import RetryPolicy

P = ParamSpec("P")
R = TypeVar("R")

_TRACEBACK_CHARS = 4000
_MESSAGE_CHARS = 2000


@dataclass(frozen=True)
class StepInfo:
    """The step being executed, from ``rung.current_step()`` inside a step function.

    Attributes:
        run_id: the run.
        step_id: ``"<scope>/<name>#<n>"``.
        name: the step's name.
        attempt: 1-based attempt of this step.
        idempotency_key: ``"<run_id>:<step_id>"``, the same on every attempt; hand it
            to external APIs (Stripe, email providers) to make the effect exactly-once.
    """

    run_id: str
    step_id: str
    name: str
    attempt: int

    @property
    def idempotency_key(self) -> str:
        return f"{self.run_id}:{self.step_id}"


_current_context: ContextVar[Context | None] = ContextVar("rung_context", default=None)
_current_step: ContextVar[StepInfo | None] = ContextVar("rung_step", default=None)


def current_step() -> StepInfo:
    """The step being executed. Only valid inside a step function of a run.

    Raises:
        UsageError: called outside a step.
    """
    info = _current_step.get()
    if info is None:
        raise UsageError(
            "rung.current_step() was called outside a step: call it from a function run "
            "by ctx.step(...) or decorated with @rung.step, while a run executes it"
        )
    return info


def error_info(exc: BaseException) -> ErrorInfo:
    """Describe an exception as storable data (never pickled)."""
    text = "".join(traceback.format_exception(exc))
    if len(text) > _TRACEBACK_CHARS:
        text = "...\n" + text[-_TRACEBACK_CHARS:]
    message = str(exc)
    if len(message) > _MESSAGE_CHARS:  # errors are stored; a huge message must not be
        message = message[:_MESSAGE_CHARS] + f"... ({len(message):,} characters in all)"
    return ErrorInfo(type=type(exc).__name__, message=message, traceback=text)


class AttemptSession(Protocol):
    """What a Context needs from the engine during one attempt."""

    def now(self) -> datetime: ...

    def before_step(self) -> None:
        """Check time left and the lease; may unwind with ContinueLater or LeaseLost."""

    def failed_attempts_of(self, step_id: str) -> list[int]:
        """Attempt numbers in which this step failed (retried failures)."""

    def record_step(self, record: StepRecord) -> StepRecord:
        """Write a checkpoint once; returns the stored record (the winner's on a race)."""

    def mark_started(self, record: StepRecord, replace_attempt: int | None) -> StepRecord:
        """Write an at-most-once start marker; returns the stored record."""


class Context:
    """Handed to every task as its first argument.

    Attributes:
        run_id: the run's id.
        task_id: the task's id.
        attempt: 1-based; grows only when an attempt fails or crashes.
    """

    def __init__(
        self,
        *,
        run_id: str,
        task_id: str,
        attempt: int,
        default_retry: RetryPolicy,
        records: dict[str, StepRecord],
        session: AttemptSession,
    ) -> None:
        self.run_id = run_id
        self.task_id = task_id
        self.attempt = attempt
        self._default_retry = default_retry
        self._records = records
        self._by_seq = {r.seq: r for r in records.values()}
        self._session = session
        self._seq = 0
        self._occurrences: dict[tuple[str, str], int] = {}
        self._scope = ""

    def step(
        self,
        name: str,
        fn: Callable[..., R],
        /,
        *args: Any,
        retry: RetryPolicy | None = None,
        at_most_once: bool = False,
        **kwargs: Any,
    ) -> R:
        """Run ``fn(*args, **kwargs)`` as a checkpointed step named ``name``.

        The first successful result is recorded once; later attempts and replays
        return it without calling ``fn``. A failure is retried under ``retry`` (or the
        task's policy); when attempts run out, ``StepFailed`` is raised here.

        Args:
            name: the step's name; unique names make the trace readable. Must not
                contain "/" or "#".
            fn: the function to call.
            retry: this step's policy, overriding the task's.
            at_most_once: record the start first; after a crash mid-step the step is
                not run again and fails with a "StepInterrupted" error.

        Example:
            >>> charge = ctx.step("charge", charge_card, order, retry=RetryPolicy(max_attempts=5))
        """
        if _current_step.get() is not None:
            raise UsageError(
                f"step {name!r} was called inside step {_current_step.get().step_id!r}"  # type: ignore[union-attr]
                f" of run {self.run_id}: steps cannot be nested; call it from the task body"
            )
        if _current_context.get() is not self:
            raise UsageError(
                f"ctx.step({name!r}) was called outside its run's task body "
                f"(run {self.run_id}); call steps from the task function itself"
            )
        _check_step_name(name)
        if not callable(fn):
            raise UsageError(f"ctx.step({name!r}, fn): fn must be callable, got {fn!r}")
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise InvalidConfig(f"ctx.step({name!r}): retry must be a rung.RetryPolicy")
        self._seq += 1
        key = (self._scope, name)
        self._occurrences[key] = self._occurrences.get(key, 0) + 1
        step_id = f"{self._scope}/{name}#{self._occurrences[key]}"
        recorded = self._by_seq.get(self._seq)
        if recorded is not None and recorded.step_id != step_id:
            raise NonDeterminismError(
                f"run {self.run_id}: step #{self._seq} was {recorded.step_id!r} when first "
                f"executed, but the code now calls {step_id!r}. Step order must not change "
                "between attempts of a run: keep the steps' names and order deterministic "
                "(no branching on time, randomness or unrecorded I/O outside steps). "
                "See docs/determinism.md."
            )
        return_type = _return_type(fn)
        record = self._records.get(step_id)
        rerun_of: int | None = None
        if record is not None:
            if record.outcome == "started" and record.attempt in self._failed(step_id):
                rerun_of = record.attempt  # at-most-once, but that attempt failed cleanly
            else:
                return typing.cast(R, self._replay(record, return_type))
        self._session.before_step()
        attempt = len(self._failed(step_id)) + 1
        started = self._session.now()
        if at_most_once:
            marker = StepRecord(
                step_id=step_id,
                seq=self._seq,
                outcome="started",
                attempt=attempt,
                run_attempt=self.attempt,
                started_at=started,
                finished_at=None,
            )
            stored = self._session.mark_started(marker, rerun_of)
            if stored != marker:  # another worker got there first
                return typing.cast(R, self._replay(stored, return_type))
        info = StepInfo(run_id=self.run_id, step_id=step_id, name=name, attempt=attempt)
        token = _current_step.set(info)
        try:
            value = fn(*args, **kwargs)
        except Exception as exc:
            error = error_info(exc)
            delay = (retry or self._default_retry).next_delay(attempt, exc)
            if delay is not None:
                raise RetryStep(step_id, error, delay, started) from None
            return typing.cast(R, self._finish_failed(step_id, attempt, started, error))
        finally:
            _current_step.reset(token)
        try:
            text = _serde.dumps(value, f"the result of step {step_id!r} in run {self.run_id}")
        except (_serde.NotSerializable, PayloadTooLarge) as exc:
            error = ErrorInfo(type=type(exc).__name__, message=str(exc))
            return typing.cast(R, self._finish_failed(step_id, attempt, started, error))
        stored = self._session.record_step(
            StepRecord(
                step_id=step_id,
                seq=self._seq,
                outcome="succeeded",
                attempt=attempt,
                run_attempt=self.attempt,
                started_at=started,
                finished_at=self._session.now(),
                result_json=text,
            )
        )
        return typing.cast(R, self._replay(stored, return_type))

    def _finish_failed(
        self, step_id: str, attempt: int, started: datetime, error: ErrorInfo
    ) -> Any:
        stored = self._session.record_step(
            StepRecord(
                step_id=step_id,
                seq=self._seq,
                outcome="failed",
                attempt=attempt,
                run_attempt=self.attempt,
                started_at=started,
                finished_at=self._session.now(),
                error=error,
            )
        )
        return self._replay(stored, None)

    def _failed(self, step_id: str) -> list[int]:
        return self._session.failed_attempts_of(step_id)

    def _replay(self, record: StepRecord, return_type: Any) -> Any:
        if record.outcome == "succeeded":
            return _serde.loads(record.result_json, return_type)
        if record.outcome == "failed":
            raise StepFailed(record.step_id, record.error or ErrorInfo("Error", ""))
        # An at-most-once marker whose attempt neither finished nor failed cleanly:
        # that attempt was interrupted mid-step, and the step must not run twice.
        error = ErrorInfo(
            type="StepInterrupted",
            message=(
                f"step {record.step_id!r} of run {self.run_id} is at-most-once and its attempt "
                f"{record.attempt} was interrupted (worker crash or timeout) after it started; "
                "it was not run again. Check the external system for its effect, then "
                "handle this StepFailed in the task."
            ),
        )
        return self._finish_failed(record.step_id, record.attempt, record.started_at, error)


def _check_step_name(name: object) -> None:
    if not isinstance(name, str) or not name:
        raise UsageError(f"a step name must be a non-empty string, got {name!r}")
    if "/" in name or "#" in name:
        raise UsageError(
            f"step name {name!r} contains '/' or '#', which rung uses in step ids; "
            "choose a name without them"
        )
    if len(name) > 200:
        raise UsageError(f"step name is {len(name)} characters long; the limit is 200")


@functools.lru_cache(maxsize=1024)
def _return_type_cached(fn: Callable[..., Any]) -> Any:
    try:
        return typing.get_type_hints(fn).get("return")
    except Exception:
        return None


def _return_type(fn: Callable[..., Any]) -> Any:
    try:
        return _return_type_cached(fn)
    except TypeError:  # unhashable callable
        return None


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
        _check_step_name(name)
    if retry is not None and not isinstance(retry, RetryPolicy):
        raise InvalidConfig("@rung.step(retry=...) must be a rung.RetryPolicy")

    def decorate(func: Callable[P, R]) -> Callable[P, R]:
        step_name = name or func.__qualname__

        @functools.wraps(func)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            ctx = _current_context.get()
            if ctx is None:
                return func(*args, **kwargs)
            return ctx.step(
                step_name, func, *args, retry=retry, at_most_once=at_most_once, **kwargs
            )

        return wrapper

    if fn is not None:
        return decorate(fn)
    return decorate
