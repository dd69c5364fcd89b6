"""DynamoStore's queues section (flow control; docs/flow-control.md, rung._engine.admission)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from botocore.exceptions import ClientError

from rung._aws.dynamodb._common import (
    _N,
    _S,
    _Base,
    _is_conditional_failure,
    _released,
)
from rung._util.clock import to_ms
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

    def queue_states(self, names: list[str]) -> list[QueueState]:
        """Several queue items by name (a queue's shards), consistently read in one
        ``BatchGetItem`` per 100; in the order given, unstored ones empty."""
        keys = [_queue_key(name) for name in names]
        found = {item["pk"]["S"][len("QUEUE#") :]: item for item in self._batch_get(keys)}
        return [_queue_state_from_item(name, found.get(name)) for name in names]

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
        sets, values = _released(run_id, RunStatus.DELAYED, to_ms(until), now, spent, waiting_for)
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
