"""The domain objects rung returns: runs, their history, and what storage records."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from rung.errors import ErrorInfo


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


@dataclass(frozen=True)
class RunHandle:
    """What ``trigger`` returns. ``created`` is False when an idempotency key matched."""

    run_id: str
    task_id: str
    created: bool = True


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
    #: branches, see rung._parallel), or a kind added by composition (child runs)
    kind: str = "step"
    #: for a wait: when it ends
    wake_at: datetime | None = None


@dataclass(frozen=True)
class Run:
    """A run as stored, returned by ``get_run`` and ``list_runs``."""

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


@dataclass(frozen=True)
class HistoryEvent:
    """One line of a run's history, in order."""

    type: EventType
    timestamp: datetime
    attempt: int | None = None
    step: str | None = None
    delay: timedelta | None = None
    error: ErrorInfo | None = None

    def __str__(self) -> str:
        parts = [self.timestamp.isoformat(timespec="milliseconds"), f"{self.type:<15}"]
        if self.attempt is not None:
            parts.append(f"attempt={self.attempt}")
        if self.step is not None:
            parts.append(f"step={self.step}")
        if self.delay is not None:
            parts.append(f"delay={self.delay.total_seconds():g}s")
        if self.error is not None:
            parts.append(f"error={self.error}")
        return "  ".join(parts)


@dataclass(frozen=True)
class Token:
    """A handle a run gives out so that someone outside can resume it.

    Returned by ``ctx.create_token``. Send ``id`` to whoever must answer (a person, a
    webhook); they call ``Client.complete_token(id, value)`` or ``fail_token``.
    The id is unguessable (128+ random bits): treat it as a capability.

    Attributes:
        id: the token's id, ``"tok_..."``.
        name: the name given to ``create_token``.
        run_id: the run that created it.
        timeout_at: when it times out unless completed.
    """

    id: str
    name: str
    run_id: str
    timeout_at: datetime


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
