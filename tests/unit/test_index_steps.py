"""The index steps ``rung upgrade-table`` walks are the layouts template.yaml declares for
each ``IndexUpgradeStep``, and each step changes one index (CloudFormation's limit)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rung._aws.cloudformation import load_template, settle_conditions
from rung._aws.dynamodb import INDEX_STEPS, INDEXES, LAST_STEP, LEGACY_INDEXES, index_change

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("path", ["template.yaml", "sdk/rung/_lambda/template.yaml"])
@pytest.mark.parametrize("step", range(LAST_STEP + 1))
def test_each_step_is_the_templates_layout_for_that_parameter_value(path: str, step: int) -> None:
    template = load_template(ROOT / path)
    table = settle_conditions(template, {"IndexUpgradeStep": str(step)})["Resources"]["Table"]
    props = table["Properties"]
    indexes = {i["IndexName"]: i for i in props["GlobalSecondaryIndexes"]}
    defined = {a["AttributeName"] for a in props["AttributeDefinitions"]}

    assert set(indexes) == INDEX_STEPS[step]
    every = {**INDEXES, **LEGACY_INDEXES}
    for name, index in indexes.items():
        keys = {k["AttributeName"]: k["KeyType"] for k in index["KeySchema"]}
        assert keys == every[name], name
    assert defined == {"pk", "sk"} | {a for name in indexes for a in every[name]}


def test_the_default_step_is_the_last_and_every_step_changes_one_index() -> None:
    template = load_template(ROOT / "template.yaml")
    parameter = template["Parameters"]["IndexUpgradeStep"]

    assert parameter["Default"] == str(LAST_STEP)
    assert parameter["AllowedValues"] == [str(n) for n in range(LAST_STEP + 1)]
    for step in range(1, LAST_STEP + 1):
        changed = INDEX_STEPS[step] ^ INDEX_STEPS[step - 1]
        assert changed == {index_change(step).index}
    assert INDEX_STEPS[0] == set(LEGACY_INDEXES) and INDEX_STEPS[LAST_STEP] == set(INDEXES)
