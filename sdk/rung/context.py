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

import contextlib
import copy
import functools
import json
import traceback
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, ParamSpec, Protocol, TypeVar, overload

from rung import _serde
from rung._ctx_children import _Children
from rung._ctx_common import DEFAULT_TOKEN_TIMEOUT as DEFAULT_TOKEN_TIMEOUT
from rung._ctx_common import MAX_WAIT as MAX_WAIT
from rung._ctx_waits import Poll as Poll
from rung._ctx_waits import _Waits
from rung._signals import RetryStep
from rung.batch import BatchResult, Completion
from rung.errors import (
    ChildRunFailed,
    ErrorInfo,
    InvalidConfig,
    NonDeterminismError,
    PayloadTooLarge,
    StepFailed,
    TokenFailed,
    TokenTimedOut,
    UsageError,
)
from rung.models import Run, StepRecord, TokenState
from rung.retry import RetryPolicy

if TYPE_CHECKING:
    from rung.app import Task

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")

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

    def step_running(self, step_id: str | None) -> None:
        """The step this thread now executes (None: none), for the timeout watchdog.

        Branches of ``ctx.map`` run steps on several threads at once; the session
        must accept these calls (and ``before_step``) from any of them.
        """

    def failed_attempts_of(self, step_id: str) -> list[int]:
        """Attempt numbers in which this step failed (retried failures)."""

    def record_step(self, record: StepRecord) -> StepRecord:
        """Write a checkpoint once; returns the stored record (the winner's on a race)."""

    def mark_started(self, record: StepRecord, replace_attempt: int | None) -> StepRecord:
        """Write an at-most-once start marker; returns the stored record."""

    def create_token(self, state: TokenState) -> None:
        """Store a new token."""

    def get_token(self, token_id: str) -> TokenState:
        """A token's current state."""

    def time_out_token(self, token_id: str, deadline: datetime) -> TokenState:
        """Mark a token whose ``deadline`` has passed timed out, at that deadline; returns
        its state either way."""

    def task(self, task: str | Task[Any]) -> Task[Any]:
        """A task of the run's app (``UnknownTask`` if there is none)."""

    def start_child(
        self,
        record: StepRecord,
        *,
        task_id: str,
        payload_json: str,
        waits: bool,
        detached: bool,
        delay: timedelta,
        tags: tuple[str, ...],
    ) -> tuple[StepRecord, bool]:
        """Create the child run named by ``record`` with its checkpoint, atomically, and
        send it; returns the stored checkpoint and whether the child was created now."""

    def get_runs(self, run_ids: list[str]) -> dict[str, Run]:
        """Runs by id, consistently read."""

    def forget_batch(self, batch: str) -> None:
        """The batch's outcome is recorded: drop its count of ended children."""

    def cancel_child(self, run_id: str, reason: str) -> None:
        """Cancel a child run (and its own children, unless detached) that has not
        ended; one that ended meanwhile is left as it is."""


class Context(_Waits, _Children):
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
        # A branch record of ctx.map shares its batch's position (rung._parallel): it
        # is not a position of its own.
        self._by_seq = {
            (_scope_of(r.step_id), r.seq): r
            for r in records.values()
            if r.seq and r.kind != "branch"
        }
        self._session = session
        self._seq: dict[str, int] = {}
        self._occurrences: dict[tuple[str, str], int] = {}
        self._scope = ""
        #: in a branch of ctx.map / ctx.parallel: the branch's id (its scope)
        self._branch: str | None = None

    @property
    def records(self) -> dict[str, StepRecord]:
        """This run's checkpoints by step id (shared by every scope of the run)."""
        return self._records

    def _next_step_id(self, name: str) -> str:
        """The step id the next call named ``name`` gets (without taking it)."""
        return f"{self._scope}/{name}#{self._occurrences.get((self._scope, name), 0) + 1}"

    def _position(self, name: str, kind: str) -> tuple[str, int]:
        """The next step id and per-scope position for ``name``; checks determinism.

        Positions count per scope, so that branches running concurrently in their
        own scopes (``ctx.map``, ``ctx.parallel``) number their steps independently.
        """
        _check_step_name(name)
        scope = self._scope
        seq = self._seq.get(scope, 0) + 1
        self._seq[scope] = seq
        key = (scope, name)
        self._occurrences[key] = self._occurrences.get(key, 0) + 1
        step_id = f"{scope}/{name}#{self._occurrences[key]}"
        recorded = self._by_seq.get((scope, seq))
        if recorded is not None and (recorded.step_id != step_id or recorded.kind != kind):
            raise NonDeterminismError(
                f"run {self.run_id}: {_describe(recorded.kind)} #{seq}"
                + (f" in group {scope!r}" if scope else "")
                + f" was {recorded.step_id!r} when first executed, but the code now calls "
                f"{_describe(kind)} {step_id!r}. Step order must not change between attempts "
                "of a run: keep the steps' names and order deterministic (no branching on "
                "time, randomness or unrecorded I/O outside steps). See docs/determinism.md."
            )
        return step_id, seq

    def _check_caller(self, what: str) -> None:
        current = _current_step.get()
        if current is not None:
            raise UsageError(
                f"{what} was called inside step {current.step_id!r} of run {self.run_id}: "
                "steps and waits cannot be nested in a step; call it from the task body"
            )
        running = _current_context.get()
        if running is not self:
            if running is not None and running.run_id == self.run_id:
                if running._branch is not None:
                    raise UsageError(
                        f"{what} was called on another ctx than the one of branch "
                        f"{running._branch!r} of run {self.run_id}: code in a ctx.map or "
                        "ctx.parallel branch must use the ctx its branch function receives "
                        "(fn(ctx, item) / fn(ctx)), not the task's ctx, so that its steps are "
                        "recorded in the branch's scope"
                    )
                if self._branch is not None:
                    raise UsageError(
                        f"{what} was called on the ctx of branch {self._branch!r} of run "
                        f"{self.run_id} after that branch ended: a branch's ctx is valid only "
                        "inside its branch function; use the task's ctx"
                    )
            raise UsageError(
                f"{what} was called outside its run's task body (run {self.run_id}); call "
                "it from the task function itself, with the ctx it was given"
            )

    def _remember(self, record: StepRecord) -> StepRecord:
        self._records[record.step_id] = record
        return record

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
        self._check_caller(f"ctx.step({name!r})")
        _check_step_name(name)
        if not callable(fn):
            raise UsageError(f"ctx.step({name!r}, fn): fn must be callable, got {fn!r}")
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise InvalidConfig(f"ctx.step({name!r}): retry must be a rung.RetryPolicy")
        step_id, seq = self._position(name, "step")
        return_type = _return_type(fn)
        record = self._records.get(step_id)
        rerun_of: int | None = None
        if record is not None:
            # An at-most-once marker whose run attempt failed this step cleanly (a
            # recorded failure of that attempt) is retried; one whose attempt did not
            # (a crash mid-step) is not. Failures carry run attempts, markers both.
            if record.outcome == "started" and record.run_attempt in self._failed(step_id):
                rerun_of = record.attempt
            else:
                return typing.cast(R, self._replay(record, return_type))
        self._session.before_step()
        attempt = len(self._failed(step_id)) + 1
        started = self._session.now()
        if at_most_once:
            marker = StepRecord(
                step_id=step_id,
                seq=seq,
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
        self._session.step_running(step_id)
        try:
            value = fn(*args, **kwargs)
        except Exception as exc:
            error = error_info(exc)
            delay = (retry or self._default_retry).next_delay(attempt, exc)
            if delay is not None:
                raise RetryStep(step_id, error, delay, started) from None
            return typing.cast(R, self._finish_failed(step_id, seq, attempt, started, error))
        finally:
            self._session.step_running(None)
            _current_step.reset(token)
        try:
            text = _serde.dumps(value, f"the result of step {step_id!r} in run {self.run_id}")
        except (_serde.NotSerializable, PayloadTooLarge) as exc:
            error = ErrorInfo(type=type(exc).__name__, message=str(exc))
            return typing.cast(R, self._finish_failed(step_id, seq, attempt, started, error))
        stored = self._session.record_step(
            StepRecord.ended(
                step_id,
                seq,
                attempt=attempt,
                run_attempt=self.attempt,
                started_at=started,
                finished_at=self._session.now(),
                result_json=text,
            )
        )
        return typing.cast(R, self._replay(stored, return_type))

    def _finish_failed(
        self, step_id: str, seq: int, attempt: int, started: datetime, error: ErrorInfo
    ) -> Any:
        stored = self._session.record_step(
            StepRecord.ended(
                step_id,
                seq,
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
            error = record.error or ErrorInfo("Error", "")
            if record.kind == "child_wait":
                child = json.loads(record.result_json or "{}")
                raise ChildRunFailed(
                    record.step_id, error, run_id=child["run_id"], status=child["status"]
                )
            if record.kind == "token_wait":
                cls = TokenTimedOut if error.type == "TokenTimedOut" else TokenFailed
                raise cls(record.step_id, error)
            raise StepFailed(record.step_id, error)
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
        return self._finish_failed(
            record.step_id, record.seq, record.attempt, record.started_at, error
        )

    @contextlib.contextmanager
    def group(self, name: str) -> Iterator[None]:
        """Run the enclosed steps in a named scope: their ids become ``"<name>/<step>#<n>"``.

        Groups nest (``"a/b/step#1"``); re-entering a group continues its numbering,
        so ids never collide. The trace shows the structure.

        Example:
            >>> with ctx.group("billing"):
            ...     ctx.step("charge", charge_card, order)   # id "billing/charge#1"
        """
        self._check_caller(f"ctx.group({name!r})")
        _check_step_name(name)
        previous = self._scope
        self._scope = f"{previous}/{name}" if previous else name
        try:
            yield
        finally:
            self._scope = previous

    def checkpointed_group(
        self, name: str, fn: Callable[..., R], /, *args: Any, **kwargs: Any
    ) -> R:
        """Run ``fn(ctx, *args, **kwargs)`` as one unit whose result is checkpointed.

        Unlike ``ctx.group`` (a naming scope whose body runs again on every replay, its
        steps returning their checkpoints), once a checkpointed group has returned, its
        result is recorded and replays return it **without running the body**: a long
        run with many steps replays faster when they are grouped so. Inside, it is like
        a task body: steps, waits, tokens, child runs and ``ctx.map`` are checkpointed
        in the group's scope ``"<scope>/<name>#<n>"`` (``"/enrich#1/fetch#1"``), the
        group taking a position like a step does. The body may wait or retry: until it
        has returned, each attempt runs it again from the top, replaying its own
        checkpoints. An error it raises passes through unrecorded, as from the task
        body itself (a ``StepFailed`` of a step inside, or your exception under the
        task's retry policy); only a return ends the group.

        Args:
            name: the group's name (no "/" or "#").
            fn: called as ``fn(ctx, *args, **kwargs)`` with this ctx; its return value
                is stored as JSON (its annotated return type revives models).

        Example:
            >>> def enrich(ctx: rung.Context, user_id: str) -> Profile:
            ...     user = ctx.step("user", load_user, user_id)
            ...     ctx.wait(timedelta(minutes=5))
            ...     return ctx.step("score", score, user)
            >>> profile = ctx.checkpointed_group("enrich", enrich, "u-7")
        """
        self._check_caller(f"ctx.checkpointed_group({name!r})")
        _check_step_name(name)
        if not callable(fn):
            raise UsageError(
                f"ctx.checkpointed_group({name!r}, fn): fn must be callable, got {fn!r}"
            )
        group_id, seq = self._position(name, "group")
        return_type = _return_type(fn)
        record = self._records.get(group_id)
        if record is not None:
            return typing.cast(R, self._replay(record, return_type))
        inner = [
            r.started_at
            for r in list(self._records.values())
            if r.step_id.startswith(group_id + "/")
        ]
        started = min([*inner, self._session.now()])
        previous = self._scope
        self._scope = group_id
        try:
            value = fn(self, *args, **kwargs)
        finally:
            self._scope = previous
        text: str | None = None
        error: ErrorInfo | None = None
        try:
            text = _serde.dumps(value, f"the result of group {group_id!r} in run {self.run_id}")
        except (_serde.NotSerializable, PayloadTooLarge) as exc:
            error = ErrorInfo(type=type(exc).__name__, message=str(exc))
        stored = self._session.record_step(
            StepRecord.ended(
                group_id,
                seq,
                run_attempt=self.attempt,
                started_at=started,
                finished_at=self._session.now(),
                kind="group",
                result_json=text,
                error=error,
            )
        )
        return typing.cast(R, self._replay(self._remember(stored), return_type))

    # -- in-run concurrency (rung._parallel) ---------------------------------------------

    def map(
        self,
        items: Sequence[T],
        fn: Callable[[Context, T], R],
        *,
        name: str = "map",
        max_concurrency: int | None = None,
        completion: Completion | None = None,
        item_name: Callable[[T, int], str] | None = None,
    ) -> BatchResult[R]:
        """Run ``fn(branch_ctx, item)`` for every item, on threads, each a branch.

        Each branch gets its own ctx: its steps, waits and tokens are checkpointed
        in the branch's scope ``"<batch id>[<index>]"``, e.g. ``"/map#1[3]/charge#1"``,
        so branches never collide. When a branch returns or raises, one record keeps
        its result or error; replays never call a finished branch again. Results come
        back in input order. See docs/parallel.md.

        A branch that waits (``ctx.wait``, a token) frees its thread; once every
        branch has finished or waits, the run suspends, and on resume only the
        unfinished branches run again (replaying their checkpoints).

        Args:
            items: a list (or other sequence) of at most 10,000 items, handed to
                ``fn`` as they are (not through JSON).
            fn: called as ``fn(ctx, item)`` with the branch's ctx; use that ctx, not
                the task's, inside it. Its return value must be JSON-serializable
                (its annotated return type revives models and dataclasses).
            name: names the batch: its id is ``"<scope>/<name>#<n>"``.
            max_concurrency: branches executing at once (threads); default
                ``min(len(items), 32)``.
            completion: when the batch is decided and whether it succeeded
                (default: every item must succeed). See ``rung.Completion``.
            item_name: ``(item, index) -> str`` names each item's branch: its scope is
                ``"<batch id>[<name>]"`` (``"/orders#1[o-17]/charge#1"``) instead of
                ``"<batch id>[<index>]"``, in step ids, history and the trace. Names must
                be unique, without "/", "#", "[" or "]", and the same on every replay.

        Returns:
            A ``BatchResult``: per item its status, result or error, in input order.

        Raises:
            BatchFailed: the completion rule was broken (too many items failed);
                it carries the ``BatchResult``.

        Example:
            >>> def ship(ctx: rung.Context, order: dict) -> str:
            ...     label = ctx.step("label", make_label, order)
            ...     return ctx.step("send", send_parcel, label)
            >>> batch = ctx.map(orders, ship, max_concurrency=8,
            ...                 completion=rung.Completion(tolerated_failures=5))
            >>> tracking = batch.results()
        """
        self._check_caller(f"ctx.map(name={name!r})")
        from rung import _parallel  # it builds on this module

        if not callable(fn):
            raise UsageError(f"ctx.map(items, fn): fn must be callable, got {fn!r}")
        what = f"ctx.map(name={name!r})"
        listed = _parallel.check_items(items, what)
        names = None
        if item_name is not None:
            if not callable(item_name):
                raise UsageError(f"{what}: item_name must be a function (item, index) -> str")
            names = _parallel.check_names(
                [_call_namer(item_name, item, index, what) for index, item in enumerate(listed)],
                what,
            )
        return_type = _return_type(fn)
        return _parallel.run_batch(
            self,
            kind="map",
            name=name,
            count=len(listed),
            call=lambda ctx, index: fn(ctx, listed[index]),
            return_type=lambda index: return_type,
            max_concurrency=max_concurrency,
            completion=completion,
            names=names,
        )

    def parallel(
        self,
        fns: Sequence[Callable[[Context], R]] | Mapping[str, Callable[[Context], R]],
        *,
        name: str = "parallel",
        max_concurrency: int | None = None,
        completion: Completion | None = None,
    ) -> BatchResult[R]:
        """Run each ``fn(branch_ctx)`` as a branch, on threads; like ``map`` otherwise.

        Branch ``i`` is ``fns[i]``; its scope is ``"<batch id>[<i>]"``
        (``"/parallel#1[0]/fetch#1"``). Results come back in the order of ``fns``.
        Given a mapping of name -> function, each branch is named: its scope is
        ``"<batch id>[<name>]"`` (``"/parallel#1[user]/fetch#1"``), its ``BatchItem``
        carries the name, and ``results_by_name()`` returns the values by name.

        Example:
            >>> batch = ctx.parallel([
            ...     lambda c: c.step("user", load_user, uid),
            ...     lambda c: c.step("orders", load_orders, uid),
            ... ])
            >>> user, orders = batch.results()
            >>> batch = ctx.parallel({
            ...     "user": lambda c: c.step("load", load_user, uid),
            ...     "orders": lambda c: c.step("load", load_orders, uid),
            ... })
            >>> found = batch.results_by_name()   # {"user": ..., "orders": ...}
        """
        what = f"ctx.parallel(name={name!r})"
        self._check_caller(what)
        from rung import _parallel

        names = None
        if isinstance(fns, Mapping):
            names = _parallel.check_names(list(fns.keys()), what)
            fns = list(fns.values())
        listed = _parallel.check_items(fns, what, "functions")
        for index, fn in enumerate(listed):
            if not callable(fn):
                raise UsageError(
                    f"ctx.parallel(fns): fns[{index}] must be callable (called as fn(ctx)), "
                    f"got {fn!r}"
                )
        return _parallel.run_batch(
            self,
            kind="parallel",
            name=name,
            count=len(listed),
            call=lambda ctx, index: listed[index](ctx),
            return_type=lambda index: _return_type(listed[index]),
            max_concurrency=max_concurrency,
            completion=completion,
            names=names,
        )

    def _branch_context(self, branch_id: str) -> Context:
        """A ctx for one branch: the run's records and session, its own scope and positions."""
        branch = copy.copy(self)
        branch._seq = {}
        branch._occurrences = {}
        branch._scope = branch_id
        branch._branch = branch_id
        return branch


def _call_namer(namer: Callable[[Any, int], object], item: Any, index: int, what: str) -> object:
    try:
        return namer(item, index)
    except Exception as exc:
        raise UsageError(
            f"{what}: item_name raised {type(exc).__name__} for item {index}: {exc}"
        ) from None


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


def _scope_of(step_id: str) -> str:
    return step_id.rsplit("/", 1)[0]


def _describe(kind: str) -> str:
    return {
        "step": "step",
        "wait": "wait",
        "token": "token",
        "token_wait": "wait for token",
        "map": "ctx.map",
        "parallel": "ctx.parallel",
        "child": "child run",
        "child_wait": "wait for child runs",
        "group": "ctx.checkpointed_group",
    }.get(kind, kind)
