"""DynamoStore's section that records new runs: one (``create_run``, at most one run per
idempotency key) or many at once (``create_runs``, 25 per ``BatchWriteItem``)."""

from __future__ import annotations

import random
import time
from datetime import datetime, timedelta
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from rung._aws.dynamodb._common import _IDEM_SK, _N, _S, TTL_ATTRIBUTE, NewRun, _run_key
from rung._aws.dynamodb.debounce import _Debounced
from rung._util.clock import to_ms
from rung._util.serde import INLINE_VALUE_BYTES, json_size
from rung.errors import PayloadTooLarge
from rung.models import Run

_BATCH_WRITE = 25  # the most items one BatchWriteItem takes
#: How ``create_runs`` says a run's fate is unknown.
UNKNOWN = "whether it was stored is unknown"
_UNPROCESSED_TRIES = 8  # BatchWriteItem calls per chunk while DynamoDB leaves items out


class _Created(_Debounced):
    def create_run(
        self, new: NewRun, idempotency_ttl: timedelta | None, now: datetime
    ) -> tuple[Run, bool]:
        """Record a run; with an idempotency key, at most one run per key within its TTL.

        Returns the run and whether it was created now (False: the key matched).
        """
        idem_key = {"pk": _S(f"IDEM#{new.task_id}#{new.idempotency_key}"), "sk": _S(_IDEM_SK)}
        big = json_size(new.payload_json) > INLINE_VALUE_BYTES
        if new.idempotency_key is not None and big:
            # A payload that goes to S3: the key first, so that a repeated trigger puts
            # no object nothing would name (only a racing one can: docs/payloads.md).
            found = self.client.get_item(TableName=self.table, Key=idem_key, ConsistentRead=True)
            held = found.get("Item")
            if held is not None and int(held["expires_at_ms"]["N"]) >= to_ms(now):
                return self.get_run(held["run_id"]["S"]), False
        item = self._new_run_item(new)
        if new.idempotency_key is None:
            self.client.put_item(
                TableName=self.table, Item=item, ConditionExpression="attribute_not_exists(pk)"
            )
            return self._run_from_item(item), True
        ttl = idempotency_ttl or timedelta(days=30)
        expires = now + ttl
        try:
            self.client.transact_write_items(
                TransactItems=[
                    {
                        "Put": {
                            "TableName": self.table,
                            "Item": {
                                **idem_key,
                                "run_id": _S(new.run_id),
                                "expires_at_ms": _N(to_ms(expires)),
                                TTL_ATTRIBUTE: _N(int(expires.timestamp())),
                            },
                            # key_not_exists OR expiry_expired: a key past its TTL may be reused
                            # even if DynamoDB's TTL sweeper has not deleted it yet.
                            "ConditionExpression": (
                                "attribute_not_exists(pk) OR expires_at_ms < :now"
                            ),
                            "ExpressionAttributeValues": {":now": _N(to_ms(now))},
                        }
                    },
                    {
                        "Put": {
                            "TableName": self.table,
                            "Item": item,
                            "ConditionExpression": "attribute_not_exists(pk)",
                        }
                    },
                ]
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "TransactionCanceledException":
                raise
            existing = self.client.get_item(
                TableName=self.table, Key=idem_key, ConsistentRead=True
            ).get("Item")
            if existing is None:  # the winner's key expired and vanished meanwhile
                return self.create_run(new, idempotency_ttl, now)
            return self.get_run(existing["run_id"]["S"]), False
        return self._run_from_item(item), True

    def create_runs(self, runs: list[NewRun]) -> dict[str, str]:
        """Record runs without idempotency keys, 25 per ``BatchWriteItem`` (their ids are
        new, so no condition is needed); returns the ids of the runs not stored, with
        why. Items DynamoDB leaves unprocessed are written again, with backoff. After a
        request whose outcome is unknown (a timeout, a 5xx), what it stored is read
        back, so a run is never reported unstored while it exists.

        Raises:
            ClientError: refused as a whole (access denied, no such table) before any
                run was stored: nothing is."""
        failed: dict[str, str] = {}
        for start in range(0, len(runs), _BATCH_WRITE):
            requests = []
            for new in runs[start : start + _BATCH_WRITE]:
                try:  # (a payload over 128 KiB is put to S3 first)
                    requests.append({"PutRequest": {"Item": self._new_run_item(new)}})
                except PayloadTooLarge as exc:  # (no payload bucket)
                    failed[new.run_id] = str(exc)
                except (ClientError, BotoCoreError) as exc:
                    failed[new.run_id] = f"its payload could not be stored in S3: {exc}"
            if not requests:
                continue
            try:
                for attempt in range(_UNPROCESSED_TRIES):
                    out = self.client.batch_write_item(RequestItems={self.table: requests})
                    requests = out.get("UnprocessedItems", {}).get(self.table, [])
                    if not requests or attempt == _UNPROCESSED_TRIES - 1:
                        break
                    time.sleep(min(0.05 * 2**attempt, 1.0) * random.uniform(0.5, 1.5))  # noqa: S311
            except (ClientError, BotoCoreError) as exc:
                if start == 0 and _refused_as_a_whole(exc):
                    raise
                failed.update(self._not_stored([_put_run_id(r) for r in requests], str(exc)))
                continue
            for request in requests:  # still unprocessed: throttled throughout
                failed[_put_run_id(request)] = "throttled by DynamoDB"
        return failed

    def _not_stored(self, run_ids: list[str], why: str) -> dict[str, str]:
        """Of runs a failed write may or may not have stored, the ones it did not (read
        back consistently); if even that read fails, each says its fate is unknown."""
        try:
            stored = {
                item["run_id"]["S"]
                for item in self._batch_get(
                    [_run_key(run_id) for run_id in run_ids], {"#r": "run_id"}
                )
            }
        except (ClientError, BotoCoreError, RuntimeError) as exc:
            unknown = (
                f"{why}; {UNKNOWN} (reading it back failed: {exc}): "
                "check get_run(run_id) before triggering it again"
            )
            return {run_id: f"{unknown} [run id {run_id}]" for run_id in run_ids}
        return {run_id: why for run_id in run_ids if run_id not in stored}


def _put_run_id(request: dict[str, Any]) -> str:
    return str(request["PutRequest"]["Item"]["run_id"]["S"])


def _refused_as_a_whole(exc: Exception) -> bool:
    """An error no retry of the same call fixes (permissions, a missing table)."""
    code = exc.response.get("Error", {}).get("Code") if isinstance(exc, ClientError) else None
    return code in {
        "AccessDeniedException",
        "ResourceNotFoundException",
        "UnrecognizedClientException",
        "ValidationException",
    }
