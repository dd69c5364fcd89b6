"""Where a task body stands: the attempt's state (``RunState``), the caller's scope and
positions (``Scope``), the step being executed (``current_step``), and the port to the
engine (``AttemptSession``).

Replay rules (the contract users rely on, see docs/determinism.md):

* A step is identified by ``"<scope>/<name>#<n>"``: ``n`` counts that name's
  occurrences in the scope. Its checkpoint is written once; a replay that reaches
  a checkpointed step returns the recorded value and never calls the function.
* Steps also have a position (``seq``) in their scope. If a replay reaches a position
  whose checkpoint belongs to a different step, the code changed shape between
  attempts and the run fails with ``NonDeterminismError``.
* A value is returned through JSON even on the first execution, so the first run
  and every replay see the same kind of value (the declared return type, when
  annotated, revives pydantic models and dataclasses).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import traceback
import typing
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from rung._durable.metadata import MetadataState
from rung._durable.offload import in_core
from rung._util import serde
from rung.errors import (
    ChildRunFailed,
    ErrorInfo,
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


@dataclass(frozen=True)
class Replayed:
    """An operation that has a checkpoint: this is its value (a failure was raised
    instead), and its user code is not run."""

    value: Any


#: The scope whose code runs on this thread (or task): the task body's, or a branch's.
current_scope: ContextVar[Scope | None] = ContextVar("rung_scope", default=None)
#: The step whose function runs on this thread, if any.
current_step_info: ContextVar[StepInfo | None] = ContextVar("rung_step", default=None)


def current_step() -> StepInfo:
    """The step being executed. Only valid inside a step function of a run.

    Raises:
        UsageError: called outside a step.
    """
    info = current_step_info.get()
    if info is None:
        raise UsageError(
            "rung.current_step() was called outside a step: call it from a function run "
            "by ctx.step(...) or decorated with @rung.step, while a run executes it"
        )
    return info


def error_info(exc: BaseException) -> ErrorInfo:
    """Describe an exception as storable data (never pickled)."""
    text = "".join(traceback.format_exception(exc))
    message = str(exc)
    if len(message) > _MESSAGE_CHARS:  # errors are stored; a huge message must not be
        message = message[:_MESSAGE_CHARS] + f"... ({len(message):,} characters in all)"
    return ErrorInfo(type(exc).__name__, message, text).trimmed(_TRACEBACK_CHARS)


def encoded(value: Any, what: str) -> tuple[str | None, ErrorInfo | None]:
    """A value to checkpoint: its JSON, or (when it has none, or is too large) the
    error that fails the step, group or branch that returned it. ``what`` names the
    value in that error."""
    try:
        return serde.dumps(value, what), None
    except (serde.NotSerializable, PayloadTooLarge) as exc:
        return None, ErrorInfo(type=type(exc).__name__, message=str(exc))


class AttemptSession(Protocol):
    """What the durable operations need from the engine during one attempt."""

    def now(self) -> datetime: ...

    def before_step(self) -> None:
        """Check time left and the lease; may unwind with ContinueLater or LeaseLost."""

    def step_running(self, step_id: str | None) -> None:
        """The step this thread now executes (None: none), for the timeout watchdog.

        Branches of ``ctx.map`` run steps on several threads at once: the session
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

    def callback_base(self) -> str | None:
        """The base of token callback URLs (``Token.url``); None: tokens get no URL."""

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
        pinned: bool = False,
    ) -> tuple[StepRecord, bool]:
        """Create the child run named by ``record`` with its checkpoint, atomically, and
        send it; returns the stored checkpoint and whether the child was created now.
        ``pinned``: the child runs on this run's code version (else on the latest)."""

    def get_runs(self, run_ids: list[str]) -> dict[str, Run]:
        """Runs by id, consistently read (offloaded payloads and outputs left in S3: a
        ``rung.Offloaded`` each, which ``value`` reads)."""

    def value(self, value: Any) -> Any:
        """``value``, read from the payload bucket if it is a ``rung.Offloaded``."""

    def forget_batch(self, batch: str) -> None:
        """The batch's outcome is recorded: drop its count of ended children."""

    def cancel_child(self, run_id: str, reason: str) -> None:
        """Cancel a child run (and its own children, unless detached) that has not
        ended; one that ended meanwhile is left as it is."""


class RunState:
    """One attempt of a run, as its task body sees it: shared by every scope and branch.

    Attributes:
        records: the run's checkpoints by step id, read when the attempt began and
            added to as it records more.
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
        metadata: MetadataState | None = None,
    ) -> None:
        self.run_id = run_id
        self.task_id = task_id
        self.attempt = attempt
        self.default_retry = default_retry
        self.records = records
        self.session = session
        #: ``ctx.metadata``'s values (rung._durable.metadata)
        self.metadata = metadata or MetadataState(None, None)
        # An async attempt's bookkeeping (rung._durable.aio, steps.guarded):
        #: the attempt is ending (the body returned or raised): every operation that
        #: starts now raises this
        self.ending: BaseException | None = None
        #: a durable operation was canceled by user code (asyncio.timeout ...): misuse
        self.canceled_operation: BaseException | None = None
        #: every suspension an operation raised this attempt (combined at the end)
        self.suspends: list[Any] = []
        #: asyncio tasks executing a step, or running a batch, now
        self.steps_running: set[asyncio.Task[Any]] = set()
        self.batches_running: set[asyncio.Task[Any]] = set()
        # A branch record of ctx.map shares its batch's position (rung._durable.parallel):
        # it is not a position of its own.
        self.by_seq = {
            (scope_of(r.step_id), r.seq): r
            for r in records.values()
            if r.seq and r.kind != "branch"
        }

    def remember(self, record: StepRecord) -> StepRecord:
        self.records[record.step_id] = record
        return record

    def record(self, record: StepRecord) -> StepRecord:
        """Write a checkpoint (the winner's comes back on a race) and remember it."""
        return self.remember(self.session.record_step(record))

    def failed_attempts(self, step_id: str) -> list[int]:
        return self.session.failed_attempts_of(step_id)


class Scope:
    """Where code of a run stands: a scope (``""`` at the top, a group's path, a
    branch's id) and the positions taken in each scope so far.

    The task body has one; each branch of ``ctx.map``/``ctx.parallel`` has its own
    (``branch``), so that branches running at once number their steps independently.
    A ``with ctx.group(...)`` or a checkpointed group moves ``path`` while it runs.
    """

    def __init__(self, run: RunState, path: str = "", branch: str | None = None) -> None:
        self.run = run
        self.path = path
        #: in a branch of ctx.map / ctx.parallel: the branch's id (its scope)
        self.branch = branch
        #: in an async task: the asyncio task whose code this scope's is (the body's, a
        #: branch's). Positions are taken in the order its code calls operations; a
        #: call from another asyncio task would take one in an order that depends on
        #: timing, so ``check_caller`` refuses it.
        self.owner: object | None = None
        #: a signal an operation raised in this scope of an async task (a retry, a
        #: wait, a cancel), kept in case user code swallows it
        #: (``gather(..., return_exceptions=True)``): the scope's next operation, or
        #: its end (the body's, a branch's, a group's), raises it again
        self.unwinding: BaseException | None = None
        self._seq: dict[str, int] = {}
        self._occurrences: dict[tuple[str, str], int] = {}

    @property
    def run_id(self) -> str:
        return self.run.run_id

    @property
    def session(self) -> AttemptSession:
        return self.run.session

    @contextlib.contextmanager
    def entered(self) -> Iterator[None]:
        """Run the enclosed code as this scope's (the task body, a branch): the scope
        that ``@rung.step`` functions and the caller checks see on this thread."""
        token = current_scope.set(self)
        try:
            yield
        finally:
            current_scope.reset(token)

    def for_branch(self, branch_id: str) -> Scope:
        """A scope for one branch: the run's state, its own scope and positions."""
        return Scope(self.run, branch_id, branch=branch_id)

    @contextlib.contextmanager
    def moved_to(self, path: str) -> Iterator[None]:
        """Run the enclosed code in scope ``path``, then come back."""
        previous = self.path
        self.path = path
        try:
            yield
        finally:
            self.path = previous

    def metadata_refusal(self) -> str | None:
        """Where ``ctx.metadata`` may not change now (code a replay does not run again),
        or None: in a step, or a ``ctx.map``/``ctx.parallel`` branch or checkpointed
        group (their scope ids carry a ``#`` position; plain ``ctx.group`` names none)."""
        if current_step_info.get() is not None:
            return "inside a step"
        if "#" in self.path:
            return "inside a ctx.map/ctx.parallel branch or a ctx.checkpointed_group"
        return None

    def replaying(self) -> bool:
        """Whether the code running in this scope now ran in an earlier attempt: its
        next durable operation has a checkpoint (read when the attempt began). Inside a
        step the step's own code runs for real: not replaying."""
        if current_step_info.get() is not None:
            return False
        return (self.path, self._seq.get(self.path, 0) + 1) in self.run.by_seq

    def next_step_id(self, name: str) -> str:
        """The step id the next call named ``name`` gets (without taking it)."""
        return f"{self.path}/{name}#{self._occurrences.get((self.path, name), 0) + 1}"

    def position(self, name: str, kind: str) -> tuple[str, int]:
        """The next step id and per-scope position for ``name``; checks determinism.

        Positions count per scope, so that branches running concurrently in their
        own scopes (``ctx.map``, ``ctx.parallel``) number their steps independently.
        """
        check_step_name(name)
        scope = self.path
        seq = self._seq.get(scope, 0) + 1
        self._seq[scope] = seq
        key = (scope, name)
        self._occurrences[key] = self._occurrences.get(key, 0) + 1
        step_id = f"{scope}/{name}#{self._occurrences[key]}"
        recorded = self.run.by_seq.get((scope, seq))
        if recorded is not None and (recorded.step_id != step_id or recorded.kind != kind):
            raise NonDeterminismError(
                f"run {self.run_id}: {describe(recorded.kind)} #{seq}"
                + (f" in group {scope!r}" if scope else "")
                + f" was {recorded.step_id!r} when first executed, but the code now calls "
                f"{describe(kind)} {step_id!r}. Step order must not change between attempts "
                "of a run: keep the steps' names and order deterministic (no branching on "
                "time, randomness or unrecorded I/O outside steps). See docs/determinism.md."
            )
        return step_id, seq

    def check_caller(self, what: str) -> None:
        """Refuse an operation called from a step, from another scope's thread, or
        after its scope ended."""
        current = current_step_info.get()
        if current is not None:
            raise UsageError(
                f"{what} was called inside step {current.step_id!r} of run {self.run_id}: "
                "steps and waits cannot be nested in a step; call it from the task body"
            )
        running = current_scope.get()
        if running is self:
            if self.owner is not None:
                _check_owner(self, what)
            return
        if running is not None and running.run_id == self.run_id:
            if running.branch is not None:
                raise UsageError(
                    f"{what} was called on another ctx than the one of branch "
                    f"{running.branch!r} of run {self.run_id}: code in a ctx.map or "
                    "ctx.parallel branch must use the ctx its branch function receives "
                    "(fn(ctx, item) / fn(ctx)), not the task's ctx, so that its steps are "
                    "recorded in the branch's scope"
                )
            if self.branch is not None:
                raise UsageError(
                    f"{what} was called on the ctx of branch {self.branch!r} of run "
                    f"{self.run_id} after that branch ended: a branch's ctx is valid only "
                    "inside its branch function; use the task's ctx"
                )
        raise UsageError(
            f"{what} was called outside its run's task body (run {self.run_id}); call "
            "it from the task function itself, with the ctx it was given"
        )

    def replay(self, record: StepRecord, return_type: Any) -> Any:
        """What a recorded checkpoint gives its caller: its value, or its error raised."""
        if record.outcome == "succeeded":
            return serde.loads(record.result_json, return_type)
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
        return self.record_failure(
            record.step_id, record.seq, record.attempt, record.started_at, error
        )

    def record_failure(
        self, step_id: str, seq: int, attempt: int, started: datetime, error: ErrorInfo
    ) -> Any:
        """Record a step's failure for good and raise it (as every replay will)."""
        stored = self.session.record_step(
            StepRecord.ended(
                step_id,
                seq,
                attempt=attempt,
                run_attempt=self.run.attempt,
                started_at=started,
                finished_at=self.session.now(),
                error=error,
            )
        )
        return self.replay(stored, None)


def _check_owner(scope: Scope, what: str) -> None:
    """In an async task: refuse a call from an asyncio task other than the scope's own,
    or from a thread (positions would follow timing), except the core's own calls on
    the attempt's pool (``offload.io``)."""
    try:
        task = asyncio.current_task()
    except RuntimeError:  # no event loop on this thread
        if in_core.get():
            return
        elsewhere = "a thread (asyncio.to_thread, an executor)"
    else:
        if task is scope.owner:
            return
        elsewhere = (
            "another asyncio task (asyncio.gather, create_task or a TaskGroup of a "
            "coroutine that calls ctx)"
        )
    where = f"branch {scope.branch!r}" if scope.branch is not None else "the task body"
    raise UsageError(
        f"{what} was called from {elsewhere}, not from the asyncio task running {where} "
        f"of run {scope.run_id}: its checkpoint would take a position that depends on "
        "timing, and a replay would "
        "not find it. Run such coroutines as branches with ctx.parallel or ctx.map (each "
        "gets its own ctx), or pass ctx.step(...) calls themselves to asyncio.gather: "
        "they take their positions when called. See docs/async.md."
    )


#: The longest step name (and group, wait, token or child name).
MAX_STEP_NAME = 200
#: What a wait for a child or a token adds to its name: ``"<name>:wait"``.
WAIT_SUFFIX = ":wait"


def check_step_name(name: object) -> None:
    if not isinstance(name, str) or not name:
        raise UsageError(f"a step name must be a non-empty string, got {name!r}")
    if "/" in name or "#" in name:
        raise UsageError(
            f"step name {name!r} contains '/' or '#', which rung uses in step ids; "
            "choose a name without them"
        )
    if len(name) > MAX_STEP_NAME:
        raise UsageError(f"step name is {len(name)} characters long; the limit is {MAX_STEP_NAME}")


def check_waited_name(name: object, what: str) -> None:
    """A child's or a token's name, checked together with its wait's
    (``"<name>:wait"``), before anything is created under it."""
    check_step_name(name)
    assert isinstance(name, str)
    if len(name) + len(WAIT_SUFFIX) > MAX_STEP_NAME:
        raise UsageError(
            f"{what}(name={name[:20] + '...'!r}, {len(name)} characters): its wait is the "
            f"step '<name>{WAIT_SUFFIX}', and a step name is at most {MAX_STEP_NAME} "
            f"characters; use a name of at most {MAX_STEP_NAME - len(WAIT_SUFFIX)} characters"
        )


@functools.lru_cache(maxsize=1024)
def _return_type_cached(fn: Callable[..., Any]) -> Any:
    try:
        return typing.get_type_hints(fn).get("return")
    except Exception:
        return None


def return_type(fn: Callable[..., Any]) -> Any:
    """``fn``'s annotated return type (revives its value), or None."""
    try:
        return _return_type_cached(fn)
    except TypeError:  # unhashable callable
        return None


def scope_of(step_id: str) -> str:
    """The scope a checkpoint takes its position in (``"/map#1[0]"`` for a step of
    that branch; for a branch record, its batch's scope)."""
    return step_id.rsplit("/", 1)[0]


def describe(kind: str) -> str:
    """A checkpoint's kind, as a user calls it."""
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
