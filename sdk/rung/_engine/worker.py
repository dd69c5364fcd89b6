"""The worker: takes one queue message and moves its run forward by one attempt.

``handler/worker.py`` (Lambda), ``rung.testing.LocalEngine`` and the local poller
all call ``Worker.handle``; they differ only in how messages arrive and how the
returned ``Disposition`` is applied (Lambda: partial batch failures; locally: a
delete or nothing).

One attempt, in requests: claim (1 write, returns the run) + load checkpoints (1
query, skipped on a run's first claim, which cannot have any) + 1 write per
executed step + 1 terminal write. Backoff is one fenced write plus one SQS call.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from rung._aws.dynamodb import (
    SUSPEND_TOKEN_CHECKS,
    Claimed,
    DynamoStore,
    NotClaimed,
    ParentLink,
    waits_without_timer,
)
from rung._aws.sqs import BadMessage, QueueMessage, SqsQueue, decode
from rung._durable import aio
from rung._durable.signals import (
    Canceled,
    ContinueLater,
    RetryStep,
    Suspend,
    TimeLimitReached,
)
from rung._durable.state import RunState, Scope, error_info
from rung._engine.admission import (
    PARK_RECHECK,
    Delayed,
    Gate,
    Parked,
    Shard,
    describe_delay,
    is_late,
)
from rung._engine.config import WorkerConfig
from rung._engine.heartbeat import Heartbeat, lost_attempt
from rung._engine.lifecycle import Lifecycle
from rung._engine.logs import bound
from rung._engine.queues import QueueAdmin
from rung._engine.routing import Disposition, Versioning, gone_error, settle_worn
from rung._engine.schedules import Schedules, firing_of
from rung._engine.session import Session
from rung._engine.telemetry import Sinks, Telemetry, report_expired
from rung._util import serde
from rung._util.clock import Clock, to_ms
from rung._util.traces import header_of
from rung.app import App, Task
from rung.async_context import AsyncContext
from rung.context import Context
from rung.errors import (
    Contended,
    ErrorInfo,
    InvalidPayload,
    LeaseLost,
    NonDeterminismError,
    PayloadTooLarge,
    RungError,
    StepFailed,
    UnknownTask,
)
from rung.flow import Queue
from rung.models import Failure, Run, RunStatus

__all__ = ["Disposition", "Worker"]

log = logging.getLogger("rung.worker")

#: A rate-limited run this close to its reserved start sleeps until it; further away,
#: its message is delayed (SQS delays come in whole seconds).
RATE_SLEEP = timedelta(seconds=1)
#: A run whose queue admission gave up on contention comes back after 1-2x this.
CONTENTION_RETRY = timedelta(seconds=2)


class Worker:
    def __init__(
        self,
        app: App,
        store: DynamoStore,
        queue: SqsQueue,
        clock: Clock,
        config: WorkerConfig | None = None,
        sinks: Sinks | None = None,
        versioning: Versioning | None = None,
    ) -> None:
        self.app = app
        #: this worker's code version and the way to the others' (docs/versioning.md);
        #: None: versions are not in use, and runs are not pinned
        self.versioning = versioning
        self.store = store
        self.queue = queue
        self.clock = clock
        self.config = config or WorkerConfig()
        #: where the runs' reports go: trace segments, metrics, events (docs/observability.md)
        self.sinks = sinks or Sinks(app.name)
        self.gate = Gate(store, queue, self.config.slot_lease)
        queues = QueueAdmin(app, store, queue, clock, self.config.slot_lease)
        self.lifecycle = Lifecycle(store, queue, clock, queues, self.sinks.events, app.name)
        self.schedules = Schedules(app, store, queue, None, clock)  # firing needs no Scheduler

    def handle(
        self,
        message: QueueMessage,
        time_left: Callable[[], float] | None = None,
        *,
        handed_over: bool = False,
    ) -> Disposition:
        """Process one message. ``time_left`` returns the invocation's seconds left.
        ``handed_over``: another version's worker handed it to this one (routing.py):
        it takes only a run already pinned to this version."""
        firing = firing_of(message.body)
        if firing is not None:  # a cron schedule's: it starts a run (at most once)
            self.schedules.fire(firing)
            return Disposition.ACK
        try:
            run_id = decode(message.body)
        except BadMessage as exc:
            log.error("poison message %s: %s", message.message_id, exc)
            return self._poison(message)
        if self.queue.worn(message) and self.settle_worn([message]):
            return Disposition.ACK  # a fresh copy carries the run on (or it needs none)
        if time_left is not None and time_left() < self.config.min_time_left.total_seconds():
            # Too little of this invocation is left to start an attempt (a late message
            # in a batch): hand the run to a fresh invocation without claiming it.
            self.queue.send(run_id, trace_header=message.trace_header)
            return Disposition.ACK
        now = self.clock.now()
        lease = self.config.lease_duration
        version = self.versioning.version if self.versioning is not None else None
        claim = self.store.claim_run(run_id, now, lease, version, pinned=handed_over)
        if isinstance(claim, NotClaimed) and claim.reason == "other_version":
            return self._hand_over(message, claim, time_left)
        if isinstance(claim, NotClaimed) and claim.reason == "unpinned":
            # Handed over before the run was moved to the latest (a redrive): it is the
            # latest version's now, which gets the message back at once.
            return self._later(message, run_id, now)
        if isinstance(claim, NotClaimed) and claim.reason == "crashed":
            assert claim.run is not None
            claim = self._take_over(claim.run, now)
        if isinstance(claim, NotClaimed):
            return self._not_claimed(message, run_id, claim, now)
        return self._attempt(message, claim, time_left)

    def settle_worn(self, messages: Sequence[QueueMessage]) -> set[str]:
        """Renew the worn messages among ``messages`` (``routing.settle_worn``)."""
        return settle_worn(self.store, self.queue, self.clock, messages)

    def _poison(self, message: QueueMessage) -> Disposition:
        """Hand a poison message back for redelivery soon, so that it reaches the DLQ in
        about a minute rather than after maxReceiveCount full visibility timeouts (6x
        the function timeout each in template.yaml)."""
        self.queue.retry_poison(message)
        return Disposition.POISON

    # -- claiming --------------------------------------------------------------------

    def _not_claimed(
        self, message: QueueMessage, run_id: str, claim: NotClaimed, now: datetime
    ) -> Disposition:
        if claim.reason == "missing":
            log.error("message %s names run %s, which does not exist", message.message_id, run_id)
            return self._poison(message)
        if claim.reason == "terminal":
            return Disposition.ACK  # a duplicate of a message whose run is finished
        if claim.reason == "expired":
            assert claim.run is not None
            return self._expire(message, claim.run)
        assert claim.retry_at is not None
        if claim.reason == "not_due" and waits_without_timer(claim.retry_at):
            return Disposition.ACK  # it waits with no timer: its waker sends a message
        # "not_due": a long delay chained through 15-minute hops; "busy": another worker
        # holds the lease (a duplicate delivery): look again when that lease would expire.
        due = claim.retry_at
        if claim.reason == "busy":
            due += timedelta(seconds=1)
        return self._later(message, run_id, due)

    def _expire(self, message: QueueMessage, run: Run) -> Disposition:
        """The run was not started within its TTL: it ends EXPIRED, unstarted."""
        error = self.lifecycle.expire(run)
        now = self.clock.now()
        if error is None:  # it began, ended or was taken meanwhile: look again
            return self._later(message, run.run_id, now + timedelta(seconds=1))
        # A slot the run holds under its last claim (deferred by its queue's rate limit,
        # or admitted under a holder that died before its body began): free it. A slot
        # handed to it while parked was freed by Lifecycle.expire (_leave_queue).
        shard = Shard.of_run(self.app, run, self.store.resolved)
        if shard is not None:
            self.gate.release(shard, run.run_id, run.lease_token, now)
            if run.status == RunStatus.RUNNING:  # handed off, then its taker died
                self.gate.release(shard, run.run_id, 0, now)
        report_expired(self.sinks, run, now, error)
        return Disposition.ACK

    def _hand_over(
        self, message: QueueMessage, claim: NotClaimed, time_left: Callable[[], float] | None
    ) -> Disposition:
        """The run is pinned to another code version: its worker handles the message."""
        run = claim.run
        assert run is not None and run.version is not None and self.versioning is not None
        try:
            done = self.versioning.hand_over(run.version, message, time_left)
        except Exception:  # that version could not be reached now: the message comes back
            log.exception("run %s: could not hand it to version %s", run.run_id, run.version)
            return self._later(message, run.run_id, self.clock.now() + CONTENTION_RETRY)
        if done is not None:
            return done
        # No such version: fail the run (fenced as a claim, so that one finder does it).
        error, now = gone_error(run), self.clock.now()
        log.error("%s", error.message)
        if run.status == RunStatus.RUNNING:  # crashed there: fenced on the dead holder
            with contextlib.suppress(LeaseLost):
                self._fail(run, run.lease_token, error, None, now)
            shard = Shard.of_run(self.app, run, self.store.resolved)
            if shard is not None:
                self.gate.release(shard, run.run_id, run.lease_token, now)
            return Disposition.ACK
        # Claimed as that version, only while the run is still pinned to it (a redrive
        # in between moved it to the latest, which then runs it).
        taken = self.store.claim_run(
            run.run_id, now, self.config.lease_duration, run.version, pinned=True
        )
        if isinstance(taken, NotClaimed):
            return self._not_claimed(message, run.run_id, taken, now)
        with contextlib.suppress(LeaseLost):
            self._fail(taken.run, taken.token, error, None, now)
        return Disposition.ACK

    def _take_over(self, run: Run, now: datetime) -> Claimed | NotClaimed:
        """The previous holder died mid-attempt: that attempt failed; start the next."""
        failure = lost_attempt(run, now)
        error = failure.error
        try:
            max_attempts = self.app.get_task(run.task_id).retry.max_attempts
        except UnknownTask:
            max_attempts = 1
        # The dead invocation's segment runs from its last write to the run (its claim
        # or a lease renewal) to now; reported by the finder that wins the run.
        lost = Telemetry(self.sinks, run, run.updated_at, owner=self.sinks)
        if _run_level_failures(run) + 1 >= max_attempts:
            # Fenced on the dead holder's token: one of several finders wins.
            with contextlib.suppress(LeaseLost), bound(lost.log_context):
                self._fail(run, run.lease_token, error, failure, now)
                lost.finish("worker lost", now, error, RunStatus.FAILED)
            shard = Shard.of_run(self.app, run, self.store.resolved)
            if shard is not None:  # the dead holder's slot: free it for the next run
                self.gate.release(shard, run.run_id, run.lease_token, now)
            return NotClaimed("terminal", run, None)
        version = self.versioning.version if self.versioning is not None else None
        claim = self.store.reclaim_crashed(run, now, self.config.lease_duration, failure, version)
        if isinstance(claim, Claimed):
            with bound(lost.log_context):
                lost.finish("worker lost", now, error)
        return claim

    # -- one attempt -----------------------------------------------------------------

    def _attempt(
        self, message: QueueMessage, claim: Claimed, time_left: Callable[[], float] | None
    ) -> Disposition:
        run, token = claim.run, claim.token
        telemetry = Telemetry(self.sinks, run, self.clock.now(), owner=self.sinks)
        try:
            with bound(telemetry.log_context):  # every line until it ends names the run
                return self._run_attempt(message, run, token, time_left, telemetry)
        except LeaseLost as exc:
            # Another worker owns the run now: stop, and leave the message alone (its
            # redelivery finds the run finished, or held, and is handled then).
            log.warning("%s", exc)
            return Disposition.KEEP

    def _run_attempt(
        self,
        message: QueueMessage,
        run: Run,
        token: int,
        time_left: Callable[[], float] | None,
        telemetry: Telemetry,
    ) -> Disposition:
        now = self.clock.now
        try:
            task = self.app.get_task(run.task_id)
        except UnknownTask as exc:
            error = ErrorInfo(
                "UnknownTask",
                f"{exc}; was the task removed or renamed in a deploy while this run was in flight?",
            )
            self._fail(run, token, error, None, now(), telemetry)
            return Disposition.ACK
        # A run's first claim cannot find checkpoints: nobody held it before.
        records = self.store.load_steps(run.run_id) if token > 1 else {}
        attempt_start = run.attempt_started_at or now()
        telemetry.started(records)
        session = Session(self, run, token, time_left, task.max_duration, telemetry)
        scope = Scope(
            RunState(
                run_id=run.run_id,
                task_id=run.task_id,
                attempt=run.attempt,
                default_retry=task.retry,
                records=records,
                session=session,
                metadata=session.metadata,
            )
        )
        try:
            payload = task.payload_of(self.store.resolved(run.payload))  # (from S3?)
        except Exception as exc:
            self._fail(run, token, _payload_error(task, exc), None, now(), telemetry)
            return Disposition.ACK
        shard: Shard | None = None
        if task.queue is not None:
            admitted = self._admit(message, run, token, task, task.queue, payload, session)
            if not isinstance(admitted, Shard):
                return admitted
            session.hold_slot(shard := admitted)
        if run.start_by is not None and run.began_at is None:
            self.store.begin_run(run.run_id, token, now())  # it can no longer expire
        # Armed for the task body only (no step runs before it): _execute disarms it.
        watchdog = session.start_watchdog()
        disposition = self._execute(
            message, run, token, task, scope, session, payload, attempt_start, watchdog
        )
        # Released only when the attempt ended normally: a crash keeps the slot until
        # its lease expires (the run's next attempt takes it back), and a worker that
        # lost its lease leaves the slot to the run's new owner.
        if shard is not None:
            self.gate.release(shard, run.run_id, token, now())
        return disposition

    def _admit(
        self,
        message: QueueMessage,
        run: Run,
        token: int,
        task: Task[Any],
        spec: Queue,
        payload: Any,
        session: Session,
    ) -> Disposition | Shard:
        """Get the run a slot of its queue (docs/flow-control.md). A shard: it holds a
        slot there and may start now; else the run does not start in this invocation (parked for a
        hand-off, deferred to its rate-limited start or past contention, or failed for
        a payload its flow options refuse) and this is what to do with the message."""
        now = self.clock.now
        report = session.telemetry
        try:
            key, priority = task.flow_of(payload)
        except InvalidPayload as exc:
            error = ErrorInfo("InvalidPayload", str(exc))
            self._fail(run, token, error, None, now(), report)
            return Disposition.ACK
        unused: datetime | None = None  # a reservation come to too late
        shard = Shard.of(spec, run.run_id, key)
        while True:
            try:
                verdict = self.gate.admit(
                    shard, run, token, key, priority, now, session.spent(), unused
                )
                report.queue_counts(shard.item, verdict.running, verdict.parked)
            except Contended as exc:
                # Not the run's fault: no attempt is spent; it comes back shortly.
                log.warning("%s", exc)
                again = now() + CONTENTION_RETRY * random.uniform(1, 2)  # noqa: S311
                self.store.defer_run(
                    run.run_id,
                    token,
                    again,
                    f"contention on queue {spec.name!r}",
                    now(),
                    session.spent(),
                )
                report.finish("deferred", now(), reason=f"contention on queue {spec.name!r}")
                return self._later(message, run.run_id, again)
            if isinstance(verdict, Parked):
                report.parked(spec.name, key, now(), "no free slot")
                report.finish("parked", now(), reason=f"queue {spec.name!r}")
                if run.start_by is not None and run.began_at is None:
                    # Come back as its TTL runs out (to expire it, unless a hand-off
                    # started it first) or at the recheck, whichever is first: a delayed
                    # message of at most PARK_RECHECK, never one held in flight.
                    back = min(now() + PARK_RECHECK, run.start_by + timedelta(seconds=1))
                    return self._later(message, run.run_id, back)
                return Disposition.ACK  # a hand-off (or the safety net) sends it again
            if not isinstance(verdict, Delayed):
                return shard
            wait = verdict.until - now()
            if wait > RATE_SLEEP:
                # Come back just before the reserved start (SQS delays are whole
                # seconds), keeping the slot; the rest is slept below then.
                self.store.defer_run(
                    run.run_id,
                    token,
                    verdict.until - RATE_SLEEP,
                    describe_delay(spec, verdict.until),
                    now(),
                    session.spent(),
                )
                report.parked(spec.name, key, now(), describe_delay(spec, verdict.until))
                report.finish("deferred", now(), reason=describe_delay(spec, verdict.until))
                return self._later(message, run.run_id, verdict.until - RATE_SLEEP)
            # Less than a second to the reserved start: wait for it here, so the
            # run starts at its reservation, not at the next whole second.
            time.sleep(max(wait.total_seconds(), 0.0))
            if not is_late(spec, verdict.until, now()):
                return shard
            # Woken too late for the reservation (a busy machine): admit again,
            # which takes a fresh one and gives this one back to the window.
            unused = verdict.until

    def _execute(
        self,
        message: QueueMessage,
        run: Run,
        token: int,
        task: Task[Any],
        scope: Scope,
        session: Session,
        payload: Any,
        attempt_start: datetime,
        watchdog: threading.Timer | None,
    ) -> Disposition:
        """Run the task body once and record how it ended."""
        now = self.clock.now
        report = session.telemetry
        try:
            # The heartbeat stops (a beat in flight done) before any final write below.
            with scope.entered(), session.metadata_flushed(), self._heartbeat(session, run.run_id):
                if task.is_async:  # one event loop per attempt
                    result = aio.run_body(task.fn, scope, AsyncContext, payload)
                else:
                    result = aio.run_sync_body(task.id, task.fn, Context(scope), payload)
        except RetryStep as retry:
            failure = Failure(
                attempt=run.attempt,
                kind="step",
                step_id=retry.step_id,
                error=retry.error,
                started_at=attempt_start,
                failed_at=now(),
                step_started_at=retry.started_at,
                delay=retry.delay,
            )
            due = now() + retry.delay
            self.store.schedule_retry(run.run_id, token, failure, due, now(), session.spent())
            step_attempt = len(session.failed_attempts_of(retry.step_id)) + 1
            report.step_failed(
                retry.step_id, step_attempt, retry.started_at, failure.failed_at, retry.error
            )
            report.finish("retrying", now(), retry.error, delay=retry.delay)
            return self._later(message, run.run_id, due)
        except ContinueLater:
            self.store.release_to_continue(run.run_id, token, now(), session.spent())
            self.queue.send(run.run_id, trace_header=header_of(run.trace))
            report.finish("continued", now())
            return Disposition.ACK
        except Suspend as wait:
            return self._suspend(message, run, token, wait, session)
        except TimeLimitReached as limit:
            error = ErrorInfo("MaxDurationExceeded", limit.message)
            self._wake_parent(
                run,
                self.store.time_out_run(
                    run.run_id, token, error, now(), wake_parent=ParentLink.of(run)
                ),
            )
            report.finish("timed out", now(), error, RunStatus.TIMED_OUT)
            return Disposition.ACK
        except StepFailed as exc:  # a step failed for good and the task did not catch it
            error = ErrorInfo(
                exc.error_type, f"step {exc.step_id!r} failed: {exc.message}", exc.traceback
            )
            self._fail(run, token, error, None, now(), report, failed_step=exc.step_id)
            return Disposition.ACK
        except NonDeterminismError as exc:
            self._fail(run, token, error_info(exc), None, now(), report)
            return Disposition.ACK
        except Canceled:
            report.finish("canceled", now(), None, RunStatus.CANCELED)
            return Disposition.ACK
        except Exception as exc:  # the task body itself failed, outside any step
            return self._body_failed(message, run, token, task, exc, attempt_start, session)
        finally:
            if watchdog is not None:
                watchdog.cancel()
        try:
            output = serde.dumps(result, f"the output of run {run.run_id}")
            ended = self.store.complete_run(
                run.run_id, token, output, now(), wake_parent=ParentLink.of(run)
            )
        except (serde.NotSerializable, PayloadTooLarge) as exc:  # (no bucket: nothing written)
            error = ErrorInfo(type(exc).__name__, str(exc))
            self._fail(run, token, error, None, now(), report)
            return Disposition.ACK
        self._wake_parent(run, ended)
        report.finish("completed", now(), None, RunStatus.COMPLETED)
        return Disposition.ACK

    def _heartbeat(self, session: Session, run_id: str) -> contextlib.AbstractContextManager[Any]:
        """Keeps the lease while the body runs (rung._engine.heartbeat)."""
        if not self.config.heartbeat:
            return contextlib.nullcontext()
        interval = self.config.heartbeat_interval.total_seconds()
        return Heartbeat(session.keep_alive, interval, f"lease-{run_id}")

    def _fail(
        self,
        run: Run,
        token: int,
        error: ErrorInfo,
        failure: Failure | None,
        now: datetime,
        report: Telemetry | None = None,
        failed_step: str | None = None,
    ) -> None:
        woke = self.store.fail_run(
            run.run_id,
            token,
            error,
            failure,
            now,
            failed_step=failed_step,
            wake_parent=ParentLink.of(run),
        )
        self._wake_parent(run, woke)
        if report is not None:
            report.finish("failed", now, error, RunStatus.FAILED)

    def _wake_parent(self, run: Run, woke: bool) -> None:
        """After a terminal transition that woke the waiting parent: send its message.
        (A crash before the send leaves the parent WAITING and due: reconciled.)"""
        if woke and run.parent_run_id is not None:
            parent = f"Root={run.parent_trace_id}" if run.parent_trace_id else None
            self.queue.send(run.parent_run_id, trace_header=parent)

    def _body_failed(
        self,
        message: QueueMessage,
        run: Run,
        token: int,
        task: Task[Any],
        exc: Exception,
        attempt_start: datetime,
        session: Session,
    ) -> Disposition:
        now = self.clock.now()
        error = error_info(exc)
        delay = task.retry.next_delay(_run_level_failures(run) + 1, exc)
        failure = Failure(
            attempt=run.attempt,
            kind="body",
            step_id=None,
            error=error,
            started_at=attempt_start,
            failed_at=now,
            step_started_at=None,
            delay=delay,
        )
        if delay is None:
            self._fail(run, token, error, failure, now, session.telemetry)
            return Disposition.ACK
        self.store.schedule_retry(run.run_id, token, failure, now + delay, now, session.spent())
        session.telemetry.finish("retrying", now, error, delay=delay)
        return self._later(message, run.run_id, now + delay)

    def _suspend(
        self, message: QueueMessage, run: Run, token: int, wait: Suspend, session: Session
    ) -> Disposition:
        """The run waits: release it; keep (or send) a message due at its wake time."""
        now = self.clock.now()
        checked, unchecked = wait.tokens[:SUSPEND_TOKEN_CHECKS], wait.tokens[SUSPEND_TOKEN_CHECKS:]
        suspended = self.store.suspend_run(
            run.run_id,
            token,
            wake_at=wait.wake_at,
            waiting_for=wait.reason,
            wake_kind=wait.wake_kind,
            now=now,
            spent=session.spent(),
            tokens=checked,
            children=wait.children,
            batch=wait.batch,
        )
        if suspended and unchecked and self._any_resolved(unchecked):
            # Branches of a ctx.map may wait for more tokens than one transaction can
            # check; those are read after the suspension instead. An answer that came
            # before it is seen here; one after it finds the run WAITING and wakes it.
            if self.store.wake_run(run.run_id, now):
                self.queue.send(run.run_id, trace_header=header_of(run.trace))
            session.telemetry.finish("waiting", now, reason=wait.reason)
            return Disposition.ACK
        if not suspended:
            # A token or child it waits for ended between the check and the suspension:
            # carry on at once, in a fresh invocation (as when time runs short).
            self.store.release_to_continue(run.run_id, token, now, session.spent())
            self.queue.send(run.run_id, trace_header=header_of(run.trace))
            session.telemetry.finish("continued", now)
            return Disposition.ACK
        session.telemetry.finish("waiting", now, reason=wait.reason)
        if wait.wake_at is None:
            return Disposition.ACK  # no timer: whoever wakes it sends the message
        return self._later(message, run.run_id, wait.wake_at)

    def _any_resolved(self, token_ids: tuple[str, ...]) -> bool:
        return any(self.store.get_token(t, values=False).status != "WAITING" for t in token_ids)

    def _later(self, message: QueueMessage, run_id: str, due: datetime) -> Disposition:
        """Have the run's message come back at ``due`` (the delay counted now, at the last
        moment), holding no in-flight message past a short backoff: invisible up to
        ``queue.short_hold``, a fresh delayed message up to 15 minutes, beyond that a timer
        (or, where none can be armed, the hops of old). docs/waits.md has the why."""
        now = self.clock.now()
        delay = max(due - now, timedelta(0))
        if delay > self.queue.max_delay:
            if self.store.timers_enabled() and self.store.arm_timer(run_id, due):
                return Disposition.ACK
        elif delay > self.queue.short_hold:
            self.queue.send(run_id, delay, message.trace_header)
            return Disposition.ACK
        kept = self.queue.defer(message, run_id, delay, to_ms(now))
        return Disposition.KEEP if kept else Disposition.ACK


def _run_level_failures(run: Run) -> int:
    """Failed attempts that count against the task's policy (since the last redrive)."""
    floor = run.budget_from
    return sum(1 for f in run.failures if f.kind in ("body", "crash") and f.attempt >= floor)


def _payload_error(task: Task[Any], exc: Exception) -> ErrorInfo:
    if isinstance(exc, RungError) and not isinstance(exc, InvalidPayload):  # ValueNotFound
        return ErrorInfo(type(exc).__name__, f"the run's payload cannot be read: {exc}")
    fit = f"the stored payload no longer fits task {task.id!r}'s payload model: {exc}"
    return ErrorInfo("InvalidPayload", fit)
