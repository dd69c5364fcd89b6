"""Control flow that unwinds a task body. BaseException so ``except Exception`` in
user code cannot swallow it (the AWS durable SDK's SuspendExecution does the same)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta

from rung.errors import (
    ErrorInfo,
    LeaseLost,
    NonDeterminismError,
    StepFailed,
    is_misuse,
)


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


class Ending(Unwind):
    """An async task's attempt is ending (its body returned, or raised ``cause``):
    operations still running in its other asyncio tasks stop at their next step."""

    def __init__(self, cause: BaseException | None) -> None:
        super().__init__("the attempt is ending")
        self.cause = cause


class TimeLimitReached(Unwind):
    """The task's ``max_duration`` of compute time is used up: the run ends TIMED_OUT."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def combine(suspends: list[Suspend], what: str) -> Suspend:
    """One suspension for several waits (a batch's branches, an async body's gathered
    operations): the earliest wake time, every token and every child run one waits
    for (each one's end must be able to wake the run). ``what`` names the others in the
    reason."""
    timed = [s for s in suspends if s.wake_at is not None]
    first = min(timed, key=lambda s: s.wake_at or datetime.max) if timed else suspends[0]
    tokens = tuple(dict.fromkeys(token for s in suspends for token in s.tokens))
    children = tuple(dict.fromkeys(child for s in suspends for child in s.children))
    reason = first.reason  # it names what wakes the run first
    if len(suspends) > 1:
        reason += f" (and {len(suspends) - 1} more {what})"
    kind = first.wake_kind
    if kind == "deadline" and any(s.wake_kind == "timer" for s in timed):
        kind = "timer"  # (LocalEngine: a later timer has to pass the deadline first)
    return Suspend(first.wake_at, reason, tokens=tokens, children=children, wake_kind=kind)


def most_severe(signals: Sequence[BaseException]) -> BaseException:
    """Of several reasons to end the attempt, the one that must win."""

    def rank(signal: BaseException) -> int:
        if not isinstance(signal, Exception | ContinueLater | TimeLimitReached):
            return 0  # a crash (or KeyboardInterrupt): as if the process died
        if isinstance(signal, LeaseLost):
            return 1  # another worker owns the run: write nothing more
        if isinstance(signal, NonDeterminismError):
            return 2
        if isinstance(signal, TimeLimitReached):
            return 3
        if isinstance(signal, ContinueLater):
            return 4
        return 5  # storage errors and the like: the attempt fails

    return min(signals, key=rank)


def resolve(
    raised: BaseException,
    kept: BaseException | None,
    suspends: list[Suspend],
    canceled: BaseException | None,
    what: str,
    settled: Sequence[BaseException] = (),
) -> BaseException:
    """What a scope of an async task ends with, when it raised ``raised``.

    ``kept``: a signal an operation of the scope raised (which user code may have
    swallowed, or wrapped: ``asyncio.TaskGroup`` raises exception groups);
    ``suspends``: the scope's waits this attempt, combined when it suspends;
    ``canceled``: the misuse of an operation canceled by user code; ``settled``: what
    operations still running when the scope ended raised since. As a batch's branches
    decide: what ends the attempt (misuse included) first, then a retry, then the
    waits combined; then a ``StepFailed`` out of a group; then the cancel's misuse;
    else what was raised."""
    leaves = list(_leaves(raised))
    found = [
        e
        for e in (*leaves, kept, *settled)
        if (isinstance(e, Unwind | LeaseLost | NonDeterminismError) and not isinstance(e, Ending))
        or (e in leaves and e is not None and is_misuse(e))
    ]  # (an Ending is the attempt's end echoed back by an operation it stopped)
    if found:
        ending = [s for s in found if not isinstance(s, Suspend | RetryStep)]
        if ending:
            return most_severe(ending)
        retries = [s for s in found if isinstance(s, RetryStep)]
        if retries:
            return retries[0]
        waits = list(dict.fromkeys([*(s for s in found if isinstance(s, Suspend)), *suspends]))
        return waits[0] if len(waits) == 1 else combine(waits, what)
    if isinstance(raised, BaseExceptionGroup):
        failed = next((e for e in leaves if isinstance(e, StepFailed)), None)
        if failed is not None:
            return failed
    if canceled is not None:
        return canceled
    return raised


def _leaves(raised: BaseException) -> Iterator[BaseException]:
    if isinstance(raised, BaseExceptionGroup):
        for inner in raised.exceptions:
            yield from _leaves(inner)
    else:
        yield raised
