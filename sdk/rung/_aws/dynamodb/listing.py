"""DynamoStore's listing section: reading runs back through the write-sharded indexes.

Each index spreads a task's (or a status's) runs over ``SHARDS`` key values, so a read
fans out: one query per key value, in parallel, each newest first (or oldest first for
the reconciler), merged by ``created_sk``. The indexes are narrow (``runs_by_task``
holds keys only, ``runs_by_status`` a few attributes), so a page's runs are then read
from the table in one consistent ``BatchGetItem``, which also drops entries the
eventually consistent index still shows under an old status.

Tables created before the sharded indexes (``LEGACY_INDEXES``, projection ALL) are read
through those until ``rung upgrade-table`` has built the new ones: which indexes a table
has is read from ``DescribeTable`` once a minute.

A page's cursor is the ``created_sk`` of its last run (plus the filters it was made
for): the next page asks every key value for what is older. Pages are cut by time, so
a page can hold fewer runs than ``limit`` while more follow; the last page has no cursor.
"""

from __future__ import annotations

import base64
import binascii
import json
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from rung._aws.dynamodb._common import (
    _S,
    SHARDS,
    _Base,
    _run_key,
)
from rung._util.clock import iso
from rung.errors import InvalidConfig
from rung.models import Run, RunPage, RunStatus

#: The statuses of a run that has not finished.
IN_FLIGHT = (RunStatus.QUEUED, RunStatus.DELAYED, RunStatus.RUNNING, RunStatus.WAITING)
#: How long a store trusts what it read of the table's indexes.
_LAYOUT_TTL = 60.0
#: At most this many key values are queried at once.
_FANOUT = 16


@dataclass(frozen=True)
class IndexQuery:
    """One fanned-out read: ``index``'s key ``attr`` at each of ``values``, sort keys
    (``sort``) between ``low`` and ``high`` (inclusive; None: open), with an optional
    filter."""

    index: str
    attr: str
    values: tuple[str, ...]
    low: str | None = None
    high: str | None = None
    filter: str | None = None
    names: tuple[tuple[str, str], ...] = ()
    filter_values: tuple[tuple[str, dict[str, str]], ...] = ()
    newest_first: bool = True
    #: the index's sort key
    sort: str = "created_sk"


class _Listing(_Base):
    _layout_read: tuple[float, frozenset[str]] | None = None
    _pool: ThreadPoolExecutor | None = None
    _pool_lock = threading.Lock()

    # -- which indexes the table has -----------------------------------------------------

    def active_indexes(self) -> frozenset[str]:
        """The table's indexes that can be queried (ACTIVE), read once a minute."""
        now = time.monotonic()
        if self._layout_read is None or now - self._layout_read[0] > _LAYOUT_TTL:
            table = self.client.describe_table(TableName=self.table)["Table"]
            names = frozenset(
                index["IndexName"]
                for index in table.get("GlobalSecondaryIndexes", [])
                if index.get("IndexStatus", "ACTIVE") == "ACTIVE"
            )
            self._layout_read = (now, names)
        return self._layout_read[1]

    def refresh_indexes(self) -> None:
        """Read the table's indexes again at the next query (after changing them)."""
        self._layout_read = None

    def sharded(self, index: str) -> bool:
        """Whether ``index`` (``runs_by_task`` or ``runs_by_status``) can be read; if not,
        its legacy counterpart serves."""
        return index in self.active_indexes()

    # -- reads -----------------------------------------------------------------------

    def get_runs(self, run_ids: list[str]) -> dict[str, Run]:
        """Several runs by id, consistently read (100 per request); missing ones are absent."""
        return {rid: self._run_from_item(item) for rid, item in self._run_items(run_ids).items()}

    def _run_items(self, run_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        keys: list[dict[str, Any]] = [_run_key(r) for r in dict.fromkeys(run_ids)]
        return {item["run_id"]["S"]: item for item in self._batch_get(keys)}

    def runs_in_flight(self) -> dict[str | None, Counter[RunStatus]]:
        """The runs that have not finished, counted by code version (None: not pinned
        yet) and status, for ``rung versions list`` (docs/versioning.md).

        Every entry of the non-terminal statuses' key values in the status index (a
        query page per 1 MB of them), then the runs' versions and statuses in
        consistent batch reads of those two attributes (one request per 100 runs). An
        operator's read, never on a worker's path: 100,000 runs in flight is about
        1,000 requests.
        """
        query = IndexQuery(*self._status_keys(list(IN_FLIGHT)))
        ids = [
            entry_run_id(e)
            for entries in self._executor().map(
                lambda value: self._query_key(query, value, sys.maxsize), query.values
            )
            for e in entries
        ]
        keys: list[dict[str, Any]] = [_run_key(r) for r in dict.fromkeys(ids)]
        counts: dict[str | None, Counter[RunStatus]] = {}
        names = {"#v": "code_version", "#s": "status"}
        for item in self._batch_get(keys, names):
            status = RunStatus(item["status"]["S"])
            if status in IN_FLIGHT:  # (the index may still show a run that just ended)
                version = item["code_version"]["S"] if "code_version" in item else None
                counts.setdefault(version, Counter())[status] += 1
        return counts

    def changed_runs(self, since: datetime) -> list[Run]:
        """Runs written at or after ``since`` (``updated_at``), by one consistent Scan of
        the whole table: for ``rung dev``'s console on the local emulator, never on AWS
        (it reads every item)."""
        kwargs: dict[str, Any] = {
            "TableName": self.table,
            "FilterExpression": "sk = :run AND updated_at >= :since",
            "ExpressionAttributeValues": {":run": _S("#RUN"), ":since": _S(iso(since))},
            "ConsistentRead": True,
        }
        return [self._run_from_item(i) for i in self._paginate("scan", kwargs)]

    def list_runs(
        self,
        *,
        status: RunStatus | None = None,
        task_id: str | None = None,
        limit: int = 50,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        tags: tuple[str, ...] = (),
        cursor: str | None = None,
    ) -> RunPage:
        """Newest first, by status and/or task, created in ``[created_after,
        created_before)``, with every one of ``tags``; ``cursor`` continues a page
        (``RunPage.cursor``)."""
        after = iso(created_after) if created_after else None
        filters: dict[str, Any] = {
            "status": status,
            "task": task_id,
            "after": iso(created_after) if created_after else None,
            "before": iso(created_before) if created_before else None,
            # (one tag is kept as the single value cursors made before tags= hold)
            "tag": tags[0] if len(tags) == 1 else (list(tags) if tags else None),
        }
        high: str | None = filters["before"]
        if cursor is not None:
            high = _decode_cursor(cursor, filters)
        query = self._listing_query(status, task_id, tags, after, high)
        # The key condition includes its bound: the cursor's own run (on the last page)
        # comes back first, and is dropped.
        entries = self.fan_out(query, limit if cursor is None else limit + 1)
        if cursor is not None:
            entries = [e for e in entries if e["created_sk"]["S"] != high]
        more = len(entries) > limit
        entries = entries[:limit]
        if query.index in ("runs_by_task", "runs_by_status"):
            items = self._run_items(map(entry_run_id, entries))
            rows = [items[rid] for rid in map(entry_run_id, entries) if rid in items]
        else:
            rows = entries  # a legacy index holds whole items
        runs = [
            self._run_from_item(row)
            for row in rows
            if (status is None or row["status"]["S"] == status)
            and (task_id is None or row["task_id"]["S"] == task_id)
        ]
        last = entries[-1]["created_sk"]["S"] if more and entries else None
        return RunPage(runs, cursor=_encode_cursor(last, filters) if last else None)

    def _listing_query(
        self,
        status: RunStatus | None,
        task_id: str | None,
        tags: tuple[str, ...],
        low: str | None,
        high: str | None,
    ) -> IndexQuery:
        clauses: list[str] = []
        names: dict[str, str] = {}
        values: dict[str, dict[str, str]] = {}
        for n, tag in enumerate(tags):
            clauses.append(f"contains(tags, :tag{n})")
            values[f":tag{n}"] = _S(tag)
        if task_id is not None and (status is not None or tags):
            # By status (few runs in most statuses), the task as a filter: the status
            # index projects task_id, which never changes, so this costs no writes. With
            # tags too: the task index holds keys only, so it cannot filter on them.
            clauses.append("task_id = :task")
            values[":task"] = _S(task_id)
        if status is not None:
            index, attr, keys = self._status_keys([status])
        elif task_id is not None and not tags:
            if self.sharded("runs_by_task"):
                index, attr = "runs_by_task", "task_shard"
                keys = tuple(f"{task_id}#{s:02d}" for s in range(SHARDS))
            else:
                index, attr, keys = "by_task", "task_id", (task_id,)
        else:
            index, attr, keys = self._status_keys(list(RunStatus))
        return IndexQuery(
            index=index,
            attr=attr,
            values=keys,
            low=low,
            high=high,
            filter=" AND ".join(clauses) or None,
            names=tuple(names.items()),
            filter_values=tuple(values.items()),
        )

    def _status_keys(self, statuses: list[RunStatus]) -> tuple[str, str, tuple[str, ...]]:
        if self.sharded("runs_by_status"):
            keys = tuple(f"{s}#{n:02d}" for s in statuses for n in range(SHARDS))
            return "runs_by_status", "status_shard", keys
        return "by_status", "status", tuple(str(s) for s in statuses)

    # -- the fan-out -----------------------------------------------------------------

    def fan_out(self, query: IndexQuery, limit: int) -> list[dict[str, Any]]:
        """Up to ``limit + 1`` index entries of ``query`` over all its key values, in
        sort key order (newest first unless ``query.newest_first`` is False): each
        key value's first ``limit + 1``, merged."""
        per_key: Callable[[str], list[dict[str, Any]]] = lambda value: self._query_key(  # noqa: E731
            query, value, limit + 1
        )
        if len(query.values) == 1:
            found = per_key(query.values[0])
        else:
            found = [e for entries in self._executor().map(per_key, query.values) for e in entries]
        found.sort(key=lambda e: e[query.sort]["S"], reverse=query.newest_first)
        # A run that changes status while the key values are read (or that an eventually
        # consistent index still shows under its old status) comes back from two of
        # them: it is listed once. Each key value holds a run at most once, so its first
        # `limit + 1` entries still cover the first `limit + 1` distinct runs.
        unique: dict[str, dict[str, Any]] = {}
        for entry in found:
            unique.setdefault(entry["pk"]["S"], entry)
        return list(unique.values())[: limit + 1]

    def _query_key(self, query: IndexQuery, value: str, want: int) -> list[dict[str, Any]]:
        condition = "#k = :k"
        values: dict[str, Any] = {":k": _S(value)}
        if query.low is not None and query.high is not None:
            condition += f" AND {query.sort} BETWEEN :low AND :high"
        elif query.low is not None:
            condition += f" AND {query.sort} >= :low"
        elif query.high is not None:
            condition += f" AND {query.sort} <= :high"
        if query.low is not None:
            values[":low"] = _S(query.low)
        if query.high is not None:
            values[":high"] = _S(query.high)
        values.update(dict(query.filter_values))
        kwargs: dict[str, Any] = {
            "TableName": self.table,
            "IndexName": query.index,
            "KeyConditionExpression": condition,
            "ExpressionAttributeNames": {"#k": query.attr, **dict(query.names)},
            "ExpressionAttributeValues": values,
            "ScanIndexForward": not query.newest_first,
        }
        if query.filter is not None:
            kwargs["FilterExpression"] = query.filter
        found: list[dict[str, Any]] = []
        for item in self._paginate("query", kwargs):
            found.append(item)
            if len(found) >= want:
                break
        return found

    def _executor(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(_FANOUT, thread_name_prefix="rung-fanout")
            return self._pool


def entry_run_id(entry: dict[str, Any]) -> str:
    """The run id of an index entry (every index holds the table's key, ``RUN#<id>``)."""
    return str(entry["pk"]["S"]).removeprefix("RUN#")


def _encode_cursor(last: str, filters: dict[str, Any]) -> str:
    text = json.dumps({"last": last, "filters": filters}, separators=(",", ":"))
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _decode_cursor(cursor: str, filters: dict[str, Any]) -> str:
    try:
        data = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        last = data["last"]
        made_for = data["filters"]
    except (binascii.Error, ValueError, TypeError, KeyError):
        raise InvalidConfig(
            f"cursor {cursor[:40]!r} is not one that list_runs returned; pass the "
            "cursor of the previous page as it was given"
        ) from None
    if made_for != filters or not isinstance(last, str):
        raise InvalidConfig(
            "this cursor was made for other filters (status, task, time range, tag); "
            "ask for the next page with the same filters as the first"
        )
    return last
