"""Flow control on LocalEngine with several worker threads: limits hold, and recover.

The tasks record their own executions (enter/leave, start times) so the tests
check what a user would: how many ran at once, per tenant and in all, and how many
started in any one-second window.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import pydantic
import pytest

import rung
from rung._engine.admission import Shard
from rung._util.clock import VirtualClock, from_ms, to_ms
from rung.testing import LocalEngine, SimulatedCrash


@dataclass
class Tracker:
    """Concurrent executions as the tasks see them, overall and per key."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    running: Counter[str] = field(default_factory=Counter)
    total: int = 0
    peak_total: int = 0
    peak_key: Counter[str] = field(default_factory=Counter)
    starts: list[tuple[str, str]] = field(default_factory=list)  # (key, run id) in order

    def enter(self, key: str, run_id: str) -> None:
        with self.lock:
            self.running[key] += 1
            self.total += 1
            self.peak_total = max(self.peak_total, self.total)
            self.peak_key[key] = max(self.peak_key[key], self.running[key])
            self.starts.append((key, run_id))

    def leave(self, key: str) -> None:
        with self.lock:
            self.running[key] -= 1
            self.total -= 1


class Job(pydantic.BaseModel):
    tenant: str = "t"
    n: int = 0
    tier: int = 0


@pytest.mark.slow  # a minute on the emulator: `make test` runs it, `make check` does not
@pytest.mark.timeout(600)
def test_120_runs_on_a_queue_with_limit_10_never_exceed_it_and_reach_it() -> None:
    app = rung.App("flow")
    tracker = Tracker()
    emails = rung.Queue("emails", concurrency_limit=10)

    def work(job: Job) -> int:
        info = rung.current_step()
        tracker.enter("all", info.run_id)
        try:
            # Hold the slot a while: until the queue is full, or at most 1.5 s (the
            # emulator starts a few runs per second, fewer than 10 in 20 ms of work).
            deadline = time.monotonic() + 1.5
            while tracker.total < 10 and time.monotonic() < deadline:
                time.sleep(0.005)
            time.sleep(0.01)
        finally:
            tracker.leave("all")
        return job.n

    @app.task(id="send", queue=emails)
    def send(ctx: rung.Context, job: Job) -> int:
        return ctx.step("work", work, job)

    with LocalEngine(app, workers=14) as engine:
        handles = [engine.trigger("send", {"n": n}) for n in range(120)]
        runs = [engine.wait(h.run_id, timeout=540) for h in handles]
        state = _settled(engine, "emails")
    assert [r.status for r in runs] == [rung.RunStatus.COMPLETED] * 120
    assert [r.output for r in runs] == list(range(120))
    assert tracker.peak_total == 10  # never above the limit, and the limit was reached
    assert all(r.attempt == 1 for r in runs)  # waiting for a slot is not an attempt
    assert state.holders == {} and state.waiting == 0  # every slot came back


@pytest.mark.timeout(300)
def test_per_tenant_limits_under_a_combined_cap() -> None:
    app = rung.App("tenants")
    tracker = Tracker()
    tenants = rung.Queue("tenants", concurrency_limit=4, per_key_limit=2)

    def work(job: Job) -> str:
        tracker.enter(job.tenant, rung.current_step().run_id)
        try:
            # Hold the slot until the cap is reached or two seconds pass (the emulator
            # starts runs more slowly than 30 ms of work ends them).
            deadline = time.monotonic() + 2.0
            while tracker.total < 4 and time.monotonic() < deadline:
                time.sleep(0.005)
            time.sleep(0.01)
        finally:
            tracker.leave(job.tenant)
        return job.tenant

    @app.task(id="tenant-task", queue=tenants, concurrency_key=lambda job: job.tenant)
    def tenant_task(ctx: rung.Context, job: Job) -> str:
        return ctx.step("work", work, job)

    with LocalEngine(app, workers=10) as engine:
        handles = [
            engine.trigger("tenant-task", {"tenant": t, "n": n})
            for n in range(12)
            for t in ("a", "b", "c")
        ]
        runs = [engine.wait(h.run_id, timeout=240) for h in handles]
    assert all(r.status == rung.RunStatus.COMPLETED for r in runs)
    assert tracker.peak_total == 4  # the combined cap holds (and is reached)
    assert max(tracker.peak_key.values()) == 2  # no tenant above its own limit
    assert set(tracker.peak_key) == {"a", "b", "c"}


@pytest.mark.slow  # minutes on the emulator: `make test` runs it, `make check` does not
@pytest.mark.timeout(600)
def test_a_tenant_with_two_runs_is_not_stuck_behind_one_with_a_hundred() -> None:
    app = rung.App("fair")
    tracker = Tracker()
    queue = rung.Queue("fair", concurrency_limit=2, per_key_limit=2)
    # Each run holds its slot until the test gives it a permit. Freeing one slot at a
    # time, and only once the run handed the last one has started, makes the order of
    # starts the order of hand-offs: with both slots freed at once, a run handed a
    # slot could start after several runs handed the other slot later, if its worker
    # was slow (a loaded machine).
    permits = threading.Semaphore(0)

    def work(job: Job) -> str:
        tracker.enter(job.tenant, rung.current_step().run_id)
        try:
            assert permits.acquire(timeout=540)
        finally:
            tracker.leave(job.tenant)
        return job.tenant

    @app.task(id="t", queue=queue, concurrency_key=lambda job: job.tenant)
    def task(ctx: rung.Context, job: Job) -> str:
        return ctx.step("work", work, job)

    # The holders block in their step for as long as parking 98 runs takes, which
    # can pass a minute on a loaded machine; a longer lease keeps their slots theirs.
    with LocalEngine(app, workers=6, lease_duration=timedelta(minutes=10)) as engine:
        try:
            big = [engine.trigger("t", {"tenant": "big", "n": n}) for n in range(100)]
            _wait_parked(engine, "fair", 98, timeout=480)
            small = [engine.trigger("t", {"tenant": "small", "n": n}) for n in range(2)]
            _wait_parked(engine, "fair", 100, timeout=480)
            for started in range(3, 7):  # the next four hand-offs, one at a time
                permits.release()
                _wait_started(tracker, started)
        finally:
            permits.release(200)  # the rest run freely
        runs = [engine.wait(h.run_id, timeout=300) for h in big + small]
    assert all(r.status == rung.RunStatus.COMPLETED for r in runs)
    order = [key for key, _ in tracker.starts]
    # Two big runs held the slots; the small tenant's runs take the next slots that
    # free, not the 99th and 100th.
    assert order[:2] == ["big", "big"]
    assert max(i for i, key in enumerate(order) if key == "small") <= 5


def _desk_app(name: str, queue: rung.Queue, **options: Any) -> rung.App:
    """An app whose one task "t" (a ``Job`` in, its ``n`` out) runs on ``queue``: what
    the store-level tests below claim and admit by hand."""
    app = rung.App(name)

    @app.task(id="t", queue=queue, **options)
    def task(ctx: rung.Context, job: Job) -> int:
        return job.n

    return app


class _Desk:
    """Store-level flow-control tests: claim runs and admit them by hand (no workers)."""

    def __init__(self, engine: LocalEngine, queue: rung.Queue) -> None:
        from rung._engine.admission import Gate

        self.store, self.clock, self.queue = engine.store, engine.clock, queue
        self.lease = timedelta(minutes=1)
        self.gate = Gate(engine.store, engine.queue, self.lease)

    def claim(self, run_id: str) -> Any:
        from rung._aws.dynamodb import Claimed

        claim = self.store.claim_run(run_id, self.clock.now(), self.lease)
        assert isinstance(claim, Claimed), claim
        return claim

    def admit(
        self,
        claim: Any,
        key: str = "",
        priority: int = 0,
        unused: datetime | None = None,
        at: datetime | None = None,
    ) -> object:
        """Admit ``claim`` now, or at the fixed time ``at`` (the engine's virtual clock
        lets wall time through, which a test of exact reservations cannot have)."""
        clock = self.clock.now if at is None else (lambda: at)
        return self.gate.admit(
            Shard(self.queue), claim.run, claim.token, key, priority, clock, timedelta(0), unused
        )


def _settled(engine: LocalEngine, queue: str) -> Any:
    """The queue's state once its holders are gone: a run gives its slot back just
    after its final write, so a test that saw the run finish may be a write early."""
    deadline = time.monotonic() + 30
    state = engine.store.queue_state(queue)
    while state.holders and time.monotonic() < deadline:
        time.sleep(0.02)
        state = engine.store.queue_state(queue)
    return state


def _wait_parked(engine: LocalEngine, queue: str, count: int, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if engine.store.queue_state(queue).waiting >= count:
            return
        time.sleep(0.02)
    raise AssertionError(f"{queue}: only {engine.store.queue_state(queue).waiting} parked")


def _wait_started(tracker: Tracker, count: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with tracker.lock:
            if len(tracker.starts) >= count:
                return
        time.sleep(0.01)
    raise AssertionError(f"only {len(tracker.starts)} of {count} runs started")


@pytest.mark.timeout(300)
def test_priority_takes_the_next_slot_before_older_lower_priority_runs() -> None:
    app = rung.App("prio")
    tracker = Tracker()
    queue = rung.Queue("prio", concurrency_limit=1)
    gate = threading.Event()

    def work(job: Job) -> int:
        tracker.enter(str(job.tier), rung.current_step().run_id)
        try:
            gate.wait(240)  # as long as _wait_parked may take
        finally:
            tracker.leave(str(job.tier))
        return job.n

    @app.task(id="t", queue=queue, priority=lambda job: job.tier)
    def task(ctx: rung.Context, job: Job) -> int:
        return ctx.step("work", work, job)

    with LocalEngine(app, workers=4) as engine:
        first = engine.trigger("t", {"n": 0, "tier": 0})
        # Let `first` take the slot before the others exist: runs triggered in the
        # same instant reach the gate in whichever order the workers receive them
        # (SQS is not FIFO), so which one held the slot would otherwise be a guess.
        _wait_started(tracker, 1)
        low = [engine.trigger("t", {"n": n, "tier": 0}) for n in range(1, 6)]
        _wait_parked(engine, "prio", 5)
        high = engine.trigger("t", {"n": 99, "tier": 5})
        _wait_parked(engine, "prio", 6)
        gate.set()
        runs = [engine.wait(h.run_id, timeout=120) for h in [first, *low, high]]
    assert all(r.status == rung.RunStatus.COMPLETED for r in runs)
    order = [key for key, _ in tracker.starts]
    assert tracker.starts[0] == ("0", first.run_id)
    assert order[1] == "5"  # the high-priority run went next, before the older ones
    assert sorted(run_id for key, run_id in tracker.starts[2:]) == sorted(h.run_id for h in low)


@pytest.mark.timeout(300)
def test_workers_killed_while_holding_slots_free_them_at_lease_expiry() -> None:
    app = rung.App("crashy")
    tracker = Tracker()
    queue = rung.Queue("crashy", concurrency_limit=3)
    crashed: Counter[int] = Counter()
    lock = threading.Lock()

    def work(job: Job) -> int:
        tracker.enter("all", rung.current_step().run_id)
        try:
            with lock:
                crash = job.n % 5 == 0 and crashed[job.n] == 0
                if crash:
                    crashed[job.n] += 1
            if crash:
                raise SimulatedCrash()  # the worker dies holding its slot
            time.sleep(0.01)
        finally:
            tracker.leave("all")
        return job.n

    @app.task(id="t", queue=queue, retry=rung.RetryPolicy(max_attempts=3))
    def task(ctx: rung.Context, job: Job) -> int:
        return ctx.step("work", work, job)

    with LocalEngine(app, workers=6, lease_duration=timedelta(seconds=20)) as engine:
        handles = [engine.trigger("t", {"n": n}) for n in range(30)]
        runs = [engine.wait(h.run_id, timeout=240) for h in handles]
        state = _settled(engine, "crashy")
    assert [r.status for r in runs] == [rung.RunStatus.COMPLETED] * 30
    assert sum(crashed.values()) == 6
    assert tracker.peak_total <= 3
    assert [r.attempt for r in runs].count(2) == 6  # each crash was one attempt
    assert state.holders == {} and state.waiting == 0


@pytest.mark.timeout(300)
def test_a_rate_limit_of_20_per_minute_holds_in_every_window() -> None:
    # The issue asks for 20 per second; the emulator here starts only 2-3 runs a second
    # with many threads, which would measure the emulator rather than the limit. Per
    # minute, virtual time skips the waits: the same code path, windows, reservations.
    app = rung.App("rate")
    starts: list[datetime] = []
    lock = threading.Lock()
    clocks: list[VirtualClock] = []

    def work(job: Job) -> int:
        with lock:
            starts.append(clocks[0].now())
        return job.n

    queue = rung.Queue("api", rate_limit=rung.Rate(20, per=timedelta(minutes=1)))

    @app.task(id="call", queue=queue)
    def call(ctx: rung.Context, job: Job) -> int:
        return ctx.step("work", work, job)

    with LocalEngine(app, workers=8) as engine:
        assert isinstance(engine.clock, VirtualClock)
        clocks.append(engine.clock)
        handles = [engine.trigger("call", {"n": n}) for n in range(50)]
        runs = [engine.wait(h.run_id, timeout=240) for h in handles]
    assert all(r.status == rung.RunStatus.COMPLETED for r in runs)
    times = sorted(starts)
    assert len(times) == 50
    window = timedelta(minutes=1)
    for i, start in enumerate(times):
        in_window = sum(1 for t in times[i:] if t - start < window)
        assert in_window <= 20, (start, in_window)
    span = (times[-1] - times[0]).total_seconds()
    assert (len(times) - 1) / span >= 0.5 * 20 / 60  # at least half the limit overall
    assert times[19] - times[0] < window  # the first 20 did not wait for the window


@pytest.mark.slow  # ~20 s of real time: `make test` runs it, `make check` does not
@pytest.mark.timeout(300)
def test_a_rate_limit_of_20_per_second_holds_in_every_window_and_is_used() -> None:
    # Real time: the starts are the tasks' own wall-clock times. The runs are triggered
    # to become due together, so the start rate measures the gate, not the trigger loop.
    app = rung.App("persecond")
    starts: list[float] = []
    lock = threading.Lock()

    def work(job: Job) -> int:
        with lock:
            starts.append(time.time())
        return job.n

    queue = rung.Queue("api", rate_limit=rung.Rate(20, per=timedelta(seconds=1)))

    @app.task(id="call", queue=queue)
    def call(ctx: rung.Context, job: Job) -> int:
        return ctx.step("work", work, job)

    with LocalEngine(app, workers=16, virtual_time=False) as engine:
        due = time.time() + 4
        handles = [
            engine.trigger("call", {"n": n}, delay=timedelta(seconds=max(due - time.time(), 0)))
            for n in range(100)
        ]
        runs = [engine.wait(h.run_id, timeout=240) for h in handles]
    assert [r.status for r in runs] == [rung.RunStatus.COMPLETED] * 100
    assert all(r.attempt == 1 for r in runs)  # waiting for the rate is not an attempt
    times = sorted(starts)
    assert len(times) == 100
    busiest = max(sum(1 for t in times[i:] if t - start < 1.0) for i, start in enumerate(times))
    assert busiest <= 20, busiest  # no one-second window holds more than the limit
    rate = (len(times) - 1) / (times[-1] - times[0])
    # The limit is used, not throttled far below it: a gate that let one run start per
    # window or per second would fail. The floor is a quarter of the limit, not half:
    # on a loaded 2-core machine the emulator itself starts 8-10 runs a second (this
    # failed at 7.9/s on the session's first commit too); speed is bench/'s business.
    assert rate >= 5, rate


def test_pausing_a_queue_stops_new_starts_and_resuming_continues() -> None:
    app = rung.App("pause")
    done: list[int] = []

    @app.task(id="t", queue=rung.Queue("p", concurrency_limit=2))
    def task(ctx: rung.Context, job: Job) -> int:
        done.append(job.n)
        return job.n

    with LocalEngine(app, workers=2) as engine:
        engine.store.set_queue("p", paused=True)
        handles = [engine.trigger("t", {"n": n}) for n in range(5)]
        _wait_parked(engine, "p", 5)
        engine.settle()  # whatever would start by itself (a wrong hand-off) has started
        parked = list(done)
        engine.store.set_queue("p", paused=False)
        from rung._engine.admission import Gate

        Gate(engine.store, engine.queue, timedelta(minutes=1)).fill(
            Shard(rung.Queue("p", concurrency_limit=2)), engine.clock.now()
        )
        runs = [engine.wait(h.run_id, timeout=60) for h in handles]
    assert parked == []
    assert sorted(r.output for r in runs) == [0, 1, 2, 3, 4]


def test_a_bad_concurrency_key_is_refused_at_trigger_and_nothing_is_stored() -> None:
    app = rung.App("badkey")

    @app.task(
        id="t",
        queue=rung.Queue("k", concurrency_limit=2, per_key_limit=1),
        concurrency_key=lambda job: job["tenant"],
    )
    def task(ctx: rung.Context, job: dict[str, Any]) -> None: ...

    with LocalEngine(app) as engine:
        with pytest.raises(rung.InvalidPayload, match="concurrency_key raised KeyError"):
            engine.trigger("t", {"no_tenant": 1})
        with pytest.raises(rung.InvalidPayload, match="non-empty str or int"):
            engine.trigger("t", {"tenant": None})
        assert engine.list_runs() == []


@pytest.mark.timeout(120)
def test_an_admission_that_gives_up_on_contention_costs_no_attempt(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Fifty writers in a row beating one worker to the queue item is not something the
    # emulator can be made to do on cue; a retry budget of zero gives up at once (the
    # same exit), and restoring it lets the deferred run in.
    import rung._engine.admission

    app = rung.App("contended")
    ran: list[int] = []

    @app.task(id="t", queue=rung.Queue("hot", concurrency_limit=1))
    def task(ctx: rung.Context, job: Job) -> int:
        ran.append(job.n)
        return job.n

    monkeypatch.setattr(rung._engine.admission, "_TRIES", 0)
    with LocalEngine(app, virtual_time=False) as engine:
        handle = engine.trigger("t", {"n": 7})
        deadline = time.monotonic() + 30
        while "contention" not in (engine.get_run(handle.run_id).waiting_for or ""):
            assert time.monotonic() < deadline, engine.get_run(handle.run_id)
            time.sleep(0.02)
        deferred = engine.get_run(handle.run_id)
        monkeypatch.setattr(rung._engine.admission, "_TRIES", 50)
        run = engine.wait(handle.run_id, timeout=60)

    assert deferred.status == rung.RunStatus.DELAYED
    assert deferred.waiting_for == "contention on queue 'hot'"
    assert ran == [7] and run.output == 7
    assert run.status == rung.RunStatus.COMPLETED
    assert run.attempt == 1  # giving up on contention is not an attempt


def test_a_parked_run_rechecked_while_its_hand_off_passed_it_by_keeps_a_place() -> None:
    # The safety net re-sends a parked run; while a worker holds it, a freed slot is
    # handed off: the hand-off finds the run claimed, drops its waiter item and serves
    # the next waiter. The run, still full out, must park with a new place (not keep a
    # place that no longer exists and wait for the next safety net, forever).
    from rung._engine.admission import PARK_RECHECK, Admitted, Parked

    queue = rung.Queue("q", concurrency_limit=2)
    app = _desk_app("recheck", queue)
    with LocalEngine(app, workers=0) as engine:
        desk = _Desk(engine, queue)
        store, clock, gate, admit = desk.store, desk.clock, desk.gate, desk.admit
        ids = {name: engine.trigger("t", {"n": n}).run_id for n, name in enumerate("ACBE")}

        def claim(name: str) -> Any:
            return desk.claim(ids[name])

        running = {name: claim(name) for name in "AC"}
        assert all(isinstance(admit(c), Admitted) for c in running.values())
        assert isinstance(admit(claim("B")), Parked)
        assert isinstance(admit(claim("E")), Parked)
        assert isinstance(clock, VirtualClock)
        for name, c in running.items():  # the running two keep their slots meanwhile
            later = clock.now() + timedelta(hours=1)
            assert gate.renew(Shard(queue), ids[name], later, clock.now(), c.token)
        clock.advance(PARK_RECHECK + timedelta(seconds=1))  # B and E are due again
        rechecked = claim("B")
        gate.release(Shard(queue), ids["A"], running["A"].token, clock.now())  # E gets the slot
        state = store.queue_state("q")
        assert set(state.holders) == {ids["C"], ids["E"]}

        verdict = admit(rechecked)  # full: B parks again

        assert isinstance(verdict, Parked)
        assert [w.run_id for w in store.waiters("q")] == [ids["B"]]
        assert store.queue_state("q").waiting == 1
        gate.release(Shard(queue), ids["C"], running["C"].token, clock.now())  # the next is B's
        assert ids["B"] in store.queue_state("q").holders
        assert list(store.waiters("q")) == []


def test_an_attempt_that_lets_go_late_does_not_free_the_next_attempts_slot() -> None:
    # A run continues in a fresh invocation (or is woken) and is claimed again before
    # the attempt that sent it on has given its slot back: the late release must not
    # remove the entry the next attempt holds, or a third run would get "its" slot.
    from rung._engine.admission import Admitted, Parked

    queue = rung.Queue("one", concurrency_limit=1)
    app = _desk_app("latecomer", queue)
    with LocalEngine(app, workers=0) as engine:
        desk = _Desk(engine, queue)
        store, clock, gate, claim, admit = desk.store, desk.clock, desk.gate, desk.claim, desk.admit
        run_id, other_id = (engine.trigger("t", {"n": n}).run_id for n in range(2))

        first = claim(run_id)
        assert isinstance(admit(first), Admitted)
        store.release_to_continue(run_id, first.token, clock.now(), timedelta(0))
        second = claim(run_id)
        assert isinstance(admit(second), Admitted)  # its own live entry, taken over
        gate.release(Shard(queue), run_id, first.token, clock.now())  # the first lets go, late

        holders = store.queue_state("one").holders
        assert list(holders) == [run_id] and holders[run_id].token == second.token
        assert isinstance(admit(claim(other_id)), Parked)  # the limit of 1 holds
        gate.release(Shard(queue), run_id, second.token, clock.now())
        assert list(store.queue_state("one").holders) == [other_id]  # handed on


def test_a_step_that_outlives_its_slot_queues_again_without_spending_an_attempt(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = rung.App("outlived")
    queue = rung.Queue("slow", concurrency_limit=1)
    calls: Counter[str] = Counter()
    clocks: list[VirtualClock] = []

    def long_step() -> str:
        calls["long"] += 1
        clocks[0].advance(timedelta(minutes=5))  # far past the slot's 1-minute lease
        return "long"

    def short_step() -> str:
        calls["short"] += 1
        return "short"

    @app.task(id="t", queue=queue)
    def task(ctx: rung.Context, job: Job) -> list[str]:
        return [ctx.step("long", long_step), ctx.step("short", short_step)]

    caplog.set_level("WARNING", logger="rung.worker")
    with LocalEngine(app) as engine:
        assert isinstance(engine.clock, VirtualClock)
        clocks.append(engine.clock)
        run = engine.wait(engine.trigger("t", {"n": 1}).run_id)
        faults = list(engine.faults)
        state = _settled(engine, "slow")

    assert run.status == rung.RunStatus.COMPLETED and run.output == ["long", "short"]
    assert run.attempt == 1  # losing the slot is not an attempt
    assert calls == {"long": 1, "short": 1}  # the checkpointed step did not run again
    assert faults == []
    assert state.holders == {} and state.waiting == 0
    lost = [m for m in (r.getMessage() for r in caplog.records) if "a step outlived it" in m]
    assert lost == [
        f"run {run.run_id}: its slot in queue 'slow' expired (a step outlived it) and "
        "counts as free; it stops at this step boundary and queues for a slot again"
    ]


def test_a_free_slot_reaches_a_lower_priority_past_a_band_of_blocked_keys(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A hand-off scans a bounded number of parked runs per priority (SCAN_WAITERS, 200);
    # made 3 here so that four parked runs of one blocked key fill the scan.
    import rung._engine.admission
    from rung._engine.admission import Admitted, Parked

    monkeypatch.setattr(rung._engine.admission, "SCAN_WAITERS", 3)
    queue = rung.Queue("b", concurrency_limit=3, per_key_limit=1)
    app = _desk_app("bands", queue, concurrency_key=lambda j: j.tenant, priority=lambda j: j.tier)
    with LocalEngine(app, workers=0) as engine:
        desk = _Desk(engine, queue)
        store, clock, gate = desk.store, desk.clock, desk.gate

        def admit(tenant: str, tier: int) -> tuple[str, int, object]:
            run_id = engine.trigger("t", {"tenant": tenant, "tier": tier}).run_id
            claim = desk.claim(run_id)
            return run_id, claim.token, desk.admit(claim, tenant, tier)

        big_id, _, first = admit("big", 5)
        x_id, x_token, second = admit("x", 0)
        blocked = [admit("big", 5) for _ in range(4)]  # big is at its limit of 1
        small_id, _, last = admit("small", 0)  # parks behind them: runs are parked

        assert isinstance(first, Admitted) and isinstance(second, Admitted)
        assert all(isinstance(v, Parked) for _, _, v in blocked) and isinstance(last, Parked)
        gate.release(Shard(queue), x_id, x_token, clock.now())  # two slots free now

        holders = store.queue_state("b").holders
        assert set(holders) == {big_id, small_id}  # big's four stay parked
        assert [w.run_id for w in store.waiters("b")] == [r for r, _, _ in blocked]


def test_code_outside_steps_that_outlives_the_slot_fails_the_attempt_instead_of_looping() -> None:
    app = rung.App("noprogress")
    clocks: list[VirtualClock] = []

    @app.task(
        id="t",
        queue=rung.Queue("slow2", concurrency_limit=1),
        retry=rung.RetryPolicy(max_attempts=2, initial_interval=1),
    )
    def task(ctx: rung.Context, job: Job) -> str:
        clocks[0].advance(timedelta(minutes=5))  # not in a step: redone on every try
        return ctx.step("only", lambda: "done")

    with LocalEngine(app) as engine:
        assert isinstance(engine.clock, VirtualClock)
        clocks.append(engine.clock)
        run = engine.wait(engine.trigger("t", {"n": 1}).run_id)

    assert run.status == rung.RunStatus.FAILED
    assert run.attempt == 2  # each try spent an attempt: no endless re-queueing
    assert run.error is not None and run.error.type == "SlotExpired"
    assert "expired before its first step" in run.error.message
    assert "move that work into steps" in run.error.message


def _two_per_second(name: str) -> tuple[rung.App, rung.Queue]:
    """An app whose one task runs on a queue of 2 starts per second."""
    queue = rung.Queue(name, rate_limit=rung.Rate(2, per=timedelta(seconds=1)))
    return _desk_app(name, queue), queue


def test_a_reservation_woken_too_late_for_goes_back_to_the_window() -> None:
    # Rate 2/s: A and B start now, C and D are reserved 1.1 s later (the window plus
    # its margin). C's worker wakes 200 ms late: C takes a fresh reservation, and its
    # unused one leaves the window, so C starts at once instead of a window later.
    from rung._engine.admission import Admitted, Delayed

    app, queue = _two_per_second("late")
    with LocalEngine(app, workers=0) as engine:
        desk = _Desk(engine, queue)
        claims = [desk.claim(engine.trigger("t", {"n": n}).run_id) for n in range(5)]
        start = from_ms(to_ms(desk.clock.now()))
        a, b, c, d = (desk.admit(claim, at=start) for claim in claims[:4])
        assert isinstance(a, Admitted) and isinstance(b, Admitted)
        assert isinstance(c, Delayed) and isinstance(d, Delayed)
        assert c.until == d.until == start + timedelta(seconds=1.1)

        late = start + timedelta(seconds=1.3)  # 200 ms late for C's reservation
        again = desk.admit(claims[2], unused=c.until, at=late)
        assert isinstance(again, Admitted)  # D's start and C's own: 2 in the window
        assert sorted(desk.store.queue_state("late").starts) == [to_ms(d.until), to_ms(late)]

        # E comes now: the window is full (D and C), so E waits a window after D.
        e = desk.admit(claims[4], at=late)
        assert isinstance(e, Delayed) and e.until == start + timedelta(seconds=2.2)


def test_a_reservation_found_late_on_arrival_stays_in_the_window() -> None:
    # The same lateness seen by a new invocation (no ``unused``): an earlier attempt
    # may have started on that reservation and crashed, so it stays counted.
    from rung._engine.admission import Delayed

    app, queue = _two_per_second("late2")
    with LocalEngine(app, workers=0) as engine:
        desk = _Desk(engine, queue)
        claims = [desk.claim(engine.trigger("t", {"n": n}).run_id) for n in range(4)]
        start = from_ms(to_ms(desk.clock.now()))
        c = [desk.admit(claim, at=start) for claim in claims][2]
        assert isinstance(c, Delayed)
        again = desk.admit(claims[2], at=start + timedelta(seconds=1.3))
        assert isinstance(again, Delayed)  # late, not known unused: a window after D
        assert again.until == start + timedelta(seconds=2.2)
