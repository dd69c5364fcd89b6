"""The heartbeat: what keeps a live attempt's claims alive between its writes.

A run's lease is short (``WorkerConfig.lease_duration``, 30 s on Lambda) so that a
crashed worker's run is taken over soon after it died. While an attempt's task body
runs, a daemon thread renews the lease every third of it (``Session.keep_alive``: the
fenced ``renew_lease``, one conditional write). On Lambda a second beat, for the whole
invocation, keeps the batch's messages invisible for the lease plus a margin
(``SqsQueue.hold`` / ``extend``: one ``ChangeMessageVisibilityBatch`` per ten
messages), so a dead invocation's messages come back within about a minute, not after
the queue's visibility timeout.

What the heartbeat does not do, and why:

* It renews no queue slot (docs/flow-control.md): slots live on one versioned item per
  queue that every start and release of that queue writes, and a write per running
  run every few seconds would multiply its load. Slots keep their own, longer lease
  (``slot_lease``), renewed before steps as before.
* It never writes after the attempt's end: the attempt stops it (and waits for a
  beat in flight) before its final write, so that write is the last. A beat that
  lands late anyway is refused by the fence (the run left RUNNING) and does nothing.
* A beat that finds the lease gone (``LeaseLost``: another worker took the run over)
  stops beating; the attempt stops at its next step boundary (``Session``), and any
  fenced write it tries meanwhile is refused as before. Step checkpoints need no lease
  (write-once) and at-most-once steps keep their start markers, so a stalled worker
  whose lease lapsed (a heartbeat starved for a whole lease) costs at worst a repeated
  at-least-once step, as a crash would.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime
from types import TracebackType

from rung.errors import ErrorInfo
from rung.models import Failure, Run

log = logging.getLogger("rung.worker")


class Heartbeat:
    """Calls ``beat`` every ``interval`` seconds on a daemon thread, from ``__enter__``
    until ``__exit__`` (which waits for a beat in flight) or until ``beat`` returns
    False. An exception in a beat is logged and the next beat tries again."""

    def __init__(self, beat: Callable[[], bool], interval: float, name: str) -> None:
        self._beat = beat
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name=name)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                if not self._beat():
                    return
            except Exception:  # a store outage: the lease still has two thirds left
                log.exception("heartbeat %s failed; trying again", self._thread.name)


def lost_attempt(run: Run, now: datetime) -> Failure:
    """The failure of ``run``'s attempt whose holder died (its lease expired), found
    ``now``: a crash, or a step that outlived its invocation's time limit."""
    if run.overran_step is not None:
        # The holder's watchdog saw this step still running as its invocation's time
        # ran out (Lambda then stops the function): the step outlived the invocation.
        error = ErrorInfo(
            type="StepTimedOut",
            message=(
                f"step {run.overran_step!r} of run {run.run_id} (attempt {run.attempt}) was "
                "still running when its invocation reached the function's time limit. "
                "Runs continue in a fresh invocation between steps, but a single step must "
                "finish within one invocation: split the step, or raise the "
                "FunctionTimeout parameter (at most 900 s on Lambda)"
            ),
        )
    else:
        error = ErrorInfo(
            type="WorkerLost",
            message=(
                f"the worker running attempt {run.attempt} of run {run.run_id} stopped "
                "without finishing it (crash, kill, timeout or out of memory); its lease "
                "expired"
            ),
        )
    return Failure(
        attempt=run.attempt,
        kind="crash",
        step_id=None,
        error=error,
        started_at=run.attempt_started_at,
        failed_at=now,
        step_started_at=None,
        delay=None,
    )
