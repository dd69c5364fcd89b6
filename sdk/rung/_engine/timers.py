"""The timer sweep: sends the message of each run whose armed timer comes due.

A run due later than SQS can delay a message (15 minutes) holds no message while it
waits: the worker arms a timer on the run item instead (``DynamoStore.arm_timer``; see
rung._aws.dynamodb.timers). Each pass of the sweep lists the timers due within the next
15 minutes (``runs_by_due``: only those are read), sends each run a message delayed to
its due time (with its trace header), and disarms the timer. The reconciler runs a
sweep at the start of every pass (template.yaml: every minute), LocalEngine when its
virtual clock reaches a timer.

Safe to run concurrently with workers and with other sweeps: a timer sent twice (two
sweeps, or a crash between the send and the disarm) is a duplicate message, which the
claim absorbs; a timer disarmed is never lost, because it is disarmed only after its
message was accepted.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from rung._aws.dynamodb import DynamoStore
from rung._aws.sqs import SqsQueue
from rung._util.clock import Clock
from rung._util.traces import header_of

log = logging.getLogger("rung.reconciler")

#: At most this many timers per pass; the next pass takes the rest (a minute later,
#: still before they are due: they are listed up to 15 minutes ahead).
DEFAULT_TIMER_LIMIT = 5000


class TimerSweep:
    """Sends the messages of runs whose timers are due within SQS's delay limit."""

    def __init__(
        self, store: DynamoStore, queue: SqsQueue, clock: Clock, limit: int = DEFAULT_TIMER_LIMIT
    ) -> None:
        self.store = store
        self.queue = queue
        self.clock = clock
        self.limit = limit

    @property
    def lookahead(self) -> timedelta:
        """How far ahead a pass looks: the longest delay a message can have."""
        return self.queue.max_delay

    def run_once(self) -> list[str]:
        """One pass; returns the ids of the runs it sent a message for."""
        if not self.store.timers_enabled():
            return []
        now = self.clock.now()
        timers = self.store.due_timers(now + self.lookahead, self.limit)
        if not timers:
            return []
        sent: list[str] = []
        for timer in timers:
            # One SendMessage each, not a batch: a batch entry's AWSTraceHeader is not
            # kept by the emulator, and a message must carry its run's trace.
            self.queue.send(
                timer.run_id, max(timer.due - now, timedelta(0)), header_of(timer.trace)
            )
            self.store.disarm_timer(timer)  # refused: re-armed or claimed meanwhile
            sent.append(timer.run_id)
        if len(timers) >= self.limit:
            log.warning("more than %d timers due; the next pass sends the rest", self.limit)
        return sent
