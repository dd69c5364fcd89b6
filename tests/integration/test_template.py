"""template.yaml: it lints clean and agrees with the code that reads what it deploys."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import pytest
from cfnlint.api import lint_file  # type: ignore[import-untyped]
from cfnlint.decode import decode  # type: ignore[import-untyped]

from rung._store import INDEXES, KEY_SCHEMA, TTL_ATTRIBUTE

TEMPLATE = Path(__file__).resolve().parents[2] / "template.yaml"


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    # cfn-lint's loader understands the short-form tags (!Ref, !GetAtt, !Sub ...).
    loaded, problems = decode(str(TEMPLATE))
    assert not problems, problems
    return dict(loaded)


def _resource(template: dict[str, Any], logical_id: str) -> dict[str, Any]:
    properties: dict[str, Any] = template["Resources"][logical_id]["Properties"]
    return properties


def _keys(schema: list[dict[str, str]]) -> dict[str, str]:
    return {k["AttributeName"]: k["KeyType"] for k in schema}


def test_cfn_lint_passes() -> None:
    matches = lint_file(TEMPLATE)

    assert [str(m) for m in matches] == []


def test_the_table_has_the_stores_keys_indexes_and_ttl(template: dict[str, Any]) -> None:
    table = _resource(template, "Table")

    assert _keys(table["KeySchema"]) == KEY_SCHEMA
    assert {
        index["IndexName"]: _keys(index["KeySchema"]) for index in table["GlobalSecondaryIndexes"]
    } == INDEXES
    assert {index["Projection"]["ProjectionType"] for index in table["GlobalSecondaryIndexes"]} == {
        "ALL"
    }
    assert table["TimeToLiveSpecification"] == {"AttributeName": TTL_ATTRIBUTE, "Enabled": True}


def test_the_function_handler_and_environment_match_handler_worker(
    template: dict[str, Any],
) -> None:
    function = _resource(template, "WorkerFunction")
    module_path, _, attr = function["Handler"].rpartition(".")

    module = importlib.import_module(module_path.replace("/", "."))

    assert callable(getattr(module, attr))
    assert {"RUNG_APP", "RUNG_TABLE_NAME", "RUNG_QUEUE_URL"} <= set(
        function["Environment"]["Variables"]
    )


def test_each_timeout_has_a_lease_beyond_it_and_a_visibility_at_least_the_lease(
    template: dict[str, Any],
) -> None:
    timeouts = template["Parameters"]["FunctionTimeout"]["AllowedValues"]
    settings = template["Mappings"]["TimeoutSettings"]

    assert sorted(settings) == sorted(timeouts)
    for timeout, row in settings.items():
        assert row["LeaseSeconds"] == int(timeout) + 60
        assert row["VisibilitySeconds"] >= row["LeaseSeconds"]


def test_no_iam_statement_grants_every_resource(template: dict[str, Any]) -> None:
    role = _resource(template, "WorkerRole")
    statements = [s for p in role["Policies"] for s in p["PolicyDocument"]["Statement"]]

    assert statements
    assert '"*"' not in json.dumps(statements)
    assert "ManagedPolicyArns" not in role
