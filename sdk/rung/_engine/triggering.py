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
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from rung._aws.dynamodb import DynamoStore, NewRun
from rung._aws.sqs import SqsQueue
from rung._util.clock import Clock
from rung._util.durations import check_duration
from rung._util.ids import new_run_id
from rung._util.traces import TraceContext, header_of
from rung.app import Task, check_idempotency_key, check_tags
from rung.errors import ErrorInfo, InvalidConfig, RungError, UsageError
from rung.models import RunHandle, RunStatus, TriggerItem, TriggerResult

log = logging.getLogger("rung.client")

#: The most runs one ``batch_trigger`` starts.
MAX_BATCH_TRIGGER = 1000


def new_run(
    task: Task[Any],
    payload: Any,
    *,
    idempotency_key: object,
    delay: object,
    tags: object,
    now: datetime,
    what: str,
) -> NewRun:
    """A run of ``task`` to store, its payload and options checked (nothing stored).

    Raises:
        InvalidPayload, PayloadTooLarge: the payload; InvalidConfig: an option."""
    payload_json = task.prepare(payload)
    key = check_idempotency_key(idempotency_key)
    tag_tuple = check_tags(tags, what)
    wait = check_duration(delay, f"{what} delay") if delay is not None else timedelta(0)
    return NewRun(
        run_id=new_run_id(now),
        task_id=task.id,
        payload_json=payload_json,
        created_at=now,
        available_at=now + wait,
        idempotency_key=key,
        tags=tag_tuple,
        trace=TraceContext.for_trigger(now).stored(),
    )


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
    results: list[TriggerResult | None] = [None] * len(listed)
    keyless: list[tuple[int, NewRun]] = []
    keyed: list[tuple[int, NewRun]] = []
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
            )
        except RungError as exc:  # this item is refused; the others go on
            results[index] = TriggerResult(index, error=ErrorInfo(type(exc).__name__, str(exc)))
            continue
        (keyed if new.idempotency_key is not None else keyless).append((index, new))
    # (index, run id, delay, trace header, created now)
    to_send: list[tuple[int, str, timedelta, str | None, bool]] = []
    failed = store.create_runs([new for _, new in keyless])
    for index, new in keyless:
        if new.run_id in failed:
            results[index] = TriggerResult(index, error=_not_stored(failed[new.run_id]))
        else:
            delay = new.available_at - now
            to_send.append((index, new.run_id, delay, header_of(new.trace), True))
    for index, new in keyed:
        try:
            run, created = store.create_run(new, ttl, now)
        except (ClientError, BotoCoreError) as exc:
            results[index] = TriggerResult(index, error=_not_stored(str(exc)))
            continue
        if created or _never_sent(run.status, run.lease_token):
            delay = max((run.available_at or now) - now, timedelta(0))
            to_send.append((index, run.run_id, delay, header_of(run.trace), created))
        else:
            results[index] = TriggerResult(index, handle=RunHandle(run.run_id, task.id, False))
    unsent = queue.send_many([(run_id, delay, trace) for _, run_id, delay, trace, _ in to_send])
    if unsent:
        log.warning(
            "batch_trigger of %s: SQS refused the messages of %d stored run(s) (%s...); "
            "the reconciler sends them within its grace period",
            task.id,
            len(unsent),
            ", ".join(sorted(unsent)[:3]),
        )
    for index, run_id, _, _, created in to_send:
        results[index] = TriggerResult(index, handle=RunHandle(run_id, task.id, created))
    return [r for r in results if r is not None]


def _check_items(items: object) -> Sequence[Any]:
    if isinstance(items, str | bytes | Mapping) or not isinstance(items, Iterable):
        raise UsageError(
            "batch_trigger(task, items) needs a list of items (payloads, or rung.TriggerItem("
            f"payload, idempotency_key=, delay=, tags=)), got {type(items).__name__}"
        )
    listed = list(items)
    if len(listed) > MAX_BATCH_TRIGGER:
        raise InvalidConfig(
            f"batch_trigger got {len(listed):,} items; one call starts at most "
            f"{MAX_BATCH_TRIGGER:,} runs. Split them into several calls (nothing was stored)"
        )
    return listed


def _not_stored(why: str) -> ErrorInfo:
    return ErrorInfo(
        "NotStored",
        f"the run was not stored ({why}); nothing was enqueued for it: trigger it again",
    )
