"""rung: durable task execution for Python on your own AWS account.

Tasks are plain functions; every step is checkpointed to DynamoDB with a
conditional write; runs travel as SQS messages; retries resume at the failing
step. See README.md and docs/.
"""

from rung.app import App, Task
from rung.async_client import AsyncClient
from rung.async_context import AsyncContext
from rung.batch import BatchFailed, BatchItem, BatchResult, Completion
from rung.client import Client
from rung.context import Context, Metadata, Poll, StepInfo, current_step, step
from rung.errors import (
    ChildRunFailed,
    ConditionNotMet,
    Contended,
    ErrorInfo,
    InvalidConfig,
    InvalidMetadata,
    InvalidPayload,
    LeaseLost,
    NonDeterminismError,
    NonRetryable,
    PayloadTooLarge,
    RunAlreadyFinished,
    RunExpired,
    RungError,
    RunNotFailed,
    RunNotFound,
    ScheduleNotFound,
    StepFailed,
    TokenAlreadyResolved,
    TokenFailed,
    TokenNotFound,
    TokenTimedOut,
    UnknownQueue,
    UnknownTask,
    UsageError,
)
from rung.flow import Queue, QueueInfo, Rate
from rung.models import (
    ChildResult,
    Debounce,
    EventType,
    HistoryEvent,
    Offloaded,
    Run,
    RunHandle,
    RunPage,
    RunStatus,
    Token,
    TokenState,
    TriggerItem,
    TriggerResult,
    VersionInfo,
)
from rung.retry import RetryAfter, RetryPolicy
from rung.schedules import Cron, ScheduleEvent, ScheduleInfo

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    # ``rung.testing`` without an explicit import, as the README's example uses it.
    if name == "testing":
        import importlib

        return importlib.import_module("rung.testing")
    raise AttributeError(f"module 'rung' has no attribute {name!r}")


__all__ = [
    "App",
    "AsyncClient",
    "AsyncContext",
    "BatchFailed",
    "BatchItem",
    "BatchResult",
    "ChildResult",
    "ChildRunFailed",
    "Client",
    "Completion",
    "ConditionNotMet",
    "Context",
    "Cron",
    "Debounce",
    "ErrorInfo",
    "EventType",
    "HistoryEvent",
    "InvalidConfig",
    "InvalidMetadata",
    "InvalidPayload",
    "LeaseLost",
    "Metadata",
    "NonDeterminismError",
    "NonRetryable",
    "Offloaded",
    "PayloadTooLarge",
    "Poll",
    "Queue",
    "QueueInfo",
    "Rate",
    "RetryAfter",
    "RetryPolicy",
    "Run",
    "RunAlreadyFinished",
    "RunHandle",
    "RunPage",
    "RunNotFailed",
    "RunExpired",
    "RunNotFound",
    "RunStatus",
    "RungError",
    "ScheduleEvent",
    "ScheduleInfo",
    "ScheduleNotFound",
    "StepFailed",
    "StepInfo",
    "Task",
    "Token",
    "TokenAlreadyResolved",
    "TokenFailed",
    "TokenNotFound",
    "TokenState",
    "TokenTimedOut",
    "TriggerItem",
    "TriggerResult",
    "UnknownQueue",
    "Contended",
    "UnknownTask",
    "UsageError",
    "VersionInfo",
    "current_step",
    "step",
]
