"""What a deploy costs the runs still on an older version: the hand-over's requests.

A run waits for a token on version 1 of the worker; its token is answered and its
message delivered (a) to version 1 itself, as when no deploy happened, and (b) to
version 2, the latest after a deploy, which hands it over to version 1
(docs/versioning.md). Every AWS request of each path is counted at the botocore layer,
through handler/worker.py as Lambda runs it, on the embedded emulator: the event source
mapping's own (the receive that got the message, the delete of a message done with),
the latest version's, and the old version's.

moto cannot run a Lambda function, so the asynchronous invoke is recorded and answered
202 at the botocore layer, and the old version's handler is then called with its event
(tests/functional/lambda_deployment.py, ``WorkerFunction``); it is counted once, as the
request it is on AWS.

Run it: ``.venv/bin/python bench/versions.py``. Results go to bench/results/versions.json.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import rung  # noqa: E402 - the repository root is on the path now
from rung._aws import sessions  # noqa: E402
from rung._aws.dynamodb import DynamoStore  # noqa: E402
from rung._aws.emulator import EmbeddedEmulator  # noqa: E402
from rung._aws.sqs import SqsQueue  # noqa: E402
from rung._util.clock import SystemClock  # noqa: E402
from tests.functional import versioned_app  # noqa: E402
from tests.functional.lambda_deployment import (  # noqa: E402
    REGION,
    Deployment,
    WorkerFunction,
)

RESULTS = ROOT / "bench" / "results" / "versions.json"
ROUNDS = 5
SERVICES = {"dynamodb": "DynamoDB", "sqs": "SQS", "lambda": "Lambda"}


class Meter:
    """Requests by (service, operation), from every client rung makes."""

    def __init__(self) -> None:
        self.counts: Counter[tuple[str, str]] = Counter()

    def hook(self, client: Any) -> None:
        service = client.meta.service_model.service_name

        def count(model: Any, **_: Any) -> None:
            self.counts[(SERVICES.get(service, service), model.name)] += 1

        client.meta.events.register("after-call", count)

    def take(self) -> Counter[tuple[str, str]]:
        taken, self.counts = self.counts, Counter()
        return taken


def _deployment(endpoint: str) -> Deployment:
    name = f"rung-bench-versions-{secrets.token_hex(4)}"
    dynamodb = sessions.client("dynamodb", endpoint, REGION)
    sqs = sessions.client("sqs", endpoint, REGION)
    store = DynamoStore(dynamodb, name)
    store.create_table()
    queue_url, dlq = SqsQueue.create(sqs, name, visibility_timeout=timedelta(seconds=60))
    arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])
    os.environ.update(RUNG_TABLE_NAME=name, RUNG_QUEUE_URL=queue_url)
    client = rung.Client._from_parts(
        versioned_app.v2, store, SqsQueue(sqs, queue_url), SystemClock()
    )
    return Deployment(client, sqs, queue_url, arn["Attributes"]["QueueArn"], dlq, store)


def _waiting_on_v1(deployed: Deployment, function: WorkerFunction) -> None:
    """A run started by version 1, waiting for its token, which is then answered."""
    function.run_as("1")
    run_id = deployed.client.trigger("review", "o-1").run_id
    deployed.deliver(deployed.receive())
    [token] = deployed.client.list_tokens(run_id)
    deployed.client.complete_token(token.id, "yes")


def _esm(messages: list[dict[str, Any]], response: dict[str, Any]) -> Counter[tuple[str, str]]:
    """The event source mapping's requests for one batch: the receive that got it and
    one DeleteMessageBatch for the messages done with."""
    failed = {f["itemIdentifier"] for f in response["batchItemFailures"]}
    done = [m for m in messages if m["MessageId"] not in failed]
    counts = Counter({("SQS", "ReceiveMessage"): 1})
    if done:
        counts[("SQS", "DeleteMessageBatch")] += 1
    return counts


def measure(
    deployed: Deployment, function: WorkerFunction, meter: Meter
) -> dict[str, Counter[tuple[str, str]]]:
    paths: dict[str, Counter[tuple[str, str]]] = {}
    # (a) no deploy: version 1 gets its own run's message; (b) after a deploy, version
    # 2 gets it and hands it over to version 1.
    for path, receiver in (("own version", "1"), ("hand-over (latest)", "2")):
        _waiting_on_v1(deployed, function)
        function.run_as(receiver)
        messages = deployed.receive()
        meter.take()
        response = deployed.deliver(messages)
        paths[path] = meter.take() + _esm(messages, response)
    function.run_handed_over()
    paths["hand-over (old version)"] = meter.take()
    return paths


def main() -> int:
    emulator = EmbeddedEmulator.shared()
    endpoint = emulator.endpoint_url
    os.environ.update(
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID="test",
        AWS_SECRET_ACCESS_KEY="test",
        AWS_REGION=REGION,
        AWS_DEFAULT_REGION=REGION,
        RUNG_TRACING="off",
    )
    deployed = _deployment(endpoint)
    function = WorkerFunction.create(
        endpoint,
        f"{deployed.store.table}-worker",
        os.environ.__setitem__,
        "tests.functional.versioned_app",
    )
    meter = Meter()
    function.hooks.append(meter.hook)
    rounds = []
    try:
        for _ in range(ROUNDS):
            rounds.append(measure(deployed, function, meter))
    finally:
        function.restore()
    # The counts are deterministic; every round must agree.
    assert all(r == rounds[0] for r in rounds), rounds
    paths = rounds[0]
    own = sum(paths["own version"].values())
    handed = sum(paths["hand-over (latest)"].values()) + sum(
        paths["hand-over (old version)"].values()
    )
    table = Table(title="requests to move one run one step after its token is answered")
    table.add_column("path")
    table.add_column("DynamoDB", justify="right")
    table.add_column("SQS", justify="right")
    table.add_column("Lambda", justify="right")
    table.add_column("requests")
    for name, counts in paths.items():
        by_service: Counter[str] = Counter()
        for (service, _), n in counts.items():
            by_service[service] += n
        table.add_row(
            name,
            str(by_service["DynamoDB"]),
            str(by_service["SQS"]),
            str(by_service["Lambda"]),
            ", ".join(f"{op} {n}" for (_, op), n in sorted(counts.items())),
        )
    console = Console(width=160)
    console.print(table)
    console.print(
        f"own version: {own} requests; after a deploy: {handed} "
        f"({handed - own:+d}, ratio {handed / own:.2f}); runs on the latest pay nothing extra"
    )
    RESULTS.write_text(
        json.dumps(
            {
                "paths": {
                    name: {f"{s} {op}": n for (s, op), n in sorted(c.items())}
                    for name, c in paths.items()
                },
                "own_version_requests": own,
                "after_a_deploy_requests": handed,
                "extra_requests_per_handed_over_message": handed - own,
            },
            indent=2,
        )
        + "\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
