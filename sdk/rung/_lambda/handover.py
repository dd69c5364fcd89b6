"""On Lambda: a message for a run pinned to another code version goes to that version.

template.yaml publishes a Lambda version on every deploy (``AutoPublishAlias: live``)
and the queue's event source invokes the alias, so every message reaches the latest
version first. Its worker claims a run only when the run is on its version or on none
yet (``DynamoStore.claim_run``); a run pinned to an older version is handed over:

1. the message is released from this invocation's heartbeat and made invisible for a
   hold (``HAND_OVER_SECONDS``; ``SqsQueue.pass_on``);
2. the qualified function ``<worker>:<version>`` is invoked asynchronously with the
   message as a one-record SQS event, marked ``"rungHandOver"``;
3. once Lambda accepted it (202), this invocation leaves the message alone (KEEP): the
   version's worker handles it as if it had received it, holds it with its own
   heartbeat, and deletes it when the run no longer needs it (``lambda_handler``).

Nothing is lost and no run runs twice at once: the message stays the run's carrier
until the version's worker deletes it, so a hand-over lost at any point (this
invocation dies before the invoke, Lambda drops the event, that invocation dies) is a
message that comes back after its hold and is handed over again; and the claim's lease
fences every attempt, whoever runs it. An invoke that fails is retried with the
message (back in two seconds). A version that no longer exists (``rung versions
prune``, or deleted by hand) is ``ResourceNotFoundException``: the run fails with
``VersionNotFound`` (``routing.gone_error``) rather than run on other code.

Cost: one ``ChangeMessageVisibility`` and one ``Invoke`` per message handed over, on
top of what the version's worker does with it (bench/api_calls.py).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from rung._aws.functions import invoke_event
from rung._aws.sqs import QueueMessage, SqsQueue
from rung._engine.routing import Disposition

#: The event's marker key: its value names the version that handed the message over.
HAND_OVER = "rungHandOver"
#: How long (seconds) a handed-over message stays invisible before the version's
#: invocation holds it itself: asynchronous invocations usually start within a second;
#: one that has not started by then (throttled) is handed over again when the message
#: comes back (``RUNG_HAND_OVER_SECONDS``).
HAND_OVER_SECONDS = 120


class LambdaHandOver:
    """``Versioning.hand_over`` on Lambda (see the module docstring)."""

    def __init__(
        self,
        client: Callable[[], Any],
        function_name: str,
        queue: SqsQueue,
        version: str,
        hold: timedelta = timedelta(seconds=HAND_OVER_SECONDS),
    ) -> None:
        # The Lambda client, made at the first hand-over: most invocations never hand one
        # over, and a client costs a cold start tens of milliseconds.
        self._make_client = client
        self._client: Any = None
        self._function = function_name
        self._queue = queue
        self._version = version  # this worker's: named in the event, for the logs
        self._hold = hold

    def __call__(
        self, version: str, message: QueueMessage, time_left: Callable[[], float] | None
    ) -> Disposition | None:
        self._queue.pass_on(message, self._hold)
        if self._client is None:
            self._client = self._make_client()
        event = hand_over_event(message, self._version)
        if not invoke_event(self._client, self._function, version, event):
            return None  # that version is gone
        return Disposition.KEEP


def hand_over_event(message: QueueMessage, sender: str) -> dict[str, Any]:
    """The one-record SQS event a version's worker receives for ``message``."""
    attributes = {
        "ApproximateReceiveCount": str(message.receive_count),
        "SentTimestamp": str(message.sent_at_ms or 0),
    }
    if message.trace_header is not None:
        attributes["AWSTraceHeader"] = message.trace_header
    record = {
        "messageId": message.message_id,
        "receiptHandle": message.receipt_handle,
        "body": message.body,
        "attributes": attributes,
        "messageAttributes": {},
        "eventSource": "aws:sqs",
    }
    return {"Records": [record], HAND_OVER: {"from": sender}}
