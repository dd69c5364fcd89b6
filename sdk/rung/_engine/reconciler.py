"""The reconciler: re-drives runs whose way forward was lost (invariant 4, "nothing is lost").

A non-terminal run moves only when a message for it arrives. A message can be lost
between a status write and a send (a trigger without an idempotency key that dies
after recording its run; a worker that dies after ``schedule_retry`` or
``release_to_continue`` and before its re-send), or by being deleted or dead-lettered
while its run still needs it. The run item then says what should have happened:

    QUEUED,  available_at more than ``grace`` ago, unclaimed  -> "undispatched"
    DELAYED, available_at more than ``grace`` ago, unclaimed  -> "timer_lost"
    WAITING, available_at more than ``grace`` ago, unclaimed  -> "wake_lost"
             (a wait's timer message was lost, or a token's answerer made the run due
             and died before sending its message)
    RUNNING, lease expired more than ``grace`` ago            -> "lease_expired"

For each, a pass sends a message. It cannot see whether a message is in flight, so
it errs towards sending: a duplicate is harmless, because the worker's claim sorts it
out (it finds the run taken, busy or finished; an expired lease is taken over and
the lost attempt recorded as a crash).

What keeps it from sending too much: before sending, a pass records ``nudged_at`` on
the run item with one conditional write that succeeds only if the run is unchanged
since it was listed and was not nudged recently (``DynamoStore.mark_nudged``). Of
reconcilers racing on one run, one wins and sends; a run that stays stranded (its
workers are down) is re-sent at most once per ``grace``, and less often the longer it
stays stranded: the interval is half of how long it has been overdue, between
``grace`` and ``MAX_RENUDGE_INTERVAL``. Marking before sending means a crash between
the two loses that nudge until the interval passes; the next pass then re-sends.

Each pass begins with the timer sweep (rung._engine.timers): the messages of runs whose
timers come due within 15 minutes. It is what wakes long waits; the reconciler's own
search stays the backstop should a sweep not run.

Each pass also sweeps expired runs: finished runs past their retention are deleted with
their checkpoints, tokens and idempotency keys (``DynamoStore.sweep_expired``; see
docs/retention.md), at most ``sweep_limit`` runs per pass, oldest first.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from rung._aws.dynamodb import DynamoStore, StrandedRun, SweepResult
from rung._aws.sqs import SqsQueue
from rung._engine.timers import TimerSweep
from rung._util.clock import Clock, iso
from rung._util.durations import check_duration
from rung._util.traces import header_of
from rung.errors import InvalidConfig
from rung.models import RunStatus

log = logging.getLogger("rung.reconciler")

DEFAULT_GRACE = timedelta(minutes=5)
#: However long a run stays stranded, it is re-sent at least this often (or every grace).
MAX_RENUDGE_INTERVAL = timedelta(hours=1)
DEFAULT_LIMIT = 1000
#: The most expired runs one pass deletes (docs/retention.md: the sweep's ceiling).
DEFAULT_SWEEP_LIMIT = 20_000


class RedriveReason(enum.StrEnum):
    """Why a run was re-driven: which way forward it had lost."""

    UNDISPATCHED = "undispatched"  # QUEUED and due, never claimed: its message never came
    TIMER_LOST = "timer_lost"  # DELAYED, past its due time, never claimed
    WAKE_LOST = "wake_lost"  # WAITING, past its wake time (or woken), never resumed
    LEASE_EXPIRED = "lease_expired"  # RUNNING, its worker died and its message is gone


_REASONS = {
    RunStatus.QUEUED: RedriveReason.UNDISPATCHED,
    RunStatus.DELAYED: RedriveReason.TIMER_LOST,
    RunStatus.WAITING: RedriveReason.WAKE_LOST,
    RunStatus.RUNNING: RedriveReason.LEASE_EXPIRED,
}


@dataclass(frozen=True)
class Redrive:
    """One run a pass sent a message for."""

    run_id: str
    task_id: str
    status: RunStatus
    reason: RedriveReason
    overdue: timedelta  # how long past its due time (or lease expiry) it was


@dataclass(frozen=True)
class ReconcileReport:
    """What one pass found and did.

    Attributes:
        started_at: the pass's time (from its clock).
        grace: how long past due a run had to be to count as stranded.
        redriven: the runs this pass sent a message for.
        examined: stranded runs listed by the index.
        skipped: listed runs this pass did not send for, because a worker moved them
            or another reconciler nudged them after they were listed.
        backing_off: listed runs nudged recently, left until their re-send interval.
        truncated: more runs were stranded than one pass handles; the next takes them.
        timers_sent: runs whose timers came due, sent a message by the pass's timer
            sweep (rung._engine.timers), which runs first.
        expired: what the sweep of expired runs did.
    """

    started_at: datetime
    grace: timedelta
    redriven: tuple[Redrive, ...]
    examined: int
    skipped: int
    backing_off: int
    truncated: bool
    timers_sent: tuple[str, ...] = ()
    expired: SweepResult = SweepResult()

    @property
    def run_ids(self) -> list[str]:
        return [r.run_id for r in self.redriven]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, for the Lambda's return value and logs."""
        return {
            "started_at": iso(self.started_at),
            "grace_seconds": self.grace.total_seconds(),
            "redriven": [
                {
                    "run_id": r.run_id,
                    "task_id": r.task_id,
                    "status": str(r.status),
                    "reason": str(r.reason),
                    "overdue_seconds": round(r.overdue.total_seconds(), 3),
                }
                for r in self.redriven
            ],
            "examined": self.examined,
            "skipped": self.skipped,
            "backing_off": self.backing_off,
            "truncated": self.truncated,
            "timers_sent": len(self.timers_sent),
            "expired": {
                "runs": self.expired.runs,
                "items": self.expired.items,
                "kept": self.expired.kept,
                "truncated": self.expired.truncated,
            },
        }


class Reconciler:
    """Finds runs whose way forward was lost and sends each a message.

    Idempotent and safe to run concurrently with workers and with other reconcilers
    (see the module docstring). ``handler/reconciler.py`` runs a pass on a schedule;
    ``LocalEngine.reconcile()`` runs one on the engine's clock.

    Args:
        store: the run table.
        queue: the work queue the workers read.
        clock: the time that run items are compared with.
        grace: how long past its due time (or lease expiry) an unmoved run must be
            before it counts as stranded. Above the normal delay between a message
            becoming due and its claim (queue backlog, batch position); a smaller one
            only sends more harmless duplicates.
        limit: the most stranded runs one pass handles (oldest first).
        sweep_limit: the most expired runs one pass deletes (oldest first).

    Example:
        >>> report = Reconciler(store, queue, SystemClock()).run_once()
        >>> report.run_ids
    """

    def __init__(
        self,
        store: DynamoStore,
        queue: SqsQueue,
        clock: Clock,
        grace: timedelta = DEFAULT_GRACE,
        *,
        limit: int = DEFAULT_LIMIT,
        sweep_limit: int = DEFAULT_SWEEP_LIMIT,
    ) -> None:
        grace = check_duration(grace, "reconciler grace", positive=True)
        for name, value in (("limit", limit), ("sweep_limit", sweep_limit)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidConfig(f"reconciler {name} must be a positive int, got {value!r}")
        self.sweep_limit = sweep_limit
        self.store = store
        self.queue = queue
        self.clock = clock
        self.grace = grace
        self.limit = limit

    def run_once(self) -> ReconcileReport:
        """One pass: send the messages of due timers (``TimerSweep``); then list stranded
        runs, nudge each that is still stranded, send."""
        timers_sent = tuple(TimerSweep(self.store, self.queue, self.clock).run_once())
        now = self.clock.now()
        stranded = self.store.find_stranded(
            due_before=now - self.grace, not_nudged_since=now - self.grace, limit=self.limit + 1
        )
        truncated = len(stranded) > self.limit
        redriven: list[Redrive] = []
        skipped = backing_off = 0
        for candidate in stranded[: self.limit]:
            overdue = now - candidate.due
            not_since = now - self._renudge_interval(overdue)
            if candidate.nudged_at is not None and candidate.nudged_at >= not_since:
                backing_off += 1
                continue
            if not self.store.mark_nudged(candidate, now, not_since):
                skipped += 1  # a worker moved it, or another reconciler won
                continue
            self.queue.send(candidate.run.run_id, trace_header=header_of(candidate.run.trace))
            redriven.append(self._log_redrive(candidate, overdue))
        if truncated:
            log.warning("more than %d stranded runs; the next pass re-drives the rest", self.limit)
        expired = self.store.sweep_expired(now, self.sweep_limit)
        if expired.truncated:
            log.warning(
                "more than %d expired runs; the next pass deletes the rest", self.sweep_limit
            )
        return ReconcileReport(
            started_at=now,
            grace=self.grace,
            redriven=tuple(redriven),
            examined=len(stranded[: self.limit]),
            skipped=skipped,
            backing_off=backing_off,
            truncated=truncated,
            timers_sent=timers_sent,
            expired=expired,
        )

    def _renudge_interval(self, overdue: timedelta) -> timedelta:
        # Half the time overdue: a run stranded for a day by a worker outage is re-sent
        # about hourly, not every pass; once workers return, it waits at most an hour.
        return max(self.grace, min(overdue / 2, MAX_RENUDGE_INTERVAL))

    @staticmethod
    def _log_redrive(candidate: StrandedRun, overdue: timedelta) -> Redrive:
        run = candidate.run
        redrive = Redrive(
            run_id=run.run_id,
            task_id=run.task_id,
            status=run.status,
            reason=_REASONS[run.status],
            overdue=overdue,
        )
        what = (
            f"its lease expired {_seconds(overdue)} ago and no worker took it over"
            if run.status == RunStatus.RUNNING
            else f"it was due {_seconds(overdue)} ago and no worker claimed it"
        )
        log.warning(
            "run %s (task %s, %s, attempt %d): %s; re-driving it (%s)",
            run.run_id,
            run.task_id,
            run.status,
            run.attempt,
            what,
            redrive.reason,
            extra={"run_id": run.run_id, "redrive_reason": str(redrive.reason)},
        )
        return redrive


def _seconds(delta: timedelta) -> str:
    return f"{delta.total_seconds():.0f}s"
