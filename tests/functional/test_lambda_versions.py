"""Runs pinned to a Lambda version (docs/versioning.md), through handler/worker.py as
Lambda runs it: a message for a run of an older version is handed to that version's
function and finishes there, and a death at any point of the hand-over loses nothing.

The worker function and its published versions are real on the emulator (moto's Lambda
API), so an invoke of a version that does not exist gets moto's own
ResourceNotFoundException. moto cannot *run* a function (that needs Docker): an accepted
asynchronous invoke is recorded at the botocore layer and answered 202, as Lambda
answers it, and the test then plays Lambda running that version
(``lambda_deployment.WorkerFunction``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

import rung
from rung._aws.sqs import SqsQueue
from rung._util.clock import SystemClock
from rung.models import EventType
from tests.functional import versioned_app
from tests.functional.lambda_deployment import Deployment, InvocationDied, WorkerFunction

pytestmark = pytest.mark.usefixtures("fresh_handler")


@pytest.fixture
def function(
    deployed: Deployment, endpoint_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[WorkerFunction]:
    found = WorkerFunction.create(
        endpoint_url,
        f"{deployed.store.table}-worker",
        monkeypatch.setenv,
        "tests.functional.versioned_app",
    )
    versioned_app.calls.clear()
    versioned_app.die_in.clear()
    # The user's client, with the app's latest code.
    queue = SqsQueue(deployed.sqs, deployed.queue_url)
    deployed.client = rung.Client._from_parts(
        versioned_app.v2, deployed.store, queue, SystemClock()
    )
    yield found
    found.restore()


def start_on_v1(deployed: Deployment, function: WorkerFunction) -> str:
    """A run started by version 1, waiting for its token; then version 2 is deployed
    and the token answered: the run's message reaches version 2's worker first."""
    function.run_as("1")
    run_id = deployed.client.trigger("review", "o-1").run_id
    assert deployed.deliver(deployed.receive()) == {"batchItemFailures": []}
    run = deployed.client.get_run(run_id)
    assert (run.status, run.version) == (rung.RunStatus.WAITING, "1")
    function.run_as("2")
    [token] = deployed.client.list_tokens(run_id)
    deployed.client.complete_token(token.id, "yes")
    return run_id


def hand_over(deployed: Deployment) -> dict[str, Any]:
    """Version 2's worker gets the run's message: it hands it over and keeps it."""
    [message] = deployed.receive()
    response = deployed.deliver([message])
    assert response == {"batchItemFailures": [{"itemIdentifier": message["MessageId"]}]}
    return message


def queue_is_empty(deployed: Deployment) -> bool:
    attrs = deployed.sqs.get_queue_attributes(
        QueueUrl=deployed.queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return set(attrs.values()) == {"0"}


def assert_finished_once_on_v1(deployed: Deployment, run_id: str) -> rung.Run:
    run = deployed.client.get_run(run_id)
    assert (run.status, run.output, run.version) == (rung.RunStatus.COMPLETED, "o-1:yes:v1", "1")
    assert versioned_app.calls == {"v1:draft": 1, "v1:ship": 1}  # never on v2's code
    assert queue_is_empty(deployed)
    return run


def test_a_message_for_an_older_version_is_handed_to_it_and_the_run_finishes_there(
    deployed: Deployment, function: WorkerFunction
) -> None:
    run_id = start_on_v1(deployed, function)
    message = hand_over(deployed)

    [invoke] = function.invokes
    assert (invoke["FunctionName"], invoke["InvocationType"]) == (f"{function.name}:1", "Event")
    event = json.loads(invoke["Payload"])
    assert event["rungHandOver"] == {"from": "2"}
    [record] = event["Records"]
    assert (record["messageId"], record["receiptHandle"], record["body"]) == (
        message["MessageId"],
        message["ReceiptHandle"],
        message["Body"],
    )
    assert deployed.receive() == []  # still in flight, held for version 1
    assert deployed.client.get_run(run_id).status == rung.RunStatus.WAITING  # not claimed

    assert function.run_handed_over() == {"batchItemFailures": []}
    assert_finished_once_on_v1(deployed, run_id)
    # A new run starts on the latest version, with no hand-over.
    function.run_as("2")
    new = deployed.client.trigger("review", "o-2").run_id
    deployed.deliver(deployed.receive())
    assert deployed.client.get_run(new).version == "2"
    assert len(function.invokes) == 1


@pytest.mark.parametrize("death", ["before the invoke", "after the invoke", "event lost"])
def test_a_death_at_any_point_of_the_hand_over_loses_nothing(
    deployed: Deployment, function: WorkerFunction, death: str
) -> None:
    run_id = start_on_v1(deployed, function)
    [message] = deployed.receive()
    if death == "event lost":  # Lambda accepted the event; it never ran
        deployed.deliver([message])
    else:
        function.die = death.split()[0]
        with pytest.raises(InvocationDied):
            deployed.deliver([message])  # the invocation dies: the ESM deletes nothing
        function.die = None
        if death == "after the invoke":  # the accepted event still runs
            function.run_handed_over()
            assert deployed.receive(wait_seconds=4) == []  # deleted by version 1
            assert_finished_once_on_v1(deployed, run_id)
            return
    # The message comes back after the hand-over's hold and is handed over again.
    back = deployed.receive(wait_seconds=10)
    assert [m["MessageId"] for m in back] == [message["MessageId"]]
    deployed.deliver(back)
    function.run_handed_over()
    assert_finished_once_on_v1(deployed, run_id)


def test_a_version_that_dies_mid_attempt_is_taken_over_by_the_same_version(
    deployed: Deployment, function: WorkerFunction, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RUNG_LEASE_SECONDS", "2")
    run_id = start_on_v1(deployed, function)
    hand_over(deployed)
    versioned_app.die_in.add("v1:ship")
    with pytest.raises(InvocationDied):
        function.run_handed_over()
    assert deployed.client.get_run(run_id).status == rung.RunStatus.RUNNING

    # Back after version 1's hold (its lease + 5 s): version 2 hands the crashed run
    # over again rather than take it over on its own code.
    function.run_as("2")
    back = deployed.receive(wait_seconds=15)
    assert len(back) == 1
    deployed.deliver(back)
    assert len(function.invokes) == 2
    function.run_handed_over()
    run = assert_finished_once_on_v1(deployed, run_id)
    assert run.attempt == 2
    assert EventType.WORKER_LOST in [e.type for e in deployed.client.history(run_id)]


def test_an_invoke_lambda_refuses_is_tried_again_soon(
    deployed: Deployment, function: WorkerFunction
) -> None:
    run_id = start_on_v1(deployed, function)
    function.throttle = True
    hand_over(deployed)  # kept: it comes back in about two seconds
    assert function.invokes == []
    back = deployed.receive(wait_seconds=10)
    assert len(back) == 1
    deployed.deliver(back)
    function.run_handed_over()
    assert_finished_once_on_v1(deployed, run_id)


def test_a_run_pinned_to_a_deleted_version_fails_with_what_to_do(
    deployed: Deployment, function: WorkerFunction
) -> None:
    run_id = start_on_v1(deployed, function)
    function.api.delete_function(FunctionName=function.name, Qualifier="1")
    [message] = deployed.receive()
    assert deployed.deliver([message]) == {"batchItemFailures": []}  # done with: deleted

    run = deployed.client.get_run(run_id)
    assert run.status == rung.RunStatus.FAILED
    assert run.error is not None and run.error.type == "VersionNotFound"
    assert "code version '1', which no longer exists" in run.error.message
    assert f"rung runs redrive {run_id}" in run.error.message
    assert versioned_app.calls == {"v1:draft": 1}  # nothing ran on version 2's code
    assert queue_is_empty(deployed)


def test_a_function_running_as_latest_does_not_pin_runs(
    deployed: Deployment, function: WorkerFunction
) -> None:
    function.run_as("1")
    function.setenv("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
    run_id = deployed.client.trigger("review", "o-1").run_id
    deployed.deliver(deployed.receive())
    run = deployed.client.get_run(run_id)
    assert (run.status, run.version) == (rung.RunStatus.WAITING, None)
