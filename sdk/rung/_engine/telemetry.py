"""What one invocation of a run reports, as it goes: its trace segments
(``rung._engine.tracing``) and one log line per lifecycle event, each with a
``rung_event`` key and the run's keys (``rung._engine.logs``).

The worker and the session call ``Telemetry`` at the points where the attempt's story
changes; it fans each call out to the trace and the log, so that a new kind of output
(metrics, events) is one more consumer here, not more calls in the worker.

Lifecycle lines (logger ``rung.worker``; docs/observability.md):

| ``rung_event`` | level | when |
|---|---|---|
| AttemptStarted | INFO | an invocation starts a new attempt |
| AttemptResumed | INFO | an invocation goes on with an attempt (after a wait, a continuation) |
| StepFailed | WARNING | a step failed for good (the task may still catch it) |
| RetryScheduled | WARNING | a step or the body failed; another attempt follows (``delay_seconds``)|
| Suspended | INFO | the run waits (``waiting_for``) |
| Continued | INFO | the run goes on in a fresh invocation (time short, a slot lost) |
| Parked / Deferred | INFO | the run waits for a slot or a rate of its queue |
| Completed | INFO | the run completed (``duration_ms`` since its trigger) |
| Failed / TimedOut | ERROR | the run failed, or reached its max_duration |
| Canceled | INFO | the attempt saw the run canceled and stopped |
| WorkerLost | WARNING | the worker of an invocation died; written by the one taking over |
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from aws_lambda_powertools.metrics import EphemeralMetrics, MetricUnit

from rung._aws.cloudwatch import NAMESPACE
from rung._aws.events import EventBus
from rung._aws.xray import XRay
from rung._engine.logs import RunLogContext
from rung._engine.otlp import OtlpExporter
from rung._engine.tracing import AttemptTrace
from rung._util.durations import format_duration
from rung._util.traces import TraceContext
from rung.errors import ErrorInfo
from rung.models import Run, RunStatus, StepRecord

log = logging.getLogger("rung.worker")

#: Every metric a worker reports (namespace ``rung``), and the reconciler's: what
#: template.yaml's alarms and dashboard may name (a test holds them to it).
METRICS = frozenset(
    {
        "RunsStarted",
        "RunsCompleted",
        "RunsFailed",
        "RunsTimedOut",
        "RunsCanceled",
        "RunsExpired",
        "RunDuration",
        "StepDuration",
        "StepFailures",
        "RetriesScheduled",
        "StartDelay",
        "WorkerLost",
        "Redriven",
        "RunningRuns",
        "ParkedRuns",
    }
)
#: A run's terminal status -> its event's detail-type and its metric.
_ENDS = {
    "COMPLETED": ("Run Completed", "RunsCompleted"),
    "FAILED": ("Run Failed", "RunsFailed"),
    "TIMED_OUT": ("Run Timed Out", "RunsTimedOut"),
    "CANCELED": ("Run Canceled", "RunsCanceled"),
    "EXPIRED": ("Run Expired", "RunsExpired"),
}


@dataclass
class Sinks:
    """Where a worker's reports go; each None is not sent. ``metrics`` takes one EMF
    document (a dict): on Lambda, printed as a line of the function's output."""

    app: str
    #: the stack's table: every metric is also recorded by it alone, the dimension the
    #: stack's alarms and dashboard watch (they know the table, not the app's name)
    table: str | None = None
    xray: XRay | None = None
    #: trace spans to an OpenTelemetry collector (``OTEL_TRACES_EXPORTER=otlp``)
    otlp: OtlpExporter | None = None
    metrics: Callable[[dict[str, Any]], None] | None = None
    events: EventBus | None = None


class Telemetry:
    """One invocation's reports (see the module docstring). Thread-safe as the trace is;
    lines are written at once, metrics and events when the invocation ends."""

    def __init__(self, sinks: Sinks, run: Run, started_at: datetime, owner: object = None) -> None:
        self.sinks = sinks
        self.trace = AttemptTrace(sinks.xray, run, started_at, sinks.otlp)
        self.run = run
        self.log_context = RunLogContext(
            run.run_id, run.task_id, run.attempt, run.trace_id, owner=owner, version=run.version
        )
        self._failed_step: str | None = None
        self._started_at = started_at
        self._metrics = _Metrics(sinks.app, run.task_id, sinks.table)

    def started(self, records: Mapping[str, StepRecord]) -> None:
        """The invocation claimed the run and read its checkpoints."""
        run = self.run
        self.trace.checkpoints_loaded = len(records)
        self.trace.timers_passed(records.values(), run.available_at)
        # The claim sets attempt_started_at (to its own time) only when it starts an attempt.
        resumed = run.attempt_started_at is not None and run.attempt_started_at != run.updated_at
        last = run.failures[-1] if run.failures else None
        took_over = (
            not resumed and last is not None and last.kind == "crash" and last.attempt < run.attempt
        )
        if not took_over and run.available_at is not None and run.available_at <= self._started_at:
            # Due -> started: the backlog (SQS's own metrics count waits as backlog too).
            # Not after a takeover: its due time is the dead attempt's (WorkerLost counts it).
            self._metrics.add("StartDelay", _ms(self._started_at - run.available_at), "ms")
        if run.lease_token == 1:
            self._metrics.add("RunsStarted", 1)
        _line(
            logging.INFO,
            "AttemptResumed" if resumed else "AttemptStarted",
            "run %s: attempt %d %s (task %s, %d checkpoints)",
            run.run_id,
            run.attempt,
            "resumed" if resumed else "started",
            run.task_id,
            len(records),
        )

    def checkpoint(self, record: StepRecord) -> None:
        """A checkpoint this invocation wrote."""
        self.trace.checkpoint(record)
        if record.kind == "step" and record.finished_at is not None:
            step = _step_name(record.step_id)
            took = _ms(record.finished_at - record.started_at)
            self._metrics.add("StepDuration", took, "ms", step=step)
            if record.outcome == "failed":
                self._metrics.add("StepFailures", 1, step=step)
        if record.kind == "step" and record.outcome == "failed" and record.error is not None:
            _line(
                logging.WARNING,
                "StepFailed",
                "run %s: step %s failed for good: %s: %s",
                self.run.run_id,
                record.step_id,
                record.error.type,
                record.error.message,
                error=record.error,
            )

    def step_failed(
        self,
        step_id: str,
        attempt: int,
        started_at: datetime,
        failed_at: datetime,
        error: ErrorInfo,
    ) -> None:
        """A step failed and will be retried (``finish("retrying")`` says when)."""
        self._failed_step = step_id
        self.trace.step_failed(step_id, attempt, started_at, failed_at, error)
        step = _step_name(step_id)
        self._metrics.add("StepDuration", _ms(failed_at - started_at), "ms", step=step)
        self._metrics.add("StepFailures", 1, step=step)

    def child_started(
        self, step_id: str, at: datetime, child_id: str, task_id: str, child: TraceContext
    ) -> None:
        self.trace.child_started(step_id, at, child_id, task_id, child)
        _line(
            logging.INFO,
            "ChildStarted",
            "run %s: started child run %s (task %s) at %s",
            self.run.run_id,
            child_id,
            task_id,
            step_id,
            child_run_id=child_id,
        )

    def parked(self, queue: str, key: str | None, at: datetime, reason: str) -> None:
        self.trace.parked(queue, key, at, reason)

    def queue_counts(self, queue: str, running: int, parked: int) -> None:
        """A flow-control queue's runs holding a slot and parked, as this run's admission
        left them (gauges: read their Maximum or Average)."""
        self._metrics.add("RunningRuns", running, queue=queue)
        self._metrics.add("ParkedRuns", parked, queue=queue)

    def finish(
        self,
        status: str,
        at: datetime,
        error: ErrorInfo | None = None,
        run_ended: str | None = None,
        *,
        delay: timedelta | None = None,
        reason: str | None = None,
    ) -> None:
        """The invocation ended: ``status`` says how (the attempt segment's
        ``rung_status``); ``run_ended``, the run's terminal status if it ended the run;
        ``delay`` the backoff of a retry, ``reason`` what a wait or a park is for."""
        self.trace.finish(status, at, error, run_ended)
        self._count(status, at, error, run_ended)
        run_id = self.run.run_id
        if status == "completed":
            took = at - self.run.created_at
            _line(
                logging.INFO,
                "Completed",
                "run %s completed (%s since its trigger)",
                run_id,
                format_duration(took),
                duration_ms=int(took.total_seconds() * 1000),
            )
        elif status == "retrying" and error is not None:
            where = f"step {self._failed_step}" if self._failed_step else "the task body"
            _line(
                logging.WARNING,
                "RetryScheduled",
                "run %s: %s failed (%s: %s); retry in %s",
                run_id,
                where,
                error.type,
                error.message,
                format_duration(delay or timedelta(0)),
                error=error,
                delay_seconds=(delay or timedelta(0)).total_seconds(),
            )
        elif status == "waiting":
            _line(
                logging.INFO,
                "Suspended",
                "run %s: waiting for %s",
                run_id,
                reason,
                waiting_for=reason,
            )
        elif status == "continued":
            _line(logging.INFO, "Continued", "run %s: continuing in a fresh invocation", run_id)
        elif status in ("parked", "deferred"):
            _line(
                logging.INFO,
                status.capitalize(),
                "run %s: %s (%s)",
                run_id,
                "waits for a slot" if status == "parked" else "start deferred",
                reason,
            )
        elif status == "canceled":
            _line(
                logging.INFO,
                "Canceled",
                "run %s was canceled; its attempt stopped before its next step",
                run_id,
            )
        elif status == "worker lost" and error is not None:
            _line(logging.WARNING, "WorkerLost", "run %s: %s", run_id, error.message, error=error)
        if run_ended == "FAILED" and status != "failed" and error is not None:
            status = "failed"  # a crash with no attempts left: the run's end, too
        if status in ("failed", "timed out") and error is not None:
            _line(
                logging.ERROR,
                "TimedOut" if status == "timed out" else "Failed",
                "run %s %s: %s: %s",
                run_id,
                "timed out" if status == "timed out" else "failed",
                error.type,
                error.message,
                error=error,
            )

    def _count(
        self, status: str, at: datetime, error: ErrorInfo | None, run_ended: str | None
    ) -> None:
        """The invocation's metrics and, if it ended the run, the run's event."""
        if status == "retrying":
            self._metrics.add("RetriesScheduled", 1)
        elif status == "worker lost":
            self._metrics.add("WorkerLost", 1)
        if run_ended in _ENDS:
            detail_type, metric = _ENDS[run_ended]
            took = at - self.run.created_at
            self._metrics.add(metric, 1)
            self._metrics.add("RunDuration", _ms(took), "ms")
            # A cancel is announced by whoever canceled (Lifecycle.cancel), once; an
            # attempt that merely saw it must not announce it again.
            if self.sinks.events is not None and run_ended != "CANCELED":
                detail = run_event(self.sinks.app, self.run, run_ended, took, error)
                self.sinks.events.send(detail_type, detail)
        if self.sinks.metrics is not None:
            for document in self._metrics.documents():
                self.sinks.metrics(document)


def report_expired(sinks: Sinks, run: Run, at: datetime, error: ErrorInfo) -> None:
    """A run ended EXPIRED, without an attempt (not started within its TTL): its
    metric, its event and a log line, as an attempt's end reports them."""
    detail_type, metric = _ENDS[RunStatus.EXPIRED]
    metrics = _Metrics(sinks.app, run.task_id, sinks.table)
    metrics.add(metric, 1)
    if sinks.events is not None:
        took = at - run.created_at
        sinks.events.send(detail_type, run_event(sinks.app, run, RunStatus.EXPIRED, took, error))
    if sinks.metrics is not None:
        for document in metrics.documents():
            sinks.metrics(document)
    _line(logging.WARNING, "Expired", "run %s expired: %s", run.run_id, error.message, error=error)


def run_event(
    app: str, run: Run, status: str, took: timedelta, error: ErrorInfo | None
) -> dict[str, Any]:
    """The ``detail`` of a run's event (its end, a redrive): docs/observability.md."""
    return {
        "run_id": run.run_id,
        "task": run.task_id,
        "app": app,
        "status": status,
        "attempt": run.attempt,
        "duration_ms": _ms(took),
        "error": {"type": error.type, "message": error.message} if error else None,
        "trace_id": run.trace_id,
        "parent_run_id": run.parent_run_id,
        "tags": list(run.tags),
    }


def _line(level: int, event: str, message: str, *args: Any, **fields: Any) -> None:
    error = fields.pop("error", None)
    if isinstance(error, ErrorInfo):
        fields["error_type"] = error.type
    log.log(level, message, *args, extra={"rung_event": event, **fields})


class _Metrics:
    """An invocation's metric values, as EMF documents (Powertools Metrics): one with
    the dimensions ``app`` and ``task``, one per step name with ``step`` as well; each
    also by ``table`` alone when it is known."""

    _UNITS = {"count": MetricUnit.Count, "ms": MetricUnit.Milliseconds}

    def __init__(self, app: str, task: str, table: str | None) -> None:
        self.app = app
        self.task = task
        self.table = table
        self._values: dict[tuple[str, str] | None, list[tuple[str, float, str]]] = {}
        self._lock = threading.Lock()

    def add(
        self,
        name: str,
        value: float,
        unit: str = "count",
        step: str | None = None,
        queue: str | None = None,
    ) -> None:
        key = ("step", step) if step is not None else ("queue", queue) if queue else None
        with self._lock:
            self._values.setdefault(key, []).append((name, value, unit))

    def documents(self) -> list[dict[str, Any]]:
        with self._lock:
            values, self._values = self._values, {}
        out = []
        for key, metrics in values.items():
            for batch in _at_most_100_each(metrics):
                out.append(self._document(key, batch))
        return out

    def _document(
        self, key: tuple[str, str] | None, metrics: list[tuple[str, float, str]]
    ) -> dict[str, Any]:
        emf = EphemeralMetrics(namespace=NAMESPACE)
        emf.add_dimension(name="app", value=self.app)
        if key is None or key[0] == "step":  # a queue's runs are of any of its tasks
            emf.add_dimension(name="task", value=self.task)
        if key is not None:
            emf.add_dimension(name=key[0], value=key[1])
        for name, value, unit in metrics:
            emf.add_metric(name=name, unit=self._UNITS[unit], value=value)
        document = without_service(dict(emf.serialize_metric_set()))
        if self.table:
            document["table"] = self.table
            alone = ["table", "queue"] if key is not None and key[0] == "queue" else ["table"]
            document["_aws"]["CloudWatchMetrics"][0]["Dimensions"].append(alone)
        return document


def without_service(document: dict[str, Any]) -> dict[str, Any]:
    """An EMF document without the ``service`` dimension Powertools adds when
    ``POWERTOOLS_SERVICE_NAME`` is set: rung's metrics are by app, task and table, as the
    stack's alarms and dashboard read them, whatever the function's service name."""
    document.pop("service", None)
    for directive in document["_aws"]["CloudWatchMetrics"]:
        directive["Dimensions"] = [
            [d for d in ds if d != "service"] for ds in directive["Dimensions"]
        ]
    return document


#: Values of one metric per EMF document (see ``_at_most_100_each``).
_EMF_VALUES = 99


def _at_most_100_each(
    metrics: list[tuple[str, float, str]],
) -> list[list[tuple[str, float, str]]]:
    """Batches in which no metric has 100 values or more. EMF takes at most 100 values of
    a metric per document (a ``ctx.map`` of 1,000 steps in one invocation makes 1,000
    StepDuration values), and Powertools prints (and drops from what it returns) a set
    that reaches 100: 99 per batch keeps every value ours to send."""
    batches: list[list[tuple[str, float, str]]] = []
    counts: list[dict[str, int]] = []
    for metric in metrics:
        name = metric[0]
        index = next((i for i, c in enumerate(counts) if c.get(name, 0) < _EMF_VALUES), None)
        if index is None:
            batches.append([])
            counts.append({})
            index = len(batches) - 1
        batches[index].append(metric)
        counts[index][name] = counts[index].get(name, 0) + 1
    return batches


def _ms(delta: timedelta) -> float:
    return max(delta.total_seconds() * 1000, 0.0)


def _step_name(step_id: str) -> str:
    """A step's name from its id: ``/map#1[0]/pack#2`` -> ``pack``."""
    return re.sub(r"#\d+$", "", step_id.rsplit("/", 1)[-1])
