"""CloudWatch Logs: the only module that writes or reads log events.

On AWS, Lambda ships a function's output to its log group itself. ``rung dev`` and
``LocalEngine`` play that part on the emulator (``LogStream``): the worker's lines go to
the function's log group, one stream per worker process, so that ``rung runs logs``
and ``aws logs filter-log-events`` read a local run as they would on AWS
(``run_events``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

log = logging.getLogger("rung.logs")

#: PutLogEvents takes at most 10,000 events and 1,048,576 bytes (each event counts its
#: UTF-8 size plus 26 bytes).
_MAX_EVENTS = 10_000
_MAX_BYTES = 1_048_576
_EVENT_OVERHEAD = 26
#: CloudWatch Logs' limit for one event's message (bytes); longer lines are cut.
MAX_EVENT_BYTES = 256 * 1024 - _EVENT_OVERHEAD


def stream_name(now: datetime) -> str:
    """A log stream name as Lambda makes them: ``2026/12/05/[$LATEST]<32 hex>``."""
    return f"{now.astimezone(UTC):%Y/%m/%d}/[$LATEST]{secrets.token_hex(16)}"


def default_group(function_name: str) -> str:
    """The log group Lambda uses for a function with no LoggingConfig of its own."""
    return f"/aws/lambda/{function_name}"


class LogStream:
    """One log stream of a log group, written in batches (``write`` then ``flush``).

    Thread-safe. ``flush`` never raises: a line that cannot be shipped is reported on
    this process's own logger ``rung.logs`` and dropped, as a log agent would.
    """

    def __init__(self, client: Any, group: str, stream: str) -> None:
        self.client = client
        self.group = group
        self.stream = stream
        self._pending: list[tuple[int, str]] = []
        self._lock = threading.Lock()
        self._created = False

    def write(self, timestamp_ms: int, message: str) -> None:
        data = message.encode("utf-8", "replace")
        if len(data) > MAX_EVENT_BYTES:
            message = data[:MAX_EVENT_BYTES].decode("utf-8", "ignore")
        with self._lock:
            self._pending.append((timestamp_ms, message))

    def flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        if not pending:
            return
        pending.sort(key=lambda e: e[0])  # PutLogEvents wants them in time order
        try:
            self._create()
            for batch in _batches(pending):
                self.client.put_log_events(
                    logGroupName=self.group,
                    logStreamName=self.stream,
                    logEvents=[{"timestamp": t, "message": m} for t, m in batch],
                )
        except Exception as exc:  # the emulator went away; never fail the worker for it
            log.warning("could not ship %d log lines to %s: %s", len(pending), self.group, exc)

    def _create(self) -> None:
        if self._created:
            return
        exists = self.client.exceptions.ResourceAlreadyExistsException
        with contextlib.suppress(exists):
            self.client.create_log_group(logGroupName=self.group)
        with contextlib.suppress(exists):
            self.client.create_log_stream(logGroupName=self.group, logStreamName=self.stream)
        self._created = True


def _batches(events: list[tuple[int, str]]) -> Iterator[list[tuple[int, str]]]:
    batch: list[tuple[int, str]] = []
    size = 0
    for event in events:
        cost = len(event[1].encode("utf-8", "replace")) + _EVENT_OVERHEAD
        if batch and (len(batch) >= _MAX_EVENTS or size + cost > _MAX_BYTES):
            yield batch
            batch, size = [], 0
        batch.append(event)
        size += cost
    if batch:
        yield batch


@dataclass(frozen=True)
class LogEvent:
    """One line of a log group: when, which stream, and the line (a JSON object for
    rung's and Powertools' lines: ``fields``)."""

    timestamp: datetime
    stream: str
    message: str
    event_id: str = ""  # FilterLogEvents' id of the event, unique in its group

    @property
    def timestamp_ms(self) -> int:
        return round(self.timestamp.timestamp() * 1000)

    @property
    def fields(self) -> dict[str, Any]:
        """The line's JSON fields ({} for a line that is not a JSON object)."""
        try:
            value = json.loads(self.message)
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}


def run_events(
    client: Any, group: str, run_id: str, start_ms: int | None = None, end_ms: int | None = None
) -> list[LogEvent]:
    """The lines of ``group`` that name ``run_id``, oldest first (FilterLogEvents with
    the run id as a term; a line names it in its ``run_id`` field, or in its text).
    ``start_ms``/``end_ms``: only lines in that span (a run's life: FilterLogEvents
    scans every event of the span, so the whole retention of a busy group otherwise)."""
    kwargs: dict[str, Any] = {"logGroupName": group, "filterPattern": f'"{run_id}"'}
    if start_ms is not None:
        kwargs["startTime"] = start_ms
    if end_ms is not None:
        kwargs["endTime"] = end_ms
    events: list[LogEvent] = []
    try:
        pages = client.get_paginator("filter_log_events").paginate(**kwargs)
        for page in pages:
            for event in page.get("events", []):
                message = event.get("message", "")
                # Emulators ignore filter patterns (docs: LOCALSTACK.md): filter here too.
                if run_id not in message:
                    continue
                events.append(
                    LogEvent(
                        timestamp=datetime.fromtimestamp(event["timestamp"] / 1000, UTC),
                        stream=event.get("logStreamName", ""),
                        message=message.rstrip("\n"),
                        event_id=str(event.get("eventId", "")),
                    )
                )
    except client.exceptions.ResourceNotFoundException:
        return []
    events.sort(key=lambda e: e.timestamp)  # stable: a stream's own order is kept
    return events
