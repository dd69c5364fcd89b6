"""Fixtures shared by the integration suite: a LocalStack, template.yaml's data plane
deployed to it, and workers that play the SQS event source for an app.

LocalStack is found through ``RUNG_LOCALSTACK_ENDPOINT`` (``make test`` starts one and
sets it), else through ``AWS_ENDPOINT_URL`` when that points at a LocalStack (e.g. a
Docker container on a laptop). Without either, the LocalStack tests are skipped,
unless ``CI=1`` or ``RUNG_REQUIRE_LOCALSTACK=1``: then they fail. See docs/localstack.md.

The pieces are target-agnostic: ``DataPlane`` is a table and queues at an endpoint,
``deploy_data_plane`` works on any CloudFormation endpoint, and ``QueueWorkers`` runs
``rung._engine.worker.Worker`` on any ``DataPlane``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest

import rung
from rung._aws import cloudformation, sessions
from rung._aws.dynamodb import DynamoStore
from rung._aws.s3 import Blobs
from rung._aws.sqs import QueueMessage, SqsQueue
from rung._engine.config import WorkerConfig
from rung._engine.telemetry import Sinks
from rung._engine.worker import Disposition, Worker
from rung._util.clock import SystemClock
from rung.models import Run

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "template.yaml"
REGION = "us-east-1"
NOT_RUNNING = "LocalStack not running: `make localstack-up` and set RUNG_LOCALSTACK_ENDPOINT"
#: What the tests use of LocalStack; "available" means it starts on first use.
LOCALSTACK_SERVICES = ("dynamodb", "sqs", "cloudformation")

log = logging.getLogger("rung.tests.integration")


# -- LocalStack ----------------------------------------------------------------------------


def localstack_health(endpoint: str) -> str | None:
    """None when ``endpoint`` is a LocalStack with the services rung needs, else why not."""
    try:
        with urllib.request.urlopen(f"{endpoint}/_localstack/health", timeout=5) as response:
            data = json.load(response)
    except (OSError, ValueError) as exc:
        return f"no LocalStack health at {endpoint}/_localstack/health: {exc}"
    services = data.get("services", {}) if isinstance(data, dict) else {}
    bad = {
        s: services.get(s, "absent")
        for s in LOCALSTACK_SERVICES
        if services.get(s) not in ("available", "running")
    }
    return f"LocalStack at {endpoint} lacks services: {bad}" if bad else None


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes")


def find_localstack() -> str:
    """The LocalStack endpoint to test against; skips (or fails, when required) without one."""
    explicit = os.environ.get("RUNG_LOCALSTACK_ENDPOINT", "").strip().rstrip("/")
    if explicit:
        problem = localstack_health(explicit)
        if problem:
            pytest.fail(f"RUNG_LOCALSTACK_ENDPOINT={explicit}, but {problem}", pytrace=False)
        return explicit
    aws_endpoint = os.environ.get("AWS_ENDPOINT_URL", "").strip().rstrip("/")
    if aws_endpoint and localstack_health(aws_endpoint) is None:
        return aws_endpoint  # a LocalStack container the environment already points at
    if _truthy("CI") or _truthy("RUNG_REQUIRE_LOCALSTACK"):
        pytest.fail(f"{NOT_RUNNING} (required here: CI or RUNG_REQUIRE_LOCALSTACK is set)")
    pytest.skip(NOT_RUNNING)


@pytest.fixture(scope="session")
def localstack_endpoint() -> str:
    """A healthy LocalStack's endpoint URL (see the module docstring)."""
    return find_localstack()


# -- the data plane ------------------------------------------------------------------------


@dataclass(frozen=True)
class DataPlane:
    """template.yaml's table and queues, deployed as a stack at ``endpoint_url``."""

    endpoint_url: str
    stack_name: str
    table_name: str
    queue_url: str
    dead_letter_queue_url: str
    max_receive_count: int
    outputs: dict[str, str] = field(repr=False)
    region: str = REGION

    def aws(self, service: str) -> object:
        """A boto3 client for ``service`` at this plane's endpoint."""
        return sessions.client(service, self.endpoint_url, self.region)

    @property
    def bucket(self) -> str | None:
        """The payload bucket (values over 128 KiB), if the stack made one."""
        return self.outputs.get("PayloadBucketName")

    def store(self) -> DynamoStore:
        blobs = Blobs(self.aws("s3"), self.bucket) if self.bucket else None
        return DynamoStore(self.aws("dynamodb"), self.table_name, blobs=blobs)

    def queue(self) -> SqsQueue:
        return SqsQueue(self.aws("sqs"), self.queue_url, self.max_receive_count)

    def client(self, app: rung.App) -> rung.Client:
        return rung.Client(
            app,
            table_name=self.table_name,
            queue_url=self.queue_url,
            endpoint_url=self.endpoint_url,
            region=self.region,
            bucket=self.bucket,
        )


def deploy_data_plane(
    endpoint_url: str, stack_name: str, parameters: dict[str, str] | None = None
) -> DataPlane:
    """Translate template.yaml, keep its data plane, create it as a stack and read it back.

    ``RungApp`` only reaches the (left out) function; ``FunctionTimeout`` defaults to 60.
    """
    params = {"RungApp": "tests.integration:app", "FunctionTimeout": "60", **(parameters or {})}
    cfn = cloudformation.translate(cloudformation.load_template(TEMPLATE), params, REGION)
    plane = cloudformation.data_plane(cfn)
    client = sessions.client("cloudformation", endpoint_url, REGION)
    out = cloudformation.deploy(client, stack_name, plane, params).outputs
    default = cfn["Parameters"]["MaxReceiveCount"]["Default"]
    max_receive = int(params.get("MaxReceiveCount", default))
    return DataPlane(
        endpoint_url=endpoint_url,
        stack_name=stack_name,
        table_name=out["TableName"],
        queue_url=out["QueueUrl"],
        dead_letter_queue_url=out["DeadLetterQueueUrl"],
        max_receive_count=max_receive,
        outputs=dict(out),
    )


def remove_data_plane(plane: DataPlane) -> None:
    """Delete the stack, and the table and bucket its DeletionPolicy (Retain) leaves."""
    cfn = sessions.client("cloudformation", plane.endpoint_url, plane.region)
    with contextlib.suppress(Exception):
        cfn.delete_stack(StackName=plane.stack_name)
    dynamodb = sessions.client("dynamodb", plane.endpoint_url, plane.region)
    with contextlib.suppress(Exception):
        dynamodb.delete_table(TableName=plane.table_name)
    if plane.bucket:
        with contextlib.suppress(Exception):
            Blobs(plane.aws("s3"), plane.bucket).drop()


@pytest.fixture(scope="session")
def localstack_plane_factory(
    localstack_endpoint: str,
) -> Iterator[Callable[..., DataPlane]]:
    """``factory(**parameters)``: a data plane on LocalStack, with a unique stack name;
    every plane made is removed at the end of the session."""
    made: list[DataPlane] = []

    def make(**parameters: str) -> DataPlane:
        name = f"rung-it-{secrets.token_hex(4)}"
        plane = deploy_data_plane(localstack_endpoint, name, parameters)
        made.append(plane)
        return plane

    yield make
    for plane in made:
        remove_data_plane(plane)


@pytest.fixture(scope="module")
def localstack_plane(localstack_plane_factory: Callable[..., DataPlane]) -> DataPlane:
    """A data plane of the module's own (no messages of another module's app reach it),
    with MaxReceiveCount=3 so that poison reaches the DLQ quickly."""
    return localstack_plane_factory(MaxReceiveCount="3")


# -- workers ---------------------------------------------------------------------------------


class QueueWorkers:
    """Threads that play the SQS event source: receive, ``Worker.handle``, apply the result.

    ACK deletes the message; KEEP leaves it (the engine set its visibility); POISON
    makes it visible again at once, where Lambda would wait for the queue's visibility
    timeout (6 x FunctionTimeout), so that redrive to the DLQ takes seconds, not minutes.
    """

    def __init__(
        self,
        app: rung.App,
        plane: DataPlane,
        *,
        threads: int = 2,
        lease_duration: timedelta = timedelta(seconds=5),
        sinks: Sinks | None = None,
    ) -> None:
        self.app = app
        self.plane = plane
        self.queue = plane.queue()
        self.store = plane.store()
        self.worker = Worker(
            app,
            self.store,
            self.queue,
            SystemClock(),
            WorkerConfig(lease_duration=lease_duration),
            sinks,
        )
        self.dispositions: Counter[Disposition] = Counter()
        self.faults: list[tuple[str, BaseException]] = []
        self._count = threads
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()

    def __enter__(self) -> QueueWorkers:
        for n in range(self._count):
            thread = threading.Thread(target=self._loop, name=f"queue-worker-{n}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)
        self._threads.clear()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                messages = self.queue.receive(max_messages=10, wait_seconds=1)
            except Exception as exc:
                if not self._stop.is_set():
                    log.exception("receive failed")
                    self._fault("(receive)", exc)
                    self._stop.wait(0.5)
                continue
            for message in messages:
                self._process(message)

    def _process(self, message: QueueMessage) -> None:
        try:
            disposition = self.worker.handle(message)
            if disposition == Disposition.ACK:
                self.queue.delete(message)
            elif disposition == Disposition.POISON:
                self.queue.client.change_message_visibility(
                    QueueUrl=self.queue.url,
                    ReceiptHandle=message.receipt_handle,
                    VisibilityTimeout=0,
                )
        except Exception as exc:
            log.exception("worker failed on %s", message.body)
            self._fault(message.body, exc)
            return
        with self._lock:
            self.dispositions[disposition] += 1

    def _fault(self, body: str, exc: BaseException) -> None:
        with self._lock:
            self.faults.append((body, exc))

    def wait(self, client: rung.Client, run_id: str, timeout: float = 60.0) -> Run:
        """The run once it is terminal; fails on a worker fault or after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while True:
            run = client.get_run(run_id)
            if run.status.is_terminal:
                return run
            if self.faults:
                body, exc = self.faults[0]
                raise AssertionError(f"a worker failed on {body}: {exc!r}") from exc
            if time.monotonic() > deadline:
                raise TimeoutError(f"run {run_id} is still {run.status} after {timeout:g}s")
            time.sleep(0.1)


#: Source of the context object Lambda passes a handler (the fields Powertools reads), for
#: a process that runs a bundle's handler (test_packaging, bench/cold_start.py).
LAMBDA_CONTEXT = """
class Context:  # what Lambda passes (the fields Powertools reads)
    function_name = "rung-worker"
    function_version = "$LATEST"
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:rung-worker"
    memory_limit_in_mb = 512
    aws_request_id = "req-1"
    log_group_name = "/aws/lambda/rung-worker"
    log_stream_name = "stream"
    def get_remaining_time_in_millis(self):
        return 60_000
"""


def lambda_env(extra: dict[str, str]) -> dict[str, str]:
    """A Lambda-like environment for a process that runs a bundle: no virtualenv, no
    PYTHONPATH, only what Lambda sets (test_packaging, bench/cold_start.py)."""
    return {
        "PATH": "/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "AWS_REGION": REGION,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "POWERTOOLS_LOG_LEVEL": "WARNING",
        **extra,
    }


def sqs_event(messages: list[dict[str, Any]], queue_arn: str) -> dict[str, Any]:
    """An SQS event source's event for messages received from the queue."""
    return {
        "Records": [
            {
                "messageId": m["MessageId"],
                "receiptHandle": m["ReceiptHandle"],
                "body": m["Body"],
                "attributes": m["Attributes"],
                "messageAttributes": {},
                "md5OfBody": m["MD5OfBody"],
                "eventSource": "aws:sqs",
                "eventSourceARN": queue_arn,
                "awsRegion": REGION,
            }
            for m in messages
        ]
    }
