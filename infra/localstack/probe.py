"""Checks that a LocalStack answers: health of the services rung uses, and a DynamoDB round trip.

Standard library only, so any python3 can run it (also against a LocalStack that
this repository did not start, e.g. a Docker container on a laptop).

    python3 infra/localstack/probe.py health   http://127.0.0.1:4566   # exit 0: healthy
    python3 infra/localstack/probe.py dynamodb http://127.0.0.1:4566   # CreateTable/DeleteTable
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request
from typing import Any

#: The services the data plane and the tests need, and the states LocalStack reports
#: for a usable one ("available": not started yet, starts on first request).
SERVICES = ("dynamodb", "sqs", "cloudformation", "logs")
USABLE = ("available", "running")


def health(endpoint: str) -> tuple[bool, str]:
    """Whether every service rung needs is usable, and what is wrong if not."""
    try:
        with urllib.request.urlopen(f"{endpoint}/_localstack/health", timeout=3) as response:
            data = json.load(response)
    except (OSError, ValueError) as exc:
        return False, f"no LocalStack health at {endpoint}: {exc}"
    services = data.get("services", {}) if isinstance(data, dict) else {}
    missing = {s: services.get(s, "absent") for s in SERVICES if services.get(s) not in USABLE}
    if missing:
        return False, f"LocalStack at {endpoint} lacks usable services: {missing}"
    return True, f"LocalStack {data.get('version', '?')} at {endpoint} is healthy"


def _dynamodb(endpoint: str, operation: str, body: dict[str, Any], timeout: float) -> Any:
    request = urllib.request.Request(
        endpoint,
        data=json.dumps(body).encode(),
        headers={
            "Content-Type": "application/x-amz-json-1.0",
            "X-Amz-Target": f"DynamoDB_20120810.{operation}",
            # LocalStack reads the region and account from the credential scope only.
            "Authorization": (
                "AWS4-HMAC-SHA256 Credential=test/20250101/us-east-1/dynamodb/aws4_request, "
                "SignedHeaders=host, Signature=0"
            ),
        },
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.load(response)
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode("utf-8", "replace")[:300]
        raise RuntimeError(f"DynamoDB {operation}: HTTP {exc.code}: {detail}") from None


def dynamodb_round_trip(endpoint: str, timeout: float) -> str:
    """Create a table, wait until it is ACTIVE, delete it. The first call starts the
    DynamoDB Local Java process, which is where an unseeded (offline) LocalStack fails."""
    name = f"rung-probe-{os.getpid()}-{int(time.time())}"
    started = time.monotonic()
    _dynamodb(
        endpoint,
        "CreateTable",
        {
            "TableName": name,
            "AttributeDefinitions": [{"AttributeName": "pk", "AttributeType": "S"}],
            "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"}],
            "BillingMode": "PAY_PER_REQUEST",
        },
        timeout,
    )
    try:
        while True:
            table = _dynamodb(endpoint, "DescribeTable", {"TableName": name}, timeout)["Table"]
            if table["TableStatus"] == "ACTIVE":
                break
            if time.monotonic() - started > timeout:
                raise RuntimeError(f"table {name} is still {table['TableStatus']}")
            time.sleep(0.2)
        _dynamodb(
            endpoint,
            "PutItem",
            {
                "TableName": name,
                "Item": {"pk": {"S": "x"}},
                "ConditionExpression": "attribute_not_exists(pk)",
            },
            timeout,
        )
    finally:
        _dynamodb(endpoint, "DeleteTable", {"TableName": name}, timeout)
    return f"DynamoDB works ({time.monotonic() - started:.1f}s for CreateTable..DeleteTable)"


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[1] not in ("health", "dynamodb"):
        print(__doc__, file=sys.stderr)
        return 2
    command, endpoint = argv[1], argv[2].rstrip("/")
    if command == "health":
        ok, message = health(endpoint)
        print(message)
        return 0 if ok else 1
    try:
        print(dynamodb_round_trip(endpoint, float(os.environ.get("PROBE_TIMEOUT", "90"))))
    except (OSError, RuntimeError, KeyError) as exc:
        print(f"DynamoDB does not work at {endpoint}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
