"""One line per run event, as it happens, for the `rung dev` console.

Each poll reads the run items that changed since the last (one consistent Scan of the
local table: on the emulator that is one pass over the table, where the sharded indexes
would take 32 queries per status) and prints the history events it has not printed yet
(the same events `rung runs trace` shows).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime, timedelta

from rung._aws.dynamodb import DynamoStore
from rung._engine.history import build_history
from rung._util.clock import SystemClock
from rung.models import HistoryEvent, Run

log = logging.getLogger("rung.dev")
_MARGIN = timedelta(seconds=5)


def format_event(run: Run, event: HistoryEvent) -> str:
    parts = [event.timestamp.strftime("%H:%M:%S.%f")[:-3], run.run_id, run.task_id, str(event.type)]
    if event.step:
        parts.append(event.step)
    if event.attempt is not None and event.type in ("AttemptStarted", "WorkerLost"):
        parts.append(f"attempt {event.attempt}")
    if event.delay is not None:
        parts.append(f"in {event.delay.total_seconds():g}s")
    if event.error is not None:
        parts.append(f"{event.error.type}: {event.error.message.splitlines()[0][:160]}")
    return "  ".join(parts)


class EventPrinter:
    def __init__(
        self,
        store: DynamoStore,
        emit: Callable[[str], None],
        since: datetime,
        every: float = 0.3,
    ) -> None:
        self.store = store
        self.emit = emit
        self.every = every
        self.printed: dict[str, int] = {}  # run id -> events printed
        self.seen_updated: dict[str, str] = {}
        self.finished: set[str] = set()
        self.since = since
        self._last = since
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="rung-printer")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            try:
                self.poll()
            except Exception as exc:  # the emulator is going away, or a transient error
                if not self._stop.is_set():
                    log.debug("event printer: %s", exc)

    def poll(self, everything: bool = False) -> None:
        # Runs written since the last poll began (less a margin: a write's updated_at
        # is taken just before it is sent); everything: since the printer started. A
        # followed run that finished is read directly, so its end is printed at once.
        began = SystemClock().now()
        since = self.since if everything else max(self.since, self._last - _MARGIN)
        listed = {
            run.run_id: run
            for run in self.store.changed_runs(since)
            if run.run_id not in self.finished
        }
        self._last = began
        for run_id in [r for r in self.printed if r not in listed]:
            listed[run_id] = self.store.get_run(run_id)
        for run in sorted(listed.values(), key=lambda r: r.updated_at):
            key = run.updated_at.isoformat()
            if self.seen_updated.get(run.run_id) == key:
                continue
            self.seen_updated[run.run_id] = key
            full, steps = self.store.load_run_and_steps(run.run_id)
            self._print(full, build_history(full, steps))
            if full.status.is_terminal:
                self.finished.add(run.run_id)
                self.seen_updated.pop(run.run_id, None)
                self.printed.pop(run.run_id, None)

    def _print(self, run: Run, events: list[HistoryEvent]) -> None:
        done = self.printed.get(run.run_id, 0)
        for event in events[done:]:
            self.emit(format_event(run, event))
        self.printed[run.run_id] = len(events)
