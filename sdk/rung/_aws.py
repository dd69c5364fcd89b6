"""boto3 sessions and clients: one place that knows how rung reaches AWS.

The same code talks to AWS, LocalStack or the embedded emulator; only the
endpoint differs (``endpoint_url`` or ``AWS_ENDPOINT_URL``).
"""

from __future__ import annotations

import os
from typing import Any

import boto3
from botocore.config import Config

DEFAULT_REGION = "us-east-1"
_RETRIES = Config(
    retries={"max_attempts": 5, "mode": "standard"},
    connect_timeout=5,
    read_timeout=30,
    tcp_keepalive=True,
)


def session(endpoint_url: str | None = None, region: str | None = None) -> boto3.session.Session:
    """A boto3 session; against an emulator it supplies dummy credentials if none are set."""
    region = region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    region = region or DEFAULT_REGION
    if endpoint_url and boto3.session.Session().get_credentials() is None:
        return boto3.session.Session(
            aws_access_key_id="test", aws_secret_access_key="test", region_name=region
        )
    return boto3.session.Session(region_name=region)


def client(service: str, endpoint_url: str | None = None, region: str | None = None) -> Any:
    endpoint_url = endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or None
    return session(endpoint_url, region).client(  # type: ignore[call-overload]
        service, endpoint_url=endpoint_url, config=_RETRIES
    )
