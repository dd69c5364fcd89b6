"""Log lines by run id: every line written while a worker handles a run carries the
run's keys, rung's lines and the user's alike.

The worker binds the run for the length of an attempt (``bound``); ``RunContextFilter``,
installed on the handlers that write lines (the Lambda handler's, ``rung dev``'s,
``LocalEngine``'s), adds to each record written meanwhile, on any thread of the attempt
(``ctx.map`` branches copy the context):

    run_id, task, attempt, trace_id, version (where versions are in use), and
    step_id inside a step

Powertools' JSON formatter writes them as keys of the line, so that CloudWatch Logs
Insights filters on ``run_id`` (docs/observability.md).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass

from rung._durable.state import current_step_info

#: The keys a run's lines carry (a record may lack ``step_id`` and ``version``).
RUN_KEYS = ("run_id", "task", "attempt", "step_id", "trace_id", "version")


@dataclass(frozen=True)
class RunLogContext:
    run_id: str
    task: str
    attempt: int
    trace_id: str | None
    #: whose run it is (its worker's Sinks, shared by the workers of all versions of one
    #: engine): two LocalEngines in one process keep their lines apart
    owner: object = None
    #: the code version the attempt runs on (docs/versioning.md), if versions are in use
    version: str | None = None


current_run: ContextVar[RunLogContext | None] = ContextVar("rung_log_run", default=None)


@contextlib.contextmanager
def bound(context: RunLogContext) -> Iterator[None]:
    """Lines written in the enclosed code carry ``context``'s keys."""
    token = current_run.set(context)
    try:
        yield
    finally:
        current_run.reset(token)


class RunContextFilter(logging.Filter):
    """Adds the bound run's keys to every record (see the module docstring). With
    ``owner``, it passes only the records of that owner's runs (a LocalEngine's
    shipping handler); without, every record passes."""

    def __init__(self, owner: object = None) -> None:
        super().__init__()
        self.owner = owner

    def filter(self, record: logging.LogRecord) -> bool:
        context = current_run.get()
        if context is None:
            return self.owner is None
        if self.owner is not None and context.owner is not self.owner:
            return False
        record.run_id = context.run_id
        record.task = context.task
        record.attempt = context.attempt
        if context.trace_id is not None:
            record.trace_id = context.trace_id
        if context.version is not None:
            record.version = context.version
        step = current_step_info.get()
        if step is not None:
            record.step_id = step.step_id
        return True
