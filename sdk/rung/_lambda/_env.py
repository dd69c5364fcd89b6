"""Configuration from the environment, worded alike for every handler."""

from __future__ import annotations

import importlib
import os
from datetime import timedelta

from rung._aws import sessions
from rung._aws.dynamodb import DEFAULT_RETENTION, MAX_RETENTION, DynamoStore
from rung._aws.s3 import Blobs
from rung._aws.sqs import DEFAULT_MAX_RECEIVE_COUNT, SqsQueue
from rung.app import App
from rung.errors import InvalidConfig


def require(name: str, what: str) -> str:
    """The variable's value, or an error naming it and what to set it to."""
    value = os.environ.get(name, "").strip()
    if not value:
        raise InvalidConfig(f"environment variable {name} is not set: set it to {what}")
    return value


def positive_int(name: str, default: int) -> int:
    """A positive integer variable, ``default`` when unset, else a clear error."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise InvalidConfig(
            f"environment variable {name} is {text!r}: set it to a positive integer "
            f"(default {default})"
        )
    return value


def retention() -> timedelta:
    """``RUNG_RETENTION_DAYS`` (template parameter RetentionDays): how long finished runs
    are kept, 1 to 3650 days (default 30; docs/retention.md)."""
    default, most = DEFAULT_RETENTION.days, MAX_RETENTION.days
    value = positive_int("RUNG_RETENTION_DAYS", default)
    if value > most:
        raise InvalidConfig(
            f"environment variable RUNG_RETENTION_DAYS is {value}: set it to a whole number "
            f"of days from 1 to {most} (default {default})"
        )
    return timedelta(days=value)


def store_and_queue(
    max_receive_count: int = DEFAULT_MAX_RECEIVE_COUNT,
) -> tuple[DynamoStore, SqsQueue]:
    """The table and the work queue a handler uses: ``RUNG_TABLE_NAME``,
    ``RUNG_QUEUE_URL`` (both required), ``RUNG_RETENTION_DAYS`` (``retention``),
    ``RUNG_PAYLOAD_BUCKET`` (values over 128 KiB; unset: they are refused) and
    ``AWS_ENDPOINT_URL`` (an emulator or LocalStack; unset: AWS).
    ``max_receive_count``: the queue's DLQ threshold."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL") or None
    bucket = os.environ.get("RUNG_PAYLOAD_BUCKET", "").strip()
    store = DynamoStore(
        sessions.client("dynamodb", endpoint),
        require("RUNG_TABLE_NAME", "the rung DynamoDB table's name (stack output TableName)"),
        retention(),
        Blobs(sessions.client("s3", endpoint), bucket) if bucket else None,
    )
    queue = SqsQueue(
        sessions.client("sqs", endpoint),
        require("RUNG_QUEUE_URL", "the work queue's URL (stack output QueueUrl)"),
        max_receive_count,
    )
    return store, queue


def load_app(spec: str) -> App:
    """The app ``RUNG_APP`` names (``module:attr``), or an error saying what to fix."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise InvalidConfig(
            f"environment variable RUNG_APP is {spec!r}: set it to 'module:attr', "
            "e.g. 'shop.tasks:app'"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise InvalidConfig(
            f"RUNG_APP={spec!r}: cannot import module {module_name!r} ({exc}); is it "
            "packaged with the function?"
        ) from exc
    app = getattr(module, attr, None)
    if not isinstance(app, App):
        raise InvalidConfig(
            f"RUNG_APP={spec!r}: {module_name}.{attr} is {type(app).__name__}, not a rung.App"
        )
    return app
