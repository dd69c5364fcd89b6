"""Admission to a queue's slots: concurrency limits, per-key limits, rate limits, priority.

The worker calls ``Gate.admit`` after claiming a run of a task that has a queue, and
``Gate.release`` when the run stops executing (finished, waiting, backing off,
continuing elsewhere). See docs/flow-control.md for the design; in short:

* A slot is a lease in the queue item (``holders``), renewed with the run's lease; a
  crashed holder's slot frees when its lease expires (invariant 6). Every change to
  the holders is a write conditioned on the queue item's ``version``, so two workers
  can never both take the last slot.
* A run that finds no free slot is **parked**: one transaction writes a waiter item,
  counts it in the queue and releases the run (QUEUED, no message in flight). It costs
  no attempt, no receive count and no polling. A release **hands the slot off** to the
  best waiter (highest priority; within a priority, round-robin across keys, FIFO per
  key) in one transaction, and sends that run's message. A parked run is also due
  again after ``PARK_RECHECK`` (the reconciler re-sends it), the safety net if a
  hand-off was lost to a crash.
* A rate limit is a sliding window of start times kept in the queue item, with future
  entries as reservations: a run that may not start yet keeps its slot and is delayed
  to its reserved time (one conditional write, no herd of retries).
* A queue with ``shards=N`` keeps its slots in N such items (``Shard``), each with its
  share of the limits and its own parked runs: a run belongs to the shard of its
  concurrency key (keyed queues) or of its run id, and everything above happens in that
  shard. The shares add up to the limit, so the queue never runs more than it.
* The code's declaration of the queue (its limits and rate) is recorded in the queue
  item by the write that admits or parks a run, when it differs from the stored one
  (so after a deploy that changes it, once): a client without the app (``rung queues``
  with no ``--app``) reads the code's limits from there.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from rung._aws.dynamodb import DynamoStore, Holder, QueueState, Waiter
from rung._aws.sqs import SqsQueue
from rung._util.clock import from_ms, iso, to_ms
from rung.errors import Contended, InvalidConfig
from rung.flow import Queue, Rate
from rung.models import Run

if TYPE_CHECKING:
    from rung.app import App

log = logging.getLogger("rung.flow")

#: A parked run is due again after this if no hand-off woke it (the safety net).
PARK_RECHECK = timedelta(minutes=10)


#: Starts are spaced by a little more than the window (10%, at least 50 ms, at most
#: 5 s), so that the tasks' own start times, which follow admission by a few ms on AWS
#: and by up to a few hundred on a loaded emulator, also respect the limit in every
#: window.
def rate_margin(window: timedelta) -> timedelta:
    return min(max(window / 10, timedelta(milliseconds=50)), timedelta(seconds=5))


def late_tolerance(window: timedelta) -> timedelta:
    """How far past its reservation a run may still start: half the margin. A run that
    comes later (its message picked up late, its thread descheduled) takes a fresh
    reservation instead, so every start is within this of a reservation and the
    margin covers it: any window of the nominal length holds at most the limit."""
    return rate_margin(window) / 2


def is_late(spec: Queue, reserved: datetime, now: datetime) -> bool:
    rate = spec.rate_limit
    return rate is not None and now - reserved > late_tolerance(rate.window)


_TRIES = 50

#: A hand-off looks at most this many parked runs of one priority for one whose key
#: is under its per-key limit, then goes on at the next priority. Keys interleave
#: within a priority, so another key's run is near the front; the bound keeps a
#: release cheap when a key with thousands of parked runs is at its limit (a run
#: further back in the same priority is found by a later hand-off).
SCAN_WAITERS = 200


@dataclass(frozen=True)
class Admitted:
    """The run holds a slot and may start now."""

    #: the queue's runs holding a slot and parked, as this admission left it (metrics)
    running: int = 0
    parked: int = 0


@dataclass(frozen=True)
class Parked:
    """No slot: the run was released and waits for a hand-off."""

    running: int = 0
    parked: int = 0


@dataclass(frozen=True)
class Delayed:
    """It holds a slot but its rate-limit reservation is at ``until``."""

    until: datetime
    running: int = 0
    parked: int = 0


@dataclass(frozen=True)
class Limits:
    concurrency: int | None
    per_key: int | None


def limits_of(queue: Queue, state: QueueState) -> Limits:
    """The limits in force: the code's, unless an operator set others (rung queues)."""
    return Limits(
        concurrency=state.limit_set if state.limit_set is not None else queue.concurrency_limit,
        per_key=state.per_key_set if state.per_key_set is not None else queue.per_key_limit,
    )


def share(total: int | None, shards: int, index: int) -> int | None:
    """Shard ``index``'s part of a limit ``total`` split over ``shards``: the parts differ
    by at most one and add up to ``total``."""
    if total is None:
        return None
    return total // shards + (1 if index < total % shards else 0)


@dataclass(frozen=True)
class Shard:
    """One of the items a queue's slots live in (all of them when ``shards`` is 1)."""

    queue: Queue
    index: int = 0

    @property
    def item(self) -> str:
        """The name its state is stored under (``item_name``)."""
        return item_name(self.queue.name, self.index)

    def limits(self, state: QueueState) -> Limits:
        """The shard's limits in force (``state``: its item): its share of the queue's
        concurrency limit, the operator's if one is set (stored whole in every item),
        else the code's; the per-key limit whole (a key's runs are all in one shard)."""
        whole = limits_of(self.queue, state)
        return Limits(share(whole.concurrency, self.queue.shards, self.index), whole.per_key)

    @staticmethod
    def of(spec: Queue, run_id: str, key: str) -> Shard:
        """The shard a run of ``spec`` takes its slot in: by its concurrency key when the
        queue has a per-key limit, else by its run id (a stable hash either way)."""
        if spec.shards == 1:
            return Shard(spec)
        basis = key if spec.per_key_limit is not None else run_id
        return Shard(spec, zlib.crc32(basis.encode()) % spec.shards)

    @staticmethod
    def of_run(app: App, run: Run, resolve: Callable[[Any], Any] = lambda v: v) -> Shard | None:
        """The shard a run holds (or would hold) its slot in, worked out from the run as
        stored (for a worker that finds it crashed); None when its task has no queue, or
        its key cannot be worked out now (its slot then frees when its lease runs out)."""
        try:
            task = app.get_task(run.task_id)
            spec = task.queue
            if spec is None:
                return None
            key = ""
            if spec.shards > 1 and spec.per_key_limit is not None:
                key = task.flow_of(task.payload_of(resolve(run.payload)))[0]  # (from S3?)
        except Exception:  # noqa: BLE001 - an unknown task, a payload or key function that fails
            return None
        return Shard.of(spec, run.run_id, key)


def shards_of(spec: Queue) -> list[Shard]:
    return [Shard(spec, n) for n in range(spec.shards)]


def item_name(queue: str, index: int) -> str:
    """The item shard ``index`` of ``queue`` is stored under: the queue's own name for
    shard 0 (so a queue that grows shards keeps its state), ``<name>~NN`` for the others
    ('~' is not allowed in a queue's name)."""
    return queue if index == 0 else f"{queue}~{index:02d}"


def shard_name(item: str) -> str:
    """The queue a stored item belongs to (``Shard.item`` backwards)."""
    return item.split("~", 1)[0]


def declaration(spec: Queue) -> str:
    """The queue as code declares it, as stored in the queue item (``declared``)."""
    rate = spec.rate_limit
    return json.dumps(
        {
            "concurrency_limit": spec.concurrency_limit,
            "per_key_limit": spec.per_key_limit,
            "rate_limit": None
            if rate is None
            else {"limit": rate.limit, "per_ms": int(rate.window / timedelta(milliseconds=1))}
            | ({"per_key": True} if rate.per_key else {}),
        }
        | ({"shards": spec.shards} if spec.shards > 1 else {}),
        sort_keys=True,
    )


def declared_queue(state: QueueState) -> Queue | None:
    """The queue as the workers' code declared it (``declaration``), if recorded."""
    if state.declared is None:
        return None
    try:
        data = json.loads(state.declared)
        rate = data.get("rate_limit")
        return Queue(
            state.name,
            concurrency_limit=data.get("concurrency_limit"),
            per_key_limit=data.get("per_key_limit"),
            rate_limit=None
            if rate is None
            else Rate(
                rate["limit"],
                per=timedelta(milliseconds=rate["per_ms"]),
                per_key=bool(rate.get("per_key")),
            ),
            shards=data.get("shards", 1),
        )
    except (ValueError, TypeError, KeyError, InvalidConfig):
        log.warning("queue %s: unreadable declaration %r", state.name, state.declared)
        return None


@dataclass(frozen=True)
class _View:
    """A queue as one try of ``Gate.admit`` read it."""

    state: QueueState
    now: datetime
    limits: Limits
    declared: str | None  # the code's declaration, to record if it changed
    live: dict[str, Holder]  # holders whose lease has not run out
    expired: list[str]
    mine: Holder | None  # this run's own live entry
    until: datetime  # a slot taken now is held until then

    @property
    def now_ms(self) -> int:
        return to_ms(self.now)

    def full(self, key: str) -> bool:
        """No slot for a newcomer of ``key``: paused, at a limit, or others parked
        (parked runs go first: a newcomer does not overtake them)."""
        limits = self.limits
        return (
            self.state.paused
            or (limits.concurrency is not None and len(self.live) >= limits.concurrency)
            or (
                limits.per_key is not None
                and sum(1 for h in self.live.values() if h.key == key) >= limits.per_key
            )
            or self.state.waiting > 0
        )


class Gate:
    def __init__(self, store: DynamoStore, queue: SqsQueue, lease: timedelta) -> None:
        self.store = store
        self.queue = queue
        self.lease = lease

    def admit(
        self,
        shard: Shard,
        run: Run,
        token: int,
        key: str,
        priority: int,
        clock: Callable[[], datetime],
        spent: timedelta,
        unused: datetime | None = None,
    ) -> Admitted | Parked | Delayed:
        """Take a slot for the claimed ``run`` in its ``shard`` of the queue (see
        ``Shard.of``), or park it there, or delay it for the rate.

        ``clock`` is read afresh on every try: backoffs between tries add up, and an
        immediate start is reserved at the time of the try that wins. ``unused`` is a
        rate reservation this attempt was given and came to too late (it did not
        start then): it leaves the window with the fresh reservation."""
        spec = shard.queue
        for attempt in range(_TRIES):
            view = self._look(shard, run, clock)
            mine = view.mine
            # A reservation we come to too late is not used: a fresh one is taken. The
            # stale one leaves the window only when this attempt knows it never started
            # on it (``unused``); one found late on arrival stays, as an earlier,
            # crashed attempt may have started then (a stricter window, never looser).
            late = (
                mine is not None
                and mine.start_ms > 0
                and is_late(spec, from_ms(mine.start_ms), view.now)
            )
            verdict: Admitted | Parked | Delayed | None
            if mine is not None and (spec.rate_limit is None or mine.start_ms) and not late:
                verdict = self._renew_own(shard, run, token, view, mine)
                if verdict is None:
                    continue  # pruned meanwhile (its lease had expired): admit afresh
                return _counted(verdict, view, run.run_id)
            if mine is not None:  # handed off without a rate reservation yet, or late
                drop = mine.start_ms if unused and mine.start_ms == to_ms(unused) else None
                verdict = self._take(
                    shard, run, token, key, view, 0 if late else mine.start_ms, drop
                )
            elif view.full(key):
                verdict = self._park(shard, run, token, key, priority, spent, view)
            else:
                verdict = self._take(shard, run, token, key, view, 0, None)
            if verdict is not None:
                return _counted(verdict, view, run.run_id)
            _backoff(attempt)
        raise Contended(
            f"queue {spec.name}: its state changed under every one of {_TRIES} tries to "
            f"admit run {run.run_id}; the run is admitted again in a few seconds (no "
            "attempt spent); many workers on one queue item is the cause"
        )

    def _look(self, shard: Shard, run: Run, clock: Callable[[], datetime]) -> _View:
        """The queue (the run's shard of it) as one try of ``admit`` sees it."""
        state = self.store.queue_state(shard.item)
        now = clock()
        now_ms = to_ms(now)
        code = declaration(shard.queue)
        live = {r: h for r, h in state.holders.items() if h.until_ms > now_ms}
        return _View(
            state=state,
            now=now,
            limits=shard.limits(state),
            declared=code if state.declared != code else None,
            live=live,
            expired=[r for r in state.holders if r not in live],
            # An entry of ours whose lease ran out (the worker that held it died) is
            # not ours any more: others count it as free and may have filled it, so the
            # run takes a slot afresh, through the version-checked path.
            mine=live.get(run.run_id),
            until=now + self.lease,
        )

    def _renew_own(
        self, shard: Shard, run: Run, token: int, view: _View, mine: Holder
    ) -> Admitted | Delayed | None:
        """Ours already (handed off to it, held across a crash, or reserved for a
        rate-limited start): renewing our own entry needs no version check. None: it
        was pruned meanwhile."""
        hold_until = max(view.until, from_ms(mine.start_ms) + self.lease)
        renewed = self.store.renew_slot(
            shard.item, run.run_id, hold_until, view.now, token, take=True
        )
        if not renewed:
            return None
        return Delayed(from_ms(mine.start_ms)) if mine.start_ms > view.now_ms else Admitted()

    def _take(
        self,
        shard: Shard,
        run: Run,
        token: int,
        key: str,
        view: _View,
        start_ms: int,
        drop: int | None,
    ) -> Admitted | Delayed | None:
        """Take a slot (version-checked), reserving a rate-limited start unless
        ``start_ms`` holds one. None: the queue changed meanwhile."""
        starts = key_starts = None
        spec = shard.queue
        if spec.rate_limit is not None and start_ms == 0:
            start_ms, starts, key_starts = self._reserve(spec, view.state, key, view.now_ms, drop)
        hold_until = max(view.until, from_ms(start_ms) + self.lease)
        if not self.store.take_slot(
            view.state,
            run.run_id,
            key,
            hold_until,
            start_ms,
            view.expired,
            starts,
            key_starts,
            token,
            view.declared,
        ):
            return None
        return Delayed(from_ms(start_ms)) if start_ms > view.now_ms else Admitted()

    def _park(
        self,
        shard: Shard,
        run: Run,
        token: int,
        key: str,
        priority: int,
        spent: timedelta,
        view: _View,
    ) -> Parked | None:
        """No slot: park the run until one is handed to it. None: the queue changed."""
        parked = self.store.park(
            view.state,
            run.run_id,
            token,
            key,
            priority,
            view.now + PARK_RECHECK,
            f"a slot of queue {shard.queue.name!r}",
            view.now,
            spent,
            run.parked_sk,
            view.declared,
        )
        if parked is False:
            return None
        log.info("run %s parked for a slot of queue %s", run.run_id, shard.item)
        self.fill(shard, view.now)
        return Parked()

    def _reserve(
        self, spec: Queue, state: QueueState, key: str, now_ms: int, drop: int | None = None
    ) -> tuple[int, list[int] | None, list[int] | None]:
        """The earliest start the rate limit allows, and the new window(s) holding it
        (without one entry ``drop``: a reservation that was never started on)."""
        rate = spec.rate_limit
        assert rate is not None
        window = int((rate.window + rate_margin(rate.window)).total_seconds() * 1000)
        log_ = list(state.kstarts.get(key, []) if rate.per_key else state.starts)
        if drop is not None and drop in log_:
            log_.remove(drop)
        recent = sorted(t for t in log_ if t > now_ms - window)
        start = now_ms
        if len(recent) >= rate.limit:
            # The (limit)-th most recent start must leave the window first.
            start = max(now_ms, recent[-rate.limit] + window)
        kept = sorted([*recent, start])[-rate.limit :]
        if rate.per_key:
            return start, None, kept
        return start, kept, None

    def release(self, shard: Shard, run_id: str, token: int, now: datetime) -> None:
        """The attempt with lease ``token`` stops executing: free its slot (unless a
        later attempt of the run holds it already) and hand it to the next parked run."""
        state = self.store.release_slot(shard.item, run_id, token, now)
        if state is not None:
            self.fill(shard, now, state)

    def fill(self, shard: Shard, now: datetime, state: QueueState | None = None) -> None:
        """Hand free slots to parked runs, best first, until none is free or waiting.

        Every hand-off is a write of its own; only a conflict (the queue changed under
        the hand-off) counts against ``_TRIES``, so a change that frees hundreds of
        slots (a resume, a raised limit) hands them all out here, not the first few.
        ``state``: the shard as the caller just read or wrote it (saves a read)."""
        conflicts = 0
        while conflicts < _TRIES:
            if state is None:
                state = self.store.queue_state(shard.item)
            limits = shard.limits(state)
            now_ms = to_ms(now)
            live = {r: h for r, h in state.holders.items() if h.until_ms > now_ms}
            if state.paused or state.waiting <= 0:
                return
            if limits.concurrency is not None and len(live) >= limits.concurrency:
                return
            per_key: dict[str, int] = {}
            for holder in live.values():
                per_key[holder.key] = per_key.get(holder.key, 0) + 1
            chosen = self._next_waiter(shard.item, limits, per_key)
            if chosen is None:
                return
            done = self.store.hand_off(state, chosen, now + self.lease, now)
            state = None  # read again for the next free slot
            if done is True:
                self.queue.send(chosen.run_id)
                log.info("queue %s: slot handed to run %s", shard.item, chosen.run_id)
            elif done is False:
                _backoff(conflicts)
                conflicts += 1
        log.warning(
            "queue %s: gave up filling slots after %d conflicting writes; the next run "
            "that ends, or the parked runs' recheck, hands them out",
            shard.item,
            _TRIES,
        )

    def _next_waiter(self, name: str, limits: Limits, per_key: dict[str, int]) -> Waiter | None:
        """The best parked run whose key is under its per-key limit, if any."""
        if limits.per_key is None:
            return next(iter(self.store.waiters(name, 1)), None)
        after: str | None = None
        while True:
            scanned: list[Waiter] = []
            for waiter in self.store.waiters(name, 25, after):
                if per_key.get(waiter.key, 0) < limits.per_key:
                    return waiter
                scanned.append(waiter)
                if len(scanned) >= SCAN_WAITERS:
                    break
            else:
                return None
            # SCAN_WAITERS in a row of keys at their limit: go on at the next priority
            # band (keys interleave within a band, so its other keys were near the front).
            band = scanned[-1].sk.split("#")[1]
            after = f"WAIT#{band}#~"

    def renew(self, shard: Shard, run_id: str, until: datetime, now: datetime, token: int) -> bool:
        return self.store.renew_slot(shard.item, run_id, until, now, token)


def _backoff(attempt: int) -> None:
    """Between optimistic retries on a contended queue item: a random, growing sleep
    (full jitter), so that contenders spread out instead of colliding again."""
    time.sleep(random.uniform(0, min(0.01 * 2**attempt, 0.5)))  # noqa: S311


def describe_delay(spec: Queue, until: datetime) -> str:
    return f"the rate limit of queue {spec.name!r} (starts at {iso(until)})"


def _counted(
    verdict: Admitted | Parked | Delayed, view: _View, run_id: str
) -> Admitted | Parked | Delayed:
    """``verdict`` with the queue's counts as this admission left them."""
    holders = set(view.live)
    if isinstance(verdict, Parked):
        holders.discard(run_id)
        return dataclasses.replace(verdict, running=len(holders), parked=view.state.waiting + 1)
    holders.add(run_id)
    return dataclasses.replace(verdict, running=len(holders), parked=view.state.waiting)
