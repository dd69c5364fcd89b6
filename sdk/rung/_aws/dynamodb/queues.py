"""DynamoStore's queues section (flow control; docs/flow-control.md, rung._engine.admission)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from botocore.exceptions import ClientError

from rung._aws.dynamodb._common import (
    _N,
    _NAMES,
    _S,
    _Base,
    _cancellation_reasons,
    _is_conditional_failure,
    _lease_lost,
    _released,
    _run_key,
)
from rung._util.clock import iso, to_ms
from rung.models import RunStatus


def _map_key(key: str) -> str:
    """A concurrency key as a DynamoDB map key: prefixed, since a name may not be empty
    and runs without a key have the key ""."""
    return "k:" + key


def _queue_key(name: str) -> dict[str, Any]:
    return {"pk": {"S": f"QUEUE#{name}"}, "sk": {"S": "#QUEUE"}}


@dataclass(frozen=True)
class Holder:
    key: str
    until_ms: int
    start_ms: int  # a reserved start (rate limit); 0 when none was needed or made
    token: int = 0  # the lease token of the attempt holding it (0: handed off, not taken)


@dataclass(frozen=True)
class Waiter:
    sk: str
    run_id: str
    key: str
    seq: int


@dataclass(frozen=True)
class QueueState:
    """A queue's live state as stored (see DynamoStore's queue section)."""

    name: str
    version: int = 0
    holders: dict[str, Holder] = field(default_factory=dict)
    waiting: int = 0
    keyseq: dict[str, int] = field(default_factory=dict)
    served: int = 0
    starts: list[int] = field(default_factory=list)
    kstarts: dict[str, list[int]] = field(default_factory=dict)
    has_kstarts: bool = False
    paused: bool = False
    limit_set: int | None = None
    per_key_set: int | None = None
    stored: bool = False  # the queue item exists (it has run, or was set by an operator)
    #: the queue as the workers' code declares it (``rung._engine.admission.declaration``), written
    #: when a worker admits or parks a run and finds it different: what a client without
    #: the app knows of the code's limits
    declared: str | None = None


def _queue_state_from_item(name: str, item: dict[str, Any] | None) -> QueueState:
    if item is None:
        return QueueState(name)

    def num(attr: str) -> int:
        return int(item[attr]["N"]) if attr in item else 0

    return QueueState(
        name=name,
        version=num("version"),
        holders={
            run_id: Holder(
                key=h["M"]["k"]["S"],
                until_ms=int(h["M"]["u"]["N"]),
                start_ms=int(h["M"]["s"]["N"]),
                token=int(h["M"].get("t", {"N": "0"})["N"]),
            )
            for run_id, h in item.get("holders", {"M": {}})["M"].items()
        },
        waiting=num("waiting"),
        keyseq={k[2:]: int(v["N"]) for k, v in item.get("keyseq", {"M": {}})["M"].items()},
        served=num("served"),
        starts=[int(v["N"]) for v in item.get("starts", {"L": []})["L"]],
        kstarts={
            k[2:]: [int(x["N"]) for x in v["L"]]
            for k, v in item.get("kstarts", {"M": {}})["M"].items()
        },
        has_kstarts="kstarts" in item,
        paused=bool(item.get("paused", {"BOOL": False})["BOOL"]),
        limit_set=num("limit_set") if "limit_set" in item else None,
        per_key_set=num("per_key_set") if "per_key_set" in item else None,
        stored=True,
        declared=item["declared"]["S"] if "declared" in item else None,
    )


class _Queues(_Base):
    # -- queues (flow control) -------------------------------------------------------------
    #
    # QUEUE#<name> / #QUEUE holds a queue's live state, changed by optimistic writes
    # conditioned on its ``version``: ``holders`` (run id -> {k: key, u: lease until ms,
    # s: reserved start ms, t: lease token of the attempt holding it, 0 for a hand-off
    # not taken up yet}), ``waiting`` (parked runs), ``keyseq`` (key -> the sequence
    # number of its last parked run) and ``served`` (the last handed-off sequence
    # number), the rate window ``starts`` (ms, past and reserved), ``kstarts`` per key,
    # operator settings ``paused``, ``limit_set``, ``per_key_set``, and ``declared``, the
    # code's declaration of the queue as the workers last saw it. Parked runs are
    # QUEUE#<name> / WAIT#<1000-priority>#<seq>#<run_id> items: a query reads them in
    # priority order, and within one priority round-robin across keys (see park). A
    # parked run's item holds ``parked_sk`` (its waiter) and ``parked_queue``.

    def queue_state(self, name: str) -> QueueState:
        item = self.client.get_item(
            TableName=self.table, Key=_queue_key(name), ConsistentRead=True
        ).get("Item")
        return _queue_state_from_item(name, item)

    def _queue_update(
        self,
        name: str,
        version: int,
        sets: list[str],
        removes: list[str],
        names: dict[str, str],
        values: dict[str, Any],
    ) -> dict[str, Any]:
        """An ``Update`` on the queue item conditioned on ``version`` (raising it)."""
        sets = [*sets, "version = :next_version"]
        expression = "SET " + ", ".join(sets)
        if removes:
            expression += " REMOVE " + ", ".join(removes)
        update: dict[str, Any] = {
            "TableName": self.table,
            "Key": _queue_key(name),
            "UpdateExpression": expression,
            "ConditionExpression": "attribute_not_exists(pk) OR version = :version",
            "ExpressionAttributeValues": {
                **values,
                ":next_version": _N(version + 1),
                ":version": _N(version),
            },
        }
        if names:
            update["ExpressionAttributeNames"] = names
        return update

    def take_slot(
        self,
        state: QueueState,
        run_id: str,
        key: str,
        until: datetime,
        start_ms: int,
        prune: list[str],
        starts: list[int] | None = None,
        key_starts: list[int] | None = None,
        token: int = 0,
        declared: str | None = None,
    ) -> bool:
        """Record ``run_id`` as a holder (new or renewed) for the attempt with lease
        ``token``; False if the queue changed. ``declared``: record the code's
        declaration too (when the stored one differs)."""
        names: dict[str, str] = {"#r": run_id}
        holder = {"k": _S(key), "u": _N(to_ms(until)), "s": _N(start_ms), "t": _N(token)}
        values: dict[str, Any] = {":holder": {"M": holder}}
        sets = ["holders.#r = :holder"] if state.version else ["holders = :holders"]
        if not state.version:
            values[":holders"] = {"M": {run_id: values.pop(":holder")}}
            names.pop("#r")
        removes = []
        for n, other in enumerate(prune):
            if other != run_id:
                names[f"#p{n}"] = other
                removes.append(f"holders.#p{n}")
        if starts is not None:
            sets.append("starts = :starts")
            values[":starts"] = {"L": [_N(v) for v in starts]}
        if key_starts is not None:
            if state.version and state.has_kstarts:
                sets.append("kstarts.#k = :kstarts")
                names["#k"] = _map_key(key)
                values[":kstarts"] = {"L": [_N(v) for v in key_starts]}
            else:
                sets.append("kstarts = :kstarts")
                values[":kstarts"] = {"M": {_map_key(key): {"L": [_N(v) for v in key_starts]}}}
        if not state.version:
            sets += ["waiting = :zero", "served = :zero", "keyseq = :empty"]
            values[":zero"] = _N(0)
            values[":empty"] = {"M": {}}
        if declared is not None:
            sets.append("declared = :declared")
            values[":declared"] = _S(declared)
        update = self._queue_update(state.name, state.version, sets, removes, names, values)
        try:
            self.client.update_item(**update)
        except ClientError as exc:
            if not _is_conditional_failure(exc):
                raise
            return False
        return True

    def renew_slot(
        self,
        name: str,
        run_id: str,
        until: datetime,
        now: datetime,
        token: int,
        *,
        take: bool = False,
    ) -> bool:
        """Extend a held slot's lease for the attempt with lease ``token``; False if the
        run holds no live slot there any more (or, unless ``take``, another attempt of
        the run holds it). ``take``: the attempt takes over the run's live entry (a
        hand-off, or its own reservation from before a deferral).

        An entry whose lease has run out is not renewed even if nobody pruned it yet:
        every other writer already counts it as free, and may have filled it."""
        condition = "holders.#r.u > :now"
        values = {":until": _N(to_ms(until)), ":now": _N(to_ms(now)), ":token": _N(token)}
        if not take:
            condition += " AND holders.#r.t = :token"
        try:
            self.client.update_item(
                TableName=self.table,
                Key=_queue_key(name),
                UpdateExpression="SET holders.#r.u = :until, holders.#r.t = :token",
                ConditionExpression=condition,
                ExpressionAttributeNames={"#r": run_id},
                ExpressionAttributeValues=values,
            )
        except ClientError as exc:
            if not _is_conditional_failure(exc):
                raise
            return False
        return True

    def release_slot(self, name: str, run_id: str, token: int, now: datetime) -> QueueState | None:
        """Give back the slot the attempt with lease ``token`` holds (idempotent) and
        return the queue as it is after; None if the queue has no state or the run's
        live entry is not this attempt's (a later claim of the run holds it, or it was
        handed to the run anew). An expired entry is removed whoever held it: it is
        free anyway. No version condition: fewer holders can only make another
        writer's decision, based on the count before, more conservative."""
        try:
            out = self.client.update_item(
                TableName=self.table,
                Key=_queue_key(name),
                UpdateExpression="REMOVE holders.#r",
                ConditionExpression=(
                    "attribute_exists(pk) AND (attribute_not_exists(holders.#r) "
                    "OR holders.#r.t = :token OR holders.#r.u <= :now)"
                ),
                ExpressionAttributeNames={"#r": run_id},
                ExpressionAttributeValues={":token": _N(token), ":now": _N(to_ms(now))},
                ReturnValues="ALL_NEW",
            )
        except ClientError as exc:
            if not _is_conditional_failure(exc):
                raise
            return None
        return _queue_state_from_item(name, out.get("Attributes"))

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
        release, released = _released(RunStatus.QUEUED, to_ms(recheck_at), now, spent, waiting_for)
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
        queue_update = self._queue_update(
            state.name,
            state.version,
            ["holders.#r = :holder", "waiting = waiting - :one", "served = :served"],
            [],
            {"#r": waiter.run_id},
            {
                ":holder": {
                    "M": {"k": _S(waiter.key), "u": _N(to_ms(until)), "s": _N(0), "t": _N(0)}
                },
                ":one": _N(1),
                ":served": _N(max(state.served, waiter.seq)),
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

    def defer_run(
        self,
        run_id: str,
        token: int,
        until: datetime,
        waiting_for: str,
        now: datetime,
        spent: timedelta,
    ) -> None:
        """Release the run until ``until`` without ending its attempt (a rate-limit delay)."""
        sets, values = _released(RunStatus.DELAYED, to_ms(until), now, spent, waiting_for)
        self._fenced_update(run_id, token, sets, values)

    def set_queue(
        self,
        name: str,
        *,
        paused: bool | None = None,
        limit: int | None = None,
        per_key_limit: int | None = None,
        clear_limits: bool = False,
    ) -> QueueState:
        """Operator settings that override the code's (``rung queues``)."""
        sets: list[str] = []
        removes: list[str] = []
        values: dict[str, Any] = {}
        if paused is not None:
            sets.append("paused = :paused")
            values[":paused"] = {"BOOL": paused}
        if limit is not None:
            sets.append("limit_set = :limit")
            values[":limit"] = _N(limit)
        if per_key_limit is not None:
            sets.append("per_key_set = :per_key")
            values[":per_key"] = _N(per_key_limit)
        if clear_limits:
            removes += ["limit_set", "per_key_set"]
        for attr, empty in (
            ("holders", {"M": {}}),
            ("keyseq", {"M": {}}),
            ("waiting", _N(0)),
            ("served", _N(0)),
        ):
            sets.append(f"{attr} = if_not_exists({attr}, :init_{attr})")
            values[f":init_{attr}"] = empty
        # Raising the version makes a worker that read the queue before this change
        # retry its (version-conditioned) admission with the new settings: after a
        # pause or a lower limit returns, no admission decided on the old ones lands.
        values[":one"] = _N(1)
        expression = "SET " + ", ".join(sets) + " ADD version :one"
        if removes:
            expression += " REMOVE " + ", ".join(removes)
        out = self.client.update_item(
            TableName=self.table,
            Key=_queue_key(name),
            UpdateExpression=expression,
            ExpressionAttributeValues=values,
            ReturnValues="ALL_NEW",
        )
        return _queue_state_from_item(name, out["Attributes"])

    def list_queue_states(self) -> list[QueueState]:
        """Every queue that has state (a scan of queue items; operators' use only)."""
        items = self._paginate(
            "scan",
            {
                "TableName": self.table,
                "FilterExpression": "begins_with(pk, :prefix) AND sk = :sk",
                "ExpressionAttributeValues": {":prefix": _S("QUEUE#"), ":sk": _S("#QUEUE")},
            },
        )
        return sorted(
            (_queue_state_from_item(i["pk"]["S"][len("QUEUE#") :], i) for i in items),
            key=lambda q: q.name,
        )
