"""The timeline of ``rung runs trace``, built from a run's history."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import rung
from rung._durations import format_duration
from rung.cli._common import _offset
from rung.models import EventType, HistoryEvent, Run, RunStatus


@dataclass
class TraceLine:
    """One line of ``rung runs trace``: an attempt, a step (start to end), a retry..."""

    kind: str  # "triggered", "attempt", "step", "child", "retry", "lost", "failed",
    # "redriven", "end"
    at: datetime
    what: str
    attempt: int | None = None
    step: str | None = None
    try_number: int | None = None
    outcome: str | None = None  # steps: "succeeded", "failed", "running", "unfinished"
    ended: datetime | None = None
    took: timedelta | None = None
    detail: str = ""
    error: rung.ErrorInfo | None = None
    style: str = ""

    def step_json(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "attempt": self.attempt,
            "try": self.try_number,
            "outcome": self.outcome,
            "started_at": self.at.isoformat(),
            "finished_at": self.ended.isoformat() if self.ended else None,
            "duration_seconds": self.took.total_seconds() if self.took is not None else None,
            "error": self.error.to_json() if self.error else None,
        }


#: How an attempt that did not finish shows in a trace: (line kind, text).
_ATTEMPT_ENDINGS = {
    EventType.WORKER_LOST: ("lost", "✗ worker lost"),
    EventType.ATTEMPT_FAILED: ("failed", "✗ attempt failed"),
}


def build_trace(run: Run, events: list[HistoryEvent]) -> list[TraceLine]:
    """The history as a timeline: each step on one line, from its start to its end."""
    lines: list[TraceLine] = []
    open_steps: dict[tuple[int | None, str | None], TraceLine] = {}
    open_waits: dict[str | None, TraceLine] = {}
    tries: dict[str | None, int] = {}
    succeeded: set[str] = set()  # steps checkpointed by earlier attempts
    for index, event in enumerate(events):
        kind = event.type
        if kind == EventType.RUN_TRIGGERED:
            lines.append(TraceLine("triggered", event.timestamp, f"triggered {run.task_id}"))
        elif kind == EventType.ATTEMPT_STARTED:
            lines.append(
                TraceLine(
                    "attempt",
                    event.timestamp,
                    f"attempt {event.attempt} started",
                    attempt=event.attempt,
                    detail=_resumes(events[index + 1 :], event.attempt, succeeded),
                    style="bold",
                )
            )
        elif kind == EventType.STEP_STARTED:
            tries[event.step] = tries.get(event.step, 0) + 1
            line = TraceLine(
                "step",
                event.timestamp,
                "",
                attempt=event.attempt,
                step=event.step,
                try_number=tries[event.step],
            )
            open_steps[(event.attempt, event.step)] = line
            lines.append(line)
        elif kind in (EventType.STEP_SUCCEEDED, EventType.STEP_FAILED):
            started = open_steps.pop((event.attempt, event.step), None)
            if started is None:  # an end without its start: show it where it ended
                tries[event.step] = tries.get(event.step, 0) + 1
                started = TraceLine(
                    "step",
                    event.timestamp,
                    "",
                    attempt=event.attempt,
                    step=event.step,
                    try_number=tries[event.step],
                )
                lines.append(started)
            started.ended = event.timestamp
            started.took = event.timestamp - started.at
            if kind == EventType.STEP_SUCCEEDED:
                started.outcome = "succeeded"
                if event.step is not None:
                    succeeded.add(event.step)
            else:
                started.outcome = "failed"
                started.error = event.error
                started.detail = str(event.error) if event.error else ""
        elif kind == EventType.TOKEN_CREATED:
            lines.append(
                TraceLine(
                    "token",
                    event.timestamp,
                    f"✓ token {event.step}",
                    attempt=event.attempt,
                    step=event.step,
                    detail="created",
                    style="green",
                )
            )
        elif kind == EventType.WAIT_STARTED:
            line = TraceLine(
                "wait",
                event.timestamp,
                f"⏸ {event.step}",
                attempt=event.attempt,
                step=event.step,
                detail=(
                    f"until {_offset(event.timestamp + event.delay - run.created_at)}"
                    if event.delay is not None
                    else "until answered"
                ),
                style="magenta",
            )
            open_waits[event.step] = line
            lines.append(line)
        elif kind == EventType.WAIT_ENDED:
            wait = open_waits.pop(event.step, None)
            if wait is not None:
                wait.ended = event.timestamp
                wait.took = event.timestamp - wait.at
                if event.error is not None:
                    wait.error = event.error
                    wait.detail = str(event.error)
                    wait.style = "red"
        elif kind == EventType.RETRY_SCHEDULED:
            delay = event.delay or timedelta(0)
            lines.append(
                TraceLine(
                    "retry",
                    event.timestamp,
                    f"↻ retry in {format_duration(delay)}",
                    attempt=event.attempt,
                    detail=f"attempt {(event.attempt or 0) + 1} due at "
                    f"{_offset(event.timestamp + delay - run.created_at)}",
                    style="yellow",
                )
            )
        elif kind in _ATTEMPT_ENDINGS:
            line_kind, what = _ATTEMPT_ENDINGS[kind]
            lines.append(
                TraceLine(
                    line_kind,
                    event.timestamp,
                    what,
                    attempt=event.attempt,
                    detail=str(event.error) if event.error else "",
                    error=event.error,
                    style="red",
                )
            )
        elif kind == EventType.RUN_REDRIVEN:
            lines.append(
                TraceLine(
                    "redriven",
                    event.timestamp,
                    "↻ redriven",
                    attempt=event.attempt,
                    detail=f"attempt {(event.attempt or 0) + 1} resumes"
                    + (f" at {event.step}" if event.step else ""),
                    style="yellow",
                )
            )
        elif kind == EventType.CHILD_TRIGGERED:
            lines.append(
                TraceLine(
                    "child",
                    event.timestamp,
                    f"→ child {event.step}",
                    attempt=event.attempt,
                    step=event.step,
                    detail=event.child_run_id or "",
                )
            )
        elif kind == EventType.RUN_CANCELED:
            lines.append(
                TraceLine(
                    "end",
                    event.timestamp,
                    "✗ canceled",
                    attempt=event.attempt,
                    took=event.timestamp - run.created_at,
                    detail=event.error.message if event.error else "",
                    style="bold magenta",
                )
            )
        elif kind in (EventType.RUN_COMPLETED, EventType.RUN_FAILED, EventType.RUN_TIMED_OUT):
            done = kind == EventType.RUN_COMPLETED
            lines.append(
                TraceLine(
                    "end",
                    event.timestamp,
                    "✓ completed"
                    if done
                    else ("✗ timed out" if kind == EventType.RUN_TIMED_OUT else "✗ failed"),
                    attempt=event.attempt,
                    took=event.timestamp - run.created_at,
                    detail="" if done or event.error is None else str(event.error),
                    error=None if done else event.error,
                    style="bold green" if done else "bold red",
                )
            )
    current = run.attempt if run.status == RunStatus.RUNNING else None
    for line in lines:
        if line.kind != "step":
            continue
        label = f"step {line.step}"
        if line.try_number and line.try_number > 1:
            label += f" (try {line.try_number})"
        if line.outcome is None:
            line.outcome = "running" if line.attempt == current else "unfinished"
            line.what, line.style = f"… {label}", "cyan"
            if line.outcome == "unfinished":
                line.detail = "started, no end recorded (the worker stopped during it)"
        elif line.outcome == "succeeded":
            line.what, line.style = f"✓ {label}", "green"
        else:
            line.what, line.style = f"✗ {label}", "red"
    if run.status == RunStatus.WAITING:
        lines.append(
            TraceLine(
                "waiting",
                run.updated_at,
                f"… waiting for {run.waiting_for or 'an event'}",
                style="magenta",
            )
        )
    waiting = run.status == RunStatus.DELAYED and run.available_at is not None
    if waiting and lines and lines[-1].kind != "retry":  # a retry line already says when
        assert run.available_at is not None
        which = "next" if any(line.kind == "attempt" for line in lines) else "first"
        lines.append(
            TraceLine("waiting", run.available_at, f"… {which} attempt due", style="yellow")
        )
    return lines


def _resumes(later: list[HistoryEvent], attempt: int | None, done: set[str]) -> str:
    """For a retry: where the attempt picked up, and how many steps it replayed."""
    if attempt is None or attempt <= 1:
        return ""
    first = next(
        (
            e.step
            for e in later
            if e.attempt == attempt and e.type == EventType.STEP_STARTED and e.step
        ),
        None,
    )
    replayed = len(done)
    kept = f"{replayed} completed step{'s' if replayed != 1 else ''} replayed from checkpoints"
    if first is None:
        return kept if replayed else ""
    if not replayed:
        return f"runs from the top at {first} (no step had completed)"
    return f"resumes at {first}; {kept}"
