"""A run's history, derived from the run item and its checkpoints (nothing is written twice).

Events are ordered by structure, not by timestamp: attempt by attempt, the steps
that attempt executed in program order, then how the attempt ended.
"""

from __future__ import annotations

import json

from rung.models import EventType, HistoryEvent, Run, RunStatus, StepRecord

#: Checkpoints shown as a step (started, then succeeded or failed): steps, and the
#: branches and batches of ctx.map / ctx.parallel, whose ids show the structure
#: ("/orders#1" the batch, "/orders#1[3]" a branch, "/orders#1[3]/charge#1" its step).
_STEP_LIKE = frozenset({"step", "branch", "map", "parallel"})


def build_history(run: Run, steps: list[StepRecord]) -> list[HistoryEvent]:
    events = [HistoryEvent(EventType.RUN_TRIGGERED, run.created_at)]
    failures = {f.attempt: f for f in run.failures}
    redrives = {r.attempt: r for r in run.redrives}
    for attempt in range(1, run.attempt + 1):
        failure = failures.get(attempt)
        started = failure.started_at if failure else run.attempt_started_at
        if started is None:
            continue  # this attempt has not started yet (queued or backing off)
        events.append(HistoryEvent(EventType.ATTEMPT_STARTED, started, attempt=attempt))
        for record in (s for s in steps if s.run_attempt == attempt):
            if record.kind not in _STEP_LIKE:
                events.extend(_wait_events(run, record, attempt))
                continue
            events.append(
                HistoryEvent(
                    EventType.STEP_STARTED, record.started_at, attempt=attempt, step=record.step_id
                )
            )
            if record.outcome == "succeeded" and record.finished_at is not None:
                events.append(
                    HistoryEvent(
                        EventType.STEP_SUCCEEDED,
                        record.finished_at,
                        attempt=attempt,
                        step=record.step_id,
                    )
                )
            elif record.outcome == "failed" and record.finished_at is not None:
                events.append(
                    HistoryEvent(
                        EventType.STEP_FAILED,
                        record.finished_at,
                        attempt=attempt,
                        step=record.step_id,
                        error=record.error,
                    )
                )
        if failure is not None:
            if failure.kind == "step":
                events.append(
                    HistoryEvent(
                        EventType.STEP_STARTED,
                        failure.step_started_at or failure.failed_at,
                        attempt=attempt,
                        step=failure.step_id,
                    )
                )
                events.append(
                    HistoryEvent(
                        EventType.STEP_FAILED,
                        failure.failed_at,
                        attempt=attempt,
                        step=failure.step_id,
                        error=failure.error,
                    )
                )
            elif failure.kind == "crash":
                events.append(
                    HistoryEvent(
                        EventType.WORKER_LOST,
                        failure.failed_at,
                        attempt=attempt,
                        error=failure.error,
                    )
                )
            else:
                events.append(
                    HistoryEvent(
                        EventType.ATTEMPT_FAILED,
                        failure.failed_at,
                        attempt=attempt,
                        error=failure.error,
                    )
                )
            if failure.delay is not None:
                events.append(
                    HistoryEvent(
                        EventType.RETRY_SCHEDULED,
                        failure.failed_at,
                        attempt=attempt,
                        delay=failure.delay,
                    )
                )
        redrive = redrives.get(attempt)
        if redrive is not None:  # the run had failed here, and was redriven after a fix
            events.append(
                HistoryEvent(
                    EventType.RUN_FAILED, redrive.failed_at, attempt=attempt, error=redrive.error
                )
            )
            events.append(
                HistoryEvent(
                    EventType.RUN_REDRIVEN, redrive.at, attempt=attempt, step=redrive.step_id
                )
            )
    if run.status == RunStatus.COMPLETED and run.finished_at is not None:
        events.append(HistoryEvent(EventType.RUN_COMPLETED, run.finished_at, attempt=run.attempt))
    elif run.status == RunStatus.FAILED and run.finished_at is not None:
        events.append(
            HistoryEvent(
                EventType.RUN_FAILED, run.finished_at, attempt=run.attempt, error=run.error
            )
        )
    elif run.status == RunStatus.TIMED_OUT and run.finished_at is not None:
        events.append(
            HistoryEvent(
                EventType.RUN_TIMED_OUT, run.finished_at, attempt=run.attempt, error=run.error
            )
        )
    elif run.status == RunStatus.CANCELED and run.finished_at is not None:
        events.append(
            HistoryEvent(
                EventType.RUN_CANCELED, run.finished_at, attempt=run.attempt, error=run.error
            )
        )
    return events


def _wait_events(run: Run, record: StepRecord, attempt: int) -> list[HistoryEvent]:
    """A wait's events: when it began (and for how long), and when it ended."""
    if record.kind == "child":  # a child run started, with this checkpoint
        child = json.loads(record.result_json or "{}")
        return [
            HistoryEvent(
                EventType.CHILD_TRIGGERED,
                record.started_at,
                attempt=attempt,
                step=record.step_id,
                child_run_id=child.get("run_id"),
            )
        ]
    if record.kind == "token":  # creating a token: a checkpoint like a step's
        return [
            HistoryEvent(
                EventType.TOKEN_CREATED, record.started_at, attempt=attempt, step=record.step_id
            )
        ]
    until = record.wake_at
    events = [
        HistoryEvent(
            EventType.WAIT_STARTED,
            record.started_at,
            attempt=attempt,
            step=record.step_id,
            delay=until - record.started_at if until is not None else None,
        )
    ]
    if record.kind == "wait":
        assert until is not None
        ended = run.status != RunStatus.WAITING or (
            run.available_at is not None and run.available_at > until
        )
        if ended:
            events.append(
                HistoryEvent(EventType.WAIT_ENDED, until, attempt=attempt, step=record.step_id)
            )
    elif record.finished_at is not None:  # an answered token, child or other resolved wait
        events.append(
            HistoryEvent(
                EventType.WAIT_ENDED,
                record.finished_at,
                attempt=attempt,
                step=record.step_id,
                error=record.error,
            )
        )
    return events
