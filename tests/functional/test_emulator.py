"""The embedded emulator keeps DynamoDB's transaction semantics with its lean rollback.

moto copied whole tables to roll back a failed TransactWriteItems; the emulator
snapshots only the items a transaction touches (rung/testing/_emulator.py). These
tests check that a cancelled transaction leaves every item as it was, through the
in-process transport LocalEngine uses and through HTTP, as the real service does.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError

from rung import _aws
from rung.testing._emulator import EmbeddedEmulator


@pytest.fixture(params=["in-process", "http"])
def table(request: pytest.FixtureRequest) -> Iterator[tuple[Any, str]]:
    emulator = EmbeddedEmulator.shared()
    client = _aws.client("dynamodb", emulator.endpoint_url, "us-east-1")
    if request.param == "in-process":
        emulator.attach(client)
    name = f"emu-{secrets.token_hex(4)}"
    client.create_table(
        TableName=name,
        KeySchema=[
            {"AttributeName": "pk", "KeyType": "HASH"},
            {"AttributeName": "sk", "KeyType": "RANGE"},
        ],
        AttributeDefinitions=[
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": "S"},
        ],
        BillingMode="PAY_PER_REQUEST",
    )
    yield client, name
    client.delete_table(TableName=name)


def _key(sk: str) -> dict[str, Any]:
    return {"pk": {"S": "p"}, "sk": {"S": sk}}


def _items(client: Any, name: str) -> dict[str, dict[str, Any]]:
    found = client.query(
        TableName=name,
        KeyConditionExpression="pk = :p",
        ExpressionAttributeValues={":p": {"S": "p"}},
    )["Items"]
    return {item["sk"]["S"]: item for item in found}


def test_the_lean_rollback_is_what_runs() -> None:
    import moto.dynamodb.models as models

    EmbeddedEmulator.shared()
    assert getattr(models.DynamoDBBackend.transact_write_items, "_rung_lean", False)
    assert getattr(models, "copy").copy([1]) == [1]  # noqa: B009 - the rest of copy is real


def test_a_cancelled_transaction_leaves_every_item_as_it_was(table: tuple[Any, str]) -> None:
    client, name = table
    client.put_item(TableName=name, Item={**_key("a"), "v": {"N": "1"}})
    client.put_item(TableName=name, Item={**_key("b"), "v": {"N": "1"}})
    client.put_item(TableName=name, Item={**_key("guard"), "v": {"N": "1"}})
    before = _items(client, name)

    with pytest.raises(ClientError) as caught:
        client.transact_write_items(
            TransactItems=[
                {  # applied first, must be undone
                    "Update": {
                        "TableName": name,
                        "Key": _key("a"),
                        "UpdateExpression": "SET v = :two",
                        "ExpressionAttributeValues": {":two": {"N": "2"}},
                    }
                },
                {"Put": {"TableName": name, "Item": {**_key("new"), "v": {"N": "9"}}}},
                {"Delete": {"TableName": name, "Key": _key("b")}},
                {
                    "ConditionCheck": {
                        "TableName": name,
                        "Key": _key("guard"),
                        "ConditionExpression": "v = :two",
                        "ExpressionAttributeValues": {":two": {"N": "2"}},
                    }
                },
            ]
        )

    error = caught.value.response
    assert error["Error"]["Code"] == "TransactionCanceledException"
    codes = [reason["Code"] for reason in error["CancellationReasons"]]
    assert codes == ["None", "None", "None", "ConditionalCheckFailed"]
    assert _items(client, name) == before  # nothing applied, nothing lost, nothing added


def test_a_transaction_whose_conditions_hold_applies_every_item(table: tuple[Any, str]) -> None:
    client, name = table
    client.put_item(TableName=name, Item={**_key("a"), "v": {"N": "1"}})
    client.put_item(TableName=name, Item={**_key("b"), "v": {"N": "1"}})

    client.transact_write_items(
        TransactItems=[
            {
                "Update": {
                    "TableName": name,
                    "Key": _key("a"),
                    "UpdateExpression": "SET v = :two",
                    "ConditionExpression": "v = :one",
                    "ExpressionAttributeValues": {":one": {"N": "1"}, ":two": {"N": "2"}},
                }
            },
            {"Put": {"TableName": name, "Item": {**_key("new"), "v": {"N": "9"}}}},
            {"Delete": {"TableName": name, "Key": _key("b")}},
        ]
    )

    items = _items(client, name)
    assert sorted(items) == ["a", "new"]
    assert (items["a"]["v"], items["new"]["v"]) == ({"N": "2"}, {"N": "9"})


def test_a_transaction_naming_one_item_twice_is_refused_and_writes_nothing(
    table: tuple[Any, str],
) -> None:
    client, name = table
    client.put_item(TableName=name, Item={**_key("a"), "v": {"N": "1"}})

    with pytest.raises(ClientError) as caught:
        client.transact_write_items(
            TransactItems=[
                {"Put": {"TableName": name, "Item": {**_key("new"), "v": {"N": "1"}}}},
                {"Delete": {"TableName": name, "Key": _key("new")}},
            ]
        )

    assert caught.value.response["Error"]["Code"] == "ValidationException"
    assert sorted(_items(client, name)) == ["a"]
