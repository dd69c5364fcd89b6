"""list_runs through the write-sharded indexes: pages with a cursor, filters by status,
task, tag and time, and the same answers from a table that still has the old indexes."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest

import rung
from rung._aws.dynamodb import DynamoStore
from rung._util.clock import VirtualClock
from rung.testing import LocalEngine


def _app() -> rung.App:
    app = rung.App("listing")

    @app.task(id="fast")
    def fast(ctx: rung.Context, n: int) -> int:
        return n

    @app.task(id="boom", retry=rung.RetryPolicy(max_attempts=1))
    def boom(ctx: rung.Context, n: int) -> int:
        raise RuntimeError(f"boom {n}")

    @app.task(id="approve")
    def approve(ctx: rung.Context, n: int) -> object:
        return ctx.wait_for_token(ctx.create_token("approval"))

    return app


@pytest.fixture(scope="module")
def engine() -> Iterator[LocalEngine]:
    """30 completed `fast` runs (tag "even" on even n) created a minute apart, 5 failed
    `boom` runs, and 4 `approve` runs WAITING for a token."""
    with LocalEngine(_app()) as engine:
        assert isinstance(engine.clock, VirtualClock)
        handles = []
        for n in range(30):
            tags = (["even"] if n % 2 == 0 else []) + (["three"] if n % 3 == 0 else [])
            handles.append(engine.trigger("fast", n, tags=tags))
            engine.clock.advance(timedelta(minutes=1))
        handles += [engine.trigger("boom", n) for n in range(5)]
        for handle in handles:
            engine.wait(handle.run_id, timeout=60)
        for n in range(4):
            engine.wait_for_token(engine.trigger("approve", 100 + n).run_id, "approval")
        yield engine


def _all_pages(engine: LocalEngine, limit: int, **filters: object) -> list[list[rung.Run]]:
    pages = []
    cursor = None
    while True:
        page = engine.list_runs(limit=limit, cursor=cursor, **filters)  # type: ignore[arg-type]
        pages.append(list(page))
        cursor = page.cursor
        if cursor is None:
            return pages
        assert len(pages) < 50, "the cursor never ran out"


def test_pages_with_a_cursor_list_every_run_once_newest_first(engine: LocalEngine) -> None:
    pages = _all_pages(engine, limit=7, task="fast")
    runs = [r for page in pages for r in page]

    assert all(len(page) <= 7 for page in pages)
    assert len(runs) == 30 and len({r.run_id for r in runs}) == 30
    order = [(r.created_at, r.run_id) for r in runs]
    assert order == sorted(order, reverse=True)
    assert sorted(r.output for r in runs if r.output is not None) == list(range(30))


def test_each_filter_and_their_combinations(engine: LocalEngine) -> None:
    failed = engine.list_runs(status="FAILED", limit=100)
    waiting = engine.list_runs(status=rung.RunStatus.WAITING, task="approve", limit=100)
    even = engine.list_runs(tag="even", limit=100)
    none_of_boom = engine.list_runs(task="boom", status="COMPLETED", limit=100)
    everything = engine.list_runs(limit=1000)

    assert sorted(r.payload for r in failed) == [0, 1, 2, 3, 4]
    assert {r.task_id for r in failed} == {"boom"}
    assert sorted(r.payload for r in waiting) == [100, 101, 102, 103]
    assert sorted(r.payload for r in even) == list(range(0, 30, 2))
    assert list(none_of_boom) == [] and none_of_boom.cursor is None
    assert len(everything) == 39 and everything.cursor is None


def test_tags_filter_runs_that_have_every_one_and_page_with_a_cursor(
    engine: LocalEngine,
) -> None:
    both = engine.client.list_runs(tags=["even", "three"], limit=100)
    also = engine.client.list_runs(tag="even", tags=["three"], limit=100)
    paged = _all_pages(engine.client, 2, tags=["three", "even"])  # type: ignore[arg-type]
    three = engine.client.list_runs(tags=("three",), limit=100)
    # a task with tags and no status (the task index holds keys only, not tags)
    of_task = engine.client.list_runs(task="fast", tags=["even", "three"], limit=100)
    none = engine.client.list_runs(task="boom", tags=["even"], limit=100)
    paged_task = _all_pages(engine.client, 2, task="fast", tags=["three"])  # type: ignore[arg-type]

    assert sorted(r.payload for r in both) == [0, 6, 12, 18, 24]
    assert sorted(r.payload for r in also) == [0, 6, 12, 18, 24]
    assert sorted(r.payload for page in paged for r in page) == [0, 6, 12, 18, 24]
    assert sorted(r.payload for r in three) == list(range(0, 30, 3))
    assert sorted(r.payload for r in of_task) == [0, 6, 12, 18, 24] and list(none) == []
    assert sorted(r.payload for page in paged_task for r in page) == list(range(0, 30, 3))
    with pytest.raises(rung.InvalidConfig, match="tags"):
        engine.client.list_runs(tags="even")  # a str, not a list of tags
    cursor = engine.client.list_runs(tags=["three"], limit=2).cursor
    with pytest.raises(rung.InvalidConfig, match="same filters"):
        engine.client.list_runs(tags=["even"], limit=2, cursor=cursor)


def test_a_time_range_lists_the_runs_created_in_it(engine: LocalEngine) -> None:
    runs = {r.payload: r for r in engine.list_runs(task="fast", status="COMPLETED", limit=100)}
    start, end = runs[10].created_at, runs[20].created_at

    inside = engine.list_runs(task="fast", created_after=start, created_before=end, limit=100)
    paged = _all_pages(engine, 3, task="fast", created_after=start, created_before=end)

    assert sorted(r.payload for r in inside) == list(range(10, 20))  # [after, before)
    assert sorted(r.payload for page in paged for r in page) == list(range(10, 20))


def test_bad_filters_and_cursors_are_refused_with_what_to_do(engine: LocalEngine) -> None:
    cursor = engine.list_runs(task="fast", limit=2).cursor
    assert cursor is not None

    with pytest.raises(rung.InvalidConfig, match="same filters"):
        engine.list_runs(task="boom", limit=2, cursor=cursor)
    with pytest.raises(rung.InvalidConfig, match="not one that list_runs returned"):
        engine.list_runs(task="fast", limit=2, cursor="garbage!")
    with pytest.raises(rung.InvalidConfig, match="timezone-aware"):
        engine.list_runs(created_after=datetime(2026, 1, 1))  # noqa: DTZ001 - the point
    with pytest.raises(rung.InvalidConfig, match="from 1 to 1000"):
        engine.list_runs(limit=0)
    with pytest.raises(rung.InvalidConfig, match="unknown status"):
        engine.list_runs(status="DONE")


def test_a_table_with_the_old_indexes_answers_the_same(engine: LocalEngine) -> None:
    # A table as the previous release created it (by_task and by_status, projection
    # ALL): its runs are read through those until `rung upgrade-table` replaces them.
    legacy = DynamoStore(engine.dynamodb, engine.table_name + "-legacy")
    legacy.create_table(legacy=True)
    for item in engine.dynamodb.scan(TableName=engine.table_name)["Items"]:
        engine.dynamodb.put_item(TableName=legacy.table, Item=item)

    def ids(store: DynamoStore, **filters: object) -> list[str]:
        found: list[str] = []
        cursor = None
        while True:
            page = store.list_runs(limit=4, cursor=cursor, **filters)  # type: ignore[arg-type]
            found += [r.run_id for r in page]
            if (cursor := page.cursor) is None:
                return found

    for filters in (
        {},
        {"task_id": "fast"},
        {"status": rung.RunStatus.FAILED},
        {"tags": ("even",)},
        {"tags": ("even", "three")},
        {"task_id": "approve", "status": rung.RunStatus.WAITING},
    ):
        assert ids(legacy, **filters) == ids(engine.store, **filters), filters
    assert "runs_by_status" not in legacy.active_indexes()


def test_no_index_key_value_holds_more_than_its_share(engine: LocalEngine) -> None:
    # Every run item names its shard keys; a task's runs spread over all SHARDS values.
    items = engine.dynamodb.scan(
        TableName=engine.table_name,
        FilterExpression="sk = :run AND task_id = :fast",
        ExpressionAttributeValues={":run": {"S": "#RUN"}, ":fast": {"S": "fast"}},
    )["Items"]
    keys = [item["task_shard"]["S"] for item in items]

    assert len(items) == 30
    assert all(k.startswith("fast#") for k in keys)
    assert len(set(keys)) >= 10  # 30 runs over 32 values: not all on a few
    assert all(item["status_shard"]["S"].startswith(item["status"]["S"] + "#") for item in items)


def test_a_run_that_changes_status_during_the_read_is_listed_once() -> None:
    # The fan-out reads every status's key values in parallel; a run that moves from
    # WAITING to COMPLETED between the read of its old key value and of its new one
    # comes back from both (seen on LocalStack). The move is made here with a real
    # UpdateItem between the two reads, ordered by botocore's event hooks whatever the
    # threads' order: the new key value's read waits for the move.
    with LocalEngine(_app(), virtual_time=False) as engine:
        run_id = engine.trigger("approve", 1).run_id
        engine.wait_for_token(run_id, "approval")
        others = [engine.trigger("fast", n).run_id for n in range(3)]
        for other in others:
            engine.wait(other, timeout=60)
        item = engine.dynamodb.get_item(
            TableName=engine.table_name, Key={"pk": {"S": f"RUN#{run_id}"}, "sk": {"S": "#RUN"}}
        )["Item"]
        shard = item["status_shard"]["S"].split("#")[1]
        old, new = f"WAITING#{shard}", f"COMPLETED#{shard}"
        first: list[str] = []  # the two key values, in the order their reads began
        moved = threading.Event()
        lock = threading.Lock()

        def before(params: dict[str, Any], **_: Any) -> None:
            key = params["ExpressionAttributeValues"][":k"]["S"]
            if key not in (old, new):
                return
            with lock:
                first.append(key)
            if key == new:  # read the new key value only once the run is under it
                assert moved.wait(30), "the read of the old key value never came back"

        def after(parsed: dict[str, Any], model: Any, **_: Any) -> None:
            # The old key value's answer has the run: now it moves, as a worker would.
            mine = [
                e
                for e in parsed.get("Items", [])
                if e["pk"]["S"] == f"RUN#{run_id}" and e["status_shard"]["S"] == old
            ]
            if model.name != "Query" or not mine or moved.is_set():
                return
            engine.dynamodb.update_item(
                TableName=engine.table_name,
                Key={"pk": {"S": f"RUN#{run_id}"}, "sk": {"S": "#RUN"}},
                UpdateExpression="SET status_shard = :s",
                ExpressionAttributeValues={":s": {"S": new}},
            )
            moved.set()

        events = engine.dynamodb.meta.events
        events.register("before-parameter-build.dynamodb.Query", before)
        events.register("after-call.dynamodb.Query", after)
        try:
            listed = [r.run_id for r in engine.list_runs(limit=10)]
            paged = [r.run_id for page in _all_pages(engine, 2) for r in page]
        finally:
            events.unregister("before-parameter-build.dynamodb.Query", before)
            events.unregister("after-call.dynamodb.Query", after)

    assert moved.is_set() and sorted(first[:2]) == sorted([old, new])
    assert sorted(listed) == sorted([run_id, *others])
    assert sorted(paged) == sorted([run_id, *others])
