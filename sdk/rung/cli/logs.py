"""A run's log lines (CloudWatch Logs) for ``rung runs logs`` and ``rung runs trace --logs``.

A line rung or the user's code wrote during a run is a JSON object (Powertools Logger)
with ``level``, ``message``, ``run_id``, ``attempt``, ``step_id`` inside a step, and
more; any other line (a ``print``, a library writing to stderr) is shown as it is.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from rich.text import Text

from rung._aws.logs import LogEvent
from rung.cli._common import WorkerLogs, _time
from rung.client import Client

#: Seconds between two polls of ``--follow``.
FOLLOW_EVERY = 1.0

_LEVEL_STYLE = {
    "CRITICAL": "bold red",
    "ERROR": "red",
    "WARNING": "yellow",
    "INFO": "",
    "DEBUG": "dim",
}


def log_json(event: LogEvent) -> dict[str, Any]:
    """A line for ``--json``: its JSON fields (a plain line: ``message``), with the
    event's ``timestamp`` (ISO 8601, UTC) and ``stream`` (the worker process's)."""
    fields = event.fields or {"message": event.message}
    return {**fields, "timestamp": event.timestamp.isoformat(), "stream": event.stream}


def level_of(event: LogEvent) -> str:
    return str(event.fields.get("level", "")).upper()


def message_of(event: LogEvent) -> str:
    """What the line says: its ``message`` (and exception), or the whole plain line."""
    fields = event.fields
    if not fields or "message" not in fields:
        return event.message
    message = fields["message"]
    text = message if isinstance(message, str) else json.dumps(message, default=str)
    exception = fields.get("exception")
    if exception:
        text += "\n" + str(exception).rstrip()
    return text


def log_text(event: LogEvent) -> Text:
    """A line for people: time (UTC), attempt, step id, level, message."""
    fields = event.fields
    text = Text(_time(event.timestamp), style="dim")
    if fields.get("attempt") is not None:
        text.append(f"  attempt {fields['attempt']}")
    if fields.get("step_id"):
        text.append(f"  {fields['step_id']}", style="cyan")
    level = level_of(event)
    if level:
        text.append(f"  {level:<7}", style=_LEVEL_STYLE.get(level, ""))
    text.append(f"  {message_of(event)}")
    return text


def level_style(event: LogEvent) -> str:
    return _LEVEL_STYLE.get(level_of(event), "")


def print_run_logs(
    client: Client,
    worker: WorkerLogs,
    run_id: str,
    emit: Callable[[LogEvent], None],
    *,
    follow: bool = False,
) -> int:
    """Emit the run's lines in order; with ``follow``, poll for new ones every
    ``FOLLOW_EVERY`` seconds (from the last timestamp seen, never a line twice) until
    the run has ended and a poll after that found nothing new. Returns how many lines
    were emitted. ``RunNotFound`` for an unknown run."""
    run = client.get_run(run_id)
    seen: set[tuple[int, str, str]] = set()
    since: int | None = None
    count = 0

    def poll() -> int:
        nonlocal since, seen, count
        events = worker.run_events(client.get_run(run_id) if follow else run, since)
        new = 0
        for event in events:
            key = (event.timestamp_ms, event.stream, event.event_id or event.message)
            if key in seen:
                continue
            seen.add(key)
            emit(event)
            new += 1
        if events:
            # Lines of the same millisecond may still come: poll from it again, and
            # remember only what that poll can return again.
            since = max(since or 0, max(e.timestamp_ms for e in events))
            seen = {key for key in seen if key[0] >= since}
        count += new
        return new

    poll()
    while follow:
        ended = run.status.is_terminal  # read before the poll: its last lines are in it
        time.sleep(FOLLOW_EVERY)
        if not poll() and ended:
            break
        run = client.get_run(run_id)
    return count
