"""Control flow that unwinds a task body. BaseException so ``except Exception`` in
user code cannot swallow it (the AWS durable SDK's SuspendExecution does the same)."""

from __future__ import annotations

from datetime import datetime, timedelta

from rung.errors import ErrorInfo


class Unwind(BaseException):  # noqa: N818 - a signal, not an error
    """Base of the signals; never escapes the engine."""


class RetryStep(Unwind):
    """A step's attempt failed and another attempt follows after ``delay``."""

    def __init__(
        self, step_id: str, error: ErrorInfo, delay: timedelta, started_at: datetime
    ) -> None:
        super().__init__(step_id)
        self.step_id = step_id
        self.error = error
        self.delay = delay
        self.started_at = started_at


class ContinueLater(Unwind):
    """The invocation is running out of time: continue in a fresh one."""


class SlotLost(ContinueLater):
    """The run's queue slot expired during the attempt (a step outlived its lease) and
    counts as free: stop at this step boundary and queue for a slot again, in a fresh
    invocation, without spending an attempt."""


class Suspend(Unwind):
    """The run waits: free the worker and resume at ``wake_at`` (None: only when woken).

    ``tokens``: ids of tokens the run waits for; suspending is refused (atomically)
    if one of them was resolved meanwhile, so a completion is never missed.
    ``children``: ids of unfinished child runs it waits for; likewise.
    ``wake_kind``: what ``wake_at`` is, as data (``reason`` is for people): "timer" (a
    wait, a poll), "token" (a token's timeout or heartbeat deadline), "deadline" (a
    ``trigger_and_wait`` timeout), None (no time).
    ``batch``: (key, size) of the one batch of child runs it waits for (``children``
    lists its unfinished ones): woken once, by the batch's last end, instead of by
    each (DynamoStore.suspend_run). Combined with other waits, it is dropped.
    """

    def __init__(
        self,
        wake_at: datetime | None,
        reason: str,
        tokens: tuple[str, ...] = (),
        children: tuple[str, ...] = (),
        wake_kind: str | None = "timer",
        batch: tuple[str, int] | None = None,
    ) -> None:
        super().__init__(reason)
        self.wake_at = wake_at
        self.reason = reason
        self.tokens = tokens
        self.children = children
        self.batch = batch
        self.wake_kind = wake_kind if wake_at is not None else None


class Canceled(Unwind):
    """The run was canceled while this attempt ran: stop at this step boundary."""


class TimeLimitReached(Unwind):
    """The task's ``max_duration`` of compute time is used up: the run ends TIMED_OUT."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
