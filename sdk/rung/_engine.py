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
import enum
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from rung import _serde
from rung._clock import Clock, to_ms
from rung._flow import Delayed, Gate, Parked, describe_delay, is_late
from rung._queue import BadMessage, QueueMessage, SqsQueue, decode
from rung._signals import (
    Canceled,
    ContinueLater,
    RetryStep,
    SlotLost,
    Suspend,
    TimeLimitReached,
)
from rung._store import (
    NEVER_MS,
    SUSPEND_TOKEN_CHECKS,
    Claimed,
    DynamoStore,
    NewRun,
    NotClaimed,
    ParentLink,
)
from rung.app import App, Task
from rung.context import Context, _current_context, error_info
from rung.errors import (
    Contended,
    ErrorInfo,
    InvalidPayload,
    LeaseLost,
    NonDeterminismError,
    PayloadTooLarge,
    RunAlreadyFinished,
    RungError,
    StepFailed,
    UnknownTask,
)
from rung.flow import Queue
from rung.models import Failure, Run, RunStatus, StepRecord, TokenState


class SlotExpired(RungError):
    """A run's queue slot expired before any step of the invocation: an attempt fails
    (queueing again would only repeat it)."""


log = logging.getLogger("rung.worker")

#: A rate-limited run this close to its reserved start sleeps until it; further away,
#: its message is delayed (SQS delays come in whole seconds).
RATE_SLEEP = timedelta(seconds=1)
#: A run whose queue admission gave up on contention comes back after 1-2x this.
CONTENTION_RETRY = timedelta(seconds=2)
#: Seconds before an invocation's end at which a still-running step is noted as overrun.
WATCHDOG_MARGIN = 1.0


class Disposition(enum.StrEnum):
    """What to do with the message after ``handle``."""

    ACK = "ack"  # delete it: the run is finished, or moved on by another message
    KEEP = "keep"  # leave it: its visibility was set to when it must come back
    POISON = "poison"  # leave it to be redelivered and, after maxReceiveCount, the DLQ


@dataclass(frozen=True, kw_only=True)
class WorkerConfig:
    """Worker timing.

    Attributes:
        lease_duration: how long a claim holds a run without renewal. A crashed
            worker's run is taken over after this; on Lambda set it above the
            function timeout so a live invocation never loses its lease.
        min_time_left: before each step, if the invocation has less than this left,
            the run continues in a fresh invocation (not counted as an attempt).
        cancel_check_interval: before a step, the worker reads the run's status if it
            has not for this long, so a canceled run stops at its next step boundary
            (one eventually consistent read per interval; see docs/lifecycle.md).
    """

    lease_duration: timedelta = timedelta(minutes=16)
    min_time_left: timedelta = timedelta(seconds=10)
    cancel_check_interval: timedelta = timedelta(seconds=5)


class Worker:
    def __init__(
        self,
        app: App,
        store: DynamoStore,
        queue: SqsQueue,
        clock: Clock,
        config: WorkerConfig | None = None,
    ) -> None:
        self.app = app
        self.store = store
        self.queue = queue
        self.clock = clock
        self.config = config or WorkerConfig()
        self.gate = Gate(store, queue, self.config.lease_duration)

    def handle(
        self, message: QueueMessage, time_left: Callable[[], float] | None = None
    ) -> Disposition:
        """Process one message. ``time_left`` returns the invocation's seconds left."""
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
            self.queue.send(run_id)
            return Disposition.ACK
        now = self.clock.now()
        lease = self.config.lease_duration
        claim = self.store.claim_run(run_id, now, lease)
        if isinstance(claim, NotClaimed) and claim.reason == "crashed":
            assert claim.run is not None
            claim = self._take_over(claim.run, now)
        if isinstance(claim, NotClaimed):
            return self._not_claimed(message, run_id, claim, now)
        return self._attempt(message, claim, time_left)

    def settle_worn(self, messages: Sequence[QueueMessage]) -> set[str]:
        """Renew the worn messages among ``messages``, before any of them is handled.

        A message received ``queue.renew_at`` times or more is exchanged for a fresh
        copy (receive count 0) due when its run is (now, when the run's lease expires,
        or at its timer), and deleted at once; one of a run without a future (finished,
        or waiting with no timer: whoever wakes it sends a message) is only deleted, as
        is a second worn copy of one run. Deleted now, not at the end of the batch: an
        invocation that dies later on does not bring them back. Returns the ids of the
        messages settled so: they are done (ACK) without being handled.

        Not renewed, so that SQS moves them to the DLQ: bodies that are not rung
        messages and runs that do not exist (poison; ``handle`` refuses them). One
        consistent batch read of the worn messages' runs; nothing at all when none is
        worn. The Lambda handler calls this for its whole batch first, so that a crash
        later in the batch cannot push a worn batch-mate further.
        """
        worn: dict[str, QueueMessage] = {}
        copies: list[QueueMessage] = []
        for message in messages:
            if not self.queue.worn(message):
                continue
            try:
                run_id = decode(message.body)
            except BadMessage:
                continue  # poison: handle refuses it and SQS dead-letters it
            if run_id in worn:
                copies.append(message)  # the fresh copy of the first serves for both
            else:
                worn[run_id] = message
        if not worn:
            return set()
        runs = self.store.get_runs(list(worn))
        now = self.clock.now()
        renewals: list[tuple[QueueMessage, str, timedelta]] = []
        discards = [m for m in copies if decode(m.body) in runs]
        for run_id, message in worn.items():
            run = runs.get(run_id)
            if run is None:
                continue  # no such run: poison
            due = _due(run, now)
            if due is None:
                discards.append(message)
            else:
                renewals.append((message, run_id, max(due - now, timedelta(0))))
        renewed = self.queue.renew(renewals)
        self.queue.discard(discards)
        for message in renewed:
            log.info(
                "message %s was received %d times; a fresh copy replaces it",
                message.message_id,
                message.receive_count,
            )
        return {m.message_id for m in [*renewed, *discards]}

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
        assert claim.retry_at is not None
        if claim.reason == "not_due" and to_ms(claim.retry_at) >= NEVER_MS:
            return Disposition.ACK  # it waits with no timer: its waker sends a message
        # "not_due": a long delay chained through 15-minute hops; "busy": another worker
        # holds the lease (a duplicate delivery): look again when that lease would expire.
        wait = max(claim.retry_at - now, timedelta(0))
        if claim.reason == "busy":
            wait += timedelta(seconds=1)
        return self._later(message, run_id, wait)

    def _take_over(self, run: Run, now: datetime) -> Claimed | NotClaimed:
        """The previous holder died mid-attempt: that attempt failed; start the next."""
        if run.overran_step is not None:
            # The holder's watchdog saw this step still running as its invocation's time
            # ran out (Lambda then stops the function): the step outlived the invocation.
            error = ErrorInfo(
                type="StepTimedOut",
                message=(
                    f"step {run.overran_step!r} of run {run.run_id} (attempt {run.attempt}) was "
                    "still running when its invocation reached the function's time limit. "
                    "Runs continue in a fresh invocation between steps, but a single step must "
                    "finish within one invocation: split the step, or raise the "
                    "FunctionTimeout parameter (at most 900 s on Lambda)"
                ),
            )
        else:
            error = ErrorInfo(
                type="WorkerLost",
                message=(
                    f"the worker running attempt {run.attempt} of run {run.run_id} stopped "
                    "without finishing it (crash, kill, timeout or out of memory); its lease "
                    "expired"
                ),
            )
        failure = Failure(
            attempt=run.attempt,
            kind="crash",
            step_id=None,
            error=error,
            started_at=run.attempt_started_at,
            failed_at=now,
            step_started_at=None,
            delay=None,
        )
        try:
            max_attempts = self.app.get_task(run.task_id).retry.max_attempts
        except UnknownTask:
            max_attempts = 1
        if _run_level_failures(run) + 1 >= max_attempts:
            log.error("run %s: %s; no attempts left", run.run_id, error.message)
            # Fenced on the dead holder's token: one of several finders wins.
            with contextlib.suppress(LeaseLost):
                self._fail(run, run.lease_token, error, failure, now)
            with contextlib.suppress(UnknownTask):
                spec = self.app.get_task(run.task_id).queue
                if spec is not None:  # the dead holder's slot: free it for the next run
                    self.gate.release(spec, run.run_id, run.lease_token, now)
            return NotClaimed("terminal", run, None)
        claim = self.store.reclaim_crashed(run, now, self.config.lease_duration, failure)
        if isinstance(claim, Claimed):
            log.warning(
                "run %s: %s; starting attempt %d", run.run_id, error.message, claim.run.attempt
            )
        return claim

    # -- one attempt -----------------------------------------------------------------

    def _attempt(
        self, message: QueueMessage, claim: Claimed, time_left: Callable[[], float] | None
    ) -> Disposition:
        run, token = claim.run, claim.token
        try:
            return self._run_attempt(message, run, token, time_left)
        except LeaseLost as exc:
            # Another worker owns the run now: stop, and leave the message alone (its
            # redelivery finds the run finished, or held, and is handled then).
            log.warning("%s", exc)
            return Disposition.KEEP

    def _run_attempt(
        self, message: QueueMessage, run: Run, token: int, time_left: Callable[[], float] | None
    ) -> Disposition:
        now = self.clock.now
        try:
            task = self.app.get_task(run.task_id)
        except UnknownTask as exc:
            error = ErrorInfo(
                "UnknownTask",
                f"{exc}; was the task removed or renamed in a deploy while this run was in flight?",
            )
            self._fail(run, token, error, None, now())
            return Disposition.ACK
        # A run's first claim cannot find checkpoints: nobody held it before.
        records = self.store.load_steps(run.run_id) if token > 1 else {}
        session = _Session(self, run, token, time_left, task.max_duration)
        watchdog = session.start_watchdog()
        ctx = Context(
            run_id=run.run_id,
            task_id=run.task_id,
            attempt=run.attempt,
            default_retry=task.retry,
            records=records,
            session=session,
        )
        attempt_start = run.attempt_started_at or now()
        try:
            payload = task.decode_payload(_serde.dumps(run.payload, "payload"))
        except Exception as exc:
            self._fail(run, token, _payload_error(task, exc), None, now())
            return Disposition.ACK
        spec = task.queue
        if spec is not None:
            try:
                key, priority = task.flow_of(payload)
            except InvalidPayload as exc:
                self._fail(run, token, ErrorInfo("InvalidPayload", str(exc)), None, now())
                return Disposition.ACK
            unused: datetime | None = None  # a reservation come to too late
            while True:
                try:
                    verdict = self.gate.admit(
                        spec, run, token, key, priority, now, session.spent(), unused
                    )
                except Contended as exc:
                    # Not the run's fault: no attempt is spent; it comes back shortly.
                    log.warning("%s", exc)
                    if watchdog is not None:
                        watchdog.cancel()
                    again = CONTENTION_RETRY * random.uniform(1, 2)  # noqa: S311
                    self.store.defer_run(
                        run.run_id,
                        token,
                        now() + again,
                        f"contention on queue {spec.name!r}",
                        now(),
                        session.spent(),
                    )
                    return self._later(message, run.run_id, again)
                if isinstance(verdict, Parked):
                    if watchdog is not None:
                        watchdog.cancel()
                    return Disposition.ACK  # a hand-off (or the safety net) sends it again
                if not isinstance(verdict, Delayed):
                    break
                wait = verdict.until - now()
                if wait > RATE_SLEEP:
                    # Come back just before the reserved start (SQS delays are whole
                    # seconds), keeping the slot; the rest is slept below then.
                    if watchdog is not None:
                        watchdog.cancel()
                    self.store.defer_run(
                        run.run_id,
                        token,
                        verdict.until - RATE_SLEEP,
                        describe_delay(spec, verdict.until),
                        now(),
                        session.spent(),
                    )
                    return self._later(message, run.run_id, wait - RATE_SLEEP)
                # Less than a second to the reserved start: wait for it here, so the
                # run starts at its reservation, not at the next whole second.
                time.sleep(max(wait.total_seconds(), 0.0))
                if not is_late(spec, verdict.until, now()):
                    break
                # Woken too late for the reservation (a busy machine): admit again,
                # which takes a fresh one and gives this one back to the window.
                unused = verdict.until
            session.slot = spec
        disposition = self._execute(
            message, run, token, task, ctx, session, payload, attempt_start, watchdog
        )
        # Released only when the attempt ended normally: a crash keeps the slot until
        # its lease expires (the run's next attempt takes it back), and a worker that
        # lost its lease leaves the slot to the run's new owner.
        if spec is not None:
            self.gate.release(spec, run.run_id, token, now())
        return disposition

    def _execute(
        self,
        message: QueueMessage,
        run: Run,
        token: int,
        task: Task[Any],
        ctx: Context,
        session: _Session,
        payload: Any,
        attempt_start: datetime,
        watchdog: threading.Timer | None,
    ) -> Disposition:
        """Run the task body once and record how it ended."""
        now = self.clock.now
        ctx_token = _current_context.set(ctx)
        try:
            result = task.fn(ctx, payload)
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
            self.store.schedule_retry(
                run.run_id, token, failure, now() + retry.delay, now(), session.spent()
            )
            log.info(
                "run %s: step %s failed (%s); retry in %s",
                run.run_id,
                retry.step_id,
                retry.error,
                retry.delay,
            )
            return self._later(message, run.run_id, retry.delay)
        except ContinueLater:
            self.store.release_to_continue(run.run_id, token, now(), session.spent())
            self.queue.send(run.run_id)
            log.info("run %s: continuing in a fresh invocation", run.run_id)
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
            log.warning("run %s: %s", run.run_id, limit.message)
            return Disposition.ACK
        except StepFailed as exc:  # a step failed for good and the task did not catch it
            error = ErrorInfo(
                exc.error_type, f"step {exc.step_id!r} failed: {exc.message}", exc.traceback
            )
            self._fail(run, token, error, None, now(), failed_step=exc.step_id)
            return Disposition.ACK
        except NonDeterminismError as exc:
            self._fail(run, token, error_info(exc), None, now())
            return Disposition.ACK
        except Canceled:
            log.info("run %s was canceled; its attempt stops before its next step", run.run_id)
            return Disposition.ACK
        except Exception as exc:  # the task body itself failed, outside any step
            return self._body_failed(message, run, token, task, exc, attempt_start, session)
        finally:
            _current_context.reset(ctx_token)
            if watchdog is not None:
                watchdog.cancel()
        try:
            output = _serde.dumps(result, f"the output of run {run.run_id}")
        except (_serde.NotSerializable, PayloadTooLarge) as exc:
            self._fail(run, token, ErrorInfo(type(exc).__name__, str(exc)), None, now())
            return Disposition.ACK
        self._wake_parent(
            run,
            self.store.complete_run(
                run.run_id, token, output, now(), wake_parent=ParentLink.of(run)
            ),
        )
        return Disposition.ACK

    def _fail(
        self,
        run: Run,
        token: int,
        error: ErrorInfo,
        failure: Failure | None,
        now: datetime,
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

    def _wake_parent(self, run: Run, woke: bool) -> None:
        """After a terminal transition that woke the waiting parent: send its message.
        (A crash before the send leaves the parent WAITING and due: reconciled.)"""
        if woke and run.parent_run_id is not None:
            self.queue.send(run.parent_run_id)

    def _body_failed(
        self,
        message: QueueMessage,
        run: Run,
        token: int,
        task: Task[Any],
        exc: Exception,
        attempt_start: datetime,
        session: _Session,
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
            self._fail(run, token, error, failure, now)
            return Disposition.ACK
        self.store.schedule_retry(run.run_id, token, failure, now + delay, now, session.spent())
        return self._later(message, run.run_id, delay)

    def _suspend(
        self, message: QueueMessage, run: Run, token: int, wait: Suspend, session: _Session
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
                self.queue.send(run.run_id)
            return Disposition.ACK
        if not suspended:
            # A token or child it waits for ended between the check and the suspension:
            # carry on at once, in a fresh invocation (as when time runs short).
            self.store.release_to_continue(run.run_id, token, now, session.spent())
            self.queue.send(run.run_id)
            return Disposition.ACK
        log.info("run %s: waiting for %s", run.run_id, wait.reason)
        if wait.wake_at is None:
            return Disposition.ACK  # no timer: whoever wakes it sends the message
        return self._later(message, run.run_id, max(wait.wake_at - now, timedelta(0)))

    def _any_resolved(self, token_ids: tuple[str, ...]) -> bool:
        return any(self.store.get_token(token_id).status != "WAITING" for token_id in token_ids)

    def _later(self, message: QueueMessage, run_id: str, delay: timedelta) -> Disposition:
        kept = self.queue.defer(message, run_id, delay, to_ms(self.clock.now()))
        return Disposition.KEEP if kept else Disposition.ACK


class _Session:
    """The engine side of a Context during one attempt (see context.AttemptSession)."""

    def __init__(
        self,
        worker: Worker,
        run: Run,
        token: int,
        time_left: Callable[[], float] | None,
        max_duration: timedelta | None,
    ) -> None:
        self._worker = worker
        self._run = run
        self._token = token
        self._time_left = time_left
        self._lease_until = run.lease_until
        self._executed = 0
        self._max_duration = max_duration
        self._segment_start = worker.clock.now()
        # Branches of ctx.map / ctx.parallel run steps on several threads at once: the
        # steps running now, by thread, and a lock for the lease and time bookkeeping.
        self._running: dict[int, str] = {}
        self._lock = threading.Lock()
        self._status_read_at = self._segment_start  # the claim has just read it
        self.slot: Queue | None = None  # the queue whose slot this attempt holds

    def now(self) -> datetime:
        return self._worker.clock.now()

    def start_watchdog(self) -> threading.Timer | None:
        """Arm a timer that fires just before the invocation's time runs out; if a step
        is still running then, it notes so on the run (one write, only in that case),
        so that the takeover can say which step outlived its invocation."""
        if self._time_left is None:
            return None
        timer = threading.Timer(max(self._time_left() - WATCHDOG_MARGIN, 0.0), self._overrun)
        timer.daemon = True
        timer.start()
        return timer

    def _overrun(self) -> None:
        with self._lock:
            running = list(self._running.values())
        if not running:
            return
        step_id = running[0]  # the longest-running of the steps still running
        try:
            self._worker.store.mark_overrun(self._run.run_id, self._token, step_id)
            log.error(
                "run %s: step %s is still running as the invocation's time runs out",
                self._run.run_id,
                step_id,
            )
        except Exception:  # best effort: the takeover then reports a plain crash
            log.exception("run %s: could not record the overrun", self._run.run_id)

    def step_running(self, step_id: str | None) -> None:
        thread = threading.get_ident()
        with self._lock:
            if step_id is None:
                self._running.pop(thread, None)
            else:
                self._running[thread] = step_id

    def spent(self) -> timedelta:
        """Compute time used by this invocation on the run so far."""
        return max(self.now() - self._segment_start, timedelta(0))

    def before_step(self) -> None:
        with self._lock:  # branches of ctx.map call this from several threads
            self._before_step()

    def _before_step(self) -> None:
        if self._max_duration is not None:
            used = self._run.compute_time + self.spent()
            if used >= self._max_duration:
                raise TimeLimitReached(
                    f"run {self._run.run_id} used {_seconds(used)} of compute time, reaching "
                    f"its task's max_duration of {_seconds(self._max_duration)} (waits do not "
                    "count); raise max_duration on the task if the work needs longer"
                )
        config = self._worker.config
        if (
            self._time_left is not None
            and self._executed > 0
            and self._time_left() < config.min_time_left.total_seconds()
        ):
            raise ContinueLater()
        self._executed += 1
        now = self.now()
        if now - self._status_read_at >= config.cancel_check_interval:
            self._check_canceled(now)
        if self._lease_until is not None and self._lease_until - now < config.lease_duration / 2:
            until = now + config.lease_duration
            self._worker.store.renew_lease(self._run.run_id, self._token, until)
            if self.slot is not None and not self._worker.gate.renew(
                self.slot, self._run.run_id, until, now, self._token
            ):
                if self._executed <= 1:
                    # Nothing was checkpointed since admission: the code before this
                    # step outlives a lease on every try, so queueing again would loop.
                    raise SlotExpired(
                        f"run {self._run.run_id}: its slot in queue {self.slot.name!r} "
                        "expired before its first step in this invocation (code outside "
                        "steps ran longer than the lease); move that work into steps"
                    )
                log.warning(
                    "run %s: its slot in queue %r expired (a step outlived it) and counts "
                    "as free; it stops at this step boundary and queues for a slot again",
                    self._run.run_id,
                    self.slot.name,
                )
                raise SlotLost()
            self._lease_until = until

    def _check_canceled(self, now: datetime) -> None:
        """Stop at this step boundary if the run was canceled (or taken over).

        Step checkpoints are not fenced, so without this a canceled run would go on
        executing steps until its next fenced write. One eventually consistent read
        per ``cancel_check_interval`` at most."""
        status, token = self._worker.store.run_status(self._run.run_id)
        self._status_read_at = now
        if status == RunStatus.CANCELED:
            raise Canceled()
        if status != RunStatus.RUNNING or token != self._token:
            raise LeaseLost(
                f"run {self._run.run_id} is {status} (lease token {token}); this worker's "
                f"lease (token {self._token}) is no longer valid, so it stops"
            )

    def failed_attempts_of(self, step_id: str) -> list[int]:
        floor = self._run.budget_from  # a redrive resets the retry budget
        return [
            f.attempt
            for f in self._run.failures
            if f.kind == "step" and f.step_id == step_id and f.attempt >= floor
        ]

    def task(self, task: str | Task[Any]) -> Task[Any]:
        return self._worker.app.get_task(task)

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
        named = json.loads(record.result_json or "{}")
        child_id = str(named["run_id"])
        now = self.now()
        child = NewRun(
            run_id=child_id,
            task_id=task_id,
            payload_json=payload_json,
            created_at=now,
            available_at=now + delay,
            idempotency_key=None,
            tags=tags,
            parent_run_id=self._run.run_id,
            parent_waits=waits,
            detached=detached,
            batch=named.get("batch"),
        )
        stored, created = self._worker.store.start_child(
            self._run.run_id, self._token, record, child
        )
        if created:
            # A crash before this send leaves the child QUEUED: the reconciler sends it.
            self._worker.queue.send(child_id, delay)
        return stored, created

    def get_runs(self, run_ids: list[str]) -> dict[str, Run]:
        return self._worker.store.get_runs(run_ids)

    def forget_batch(self, batch: str) -> None:
        self._worker.store.forget_batch(self._run.run_id, batch)

    def cancel_child(self, run_id: str, reason: str) -> None:
        from rung.client import Client  # (the client imports this module)

        worker = self._worker
        client = Client._from_parts(worker.app, worker.store, worker.queue, worker.clock)
        with contextlib.suppress(RunAlreadyFinished):  # it ended by itself meanwhile
            client.cancel(run_id, reason=reason)

    def record_step(self, record: StepRecord) -> StepRecord:
        return self._worker.store.record_step(self._run.run_id, record)

    def mark_started(self, record: StepRecord, replace_attempt: int | None) -> StepRecord:
        return self._worker.store.mark_step_started(self._run.run_id, record, replace_attempt)

    def create_token(self, state: TokenState) -> None:
        self._worker.store.create_token(state)

    def get_token(self, token_id: str) -> TokenState:
        return self._worker.store.get_token(token_id)

    def time_out_token(self, token_id: str) -> TokenState:
        return self._worker.store.time_out_token(token_id, self.now())


def _due(run: Run, now: datetime) -> datetime | None:
    """When a message for ``run`` should next arrive (as ``handle`` would defer it);
    None if it needs none."""
    if run.status.is_terminal:
        return None
    if run.status == RunStatus.RUNNING:
        # Its holder moves it on; should the holder have died, this message takes over
        # once the lease has expired (a second later, as for a "busy" claim).
        return (run.lease_until or now) + timedelta(seconds=1)
    if run.available_at is None:
        return now
    if to_ms(run.available_at) >= NEVER_MS:
        return None  # it waits with no timer: its waker sends a message
    return run.available_at


def _seconds(delta: timedelta) -> str:
    return f"{delta.total_seconds():g} s"


def _run_level_failures(run: Run) -> int:
    """Failed attempts that count against the task's policy: body errors and crashes
    (since the last redrive, which resets the budget)."""
    floor = run.budget_from
    return sum(1 for f in run.failures if f.kind in ("body", "crash") and f.attempt >= floor)


def _payload_error(task: Task[Any], exc: Exception) -> ErrorInfo:
    return ErrorInfo(
        "InvalidPayload",
        f"the stored payload no longer fits task {task.id!r}'s payload model: {exc}",
    )
