"""The same end-to-end scenarios on every local target: the embedded emulator of
`rung dev` and LocalStack. Both run the template's data plane as a CloudFormation
stack and the handlers in `rung dev`'s worker processes."""

from __future__ import annotations

import os
import secrets
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

import rung
from rung._dev import DevOptions, DevStack

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module", params=["embedded", "localstack"])
def dev(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DevStack]:
    state = tmp_path_factory.mktemp(f"dev-{request.param}")
    effects = state / "effects.log"
    previous = os.environ.get("RUNG_TEST_EFFECTS")
    os.environ["RUNG_TEST_EFFECTS"] = str(effects)  # inherited by the worker processes
    endpoint = None
    if request.param == "localstack":
        endpoint = request.getfixturevalue("localstack_endpoint")
    options = DevOptions(
        app="tests.integration.dev_app:app",
        port=free_port(),
        endpoint_url=endpoint,
        stack_name=f"rung-scenarios-{secrets.token_hex(3)}",
        state_dir=state / ".rung",
        lease_seconds=3,
        workers=2,
        reload=False,
        print_events=False,
        max_receive_count=3,
    )
    try:
        with DevStack(options) as stack:
            yield stack
    finally:
        if previous is None:
            os.environ.pop("RUNG_TEST_EFFECTS", None)
        else:
            os.environ["RUNG_TEST_EFFECTS"] = previous


def effects_of(run_id: str) -> Counter[str]:
    path = Path(os.environ["RUNG_TEST_EFFECTS"])
    lines = path.read_text().splitlines() if path.exists() else []
    return Counter(line.split()[1] for line in lines if line.split()[0] == run_id)


def test_trigger_runs_the_steps_to_completion(dev: DevStack) -> None:
    handle = dev.client.trigger("resume", {"x": 4})
    run = dev.wait(handle.run_id, timeout=90)
    assert run.status == "COMPLETED" and run.output == 41
    assert effects_of(handle.run_id) == {"/a#1": 1, "/b#1": 1, "/c#1": 1}


def test_a_retry_resumes_from_the_checkpoint(dev: DevStack) -> None:
    handle = dev.client.trigger("resume", {"x": 2})
    run = dev.wait(handle.run_id, timeout=90)
    history = dev.client.history(handle.run_id)
    assert run.status == "COMPLETED" and run.attempt == 2
    second = [e.step for e in history if e.attempt == 2 and str(e.type) == "StepStarted"]
    assert second == ["/b#1", "/c#1"]  # step a was not run again
    assert effects_of(handle.run_id)["/a#1"] == 1
    assert [e.delay for e in history if e.delay is not None] != []


def test_the_same_idempotency_key_gives_one_run(dev: DevStack) -> None:
    key = f"order-{secrets.token_hex(4)}"
    handles: list[rung.RunHandle] = []
    barrier = threading.Barrier(8)

    def fire() -> None:
        barrier.wait()
        handles.append(dev.client.trigger("resume", {"x": 1}, idempotency_key=key))

    threads = [threading.Thread(target=fire) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(handles) == 8
    assert len({h.run_id for h in handles}) == 1 and sum(h.created for h in handles) == 1
    run = dev.wait(handles[0].run_id, timeout=90)
    assert run.status == "COMPLETED"
    assert effects_of(run.run_id) == {"/a#1": 1, "/b#1": 1, "/c#1": 1}


def test_a_failing_run_ends_failed_with_its_error(dev: DevStack) -> None:
    run = dev.wait(dev.client.trigger("doomed").run_id, timeout=90)
    assert run.status == "FAILED" and run.error is not None
    assert run.error.type == "NonRetryable" and "card reported stolen" in run.error.message


def test_a_poison_message_ends_in_the_dlq_and_harms_no_run(dev: DevStack) -> None:
    body = f"not a rung message {secrets.token_hex(4)}"
    dev.sqs.send_message(QueueUrl=dev.stack.outputs["QueueUrl"], MessageBody=body)
    healthy = dev.client.trigger("resume", {"x": 3})
    assert dev.wait(healthy.run_id, timeout=90).status == "COMPLETED"
    dlq = dev.stack.outputs["DeadLetterQueueUrl"]
    deadline = time.monotonic() + 120
    seen: list[str] = []
    while body not in seen and time.monotonic() < deadline:
        out = dev.sqs.receive_message(
            QueueUrl=dlq, MaxNumberOfMessages=10, WaitTimeSeconds=1, VisibilityTimeout=0
        )
        seen = [m["Body"] for m in out.get("Messages", [])]
    assert body in seen


def test_children_a_batch_and_a_token_on_the_stack(dev: DevStack) -> None:
    # Child runs and tokens through the target's own DynamoDB (on LocalStack, DynamoDB
    # Local checks every expression and transaction as AWS does).
    handle = dev.client.trigger("fanout", {"parts": 4})
    deadline = time.monotonic() + 120
    while not (tokens := dev.client.list_tokens(handle.run_id)):
        assert time.monotonic() < deadline, dev.client.get_run(handle.run_id)
        time.sleep(0.1)
    [token] = tokens
    dev.client.complete_token(token.id, {"approved": True})
    run = dev.wait(handle.run_id, timeout=120)
    children = dev.client.list_children(handle.run_id)
    assert run.status == "COMPLETED", run.error
    assert run.output == {
        "batch": ["FAILED", 2, 4, 6],
        "single": 10,
        "answer": {"approved": True},
    }
    assert [c.status for c in children] == ["FAILED"] + ["COMPLETED"] * 4
    assert all(c.parent_run_id == handle.run_id for c in children)
    # Started, woken once by the batch's last end, once by the single child, once by
    # the token: four executions of the body (a wake per child would make it 7+).
    assert effects_of(handle.run_id)["body"] == 4
    with pytest.raises(rung.TokenAlreadyResolved):
        dev.client.complete_token(token.id, "again")
