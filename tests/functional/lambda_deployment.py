"""The worker function deployed on the emulator, for the tests that call handler/worker.py
as Lambda runs it (test_lambda_handler.py, test_lambda_versions.py).

The emulator (moto) cannot run Lambda code (invoking needs Docker), so these tests
play the event source mapping themselves: receive from the queue, build the event
Lambda would send, call ``lambda_handler`` with a fake context, then delete the
records that were not reported in ``batchItemFailures``, as the mapping does.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from aws_lambda_powertools.utilities.typing import LambdaContext
from moto.server import ThreadedMotoServer

import rung
from handler import worker as worker_module
from handler.worker import lambda_handler
from rung._aws import sessions
from rung._aws.dynamodb import DynamoStore
from rung._aws.sqs import SqsQueue
from rung._util.clock import SystemClock
from tests.functional import handler_app

REGION = "us-east-1"


class FakeLambdaContext(LambdaContext):
    """What Lambda passes as ``context``; only the remaining time matters to rung."""

    def __init__(self, remaining_ms: int | list[int] = 600_000) -> None:
        self._function_name = "rung-worker"
        self._function_version = "$LATEST"
        self._invoked_function_arn = f"arn:aws:lambda:{REGION}:123456789012:function:rung-worker"
        self._memory_limit_in_mb = 512
        self._aws_request_id = secrets.token_hex(16)
        self._log_group_name = "/aws/lambda/rung-worker"
        self._log_stream_name = "2024/01/01/[$LATEST]0123456789abcdef"
        self._remaining_ms = remaining_ms

    def get_remaining_time_in_millis(self) -> int:  # type: ignore[override]
        # A list plays a clock running down: one reading per call, the last one repeats.
        if isinstance(self._remaining_ms, list):
            if len(self._remaining_ms) > 1:
                return self._remaining_ms.pop(0)
            return self._remaining_ms[0]
        return self._remaining_ms


@dataclass
class Deployment:
    """The table and queue as deployed, the client a user triggers runs with, and the SQS API."""

    client: rung.Client
    sqs: Any
    queue_url: str
    queue_arn: str
    dead_letter_url: str
    store: DynamoStore

    def send_raw(self, body: str) -> str:
        message_id: str = self.sqs.send_message(QueueUrl=self.queue_url, MessageBody=body)[
            "MessageId"
        ]
        return message_id

    def receive(self, wait_seconds: int = 0) -> list[dict[str, Any]]:
        out = self.sqs.receive_message(
            QueueUrl=self.queue_url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=wait_seconds,
            MessageSystemAttributeNames=["All"],
        )
        messages: list[dict[str, Any]] = out.get("Messages", [])
        return messages

    def dead_letters(self) -> list[str]:
        out = self.sqs.receive_message(
            QueueUrl=self.dead_letter_url, MaxNumberOfMessages=10, VisibilityTimeout=0
        )
        return [m["Body"] for m in out.get("Messages", [])]

    def deliver(
        self,
        messages: list[dict[str, Any]],
        remaining_ms: int | list[int] = 600_000,
        context: LambdaContext | None = None,
    ) -> dict[str, Any]:
        """Invoke the handler with these messages as one batch, then act as the ESM does."""
        event = {"Records": [self._record(m) for m in messages]}
        response = lambda_handler(event, context or FakeLambdaContext(remaining_ms))
        failed = {item["itemIdentifier"] for item in response["batchItemFailures"]}
        for message in messages:
            if message["MessageId"] not in failed:
                self.sqs.delete_message(
                    QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"]
                )
        return response

    def _record(self, message: dict[str, Any]) -> dict[str, Any]:
        attributes = message["Attributes"]
        return {
            "messageId": message["MessageId"],
            "receiptHandle": message["ReceiptHandle"],
            "body": message["Body"],
            "attributes": {
                "ApproximateReceiveCount": attributes["ApproximateReceiveCount"],
                "SentTimestamp": attributes["SentTimestamp"],
                "SenderId": attributes.get("SenderId", "AIDAIENQZJOLO23YVJ4VO"),
                "ApproximateFirstReceiveTimestamp": attributes["ApproximateFirstReceiveTimestamp"],
            },
            "messageAttributes": {},
            "md5OfBody": message["MD5OfBody"],
            "eventSource": "aws:sqs",
            "eventSourceARN": self.queue_arn,
            "awsRegion": REGION,
        }


@pytest.fixture(scope="module")
def endpoint_url() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(scope="module")
def aws_clients(endpoint_url: str) -> tuple[Any, Any]:
    """DynamoDB and SQS clients for the test's side (slow to build: built once)."""
    dynamodb = sessions.client("dynamodb", endpoint_url, REGION)
    return dynamodb, sessions.client("sqs", endpoint_url, REGION)


@pytest.fixture
def fresh_handler() -> Iterator[None]:
    """A cold container per test; rung's loggers restored after the handler configures them."""
    rung_logger = logging.getLogger("rung")
    saved = (rung_logger.handlers[:], rung_logger.propagate, rung_logger.level)
    handler_app.calls.clear()
    worker_module.worker.cache_clear()
    yield
    worker_module.worker.cache_clear()
    rung_logger.handlers[:], rung_logger.propagate = saved[0], saved[1]
    rung_logger.setLevel(saved[2])


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, endpoint_url: str) -> None:
    for name, value in {
        "AWS_ENDPOINT_URL": endpoint_url,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_REGION": REGION,
        "AWS_DEFAULT_REGION": REGION,
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("POWERTOOLS_SERVICE_NAME", raising=False)


@pytest.fixture
def deployed(
    monkeypatch: pytest.MonkeyPatch, aws_clients: tuple[Any, Any], aws_env: None
) -> Deployment:
    name = f"rung-handler-{secrets.token_hex(4)}"
    dynamodb, sqs = aws_clients
    store = DynamoStore(dynamodb, name)
    store.create_table()
    queue_url, dead_letter_url = SqsQueue.create(
        sqs, name, visibility_timeout=timedelta(seconds=60), max_receive_count=5
    )
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    monkeypatch.setenv("RUNG_APP", "tests.functional.handler_app:app")
    monkeypatch.setenv("RUNG_TABLE_NAME", name)
    monkeypatch.setenv("RUNG_QUEUE_URL", queue_url)
    monkeypatch.setenv("RUNG_MAX_RECEIVE_COUNT", "5")
    client = rung.Client._from_parts(
        handler_app.app, store, SqsQueue(sqs, queue_url), SystemClock()
    )
    return Deployment(
        client=client,
        sqs=sqs,
        queue_url=queue_url,
        queue_arn=queue_arn,
        dead_letter_url=dead_letter_url,
        store=store,
    )
