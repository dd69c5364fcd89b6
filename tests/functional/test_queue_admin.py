"""Operating a queue at run time (Client.list_queues/get_queue/set_queue_limit/
pause_queue/resume_queue) on LocalEngine with several worker threads.

The tasks record their own executions, and hold their slot on a threading event the
test opens, so the tests check what an operator would see: which runs executed, how
many at once, and what ``get_queue`` reports meanwhile.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pydantic
import pytest

import rung
from rung.testing import LocalEngine


@dataclass
class Recorder:
    """Executions as the tasks see them, and a gate that holds them in their slot."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    started: list[int] = field(default_factory=list)
    running: int = 0
    peak: int = 0
    release: threading.Event = field(default_factory=threading.Event)

    def work(self, job: Job) -> int:
        with self.lock:
            self.started.append(job.n)
            self.running += 1
            self.peak = max(self.peak, self.running)
        try:
            self.release.wait(120)
        finally:
            with self.lock:
                self.running -= 1
        return job.n


class Job(pydantic.BaseModel):
    n: int = 0
    tenant: str = "t"


def until(check: Callable[[], bool], timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@dataclass
class Setup:
    engine: LocalEngine
    client: rung.Client
    recorder: Recorder


@pytest.fixture
def setup() -> Iterator[Setup]:
    app = rung.App("qadmin")
    recorder = Recorder()
    mail = rung.Queue("mail", concurrency_limit=3, per_key_limit=3)

    @app.task(id="send", queue=mail, concurrency_key=lambda job: job.tenant)
    def send(ctx: rung.Context, job: Job) -> int:
        return ctx.step("work", recorder.work, job)

    @app.task(id="plain")
    def plain(ctx: rung.Context, job: Job) -> int:
        return job.n

    with LocalEngine(app, workers=6, virtual_time=False) as engine:
        yield Setup(engine, engine.client, recorder)
        recorder.release.set()  # let blocked workers go before the engine stops


@pytest.mark.timeout(300)
def test_pausing_stops_new_starts_running_runs_finish_and_resuming_starts_them(
    setup: Setup,
) -> None:
    engine, client, recorder = setup.engine, setup.client, setup.recorder
    first = [engine.trigger("send", {"n": n}) for n in range(2)]
    assert until(lambda: len(recorder.started) == 2)

    paused = client.pause_queue("mail")
    later = [engine.trigger("send", {"n": n}) for n in range(10, 14)]
    assert until(lambda: client.get_queue("mail").parked == 4)
    recorder.release.set()  # the two running runs may finish now
    done = [engine.wait(h.run_id, timeout=60) for h in first]
    engine.settle()  # their slots given back: a wrong hand-off to a parked run is made
    # A run gives its slot back just after its final write.
    assert until(lambda: client.get_queue("mail").running == 0)

    assert paused.paused
    assert [r.status for r in done] == [rung.RunStatus.COMPLETED] * 2
    assert sorted(recorder.started) == [0, 1]  # nothing triggered while paused executed
    info = client.get_queue("mail")
    assert (info.paused, info.running, info.parked) == (True, 0, 4)
    assert all(engine.get_run(h.run_id).status == rung.RunStatus.QUEUED for h in later)

    resumed = client.resume_queue("mail")
    runs = [engine.wait(h.run_id, timeout=120) for h in later]

    assert not resumed.paused
    assert [r.status for r in runs] == [rung.RunStatus.COMPLETED] * 4
    assert [r.output for r in runs] == [10, 11, 12, 13]
    assert all(r.attempt == 1 for r in runs)  # waiting out a pause is not an attempt
    assert sorted(recorder.started) == [0, 1, 10, 11, 12, 13]
    assert client.get_queue("mail").parked == 0


@pytest.mark.timeout(300)
def test_get_queue_reports_running_and_parked_runs_while_they_are_gated(setup: Setup) -> None:
    engine, client, recorder = setup.engine, setup.client, setup.recorder
    handles = [engine.trigger("send", {"n": n, "tenant": t}) for n, t in enumerate("aabab")]
    assert until(lambda: client.get_queue("mail").parked == 2)
    assert until(lambda: len(recorder.started) == 3)

    info = client.get_queue("mail")
    listed = {q.name: q for q in client.list_queues()}
    recorder.release.set()
    runs = [engine.wait(h.run_id, timeout=120) for h in handles]

    assert (info.running, info.parked) == (3, 2)
    assert sum(info.running_per_key.values()) == 3
    assert set(info.running_per_key) <= {"a", "b"}
    assert (info.concurrency_limit, info.code_concurrency_limit) == (3, 3)
    assert (info.concurrency_limit_override, info.paused, info.tasks) == (None, False, ("send",))
    assert list(listed) == ["mail"]  # the app's only queue
    assert (listed["mail"].running, listed["mail"].parked) == (3, 2)
    assert all(r.status == rung.RunStatus.COMPLETED for r in runs)
    # A slot is given back just after the run's final write (docs/flow-control.md),
    # so the counts may trail a finished run by that one write.
    assert until(lambda: client.get_queue("mail").running == 0)
    after = client.get_queue("mail")
    assert (after.running, after.parked, dict(after.running_per_key)) == (0, 0, {})


@pytest.mark.timeout(300)
def test_a_lower_limit_holds_at_run_time(setup: Setup) -> None:
    engine, client, recorder = setup.engine, setup.client, setup.recorder
    changed = client.set_queue_limit("mail", concurrency_limit=1)
    handles = [engine.trigger("send", {"n": n}) for n in range(4)]
    assert until(lambda: len(recorder.started) == 1)
    assert until(lambda: client.get_queue("mail").parked == 3)
    engine.settle(blocked=1)  # the first run holds a worker; a wrong start is made by now

    assert len(recorder.started) == 1
    recorder.release.set()
    runs = [engine.wait(h.run_id, timeout=120) for h in handles]

    assert (changed.concurrency_limit, changed.concurrency_limit_override) == (1, 1)
    assert changed.code_concurrency_limit == 3
    assert changed.per_key_limit == 1  # the code's per-key 3 is capped by the total
    assert all(r.status == rung.RunStatus.COMPLETED for r in runs)
    assert recorder.peak == 1  # never more than the new limit at once

    reset = client.set_queue_limit("mail", reset=True)
    assert (reset.concurrency_limit, reset.concurrency_limit_override) == (3, None)


@pytest.mark.timeout(300)
def test_raising_the_limit_starts_parked_runs_at_once(setup: Setup) -> None:
    engine, client, recorder = setup.engine, setup.client, setup.recorder
    handles = [engine.trigger("send", {"n": n}) for n in range(6)]
    assert until(lambda: len(recorder.started) == 3)
    assert until(lambda: client.get_queue("mail").parked == 3)

    raised = client.set_queue_limit("mail", concurrency_limit=6, per_key_limit=6)
    # The parked runs were handed slots by the change itself: none had to wait for a
    # running run to finish (the first three still hold theirs).
    started_at_once = until(lambda: len(recorder.started) == 6, timeout=30)
    peak = recorder.peak
    recorder.release.set()
    runs = [engine.wait(h.run_id, timeout=120) for h in handles]

    assert (raised.concurrency_limit, raised.per_key_limit) == (6, 6)
    assert started_at_once and peak == 6
    assert all(r.status == rung.RunStatus.COMPLETED for r in runs)


def test_an_unknown_queue_is_an_error_and_nothing_is_written(setup: Setup) -> None:
    client = setup.client
    calls: list[Callable[[], rung.QueueInfo]] = [
        lambda: client.get_queue("nope"),
        lambda: client.pause_queue("nope"),
        lambda: client.resume_queue("nope"),
        lambda: client.set_queue_limit("nope", concurrency_limit=2),
    ]
    for call in calls:
        with pytest.raises(rung.UnknownQueue, match=r"no queue 'nope' \(known queues: mail\)"):
            call()
    assert [q.name for q in client.list_queues()] == ["mail"]
    assert not setup.engine.store.queue_state("nope").stored
    assert issubclass(rung.UnknownQueue, LookupError)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"concurrency_limit": 0}, "concurrency_limit must be between 1 and 1000, got 0"),
        ({"concurrency_limit": 1001}, "concurrency_limit must be between 1 and 1000, got 1001"),
        ({"per_key_limit": -1}, "per_key_limit must be between 1 and 1000, got -1"),
        ({"concurrency_limit": True}, "concurrency_limit must be an int, got True"),
        ({"concurrency_limit": "5"}, "concurrency_limit must be an int, got '5'"),
        ({"per_key_limit": 4}, r"per_key_limit \(4\) would be above concurrency_limit \(3\)"),
        (
            {"concurrency_limit": 2, "per_key_limit": 3},
            r"per_key_limit \(3\) would be above concurrency_limit \(2\)",
        ),
        ({}, "nothing to set"),
        ({"concurrency_limit": 2, "reset": True}, "pass either reset or new limits"),
    ],
)
def test_bad_limits_are_refused_and_nothing_changes(
    setup: Setup, kwargs: dict[str, object], message: str
) -> None:
    client = setup.client
    before = client.get_queue("mail")

    with pytest.raises(rung.InvalidConfig, match=message):
        client.set_queue_limit("mail", **kwargs)  # type: ignore[arg-type]

    assert client.get_queue("mail") == before
    assert not setup.engine.store.queue_state("mail").stored  # not even an empty item


def test_a_read_only_client_sees_stored_queues_and_their_overrides(setup: Setup) -> None:
    engine = setup.engine
    setup.client.set_queue_limit("mail", concurrency_limit=2, per_key_limit=2)
    reader = rung.Client(
        None,
        table_name=engine.table_name,
        queue_url=engine.queue_url,
        endpoint_url=engine.endpoint_url,
        region="us-east-1",
    )

    info = reader.get_queue("mail")

    assert [q.name for q in reader.list_queues()] == ["mail"]
    assert (info.concurrency_limit, info.per_key_limit, info.tasks) == (2, 2, ())
    assert info.code_concurrency_limit is None  # the code is not known without the app
    assert reader.pause_queue("mail").paused
    assert setup.client.get_queue("mail").paused


def _wide_app(limit: int, hold: threading.Event) -> rung.App:
    """Task "t" on queue "wide": each run holds its slot until ``hold`` is set."""
    app = rung.App("wide")

    @app.task(id="t", queue=rung.Queue("wide", concurrency_limit=limit))
    def task(ctx: rung.Context, job: Job) -> int:
        hold.wait(120)
        return job.n

    return app


def _parked(engine: LocalEngine, count: int) -> list[rung.RunHandle]:
    handles = [engine.trigger("t", {"n": n}) for n in range(count)]
    assert until(lambda: engine.client.get_queue("wide").parked == count, timeout=120)
    return handles


# More than 50 free slots and parked runs: the change hands all of them off itself (it
# once stopped after 50, leaving the rest to the next run that ends, or to the parked
# runs' 10-minute recheck). The runs hold their slots until the test has looked.


@pytest.mark.timeout(300)
def test_resuming_hands_every_free_slot_to_parked_runs_at_once() -> None:
    hold = threading.Event()
    with LocalEngine(_wide_app(100, hold), workers=2) as engine:
        engine.client.pause_queue("wide")
        handles = _parked(engine, 80)

        resumed = engine.client.resume_queue("wide")
        hold.set()
        runs = [engine.wait(h.run_id, timeout=120) for h in handles]

    assert (resumed.paused, resumed.parked, resumed.running) == (False, 0, 80)
    assert [r.status for r in runs] == [rung.RunStatus.COMPLETED] * 80
    assert all(r.attempt == 1 for r in runs)


@pytest.mark.timeout(300)
def test_raising_a_limit_by_more_than_fifty_starts_as_many_parked_runs() -> None:
    hold = threading.Event()
    with LocalEngine(_wide_app(1, hold), workers=2) as engine:
        first = engine.trigger("t", {"n": -1})  # takes the one slot and holds it
        assert until(lambda: engine.client.get_queue("wide").running == 1)
        handles = _parked(engine, 80)

        raised = engine.client.set_queue_limit("wide", concurrency_limit=81)
        hold.set()
        runs = [engine.wait(h.run_id, timeout=120) for h in [first, *handles]]

    assert (raised.concurrency_limit, raised.parked, raised.running) == (81, 0, 81)
    assert [r.status for r in runs] == [rung.RunStatus.COMPLETED] * 81
