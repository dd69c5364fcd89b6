"""LocalEngine's virtual time: the next due time its clock may jump to.

The engine reads the emulator's own state in process (the queue's invisible and delayed
messages, the table's armed timers) to find what is due next; AWS needs no such read.
"""

from __future__ import annotations

from typing import Literal

from rung._aws.dynamodb import DynamoStore
from rung._aws.emulator import armed_timers, pending
from rung._aws.sqs import BadMessage, decode
from rung._engine.timers import TimerSweep
from rung._util.clock import VirtualClock
from rung.models import Run, RunStatus

_REGION = "us-east-1"


def next_due(
    store: DynamoStore, clock: VirtualClock, sweep: TimerSweep, queue_name: str, table_name: str
) -> float | None | Literal["sweep"]:
    """The next due time to jump to (epoch ms): timers, backoff and leases, but not the
    deadline of a token a run waits for; answering (or timing out) a token is the test's
    move. ``"sweep"`` when an armed timer is within the timer sweep's reach: run it
    first (its messages are then what is due).

    A message counts only if its run still has a due time it can lead to. Not
    counted: the message of a finished run, or of a run waiting for a token or with
    no timer (children, a batch), such as the one a token's wait left in the queue
    when its answer woke the run with a fresh message: it would only be deleted, or
    deferred again, when it became visible. (Counting it jumped the clock past
    other runs' token deadlines.) A run woken meanwhile gets a fresh message from
    its waker. A message of a run whose due time is later still counts: it may be
    the hop of a long wait (re-sent or deferred at its due time), and time passes
    it on the way to the run's due time anyway. A run due too late for a delayed
    message holds a timer instead: the clock jumps to where the sweep reaches it.

    A ``trigger_and_wait`` timeout is jumped to only on the way to a later due
    time (time has to pass it first); alone, it waits for the test's move too, so
    a test can answer a child's token before its parent's timeout.
    """
    now_ms = clock.epoch() * 1000
    lead = sweep.lookahead.total_seconds() * 1000
    timers = armed_timers(_REGION, table_name)
    if any(due <= now_ms + lead for due, _ in timers):
        return "sweep"
    candidates: list[tuple[float, str, str | None]] = [
        (due, body, None) for due, body in pending(_REGION, queue_name, now_ms)
    ]
    candidates += [(due - lead, "", run_id) for due, run_id in timers]
    deadline: float | None = None
    for due, body, timer_run in sorted(candidates):
        try:
            run = store.get_run_or_none(timer_run or decode(body))
        except BadMessage:
            return deadline if deadline is not None else due
        if run is not None and run.status.is_terminal:
            continue
        if run is not None and run.status == RunStatus.WAITING:
            if run.wake_kind in ("token", None):
                continue
            if run.wake_kind == "deadline":
                deadline = due if deadline is None else deadline
                continue
        return deadline if deadline is not None else due
    return None


def not_ending(run: Run, timeout: float | None) -> TimeoutError:
    """``LocalEngine.wait``'s error: the run did not end within ``timeout`` seconds, or
    (None) nothing but the test can move it."""
    waiting = f", waiting for {run.waiting_for}" if run.waiting_for else ""
    after = (
        "and nothing this engine would do by itself can move it"
        if timeout is None
        else f"after {timeout:g}s of waiting"
    )
    hint = ""
    if run.status == RunStatus.WAITING and run.wake_kind == "token":
        hint = (
            "; virtual time does not skip a token's deadline: complete the token or advance "
            "engine.clock"
        )
    elif timeout is None:  # (a parent waiting for a child that waits for a token)
        hint = (
            "; answer what it (or a child it waits for) waits for, e.g. "
            "engine.client.complete_token(...), or advance engine.clock"
        )
    return TimeoutError(
        f"run {run.run_id} is still {run.status}{waiting} (attempt {run.attempt}) {after}{hint}"
    )
