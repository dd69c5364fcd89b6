"""Every error rung raises, in one tree.

This module imports nothing from the package, so any module may import it.

    RungError                       base of everything rung raises on purpose
    ├── InvalidConfig (ValueError)  a RetryPolicy, task or engine option is wrong
    ├── UsageError                  the API was called where it cannot work
    ├── UnknownTask (LookupError)   trigger() named a task the app does not define
    ├── InvalidPayload (ValueError) a payload fails the task's model or is not JSON
    ├── PayloadTooLarge             a payload or result exceeds MAX_VALUE_BYTES
    ├── RunNotFound (LookupError)   no run has that id
    │   └── RunExpired              ... any more: it finished longer ago than the retention
    ├── RunAlreadyFinished          cancel() of a run that had already finished
    ├── RunNotFailed                redrive() of a run that is not FAILED
    ├── LeaseLost                   a worker's fenced write was refused: it must stop
    ├── NonDeterminismError         replay met a different step than the history holds
    ├── StepFailed                  a step's retries are exhausted (raised in the task body)
    │   ├── TokenFailed             a token the run waited for was failed from outside
    │   ├── TokenTimedOut           ... or was not completed (or heartbeaten) in time
    │   ├── ChildRunFailed          a child run the task waited for did not complete
    │   ├── ConditionNotMet         wait_for_condition used up its polls
    │   └── BatchFailed             a ctx.map / ctx.parallel broke its completion rule
    │                               (in rung.batch, beside the BatchResult it carries)
    ├── TokenNotFound (LookupError) no token has that id
    ├── TokenAlreadyResolved        the token was completed, failed or timed out before
    ├── UnknownQueue (LookupError)  no queue of that name (in the app's tasks or stored)
    ├── Contended                   an item kept changing under optimistic retries
    ├── NonRetryable                raised by user code: fail now, do not retry
    └── RetryAfter                  raised by user code: retry after this delay (in rung.retry,
                                    beside the policy: its delay is checked like every duration)

Misuse is never retried: ``InvalidConfig``, ``UsageError``, ``UnknownTask``,
``InvalidPayload`` and ``PayloadTooLarge`` raised inside a run (``ctx.wait(-5)``, a
child's payload that fails its model) fail the step, or the attempt, at once and for
good, whatever the retry policy says (``is_misuse``): the next attempt would only
repeat them. A user's own exceptions keep their policy.

Failures are stored as data (``ErrorInfo``: type, message, traceback), never
pickled; replay raises an error carrying the identical data.

Errors that user code must not swallow with ``except Exception`` (the unwinding of
a run that is being suspended or rescheduled) derive from ``BaseException`` and
live in ``rung._durable.signals``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """A failure as data: what is stored, shown in history and re-raised on replay."""

    type: str
    message: str
    traceback: str = ""

    def to_json(self) -> dict[str, str]:
        return {"type": self.type, "message": self.message, "traceback": self.traceback}

    def trimmed(self, chars: int) -> ErrorInfo:
        """This error with its traceback cut to its last ``chars`` characters (the
        frames nearest the error, and the error line), marked by a leading ``...``;
        itself if the traceback is no longer than that. Stored failures use it to stay
        far below DynamoDB's item size.
        """
        if len(self.traceback) <= chars:
            return self
        return ErrorInfo(self.type, self.message, "...\n" + self.traceback[-chars:])

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ErrorInfo:
        return cls(
            type=str(data.get("type", "Error")),
            message=str(data.get("message", "")),
            traceback=str(data.get("traceback", "")),
        )

    def __str__(self) -> str:
        return f"{self.type}: {self.message}" if self.message else self.type


class RungError(Exception):
    """Base class of every error rung raises on purpose."""


class InvalidConfig(RungError, ValueError):
    """A configuration value is invalid; raised when the object is constructed."""


class UsageError(RungError):
    """The API was used where it cannot work (e.g. a step inside a step)."""


class UnknownTask(RungError, LookupError):
    """``trigger`` named a task id that the app does not define."""

    def __str__(self) -> str:  # LookupError quotes its argument; we want the sentence
        return str(self.args[0]) if self.args else "unknown task"


class InvalidPayload(RungError, ValueError):
    """A payload failed the task's pydantic model or is not JSON-serializable."""


class ScheduleNotFound(RungError, LookupError):
    """No schedule has this id (it was never created, or it was deleted)."""


class InvalidMetadata(RungError, ValueError):
    """Run metadata (``metadata=``, ``ctx.metadata``) is not a mapping of names to JSON
    values, or would exceed its size limit; nothing was changed."""


class PayloadTooLarge(RungError, ValueError):
    """A payload or step result is larger than rung stores inline."""


class RunNotFound(RungError, LookupError):
    """No run with the given id exists."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "run not found"


class RunExpired(RunNotFound):
    """The run finished longer ago than the retention period (docs/retention.md): it
    is deleted, or about to be, and can no longer be read, replayed or redriven.

    Attributes:
        run_id: the run.
    """

    def __init__(self, message: str, *, run_id: str) -> None:
        super().__init__(message)
        self.run_id = run_id


class RunAlreadyFinished(RungError):
    """``cancel`` of a run that had already finished; nothing was changed.

    Attributes:
        run_id: the run.
        status: its terminal status ("COMPLETED", "FAILED", "CANCELED", ...).
    """

    def __init__(self, message: str, *, run_id: str, status: str) -> None:
        super().__init__(message)
        self.run_id = run_id
        self.status = status


class RunNotFailed(RungError):
    """``redrive`` of a run that is not FAILED; nothing was changed.

    Attributes:
        run_id: the run.
        status: its status now.
    """

    def __init__(self, message: str, *, run_id: str, status: str) -> None:
        super().__init__(message)
        self.run_id = run_id
        self.status = status


class LeaseLost(RungError):
    """A worker's fenced write was refused: another worker owns the run now.

    The worker that sees this must stop working on the run at once; whatever it
    would have written is the new owner's business.
    """


class NonDeterminismError(RungError):
    """A replay met a different step than the one recorded at that position."""


class NonRetryable(RungError):
    """Raise from a step or task to fail at once, without further attempts."""


class StepFailed(RungError):
    """A step failed for good; raised in the task body where it was called.

    It carries the stored error data of the step's last attempt, and replays
    raise an identical ``StepFailed``. Catch it to continue the task anyway.

    Attributes:
        step_id: the step's identity, ``"<scope>/<name>#<n>"``.
        error_type: the type name of the exception the step raised.
        message: that exception's message.
        traceback: its formatted traceback, as recorded.
    """

    def __init__(self, step_id: str, error: ErrorInfo) -> None:
        self.step_id = step_id
        self.error = error
        self.error_type = error.type
        self.message = error.message
        self.traceback = error.traceback
        super().__init__(f"step {step_id!r} failed: {error}")


class TokenFailed(StepFailed):
    """A token the run waited for was failed from outside (``Client.fail_token``).

    Raised by ``ctx.wait_for_token``; ``error_type`` and ``message`` are what the
    failing side passed. Replays raise an identical error.
    """


class TokenTimedOut(StepFailed):
    """A token was not completed within its ``timeout`` (or missed a heartbeat)."""


class ChildRunFailed(StepFailed):
    """A child run that ``ctx.trigger_and_wait`` waited for ended without completing.

    Raised in the parent's task body, where it can be caught; replays raise an
    identical error. ``error_type``/``message``/``traceback`` are the child's error.

    Attributes:
        run_id: the child run's id.
        status: how it ended: "FAILED", "CANCELED", "TIMED_OUT" or "EXPIRED".
        step_id: the parent's checkpoint of the wait (``"/<name>:wait#<n>"``).
    """

    def __init__(self, step_id: str, error: ErrorInfo, *, run_id: str, status: str) -> None:
        super().__init__(step_id, error)
        self.run_id = run_id
        self.status = status
        self.args = (f"child run {run_id} {status}: {error}",)


class ConditionNotMet(StepFailed):
    """``ctx.wait_for_condition`` reached its poll cap before the condition held."""


class TokenNotFound(RungError, LookupError):
    """No token has this id (it was never created, or has been deleted after expiry)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "token not found"


class TokenAlreadyResolved(RungError):
    """The token was completed, failed or timed out already; it cannot change again.

    Attributes:
        status: what it became: "COMPLETED", "FAILED" or "TIMED_OUT".
    """

    def __init__(self, message: str, status: str) -> None:
        super().__init__(message)
        self.status = status


class Contended(RungError):
    """An item kept changing under optimistic retries (many writers on one queue, token
    or run at once). Nothing was half-written: repeating the call is safe."""


class UnknownQueue(RungError, LookupError):
    """No queue of this name: the app's tasks do not declare it and nothing is stored."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown queue"


#: rung's own errors that say the API was misused: retrying cannot fix them.
MISUSE: tuple[type[RungError], ...] = (
    InvalidConfig,
    UsageError,
    UnknownTask,
    InvalidPayload,
    PayloadTooLarge,
)


def is_misuse(error: BaseException) -> bool:
    """Whether ``error`` is misuse of rung's API, which no retry can fix."""
    return isinstance(error, MISUSE)
