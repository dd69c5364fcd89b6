"""The domain objects rung returns: runs, their history, and what storage records."""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, TypedDict

from rung.errors import ChildRunFailed, ErrorInfo


class RunStatus(enum.StrEnum):
    """Where a run is in its life. Terminal statuses never change again."""

    QUEUED = "QUEUED"
    DELAYED = "DELAYED"
    RUNNING = "RUNNING"
    WAITING = "WAITING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELED = "CANCELED"
    EXPIRED = "EXPIRED"
    TIMED_OUT = "TIMED_OUT"

    @property
    def is_terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL = frozenset(
    {
        RunStatus.COMPLETED,
        RunStatus.FAILED,
        RunStatus.CANCELED,
        RunStatus.EXPIRED,
        RunStatus.TIMED_OUT,
    }
)


class EventType(enum.StrEnum):
    RUN_TRIGGERED = "RunTriggered"
    ATTEMPT_STARTED = "AttemptStarted"
    STEP_STARTED = "StepStarted"
    STEP_SUCCEEDED = "StepSucceeded"
    STEP_FAILED = "StepFailed"
    ATTEMPT_FAILED = "AttemptFailed"
    WORKER_LOST = "WorkerLost"
    RETRY_SCHEDULED = "RetryScheduled"
    TOKEN_CREATED = "TokenCreated"
    WAIT_STARTED = "WaitStarted"
    WAIT_ENDED = "WaitEnded"
    RUN_COMPLETED = "RunCompleted"
    RUN_FAILED = "RunFailed"
    RUN_TIMED_OUT = "RunTimedOut"
    RUN_CANCELED = "RunCanceled"
    RUN_EXPIRED = "RunExpired"
    RUN_REDRIVEN = "RunRedriven"
    CHILD_TRIGGERED = "ChildTriggered"


@dataclass(frozen=True)
class RunHandle:
    """What ``trigger`` returns. ``created`` is False when an idempotency key matched."""

    run_id: str
    task_id: str
    created: bool = True


@dataclass(frozen=True)
class Debounce:
    """``trigger(debounce=)``: triggers of a task with the same ``key`` within ``window``
    of each other collapse into one run, which starts ``window`` after the last of them
    with the last one's payload (and tags, metadata, ttl); docs/lifecycle.md, "Debounce".

    Attributes:
        key: what collapses (per task): a string of at most 256 characters, often an id
            (``f"user-{user_id}"``).
        window: how long a run waits for another trigger (a timedelta or seconds).
        max_wait: the longest a burst may hold its run back from the first trigger (None:
            no cap; a steady stream of triggers would postpone it forever).
    """

    key: str
    window: timedelta | float
    max_wait: timedelta | float | None = None


class TriggerOptions(TypedDict, total=False):
    """``Client.trigger``'s keyword options, for faces that pass them on unchanged
    (``LocalEngine.trigger``)."""

    idempotency_key: str | None
    delay: timedelta | float | None
    tags: Iterable[str] | None
    idempotency_ttl: timedelta | float | None
    ttl: timedelta | float | None
    metadata: Mapping[str, Any] | None
    debounce: Debounce | None


class ListOptions(TypedDict, total=False):
    """``Client.list_runs``'s options, for faces that pass them on (``LocalEngine``)."""

    status: RunStatus | str | None
    task: str | None
    limit: int
    created_after: datetime | None
    created_before: datetime | None
    tag: str | None
    cursor: str | None
    tags: Iterable[str] | None


@dataclass(frozen=True)
class TriggerItem:
    """One run of ``Client.batch_trigger``: its payload and its own trigger options
    (as ``Client.trigger``'s; a plain payload in the items means one with none)."""

    payload: Any = None
    idempotency_key: str | None = None
    delay: timedelta | float | None = None
    tags: Iterable[str] | None = None
    ttl: timedelta | float | None = None
    metadata: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class TriggerResult:
    """One item's outcome in ``Client.batch_trigger``, at its ``index`` in the items:
    its run's ``handle``, or the ``error`` it was refused with (nothing was stored or
    enqueued for it). ``enqueued`` is False for a run that is stored but whose message
    SQS refused: the reconciler sends it, once it is overdue by its grace period."""

    index: int
    handle: RunHandle | None = None
    error: ErrorInfo | None = None
    enqueued: bool = False

    @property
    def ok(self) -> bool:
        return self.handle is not None


@dataclass(frozen=True)
class Failure:
    """One failed attempt, as kept on the run item (history is derived from these)."""

    attempt: int
    kind: str  # "step" (a step's attempt failed), "body" (task code outside steps), "crash"
    step_id: str | None
    error: ErrorInfo
    started_at: datetime | None  # when the attempt started
    failed_at: datetime
    step_started_at: datetime | None  # when the failing step started (kind "step")
    delay: timedelta | None  # the backoff scheduled after it; None if none followed


@dataclass(frozen=True)
class Redrive:
    """One ``Client.redrive`` of a FAILED run, as kept on the run item."""

    attempt: int  # the attempt that had failed; the redriven run goes on with the next
    failed_at: datetime  # when the run had failed
    error: ErrorInfo  # the run's error then
    at: datetime  # when it was redriven
    step_id: str | None  # the failed step whose checkpoint was removed, if any
    #: the code version the run was pinned to until then (docs/versioning.md); the
    #: redriven run starts again on the latest
    from_version: str | None = None


@dataclass(frozen=True)
class StepRecord:
    """A step's checkpoint: written once, never overwritten."""

    step_id: str
    seq: int
    #: "succeeded", "failed" (for good), "started" (at-most-once marker) or
    #: "waiting" (a durable wait in progress; replaced by its outcome when it ends)
    outcome: str
    attempt: int  # the step's own attempt number
    run_attempt: int  # the run's attempt that wrote it
    started_at: datetime
    finished_at: datetime | None
    result_json: str | None = None
    error: ErrorInfo | None = None
    #: "step", "wait" (ctx.wait), "token" (create_token), "token_wait"
    #: (wait_for_token), "map"/"parallel" (a batch) and "branch" (one of its
    #: branches, see rung._durable.parallel), "child" (a child run started: ``result_json``
    #: holds its ``run_id``, ``task_id`` and ``detached``), "child_wait" (the
    #: children's outcome), "group" (a ``ctx.checkpointed_group``'s result)
    kind: str = "step"
    #: for a wait: when it ends
    wake_at: datetime | None = None

    @classmethod
    def ended(
        cls,
        step_id: str,
        seq: int,
        *,
        run_attempt: int,
        started_at: datetime,
        finished_at: datetime,
        kind: str = "step",
        result_json: str | None = None,
        error: ErrorInfo | None = None,
        attempt: int = 1,
    ) -> StepRecord:
        """A finished checkpoint: "failed" when it carries an ``error``, else "succeeded"."""
        return cls(
            step_id=step_id,
            seq=seq,
            outcome="succeeded" if error is None else "failed",
            attempt=attempt,
            run_attempt=run_attempt,
            started_at=started_at,
            finished_at=finished_at,
            result_json=result_json,
            error=error,
            kind=kind,
        )


@dataclass(frozen=True)
class Offloaded:
    """A payload or output kept in the stack's S3 bucket (over 128 KiB of JSON), where
    ``list_runs``, ``list_children``, ``cancel`` and ``redrive`` leave it: ``get_run``
    reads the value itself (docs/payloads.md)."""

    #: its size, bytes of JSON
    size: int
    #: its object's key in the payload bucket
    key: str = field(default="", compare=False)

    def __repr__(self) -> str:
        return f"<{self.size:,} bytes in S3: get_run reads it>"


@dataclass(frozen=True)
class Run:
    """A run as stored, returned by ``get_run`` and ``list_runs`` (whose runs, as those
    of ``list_children``, ``cancel`` and ``redrive``, hold an ``Offloaded`` in place of a
    payload or output over 128 KiB; ``get_run`` reads it)."""

    run_id: str
    task_id: str
    status: RunStatus
    attempt: int
    payload: Any
    created_at: datetime
    updated_at: datetime
    available_at: datetime | None = None
    started_at: datetime | None = None
    attempt_started_at: datetime | None = None
    finished_at: datetime | None = None
    output: Any = None
    error: ErrorInfo | None = None
    idempotency_key: str | None = None
    tags: tuple[str, ...] = ()
    failures: tuple[Failure, ...] = field(default=(), repr=False)
    lease_token: int = field(default=0, repr=False)
    lease_until: datetime | None = field(default=None, repr=False)
    #: while WAITING: what the run waits for ("until 2026-11-25T10:00:00Z", "token ...")
    waiting_for: str | None = None
    #: compute time spent in attempts so far (waits excluded), for ``max_duration``
    compute_time: timedelta = timedelta(0)
    #: the step a worker was running when its invocation reached its time limit
    overran_step: str | None = field(default=None, repr=False)
    #: while WAITING with a wake time: "timer" (a wait, a poll) or "token" (a token's
    #: timeout or heartbeat deadline); what ``waiting_for`` says, as data
    wake_kind: str | None = field(default=None, repr=False)
    #: while parked for a slot of its queue: its waiter item's sort key
    parked_sk: str | None = field(default=None, repr=False)
    #: the queue it was last parked in (kept after a hand-off; a cancel frees its place)
    parked_queue: str | None = field(default=None, repr=False)
    #: the run that started this one as a child (``ctx.trigger``/``trigger_and_wait``)
    parent_run_id: str | None = None
    #: the run this one replays (``Client.replay``): same task, same payload
    replay_of: str | None = None
    #: each ``Client.redrive`` of this run, oldest first
    redrives: tuple[Redrive, ...] = field(default=(), repr=False)
    #: its parent waits for it (``trigger_and_wait``): its end wakes the parent
    parent_waits: bool = field(default=False, repr=False)
    #: one of a ``batch_trigger_and_wait``'s children: the batch's key (its first
    #: child's run id); its end counts on the parent, which wakes at the last one
    parent_batch: str | None = field(default=None, repr=False)
    #: the step whose failure failed the run (removed again by a redrive)
    failed_step: str | None = field(default=None, repr=False)
    #: its trace context as stored (X-Ray header form, see ``rung._util.traces``)
    trace: str | None = field(default=None, repr=False)
    #: a child run: the X-Ray trace id of its parent run
    parent_trace_id: str | None = None
    #: a finished run: when its retention ends (then it is deleted; docs/retention.md);
    #: None while it has not finished
    expires_at: datetime | None = None
    #: the code version the run executes on (docs/versioning.md): a Lambda function
    #: version on AWS, a snapshot of the app's code in ``rung dev`` and LocalEngine.
    #: Set by its first attempt (or at its start, for a child pinned to its parent's
    #: version); a redrive clears it, and the next attempt takes the latest. None
    #: before it started, and where versions are not in use.
    version: str | None = None
    #: ``trigger(ttl=)``: the run ends EXPIRED unless its body has started by then
    #: (the TTL counts from when it is due, after any ``delay``); None: no TTL
    start_by: datetime | None = None
    #: a run with a TTL: when its body first started (admitted past flow control);
    #: it can no longer expire. Not recorded for runs without a TTL.
    began_at: datetime | None = field(default=None, repr=False)
    #: its ``ctx.metadata`` as last written (docs/metadata.md); {} for none
    metadata: dict[str, Any] = field(default_factory=dict)
    #: the metadata it was triggered with (every attempt starts from it), as JSON
    initial_metadata: str | None = field(default=None, repr=False)
    #: ``metadata`` as stored JSON (what a write must differ from), None for none yet
    metadata_json: str | None = field(default=None, repr=False)
    #: ``trigger(debounce=)``: the triggers collapsed into this run (1: just its own)
    triggers: int = 1

    @property
    def trace_id(self) -> str | None:
        """The run's X-Ray trace id: all its attempts are in this one trace (also found
        by the X-Ray filter ``annotation.rung_run_id = "<run id>"``). None for a run
        stored before rung traced runs."""
        for part in (self.trace or "").split(";"):
            key, _, value = part.partition("=")
            if key == "Root" and value:
                return value
        return None

    @property
    def budget_from(self) -> int:
        """The first attempt that counts against retry policies: a redrive resets them."""
        return self.redrives[-1].attempt + 1 if self.redrives else 1


class RunPage(list[Run]):
    """One page of ``list_runs``: the runs, newest first (it is a list), and ``cursor``,
    which asks for the next page (None on the last page).

    Pages are cut by creation time, so a page may hold fewer runs than asked for while
    more follow: the cursor, not the length, says whether there is more.
    """

    def __init__(self, runs: Iterable[Run] = (), cursor: str | None = None) -> None:
        super().__init__(runs)
        self.cursor = cursor


@dataclass(frozen=True)
class HistoryEvent:
    """One line of a run's history, in order."""

    type: EventType
    timestamp: datetime
    attempt: int | None = None
    step: str | None = None
    delay: timedelta | None = None
    error: ErrorInfo | None = None
    #: ChildTriggered: the child run
    child_run_id: str | None = None
    #: RunTriggered, AttemptStarted: the code version it runs on; RunRedriven: the
    #: version it moved to (None until its next attempt started on it)
    version: str | None = None

    def __str__(self) -> str:
        parts = [self.timestamp.isoformat(timespec="milliseconds"), f"{self.type:<15}"]
        if self.attempt is not None:
            parts.append(f"attempt={self.attempt}")
        if self.step is not None:
            parts.append(f"step={self.step}")
        if self.delay is not None:
            parts.append(f"delay={self.delay.total_seconds():g}s")
        if self.child_run_id is not None:
            parts.append(f"child={self.child_run_id}")
        if self.version is not None:
            parts.append(f"version={self.version}")
        if self.error is not None:
            parts.append(f"error={self.error}")
        return "  ".join(parts)


@dataclass(frozen=True)
class Token:
    """A handle a run gives out so that someone outside can resume it.

    Returned by ``ctx.create_token``. Send ``id`` to whoever must answer (a person, a
    webhook); they call ``Client.complete_token(id, value)`` or ``fail_token``.
    The id is unguessable (128+ random bits): treat it as a capability.

    Or send ``url``: anyone may POST a JSON body to it to complete the token with that
    body as its value, without AWS credentials (a webhook provider, an approval mail's
    button in a form). It is single-purpose (it completes this token, once) and
    expires with the token; a wrong secret is refused (docs/http.md).

    Attributes:
        id: the token's id, ``"tok_..."``.
        name: the name given to ``create_token``.
        run_id: the run that created it.
        timeout_at: when it times out unless completed.
        url: the token's callback URL, the same on every replay of the run; None where
            no callback base URL is configured (the worker's ``RUNG_CALLBACK_URL``,
            set by template.yaml and ``rung dev``), and for tokens created before
            rung made URLs.

    Example:
        >>> token = ctx.create_token("approval", timeout=timedelta(days=3))
        >>> ctx.step("ask", send_approval_mail, token.url)
        >>> decision = ctx.wait_for_token(token)
    """

    id: str
    name: str
    run_id: str
    timeout_at: datetime
    url: str | None = field(default=None, repr=False)  # (a capability: kept out of logs)


@dataclass(frozen=True)
class TokenState:
    """A token as stored (``Client.get_token``)."""

    id: str
    name: str
    run_id: str
    step_id: str
    status: str  # "WAITING", "COMPLETED", "FAILED", "TIMED_OUT"
    created_at: datetime
    timeout_at: datetime
    heartbeat_timeout: timedelta | None
    #: when it times out if nothing happens: ``timeout_at`` or the heartbeat deadline
    deadline: datetime
    result_json: str | None = None
    error: ErrorInfo | None = None
    resolved_at: datetime | None = None
    #: the SHA-256 of its callback URL's secret (``Token.url``); None without a URL
    url_hash: str | None = field(default=None, repr=False)

    def as_of(self, now: datetime) -> TokenState:
        """The token as it stands at ``now``: an open token past its deadline has timed
        out, at its deadline, whether or not its run has looked at it yet."""
        if self.status == "WAITING" and self.deadline <= now:
            return replace(self, status="TIMED_OUT", resolved_at=self.deadline)
        return self


@dataclass(frozen=True)
class ChildResult:
    """How one child of ``ctx.batch_trigger_and_wait`` ended, in the order triggered.

    A failed child does not raise: the task inspects ``ok``/``error``, or calls
    ``unwrap()`` to get the output or raise its ``ChildRunFailed``.

    Attributes:
        run_id: the child run.
        task_id: its task.
        status: COMPLETED, FAILED, CANCELED, TIMED_OUT or EXPIRED.
        output: its output when COMPLETED (revived as the task's return type), else None.
        error: its error otherwise.

    Example:
        >>> results = ctx.batch_trigger_and_wait(resize, [{"id": 1}, {"id": 2}])
        >>> done = [r.output for r in results if r.ok]
        >>> failed = {r.run_id: r.error.message for r in results if r.error}
    """

    run_id: str
    task_id: str
    status: RunStatus
    output: Any = None
    error: ErrorInfo | None = None
    step_id: str = field(default="", repr=False)  # the parent's wait checkpoint

    @property
    def ok(self) -> bool:
        return self.status == RunStatus.COMPLETED

    def unwrap(self) -> Any:
        """The output, or raise ``ChildRunFailed`` when the child did not complete."""
        if self.ok:
            return self.output
        raise ChildRunFailed(
            self.step_id,
            self.error or ErrorInfo(str(self.status), ""),
            run_id=self.run_id,
            status=str(self.status),
        )


@dataclass(frozen=True)
class VersionInfo:
    """A code version and the runs still on it (``rung versions list``,
    ``LocalEngine.versions``; docs/versioning.md).

    Runs that have not started yet are counted on the latest version: their first
    attempt pins them to the version deployed then.
    """

    version: str
    #: when it was deployed (published); None for one that no longer exists
    deployed_at: datetime | None
    #: new runs start on it
    latest: bool
    #: it can still run: False for a version that was pruned (or never deployed here)
    #: while runs are pinned to it; those runs fail with ``VersionNotFound``
    exists: bool
    queued: int = 0  # QUEUED and DELAYED
    running: int = 0
    waiting: int = 0

    @property
    def in_flight(self) -> int:
        """Its runs that have not finished: while there are any, it cannot be pruned."""
        return self.queued + self.running + self.waiting
