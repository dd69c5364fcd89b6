"""The engine side of a task body during one attempt: ``Session`` is the
``AttemptSession`` (rung._durable.state) that the worker hands the durable operations.

Before each step it checks the time left (a fresh invocation continues the run), the
run's ``max_duration``, a cancel (every ``cancel_check_interval``), the lease (renewed
at half, unless the heartbeat keeps it: ``keep_alive``, rung._engine.heartbeat; a beat
that found it lost stops the attempt here) and the queue slot it holds (renewed at
half of ``slot_lease``); it writes checkpoints, tokens and children through the store,
and cancels a child through the lifecycle.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any, Protocol

from rung._aws.dynamodb import DynamoStore, NewRun
from rung._aws.sqs import SqsQueue
from rung._durable.metadata import MetadataState
from rung._durable.signals import Canceled, ContinueLater, SlotLost, TimeLimitReached, Unwind
from rung._engine.admission import Gate, Shard
from rung._engine.config import WorkerConfig
from rung._engine.lifecycle import Lifecycle
from rung._engine.telemetry import Telemetry
from rung._util.clock import Clock
from rung._util.traces import TraceContext
from rung.app import App, Task
from rung.errors import LeaseLost, RunAlreadyFinished, RungError
from rung.models import Run, RunStatus, StepRecord, TokenState

log = logging.getLogger("rung.worker")

#: Seconds before an invocation's end at which a still-running step is noted as overrun.
WATCHDOG_MARGIN = 1.0


class SlotExpired(RungError):
    """A run's queue slot expired before any step of the invocation: an attempt fails
    (queueing again would only repeat it)."""


class Engine(Protocol):
    """What a session uses of its worker (``rung._engine.worker.Worker``)."""

    app: App
    store: DynamoStore
    queue: SqsQueue
    clock: Clock
    config: WorkerConfig
    gate: Gate
    lifecycle: Lifecycle


class Session:
    """The engine side of a Context during one attempt (see context.AttemptSession)."""

    def __init__(
        self,
        worker: Engine,
        run: Run,
        token: int,
        time_left: Callable[[], float] | None,
        max_duration: timedelta | None,
        telemetry: Telemetry,
        metadata: MetadataState | None = None,
    ) -> None:
        self._worker = worker
        #: the attempt's ``ctx.metadata``, written with lease renewals and at the end
        self.metadata = metadata or MetadataState(run.initial_metadata, run.metadata_json)
        #: what the invocation reports: trace segments, lifecycle lines
        self.telemetry = telemetry
        self._run = run
        self._token = token
        self._time_left = time_left
        self._lease_until = run.lease_until
        self._executed = 0
        self._max_duration = max_duration
        self._segment_start = worker.clock.now()
        # Branches of ctx.map / ctx.parallel run steps on several threads at once: the
        # steps running now, by thread, and a lock for the lease and time bookkeeping.
        self._running: dict[object, str] = {}  # by thread, or asyncio task
        self._running_lock = threading.Lock()
        self._lock = threading.Lock()
        self._status_read_at = self._segment_start  # the claim has just read it
        self.slot: Shard | None = None  # the queue shard whose slot this attempt holds
        self._slot_until: datetime | None = None  # (about) when that slot's lease ends
        self._lost: LeaseLost | None = None  # what a heartbeat found: the lease is gone
        self._canceled = False  # a step boundary found the run canceled

    def hold_slot(self, shard: Shard) -> None:
        """The attempt was admitted to ``shard``: its slot is held for ``slot_lease``."""
        self.slot = shard
        self._slot_until = self.now() + self._worker.config.slot_lease

    def keep_alive(self) -> bool:
        """Renew the lease (one fenced write), for the heartbeat. False: the lease is
        gone (another worker took the run over, or it ended): the heartbeat stops and
        the attempt stops at its next step boundary."""
        with self._lock:
            if self._lost is not None:
                return False
            until = self.now() + self._worker.config.lease_duration
            try:
                self._renew(until)
            except LeaseLost as exc:
                self._lost = LeaseLost(
                    f"{exc} (found by the heartbeat; the attempt stops at its next step)"
                )
                log.warning("%s", self._lost)
                return False
            self._lease_until = until
            return True

    def _renew(self, until: datetime) -> None:
        """Renew the lease (``_lock`` held), writing changed metadata with it."""
        pending = self.metadata.pending(ending=False)
        if pending is not None:
            try:
                self._worker.store.renew_lease(self._run.run_id, self._token, until, pending)
            except LeaseLost:
                raise
            except Exception:  # metadata is best effort; the lease is not
                log.warning(
                    "run %s: metadata not written; renewing the lease alone",
                    self._run.run_id,
                    exc_info=True,
                )
            else:
                self.metadata.written(pending)
                return
        self._worker.store.renew_lease(self._run.run_id, self._token, until)

    @contextlib.contextmanager
    def metadata_flushed(self) -> Iterator[None]:
        """Around the body: as it ends, ``flush_metadata`` (not on a crash, a cancel or
        a lost lease, which leave the run to its new owner or its end)."""
        try:
            yield
        except (Canceled, LeaseLost):
            raise
        except (Exception, Unwind):
            self.flush_metadata()
            raise
        self.flush_metadata()

    def flush_metadata(self) -> None:
        """The attempt ends: write ``ctx.metadata`` if it changed since its last write
        (one fenced write), before the attempt's final write. A lost lease skips it:
        the run's new owner writes its own."""
        with self._lock:
            pending = self.metadata.pending(ending=True)
            if pending is None or self._lost is not None:
                return
            try:
                self._worker.store.write_metadata(self._run.run_id, self._token, pending)
            except LeaseLost:
                return  # the final write that follows finds the same and says so
            except Exception:  # best effort: the attempt's outcome must not change
                log.warning("run %s: metadata not written", self._run.run_id, exc_info=True)
                return
            self.metadata.written(pending)

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
        with self._running_lock:
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
        runner = _runner()
        # Its own lock: ``_lock`` is held across writes (the heartbeat's renewal), and an
        # async task's event loop calls this.
        with self._running_lock:
            if step_id is None:
                self._running.pop(runner, None)
            else:
                self._running[runner] = step_id

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
        if self._canceled:
            raise Canceled()
        self._executed += 1
        now = self.now()
        if now - self._status_read_at >= config.cancel_check_interval:
            self._check_canceled(now)
        if self._lost is not None:
            self._check_canceled(now)  # canceled: stop as canceled, else as lost
            raise self._lost
        if self._lease_until is not None and self._lease_until - now < config.lease_duration / 2:
            # Without a heartbeat (LocalEngine), or one that fell behind.
            until = now + config.lease_duration
            self._renew(until)
            self._lease_until = until
        slot_lease = config.slot_lease
        if (
            self.slot is not None
            and self._slot_until is not None
            and self._slot_until - now < slot_lease / 2
        ):
            until = now + slot_lease
            if not self._worker.gate.renew(self.slot, self._run.run_id, until, now, self._token):
                if self._executed <= 1:
                    # Nothing was checkpointed since admission: the code before this
                    # step outlives a slot's lease on every try, so queueing again would loop.
                    raise SlotExpired(
                        f"run {self._run.run_id}: its slot in queue {self.slot.queue.name!r} "
                        "expired before its first step in this invocation (code outside "
                        "steps ran longer than the slot's lease); move that work into steps"
                    )
                log.warning(
                    "run %s: its slot in queue %r expired (a step outlived it) and counts "
                    "as free; it stops at this step boundary and queues for a slot again",
                    self._run.run_id,
                    self.slot.queue.name,
                )
                raise SlotLost()
            self._slot_until = until

    def _check_canceled(self, now: datetime) -> None:
        """Stop at this step boundary if the run was canceled (or taken over).

        Step checkpoints are not fenced, so without this a canceled run would go on
        executing steps until its next fenced write. One eventually consistent read
        per ``cancel_check_interval`` at most."""
        status, token = self._worker.store.run_status(self._run.run_id)
        self._status_read_at = now
        # Found once, for good: every later step boundary stops too (an async task's
        # code may have swallowed the first).
        if status == RunStatus.CANCELED:
            self._canceled = True
            raise Canceled()
        if status != RunStatus.RUNNING or token != self._token:
            self._lost = LeaseLost(
                f"run {self._run.run_id} is {status} (lease token {token}); this worker's "
                f"lease (token {self._token}) is no longer valid, so it stops"
            )
            raise self._lost

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
        pinned: bool = False,
    ) -> tuple[StepRecord, bool]:
        named = json.loads(record.result_json or "{}")
        child_id = str(named["run_id"])
        now = self.now()
        # A trace of its own, linked both ways, recorded if its parent's is (the link
        # must lead somewhere); a parent stored before tracing: recorded.
        parent = TraceContext.parse(self._run.trace)
        child_trace = TraceContext.new(now, sampled=parent.sampled if parent else True)
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
            trace=child_trace.stored(),
            parent_trace_id=self._run.trace_id,
            version=self._run.version if pinned else None,
        )
        stored, created = self._worker.store.start_child(
            self._run.run_id, self._token, record, child
        )
        if created:
            # A crash before this send leaves the child QUEUED: the reconciler sends it.
            self._worker.queue.send(child_id, delay, child_trace.header())
            self.telemetry.child_started(record.step_id, now, child_id, task_id, child_trace)
        return stored, created

    def get_runs(self, run_ids: list[str]) -> dict[str, Run]:
        return self._worker.store.get_runs(run_ids)

    def value(self, value: Any) -> Any:
        return self._worker.store.resolved(value)

    def forget_batch(self, batch: str) -> None:
        self._worker.store.forget_batch(self._run.run_id, batch)

    def cancel_child(self, run_id: str, reason: str) -> None:
        with contextlib.suppress(RunAlreadyFinished):  # it ended by itself meanwhile
            self._worker.lifecycle.cancel(run_id, reason)

    def record_step(self, record: StepRecord) -> StepRecord:
        stored = self._worker.store.record_step(self._run.run_id, record)
        self.telemetry.checkpoint(record)  # what this attempt did (a race's loser too)
        return stored

    def mark_started(self, record: StepRecord, replace_attempt: int | None) -> StepRecord:
        return self._worker.store.mark_step_started(self._run.run_id, record, replace_attempt)

    def create_token(self, state: TokenState) -> None:
        self._worker.store.create_token(state)

    def callback_base(self) -> str | None:
        return self._worker.config.callback_url

    def get_token(self, token_id: str) -> TokenState:
        return self._worker.store.get_token(token_id)

    def time_out_token(self, token_id: str, deadline: datetime) -> TokenState:
        return self._worker.store.time_out_token(token_id, deadline, self.now())


def _seconds(delta: timedelta) -> str:
    return f"{delta.total_seconds():g} s"


def _runner() -> object:
    """What executes a step: its asyncio task (an async task's steps share a thread),
    else its thread."""
    try:
        task = asyncio.current_task()
    except RuntimeError:  # no event loop on this thread
        task = None
    return task if task is not None else threading.get_ident()
