"""``rung upgrade-table --stack`` against template.yaml's data plane deployed to the
embedded emulator: what it refuses, and what it does when there is nothing to do.

moto's CloudFormation cannot change a deployed table's indexes (an update that would
fails with "Fn::GetAtt references undefined resource Table"), and rung deploys the
emulators' stacks with the template's conditions resolved, so the index steps through
a stack cannot run here; tests/functional/test_table_upgrade.py walks them with
``--table`` (UpdateTable), and tests/integration/test_localstack_upgrade.py through
LocalStack's CloudFormation.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from rung._aws import sessions
from rung._aws.cloudformation import data_plane, deploy, load_template, translate
from rung._aws.emulator import EmbeddedEmulator
from rung.cli import main

REGION = "us-east-1"
TEMPLATE = Path(__file__).resolve().parents[2] / "template.yaml"
#: template.yaml's parts that a template of the previous release did not have
NEW_CONDITIONS = (
    "HasStatusShardIndex",
    "HasTaskShardIndex",
    "HasDueIndex",
    "HasLegacyStatusIndex",
)


def previous_release(plane: dict[str, Any]) -> dict[str, Any]:
    """The data plane as the previous release's template.yaml declared it: the old
    indexes, no ``IndexUpgradeStep`` parameter and no conditions on it."""
    from rung._aws.cloudformation import settle_conditions

    old = settle_conditions(plane, {"IndexUpgradeStep": "0"})
    del old["Parameters"]["IndexUpgradeStep"]
    old["Conditions"] = {
        name: spec
        for name, spec in old.get("Conditions", {}).items()
        if name not in (*NEW_CONDITIONS, "HasLegacyTaskIndex")
    }
    return old


@contextlib.contextmanager
def deployed(step: str | None) -> Iterator[tuple[str, str]]:
    """A stack of the data plane at ``IndexUpgradeStep=step`` (None: a stack of the
    previous release); its name and its table's."""
    emulator = EmbeddedEmulator.shared()
    name = f"rung-upgrade-{secrets.token_hex(4)}"
    template = load_template(TEMPLATE)
    # Every parameter given: moto's UpdateStack fails (a KeyError, HTTP 500) on
    # UsePreviousValue for a parameter the stack was created with by its default.
    params = {k: str(v.get("Default", "")) for k, v in template["Parameters"].items()}
    params["RungApp"] = "tests.integration.cli_app:app"
    del params["IndexUpgradeStep"]
    plane = data_plane(translate(template, params, REGION))
    if step is None:
        plane = previous_release(plane)
    else:
        params["IndexUpgradeStep"] = step
    cfn = sessions.client("cloudformation", emulator.endpoint_url, REGION)
    table = deploy(cfn, name, plane, params).outputs["TableName"]
    try:
        yield name, table
    finally:
        cfn.delete_stack(StackName=name)
        with contextlib.suppress(Exception):  # the table is DeletionPolicy: Retain
            sessions.client("dynamodb", emulator.endpoint_url, REGION).delete_table(TableName=table)


def rung(*args: str) -> Result:
    env = {
        "AWS_ENDPOINT_URL": EmbeddedEmulator.shared().endpoint_url,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_SESSION_TOKEN": None,
        "AWS_PROFILE": None,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": None,
        "RUNG_STACK": None,
        "RUNG_APP": None,
    }
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False, prog_name="rung")


def error_line(result: Result) -> str:
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def indexes(table: str) -> set[str]:
    client = sessions.client("dynamodb", EmbeddedEmulator.shared().endpoint_url, REGION)
    found = client.describe_table(TableName=table)["Table"].get("GlobalSecondaryIndexes", [])
    return {i["IndexName"] for i in found}


def test_a_stack_of_the_previous_release_is_refused_with_what_to_deploy_first() -> None:
    with deployed(None) as (stack, table):
        before = indexes(table)
        result = rung("--stack", stack, "upgrade-table")
        after = indexes(table)

    assert result.exit_code == 1
    line = error_line(result)
    assert f"stack {stack} was deployed from a template without the IndexUpgradeStep" in line
    assert "--parameter-overrides IndexUpgradeStep=0" in line
    assert f"then run `rung --stack {stack} upgrade-table` again" in line
    assert before == after == {"by_task", "by_status"}


def test_a_stack_with_the_new_indexes_has_nothing_to_do() -> None:
    with deployed("5") as (stack, table):
        result = rung("--stack", stack, "upgrade-table")
        dry = rung("--stack", stack, "upgrade-table", "--dry-run")

    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == (
        f"table {table} (stack {stack}) already has the write-sharded indexes "
        "(runs_by_status, runs_by_task): nothing to do"
    )
    assert dry.stdout == result.stdout


def test_a_dry_run_on_an_old_stack_names_each_stack_update() -> None:
    with deployed("0") as (stack, table):
        result = rung("--stack", stack, "upgrade-table", "--dry-run")
        after = indexes(table)

    assert result.exit_code == 0, result.stderr
    out = result.stdout
    assert f"table {table} (stack {stack}): index step 0 of 5 (by_status, by_task)" in out
    assert (
        "would run step 1 of 5: create runs_by_status (a CloudFormation update of stack "
        f"{stack}: IndexUpgradeStep=N)"
    ) in out
    assert after == {"by_task", "by_status"}


def test_a_stack_whose_template_cannot_move_the_indexes_is_told_to_use_table() -> None:
    # An emulator's stack: rung deploys it with the template's conditions resolved, so
    # an update of IndexUpgradeStep completes without touching the table.
    with deployed("0") as (stack, table):
        result = rung("--stack", stack, "upgrade-table", "--reader-grace", "0s")
        again = rung("--stack", stack, "upgrade-table", "--reader-grace", "0s")
        after = indexes(table)

    assert result.exit_code == 1
    assert "backfill: 0 runs scanned, 0 updated" in result.stdout
    assert error_line(result) == (
        f"error: stack {stack}: the update to IndexUpgradeStep=1 completed but table {table} "
        "still has by_status, by_task: the stack's template does not choose its indexes by "
        "the parameter (an emulator's stack: rung deploys those with the conditions "
        f"resolved); upgrade the table itself with `rung upgrade-table --table {table}`"
    )
    assert after == {"by_task", "by_status"}
    # The stack now says step 1, the table is at 0: said, with the way out.
    assert again.exit_code == 1
    assert error_line(again) == (
        f"error: stack {stack} has IndexUpgradeStep=1 but its table {table} has by_status, "
        "by_task (step 0): something changed the indexes outside the stack; set the "
        "parameter to match the table (`sam deploy --parameter-overrides "
        "IndexUpgradeStep=0`), then run this again"
    )


def test_table_and_stack_together_are_a_usage_error() -> None:
    result = rung("--stack", "s", "upgrade-table", "--table", "t")

    assert result.exit_code == 2
    assert "give one of them" in error_line(result)


def test_table_wins_over_a_stack_named_in_the_environment() -> None:
    env_stack = CliRunner().invoke(
        main,
        ["upgrade-table", "--table", "no-such-table"],
        env={"RUNG_STACK": "rung-shop", "AWS_ENDPOINT_URL": EmbeddedEmulator.shared().endpoint_url},
    )

    assert env_stack.exit_code == 1
    assert "ResourceNotFoundException" in error_line(env_stack)


def test_a_table_that_is_not_rungs_is_refused() -> None:
    client = sessions.client("dynamodb", EmbeddedEmulator.shared().endpoint_url, REGION)
    name = f"not-rung-{secrets.token_hex(4)}"
    client.create_table(
        TableName=name,
        BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
    )
    try:
        result = rung("upgrade-table", "--table", name)
    finally:
        client.delete_table(TableName=name)

    assert result.exit_code == 1
    assert f"table {name} has none of rung's indexes: not a layout of rung's table" in (
        error_line(result)
    )


@pytest.mark.parametrize("missing", ["no-such-table"])
def test_a_missing_table_is_one_error_line(missing: str) -> None:
    result = rung("upgrade-table", "--table", missing)

    assert result.exit_code == 1
    assert "ResourceNotFoundException" in error_line(result)
