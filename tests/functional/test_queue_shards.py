"""A queue whose slots are split over several items (``Queue(shards=N)``): the shares
add up to the limit, each shard admits and parks on its own, a keyed queue keeps a
key's runs in one shard, and operators see and set the queue as one."""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import pydantic
import pytest

import rung
from rung._engine.admission import Shard
from rung.testing import LocalEngine
from tests.functional.test_queue_admin import until


class Job(pydantic.BaseModel):
    n: int = 0
    tenant: str = "t"


@dataclass
class Held:
    """Executions as the tasks see them; each holds its slot until ``release`` opens."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    running: Counter[str] = field(default_factory=Counter)
    peak: Counter[str] = field(default_factory=Counter)
    release: threading.Event = field(default_factory=threading.Event)

    def work(self, job: Job) -> int:
        with self.lock:
            for key in ("all", job.tenant):
                self.running[key] += 1
                self.peak[key] = max(self.peak[key], self.running[key])
        try:
            self.release.wait(120)
        finally:
            with self.lock:
                self.running["all"] -= 1
                self.running[job.tenant] -= 1
        return job.n


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"shards": 0}, "between 1 and 64"),
        ({"shards": 65, "concurrency_limit": 100}, "between 1 and 64"),
        ({"shards": "4", "concurrency_limit": 100}, "must be an int"),
        ({"shards": 4}, "concurrency_limit of at least 4"),
        ({"shards": 4, "concurrency_limit": 3}, "concurrency_limit of at least 4"),
        (
            {"shards": 4, "concurrency_limit": 100, "rate_limit": rung.Rate(10)},
            "cannot be used with a rate_limit",
        ),
        (
            {"shards": 4, "concurrency_limit": 10, "per_key_limit": 3},
            "use at most 3 shards",
        ),
    ],
)
def test_shards_that_cannot_work_are_refused_with_what_to_do(
    options: dict[str, object], message: str
) -> None:
    with pytest.raises(rung.InvalidConfig, match=message):
        rung.Queue("q", **options)  # type: ignore[arg-type]


def test_the_shares_add_up_to_the_limit_and_a_run_keeps_its_shard() -> None:
    from rung._engine.admission import share

    assert [share(10, 4, i) for i in range(4)] == [3, 3, 2, 2]
    assert sum(share(1000, 32, i) or 0 for i in range(32)) == 1000
    spec = rung.Queue("q", concurrency_limit=1000, shards=32)
    keyed = rung.Queue("k", concurrency_limit=100, per_key_limit=2, shards=8)
    ids = [f"run_{n:04d}" for n in range(640)]
    spread = Counter(Shard.of(spec, run_id, "").index for run_id in ids)
    assert len(spread) == 32 and max(spread.values()) < 3 * 20  # about 20 each
    assert {Shard.of(keyed, run_id, "acme").index for run_id in ids[:50]} == {
        Shard.of(keyed, "other", "acme").index
    }
    assert Shard(spec, 0).item == "q" and Shard(spec, 7).item == "q~07"


@pytest.mark.timeout(300)
def test_a_sharded_queue_admits_each_shard_its_share_and_operates_as_one() -> None:
    app = rung.App("shards")
    held = Held()
    wide = rung.Queue("wide", concurrency_limit=6, shards=3)

    @app.task(id="wide-task", queue=wide)
    def wide_task(ctx: rung.Context, job: Job) -> int:
        return ctx.step("work", held.work, job)

    with LocalEngine(app, workers=10) as engine:
        handles = [engine.trigger("wide-task", {"n": n}) for n in range(12)]
        in_shard = Counter(Shard.of(wide, h.run_id, "").index for h in handles)

        # Each shard runs at most its share (2): the queue at most its limit.
        expected = sum(min(2, in_shard[i]) for i in range(3))
        assert until(lambda: engine.client.get_queue("wide").running == expected)
        assert until(lambda: engine.client.get_queue("wide").parked == 12 - expected)
        info = engine.client.get_queue("wide")
        for index in range(3):
            state = engine.store.queue_state(Shard(wide, index).item)
            assert len(state.holders) == min(2, in_shard[index])
            mine = {h.run_id for h in handles if Shard.of(wide, h.run_id, "").index == index}
            assert set(state.holders) <= mine  # a run holds a slot only in its own shard

        # Operators see one queue; a pause, a limit and a cancel reach every shard.
        assert (info.shards, info.concurrency_limit) == (3, 6)
        with pytest.raises(rung.InvalidConfig, match="at least 3"):
            engine.client.set_queue_limit("wide", concurrency_limit=2)
        paused = engine.client.pause_queue("wide")
        assert paused.paused
        assert all(engine.store.queue_state(Shard(wide, i).item).paused for i in range(3))
        parked = next(
            h
            for h in handles
            if engine.get_run(h.run_id).parked_sk is not None
            and engine.get_run(h.run_id).parked_queue == Shard.of(wide, h.run_id, "").item
        )
        engine.client.cancel(parked.run_id)
        assert until(lambda: engine.client.get_queue("wide").parked == 12 - expected - 1)
        raised = engine.client.set_queue_limit("wide", concurrency_limit=9)
        assert raised.concurrency_limit == 9 and raised.concurrency_limit_override == 9
        # stored whole in each item; each shard takes its share (3)
        assert [engine.store.queue_state(Shard(wide, i).item).limit_set for i in range(3)] == [
            9,
            9,
            9,
        ]
        with pytest.raises(rung.InvalidConfig, match="chosen by run id"):
            engine.client.set_queue_limit("wide", per_key_limit=1)
        with pytest.raises(rung.UnknownQueue, match="not a queue name"):
            engine.client.get_queue("wide~01")
        engine.client.resume_queue("wide")
        left = Counter(
            Shard.of(wide, h.run_id, "").index for h in handles if h.run_id != parked.run_id
        )
        more = sum(min(3, left[i]) for i in range(3))
        assert until(lambda: engine.client.get_queue("wide").running == more)

        held.release.set()
        runs = [engine.wait(h.run_id, timeout=120) for h in handles]
        final = engine.client.get_queue("wide")

    done = [r for r in runs if r.run_id != parked.run_id]
    assert [r.status for r in done] == [rung.RunStatus.COMPLETED] * 11
    assert held.peak["all"] <= 9
    assert (final.running, final.parked) == (0, 0)


@pytest.mark.timeout(300)
def test_a_keyed_sharded_queue_keeps_each_keys_limit_exact() -> None:
    app = rung.App("keyed-shards")
    held = Held()
    held.release.set()  # no holding: runs come and go while the others park
    tenants = rung.Queue("tenants", concurrency_limit=4, per_key_limit=1, shards=2)

    def slow(job: Job) -> int:
        time.sleep(0.05)
        return held.work(job)

    @app.task(id="tenant-task", queue=tenants, concurrency_key=lambda job: job.tenant)
    def tenant_task(ctx: rung.Context, job: Job) -> int:
        return ctx.step("work", slow, job)

    with LocalEngine(app, workers=8) as engine:
        handles = [
            engine.trigger("tenant-task", {"n": n, "tenant": t})
            for n in range(4)
            for t in ("a", "b", "c", "d", "e")
        ]
        runs = [engine.wait(h.run_id, timeout=180) for h in handles]
        items = [engine.store.queue_state(Shard(tenants, i).item) for i in range(2)]

    assert [r.status for r in runs] == [rung.RunStatus.COMPLETED] * 20
    assert all(held.peak[t] == 1 for t in "abcde")  # the per-key limit, exact
    assert held.peak["all"] <= 4
    # Every parked run was handed its slot: no key is remembered any more.
    assert [(s.holders, s.waiting, s.keyseq) for s in items] == [({}, 0, {})] * 2


def test_a_worker_that_finds_a_run_crashed_frees_the_slot_in_the_runs_own_shard() -> None:
    # The crash path has only the run as stored: it works the shard out again from the
    # payload's concurrency key (keyed queues) or the run id, as admission did.
    app = rung.App("crashed-shards")
    keyed = rung.Queue("keyed", concurrency_limit=8, per_key_limit=2, shards=4)
    plain = rung.Queue("plain", concurrency_limit=8, shards=4)

    @app.task(id="by-key", queue=keyed, concurrency_key=lambda job: job.tenant)
    def by_key(ctx: rung.Context, job: Job) -> int:
        return job.n

    @app.task(id="by-id", queue=plain)
    def by_id(ctx: rung.Context, job: Job) -> int:
        return job.n

    @app.task(id="free")
    def free(ctx: rung.Context, job: Job) -> int:
        return job.n

    with LocalEngine(app) as engine:
        runs = {
            task: engine.wait(engine.trigger(task, {"n": 1, "tenant": "acme"}).run_id)
            for task in ("by-key", "by-id", "free")
        }

    assert Shard.of_run(app, runs["by-key"]) == Shard.of(keyed, "any run", "acme")
    assert Shard.of_run(app, runs["by-id"]) == Shard.of(plain, runs["by-id"].run_id, "")
    assert Shard.of_run(app, runs["free"]) is None
    assert Shard.of_run(rung.App("other"), runs["by-key"]) is None  # the task is gone


def test_a_client_without_the_app_finds_a_sharded_queue_by_any_of_its_items() -> None:
    # Only the items that admitted a run exist; here not the first shard's. A client
    # without the app knows the queue from what the workers recorded in them.
    from rung._engine.queues import QueueAdmin

    app = rung.App("appless")
    keyed = rung.Queue("keyed", concurrency_limit=8, per_key_limit=2, shards=4)
    tenant = next(t for t in (f"t{n}" for n in range(100)) if Shard.of(keyed, "", t).index)

    @app.task(id="by-key", queue=keyed, concurrency_key=lambda job: job.tenant)
    def by_key(ctx: rung.Context, job: Job) -> int:
        return job.n

    with LocalEngine(app) as engine:
        engine.wait(engine.trigger("by-key", {"n": 1, "tenant": tenant}).run_id)
        admin = QueueAdmin(None, engine.store, engine.queue, engine.clock)
        info = admin.get("keyed")
        listed = [q.name for q in admin.list()]
        with pytest.raises(rung.UnknownQueue, match=r"known queues: keyed\)"):
            admin.get("other")

    assert (info.name, info.shards, info.concurrency_limit, info.code_known) == (
        "keyed",
        4,
        8,
        True,
    )
    assert listed == ["keyed"]


def test_after_the_shards_change_the_limit_in_force_shows_what_the_items_allow() -> None:
    # An operator's limit lives in the items it was set on; items a larger `shards`
    # adds have none, so they take the code's share until it is set again.
    from rung._engine.queues import QueueAdmin

    before = rung.Queue("grow", concurrency_limit=8, shards=2)
    after = rung.Queue("grow", concurrency_limit=8, shards=4)
    app, grown = rung.App("before"), rung.App("after")

    @app.task(id="t", queue=before)
    def t_before(ctx: rung.Context, job: Job) -> int:
        return job.n

    @grown.task(id="t", queue=after)
    def t_after(ctx: rung.Context, job: Job) -> int:
        return job.n

    with LocalEngine(app) as engine:
        set_on_two = engine.client.set_queue_limit("grow", concurrency_limit=4)
        admin = QueueAdmin(grown, engine.store, engine.queue, engine.clock)
        grown_info = admin.get("grow")
        admin.set_limit("grow", concurrency_limit=4)
        again = admin.get("grow")

    assert set_on_two.concurrency_limit == 4
    # shards 0, 1: 1 each of the operator's 4; shards 2, 3: 2 each of the code's 8
    assert (grown_info.concurrency_limit, grown_info.concurrency_limit_override) == (6, 4)
    assert (again.concurrency_limit, again.shards) == (4, 4)
