"""The worker function deployed on the emulator, for the tests that call handler/worker.py
as Lambda runs it (test_lambda_handler.py, test_lambda_versions.py).

The emulator (moto) cannot run Lambda code (invoking needs Docker), so these tests
play the event source mapping themselves: receive from the queue, build the event
Lambda would send, call ``lambda_handler`` with a fake context, then delete the
records that were not reported in ``batchItemFailures``, as the mapping does.
"""

from __future__ import annotations

import io
import json
import logging
import secrets
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
from aws_lambda_powertools.utilities.typing import LambdaContext
from botocore.awsrequest import AWSResponse, HTTPHeaders
from botocore.exceptions import ClientError
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


def code_zip(text: str) -> bytes:
    """A function's code as Lambda takes it: a zip (of a handler that is never run)."""
    code = io.BytesIO()
    with zipfile.ZipFile(code, "w") as bundle:
        bundle.writestr("handler/worker.py", text)
    return code.getvalue()


@dataclass
class WorkerFunction:
    """The worker function on the emulator with published versions "1" and "2" (moto's
    Lambda API), and the asynchronous invokes Lambda accepted, each one's API parameters.

    moto cannot *run* a function (that needs Docker): an invoke of a version that
    exists is recorded at the botocore layer and answered 202, as Lambda answers it,
    and ``run_handed_over`` then plays Lambda running that version; an invoke of one
    that does not exist reaches moto, which answers ResourceNotFoundException itself.
    """

    name: str
    api: Any
    setenv: Callable[[str, str], None]
    app_module: str
    invokes: list[dict[str, Any]] = field(default_factory=list)
    #: set by a test: the invocation dies "before" the invoke or "after" Lambda took it
    die: str | None = None
    throttle: bool = False  # the next invoke is refused as throttled
    #: botocore hooks put on every client rung makes (a bench's request counter)
    hooks: list[Callable[[Any], None]] = field(default_factory=list)
    _real_client: Any = field(default=None, repr=False)

    @classmethod
    def create(
        cls, endpoint_url: str, name: str, setenv: Callable[[str, str], None], app_module: str
    ) -> WorkerFunction:
        """Two deploys of the function; ``sessions.client`` is wrapped to hook clients
        (undo with ``restore``)."""
        iam = sessions.client("iam", endpoint_url, REGION)
        api = sessions.client("lambda", endpoint_url, REGION)
        role = iam.create_role(RoleName=name, AssumeRolePolicyDocument="{}")["Role"]["Arn"]
        for n in (1, 2):
            code = code_zip(f"# deploy {n}\n")
            if n == 1:
                api.create_function(
                    FunctionName=name,
                    Runtime="python3.12",
                    Role=role,
                    Handler="handler/worker.lambda_handler",
                    Code={"ZipFile": code},
                    Publish=True,
                )
            else:
                api.update_function_code(FunctionName=name, ZipFile=code, Publish=True)
        made = cls(name, api, setenv, app_module)
        real = sessions.client

        def client(service: str, *args: Any, **kwargs: Any) -> Any:
            new = real(service, *args, **kwargs)
            if service == "lambda":
                made._hook(new)
            for hook in made.hooks:
                hook(new)
            return new

        made._real_client = real
        sessions.client = client
        setenv("AWS_LAMBDA_FUNCTION_NAME", name)
        setenv("RUNG_HAND_OVER_SECONDS", "2")
        return made

    def restore(self) -> None:
        sessions.client = self._real_client
        self.api.delete_function(FunctionName=self.name)
        sessions.client("iam", self.api.meta.endpoint_url, REGION).delete_role(RoleName=self.name)

    def run_as(self, version: str) -> None:
        """A cold container of ``version``: its environment and its app's code."""
        self.setenv("AWS_LAMBDA_FUNCTION_VERSION", version)
        self.setenv("RUNG_APP", f"{self.app_module}:v{version}")
        worker_module.worker.cache_clear()

    def run_handed_over(self, index: int = -1) -> dict[str, Any]:
        """Lambda runs a recorded invoke: the version it names handles its event."""
        params = self.invokes[index]
        self.run_as(params["FunctionName"].rpartition(":")[2])
        response: dict[str, Any] = lambda_handler(
            json.loads(params["Payload"]), FakeLambdaContext()
        )
        return response

    def _exists(self, qualified: str) -> bool:
        name, _, qualifier = qualified.rpartition(":")
        try:
            self.api.get_function(FunctionName=name, Qualifier=qualifier)
        except ClientError:
            return False
        return True

    def _hook(self, client: Any) -> None:
        pending: list[dict[str, Any]] = []

        def build(params: dict[str, Any], **_: Any) -> None:
            pending.append(dict(params))

        def call(**_: Any) -> tuple[AWSResponse, dict[str, Any]] | None:
            params = pending.pop()
            if self.die == "before":
                raise InvocationDied("before the invoke")
            if self.throttle:  # no emulator throttles on demand
                self.throttle = False
                throttled: Any = {"Error": {"Code": "TooManyRequestsException"}}
                raise ClientError(throttled, "Invoke")
            if not self._exists(params["FunctionName"]):
                return None  # moto answers: ResourceNotFoundException
            self.invokes.append(params)
            accepted = AWSResponse("https://lambda.invalid", 202, HTTPHeaders(), None)
            return accepted, {"StatusCode": 202}

        def after(**_: Any) -> None:
            if self.die == "after":
                raise InvocationDied("after Lambda accepted the invoke")

        client.meta.events.register("before-parameter-build.lambda.Invoke", build)
        client.meta.events.register("before-call.lambda.Invoke", call)
        client.meta.events.register("after-call.lambda.Invoke", after)


class InvocationDied(BaseException):
    """The invocation stops dead (killed, out of memory, timed out)."""
