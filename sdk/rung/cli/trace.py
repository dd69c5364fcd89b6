"""The timeline of ``rung runs trace``, built from a run's history."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import rung
from rung._aws.logs import LogEvent
from rung._util.durations import format_duration
from rung.cli._common import _offset
from rung.models import EventType, HistoryEvent, Run, RunStatus, TokenState


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
    logs: list[LogEvent] = field(default_factory=list)  # with --logs: the lines under it

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

#: How a run's end shows: (text, style).
_RUN_ENDINGS = {
    EventType.RUN_COMPLETED: ("✓ completed", "bold green"),
    EventType.RUN_FAILED: ("✗ failed", "bold red"),
    EventType.RUN_TIMED_OUT: ("✗ timed out", "bold red"),
    EventType.RUN_CANCELED: ("✗ canceled", "bold magenta"),
    EventType.RUN_EXPIRED: ("✗ expired (never started)", "bold magenta"),
}


def build_trace(
    run: Run, events: list[HistoryEvent], tokens: Sequence[TokenState] = ()
) -> list[TraceLine]:
    """The history as a timeline: each step on one line, from its start to its end.

    ``tokens``: the run's (``Client.list_tokens``); a token's line shows its id."""
    timeline = _Timeline(run, {state.step_id: state for state in tokens})
    for index in range(len(events)):
        timeline.add(events, index)
    return timeline.finish()


class _Timeline:
    """Builds the lines of one run's trace, one history event at a time."""

    def __init__(self, run: Run, tokens: dict[str, TokenState]) -> None:
        self.run = run
        self.tokens = tokens  # by the step that created them
        self.lines: list[TraceLine] = []
        self.open_steps: dict[tuple[int | None, str | None], TraceLine] = {}
        self.open_waits: dict[str | None, TraceLine] = {}
        self.tries: dict[str | None, int] = {}
        self.succeeded: set[str] = set()  # steps checkpointed by earlier attempts

    def add(self, events: list[HistoryEvent], index: int) -> None:
        """Add ``events[index]`` (an attempt's line looks at the events after it)."""
        event = events[index]
        kind = event.type
        if kind == EventType.ATTEMPT_STARTED:
            detail = _resumes(events[index + 1 :], event.attempt, self.succeeded)
            if event.version is not None:
                detail = f"version {event.version}" + (f", {detail}" if detail else "")
            self._line("attempt", event, f"attempt {event.attempt} started", detail, "bold")
        elif kind == EventType.STEP_STARTED:
            self.open_steps[(event.attempt, event.step)] = self._step_line(event)
        elif kind in (EventType.STEP_SUCCEEDED, EventType.STEP_FAILED):
            self._step_ended(event)
        elif kind == EventType.WAIT_ENDED:
            self._wait_ended(event)
        elif kind in _RUN_ENDINGS:
            self._run_ended(event)
        else:
            self._simple(event)

    def _simple(self, event: HistoryEvent) -> None:
        """An event that is one line of its own."""
        kind, run = event.type, self.run
        if kind == EventType.RUN_TRIGGERED:
            self.lines.append(TraceLine("triggered", event.timestamp, f"triggered {run.task_id}"))
        elif kind == EventType.TOKEN_CREATED:
            token = self.tokens.get(event.step or "")
            detail = f"created {token.id} ({token.status})" if token is not None else "created"
            self._line("token", event, f"✓ token {event.step}", detail, "green", step=True)
        elif kind == EventType.WAIT_STARTED:
            until = (
                f"until {_offset(event.timestamp + event.delay - run.created_at)}"
                if event.delay is not None
                else "until answered"
            )
            self.open_waits[event.step] = self._line(
                "wait", event, f"⏸ {event.step}", until, "magenta", step=True
            )
        elif kind == EventType.RETRY_SCHEDULED:
            delay = event.delay or timedelta(0)
            due = _offset(event.timestamp + delay - run.created_at)
            detail = f"attempt {(event.attempt or 0) + 1} due at {due}"
            self._line("retry", event, f"↻ retry in {format_duration(delay)}", detail, "yellow")
        elif kind in _ATTEMPT_ENDINGS:
            line_kind, what = _ATTEMPT_ENDINGS[kind]
            line = self._line(line_kind, event, what, str(event.error or ""), "red")
            line.error = event.error
        elif kind == EventType.RUN_REDRIVEN:
            detail = f"attempt {(event.attempt or 0) + 1} resumes" + (
                f" at {event.step}" if event.step else ""
            )
            if event.version is not None:
                detail += f" on version {event.version}"
            self._line("redriven", event, "↻ redriven", detail, "yellow")
        elif kind == EventType.CHILD_TRIGGERED:
            detail = event.child_run_id or ""
            self._line("child", event, f"→ child {event.step}", detail, "", step=True)

    def _line(
        self, kind: str, event: HistoryEvent, what: str, detail: str, style: str, step: bool = False
    ) -> TraceLine:
        line = TraceLine(
            kind,
            event.timestamp,
            what,
            attempt=event.attempt,
            step=event.step if step else None,
            detail=detail,
            style=style,
        )
        self.lines.append(line)
        return line

    def _step_line(self, event: HistoryEvent) -> TraceLine:
        self.tries[event.step] = self.tries.get(event.step, 0) + 1
        line = TraceLine(
            "step",
            event.timestamp,
            "",
            attempt=event.attempt,
            step=event.step,
            try_number=self.tries[event.step],
        )
        self.lines.append(line)
        return line

    def _step_ended(self, event: HistoryEvent) -> None:
        started = self.open_steps.pop((event.attempt, event.step), None)
        if started is None:  # an end without its start: show it where it ended
            started = self._step_line(event)
        started.ended = event.timestamp
        started.took = event.timestamp - started.at
        if event.type == EventType.STEP_SUCCEEDED:
            started.outcome = "succeeded"
            if event.step is not None:
                self.succeeded.add(event.step)
        else:
            started.outcome = "failed"
            started.error = event.error
            started.detail = str(event.error) if event.error else ""

    def _wait_ended(self, event: HistoryEvent) -> None:
        wait = self.open_waits.pop(event.step, None)
        if wait is not None:
            wait.ended = event.timestamp
            wait.took = event.timestamp - wait.at
            if event.error is not None:
                wait.error = event.error
                wait.detail = str(event.error)
                wait.style = "red"

    def _run_ended(self, event: HistoryEvent) -> None:
        what, style = _RUN_ENDINGS[event.type]
        if event.type == EventType.RUN_COMPLETED:
            detail, error = "", None
        elif event.type == EventType.RUN_CANCELED:
            detail, error = (event.error.message if event.error else ""), None
        else:
            detail, error = str(event.error or ""), event.error
        line = self._line("end", event, what, detail, style)
        line.took = event.timestamp - self.run.created_at
        line.error = error

    def finish(self) -> list[TraceLine]:
        """Label the steps by outcome, and say what an unfinished run waits for."""
        run, lines = self.run, self.lines
        current = run.attempt if run.status == RunStatus.RUNNING else None
        for line in lines:
            if line.kind == "step":
                _label_step(line, current)
        if run.status == RunStatus.WAITING:
            lines.append(
                TraceLine(
                    "waiting",
                    run.updated_at,
                    f"… waiting for {run.waiting_for or 'an event'}",
                    style="magenta",
                )
            )
        delayed = run.status == RunStatus.DELAYED and run.available_at is not None
        if delayed and lines and lines[-1].kind != "retry":  # a retry line already says when
            assert run.available_at is not None
            which = "next" if any(line.kind == "attempt" for line in lines) else "first"
            lines.append(
                TraceLine("waiting", run.available_at, f"… {which} attempt due", style="yellow")
            )
        return lines


def _label_step(line: TraceLine, current: int | None) -> None:
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


def attach_logs(lines: list[TraceLine], events: Sequence[LogEvent]) -> None:
    """Put each log line under the trace line it belongs to (``TraceLine.logs``): under
    the step whose ``step_id`` and ``attempt`` it carries, else under its attempt.

    A line without an ``attempt`` field (a plain line) belongs to the attempt started
    last before it; a line before any attempt, under the run's first line."""
    if not lines:
        return
    attempts = [line for line in lines if line.kind == "attempt"]
    steps = [line for line in lines if line.kind == "step"]
    for event in events:
        fields = event.fields
        attempt = fields.get("attempt")
        if not isinstance(attempt, int):
            started = [a for a in attempts if a.at <= event.timestamp]
            attempt = started[-1].attempt if started else None
        step = fields.get("step_id")
        home: TraceLine | None = None
        if step:
            same = [line for line in steps if line.step == step and line.attempt == attempt]
            begun = [line for line in same if line.at <= event.timestamp]
            if begun:  # the try of the step that had started when the line was written
                home = begun[-1]
            elif same:
                home = same[0]
        if home is None:
            home = next((a for a in reversed(attempts) if a.attempt == attempt), None)
        (home or lines[0]).logs.append(event)
