"""handler/worker.py as Lambda runs it: real SQS messages, real table, a genuine SQS event.

The emulator (moto) cannot run Lambda code (invoking needs Docker), so these tests
play the event source mapping themselves: receive from the queue, build the event
Lambda would send, call ``lambda_handler`` with a fake context, then delete the
records that were not reported in ``batchItemFailures``, as the mapping does.
"""

from __future__ import annotations

import io
import json
import logging
import re
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import rung
from handler import worker as worker_module
from rung._aws.sqs import QueueMessage, SqsQueue
from rung._engine.config import WorkerConfig
from rung._engine.worker import Disposition, Worker
from rung._util.clock import SystemClock, VirtualClock
from rung.errors import InvalidConfig
from tests.functional import handler_app
from tests.functional.lambda_deployment import Deployment, FakeLambdaContext
from tests.functional.otlp_receiver import Receiver, attributes

pytestmark = pytest.mark.usefixtures("fresh_handler")


def test_a_run_completes(deployed: Deployment) -> None:
    handle = deployed.client.trigger("greet", {"name": "Ada"})

    response = deployed.deliver(deployed.receive())

    assert response == {"batchItemFailures": []}
    run = deployed.client.get_run(handle.run_id)
    assert run.status == rung.RunStatus.COMPLETED
    assert run.output == "hello Ada"
    assert deployed.receive() == []


def test_async_and_sync_runs_of_one_batch_complete_each_on_its_own(deployed: Deployment) -> None:
    asynchronous = deployed.client.trigger("greet-async", {"name": "Ada"})
    synchronous = deployed.client.trigger("greet", {"name": "Alan"})
    messages = deployed.receive()
    assert len(messages) == 2

    assert deployed.deliver(messages) == {"batchItemFailures": []}

    run = deployed.client.get_run(asynchronous.run_id)
    assert (run.status, run.output) == (rung.RunStatus.COMPLETED, "HELLO ADA (A-D-A)")
    assert deployed.client.get_run(synchronous.run_id).output == "hello Alan"
    assert handler_app.calls["hello-async"] == 1 and handler_app.calls["letter"] == 3
    steps = [e.step for e in deployed.client.history(run.run_id) if e.type == "StepSucceeded"]
    assert steps[:2] == ["/hello#1", "/shout#1"]
    assert sorted(s for s in steps if s and s.endswith("/letter#1")) == [
        f"/map#1[{i}]/letter#1" for i in range(3)
    ]


def test_a_garbage_message_fails_alone(deployed: Deployment) -> None:
    garbage_id = deployed.send_raw("this is not a rung message")
    handle = deployed.client.trigger("greet", {"name": "Grace"})
    messages = deployed.receive()
    assert len(messages) == 2

    response = deployed.deliver(messages)

    assert response == {"batchItemFailures": [{"itemIdentifier": garbage_id}]}
    run = deployed.client.get_run(handle.run_id)
    assert (run.status, run.output) == (rung.RunStatus.COMPLETED, "hello Grace")


def test_logs_are_json_with_the_app_as_service(deployed: Deployment) -> None:
    garbage_id = deployed.send_raw("{}")
    stdout = io.StringIO()  # Lambda sends the function's stdout to CloudWatch Logs
    previous = worker_module.logger.registered_handler.setStream(stdout)  # type: ignore[attr-defined]
    try:
        deployed.deliver(deployed.receive())
    finally:
        worker_module.logger.registered_handler.setStream(previous)  # type: ignore[attr-defined]

    lines = [json.loads(line) for line in stdout.getvalue().splitlines()]
    poison = [line for line in lines if "poison message" in line["message"]]
    assert poison, lines
    assert poison[0]["level"] == "ERROR"
    assert poison[0]["service"] == "handler-test"
    assert poison[0]["message_id"] == garbage_id
    assert poison[0]["function_name"] == "rung-worker"


def test_a_completed_run_leaves_json_lifecycle_lines_with_its_keys(deployed: Deployment) -> None:
    handle = deployed.client.trigger("greet", {"name": "Lin"})
    stdout = io.StringIO()  # Lambda sends the function's stdout to CloudWatch Logs
    previous = worker_module.logger.registered_handler.setStream(stdout)  # type: ignore[attr-defined]
    try:
        deployed.deliver(deployed.receive())
    finally:
        worker_module.logger.registered_handler.setStream(previous)  # type: ignore[attr-defined]

    run = deployed.client.get_run(handle.run_id)
    lines = [json.loads(line) for line in stdout.getvalue().splitlines()]
    mine = [line for line in lines if line.get("run_id") == handle.run_id]
    assert [line["rung_event"] for line in mine if "rung_event" in line] == [
        "AttemptStarted",
        "Completed",
    ]
    assert all(line["task"] == "greet" and line["attempt"] == 1 for line in mine)
    assert all(line["trace_id"] == run.trace_id for line in mine)
    assert mine[-1]["level"] == "INFO" and mine[-1]["duration_ms"] >= 0


def test_the_tasks_own_powertools_logger_lines_carry_the_runs_keys(deployed: Deployment) -> None:
    handle = deployed.client.trigger("chatty")
    stdout = io.StringIO()  # the user's Logger writes to its own handler, on stdout
    handler = handler_app.user_logger.registered_handler
    previous = handler.setStream(stdout)  # type: ignore[attr-defined]
    try:
        deployed.deliver(deployed.receive())
    finally:
        handler.setStream(previous)  # type: ignore[attr-defined]

    lines = [json.loads(line) for line in stdout.getvalue().splitlines()]
    mine = {line["message"]: line for line in lines if line.get("run_id") == handle.run_id}
    assert set(mine) == {"before the step", "inside the step"}
    assert "step_id" not in mine["before the step"]
    assert mine["inside the step"]["step_id"] == "/talk#1"
    assert mine["inside the step"]["attempt"] == 1 and mine["inside the step"]["task"] == "chatty"


def test_a_transient_step_failure_is_retried_by_a_later_invocation(
    deployed: Deployment,
) -> None:
    handle = deployed.client.trigger("flaky")
    [message] = deployed.receive()

    response = deployed.deliver([message])

    # Reported as failed, so Lambda leaves it; the engine set its visibility to the
    # 3 s backoff, so it is invisible now and comes back by itself.
    assert response == {"batchItemFailures": [{"itemIdentifier": message["MessageId"]}]}
    assert not deployed.client.get_run(handle.run_id).status.is_terminal
    assert deployed.receive() == []
    [again] = deployed.receive(wait_seconds=5)
    assert again["MessageId"] == message["MessageId"]
    assert again["Attributes"]["ApproximateReceiveCount"] == "2"

    assert deployed.deliver([again]) == {"batchItemFailures": []}
    run = deployed.client.get_run(handle.run_id)
    assert (run.status, run.output) == (rung.RunStatus.COMPLETED, "ok")
    assert handler_app.calls["call-api"] == 2


class InvocationDied(BaseException):
    """The invocation stops dead (killed, out of memory, timed out)."""


class DyingContext(FakeLambdaContext):
    """A context whose invocation dies as its first record is being handled (the first
    time the engine asks for the time left). moto cannot run or kill a Lambda, so the
    test plays the death here, and the queue's visibility timeout passing below."""

    def get_remaining_time_in_millis(self) -> int:  # type: ignore[override]
        raise InvocationDied()


def redeliver(deployed: Deployment, messages: list[dict[str, Any]]) -> None:
    """A dead invocation's batch comes back once the visibility timeout has passed."""
    for message in messages:
        deployed.sqs.change_message_visibility(
            QueueUrl=deployed.queue_url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0
        )


def test_invocations_dying_before_a_message_is_reached_never_dead_letter_it(
    deployed: Deployment,
) -> None:
    handle = deployed.client.trigger("greet", {"name": "Lin"})
    # Twice maxReceiveCount (5) invocations die with the run's message in their batch,
    # before the worker gets to it. Each receive counts, yet the message must not reach
    # the DLQ: a batch's worn messages are exchanged for fresh copies up front (such an
    # invocation then has nothing left to do, and does not die).
    deaths = 0
    for _ in range(30):
        messages = deployed.receive()
        assert len(messages) == 1, deployed.dead_letters()
        try:
            deployed.deliver(messages, context=DyingContext())
        except InvocationDied:
            deaths += 1
            redeliver(deployed, messages)
        if deaths == 10:
            break
    assert deaths == 10
    assert deployed.client.get_run(handle.run_id).status == rung.RunStatus.QUEUED

    for _ in range(3):  # healthy invocations now (the first may only renew the message)
        assert deployed.deliver(deployed.receive()) == {"batchItemFailures": []}
        run = deployed.client.get_run(handle.run_id)
        if run.status.is_terminal:
            break
    assert (run.status, run.output) == (rung.RunStatus.COMPLETED, "hello Lin")
    assert deployed.dead_letters() == []
    assert handler_app.calls["hello"] == 1


def test_a_message_for_a_run_that_does_not_exist_still_reaches_the_dlq(
    deployed: Deployment,
) -> None:
    body = json.dumps({"v": 1, "run_id": "run_00000000000000000000000000"})
    deployed.send_raw(body)
    for _ in range(5):  # maxReceiveCount receives, each refused
        messages = deployed.receive()
        assert [m["Body"] for m in messages] == [body]
        assert deployed.deliver(messages) == {
            "batchItemFailures": [{"itemIdentifier": messages[0]["MessageId"]}]
        }
        redeliver(deployed, messages)
    assert deployed.receive() == []  # the sixth receive moved it
    assert deployed.dead_letters() == [body]


def test_a_run_short_of_time_continues_in_a_fresh_message(deployed: Deployment) -> None:
    handle = deployed.client.trigger("two-steps")
    [message] = deployed.receive()

    # 15 s left at the start, 5 s (under RUNG_MIN_TIME_LEFT_SECONDS, 10) after the first
    # step: the run moves on to a fresh invocation.
    assert deployed.deliver([message], remaining_ms=[15_000, 5_000]) == {"batchItemFailures": []}

    run = deployed.client.get_run(handle.run_id)
    assert run.status == rung.RunStatus.QUEUED
    assert run.attempt == 1
    assert dict(handler_app.calls) == {"first": 1}
    [fresh] = deployed.receive()
    assert fresh["MessageId"] != message["MessageId"]

    assert deployed.deliver([fresh], remaining_ms=[15_000, 5_000]) == {"batchItemFailures": []}
    run = deployed.client.get_run(handle.run_id)
    assert (run.status, run.output, run.attempt) == (
        rung.RunStatus.COMPLETED,
        ["first", "second"],
        1,
    )
    assert dict(handler_app.calls) == {"first": 1, "second": 1}


def test_a_message_arriving_with_too_little_time_left_is_handed_on_unclaimed(
    deployed: Deployment,
) -> None:
    handle = deployed.client.trigger("two-steps")
    [message] = deployed.receive()

    assert deployed.deliver([message], remaining_ms=4_000) == {"batchItemFailures": []}

    run = deployed.client.get_run(handle.run_id)
    assert (run.status, run.attempt, run.started_at) == (rung.RunStatus.QUEUED, 1, None)
    assert dict(handler_app.calls) == {}
    [fresh] = deployed.receive()
    assert fresh["MessageId"] != message["MessageId"]
    assert deployed.deliver([fresh]) == {"batchItemFailures": []}
    assert deployed.client.get_run(handle.run_id).status == rung.RunStatus.COMPLETED


def test_the_container_builds_one_worker(deployed: Deployment) -> None:
    handles = []
    for name in ("Ada", "Grace"):
        handles.append(deployed.client.trigger("greet", {"name": name}))
        messages = deployed.receive()
        assert len(messages) == 1
        assert deployed.deliver(messages) == {"batchItemFailures": []}

    assert worker_module.worker.cache_info().misses == 1
    assert worker_module.worker.cache_info().hits == 1
    assert [deployed.client.get_run(h.run_id).status for h in handles] == ["COMPLETED"] * 2


@pytest.mark.parametrize("xray", ["on", "off"])
def test_spans_go_to_an_otlp_collector_when_the_environment_asks(
    deployed: Deployment, monkeypatch: pytest.MonkeyPatch, xray: str
) -> None:
    monkeypatch.setenv("RUNG_TRACING", xray)  # X-Ray on or off: OTLP is a switch of its own
    receiver = Receiver()
    try:
        monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", f"{receiver.endpoint}/v1/traces")
        handle = deployed.client.trigger("greet", {"name": "Ada"})
        run = deployed.client.get_run(handle.run_id)
        assert deployed.deliver(deployed.receive()) == {"batchItemFailures": []}
    finally:
        receiver.close()

    # The invocation sent its spans before it returned: the run's, its attempt's, its step's.
    spans = receiver.spans()
    assert sorted(span.name for span in spans) == ["greet", "greet", "step /hello#1"]
    assert run.trace_id is not None
    assert {span.trace_id.hex() for span in spans} == {run.trace_id[2:].replace("-", "")}
    assert all(attributes(s.attributes)["rung.run_id"] == run.run_id for s in spans)
    assert all(r["service.name"] == "handler-test" for r in receiver.resources())


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("RUNG_TABLE_NAME", None, "RUNG_TABLE_NAME is not set: set it to the rung DynamoDB"),
        ("RUNG_QUEUE_URL", "", "RUNG_QUEUE_URL is not set: set it to the work queue's URL"),
        ("RUNG_APP", None, "RUNG_APP is not set: set it to module:attr"),
        ("RUNG_APP", "tests.functional.handler_app", "RUNG_APP is 'tests.functional.handler_app'"),
        ("RUNG_APP", "no_such_module_xyz:app", "cannot import module 'no_such_module_xyz'"),
        ("RUNG_APP", "tests.functional.handler_app:calls", "handler_app.calls is Counter, not"),
        ("RUNG_LEASE_SECONDS", "16m", "RUNG_LEASE_SECONDS is '16m': set it to a positive int"),
        ("RUNG_MAX_RECEIVE_COUNT", "0", "RUNG_MAX_RECEIVE_COUNT is '0': set it to a positive"),
    ],
)
def test_a_bad_environment_is_named_in_the_error(
    deployed: Deployment,
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    value: str | None,
    expected: str,
) -> None:
    if value is None:
        monkeypatch.delenv(name)
    else:
        monkeypatch.setenv(name, value)

    deployed.client.trigger("greet", {"name": "Ada"})

    with pytest.raises(InvalidConfig, match=re.escape(expected)):
        deployed.deliver(deployed.receive())


def test_a_step_longer_than_the_lease_keeps_its_run_while_a_duplicate_arrives(
    deployed: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A 3 s lease, kept by the heartbeat (a beat every second) while the step runs on.
    monkeypatch.setenv("RUNG_LEASE_SECONDS", "3")
    handler_app.long_entered.clear()
    handler_app.long_gate.clear()
    handle = deployed.client.trigger("long-step")
    [message] = deployed.receive()
    outcome: list[dict[str, Any]] = []
    invocation = threading.Thread(target=lambda: outcome.append(deployed.deliver([message])))
    invocation.start()
    try:
        assert handler_app.long_entered.wait(30)
        claimed = deployed.client.get_run(handle.run_id).lease_until
        assert claimed is not None
        # The lease taken at the claim has run out by the wall clock ...
        while datetime.now(UTC) < claimed + timedelta(seconds=1):
            time.sleep(0.05)
        # ... and a duplicate of the run's message arrives (another worker): the run is
        # still held, not taken over.
        duplicate = Worker(
            handler_app.app,
            deployed.store,
            SqsQueue(deployed.sqs, deployed.queue_url, 5),
            SystemClock(),
            WorkerConfig(lease_duration=timedelta(seconds=3)),
        )
        SqsQueue(deployed.sqs, deployed.queue_url).send(handle.run_id)
        [copy] = [m for m in deployed.receive() if m["MessageId"] != message["MessageId"]]
        assert duplicate.handle(queue_message(copy)) == Disposition.KEEP
    finally:
        handler_app.long_gate.set()
        invocation.join(60)
    assert outcome == [{"batchItemFailures": []}]
    run = deployed.client.get_run(handle.run_id)
    assert (run.status, run.output, run.attempt) == (rung.RunStatus.COMPLETED, "done", 1)
    assert handler_app.calls["long"] == 1
    assert "WorkerLost" not in [str(e.type) for e in deployed.client.history(handle.run_id)]


def test_a_killed_invocations_message_comes_back_after_the_lease_and_its_run_is_retried(
    deployed: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RUNG_LEASE_SECONDS", "2")
    # The queue's own visibility timeout: 12 hours, far beyond this test's patience.
    deployed.sqs.set_queue_attributes(
        QueueUrl=deployed.queue_url, Attributes={"VisibilityTimeout": "43200"}
    )
    handle = deployed.client.trigger("dies-once")
    [message] = deployed.receive()
    with pytest.raises(handler_app.InvocationKilled):
        deployed.deliver([message])  # dies inside step "fatal"; nothing more is written
    died = time.monotonic()
    assert deployed.client.get_run(handle.run_id).status == rung.RunStatus.RUNNING

    # The message comes back by itself: its invocation held it only for the lease and
    # a margin at a time (here 2 + 5 s), not for the queue's visibility timeout.
    again: list[dict[str, Any]] = []
    while not again and time.monotonic() - died < 60:
        again = deployed.receive(wait_seconds=1)
    assert [m["MessageId"] for m in again] == [message["MessageId"]]
    print(f"\nthe killed invocation's message came back after {time.monotonic() - died:.1f} s")
    assert deployed.deliver(again) == {"batchItemFailures": []}

    run = deployed.client.get_run(handle.run_id)
    assert (run.status, run.output, run.attempt) == (
        rung.RunStatus.COMPLETED,
        ["before", "survived"],
        2,
    )
    assert handler_app.calls["before"] == 1  # checkpointed before the death: not repeated
    assert "WorkerLost" in [str(e.type) for e in deployed.client.history(handle.run_id)]


def queue_message(raw: dict[str, Any]) -> QueueMessage:
    attributes = raw["Attributes"]
    return QueueMessage(
        message_id=raw["MessageId"],
        body=raw["Body"],
        receipt_handle=raw["ReceiptHandle"],
        receive_count=int(attributes["ApproximateReceiveCount"]),
        sent_at_ms=int(attributes["SentTimestamp"]),
    )


class Lines(logging.Handler):
    """Collects the messages of a logger's records, for a test to wait on."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_a_worker_whose_run_was_taken_over_stops_at_its_next_step(
    deployed: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A lease long enough that no renewal before step "more" would notice the takeover
    # (less than half of it has passed by then); the heartbeat beats every 2 s.
    monkeypatch.setenv("RUNG_LEASE_SECONDS", "6")
    handler_app.long_entered.clear()
    handler_app.long_gate.clear()
    lines = Lines()
    logging.getLogger("rung.worker").addHandler(lines)
    handle = deployed.client.trigger("long-then-more")
    [message] = deployed.receive()
    outcome: list[dict[str, Any]] = []
    invocation = threading.Thread(target=lambda: outcome.append(deployed.deliver([message])))
    invocation.start()
    try:
        assert handler_app.long_entered.wait(30)
        # Another worker whose clock runs an hour ahead sees the lease expired (as it
        # would be had this worker stalled for a whole lease) and takes the run over,
        # running it to the end while the first worker is still inside step "long".
        ahead = VirtualClock()
        ahead.advance(timedelta(hours=1))
        usurper = Worker(
            handler_app.app,
            deployed.store,
            SqsQueue(deployed.sqs, deployed.queue_url, 5),
            ahead,
            WorkerConfig(lease_duration=timedelta(seconds=6), heartbeat=False),
        )
        SqsQueue(deployed.sqs, deployed.queue_url).send(handle.run_id)
        [copy] = [m for m in deployed.receive() if m["MessageId"] != message["MessageId"]]
        assert usurper.handle(queue_message(copy)) == Disposition.ACK
        assert deployed.client.get_run(handle.run_id).status == rung.RunStatus.COMPLETED
        # The first worker's heartbeat finds its lease gone ...
        deadline = time.monotonic() + 30
        while not any("found by the heartbeat" in m for m in lines.messages):
            assert time.monotonic() < deadline, lines.messages
            time.sleep(0.05)
    finally:
        handler_app.long_gate.set()
        invocation.join(60)
        logging.getLogger("rung.worker").removeHandler(lines)
    # ... so, when its step returns, it stops there: step "more" ran once, by the usurper.
    assert outcome == [{"batchItemFailures": [{"itemIdentifier": message["MessageId"]}]}]
    assert handler_app.calls["more"] == 1
    run = deployed.client.get_run(handle.run_id)
    assert (run.status, run.output, run.attempt) == (
        rung.RunStatus.COMPLETED,
        ["done", "more"],
        2,
    )


def test_a_queue_slot_outlives_the_short_run_lease_of_a_live_run(
    deployed: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The run lease is 3 s (heartbeat-kept); the slot has its own lease (the default
    # RUNG_SLOT_LEASE_SECONDS), renewed before steps only, so a step that runs past
    # the run lease does not free the slot for another run.
    monkeypatch.setenv("RUNG_LEASE_SECONDS", "3")
    handler_app.long_entered.clear()
    handler_app.long_gate.clear()
    first = deployed.client.trigger("solo-long")
    [message] = deployed.receive()
    outcome: list[dict[str, Any]] = []
    invocation = threading.Thread(target=lambda: outcome.append(deployed.deliver([message])))
    invocation.start()
    try:
        assert handler_app.long_entered.wait(30)
        claimed = deployed.client.get_run(first.run_id).lease_until
        assert claimed is not None
        while datetime.now(UTC) < claimed + timedelta(seconds=1):
            time.sleep(0.05)  # the run lease taken with the slot has run out
        second = deployed.client.trigger("solo-long")
        other = Worker(
            handler_app.app,
            deployed.store,
            SqsQueue(deployed.sqs, deployed.queue_url, 5),
            SystemClock(),
            WorkerConfig(lease_duration=timedelta(seconds=3)),
        )
        [copy] = [m for m in deployed.receive() if m["MessageId"] != message["MessageId"]]
        assert other.handle(queue_message(copy)) == Disposition.ACK  # parked: no slot
        assert deployed.client.get_queue("solo").parked == 1
        assert handler_app.calls["long"] == 1  # the second run did not start
    finally:
        handler_app.long_gate.set()
        invocation.join(60)
    assert outcome == [{"batchItemFailures": []}]
    assert deployed.client.get_run(first.run_id).attempt == 1
    # The first run's release handed the slot to the second, whose message is sent.
    handed = deployed.receive(wait_seconds=5)
    assert [queue_message(m).body for m in handed] == [f'{{"v":1,"run_id":"{second.run_id}"}}']
    assert other.handle(queue_message(handed[0])) == Disposition.ACK
    run = deployed.client.get_run(second.run_id)
    assert (run.status, run.output) == (rung.RunStatus.COMPLETED, "done")
