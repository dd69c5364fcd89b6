"""DynamoStore's retention section: finished runs expire (docs/retention.md).

A run's end stamps its expiry on the run item only; its checkpoints are written while
it runs, when its end is unknown, and stamping each of them at the end would double a
run's writes. The sweep (the reconciler's pass) deletes an expired run's other items,
then the run item; DynamoDB's TTL is the free backstop for the run item, set a grace
after the sweep's due time so that the sweep normally gets there first:

    RUNNING --end (fenced)--> terminal, expires_at_ms = end + retention,
        available_at = the same (the sweep's due time: projected into runs_by_status),
        expires_at = that + RETENTION_GRACE (the TTL attribute, epoch seconds)
    FAILED --redrive (while not expired)--> QUEUED, REMOVE expires_at_ms, expires_at
    terminal, expires_at_ms < now - SWEEP_MARGIN --sweep--> its checkpoints, its tokens
        and its idempotency key deleted; then the run item, if unchanged
    terminal, no expires_at_ms (stored before retention) --sweep--> kept a retention
        more: expires_at_ms = max(finished, now) + retention

A running or waiting run carries no expiry at all. Readers compare ``expires_at_ms``
with their clock (TTL deletion lags by up to days): ``Run.expires_at`` in the past means
expired, whether or not the item is still there.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from botocore.exceptions import ClientError

from rung._aws.dynamodb._common import (
    _IDEM_SK,
    _N,
    _NAMES,
    _RUN_SK,
    _S,
    TTL_ATTRIBUTE,
    _is_conditional_failure,
    _run_key,
    _token_key,
)
from rung._aws.dynamodb.listing import IndexQuery, _Listing, entry_run_id
from rung._util.clock import iso, parse_iso, to_ms
from rung._util.durations import check_duration, format_duration
from rung._util.ids import created_at_of
from rung.errors import InvalidConfig, RunExpired, RunNotFound
from rung.models import Run, RunStatus

#: How long a finished run is kept when nothing else is set (template.yaml's default).
DEFAULT_RETENTION = timedelta(days=30)
MIN_RETENTION = timedelta(days=1)
#: Ten years: long audit trails are the owner's call (and storage bill); DynamoDB's TTL
#: has no upper limit, and the sweep's cost does not grow with the retention.
MAX_RETENTION = timedelta(days=3650)
#: The run item's TTL comes this long after its expiry: the sweep (every minute) deletes
#: it and its checkpoints first; TTL deletes it only if no sweep ran for this long.
RETENTION_GRACE = timedelta(days=7)
#: The sweep deletes runs expired at least this long ago: a redrive, refused once a run
#: has expired by its own clock, cannot race a sweep whose clock is a little ahead.
SWEEP_MARGIN = timedelta(minutes=5)
TERMINAL = tuple(status for status in RunStatus if status.is_terminal)
_BATCH_WRITE = 25  # the most items one BatchWriteItem takes


def check_retention(value: object, name: str = "retention") -> timedelta:
    """``value`` (a ``timedelta`` or seconds) as a retention: 1 day to 3650 days."""
    retention = check_duration(value, name, positive=True, maximum=MAX_RETENTION)
    if retention < MIN_RETENTION:
        raise InvalidConfig(
            f"{name} must be at least {format_duration(MIN_RETENTION)} (finished runs are "
            f"kept 1 to 3650 days), got {format_duration(retention)}"
        )
    return retention


def expiry_update(end: datetime, retention: timedelta) -> tuple[str, dict[str, Any]]:
    """The SET clauses (and their values and names) that stamp a run ending at ``end``
    with its expiry; for a terminal transition's update."""
    expires = end + retention
    return (
        "expires_at_ms = :expires_ms, available_at = :expires_ms, #ttl = :ttl",
        {
            ":expires_ms": _N(to_ms(expires)),
            ":ttl": _N(int((expires + RETENTION_GRACE).timestamp())),
        },
    )


#: The expression attribute name of the TTL attribute in ``expiry_update``'s clause.
EXPIRY_NAMES = {"#ttl": TTL_ATTRIBUTE}


def days(retention: timedelta) -> str:
    """A retention as people say it: ``30 days`` (``1 day``; ``36h`` when not whole)."""
    if retention % timedelta(days=1):
        return format_duration(retention)
    return f"{retention.days} day" + ("s" if retention.days != 1 else "")


def check_live(run: Run, now: datetime, retention: timedelta) -> None:
    """Raise ``RunExpired`` if ``run`` is past its retention at ``now``."""
    if run.expires_at is None or run.expires_at > now:
        return
    finished = f" ({run.status}) at {iso(run.finished_at)}" if run.finished_at else ""
    raise RunExpired(
        f"run {run.run_id} expired at {iso(run.expires_at)}: it finished{finished}, and "
        f"finished runs are kept for the retention period ({days(retention)}, template "
        "parameter RetentionDays), then deleted; it can no longer be read, replayed or "
        "redriven",
        run_id=run.run_id,
    )


@dataclass(frozen=True)
class SweepResult:
    """What one sweep did.

    Attributes:
        runs: expired runs deleted (their run items).
        items: items deleted: run items, checkpoints, tokens, idempotency keys.
        kept: expired runs kept a retention more: stored before retention (no expiry
            yet), or a child whose parent still waits (it reads the child's outcome).
        truncated: more runs were due than one sweep handles; the next takes them.
    """

    runs: int = 0
    items: int = 0
    kept: int = 0
    truncated: bool = False


class _Retention(_Listing):
    #: How long finished runs are kept (``DynamoStore(retention=...)``).
    retention: timedelta = DEFAULT_RETENTION

    # -- reading runs for users: an expired run is RunExpired ---------------------------

    def live_run(self, run_id: str, now: datetime) -> Run:
        """``get_run`` for what users read, replay or redrive.

        Raises:
            RunExpired: the run is past its retention, its item still stored (TTL lags)
                or already deleted (its id says it was created longer ago than the
                retention).
            RunNotFound: no run has this id.
        """
        try:
            run = self.get_run(run_id)
        except RunNotFound as missing:
            raise self.missing_run(run_id, now, missing) from None
        self.check_live(run, now)
        return run

    def check_live(self, run: Run, now: datetime) -> None:
        """Raise ``RunExpired`` if ``run`` is past its retention at ``now``."""
        check_live(run, now, self.retention)

    def missing_run(self, run_id: str, now: datetime, error: RunNotFound) -> RunNotFound:
        """What to raise for a run id with no item: ``RunExpired`` when the id says the
        run was created longer ago than the retention (it may have expired), else
        ``error``."""
        created = created_at_of(run_id)
        if created is None or created > now - self.retention:
            return error
        return RunExpired(
            f"run {run_id} is not in table {self.table}: it was created at {iso(created)}, "
            f"longer ago than the retention period ({days(self.retention)}, template "
            "parameter RetentionDays), so it has expired and been deleted (or no run "
            "ever had this id)",
            run_id=run_id,
        )

    def sweep_expired(self, now: datetime, limit: int) -> SweepResult:
        """Delete up to ``limit`` runs expired before ``now - SWEEP_MARGIN``, with their
        checkpoints, tokens and idempotency keys, oldest first.

        Reads ``runs_by_status`` over the terminal statuses' shards: a run expires at
        least a retention after its creation, so the key condition ``created_sk <= now -
        retention`` skips every younger run unread, and ``available_at`` (the expiry,
        projected) filters the rest in the index. Candidates are read consistently from
        the table; one that moved since the index saw it is left alone.
        """
        cutoff = to_ms(now - SWEEP_MARGIN)
        found: list[tuple[str, str]] = []
        more = False  # a shard had at least its share: it may hold more
        for status in TERMINAL:
            index, attr, keys = self._status_keys([status])
            # Each key value (shard) oldest first, up to its share of what is left: the
            # sweep needs no order across shards, so it reads no more than it deletes.
            share = -(-(limit + 1 - len(found)) // len(keys))
            queries = [
                IndexQuery(
                    index=index,
                    attr=attr,
                    values=(key,),
                    high=iso(now - self.retention),
                    filter="available_at < :cutoff",
                    filter_values=((":cutoff", _N(cutoff)),),
                    newest_first=False,
                )
                for key in keys
            ]
            read = functools.partial(self._oldest, want=share)
            for entries in self._executor().map(read, queries):
                found += [(status, entry_run_id(e)) for e in entries]
                more = more or len(entries) >= share
            if len(found) > limit:
                break
        items = self._run_items(run_id for _, run_id in found[:limit])
        due = [
            items[run_id]
            for status, run_id in found[:limit]
            if run_id in items and items[run_id]["status"]["S"] == status
        ]
        done = list(self._executor().map(lambda item: self._expire(item, now, cutoff), due))
        return SweepResult(
            runs=sum(1 for r in done if r.runs),
            items=sum(r.items for r in done),
            kept=sum(r.kept for r in done),
            truncated=more or len(found) > limit,
        )

    def _oldest(self, query: IndexQuery, want: int) -> list[dict[str, Any]]:
        return self.fan_out(query, want - 1)  # (fan_out gives up to its limit + 1)

    def _expire(self, item: dict[str, Any], now: datetime, cutoff: int) -> SweepResult:
        run_id = item["run_id"]["S"]
        if "expires_at_ms" not in item:  # stored before retention: kept a retention more
            end = parse_iso(item.get("finished_at", item["updated_at"])["S"])
            return self._keep(item, max(end, now), "attribute_not_exists(expires_at_ms)")
        if int(item["expires_at_ms"]["N"]) >= cutoff:
            return SweepResult()
        parent = item.get("parent_run_id", {}).get("S")
        if parent is not None and item.get("parent_waits", {}).get("BOOL"):
            waiting = self._run_items([parent]).get(parent)
            if waiting is not None and not RunStatus(waiting["status"]["S"]).is_terminal:
                # Its parent reads the child's outcome when it resumes.
                return self._keep(item, now, "expires_at_ms = :was")
        deleted = self._delete_all(self._belongings(run_id))
        if "idempotency_key" in item:
            idem = f"IDEM#{item['task_id']['S']}#{item['idempotency_key']['S']}"
            deleted += self._delete_key(idem, run_id)
        try:
            self.client.delete_item(
                TableName=self.table,
                Key=_run_key(run_id),
                ConditionExpression="#status = :status AND expires_at_ms = :was",
                ExpressionAttributeNames=_NAMES,
                ExpressionAttributeValues={
                    ":status": item["status"],
                    ":was": item["expires_at_ms"],
                },
            )
        except ClientError as exc:
            if not _is_conditional_failure(exc):
                raise
            return SweepResult(items=deleted)  # it moved: it is no longer expired
        if self.blobs is not None:
            # After the run item: its objects go only once nothing can read them (a
            # crash in between leaves them: docs/payloads.md). Listed whatever its items
            # show: a write that lost (a checkpoint another attempt wrote, a debounce
            # push replaced) left an object no item names.
            self.blobs.delete_run(run_id)
        return SweepResult(runs=1, items=deleted + 1)

    def _keep(self, item: dict[str, Any], since: datetime, condition: str) -> SweepResult:
        sets, values = expiry_update(since, self.retention)
        try:
            self.client.update_item(
                TableName=self.table,
                Key=_run_key(item["run_id"]["S"]),
                UpdateExpression="SET " + sets,
                ConditionExpression=f"#status = :status AND {condition}",
                ExpressionAttributeNames={**_NAMES, **EXPIRY_NAMES},
                ExpressionAttributeValues={
                    **values,
                    ":status": item["status"],
                    **({":was": item["expires_at_ms"]} if ":was" in condition else {}),
                },
            )
        except ClientError as exc:
            if not _is_conditional_failure(exc):
                raise
            return SweepResult()
        return SweepResult(kept=1)

    def _belongings(self, run_id: str) -> list[dict[str, Any]]:
        """The keys of a run's items other than the run item and its idempotency key:
        its checkpoints and the tokens its token checkpoints name."""
        keys: list[dict[str, Any]] = []
        for step in self._paginate(
            "query",
            {
                "TableName": self.table,
                "KeyConditionExpression": "pk = :pk",
                "ProjectionExpression": "pk, sk, kind, #result",
                "ExpressionAttributeNames": {"#result": "result"},
                "ExpressionAttributeValues": {":pk": _S(f"RUN#{run_id}")},
            },
        ):
            if step["sk"]["S"] == _RUN_SK:
                continue
            keys.append({"pk": step["pk"], "sk": step["sk"]})
            if step.get("kind", {}).get("S") == "token" and "S" in step.get("result", {}):
                keys.append(_token_key(json.loads(step["result"]["S"])["id"]))
        return keys

    def _delete_key(self, pk: str, run_id: str) -> int:
        """Delete the idempotency key item ``pk`` if it still names ``run_id`` (a key
        past its own TTL may have been taken by a newer run); 1 if it did."""
        try:
            self.client.delete_item(
                TableName=self.table,
                Key={"pk": _S(pk), "sk": _S(_IDEM_SK)},
                ConditionExpression="run_id = :run",
                ExpressionAttributeValues={":run": _S(run_id)},
            )
        except ClientError as exc:
            if not _is_conditional_failure(exc):
                raise
            return 0
        return 1

    def _delete_all(self, keys: Iterable[dict[str, Any]]) -> int:
        """Delete ``keys`` (unconditionally, 25 per request); returns how many."""
        keys = list(keys)
        for start in range(0, len(keys), _BATCH_WRITE):
            requests = [{"DeleteRequest": {"Key": k}} for k in keys[start : start + _BATCH_WRITE]]
            for _ in range(20):
                out = self.client.batch_write_item(RequestItems={self.table: requests})
                requests = out.get("UnprocessedItems", {}).get(self.table, [])
                if not requests:
                    break
            else:
                raise RuntimeError(f"table {self.table}: DynamoDB kept throttling a batch delete")
        return len(keys)


def whole_days(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise InvalidConfig(
            f"RUNG_RETENTION_DAYS (or the stack's RetentionDays) is {text!r}: it must be a "
            "whole number of days from 1 to 3650"
        ) from None
