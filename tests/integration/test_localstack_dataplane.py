"""rung end to end on LocalStack: template.yaml's data plane, deployed through LocalStack's
CloudFormation, with real workers (threads receiving from the queue and calling
``Worker.handle``) and ``rung.Client``. Skipped without a LocalStack (see conftest.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest

import rung
from rung._aws.dynamodb import INDEXES, PROJECTIONS, Claimed, NewRun, NotClaimed
from rung._engine.admission import Shard
from rung._engine.worker import Disposition
from rung._util.clock import SystemClock
from rung._util.ids import new_run_id
from rung.models import EventType
from tests.integration.conftest import DataPlane, QueueWorkers

pytestmark = pytest.mark.slow

app = rung.App("localstack")
#: Side effects, keyed by (payload id, step): the tests count how often each step ran.
effects: Counter[tuple[str, str]] = Counter()
_effects_lock = threading.Lock()
QUICK = rung.RetryPolicy(max_attempts=3, initial_interval=1)


def effect(key: str, step: str) -> int:
    with _effects_lock:
        effects[(key, step)] += 1
        return effects[(key, step)]


@app.task(id="order", retry=QUICK)
def order(ctx: rung.Context, payload: dict[str, Any]) -> dict[str, Any]:
    key = payload["id"]
    reserved = ctx.step("reserve", lambda: effect(key, "reserve") and f"r-{key}")

    def charge() -> str:
        if effect(key, "charge") == 1 and payload.get("fail_charge_once"):
            raise ConnectionError("the card processor timed out")
        return f"ch-{key}"

    charged = ctx.step("charge", charge)
    ctx.step("email", lambda: effect(key, "email"))
    return {"reserved": reserved, "charged": charged}


@app.task(id="order-async", retry=QUICK)
async def order_async(ctx: rung.AsyncContext, payload: dict[str, Any]) -> dict[str, Any]:
    """``order`` as an async task: an async step, a plain one on a thread, and two
    steps gathered."""
    key = payload["id"]

    async def reserve() -> str:
        await asyncio.sleep(0)
        effect(key, "reserve")
        return f"r-{key}"

    def charge() -> str:
        if effect(key, "charge") == 1 and payload.get("fail_charge_once"):
            raise ConnectionError("the card processor timed out")
        return f"ch-{key}"

    reserved = await ctx.step("reserve", reserve)
    charged, _ = await asyncio.gather(
        ctx.step("charge", charge), ctx.step("email", lambda: effect(key, "email"))
    )
    return {"reserved": reserved, "charged": charged}


@app.task(id="scheduled")
def scheduled(ctx: rung.Context, event: rung.ScheduleEvent) -> str:
    effect(str(event.external_id), "scheduled")
    return event.scheduled_at.isoformat()


@app.task(id="big")
def big(ctx: rung.Context, payload: dict[str, Any]) -> dict[str, Any]:
    """A 5 MB payload in, a 5 MB step result replayed after a wait, a digest out."""
    value = ctx.step("make", lambda: "b" * int(payload["size"]))
    ctx.wait(timedelta(seconds=1))
    return {"payload": len(payload["blob"]), "step": len(value), "digest": _sha(value)}


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


WIDE = rung.Queue("wide", concurrency_limit=4, shards=2)


@app.task(id="wide", queue=WIDE)
def wide(ctx: rung.Context, payload: dict[str, Any]) -> int:
    return ctx.step("work", lambda: effect(payload["id"], "work"))


@pytest.fixture(scope="module")
def workers(localstack_plane: DataPlane) -> Iterator[QueueWorkers]:
    with QueueWorkers(app, localstack_plane) as running:
        yield running


@pytest.fixture(scope="module")
def client(localstack_plane: DataPlane) -> rung.Client:
    return localstack_plane.client(app)


def _id(name: str) -> str:
    return f"{name}-{time.monotonic_ns()}"


def test_the_data_plane_is_template_yaml(localstack_plane: DataPlane) -> None:
    dynamodb: Any = localstack_plane.aws("dynamodb")
    sqs: Any = localstack_plane.aws("sqs")
    table = dynamodb.describe_table(TableName=localstack_plane.table_name)["Table"]
    attributes = sqs.get_queue_attributes(
        QueueUrl=localstack_plane.queue_url, AttributeNames=["All"]
    )["Attributes"]
    dlq_arn = sqs.get_queue_attributes(
        QueueUrl=localstack_plane.dead_letter_queue_url, AttributeNames=["QueueArn"]
    )["Attributes"]["QueueArn"]
    ttl = dynamodb.describe_time_to_live(TableName=localstack_plane.table_name)

    assert {k["AttributeName"]: k["KeyType"] for k in table["KeySchema"]} == {
        "pk": "HASH",
        "sk": "RANGE",
    }
    assert {
        g["IndexName"]: (
            {k["AttributeName"]: k["KeyType"] for k in g["KeySchema"]},
            g["Projection"],
        )
        for g in table["GlobalSecondaryIndexes"]
    } == {name: (keys, PROJECTIONS[name]) for name, keys in INDEXES.items()}
    assert ttl["TimeToLiveDescription"] == {
        "TimeToLiveStatus": "ENABLED",
        "AttributeName": "expires_at",
    }
    assert json.loads(attributes["RedrivePolicy"]) == {
        "deadLetterTargetArn": dlq_arn,
        "maxReceiveCount": 3,
    }
    assert attributes["VisibilityTimeout"] == "360"  # 6 x FunctionTimeout=60


@pytest.mark.parametrize("task", ["order", "order-async"])
def test_a_triggered_run_goes_through_its_steps_and_completes(
    workers: QueueWorkers, client: rung.Client, task: str
) -> None:
    key = _id("plain")

    handle = client.trigger(task, {"id": key})
    run = workers.wait(client, handle.run_id)

    assert run.status == "COMPLETED" and run.attempt == 1
    assert run.output == {"reserved": f"r-{key}", "charged": f"ch-{key}"}
    assert {step: effects[(key, step)] for step in ("reserve", "charge", "email")} == {
        "reserve": 1,
        "charge": 1,
        "email": 1,
    }
    assert [r.run_id for r in client.list_runs(task=task, limit=50)].count(run.run_id) == 1
    # through the status index's shards, a page at a time: every page's cursor leads on
    pages, cursor = [], None
    while True:
        page = client.list_runs(status="COMPLETED", task=task, limit=1, cursor=cursor)
        pages += [r.run_id for r in page]
        if (cursor := page.cursor) is None:
            break
    assert pages.count(run.run_id) == 1 and len(pages) == len(set(pages))


@pytest.mark.parametrize("task", ["order", "order-async"])
def test_a_step_that_fails_once_resumes_from_its_checkpoint(
    workers: QueueWorkers, client: rung.Client, task: str
) -> None:
    key = _id("flaky")

    handle = client.trigger(task, {"id": key, "fail_charge_once": True})
    run = workers.wait(client, handle.run_id)
    kinds = [e.type for e in client.history(handle.run_id)]

    assert run.status == "COMPLETED" and run.output["charged"] == f"ch-{key}"
    # reserve ran once: the retry resumed at charge, reading reserve's checkpoint.
    assert effects[(key, "reserve")] == 1
    assert effects[(key, "charge")] == 2
    assert effects[(key, "email")] == 1
    assert kinds.count(EventType.STEP_FAILED) == 1 and EventType.RETRY_SCHEDULED in kinds


def test_the_same_idempotency_key_gives_the_same_run(
    workers: QueueWorkers, client: rung.Client
) -> None:
    key = _id("idem")

    first = client.trigger("order", {"id": key}, idempotency_key=key)
    second = client.trigger("order", {"id": key}, idempotency_key=key)
    run = workers.wait(client, first.run_id)
    third = client.trigger("order", {"id": key}, idempotency_key=key)

    assert first.created and not second.created and not third.created
    assert first.run_id == second.run_id == third.run_id
    assert run.status == "COMPLETED"
    assert effects[(key, "charge")] == 1


def test_a_batch_trigger_stores_and_enqueues_every_valid_item_in_bulk(
    workers: QueueWorkers, client: rung.Client
) -> None:
    keys = [_id(f"batch{n}") for n in range(30)]
    items: list[Any] = [{"id": key} for key in keys]
    items[7] = rung.TriggerItem({"id": keys[7]}, idempotency_key=keys[7], tags=["batch"])
    items.append(rung.TriggerItem({"id": "late"}, delay=-1))  # refused: nothing stored

    results = client.batch_trigger("order-async", items)
    runs = [workers.wait(client, r.handle.run_id) for r in results if r.handle is not None]

    assert [r.index for r in results] == list(range(31))
    assert [r.ok for r in results] == [True] * 30 + [False]
    assert results[30].error is not None and results[30].error.type == "InvalidConfig"
    assert [r.status for r in runs] == ["COMPLETED"] * 30
    assert [r.output["charged"] for r in runs] == [f"ch-{key}" for key in keys]
    assert all(effects[(key, "charge")] == 1 for key in keys)
    assert runs[7].tags == ("batch",)


def test_a_poison_message_reaches_the_dead_letter_queue(
    workers: QueueWorkers, localstack_plane: DataPlane
) -> None:
    sqs: Any = localstack_plane.aws("sqs")
    body = json.dumps({"not": "a rung message", "marker": _id("poison")})

    sqs.send_message(QueueUrl=localstack_plane.queue_url, MessageBody=body)
    # maxReceiveCount=3 receives, each refused (POISON), then SQS moves it. LocalStack's
    # timers run about a second late; allow for it.
    deadline = time.monotonic() + 45
    dead: list[dict[str, Any]] = []
    while time.monotonic() < deadline and not dead:
        out = sqs.receive_message(
            QueueUrl=localstack_plane.dead_letter_queue_url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=1,
            VisibilityTimeout=0,
            MessageSystemAttributeNames=["ApproximateReceiveCount"],
        )
        dead = [m for m in out.get("Messages", []) if m["Body"] == body]

    assert dead, f"the poison message is not in the DLQ after 45s ({workers.dispositions})"
    # The worker that refused it last counts its refusal after handing the message back,
    # and another worker's receive may move it to the DLQ in between: allow a moment.
    until = time.monotonic() + 5
    while workers.dispositions[Disposition.POISON] < localstack_plane.max_receive_count:
        assert time.monotonic() < until, workers.dispositions
        time.sleep(0.05)
    assert not workers.faults


def test_twenty_racing_claims_give_the_run_to_exactly_one(localstack_plane: DataPlane) -> None:
    store = localstack_plane.store()
    now = SystemClock().now()
    # Recorded without a message: no worker sees this run; only the racing claims do.
    new = NewRun(
        run_id=new_run_id(now),
        task_id="order",
        payload_json=json.dumps({"id": _id("race")}),
        created_at=now,
        available_at=now,
        idempotency_key=None,
        tags=(),
    )
    run, created = store.create_run(new, timedelta(days=1), now)
    assert created
    barrier = threading.Barrier(20)
    results: list[Claimed | NotClaimed] = []
    lock = threading.Lock()

    def claim() -> None:
        barrier.wait()
        result = store.claim_run(run.run_id, SystemClock().now(), timedelta(minutes=1))
        with lock:
            results.append(result)

    threads = [threading.Thread(target=claim) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    winners = [r for r in results if isinstance(r, Claimed)]
    assert len(results) == 20
    assert len(winners) == 1 and winners[0].token == 1
    assert {r.reason for r in results if isinstance(r, NotClaimed)} == {"busy"}
    assert store.get_run(run.run_id).lease_token == 1


class _FortyDaysAgo:
    """A clock 40 days behind: a run triggered and canceled on it finished 40 days ago, so
    its run item's TTL (its end + 30 days' retention + 7 days' grace) has passed."""

    def now(self) -> datetime:
        return SystemClock().now() - timedelta(days=40)


def test_ttl_deletes_an_expired_run_and_get_run_then_says_it_expired(
    localstack_plane: DataPlane, client: rung.Client
) -> None:
    dynamodb: Any = localstack_plane.aws("dynamodb")
    back_then = rung.Client(
        app,
        table_name=localstack_plane.table_name,
        queue_url=localstack_plane.queue_url,
        endpoint_url=localstack_plane.endpoint_url,
        region=localstack_plane.region,
        clock=_FortyDaysAgo(),
    )
    handle = back_then.trigger("order", {"id": _id("expired")}, delay=timedelta(minutes=15))
    canceled = back_then.cancel(handle.run_id)
    assert canceled.finished_at is not None
    assert canceled.expires_at == canceled.finished_at + timedelta(days=30)
    key = {"pk": {"S": f"RUN#{handle.run_id}"}, "sk": {"S": "#RUN"}}
    stored = dynamodb.get_item(TableName=localstack_plane.table_name, Key=key)["Item"]
    assert int(stored["expires_at"]["N"]) < time.time()  # past its TTL by the wall clock

    # LocalStack's TTL job (hourly with DYNAMODB_REMOVE_EXPIRED_ITEMS=1), run now.
    request = urllib.request.Request(
        f"{localstack_plane.endpoint_url}/_aws/dynamodb/expired", method="DELETE"
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        assert json.loads(response.read())["ExpiredItems"] >= 1

    assert "Item" not in dynamodb.get_item(TableName=localstack_plane.table_name, Key=key)
    with pytest.raises(rung.RunExpired, match=r"created at .* longer ago than the retention"):
        client.get_run(handle.run_id)


def test_a_sharded_queue_admits_through_its_items_and_shows_as_one(
    workers: QueueWorkers, client: rung.Client, localstack_plane: DataPlane
) -> None:
    keys = [_id(f"wide-{n}") for n in range(8)]

    runs = [workers.wait(client, client.trigger("wide", {"id": key}).run_id) for key in keys]
    info = client.get_queue("wide")
    dynamodb: Any = localstack_plane.aws("dynamodb")
    used = sorted({Shard.of(WIDE, r.run_id, "").item for r in runs})
    items = [
        dynamodb.get_item(
            TableName=localstack_plane.table_name,
            Key={"pk": {"S": f"QUEUE#{name}"}, "sk": {"S": "#QUEUE"}},
            ConsistentRead=True,
        ).get("Item")
        for name in used
    ]

    assert [r.status for r in runs] == ["COMPLETED"] * 8
    assert [effects[(key, "work")] for key in keys] == [1] * 8
    assert (info.shards, info.concurrency_limit, info.running, info.parked) == (2, 4, 0, 0)
    # each shard that admitted a run has its own item, its holders given back
    assert [item is not None and item["holders"]["M"] == {} for item in items] == [True] * len(used)


def test_a_schedule_lives_in_localstacks_scheduler_and_its_firing_is_one_run(
    workers: QueueWorkers, localstack_plane: DataPlane
) -> None:
    """EventBridge Scheduler on LocalStack holds the schedule (read back through its
    API); LocalStack does not invoke targets without its scheduler engine, so the local
    scheduler plays that part, and the firing, sent twice, is one run."""
    from rung._aws.scheduler import Scheduler
    from rung._engine.schedules import LocalScheduler

    plane = localstack_plane
    group = plane.outputs.get("ScheduleGroupName") or plane.stack_name
    api: Any = plane.aws("scheduler")
    if group not in [g["Name"] for g in api.list_schedule_groups()["ScheduleGroups"]]:
        api.create_schedule_group(Name=group)  # as CloudFormation would, where it did not
    client = rung.Client(
        app,
        table_name=plane.table_name,
        queue_url=plane.queue_url,
        endpoint_url=plane.endpoint_url,
        region=plane.region,
        schedule_group=group,
        scheduler_role_arn=plane.outputs.get("SchedulerRoleArn")
        or "arn:aws:iam::000000000000:role/rung-scheduler",
    )
    tenant = _id("tenant")
    info = client.create_schedule("scheduled", "*/5 * * * *", external_id=tenant)
    stored = api.get_schedule(Name=info.id, GroupName=group)
    assert stored["ScheduleExpression"] == "cron(*/5 * * * ? *)"
    assert stored["Target"]["Arn"].endswith(plane.queue_url.rsplit("/", 1)[-1])
    assert [s.id for s in client.list_schedules(task="scheduled")] == [info.id]

    clock = _Stepped(SystemClock().now())
    local = LocalScheduler(Scheduler(api, group, plane.queue().arn, None), plane.queue(), clock)
    local.tick()  # from here on
    assert info.next_at is not None
    clock.at = info.next_at + timedelta(seconds=1)
    queue = plane.queue()
    send = queue.send_body
    assert local.tick() == 1
    body = json.loads(api.get_schedule(Name=info.id, GroupName=group)["Target"]["Input"])
    body["at"] = info.next_at.strftime("%Y-%m-%dT%H:%M:%SZ")
    send(json.dumps(body))  # delivered again
    # Both deliveries handled: the run done and the queue empty (nothing visible or
    # in flight), so the duplicate had its turn.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        counts = queue.client.get_queue_attributes(
            QueueUrl=queue.url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        idle = (
            counts["ApproximateNumberOfMessages"]
            == counts["ApproximateNumberOfMessagesNotVisible"]
            == "0"
        )
        if effects[(tenant, "scheduled")] >= 1 and idle:
            break
        time.sleep(0.2)
    else:
        raise AssertionError(f"the queue did not empty within 60 s: {counts}")
    runs = client.list_runs(tags=[f"schedule:{info.id}"])
    client.delete_schedule(info.id)
    assert effects[(tenant, "scheduled")] == 1
    assert len(runs) == 1


class _Stepped:
    """A clock the test sets (LocalScheduler's times)."""

    def __init__(self, at: datetime) -> None:
        self.at = at

    def now(self) -> datetime:
        return self.at


def test_a_5_mb_payload_and_step_result_round_trip_through_localstacks_s3(
    localstack_plane: DataPlane, workers: QueueWorkers, client: rung.Client
) -> None:
    assert localstack_plane.bucket is not None
    s3: Any = localstack_plane.aws("s3")

    def keys() -> set[str]:
        out = s3.list_objects_v2(Bucket=localstack_plane.bucket)
        return {o["Key"] for o in out.get("Contents", [])}

    before = keys()
    blob, size = "p" * 5_000_000, 5_000_000
    handle = client.trigger("big", {"blob": blob, "size": size})
    run = workers.wait(client, handle.run_id, timeout=120)
    assert run.status == "COMPLETED", run.error
    assert run.output == {"payload": len(blob), "step": size, "digest": _sha("b" * size)}
    assert client.get_run(handle.run_id).payload == {"blob": blob, "size": size}
    made = keys() - before
    assert len(made) == 2 and all(k.startswith(f"runs/{handle.run_id}/") for k in made)
    for key in made:  # encrypted at rest, read back through LocalStack's S3 API
        assert s3.head_object(Bucket=localstack_plane.bucket, Key=key)["ServerSideEncryption"] == (
            "AES256"
        )
    encryption = s3.get_bucket_encryption(Bucket=localstack_plane.bucket)
    rule = encryption["ServerSideEncryptionConfiguration"]["Rules"][0]
    assert rule["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    block = s3.get_public_access_block(Bucket=localstack_plane.bucket)
    assert all(block["PublicAccessBlockConfiguration"].values())
    # 11 MB: refused before anything is stored
    with pytest.raises(rung.PayloadTooLarge, match="at most 10,485,760 bytes"):
        client.trigger("big", {"blob": "x" * 11_000_000, "size": 1})
    assert keys() - before == made
