"""What a worker reports, on LocalStack: template.yaml's event bus and CloudWatch metrics.

A module of its own: test_localstack_dataplane.py's workers (a module fixture, with no
reports) would otherwise take this module's runs off the shared queue.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import rung
from rung._aws.cloudwatch import metric_statistic, put_emf
from rung._aws.events import EventBus
from rung._engine.telemetry import Sinks
from tests.integration.conftest import DataPlane, QueueWorkers

pytestmark = pytest.mark.slow

app = rung.App("localstack-reports")


@app.task(id="order")
def order(ctx: rung.Context, payload: dict[str, Any]) -> str:
    return ctx.step("charge", lambda: f"ch-{payload['id']}")


def _id(name: str) -> str:
    return f"{name}-{time.monotonic_ns()}"


def test_a_runs_end_is_an_event_on_the_stacks_bus_and_its_metrics_reach_cloudwatch(
    localstack_plane: DataPlane,
) -> None:
    # The worker reports as on Lambda, to LocalStack's EventBridge and CloudWatch (EMF
    # recorded as CloudWatch extracts it from a Lambda's output). LocalStack in host mode
    # accepts the events on the stack's bus but did not deliver them to a rule's queue
    # here, so the event is checked by EventBridge's answer to PutEvents; the embedded
    # emulator's tests read them back through a rule (test_dev_observability.py).
    bus = localstack_plane.outputs["EventBusName"]
    table = localstack_plane.outputs["TableName"]
    events: Any = localstack_plane.aws("events")
    cloudwatch: Any = localstack_plane.aws("cloudwatch")
    answers: list[dict[str, Any]] = []
    events.meta.events.register(
        "after-call.eventbridge.PutEvents", lambda parsed, **_: answers.append(parsed)
    )
    sinks = Sinks(
        app=app.name,
        table=table,
        metrics=lambda document: put_emf(cloudwatch, document),
        events=EventBus(events, bus),
    )
    started = datetime.now(UTC)
    with QueueWorkers(app, localstack_plane, sinks=sinks) as reporting:
        client = localstack_plane.client(app)
        handle = client.trigger("order", {"id": _id("reported")})
        run = reporting.wait(client, handle.run_id)
    completed = metric_statistic(
        cloudwatch,
        "RunsCompleted",
        {"table": table},
        started - timedelta(minutes=5),
        datetime.now(UTC) + timedelta(minutes=5),
    )

    assert run.status == "COMPLETED"
    assert len(answers) == 1  # one event: the run's end
    assert answers[0]["FailedEntryCount"] == 0 and answers[0]["Entries"][0]["EventId"]
    assert completed == 1
