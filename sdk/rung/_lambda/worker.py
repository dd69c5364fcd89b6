"""The worker function's handler (template.yaml: WorkerFunction, ``handler/worker.py``).

An adapter: each SQS record becomes a ``QueueMessage`` for ``rung._engine.worker.Worker``.
An ACKed message succeeds (Lambda deletes it). A KEPT message (its visibility already
set by the engine to when it must come back) or a POISONED one (it goes to the DLQ
after maxReceiveCount) is reported in ``batchItemFailures`` so Lambda leaves it queued.
While the invocation runs, a heartbeat keeps its batch's messages invisible for the
run lease plus a few seconds (``SqsQueue.hold``), so a dead invocation's messages come
back within about a minute instead of after the queue's visibility timeout; each
message's own final visibility change (a backoff, a wait) ends its hold.
Before any record is handled, worn messages of the whole batch (received half of
maxReceiveCount times) are renewed (``Worker.settle_worn``): should the invocation
die later, Lambda brings the batch back, and a batch-mate it never reached must not
be one receive closer to the DLQ for it.

Configuration, read on the first invocation of a warm container (so that importing
this module needs no environment):

    RUNG_APP                    module:attr of the user's rung.App (required)
    RUNG_TABLE_NAME             the DynamoDB table (required)
    RUNG_QUEUE_URL              the work queue (required)
    RUNG_MAX_RECEIVE_COUNT      the queue's DLQ maxReceiveCount (default 10)
    RUNG_LEASE_SECONDS          run lease, kept by a heartbeat every third of it: a
                                crashed attempt is retried about this long after it
                                died (default 30; docs/retries.md)
    RUNG_SLOT_LEASE_SECONDS     a queue slot's lease, renewed before steps: above the
                                function timeout (default 960)
    RUNG_MIN_TIME_LEFT_SECONDS  continue in a fresh invocation below this (default 10)
    RUNG_CALLBACK_URL           the token callback function's URL: the base of
                                ``Token.url`` (unset: tokens have no URL; docs/http.md)
    RUNG_TRACING                ``off``: send no trace segments (default on; see
                                docs/observability.md)
    AWS_XRAY_DAEMON_ADDRESS     set by Lambda with ``Tracing: Active``: segments go to
                                the daemon; without it, to the X-Ray API
    OTEL_TRACES_EXPORTER        ``otlp``: spans to an OpenTelemetry collector as well,
                                configured by the standard ``OTEL_EXPORTER_OTLP_*``
                                variables (default off; needs ``rung[otel]``)
    RUNG_VERSIONS               ``off``: do not pin runs to the function's version
                                (default on; docs/versioning.md)
    RUNG_HAND_OVER_SECONDS      how long a message handed to another version stays
                                invisible before that version's invocation holds it
                                (default 120)
    AWS_LAMBDA_FUNCTION_VERSION set by Lambda: the version this worker runs as
    AWS_ENDPOINT_URL            an emulator or LocalStack (default: AWS)

A message for a run pinned to another version is handed to that version
(``rung._lambda.handover``); an event marked ``"rungHandOver"`` is such a message.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import sys
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.logging.utils import copy_config_to_registered_loggers
from aws_lambda_powertools.utilities.batch import (
    BatchProcessor,
    EventType,
    process_partial_response,
)
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from rung._aws import sessions
from rung._aws.events import BUS_ENV, EventBus
from rung._aws.sqs import DEFAULT_MAX_RECEIVE_COUNT, QueueMessage, SqsQueue
from rung._aws.xray import XRay
from rung._engine.config import WorkerConfig
from rung._engine.heartbeat import Heartbeat
from rung._engine.logs import RunContextFilter
from rung._engine.otlp import OtlpExporter
from rung._engine.routing import Versioning
from rung._engine.telemetry import Sinks
from rung._engine.worker import Disposition, Worker
from rung._lambda._env import load_app, positive_int, require, store_and_queue
from rung._lambda.handover import HAND_OVER, HAND_OVER_SECONDS, LambdaHandOver
from rung._util.clock import SystemClock
from rung.app import App

logger = Logger()
# An entirely failed batch is still a partial-batch response, not an invocation error:
# KEEP is the normal outcome of a backoff, and errors would throttle the event source.
_processor = BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)


class MessageNotDone(Exception):
    """Raised for a record Lambda must leave in the queue (reported as a batch failure)."""


@functools.cache
def worker() -> Worker:
    """The Worker of this warm container, built from the environment on first use."""
    app = load_app(require("RUNG_APP", "module:attr of your rung.App, e.g. 'shop.tasks:app'"))
    if "POWERTOOLS_SERVICE_NAME" not in os.environ:
        logger.append_keys(service=app.name)
    # rung's own loggers ("rung.worker", ...) write the same structured JSON.
    copy_config_to_registered_loggers(source_logger=logger, include={"rung"})
    structured_logging(logger)
    store, queue = store_and_queue(
        positive_int("RUNG_MAX_RECEIVE_COUNT", DEFAULT_MAX_RECEIVE_COUNT)
    )
    config = WorkerConfig(
        lease_duration=timedelta(seconds=positive_int("RUNG_LEASE_SECONDS", 30)),
        slot_lease=timedelta(seconds=positive_int("RUNG_SLOT_LEASE_SECONDS", 960)),
        min_time_left=timedelta(seconds=positive_int("RUNG_MIN_TIME_LEFT_SECONDS", 10)),
        callback_url=os.environ.get("RUNG_CALLBACK_URL", "").strip() or None,
    )
    return Worker(app, store, queue, SystemClock(), config, sinks(app), versioning(queue))


def versioning(queue: SqsQueue) -> Versioning | None:
    """Runs are pinned to this function's version when it runs as a published version
    (``AWS_LAMBDA_FUNCTION_VERSION`` is a number: template.yaml's ``AutoPublishAlias``);
    as ``$LATEST`` (a function deployed without versions) they are not, unless
    ``RUNG_VERSIONS=off`` turns pinning off everywhere (docs/versioning.md)."""
    version = os.environ.get("AWS_LAMBDA_FUNCTION_VERSION", "")
    if not version.isdigit() or os.environ.get("RUNG_VERSIONS", "on") == "off":
        return None
    function = require("AWS_LAMBDA_FUNCTION_NAME", "set by Lambda: the function's name")
    # Lambda's own endpoint if it has one (rung dev's, rung._dev.versions.LocalLambda).
    endpoint = os.environ.get("AWS_ENDPOINT_URL_LAMBDA") or os.environ.get("AWS_ENDPOINT_URL")
    hold = timedelta(seconds=positive_int("RUNG_HAND_OVER_SECONDS", HAND_OVER_SECONDS))
    client = functools.partial(sessions.client, "lambda", endpoint)
    hand_over = LambdaHandOver(client, function, queue, version, hold)
    return Versioning(version, hand_over)


def sinks(app: App) -> Sinks:
    """Where the worker's reports go on Lambda: trace segments to X-Ray (the daemon) and,
    when ``OTEL_TRACES_EXPORTER`` names ``otlp``, to an OTLP collector; metrics as EMF
    lines of the function's output (CloudWatch extracts them), events to the bus named
    by ``RUNG_EVENT_BUS`` (none when unset)."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL") or None
    bus = os.environ.get(BUS_ENV) or None
    return Sinks(
        app=app.name,
        table=os.environ.get("RUNG_TABLE_NAME"),
        xray=XRay.from_environment(lambda: sessions.client("xray", endpoint, reporting=True)),
        otlp=OtlpExporter.from_environment(app.name),
        metrics=_print_emf,
        events=EventBus(sessions.client("events", endpoint, reporting=True), bus) if bus else None,
    )


def _print_emf(document: dict[str, Any]) -> None:
    # One line on stdout, as Powertools Metrics writes it: Lambda ships it to the log
    # group, where CloudWatch finds the "_aws" key and records the metrics.
    print(json.dumps(document, separators=(",", ":")), flush=True)


@logger.inject_lambda_context
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    engine = worker()
    if HAND_OVER in event:
        return _handed_over(engine, event, context)
    messages = {m.message_id: m for m in map(_message, event.get("Records", []))}
    # Worn messages first, before any other request: every request before it widens the
    # window in which a dying invocation ages its whole batch by one more receive.
    try:
        settled = engine.settle_worn(list(messages.values()))
    except Exception:  # each record's handling renews its own worn message then
        logger.exception("could not renew the batch's worn messages up front")
        settled = set()
    held = [m for m in messages.values() if m.message_id not in settled]
    with _held(engine, held):
        return _handle_batch(engine, messages, settled, event, context)


@contextlib.contextmanager
def _held(engine: Worker, messages: list[QueueMessage]) -> Iterator[None]:
    """Keep the batch's messages invisible for the lease plus a margin while the
    invocation lives (one request per ten messages now and at each beat)."""
    if not engine.config.heartbeat:
        yield
        return
    hold = engine.config.message_hold
    try:
        engine.queue.hold(messages, hold)
    except Exception:  # the queue's own visibility timeout still holds them
        logger.exception("could not shorten the batch's visibility")
    beat = Heartbeat(
        lambda: engine.queue.extend(hold) >= 0,
        engine.config.heartbeat_interval.total_seconds(),
        "messages",
    )
    try:
        with beat:
            yield
    finally:
        engine.queue.release_all()


def _handle_batch(
    engine: Worker,
    messages: dict[str, QueueMessage],
    settled: set[str],
    event: dict[str, Any],
    context: LambdaContext,
) -> dict[str, Any]:

    def record_handler(record: SQSRecord) -> None:
        if record.message_id in settled:
            return  # renewed or deleted already: nothing left to do
        message = messages[record.message_id]
        logger.append_keys(message_id=record.message_id)
        try:
            disposition = engine.handle(
                message, time_left=lambda: context.get_remaining_time_in_millis() / 1000
            )
        finally:
            logger.remove_keys(["message_id"])
        if disposition != Disposition.ACK:
            raise MessageNotDone(f"message {record.message_id}: {disposition}")

    return dict(process_partial_response(event, record_handler, _processor, context))


def _handed_over(engine: Worker, event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """A message the latest version's worker handed to this version (``handover``): it
    is handled as if received here, held while it is, and deleted here when the run no
    longer needs it (an asynchronous invocation has no batch response to do that)."""
    sender = event[HAND_OVER].get("from") if isinstance(event[HAND_OVER], dict) else None
    for raw in event.get("Records", []):
        message = _message(raw)
        logger.append_keys(message_id=message.message_id, handed_over_from=sender)
        try:
            with _held(engine, [message]):
                disposition = engine.handle(
                    message,
                    time_left=lambda: context.get_remaining_time_in_millis() / 1000,
                    handed_over=True,
                )
            if disposition == Disposition.ACK:
                engine.queue.delete(message)
        finally:
            logger.remove_keys(["message_id", "handed_over_from"])
    return {"batchItemFailures": []}


def structured_logging(source: Logger) -> None:
    """Every line of the process as JSON with the run's keys (docs/observability.md):
    rung's loggers (Powertools' handler, copied to them) and the task's own, which
    reach the root logger (Lambda's handler there, or one to stderr as in ``rung dev``),
    get Powertools' formatter and ``RunContextFilter``; so do the handlers the task's
    code made when its app was imported (your own Powertools ``Logger``'s). INFO lines
    are kept, so a completed run leaves its lifecycle lines."""
    root = logging.getLogger()
    # Only where a Lambda runtime owns the process (Lambda, rung dev's workers): a host
    # that imports the handler (a test) keeps its own root handlers as they are.
    on_lambda = bool(os.environ.get("AWS_LAMBDA_FUNCTION_NAME"))
    if on_lambda and not root.handlers:
        root.addHandler(logging.StreamHandler(sys.stderr))
    handlers = [*source.handlers, *logging.getLogger("rung").handlers]
    if on_lambda:
        handlers += root.handlers
    # The app is imported by now: the loggers its modules made have their handlers.
    for known in list(logging.Logger.manager.loggerDict.values()):
        if isinstance(known, logging.Logger) and not known.name.startswith("rung"):
            handlers += known.handlers
    for handler in {id(h): h for h in handlers}.values():
        if not any(isinstance(f, RunContextFilter) for f in handler.filters):
            handler.addFilter(RunContextFilter())
    for name in ("", "rung") if on_lambda else ("rung",):
        named = logging.getLogger(name)
        if named.level in (logging.NOTSET, logging.WARNING):  # unset, or Python's default
            named.setLevel(source.log_level)
        if name == "" and on_lambda:
            for handler in named.handlers:
                handler.setFormatter(source.registered_formatter)


def _message(raw: dict[str, Any]) -> QueueMessage:
    record = SQSRecord(raw)
    return QueueMessage(
        message_id=record.message_id,
        body=record.body,
        receipt_handle=record.receipt_handle,
        receive_count=int(record.attributes.approximate_receive_count),
        sent_at_ms=int(record.attributes.sent_timestamp),
        trace_header=record.attributes.aws_trace_header,
    )
