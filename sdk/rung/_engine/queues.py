"""Operating the flow-control queues: their limits (the code's, an operator's
overrides), pause and resume, and what runs and waits in each. ``rung.Client``'s queue
calls delegate here.

The code's limits are the defaults; an operator's settings in the queue item (paused,
limit_set, per_key_set) override them until reset. Each change is one update that
raises the item's version, so no admission decided on the old settings lands after
it; a change that frees slots then hands them to parked runs at once (the Gate's
fill), as a finishing run would.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import timedelta

from rung._aws.dynamodb import DynamoStore, QueueState
from rung._aws.sqs import SqsQueue
from rung._engine.admission import (
    Gate,
    declared_queue,
    item_name,
    limits_of,
    shard_name,
    shards_of,
)
from rung._engine.config import WorkerConfig
from rung._util.clock import Clock, to_ms
from rung.app import App
from rung.errors import InvalidConfig, UnknownQueue
from rung.flow import MAX_LIMIT, MAX_SHARDS, Queue, QueueInfo

#: The lease of a slot handed off from outside a worker (a client's resume, a cancel).
_DEFAULT_LEASE = WorkerConfig().slot_lease


class QueueAdmin:
    """The queues of one table, as an app declares them (``app`` None: as the workers
    recorded them)."""

    def __init__(
        self,
        app: App | None,
        store: DynamoStore,
        queue: SqsQueue,
        clock: Clock,
        lease: timedelta = _DEFAULT_LEASE,
    ) -> None:
        self.app = app
        self._store = store
        self._queue = queue
        self._clock = clock
        self._lease = lease  # how long a slot handed off is held for its run

    def list(self) -> list[QueueInfo]:
        """The app's queues and every queue with stored state, by name."""
        stored: dict[str, list[QueueState]] = {}
        for state in self._store.list_queue_states():
            stored.setdefault(shard_name(state.name), []).append(state)
        names = sorted(set(self.declared()) | set(stored))
        return [self.info(name, stored.get(name, [])) for name in names]

    def get(self, name: str) -> QueueInfo:
        """One queue's limits (code, override, in force), pause, running and parked runs."""
        return self.info(name, self.known_items(name))

    def set_limit(
        self,
        name: str,
        concurrency_limit: int | None = None,
        per_key_limit: int | None = None,
        *,
        reset: bool = False,
    ) -> QueueInfo:
        """Override a queue's limits at run time (or, with ``reset``, go back to the code's)."""
        for label, value in (
            ("concurrency_limit", concurrency_limit),
            ("per_key_limit", per_key_limit),
        ):
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                raise InvalidConfig(f"queue {name!r}: {label} must be an int, got {value!r}")
            if not 1 <= value <= MAX_LIMIT:
                raise InvalidConfig(
                    f"queue {name!r}: {label} must be between 1 and {MAX_LIMIT}, got {value}"
                )
        if reset and (concurrency_limit is not None or per_key_limit is not None):
            raise InvalidConfig(
                f"queue {name!r}: reset goes back to the code's limits; pass either reset or "
                "new limits, not both"
            )
        if not reset and concurrency_limit is None and per_key_limit is None:
            raise InvalidConfig(
                f"queue {name!r}: nothing to set; pass concurrency_limit, per_key_limit or reset"
            )
        spec, state = self._layout(name)
        shards = spec.shards
        if concurrency_limit is not None and concurrency_limit < shards:
            raise InvalidConfig(
                f"queue {name!r}: its slots are split over {shards} shards, so its "
                f"concurrency_limit must be at least {shards}; got {concurrency_limit}"
            )
        if per_key_limit is not None and shards > 1 and spec.per_key_limit is None:
            raise InvalidConfig(
                f"queue {name!r}: its {shards} shards are chosen by run id (its code sets no "
                "per_key_limit), so a key's runs are in every shard and a per-key limit "
                "cannot be kept there; declare per_key_limit in the code (the shards then "
                "follow the key)"
            )
        # A lower concurrency_limit alone may go below the per-key limit: the total (a
        # shard's share) then caps each key, as QueueInfo.per_key_limit shows.
        total = concurrency_limit
        if total is None:
            total = limits_of(spec, state).concurrency
        if per_key_limit is not None and total is not None and per_key_limit > total // shards:
            raise InvalidConfig(
                f"queue {name!r}: per_key_limit ({per_key_limit}) would be above "
                f"concurrency_limit ({total}), the combined cap"
                + (f", split over {shards} shards ({total // shards} each)" if shards > 1 else "")
                + "; nothing changed"
            )
        for shard in shards_of(spec):  # the whole limit in each: every shard takes its share
            self._store.set_queue(
                shard.item,
                limit=concurrency_limit,
                per_key_limit=per_key_limit,
                clear_limits=reset,
            )
        return self._filled(name)

    def pause(self, name: str) -> QueueInfo:
        """Stop starting runs of the queue's tasks; runs executing now finish."""
        for shard in shards_of(self._layout(name)[0]):
            self._store.set_queue(shard.item, paused=True)
        return self.get(name)

    def resume(self, name: str) -> QueueInfo:
        """Start runs of the queue again: parked runs get the free slots at once."""
        for shard in shards_of(self._layout(name)[0]):
            self._store.set_queue(shard.item, paused=False)
        return self._filled(name)

    def declared(self) -> dict[str, tuple[Queue, tuple[str, ...]]]:
        """The app's queues (by name) and the ids of their tasks."""
        found: dict[str, tuple[Queue, tuple[str, ...]]] = {}
        for task in (self.app.tasks if self.app is not None else {}).values():
            if task.queue is not None:
                _, ids = found.get(task.queue.name, (task.queue, ()))
                found[task.queue.name] = (task.queue, (*ids, task.id))
        return found

    def spec(self, name: str, state: QueueState | None = None) -> Queue | None:
        """The code's declaration of the queue: the app's, else the one the workers
        recorded in its items (``state``: as ``merged`` made it); None when neither is
        known."""
        declared = self.declared().get(name)
        if declared is not None:
            return declared[0]
        return declared_queue(state if state is not None else merged(name, self.items(name)))

    def items(self, name: str) -> Sequence[QueueState]:
        """The stored items of queue ``name``: its own and its shards' (``<name>~NN``,
        as many as a queue can have), in one batch read."""
        names = [item_name(name, index) for index in range(MAX_SHARDS)]
        return [state for state in self._store.queue_states(names) if state.stored]

    def known_items(self, name: str) -> Sequence[QueueState]:
        """``items``, if the queue is known (the app declares it, or it has state)."""
        try:
            Queue(name)
        except InvalidConfig:
            raise UnknownQueue(
                f"{name!r} is not a queue name (letters, digits, '.', '_', ':' or '-'; a "
                "shard's item, <name>~NN, is addressed by its queue's name)"
            ) from None
        items = self.items(name)
        declared = self.declared()
        if items or name in declared:
            return items
        known = sorted(
            set(declared) | {shard_name(s.name) for s in self._store.list_queue_states()}
        )
        hint = "" if self.app is not None else "; pass the app to see queues that have not run"
        raise UnknownQueue(f"no queue {name!r} (known queues: {', '.join(known) or 'none'}){hint}")

    def _layout(self, name: str) -> tuple[Queue, QueueState]:
        """The queue's declaration (to know its shards) and state, for a change to it."""
        items = self.known_items(name)
        state = merged(name, items)
        spec = self.spec(name, state)
        if spec is None:
            if any(s.name != name for s in items):
                raise InvalidConfig(
                    f"queue {name!r} has several items (shards) but no worker has recorded "
                    "how many; pass the app (--app) so that the change reaches all of them"
                )
            spec = Queue(name)
        return spec, state

    def fill(self, name: str, item: str | None = None) -> None:
        """Hand the slots a change freed to parked runs now: in every shard, or only in
        the one stored as ``item``.

        Not knowing the code's limits (no app, and no worker has recorded them), it
        hands none: with the wrong limits it could start too many. The next run that
        ends, or the parked runs' periodic recheck, hands them out then."""
        spec = self.spec(name)
        if spec is not None:
            gate = Gate(self._store, self._queue, self._lease)
            for shard in shards_of(spec):
                if item in (None, shard.item):
                    gate.fill(shard, self._clock.now())

    def _filled(self, name: str) -> QueueInfo:
        self.fill(name)
        return self.get(name)

    def info(self, name: str, items: Sequence[QueueState]) -> QueueInfo:
        """The queue as operators see it, from its stored ``items`` (all its shards)."""
        state = merged(name, items)
        declared = self.declared().get(name)
        known = self.spec(name, state)
        spec = known if known is not None else Queue(name)
        limits = limits_of(spec, state)
        # What the shards allow together, each by its own item (an override set before
        # the shards changed is in some items only: this shows what holds).
        by_item = {s.name: s for s in items}
        parts = [
            shard.limits(by_item.get(shard.item) or QueueState(shard.item)).concurrency
            for shard in shards_of(spec)
        ]
        concurrency = None if None in parts else sum(p for p in parts if p is not None)
        per_key_limit = limits.per_key
        if per_key_limit is not None and concurrency is not None:
            per_key_limit = min(per_key_limit, concurrency // spec.shards)  # the share caps it
        now_ms = to_ms(self._clock.now())
        per_key: dict[str, int] = {}
        for holder in state.holders.values():
            if holder.until_ms > now_ms:
                per_key[holder.key] = per_key.get(holder.key, 0) + 1
        return QueueInfo(
            name=name,
            tasks=declared[1] if declared is not None else (),
            code_known=known is not None,
            code_concurrency_limit=spec.concurrency_limit,
            code_per_key_limit=spec.per_key_limit,
            rate_limit=spec.rate_limit,
            concurrency_limit=concurrency,
            per_key_limit=per_key_limit,
            concurrency_limit_override=state.limit_set,
            per_key_limit_override=state.per_key_set,
            paused=state.paused,
            running=sum(per_key.values()),
            parked=state.waiting,
            running_per_key=dict(sorted(per_key.items())),
            shards=spec.shards,
        )


def merged(name: str, states: Sequence[QueueState]) -> QueueState:
    """A queue's items (its shards' states) as one: their holders and parked runs
    together, paused if any is; the operator's settings and the workers' record of the
    code (``declared``) as the first item holds them, else as another does."""
    stored = [s for s in states if s.stored]
    if not stored:
        return QueueState(name)
    stored.sort(key=lambda s: s.name != name)  # the queue's own item first
    first = stored[0]
    declared = next((s.declared for s in stored if s.declared is not None), None)
    return dataclasses.replace(
        first,
        name=name,
        holders={r: h for s in stored for r, h in s.holders.items()},
        waiting=sum(s.waiting for s in stored),
        paused=any(s.paused for s in stored),
        declared=declared,
    )
