"""Flow control declarations: ``rung.Queue`` and ``rung.Rate``; ``rung.QueueInfo``.

A queue caps how many runs of its tasks execute at once across all workers
(``concurrency_limit``), optionally per concurrency key (``per_key_limit``: each
tenant its own limit, while ``concurrency_limit`` stays the combined cap across all
keys), and how many may start per period (``rate_limit``). Tasks share a queue by
passing the same ``Queue`` (or an equal one). How it works: docs/flow-control.md.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta

from rung._util.durations import check_duration
from rung.errors import InvalidConfig

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,79}$")
#: The largest limit rung accepts (a queue's limit, whatever its ``shards``: an item
#: holds a slot per run holding it, and 1,000 of them make a 55 KB item).
MAX_LIMIT = 1000
#: The most items a queue's slots can be split over (``Queue.shards``).
MAX_SHARDS = 64
#: The longest window of a ``Rate``.
MAX_RATE_WINDOW = timedelta(days=1)


@dataclass(frozen=True)
class Rate:
    """At most ``limit`` starts per ``per`` (a sliding window), optionally per key.

    Args:
        limit: starts allowed in any window of length ``per``.
        per: the window; a timedelta or seconds.
        per_key: count starts per concurrency key instead of for the whole queue.

    Example:
        >>> rung.Rate(100, per=timedelta(minutes=1))
    """

    limit: int
    per: timedelta | float = timedelta(seconds=1)
    per_key: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.limit, bool) or not isinstance(self.limit, int):
            raise InvalidConfig(f"Rate limit must be an int, got {self.limit!r}")
        if not 1 <= self.limit <= MAX_LIMIT:
            raise InvalidConfig(f"Rate limit must be between 1 and {MAX_LIMIT}, got {self.limit}")
        per = check_duration(self.per, "Rate per", positive=True, maximum=MAX_RATE_WINDOW)
        object.__setattr__(self, "per", per)

    @property
    def window(self) -> timedelta:
        assert isinstance(self.per, timedelta)
        return self.per


@dataclass(frozen=True)
class Queue:
    """Where a task's runs wait for their turn, and how many may run.

    Args:
        name: the queue's name (letters, digits, ``._:-``; at most 80).
        concurrency_limit: runs of this queue's tasks executing at once, across all
            workers and keys (None: no limit).
        per_key_limit: runs executing at once per concurrency key (the task's
            ``concurrency_key``); the queue's ``concurrency_limit`` still caps the total.
        rate_limit: starts per period (``rung.Rate``).
        shards: how many DynamoDB items hold the queue's slots (1-64; default 1). One
            item admits about 60 runs per second (docs/capacity.md); ``shards=N``
            splits ``concurrency_limit`` over N items, each with its share, for N
            times that. A run's shard is a hash of its concurrency key when the queue
            has a ``per_key_limit`` (each key's runs share one item, so the per-key
            limit stays exact), else of its run id. Priority and FIFO order hold
            within a shard, and a run can park while another shard has a free slot:
            leave it at 1 unless the queue must start more than ~50 runs per second.
            Needs a ``concurrency_limit`` of at least ``shards`` (and at least
            ``shards x per_key_limit``); not with a ``rate_limit``.

    Example:
        >>> emails = rung.Queue("emails", concurrency_limit=10,
        ...                     rate_limit=rung.Rate(100, per=timedelta(minutes=1)))
        >>> crawl = rung.Queue("crawl", concurrency_limit=1000, shards=32)
    """

    name: str
    concurrency_limit: int | None = None
    per_key_limit: int | None = None
    rate_limit: Rate | None = None
    shards: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise InvalidConfig(
                f"queue name {self.name!r} must be 1-80 letters, digits, '.', '_', ':' or '-', "
                "starting with a letter or digit"
            )
        for label, value in (
            ("concurrency_limit", self.concurrency_limit),
            ("per_key_limit", self.per_key_limit),
        ):
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                raise InvalidConfig(f"Queue {label} must be an int or None, got {value!r}")
            if not 1 <= value <= MAX_LIMIT:
                raise InvalidConfig(f"Queue {label} must be between 1 and {MAX_LIMIT}, got {value}")
        if (
            self.per_key_limit is not None
            and self.concurrency_limit is not None
            and self.per_key_limit > self.concurrency_limit
        ):
            raise InvalidConfig(
                f"queue {self.name!r}: per_key_limit ({self.per_key_limit}) is above "
                f"concurrency_limit ({self.concurrency_limit}), the combined cap"
            )
        if self.rate_limit is not None and not isinstance(self.rate_limit, Rate):
            raise InvalidConfig(f"Queue rate_limit must be a rung.Rate, got {self.rate_limit!r}")
        self._check_shards()

    def _check_shards(self) -> None:
        shards = self.shards
        if isinstance(shards, bool) or not isinstance(shards, int):
            raise InvalidConfig(f"Queue shards must be an int, got {shards!r}")
        if not 1 <= shards <= MAX_SHARDS:
            raise InvalidConfig(f"Queue shards must be between 1 and {MAX_SHARDS}, got {shards}")
        if shards == 1:
            return
        problem = None
        if self.concurrency_limit is None or self.concurrency_limit < shards:
            problem = (
                f"splits concurrency_limit ({self.concurrency_limit}) over {shards} items: "
                f"set a concurrency_limit of at least {shards}, or fewer shards"
            )
        elif self.rate_limit is not None:
            problem = (
                "cannot be used with a rate_limit: a rate window is one consistent log "
                "of starts; use shards=1 (a rate-limited queue is bounded by its rate)"
            )
        elif self.per_key_limit is not None and self.per_key_limit * shards > (
            self.concurrency_limit
        ):
            problem = (
                f"gives each shard about {self.concurrency_limit // shards} slots, fewer "
                f"than per_key_limit ({self.per_key_limit}), and a key's runs share one "
                f"shard: use at most {self.concurrency_limit // self.per_key_limit} shards"
            )
        if problem is not None:
            raise InvalidConfig(f"queue {self.name!r}: shards={shards} {problem}")

    @property
    def keyed(self) -> bool:
        """Whether runs need a concurrency key (a per-key limit or a per-key rate)."""
        return self.per_key_limit is not None or (
            self.rate_limit is not None and self.rate_limit.per_key
        )


@dataclass(frozen=True, kw_only=True)
class QueueInfo:
    """A queue as operators see it: its limits and what is running and waiting now.

    Returned by ``Client.list_queues``/``get_queue`` and the ``set_queue_limit``,
    ``pause_queue``, ``resume_queue`` calls (the state after the change).

    Attributes:
        name: the queue's name.
        tasks: the app's tasks on this queue (empty for a client without an app).
        code_known: whether the ``code_*`` limits and ``rate_limit`` are known: from the
            client's app, else as the workers recorded them when they last admitted or
            parked a run of the queue. False for a client without an app on a queue no
            worker has admitted a run of yet: its limits in force are then only the
            overrides.
        code_concurrency_limit: ``concurrency_limit`` as declared in code (None: none,
            or not known).
        code_per_key_limit: ``per_key_limit`` as declared in code.
        rate_limit: the code's ``rung.Rate`` (not changeable at run time).
        concurrency_limit: the limit in force: the override if set, else the code's.
        per_key_limit: the per-key limit in force.
        concurrency_limit_override: set by an operator (``set_queue_limit``); None: none.
        per_key_limit_override: set by an operator; None: none.
        paused: no run of the queue starts while True; running runs finish.
        running: runs holding a slot now (a live lease).
        parked: runs waiting for a slot.
        running_per_key: ``running`` by concurrency key ("" for runs without a key).
        shards: the items the queue's slots are split over (``Queue.shards``); the
            counts and limits here are the whole queue's.

    Example:
        >>> info = client.get_queue("emails")
        >>> info.running, info.parked, info.concurrency_limit
        (10, 245, 10)
    """

    name: str
    tasks: tuple[str, ...] = ()
    code_known: bool = True
    code_concurrency_limit: int | None = None
    code_per_key_limit: int | None = None
    rate_limit: Rate | None = None
    concurrency_limit: int | None = None
    per_key_limit: int | None = None
    concurrency_limit_override: int | None = None
    per_key_limit_override: int | None = None
    paused: bool = False
    running: int = 0
    parked: int = 0
    running_per_key: Mapping[str, int] = field(default_factory=dict)
    shards: int = 1
