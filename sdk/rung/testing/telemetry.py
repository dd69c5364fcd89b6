"""What Lambda and CloudWatch do with a worker's reports, played on the embedded
emulator for ``LocalEngine``, and read back through the same AWS APIs a user would use
on AWS (docs/observability.md, "On rung dev and in tests"):

- trace segments go to the emulator's X-Ray (``PutTraceSegments``), read with
  ``BatchGetTraces``, and, when ``OTEL_TRACES_EXPORTER`` names ``otlp`` as the engine
  starts, as spans to the OTLP collector the ``OTEL_EXPORTER_OTLP_*`` variables name;
- log lines written while the engine's workers handle a run go, as JSON, to a log group
  (one stream per engine), read with ``FilterLogEvents``;
- EMF metric documents become metrics (``PutMetricData``, as CloudWatch extracts them
  from a Lambda's output), read with ``GetMetricStatistics``;
- events go to an EventBridge bus of the engine whose rule forwards rung's events to a
  queue, read with ``ReceiveMessage``.
"""

from __future__ import annotations

import contextlib
import json
import logging
from datetime import timedelta
from typing import Any

from rung._aws.cloudwatch import metric_statistic, put_emf
from rung._aws.events import SOURCE, EventBus
from rung._aws.logs import LogEvent, LogStream, run_events, stream_name
from rung._aws.xray import XRay
from rung._engine.logs import RunContextFilter
from rung._engine.otlp import OtlpExporter
from rung._engine.telemetry import Sinks
from rung._util.clock import SystemClock
from rung.app import App
from rung.models import Run

_RULE = "rung-events"


class LocalTelemetry:
    """A LocalEngine's reports on the emulator. ``client(service)`` makes a client of
    the emulator; ``name`` names this engine's log group, bus and events queue."""

    def __init__(self, app: str, name: str, client: Any, sqs: Any) -> None:
        self.app = app
        self.xray = XRay(client("xray"))
        self.otlp = OtlpExporter.from_environment(app)
        self.cloudwatch = client("cloudwatch")
        self._events = client("events")
        self._sqs = sqs
        self.event_bus = name
        self._events.create_event_bus(Name=name)
        self.events_queue_url = sqs.create_queue(QueueName=f"{name}-events")["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=self.events_queue_url, AttributeNames=["QueueArn"])[
            "Attributes"
        ]["QueueArn"]
        self._events.put_rule(
            Name=_RULE, EventBusName=name, EventPattern=json.dumps({"source": [SOURCE]})
        )
        self._events.put_targets(Rule=_RULE, EventBusName=name, Targets=[{"Id": "q", "Arn": arn}])
        self.log_group = f"/aws/lambda/{name}-worker"
        self.stream = LogStream(client("logs"), self.log_group, stream_name(SystemClock().now()))
        self._handler: logging.Handler | None = None
        self._targets: list[logging.Logger] = []

    def sinks(self) -> Sinks:
        return Sinks(
            app=self.app,
            table=self.event_bus,  # the engine's table has the same name
            xray=self.xray,
            otlp=self.otlp,
            metrics=lambda document: put_emf(self.cloudwatch, document),
            events=EventBus(self._events, self.event_bus),
        )

    def ship_logs(self, owner: object) -> None:
        """Play Lambda's log agent for the lines written while the engine's workers (of
        any version) handle a run: ``owner`` is the Sinks they share."""
        from aws_lambda_powertools.logging.formatter import LambdaPowertoolsFormatter

        handler = _ShippingHandler(self.stream)
        handler.setFormatter(LambdaPowertoolsFormatter(service=self.app, name="%(name)s"))
        handler.addFilter(RunContextFilter(owner=owner))
        # rung's lifecycle lines are INFO; a logger left at its default would drop them.
        rung_logger = logging.getLogger("rung")
        if rung_logger.level == logging.NOTSET:
            rung_logger.setLevel(logging.INFO)
        # The root logger sees what propagates; a logger configured not to propagate
        # (Powertools' copied config does that) gets the handler of its own.
        self._targets = [logging.getLogger()] + [
            known
            for known in list(logging.Logger.manager.loggerDict.values())
            if isinstance(known, logging.Logger) and not known.propagate
        ]
        for target in self._targets:
            target.addHandler(handler)
        self._handler = handler

    def trace(self, trace_id: str) -> list[dict[str, Any]]:
        latest: dict[str, dict[str, Any]] = {}
        for document in self.xray.segments(trace_id):
            if document.get("in_progress") and document["id"] in latest:
                continue
            latest[document["id"]] = document
        return sorted(latest.values(), key=lambda d: (d["start_time"], d.get("end_time", 0)))

    def logs(self, run_id: str) -> list[LogEvent]:
        self.stream.flush()
        return run_events(self.stream.client, self.log_group, run_id)

    def events(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        while True:
            got = self._sqs.receive_message(
                QueueUrl=self.events_queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0
            ).get("Messages", [])
            if not got:
                return out
            for message in got:
                out.append(json.loads(message["Body"]))
                self._sqs.delete_message(
                    QueueUrl=self.events_queue_url, ReceiptHandle=message["ReceiptHandle"]
                )

    def metric(self, dimensions: dict[str, str], name: str, statistic: str) -> float:
        now = SystemClock().now()  # CloudWatch keeps wall-clock time, not virtual
        start, end = now - timedelta(days=30), now + timedelta(days=30)
        return metric_statistic(self.cloudwatch, name, dimensions, start, end, statistic)

    def unhook(self) -> None:
        """Stop shipping log lines (the engine stops)."""
        if self._handler is not None:
            for target in self._targets:
                target.removeHandler(self._handler)
            self._handler = None

    def drop(self) -> None:
        """Leave nothing of this engine's behind in the shared emulator."""
        if self.otlp is not None:
            self.otlp.shutdown()
        with contextlib.suppress(Exception):
            self.stream.client.delete_log_group(logGroupName=self.log_group)
        with contextlib.suppress(Exception):
            self._events.remove_targets(Rule=_RULE, EventBusName=self.event_bus, Ids=["q"])
            self._events.delete_rule(Name=_RULE, EventBusName=self.event_bus)
            self._events.delete_event_bus(Name=self.event_bus)
            self._sqs.delete_queue(QueueUrl=self.events_queue_url)


class _ShippingHandler(logging.Handler):
    """Writes formatted lines to a CloudWatch Logs stream (flushed by the engine)."""

    def __init__(self, stream: LogStream) -> None:
        super().__init__()
        self.stream = stream

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.stream.write(int(record.created * 1000), self.format(record))
        except Exception:
            self.handleError(record)


class ReadBack:
    """``LocalEngine``'s reads of what its runs reported and of its dead letters, through
    the emulator's APIs."""

    app: App
    telemetry: LocalTelemetry | None
    sqs: Any
    dlq_url: str

    def get_run(self, run_id: str) -> Run:
        raise NotImplementedError

    def trace(self, run_id: str) -> list[dict[str, Any]]:
        """The X-Ray segment documents of the run's trace, read back through the
        emulator's X-Ray API (``BatchGetTraces``), as a user would on AWS: the run's
        segment, one per attempt (steps as subsegments) and one per wait. A segment
        sent twice (the run's, in progress and then complete) is listed once, complete.
        Empty with ``telemetry=False``."""
        trace_id = self.get_run(run_id).trace_id
        if self.telemetry is None or trace_id is None:
            return []
        return self.telemetry.trace(trace_id)

    def logs(self, run_id: str) -> list[LogEvent]:
        """The run's log lines (rung's lifecycle lines and the task's own), read back
        through the emulator's CloudWatch Logs API (``FilterLogEvents`` on the engine's
        log group, ``telemetry.log_group``), oldest first; ``LogEvent.fields`` has a
        line's JSON keys (``run_id``, ``task``, ``attempt``, ``step_id``, ``trace_id``,
        ``rung_event``...). Times are wall-clock: virtual time does not move log lines.
        Empty with ``telemetry=False``."""
        return self.telemetry.logs(run_id) if self.telemetry is not None else []

    def events(self) -> list[dict[str, Any]]:
        """The events rung sent since the last call (a run's end, a redrive), as
        EventBridge delivered them through a rule to a queue: each a dict with
        ``detail-type``, ``source`` (``"rung"``) and ``detail`` (run id, task, status,
        error, trace id, duration). Empty with ``telemetry=False``."""
        return self.telemetry.events() if self.telemetry is not None else []

    def metric(
        self,
        name: str,
        task: str | None = None,
        *,
        step: str | None = None,
        queue: str | None = None,
        statistic: str = "Sum",
    ) -> float:
        """A statistic (default ``Sum``; ``Maximum`` for the queue gauges) of a rung
        metric (namespace ``rung``; docs/observability.md) of this engine's app, read back
        through the emulator's CloudWatch API (``GetMetricStatistics``) as a dashboard
        reads it: of one task (and one step name, for step metrics), or of one queue
        (``RunningRuns``, ``ParkedRuns``). 0 with ``telemetry=False``."""
        if self.telemetry is None:
            return 0.0
        dimensions = {"app": self.app.name}
        for dimension, value in (("task", task), ("step", step), ("queue", queue)):
            if value is not None:
                dimensions[dimension] = value
        return self.telemetry.metric(dimensions, name, statistic)

    def dead_letters(self) -> list[str]:
        """Bodies of the messages that reached the DLQ (received, then left in place)."""
        out = self.sqs.receive_message(
            QueueUrl=self.dlq_url, MaxNumberOfMessages=10, VisibilityTimeout=0, WaitTimeSeconds=0
        )
        return [m["Body"] for m in out.get("Messages", [])]
