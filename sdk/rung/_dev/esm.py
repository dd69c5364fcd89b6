"""The SQS -> Lambda event source mapping, played locally.

Like Lambda's poller: long polling, batches of up to BatchSize, at most
MaximumConcurrency invocations at once (one worker process each), partial batch
responses (ReportBatchItemFailures: delete what succeeded, leave the rest), and
redrive to the DLQ by the queue itself after maxReceiveCount.

One deliberate difference: when a worker process dies mid-invocation, on Lambda the
batch reappears when the invocation's heartbeat hold runs out (the run lease + 5 s
after its last beat, docs/retries.md); locally the poller sees the process die and
makes the batch visible again one lease later, when the run's lease has expired.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from rung._aws.cloudformation import EventSource
from rung._dev.pool import Invocation, WorkerProcess

log = logging.getLogger("rung.dev")


class EventSourcePoller:
    def __init__(
        self,
        sqs: Any,
        queue_url: str,
        queue_arn: str,
        source: EventSource,
        workers: list[WorkerProcess],
        timeout: int,
        retry_after_crash: int,
        region: str,
        on_crash: Callable[[WorkerProcess, str, list[str]], None],
        generation: Callable[[], int],
    ) -> None:
        self.sqs = sqs
        self.queue_url = queue_url
        self.queue_arn = queue_arn
        self.source = source
        self.workers = workers
        self.timeout = timeout
        self.retry_after_crash = retry_after_crash
        self.region = region
        self.on_crash = on_crash
        self.generation = generation
        self.stopping = threading.Event()
        self.busy = 0
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for worker in self.workers:
            thread = threading.Thread(
                target=self._loop, args=(worker,), daemon=True, name=f"esm-{worker.name}"
            )
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 30.0) -> None:
        self.stopping.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(timeout=max(deadline - time.monotonic(), 0.1))

    def _loop(self, worker: WorkerProcess) -> None:
        while not self.stopping.is_set():
            try:
                self._refresh(worker)
                messages = self._receive()
                if messages:
                    self._refresh_holding(worker, messages)  # changed or died meanwhile
                    with self._lock:
                        self.busy += 1
                    try:
                        self._invoke(worker, messages)
                    finally:
                        with self._lock:
                            self.busy -= 1
            except Exception:
                if self.stopping.is_set():
                    return
                log.exception("event source poller error; retrying in 1s")
                self.stopping.wait(1.0)

    def _refresh(self, worker: WorkerProcess) -> None:
        # Code changed, or the process died while idle or while starting (a failed
        # start raises here, before any message is received): a fresh process. Lambda
        # does not hand a batch to an execution environment that is gone; receiving
        # one for a dead process would only raise its messages' receive counts.
        if worker.generation != self.generation() or not worker.running:
            worker.stop()
            worker.start(self.generation())

    def _refresh_holding(self, worker: WorkerProcess, messages: list[dict[str, Any]]) -> None:
        """``_refresh`` with a batch in hand: a start that fails (its process killed as
        it loads) is tried again; if it never succeeds, the batch is handed back."""
        for tries_left in (2, 1, 0):
            try:
                self._refresh(worker)
                return
            except Exception:
                if tries_left == 0 or self.stopping.is_set():
                    for message in messages:
                        with contextlib.suppress(Exception):
                            self.sqs.change_message_visibility(
                                QueueUrl=self.queue_url,
                                ReceiptHandle=message["ReceiptHandle"],
                                VisibilityTimeout=0,
                            )
                    raise

    def _receive(self) -> list[dict[str, Any]]:
        out = self.sqs.receive_message(
            QueueUrl=self.queue_url,
            MaxNumberOfMessages=self.source.batch_size,
            WaitTimeSeconds=1,  # short enough to notice a stop promptly
            MessageSystemAttributeNames=["All"],
            MessageAttributeNames=["All"],
        )
        return list(out.get("Messages", []))

    def _invoke(self, worker: WorkerProcess, messages: list[dict[str, Any]]) -> None:
        event = {"Records": [self._record(m) for m in messages]}
        outcome: Invocation = worker.invoke(event, self.timeout)
        if outcome.died is not None:
            bodies = [m["Body"] for m in messages]
            self.on_crash(worker, outcome.died, bodies)
            for message in messages:
                with contextlib.suppress(Exception):
                    self.sqs.change_message_visibility(
                        QueueUrl=self.queue_url,
                        ReceiptHandle=message["ReceiptHandle"],
                        VisibilityTimeout=self.retry_after_crash,
                    )
            if not self.stopping.is_set():
                worker.start(self.generation())
            return
        if outcome.error is not None:  # a function error: the whole batch stays
            log.error("%s failed: %s", worker.spec.logical_id, outcome.error.strip())
            return
        failed: set[str] = set()
        if self.source.report_batch_item_failures and isinstance(outcome.result, dict):
            failed = {f["itemIdentifier"] for f in outcome.result.get("batchItemFailures", [])}
        done = [m for m in messages if m["MessageId"] not in failed]
        for start in range(0, len(done), 10):
            chunk = done[start : start + 10]
            self.sqs.delete_message_batch(
                QueueUrl=self.queue_url,
                Entries=[
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(chunk)
                ],
            )

    def _record(self, message: dict[str, Any]) -> dict[str, Any]:
        body = message["Body"]
        return {
            "messageId": message["MessageId"],
            "receiptHandle": message["ReceiptHandle"],
            "body": body,
            "attributes": dict(message.get("Attributes", {})),
            "messageAttributes": message.get("MessageAttributes", {}),
            "md5OfBody": message.get("MD5OfBody") or hashlib.md5(body.encode()).hexdigest(),  # noqa: S324
            "eventSource": "aws:sqs",
            "eventSourceARN": self.queue_arn,
            "awsRegion": self.region,
        }
