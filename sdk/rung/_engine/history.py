"""A run's history, derived from the run item and its checkpoints (nothing is written twice).

Order. Attempt by attempt: the attempt's start, then its checkpoints' events and how
it failed (if it did), in time order; the run's end last. The order is total and
stable: events at the same instant follow the nesting of the checkpoints, a
depth-first walk in which a parent starts before its children and ends after them,
and siblings come in the order they started (then by position, then by id). Times
are stored to the millisecond, so ties are common (a fast ``ctx.map`` starts its
batch, a branch and the branch's first step in one); the walk is what orders them.

Shown times keep program order where the recorded ones would not: a checkpoint is
shown starting no earlier than its attempt (a batch or checkpointed group that began
in an earlier attempt is recorded by the one that ended it) and no earlier than the
checkpoints at earlier positions of its scope (a token's wait is recorded from the
token's creation); nothing ends before it starts (a ``wait_until`` a past time).
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime

from rung._durable.state import scope_of
from rung.models import EventType, Failure, HistoryEvent, Run, RunStatus, StepRecord

#: Checkpoints shown as a step (started, then succeeded or failed): steps, the
#: branches and batches of ctx.map / ctx.parallel, whose ids show the structure
#: ("/orders#1" the batch, "/orders#1[3]" a branch, "/orders#1[3]/charge#1" its step),
#: and checkpointed groups ("/enrich#1", its steps "/enrich#1/fetch#1").
_STEP_LIKE = frozenset({"step", "branch", "map", "parallel", "group"})


def build_history(run: Run, steps: list[StepRecord]) -> list[HistoryEvent]:
    """The run's events, in order (see the module docstring)."""
    events = [HistoryEvent(EventType.RUN_TRIGGERED, run.created_at, version=_version(run, 1))]
    failures = {f.attempt: f for f in run.failures}
    redrives = {r.attempt: r for r in run.redrives}
    for attempt in range(1, run.attempt + 1):
        failure = failures.get(attempt)
        started = failure.started_at if failure else run.attempt_started_at
        if started is None:
            continue  # this attempt has not started yet (queued or backing off)
        events.append(
            HistoryEvent(
                EventType.ATTEMPT_STARTED, started, attempt=attempt, version=_version(run, attempt)
            )
        )
        records = [s for s in steps if s.run_attempt == attempt]
        ended = _failure_events(failure) if failure is not None else []
        events.extend(_attempt_events(run, records, started, ended))
        redrive = redrives.get(attempt)
        if redrive is not None:  # the run had failed here, and was redriven after a fix
            events.append(
                HistoryEvent(
                    EventType.RUN_FAILED, redrive.failed_at, attempt=attempt, error=redrive.error
                )
            )
            events.append(
                HistoryEvent(
                    EventType.RUN_REDRIVEN,
                    redrive.at,
                    attempt=attempt,
                    step=redrive.step_id,
                    version=_version(run, attempt + 1),  # the version it moved to
                )
            )
    end = _END_EVENTS.get(run.status)
    if end is not None and run.finished_at is not None:
        error = None if run.status == RunStatus.COMPLETED else run.error
        events.append(HistoryEvent(end, run.finished_at, attempt=run.attempt, error=error))
    return events


def _version(run: Run, attempt: int) -> str | None:
    """The code version ``attempt`` ran on: a redrive after it records the version it
    left; after the last redrive, the run's own (docs/versioning.md)."""
    for redrive in run.redrives:
        if redrive.attempt >= attempt:
            return redrive.from_version
    return run.version


#: The event a terminal status ends the history with.
_END_EVENTS = {
    RunStatus.COMPLETED: EventType.RUN_COMPLETED,
    RunStatus.FAILED: EventType.RUN_FAILED,
    RunStatus.TIMED_OUT: EventType.RUN_TIMED_OUT,
    RunStatus.CANCELED: EventType.RUN_CANCELED,
    RunStatus.EXPIRED: EventType.RUN_EXPIRED,
}

#: How a failed attempt shows, by its kind (a step's failure is a step's two events).
_FAILURE_EVENTS = {"crash": EventType.WORKER_LOST, "body": EventType.ATTEMPT_FAILED}


def _failure_events(failure: Failure) -> list[HistoryEvent]:
    """How an attempt failed, and the retry it scheduled (if any)."""
    attempt = failure.attempt
    if failure.kind == "step":
        events = [
            HistoryEvent(
                EventType.STEP_STARTED,
                failure.step_started_at or failure.failed_at,
                attempt=attempt,
                step=failure.step_id,
            ),
            HistoryEvent(
                EventType.STEP_FAILED,
                failure.failed_at,
                attempt=attempt,
                step=failure.step_id,
                error=failure.error,
            ),
        ]
    else:
        kind = _FAILURE_EVENTS.get(failure.kind, EventType.ATTEMPT_FAILED)
        events = [HistoryEvent(kind, failure.failed_at, attempt=attempt, error=failure.error)]
    if failure.delay is not None:
        events.append(
            HistoryEvent(
                EventType.RETRY_SCHEDULED, failure.failed_at, attempt=attempt, delay=failure.delay
            )
        )
    return events


def _attempt_events(
    run: Run, records: list[StepRecord], began: datetime, ended: list[HistoryEvent]
) -> list[HistoryEvent]:
    """One attempt's events after its start, in time order (see the module docstring):
    its checkpoints' events, and ``ended``, how it failed (last among equal times)."""
    starts = _starts(records, began)
    shown = [replace(r, started_at=starts[r.step_id]) for r in records]
    ordered: list[HistoryEvent] = []
    for record, opening in _depth_first(shown):
        events = _events_of(run, record)
        # A record's first event opens it (before its children's), the rest close it.
        ordered.extend(events[:1] if opening else events[1:])
    return sorted([*ordered, *ended], key=lambda e: e.timestamp)  # stable: ties keep order


def _starts(records: list[StepRecord], began: datetime) -> dict[str, datetime]:
    """When each checkpoint starts, as history shows it: never before its attempt did
    (a batch or group that began in an earlier attempt is recorded by the one that
    ended it), nor before the checkpoints at earlier positions of its scope started
    (a token's wait is recorded from the token's creation, though the run waits only
    after the steps in between): program order, within the times recorded."""
    by_scope: dict[str, list[StepRecord]] = {}
    for record in records:
        by_scope.setdefault(scope_of(record.step_id), []).append(record)
    starts: dict[str, datetime] = {}
    for scope_records in by_scope.values():
        floor = began  # the latest start at the positions before this one
        seq, latest = None, began
        for record in sorted(scope_records, key=lambda r: (r.seq, r.started_at)):
            if record.seq != seq:  # branches share their batch's position: not chained
                floor, seq = max(floor, latest), record.seq
            starts[record.step_id] = max(record.started_at, floor)
            latest = max(latest, starts[record.step_id])
    return starts


def _depth_first(records: list[StepRecord]) -> list[tuple[StepRecord, bool]]:
    """``(record, True)`` when the walk enters a record, ``(record, False)`` when it
    leaves it, children in between. A record's parent is the nearest recorded prefix of
    its id that ends where a scope does ("/map#1" of "/map#1[0]", "/map#1[0]" of
    "/map#1[0]/s#1"); a group's name alone is no record, so its steps hang higher up."""
    by_id = {r.step_id: r for r in records}
    children: dict[str | None, list[StepRecord]] = {}
    for record in records:
        children.setdefault(_parent(record.step_id, by_id), []).append(record)
    walk: list[tuple[StepRecord, bool]] = []

    def visit(parent: str | None) -> None:
        for child in sorted(
            children.get(parent, []), key=lambda r: (r.started_at, r.seq, r.step_id)
        ):
            walk.append((child, True))
            visit(child.step_id)
            walk.append((child, False))

    visit(None)
    return walk


def _parent(step_id: str, by_id: dict[str, StepRecord]) -> str | None:
    for end in range(len(step_id) - 1, 0, -1):
        if step_id[end] in "/[" and step_id[:end] in by_id:
            return step_id[:end]
    return None


def _events_of(run: Run, record: StepRecord) -> list[HistoryEvent]:
    """A checkpoint's events: its start, then how it ended (if it has)."""
    attempt = record.run_attempt
    if record.kind not in _STEP_LIKE:
        return _wait_events(run, record, attempt)
    events = [
        HistoryEvent(
            EventType.STEP_STARTED, record.started_at, attempt=attempt, step=record.step_id
        )
    ]
    ended = max(record.finished_at, record.started_at) if record.finished_at else None
    if record.outcome == "succeeded" and ended is not None:
        events.append(
            HistoryEvent(EventType.STEP_SUCCEEDED, ended, attempt=attempt, step=record.step_id)
        )
    elif record.outcome == "failed" and ended is not None:
        events.append(
            HistoryEvent(
                EventType.STEP_FAILED,
                ended,
                attempt=attempt,
                step=record.step_id,
                error=record.error,
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
    # A wait_until a past time ends as it starts (it did not wait).
    until = max(record.wake_at, record.started_at) if record.wake_at is not None else None
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
                max(record.finished_at, record.started_at),
                attempt=attempt,
                step=record.step_id,
                error=record.error,
            )
        )
    return events
