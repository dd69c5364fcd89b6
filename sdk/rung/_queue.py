"""SQS: the only module that sends, receives, deletes or delays messages.

Messages carry a run id, never a payload: ``{"v": 1, "run_id": "..."}``.

Delays. A visibility change is one request and suits short backoff, but each
redelivery raises the message's receive count (which drives the DLQ) and a
visibility timeout cannot reach past 12 hours from receipt. Re-sending with
``DelaySeconds`` (at most 15 minutes; a longer wait is chained: a message that
arrives early is deferred again) resets the count. ``defer`` chooses.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

MAX_DELAY = timedelta(minutes=15)
MAX_VISIBILITY = timedelta(hours=12)
MESSAGE_VERSION = 1
#: Bigger bodies are not rung's and are refused unparsed (poison -> DLQ).
MAX_BODY_BYTES = 4096


@dataclass(frozen=True)
class QueueMessage:
    """A received message, from SQS directly or from a Lambda SQS event."""

    message_id: str
    body: str
    receipt_handle: str
    receive_count: int


class BadMessage(ValueError):
    """A message that is not a rung run message."""


def encode(run_id: str) -> str:
    return json.dumps({"v": MESSAGE_VERSION, "run_id": run_id}, separators=(",", ":"))


def decode(body: str) -> str:
    """The run id in a message body, or ``BadMessage`` saying what is wrong with it."""
    if len(body.encode("utf-8", "replace")) > MAX_BODY_BYTES:
        raise BadMessage(f"message body is {len(body)} characters; rung messages are tiny")
    try:
        data = json.loads(body)
    except ValueError:
        raise BadMessage(f"message body is not JSON: {body[:80]!r}") from None
    if not isinstance(data, dict):
        raise BadMessage(f"message body is not a JSON object: {body[:80]!r}")
    run_id = data.get("run_id")
    if data.get("v") != MESSAGE_VERSION or not isinstance(run_id, str) or not run_id:
        raise BadMessage(
            f"message body is not a rung v{MESSAGE_VERSION} run message: {body[:80]!r}"
        )
    return run_id


class SqsQueue:
    """The work queue. ``client`` is a boto3 SQS client."""

    def __init__(self, client: Any, queue_url: str, max_receive_count: int = 5) -> None:
        self.client = client
        self.url = queue_url
        self.max_receive_count = max_receive_count

    @staticmethod
    def create(
        client: Any, name: str, *, visibility_timeout: timedelta, max_receive_count: int = 5
    ) -> tuple[str, str]:
        """Create the work queue and its DLQ as template.yaml does; returns both URLs."""
        dlq_url = client.create_queue(
            QueueName=f"{name}-dlq", Attributes={"MessageRetentionPeriod": "1209600"}
        )["QueueUrl"]
        dlq_arn = client.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])[
            "Attributes"
        ]["QueueArn"]
        url = client.create_queue(
            QueueName=name,
            Attributes={
                "VisibilityTimeout": str(int(visibility_timeout.total_seconds())),
                "MessageRetentionPeriod": "1209600",
                "RedrivePolicy": json.dumps(
                    {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(max_receive_count)}
                ),
            },
        )["QueueUrl"]
        return url, dlq_url

    def send(self, run_id: str, delay: timedelta = timedelta(0)) -> None:
        seconds = _ceil_seconds(min(delay, MAX_DELAY))
        self.client.send_message(
            QueueUrl=self.url, MessageBody=encode(run_id), DelaySeconds=seconds
        )

    def receive(
        self, max_messages: int = 10, wait_seconds: int = 0, visibility_timeout: int | None = None
    ) -> list[QueueMessage]:
        kwargs: dict[str, Any] = {
            "QueueUrl": self.url,
            "MaxNumberOfMessages": max_messages,
            "WaitTimeSeconds": wait_seconds,
            "MessageSystemAttributeNames": ["ApproximateReceiveCount"],
        }
        if visibility_timeout is not None:
            kwargs["VisibilityTimeout"] = visibility_timeout
        out = self.client.receive_message(**kwargs)
        return [
            QueueMessage(
                message_id=m["MessageId"],
                body=m["Body"],
                receipt_handle=m["ReceiptHandle"],
                receive_count=int(m.get("Attributes", {}).get("ApproximateReceiveCount", "1")),
            )
            for m in out.get("Messages", [])
        ]

    def delete(self, message: QueueMessage) -> None:
        self.client.delete_message(QueueUrl=self.url, ReceiptHandle=message.receipt_handle)

    def retry_poison(self, message: QueueMessage) -> None:
        """Let a poison message come back after a short backoff (2, 4, 8 ... 60 s)."""
        delay = min(2 ** max(message.receive_count, 1), 60)
        self.client.change_message_visibility(
            QueueUrl=self.url, ReceiptHandle=message.receipt_handle, VisibilityTimeout=delay
        )

    def near_dead_letter(self, message: QueueMessage) -> bool:
        """Whether one more failed delivery could move this message to the DLQ."""
        return self.max_receive_count - message.receive_count < 2

    def defer(self, message: QueueMessage, run_id: str, delay: timedelta) -> bool:
        """Make the run's message come back after ``delay``.

        Returns True when the message itself was delayed (keep it: do not delete it),
        False when a new message was sent instead (the received one must be deleted).
        """
        if delay <= MAX_VISIBILITY and not self.near_dead_letter(message):
            self.client.change_message_visibility(
                QueueUrl=self.url,
                ReceiptHandle=message.receipt_handle,
                VisibilityTimeout=_ceil_seconds(delay),
            )
            return True
        self.send(run_id, delay)
        return False


def _ceil_seconds(delay: timedelta) -> int:
    """Whole seconds for SQS, rounded up: a message must never come back early."""
    return max(math.ceil(delay.total_seconds()), 0)
