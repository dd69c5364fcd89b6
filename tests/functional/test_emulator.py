"""The embedded emulator keeps DynamoDB's and SQS's semantics where it saves work.

moto copied whole tables to roll back a failed TransactWriteItems; the emulator
snapshots only the items a transaction touches. It also computes once per request
shape what moto recomputed on every request (parsed expressions, validations that
depend on the expression only, serializer lookups, a queue's retention), and the
in-process transport skips HTTP and signing (rung/_aws/emulator.py). These
tests check the real service's answers through the in-process transport LocalEngine
uses and through HTTP: a cancelled transaction leaves every item as it was, and the
same expression text with other values, names or items gets its own answer.
"""

from __future__ import annotations

import io
import secrets
import zipfile
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from botocore.exceptions import ClientError

from rung._aws import sessions
from rung._aws.emulator import EmbeddedEmulator, release_virtual_time, use_virtual_time
from rung._util.clock import VirtualClock


@pytest.fixture(params=["in-process", "http"])
def table(request: pytest.FixtureRequest) -> Iterator[tuple[Any, str]]:
    emulator = EmbeddedEmulator.shared()
    client = sessions.client("dynamodb", emulator.endpoint_url, "us-east-1")
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


# -- what the emulator computes once per request shape (rung/_aws/moto_patches.py,
# "Per-request work"): the same expression text with other values, names or items
# must still get the real service's answer.


def _conditional_set(client: Any, name: str, expected: int, new: int) -> None:
    client.update_item(
        TableName=name,
        Key=_key("a"),
        UpdateExpression="SET v = :new",
        ConditionExpression="v = :expected",
        ExpressionAttributeValues={":new": {"N": str(new)}, ":expected": {"N": str(expected)}},
    )


def test_a_condition_is_evaluated_with_each_requests_values(table: tuple[Any, str]) -> None:
    client, name = table
    client.put_item(TableName=name, Item={**_key("a"), "v": {"N": "1"}})

    _conditional_set(client, name, expected=1, new=2)
    with pytest.raises(ClientError) as caught:
        _conditional_set(client, name, expected=1, new=3)  # same text, v is 2 now
    _conditional_set(client, name, expected=2, new=4)

    assert caught.value.response["Error"]["Code"] == "ConditionalCheckFailedException"
    assert _items(client, name)["a"]["v"] == {"N": "4"}


def test_a_put_condition_is_evaluated_against_each_item(table: tuple[Any, str]) -> None:
    client, name = table

    def create(sk: str) -> None:
        client.put_item(
            TableName=name,
            Item={**_key(sk), "v": {"N": "1"}},
            ConditionExpression="attribute_not_exists(pk)",
        )

    create("a")
    create("b")  # another item: the condition holds again
    with pytest.raises(ClientError) as caught:
        create("a")

    assert caught.value.response["Error"]["Code"] == "ConditionalCheckFailedException"
    assert sorted(_items(client, name)) == ["a", "b"]


def test_an_update_expression_applies_each_requests_names_and_values(
    table: tuple[Any, str],
) -> None:
    client, name = table
    client.put_item(TableName=name, Item={**_key("a"), "n": {"N": "10"}})

    for attribute, value in (("x", "1"), ("y", "2")):
        client.update_item(
            TableName=name,
            Key=_key("a"),
            UpdateExpression="SET #attr = :value, n = n + :step",
            ExpressionAttributeNames={"#attr": attribute},
            ExpressionAttributeValues={":value": {"S": value}, ":step": {"N": value}},
        )

    item = _items(client, name)["a"]
    assert (item["x"], item["y"], item["n"]) == ({"S": "1"}, {"S": "2"}, {"N": "13"})


def test_an_expression_that_passed_is_refused_with_names_that_update_the_key(
    table: tuple[Any, str],
) -> None:
    client, name = table
    client.put_item(TableName=name, Item={**_key("a"), "v": {"N": "1"}})

    def set_attribute(attribute: str) -> None:
        client.update_item(
            TableName=name,
            Key=_key("a"),
            UpdateExpression="SET #attr = :value",
            ExpressionAttributeNames={"#attr": attribute},
            ExpressionAttributeValues={":value": {"S": "changed"}},
        )

    set_attribute("v")
    with pytest.raises(ClientError) as caught:
        set_attribute("sk")

    assert caught.value.response["Error"]["Code"] == "ValidationException"
    assert "part of the key" in caught.value.response["Error"]["Message"]
    assert sorted(_items(client, name)) == ["a"]


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("SET v = :one SET w = :one", 'The "SET" section can only be used once'),
        ("SET v = :one, v = :one", "Two document paths overlap"),
    ],
    ids=["two-set-clauses", "overlapping-paths"],
)
def test_an_invalid_update_expression_is_refused_every_time(
    table: tuple[Any, str], expression: str, message: str
) -> None:
    client, name = table
    client.put_item(TableName=name, Item={**_key("a"), "v": {"N": "1"}})

    for _ in range(2):
        with pytest.raises(ClientError) as caught:
            client.update_item(
                TableName=name,
                Key=_key("a"),
                UpdateExpression=expression,
                ExpressionAttributeValues={":one": {"N": "1"}},
            )
        assert caught.value.response["Error"]["Code"] == "ValidationException"
        assert message in caught.value.response["Error"]["Message"]
    assert _items(client, name)["a"]["v"] == {"N": "1"}


def test_unused_expression_values_are_refused_for_an_expression_seen_before(
    table: tuple[Any, str],
) -> None:
    client, name = table
    client.put_item(TableName=name, Item={**_key("a"), "v": {"N": "1"}})

    def update(values: dict[str, Any]) -> None:
        client.update_item(
            TableName=name,
            Key=_key("a"),
            UpdateExpression="SET v = :two",
            ExpressionAttributeValues=values,
        )

    update({":two": {"N": "2"}})
    with pytest.raises(ClientError) as caught:
        update({":two": {"N": "2"}, ":extra": {"N": "3"}})

    assert caught.value.response["Error"]["Code"] == "ValidationException"
    assert ":extra" in caught.value.response["Error"]["Message"]


def test_an_item_of_every_attribute_type_comes_back_as_written(table: tuple[Any, str]) -> None:
    client, name = table
    attributes = {
        "s": {"S": "text"},
        "n": {"N": "1.5"},
        "b": {"B": b"\x00\x01"},
        "ss": {"SS": ["x", "y"]},
        "ns": {"NS": ["1", "2"]},
        "bs": {"BS": [b"\x02"]},
        "l": {"L": [{"S": "in a list"}, {"N": "3"}]},
        "m": {"M": {"nested": {"M": {"deep": {"BOOL": True}}}}},
        "bool": {"BOOL": False},
        "null": {"NULL": True},
    }
    client.put_item(TableName=name, Item={**_key("a"), **attributes})

    got = client.get_item(TableName=name, Key=_key("a"), ConsistentRead=True)["Item"]
    updated = client.update_item(
        TableName=name,
        Key=_key("a"),
        UpdateExpression="SET s = :s",
        ExpressionAttributeValues={":s": {"S": "other"}},
        ReturnValues="ALL_NEW",
    )["Attributes"]

    def normalized(item: dict[str, Any]) -> dict[str, Any]:
        sets = ("SS", "NS", "BS")
        return {
            k: {t: sorted(v) if t in sets else v for t, v in a.items()} for k, a in item.items()
        }

    assert normalized(got) == normalized({**_key("a"), **attributes})
    assert normalized(updated) == normalized({**_key("a"), **attributes, "s": {"S": "other"}})


@pytest.fixture(params=["in-process", "http"])
def sqs(request: pytest.FixtureRequest) -> Any:
    emulator = EmbeddedEmulator.shared()
    client = sessions.client("sqs", emulator.endpoint_url, "us-east-1")
    return emulator.attach(client) if request.param == "in-process" else client


def test_a_message_past_its_queues_retention_is_not_received(sqs: Any) -> None:
    clock = VirtualClock()
    short, default = (
        sqs.create_queue(QueueName=f"emu-{secrets.token_hex(4)}", Attributes=attributes)["QueueUrl"]
        for attributes in ({"MessageRetentionPeriod": "60"}, {})
    )

    def bodies(url: str) -> list[str]:
        out = sqs.receive_message(QueueUrl=url, VisibilityTimeout=0)
        return [m["Body"] for m in out.get("Messages", [])]

    use_virtual_time(clock)
    try:
        for url in (short, default):
            sqs.send_message(QueueUrl=url, MessageBody="hello")
        clock.advance(timedelta(seconds=30))
        young = bodies(short), bodies(default)
        clock.advance(timedelta(seconds=31))
        old = bodies(short), bodies(default)
    finally:
        release_virtual_time(clock)
        for url in (short, default):
            sqs.delete_queue(QueueUrl=url)

    assert young == (["hello"], ["hello"])
    assert old == ([], ["hello"])  # past 60 s, within the default 4 days


def test_both_transports_reach_the_same_account_and_region() -> None:
    emulator = EmbeddedEmulator.shared()
    over_http = sessions.client("sqs", emulator.endpoint_url, "us-east-1")
    in_process = emulator.attach(sessions.client("sqs", emulator.endpoint_url, "us-east-1"))
    elsewhere = emulator.attach(sessions.client("sqs", emulator.endpoint_url, "eu-west-1"))
    name = f"emu-{secrets.token_hex(4)}"
    url = in_process.create_queue(QueueName=name)["QueueUrl"]
    try:
        seen_over_http = over_http.get_queue_url(QueueName=name)["QueueUrl"]
        with pytest.raises(ClientError) as caught:
            elsewhere.get_queue_url(QueueName=name)
    finally:
        over_http.delete_queue(QueueUrl=url)

    assert seen_over_http == url
    assert url.startswith(f"{emulator.url}/123456789012/")
    assert "NonExistentQueue" in caught.value.response["Error"]["Code"]


def test_a_lambda_version_number_is_never_used_twice() -> None:
    # Lambda numbers versions upwards for ever; moto counted the versions it holds, so
    # after a delete it published a number again (rung dev keeps code versions there).
    emulator = EmbeddedEmulator.shared()
    iam = sessions.client("iam", emulator.endpoint_url, "us-east-1")
    api = sessions.client("lambda", emulator.endpoint_url, "us-east-1")
    name = f"emu-{secrets.token_hex(4)}"
    role = iam.create_role(RoleName=name, AssumeRolePolicyDocument="{}")["Role"]["Arn"]

    def code(text: str) -> bytes:
        bundle = io.BytesIO()
        with zipfile.ZipFile(bundle, "w") as archive:
            archive.writestr("handler.py", text)
        return bundle.getvalue()

    api.create_function(
        FunctionName=name,
        Runtime="python3.12",
        Role=role,
        Handler="handler.main",
        Code={"ZipFile": code("# 1")},
        Publish=True,
    )
    published = []
    for n in (2, 3):
        api.update_function_code(FunctionName=name, ZipFile=code(f"# {n}"))
        published.append(api.publish_version(FunctionName=name, Description=f"v{n}")["Version"])
    api.delete_function(FunctionName=name, Qualifier="1")
    api.delete_function(FunctionName=name, Qualifier="3")
    unchanged = api.publish_version(FunctionName=name)["Version"]  # nothing new to publish
    api.update_function_code(FunctionName=name, ZipFile=code("# 4"))
    fourth = api.publish_version(FunctionName=name, Description="v4")

    versions = api.list_versions_by_function(FunctionName=name)["Versions"]
    with pytest.raises(ClientError, match="ResourceNotFoundException"):
        api.get_function_configuration(FunctionName=name, Qualifier="3")
    assert api.get_function_configuration(FunctionName=name, Qualifier="2")["Description"] == "v2"
    api.delete_function(FunctionName=name)
    iam.delete_role(RoleName=name)
    assert published == ["2", "3"]
    assert unchanged in ("2", "3")  # moto answers with its last one; no new number
    assert fourth["Version"] == "4"
    assert [(v["Version"], v.get("Description")) for v in versions] == [
        ("$LATEST", ""),
        ("2", "v2"),
        ("4", "v4"),
    ]
