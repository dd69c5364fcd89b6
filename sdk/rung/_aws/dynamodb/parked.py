"""DynamoStore's parked runs: a run that finds no free slot parks (a waiter item in
its queue, counted there) and is handed the next slot that frees, best first (priority,
then round-robin across keys); docs/flow-control.md. Built on the queues section."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

from botocore.exceptions import ClientError

from rung._aws.dynamodb._common import (
    _N,
    _NAMES,
    _S,
    _cancellation_reasons,
    _lease_lost,
    _released,
    _run_key,
)
from rung._aws.dynamodb.queues import QueueState, Waiter, _map_key, _queue_key, _Queues
from rung._util.clock import iso, to_ms
from rung.models import RunStatus

#: At most this many spent ``keyseq`` entries are dropped by one hand-off.
_PRUNE_KEYS = 16


class _Parked(_Queues):
    def park(
        self,
        state: QueueState,
        run_id: str,
        token: int,
        key: str,
        priority: int,
        recheck_at: datetime,
        waiting_for: str,
        now: datetime,
        spent: timedelta,
        parked_sk: str | None,
        declared: str | None = None,
    ) -> bool | None:
        """Park a claimed run to wait for a slot: one transaction writes its waiter item,
        counts it in the queue (its place: the key's next sequence number, never
        behind the last one served, so a key with many parked runs interleaves with
        the others instead of going first), and releases the run: QUEUED, due only at
        ``recheck_at`` (the safety net) unless a hand-off wakes it first.

        Returns True when parked, False if the queue changed (read it and try again),
        None if the run was parked already (``parked_sk``, as the claim read it: only
        a hand-off changes it, and not while the run is claimed; only the run is
        released then). ``declared``: as for ``take_slot``.

        Raises:
            LeaseLost: the worker's token is stale.
        """
        release, released = _released(
            run_id, RunStatus.QUEUED, to_ms(recheck_at), now, spent, waiting_for
        )
        run_update = self._fenced(
            run_id,
            token,
            f"{release}, parked_sk = :sk, parked_queue = :queue",
            {**released, ":queue": _S(state.name)},
        )
        if parked_sk is not None:
            kept = self._keep_place(state.name, parked_sk, run_id, token, run_update)
            if kept is not True:
                return kept
        return self._take_place(state, run_id, token, key, priority, declared, run_update)

    def _keep_place(
        self, name: str, parked_sk: str, run_id: str, token: int, run_update: dict[str, Any]
    ) -> bool | None:
        """Parked already (the safety net re-sent it): keep its place, if it still has
        one. None: kept; False: a conflict; True: its waiter item is gone (a hand-off
        that found the run claimed meanwhile dropped it), so it parks afresh."""
        run_update["ExpressionAttributeValues"][":sk"] = _S(parked_sk)
        place = {
            "TableName": self.table,
            "Key": {"pk": _S(f"QUEUE#{name}"), "sk": _S(parked_sk)},
            "ConditionExpression": "attribute_exists(pk)",
        }
        try:
            self.client.transact_write_items(
                TransactItems=[{"Update": run_update}, {"ConditionCheck": place}]
            )
        except ClientError as exc:
            reasons = _cancellation_reasons(exc)
            if reasons is None:
                raise
            if reasons[0] == "ConditionalCheckFailed":
                raise _lease_lost(run_id, token) from None
            # The place's check failed: gone, park afresh; anything else is a conflict
            # (read the queue and try again).
            return reasons[1] == "ConditionalCheckFailed"
        return None

    def _take_place(
        self,
        state: QueueState,
        run_id: str,
        token: int,
        key: str,
        priority: int,
        declared: str | None,
        run_update: dict[str, Any],
    ) -> bool:
        """A new waiter item at the key's next place, counted in the queue, with the
        run's release: one transaction. False: the queue changed."""
        seq = max(state.keyseq.get(key, 0), state.served) + 1  # keyseq: by concurrency key
        sk = f"WAIT#{1000 - priority:04d}#{seq:012d}#{run_id}"
        run_update["ExpressionAttributeValues"][":sk"] = _S(sk)
        if state.version:
            sets = ["waiting = waiting + :one", "keyseq.#k = :seq"]
            names = {"#k": _map_key(key)}
            values: dict[str, Any] = {":one": _N(1), ":seq": _N(seq)}
        else:
            sets = ["waiting = :one", "keyseq = :keyseq", "served = :zero", "holders = :empty"]
            names = {}
            values = {
                ":one": _N(1),
                ":keyseq": {"M": {_map_key(key): _N(seq)}},
                ":zero": _N(0),
                ":empty": {"M": {}},
            }
        if declared is not None:
            sets.append("declared = :declared")
            values[":declared"] = _S(declared)
        queue_update = self._queue_update(state.name, state.version, sets, [], names, values)
        waiter = {
            "TableName": self.table,
            "Item": {
                "pk": _S(f"QUEUE#{state.name}"),
                "sk": _S(sk),
                "run_id": _S(run_id),
                "key": _S(key),
                "seq": _N(seq),
            },
            "ConditionExpression": "attribute_not_exists(pk)",
        }
        try:
            self.client.transact_write_items(
                TransactItems=[{"Update": queue_update}, {"Put": waiter}, {"Update": run_update}]
            )
        except ClientError as exc:
            reasons = _cancellation_reasons(exc)
            if reasons is None:
                raise
            if len(reasons) > 2 and reasons[2] == "ConditionalCheckFailed":
                raise _lease_lost(run_id, token) from None
            return False
        return True

    def waiters(self, name: str, page: int = 25, after: str | None = None) -> Iterator[Waiter]:
        """Parked runs in the order they get slots: priority, then round-robin by key.

        Read lazily, ``page`` items per request: a hand-off with no per-key limit
        needs only the first waiter, however many are parked. ``after``: start after
        this sort key (it need not exist: ``WAIT#<band>#~`` skips a priority band)."""
        start: dict[str, Any] | None = None
        while True:
            query: dict[str, Any] = {
                "TableName": self.table,
                "ConsistentRead": True,
                "KeyConditionExpression": "pk = :pk AND sk BETWEEN :low AND :high",
                "ExpressionAttributeValues": {
                    ":pk": _S(f"QUEUE#{name}"),
                    ":low": _S(after if after is not None else "WAIT#"),
                    ":high": _S("WAIT#~"),  # '~' sorts after the digits and '#' of a key
                },
                "Limit": page,
            }
            if start is not None:
                query["ExclusiveStartKey"] = start
            out = self.client.query(**query)
            for i in out.get("Items", []):
                yield Waiter(
                    sk=i["sk"]["S"],
                    run_id=i["run_id"]["S"],
                    key=i["key"]["S"],
                    seq=int(i["seq"]["N"]),
                )
            start = out.get("LastEvaluatedKey")
            if start is None:
                return

    def hand_off(
        self, state: QueueState, waiter: Waiter, until: datetime, now: datetime
    ) -> bool | None:
        """Give a free slot to a parked run: one transaction makes it a holder, removes
        its waiter item and makes the run due now (the caller then sends its message).

        Returns True on success, False if the queue changed, None if the run is no
        longer parked (canceled meanwhile): its waiter item is then dropped.
        """
        served = max(state.served, waiter.seq)
        # A key whose last parked run has been served needs no entry: its next run's
        # place is after `served` anyway. Dropped here, a few at a time, so that keys
        # (tenants) that come and go do not grow the queue item forever.
        spent = [k for k, seq in state.keyseq.items() if seq <= served][:_PRUNE_KEYS]
        names = {"#r": waiter.run_id} | {f"#q{n}": _map_key(k) for n, k in enumerate(spent)}
        queue_update = self._queue_update(
            state.name,
            state.version,
            ["holders.#r = :holder", "waiting = waiting - :one", "served = :served"],
            [f"keyseq.#q{n}" for n in range(len(spent))],
            names,
            {
                ":holder": {
                    "M": {"k": _S(waiter.key), "u": _N(to_ms(until)), "s": _N(0), "t": _N(0)}
                },
                ":one": _N(1),
                ":served": _N(served),
            },
        )
        delete = {
            "TableName": self.table,
            "Key": {"pk": _S(f"QUEUE#{state.name}"), "sk": _S(waiter.sk)},
        }
        wake = {
            "TableName": self.table,
            "Key": _run_key(waiter.run_id),
            "UpdateExpression": "SET available_at = :now_ms, updated_at = :now REMOVE parked_sk",
            "ConditionExpression": "#status = :queued AND parked_sk = :sk",
            "ExpressionAttributeNames": _NAMES,
            "ExpressionAttributeValues": {
                ":queued": _S(RunStatus.QUEUED),
                ":sk": _S(waiter.sk),
                ":now_ms": _N(to_ms(now)),
                ":now": _S(iso(now)),
            },
        }
        try:
            self.client.transact_write_items(
                TransactItems=[{"Update": queue_update}, {"Delete": delete}, {"Update": wake}]
            )
        except ClientError as exc:
            reasons = _cancellation_reasons(exc)
            if reasons is None:
                raise
            if (
                len(reasons) > 2
                and reasons[2] == "ConditionalCheckFailed"
                and (reasons[0] != "ConditionalCheckFailed")
            ):
                self._drop_waiter(state, waiter)
                return None
            return False
        return True

    def _drop_waiter(self, state: QueueState, waiter: Waiter) -> None:
        update = self._queue_update(
            state.name, state.version, ["waiting = waiting - :one"], [], {}, {":one": _N(1)}
        )
        delete = {
            "TableName": self.table,
            "Key": {"pk": _S(f"QUEUE#{state.name}"), "sk": _S(waiter.sk)},
            "ConditionExpression": "attribute_exists(pk)",
        }
        try:
            self.client.transact_write_items(TransactItems=[{"Update": update}, {"Delete": delete}])
        except ClientError as exc:
            if _cancellation_reasons(exc) is None:
                raise

    def drop_parked(self, name: str, sk: str, run_id: str) -> bool:
        """Take a canceled run out of the queue: delete its waiter item and count it out
        of ``waiting``, in one transaction; False if the waiter is gone (handed off or
        dropped by a hand-off that found the run canceled).

        No version condition: one waiter fewer only makes others' decisions more
        conservative. The version is raised all the same, so that a hand-off that read
        the queue before (and may pick this waiter) retries instead of counting it out a
        second time."""
        try:
            self.client.transact_write_items(
                TransactItems=[
                    {
                        "Delete": {
                            "TableName": self.table,
                            "Key": {"pk": _S(f"QUEUE#{name}"), "sk": _S(sk)},
                            "ConditionExpression": "attribute_exists(pk) AND run_id = :run",
                            "ExpressionAttributeValues": {":run": _S(run_id)},
                        }
                    },
                    {
                        "Update": {
                            "TableName": self.table,
                            "Key": _queue_key(name),
                            "UpdateExpression": "SET waiting = waiting - :one ADD version :one",
                            "ConditionExpression": "attribute_exists(pk)",
                            "ExpressionAttributeValues": {":one": _N(1)},
                        }
                    },
                ]
            )
        except ClientError as exc:
            if _cancellation_reasons(exc) is None:
                raise
            return False
        return True
