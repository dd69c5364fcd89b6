"""OTLP: a run's trace sent to any OpenTelemetry collector (Datadog, Honeycomb, Grafana,
the ADOT collector...) beside X-Ray, when ``OTEL_TRACES_EXPORTER`` names ``otlp``.

The spans are the X-Ray segment documents of one attempt (``rung._engine.tracing``,
``AttemptTrace.finish``), converted one for one, so both backends show the same trace:

- trace id: the X-Ray trace id's 32 hex digits (``1-5f84c7a1-0123...`` ->
  ``5f84c7a10123...``), the form X-Ray and W3C ``traceparent`` share;
- span id: the segment's id; parent: its ``parent_id`` or, for a subsegment nested in a
  segment, that segment;
- attributes: the annotations and the ``metadata.rung`` values, as ``rung.<name>``
  (``rung_run_id`` -> ``rung.run_id``, ``result_bytes`` -> ``rung.result_bytes``);
- status: ERROR with ``<type>: <message>``, ``error.type`` and an ``exception`` event for
  a ``fault``; an attempt marked ``error`` only (it ended in a retry, the run's plan) is
  OK with ``rung.error.type`` / ``rung.error.message`` and the event;
- a segment still in progress (the run's, sent by its first attempt) is not exported: an
  OTLP span is sent once, complete, so the run's span leaves with the attempt that ends
  the run.

Spans are built as SDK ``ReadableSpan`` objects with explicit span contexts and handed
to the OTLP/HTTP protobuf exporter, which reads the standard ``OTEL_EXPORTER_OTLP_*``
variables (endpoint, headers, compression, certificates, timeout) itself. No global
tracer provider is set: a task's own OpenTelemetry setup is left alone.

OpenTelemetry is an optional extra (``pip install 'rung[otel]'``), imported only when
export is turned on. Sending never fails a run: an error is logged (``rung.tracing``,
WARNING) and the spans are dropped; the export waits at most the exporter's timeout,
which rung shortens to ``DEFAULT_TIMEOUT_SECONDS`` unless ``OTEL_EXPORTER_OTLP_TIMEOUT``
or ``OTEL_EXPORTER_OTLP_TRACES_TIMEOUT`` sets it (in seconds, as the Python exporter
reads them; the OpenTelemetry spec says milliseconds).
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.sdk.trace.export import SpanExporter

log = logging.getLogger("rung.tracing")

#: OpenTelemetry's switch: a comma-separated list of exporters; ``otlp`` turns export on.
EXPORTER_ENV = "OTEL_TRACES_EXPORTER"
#: OpenTelemetry's off switch for the whole SDK (``true``).
DISABLED_ENV = "OTEL_SDK_DISABLED"
#: The wait for one export (its retries included) when no OTLP timeout is set: a run's
#: invocation waits for its export, so a collector that is down must cost it little.
DEFAULT_TIMEOUT_SECONDS = 2.0
_TIMEOUT_ENVS = ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT")
_PROTOCOL_ENVS = ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
_ENDPOINT_ENVS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
_XRAY_TRACE_ID = re.compile(r"^1-([0-9a-f]{8})-([0-9a-f]{24})$")
#: metadata values that are X-Ray trace ids: exported in the 32-hex form too
_TRACE_ID_KEYS = frozenset({"child_trace_id", "parent_trace_id"})


def otlp_requested() -> bool:
    """Whether the environment asks for OTLP export of traces (off by default)."""
    if os.environ.get(DISABLED_ENV, "").strip().lower() == "true":
        return False
    names = os.environ.get(EXPORTER_ENV, "")
    return "otlp" in {name.strip().lower() for name in names.split(",")}


class OtlpExporter:
    """Converts and sends the documents of one attempt (see the module docstring).

    ``exporter``: an OpenTelemetry ``SpanExporter`` (the OTLP/HTTP one); ``resource``:
    the ``service.name`` and other resource attributes of every span. Thread-safe: the
    workers of a ``LocalEngine`` share one.
    """

    def __init__(self, exporter: SpanExporter, resource: Resource, endpoint: str) -> None:
        self._exporter = exporter
        self._resource = resource
        self.endpoint = endpoint
        self._lock = threading.Lock()

    @classmethod
    def from_environment(cls, app: str) -> OtlpExporter | None:
        """The exporter this process should use: None unless ``OTEL_TRACES_EXPORTER``
        names ``otlp`` (and then None, with an ERROR line, if the extra is missing)."""
        if not otlp_requested():
            return None
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                OTLPSpanExporter,
            )
            from opentelemetry.sdk.resources import Resource
        except ImportError as exc:
            log.error(
                "%s=%s asks for OTLP export of traces, but OpenTelemetry is not installed "
                "(%s): install rung with its 'otel' extra, pip install 'rung[otel]'; "
                "until then no spans are exported (X-Ray tracing is not affected)",
                EXPORTER_ENV,
                os.environ.get(EXPORTER_ENV),
                exc,
            )
            return None
        for name in _PROTOCOL_ENVS:
            protocol = os.environ.get(name, "").strip()
            if protocol and protocol != "http/protobuf":
                log.warning(
                    "%s=%s: rung exports traces over OTLP/HTTP with protobuf only; "
                    "point the endpoint at the collector's HTTP port (4318)",
                    name,
                    protocol,
                )
                break
        timeout = None if any(os.environ.get(n) for n in _TIMEOUT_ENVS) else DEFAULT_TIMEOUT_SECONDS
        exporter = OTLPSpanExporter(timeout=timeout)
        endpoint = next((os.environ[n] for n in _ENDPOINT_ENVS if os.environ.get(n)), "")
        return cls(exporter, Resource.create(_resource_attributes(app)), endpoint or "default")

    def export(self, documents: Iterable[Mapping[str, Any]]) -> None:
        """Send the documents of one attempt as spans; never raises (tracing must not
        fail a run)."""
        try:
            spans = to_spans(documents, self._resource)
            if not spans:
                return
            from opentelemetry.sdk.trace.export import SpanExportResult

            with self._lock:
                result = self._exporter.export(spans)
            if result is not SpanExportResult.SUCCESS:
                log.warning(
                    "could not send %d spans to the OTLP endpoint %s (see the exporter's "
                    "log line before this one)",
                    len(spans),
                    self.endpoint,
                )
        except Exception as exc:
            log.warning("could not send spans to the OTLP endpoint %s: %s", self.endpoint, exc)

    def shutdown(self) -> None:
        with self._lock:
            self._exporter.shutdown()


def _resource_attributes(app: str) -> dict[str, str]:
    """``service.name`` = the app's name, unless the environment names the service
    (``OTEL_SERVICE_NAME``, or ``service.name`` in ``OTEL_RESOURCE_ATTRIBUTES``): the
    SDK reads those itself, and attributes given here would override them."""
    if os.environ.get("OTEL_SERVICE_NAME"):
        return {}
    given = os.environ.get("OTEL_RESOURCE_ATTRIBUTES", "")
    if any(pair.partition("=")[0].strip() == "service.name" for pair in given.split(",")):
        return {}
    return {"service.name": app}


def otel_trace_id(xray_trace_id: str) -> int:
    """An X-Ray trace id as an OpenTelemetry one: ``1-<8 hex>-<24 hex>`` -> 32 hex."""
    match = _XRAY_TRACE_ID.match(xray_trace_id)
    if match is None:
        raise ValueError(f"not an X-Ray trace id: {xray_trace_id!r}")
    return int(match[1] + match[2], 16)


def to_spans(documents: Iterable[Mapping[str, Any]], resource: Resource) -> list[ReadableSpan]:
    """The complete spans of X-Ray segment documents: segments with their nested
    subsegments, and independent subsegments (``type``: ``subsegment``)."""
    return [
        _span(document, trace_id, parent, resource)
        for document, trace_id, parent in _flatten(documents)
    ]


def _flatten(
    documents: Iterable[Mapping[str, Any]],
) -> Iterator[tuple[Mapping[str, Any], int, tuple[int, bool] | None]]:
    """Each complete document with its trace id and parent (span id, remote?)."""
    for document in documents:
        if document.get("in_progress"):
            continue  # sent again, complete, by the attempt that ends it
        trace_id = otel_trace_id(document["trace_id"])
        parent_id = document.get("parent_id")
        # A parent named by id was sent by another document, maybe another process.
        yield document, trace_id, (int(parent_id, 16), True) if parent_id else None
        yield from _nested(document, trace_id)


def _nested(
    segment: Mapping[str, Any], trace_id: int
) -> Iterator[tuple[Mapping[str, Any], int, tuple[int, bool] | None]]:
    for subsegment in segment.get("subsegments", []):
        if subsegment.get("in_progress"):
            continue
        yield subsegment, trace_id, (int(segment["id"], 16), False)
        yield from _nested(subsegment, trace_id)


def _span(
    document: Mapping[str, Any],
    trace_id: int,
    parent: tuple[int, bool] | None,
    resource: Resource,
) -> ReadableSpan:
    from opentelemetry.sdk.trace import Event, ReadableSpan
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope
    from opentelemetry.trace import SpanContext, Status, StatusCode, TraceFlags

    def context(span_id: int, remote: bool) -> SpanContext:
        flags = TraceFlags(TraceFlags.SAMPLED)
        return SpanContext(trace_id, span_id, is_remote=remote, trace_flags=flags)

    end = _ns(document["end_time"])
    attributes = _attributes(document)
    events = []
    status = Status(StatusCode.UNSET)
    cause = _exception(document)
    if cause is not None:
        error_type, message = cause
        events.append(
            Event(
                "exception",
                {"exception.type": error_type, "exception.message": message},
                timestamp=end,
            )
        )
        if document.get("fault"):
            status = Status(StatusCode.ERROR, f"{error_type}: {message}")
            attributes["error.type"] = error_type
        else:  # marked ``error``: the attempt ended in a retry, which is the run's plan
            status = Status(StatusCode.OK)
            attributes["rung.error.type"] = error_type
            attributes["rung.error.message"] = message
    return ReadableSpan(
        name=document["name"],
        context=context(int(document["id"], 16), False),
        parent=context(*parent) if parent is not None else None,
        resource=resource,
        attributes=attributes,
        events=events,
        status=status,
        start_time=_ns(document["start_time"]),
        end_time=end,
        instrumentation_scope=InstrumentationScope("rung"),
    )


def _attributes(document: Mapping[str, Any]) -> dict[str, Any]:
    attributes: dict[str, Any] = {}
    for key, value in document.get("annotations", {}).items():
        attributes[f"rung.{key.removeprefix('rung_')}"] = value
    for key, value in document.get("metadata", {}).get("rung", {}).items():
        if value is None:
            continue
        if key in _TRACE_ID_KEYS and isinstance(value, str):
            value = _as_otel(value)
        elif not isinstance(value, str | bool | int | float):
            value = json.dumps(value)
        attributes[f"rung.{key}"] = value
    return attributes


def _as_otel(xray_trace_id: str) -> str:
    try:
        return f"{otel_trace_id(xray_trace_id):032x}"
    except ValueError:
        return xray_trace_id


def _exception(document: Mapping[str, Any]) -> tuple[str, str] | None:
    exceptions = document.get("cause", {}).get("exceptions", [])
    if not exceptions:
        return None
    first = exceptions[0]
    return str(first.get("type", "")), str(first.get("message", ""))


def _ns(seconds: float) -> int:
    # via microseconds (what a datetime holds): a float of ns past 2^53 would be off
    return round(seconds * 1_000_000) * 1000
