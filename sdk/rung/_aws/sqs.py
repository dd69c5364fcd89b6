"""SQS: the only module that sends, receives, deletes or delays messages.

Messages carry a run id, never a payload: ``{"v": 1, "run_id": "..."}``.

Delays. A visibility change is one request and suits backoff and waits, but each
redelivery raises the message's receive count (which drives the DLQ) and a
visibility timeout cannot reach past 12 hours from receipt. Re-sending with
``DelaySeconds`` (at most 15 minutes; a message that arrives early is deferred
again) resets the count and the 14-day retention. ``defer`` chooses: visibility
hops of up to ~12 hours, and a fresh message when the count nears ``renew_at``.

Receive counts. A healthy run's message is received again and again: after each
deferral, and after every crash of an invocation whose batch held it (on Lambda the
whole batch comes back, the messages it never reached included). So the count is no
measure of poison; the worker renews a message once it has been received
``renew_at`` times (half of ``maxReceiveCount``): a fresh copy, then the old one
deleted (``renew``). Only a message the worker never renews reaches the DLQ: a body
that is not a rung message, a run that does not exist, or one whose invocations keep
dying before the worker sees it. See docs/architecture.md, "Only poison reaches the
dead-letter queue".
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

log = logging.getLogger("rung.worker")

MAX_DELAY = timedelta(minutes=15)
MAX_VISIBILITY = timedelta(hours=12)
#: The longest visibility change rung makes: 12 hours from receipt, less processing time.
VISIBILITY_HOP = MAX_VISIBILITY - timedelta(minutes=10)
#: A shorter hop than this is not worth a visibility change: send a fresh message.
MIN_HOP = timedelta(minutes=30)
#: Delays up to this keep their message in flight (one visibility change: a backoff of
#: seconds); longer ones are a fresh delayed message (up to ``MAX_DELAY``) or a timer,
#: so that waiting runs hold no in-flight message (a queue allows about 120,000).
SHORT_HOLD = timedelta(seconds=30)
MESSAGE_VERSION = 1
#: Bigger bodies are not rung's and are refused unparsed (poison -> DLQ).
MAX_BODY_BYTES = 4096
#: The DLQ's maxReceiveCount unless told otherwise (template.yaml's MaxReceiveCount).
DEFAULT_MAX_RECEIVE_COUNT = 10
#: The longest a refused (poison) message is kept invisible before its next receive.
POISON_BACKOFF_CAP = 8
#: SendMessageBatch and DeleteMessageBatch take at most this many entries.
_BATCH = 10
_SEND_TRIES = 3  # SendMessageBatch calls per chunk while entries fail


@dataclass(frozen=True)
class QueueMessage:
    """A received message, from SQS directly or from a Lambda SQS event."""

    message_id: str
    body: str
    receipt_handle: str
    receive_count: int
    #: epoch ms when the message was sent (SQS's SentTimestamp), if known
    sent_at_ms: int | None = None
    #: its run's X-Ray trace header (SQS's AWSTraceHeader), if it carries one
    trace_header: str | None = None


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

    def __init__(
        self, client: Any, queue_url: str, max_receive_count: int = DEFAULT_MAX_RECEIVE_COUNT
    ) -> None:
        self.client = client
        self.url = queue_url
        self.max_receive_count = max_receive_count
        #: Receives after which a healthy run's message is exchanged for a fresh one:
        #: half of maxReceiveCount (rounded up), so that as many receives again are left
        #: for crashes the worker cannot act on (an invocation that dies before it gets
        #: to the batch, a throttled one) before SQS would dead-letter it.
        self.renew_at = max((max_receive_count + 1) // 2, 2)
        # SQS's delay and visibility caps, divided by RUNG_SQS_LIMITS_SCALE (default 1):
        # tests on real processes shrink the caps instead of waiting for hours, so that
        # a 30-second wait takes the same chained path as a 30-hour one does on AWS.
        scale = _limits_scale()
        self.max_delay = MAX_DELAY / scale
        self.short_hold = SHORT_HOLD / scale
        self.visibility_hop = VISIBILITY_HOP / scale
        self.min_hop = MIN_HOP / scale
        # Messages of the invocation's batch kept invisible by its heartbeat (``hold``),
        # by receipt handle; the lock orders a beat before a message's own final
        # visibility change, so that change is the last.
        self._in_hand: dict[str, QueueMessage] = {}
        self._hand = threading.Lock()

    @staticmethod
    def create(
        client: Any,
        name: str,
        *,
        visibility_timeout: timedelta,
        max_receive_count: int = DEFAULT_MAX_RECEIVE_COUNT,
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

    def send(
        self, run_id: str, delay: timedelta = timedelta(0), trace_header: str | None = None
    ) -> None:
        """Send a run's message; ``trace_header``: the run's X-Ray trace header, carried
        as the ``AWSTraceHeader`` system attribute (the worker reads the run's trace from
        the run item, so a message without one still joins it)."""
        seconds = _ceil_seconds(min(delay, self.max_delay))
        self.client.send_message(
            QueueUrl=self.url,
            MessageBody=encode(run_id),
            DelaySeconds=seconds,
            **_trace_attribute(trace_header),
        )

    def send_body(self, body: str) -> None:
        """Send a message of another kind than a run's (a schedule's firing, as
        EventBridge Scheduler sends it on AWS)."""
        self.client.send_message(QueueUrl=self.url, MessageBody=body)

    def arn(self) -> str:
        """The queue's ARN (what EventBridge Scheduler targets)."""
        out = self.client.get_queue_attributes(QueueUrl=self.url, AttributeNames=["QueueArn"])
        return str(out["Attributes"]["QueueArn"])

    def send_many(self, runs: list[tuple[str, timedelta, str | None]]) -> set[str]:
        """Send the messages of ``(run id, delay, trace header)``, 10 per
        ``SendMessageBatch``; entries SQS refuses are sent again (three tries). Returns
        the run ids whose message could not be sent."""
        unsent: set[str] = set()
        for start in range(0, len(runs), _BATCH):
            entries = {
                str(n): {
                    "Id": str(n),
                    "MessageBody": encode(run_id),
                    "DelaySeconds": _ceil_seconds(min(delay, self.max_delay)),
                    **_trace_attribute(trace),
                }
                for n, (run_id, delay, trace) in enumerate(runs[start : start + _BATCH])
            }
            for attempt in range(_SEND_TRIES):
                if attempt:
                    time.sleep(0.1 * 2**attempt)
                try:
                    out = self.client.send_message_batch(
                        QueueUrl=self.url, Entries=list(entries.values())
                    )
                except (ClientError, BotoCoreError) as exc:
                    log.warning("SendMessageBatch failed (%s); trying again", exc)
                    continue
                failed = out.get("Failed", [])
                entries = {f["Id"]: entries[f["Id"]] for f in failed}
                if not entries or all(f.get("SenderFault") for f in failed):
                    break  # (a sender's fault is not fixed by sending again)
            unsent.update(runs[start + int(n)][0] for n in entries)
        return unsent

    def receive(
        self, max_messages: int = 10, wait_seconds: int = 0, visibility_timeout: int | None = None
    ) -> list[QueueMessage]:
        kwargs: dict[str, Any] = {
            "QueueUrl": self.url,
            "MaxNumberOfMessages": max_messages,
            "WaitTimeSeconds": wait_seconds,
            "MessageSystemAttributeNames": [
                "ApproximateReceiveCount",
                "SentTimestamp",
                "AWSTraceHeader",
            ],
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
                sent_at_ms=int(m["Attributes"]["SentTimestamp"])
                if "SentTimestamp" in m.get("Attributes", {})
                else None,
                trace_header=m.get("Attributes", {}).get("AWSTraceHeader"),
            )
            for m in out.get("Messages", [])
        ]

    def hold(self, messages: list[QueueMessage], visibility: timedelta) -> int:
        """Keep an invocation's messages invisible for ``visibility`` from now, and
        again at each ``extend``, until each one's own visibility is set (``defer``,
        ``retry_poison``), it is deleted (``discard``, ``delete``) or ``release_all``.
        Returns the requests made (one ``ChangeMessageVisibilityBatch`` per ten)."""
        with self._hand:
            for message in messages:
                self._in_hand[message.receipt_handle] = message
            return self._change_visibility(list(self._in_hand.values()), visibility)

    def extend(self, visibility: timedelta) -> int:
        """The heartbeat's beat: ``visibility`` from now for every message still held."""
        with self._hand:
            return self._change_visibility(list(self._in_hand.values()), visibility)

    def release_all(self) -> None:
        """The invocation ends: its messages are held no longer."""
        with self._hand:
            self._in_hand.clear()

    def _release(self, message: QueueMessage) -> None:
        with self._hand:  # waits for a beat in flight: the caller's change comes after it
            self._in_hand.pop(message.receipt_handle, None)

    def _change_visibility(self, messages: list[QueueMessage], visibility: timedelta) -> int:
        seconds = _ceil_seconds(visibility)
        requests = 0
        for start in range(0, len(messages), _BATCH):
            chunk = messages[start : start + _BATCH]
            out = self.client.change_message_visibility_batch(
                QueueUrl=self.url,
                Entries=[
                    {"Id": str(n), "ReceiptHandle": m.receipt_handle, "VisibilityTimeout": seconds}
                    for n, m in enumerate(chunk)
                ],
            )
            requests += 1
            for failed in out.get("Failed", []):  # deleted meanwhile (a renewal): harmless
                log.debug("visibility of %s not extended: %s", chunk[int(failed["Id"])], failed)
        return requests

    def pass_on(self, message: QueueMessage, visibility: timedelta) -> None:
        """Hand a held message to another invocation (docs/versioning.md): it is held
        here no longer and stays invisible for ``visibility`` from now, in which the
        other invocation holds it itself; should that one never start, it comes back."""
        self._release(message)
        self.client.change_message_visibility(
            QueueUrl=self.url,
            ReceiptHandle=message.receipt_handle,
            VisibilityTimeout=_ceil_seconds(visibility),
        )

    def delete(self, message: QueueMessage) -> None:
        self._release(message)
        self.client.delete_message(QueueUrl=self.url, ReceiptHandle=message.receipt_handle)

    def retry_poison(self, message: QueueMessage) -> None:
        """Let a poison message come back after a short backoff (2, 4, then 8 s each
        time): nothing it could be heals, so it reaches the DLQ in about a minute with
        the template's maxReceiveCount of 10, not after 10 full visibility timeouts."""
        delay = min(2 ** max(message.receive_count, 1), POISON_BACKOFF_CAP)
        self._release(message)
        self.client.change_message_visibility(
            QueueUrl=self.url, ReceiptHandle=message.receipt_handle, VisibilityTimeout=delay
        )

    def worn(self, message: QueueMessage) -> bool:
        """Whether this message was received often enough to be renewed before use."""
        return message.receive_count >= self.renew_at

    def nearly_worn(self, message: QueueMessage) -> bool:
        """Whether its next receive would make this message worn: a deferral then
        re-sends rather than changing its visibility."""
        return message.receive_count + 1 >= self.renew_at

    def renew(self, renewals: list[tuple[QueueMessage, str, timedelta]]) -> list[QueueMessage]:
        """Exchange messages for fresh copies (receive count 0): ``(message, run id,
        delay)`` each. The copies are sent first, then the old messages deleted, so a
        crash in between leaves a duplicate, never nothing. Returns the messages
        renewed (a copy that SQS refused leaves its message as it was)."""
        renewed: list[QueueMessage] = []
        for start in range(0, len(renewals), _BATCH):
            chunk = renewals[start : start + _BATCH]
            out = self.client.send_message_batch(
                QueueUrl=self.url,
                Entries=[
                    {
                        "Id": str(n),
                        "MessageBody": encode(run_id),
                        "DelaySeconds": _ceil_seconds(min(delay, self.max_delay)),
                        **_trace_attribute(message.trace_header),
                    }
                    for n, (message, run_id, delay) in enumerate(chunk)
                ],
            )
            for sent in out.get("Successful", []):
                renewed.append(chunk[int(sent["Id"])][0])
            for failed in out.get("Failed", []):
                log.warning(
                    "could not renew message for %s: %s", chunk[int(failed["Id"])][1], failed
                )
        self.discard(renewed)
        return renewed

    def discard(self, messages: list[QueueMessage]) -> None:
        """Delete messages now (not at the end of their batch). A delete that fails
        leaves a message that comes back as a harmless duplicate."""
        for message in messages:
            self._release(message)
        for start in range(0, len(messages), _BATCH):
            chunk = messages[start : start + _BATCH]
            out = self.client.delete_message_batch(
                QueueUrl=self.url,
                Entries=[
                    {"Id": str(n), "ReceiptHandle": m.receipt_handle} for n, m in enumerate(chunk)
                ],
            )
            for failed in out.get("Failed", []):
                log.warning(
                    "could not delete message %s: %s", chunk[int(failed["Id"])].message_id, failed
                )

    def defer(
        self, message: QueueMessage, run_id: str, delay: timedelta, now_ms: int | None = None
    ) -> bool:
        """Make the run's message come back after ``delay``.

        Returns True when the message itself was delayed (keep it: do not delete it),
        False when a new message was sent instead (the received one must be deleted).
        """
        # A delay past the visibility cap is taken in hops: the message comes back
        # early, the claim finds the run not yet due, and it is deferred again. The 12-hour
        # cap is counted from the message's send time (the strictest reading: moto's and
        # LocalStack's; AWS counts from receipt), so when a message has too little of its
        # 12 hours left, or would come back worn, a fresh message replaces it, which
        # also renews its 14-day retention. About 14 requests per day of waiting.
        hop = min(delay, self.visibility_hop)
        if now_ms is not None and message.sent_at_ms is not None:
            age = timedelta(milliseconds=max(now_ms - message.sent_at_ms, 0))
            hop = min(delay, self.visibility_hop - age)
        if self.nearly_worn(message) or (hop < delay and hop < self.min_hop):
            # A fresh message: receive count 0, retention renewed, the same trace.
            self.send(run_id, delay, message.trace_header)
            return False  # still held: deleted at the end of its batch
        self._release(message)
        self.client.change_message_visibility(
            QueueUrl=self.url,
            ReceiptHandle=message.receipt_handle,
            VisibilityTimeout=_ceil_seconds(max(hop, timedelta(0))),
        )
        return True


def _trace_attribute(header: str | None) -> dict[str, Any]:
    if not header:
        return {}
    return {
        "MessageSystemAttributes": {"AWSTraceHeader": {"StringValue": header, "DataType": "String"}}
    }


def _limits_scale() -> float:
    raw = os.environ.get("RUNG_SQS_LIMITS_SCALE", "1")
    try:
        scale = float(raw)
    except ValueError:
        raise ValueError(f"RUNG_SQS_LIMITS_SCALE must be a number >= 1, got {raw!r}") from None
    if not 1 <= scale <= 100_000:
        raise ValueError(f"RUNG_SQS_LIMITS_SCALE must be between 1 and 100000, got {scale}")
    return scale


def _ceil_seconds(delay: timedelta) -> int:
    """Whole seconds for SQS, rounded up: a message must never come back early."""
    return max(math.ceil(delay.total_seconds()), 0)
