"""The reconciler function's handler (template.yaml: ReconcilerFunction,
``handler/reconciler.py``).

An adapter: each invocation (an EventBridge scheduled event, whose content is
ignored) runs one pass of ``rung._engine.reconciler.Reconciler`` and returns its report as a
dict. A pass is idempotent and safe beside workers and other passes, so an overlapping
or retried invocation does no harm.

Configuration, read on the first invocation of a warm container (so that importing
this module needs no environment):

    RUNG_TABLE_NAME               the DynamoDB table (required)
    RUNG_QUEUE_URL                the work queue (required)
    RUNG_RECONCILE_GRACE_SECONDS  how long past due a run must be to be re-driven
                                  (default 300)
    RUNG_RETENTION_DAYS           how long finished runs are kept (default 30; the
                                  pass deletes those past it, docs/retention.md)
    RUNG_SWEEP_LIMIT              the most expired runs one pass deletes (default 20000)
    AWS_ENDPOINT_URL              an emulator or LocalStack (default: AWS)

It needs no RUNG_APP: it reads run items and sends run ids, and never imports task code.
"""

from __future__ import annotations

import functools
import json
import os
from datetime import timedelta
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.logging.utils import copy_config_to_registered_loggers
from aws_lambda_powertools.metrics import EphemeralMetrics, MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from rung._aws.cloudwatch import NAMESPACE
from rung._engine.reconciler import DEFAULT_GRACE, DEFAULT_SWEEP_LIMIT, Reconciler
from rung._engine.telemetry import without_service
from rung._lambda._env import positive_int, store_and_queue
from rung._util.clock import SystemClock

logger = Logger(service=os.environ.get("POWERTOOLS_SERVICE_NAME") or "rung-reconciler")


def redriven_metric(count: int) -> dict[str, Any]:
    """The pass's ``Redriven`` metric (namespace ``rung``, dimension ``table``: the
    reconciler knows no app) as an EMF document: the stack's RedrivesAlarm watches it."""
    metrics = EphemeralMetrics(namespace=NAMESPACE)
    metrics.add_dimension(name="table", value=os.environ.get("RUNG_TABLE_NAME", ""))
    metrics.add_metric(name="Redriven", unit=MetricUnit.Count, value=count)
    return without_service(dict(metrics.serialize_metric_set()))


def _print_emf(document: dict[str, Any]) -> None:
    print(json.dumps(document, separators=(",", ":")), flush=True)  # CloudWatch extracts it


@functools.cache
def reconciler() -> Reconciler:
    """The Reconciler of this warm container, built from the environment on first use."""
    # rung's own loggers ("rung.reconciler" logs each re-drive) write the same JSON.
    copy_config_to_registered_loggers(source_logger=logger, include={"rung"})
    store, queue = store_and_queue()
    grace = positive_int("RUNG_RECONCILE_GRACE_SECONDS", int(DEFAULT_GRACE.total_seconds()))
    sweep = positive_int("RUNG_SWEEP_LIMIT", DEFAULT_SWEEP_LIMIT)
    return Reconciler(store, queue, SystemClock(), timedelta(seconds=grace), sweep_limit=sweep)


@logger.inject_lambda_context
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    report = reconciler().run_once()
    summary = report.to_dict()
    _print_emf(redriven_metric(len(report.redriven)))
    logger.info(
        "reconcile pass: %d run(s) re-driven of %d stranded; %d expired run(s) deleted",
        len(report.redriven),
        report.examined,
        report.expired.runs,
        extra={"reconcile": {k: v for k, v in summary.items() if k != "redriven"}},
    )
    return summary
