"""Starting runs from outside: ``Client.trigger`` and ``Client.batch_trigger``.

A run is stored first, then its message sent, so a crash in between leaves a run that
has no message yet, never a message for no run; the reconciler (and a trigger again
with the same idempotency key) sends what is missing. A batch does the same in bulk:
every item is checked before anything is stored, runs without an idempotency key are
written 25 per ``BatchWriteItem``, and messages go 10 per ``SendMessageBatch``
(docs/lifecycle.md, "Batch trigger").
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from rung._aws.dynamodb import DynamoStore, NewRun
from rung._aws.dynamodb.created import UNKNOWN
from rung._aws.sqs import SqsQueue
from rung._durable.metadata import check_metadata
from rung._util.clock import Clock
from rung._util.durations import check_duration
from rung._util.ids import new_run_id
from rung._util.traces import TraceContext, header_of
from rung.app import App, Task, check_idempotency_key, check_tags
from rung.errors import ErrorInfo, InvalidConfig, RungError, UsageError
from rung.models import Debounce, RunHandle, RunStatus, TriggerItem, TriggerResult

log = logging.getLogger("rung.client")

#: How long an idempotency key matches its run unless ``idempotency_ttl=`` says.
DEFAULT_IDEMPOTENCY_TTL = timedelta(days=30)
#: The longest debounce key.
MAX_DEBOUNCE_KEY = 256
#: The most runs one ``batch_trigger`` starts.
MAX_BATCH_TRIGGER = 1000


def writable(app: App | None) -> App:
    """The client's app, which triggers need (payloads are checked against its tasks)."""
    if app is None:
        raise UsageError(
            "this client has no app (read-only): pass the rung.App to trigger runs, so "
            "payloads are validated against its tasks"
        )
    return app


def check_idempotency_ttl(ttl: object) -> timedelta:
    """``idempotency_ttl=`` checked: how long a key matches its run (default 30 days)."""
    if ttl is None:
        return DEFAULT_IDEMPOTENCY_TTL
    return check_duration(ttl, "idempotency_ttl", positive=True)


def new_run(
    task: Task[Any],
    payload: Any,
    *,
    idempotency_key: object,
    delay: object,
    tags: object,
    now: datetime,
    what: str,
    ttl: object = None,
    metadata: object = None,
) -> NewRun:
    """A run of ``task`` to store, its payload and options checked (nothing stored).

    Raises:
        InvalidPayload, PayloadTooLarge: the payload; InvalidConfig: an option;
        InvalidMetadata: ``metadata``."""
    payload_json = task.prepare(payload)
    key = check_idempotency_key(idempotency_key)
    tag_tuple = check_tags(tags, what)
    wait = check_duration(delay, f"{what} delay") if delay is not None else timedelta(0)
    live = check_duration(ttl, f"{what} ttl", positive=True) if ttl is not None else None
    metadata_json = check_metadata(metadata, f"{what} metadata")
    return NewRun(
        run_id=new_run_id(now),
        task_id=task.id,
        payload_json=payload_json,
        created_at=now,
        available_at=now + wait,
        idempotency_key=key,
        tags=tag_tuple,
        trace=TraceContext.for_trigger(now).stored(),
        start_by=now + wait + live if live is not None else None,  # counted once it is due
        metadata_json=metadata_json,
    )


def trigger_task(
    store: DynamoStore,
    queue: SqsQueue,
    clock: Clock,
    task: Task[Any],
    payload: Any,
    *,
    idempotency_key: object,
    delay: object,
    tags: object,
    idempotency_ttl: object,
    ttl: object,
    metadata: object,
    debounce: object,
) -> RunHandle:
    """``Client.trigger``: check everything, then store and send (see its docstring)."""
    now = clock.now()
    burst = check_debounce(debounce, idempotency_key, delay)
    new = new_run(
        task,
        payload,
        idempotency_key=idempotency_key,
        delay=burst.window if burst is not None else delay,
        tags=tags,
        now=now,
        what="trigger",
        ttl=ttl,
        metadata=metadata,
    )
    if burst is None:
        return trigger(store, queue, new, check_idempotency_ttl(idempotency_ttl), now)
    run_id, created = store.debounce_run(new, burst.key, burst.max_wait, now)
    if created:
        queue.send(run_id, burst.window, header_of(new.trace))
    return RunHandle(run_id=run_id, task_id=task.id, created=created)


@dataclass(frozen=True)
class _Burst:
    key: str
    window: timedelta
    max_wait: timedelta | None


def check_debounce(debounce: object, idempotency_key: object, delay: object) -> _Burst | None:
    """``trigger(debounce=)`` checked (None: none).

    Raises:
        InvalidConfig: not a ``rung.Debounce``, a bad key or duration, or combined with
            ``idempotency_key`` or ``delay``."""
    if debounce is None:
        return None
    if not isinstance(debounce, Debounce):
        raise InvalidConfig(
            "debounce must be a rung.Debounce(key, window, max_wait=None), "
            f"got {type(debounce).__name__}"
        )
    if idempotency_key is not None:
        raise InvalidConfig(
            "debounce and idempotency_key do not combine: a debounced trigger returns its "
            "key's pending run already. Use one or the other (nothing was stored)"
        )
    if delay is not None:
        raise InvalidConfig(
            "debounce and delay do not combine: a debounced run starts its window after "
            "the last trigger. Make the window the delay you want (nothing was stored)"
        )
    key = debounce.key
    if not isinstance(key, str) or not key or len(key) > MAX_DEBOUNCE_KEY:
        raise InvalidConfig(
            f"debounce key must be a non-empty string of at most {MAX_DEBOUNCE_KEY} "
            f"characters, got {key!r:.80}"
        )
    window = check_duration(debounce.window, "debounce window", positive=True)
    max_wait = None
    if debounce.max_wait is not None:
        max_wait = check_duration(debounce.max_wait, "debounce max_wait", positive=True)
        if max_wait < window:
            raise InvalidConfig(
                f"debounce max_wait ({max_wait}) is shorter than its window ({window}): "
                "make it at least the window, or leave it out"
            )
    return _Burst(key, window, max_wait)


def trigger(
    store: DynamoStore, queue: SqsQueue, new: NewRun, ttl: timedelta, now: datetime
) -> RunHandle:
    """Store ``new`` (at most one run per idempotency key) and send its message."""
    run, created = store.create_run(new, ttl, now)
    if created:
        queue.send(run.run_id, new.available_at - now, header_of(run.trace))
    elif _never_sent(run.status, run.lease_token):
        # Recorded but never claimed: the first trigger may have crashed before its
        # send. Sending again is safe: a duplicate message finds the run taken or done.
        due = run.available_at or now
        queue.send(run.run_id, max(due - now, timedelta(0)), header_of(run.trace))
    return RunHandle(run_id=run.run_id, task_id=new.task_id, created=created)


def _never_sent(status: RunStatus, lease_token: int) -> bool:
    return status in (RunStatus.QUEUED, RunStatus.DELAYED) and lease_token == 0


def batch_trigger(
    store: DynamoStore,
    queue: SqsQueue,
    clock: Clock,
    task: Task[Any],
    items: object,
    ttl: timedelta,
) -> list[TriggerResult]:
    """``Client.batch_trigger``: one result per item, in order (see its docstring)."""
    listed = _check_items(items)
    now = clock.now()
    results: dict[int, TriggerResult] = {}
    keyless: list[tuple[int, NewRun]] = []
    keyed: list[tuple[int, NewRun]] = []
    same_key: dict[int, int] = {}  # a later item with an earlier item's key -> that item
    first_of_key: dict[str, int] = {}
    for index, raw in enumerate(listed):
        item = raw if isinstance(raw, TriggerItem) else TriggerItem(payload=raw)
        try:
            new = new_run(
                task,
                item.payload,
                idempotency_key=item.idempotency_key,
                delay=item.delay,
                tags=item.tags,
                now=now,
                what=f"batch_trigger item {index}",
                ttl=item.ttl,
                metadata=item.metadata,
            )
        except RungError as exc:  # this item is refused; the others go on
            results[index] = TriggerResult(index, error=ErrorInfo(type(exc).__name__, str(exc)))
            continue
        if new.idempotency_key is None:
            keyless.append((index, new))
        elif new.idempotency_key in first_of_key:
            same_key[index] = first_of_key[new.idempotency_key]
        else:
            first_of_key[new.idempotency_key] = index
            keyed.append((index, new))
    # Runs without a key first: stored in bulk, then their messages, before the keyed
    # ones' transactions (one each) begin.
    failed = store.create_runs([new for _, new in keyless])
    sends: list[tuple[int, str, timedelta, str | None, bool]] = []
    for index, new in keyless:
        if new.run_id in failed:
            results[index] = TriggerResult(index, error=_not_stored(failed[new.run_id]))
        else:
            sends.append((index, new.run_id, new.available_at - now, header_of(new.trace), True))
    _send(queue, task, sends, results)
    sends = []
    for index, new in keyed:
        try:
            run, created = store.create_run(new, ttl, now)
        except Exception as exc:  # noqa: BLE001 - this item's error; the others go on
            # (a transaction is atomic, and its key makes a retry return its run)
            results[index] = TriggerResult(index, error=_keyed_failure(exc))
            continue
        if created or _never_sent(run.status, run.lease_token):
            delay = max((run.available_at or now) - now, timedelta(0))
            sends.append((index, run.run_id, delay, header_of(run.trace), created))
        else:
            handle = RunHandle(run.run_id, task.id, False)
            results[index] = TriggerResult(index, handle=handle, enqueued=True)
    _send(queue, task, sends, results)
    for index, first in same_key.items():  # as its key's first item, never created twice
        earlier = results[first]
        same = RunHandle(earlier.handle.run_id, task.id, False) if earlier.handle else None
        results[index] = TriggerResult(index, same, earlier.error, earlier.enqueued)
    assert len(results) == len(listed)
    return [results[index] for index in range(len(listed))]


def _send(
    queue: SqsQueue,
    task: Task[Any],
    sends: list[tuple[int, str, timedelta, str | None, bool]],
    results: dict[int, TriggerResult],
) -> None:
    """Send stored runs' messages; their results, ``enqueued`` unless SQS refused."""
    unsent = queue.send_many([(run_id, delay, trace) for _, run_id, delay, trace, _ in sends])
    if unsent:
        log.warning(
            "batch_trigger of %s: SQS refused the messages of %d stored run(s) (%s...); "
            "the reconciler sends them once they are overdue by its grace period",
            task.id,
            len(unsent),
            ", ".join(sorted(unsent)[:3]),
        )
    for index, run_id, _, _, created in sends:
        handle = RunHandle(run_id, task.id, created)
        results[index] = TriggerResult(index, handle=handle, enqueued=run_id not in unsent)


def _check_items(items: object) -> Sequence[Any]:
    if isinstance(items, str | bytes) or not isinstance(items, Sequence):
        raise UsageError(
            "batch_trigger(task, items) needs a list of items (payloads, or rung.TriggerItem("
            "payload, idempotency_key=, delay=, tags=, ttl=, metadata=)), got "
            f"{type(items).__name__}"
        )
    if len(items) > MAX_BATCH_TRIGGER:
        raise InvalidConfig(
            f"batch_trigger got {len(items):,} items; one call starts at most "
            f"{MAX_BATCH_TRIGGER:,} runs. Split them into several calls (nothing was stored)"
        )
    return items


def _keyed_failure(exc: Exception) -> ErrorInfo:
    return ErrorInfo(
        "NotTriggered",
        f"{type(exc).__name__}: {exc}. Its idempotency key makes triggering it again safe: "
        "that returns its run if this one was stored after all",
    )


def _not_stored(why: str) -> ErrorInfo:
    if UNKNOWN in why:  # (rung._aws.dynamodb could not read back what it stored)
        return ErrorInfo("StoredOrNot", why)
    return ErrorInfo(
        "NotStored",
        f"the run was not stored ({why}); nothing was enqueued for it: trigger it again",
    )
