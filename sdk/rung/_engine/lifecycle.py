"""A run's lifecycle from outside its attempts: cancel (with its children), replay,
redrive. ``rung.Client`` calls it for users, and the worker for a
``trigger_and_wait`` timeout that cancels a child; neither imports the other.
See docs/lifecycle.md.
"""

from __future__ import annotations

import json
from typing import Any

from rung._aws.dynamodb import DynamoStore, NewRun, ParentLink
from rung._aws.events import EventBus
from rung._aws.sqs import SqsQueue
from rung._engine.admission import shard_name
from rung._engine.queues import QueueAdmin
from rung._engine.telemetry import run_event
from rung._util.clock import Clock, iso
from rung._util.ids import new_run_id
from rung._util.traces import TraceContext, header_of
from rung.errors import ErrorInfo, RunAlreadyFinished, RunNotFailed
from rung.models import Failure, Redrive, Run, RunHandle, RunStatus, StepRecord


class Lifecycle:
    """Cancel, replay and redrive runs of one table and queue."""

    def __init__(
        self,
        store: DynamoStore,
        queue: SqsQueue,
        clock: Clock,
        queues: QueueAdmin,
        events: EventBus | None = None,
        app: str = "",
    ) -> None:
        self._store = store
        self._queue = queue
        self._clock = clock
        self._queues = queues
        #: where "Run Canceled" and "Run Redriven" go (None: nowhere)
        self._events = events
        self._app = app

    def _event(self, detail_type: str, run: Run, status: str, error: ErrorInfo | None) -> None:
        if self._events is not None:
            took = (run.finished_at or self._clock.now()) - run.created_at
            self._events.send(detail_type, run_event(self._app, run, status, took, error))

    def children(self, run_id: str) -> list[tuple[dict[str, Any], Run]]:
        """The child runs ``run_id`` started, in order, with their checkpoints' links
        (``run_id``, ``task_id``, ``detached``)."""
        steps = self._store.load_steps(run_id, values=False)
        if not steps:
            self._store.live_run(run_id, self._clock.now())  # RunNotFound, RunExpired
        started = sorted(
            (r for r in steps.values() if r.kind == "child"), key=lambda r: (r.started_at, r.seq)
        )
        links = [json.loads(r.result_json or "{}") for r in started]
        runs = self._store.get_runs([link["run_id"] for link in links])
        return [(link, runs[link["run_id"]]) for link in links if link["run_id"] in runs]

    def cancel(self, run_id: str, message: str) -> Run:
        """Cancel the run, wake a parent waiting for it, free its queue place, then
        cancel its children (``Client.cancel`` says the rest)."""
        run = self._store.live_run(run_id, self._clock.now())
        if run.status.is_terminal:
            if run.status == RunStatus.CANCELED:
                self._cancel_children(run.run_id, message)  # a crashed cancel's rest
            raise RunAlreadyFinished(
                f"run {run.run_id} already finished ({run.status}"
                + (f" at {run.finished_at.isoformat()}" if run.finished_at else "")
                + "); there is nothing to cancel",
                run_id=run.run_id,
                status=run.status,
            )
        waiter = ParentLink.of(run)
        now = self._clock.now()
        woke = self._store.cancel_run(
            run.run_id, ErrorInfo("RunCanceled", message), now, wake_parent=waiter
        )
        if woke and waiter is not None:
            self._queue.send(waiter.run_id)
        self._leave_queue(run)
        self._cancel_children(run.run_id, message)
        canceled = self._store.get_run(run.run_id)
        self._event("Run Canceled", canceled, RunStatus.CANCELED, canceled.error)
        return canceled

    def expire(self, run: Run) -> ErrorInfo | None:
        """End ``run`` EXPIRED: it was not started within its TTL (``start_by``). Wake a
        parent that waits for it and free its place in a queue, as ``cancel`` does.
        Returns the error it ended with, or None if it was not expired: it began,
        ended, or a live worker took it meanwhile (nothing was written)."""
        assert run.start_by is not None
        now = self._clock.now()
        waited = f" while it waited for {run.waiting_for}" if run.waiting_for else ""
        error = ErrorInfo(
            "TtlExpired",
            f"run {run.run_id} of task {run.task_id!r} was not started by "
            f"{iso(run.start_by)} (its ttl, counted from when it was due){waited}; it "
            f"expired at {iso(now)} without running. Trigger it again if it is still "
            "wanted, with a longer ttl or none (and a new idempotency key: its key returns "
            "this run)",
        )
        waiter = ParentLink.of(run)
        woke = self._store.expire_run(run.run_id, error, now, wake_parent=waiter)
        if woke is None:
            return None
        if woke and waiter is not None:
            self._queue.send(waiter.run_id)
        self._leave_queue(run)
        return error

    def _leave_queue(self, run: Run) -> None:
        """A run just canceled (``run`` as read before) gives up its place in the queue
        it was parked in: its waiter item, or the slot handed to it that no attempt has
        taken up yet (a hand-off, ``t`` 0). Then the queue hands free slots on.

        Without this, ``parked`` counted it until a hand-off came to it, and a slot
        handed to it stayed taken until its lease ran out. A crash before this is
        harmless: a hand-off that finds a waiter's run canceled drops it."""
        name = run.parked_queue
        if name is None or run.status == RunStatus.RUNNING:
            return  # never parked; or its attempt holds the slot and frees it itself
        if run.parked_sk is not None:
            self._store.drop_parked(name, run.parked_sk, run.run_id)
        self._store.release_slot(name, run.run_id, 0, self._clock.now())
        self._queues.fill(shard_name(name), item=name)  # the run's shard of the queue

    def _cancel_children(self, run_id: str, reason: str) -> None:
        """Cancel the non-detached descendants of a canceled run (depth first).

        The parent was canceled first, so it can start no more children (a child is
        created under a check that its parent is RUNNING): this list is complete."""
        pending = [run_id]
        while pending:
            parent = pending.pop()
            for link, child in self.children(parent):
                if link.get("detached"):
                    continue
                if not child.status.is_terminal:
                    error = ErrorInfo("RunCanceled", f"parent run {parent} was canceled: {reason}")
                    try:
                        # The parent is canceled: no wake-up for it.
                        self._store.cancel_run(child.run_id, error, self._clock.now())
                    except RunAlreadyFinished as exc:
                        if exc.status != RunStatus.CANCELED:
                            continue  # it finished by itself meanwhile
                    else:
                        self._leave_queue(child)
                        self._event("Run Canceled", child, RunStatus.CANCELED, error)
                elif child.status != RunStatus.CANCELED:
                    continue
                pending.append(child.run_id)

    def replay(self, run: Run, payload_json: str) -> RunHandle:
        """A new run of ``run``'s task with this payload and its tags (``replay_of``)."""
        now = self._clock.now()
        new = NewRun(
            run_id=new_run_id(now),
            task_id=run.task_id,
            payload_json=payload_json,
            created_at=now,
            available_at=now,
            idempotency_key=None,
            tags=run.tags,
            replay_of=run.run_id,
            trace=TraceContext.new(now).stored(),  # a new run: a trace of its own
        )
        created, _ = self._store.create_run(new, None, now)
        # A crash before this send leaves the run QUEUED: the reconciler sends it.
        self._queue.send(created.run_id, trace_header=header_of(created.trace))
        return RunHandle(run_id=created.run_id, task_id=created.task_id, created=True)

    def redrive(self, run_id: str) -> Run:
        """Resume a FAILED run from its failed step (``Client.redrive`` says the rest)."""
        run = self._store.live_run(run_id, self._clock.now())
        if run.status != RunStatus.FAILED:
            raise RunNotFailed(
                f"run {run.run_id} is {run.status}, not FAILED; only a failed run can be "
                + (
                    "redriven (use replay to run it again as a new run)"
                    if run.status.is_terminal
                    else "redriven"
                ),
                run_id=run.run_id,
                status=run.status,
            )
        now = self._clock.now()
        failed = None
        also: list[StepRecord] = []
        if run.failed_step is not None:
            steps = self._store.load_steps(run.run_id, values=False)
            record = steps.get(run.failed_step)
            if record is not None and record.outcome == "failed":
                failed = record
                also = _failed_in_batch(steps, record)
        error = run.error or ErrorInfo("Error", "")
        failed_at = run.finished_at or now
        preserved = None
        if not any(f.attempt == run.attempt for f in run.failures):
            # Keep what failed the run in its history: the checkpoint goes away.
            preserved = Failure(
                attempt=run.attempt,
                kind="step" if failed is not None else "body",
                step_id=failed.step_id if failed is not None else None,
                error=failed.error or error if failed is not None else error,
                started_at=run.attempt_started_at,
                failed_at=failed.finished_at or failed_at if failed is not None else failed_at,
                step_started_at=failed.started_at if failed is not None else None,
                delay=None,
            )
        redriven = self._store.redrive_run(
            run,
            failed=failed,
            preserved=preserved,
            redrive=Redrive(
                attempt=run.attempt,
                failed_at=failed_at,
                error=error,
                at=now,
                step_id=failed.step_id if failed is not None else None,
                from_version=run.version,
            ),
            now=now,
            also=also,
        )
        # Announced before it can move (and end, and announce that) on its message.
        self._event("Run Redriven", redriven, redriven.status, run.error)
        # A crash before this send leaves the run QUEUED and due: the reconciler sends it.
        self._queue.send(run.run_id, trace_header=header_of(run.trace))
        return redriven


def _failed_in_batch(steps: dict[str, StepRecord], batch: StepRecord) -> list[StepRecord]:
    """For a failed ``ctx.map`` / ``ctx.parallel`` record: its failed branches' records
    and every failed checkpoint inside those branches (nested batches included), so
    that on redrive those branches run again, while the succeeded ones replay.

    Every failed checkpoint inside a failed branch goes, also one that the branch's
    code caught before it failed otherwise: which failure failed the branch is not
    recorded as data. (A failed ``ctx.checkpointed_group`` record failed on its own
    value, not on what is inside it: nothing inside it is removed.)"""
    if batch.kind not in ("map", "parallel"):
        return []
    prefix = batch.step_id + "["
    branches = [
        r.step_id
        for r in steps.values()
        if r.kind == "branch"
        and r.outcome == "failed"
        and r.step_id.startswith(prefix)
        and "/" not in r.step_id[len(prefix) :]
    ]
    inside = tuple(f"{b}/" for b in branches)
    return sorted(
        (
            r
            for r in steps.values()
            if r.outcome == "failed" and (r.step_id in branches or r.step_id.startswith(inside))
        ),
        key=lambda r: r.step_id,
    )
