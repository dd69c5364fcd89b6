"""DynamoStore's debounce section: triggers with the same debounce key collapse into one
run while it has not started (docs/lifecycle.md, "Debounce").

    DEBOUNCE#<task>#<key>  #DEBOUNCE   the burst's run id, its due time, its first trigger

A trigger reads the key's item, then, in one transaction each:

* **push**: the run it names is still DELAYED and was never claimed (``lease_token``
  0): the run takes the new payload (and tags, metadata, TTL) and the new due time,
  and the item the due time. The run's message, sent with the first trigger, comes
  back at the old due time, finds the run not due, and waits again (``_later``);
* **start a burst**: no item, or its run has been claimed (it started, or is queued
  for a slot): a new DELAYED run, and the item now names it (on the condition that it
  still names the run read, so two racing triggers make one new run, not two).

A claim and a push race on the run item's conditions: if the claim wins, the push
fails and the trigger starts a new burst, so no trigger's payload is lost and none is
applied to a run that already started. Items expire (``TTL_ATTRIBUTE``) a day after
their due time; conditions never rely on that deletion.
"""

from __future__ import annotations

import random
import time
from datetime import datetime, timedelta
from typing import Any

from botocore.exceptions import ClientError

from rung._aws.dynamodb._common import (
    _N,
    _NAMES,
    _S,
    TTL_ATTRIBUTE,
    NewRun,
    _cancellation_reasons,
    _run_key,
)
from rung._aws.dynamodb.ttl import _Ttl
from rung._util.clock import from_ms, iso, to_ms
from rung.errors import Contended
from rung.models import RunStatus

_DEBOUNCE_SK = "#DEBOUNCE"
_TRIES = 8  # read-then-write rounds a trigger makes while others race on its key
_KEEP = timedelta(days=1)  # how long a key's item outlives its run's due time


class _Debounced(_Ttl):
    def debounce_run(
        self, new: NewRun, key: str, max_wait: timedelta | None, now: datetime
    ) -> tuple[str, bool]:
        """Collapse ``new`` (a DELAYED run, due at the end of its window) into the
        pending run of its task's debounce ``key``, or start a new burst with it.

        Returns the run id and whether ``new`` was stored (True: its message must be
        sent; False: an existing run took its payload and due time).

        Raises:
            Contended: other triggers of the key kept winning the race (rare).
        """
        item_key = {"pk": _S(f"DEBOUNCE#{new.task_id}#{key}"), "sk": _S(_DEBOUNCE_SK)}
        for attempt in range(_TRIES):
            current = self.client.get_item(
                TableName=self.table, Key=item_key, ConsistentRead=True
            ).get("Item")
            if current is not None:
                due = new.available_at
                if max_wait is not None:
                    due = min(due, from_ms(int(current["first_ms"]["N"])) + max_wait)
                run_id = current["run_id"]["S"]
                pushed = self._push(run_id, new, due, item_key, now)
                if pushed == "pushed":
                    return run_id, False
                if pushed == "again":  # a racing trigger or a conflict: read again
                    time.sleep(random.uniform(0.005, 0.05) * (attempt + 1))  # noqa: S311
                    continue
            if self._start_burst(new, item_key, current, now):
                return new.run_id, True
        raise Contended(
            f"debounce key {key!r} of task {new.task_id!r}: other triggers kept changing it; "
            "nothing was triggered. Trigger again"
        )

    def _push(
        self, run_id: str, new: NewRun, due: datetime, item_key: dict[str, Any], now: datetime
    ) -> str:
        """The pending run takes ``new``'s trigger and ``due``: "pushed"; "started" if the
        run was claimed (a new burst begins); "again" if the key changed or DynamoDB
        refused the transaction otherwise (a conflict with a racing one, throttling)."""
        sets = [
            "payload = :payload",
            "available_at = :due",
            "updated_at = :now",
            "triggers = if_not_exists(triggers, :one) + :one",
        ]
        removes: list[str] = []
        values: dict[str, Any] = {
            ":payload": self._value(run_id, new.payload_json, f"the payload of run {run_id}"),
            ":due": _N(to_ms(due)),
            ":now": _S(iso(now)),
            ":one": _N(1),
            ":delayed": _S(RunStatus.DELAYED),
            ":zero": _N(0),
        }
        optional = {
            "tags": {"L": [_S(t) for t in new.tags]} if new.tags else None,
            "meta0": _S(new.metadata_json) if new.metadata_json is not None else None,
            # the TTL counts from the new due time, as the window ends there now
            "start_by_ms": (
                _N(to_ms(due + (new.start_by - new.available_at))) if new.start_by else None
            ),
        }
        for name, value in optional.items():
            if value is None:
                removes.append(name)
            else:
                sets.append(f"{name} = :{name}")
                values[f":{name}"] = value
        update = "SET " + ", ".join(sets) + (" REMOVE " + ", ".join(removes) if removes else "")
        try:
            self.client.transact_write_items(
                TransactItems=[
                    {
                        "Update": {
                            "TableName": self.table,
                            "Key": _run_key(run_id),
                            "UpdateExpression": update,
                            "ConditionExpression": "#status = :delayed AND lease_token = :zero",
                            "ExpressionAttributeNames": _NAMES,
                            "ExpressionAttributeValues": values,
                        }
                    },
                    {
                        "Update": {
                            "TableName": self.table,
                            "Key": item_key,
                            "UpdateExpression": "SET due_ms = :due, #ttl = :expires",
                            "ConditionExpression": "run_id = :run",
                            "ExpressionAttributeNames": {"#ttl": TTL_ATTRIBUTE},
                            "ExpressionAttributeValues": {
                                ":due": _N(to_ms(due)),
                                ":run": _S(run_id),
                                ":expires": _N(int((due + _KEEP).timestamp())),
                            },
                        }
                    },
                ]
            )
        except ClientError as exc:
            reasons = _cancellation_reasons(exc)
            if reasons is None:
                raise
            return "started" if reasons[0] == "ConditionalCheckFailed" else "again"
        return "pushed"

    def _start_burst(
        self,
        new: NewRun,
        item_key: dict[str, Any],
        current: dict[str, Any] | None,
        now: datetime,
    ) -> bool:
        """Store ``new`` and make the key name it; False if another trigger changed the
        key since it was read (``current``)."""
        condition: dict[str, Any] = {"ConditionExpression": "attribute_not_exists(pk)"}
        if current is not None:
            condition = {
                "ConditionExpression": "run_id = :previous",
                "ExpressionAttributeValues": {":previous": current["run_id"]},
            }
        marker = {
            **item_key,
            "run_id": _S(new.run_id),
            "due_ms": _N(to_ms(new.available_at)),
            "first_ms": _N(to_ms(now)),
            TTL_ATTRIBUTE: _N(int((new.available_at + _KEEP).timestamp())),
        }
        try:
            self.client.transact_write_items(
                TransactItems=[
                    {"Put": {"TableName": self.table, "Item": marker, **condition}},
                    {
                        "Put": {
                            "TableName": self.table,
                            "Item": self._new_run_item(new),
                            "ConditionExpression": "attribute_not_exists(pk)",
                        }
                    },
                ]
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "TransactionCanceledException":
                raise
            return False
        return True
