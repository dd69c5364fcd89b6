"""CloudWatch metrics: the only module that writes or reads metric data.

rung reports metrics as CloudWatch embedded metric format (EMF) documents, built with
Powertools Metrics (``rung._engine.telemetry``). On Lambda a document is one line of the
function's output, and CloudWatch Logs extracts the metrics from it: no request, no
latency. No emulator extracts EMF, so ``rung dev`` and ``LocalEngine`` play that part:
``put_emf`` turns a document into the ``PutMetricData`` call CloudWatch would make,
and the metrics read back with ``GetMetricStatistics`` as on AWS.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

log = logging.getLogger("rung.metrics")

#: rung's metric namespace (docs/observability.md, Metrics).
NAMESPACE = "rung"


def is_emf(line: str) -> dict[str, Any] | None:
    """The EMF document in a log line, or None for any other line."""
    if '"_aws"' not in line:
        return None
    try:
        document = json.loads(line)
    except ValueError:
        return None
    if not isinstance(document, dict) or "CloudWatchMetrics" not in document.get("_aws", {}):
        return None
    return document


def put_emf(client: Any, document: dict[str, Any]) -> None:
    """Record an EMF document's metrics as CloudWatch would extract them (each value of
    each metric, once per dimension set). Never raises: a metric that cannot be
    recorded is reported on ``rung.metrics`` and dropped."""
    try:
        meta = document["_aws"]
        when = datetime.fromtimestamp(meta["Timestamp"] / 1000, UTC)
        for directive in meta["CloudWatchMetrics"]:
            for dimension_set in directive["Dimensions"]:
                dimensions = [{"Name": d, "Value": str(document[d])} for d in dimension_set]
                data = []
                for metric in directive["Metrics"]:
                    values = document[metric["Name"]]
                    for value in values if isinstance(values, list) else [values]:
                        data.append(
                            {
                                "MetricName": metric["Name"],
                                "Dimensions": dimensions,
                                "Timestamp": when,
                                "Value": float(value),
                                "Unit": metric.get("Unit", "None"),
                            }
                        )
                for start in range(0, len(data), 1000):  # PutMetricData's limit
                    client.put_metric_data(
                        Namespace=directive["Namespace"], MetricData=data[start : start + 1000]
                    )
    except Exception as exc:
        log.warning("could not record EMF metrics: %s", exc)


def metric_statistic(
    client: Any,
    name: str,
    dimensions: dict[str, str],
    start: datetime,
    end: datetime,
    statistic: str = "Sum",
    namespace: str = NAMESPACE,
) -> float:
    """One statistic (``Sum``, ``Maximum``, ``SampleCount``...) of a metric over
    [start, end), read with GetMetricStatistics in one period, as a dashboard would."""
    period = max(60, int((end - start).total_seconds()) // 60 * 60 + 60)
    out = client.get_metric_statistics(
        Namespace=namespace,
        MetricName=name,
        Dimensions=[{"Name": k, "Value": v} for k, v in dimensions.items()],
        StartTime=start,
        EndTime=end,
        Period=period,
        Statistics=[statistic],
    )
    values = [p.get(statistic, 0.0) for p in out.get("Datapoints", [])]
    if statistic == "Maximum":
        return max(values, default=0.0)
    if statistic == "Minimum":
        return min(values, default=0.0)
    return float(sum(values))
