"""Child runs: ``ctx.trigger``, ``ctx.trigger_and_wait`` and ``ctx.batch_trigger_and_wait``.

A child is created together with its checkpoint (one transaction, see
``AttemptSession.start_child``), so replays and retries of the parent never start a
second one. Waiting for children is a checkpoint of its own, recorded once they have
all ended (or a timeout canceled the rest). See docs/children.md.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from rung._durable.signals import Suspend
from rung._durable.state import WAIT_SUFFIX, Scope, check_waited_name
from rung._durable.waits import MAX_WAIT
from rung._util import serde
from rung._util.clock import iso
from rung._util.durations import check_duration, format_duration
from rung._util.ids import new_run_id
from rung.app import Task, check_tags
from rung.errors import ErrorInfo, StepFailed, UsageError
from rung.models import ChildResult, Offloaded, Run, RunHandle, RunStatus, StepRecord

#: The most children one ``batch_trigger_and_wait`` starts: their outcomes are one
#: checkpoint (at most ``MAX_VALUE_BYTES``), and the waiting parent's item lists them.
MAX_BATCH = 1000

# ``_start_child(batch=...)`` for a batch's first child: the batch is keyed by its id.
_FIRST_OF_BATCH = "*"
_NO = ErrorInfo("", "")

#: The code version a child runs on (docs/versioning.md): the latest one deployed when
#: it starts, or its parent's.
ChildVersion = Literal["latest", "parent"]


def _pinned(version: object, what: str) -> bool:
    """Whether the child is pinned to its parent's version; or a UsageError."""
    if version not in ("latest", "parent"):
        raise UsageError(
            f'{what}(version=...) is "latest" (the version deployed when the child '
            f'starts, the default) or "parent" (this run\'s own), got {version!r}'
        )
    return version == "parent"


def trigger(
    scope: Scope,
    task: str | Task[Any],
    payload: Any,
    *,
    name: str | None,
    detached: bool,
    delay: timedelta | float | None,
    tags: Iterable[str] | None,
    version: ChildVersion = "latest",
) -> RunHandle:
    """``ctx.trigger``: start a child run and go on."""
    pinned = _pinned(version, "ctx.trigger")
    found, child_name = _begin(scope, "ctx.trigger", task, name, waits=False)
    wait = (
        check_duration(delay, "ctx.trigger delay", maximum=MAX_WAIT)
        if delay is not None
        else timedelta(0)
    )
    tag_tuple = check_tags(tags, "ctx.trigger")
    record, created = _start_child(
        scope,
        found,
        child_name,
        payload,
        waits=False,
        detached=detached,
        delay=wait,
        tags=tag_tuple,
        pinned=pinned,
    )
    data = json.loads(record.result_json or "{}")
    return RunHandle(run_id=data["run_id"], task_id=data["task_id"], created=created)


def trigger_and_wait(
    scope: Scope,
    task: str | Task[Any],
    payload: Any,
    *,
    name: str | None,
    result_type: Any,
    timeout: timedelta | float | None,
    version: ChildVersion = "latest",
) -> Any:
    """``ctx.trigger_and_wait``: start a child run, suspend until it ends, return its
    output (or raise ``ChildRunFailed``)."""
    pinned = _pinned(version, "ctx.trigger_and_wait")
    found, child_name = _begin(scope, "ctx.trigger_and_wait", task, name, waits=True)
    limit = _timeout(timeout, "trigger_and_wait")
    record, _ = _start_child(scope, found, child_name, payload, waits=True, pinned=pinned)
    # The deadline is fixed by the child's checkpoint: the same on every replay.
    wait = _wait_children(
        scope,
        child_name,
        [json.loads(record.result_json or "{}")],
        single=True,
        deadline=_Deadline.of(record.started_at, limit),
    )
    return scope.replay(wait, result_type or found.output_type)


def batch_trigger_and_wait(
    scope: Scope,
    task: str | Task[Any],
    payloads: Iterable[Any],
    *,
    name: str | None,
    result_type: Any,
    timeout: timedelta | float | None,
    version: ChildVersion = "latest",
) -> list[ChildResult]:
    """``ctx.batch_trigger_and_wait``: one child per payload, suspend until all ended."""
    what = "ctx.batch_trigger_and_wait"
    pinned = _pinned(version, what)
    found, child_name = _begin(scope, what, task, name, waits=True)
    limit = _timeout(timeout, "batch_trigger_and_wait")
    if isinstance(payloads, str | bytes | Mapping) or not isinstance(payloads, Iterable):
        raise UsageError(
            f"{what}(task, payloads) needs a list of payloads (one child per payload), "
            f"e.g. [payload1, payload2], got {type(payloads).__name__}"
        )
    items = list(payloads)
    if not items:
        return []
    if len(items) > MAX_BATCH and not _batch_started(scope, child_name, len(items)):
        raise UsageError(
            f"{what} got {len(items):,} payloads; one batch starts at "
            f"most {MAX_BATCH:,} children (their outcomes are one checkpoint). Split the "
            "work into several batches, or batches of batches (children that batch-trigger)"
        )
    encoded = [found.prepare(p) for p in items]
    children: list[dict[str, Any]] = []
    began: datetime | None = None  # the first child's checkpoint: same on replays
    for text in encoded:
        # The batch's key is its first child's run id (known once that one exists).
        batch = children[0]["run_id"] if children else _FIRST_OF_BATCH
        record, _ = _start_child(
            scope,
            found,
            child_name,
            None,
            waits=True,
            payload_json=text,
            batch=batch,
            size=len(items),
            pinned=pinned,
        )
        began = began or record.started_at
        children.append(json.loads(record.result_json or "{}"))
    wait = _wait_children(
        scope, child_name, children, single=False, deadline=_Deadline.of(began, limit)
    )
    if wait.outcome == "failed":  # the outcomes did not fit one checkpoint
        raise StepFailed(wait.step_id, wait.error or ErrorInfo("Error", ""))
    revive = result_type or found.output_type
    return [
        ChildResult(
            run_id=o["run_id"],
            task_id=o["task_id"],
            status=RunStatus(o["status"]),
            output=serde.loads(json.dumps(o["output"]), revive)
            if o["status"] == RunStatus.COMPLETED
            else None,
            error=ErrorInfo.from_json(o["error"]) if o.get("error") else None,
            step_id=wait.step_id,
        )
        for o in json.loads(wait.result_json or "[]")
    ]


def _begin(
    scope: Scope, what: str, task: str | Task[Any], name: str | None, *, waits: bool
) -> tuple[Task[Any], str]:
    """What every child entry point checks first: its caller, the task, and the
    children's name (with its wait's, for one that waits). Returns the task and the
    name (the task id by default)."""
    scope.check_caller(f"{what}()")
    found = scope.session.task(task)
    child_name = name if name is not None else found.id
    if waits:  # (a name alone is checked where it takes its position)
        check_waited_name(child_name, what)
    return found, child_name


# -- starting a child ----------------------------------------------------------------


def _start_child(
    scope: Scope,
    task: Task[Any],
    name: str,
    payload: Any,
    *,
    waits: bool,
    detached: bool = False,
    delay: timedelta = timedelta(0),
    tags: tuple[str, ...] = (),
    payload_json: str | None = None,
    batch: str | None = None,
    size: int = 0,
    pinned: bool = False,
) -> tuple[StepRecord, bool]:
    step_id, seq = scope.position(name, "child")
    record = scope.run.records.get(step_id)
    if record is not None:
        return record, False
    text = payload_json if payload_json is not None else task.prepare(payload)
    scope.session.before_step()
    now = scope.session.now()
    child: dict[str, Any] = {
        "run_id": new_run_id(now),
        "task_id": task.id,
        "detached": bool(detached),
    }
    if batch is not None:
        if batch == _FIRST_OF_BATCH:  # the first child keys the batch and records its size
            child["batch"], child["of"] = child["run_id"], size
        else:
            child["batch"] = batch
    mine = StepRecord.ended(
        step_id,
        seq,
        run_attempt=scope.run.attempt,
        started_at=now,
        finished_at=now,
        kind="child",
        result_json=json.dumps(child),
    )
    stored, created = scope.session.start_child(
        mine,
        task_id=task.id,
        payload_json=text,
        waits=waits,
        detached=bool(detached),
        delay=delay,
        tags=tags,
        pinned=pinned,
    )
    return scope.run.remember(stored), created


def _batch_started(scope: Scope, name: str, size: int) -> bool:
    """Whether this batch's first child exists: a replay of a batch that started
    (under an older limit) goes on. A refused batch leaves no checkpoint, so a
    later batch may hold the same step id: its recorded size tells them apart."""
    record = scope.run.records.get(scope.next_step_id(name))
    if record is None or record.kind != "child":
        return False
    first = json.loads(record.result_json or "{}")
    return bool(first.get("of", size) == size)  # (no "of": written before the limit)


# -- waiting for children ------------------------------------------------------------


@dataclass(frozen=True)
class _Deadline:
    """A wait's ``timeout``, counted from ``began`` (the first child's checkpoint)."""

    at: datetime
    timeout: timedelta

    @classmethod
    def of(cls, began: datetime | None, timeout: timedelta | None) -> _Deadline | None:
        if began is None or timeout is None:
            return None
        return cls(began + timeout, timeout)

    def reason(self, parent: str, step_id: str) -> str:
        """The cancel reason of a child this timeout canceled (``canceled`` recognises it)."""
        return (
            f"not ended within the timeout of {format_duration(self.timeout)} that its "
            f"parent {parent} set on {step_id}"
        )

    @staticmethod
    def canceled(run: Run, parent: str, step_id: str) -> bool:
        """Whether a timeout of ``parent``'s wait ``step_id`` canceled ``run`` (also as
        older versions wrote the reason, with the timeout as a raw ``timedelta``)."""
        message = (run.error or _NO).message
        return (
            run.status == RunStatus.CANCELED
            and message.startswith("not ended within the timeout of ")
            and message.endswith(f" that its parent {parent} set on {step_id}")
        )


def _wait_children(
    scope: Scope,
    name: str,
    children: list[dict[str, Any]],
    *,
    single: bool,
    deadline: _Deadline | None,
) -> StepRecord:
    """The outcome checkpoint (``"<name>:wait"``) of waiting for ``children``;
    suspends until all ended (or, past a ``deadline``, cancels those unfinished by then)."""
    step_id, seq = scope.position(name + WAIT_SUFFIX, "child_wait")
    record = scope.run.records.get(step_id)
    if record is not None:
        return record
    scope.session.before_step()
    ids = [c["run_id"] for c in children]
    runs = scope.session.get_runs(ids)
    if deadline is not None and scope.session.now() >= deadline.at:
        runs = _cancel_late(scope, ids, runs, deadline, step_id)
    unfinished = tuple(i for i in ids if i in runs and not runs[i].status.is_terminal)
    if unfinished:
        raise _suspension(children, ids, unfinished, single=single, deadline=deadline)
    return _record_outcomes(scope, step_id, seq, children, runs, single=single)


def _cancel_late(
    scope: Scope, ids: list[str], runs: dict[str, Run], deadline: _Deadline, step_id: str
) -> dict[str, Run]:
    """Past the deadline: cancel what has not ended, and read the children again.

    A child this timeout canceled is canceled again too: an attempt that crashed
    inside the cascade left its own children. (Children canceled by someone else were
    cascaded by them.)"""
    late = [
        i
        for i in ids
        if i in runs
        and (not runs[i].status.is_terminal or _Deadline.canceled(runs[i], scope.run_id, step_id))
    ]
    if not late:
        return runs
    why = deadline.reason(scope.run_id, step_id)
    for n, child_id in enumerate(late):
        if n:  # many children: keep the lease, and go on in a fresh invocation
            scope.session.before_step()  # if this one runs out of time
        scope.session.cancel_child(child_id, why)
    return scope.session.get_runs(ids)


def _suspension(
    children: list[dict[str, Any]],
    ids: list[str],
    unfinished: tuple[str, ...],
    *,
    single: bool,
    deadline: _Deadline | None,
) -> Suspend:
    """Wait for the unfinished children: their ends wake the run (or the deadline)."""
    what = (
        f"child run {unfinished[0]}"
        if single
        else f"{len(unfinished)} of {len(ids)} child runs ({', '.join(unfinished[:3])}"
        + (", ...)" if len(unfinished) > 3 else ")")
    )
    keys = {c.get("batch") for c in children}
    batch = None
    if not single and len(keys) == 1 and None not in keys:
        # One batch: woken once, by its last child's end, not by every end. (``children``
        # too: a ctx.map that combines this with other waits falls back to waking on any.)
        batch = (str(children[0]["batch"]), len(children))
    if deadline is not None:  # (LocalEngine's clock treats it as a deadline, see there)
        what += f" (timeout at {iso(deadline.at)})"
    return Suspend(
        deadline.at if deadline is not None else None,
        what,
        children=unfinished,
        batch=batch,
        wake_kind="deadline" if deadline is not None else None,
    )


def _record_outcomes(
    scope: Scope,
    step_id: str,
    seq: int,
    children: list[dict[str, Any]],
    runs: dict[str, Run],
    *,
    single: bool,
) -> StepRecord:
    """Every child has ended: record how, once (a batch's outcomes in one checkpoint)."""
    now = scope.session.now()
    offloaded = sum(
        r.output.size
        for r in runs.values()
        if r.status == RunStatus.COMPLETED and isinstance(r.output, Offloaded)
    )
    too_large = not single and offloaded > serde.MAX_VALUE_BYTES  # (known without reading)
    outcomes = [
        _child_outcome(c, runs.get(c["run_id"]), None if too_large else scope.session.value)
        for c in children
    ]
    started = min((r.created_at for r in runs.values()), default=now)
    ended = max((r.finished_at or now for r in runs.values()), default=now)
    error: ErrorInfo | None = None
    result: str | None
    if not single:
        result = json.dumps(outcomes, ensure_ascii=False)
        size = len(result.encode()) + offloaded * too_large
        if size > serde.MAX_VALUE_BYTES:
            result = None
            error = ErrorInfo(
                "PayloadTooLarge",
                f"the outcomes of the {len(children):,} children of batch {step_id!r} are "
                f"{size:,} bytes of JSON; rung stores at most {serde.MAX_VALUE_BYTES:,} "
                "bytes in one checkpoint. Return smaller outputs from the children (put "
                "large data in S3 and return its key), or split the batch",
            )
    elif outcomes[0]["status"] == RunStatus.COMPLETED:
        result = json.dumps(outcomes[0]["output"])
    else:
        outcome = outcomes[0]
        error = ErrorInfo.from_json(outcome["error"])
        result = json.dumps({k: outcome[k] for k in ("run_id", "task_id", "status")})
    stored = StepRecord.ended(
        step_id,
        seq,
        run_attempt=scope.run.attempt,
        started_at=started,
        finished_at=ended,
        kind="child_wait",
        result_json=result,
        error=error,
    )
    recorded = scope.run.record(stored)
    key = children[0].get("batch")
    if key is not None and recorded is stored:  # recorded now, by this attempt
        scope.session.forget_batch(str(key))
    return recorded


def _timeout(timeout: timedelta | float | None, what: str) -> timedelta | None:
    """A ``timeout=`` of the waiting calls, checked."""
    if timeout is None:
        return None
    return check_duration(timeout, f"{what} timeout", positive=True, maximum=MAX_WAIT)


def _child_outcome(
    child: dict[str, Any], run: Run | None, value: Callable[[Any], Any] | None = None
) -> dict[str, Any]:
    """How a child ended, as the parent's wait checkpoint keeps it; ``value`` reads an
    offloaded output (None: outputs are left out, of a batch known to be too large)."""
    if run is None:  # cannot happen (children are created with their checkpoint)
        error = ErrorInfo("RunNotFound", f"child run {child['run_id']} does not exist")
        return {**child, "status": RunStatus.FAILED.value, "output": None, "error": error.to_json()}
    if run.status == RunStatus.COMPLETED:
        return {
            "run_id": run.run_id,
            "task_id": run.task_id,
            "status": run.status.value,
            "output": value(run.output) if value is not None else None,
            "error": None,
        }
    error = run.error or ErrorInfo(f"Run{run.status.value.title().replace('_', '')}", "")
    return {
        "run_id": run.run_id,
        "task_id": run.task_id,
        "status": run.status.value,
        "output": None,
        "error": error.to_json(),
    }
