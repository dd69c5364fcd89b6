"""rung dev's SigV4 check (``rung._dev.api.SigV4Verifier``): what a function URL with
AWS_IAM auth accepts and refuses, with requests signed by botocore as any AWS client
signs them."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from rung._dev.api import MAX_SKEW, Refusal, SigV4Verifier
from rung._util.clock import SystemClock, VirtualClock

URL = "http://127.0.0.1:8080/runs?status=QUEUED&limit=5"
BODY = b'{"payload": {"order_id": "o-1"}}'


def signed(
    url: str = URL,
    body: bytes = BODY,
    key: str = "test",
    secret: str = "test",
    region: str = "us-east-1",
    service: str = "lambda",
) -> dict[str, str]:
    request = AWSRequest(method="POST", url=url, data=body, headers={"Host": "127.0.0.1:8080"})
    SigV4Auth(Credentials(key, secret), service, region).add_auth(request)
    return {name.lower(): value for name, value in request.headers.items()}


def verifier(clock: SystemClock | VirtualClock | None = None) -> SigV4Verifier:
    return SigV4Verifier({"test": "test"}, "us-east-1", clock=clock)


def test_a_request_signed_with_a_known_key_is_accepted_as_that_caller() -> None:
    identity = verifier().verify("POST", "/runs?status=QUEUED&limit=5", signed(), BODY)
    assert isinstance(identity, dict)
    assert identity["accessKey"] == "test"


def test_an_unsigned_request_is_401() -> None:
    refusal = verifier().verify("POST", "/runs", {"host": "127.0.0.1:8080"}, BODY)
    assert isinstance(refusal, Refusal) and refusal.status == 401
    assert "SigV4" in refusal.message


@pytest.mark.parametrize(
    ("headers", "body", "target", "why"),
    [
        (lambda: signed(secret="wrong"), BODY, "/runs?status=QUEUED&limit=5", "does not match"),
        (lambda: signed(key="AKIDOTHER"), BODY, "/runs?status=QUEUED&limit=5", "not known"),
        (signed, b'{"payload": {"order_id": "o-2"}}', "/runs?status=QUEUED&limit=5", "match"),
        (signed, BODY, "/runs?status=FAILED&limit=5", "does not match"),
        (signed, BODY, "/tokens?status=QUEUED&limit=5", "does not match"),
        (lambda: signed(region="eu-west-1"), BODY, "/runs?status=QUEUED&limit=5", "eu-west-1"),
        (lambda: signed(service="execute-api"), BODY, "/runs?status=QUEUED&limit=5", "execute-api"),
        (lambda: {**signed(), "authorization": "Bearer abc"}, BODY, "/runs", "not an AWS4-HMAC"),
    ],
    ids=[
        "wrong secret",
        "unknown key",
        "body changed",
        "query changed",
        "path changed",
        "other region",
        "other service",
        "not sigv4",
    ],
)
def test_a_wrong_signature_is_403_saying_why(
    headers: Callable[[], dict[str, str]], body: bytes, target: str, why: str
) -> None:
    # (signed when the test runs, not when it is collected: the date must be recent)
    refusal = verifier().verify("POST", target, headers(), body)
    assert isinstance(refusal, Refusal) and refusal.status == 403
    assert why in refusal.message


def test_a_signature_older_than_the_allowed_skew_is_refused() -> None:
    headers = signed()
    later = VirtualClock()
    later.advance(MAX_SKEW + timedelta(seconds=5))
    refusal = verifier(later).verify("POST", "/runs?status=QUEUED&limit=5", headers, BODY)
    assert isinstance(refusal, Refusal) and refusal.status == 403
    assert "not within" in refusal.message


def test_a_signed_header_that_is_missing_is_refused() -> None:
    headers = signed()
    del headers["x-amz-date"]
    refusal = verifier().verify("POST", "/runs?status=QUEUED&limit=5", headers, BODY)
    assert isinstance(refusal, Refusal) and refusal.status == 403
