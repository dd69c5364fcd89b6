"""Upgrading a table of the previous release to the write-sharded indexes keeps its runs
readable: the backfill, each index step, and `rung upgrade-table --table` on moto.

A table of the previous release has the old indexes (``DynamoStore.create_table(
legacy=True)``) and run items without ``task_shard``/``status_shard``: the runs here are
made by this release (``LocalEngine`` on a legacy table), and then the two attributes
are removed from their items with UpdateItem REMOVE, which leaves each item exactly as
the previous release wrote it. One item gets a stale ``status_shard`` instead, as when a
worker of the previous release finishes a run that this release had claimed.

moto builds a new index at once (``UpdateTable`` returns it ACTIVE and it already holds
every matching item, as an index is computed from the items on each query there), so
these tests see each step's end state, never an index while it is CREATING.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from click.testing import CliRunner, Result

import rung
from rung._aws import sessions
from rung._aws.dynamodb import INDEX_STEPS, LAST_STEP, BackfillProgress, DynamoStore
from rung._aws.dynamodb._common import status_shard, task_shard
from rung._engine.worker import Disposition
from rung._util.clock import VirtualClock
from rung.cli import main
from rung.client import Client
from rung.models import RunStatus
from rung.testing import LocalEngine, SimulatedCrash

GRACE = timedelta(minutes=5)  # LocalEngine's default reconcile_grace
NEW = {"runs_by_task", "runs_by_status", "runs_by_due"}
OLD = {"by_task", "by_status"}


def deliver(engine: LocalEngine) -> None:
    """Play the event source: hand every visible message to the worker."""
    while messages := engine.queue.receive(max_messages=10):
        for message in messages:
            if engine.worker.handle(message) == Disposition.ACK:
                engine.queue.delete(message)


def upgrade_app() -> rung.App:
    app = rung.App("upgrade")
    once = rung.RetryPolicy(max_attempts=1)

    @app.task(id="add")
    def add(ctx: rung.Context, n: int) -> int:
        return ctx.step("plus-one", lambda: n + 1)

    @app.task(id="sleepy")
    def sleepy(ctx: rung.Context, n: int) -> int:
        ctx.wait(timedelta(days=1))
        return n

    @app.task(id="broken", retry=once)
    def broken(ctx: rung.Context, n: int) -> int:
        raise ValueError(f"no {n}")

    return app


@dataclass
class OldTable:
    """A LocalEngine whose table is laid out as the previous release left it, and the
    runs in it: run id -> (task, status)."""

    engine: LocalEngine
    runs: dict[str, tuple[str, RunStatus]]
    stranded: str
    stale: str

    def ids(self, *, task: str | None = None, status: RunStatus | None = None) -> set[str]:
        return {
            run_id
            for run_id, (t, s) in self.runs.items()
            if (task is None or t == task) and (status is None or s == status)
        }

    def store(self) -> DynamoStore:
        """A store of a process started now (it reads the table's indexes afresh)."""
        return DynamoStore(self.engine.dynamodb, self.engine.table_name)

    def client(self) -> Client:
        engine = self.engine
        return Client._from_parts(engine.app, self.store(), engine.queue, engine.clock)

    def item(self, run_id: str) -> dict[str, Any]:
        key = {"pk": {"S": f"RUN#{run_id}"}, "sk": {"S": "#RUN"}}
        return dict(
            self.engine.dynamodb.get_item(
                TableName=self.engine.table_name, Key=key, ConsistentRead=True
            )["Item"]
        )

    def indexes(self) -> set[str]:
        table = self.engine.dynamodb.describe_table(TableName=self.engine.table_name)["Table"]
        return {i["IndexName"] for i in table.get("GlobalSecondaryIndexes", [])}


def strip_shards(engine: LocalEngine, run_id: str) -> None:
    """Make the run item one the previous release wrote: no shard attributes."""
    engine.dynamodb.update_item(
        TableName=engine.table_name,
        Key={"pk": {"S": f"RUN#{run_id}"}, "sk": {"S": "#RUN"}},
        UpdateExpression="REMOVE task_shard, status_shard",
    )


@pytest.fixture
def old_table() -> Iterator[OldTable]:
    with LocalEngine(upgrade_app(), workers=0) as engine:
        # The engine made its table with the new indexes: make it again with the old.
        engine.dynamodb.delete_table(TableName=engine.table_name)
        engine.store.create_table(legacy=True)
        runs: dict[str, tuple[str, RunStatus]] = {}
        for n in range(3):
            runs[engine.trigger("add", n).run_id] = ("add", RunStatus.COMPLETED)
            runs[engine.trigger("sleepy", n).run_id] = ("sleepy", RunStatus.WAITING)
            runs[engine.trigger("broken", n).run_id] = ("broken", RunStatus.FAILED)
        deliver(engine)
        for n in range(2):
            runs[engine.trigger("add", 10 + n, delay=timedelta(hours=1)).run_id] = (
                "add",
                RunStatus.DELAYED,
            )
        canceled = engine.trigger("sleepy", 20, delay=timedelta(hours=1)).run_id
        engine.client.cancel(canceled)
        runs[canceled] = ("sleepy", RunStatus.CANCELED)
        # A trigger whose client died between the write and the send: QUEUED, no message.
        real_send = engine.queue.send

        def crash(*args: Any, **kwargs: Any) -> None:
            raise SimulatedCrash()

        engine.queue.send = crash  # type: ignore[method-assign]
        with pytest.raises(SimulatedCrash):
            engine.trigger("add", 30)
        engine.queue.send = real_send  # type: ignore[method-assign]
        [stranded] = [
            item["run_id"]["S"]
            for item in engine.dynamodb.scan(TableName=engine.table_name)["Items"]
            if item["sk"]["S"] == "#RUN" and item["run_id"]["S"] not in runs
        ]
        runs[stranded] = ("add", RunStatus.QUEUED)
        for run_id in runs:
            strip_shards(engine, run_id)
        # A COMPLETED run whose status_shard still names RUNNING: claimed by this
        # release, finished by a worker of the previous one.
        stale = next(r for r, (_, s) in runs.items() if s == RunStatus.COMPLETED)
        engine.dynamodb.update_item(
            TableName=engine.table_name,
            Key={"pk": {"S": f"RUN#{stale}"}, "sk": {"S": "#RUN"}},
            UpdateExpression="SET task_shard = :t, status_shard = :s",
            ExpressionAttributeValues={":t": {"S": "add#00"}, ":s": {"S": "RUNNING#00"}},
        )
        yield OldTable(engine, runs, stranded, stale)


def assert_every_run_is_listed(table: OldTable) -> None:
    client = table.client()
    assert {r.run_id for r in client.list_runs(limit=100)} == table.ids()
    for status in RunStatus:
        listed = {r.run_id for r in client.list_runs(status=status, limit=100)}
        assert listed == table.ids(status=status), status
    for task in ("add", "sleepy", "broken"):
        assert {r.run_id for r in client.list_runs(task=task, limit=100)} == table.ids(task=task)


def test_the_old_layout_is_read_through_the_old_indexes(old_table: OldTable) -> None:
    assert old_table.indexes() == OLD
    assert_every_run_is_listed(old_table)


def test_the_backfill_sets_both_shards_where_missing_or_stale_and_a_second_pass_writes_nothing(
    old_table: OldTable,
) -> None:
    seen: list[BackfillProgress] = []
    first = old_table.store().backfill_shards(segments=3, progress=seen.append)
    second = old_table.store().backfill_shards(segments=2)

    total = len(old_table.runs)
    assert (first.scanned, first.updated, first.up_to_date, first.done) == (total, total, 0, True)
    assert (second.scanned, second.updated, second.up_to_date) == (total, 0, total)
    assert seen[-1] == first and [p.scanned for p in seen] == sorted(p.scanned for p in seen)
    for run_id, (task, status) in old_table.runs.items():
        item = old_table.item(run_id)
        assert item["task_shard"]["S"] == task_shard(task, run_id)
        assert item["status_shard"]["S"] == status_shard(status, run_id)
    assert old_table.item(old_table.stale)["status"]["S"] == "COMPLETED"


def test_a_run_that_moves_under_the_backfill_gets_the_shard_of_its_new_status(
    old_table: OldTable,
) -> None:
    engine = old_table.engine
    store = old_table.store()
    target = next(iter(old_table.ids(status=RunStatus.WAITING)))
    moved: list[str] = []

    def old_worker_finishes_it(params: dict[str, Any], **_: Any) -> None:
        # A worker of the previous release ends the run between the Scan and the
        # backfill's write: it sets the status and knows nothing of status_shard.
        if params["Key"]["pk"]["S"] == f"RUN#{target}" and not moved:
            moved.append(target)
            engine.dynamodb.update_item(
                TableName=engine.table_name,
                Key=params["Key"],
                UpdateExpression="SET #s = :done",
                ExpressionAttributeNames={"#s": "status"},
                ExpressionAttributeValues={":done": {"S": "COMPLETED"}},
            )

    engine.dynamodb.meta.events.register(
        "provide-client-params.dynamodb.UpdateItem", old_worker_finishes_it
    )
    try:
        report = store.backfill_shards(segments=1)
    finally:
        engine.dynamodb.meta.events.unregister(
            "provide-client-params.dynamodb.UpdateItem", old_worker_finishes_it
        )

    assert moved == [target]
    assert report.retried == 1 and report.updated == len(old_table.runs)
    expected = status_shard(RunStatus.COMPLETED, target)
    assert old_table.item(target)["status_shard"]["S"] == expected


def test_every_run_stays_listed_at_every_index_step(old_table: OldTable) -> None:
    old_table.store().backfill_shards()
    for step in range(1, LAST_STEP + 1):
        store = old_table.store()
        assert store.index_step() == step - 1
        change = store.start_index_step(step)
        store.wait_for_index_step(step, poll=0.01)
        assert old_table.indexes() == set(INDEX_STEPS[step]), change
        assert_every_run_is_listed(old_table)
    assert old_table.indexes() == NEW


def test_after_the_upgrade_the_reconciler_still_finds_a_stranded_run(old_table: OldTable) -> None:
    store = old_table.store()
    store.backfill_shards()
    for step in range(1, LAST_STEP + 1):
        store.start_index_step(step)
        store.wait_for_index_step(step, poll=0.01)
    engine = old_table.engine
    assert isinstance(engine.clock, VirtualClock)
    engine.clock.advance(GRACE + timedelta(seconds=1))

    # The engine's store read the table's indexes (its workers ask whether timers can be
    # armed) before the upgrade; any process does again within a minute.
    engine.store.refresh_indexes()
    report = engine.reconcile()
    deliver(engine)

    assert report.run_ids == [old_table.stranded]
    assert engine.get_run(old_table.stranded).status == RunStatus.COMPLETED


# -- `rung upgrade-table --table` -------------------------------------------------------


def upgrade_table(table: OldTable, *args: str) -> Result:
    engine = table.engine
    env = {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_SESSION_TOKEN": None,
        "AWS_PROFILE": None,
        "AWS_DEFAULT_REGION": "us-east-1",
        "RUNG_STACK": None,
        "RUNG_APP": None,
    }
    return CliRunner().invoke(
        main,
        ["--endpoint-url", engine.endpoint_url, "upgrade-table", "--table", engine.table_name]
        + list(args),
        env=env,
        catch_exceptions=False,
        prog_name="rung",
    )


def test_upgrade_table_backfills_walks_the_steps_and_a_second_run_does_nothing(
    old_table: OldTable,
) -> None:
    first = upgrade_table(old_table, "--reader-grace", "0s")
    after = old_table.indexes()
    second = upgrade_table(old_table, "--reader-grace", "0s")

    assert first.exit_code == 0, first.stderr
    assert after == NEW
    out = first.stdout
    total = len(old_table.runs)
    assert f"{total} runs scanned, {total} updated" in out
    for line in (
        "step 1 of 5: create runs_by_status",
        "step 2 of 5: create runs_by_task",
        "step 3 of 5: create runs_by_due",
        "step 4 of 5: delete by_status",
        "step 5 of 5: delete by_task",
    ):
        assert line in out
    assert out.index("backfill") < out.index("step 1 of 5")
    assert_every_run_is_listed(old_table)
    assert second.exit_code == 0, second.stderr
    assert "already has the write-sharded indexes" in second.stdout
    assert "backfill" not in second.stdout


def test_upgrade_table_dry_run_says_what_it_would_do_and_changes_nothing(
    old_table: OldTable,
) -> None:
    result = upgrade_table(old_table, "--dry-run")

    assert result.exit_code == 0, result.stderr
    assert "would backfill" in result.stdout
    assert "would run step 1 of 5: create runs_by_status" in result.stdout
    assert "would run step 5 of 5: delete by_task" in result.stdout
    assert old_table.indexes() == OLD
    assert "task_shard" not in old_table.item(old_table.stranded)


def test_upgrade_table_json_reports_the_backfill_and_the_steps(old_table: OldTable) -> None:
    result = upgrade_table(old_table, "--reader-grace", "0s", "--json")

    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    total = len(old_table.runs)
    assert report["table"] == old_table.engine.table_name
    assert (report["from_step"], report["to_step"]) == (0, 5)
    assert report["backfills"][0]["updated"] == total
    assert [(s["step"], s["action"], s["index"]) for s in report["steps"]] == [
        (1, "create", "runs_by_status"),
        (2, "create", "runs_by_task"),
        (3, "create", "runs_by_due"),
        (4, "delete", "by_status"),
        (5, "delete", "by_task"),
    ]


def test_upgrade_table_continues_from_a_table_left_half_way(old_table: OldTable) -> None:
    store = old_table.store()
    store.backfill_shards()
    store.start_index_step(1)
    store.wait_for_index_step(1, poll=0.01)

    result = upgrade_table(old_table, "--reader-grace", "0s")

    assert result.exit_code == 0, result.stderr
    assert "step 1 of 5:" not in result.stdout
    assert "step 2 of 5: create runs_by_task" in result.stdout
    assert old_table.indexes() == NEW
    assert_every_run_is_listed(old_table)


def test_upgrade_table_catches_up_on_runs_old_workers_moved_while_the_indexes_were_built(
    old_table: OldTable,
) -> None:
    engine = old_table.engine
    target = next(iter(old_table.ids(status=RunStatus.WAITING)))
    moved: list[str] = []

    def old_worker_finishes_a_run(params: dict[str, Any], **_: Any) -> None:
        # While runs_by_task is being created (after the first backfill), a worker of
        # the previous release ends a run: status set, status_shard left as it was.
        updates = params.get("GlobalSecondaryIndexUpdates", [])
        if any(u.get("Create", {}).get("IndexName") == "runs_by_task" for u in updates):
            moved.append(target)
            engine.dynamodb.update_item(
                TableName=engine.table_name,
                Key={"pk": {"S": f"RUN#{target}"}, "sk": {"S": "#RUN"}},
                UpdateExpression="SET #s = :done",
                ExpressionAttributeNames={"#s": "status"},
                ExpressionAttributeValues={":done": {"S": "COMPLETED"}},
            )

    # The command's clients come from rung's session with credentials (the command's
    # environment has them), created after this: they carry the hook.
    events = sessions.session(None, "us-east-1").events
    events.register("provide-client-params.dynamodb.UpdateTable", old_worker_finishes_a_run)
    try:
        result = upgrade_table(old_table, "--reader-grace", "0s")
    finally:
        events.unregister("provide-client-params.dynamodb.UpdateTable", old_worker_finishes_a_run)

    assert result.exit_code == 0, result.stderr
    assert moved == [target]
    assert "catch-up backfill: 13 runs scanned, 1 updated" in result.stdout
    old_table.runs[target] = ("sleepy", RunStatus.COMPLETED)
    assert_every_run_is_listed(old_table)


def test_an_old_index_is_deleted_only_after_its_replacement_was_active_for_the_reader_grace(
    old_table: OldTable,
) -> None:
    seen: dict[str, float] = {}

    def note(params: dict[str, Any], **_: Any) -> None:
        # When each index change was asked for (moto's new indexes are ACTIVE at once).
        for update in params.get("GlobalSecondaryIndexUpdates", []):
            for action, spec in update.items():
                seen[f"{action.lower()} {spec['IndexName']}"] = time.monotonic()

    events = sessions.session(None, "us-east-1").events  # see the catch-up test
    events.register("provide-client-params.dynamodb.UpdateTable", note)
    try:
        result = upgrade_table(old_table, "--reader-grace", "1s")
    finally:
        events.unregister("provide-client-params.dynamodb.UpdateTable", note)

    assert result.exit_code == 0, result.stderr
    # Lower bounds only: a slow machine makes the gaps longer, never shorter.
    assert seen["delete by_status"] - seen["create runs_by_status"] >= 1.0
    assert seen["delete by_task"] - seen["create runs_by_task"] >= 1.0


def test_upgrade_table_first_waits_for_an_index_a_cut_short_run_left_creating(
    old_table: OldTable,
) -> None:
    # moto builds an index at once: its DescribeTable answers are made to show
    # runs_by_status CREATING three times, as DynamoDB would while it builds the index
    # that an interrupted `rung upgrade-table` asked for.
    store = old_table.store()
    store.backfill_shards()
    store.start_index_step(1)
    creating = [3]
    seen: list[str] = []  # runs_by_status's status in each DescribeTable, and UpdateTables

    def still_building(parsed: dict[str, Any], **_: Any) -> None:
        for index in parsed.get("Table", {}).get("GlobalSecondaryIndexes", []):
            if index["IndexName"] == "runs_by_status":
                if creating[0] > 0:
                    index["IndexStatus"] = "CREATING"
                    creating[0] -= 1
                seen.append(index["IndexStatus"])

    def note(params: dict[str, Any], **_: Any) -> None:
        seen.append("UpdateTable")

    events = sessions.session(None, "us-east-1").events  # see the catch-up test
    events.register("after-call.dynamodb.DescribeTable", still_building)
    events.register("provide-client-params.dynamodb.UpdateTable", note)
    try:
        result = upgrade_table(old_table, "--reader-grace", "0s")
    finally:
        events.unregister("after-call.dynamodb.DescribeTable", still_building)
        events.unregister("provide-client-params.dynamodb.UpdateTable", note)

    assert result.exit_code == 0, result.stderr
    assert seen.count("CREATING") == 3
    updates = [n for n, what in enumerate(seen) if what == "UpdateTable"]
    assert updates and all(seen[n - 1] == "ACTIVE" for n in updates), seen
    assert "index step 1 of 5" in result.stdout
    assert "runs_by_status is CREATING: waiting for it" in result.stdout
    assert old_table.indexes() == NEW
