"""``rung upgrade-table --table`` on LocalStack, whose DynamoDB is DynamoDB Local (AWS's
own implementation): its ``UpdateTable`` checks the index definitions as DynamoDB does
and builds each new index from the items already in the table.

The stack path cannot run on LocalStack: its CloudFormation refuses
``UsePreviousTemplate`` ("Specify exactly one of 'TemplateBody' or 'TemplateUrl'"),
and its ``AWS::DynamoDB::Table`` has no update (an update with the template sent again
completes and leaves the indexes as they were). Skipped without a LocalStack (see
conftest.py).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from datetime import timedelta

import pytest
from click.testing import CliRunner

from rung._aws import sessions
from rung._aws.dynamodb import INDEX_STEPS, LAST_STEP, DynamoStore, NewRun
from rung._util.clock import SystemClock
from rung._util.ids import new_run_id
from rung.cli import main
from rung.models import RunStatus

pytestmark = pytest.mark.slow
REGION = "us-east-1"


@pytest.fixture
def old_table(localstack_endpoint: str) -> Iterator[tuple[DynamoStore, dict[str, tuple[str, str]]]]:
    """A table as the previous release left it (old indexes; run items without
    ``task_shard``/``status_shard``: this release's items with both removed), and its
    runs: run id -> (task, status)."""
    client = sessions.client("dynamodb", localstack_endpoint, REGION)
    store = DynamoStore(client, f"rung-upgrade-{secrets.token_hex(4)}")
    store.create_table(legacy=True)
    now = SystemClock().now()
    runs: dict[str, tuple[str, str]] = {}
    for n in range(6):
        task = ("mail", "bill")[n % 2]
        delay = timedelta(hours=1) if n % 3 == 0 else timedelta(0)
        run_id = new_run_id(now)
        store.create_run(NewRun(run_id, task, str(n), now, now + delay, None, ()), None, now)
        status = RunStatus.DELAYED if delay else RunStatus.QUEUED
        if n == 1:
            store.claim_run(run_id, now, timedelta(minutes=1))
            status = RunStatus.RUNNING
        runs[run_id] = (task, status)
        client.update_item(
            TableName=store.table,
            Key={"pk": {"S": f"RUN#{run_id}"}, "sk": {"S": "#RUN"}},
            UpdateExpression="REMOVE task_shard, status_shard",
        )
    try:
        yield store, runs
    finally:
        client.delete_table(TableName=store.table)


def test_upgrade_table_on_dynamodb_local_builds_the_new_indexes_from_the_old_runs(
    localstack_endpoint: str, old_table: tuple[DynamoStore, dict[str, tuple[str, str]]]
) -> None:
    store, runs = old_table
    env = {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_SESSION_TOKEN": None,
        "AWS_PROFILE": None,
        "AWS_DEFAULT_REGION": REGION,
        "RUNG_STACK": None,
        "RUNG_APP": None,
    }
    args = ["--endpoint-url", localstack_endpoint, "upgrade-table", "--table", store.table]
    result = CliRunner().invoke(
        main, [*args, "--reader-grace", "0s"], env=env, catch_exceptions=False
    )

    assert result.exit_code == 0, result.stderr
    assert f"backfill: {len(runs)} runs scanned, {len(runs)} updated" in result.stdout
    fresh = DynamoStore(store.client, store.table)  # reads the table's indexes afresh
    assert fresh.table_indexes().indexes == dict.fromkeys(INDEX_STEPS[LAST_STEP], "ACTIVE")
    assert {r.run_id for r in fresh.list_runs(limit=100)} == set(runs)
    for status in (RunStatus.QUEUED, RunStatus.DELAYED, RunStatus.RUNNING):
        listed = {r.run_id for r in fresh.list_runs(status=status, limit=100)}
        assert listed == {r for r, (_, s) in runs.items() if s == status}, status
    for task in ("mail", "bill"):
        listed = {r.run_id for r in fresh.list_runs(task_id=task, limit=100)}
        assert listed == {r for r, (t, _) in runs.items() if t == task}, task
